//! Liveness and readiness.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;

/// 200 once the server is up (migrations ran before it started listening).
pub(crate) async fn healthz(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"status": "ok", "engine": state.store.engine().as_str()}))
}

/// 200 while the database answers.
pub(crate) async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state.store.ping().await?;
    Ok(Json(json!({"status": "ready"})))
}
