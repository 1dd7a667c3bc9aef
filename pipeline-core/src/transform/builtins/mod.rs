//! The built-in transforms: geometry, pixel adjustments, and output
//! (stamp, format).

mod geometry;
mod output;
mod pixels;

use std::sync::Arc;

use super::{Param, ParamKind, Transform};
use crate::error::{Error, ImageErrorKind, Result};

/// Largest width or height a transform may produce.
pub(super) const MAX_SIDE: u32 = 16_384;

pub(super) fn arity(name: &str, args: &[String], min: usize, max: usize) -> Result<()> {
    if args.len() < min || args.len() > max {
        let want = if min == max {
            format!("{min}")
        } else {
            format!("{min} to {max}")
        };
        return Err(Error::invalid(format!(
            "{name} takes {want} argument(s), got {}",
            args.len()
        )));
    }
    Ok(())
}

pub(super) fn number<T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy>(
    name: &str,
    what: &str,
    raw: &str,
    min: T,
    max: T,
) -> Result<T> {
    let v: T = raw
        .parse()
        .map_err(|_| Error::invalid(format!("{name}: {what} {raw:?} is not a number")))?;
    if !(min..=max).contains(&v) {
        return Err(Error::invalid(format!(
            "{name}: {what} {v} is out of range {min}..={max}"
        )));
    }
    Ok(v)
}

/// Parse `WxH`, `Wx` or `xH` (each side 1..=MAX_SIDE); `N` means `NxN`.
pub(super) fn size(
    name: &str,
    raw: &str,
    allow_missing: bool,
) -> Result<(Option<u32>, Option<u32>)> {
    let side = |s: &str, what: &str| -> Result<Option<u32>> {
        if s.is_empty() {
            if allow_missing {
                return Ok(None);
            }
            return Err(Error::invalid(format!(
                "{name}: {what} is missing in {raw:?}"
            )));
        }
        number(name, what, s, 1, MAX_SIDE).map(Some)
    };
    let (w, h) = match raw.split_once('x') {
        Some((w, h)) => (side(w, "width")?, side(h, "height")?),
        None => {
            let n = side(raw, "size")?;
            (n, n)
        }
    };
    if w.is_none() && h.is_none() {
        return Err(Error::invalid(format!(
            "{name}: {raw:?} gives neither width nor height"
        )));
    }
    Ok((w, h))
}

pub(super) fn failed(msg: String) -> Error {
    Error::image(ImageErrorKind::TransformFailed, msg)
}

/// `WxH` as a parameter.
pub(super) fn size_param(name: &str, description: &str) -> Param {
    Param::new(name, ParamKind::Size, description).range(1.0, f64::from(MAX_SIDE))
}

pub(in crate::transform) fn all() -> Vec<Arc<dyn Transform>> {
    vec![
        Arc::new(output::Stamp),
        Arc::new(geometry::Resize),
        Arc::new(geometry::Thumbnail),
        Arc::new(geometry::Crop),
        Arc::new(geometry::Rotate),
        Arc::new(geometry::Flip),
        Arc::new(pixels::Grayscale),
        Arc::new(pixels::Blur),
        Arc::new(pixels::Sharpen),
        Arc::new(pixels::Brightness),
        Arc::new(pixels::Contrast),
        Arc::new(geometry::AutoOrient),
        Arc::new(output::Format),
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::{Processor, TransformRegistry, codec};
    use super::*;
    use image::DynamicImage;
    use image::{GenericImageView, ImageFormat};

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 200])
        }));
        codec::encode(
            &img,
            codec::OutputFormat {
                format: ImageFormat::Jpeg,
                quality: 90,
            },
        )
        .unwrap()
    }

    fn run(spec: &str, data: &[u8]) -> Result<super::super::Processed> {
        let reg = Arc::new(TransformRegistry::with_builtins());
        let spec = reg.parse(spec)?;
        Processor::new(reg, codec::ImageLimits::default()).process(data, &spec)
    }

    #[test]
    fn geometry() {
        let src = jpeg(400, 200);
        let cases = [
            ("resize:100x100", (100, 50)),
            ("resize:100x100:fill", (100, 100)),
            ("resize:100x30:exact", (100, 30)),
            ("resize:x50", (100, 50)),
            ("resize:200x", (200, 100)),
            ("thumbnail:40", (40, 20)),
            ("crop:50x20+10+10", (50, 20)),
            ("crop:50x20:10:10", (50, 20)),
            ("crop:50x20 10 10", (50, 20)),
            ("rotate:90", (200, 400)),
            ("rotate:180", (400, 200)),
            (
                "flip:h,flip:v,grayscale,blur:1.5,sharpen:1:2,brightness:-10,contrast:20",
                (400, 200),
            ),
        ];
        for (spec, dims) in cases {
            let out = run(spec, &src).unwrap();
            assert_eq!((out.width, out.height), dims, "{spec}");
            let back = codec::decode(&out.data, &codec::ImageLimits::default()).unwrap();
            assert_eq!(back.image.dimensions(), dims, "{spec}");
        }
    }

    #[test]
    fn format_and_quality() {
        let src = jpeg(64, 64);
        let out = run("format:png", &src).unwrap();
        assert_eq!(out.format, ImageFormat::Png);
        assert_eq!(image::guess_format(&out.data).unwrap(), ImageFormat::Png);
        let lo = run("format:jpeg:10", &src).unwrap();
        let hi = run("format:jpeg:100", &src).unwrap();
        assert!(lo.data.len() < hi.data.len());
        for (name, f) in [
            ("webp", ImageFormat::WebP),
            ("gif", ImageFormat::Gif),
            ("bmp", ImageFormat::Bmp),
            ("tiff", ImageFormat::Tiff),
        ] {
            let out = run(&format!("format:{name}"), &src).unwrap();
            assert_eq!(image::guess_format(&out.data).unwrap(), f);
        }
    }

    #[test]
    fn stamp_keeps_format_and_marks_top_left() {
        let white = DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
            200,
            100,
            image::Rgb([255, 255, 255]),
        ));
        let png = codec::encode(
            &white,
            codec::OutputFormat {
                format: ImageFormat::Png,
                quality: 85,
            },
        )
        .unwrap();
        let out = run("stamp", &png).unwrap();
        assert_eq!(out.format, ImageFormat::Png);
        let img = codec::decode(&out.data, &codec::ImageLimits::default())
            .unwrap()
            .image
            .to_rgb8();
        let dark = (0..200)
            .flat_map(|x| (0..18).map(move |y| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y)[0] < 100)
            .count();
        assert!(dark > 50, "{dark}");
    }

    #[test]
    fn bad_args_are_clear() {
        let reg = TransformRegistry::with_builtins();
        for (spec, needle) in [
            ("resize", "takes 1 to 2"),
            ("resize:axb", "not a number"),
            ("resize:0x10", "out of range"),
            ("resize:100x:fill", "need both"),
            ("resize:100x100:stretch", "not one of fit"),
            ("rotate:45", "not 90, 180 or 270"),
            ("flip:x", "not h or v"),
            ("crop:10x10", "WxH:X:Y"),
            ("crop:10x10:1", "WxH:X:Y"),
            ("format:jpeg2000", "not one of jpeg"),
            ("format:png:50", "jpeg only"),
            ("blur:0", "out of range"),
            ("stamp:now", "takes 0"),
            ("nope", "unknown transform"),
        ] {
            let e = reg.parse(spec).unwrap_err().to_string();
            assert!(e.contains(needle), "{spec}: {e}");
        }
        let e = reg.parse("rotate:45").unwrap_err().to_string();
        assert!(e.contains("usage: rotate:90|180|270"), "{e}");
    }

    #[test]
    fn crop_outside_fails_the_job_not_the_parse() {
        let e = run("crop:50x50:390:0", &jpeg(400, 200)).unwrap_err();
        assert_eq!(e.code(), "transform_failed");
    }

    #[test]
    fn every_builtin_describes_its_arguments() {
        let reg = TransformRegistry::with_builtins();
        for t in reg.transforms() {
            let params = t.params();
            // Required ones first, each named and described.
            let first_optional = params.iter().position(|p| !p.required);
            if let Some(i) = first_optional {
                assert!(params[i..].iter().all(|p| !p.required), "{}", t.name());
            }
            for p in &params {
                assert!(
                    !p.name.is_empty() && !p.description.is_empty(),
                    "{}",
                    t.name()
                );
                if p.kind == ParamKind::Choice {
                    assert!(!p.choices.is_empty(), "{}: {}", t.name(), p.name);
                    // Every choice is accepted where that argument goes.
                    for c in &p.choices {
                        let mut args: Vec<String> = params
                            .iter()
                            .take_while(|q| q.required)
                            .map(|q| q.choices.first().cloned().unwrap_or_else(|| "10".into()))
                            .collect();
                        let at = params.iter().position(|q| q.name == p.name).unwrap();
                        if at < args.len() {
                            args[at] = c.clone();
                        } else {
                            args.push(c.clone());
                        }
                        t.validate(&args)
                            .unwrap_or_else(|e| panic!("{} {args:?}: {e}", t.name()));
                    }
                }
            }
            let required = params.iter().filter(|p| p.required).count();
            assert!(
                t.validate(&vec!["1".to_string(); required + params.len() + 1])
                    .is_err(),
                "{} accepts too many arguments",
                t.name()
            );
        }
    }

    #[test]
    fn auto_orient_applies_exif() {
        // JPEG with an EXIF APP1 segment saying orientation 6 (rotate 90 cw).
        let src = jpeg(40, 20);
        let exif: Vec<u8> = [
            b"Exif\0\0".as_slice(),
            b"MM\0\x2a\0\0\0\x08",
            &[0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0],
        ]
        .concat();
        let mut with_exif = vec![0xFF, 0xD8, 0xFF, 0xE1];
        with_exif.extend(((exif.len() + 2) as u16).to_be_bytes());
        with_exif.extend(&exif);
        with_exif.extend(&src[2..]);
        let out = run("auto-orient", &with_exif).unwrap();
        assert_eq!((out.width, out.height), (20, 40));
        let plain = run("grayscale", &with_exif).unwrap();
        assert_eq!((plain.width, plain.height), (40, 20));
    }
}
