//! Event ingest: `POST /api/v1/events` and the seed's `POST /api/internal/build-events`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use kiln_core::NewEvent;
use kiln_core::limits::MAX_BATCH_EVENTS;
use kiln_protocol::{EventAck, IngestResponse};
use kiln_store::{IngestRejection, IngestRequest, OutcomeStatus, Precondition};
use serde_json::Value;

use super::body::JsonBody;
use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;

/// Validates the whole body first: a batch with one bad event is refused whole.
fn parse_events(body: &Value) -> Result<Vec<NewEvent>, ApiError> {
    match body {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(ApiError::bad_request(
                    "invalid_field",
                    Some("body"),
                    "the batch is empty; send at least one event",
                ));
            }
            if items.len() > MAX_BATCH_EVENTS {
                return Err(ApiError::bad_request(
                    "batch_too_large",
                    Some("body"),
                    format!(
                        "the batch has {} events; the limit is {MAX_BATCH_EVENTS} per request, split it",
                        items.len()
                    ),
                ));
            }
            items
                .iter()
                .enumerate()
                .map(|(index, item)| {
                    NewEvent::from_json(item, &format!("[{index}].")).map_err(ApiError::from)
                })
                .collect()
        }
        single => Ok(vec![NewEvent::from_json(single, "")?]),
    }
}

pub(crate) async fn ingest(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<IngestResponse>), ApiError> {
    let events = parse_events(&body)?;
    let batch = body.is_array();
    let project_id = caller
        .project_id
        .ok_or_else(|| ApiError::Forbidden("only project tokens write events".into()))?;
    let outcome = state
        .ingestor
        .submit(IngestRequest {
            project_id,
            events,
            precondition: Precondition::None,
            jobs: None,
        })
        .await
        .map_err(|failure| ApiError::Unavailable(failure.0))?;
    let outcomes = outcome.map_err(|rejection| {
        let prefix = if batch {
            format!("[{}].", rejection.index())
        } else {
            String::new()
        };
        match rejection {
            IngestRejection::Terminal { message, .. } => ApiError::Conflict {
                code: "build_ended",
                message,
                field: Some(format!("{prefix}event")),
            },
            IngestRejection::RunIdTaken { .. } => ApiError::Conflict {
                code: "run_id_taken",
                message: rejection.to_string(),
                field: Some(format!("{prefix}runId")),
            },
        }
    })?;
    let all_ignored = outcomes.iter().all(|o| o.status == OutcomeStatus::Ignored);
    let response = IngestResponse {
        events: outcomes
            .into_iter()
            .map(|outcome| EventAck {
                run_id: outcome.run_id.into_string(),
                event_id: outcome.client_event_id.map(|c| c.into_string()),
                status: outcome.status.as_str().into(),
                id: outcome.id,
                seq: outcome.seq,
            })
            .collect(),
    };
    // A replay answers like the original (201 with the original ids); a request whose
    // every event was ignored (heartbeats after the end) answers 200.
    let status = if all_ignored {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(response)))
}
