//! The example's own binaries as separate processes through the real
//! RabbitMQ and PostgreSQL: the API, save2db and activity from the
//! `cli::run` binary, the transformer either from the same binary or from
//! the builder-embedded `invert-worker`. The plugin's output is checked
//! pixel by pixel and the job must reach the archive.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::{Duration, Instant};

use pipeline_core::testkit::process::Process;
use pipeline_core::testkit::unique;
use serde_json::Value;

const START: Duration = Duration::from_secs(60);

fn amqp() -> String {
    std::env::var("PIPELINE_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn postgres() -> String {
    std::env::var("PIPELINE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// `bin` with `args`, configured for namespace `ns` through the variables.
fn role(bin: &str, args: &[&str], ns: &str) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env(
            "PIPELINE_BROKER_URL",
            format!("{}?expires_ms=120000", amqp()),
        )
        .env("PIPELINE_DATABASE_URL", postgres())
        .env("PIPELINE_NAMESPACE", ns)
        .env("PIPELINE_LISTEN", "127.0.0.1:0")
        .env("PIPELINE_CONCURRENCY", "1")
        .env("RUST_LOG", "warn");
    cmd
}

async fn run(transformer_bin: &str, transformer_args: &[&str]) {
    let cli = env!("CARGO_BIN_EXE_example-custom-transform");
    let ns = unique("ex").replace('-', "_");
    let (_api, line) = Process::start(role(cli, &["api"], &ns), "api", START);
    let base = line
        .strip_prefix("pipeline listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        // The address, before the auth note.
        .split(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    let (_save, _) = Process::start(role(cli, &["save2db"], &ns), "save2db", START);
    let (_activity, _) = Process::start(role(cli, &["activity"], &ns), "activity", START);
    let (_worker, _) = Process::start(
        role(transformer_bin, transformer_args, &ns),
        "transformer",
        START,
    );

    let http = pipeline::cli::http_client_builder().build().unwrap();
    let png = example_custom_transform::sample_png().unwrap();
    let resp = http
        .post(format!(
            "{base}/v1/images?transform=invert%3Arg%2Cformat%3Apng"
        ))
        .header("content-type", "image/png")
        .body(png.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "{:?}", resp.text().await);
    let body: Value = resp.json().await.unwrap();
    let id = body["images"][0]["id"].as_str().unwrap().to_string();

    let result = http
        .get(format!("{base}/v1/images/{id}/result?wait=30"))
        .send()
        .await
        .unwrap();
    assert_eq!(result.status(), 200, "{:?}", result.text().await);
    let img = image::load_from_memory(&result.bytes().await.unwrap())
        .unwrap()
        .to_rgb8();
    assert_eq!(img.dimensions(), (64, 48));
    for (x, y) in [(0, 0), (10, 40), (63, 47)] {
        assert_eq!(img.get_pixel(x, y).0, [55, 245, 10], "pixel ({x}, {y})");
    }

    // The archive in PostgreSQL gets the job (save2db is its own process).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = http
            .get(format!("{base}/v1/images/{id}/original"))
            .send()
            .await
            .unwrap()
            .status();
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "job {id} never archived");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let archive = pipeline_sql::SqlArchive::connect(&postgres(), &ns)
        .await
        .unwrap();
    assert_eq!(archive.image_count().await.unwrap(), 1);
    archive.drop_tables().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_binary_runs_the_plugin_in_every_role() {
    run(
        env!("CARGO_BIN_EXE_example-custom-transform"),
        &["transformer"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builder_embedded_worker_runs_the_plugin() {
    run(env!("CARGO_BIN_EXE_invert-worker"), &[]).await;
}
