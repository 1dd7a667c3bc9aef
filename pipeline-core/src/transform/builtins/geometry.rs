//! Geometry: resize, thumbnail, crop, rotate, flip, auto-orient.

use image::{DynamicImage, imageops::FilterType, metadata::Orientation};

use super::{MAX_SIDE, arity, failed, number, size, size_param};
use crate::error::{Error, Result};
use crate::transform::{Param, ParamKind, Transform, TransformContext};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Fit,
    Fill,
    Exact,
}

pub(super) struct Resize;
impl Resize {
    fn parse(args: &[String]) -> Result<(Option<u32>, Option<u32>, Mode)> {
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
    fn params(&self) -> Vec<Param> {
        vec![
            size_param("size", "target box: WxH, or Wx / xH for one side"),
            Param::new(
                "mode",
                ParamKind::Choice,
                "fit inside, fill and crop, or stretch",
            )
            .choices(&["fit", "fill", "exact"])
            .optional(Some("fit")),
        ]
    }
    fn output_size(&self, args: &[String], iw: u32, ih: u32) -> Option<(u32, u32)> {
        let (w, h, fit) = Self::parse(args).ok()?;
        Some(match fit {
            Mode::Fit => {
                let w = w.unwrap_or_else(|| scale_side(iw, ih, h.unwrap_or(ih)));
                let h = h.unwrap_or_else(|| scale_side(ih, iw, w));
                fit_inside(iw, ih, w, h)
            }
            Mode::Fill | Mode::Exact => (w.unwrap_or(iw), h.unwrap_or(ih)),
        })
    }
    fn validate(&self, args: &[String]) -> Result<()> {
        Self::parse(args).map(|_| ())
    }
    fn apply(
        &self,
        image: DynamicImage,
        args: &[String],
        _: &mut TransformContext,
    ) -> Result<DynamicImage> {
        let (w, h, fit) = Self::parse(args)?;
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

/// The `iw` x `ih` shape scaled to fit inside `w` x `h` by the smaller of
/// the two ratios, each side rounded to the nearest pixel and at least 1:
/// the size `resize` (fit) and `thumbnail` make.
fn fit_inside(iw: u32, ih: u32, w: u32, h: u32) -> (u32, u32) {
    let (iw, ih) = (f64::from(iw.max(1)), f64::from(ih.max(1)));
    let ratio = (f64::from(w) / iw).min(f64::from(h) / ih);
    let side = |v: f64| ((v * ratio).round() as u32).max(1);
    (side(iw), side(ih))
}

pub(super) struct Thumbnail;
impl Transform for Thumbnail {
    fn name(&self) -> &str {
        "thumbnail"
    }
    fn usage(&self) -> &str {
        "thumbnail:N or thumbnail:WxH (fast downscale to fit, keeping the aspect ratio)"
    }
    fn params(&self) -> Vec<Param> {
        vec![size_param("size", "box to fit in: N or WxH")]
    }
    fn output_size(&self, args: &[String], iw: u32, ih: u32) -> Option<(u32, u32)> {
        let (w, h) = size("thumbnail", args.first()?, false).ok()?;
        Some(fit_inside(iw, ih, w.unwrap_or(1), h.unwrap_or(1)))
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

/// Largest crop offset (offsets beyond the image fail the job, not the parse).
const MAX_OFFSET: u32 = u32::MAX / 2;

pub(super) struct Crop;
impl Crop {
    /// `WxH:X:Y` (URL-safe), or `WxH+X+Y` as ImageMagick writes it (a
    /// `+` that reached us through a query string as a space is a `+`).
    fn parse(args: &[String]) -> Result<(u32, u32, u32, u32)> {
        let bad = || {
            Error::invalid(format!(
                "crop: {args:?} is not WxH:X:Y (or WxH+X+Y), for example crop:100x80:10:20"
            ))
        };
        let (dims, x, y) = match args {
            [dims, x, y] => (dims.as_str(), x.as_str(), y.as_str()),
            [one] => {
                let mut parts = one.split(['+', ' ']);
                match (parts.next(), parts.next(), parts.next(), parts.next()) {
                    (Some(d), Some(x), Some(y), None) => (d, x, y),
                    _ => return Err(bad()),
                }
            }
            _ => return Err(bad()),
        };
        let (w, h) = dims.split_once('x').ok_or_else(bad)?;
        Ok((
            number("crop", "width", w, 1, MAX_SIDE)?,
            number("crop", "height", h, 1, MAX_SIDE)?,
            number("crop", "x", x, 0, MAX_OFFSET)?,
            number("crop", "y", y, 0, MAX_OFFSET)?,
        ))
    }
}
impl Transform for Crop {
    fn name(&self) -> &str {
        "crop"
    }
    fn usage(&self) -> &str {
        "crop:WxH:X:Y or crop:WxH+X+Y (the rectangle must lie inside the image)"
    }
    fn params(&self) -> Vec<Param> {
        vec![
            size_param("size", "the rectangle: WxH"),
            Param::new("x", ParamKind::Integer, "left edge").range(0.0, f64::from(MAX_OFFSET)),
            Param::new("y", ParamKind::Integer, "top edge").range(0.0, f64::from(MAX_OFFSET)),
        ]
    }
    fn output_size(&self, args: &[String], _: u32, _: u32) -> Option<(u32, u32)> {
        Self::parse(args).ok().map(|(w, h, _, _)| (w, h))
    }
    fn validate(&self, args: &[String]) -> Result<()> {
        Self::parse(args).map(|_| ())
    }
    fn apply(
        &self,
        image: DynamicImage,
        args: &[String],
        _: &mut TransformContext,
    ) -> Result<DynamicImage> {
        let (w, h, x, y) = Self::parse(args)?;
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

pub(super) struct Rotate;
impl Transform for Rotate {
    fn name(&self) -> &str {
        "rotate"
    }
    fn usage(&self) -> &str {
        "rotate:90|180|270 (clockwise)"
    }
    fn params(&self) -> Vec<Param> {
        vec![Param::new("degrees", ParamKind::Choice, "clockwise").choices(&["90", "180", "270"])]
    }
    fn output_size(&self, args: &[String], w: u32, h: u32) -> Option<(u32, u32)> {
        match args.first()?.as_str() {
            "180" => Some((w, h)),
            _ => Some((h, w)),
        }
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

pub(super) struct Flip;
impl Transform for Flip {
    fn name(&self) -> &str {
        "flip"
    }
    fn usage(&self) -> &str {
        "flip:h|v (horizontal: mirror left-right; vertical: upside down)"
    }
    fn params(&self) -> Vec<Param> {
        vec![
            Param::new(
                "axis",
                ParamKind::Choice,
                "h: mirror left-right; v: upside down",
            )
            .choices(&["h", "v"]),
        ]
    }
    fn output_size(&self, _: &[String], w: u32, h: u32) -> Option<(u32, u32)> {
        Some((w, h))
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

pub(super) struct AutoOrient;
impl Transform for AutoOrient {
    fn name(&self) -> &str {
        "auto-orient"
    }
    fn usage(&self) -> &str {
        "auto-orient (apply the EXIF orientation so the pixels stand upright)"
    }
    fn params(&self) -> Vec<Param> {
        Vec::new()
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
