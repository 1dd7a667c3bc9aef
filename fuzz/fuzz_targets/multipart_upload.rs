//! `POST /v1/images` reads any multipart body (fields, names, file names,
//! text fields, boundaries cut short) and answers with a documented error
//! or an acceptance, never a server error or a panic.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::Request;
use libfuzzer_sys::fuzz_target;
use pipeline_core::memory::{MemoryArchive, MemoryBroker, MemoryBrokerConfig, MemoryResultStore};
use pipeline_core::services::{SubmitConfig, Submitter, topology};
use pipeline_core::transform::BlockingPool;
use pipeline_core::{Broker, ResultStore, TransformRegistry};
use pipeline_http::{ApiConfig, ApiState};
use tower::ServiceExt;

struct App {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
}

fn app() -> &'static App {
    static APP: OnceLock<App> = OnceLock::new();
    APP.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let router = runtime.block_on(async {
            // Room for every upload the fuzzer gets accepted.
            let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::with_config(MemoryBrokerConfig {
                max_depth: usize::MAX,
                ..MemoryBrokerConfig::default()
            }));
            broker.declare(&topology(3)).await.expect("declare");
            let results: Arc<dyn ResultStore> = Arc::new(MemoryResultStore::new());
            let submitter = Submitter::new(
                broker.clone(),
                results.clone(),
                Arc::new(TransformRegistry::with_builtins()),
                BlockingPool::new(1),
                SubmitConfig::default(),
            )
            .await
            .expect("submitter");
            let archive = Arc::new(MemoryArchive::new());
            pipeline_http::router(ApiState {
                submitter,
                results,
                archive: archive.clone(),
                activity: archive,
                broker,
                auth: pipeline_http::Auth::none(),
                config: ApiConfig {
                    max_upload_bytes: 1 << 20,
                    max_files: 4,
                    ..ApiConfig::default()
                },
            })
        });
        App { runtime, router }
    })
}

fuzz_target!(|data: &[u8]| {
    let app = app();
    let request = Request::post("/v1/images")
        .header("content-type", "multipart/form-data; boundary=X")
        .body(Body::from(data.to_vec()))
        .expect("request");
    let response = app
        .runtime
        .block_on(app.router.clone().oneshot(request))
        .expect("infallible");
    let status = response.status().as_u16();
    assert!(
        matches!(status, 202 | 400 | 413 | 415 | 422 | 503),
        "status {status}"
    );
});
