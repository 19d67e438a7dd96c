//! `/projects/{slug}/analytics`: a project's builds over a range of days — summary
//! figures, the duration trend (p50 within p95), success rate per day, stages, busiest
//! hours — drawn server-side as SVG (`charts.rs`), each chart with its table.

use askama::Template;
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::Uri;
use kiln_core::eta::format_duration;
use kiln_protocol::ProjectAnalytics;

use super::charts::{self, Frame};
use super::view::metric_value as number;
use crate::AppState;
use crate::auth::Caller;
use crate::params::QueryParams;
use crate::services::analytics::{AnalyticsQuery, project_analytics};
use crate::services::projects::readable_project;
use crate::web::{Chrome, PageResult, render};

#[derive(Template)]
#[template(path = "analytics.html")]
struct AnalyticsPage {
    chrome: Chrome,
    a: ProjectAnalytics,
    /// The form's values, as given (empty when defaulted).
    from: String,
    to: String,
    branch: String,
    pipeline: String,
    duration_chart: String,
    rate_chart: String,
    hours_chart: String,
    /// The six most reported custom metrics with their charts.
    metric_charts: Vec<MetricView>,
}

struct MetricView {
    name: String,
    chart: String,
    /// (day, median as read) for the table behind the chart.
    rows: Vec<(String, String)>,
}

fn duration(ms: &Option<i64>) -> String {
    ms.map_or_else(|| "–".to_owned(), format_duration)
}

fn percent(rate: &Option<f64>) -> String {
    rate.map_or_else(|| "–".to_owned(), |rate| format!("{:.0}%", rate * 100.0))
}

fn trend(trend: &Option<f64>) -> String {
    match trend {
        None => "–".to_owned(),
        Some(t) if t.abs() < 0.005 => "steady".to_owned(),
        Some(t) if *t > 0.0 => format!("{:.0}% slower", t * 100.0),
        Some(t) => format!("{:.0}% faster", -t * 100.0),
    }
}

/// `GET /projects/{slug}/analytics?from=&to=&branch=&pipeline=`.
pub(crate) async fn page(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(slug): Path<String>,
    uri: Uri,
) -> PageResult {
    let project = readable_project(&state, &caller, &slug).await?;
    let params = QueryParams::from_uri(uri.query());
    let query = AnalyticsQuery {
        from: params.instant("from")?,
        to: params.instant("to")?,
        branch: params.string("branch").map(str::to_owned),
        pipeline: params.string("pipeline").map(str::to_owned),
    };
    let (_, a) = project_analytics(&state, &project, query).await?;
    let chrome = Chrome::load(
        &state,
        &caller,
        "projects",
        format!("Analytics of {}", project.slug),
    )
    .await?;
    let labels: Vec<String> = a.days.iter().map(|d| d.date[5..].to_owned()).collect();
    let seconds = |ms: f64| format_duration(ms as i64);
    let duration_chart = charts::band(
        &Frame {
            id: "duration-chart",
            title: "Build duration per day",
            description: "The median (p50) duration of each day's successful builds, drawn as a line inside a band up to the 95th percentile; the table below has the numbers.",
            labels: &labels,
            format: &seconds,
            floor: 60_000.0,
        },
        &a.days
            .iter()
            .map(|d| d.duration.p50_ms.map(|v| v as f64))
            .collect::<Vec<_>>(),
        &a.days
            .iter()
            .map(|d| d.duration.p95_ms.map(|v| v as f64))
            .collect::<Vec<_>>(),
    );
    let rate_chart = charts::bars(
        &Frame {
            id: "rate-chart",
            title: "Success rate per day",
            description: "The share of each day's finished builds that succeeded (cancelled builds left out); days without a finished build have no bar.",
            labels: &labels,
            format: &|v| format!("{:.0}%", v * 100.0),
            floor: 1.0,
        },
        &a.days.iter().map(|d| d.success_rate).collect::<Vec<_>>(),
        Some(1.0),
    );
    let hour_labels: Vec<String> = (0..24).map(|h| format!("{h:02}h")).collect();
    let hours_chart = charts::bars(
        &Frame {
            id: "hours-chart",
            title: "Builds started per hour of the day (UTC)",
            description: "How many builds of the range started in each hour of the day, UTC.",
            labels: &hour_labels,
            format: &|v| format!("{v:.0}"),
            floor: 2.0,
        },
        &a.busiest_hours
            .iter()
            .map(|h| Some(h.builds as f64))
            .collect::<Vec<_>>(),
        None,
    );
    let metric_charts = a
        .metrics
        .iter()
        .take(6)
        .enumerate()
        .map(|(index, trend)| {
            let id = format!("metric-chart-{index}");
            let title = format!("{} per day (median)", trend.name);
            let chart = charts::band(
                &Frame {
                    id: &id,
                    title: &title,
                    description: "The median value of the custom metric among each day's builds that reported it; the table below has the numbers.",
                    labels: &labels,
                    format: &|v| number(&v),
                    floor: 1.0,
                },
                &trend.days,
                &trend.days,
            );
            MetricView {
                name: trend.name.clone(),
                chart,
                rows: a
                    .days
                    .iter()
                    .zip(&trend.days)
                    .map(|(day, value)| {
                        (
                            day.date.clone(),
                            value.as_ref().map_or_else(|| "–".to_owned(), number),
                        )
                    })
                    .collect(),
            }
        })
        .collect();
    let given = |key: &str| params.string(key).unwrap_or_default().to_owned();
    Ok(render(&AnalyticsPage {
        chrome,
        from: given("from"),
        to: given("to"),
        branch: given("branch"),
        pipeline: given("pipeline"),
        a,
        duration_chart,
        rate_chart,
        hours_chart,
        metric_charts,
    }))
}
