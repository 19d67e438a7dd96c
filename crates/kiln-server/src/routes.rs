//! The route table and its guard: every route of the JSON API (`api::route_list`) and
//! the dashboard (`web::route_list`) with the access it requires — the single source for
//! the router, the docs and the authorization tests — and the middleware that
//! authenticates each request, checks its access, and opens one tracing span per
//! request (method, route, caller kind, status).

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use tracing::Instrument;

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
    routes.extend(crate::api::route_list());
    routes
}

/// The route table, for documentation and tests.
pub fn route_table() -> Vec<RouteRule> {
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
    let (socket_layer, socket_io) = crate::api::socketio_layer(&state);
    let mut router = Router::new();
    for (_, path, access, method_router) in route_list() {
        let guarded = method_router.route_layer(middleware::from_fn_with_state(
            (state.clone(), access, path),
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
        .layer(middleware::map_response(crate::api::security_headers));
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

/// One span per request (method, route template, caller kind, status), then the
/// access check.
async fn guard(
    State((state, access, route)): State<(AppState, Access, &'static str)>,
    request: Request,
    next: Next,
) -> Response {
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        route,
        caller = tracing::field::Empty,
        status = tracing::field::Empty,
    );
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let metrics = state.metrics.clone();
    let response = check_access(state, access, request, next, &span)
        .instrument(span.clone())
        .await;
    let status = response.status().as_u16();
    metrics.http_request(&method, route, status, started.elapsed().as_secs_f64());
    span.record("status", status);
    tracing::debug!(parent: &span, status, "answered");
    response
}

/// `GET /metrics`: the scrape token when one is set (compared as SHA-256 digests, so
/// the comparison takes the same time wherever a wrong token differs), otherwise a
/// client on a loopback address — the client behind a trusted proxy, so a proxy on
/// the same host does not make every client local.
fn check_scrape(state: &AppState, request: &Request) -> Result<(), ApiError> {
    match &state.config.metrics_token {
        Some(expected) => {
            let presented = request
                .headers()
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| {
                    value
                        .strip_prefix("Bearer ")
                        .or_else(|| value.strip_prefix("bearer "))
                })
                .map(str::trim);
            let digest = |token: &str| kiln_core::token::hash_token(token);
            match presented {
                Some(token) if digest(token) == digest(expected.expose()) => Ok(()),
                Some(_) => Err(ApiError::Unauthorized(
                    "wrong scrape token: send the --metrics-token (KILN_METRICS_TOKEN) as `Authorization: Bearer <token>`".into(),
                )),
                None => Err(ApiError::Unauthorized(
                    "/metrics needs the scrape token: send the --metrics-token (KILN_METRICS_TOKEN) as `Authorization: Bearer <token>`".into(),
                )),
            }
        }
        None => {
            let client = request
                .extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|info| info.0.ip());
            if client.is_some_and(|ip| ip.is_loopback() || ip.to_canonical().is_loopback()) {
                Ok(())
            } else {
                Err(ApiError::Forbidden(
                    "/metrics answers only clients on this host while no scrape token is set: start the server with --metrics-token (KILN_METRICS_TOKEN) and send it as a bearer token".into(),
                ))
            }
        }
    }
}

async fn check_access(
    state: AppState,
    access: Access,
    mut request: Request,
    next: Next,
    span: &tracing::Span,
) -> Response {
    if access == Access::Public {
        span.record("caller", "anonymous");
        return next.run(request).await;
    }
    if access == Access::Scrape {
        span.record("caller", "scraper");
        if let Err(error) = check_scrape(&state, &request) {
            return error.into_response();
        }
        return next.run(request).await;
    }
    let authenticated = state.authenticator.authenticate(request.headers()).await;
    if authenticated.is_err() {
        span.record("caller", "unauthenticated");
    }
    let caller = match authenticated {
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
    span.record("caller", caller.kind_name());
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
