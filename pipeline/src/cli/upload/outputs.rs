//! Where each result goes under `--out`. A result keeps its input's path;
//! when the transform changed its format, the extension follows
//! (`a.jpg` -> `a.webp`), unless that path belongs to another file (an input
//! `a.webp`, or the result of `a.gif`): then the whole name is kept and the
//! extension added (`a.jpg.webp`). A path once given is recorded in the
//! manifest, so a resumed run writes the same file.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

/// Paths under `--out` and the input that owns each.
#[derive(Debug)]
pub struct Outputs {
    owners: Mutex<HashMap<String, String>>,
}

impl Outputs {
    /// Every input owns its own path; earlier runs' results keep theirs.
    pub fn new<'a>(
        inputs: impl Iterator<Item = &'a str>,
        earlier: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> Self {
        let mut owners: HashMap<String, String> = inputs
            .map(|rel| (rel.to_string(), rel.to_string()))
            .collect();
        for (output, rel) in earlier {
            owners
                .entry(output.to_string())
                .or_insert_with(|| rel.to_string());
        }
        Self {
            owners: Mutex::new(owners),
        }
    }

    /// The path of `rel`'s result, whose media type is `content_type`.
    pub fn claim(&self, rel: &str, content_type: &str) -> String {
        let Some(ext) = new_extension(rel, content_type) else {
            return rel.to_string();
        };
        let Ok(mut owners) = self.owners.lock() else {
            return format!("{rel}.{ext}");
        };
        let stem = Path::new(rel)
            .with_extension(ext)
            .to_string_lossy()
            .replace('\\', "/");
        let candidates = [stem, format!("{rel}.{ext}")]
            .into_iter()
            .chain((1..).map(|n| format!("{rel}.{n}.{ext}")));
        for candidate in candidates {
            match owners.get(&candidate) {
                Some(owner) if owner != rel => continue,
                Some(_) => return candidate,
                None => {
                    owners.insert(candidate.clone(), rel.to_string());
                    return candidate;
                }
            }
        }
        // The chain above never ends; this only satisfies the compiler.
        format!("{rel}.{ext}")
    }
}

/// The extension of the result's format, when it is not the input's.
fn new_extension(rel: &str, content_type: &str) -> Option<&'static str> {
    let format = image::ImageFormat::from_mime_type(content_type)?;
    let same = Path::new(rel)
        .extension()
        .and_then(image::ImageFormat::from_extension)
        .is_some_and(|f| f == format);
    if same {
        return None;
    }
    Some(format.extensions_str().first().copied().unwrap_or("bin"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_keeps_its_name_unless_its_format_changed() {
        let o = Outputs::new(
            ["a/b.jpg", "a/b.JPEG", "noext"].into_iter(),
            std::iter::empty(),
        );
        assert_eq!(o.claim("a/b.jpg", "image/jpeg"), "a/b.jpg");
        assert_eq!(o.claim("a/b.JPEG", "image/jpeg"), "a/b.JPEG");
        assert_eq!(o.claim("a/b.jpg", "image/webp"), "a/b.webp");
        assert_eq!(o.claim("noext", "image/png"), "noext.png");
        assert_eq!(o.claim("a/b.jpg", "application/x-unknown"), "a/b.jpg");
    }

    #[test]
    fn a_changed_extension_never_takes_another_files_path() {
        let inputs = ["x.jpg", "x.png", "x.gif", "y.jpg"];
        let earlier = [("y.png", "y.jpg")];
        let o = Outputs::new(inputs.into_iter(), earlier.into_iter());
        // x.png is an input: x.jpg's PNG result keeps its whole name.
        assert_eq!(o.claim("x.jpg", "image/png"), "x.jpg.png");
        assert_eq!(o.claim("x.png", "image/png"), "x.png");
        assert_eq!(o.claim("x.gif", "image/png"), "x.gif.png");
        // Asked again (a refetch), the same answer.
        assert_eq!(o.claim("x.jpg", "image/png"), "x.jpg.png");
        // What an earlier run gave stays given.
        assert_eq!(o.claim("y.jpg", "image/png"), "y.png");
        // Two inputs that would both become z.webp.
        let o = Outputs::new(["z.jpg", "z.gif"].into_iter(), std::iter::empty());
        assert_eq!(o.claim("z.jpg", "image/webp"), "z.webp");
        assert_eq!(o.claim("z.gif", "image/webp"), "z.gif.webp");
    }
}
