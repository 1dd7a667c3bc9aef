//! `GET /v1/stats`: this API process's jobs in flight, for the web app's
//! operations view.

use axum::Json;
use axum::extract::State;

use crate::common::AppState;
use crate::schema::Stats;

#[utoipa::path(
    get,
    path = "/v1/stats",
    tag = "operations",
    responses((status = 200, description = "Jobs this API process accepted and has not seen finish, and its limit", body = Stats))
)]
pub(crate) async fn stats(State(state): AppState) -> Json<Stats> {
    let in_flight = state.submitter.in_flight();
    Json(Stats {
        in_flight: in_flight.len(),
        max_in_flight: in_flight.max(),
    })
}
