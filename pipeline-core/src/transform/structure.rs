//! Upload checks that need no pixel decode: the PNG chunk chain with its
//! CRCs up to `IEND`, the JPEG segment chain up to `EOI`.

use image::ImageFormat;

use super::codec::{ImageLimits, Probe, decode, probe};
use crate::error::{Error, ImageErrorKind, Result};

/// Check that the file is complete and undamaged without decoding its
/// pixels, where the format allows it cheaply: PNG chunk CRCs and `IEND`,
/// the JPEG segment chain up to `EOI`. Other formats are decoded in full.
/// Returns what the header says, like [`probe`].
pub fn check_structure(data: &[u8], limits: &ImageLimits) -> Result<Probe> {
    let probe = probe(data, limits)?;
    match probe.format {
        ImageFormat::Png => check_png(data)?,
        ImageFormat::Jpeg => check_jpeg(data)?,
        _ => {
            decode(data, limits)?;
        }
    }
    Ok(probe)
}

fn corrupt(format: &str, what: String) -> Error {
    Error::image(
        ImageErrorKind::CorruptImage,
        format!("the {format} data is {what}"),
    )
}

fn check_png(data: &[u8]) -> Result<()> {
    let mut i = 8;
    let mut first = true;
    let mut idat = false;
    loop {
        if i + 12 > data.len() {
            return Err(corrupt("png", "truncated (no IEND chunk)".into()));
        }
        let len = u32::from_be_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]) as usize;
        let end = i
            .checked_add(12)
            .and_then(|e| e.checked_add(len))
            .filter(|e| *e <= data.len())
            .ok_or_else(|| {
                corrupt(
                    "png",
                    format!("truncated (a chunk at offset {i} runs past the end)"),
                )
            })?;
        let kind = &data[i + 4..i + 8];
        let body = &data[i + 4..end - 4];
        let crc = u32::from_be_bytes([data[end - 4], data[end - 3], data[end - 2], data[end - 1]]);
        if crc32fast::hash(body) != crc {
            return Err(corrupt(
                "png",
                format!(
                    "corrupt (checksum mismatch in the {} chunk at offset {i})",
                    String::from_utf8_lossy(kind)
                ),
            ));
        }
        if first && kind != b"IHDR" {
            return Err(corrupt(
                "png",
                "corrupt (the first chunk is not IHDR)".into(),
            ));
        }
        first = false;
        match kind {
            b"IDAT" => idat = true,
            b"IEND" if idat => return Ok(()),
            b"IEND" => return Err(corrupt("png", "corrupt (no image data)".into())),
            _ => {}
        }
        i = end;
    }
}

fn check_jpeg(data: &[u8]) -> Result<()> {
    let truncated = || corrupt("jpeg", "truncated (no end marker)".into());
    if data.len() < 4 || data[0] != 0xFF || data[1] != 0xD8 {
        return Err(corrupt("jpeg", "corrupt (no start marker)".into()));
    }
    let mut i = 2;
    let mut scans = 0;
    loop {
        // Tolerate stray bytes between segments, as libjpeg does.
        while i < data.len() && data[i] != 0xFF {
            i += 1;
        }
        while i < data.len() && data[i] == 0xFF {
            i += 1;
        }
        let Some(&marker) = data.get(i) else {
            return Err(truncated());
        };
        i += 1;
        match marker {
            0xD9 if scans > 0 => return Ok(()),
            0xD9 => {
                return Err(corrupt(
                    "jpeg",
                    "corrupt (no image data before the end marker)".into(),
                ));
            }
            0xD0..=0xD7 | 0x01 | 0x00 => continue,
            _ => {}
        }
        if i + 2 > data.len() {
            return Err(truncated());
        }
        let len = usize::from(u16::from_be_bytes([data[i], data[i + 1]]));
        if len < 2 {
            return Err(corrupt(
                "jpeg",
                format!("corrupt (segment length {len} at offset {i})"),
            ));
        }
        i += len;
        if i > data.len() {
            return Err(truncated());
        }
        if marker == 0xDA {
            scans += 1;
            // Entropy-coded data runs to the next marker that is neither a
            // stuffed 0xFF00 nor a restart marker.
            loop {
                let Some(ff) = data[i..].iter().position(|b| *b == 0xFF) else {
                    return Err(truncated());
                };
                i += ff;
                match data.get(i + 1) {
                    None => return Err(truncated()),
                    Some(0x00 | 0xD0..=0xD7 | 0xFF) => i += 1,
                    Some(_) => break,
                }
            }
        }
    }
}
