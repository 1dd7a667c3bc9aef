//! # pipeline-http
//!
//! The HTTP API of the pipeline as an axum [`Router`]: `/v1/images` (upload,
//! status, result, original, list, delete, a job's timeline), `/v1/events`
//! (server-sent completions),
//! `/v1/transforms` (the catalogue of operations and presets), the
//! prototype's `/image` routes, `/healthz`, `/readyz`, `/openapi.json`
//! (generated from the handlers, see [`ApiDoc`]), `/v1/stats` and the web app
//! at `/`. Embed it with [`router`].

mod admin;
mod auth;
mod catalog;
mod common;
mod delete;
mod error;
mod events;
mod health;
mod lookup;
mod metrics;
mod openapi;
mod quota;
mod responses;
pub mod schema;
mod stats;
mod timeline;
mod upload;
mod waits;
mod web;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use pipeline_core::services::Submitter;
use pipeline_core::{ActivityLog, Broker, ImageStore, ResultStore};

pub use auth::{Auth, AuthMode, SCOPES_HEADER};
pub use axum::http::HeaderName;
pub use error::ApiError;
pub use health::health_router;
pub use metrics::MetricsRender;
pub use openapi::{ApiDoc, document};
pub use quota::RateLimits;

/// Limits and defaults of the API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest file accepted, in bytes.
    pub max_upload_bytes: usize,
    /// Most files in one multipart upload.
    pub max_files: usize,
    /// Longest `?wait=` honoured.
    pub max_wait: Duration,
    /// Long polls and event streams one tenant may have open at once
    /// (beyond: 429 `too_many_waits`).
    pub max_waits_per_tenant: usize,
    /// Time an upload's whole body has to arrive; a slower one gets 408
    /// and its connection is closed.
    pub body_timeout: Duration,
    /// Serve the web app's files (`index.html`, `app.js`, `app.css`) from
    /// this directory instead of the copies built in: for working on the
    /// page without rebuilding.
    pub web_dir: Option<PathBuf>,
    /// Serves `GET /metrics` (admin scope when auth is on); none: 404.
    pub metrics: Option<MetricsRender>,
}

impl Default for ApiConfig {
    /// 64 MiB per file, 32 files, waits up to 60 s, bodies within 60 s.
    fn default() -> Self {
        Self {
            max_upload_bytes: 64 * 1024 * 1024,
            max_files: 32,
            max_wait: Duration::from_secs(60),
            max_waits_per_tenant: 64,
            body_timeout: Duration::from_secs(60),
            web_dir: None,
            metrics: None,
        }
    }
}

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// Validates and publishes uploads.
    pub submitter: Submitter,
    /// Status and results.
    pub results: Arc<dyn ResultStore>,
    /// Archive fallback after the result TTL.
    pub archive: Arc<dyn ImageStore>,
    /// Jobs' timelines.
    pub activity: Arc<dyn ActivityLog>,
    /// For readiness.
    pub broker: Arc<dyn Broker>,
    /// Who may do what.
    pub auth: Auth,
    /// Limits.
    pub config: ApiConfig,
}

/// The whole API.
pub fn router(state: ApiState) -> Router {
    let body_limit = state
        .config
        .max_upload_bytes
        .saturating_mul(state.config.max_files)
        .saturating_add(1024 * 1024);
    Router::new()
        .route("/", get(web::index))
        .route("/assets/app.js", get(web::script))
        .route("/assets/app.css", get(web::style))
        .route("/v1/images", post(upload::upload).get(lookup::list))
        .route(
            "/v1/images/{id}",
            get(lookup::status).delete(delete::delete),
        )
        .route("/v1/images/{id}/events", get(timeline::job_events))
        .route("/v1/images/{id}/result", get(lookup::result))
        .route("/v1/images/{id}/original", get(lookup::original))
        .route("/v1/events", get(events::events))
        .route("/v1/events/link", get(events::events_link))
        .route("/v1/transforms", get(catalog::transforms))
        .route("/v1/stats", get(stats::stats))
        .route("/v1/admin/queues", get(admin::queues))
        .route(
            "/v1/admin/queues/{queue}/dead",
            get(admin::peek).delete(admin::purge),
        )
        .route("/v1/admin/queues/{queue}/dead/replay", post(admin::replay))
        .route("/image", post(upload::legacy_upload))
        .route("/image/{id}", get(lookup::legacy_get))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics))
        .route("/openapi.json", get(openapi::openapi))
        .fallback(openapi::not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::Extension(Arc::new(waits::Waits::default())))
        .with_state(Arc::new(state))
}

/// What the unit tests of the routes share.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use pipeline_core::memory::{MemoryArchive, MemoryBroker, MemoryResultStore};
    use pipeline_core::services::{SubmitConfig, Submitter, topology};
    use pipeline_core::transform::BlockingPool;
    use pipeline_core::{Broker, ResultStore, TransformRegistry};

    use super::*;

    /// The API on `broker` with `auth`, and its archive (also its activity
    /// log and key store).
    pub(crate) async fn app_with(
        broker: Arc<MemoryBroker>,
        auth: Auth,
    ) -> (Router, Arc<MemoryArchive>) {
        let broker: Arc<dyn Broker> = broker;
        broker.declare(&topology(3)).await.unwrap();
        let results: Arc<dyn ResultStore> = Arc::new(MemoryResultStore::new());
        let submitter = Submitter::new(
            broker.clone(),
            results.clone(),
            Arc::new(TransformRegistry::with_builtins()),
            BlockingPool::new(1),
            SubmitConfig::default(),
        )
        .await
        .unwrap();
        let archive = Arc::new(MemoryArchive::new());
        let app = router(ApiState {
            submitter,
            results,
            archive: archive.clone(),
            activity: archive.clone(),
            broker,
            auth,
            config: ApiConfig::default(),
        });
        (app, archive)
    }

    /// The JSON body of `resp`.
    pub(crate) async fn json(resp: axum::response::Response) -> serde_json::Value {
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    /// An 8x8 PNG.
    pub(crate) fn png() -> Vec<u8> {
        let img = image::DynamicImage::ImageRgb8(image::RgbImage::new(8, 8));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use pipeline_core::Broker;
    use pipeline_core::memory::{MemoryArchive, MemoryBroker};
    use tower::ServiceExt;

    use super::*;

    use crate::testing::{app_with, json, png};

    async fn app() -> Router {
        app_on(Arc::new(MemoryBroker::new())).await.0
    }

    /// The API on `broker`, and its activity log.
    async fn app_on(broker: Arc<MemoryBroker>) -> (Router, Arc<MemoryArchive>) {
        app_with(broker, Auth::none()).await
    }

    #[tokio::test]
    async fn health_ready_openapi() {
        let app = app().await;
        let r = app
            .clone()
            .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let r = app
            .clone()
            .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(json(r).await["status"], "ready");
        let r = app
            .clone()
            .oneshot(Request::get("/openapi.json").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let doc = json(r).await;
        assert!(doc["paths"]["/v1/images"]["post"].is_object());
        let r = app
            .oneshot(Request::get("/nope").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(json(r).await["error"]["code"], "not_found");
    }

    #[test]
    fn the_openapi_document_covers_every_route() {
        let doc: serde_json::Value = serde_json::from_str(&document()).unwrap();
        if std::env::var_os("PIPELINE_PRINT_OPENAPI").is_some() {
            println!("{}", document());
        }
        let paths = doc["paths"].as_object().unwrap();
        let mut documented: Vec<String> = Vec::new();
        for (path, item) in paths {
            for method in item.as_object().unwrap().keys() {
                documented.push(format!("{} {path}", method.to_uppercase()));
            }
        }
        documented.sort();
        // Every route of `router` but the page and the document itself.
        let mut routes = vec![
            "POST /v1/images",
            "GET /v1/images",
            "GET /v1/images/{id}",
            "DELETE /v1/images/{id}",
            "GET /v1/images/{id}/events",
            "GET /v1/images/{id}/result",
            "GET /v1/images/{id}/original",
            "GET /v1/events",
            "GET /v1/events/link",
            "GET /v1/transforms",
            "GET /v1/stats",
            "GET /v1/admin/queues",
            "GET /v1/admin/queues/{queue}/dead",
            "DELETE /v1/admin/queues/{queue}/dead",
            "POST /v1/admin/queues/{queue}/dead/replay",
            "POST /image",
            "GET /image/{id}",
            "GET /healthz",
            "GET /readyz",
            "GET /metrics",
        ];
        routes.sort();
        assert_eq!(documented, routes);
        // Every operation documents its errors with the error body, and
        // every reference resolves.
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                let responses = op["responses"].as_object().unwrap();
                for (code, r) in responses {
                    let r = match r["$ref"].as_str() {
                        Some(name) => {
                            let name = name.trim_start_matches("#/components/responses/");
                            &doc["components"]["responses"][name]
                        }
                        None => r,
                    };
                    assert!(r.is_object(), "{method} {path} {code}: dangling reference");
                    // `/readyz` answers 503 with its readiness body.
                    if code.starts_with('4') || (code.starts_with('5') && path != "/readyz") {
                        let schema = &r["content"]["application/json"]["schema"]["$ref"];
                        assert_eq!(
                            schema, "#/components/schemas/ErrorBody",
                            "{method} {path} {code}"
                        );
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn the_catalogue_lists_operations_and_presets() {
        let app = app().await;
        let r = app
            .oneshot(Request::get("/v1/transforms").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let body = json(r).await;
        let ops = body["operations"].as_array().unwrap();
        let resize = ops.iter().find(|o| o["name"] == "resize").unwrap();
        assert!(resize["usage"].as_str().unwrap().starts_with("resize:WxH"));
        assert_eq!(resize["params"][0]["kind"], "size");
        assert_eq!(resize["params"][1]["choices"][1], "fill");
        assert_eq!(resize["params"][1]["required"], false);
        let presets = body["presets"].as_array().unwrap();
        assert!(presets.iter().any(|p| p["name"] == "thumbnail"));
        assert_eq!(body["default_transform"], "stamp");
    }

    #[tokio::test]
    async fn wait_is_capped_before_it_can_overflow() {
        let app = app().await;
        let id = uuid::Uuid::now_v7();
        for wait in ["1e20", "1.7976931348623157e308"] {
            let r = app
                .clone()
                .oneshot(
                    Request::get(format!("/v1/images/{id}/result?wait={wait}"))
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "wait={wait}");
        }
        let r = app
            .oneshot(
                Request::get(format!("/v1/images/{id}/result?wait=-1"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn upload_is_pending_until_a_transformer_runs() {
        let app = app().await;
        let r = app
            .clone()
            .oneshot(
                Request::post("/v1/images?preset=thumbnail")
                    .header("content-type", "image/png")
                    .body(Body::from(png()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let body = json(r).await;
        let id = body["images"][0]["id"].as_str().unwrap().to_string();
        assert_eq!(body["images"][0]["spec"], "auto-orient,thumbnail:256");
        let r = app
            .clone()
            .oneshot(
                Request::get(format!("/v1/images/{id}"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(json(r).await["status"], "pending");
        let r = app
            .clone()
            .oneshot(
                Request::get(format!("/image/{id}"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let r = app
            .clone()
            .oneshot(
                Request::get(format!("/v1/images/{id}/result"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        assert_eq!(r.headers()["retry-after"], "1");
        // Another tenant does not see it.
        let r = app
            .oneshot(
                Request::get(format!("/v1/images/{id}"))
                    .header("x-tenant", "other")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn transform_and_preset_together_is_a_400() {
        let app = app().await;
        let r = app
            .oneshot(
                Request::post("/v1/images?preset=web&transform=grayscale")
                    .header("content-type", "image/png")
                    .body(Body::from(png()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(
            json(r).await["error"]["message"]
                .as_str()
                .unwrap()
                .contains("not both")
        );
    }

    fn keyed_upload(key: &str, tenant: &str) -> Request<Body> {
        Request::post("/v1/images?transform=grayscale")
            .header("content-type", "image/png")
            .header("idempotency-key", key)
            .header("x-tenant", tenant)
            .body(Body::from(png()))
            .unwrap()
    }

    #[tokio::test]
    async fn an_idempotency_key_makes_one_job_however_often_it_is_sent() {
        use pipeline_core::services::keyed_job_id;
        let app = app().await;
        let key = uuid::Uuid::now_v7();
        let job = keyed_job_id("a", key).to_string();
        let r = app
            .clone()
            .oneshot(keyed_upload(&key.to_string(), "a"))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        assert_eq!(r.headers()["idempotency-key"], key.to_string().as_str());
        assert_eq!(json(r).await["images"][0]["id"], job.as_str());
        // Again: the same job, said to be a replay, nothing new.
        let r = app
            .clone()
            .oneshot(keyed_upload(&key.to_string(), "a"))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["idempotent-replayed"], "true");
        let body = json(r).await;
        assert_eq!(body["images"][0]["id"], job.as_str());
        assert_eq!(body["images"][0]["spec"], "grayscale");
        let r = app
            .clone()
            .oneshot(Request::get("/v1/stats").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(json(r).await["in_flight"], 1, "one job, not two");
        // Another tenant's same key: a job of its own, which tells nothing
        // of the first.
        let r = app
            .clone()
            .oneshot(keyed_upload(&key.to_string(), "b"))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let other = json(r).await["images"][0]["id"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(other, keyed_job_id("b", key).to_string());
        assert_ne!(other, job);
        // A key equal to another tenant's job id: the same.
        let r = app.clone().oneshot(keyed_upload(&job, "b")).await.unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }

    #[tokio::test]
    async fn a_bad_idempotency_key_is_a_400() {
        let app = app().await;
        let future = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            4_102_444_800, // 2100
            0,
        ));
        for key in [
            "nope".to_string(),
            "6ba7b810-9dad-41d1-80b4-00c04fd430c8".to_string(),
            future.to_string(),
        ] {
            let r = app.clone().oneshot(keyed_upload(&key, "a")).await.unwrap();
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{key}");
            assert_eq!(json(r).await["error"]["code"], "invalid_idempotency_key");
        }
        // One key, two files.
        let png = png();
        let mut body = Vec::new();
        for name in ["a.png", "b.png"] {
            body.extend_from_slice(
                format!("--X\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\nContent-Type: image/png\r\n\r\n").as_bytes(),
            );
            body.extend_from_slice(&png);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"--X--\r\n");
        let r = app
            .oneshot(
                Request::post("/v1/images")
                    .header("content-type", "multipart/form-data; boundary=X")
                    .header("idempotency-key", uuid::Uuid::now_v7().to_string())
                    .body(Body::from(body))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            json(r).await["error"]["code"],
            "idempotency_key_needs_one_file"
        );
    }

    #[tokio::test]
    async fn the_web_app_is_served_with_a_content_security_policy() {
        let app = app().await;
        for (path, kind) in [
            ("/", "text/html"),
            ("/assets/app.js", "text/javascript"),
            ("/assets/app.css", "text/css"),
        ] {
            let r = app
                .clone()
                .oneshot(Request::get(path).body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            let h = r.headers();
            assert!(
                h["content-type"].to_str().unwrap().starts_with(kind),
                "{path}"
            );
            let csp = h["content-security-policy"].to_str().unwrap();
            assert!(
                csp.contains("script-src 'self'") && !csp.contains("unsafe"),
                "{csp}"
            );
            assert_eq!(h["x-content-type-options"], "nosniff");
        }
        // The page loads its script and style from the routes above, and
        // has no inline script the policy would block.
        let r = app
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let page = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        let page = String::from_utf8(page.to_vec()).unwrap();
        assert!(page.contains("src=\"/assets/app.js\""), "{page}");
        assert!(page.contains("href=\"/assets/app.css\""), "{page}");
        assert!(!page.contains("<script>"), "inline script");
    }

    #[tokio::test]
    async fn a_keyed_upload_the_broker_refused_can_be_sent_again() {
        use futures::StreamExt;
        use pipeline_core::broker::Subscription;
        use pipeline_core::memory::MemoryBrokerConfig;
        use pipeline_core::services::queues;

        let broker = Arc::new(MemoryBroker::with_config(MemoryBrokerConfig {
            max_depth: 1,
            publish_timeout: std::time::Duration::from_millis(50),
            ..MemoryBrokerConfig::default()
        }));
        let (app, _) = app_on(broker.clone()).await;
        let first = uuid::Uuid::now_v7().to_string();
        let r = app
            .clone()
            .oneshot(keyed_upload(&first, "a"))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        // The queues are full: refused, and nothing of the job is left.
        let key = uuid::Uuid::now_v7().to_string();
        let r = app.clone().oneshot(keyed_upload(&key, "a")).await.unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let job = pipeline_core::services::keyed_job_id("a", key.parse().unwrap());
        let r = app
            .clone()
            .oneshot(
                Request::get(format!("/v1/images/{job}"))
                    .header("x-tenant", "a")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        // Room again: the same key makes the job now.
        for queue in [queues::TRANSFORM, queues::ACTIVITY] {
            let mut deliveries = broker.subscribe(Subscription::new(queue, 1)).await.unwrap();
            deliveries
                .next()
                .await
                .unwrap()
                .unwrap()
                .ack()
                .await
                .unwrap();
        }
        let r = app.clone().oneshot(keyed_upload(&key, "a")).await.unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        assert_eq!(json(r).await["images"][0]["id"], job.to_string().as_str());
    }

    #[tokio::test]
    async fn the_key_of_a_deleted_job_cannot_make_it_again() {
        use pipeline_core::ActivityLog;
        use pipeline_core::store::ActivityEntry;

        let (app, activity) = app_on(Arc::new(MemoryBroker::new())).await;
        let key = uuid::Uuid::now_v7();
        activity
            .append(&[ActivityEntry {
                message_id: uuid::Uuid::now_v7(),
                at_ms: 1,
                event: pipeline_core::envelope::events::DELETED.into(),
                job_id: pipeline_core::services::keyed_job_id("a", key),
                tenant: "a".into(),
                worker: None,
                size: 0,
                duration_ms: None,
                error: None,
                attempt: None,
            }])
            .await
            .unwrap();
        let r = app
            .oneshot(keyed_upload(&key.to_string(), "a"))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CONFLICT);
        let body = json(r).await;
        assert_eq!(body["error"]["code"], "idempotency_key_conflict");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("deleted")
        );
    }

    #[tokio::test]
    async fn a_spec_that_would_make_a_huge_image_is_refused_at_upload() {
        let app = app().await;
        let r = app
            .oneshot(
                Request::post("/v1/images?transform=resize:16384x16384:exact")
                    .header("content-type", "image/png")
                    .body(Body::from(png()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let body = json(r).await;
        assert_eq!(body["error"]["code"], "too_many_pixels");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("resize would make a 16384x16384 image"),
            "{message}"
        );
        assert!(message.contains("the limit is"), "{message}");
    }

    #[tokio::test]
    async fn long_polls_and_event_streams_are_capped_per_tenant() {
        let broker = Arc::new(MemoryBroker::new());
        let (app, _) = app_on(broker).await;
        let events = |tenant: &str| {
            Request::get("/v1/events")
                .header("x-tenant", tenant)
                .body(Body::empty())
                .unwrap()
        };
        // The default cap is 64: hold 64 streams open, the 65th is refused.
        let mut open = Vec::new();
        for _ in 0..64 {
            let r = app.clone().oneshot(events("a")).await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            open.push(r);
        }
        let r = app.clone().oneshot(events("a")).await.unwrap();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(json(r).await["error"]["code"], "too_many_waits");
        // Another tenant is not affected; a closed stream frees its place.
        let r = app.clone().oneshot(events("b")).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        drop(open.pop());
        let r = app.clone().oneshot(events("a")).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn another_tenants_pending_job_is_a_404_at_once() {
        let app = app().await;
        let r = app
            .clone()
            .oneshot(
                Request::post("/v1/images?transform=grayscale")
                    .header("content-type", "image/png")
                    .body(Body::from(png()))
                    .unwrap(),
            )
            .await
            .unwrap();
        let id = json(r).await["images"][0]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let started = std::time::Instant::now();
        let r = app
            .oneshot(
                Request::get(format!("/v1/images/{id}/result?wait=30"))
                    .header("x-tenant", "other")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn text_fields_and_specs_are_bounded() {
        let app = app().await;
        let form = |fields: &[(&str, String)]| {
            let mut body = Vec::new();
            for (name, value) in fields {
                body.extend_from_slice(
                    format!(
                        "--X\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
                    )
                    .as_bytes(),
                );
            }
            body.extend_from_slice(b"--X--\r\n");
            Request::post("/v1/images")
                .header("content-type", "multipart/form-data; boundary=X")
                .body(Body::from(body))
                .unwrap()
        };
        let long = "grayscale,".repeat(500);
        let r = app
            .clone()
            .oneshot(form(&[("transform", long.clone())]))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(json(r).await["error"]["code"], "spec_too_long");
        let many: Vec<(&str, String)> = (0..100).map(|_| ("note", "x".to_string())).collect();
        let r = app.clone().oneshot(form(&many)).await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(json(r).await["error"]["code"], "too_many_fields");
        let r = app
            .oneshot(
                Request::post(format!("/v1/images?transform={long}"))
                    .header("content-type", "image/png")
                    .body(Body::from(png()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(json(r).await["error"]["code"], "spec_too_long");
    }
}
