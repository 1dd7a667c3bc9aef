//! The web app: `/` and its two assets, shipped inside the binary (or read
//! from [`crate::ApiConfig::web_dir`] while developing the page), every
//! answer with a Content-Security-Policy that allows same-origin scripts,
//! styles and requests only.

use std::path::Path;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::common::AppState;
use crate::error::ApiError;

/// No inline script or style, no other origin, no framing.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// One file of the app.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    embedded: &'static str,
}

const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    embedded: include_str!("../assets/index.html"),
};
const SCRIPT: Asset = Asset {
    name: "app.js",
    content_type: "text/javascript; charset=utf-8",
    embedded: include_str!("../assets/app.js"),
};
const STYLE: Asset = Asset {
    name: "app.css",
    content_type: "text/css; charset=utf-8",
    embedded: include_str!("../assets/app.css"),
};

pub(crate) async fn index(State(state): AppState) -> Response {
    serve(&INDEX, state.config.web_dir.as_deref()).await
}

pub(crate) async fn script(State(state): AppState) -> Response {
    serve(&SCRIPT, state.config.web_dir.as_deref()).await
}

pub(crate) async fn style(State(state): AppState) -> Response {
    serve(&STYLE, state.config.web_dir.as_deref()).await
}

async fn serve(asset: &Asset, dir: Option<&Path>) -> Response {
    let body = match dir {
        None => asset.embedded.to_string(),
        // Fixed names only: nothing from the request reaches the path.
        Some(dir) => match tokio::fs::read_to_string(dir.join(asset.name)).await {
            Ok(text) => text,
            Err(e) => {
                tracing::warn!(file = %dir.join(asset.name).display(), error = %e, "web file");
                return ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("{} is missing from the web directory", asset.name),
                )
                .into_response();
            }
        },
    };
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The assets change with the binary: revalidate rather than cache.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}
