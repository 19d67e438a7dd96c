//! Inbound hooks: GitHub's push webhooks queue builds (`POST /api/v1/hooks/github/{slug}`,
//! authenticated by `X-Hub-Signature-256` with the project's secret, no token), and the
//! project admin's route that sets that secret.

use axum::extract::State;

use super::path::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use hmac::{Hmac, Mac};
use kiln_protocol::{GithubHookSecret, HookIgnored, HookPing};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;

use super::body::{RawBody, parse};
use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::scheduler::TriggerRequest;
use crate::services::accounts::audit;
use crate::services::members::administered_project;

/// `PUT /api/v1/projects/{slug}/hooks/github`: a new secret (shown once) to paste into
/// the repository's webhook settings, replacing any earlier one.
pub(crate) async fn set_github(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
) -> Result<(StatusCode, Json<GithubHookSecret>), ApiError> {
    let project = administered_project(&state, &caller, &slug).await?;
    let mut random = [0u8; 32];
    getrandom::fill(&mut random)
        .map_err(|e| ApiError::Unavailable(format!("no randomness: {e}")))?;
    let secret = hex::encode(random);
    state
        .store
        .set_github_secret(project.id, Some(&secret))
        .await?;
    audit(&state, &caller, "github_hook.set", Some(project.id), None).await;
    Ok((
        StatusCode::CREATED,
        Json(GithubHookSecret {
            secret,
            path: format!("/api/v1/hooks/github/{slug}"),
            content_type: "application/json".into(),
            events: vec!["push".into()],
        }),
    ))
}

/// Whether `signature` (`sha256=<hex>`) is the HMAC-SHA256 of `body` under `secret`,
/// compared in constant time.
fn signature_matches(secret: &str, body: &[u8], signature: &str) -> bool {
    let Some(hex_digest) = signature.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_digest) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

fn ignored(why: String) -> Response {
    (StatusCode::ACCEPTED, Json(HookIgnored { ignored: why })).into_response()
}

/// The largest GitHub payload taken (GitHub sends at most 25 MB; push payloads of
/// ordinary pushes are a few KiB).
const MAX_GITHUB_PAYLOAD_BYTES: usize = 5 * 1024 * 1024;

/// `POST /api/v1/hooks/github/{slug}`: `ping` → 200, `push` of a built branch → 201
/// with the queued build, anything else → 202 ignored.
pub(crate) async fn github(
    State(state): State<AppState>,
    Path(slug): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody<MAX_GITHUB_PAYLOAD_BYTES>,
) -> Result<Response, ApiError> {
    let not_configured = || {
        ApiError::NotFound(format!(
            "project '{slug}' takes no GitHub webhooks; a project admin sets a secret with PUT /api/v1/projects/{slug}/hooks/github"
        ))
    };
    let project = state
        .store
        .project_by_slug(&slug)
        .await?
        .ok_or_else(not_configured)?;
    let secret = state
        .store
        .github_secret(project.id)
        .await?
        .ok_or_else(not_configured)?;
    let signature = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::Unauthorized(
                "X-Hub-Signature-256 is missing: set the webhook's secret in GitHub".into(),
            )
        })?;
    if !signature_matches(&secret, &body, signature) {
        return Err(ApiError::Unauthorized(
            "X-Hub-Signature-256 does not match: the webhook's secret differs from the project's"
                .into(),
        ));
    }
    let event = headers
        .get("x-github-event")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    match event.as_str() {
        "ping" => Ok(Json(HookPing {
            ok: true,
            project: slug,
        })
        .into_response()),
        "push" => push(&state, &project, &body).await,
        other => Ok(ignored(format!(
            "Kiln acts on push and ping events, not '{other}'"
        ))),
    }
}

/// The members of GitHub's push payload that Kiln reads (GitHub's format, not Kiln's).
#[derive(Deserialize)]
struct GithubPush {
    #[serde(default, rename = "ref")]
    reference: Option<String>,
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    deleted: bool,
}

async fn push(
    state: &AppState,
    project: &kiln_store::Project,
    body: &[u8],
) -> Result<Response, ApiError> {
    let payload: Value = serde_json::from_slice(body).map_err(|error| {
        ApiError::bad_request(
            "invalid_json",
            Some("body"),
            format!("the push payload is not JSON ({error}); set the webhook's content type to application/json"),
        )
    })?;
    let push: GithubPush = parse(payload)?;
    let Some(reference) = push.reference.as_deref() else {
        return Err(ApiError::bad_request(
            "invalid_field",
            Some("ref"),
            "ref: a push names the ref it moved",
        ));
    };
    let Some(branch) = reference.strip_prefix("refs/heads/") else {
        return Ok(ignored(format!("{reference} is not a branch")));
    };
    let commit = push.after.as_deref().unwrap_or_default();
    if push.deleted || commit.bytes().all(|b| b == b'0') {
        return Ok(ignored(format!("branch {branch} was deleted")));
    }
    let branches = state.store.list_branches(project.id).await?;
    let built = branch == project.default_branch || branches.iter().any(|b| b.name == branch);
    if !built {
        return Ok(ignored(format!(
            "branch {branch} is not built: add it with `kiln branch add {branch} --project {}`",
            project.slug
        )));
    }
    let build = state
        .scheduler
        .trigger(
            project,
            TriggerRequest {
                branch: Some(branch.to_owned()),
                commit: Some(commit.to_owned()),
                priority: None,
                cause: "github",
                retry_of: None,
                by: None,
                deploys_to: None,
                avoid_agents_of: None,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(build)).into_response())
}

#[cfg(test)]
mod tests {
    use super::signature_matches;

    #[test]
    fn github_signatures_are_checked() {
        // GitHub's documented example: secret "It's a Secret to Everybody", body
        // "Hello, World!".
        let signature = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(signature_matches(
            "It's a Secret to Everybody",
            b"Hello, World!",
            signature
        ));
        assert!(!signature_matches(
            "another secret",
            b"Hello, World!",
            signature
        ));
        assert!(!signature_matches(
            "It's a Secret to Everybody",
            b"Hello, World?",
            signature
        ));
        assert!(!signature_matches(
            "It's a Secret to Everybody",
            b"Hello, World!",
            "sha1=abc"
        ));
        assert!(!signature_matches(
            "It's a Secret to Everybody",
            b"Hello, World!",
            "sha256=zz"
        ));
    }
}
