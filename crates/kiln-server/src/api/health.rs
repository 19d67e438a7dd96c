//! Liveness and readiness.

use axum::Json;
use axum::extract::State;
use kiln_protocol::Health;

use crate::AppState;
use crate::error::ApiError;

/// 200 once the server is up (migrations ran before it started listening).
pub(crate) async fn healthz(State(state): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        engine: Some(state.store.engine().as_str().into()),
    })
}

/// 200 while the database answers.
pub(crate) async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    state.store.ping().await?;
    Ok(Json(Health {
        status: "ready".into(),
        engine: None,
    }))
}
