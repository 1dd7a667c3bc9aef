//! `TransformSpec`: an ordered list of operations, from a compact string or JSON.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Most operations one spec may hold.
pub const MAX_OPERATIONS: usize = 32;

/// One operation: a registered transform name and its arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// Transform name, for example `resize`.
    pub name: String,
    /// Arguments as written, for example `["800x600", "fill"]`.
    pub args: Vec<String>,
}

impl Operation {
    /// An operation without arguments.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            args: Vec::new(),
        }
    }

    /// Builder-style: add an argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }
}

/// Ordered operations applied to an image.
///
/// Compact form: operations separated by `,`, arguments by `:`:
/// `resize:800x600:fill,grayscale,format:webp`. JSON form: an array whose
/// items are compact strings or objects `{"op": "resize", "args": ["800x600"]}`
/// (numbers are accepted as arguments).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TransformSpec {
    /// The operations, applied in order.
    pub ops: Vec<Operation>,
}

impl TransformSpec {
    /// A spec of the given operations.
    pub fn new(ops: Vec<Operation>) -> Self {
        Self { ops }
    }

    /// Whether the spec has no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Parse the compact or the JSON form (chosen by the first character).
    pub fn parse(input: &str) -> Result<Self> {
        let trimmed = input.trim();
        let spec = if trimmed.starts_with('[') || trimmed.starts_with('{') {
            Self::parse_json(trimmed)?
        } else {
            Self::parse_compact(trimmed)?
        };
        if spec.ops.len() > MAX_OPERATIONS {
            return Err(Error::invalid(format!(
                "transform spec has {} operations, at most {MAX_OPERATIONS} are allowed",
                spec.ops.len()
            )));
        }
        Ok(spec)
    }

    fn parse_compact(input: &str) -> Result<Self> {
        let mut ops = Vec::new();
        for (i, raw) in input.split(',').enumerate() {
            let raw = raw.trim();
            if raw.is_empty() {
                if input.is_empty() {
                    break;
                }
                return Err(Error::invalid(format!(
                    "transform spec: operation {} is empty (stray ',')",
                    i + 1
                )));
            }
            let mut pieces = raw.split(':').map(str::trim);
            let name = pieces.next().unwrap_or_default();
            check_name(name)?;
            let args: Vec<String> = pieces.map(str::to_string).collect();
            if args.iter().any(String::is_empty) {
                return Err(Error::invalid(format!(
                    "transform spec: operation {name:?} has an empty argument"
                )));
            }
            ops.push(Operation {
                name: name.to_string(),
                args,
            });
        }
        Ok(Self { ops })
    }

    fn parse_json(input: &str) -> Result<Self> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Item {
            Compact(String),
            Object {
                op: String,
                #[serde(default)]
                args: Vec<serde_json::Value>,
            },
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Doc {
            List(Vec<Item>),
            Wrapped { ops: Vec<Item> },
        }
        let doc: Doc = serde_json::from_str(input).map_err(|e| {
            Error::invalid(format!(
                "transform spec is not valid JSON of the expected shape \
                 ([\"op:arg\", {{\"op\": \"name\", \"args\": [..]}}]): {e}"
            ))
        })?;
        let items = match doc {
            Doc::List(items) | Doc::Wrapped { ops: items } => items,
        };
        let mut ops = Vec::new();
        for item in items {
            match item {
                Item::Compact(s) => {
                    let one = Self::parse_compact(&s)?;
                    ops.extend(one.ops);
                }
                Item::Object { op, args } => {
                    check_name(&op)?;
                    let args = args
                        .into_iter()
                        .map(|v| match v {
                            serde_json::Value::String(s) => Ok(s),
                            serde_json::Value::Number(n) => Ok(n.to_string()),
                            serde_json::Value::Bool(b) => Ok(b.to_string()),
                            other => Err(Error::invalid(format!(
                                "transform spec: argument {other} of {op:?} must be a string or a number"
                            ))),
                        })
                        .collect::<Result<Vec<_>>>()?;
                    // What the compact form cannot say, it cannot carry: a
                    // spec travels compact, and must mean there what it
                    // meant when it was checked.
                    if let Some(bad) = args
                        .iter()
                        .find(|a| a.contains([',', ':']) || a.is_empty() || a.trim() != a.as_str())
                    {
                        return Err(Error::invalid(format!(
                            "transform spec: argument {bad:?} of {op:?} is empty, contains ',' or ':', or starts or ends with a space"
                        )));
                    }
                    ops.push(Operation { name: op, args });
                }
            }
        }
        Ok(Self { ops })
    }
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "transform spec: {name:?} is not an operation name (lower-case letters, digits, '-', '_')"
        )))
    }
}

impl fmt::Display for TransformSpec {
    /// The compact form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, op) in self.ops.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(&op.name)?;
            for a in &op.args {
                write!(f, ":{a}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn compact_roundtrip() {
        let s = TransformSpec::parse("resize:800x600:fill, grayscale,format:webp").unwrap();
        assert_eq!(s.ops.len(), 3);
        assert_eq!(s.ops[0].args, vec!["800x600", "fill"]);
        assert_eq!(s.to_string(), "resize:800x600:fill,grayscale,format:webp");
        assert!(TransformSpec::parse("").unwrap().is_empty());
    }

    #[test]
    fn json_forms() {
        let a = TransformSpec::parse(
            r#"[{"op":"resize","args":["800x600"]},"grayscale",{"op":"blur","args":[1.5]}]"#,
        )
        .unwrap();
        assert_eq!(a.to_string(), "resize:800x600,grayscale,blur:1.5");
        let b = TransformSpec::parse(r#"{"ops":["rotate:90"]}"#).unwrap();
        assert_eq!(b.to_string(), "rotate:90");
    }

    /// Found by the `transform_spec` fuzz target: a JSON argument with
    /// trailing spaces was checked as written, then travelled compact and
    /// lost them, so the job ran another spec than the one checked.
    #[test]
    fn every_spec_means_the_same_once_printed() {
        let e = TransformSpec::parse("[{\"op\":\"resize\",\"args\":[\"64x64 \\u00a0 \"]}]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("space"), "{e}");
        for text in [
            "resize:64x64 , grayscale",
            r#"[{"op":"stamp","args":["a b"]},"blur: 2"]"#,
        ] {
            let spec = TransformSpec::parse(text).unwrap();
            assert_eq!(
                TransformSpec::parse(&spec.to_string()).unwrap(),
                spec,
                "{text}"
            );
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let e = TransformSpec::parse("resize:800x600,,grayscale")
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty"), "{e}");
        let e = TransformSpec::parse("Resize").unwrap_err().to_string();
        assert!(e.contains("not an operation name"), "{e}");
        let e = TransformSpec::parse("[{\"op\": 3}]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("JSON"), "{e}");
        let e = TransformSpec::parse("resize:").unwrap_err().to_string();
        assert!(e.contains("empty argument"), "{e}");
        let many = vec!["grayscale"; 40].join(",");
        assert!(TransformSpec::parse(&many).is_err());
    }
}
