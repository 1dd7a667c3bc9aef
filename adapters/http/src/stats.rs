//! `GET /v1/stats`: this API process's jobs in flight, for the web app's
//! operations view.

use axum::Json;
use axum::extract::State;

use axum::http::{HeaderMap, Uri};
use pipeline_core::auth::Scope;

use crate::common::{ApiResult, AppState};
use crate::responses::{Forbidden, Unauthorized};
use crate::schema::Stats;

#[utoipa::path(
    get,
    path = "/v1/stats",
    tag = "operations",
    responses(
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 200, description = "Jobs this API process accepted and has not seen finish, and its limit", body = Stats),
    )
)]
pub(crate) async fn stats(
    State(state): AppState,
    headers: HeaderMap,
    uri: Uri,
) -> ApiResult<Json<Stats>> {
    state.auth.caller(&headers, &uri, Scope::Read).await?;
    let in_flight = state.submitter.in_flight();
    Ok(Json(Stats {
        in_flight: in_flight.len(),
        max_in_flight: in_flight.max(),
    }))
}
