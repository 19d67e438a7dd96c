//! The dashboard's static files, embedded in the binary and served with a long cache
//! life under a versioned URL (`/assets/kiln.css?v=ASSET_VERSION`).

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Changes whenever an asset changes, so browsers fetch the new one.
pub(crate) const ASSET_VERSION: &str = env!("KILN_ASSET_VERSION");

const ASSETS: &[(&str, &str, &str)] = &[
    (
        "kiln.css",
        "text/css; charset=utf-8",
        include_str!("../../assets/kiln.css"),
    ),
    (
        "kiln.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/kiln.js"),
    ),
    (
        "admin.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/admin.js"),
    ),
    (
        "build.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/build.js"),
    ),
    (
        "build.css",
        "text/css; charset=utf-8",
        include_str!("../../assets/build.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("../../assets/favicon.svg"),
    ),
];

/// `GET /assets/{name}`.
pub(crate) async fn serve(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(file, _, _)| *file == name) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}
