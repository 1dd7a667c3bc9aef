//! `GET /v1/transforms`: every registered operation with its usage line
//! and arguments, and every preset, so clients can build specs.

use axum::Json;
use axum::extract::State;

use crate::common::AppState;
use crate::schema::{Catalogue, OperationInfo, PresetInfo};

#[utoipa::path(
    get,
    path = "/v1/transforms",
    tag = "images",
    responses((status = 200, description = "Operations and presets", body = Catalogue))
)]
pub(crate) async fn transforms(State(state): AppState) -> Json<Catalogue> {
    let submitter = &state.submitter;
    let operations = submitter
        .registry()
        .transforms()
        .map(|t| OperationInfo {
            name: t.name().to_string(),
            usage: t.usage().to_string(),
            params: t.params(),
        })
        .collect();
    let config = submitter.config();
    let presets = config
        .presets
        .iter()
        .map(|(name, spec)| PresetInfo {
            name: name.clone(),
            spec: spec.clone(),
        })
        .collect();
    Json(Catalogue {
        operations,
        presets,
        default_transform: config.default_spec.clone(),
        max_operations: pipeline_core::transform::MAX_OPERATIONS,
    })
}
