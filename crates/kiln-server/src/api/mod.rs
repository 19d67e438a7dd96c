//! The HTTP API: `router()` lists every route with the access it requires; a guard
//! layer authenticates and enforces that access before any handler runs.

mod agent;
mod body;
mod builds;
mod events;
pub(crate) mod fleet;
mod headers;
mod health;
mod hooks;
pub(crate) mod members;
pub(crate) mod notifications;
pub(crate) mod projects;
mod reported_log;
pub(crate) mod repos;
mod runs;
mod secrets;
mod socketio;
mod stream;
pub(crate) mod users;
pub(crate) mod webhooks;
mod whoami;

pub(crate) use body::QueryParams;
pub(crate) use builds::readable_build;
pub(crate) use projects::readable_project;
pub(crate) use runs::{requester, retry_request, writable_project};
pub(crate) use stream::StreamLimiter;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, patch, post, put};

use crate::AppState;
use crate::auth::Access;
use crate::error::ApiError;

/// One route and the access it requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteRule {
    pub method: &'static str,
    pub path: &'static str,
    pub access: &'static str,
}

/// Every route with its rule; the single source for the router, the docs and the
/// authorization tests.
///
/// Not listed: Socket.IO at `/socket.io/` (`socketio::layer`), which answers before
/// routing. Its handshake needs a token that may read some project (its `auth.token`,
/// or the same headers as here); each `subscribe` is then checked like a `read` route.
fn route_list() -> Vec<(&'static str, &'static str, Access, MethodRouter<AppState>)> {
    let mut routes = crate::web::route_list();
    routes.extend(api_route_list());
    routes
}

/// The JSON API's routes.
fn api_route_list() -> Vec<(&'static str, &'static str, Access, MethodRouter<AppState>)> {
    vec![
        ("GET", "/healthz", Access::Public, get(health::healthz)),
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
            post(runs::trigger),
        ),
        (
            "POST",
            "/api/v1/projects/{slug}/builds/{run_id}/retry",
            Access::ProjectWrite,
            post(runs::retry),
        ),
        (
            "POST",
            "/api/v1/projects/{slug}/builds/{run_id}/cancel",
            Access::ProjectWrite,
            post(runs::cancel),
        ),
        (
            "GET",
            "/api/v1/projects/{slug}/builds/{run_id}/jobs",
            Access::ProjectRead,
            get(runs::jobs),
        ),
        (
            "GET",
            "/api/v1/projects/{slug}/builds/{run_id}/jobs/{job}/log",
            Access::ProjectRead,
            get(runs::log),
        ),
        (
            "GET",
            "/api/v1/projects/{slug}/builds/{run_id}/jobs/{job}/log/stream",
            Access::ProjectRead,
            get(runs::log_stream),
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

/// The route table, for documentation and tests.
#[allow(non_snake_case)] // reads as the constant it stands for
pub fn ROUTES() -> Vec<RouteRule> {
    route_list()
        .into_iter()
        .map(|(method, path, access, _)| RouteRule {
            method,
            path,
            access: access.as_str(),
        })
        .collect()
}

/// The HTTP router, and the Socket.IO handle that closes sockets at shutdown.
pub(crate) fn router(state: AppState) -> (Router, socketioxide::SocketIo) {
    let (socket_layer, socket_io) = socketio::layer(&state);
    let mut router = Router::new();
    for (_, path, access, method_router) in route_list() {
        let guarded = method_router.route_layer(middleware::from_fn_with_state(
            (state.clone(), access),
            guard,
        ));
        router = router.route(path, guarded);
    }
    let router = router
        .fallback(|| async {
            ApiError::NotFound("no such route; the API is described in docs/api.md".into())
        })
        .method_not_allowed_fallback(|| async {
            ApiError::bad_request(
                "method_not_allowed",
                None,
                "this route does not accept that method; see docs/api.md",
            )
        })
        .layer(socket_layer)
        .layer(middleware::from_fn(refuse_nul_in_url))
        .layer(middleware::map_response(headers::security_headers));
    (router.with_state(state), socket_io)
}

/// Refuses a URL whose path or query holds `%00`: decoded, it would reach a handler as a
/// slug, id or filter holding U+0000, which PostgreSQL's text cannot hold (a lookup would
/// fail as if the database were down) and no name in Kiln contains.
async fn refuse_nul_in_url(request: Request, next: Next) -> Response {
    let target = request
        .uri()
        .path_and_query()
        .map_or("", |target| target.as_str());
    if target.contains("%00") {
        return ApiError::bad_request(
            "invalid_url",
            Some("url"),
            "the URL contains %00 (a NUL character), which no name, id or filter in Kiln holds; remove it",
        )
        .into_response();
    }
    next.run(request).await
}

async fn guard(
    State((state, access)): State<(AppState, Access)>,
    mut request: Request,
    next: Next,
) -> Response {
    if access == Access::Public {
        return next.run(request).await;
    }
    let caller = match state.authenticator.authenticate(request.headers()).await {
        Ok(caller) => caller,
        // A browser without a (live) session goes to the login page, then back.
        Err(_) if access.is_page() => {
            let target = request
                .uri()
                .path_and_query()
                .map_or("/", |target| target.as_str());
            return crate::web::to_login(target);
        }
        Err(error) => return error.into_response(),
    };
    if let Err(error) = caller.check(access) {
        if access.is_page() {
            return crate::web::PageError(error).into_response();
        }
        return error.into_response();
    }
    // Dashboard forms carry the CSRF token in a `_csrf` field, checked by their handler
    // (`web::check_csrf`).
    if access.is_page() {
        request.extensions_mut().insert(caller);
        return next.run(request).await;
    }
    // A browser sends the session cookie by itself; an unsafe request must also prove it
    // comes from Kiln's own pages by echoing the session's CSRF token.
    if let Some(expected) = &caller.csrf_token {
        let unsafe_method = !matches!(
            *request.method(),
            axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
        );
        let presented = request
            .headers()
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok());
        if unsafe_method && presented != Some(expected.as_str()) {
            return ApiError::Forbidden(
                "missing or wrong X-CSRF-Token: send the csrfToken from the login answer (or GET /api/v1/me)"
                    .into(),
            )
            .into_response();
        }
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}
