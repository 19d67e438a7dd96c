//! `kiln test-report FILE…` (upload JUnit XML reports for the current build),
//! `kiln tests RUN_ID` (a build's test results) and `kiln flaky` (a project's flaky tests).

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use kiln_core::eta::format_duration;

use super::admin::print_json;
use crate::settings::{ClientArgs, project_of_token};

#[derive(Args, Debug)]
pub struct TestReportArgs {
    /// JUnit XML files (jest-junit, pytest --junitxml, cargo nextest, Surefire, …).
    #[arg(required = true)]
    files: Vec<std::path::PathBuf>,
    /// The build (inside `kiln run`, its run id is inherited).
    #[arg(long, env = "KILN_RUN_ID")]
    run_id: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct TestsArgs {
    /// The build's run id.
    run_id: String,
    /// Every test, not only failures.
    #[arg(long)]
    all: bool,
    /// Print the JSON answer.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct FlakyArgs {
    /// The project (default: the token's only project).
    #[arg(long)]
    project: Option<String>,
    /// How many days back to look (1-366).
    #[arg(long, default_value_t = 30)]
    days: i64,
    /// Print the JSON answer.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn test_report(args: TestReportArgs) -> anyhow::Result<ExitCode> {
    let run_id = args.run_id.clone().context(
        "no run id: pass --run-id, set KILN_RUN_ID, or call kiln test-report inside `kiln run`",
    )?;
    let client = args.client.client().await?;
    let mut failed = false;
    for file in &args.files {
        let xml = match std::fs::read(file) {
            Ok(xml) => xml,
            Err(error) => {
                errln!("{}: cannot read it ({error})", file.display());
                failed = true;
                continue;
            }
        };
        match client.upload_test_report(&run_id, xml).await {
            Ok(stored) => {
                let s = stored.stored;
                errln!(
                    "{}: {} tests ({} passed, {} failed, {} errors, {} skipped) stored for {run_id}",
                    file.display(),
                    s.total,
                    s.passed,
                    s.failed,
                    s.errors,
                    s.skipped
                );
            }
            Err(error) => {
                errln!("{}: {error}", file.display());
                failed = true;
            }
        }
    }
    if failed {
        bail!("some reports were not stored (see above)");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn tests(args: TestsArgs) -> anyhow::Result<ExitCode> {
    let answer = args
        .client
        .client()
        .await?
        .build_tests(&args.run_id)
        .await?;
    if args.json {
        print_json(&answer)?;
        return Ok(ExitCode::SUCCESS);
    }
    let s = answer.summary;
    outln!(
        "{}: {} tests, {} passed, {} failed, {} errors, {} skipped ({})",
        answer.run_id,
        s.total,
        s.passed,
        s.failed,
        s.errors,
        s.skipped,
        format_duration(s.duration_ms)
    );
    for test in &answer.tests {
        if !args.all && test.status != "failed" && test.status != "error" {
            continue;
        }
        outln!("{}\t{}", test.status.to_uppercase(), test.key);
        if let Some(message) = &test.message {
            for line in message.lines().take(5) {
                outln!("    {line}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn flaky(args: FlakyArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client().await?;
    let project = project_of_token(&client, args.project.as_deref()).await?;
    let answer = client.flaky_tests(&project, args.days).await?;
    if args.json {
        print_json(&answer)?;
        return Ok(ExitCode::SUCCESS);
    }
    if answer.flaky.is_empty() {
        outln!(
            "no flaky test in {project} over the last {} days",
            answer.days
        );
        return Ok(ExitCode::SUCCESS);
    }
    outln!("TEST\tFLIPS\tSAME-COMMIT\tFAILED/RUNS\tFIRST SEEN");
    for test in &answer.flaky {
        outln!(
            "{}\t{}\t{}\t{}/{}\t{}",
            test.key,
            test.flips,
            test.same_commit_conflicts,
            test.failures,
            test.runs,
            test.first_seen
        );
    }
    Ok(ExitCode::SUCCESS)
}
