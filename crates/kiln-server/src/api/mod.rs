//! The HTTP API: `router()` lists every route with the access it requires; a guard
//! layer authenticates and enforces that access before any handler runs.

mod agent;
mod analytics;
pub(crate) mod artifacts;
mod body;
mod build_control;
mod builds;
mod compare;
pub(crate) mod deployments;
mod events;
pub(crate) mod fleet;
mod headers;
mod health;
mod hooks;
mod jobs;
pub(crate) mod members;
mod metrics;
pub(crate) mod notifications;
mod openapi;
mod path;
pub(crate) mod projects;
mod public_status;
mod reported_log;
mod reports;
pub(crate) mod repos;
mod retention;
mod secrets;
mod socketio;
mod stream;
mod test_results;
pub(crate) mod users;
pub(crate) mod webhooks;
mod whoami;

pub(crate) use headers::security_headers;
pub(crate) use socketio::layer as socketio_layer;
pub(crate) use stream::StreamLimiter;

use axum::routing::{MethodRouter, delete, get, patch, post, put};

use crate::AppState;
use crate::auth::Access;

/// The JSON API's routes (the dashboard's are `web::route_list`; `routes` joins them).
pub(crate) fn route_list() -> Vec<(&'static str, &'static str, Access, MethodRouter<AppState>)> {
    vec![
        ("GET", "/healthz", Access::Public, get(health::healthz)),
        // This API as an OpenAPI 3.1 document (api/openapi.rs).
        (
            "GET",
            "/api/v1/openapi.json",
            Access::Public,
            get(openapi::document),
        ),
        // Deployments: environments, history, deploy, rollback.
        (
            "GET",
            "/api/v1/projects/{slug}/environments",
            Access::ProjectRead,
            get(deployments::environments),
        ),
        (
            "GET",
            "/api/v1/projects/{slug}/deployments",
            Access::ProjectRead,
            get(deployments::list),
        ),
        (
            "POST",
            "/api/v1/projects/{slug}/environments/{environment}/deploy",
            Access::ProjectWrite,
            post(deployments::deploy),
        ),
        (
            "POST",
            "/api/v1/projects/{slug}/environments/{environment}/rollback",
            Access::ProjectWrite,
            post(deployments::rollback),
        ),
        (
            "GET",
            "/api/v1/deployments/{id}",
            Access::ProjectRead,
            get(deployments::get),
        ),
        (
            "POST",
            "/api/v1/deployments/{id}/cancel",
            Access::ProjectWrite,
            post(deployments::cancel),
        ),
        // Inbound hooks (authenticated by their signature, not a token).
        (
            "POST",
            "/api/v1/hooks/github/{slug}",
            Access::Public,
            post(hooks::github),
        ),
        (
            "PUT",
            "/api/v1/projects/{slug}/hooks/github",
            Access::ProjectAdmin,
            put(hooks::set_github),
        ),
        // Project secrets: write-only, encrypted at rest.
        (
            "GET",
            "/api/v1/projects/{slug}/secrets",
            Access::ProjectAdmin,
            get(secrets::list_secrets),
        ),
        (
            "PUT",
            "/api/v1/projects/{slug}/secrets/{name}",
            Access::ProjectAdmin,
            put(secrets::set_secret),
        ),
        (
            "DELETE",
            "/api/v1/projects/{slug}/secrets/{name}",
            Access::ProjectAdmin,
            delete(secrets::delete_secret),
        ),
        // Accounts.
        (
            "POST",
            "/api/v1/session",
            Access::Public,
            post(users::login),
        ),
        (
            "DELETE",
            "/api/v1/session",
            Access::User,
            delete(users::logout),
        ),
        ("GET", "/api/v1/me", Access::User, get(users::me)),
        (
            "GET",
            "/api/v1/whoami",
            Access::ProjectRead,
            get(whoami::whoami),
        ),
        (
            "POST",
            "/api/v1/me/password",
            Access::User,
            post(users::change_my_password),
        ),
        (
            "POST",
            "/api/v1/me/tokens",
            Access::User,
            post(users::create_my_token),
        ),
        (
            "GET",
            "/api/v1/me/tokens",
            Access::User,
            get(users::list_my_tokens),
        ),
        (
            "DELETE",
            "/api/v1/me/tokens/{id}",
            Access::User,
            delete(users::revoke_my_token),
        ),
        (
            "POST",
            "/api/v1/users",
            Access::InstanceAdmin,
            post(users::create_user),
        ),
        (
            "GET",
            "/api/v1/users",
            Access::InstanceAdmin,
            get(users::list_users),
        ),
        (
            "POST",
            "/api/v1/users/{user}/disable",
            Access::InstanceAdmin,
            post(users::disable_user),
        ),
        (
            "POST",
            "/api/v1/users/{user}/enable",
            Access::InstanceAdmin,
            post(users::enable_user),
        ),
        (
            "POST",
            "/api/v1/users/{user}/password",
            Access::InstanceAdmin,
            post(users::reset_user_password),
        ),
        (
            "GET",
            "/api/v1/projects/{slug}/members",
            Access::ProjectAdmin,
            get(members::list_members),
        ),
        (
            "PUT",
            "/api/v1/projects/{slug}/members/{user}",
            Access::ProjectAdmin,
            put(members::set_member),
        ),
        (
            "DELETE",
            "/api/v1/projects/{slug}/members/{user}",
            Access::ProjectAdmin,
            delete(members::remove_member),
        ),
        (
            "GET",
            "/api/v1/audit",
            Access::ProjectAdmin,
            get(members::audit_log),
        ),
        ("GET", "/readyz", Access::Public, get(health::readyz)),
        // Prometheus scrapes (docs/operations.md).
        ("GET", "/metrics", Access::Scrape, get(metrics::scrape)),
        (
            "POST",
            "/api/v1/projects",
            Access::InstanceAdmin,
            post(projects::create_project),
        ),
        (
            "GET",
            "/api/v1/projects",
            Access::ProjectRead,
            get(projects::list_projects),
        ),
        (
            "GET",
            "/api/v1/projects/{slug}",
            Access::ProjectRead,
            get(projects::get_project),
        ),
        (
            "GET",
            "/api/v1/projects/{slug}/analytics",
            Access::ProjectRead,
            get(analytics::analytics),
        ),
        (
            "GET",
            "/api/v1/projects/{slug}/prediction",
            Access::ProjectRead,
            get(analytics::prediction),
        ),
        (
            "GET",
            "/api/v1/projects/{slug}/tests/flaky",
            Access::ProjectRead,
            get(test_results::flaky),
        ),
        (
            "GET",
            "/api/v1/projects/{slug}/tests/slowest",
            Access::ProjectRead,
            get(test_results::slowest),
        ),
        (
            "GET",
            "/api/v1/projects/{slug}/tests/history",
            Access::ProjectRead,
            get(test_results::history),
        ),
        (
            "GET",
            "/api/v1/projects/{slug}/public-status",
            Access::ProjectAdmin,
            get(public_status::show),
        ),
        (
            "PUT",
            "/api/v1/projects/{slug}/public-status",
            Access::ProjectAdmin,
            put(public_status::set),
        ),
        (
            "POST",
            "/api/v1/projects/{slug}/tokens",
            Access::ProjectAdmin,
            post(projects::create_token),
        ),
        (
            "GET",
            "/api/v1/projects/{slug}/tokens",
            Access::ProjectAdmin,
            get(projects::list_tokens),
        ),
        (
            "DELETE",
            "/api/v1/projects/{slug}/tokens/{id}",
            Access::ProjectAdmin,
            delete(projects::revoke_token),
        ),
        (
            "POST",
            "/api/v1/events",
            Access::ProjectIngest,
            post(events::ingest),
        ),
        (
            "POST",
            "/api/internal/build-events",
            Access::ProjectIngest,
            post(events::ingest),
        ),
        (
            "POST",
            "/api/v1/builds/{run_id}/log",
            Access::ProjectIngest,
            post(reported_log::append),
        ),
        (
            "GET",
            "/api/v1/builds",
            Access::ProjectRead,
            get(builds::list_builds),
        ),
        (
            "GET",
            "/api/v1/builds/{run_id}",
            Access::ProjectRead,
            get(builds::get_build),
        ),
        (
            "GET",
            "/api/v1/builds/{run_id}/metrics",
            Access::ProjectRead,
            get(builds::build_metrics),
        ),
        (
            "POST",
            "/api/v1/builds/{run_id}/tests",
            Access::ProjectIngest,
            post(test_results::upload),
        ),
        (
            "GET",
            "/api/v1/builds/{run_id}/tests",
            Access::ProjectRead,
            get(test_results::of_build),
        ),
        (
            "POST",
            "/api/v1/builds/{run_id}/artifacts",
            Access::ProjectIngest,
            post(artifacts::start),
        ),
        (
            "PUT",
            "/api/v1/builds/{run_id}/artifacts/uploads/{upload_id}",
            Access::ProjectIngest,
            put(artifacts::send),
        ),
        (
            "GET",
            "/api/v1/builds/{run_id}/artifacts",
            Access::ProjectRead,
            get(artifacts::manifest),
        ),
        (
            "GET",
            "/api/v1/builds/{run_id}/artifacts/files/{*path}",
            Access::ProjectRead,
            get(artifacts::download),
        ),
        (
            "GET",
            "/api/v1/builds/{run_id}/artifacts.tar.gz",
            Access::ProjectRead,
            get(artifacts::archive),
        ),
        (
            "POST",
            "/api/v1/builds/{run_id}/artifacts/verify",
            Access::ProjectWrite,
            post(artifacts::verify),
        ),
        // After a build: retention, pins, comparison, rebuild to verify, reports.
        (
            "GET",
            "/api/v1/projects/{slug}/artifact-retention",
            Access::ProjectRead,
            get(retention::show),
        ),
        (
            "PUT",
            "/api/v1/projects/{slug}/artifact-retention",
            Access::ProjectAdmin,
            put(retention::set),
        ),
        (
            "POST",
            "/api/v1/projects/{slug}/artifact-retention/run",
            Access::ProjectAdmin,
            post(retention::run),
        ),
        (
            "POST",
            "/api/v1/builds/{run_id}/pin",
            Access::ProjectWrite,
            post(retention::pin),
        ),
        (
            "DELETE",
            "/api/v1/builds/{run_id}/pin",
            Access::ProjectWrite,
            delete(retention::unpin),
        ),
        (
            "GET",
            "/api/v1/compare",
            Access::ProjectRead,
            get(compare::compare),
        ),
        (
            "POST",
            "/api/v1/builds/{run_id}/rebuild-verify",
            Access::ProjectWrite,
            post(compare::rebuild_verify),
        ),
        (
            "GET",
            "/api/v1/builds/{run_id}/verification",
            Access::ProjectRead,
            get(compare::verification),
        ),
        (
            "GET",
            "/api/v1/builds/{run_id}/report.json",
            Access::ProjectRead,
            get(reports::json),
        ),
        (
            "GET",
            "/api/v1/builds/{run_id}/report.md",
            Access::ProjectRead,
            get(reports::markdown),
        ),
        (
            "GET",
            "/api/v1/builds/{run_id}/events",
            Access::ProjectRead,
            get(builds::build_events),
        ),
        (
            "GET",
            "/api/v1/builds/{run_id}/status",
            Access::ProjectRead,
            get(builds::build_status),
        ),
        (
            "GET",
            "/api/v1/status",
            Access::ProjectAdmin,
            get(builds::project_status),
        ),
        (
            "GET",
            "/api/v1/builds/{run_id}/stream",
            Access::ProjectRead,
            get(stream::build_stream),
        ),
        (
            "GET",
            "/api/v1/stream",
            Access::ProjectRead,
            get(stream::project_stream),
        ),
        // Builds Kiln runs.
        (
            "PUT",
            "/api/v1/projects/{slug}/repo",
            Access::ProjectAdmin,
            put(repos::set_repo),
        ),
        (
            "GET",
            "/api/v1/projects/{slug}/branches",
            Access::ProjectAdmin,
            get(repos::list_branches),
        ),
        (
            "POST",
            "/api/v1/projects/{slug}/branches",
            Access::ProjectAdmin,
            post(repos::upsert_branch),
        ),
        (
            "DELETE",
            "/api/v1/projects/{slug}/branches/{name}",
            Access::ProjectAdmin,
            delete(repos::delete_branch),
        ),
        (
            "POST",
            "/api/v1/projects/{slug}/builds",
            Access::ProjectWrite,
            post(build_control::trigger),
        ),
        (
            "POST",
            "/api/v1/projects/{slug}/builds/{run_id}/retry",
            Access::ProjectWrite,
            post(build_control::retry),
        ),
        (
            "POST",
            "/api/v1/projects/{slug}/builds/{run_id}/cancel",
            Access::ProjectWrite,
            post(build_control::cancel),
        ),
        (
            "GET",
            "/api/v1/projects/{slug}/builds/{run_id}/jobs",
            Access::ProjectRead,
            get(jobs::jobs),
        ),
        (
            "GET",
            "/api/v1/projects/{slug}/builds/{run_id}/jobs/{job}/log",
            Access::ProjectRead,
            get(jobs::log),
        ),
        (
            "GET",
            "/api/v1/projects/{slug}/builds/{run_id}/jobs/{job}/log/stream",
            Access::ProjectRead,
            get(jobs::log_stream),
        ),
        (
            "GET",
            "/api/v1/queue",
            Access::ProjectRead,
            get(fleet::queue),
        ),
        (
            "GET",
            "/api/v1/agents",
            Access::ProjectRead,
            get(fleet::list_agents),
        ),
        (
            "POST",
            "/api/v1/agent-tokens",
            Access::InstanceAdmin,
            post(fleet::create_agent_token),
        ),
        (
            "GET",
            "/api/v1/agent-tokens",
            Access::InstanceAdmin,
            get(fleet::list_agent_tokens),
        ),
        (
            "DELETE",
            "/api/v1/agent-tokens/{id}",
            Access::InstanceAdmin,
            delete(fleet::revoke_agent_token),
        ),
        (
            "POST",
            "/api/v1/agent/register",
            Access::Agent,
            post(agent::register),
        ),
        (
            "POST",
            "/api/v1/agent/claim",
            Access::Agent,
            post(agent::claim),
        ),
        (
            "POST",
            "/api/v1/agent/heartbeat",
            Access::Agent,
            post(agent::heartbeat),
        ),
        (
            "POST",
            "/api/v1/agent/jobs/{id}/log",
            Access::Agent,
            post(agent::append_log),
        ),
        (
            "POST",
            "/api/v1/agent/jobs/{id}/tests",
            Access::Agent,
            post(agent::upload_tests),
        ),
        (
            "POST",
            "/api/v1/agent/jobs/{id}/artifacts",
            Access::Agent,
            post(agent::start_artifact),
        ),
        (
            "PUT",
            "/api/v1/agent/jobs/{id}/artifacts/uploads/{upload_id}",
            Access::Agent,
            put(agent::send_artifact),
        ),
        (
            "GET",
            "/api/v1/agent/jobs/{id}/artifacts/{sha256}",
            Access::Agent,
            get(agent::download_artifact),
        ),
        (
            "POST",
            "/api/v1/agent/jobs/{id}/finish",
            Access::Agent,
            post(agent::finish),
        ),
        // Notifications.
        (
            "GET",
            "/api/v1/notifications",
            Access::User,
            get(notifications::list),
        ),
        (
            "POST",
            "/api/v1/notifications/{id}/read",
            Access::User,
            post(notifications::mark_read),
        ),
        (
            "POST",
            "/api/v1/notifications/read-all",
            Access::User,
            post(notifications::mark_all_read),
        ),
        (
            "POST",
            "/api/v1/notifications/{id}/archive",
            Access::User,
            post(notifications::archive),
        ),
        (
            "GET",
            "/api/v1/notifications/stats",
            Access::User,
            get(notifications::stats),
        ),
        (
            "GET",
            "/api/v1/notifications/mutes",
            Access::User,
            get(notifications::list_mutes),
        ),
        (
            "POST",
            "/api/v1/notifications/mutes",
            Access::User,
            post(notifications::add_mute),
        ),
        (
            "DELETE",
            "/api/v1/notifications/mutes",
            Access::User,
            delete(notifications::remove_mute),
        ),
        // Webhooks.
        (
            "POST",
            "/api/v1/projects/{slug}/webhooks",
            Access::ProjectAdmin,
            post(webhooks::create),
        ),
        (
            "GET",
            "/api/v1/projects/{slug}/webhooks",
            Access::ProjectAdmin,
            get(webhooks::list),
        ),
        (
            "GET",
            "/api/v1/projects/{slug}/webhooks/{id}",
            Access::ProjectAdmin,
            get(webhooks::show),
        ),
        (
            "PATCH",
            "/api/v1/projects/{slug}/webhooks/{id}",
            Access::ProjectAdmin,
            patch(webhooks::update),
        ),
        (
            "DELETE",
            "/api/v1/projects/{slug}/webhooks/{id}",
            Access::ProjectAdmin,
            delete(webhooks::remove),
        ),
        (
            "POST",
            "/api/v1/projects/{slug}/webhooks/{id}/rotate-secret",
            Access::ProjectAdmin,
            post(webhooks::rotate_secret),
        ),
        (
            "POST",
            "/api/v1/projects/{slug}/webhooks/{id}/test",
            Access::ProjectAdmin,
            post(webhooks::send_test),
        ),
        (
            "GET",
            "/api/v1/projects/{slug}/webhooks/{id}/deliveries",
            Access::ProjectAdmin,
            get(webhooks::deliveries),
        ),
        (
            "POST",
            "/api/v1/projects/{slug}/webhooks/{id}/deliveries/{delivery}/redeliver",
            Access::ProjectAdmin,
            post(webhooks::redeliver),
        ),
        (
            "GET",
            "/api/v1/webhooks/status",
            Access::ProjectRead,
            get(webhooks::status),
        ),
    ]
}

/// A service's refusal as the API's error, one to one; a store error goes through
/// `From<StoreError>` (error.rs), which logs its cause and answers 503.
impl From<crate::service_error::ServiceError> for crate::error::ApiError {
    fn from(error: crate::service_error::ServiceError) -> Self {
        use crate::service_error::ServiceError as E;
        match error {
            E::BadRequest {
                code,
                message,
                field,
            } => Self::BadRequest {
                code,
                message,
                field,
            },
            E::Unauthorized(message) => Self::Unauthorized(message),
            E::Forbidden(message) => Self::Forbidden(message),
            E::NotFound(message) => Self::NotFound(message),
            E::Conflict {
                code,
                message,
                field,
            } => Self::Conflict {
                code,
                message,
                field,
            },
            E::Unprocessable {
                code,
                message,
                field,
            } => Self::Unprocessable {
                code,
                message,
                field,
            },
            E::PayloadTooLarge(message) => Self::PayloadTooLarge(message),
            E::TooManyRequests(message) => Self::TooManyRequests(message),
            E::RateLimited(message) => Self::RateLimited(message),
            E::Unavailable(message) => Self::Unavailable(message),
            E::Store(error) => error.into(),
        }
    }
}
