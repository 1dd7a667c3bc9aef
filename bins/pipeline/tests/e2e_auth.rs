//! API keys, scopes, revocation and signed links through the real binary:
//! `pipeline keys` makes and revokes keys in the archive database a
//! running `pipeline serve --auth keys` reads, `pipeline upload` sends
//! with a key, and result links work with no header.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Server, client, error_code, image_bytes};
use image::ImageFormat;
use serde_json::Value;

const SECRET: &str = "0123456789abcdef0123456789abcdef-e2e";

use common::keys_command as keys;

fn bearer(key: &str) -> String {
    format!("Bearer {}", key.trim())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_scopes_revocation_and_signed_links() {
    let server = Server::start(&["--auth", "keys", "--url-secret", SECRET, "--key-cache", "0"]);
    assert!(
        server.first_line.trim().ends_with("(auth: keys)"),
        "{}",
        server.first_line
    );
    let acme = keys(&server, &["create", "--tenant", "acme", "--label", "e2e"]);
    let reader = keys(&server, &["create", "--tenant", "acme", "--scopes", "read"]);
    let other = keys(&server, &["create", "--tenant", "other"]);
    let admin = keys(&server, &["create", "--tenant", "ops", "--scopes", "admin"]);
    let listed = keys(&server, &["list", "--tenant", "acme"]);
    assert_eq!(listed.lines().count(), 3, "{listed}");
    assert!(!listed.contains(acme.trim()), "a listing shows no key");

    let http = client();
    let png = image_bytes(ImageFormat::Png, 64, 48, 3);
    let upload = |key: Option<&str>| {
        let mut r = http
            .post(server.url("/v1/images?transform=grayscale"))
            .header("content-type", "image/png")
            .body(png.clone());
        if let Some(k) = key {
            r = r.header("authorization", bearer(k));
        }
        r.send()
    };
    assert_eq!(
        error_code(upload(None).await.unwrap()).await,
        (401, "missing_key".into())
    );
    assert_eq!(
        error_code(upload(Some(&reader)).await.unwrap()).await,
        (403, "forbidden".into())
    );
    let r = upload(Some(&acme)).await.unwrap();
    assert_eq!(r.status(), 202);
    let image: Value = r.json::<Value>().await.unwrap()["images"][0].clone();
    let id = image["id"].as_str().unwrap();

    // The signed link needs no header: wait for the result through it.
    let link = image["result_url"].as_str().unwrap();
    assert!(link.contains("&sig="), "{link}");
    let r = http
        .get(server.url(&format!("{link}&wait=30")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let bytes = r.bytes().await.unwrap();
    assert_eq!(image::load_from_memory(&bytes).unwrap().width(), 64);
    let tampered = link.replace("tenant=acme", "tenant=other");
    assert_eq!(
        error_code(http.get(server.url(&tampered)).send().await.unwrap()).await,
        (403, "invalid_link".into())
    );

    // Another tenant's key learns nothing of the job.
    for path in [
        format!("/v1/images/{id}"),
        format!("/v1/images/{id}/result?wait=20"),
        format!("/v1/images/{id}/original"),
    ] {
        let started = std::time::Instant::now();
        let r = http
            .get(server.url(&path))
            .header("authorization", bearer(&other))
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(r).await, (404, "not_found".into()), "{path}");
        assert!(started.elapsed() < Duration::from_secs(5), "{path}");
    }
    let list: Value = http
        .get(server.url("/v1/images"))
        .header("authorization", bearer(&other))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 0, "{list}");

    // Readiness details for the admin scope only.
    let ready = |key: Option<&str>| {
        let mut r = http.get(server.url("/readyz"));
        if let Some(k) = key {
            r = r.header("authorization", bearer(k));
        }
        async move { r.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    assert_eq!(ready(None).await, serde_json::json!({"status": "ready"}));
    assert_eq!(
        ready(Some(&acme)).await,
        serde_json::json!({"status": "ready"})
    );
    assert_eq!(ready(Some(&admin)).await["archive"], "ok");

    // `pipeline upload` with the key; without one it stops at once.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("in")).unwrap();
    std::fs::write(dir.path().join("in/a.png"), &png).unwrap();
    let run = |key: Option<&str>, out: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pipeline"));
        c.args(["upload", "--url", &server.base, "--transform", "grayscale"])
            .arg(dir.path().join("in"))
            .arg("--out")
            .arg(dir.path().join(out))
            .env_remove("PIPELINE_API_KEY");
        if let Some(k) = key {
            c.env("PIPELINE_API_KEY", k.trim());
        }
        c.output().unwrap()
    };
    let out = run(Some(&acme), "out");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("out/a.png").exists());
    let out = run(None, "out2");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("missing_key"), "{stderr}");

    // Revoked with the command: refused at once (no key cache here).
    let key_id = acme.trim().split('_').nth(1).unwrap();
    assert_eq!(
        keys(&server, &["revoke", key_id]).trim(),
        format!("revoked {key_id}")
    );
    assert_eq!(
        error_code(upload(Some(&acme)).await.unwrap()).await,
        (401, "key_revoked".into())
    );
    assert!(keys(&server, &["list"]).contains("revoked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_loopback_auth_is_off_by_default_and_says_so() {
    let server = Server::start(&[]);
    assert!(
        server.first_line.contains("(auth off: PIPELINE_AUTH=none)"),
        "{}",
        server.first_line
    );
    let r = client()
        .post(server.url("/v1/images"))
        .header("content-type", "image/png")
        .body(image_bytes(ImageFormat::Png, 8, 8, 1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}
