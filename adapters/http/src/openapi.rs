//! The OpenAPI document, generated from the handlers and the types of
//! [`crate::schema`]; the 404 of unknown routes.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa::{IntoParams, OpenApi};

use crate::error::ApiError;
use crate::{admin, catalog, delete, events, health, lookup, stats, timeline, upload};

/// The `X-Tenant` header every image route reads.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub(crate) struct TenantHeader {
    /// Tenant owning the jobs (1-128 characters of A-Z, a-z, 0-9, '-', '_',
    /// '.') when auth is off (`default` when absent). With API keys the
    /// tenant is the key's, and this header, if sent, must name it.
    #[param(rename = "X-Tenant", pattern = r"^[A-Za-z0-9._-]{1,128}$")]
    x_tenant: Option<String>,
}

/// The `bearer` security scheme: `Authorization: Bearer <API key>`.
struct BearerKeys;

impl utoipa::Modify for BearerKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "An API key (`pipeline keys create`), when the server runs with PIPELINE_AUTH=keys. \
                 Result and original links in answers are signed and need no header.",
            ))
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The API's OpenAPI document.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "pipeline",
        description = "Upload images, get them back transformed. Errors are JSON with a stable `code`.",
        license(name = "MIT OR Apache-2.0")
    ),
    paths(
        upload::upload,
        lookup::list,
        lookup::status,
        delete::delete,
        timeline::job_events,
        lookup::result,
        lookup::original,
        events::events,
        events::events_link,
        catalog::transforms,
        stats::stats,
        admin::queues,
        admin::peek,
        admin::replay,
        admin::purge,
        upload::legacy_upload,
        lookup::legacy_get,
        health::healthz,
        health::readyz,
        crate::metrics::metrics,
    ),
    components(
        responses(
            crate::responses::Image,
            crate::responses::NotFound,
            crate::responses::NotReady,
            crate::responses::Unavailable,
            crate::responses::Unauthorized,
            crate::responses::Forbidden
        ),
        schemas(crate::schema::ErrorBody, crate::schema::Pending)
    ),
    modifiers(&BearerKeys),
    tags(
        (name = "images", description = "Uploads, results and the archive"),
        (name = "prototype", description = "The Python prototype's routes"),
        (name = "operations", description = "Health, readiness and load"),
    )
)]
pub struct ApiDoc;

/// The document as JSON.
pub fn document() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

pub(crate) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document()).into_response()
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}
