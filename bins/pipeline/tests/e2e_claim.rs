//! A 50 MB image through the whole pipeline as separate processes, over the
//! real RabbitMQ, archived in the real PostgreSQL and in the real MariaDB
//! (16 MiB packet limit): the claim check carries it by reference, the
//! result comes back correct, the archive keeps it once, and no process
//! holds more than a bounded amount of memory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::procs::{fetch_result, rabbit_env, spawn, spawn_api};
use image::{GenericImageView, ImageFormat};
use pipeline_core::store::sha256_hex;
use pipeline_core::{BlobStore, ImageStore};

/// The two database tests run one after the other (memory figures).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A 4096 x 4096 noise PNG: about 50.4 MB, as incompressible as a photo
/// can be.
fn big_png() -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(7);
    let img = image::RgbImage::from_fn(4096, 4096, |_, _| {
        image::Rgb([rng.u8(..), rng.u8(..), rng.u8(..)])
    });
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new_with_quality(
        &mut out,
        image::codecs::png::CompressionType::Fast,
        image::codecs::png::FilterType::NoFilter,
    )
    .write_image(img.as_raw(), 4096, 4096, image::ExtendedColorType::Rgb8)
    .unwrap();
    out
}

use image::ImageEncoder;

/// Peak resident memory of a process, in MiB.
/// Peak resident memory of a live process; fails the test when it cannot
/// be read (a check that reads nothing must not pass).
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb / 1024)
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status"))
}

async fn fifty_megabytes_through(db: &str) {
    let _serial = SERIAL.lock().await;
    let ns = pipeline_core::testkit::unique("big").replace('-', "_");
    let env = rabbit_env(&ns, db);
    let (api, base) = spawn_api(&env);
    let (transformer, _) = spawn(
        env!("CARGO_BIN_EXE_pipeline-transformer"),
        "transformer",
        &env,
    );
    let (save, _) = spawn(env!("CARGO_BIN_EXE_pipeline-save2db"), "save2db", &env);
    let (activity, _) = spawn(env!("CARGO_BIN_EXE_pipeline-activity"), "activity", &env);

    let original = big_png();
    assert!(original.len() > 50_000_000, "{} bytes", original.len());
    let original_key = sha256_hex(&original);
    let http = pipeline::cli::http_client_builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap();
    let resp = http
        .post(format!("{base}/v1/images"))
        .header("content-type", "image/png")
        .body(original.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        202,
        "{}",
        resp.text().await.unwrap()
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    let id = body["images"][0]["id"]
        .as_str()
        .expect("job id")
        .to_string();

    // The result, served by the API from the blob store.
    let result = fetch_result(&http, &base, &id, Duration::from_secs(300)).await;
    let img = image::load_from_memory_with_format(&result, ImageFormat::Png).expect("a PNG");
    assert_eq!(img.dimensions(), (4096, 4096));
    let before = image::load_from_memory(&original).unwrap();
    let stamped = (0..200u32)
        .flat_map(|x| (0..20u32).map(move |y| (x, y)))
        .filter(|&(x, y)| img.get_pixel(x, y) != before.get_pixel(x, y))
        .count();
    assert!(
        stamped > 80,
        "only {stamped} pixels of the stamp band changed"
    );
    let untouched = (0..100u32)
        .filter(|&i| {
            img.get_pixel(4000 + i % 90, 4000 + i / 10)
                == before.get_pixel(4000 + i % 90, 4000 + i / 10)
        })
        .count();
    assert_eq!(untouched, 100, "pixels far from the stamp changed");

    // Archived once, by reference: the original comes back byte for byte.
    let archive = pipeline_sql::SqlArchive::connect(db, &ns).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while archive.image_count().await.unwrap() < 1 {
        assert!(Instant::now() < deadline, "not archived after 120 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let back = http
        .get(format!("{base}/v1/images/{id}/original"))
        .send()
        .await
        .unwrap();
    assert_eq!(back.status().as_u16(), 200);
    let back = back.bytes().await.unwrap();
    assert_eq!(back.len(), original.len());
    assert!(back == original, "the original came back different");
    let record = ImageStore::get(&archive, id.parse().unwrap())
        .await
        .unwrap()
        .expect("archived");
    assert_eq!(record.original.as_ref().unwrap().sha256, original_key);
    assert_eq!(
        record.result.as_ref().unwrap().sha256,
        sha256_hex(&result),
        "the archive holds the result the API served"
    );
    let stored = BlobStore::get(&archive, &original_key)
        .await
        .unwrap()
        .expect("the original is in the blob table");
    assert_eq!(stored.data.len(), original.len());
    assert_eq!(
        archive.blob_count().await.unwrap(),
        2,
        "original + result, once each"
    );

    let peaks = [
        ("api", peak_rss_mib(api.child.id())),
        ("transformer", peak_rss_mib(transformer.child.id())),
        ("save2db", peak_rss_mib(save.child.id())),
        ("activity", peak_rss_mib(activity.child.id())),
    ];
    eprintln!("{db}: peak RSS (MiB) {peaks:?}");
    // save2db and the activity log only ever see references.
    for (name, mib) in &peaks[2..] {
        assert!(*mib < 100, "{name} peaked at {mib} MiB for a 50 MB image");
    }
    // The API holds the upload and the served result; the transformer the
    // file, its pixels (48 MiB) and its encoding: a few copies, bounded.
    for (name, mib) in &peaks[..2] {
        assert!(*mib < 600, "{name} peaked at {mib} MiB for a 50 MB image");
    }
    drop((api, transformer, save, activity));
    archive.drop_tables().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabytes_through_rabbitmq_and_postgres() {
    let db = std::env::var("PIPELINE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    fifty_megabytes_through(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabytes_through_rabbitmq_and_mariadb() {
    let db = std::env::var("PIPELINE_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    fifty_megabytes_through(&db).await;
}
