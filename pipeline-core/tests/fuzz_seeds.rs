//! Writes the seed corpus of the fuzz targets (`fuzz/corpus/`): real
//! frames of every event, specs, small images of every format, multipart
//! uploads. Run it after a change to the wire format or the upload:
//! `cargo test -p pipeline-core --test fuzz_seeds -- --ignored`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use bytes::Bytes;
use image::{DynamicImage, ImageFormat, RgbImage};
use pipeline_core::envelope::{Envelope, Part, events, headers, parts};
use pipeline_core::job::{JobInfo, MediaInfo};
use pipeline_core::wire;
use uuid::Uuid;

fn corpus(target: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn image(format: ImageFormat) -> Vec<u8> {
    let img = RgbImage::from_fn(7, 5, |x, y| image::Rgb([x as u8 * 30, y as u8 * 40, 90]));
    let mut out = std::io::Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(img)
        .write_to(&mut out, format)
        .unwrap();
    out.into_inner()
}

fn media(format: &str) -> MediaInfo {
    MediaInfo {
        format: format.into(),
        content_type: format!("image/{format}"),
        width: 7,
        height: 5,
        size: 100,
        sha256: "ab".repeat(32),
    }
}

#[test]
#[ignore = "writes fuzz/corpus; run by hand"]
fn write_fuzz_seeds() {
    let job = Uuid::now_v7();
    let png = Bytes::from(image(ImageFormat::Png));
    let info = JobInfo {
        original: Some(media("png")),
        result: Some(media("jpeg")),
        decode_ms: 1.0,
        transform_ms: 2.0,
        encode_ms: 3.0,
        worker: "transformer-0a1b2c3d".into(),
    };
    let info = Bytes::from(serde_json::to_vec(&info).unwrap());
    let submitted = Envelope::new(events::SUBMITTED, job, "default")
        .with_spec("resize:64x64,grayscale")
        .with_header(headers::SUBMITTED_AT_MS, "1796190000000")
        .with_header(headers::FILENAME, "a.png")
        .with_part(Part::new(parts::ORIGINAL, "image/png", png.clone()));
    let transformed = submitted
        .follow_up(events::TRANSFORMED)
        .with_header(headers::WORKER, "transformer-0a1b2c3d")
        .with_header(headers::ATTEMPT, "1")
        .with_part(Part::new(parts::RESULT, "image/png", png.clone()))
        .with_part(Part::new(parts::INFO, "application/json", info.clone()));
    let archived = transformed.follow_up(events::ARCHIVED);
    let failed = submitted
        .follow_up(events::FAILED)
        .with_header(headers::ERROR_CODE, "corrupt_image")
        .with_header(headers::ERROR, "the png data is truncated")
        .with_header(headers::ATTEMPTS, "3");
    let dead = failed
        .clone()
        .with_header(headers::DEAD_LETTER_REASON, "gave up")
        .with_header(headers::DEAD_LETTER_ATTEMPTS, "5");
    for (name, env) in [
        ("submitted", submitted),
        ("transformed", transformed),
        ("archived", archived),
        ("failed", failed),
        ("dead", dead),
    ] {
        let frame = wire::encode(&env).unwrap();
        for target in ["wire_frame", "envelope"] {
            std::fs::write(corpus(target).join(name), &frame).unwrap();
        }
    }

    let specs = [
        "stamp",
        "auto-orient,thumbnail:256",
        "resize:800x600:fill,grayscale,format:webp",
        "resize:x300,sharpen:1.5:2,format:jpeg:80",
        "crop:100x80:10:20,rotate:90,flip:h",
        "blur:2.5,brightness:-10,contrast:20,format:png",
        "[{\"op\":\"resize\",\"args\":[\"64x64\",\"exact\"]}]",
    ];
    for (i, spec) in specs.iter().enumerate() {
        std::fs::write(corpus("transform_spec").join(format!("spec-{i}")), spec).unwrap();
    }

    for (name, format) in [
        ("png", ImageFormat::Png),
        ("jpeg", ImageFormat::Jpeg),
        ("gif", ImageFormat::Gif),
        ("bmp", ImageFormat::Bmp),
        ("tiff", ImageFormat::Tiff),
        ("webp", ImageFormat::WebP),
    ] {
        std::fs::write(corpus("image_structure").join(name), image(format)).unwrap();
    }

    let field = |name: &str, file: Option<&str>, body: &[u8]| {
        let mut out =
            format!("--X\r\nContent-Disposition: form-data; name=\"{name}\"").into_bytes();
        if let Some(f) = file {
            out.extend_from_slice(
                format!("; filename=\"{f}\"\r\nContent-Type: image/png").as_bytes(),
            );
        }
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(body);
        out.extend_from_slice(b"\r\n");
        out
    };
    let one = [field("files", Some("a.png"), &png), b"--X--\r\n".to_vec()].concat();
    let two = [
        field("transform", None, b"grayscale"),
        field("files", Some("a.png"), &png),
        field("files", Some("b.png"), &png),
        b"--X--\r\n".to_vec(),
    ]
    .concat();
    let text_only = [field("preset", None, b"thumbnail"), b"--X--\r\n".to_vec()].concat();
    for (name, body) in [("one", one), ("two", two), ("text-only", text_only)] {
        std::fs::write(corpus("multipart_upload").join(name), body).unwrap();
    }
}
