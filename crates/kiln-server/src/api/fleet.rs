//! The fleet, for users and admins: agent tokens, the agents and the queue with why
//! each job waits.

use axum::extract::State;

use super::path::Path;
use axum::http::StatusCode;
use axum::{Extension, Json};
use kiln_core::token::TokenKind;
use kiln_protocol::{AgentList, CreateNamedToken, CreatedToken, JobList, TokenDto, TokenList};
use kiln_store::{NewToken, StoreError};

use super::body::{JsonBody, parse};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::services::fleet::{agent_list, queued_jobs};
use crate::services::projects::checked_name;
use crate::wire::token_dto;
use crate::{AppState, generate_token};

pub(crate) async fn create_agent_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let request: CreateNamedToken = parse(body)?;
    let name = checked_name(&request.name, "name")?;
    let token = generate_token();
    let record = state
        .store
        .create_token(
            &NewToken::new(&token, TokenKind::Agent, None, name, vec![]),
            state.clock.now(),
        )
        .await?;
    crate::services::accounts::audit(
        &state,
        &caller,
        "agent_token.create",
        None,
        Some(&record.name),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            token,
            info: token_dto(&record, None),
        }),
    ))
}

pub(crate) async fn list_agent_tokens(
    State(state): State<AppState>,
) -> Result<Json<TokenList>, ApiError> {
    let tokens = state.store.list_tokens(None).await?;
    Ok(Json(TokenList {
        tokens: tokens
            .iter()
            .filter(|t| t.kind == TokenKind::Agent)
            .map(|t| token_dto(t, None))
            .collect(),
    }))
}

pub(crate) async fn revoke_agent_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(token_id): Path<String>,
) -> Result<Json<TokenDto>, ApiError> {
    let token_id: i64 = token_id.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_field",
            Some("id"),
            "id: must be a token id from the token list",
        )
    })?;
    let existing = state.store.list_tokens(None).await?;
    if !existing
        .iter()
        .any(|t| t.id == token_id && t.kind == TokenKind::Agent)
    {
        return Err(ApiError::NotFound(format!(
            "agent token {token_id} not found"
        )));
    }
    let record = state
        .store
        .revoke_token(None, token_id, state.clock.now())
        .await
        .map_err(|error| match error {
            StoreError::NotFound(_) => {
                ApiError::NotFound(format!("agent token {token_id} not found"))
            }
            other => other.into(),
        })?;
    state.authenticator.forget_all();
    crate::services::accounts::audit(
        &state,
        &caller,
        "agent_token.revoke",
        None,
        Some(&record.name),
    )
    .await;
    Ok(Json(token_dto(&record, None)))
}

pub(crate) async fn list_agents(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<AgentList>, ApiError> {
    Ok(Json(agent_list(&state, &caller).await?))
}

/// Jobs waiting or running, oldest first, with why each waiting job waits.
pub(crate) async fn queue(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<JobList>, ApiError> {
    Ok(Json(queued_jobs(&state, &caller).await?))
}
