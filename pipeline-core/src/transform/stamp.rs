//! The prototype's stamp: local time and a random string drawn at the top-left.

use std::sync::OnceLock;

use ab_glyph::{Font, FontRef, PxScale, ScaleFont, point};
use image::{DynamicImage, GenericImage, GenericImageView, Rgba};

use crate::error::{Error, ImageErrorKind, Result};

static FONT_BYTES: &[u8] = include_bytes!("../../assets/DejaVuSerif.ttf");
static FONT: OnceLock<Option<FontRef<'static>>> = OnceLock::new();

fn font() -> Result<&'static FontRef<'static>> {
    FONT.get_or_init(|| FontRef::try_from_slice(FONT_BYTES).ok())
        .as_ref()
        .ok_or_else(|| {
            Error::image(
                ImageErrorKind::TransformFailed,
                "the bundled font does not parse",
            )
        })
}

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// `HH:MM:SS - ` in local time followed by 10 random characters from A-Z0-9,
/// as the prototype stamped.
pub fn stamp_text() -> String {
    let mut text = chrono::Local::now().format("%H:%M:%S - ").to_string();
    for _ in 0..10 {
        text.push(ALPHABET[fastrand::usize(..ALPHABET.len())] as char);
    }
    text
}

/// Draw `text` in DejaVu Serif with an em of `px` pixels, its top-left corner
/// at (`x`, `y`), blending `color` in place (no copy of the image).
pub fn draw_text(
    image: &mut DynamicImage,
    text: &str,
    px: f32,
    x: f32,
    y: f32,
    color: Rgba<u8>,
) -> Result<()> {
    let font = font()?;
    let units_per_em = font.units_per_em().unwrap_or(2048.0);
    // ab_glyph scales by ascent-to-descent height; Pillow's size is the em.
    let scale = PxScale::from(px * font.height_unscaled() / units_per_em);
    let scaled = font.as_scaled(scale);
    let baseline = y + scaled.ascent();
    let (w, h) = image.dimensions();
    let mut caret = x;
    let mut previous = None;
    for c in text.chars() {
        let id = font.glyph_id(c);
        if let Some(prev) = previous {
            caret += scaled.kern(prev, id);
        }
        let glyph = id.with_scale_and_position(scale, point(caret, baseline));
        caret += scaled.h_advance(id);
        previous = Some(id);
        let Some(outlined) = font.outline_glyph(glyph) else {
            continue;
        };
        let bounds = outlined.px_bounds();
        outlined.draw(|gx, gy, coverage| {
            let px_x = bounds.min.x as i64 + i64::from(gx);
            let px_y = bounds.min.y as i64 + i64::from(gy);
            if px_x < 0 || px_y < 0 || px_x >= i64::from(w) || px_y >= i64::from(h) {
                return;
            }
            let (px_x, px_y) = (px_x as u32, px_y as u32);
            let a = coverage.clamp(0.0, 1.0) * f32::from(color[3]) / 255.0;
            let under = image.get_pixel(px_x, px_y);
            let mut out = under;
            for ch in 0..3 {
                out[ch] =
                    (f32::from(color[ch]) * a + f32::from(under[ch]) * (1.0 - a)).round() as u8;
            }
            out[3] = under[3].max((a * 255.0).round() as u8);
            image.put_pixel(px_x, px_y, out);
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn text_shape() {
        let t = stamp_text();
        assert_eq!(t.len(), 21, "{t}");
        assert_eq!(&t[2..3], ":");
        assert!(t[11..].bytes().all(|b| ALPHABET.contains(&b)), "{t}");
    }

    #[test]
    fn draws_black_at_top_left_only() {
        let mut img = DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
            300,
            100,
            image::Rgb([255, 255, 255]),
        ));
        draw_text(
            &mut img,
            "12:34:56 - ABCDEFGHIJ",
            16.0,
            0.0,
            0.0,
            Rgba([0, 0, 0, 255]),
        )
        .unwrap();
        let rgb = img.to_rgb8();
        let dark_top = rgb
            .enumerate_pixels()
            .filter(|(_, y, p)| *y < 20 && p[0] < 128)
            .count();
        let dark_below = rgb
            .enumerate_pixels()
            .filter(|(_, y, p)| *y >= 25 && p[0] < 255)
            .count();
        assert!(
            dark_top > 100,
            "only {dark_top} dark pixels in the text band"
        );
        assert_eq!(dark_below, 0);
        let rightmost = rgb
            .enumerate_pixels()
            .filter(|(_, _, p)| p[0] < 128)
            .map(|(x, _, _)| x)
            .max()
            .unwrap();
        assert!(
            (120..250).contains(&rightmost),
            "text ends at x={rightmost}"
        );
    }
}
