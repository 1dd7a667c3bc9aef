//! Checks every [`Transform`] passes, built-in or plugin: call
//! [`check_transform`] (one operation) or [`check_registry`] (all of a
//! registry) from a test.
//!
//! Arguments are generated from the operation's [`Transform::params`]:
//! the first choice, a small size, a value inside each numeric range. Then:
//! - `validate` accepts them and refuses too many arguments, an unknown
//!   choice, a number out of its range and a word where a number goes;
//! - `apply` works on RGB, RGBA (alpha) and 16-bit input, gives a non-empty
//!   image within the size limit that encodes and decodes as PNG;
//! - the EXIF orientation is either left for `auto-orient` or applied (and
//!   then marked as applied), never half;
//! - a [`Transform::deterministic`] operation gives the same pixels twice.

use image::metadata::Orientation;
use image::{DynamicImage, ImageFormat};

use crate::transform::codec::{self, DEFAULT_QUALITY, ImageLimits, OutputFormat};
use crate::transform::{Param, ParamKind, Transform, TransformContext, TransformRegistry};

/// Largest side an operation may produce from the suite's small inputs.
const MAX_SIDE: u32 = 16_384;

/// Arguments inside every declared range (small, so the checks are fast).
pub fn sample_args(params: &[Param]) -> Vec<String> {
    params
        .iter()
        .take_while(|p| p.required)
        .map(sample_value)
        .collect()
}

fn sample_value(p: &Param) -> String {
    let (min, max) = (p.min.unwrap_or(0.0), p.max.unwrap_or(f64::MAX));
    match p.kind {
        ParamKind::Choice => p.choices.first().cloned().unwrap_or_default(),
        ParamKind::Size => "8x6".into(),
        ParamKind::Integer => (min.max(0.0).min(max) as i64).to_string(),
        ParamKind::Number => min.max(0.5).min(max).to_string(),
        ParamKind::Text => "x".into(),
    }
}

fn context(orientation: Orientation) -> TransformContext {
    TransformContext {
        source_format: ImageFormat::Png,
        output: OutputFormat {
            format: ImageFormat::Png,
            quality: DEFAULT_QUALITY,
        },
        orientation,
    }
}

fn inputs() -> Vec<(&'static str, DynamicImage)> {
    let rgb = image::RgbImage::from_fn(32, 24, |x, y| {
        image::Rgb([(x * 8) as u8, (y * 10) as u8, 90])
    });
    let rgba = image::RgbaImage::from_fn(32, 24, |x, y| {
        image::Rgba([(x * 8) as u8, (y * 10) as u8, 90, (x * 4) as u8])
    });
    let deep = image::ImageBuffer::<image::Rgb<u16>, Vec<u16>>::from_fn(32, 24, |x, y| {
        image::Rgb([(x * 2000) as u16, (y * 2500) as u16, 40_000])
    });
    vec![
        ("RGB", DynamicImage::ImageRgb8(rgb)),
        ("RGBA", DynamicImage::ImageRgba8(rgba)),
        ("16-bit RGB", DynamicImage::ImageRgb16(deep)),
    ]
}

/// Run every check on `t`; panics naming the operation and the check.
pub fn check_transform(t: &dyn Transform) {
    let name = t.name();
    assert!(
        !name.is_empty() && !t.usage().is_empty(),
        "{name}: name and usage"
    );
    let params = t.params();
    let args = sample_args(&params);
    t.validate(&args)
        .unwrap_or_else(|e| panic!("{name}: sample arguments {args:?} refused: {e}"));
    check_refusals(t, &params, &args);
    for (kind, input) in inputs() {
        let mut ctx = context(Orientation::NoTransforms);
        let out = t
            .apply(input.clone(), &args, &mut ctx)
            .unwrap_or_else(|e| panic!("{name} on {kind} input: {e}"));
        let (w, h) = (out.width(), out.height());
        assert!(
            w > 0 && h > 0 && w <= MAX_SIDE && h <= MAX_SIDE,
            "{name}: {w}x{h}"
        );
        let as_png = OutputFormat {
            format: ImageFormat::Png,
            quality: ctx.output.quality,
        };
        let png = codec::encode(&out, as_png)
            .unwrap_or_else(|e| panic!("{name} on {kind} input: the result does not encode: {e}"));
        let back = codec::decode(&png, &ImageLimits::default())
            .unwrap_or_else(|e| panic!("{name} on {kind} input: the result does not decode: {e}"));
        assert_eq!(back.image.width(), w, "{name} on {kind} input");
        if t.deterministic() {
            let again = t
                .apply(input, &args, &mut context(Orientation::NoTransforms))
                .unwrap_or_else(|e| panic!("{name}: second run: {e}"));
            assert!(
                again.as_bytes() == out.as_bytes(),
                "{name} on {kind} input: a deterministic operation gave other pixels"
            );
        }
    }
    // The orientation is left for `auto-orient`, or applied and marked so.
    let (_, input) = inputs().swap_remove(0);
    let mut ctx = context(Orientation::Rotate90);
    let out = t
        .apply(input, &args, &mut ctx)
        .unwrap_or_else(|e| panic!("{name} with an EXIF orientation: {e}"));
    assert!(
        matches!(
            ctx.orientation,
            Orientation::Rotate90 | Orientation::NoTransforms
        ),
        "{name}: orientation left as {:?}",
        ctx.orientation
    );
    assert!(out.width() > 0, "{name}");
}

/// What `validate` must refuse.
fn check_refusals(t: &dyn Transform, params: &[Param], args: &[String]) {
    let name = t.name();
    let too_many = vec!["1".to_string(); params.len() + 1];
    assert!(
        t.validate(&too_many).is_err(),
        "{name}: accepts {too_many:?}"
    );
    for (i, p) in params.iter().enumerate().take(args.len()) {
        let with = |value: &str| {
            let mut a = args.to_vec();
            a[i] = value.to_string();
            a
        };
        let mut bad = Vec::new();
        match p.kind {
            ParamKind::Choice => bad.push(with("no-such-choice")),
            ParamKind::Integer | ParamKind::Number => {
                bad.push(with("abc"));
                if let Some(max) = p.max {
                    bad.push(with(&(max + 1.0).to_string()));
                }
                if let Some(min) = p.min {
                    bad.push(with(&(min - 1.0).to_string()));
                }
            }
            ParamKind::Size => {
                bad.push(with("0x0"));
                bad.push(with(&format!("{}x1", MAX_SIDE + 1)));
            }
            ParamKind::Text => {}
        }
        for a in bad {
            assert!(t.validate(&a).is_err(), "{name}: accepts {a:?}");
        }
    }
}

/// [`check_transform`] on every operation of `registry`.
pub fn check_registry(registry: &TransformRegistry) {
    let mut n = 0;
    for t in registry.transforms() {
        check_transform(t.as_ref());
        n += 1;
    }
    assert!(n > 0, "an empty registry");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Result;

    /// Accepts any argument: the suite must catch it.
    struct Lax;
    impl Transform for Lax {
        fn name(&self) -> &str {
            "lax"
        }
        fn usage(&self) -> &str {
            "lax:N (1-10)"
        }
        fn params(&self) -> Vec<Param> {
            vec![Param::new("n", ParamKind::Integer, "anything").range(1.0, 10.0)]
        }
        fn validate(&self, _: &[String]) -> Result<()> {
            Ok(())
        }
        fn apply(
            &self,
            i: DynamicImage,
            _: &[String],
            _: &mut TransformContext,
        ) -> Result<DynamicImage> {
            Ok(i)
        }
    }

    #[test]
    #[should_panic(expected = "lax: accepts")]
    fn a_transform_that_accepts_anything_fails() {
        check_transform(&Lax);
    }
}

/// A plugin operation `outage` whose backend is always down: every
/// attempt fails transiently (`Error::Unavailable`), for tests of retries
/// running out.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outage;

impl Transform for Outage {
    fn name(&self) -> &str {
        "outage"
    }
    fn usage(&self) -> &str {
        "outage"
    }
    fn validate(&self, _: &[String]) -> crate::Result<()> {
        Ok(())
    }
    fn apply(
        &self,
        _: DynamicImage,
        _: &[String],
        _: &mut TransformContext,
    ) -> crate::Result<DynamicImage> {
        Err(crate::Error::Unavailable(
            "the plugin's backend is down".into(),
        ))
    }
}
