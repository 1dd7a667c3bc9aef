//! Output: the prototype's stamp, and the output format.

use image::DynamicImage;

use super::{arity, number};
use crate::error::{Error, Result};
use crate::transform::codec::{self, DEFAULT_QUALITY};
use crate::transform::stamp::{draw_text, stamp_text};
use crate::transform::{Param, ParamKind, Transform, TransformContext};

pub(super) struct Stamp;
impl Transform for Stamp {
    fn name(&self) -> &str {
        "stamp"
    }
    fn usage(&self) -> &str {
        "stamp: draw local time HH:MM:SS and 10 random characters at the top-left (DejaVu Serif 16 px, black)"
    }
    fn params(&self) -> Vec<Param> {
        Vec::new()
    }
    fn deterministic(&self) -> bool {
        false
    }
    fn output_size(&self, _: &[String], w: u32, h: u32) -> Option<(u32, u32)> {
        Some((w, h))
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

pub(super) struct Format;
impl Format {
    fn parse(args: &[String]) -> Result<codec::OutputFormat> {
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
    fn params(&self) -> Vec<Param> {
        vec![
            Param::new(
                "format",
                ParamKind::Choice,
                "output format (webp is lossless)",
            )
            .choices(&["jpeg", "png", "webp", "gif", "bmp", "tiff"]),
            Param::new("quality", ParamKind::Integer, "JPEG quality")
                .range(1.0, 100.0)
                .optional(Some("85")),
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
        ctx: &mut TransformContext,
    ) -> Result<DynamicImage> {
        ctx.output = Self::parse(args)?;
        Ok(image)
    }
}
