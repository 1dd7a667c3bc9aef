//! Pixel adjustments: grayscale, blur, sharpen, brightness, contrast.

use image::DynamicImage;

use super::{arity, number};
use crate::error::Result;
use crate::transform::{Param, ParamKind, Transform, TransformContext};

pub(super) struct Grayscale;
impl Transform for Grayscale {
    fn name(&self) -> &str {
        "grayscale"
    }
    fn usage(&self) -> &str {
        "grayscale"
    }
    fn params(&self) -> Vec<Param> {
        Vec::new()
    }
    fn output_size(&self, _: &[String], w: u32, h: u32) -> Option<(u32, u32)> {
        Some((w, h))
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

pub(super) struct Blur;
impl Transform for Blur {
    fn name(&self) -> &str {
        "blur"
    }
    fn usage(&self) -> &str {
        "blur:SIGMA (0.1 to 100)"
    }
    fn params(&self) -> Vec<Param> {
        vec![Param::new("sigma", ParamKind::Number, "blur radius").range(0.1, 100.0)]
    }
    fn output_size(&self, _: &[String], w: u32, h: u32) -> Option<(u32, u32)> {
        Some((w, h))
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

/// The unsharp mask's Gaussian costs time in proportion to its sigma (a
/// kernel of about 6 sigma taps per pass): 10 keeps the worst case at 32
/// of them on a 40-megapixel image within a bounded time (see
/// `docs/security.md`). The box blur of `blur` costs the same at any sigma.
const MAX_SHARPEN_SIGMA: f32 = 10.0;

pub(super) struct Sharpen;
impl Sharpen {
    fn parse(args: &[String]) -> Result<(f32, i32)> {
        arity("sharpen", args, 0, 2)?;
        let sigma = args.first().map_or(Ok(1.0), |a| {
            number("sharpen", "sigma", a, 0.1f32, MAX_SHARPEN_SIGMA)
        })?;
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
        "sharpen[:SIGMA[:THRESHOLD]] (unsharp mask; sigma 0.1-10, default 1; threshold 0-255, default 0)"
    }
    fn params(&self) -> Vec<Param> {
        vec![
            Param::new("sigma", ParamKind::Number, "radius of the unsharp mask")
                .range(0.1, f64::from(MAX_SHARPEN_SIGMA))
                .optional(Some("1")),
            Param::new(
                "threshold",
                ParamKind::Integer,
                "least difference sharpened",
            )
            .range(0.0, 255.0)
            .optional(Some("0")),
        ]
    }
    fn output_size(&self, _: &[String], w: u32, h: u32) -> Option<(u32, u32)> {
        Some((w, h))
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
        let (sigma, threshold) = Self::parse(args)?;
        Ok(image.unsharpen(sigma, threshold))
    }
}

pub(super) struct Brightness;
impl Transform for Brightness {
    fn name(&self) -> &str {
        "brightness"
    }
    fn usage(&self) -> &str {
        "brightness:N (-255 to 255, added to every channel)"
    }
    fn params(&self) -> Vec<Param> {
        vec![
            Param::new("amount", ParamKind::Integer, "added to every channel").range(-255.0, 255.0),
        ]
    }
    fn output_size(&self, _: &[String], w: u32, h: u32) -> Option<(u32, u32)> {
        Some((w, h))
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

pub(super) struct Contrast;
impl Transform for Contrast {
    fn name(&self) -> &str {
        "contrast"
    }
    fn usage(&self) -> &str {
        "contrast:N (-100 to 100; positive increases contrast)"
    }
    fn params(&self) -> Vec<Param> {
        vec![
            Param::new("amount", ParamKind::Number, "positive increases contrast")
                .range(-100.0, 100.0),
        ]
    }
    fn output_size(&self, _: &[String], w: u32, h: u32) -> Option<(u32, u32)> {
        Some((w, h))
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
