//! A project's public status, for anyone without a session: the page
//! (`/status/{slug}`) and the badges (`/badge/{slug}/{branch}.svg`). Both answer 404,
//! identically, for a project that does not exist and one whose admins did not publish
//! it. Both are cacheable: `Cache-Control: public` with a short max-age, and an `ETag`
//! (a hash of the body) that turns a repeated request into a 304.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use kiln_core::eta::format_duration;
use kiln_core::public_status::{BadgeState, badge_svg, percent};
use sha2::{Digest, Sha256};

use super::ASSET_VERSION;
use super::when::When;
use crate::AppState;
use crate::error::ApiError;
use crate::services::public_status::{self, BranchStatus, TrendPoint};

/// Seconds browsers and proxies (GitHub's image proxy) may reuse an answer.
const MAX_AGE_SECS: u32 = 60;

/// An answer with its `ETag`, or 304 when the request already holds it.
fn cacheable(request: &HeaderMap, content_type: &'static str, body: String) -> Response {
    let etag = format!(
        "\"{}\"",
        &hex::encode(Sha256::digest(body.as_bytes()))[..24]
    );
    let cache_control = format!("public, max-age={MAX_AGE_SECS}");
    let matches = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == etag
        });
    let headers = [(header::ETAG, etag), (header::CACHE_CONTROL, cache_control)];
    if matches {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    let mut response = (headers, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A refusal that may change at once (the project gets published): never cached.
fn uncached(error: ApiError) -> Response {
    let mut response = super::PageError(error).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /badge/{slug}/{branch}.svg` (the branch may hold slashes).
pub(crate) async fn badge(
    State(state): State<AppState>,
    Path((slug, file)): Path<(String, String)>,
    request: HeaderMap,
) -> Response {
    let Some(branch) = file
        .strip_suffix(".svg")
        .filter(|branch| !branch.is_empty())
    else {
        return uncached(ApiError::NotFound(
            "badges are at /badge/{project}/{branch}.svg".into(),
        ));
    };
    match public_status::badge(&state, &slug, branch).await {
        Ok(badge_state) => cacheable(
            &request,
            "image/svg+xml; charset=utf-8",
            badge_svg("build", badge_state),
        ),
        Err(error) => uncached(error.into()),
    }
}

/// A branch as the page's table shows it.
#[derive(Debug)]
struct BranchRow {
    branch: String,
    state: &'static str,
    class: &'static str,
    number: i64,
    commit: String,
    started: When,
    duration: String,
    badge_path: String,
}

/// A bar of the duration trend.
#[derive(Debug)]
struct Bar {
    number: i64,
    duration: String,
    x: usize,
    y: i64,
    height: i64,
}

#[derive(Template)]
#[template(path = "public_status.html")]
struct PublicPage {
    name: String,
    slug: String,
    branches: Vec<BranchRow>,
    success_rate: String,
    bars: Vec<Bar>,
    chart_width: usize,
    longest: String,
    asset_version: &'static str,
}

const CHART_HEIGHT: i64 = 80;
const BAR_STEP: usize = 12;

fn branch_row(branch: BranchStatus, now: kiln_core::Millis) -> BranchRow {
    let class = match branch.badge {
        BadgeState::Passing => "success",
        BadgeState::Failing => "failed",
        BadgeState::Running => "running",
        BadgeState::Cancelled | BadgeState::Unknown => "cancelled",
    };
    BranchRow {
        branch: branch.branch,
        state: branch.badge.message(),
        class,
        number: branch.number,
        commit: branch
            .commit
            .map(|commit| commit.chars().take(10).collect())
            .unwrap_or_default(),
        started: When::new(branch.started_at, now),
        duration: branch.duration_ms.map(format_duration).unwrap_or_default(),
        badge_path: branch.badge_path,
    }
}

/// Bars scaled to the longest duration, oldest on the left.
fn bars(trend: &[TrendPoint]) -> Vec<Bar> {
    let longest = trend
        .iter()
        .map(|point| point.duration_ms)
        .max()
        .unwrap_or(0)
        .max(1);
    trend
        .iter()
        .enumerate()
        .map(|(index, point)| {
            let height = (point.duration_ms * CHART_HEIGHT / longest).max(1);
            Bar {
                number: point.number,
                duration: format_duration(point.duration_ms),
                x: index * BAR_STEP,
                y: CHART_HEIGHT - height,
                height,
            }
        })
        .collect()
}

/// `GET /status/{slug}`.
pub(crate) async fn page(
    State(state): State<AppState>,
    Path(slug): Path<String>,
    request: HeaderMap,
) -> Response {
    let status = match public_status::page(&state, &slug).await {
        Ok(status) => status,
        Err(error) => return uncached(error.into()),
    };
    let now = state.clock.now();
    let success_rate = match percent(status.successes, status.counted) {
        Some(rate) if status.counted == 1 => format!("{rate}% of the last ended build passed"),
        Some(rate) => format!("{rate}% of the last {} ended builds passed", status.counted),
        None => "no ended builds yet".into(),
    };
    let longest = status
        .trend
        .iter()
        .map(|point| point.duration_ms)
        .max()
        .map(format_duration)
        .unwrap_or_default();
    let page = PublicPage {
        name: status.name,
        slug: status.slug,
        branches: status
            .branches
            .into_iter()
            .map(|branch| branch_row(branch, now))
            .collect(),
        success_rate,
        chart_width: status.trend.len().max(1) * BAR_STEP,
        bars: bars(&status.trend),
        longest,
        asset_version: ASSET_VERSION,
    };
    match page.render() {
        Ok(html) => cacheable(&request, "text/html; charset=utf-8", Html(html).0),
        Err(error) => {
            tracing::error!(%error, "the public status template failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered; see the server log",
            )
                .into_response()
        }
    }
}
