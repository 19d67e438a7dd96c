//! `GET /metrics`: Prometheus' text exposition format (version 0.0.4). Who may scrape is
//! the guard's business (`Access::Scrape`).

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::error::ApiError;

pub(crate) async fn scrape(State(state): State<AppState>) -> Result<Response, ApiError> {
    let text = crate::services::metrics::scrape(&state).await?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        text,
    )
        .into_response())
}
