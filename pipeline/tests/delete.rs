//! `DELETE /v1/images/{id}` through the HTTP API on SQLite, PostgreSQL and
//! MariaDB: two jobs sharing an original, one deleted; every route then
//! answers 404 for it while the other keeps the shared original; deleting
//! again is 204, another tenant's delete is 404, and an unfinished job is
//! 409. The shared servers are used in a namespace of the test's own,
//! whose tables are dropped afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use image::DynamicImage;
use pipeline::core::memory::MemoryBroker;
use pipeline::{Archive, Pipeline, Roles, Running};
use pipeline_sql::SqlArchive;
use serde_json::Value;
use uuid::Uuid;

async fn archive(url: &str) -> Arc<SqlArchive> {
    let ns = pipeline_core::testkit::unique("del");
    Arc::new(
        SqlArchive::connect(url, &ns)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}")),
    )
}

async fn start(archive: &Arc<SqlArchive>, roles: Roles) -> (Running, String) {
    let running = Pipeline::builder()
        .roles(roles)
        .broker(Arc::new(MemoryBroker::with_drain_timeout(
            Duration::from_secs(1),
        )))
        .archive(Archive {
            images: archive.clone(),
            activity: archive.clone(),
            blobs: archive.clone(),
            keys: archive.clone(),
        })
        .listen("127.0.0.1:0")
        .configure(|s| {
            s.concurrency = Some(2);
            s.batch = 8;
            // The pending job of the last step is not waited for.
            s.drain_timeout = Duration::from_secs(1);
        })
        .start()
        .await
        .unwrap();
    let base = format!("http://{}", running.addr().unwrap());
    (running, base)
}

fn png() -> Vec<u8> {
    // A gradient: flipped or gray, it differs from the original.
    let img = DynamicImage::ImageRgb8(image::RgbImage::from_fn(48, 32, |x, y| {
        image::Rgb([(x * 5) as u8, (y * 7) as u8, 200])
    }));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn upload(&self, spec: &str) -> String {
        let resp = self
            .http
            .post(format!("{}/v1/images?transform={spec}", self.base))
            .header("content-type", "image/png")
            .header("x-tenant", "alice")
            .body(png())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202, "{:?}", resp.text().await);
        let body: Value = resp.json().await.unwrap();
        body["images"][0]["id"].as_str().unwrap().to_string()
    }

    async fn call(&self, method: reqwest::Method, path: &str, tenant: &str) -> (u16, Vec<u8>) {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("x-tenant", tenant)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.bytes().await.unwrap().to_vec())
    }

    async fn get(&self, path: &str) -> u16 {
        self.call(reqwest::Method::GET, path, "alice").await.0
    }

    async fn delete(&self, id: &str, tenant: &str) -> u16 {
        self.call(reqwest::Method::DELETE, &format!("/v1/images/{id}"), tenant)
            .await
            .0
    }

    /// Wait until the original route serves the job (it is archived).
    async fn archived(&self, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.get(&format!("/v1/images/{id}/original")).await != 200 {
            assert!(Instant::now() < deadline, "{id} never archived");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

async fn delete_through_the_api(url: &str) {
    pipeline_core::testkit::run_case(
        archive(url).await,
        |a| async move { scenario(&a).await },
        |a| async move { a.drop_tables().await.unwrap() },
    )
    .await;
}

async fn scenario(archive: &Arc<SqlArchive>) {
    let (running, base) = start(archive, Roles::ALL).await;
    let c = Client {
        http: pipeline::cli::http_client_builder().build().unwrap(),
        base,
    };
    let gone = c.upload("grayscale").await;
    let kept = c.upload("flip:h").await;
    c.archived(&gone).await;
    c.archived(&kept).await;
    let blobs_before = archive.blob_count().await.unwrap();
    assert_eq!(blobs_before, 3, "one shared original, two results");

    assert_eq!(c.delete(&gone, "mallory").await, 404, "another tenant's");
    assert_eq!(c.get(&format!("/v1/images/{gone}")).await, 200);
    assert_eq!(c.delete(&gone, "alice").await, 204);
    for route in ["", "/result", "/original"] {
        assert_eq!(
            c.get(&format!("/v1/images/{gone}{route}")).await,
            404,
            "GET /v1/images/{{id}}{route} after the delete"
        );
    }
    assert_eq!(c.get(&format!("/image/{gone}")).await, 404);
    let (_, list) = c.call(reqwest::Method::GET, "/v1/images", "alice").await;
    let list: Value = serde_json::from_slice(&list).unwrap();
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![kept.as_str()]);
    assert_eq!(
        archive.blob_count().await.unwrap(),
        2,
        "the deleted job's result is removed, the shared original stays"
    );
    let (code, original) = c
        .call(
            reqwest::Method::GET,
            &format!("/v1/images/{kept}/original"),
            "alice",
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(original, png(), "the other job's original is intact");
    let (code, timeline) = c
        .call(
            reqwest::Method::GET,
            &format!("/v1/images/{gone}/events"),
            "alice",
        )
        .await;
    assert_eq!(code, 200);
    let timeline: Value = serde_json::from_slice(&timeline).unwrap();
    let events: Vec<&str> = timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events.last(), Some(&"image.deleted"), "{events:?}");
    assert_eq!(c.delete(&gone, "alice").await, 204, "idempotent");
    let deleted_entries = {
        let (_, t) = c
            .call(
                reqwest::Method::GET,
                &format!("/v1/images/{gone}/events"),
                "alice",
            )
            .await;
        let t: Value = serde_json::from_slice(&t).unwrap();
        t["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event"] == "image.deleted")
            .count()
    };
    assert_eq!(deleted_entries, 1, "one deletion recorded");
    assert_eq!(c.delete(&Uuid::now_v7().to_string(), "alice").await, 404);
    running.shutdown().await.unwrap();

    // No transformer: the job stays pending, and cannot be deleted yet.
    let roles = Roles {
        transformer: false,
        ..Roles::ALL
    };
    let (running, base) = start(archive, roles).await;
    let c = Client { base, ..c };
    let pending = c.upload("grayscale").await;
    let (code, body) = c
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/images/{pending}"),
            "alice",
        )
        .await;
    assert_eq!(code, 409, "{}", String::from_utf8_lossy(&body));
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "job_in_progress");
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
    delete_through_the_api(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_on_postgres() {
    let url = std::env::var("PIPELINE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    delete_through_the_api(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_on_mariadb() {
    let url = std::env::var("PIPELINE_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    delete_through_the_api(&url).await;
}
