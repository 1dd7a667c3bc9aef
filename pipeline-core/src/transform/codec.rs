//! Decoding untrusted bytes within limits, and encoding results.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, metadata::Orientation};

use crate::error::{Error, ImageErrorKind, Result};

/// Formats this build reads and writes.
pub const SUPPORTED_FORMATS: &[ImageFormat] = &[
    ImageFormat::Jpeg,
    ImageFormat::Png,
    ImageFormat::WebP,
    ImageFormat::Gif,
    ImageFormat::Bmp,
    ImageFormat::Tiff,
];

/// What one job may cost: the size of the images it reads and makes
/// (checked against the header before anything is decoded, and against
/// each operation's output before it runs), its result's size and its time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest width in pixels, of an input or of any operation's output.
    pub max_width: u32,
    /// Largest height in pixels, likewise.
    pub max_height: u32,
    /// Largest width x height, likewise.
    pub max_pixels: u64,
    /// Formats accepted as input.
    pub formats: Vec<ImageFormat>,
    /// Largest encoded result, in bytes.
    pub max_result_bytes: u64,
    /// Longest a job may take from the start of its decoding, checked
    /// after the decoding, after each operation and before the encoding.
    pub job_timeout: Option<std::time::Duration>,
}

impl Default for ImageLimits {
    /// 16384 x 16384 at most, 40 megapixels, every supported format,
    /// results up to 256 MiB, no time limit.
    fn default() -> Self {
        Self {
            max_width: 16_384,
            max_height: 16_384,
            max_pixels: 40_000_000,
            formats: SUPPORTED_FORMATS.to_vec(),
            max_result_bytes: 256 * 1024 * 1024,
            job_timeout: None,
        }
    }
}

impl ImageLimits {
    /// Refuse an image of `width` x `height` that `what` (an operation)
    /// would make.
    pub fn check_output(&self, what: &str, width: u32, height: u32) -> Result<()> {
        let pixels = u64::from(width) * u64::from(height);
        if width > self.max_width || height > self.max_height || pixels > self.max_pixels {
            return Err(Error::image(
                ImageErrorKind::TooManyPixels,
                format!(
                    "{what} would make a {width}x{height} image ({pixels} pixels); the limit is {}x{} and {} pixels",
                    self.max_width, self.max_height, self.max_pixels
                ),
            ));
        }
        Ok(())
    }

    /// Refuse to encode `image` as `format` when the file could not fit
    /// in `max_result_bytes` (formats without compression: BMP, TIFF).
    pub fn check_encoding(&self, image: &DynamicImage, format: ImageFormat) -> Result<()> {
        let uncompressed = matches!(format, ImageFormat::Bmp | ImageFormat::Tiff);
        if !uncompressed {
            return Ok(());
        }
        let pixel_bytes = u64::from(image.color().bytes_per_pixel());
        let size = u64::from(image.width()) * u64::from(image.height()) * pixel_bytes;
        self.check_result_size(size, format)
    }

    /// Refuse a result of `size` bytes over `max_result_bytes`.
    pub fn check_result_size(&self, size: u64, format: ImageFormat) -> Result<()> {
        if size > self.max_result_bytes {
            return Err(Error::image(
                ImageErrorKind::ResultTooLarge,
                format!(
                    "the {} result would be {size} bytes; the limit is {} bytes",
                    format_name(format),
                    self.max_result_bytes
                ),
            ));
        }
        Ok(())
    }
}

/// What the header of an image says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Detected format.
    pub format: ImageFormat,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// Output format and quality.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputFormat {
    /// Format to encode.
    pub format: ImageFormat,
    /// JPEG quality 1-100.
    pub quality: u8,
}

/// Default JPEG quality.
pub const DEFAULT_QUALITY: u8 = 85;

/// Short lower-case name of a format (`jpeg`, `png`...).
pub fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Jpeg => "jpeg",
        ImageFormat::Png => "png",
        ImageFormat::WebP => "webp",
        ImageFormat::Gif => "gif",
        ImageFormat::Bmp => "bmp",
        ImageFormat::Tiff => "tiff",
        other => other.extensions_str().first().copied().unwrap_or("unknown"),
    }
}

/// Format from a name or extension (`jpg`, `jpeg`, `png`...), among the supported ones.
pub fn parse_format(name: &str) -> Option<ImageFormat> {
    let f = ImageFormat::from_extension(name.to_ascii_lowercase())?;
    SUPPORTED_FORMATS.contains(&f).then_some(f)
}

/// Media type of a format.
pub fn content_type(format: ImageFormat) -> &'static str {
    format.to_mime_type()
}

/// Read format and dimensions from the header and check them against `limits`.
pub fn probe(data: &[u8], limits: &ImageLimits) -> Result<Probe> {
    let format = detect(data, limits)?;
    let reader = ImageReader::with_format(Cursor::new(data), format);
    let (width, height) = reader
        .into_dimensions()
        .map_err(|e| image_error(e, format))?;
    check_dimensions(width, height, limits)?;
    Ok(Probe {
        format,
        width,
        height,
    })
}

fn detect(data: &[u8], limits: &ImageLimits) -> Result<ImageFormat> {
    if data.is_empty() {
        return Err(Error::image(
            ImageErrorKind::NotAnImage,
            "the file is empty",
        ));
    }
    let format = image::guess_format(data).map_err(|_| {
        Error::image(
            ImageErrorKind::NotAnImage,
            "the bytes are not an image of any known format",
        )
    })?;
    if !limits.formats.contains(&format) {
        let allowed: Vec<&str> = limits.formats.iter().map(|f| format_name(*f)).collect();
        return Err(Error::image(
            ImageErrorKind::UnsupportedFormat,
            format!(
                "{} images are not accepted; accepted formats: {}",
                format_name(format),
                allowed.join(", ")
            ),
        ));
    }
    Ok(format)
}

fn check_dimensions(width: u32, height: u32, limits: &ImageLimits) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(Error::image(
            ImageErrorKind::CorruptImage,
            format!("the header declares an empty image ({width}x{height})"),
        ));
    }
    let pixels = u64::from(width) * u64::from(height);
    if width > limits.max_width || height > limits.max_height || pixels > limits.max_pixels {
        return Err(Error::image(
            ImageErrorKind::TooManyPixels,
            format!(
                "the image is {width}x{height} ({pixels} pixels); the limit is {}x{} and {} pixels",
                limits.max_width, limits.max_height, limits.max_pixels
            ),
        ));
    }
    Ok(())
}

/// A decoded image with what its header said.
#[derive(Debug)]
pub struct Decoded {
    /// The pixels.
    pub image: DynamicImage,
    /// Format and dimensions.
    pub probe: Probe,
    /// EXIF orientation, applied only by `auto-orient`.
    pub orientation: Orientation,
}

/// Which library decodes JPEG images.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum JpegDecoder {
    /// zune-jpeg through `image`: pure Rust, the default.
    #[default]
    Rust,
    /// libjpeg-turbo (feature `turbojpeg`): about twice as fast, but C code
    /// reads the untrusted bytes. Colour spaces other than YCbCr, RGB and
    /// grey (CMYK) still go through the Rust decoder.
    #[cfg(feature = "turbojpeg")]
    LibjpegTurbo,
}

/// Decode `data` after checking its header against `limits`.
pub fn decode(data: &[u8], limits: &ImageLimits) -> Result<Decoded> {
    decode_with(data, limits, JpegDecoder::Rust)
}

/// [`decode`], with JPEG images decoded by `jpeg`.
pub fn decode_with(data: &[u8], limits: &ImageLimits, jpeg: JpegDecoder) -> Result<Decoded> {
    let probe = probe(data, limits)?;
    #[cfg(feature = "turbojpeg")]
    if jpeg == JpegDecoder::LibjpegTurbo && probe.format == ImageFormat::Jpeg {
        check_complete(data, probe.format)?;
        if let Some(decoded) = turbo::decode(data, probe)? {
            return Ok(decoded);
        }
    }
    let _ = jpeg;
    let mut reader = ImageReader::with_format(Cursor::new(data), probe.format);
    let mut decode_limits = image::Limits::default();
    decode_limits.max_image_width = Some(limits.max_width);
    decode_limits.max_image_height = Some(limits.max_height);
    // Room for the largest pixel type (RGBA32F) plus decoder buffers.
    decode_limits.max_alloc = Some(
        limits
            .max_pixels
            .saturating_mul(16)
            .saturating_add(64 << 20),
    );
    reader.limits(decode_limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| image_error(e, probe.format))?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let image = DynamicImage::from_decoder(decoder).map_err(|e| image_error(e, probe.format))?;
    check_complete(data, probe.format)?;
    Ok(Decoded {
        image,
        probe,
        orientation,
    })
}

#[cfg(feature = "turbojpeg")]
mod turbo {
    use std::cell::RefCell;
    use std::io::Cursor;

    use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, metadata::Orientation};
    use turbojpeg::{Colorspace, Decompressor, PixelFormat};

    use super::{Decoded, Probe, image_error};
    use crate::error::{Error, ImageErrorKind, Result};

    thread_local! {
        static DECOMPRESSOR: RefCell<Option<Decompressor>> = const { RefCell::new(None) };
    }

    fn corrupt(e: impl std::fmt::Display) -> Error {
        Error::image(
            ImageErrorKind::CorruptImage,
            format!("the JPEG data is corrupt: {e}"),
        )
    }

    /// The pixels of a JPEG whose header `probe` checked; `None` for a
    /// colour space libjpeg-turbo does not turn into RGB (CMYK, YCCK).
    pub(super) fn decode(data: &[u8], probe: Probe) -> Result<Option<Decoded>> {
        // The orientation, from the EXIF block (headers only).
        let orientation = ImageReader::with_format(Cursor::new(data), ImageFormat::Jpeg)
            .into_decoder()
            .map_err(|e| image_error(e, ImageFormat::Jpeg))?
            .orientation()
            .unwrap_or(Orientation::NoTransforms);
        DECOMPRESSOR.with(|cell| {
            let mut slot = cell.borrow_mut();
            let d = match slot.as_mut() {
                Some(d) => d,
                None => slot.insert(Decompressor::new().map_err(corrupt)?),
            };
            let header = d.read_header(data).map_err(corrupt)?;
            if (header.width, header.height) != (probe.width as usize, probe.height as usize) {
                return Err(corrupt(format!(
                    "libjpeg-turbo reads {}x{}, the header check {}x{}",
                    header.width, header.height, probe.width, probe.height
                )));
            }
            let format = match header.colorspace {
                Colorspace::Gray => PixelFormat::GRAY,
                Colorspace::YCbCr | Colorspace::RGB => PixelFormat::RGB,
                _ => return Ok(None),
            };
            let (w, h) = (header.width, header.height);
            let mut pixels = vec![0u8; w * h * format.size()];
            d.decompress(
                data,
                turbojpeg::Image {
                    pixels: &mut pixels[..],
                    width: w,
                    pitch: w * format.size(),
                    height: h,
                    format,
                },
            )
            .map_err(corrupt)?;
            let image = if format == PixelFormat::GRAY {
                image::GrayImage::from_raw(probe.width, probe.height, pixels)
                    .map(DynamicImage::ImageLuma8)
            } else {
                image::RgbImage::from_raw(probe.width, probe.height, pixels)
                    .map(DynamicImage::ImageRgb8)
            };
            let image = image.ok_or_else(|| corrupt("pixel buffer of the wrong size"))?;
            Ok(Some(Decoded {
                image,
                probe,
                orientation,
            }))
        })
    }
}

/// Lenient decoders fill a truncated image with grey; refuse files that
/// lack their format's end marker.
fn check_complete(data: &[u8], format: ImageFormat) -> Result<()> {
    let complete = match format {
        // EOI, possibly followed by padding some writers add.
        ImageFormat::Jpeg => {
            let tail = &data[data.len().saturating_sub(4096)..];
            tail.windows(2).any(|w| w == [0xFF, 0xD9])
        }
        ImageFormat::Gif => data.contains(&0x3B),
        _ => true,
    };
    if complete {
        Ok(())
    } else {
        Err(Error::image(
            ImageErrorKind::CorruptImage,
            format!(
                "the {} data is truncated (no end marker)",
                format_name(format)
            ),
        ))
    }
}

fn image_error(e: image::ImageError, format: ImageFormat) -> Error {
    use image::ImageError as E;
    let name = format_name(format);
    match e {
        E::Limits(l) => Error::image(
            ImageErrorKind::TooManyPixels,
            format!("decoding the {name} image would exceed the limits: {l}"),
        ),
        E::Unsupported(u) => Error::image(
            ImageErrorKind::UnsupportedFormat,
            format!("this {name} image uses an unsupported feature: {u}"),
        ),
        E::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => Error::image(
            ImageErrorKind::CorruptImage,
            format!("the {name} data is truncated"),
        ),
        other => Error::image(
            ImageErrorKind::CorruptImage,
            format!("the {name} data is corrupt: {other}"),
        ),
    }
}

/// Encode `image` as `output`.
pub fn encode(image: &DynamicImage, output: OutputFormat) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity((image.width() * image.height()) as usize / 4 + 1024);
    let fail = |e: &dyn std::fmt::Display| {
        Error::image(
            ImageErrorKind::EncodeFailed,
            format!("could not encode {}: {e}", format_name(output.format)),
        )
    };
    match output.format {
        ImageFormat::Jpeg => encode_jpeg(image, output.quality, &mut out).map_err(|e| fail(&e))?,
        ImageFormat::Png => {
            let enc = image::codecs::png::PngEncoder::new_with_quality(
                &mut out,
                image::codecs::png::CompressionType::Fast,
                image::codecs::png::FilterType::Adaptive,
            );
            image.write_with_encoder(enc).map_err(|e| fail(&e))?;
        }
        ImageFormat::WebP => {
            let enc = image::codecs::webp::WebPEncoder::new_lossless(&mut out);
            to_8bit(image)
                .write_with_encoder(enc)
                .map_err(|e| fail(&e))?;
        }
        ImageFormat::Gif => {
            DynamicImage::ImageRgba8(image.to_rgba8())
                .write_to(&mut Cursor::new(&mut out), ImageFormat::Gif)
                .map_err(|e| fail(&e))?;
        }
        ImageFormat::Bmp => to_8bit(image)
            .write_to(&mut Cursor::new(&mut out), ImageFormat::Bmp)
            .map_err(|e| fail(&e))?,
        ImageFormat::Tiff => image
            .write_to(&mut Cursor::new(&mut out), ImageFormat::Tiff)
            .map_err(|e| fail(&e))?,
        other => return Err(fail(&format!("{other:?} is not an output format"))),
    }
    Ok(out)
}

fn to_8bit(image: &DynamicImage) -> DynamicImage {
    match image {
        DynamicImage::ImageRgb8(_)
        | DynamicImage::ImageRgba8(_)
        | DynamicImage::ImageLuma8(_)
        | DynamicImage::ImageLumaA8(_) => image.clone(),
        i if i.color().has_alpha() => DynamicImage::ImageRgba8(i.to_rgba8()),
        i => DynamicImage::ImageRgb8(i.to_rgb8()),
    }
}

/// JPEG through libjpeg-turbo (feature `turbojpeg`): 4:2:0 (grey images
/// as grey), about 3x faster than `jpeg-encoder` at the same quality
/// setting. One compressor per thread, kept between images.
#[cfg(feature = "turbojpeg")]
fn encode_jpeg(
    image: &DynamicImage,
    quality: u8,
    out: &mut Vec<u8>,
) -> std::result::Result<(), String> {
    use std::borrow::Cow;
    use std::cell::RefCell;
    use turbojpeg::{Compressor, PixelFormat, Subsamp};
    thread_local! {
        static COMPRESSOR: RefCell<Option<Compressor>> = const { RefCell::new(None) };
    }
    let (pixels, format, subsamp): (Cow<'_, [u8]>, _, _) = match image {
        DynamicImage::ImageRgb8(buf) => (
            Cow::Borrowed(buf.as_raw()),
            PixelFormat::RGB,
            Subsamp::Sub2x2,
        ),
        DynamicImage::ImageLuma8(buf) => (
            Cow::Borrowed(buf.as_raw()),
            PixelFormat::GRAY,
            Subsamp::Gray,
        ),
        i if i.color().has_color() => (
            Cow::Owned(i.to_rgb8().into_raw()),
            PixelFormat::RGB,
            Subsamp::Sub2x2,
        ),
        i => (
            Cow::Owned(i.to_luma8().into_raw()),
            PixelFormat::GRAY,
            Subsamp::Gray,
        ),
    };
    let (width, height) = (image.width() as usize, image.height() as usize);
    let view = turbojpeg::Image {
        pixels: &pixels[..],
        width,
        pitch: width * format.size(),
        height,
        format,
    };
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let compressor = match slot.as_mut() {
            Some(c) => c,
            None => slot.insert(Compressor::new().map_err(|e| e.to_string())?),
        };
        compressor
            .set_quality(i32::from(quality.clamp(1, 100)))
            .map_err(|e| e.to_string())?;
        compressor.set_subsamp(subsamp).map_err(|e| e.to_string())?;
        let jpeg = compressor
            .compress_to_owned(view)
            .map_err(|e| e.to_string())?;
        out.extend_from_slice(&jpeg);
        Ok(())
    })
}

/// JPEG in pure Rust: the encoder of a build without `turbojpeg`.
#[cfg(not(feature = "turbojpeg"))]
fn encode_jpeg(
    image: &DynamicImage,
    quality: u8,
    out: &mut Vec<u8>,
) -> std::result::Result<(), String> {
    encode_jpeg_rust(image, quality, out)
}

/// JPEG through `jpeg-encoder`: 4:2:0 like libjpeg's default, and about 2.5x
/// faster than the `image` crate's 4:4:4 encoder (see docs/benchmarks.md).
/// A `turbojpeg` build uses it only to compare the two (tests).
#[cfg_attr(feature = "turbojpeg", allow(dead_code))]
fn encode_jpeg_rust(
    image: &DynamicImage,
    quality: u8,
    out: &mut Vec<u8>,
) -> std::result::Result<(), String> {
    use jpeg_encoder::{ColorType, Encoder, SamplingFactor};
    let (w, h) = (image.width(), image.height());
    let (w16, h16) = match (u16::try_from(w), u16::try_from(h)) {
        (Ok(a), Ok(b)) => (a, b),
        _ => {
            return Err(format!(
                "JPEG is limited to 65535x65535, the image is {w}x{h}"
            ));
        }
    };
    let mut enc = Encoder::new(out, quality.clamp(1, 100));
    enc.set_sampling_factor(SamplingFactor::R_4_2_0);
    let result = match image {
        DynamicImage::ImageRgb8(buf) => enc.encode(buf.as_raw(), w16, h16, ColorType::Rgb),
        DynamicImage::ImageLuma8(buf) => enc.encode(buf.as_raw(), w16, h16, ColorType::Luma),
        i if i.color().has_color() => {
            let rgb = i.to_rgb8();
            enc.encode(rgb.as_raw(), w16, h16, ColorType::Rgb)
        }
        i => {
            let luma = i.to_luma8();
            enc.encode(luma.as_raw(), w16, h16, ColorType::Luma)
        }
    };
    result.map_err(|e| e.to_string())
}

pub use super::structure::check_structure;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img =
            DynamicImage::ImageRgb8(image::RgbImage::from_pixel(w, h, image::Rgb([10, 20, 30])));
        encode(
            &img,
            OutputFormat {
                format: ImageFormat::Png,
                quality: 85,
            },
        )
        .unwrap()
    }

    /// Mean absolute difference of two images' RGB samples.
    fn difference(a: &DynamicImage, b: &DynamicImage) -> f64 {
        let (a, b) = (a.to_rgb8(), b.to_rgb8());
        let total: u64 = a
            .as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(x, y)| u64::from(x.abs_diff(*y)))
            .sum();
        total as f64 / a.as_raw().len() as f64
    }

    #[cfg(feature = "turbojpeg")]
    #[test]
    fn libjpeg_turbo_decodes_like_the_rust_decoder() {
        let rgb = DynamicImage::ImageRgb8(image::RgbImage::from_fn(120, 80, |x, y| {
            image::Rgb([(x * 2) as u8, (y * 3) as u8, ((x + y) / 2) as u8])
        }));
        let grey = DynamicImage::ImageLuma8(image::GrayImage::from_fn(120, 80, |x, y| {
            image::Luma([(x + y) as u8])
        }));
        let limits = ImageLimits::default();
        for (name, img) in [("rgb", &rgb), ("grey", &grey)] {
            let out = OutputFormat {
                format: ImageFormat::Jpeg,
                quality: 90,
            };
            let jpeg = encode(img, out).unwrap();
            let ours = decode(&jpeg, &limits).unwrap();
            let turbo = decode_with(&jpeg, &limits, JpegDecoder::LibjpegTurbo).unwrap();
            assert_eq!(turbo.probe, ours.probe, "{name}");
            assert_eq!(turbo.image.color(), ours.image.color(), "{name}");
            let d = difference(&ours.image, &turbo.image);
            assert!(d < 1.5, "{name}: the decoders differ by {d} on average");
            // A truncated file is refused, as by the Rust decoder.
            let cut = &jpeg[..jpeg.len() / 2];
            let err = decode_with(cut, &limits, JpegDecoder::LibjpegTurbo).unwrap_err();
            assert!(err.to_string().contains("truncated"), "{name}: {err}");
        }
    }

    /// The two JPEG encoders at the default quality on the photo sample:
    /// sizes within 15 % of each other, both as close to the original
    /// (`--nocapture` prints the figures).
    #[cfg(feature = "turbojpeg")]
    #[test]
    fn libjpeg_turbo_and_jpeg_encoder_make_files_of_a_size() {
        let photo = include_bytes!("../../../samples/photo-800x600.png");
        let img = image::load_from_memory(photo).unwrap();
        let mut turbo = Vec::new();
        encode_jpeg(&img, DEFAULT_QUALITY, &mut turbo).unwrap();
        let mut rust = Vec::new();
        encode_jpeg_rust(&img, DEFAULT_QUALITY, &mut rust).unwrap();
        let back = |b: &[u8]| image::load_from_memory_with_format(b, ImageFormat::Jpeg).unwrap();
        let (dt, dr) = (
            difference(&img, &back(&turbo)),
            difference(&img, &back(&rust)),
        );
        println!(
            "photo 800x600 at quality {DEFAULT_QUALITY}: libjpeg-turbo {} bytes (mean difference {dt:.2}), jpeg-encoder {} bytes ({dr:.2})",
            turbo.len(),
            rust.len()
        );
        let ratio = turbo.len() as f64 / rust.len() as f64;
        assert!((0.85..1.15).contains(&ratio), "size ratio {ratio}");
        assert!((dt - dr).abs() < 0.5, "mean differences {dt} and {dr}");
    }

    #[test]
    fn jpeg_keeps_size_colour_and_likeness() {
        let smooth = |x: u32, y: u32| [(x * 2) as u8, (y * 3) as u8, ((x + y) / 2) as u8];
        let rgb = DynamicImage::ImageRgb8(image::RgbImage::from_fn(120, 80, |x, y| {
            image::Rgb(smooth(x, y))
        }));
        let grey = DynamicImage::ImageLuma8(image::GrayImage::from_fn(120, 80, |x, y| {
            image::Luma([(x + y) as u8])
        }));
        // Other pixel types are converted first.
        let rgba = DynamicImage::ImageRgba8(rgb.to_rgba8());
        for (name, img, colour) in [
            ("rgb", &rgb, true),
            ("grey", &grey, false),
            ("rgba", &rgba, true),
        ] {
            let mut sizes = Vec::new();
            for quality in [50, 90] {
                let out = OutputFormat {
                    format: ImageFormat::Jpeg,
                    quality,
                };
                let jpeg = encode(img, out).unwrap();
                let back = image::load_from_memory_with_format(&jpeg, ImageFormat::Jpeg).unwrap();
                assert_eq!((back.width(), back.height()), (120, 80), "{name}");
                assert_eq!(back.color().has_color(), colour, "{name}");
                let d = difference(img, &back);
                assert!(d < 4.0, "{name} q{quality}: mean difference {d}");
                sizes.push(jpeg.len());
            }
            assert!(
                sizes[0] < sizes[1],
                "{name}: quality changes nothing: {sizes:?}"
            );
        }
    }

    #[test]
    fn probe_reads_header() {
        let p = probe(&png(30, 20), &ImageLimits::default()).unwrap();
        assert_eq!((p.format, p.width, p.height), (ImageFormat::Png, 30, 20));
    }

    #[test]
    fn declared_size_over_limit_is_rejected_before_decoding() {
        // A valid PNG header that declares 100000 x 100000 pixels.
        let mut data = png(1, 1);
        data[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        data[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let err = probe(&data, &ImageLimits::default()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Image {
                    kind: ImageErrorKind::TooManyPixels,
                    ..
                } | Error::Image {
                    kind: ImageErrorKind::CorruptImage,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn truncated_and_garbage_are_errors() {
        let data = png(64, 64);
        let err = decode(&data[..data.len() / 2], &ImageLimits::default()).unwrap_err();
        assert_eq!(err.code(), "corrupt_image", "{err}");
        assert_eq!(
            decode(b"hello world", &ImageLimits::default())
                .unwrap_err()
                .code(),
            "not_an_image"
        );
        assert_eq!(
            decode(b"", &ImageLimits::default()).unwrap_err().code(),
            "not_an_image"
        );
    }

    #[test]
    fn structure_check_finds_truncation_and_damage() {
        let limits = ImageLimits::default();
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_fn(120, 90, |x, y| {
            image::Rgb([x as u8, y as u8, 7])
        }));
        for format in [ImageFormat::Png, ImageFormat::Jpeg] {
            let good = encode(
                &img,
                OutputFormat {
                    format,
                    quality: 85,
                },
            )
            .unwrap();
            assert!(check_structure(&good, &limits).is_ok(), "{format:?}");
            for cut in [good.len() - 1, good.len() - 2, good.len() / 2, 40] {
                let err = check_structure(&good[..cut], &limits).unwrap_err();
                assert_eq!(
                    err.code(),
                    "corrupt_image",
                    "{format:?} cut at {cut}: {err}"
                );
            }
        }
        let mut png = encode(
            &img,
            OutputFormat {
                format: ImageFormat::Png,
                quality: 85,
            },
        )
        .unwrap();
        let mid = png.len() / 2;
        png[mid] ^= 0x55;
        let err = check_structure(&png, &limits).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
        // Trailing bytes after the end marker are accepted (some writers add them).
        let mut jpeg = encode(
            &img,
            OutputFormat {
                format: ImageFormat::Jpeg,
                quality: 85,
            },
        )
        .unwrap();
        jpeg.extend([0u8; 16]);
        assert!(check_structure(&jpeg, &limits).is_ok());
        // Other formats are decoded in full.
        let bmp = encode(
            &img,
            OutputFormat {
                format: ImageFormat::Bmp,
                quality: 85,
            },
        )
        .unwrap();
        assert!(check_structure(&bmp[..bmp.len() / 2], &limits).is_err());
    }

    #[test]
    fn format_filter() {
        let limits = ImageLimits {
            formats: vec![ImageFormat::Jpeg],
            ..ImageLimits::default()
        };
        let err = probe(&png(2, 2), &limits).unwrap_err();
        assert_eq!(err.code(), "unsupported_format");
    }

    #[test]
    fn every_output_format_encodes_and_decodes() {
        let img = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
            17,
            9,
            image::Rgba([200, 100, 50, 255]),
        ));
        for f in SUPPORTED_FORMATS {
            let bytes = encode(
                &img,
                OutputFormat {
                    format: *f,
                    quality: 90,
                },
            )
            .unwrap();
            let d = decode(&bytes, &ImageLimits::default()).unwrap();
            assert_eq!(
                (d.probe.format, d.image.width(), d.image.height()),
                (*f, 17, 9)
            );
        }
    }
}
