//! Each mode, each scope, expiry, revocation, tenant isolation and signed
//! links, through the router.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderName, Request, StatusCode};
use pipeline_core::auth::{ApiKey, KeyStore, LinkSigner, Scopes};
use pipeline_core::envelope::now_ms;
use pipeline_core::memory::{MemoryArchive, MemoryBroker};
use tower::ServiceExt;

use super::*;
use crate::quota::RateLimits;
use crate::testing::{app_with, json, png};

const SECRET: [u8; 32] = [7; 32];

/// An API on keys (no key cache, so revocations show at once), its key
/// store, and a key maker.
async fn keyed() -> (Router, Arc<MemoryArchive>) {
    let signer = LinkSigner::new(&SECRET, None).unwrap();
    keyed_with(signer).await
}

async fn keyed_with(signer: LinkSigner) -> (Router, Arc<MemoryArchive>) {
    let store = Arc::new(MemoryArchive::new());
    let auth = Auth::keys(store.clone(), signer).with_key_cache(Duration::ZERO);
    let (app, _) = app_with(Arc::new(MemoryBroker::new()), auth).await;
    (app, store)
}

async fn key(store: &MemoryArchive, tenant: &str, scopes: Scopes) -> String {
    let (secret, record) = ApiKey::generate(tenant, scopes, "test", None, now_ms()).unwrap();
    store.create_key(&record).await.unwrap();
    secret
}

fn get(path: &str, key: Option<&str>) -> Request<Body> {
    let mut r = Request::get(path);
    if let Some(k) = key {
        r = r.header("authorization", format!("Bearer {k}"));
    }
    r.body(Body::empty()).unwrap()
}

fn upload(key: Option<&str>) -> Request<Body> {
    let mut r = Request::post("/v1/images?transform=grayscale").header("content-type", "image/png");
    if let Some(k) = key {
        r = r.header("authorization", format!("Bearer {k}"));
    }
    r.body(Body::from(png())).unwrap()
}

/// Send `req`; its status and its error code (if any).
async fn send(app: &Router, req: Request<Body>) -> (StatusCode, String) {
    let r = app.clone().oneshot(req).await.unwrap();
    let status = r.status();
    let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
    let code = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
        .unwrap_or_default();
    (status, code)
}

/// Upload with `key`; the upload answer's first image.
async fn uploaded(app: &Router, key: &str) -> serde_json::Value {
    let r = app.clone().oneshot(upload(Some(key))).await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    json(r).await["images"][0].clone()
}

#[tokio::test]
async fn requests_without_a_valid_key_get_401_with_a_stable_code() {
    let (app, store) = keyed().await;
    let r = app.clone().oneshot(get("/v1/images", None)).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(json(r).await["error"]["code"], "missing_key");
    let good = key(&store, "acme", Scopes::CLIENT).await;
    // The right id with another secret, a malformed key, another scheme.
    let mut forged = good.clone();
    forged.replace_range(forged.len() - 4.., "0000");
    let forged = if forged == good {
        good.replace("0000", "1111")
    } else {
        forged
    };
    for bad in [
        forged.as_str(),
        "pk_nope",
        "pk_0123456789abcdef_0000000000000000000000000000000000000000000000000000000000000000",
    ] {
        assert_eq!(
            send(&app, get("/v1/images", Some(bad))).await,
            (StatusCode::UNAUTHORIZED, "invalid_key".into()),
            "{bad}"
        );
    }
    let basic = Request::get("/v1/images")
        .header("authorization", format!("Basic {good}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, basic).await.0, StatusCode::UNAUTHORIZED);
    // Uploads too, before the body is read.
    assert_eq!(
        send(&app, upload(None)).await,
        (StatusCode::UNAUTHORIZED, "missing_key".into())
    );
    assert_eq!(
        send(&app, get("/v1/images", Some(&good))).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn expired_and_revoked_keys_are_refused() {
    let (app, store) = keyed().await;
    let now = now_ms();
    let (secret, mut record) =
        ApiKey::generate("acme", Scopes::CLIENT, "", Some(now + 60_000), now).unwrap();
    record.expires_at_ms = Some(now - 1);
    store.create_key(&record).await.unwrap();
    assert_eq!(
        send(&app, get("/v1/images", Some(&secret))).await,
        (StatusCode::UNAUTHORIZED, "key_expired".into())
    );
    let live = key(&store, "acme", Scopes::CLIENT).await;
    assert_eq!(
        send(&app, get("/v1/images", Some(&live))).await.0,
        StatusCode::OK
    );
    let id = pipeline_core::auth::key_id(&live).unwrap();
    assert!(store.revoke_key(id, now_ms()).await.unwrap());
    assert_eq!(
        send(&app, get("/v1/images", Some(&live))).await,
        (StatusCode::UNAUTHORIZED, "key_revoked".into())
    );
}

#[tokio::test]
async fn each_scope_allows_its_routes_only() {
    let (app, store) = keyed().await;
    let reader = key(&store, "acme", "read".parse().unwrap()).await;
    let uploader = key(&store, "acme", "upload".parse().unwrap()).await;
    let admin = key(&store, "acme", "admin".parse().unwrap()).await;
    assert_eq!(
        send(&app, upload(Some(&reader))).await,
        (StatusCode::FORBIDDEN, "forbidden".into())
    );
    let image = uploaded(&app, &uploader).await;
    let status = format!("/v1/images/{}", image["id"].as_str().unwrap());
    assert_eq!(
        send(&app, get(&status, Some(&uploader))).await,
        (StatusCode::FORBIDDEN, "forbidden".into())
    );
    assert_eq!(
        send(&app, get(&status, Some(&reader))).await.0,
        StatusCode::OK
    );
    // Deleting is a write.
    let delete = |k: &str| {
        Request::delete(&status)
            .header("authorization", format!("Bearer {k}"))
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(send(&app, delete(&reader)).await.0, StatusCode::FORBIDDEN);
    // Admin alone reads readiness details, not images.
    assert_eq!(
        send(&app, get(&status, Some(&admin))).await.0,
        StatusCode::FORBIDDEN
    );
    let r = app
        .clone()
        .oneshot(get("/readyz", Some(&admin)))
        .await
        .unwrap();
    let body = json(r).await;
    assert_eq!(body["status"], "ready");
    assert_eq!(body["broker"], "ok", "{body}");
    for k in [None, Some(reader.as_str())] {
        let r = app.clone().oneshot(get("/readyz", k)).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let body = json(r).await;
        assert_eq!(body, serde_json::json!({"status": "ready"}), "{k:?}");
    }
    // Public routes stay public.
    for path in ["/healthz", "/v1/transforms", "/openapi.json", "/"] {
        assert_eq!(
            send(&app, get(path, None)).await.0,
            StatusCode::OK,
            "{path}"
        );
    }
}

#[tokio::test]
async fn a_key_cannot_see_or_learn_of_another_tenants_jobs() {
    let (app, store) = keyed().await;
    let a = key(&store, "tenant-a", Scopes::CLIENT).await;
    let b = key(&store, "tenant-b", Scopes::CLIENT).await;
    let image = uploaded(&app, &a).await;
    let id = image["id"].as_str().unwrap().to_string();
    for path in [
        format!("/v1/images/{id}"),
        format!("/v1/images/{id}/result"),
        format!("/v1/images/{id}/original"),
        format!("/v1/images/{id}/events"),
        format!("/image/{id}"),
    ] {
        assert!(
            send(&app, get(&path, Some(&a))).await.0.is_success(),
            "{path}"
        );
        assert_eq!(
            send(&app, get(&path, Some(&b))).await,
            (StatusCode::NOT_FOUND, "not_found".into()),
            "{path}"
        );
    }
    // A long poll on it answers at once, as for an id that never existed.
    let started = std::time::Instant::now();
    let waited = get(&format!("/v1/images/{id}/result?wait=30"), Some(&b));
    assert_eq!(send(&app, waited).await.0, StatusCode::NOT_FOUND);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let delete = Request::delete(format!("/v1/images/{id}"))
        .header("authorization", format!("Bearer {b}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, delete).await.0, StatusCode::NOT_FOUND);
    // Still there for its owner.
    assert_eq!(
        send(&app, get(&format!("/v1/images/{id}"), Some(&a)))
            .await
            .0,
        StatusCode::OK
    );
    // X-Tenant cannot switch tenants.
    let switched = Request::get(format!("/v1/images/{id}"))
        .header("authorization", format!("Bearer {b}"))
        .header("x-tenant", "tenant-a")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        send(&app, switched).await,
        (StatusCode::FORBIDDEN, "wrong_tenant".into())
    );
}

#[tokio::test]
async fn signed_links_read_without_a_header_until_they_expire() {
    let (app, store) = keyed().await;
    let a = key(&store, "acme", Scopes::CLIENT).await;
    let image = uploaded(&app, &a).await;
    let id = image["id"].as_str().unwrap();
    let result = image["result_url"].as_str().unwrap();
    let original = image["original_url"].as_str().unwrap();
    assert!(
        result.starts_with(&format!("/v1/images/{id}/result?tenant=acme&expires=")),
        "{result}"
    );
    // Valid: the job is pending, so 202 (the link got past auth).
    assert_eq!(send(&app, get(result, None)).await.0, StatusCode::ACCEPTED);
    assert_eq!(
        send(&app, get(image["status_url"].as_str().unwrap(), None))
            .await
            .0,
        StatusCode::OK
    );
    // Tampered: each field.
    let sig_at = result.find("&sig=").unwrap() + 5;
    let mut bad_sig = result.to_string();
    let last = bad_sig.pop().unwrap();
    bad_sig.push(if last == '0' { '1' } else { '0' });
    let tampered = [
        bad_sig,
        result.replace("tenant=acme", "tenant=other"),
        result.replace("expires=", "expires=9"),
        result.replace("/result?", "/original?"),
        result[..sig_at].to_string(),
        result.replace("tenant=acme&", ""),
    ];
    for link in tampered {
        assert_eq!(
            send(&app, get(&link, None)).await,
            (StatusCode::FORBIDDEN, "invalid_link".into()),
            "{link}"
        );
    }
    // A link reads; it does not write, even one signed for the upload path.
    let signer = LinkSigner::new(&SECRET, None).unwrap();
    let future = now_ms() / 1000 + 60;
    let post = Request::post(format!(
        "/v1/images?tenant=acme&expires={future}&sig={}",
        signer.sign("/v1/images", "acme", future)
    ))
    .header("content-type", "image/png")
    .body(Body::from(png()))
    .unwrap();
    assert_eq!(
        send(&app, post).await,
        (StatusCode::FORBIDDEN, "forbidden".into())
    );
    assert!(!original.is_empty());
    // Expired.
    let path = format!("/v1/images/{id}/result");
    let past = now_ms() / 1000 - 1;
    let expired = format!(
        "{path}?tenant=acme&expires={past}&sig={}",
        signer.sign(&path, "acme", past)
    );
    assert_eq!(
        send(&app, get(&expired, None)).await,
        (StatusCode::FORBIDDEN, "link_expired".into())
    );
    // After a rotation the old secret's links still pass; a third secret's do not.
    let (rotated, _) = keyed_with(LinkSigner::new(&[9; 32], Some(&SECRET)).unwrap()).await;
    let old = format!(
        "{path}?tenant=acme&expires={future}&sig={}",
        signer.sign(&path, "acme", future)
    );
    // The rotated server has no such job: a 404 shows the link passed.
    assert_eq!(
        send(&rotated, get(&old, None)).await.0,
        StatusCode::NOT_FOUND
    );
    let (elsewhere, _) = keyed_with(LinkSigner::new(&[8; 32], None).unwrap()).await;
    assert_eq!(
        send(&elsewhere, get(&old, None)).await.0,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn trusted_header_mode_requires_the_header_and_reads_scopes() {
    let auth = Auth::trusted_header(
        HeaderName::from_static("x-auth-tenant"),
        LinkSigner::new(&SECRET, None).unwrap(),
    );
    let (app, _) = app_with(Arc::new(MemoryBroker::new()), auth).await;
    // No header: 401, never a default tenant; X-Tenant is not it.
    assert_eq!(
        send(&app, get("/v1/images", None)).await,
        (StatusCode::UNAUTHORIZED, "missing_tenant".into())
    );
    let with = |scopes: Option<&str>| {
        let mut r = Request::post("/v1/images?transform=grayscale")
            .header("content-type", "image/png")
            .header("x-auth-tenant", "acme");
        if let Some(s) = scopes {
            r = r.header(SCOPES_HEADER, s);
        }
        r.body(Body::from(png())).unwrap()
    };
    let r = app.clone().oneshot(with(None)).await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let image = json(r).await["images"][0].clone();
    assert!(image["result_url"].as_str().unwrap().contains("&sig="));
    assert_eq!(
        send(&app, with(Some("read"))).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(&app, with(Some("root"))).await,
        (StatusCode::BAD_REQUEST, "invalid_scopes".into())
    );
    let other = Request::get(
        image["status_url"]
            .as_str()
            .unwrap()
            .split('?')
            .next()
            .unwrap(),
    )
    .header("x-auth-tenant", "other")
    .body(Body::empty())
    .unwrap();
    assert_eq!(send(&app, other).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn with_auth_off_links_are_bare_and_x_tenant_names_the_tenant() {
    let (app, _) = app_with(Arc::new(MemoryBroker::new()), Auth::none()).await;
    let r = app.clone().oneshot(upload(None)).await.unwrap();
    let image = json(r).await["images"][0].clone();
    let id = image["id"].as_str().unwrap();
    assert_eq!(image["result_url"], format!("/v1/images/{id}/result"));
    let r = app.clone().oneshot(get("/readyz", None)).await.unwrap();
    assert_eq!(json(r).await["broker"], "ok");
}

#[tokio::test]
async fn the_events_link_opens_the_stream_without_a_header() {
    let (app, store) = keyed().await;
    let a = key(&store, "acme", Scopes::CLIENT).await;
    let r = app
        .clone()
        .oneshot(get("/v1/events/link", Some(&a)))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let url = json(r).await["url"].as_str().unwrap().to_string();
    assert!(url.starts_with("/v1/events?tenant=acme&expires="), "{url}");
    let r = app.clone().oneshot(get(&url, None)).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    // Not a link to anything else.
    let other = url.replace("/v1/events?", "/v1/images?");
    assert_eq!(send(&app, get(&other, None)).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn an_upload_only_key_gets_no_read_links() {
    let (app, store) = keyed().await;
    let uploader = key(&store, "acme", "upload".parse().unwrap()).await;
    let image = uploaded(&app, &uploader).await;
    let id = image["id"].as_str().unwrap();
    assert_eq!(image["result_url"], format!("/v1/images/{id}/result"));
    assert_eq!(image["status_url"], format!("/v1/images/{id}"));
}

#[tokio::test]
async fn an_idempotency_key_cannot_reach_another_tenants_job() {
    let (app, store) = keyed().await;
    let (a, b) = (
        key(&store, "tenant-a", Scopes::CLIENT).await,
        key(&store, "tenant-b", Scopes::CLIENT).await,
    );
    let keyed = |k: &str, idem: &str| {
        Request::post("/v1/images?transform=grayscale")
            .header("authorization", format!("Bearer {k}"))
            .header("content-type", "image/png")
            .header("idempotency-key", idem)
            .body(Body::from(png()))
            .unwrap()
    };
    let idem = uuid::Uuid::now_v7().to_string();
    let r = app.clone().oneshot(keyed(&a, &idem)).await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let job = json(r).await["images"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // B with A's key, or with A's job id as its key: jobs of its own,
    // answered as any fresh key is.
    for guess in [idem.as_str(), job.as_str()] {
        let r = app.clone().oneshot(keyed(&b, guess)).await.unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{guess}");
        assert_ne!(json(r).await["images"][0]["id"], job.as_str());
    }
    // A's job is untouched: B's jobs do not show in A's list.
    let r = app
        .clone()
        .oneshot(get(&format!("/v1/images/{job}"), Some(&a)))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn upload_bytes_are_metered_before_the_body_is_read() {
    let store = Arc::new(MemoryArchive::new());
    let auth = Auth::keys(store.clone(), LinkSigner::new(&SECRET, None).unwrap())
        .with_key_cache(Duration::ZERO)
        .with_rates(RateLimits {
            bytes_per_second: 1000,
            byte_burst: 2000,
            ..RateLimits::default()
        });
    let (app, _) = app_with(Arc::new(MemoryBroker::new()), auth).await;
    let k = key(&store, "acme", Scopes::CLIENT).await;
    let post = |body: Body, length: Option<usize>| {
        let mut r = Request::post("/v1/images")
            .header("authorization", format!("Bearer {k}"))
            .header("content-type", "image/png");
        if let Some(n) = length {
            r = r.header("content-length", n);
        }
        r.body(body).unwrap()
    };
    // Without a length it could not be counted first: 411.
    let chunked = Body::from_stream(futures::stream::iter([Ok::<_, std::io::Error>(
        bytes::Bytes::from(png()),
    )]));
    assert_eq!(
        send(&app, post(chunked, None)).await,
        (StatusCode::LENGTH_REQUIRED, "length_required".into())
    );
    // A declared 50 kB passes on a full bucket and leaves it in debt for
    // what it weighed, whatever the body turns out to be.
    let big = vec![0u8; 50_000];
    let (status, _) = send(&app, post(Body::from(big.clone()), Some(big.len()))).await;
    assert_ne!(status, StatusCode::TOO_MANY_REQUESTS);
    let png = png();
    let r = app
        .clone()
        .oneshot(post(Body::from(png.clone()), Some(png.len())))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let after: u32 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(after >= 40, "{after}");
}

#[tokio::test]
async fn links_made_from_a_link_expire_with_it_and_duplicates_are_refused() {
    let (app, store) = keyed().await;
    let a = key(&store, "acme", Scopes::CLIENT).await;
    let image = uploaded(&app, &a).await;
    let id = image["id"].as_str().unwrap();
    let signer = LinkSigner::new(&SECRET, None).unwrap();
    let path = format!("/v1/images/{id}");
    let soon = now_ms() / 1000 + 30;
    let link = format!(
        "{path}?tenant=acme&expires={soon}&sig={}",
        signer.sign(&path, "acme", soon)
    );
    let r = app.clone().oneshot(get(&link, None)).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let status = json(r).await;
    let result = status["result_url"].as_str().unwrap();
    assert!(result.contains(&format!("expires={soon}&")), "{result}");
    // A field given twice: refused, whichever value is signed.
    let doubled = format!("{link}&tenant=other");
    assert_eq!(
        send(&app, get(&doubled, None)).await,
        (StatusCode::FORBIDDEN, "invalid_link".into())
    );
}

#[tokio::test]
async fn an_event_stream_opened_by_a_link_ends_when_the_link_expires() {
    let (app, _) = keyed().await;
    let signer = LinkSigner::new(&SECRET, None).unwrap();
    let soon = now_ms() / 1000 + 2;
    let link = format!(
        "/v1/events?tenant=acme&expires={soon}&sig={}",
        signer.sign("/v1/events", "acme", soon)
    );
    let r = app.clone().oneshot(get(&link, None)).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let started = std::time::Instant::now();
    let ended = tokio::time::timeout(
        Duration::from_secs(10),
        axum::body::to_bytes(r.into_body(), 1 << 20),
    )
    .await;
    assert!(ended.is_ok(), "the stream outlived its link");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_trusted_header_given_twice_is_refused() {
    let auth = Auth::trusted_header(
        HeaderName::from_static("x-auth-tenant"),
        LinkSigner::new(&SECRET, None).unwrap(),
    );
    let (app, _) = app_with(Arc::new(MemoryBroker::new()), auth).await;
    let twice = Request::get("/v1/images")
        .header("x-auth-tenant", "evil")
        .header("x-auth-tenant", "acme")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        send(&app, twice).await,
        (StatusCode::BAD_REQUEST, "duplicate_header".into())
    );
}

#[tokio::test]
async fn stats_show_a_tenant_its_own_jobs() {
    let (app, store) = keyed().await;
    let (a, b) = (
        key(&store, "tenant-a", Scopes::CLIENT).await,
        key(&store, "tenant-b", Scopes::CLIENT).await,
    );
    uploaded(&app, &a).await;
    let of = |k: String| {
        let app = app.clone();
        async move {
            json(app.oneshot(get("/v1/stats", Some(&k))).await.unwrap()).await["in_flight"].clone()
        }
    };
    assert_eq!(of(a).await, 1);
    assert_eq!(of(b).await, 0);
}
