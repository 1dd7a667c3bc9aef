//! The built-in transforms.

use std::sync::Arc;

use image::{DynamicImage, imageops::FilterType, metadata::Orientation};

use super::codec::{self, DEFAULT_QUALITY};
use super::stamp::{draw_text, stamp_text};
use super::{Transform, TransformContext};
use crate::error::{Error, ImageErrorKind, Result};

/// Largest width or height a transform may produce.
const MAX_SIDE: u32 = 16_384;

pub(super) fn all() -> Vec<Arc<dyn Transform>> {
    vec![
        Arc::new(Stamp),
        Arc::new(Resize),
        Arc::new(Thumbnail),
        Arc::new(Crop),
        Arc::new(Rotate),
        Arc::new(Flip),
        Arc::new(Grayscale),
        Arc::new(Blur),
        Arc::new(Sharpen),
        Arc::new(Brightness),
        Arc::new(Contrast),
        Arc::new(AutoOrient),
        Arc::new(Format),
    ]
}

fn arity(name: &str, args: &[String], min: usize, max: usize) -> Result<()> {
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

fn number<T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy>(
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
fn size(name: &str, raw: &str, allow_missing: bool) -> Result<(Option<u32>, Option<u32>)> {
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

fn failed(msg: String) -> Error {
    Error::image(ImageErrorKind::TransformFailed, msg)
}

struct Stamp;
impl Transform for Stamp {
    fn name(&self) -> &str {
        "stamp"
    }
    fn usage(&self) -> &str {
        "stamp: draw local time HH:MM:SS and 10 random characters at the top-left (DejaVu Serif 16 px, black)"
    }
    fn validate(&self, args: &[String]) -> Result<()> {
        arity("stamp", args, 0, 0)
    }
    fn apply(
        &self,
        mut image: DynamicImage,
        _: &[String],
        _: &mut TransformContext,
    ) -> Result<DynamicImage> {
        draw_text(
            &mut image,
            &stamp_text(),
            16.0,
            0.0,
            0.0,
            image::Rgba([0, 0, 0, 255]),
        )?;
        Ok(image)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Fit,
    Fill,
    Exact,
}

struct Resize;
impl Resize {
    fn params(args: &[String]) -> Result<(Option<u32>, Option<u32>, Mode)> {
        arity("resize", args, 1, 2)?;
        let (w, h) = size("resize", &args[0], true)?;
        let fit = match args.get(1).map(String::as_str) {
            None | Some("fit") => Mode::Fit,
            Some("fill") => Mode::Fill,
            Some("exact") => Mode::Exact,
            Some(other) => {
                return Err(Error::invalid(format!(
                    "resize: mode {other:?} is not one of fit, fill, exact"
                )));
            }
        };
        if fit != Mode::Fit && (w.is_none() || h.is_none()) {
            return Err(Error::invalid(
                "resize: fill and exact need both width and height",
            ));
        }
        Ok((w, h, fit))
    }
}
impl Transform for Resize {
    fn name(&self) -> &str {
        "resize"
    }
    fn usage(&self) -> &str {
        "resize:WxH[:fit|fill|exact] (fit keeps the aspect ratio inside WxH; Wx or xH give one side)"
    }
    fn validate(&self, args: &[String]) -> Result<()> {
        Self::params(args).map(|_| ())
    }
    fn apply(
        &self,
        image: DynamicImage,
        args: &[String],
        _: &mut TransformContext,
    ) -> Result<DynamicImage> {
        let (w, h, fit) = Self::params(args)?;
        let (iw, ih) = (image.width(), image.height());
        let filter = FilterType::CatmullRom;
        Ok(match fit {
            Mode::Fit => {
                // A missing side is derived from the aspect ratio.
                let w = w.unwrap_or_else(|| scale_side(iw, ih, h.unwrap_or(ih)));
                let h = h.unwrap_or_else(|| scale_side(ih, iw, w));
                image.resize(w, h, filter)
            }
            Mode::Fill => image.resize_to_fill(w.unwrap_or(iw), h.unwrap_or(ih), filter),
            Mode::Exact => image.resize_exact(w.unwrap_or(iw), h.unwrap_or(ih), filter),
        })
    }
}

/// `a * target / b`, at least 1 and at most MAX_SIDE.
fn scale_side(a: u32, b: u32, target: u32) -> u32 {
    ((u64::from(a) * u64::from(target) / u64::from(b.max(1))) as u32).clamp(1, MAX_SIDE)
}

struct Thumbnail;
impl Transform for Thumbnail {
    fn name(&self) -> &str {
        "thumbnail"
    }
    fn usage(&self) -> &str {
        "thumbnail:N or thumbnail:WxH (fast downscale to fit, keeping the aspect ratio)"
    }
    fn validate(&self, args: &[String]) -> Result<()> {
        arity("thumbnail", args, 1, 1)?;
        size("thumbnail", &args[0], false).map(|_| ())
    }
    fn apply(
        &self,
        image: DynamicImage,
        args: &[String],
        _: &mut TransformContext,
    ) -> Result<DynamicImage> {
        self.validate(args)?;
        let (w, h) = size("thumbnail", &args[0], false)?;
        Ok(image.thumbnail(w.unwrap_or(1), h.unwrap_or(1)))
    }
}

struct Crop;
impl Crop {
    fn params(args: &[String]) -> Result<(u32, u32, u32, u32)> {
        arity("crop", args, 1, 1)?;
        let raw = &args[0];
        let bad = || {
            Error::invalid(format!(
                "crop: {raw:?} is not WxH+X+Y, for example 100x80+10+20"
            ))
        };
        let (dims, offsets) = raw.split_once('+').ok_or_else(bad)?;
        let (x, y) = offsets.split_once('+').ok_or_else(bad)?;
        let (w, h) = dims.split_once('x').ok_or_else(bad)?;
        Ok((
            number("crop", "width", w, 1, MAX_SIDE)?,
            number("crop", "height", h, 1, MAX_SIDE)?,
            number("crop", "x", x, 0, u32::MAX / 2)?,
            number("crop", "y", y, 0, u32::MAX / 2)?,
        ))
    }
}
impl Transform for Crop {
    fn name(&self) -> &str {
        "crop"
    }
    fn usage(&self) -> &str {
        "crop:WxH+X+Y (the rectangle must lie inside the image)"
    }
    fn validate(&self, args: &[String]) -> Result<()> {
        Self::params(args).map(|_| ())
    }
    fn apply(
        &self,
        image: DynamicImage,
        args: &[String],
        _: &mut TransformContext,
    ) -> Result<DynamicImage> {
        let (w, h, x, y) = Self::params(args)?;
        if x + w > image.width() || y + h > image.height() {
            return Err(failed(format!(
                "crop {w}x{h}+{x}+{y} lies outside the {}x{} image",
                image.width(),
                image.height()
            )));
        }
        Ok(image.crop_imm(x, y, w, h))
    }
}

struct Rotate;
impl Transform for Rotate {
    fn name(&self) -> &str {
        "rotate"
    }
    fn usage(&self) -> &str {
        "rotate:90|180|270 (clockwise)"
    }
    fn validate(&self, args: &[String]) -> Result<()> {
        arity("rotate", args, 1, 1)?;
        match args[0].as_str() {
            "90" | "180" | "270" => Ok(()),
            other => Err(Error::invalid(format!(
                "rotate: {other:?} is not 90, 180 or 270"
            ))),
        }
    }
    fn apply(
        &self,
        image: DynamicImage,
        args: &[String],
        _: &mut TransformContext,
    ) -> Result<DynamicImage> {
        self.validate(args)?;
        Ok(match args[0].as_str() {
            "90" => image.rotate90(),
            "180" => image.rotate180(),
            _ => image.rotate270(),
        })
    }
}

struct Flip;
impl Transform for Flip {
    fn name(&self) -> &str {
        "flip"
    }
    fn usage(&self) -> &str {
        "flip:h|v (horizontal: mirror left-right; vertical: upside down)"
    }
    fn validate(&self, args: &[String]) -> Result<()> {
        arity("flip", args, 1, 1)?;
        match args[0].as_str() {
            "h" | "v" => Ok(()),
            other => Err(Error::invalid(format!("flip: {other:?} is not h or v"))),
        }
    }
    fn apply(
        &self,
        image: DynamicImage,
        args: &[String],
        _: &mut TransformContext,
    ) -> Result<DynamicImage> {
        self.validate(args)?;
        Ok(if args[0] == "h" {
            image.fliph()
        } else {
            image.flipv()
        })
    }
}

struct Grayscale;
impl Transform for Grayscale {
    fn name(&self) -> &str {
        "grayscale"
    }
    fn usage(&self) -> &str {
        "grayscale"
    }
    fn validate(&self, args: &[String]) -> Result<()> {
        arity("grayscale", args, 0, 0)
    }
    fn apply(
        &self,
        image: DynamicImage,
        _: &[String],
        _: &mut TransformContext,
    ) -> Result<DynamicImage> {
        Ok(image.grayscale())
    }
}

struct Blur;
impl Transform for Blur {
    fn name(&self) -> &str {
        "blur"
    }
    fn usage(&self) -> &str {
        "blur:SIGMA (0.1 to 100)"
    }
    fn validate(&self, args: &[String]) -> Result<()> {
        arity("blur", args, 1, 1)?;
        number("blur", "sigma", &args[0], 0.1f32, 100.0).map(|_| ())
    }
    fn apply(
        &self,
        image: DynamicImage,
        args: &[String],
        _: &mut TransformContext,
    ) -> Result<DynamicImage> {
        let sigma = number("blur", "sigma", &args[0], 0.1f32, 100.0)?;
        Ok(image.fast_blur(sigma))
    }
}

struct Sharpen;
impl Sharpen {
    fn params(args: &[String]) -> Result<(f32, i32)> {
        arity("sharpen", args, 0, 2)?;
        let sigma = args
            .first()
            .map_or(Ok(1.0), |a| number("sharpen", "sigma", a, 0.1f32, 50.0))?;
        let threshold = args
            .get(1)
            .map_or(Ok(0), |a| number("sharpen", "threshold", a, 0i32, 255))?;
        Ok((sigma, threshold))
    }
}
impl Transform for Sharpen {
    fn name(&self) -> &str {
        "sharpen"
    }
    fn usage(&self) -> &str {
        "sharpen[:SIGMA[:THRESHOLD]] (unsharp mask; sigma 0.1-50, default 1; threshold 0-255, default 0)"
    }
    fn validate(&self, args: &[String]) -> Result<()> {
        Self::params(args).map(|_| ())
    }
    fn apply(
        &self,
        image: DynamicImage,
        args: &[String],
        _: &mut TransformContext,
    ) -> Result<DynamicImage> {
        let (sigma, threshold) = Self::params(args)?;
        Ok(image.unsharpen(sigma, threshold))
    }
}

struct Brightness;
impl Transform for Brightness {
    fn name(&self) -> &str {
        "brightness"
    }
    fn usage(&self) -> &str {
        "brightness:N (-255 to 255, added to every channel)"
    }
    fn validate(&self, args: &[String]) -> Result<()> {
        arity("brightness", args, 1, 1)?;
        number("brightness", "amount", &args[0], -255i32, 255).map(|_| ())
    }
    fn apply(
        &self,
        image: DynamicImage,
        args: &[String],
        _: &mut TransformContext,
    ) -> Result<DynamicImage> {
        let v = number("brightness", "amount", &args[0], -255i32, 255)?;
        Ok(image.brighten(v))
    }
}

struct Contrast;
impl Transform for Contrast {
    fn name(&self) -> &str {
        "contrast"
    }
    fn usage(&self) -> &str {
        "contrast:N (-100 to 100; positive increases contrast)"
    }
    fn validate(&self, args: &[String]) -> Result<()> {
        arity("contrast", args, 1, 1)?;
        number("contrast", "amount", &args[0], -100f32, 100.0).map(|_| ())
    }
    fn apply(
        &self,
        image: DynamicImage,
        args: &[String],
        _: &mut TransformContext,
    ) -> Result<DynamicImage> {
        let v = number("contrast", "amount", &args[0], -100f32, 100.0)?;
        Ok(image.adjust_contrast(v))
    }
}

struct AutoOrient;
impl Transform for AutoOrient {
    fn name(&self) -> &str {
        "auto-orient"
    }
    fn usage(&self) -> &str {
        "auto-orient (apply the EXIF orientation so the pixels stand upright)"
    }
    fn validate(&self, args: &[String]) -> Result<()> {
        arity("auto-orient", args, 0, 0)
    }
    fn apply(
        &self,
        mut image: DynamicImage,
        _: &[String],
        ctx: &mut TransformContext,
    ) -> Result<DynamicImage> {
        image.apply_orientation(ctx.orientation);
        ctx.orientation = Orientation::NoTransforms;
        Ok(image)
    }
}

struct Format;
impl Format {
    fn params(args: &[String]) -> Result<codec::OutputFormat> {
        arity("format", args, 1, 2)?;
        let format = codec::parse_format(&args[0]).ok_or_else(|| {
            Error::invalid(format!(
                "format: {:?} is not one of jpeg, png, webp, gif, bmp, tiff",
                args[0]
            ))
        })?;
        let quality = match args.get(1) {
            None => DEFAULT_QUALITY,
            Some(q) if format == image::ImageFormat::Jpeg => {
                number("format", "quality", q, 1u8, 100)?
            }
            Some(_) => {
                return Err(Error::invalid(format!(
                    "format: a quality applies to jpeg only, not {}",
                    args[0]
                )));
            }
        };
        Ok(codec::OutputFormat { format, quality })
    }
}
impl Transform for Format {
    fn name(&self) -> &str {
        "format"
    }
    fn usage(&self) -> &str {
        "format:jpeg|png|webp|gif|bmp|tiff[:QUALITY] (quality 1-100, jpeg only, default 85; webp is lossless)"
    }
    fn validate(&self, args: &[String]) -> Result<()> {
        Self::params(args).map(|_| ())
    }
    fn apply(
        &self,
        image: DynamicImage,
        args: &[String],
        ctx: &mut TransformContext,
    ) -> Result<DynamicImage> {
        ctx.output = Self::params(args)?;
        Ok(image)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::{Processor, TransformRegistry};
    use super::*;
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
            ("crop:10x10", "WxH+X+Y"),
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
        let e = run("crop:50x50+390+0", &jpeg(400, 200)).unwrap_err();
        assert_eq!(e.code(), "transform_failed");
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
