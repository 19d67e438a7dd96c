//! After a build: `kiln compare A B` (exit 1 unless reproducible), `kiln report RUN`
//! (JSON, or `--markdown`), `kiln rebuild-verify RUN` (`--status` shows the comparison
//! once the rebuild ended), `kiln pin RUN` (`--remove`), and `kiln retention PROJECT`
//! (show, set, run or dry-run a project's artifact retention rule).

use std::process::ExitCode;

use clap::Args;
use kiln_protocol::{ArtifactComparison, SetArtifactRetention};

use super::admin::print_json;
use crate::settings::ClientArgs;

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// The first build's run id.
    a: String,
    /// The second build's run id.
    b: String,
    /// Print the JSON answer.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The build's run id.
    run_id: String,
    /// Print the report as Markdown instead of JSON.
    #[arg(long)]
    markdown: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct RebuildVerifyArgs {
    /// The build's run id.
    run_id: String,
    /// Do not start a rebuild: show the newest one and, once it ended, the comparison
    /// (exit 1 unless reproducible, 3 while it runs or when there is none).
    #[arg(long)]
    status: bool,
    /// Print the JSON answer.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct PinArgs {
    /// The build's run id.
    run_id: String,
    /// Unpin it instead.
    #[arg(long)]
    remove: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct RetentionArgs {
    /// The project's slug.
    project: String,
    /// Set the rule: keep the newest N builds of each branch.
    #[arg(long)]
    keep_builds: Option<u32>,
    /// Set the rule: keep builds that ended within D days.
    #[arg(long)]
    keep_days: Option<u32>,
    /// Set the rule to keep everything.
    #[arg(long, conflicts_with_all = ["keep_builds", "keep_days"])]
    keep_all: bool,
    /// Apply the rule now.
    #[arg(long)]
    run: bool,
    /// Show what applying the rule would delete, deleting nothing.
    #[arg(long, conflicts_with = "run")]
    dry_run: bool,
    #[command(flatten)]
    client: ClientArgs,
}

fn print_comparison(comparison: &ArtifactComparison) {
    for file in &comparison.files {
        let side = |side: &Option<kiln_protocol::ComparedSide>| {
            side.as_ref()
                .map(|s| format!("{} {}", s.size, s.sha256))
                .unwrap_or_else(|| "-".to_owned())
        };
        outln!(
            "{}\t{}\t{}\t{}",
            file.status,
            file.path,
            side(&file.a),
            side(&file.b)
        );
    }
    errln!(
        "{} vs {}: {} ({} identical, {} differ, {} only in {}, {} only in {})",
        comparison.a,
        comparison.b,
        comparison.verdict.replace('_', " "),
        comparison.identical,
        comparison.differs,
        comparison.only_a,
        comparison.a,
        comparison.only_b,
        comparison.b
    );
}

fn verdict_code(comparison: &ArtifactComparison) -> ExitCode {
    if comparison.reproducible {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

pub async fn compare(args: CompareArgs) -> anyhow::Result<ExitCode> {
    let comparison = args
        .client
        .client()
        .await?
        .compare_builds(&args.a, &args.b)
        .await?;
    if args.json {
        print_json(&comparison)?;
    } else {
        print_comparison(&comparison);
    }
    Ok(verdict_code(&comparison))
}

pub async fn report(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client().await?;
    if args.markdown {
        outln!(
            "{}",
            client.build_report_markdown(&args.run_id).await?.trim_end()
        );
    } else {
        print_json(&client.build_report(&args.run_id).await?)?;
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn rebuild_verify(args: RebuildVerifyArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client().await?;
    let answer = if args.status {
        client.verification(&args.run_id).await?
    } else {
        client.rebuild_to_verify(&args.run_id).await?
    };
    if args.json {
        print_json(&answer)?;
    }
    let Some(rebuild) = &answer.rebuild_run_id else {
        errln!(
            "{} was never rebuilt to verify it; `kiln rebuild-verify {}` does",
            answer.run_id,
            answer.run_id
        );
        return Ok(ExitCode::from(3));
    };
    match &answer.comparison {
        Some(comparison) => {
            if !args.json {
                print_comparison(comparison);
            }
            Ok(verdict_code(comparison))
        }
        None => {
            errln!(
                "rebuild {rebuild} is {}; `kiln rebuild-verify {} --status` compares once it ended",
                answer.rebuild_status.as_deref().unwrap_or("queued"),
                answer.run_id
            );
            Ok(ExitCode::from(if args.status { 3 } else { 0 }))
        }
    }
}

pub async fn pin(args: PinArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client().await?;
    let pin = if args.remove {
        client.unpin_build(&args.run_id).await?
    } else {
        client.pin_build(&args.run_id).await?
    };
    errln!(
        "{} is {}",
        pin.run_id,
        if pin.pinned {
            "pinned: retention keeps its artifacts"
        } else {
            "not pinned"
        }
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn retention(args: RetentionArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client().await?;
    if args.keep_all || args.keep_builds.is_some() || args.keep_days.is_some() {
        let rule = SetArtifactRetention {
            keep_builds: args.keep_builds,
            keep_days: args.keep_days,
        };
        print_json(&client.set_artifact_retention(&args.project, &rule).await?)?;
    } else if !args.run && !args.dry_run {
        print_json(&client.artifact_retention(&args.project).await?)?;
    }
    if args.run || args.dry_run {
        let run = client
            .run_artifact_retention(&args.project, args.dry_run)
            .await?;
        for build in &run.builds {
            outln!(
                "{}\t#{}\t{}\t{} files\t{} bytes",
                build.run_id,
                build.number,
                build.branch.as_deref().unwrap_or("-"),
                build.files,
                build.bytes
            );
        }
        errln!(
            "{} {} builds' artifacts: {} files, {} blobs, {} bytes freed{}",
            if run.dry_run {
                "would delete"
            } else {
                "deleted"
            },
            run.builds.len(),
            run.files,
            run.blobs,
            run.bytes_freed,
            if run.remaining > 0 {
                format!(" ({} more builds at the next run)", run.remaining)
            } else {
                String::new()
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
