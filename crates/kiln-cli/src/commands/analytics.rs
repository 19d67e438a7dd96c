//! `kiln analytics` (a project's build statistics over a range of days) and `kiln
//! predict` (what a build of a pipeline is expected to take).

use std::process::ExitCode;

use clap::Args;
use kiln_client::protocol::{PredictionDto, QuantilesDto};
use kiln_core::eta::format_duration;

use super::admin::print_json;
use crate::settings::{ClientArgs, project_of_token};

#[derive(Args, Debug)]
pub struct AnalyticsArgs {
    /// The project (default: the token's only project).
    #[arg(long)]
    project: Option<String>,
    /// Start of the range: a date (2026-11-01) or an RFC 3339 time (default: 30 days
    /// before --to).
    #[arg(long)]
    from: Option<String>,
    /// End of the range, exclusive (default: now).
    #[arg(long)]
    to: Option<String>,
    /// Only this branch.
    #[arg(long)]
    branch: Option<String>,
    /// Only builds of this command (what `kiln run` reported).
    #[arg(long)]
    pipeline: Option<String>,
    /// Print the JSON answer.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// The project (default: the token's only project).
    #[arg(long)]
    project: Option<String>,
    /// The branch (default: the project's default branch).
    #[arg(long)]
    branch: Option<String>,
    /// Only builds of this command (what `kiln run` reported).
    #[arg(long)]
    pipeline: Option<String>,
    /// When the build would start (RFC 3339; default now): builds started near the same
    /// hour of the day weigh more.
    #[arg(long)]
    at: Option<String>,
    /// Print the JSON answer.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

fn duration(ms: Option<i64>) -> String {
    ms.map_or_else(|| "-".to_owned(), format_duration)
}

fn percent(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".to_owned(), |rate| format!("{:.1}%", rate * 100.0))
}

fn quantiles(q: &QuantilesDto) -> String {
    format!(
        "p50 {}  p90 {}  p95 {}  ({} builds)",
        duration(q.p50_ms),
        duration(q.p90_ms),
        duration(q.p95_ms),
        q.count
    )
}

pub async fn analytics(args: AnalyticsArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client().await?;
    let project = project_of_token(&client, args.project.as_deref()).await?;
    let a = client
        .analytics(
            &project,
            args.from.as_deref(),
            args.to.as_deref(),
            args.branch.as_deref(),
            args.pipeline.as_deref(),
        )
        .await?;
    if args.json {
        print_json(&a)?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!("{} from {} to {}", a.project, a.from, a.to);
    outln!(
        "builds: {} ({} succeeded, {} failed, {} cancelled, {} unfinished); success rate {}",
        a.builds,
        a.succeeded,
        a.failed,
        a.cancelled,
        a.unfinished,
        percent(a.success_rate)
    );
    outln!("duration: {}", quantiles(&a.duration));
    if let Some(trend) = a.duration_trend {
        outln!(
            "trend: the second half's p50 is {:+.1}% against the first half's",
            trend * 100.0
        );
    }
    outln!("queue wait: {}", quantiles(&a.queue_wait));
    outln!(
        "time to recovery: mean {}, median {} ({} incidents)",
        duration(a.mttr.mean_ms),
        duration(a.mttr.median_ms),
        a.mttr.incidents
    );
    if !a.stages.is_empty() {
        outln!("STAGE\tRUNS\tFAILURE RATE\tP50\tP95");
        for stage in &a.stages {
            outln!(
                "{}\t{}\t{}\t{}\t{}",
                stage.name,
                stage.runs,
                percent(stage.failure_rate),
                duration(stage.duration.p50_ms),
                duration(stage.duration.p95_ms)
            );
        }
    }
    outln!("DAY\tBUILDS\tSUCCESS RATE\tP50");
    for day in &a.days {
        outln!(
            "{}\t{}\t{}\t{}",
            day.date,
            day.builds,
            percent(day.success_rate),
            duration(day.duration.p50_ms)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn interval(prediction: &PredictionDto) -> String {
    format!(
        "{} (80% between {} and {}; from {} builds)",
        format_duration(prediction.expected_ms),
        format_duration(prediction.low_ms),
        format_duration(prediction.high_ms),
        prediction.samples
    )
}

pub async fn predict(args: PredictArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client().await?;
    let project = project_of_token(&client, args.project.as_deref()).await?;
    let p = client
        .prediction(
            &project,
            args.branch.as_deref(),
            args.pipeline.as_deref(),
            args.at.as_deref(),
        )
        .await?;
    if args.json {
        print_json(&p)?;
        return Ok(ExitCode::SUCCESS);
    }
    let branch = p.branch.as_deref().unwrap_or("-");
    let Some(build) = &p.build else {
        outln!(
            "no successful build of {project} on {branch} to learn from yet; predictions start after the first"
        );
        return Ok(ExitCode::SUCCESS);
    };
    outln!(
        "{project} on {branch}, starting {}: {}",
        p.at,
        interval(build)
    );
    for stage in &p.stages {
        outln!("  {}: {}", stage.name, interval(&stage.prediction));
    }
    match p.accuracy {
        Some(accuracy) => outln!(
            "accuracy on the history: median error {:.1}% over {} replayed builds",
            accuracy.median_ape * 100.0,
            accuracy.replayed
        ),
        None => outln!("accuracy: not enough history to replay yet"),
    }
    Ok(ExitCode::SUCCESS)
}
