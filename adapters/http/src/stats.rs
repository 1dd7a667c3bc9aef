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
        (status = 400, description = "Bad tenant", body = crate::schema::ErrorBody),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 200, description = "Jobs this API process accepted and has not seen finish (the caller's tenant's; every tenant's for the admin scope), and its limit", body = Stats),
    )
)]
pub(crate) async fn stats(
    State(state): AppState,
    headers: HeaderMap,
    uri: Uri,
) -> ApiResult<Json<Stats>> {
    let caller = state.auth.caller(&headers, &uri, Scope::Read).await?;
    let in_flight = state.submitter.in_flight();
    // Other tenants' activity is not a tenant's business.
    let count = if caller.scopes.allows(Scope::Admin) {
        in_flight.len()
    } else {
        in_flight.len_of(&caller.tenant)
    };
    Ok(Json(Stats {
        in_flight: count,
        max_in_flight: in_flight.max(),
    }))
}
