//! Security headers on every answer: pages may not be framed (`frame-ancestors 'none'`,
//! `X-Frame-Options: DENY`), run only the server's own scripts (a Content-Security-Policy
//! without inline script), and no answer is content-sniffed (`nosniff`); referrers stay
//! on this origin.

use axum::http::{HeaderName, HeaderValue, header};
use axum::response::Response;

/// The dashboard's policy: scripts, styles, images and connections from this origin
/// only; inline `style` attributes (progress bars, ANSI colours) are allowed, inline
/// scripts and event handlers are not.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; style-src-attr 'unsafe-inline'; img-src 'self' data:; \
     connect-src 'self'; font-src 'self'; manifest-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

/// Adds the headers a handler did not set itself.
pub(crate) async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let defaults: [(HeaderName, &'static str); 4] = [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
    ];
    for (name, value) in defaults {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
    response
}
