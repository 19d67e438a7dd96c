//! Builds Kiln runs, from the command line: `kiln trigger` (and `kiln build` without a
//! run id), `cancel`, `retry`, `logs [-f]`, `branch add`, `queue` and `agents`. Commands
//! about one build take its project from the build; the others from the token.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use kiln_protocol::TriggerBuild;

use super::admin::{print_json, show_build};
use crate::settings::{ClientArgs, project_of_run, project_of_token};

#[derive(Args, Debug)]
pub struct TriggerArgs {
    /// The project to build [default: the token's project if it has one, else default].
    #[arg(long, env = "KILN_PROJECT")]
    project: Option<String>,
    /// The branch (default: the project's default branch).
    #[arg(long)]
    branch: Option<String>,
    /// An exact commit (40 hex digits) instead of the branch's tip.
    #[arg(long)]
    commit: Option<String>,
    /// 1 (highest) to 10.
    #[arg(long)]
    priority: Option<i64>,
    /// Follow the build until it ends, as `kiln watch` does, and exit with its result: 0
    /// if it succeeded, 1 if it failed, was cancelled or went stale.
    #[arg(long, conflicts_with = "json")]
    wait: bool,
    /// Print the build as JSON instead of lines.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Show this build (omit to trigger a new one, as `kiln trigger` does).
    run_id: Option<String>,
    #[command(flatten)]
    trigger: TriggerArgs,
}

#[derive(Args, Debug)]
pub struct RunRef {
    /// The build's run id.
    run_id: String,
    /// The build's project [default: the build's own, asked of the server].
    #[arg(long, env = "KILN_PROJECT")]
    project: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// The build's run id.
    run_id: String,
    /// The build's project [default: the build's own, asked of the server].
    #[arg(long, env = "KILN_PROJECT")]
    project: Option<String>,
    /// Only this job (step name or job id).
    #[arg(long)]
    job: Option<String>,
    /// Keep printing as the jobs write, until they end.
    #[arg(short, long)]
    follow: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Subcommand, Debug)]
pub enum BranchCommand {
    /// Add a branch (or change it): its priority and whether new commits build by themselves.
    Add {
        /// The branch's name.
        name: String,
        /// The project [default: the token's project if it has one, else default].
        #[arg(long, env = "KILN_PROJECT")]
        project: Option<String>,
        /// 1 (highest) to 10.
        #[arg(long)]
        priority: Option<i64>,
        /// Queue a build for each new commit (the server polls with `git ls-remote`).
        #[arg(long)]
        auto_build: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub async fn build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let Some(run_id) = &args.run_id else {
        return trigger(args.trigger).await;
    };
    let trigger_flags = &args.trigger;
    if trigger_flags.branch.is_some()
        || trigger_flags.commit.is_some()
        || trigger_flags.priority.is_some()
    {
        anyhow::bail!(
            "--branch, --commit and --priority start a new build: use `kiln trigger` (kiln build {run_id} shows an existing build)"
        );
    }
    if args.trigger.wait {
        let client = args.trigger.client.client().await?;
        return super::watch::follow_build(&client, run_id, None).await;
    }
    show_build(run_id, args.trigger.json, &args.trigger.client).await
}

/// `kiln trigger` (and `kiln build` without a run id): queues a build of the project's
/// repository. A build that ended at once (no pipeline, an invalid one, a repository that
/// cannot be fetched) is reported with its reason and exit code 1.
pub async fn trigger(args: TriggerArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client().await?;
    let project = project_of_token(&client, args.project.as_deref()).await?;
    let request = TriggerBuild {
        branch: args.branch.clone(),
        commit: args.commit.clone(),
        priority: args.priority,
    };
    let build = client
        .trigger_build(&project, &request)
        .await
        .map_err(|error| match error.status() {
            Some(404) => anyhow::anyhow!(
                "{error}: pass --project NAME (or set KILN_PROJECT) with a project this token may build"
            ),
            _ => error.into(),
        })?;
    let ended = matches!(build.status.as_str(), "failed" | "cancelled" | "stale");
    if args.json {
        print_json(&build)?;
        return Ok(if ended {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        });
    }
    outln!(
        "{}#{} {} {} @ {} ({})",
        build.project,
        build.number,
        build.status,
        build.branch,
        &build.commit[..12.min(build.commit.len())],
        build.run_id
    );
    if let Some(message) = &build.commit_message {
        outln!("  {}", message.lines().next().unwrap_or_default());
    }
    for job in &build.jobs {
        outln!("  {:<8} {}", job.state, job.step);
    }
    if ended {
        let reason = client
            .get_build(&build.run_id)
            .await
            .ok()
            .and_then(|shown| shown.message)
            .unwrap_or_else(|| "no reason was recorded".into());
        outln!("build {} before its steps ran: {reason}", build.status);
        if build.jobs.iter().any(|job| job.log_size > 0) {
            outln!("its log: kiln logs {}", build.run_id);
        }
        return Ok(ExitCode::FAILURE);
    }
    if args.wait {
        return super::watch::follow_build(&client, &build.run_id, None).await;
    }
    outln!(
        "follow it: kiln watch {} (or kiln logs -f {} for the steps' output)",
        build.run_id,
        build.run_id
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn cancel(args: RunRef) -> anyhow::Result<ExitCode> {
    let client = args.client.client().await?;
    let project = project_of_run(&client, args.project.as_deref(), &args.run_id).await?;
    let answer = client.cancel_build(&project, &args.run_id).await?;
    outln!(
        "cancelled {} ({} running jobs are being stopped)",
        args.run_id,
        answer.stopping_jobs
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn retry(args: RunRef) -> anyhow::Result<ExitCode> {
    let client = args.client.client().await?;
    let project = project_of_run(&client, args.project.as_deref(), &args.run_id).await?;
    let build = client.retry_build(&project, &args.run_id).await?;
    outln!(
        "{}#{} {} ({})",
        build.project,
        build.number,
        build.status,
        build.run_id
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn logs(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client().await?;
    let project = project_of_run(&client, args.project.as_deref(), &args.run_id).await?;
    let mut offsets: std::collections::HashMap<i64, i64> = Default::default();
    let mut stdout = std::io::stdout();
    loop {
        let jobs = client
            .build_jobs(&project, &args.run_id)
            .await
            .context("cannot list the build's jobs")?
            .jobs;
        let jobs: Vec<_> = jobs
            .into_iter()
            .filter(|job| {
                args.job
                    .as_ref()
                    .is_none_or(|j| *j == job.step || *j == job.id.to_string())
            })
            .collect();
        if jobs.is_empty() && args.job.is_none() {
            // A build that reported itself without a log (`kiln emit`, `kiln run --no-log`).
            errln!(
                "kiln: build {} has no log: it reported itself without one (`kiln emit`, `kiln run --no-log`) or ended before any step; `kiln build {}` shows it, `kiln events {}` its events",
                args.run_id,
                args.run_id,
                args.run_id
            );
            return Ok(ExitCode::SUCCESS);
        }
        let mut all_ended = true;
        for job in &jobs {
            let offset = offsets.entry(job.id).or_insert(0);
            loop {
                let page = client
                    .job_log(&project, &args.run_id, &job.id.to_string(), *offset)
                    .await?;
                if page.bytes.is_empty() {
                    if !matches!(
                        page.job_state.as_str(),
                        "passed" | "failed" | "cancelled" | "skipped"
                    ) {
                        all_ended = false;
                    }
                    break;
                }
                if *offset == 0 && jobs.len() > 1 {
                    writeln!(stdout, "--- {} ---", job.step)?;
                }
                stdout.write_all(&page.bytes)?;
                *offset = page.next_offset;
            }
        }
        stdout.flush()?;
        if !args.follow || (all_ended && !jobs.is_empty()) {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub async fn branch(command: BranchCommand) -> anyhow::Result<ExitCode> {
    match command {
        BranchCommand::Add {
            name,
            project,
            priority,
            auto_build,
            client,
        } => {
            let client = client.client().await?;
            let project = project_of_token(&client, project.as_deref()).await?;
            let branch = client
                .add_branch(&project, &name, priority, auto_build)
                .await?;
            outln!(
                "branch {} of {project}: priority {}, auto-build {}",
                branch.name,
                branch
                    .priority
                    .map_or_else(|| "default".into(), |p| p.to_string()),
                if branch.auto_build { "on" } else { "off" }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn queue(args: ListArgs) -> anyhow::Result<ExitCode> {
    let queue = args.client.client().await?.queue().await?;
    if args.json {
        print_json(&queue)?;
        return Ok(ExitCode::SUCCESS);
    }
    if queue.jobs.is_empty() {
        outln!("no jobs waiting (and none running)");
        return Ok(ExitCode::SUCCESS);
    }
    outln!("PROJECT\tRUN ID\tPRIORITY\tSTEP\tSTATE\tWAITING FOR / AGENT");
    for job in queue.jobs {
        outln!(
            "{}\t{}\tp{}\t{}\t{}\t{}",
            job.project,
            job.run_id,
            job.priority,
            job.step,
            job.state,
            job.waiting_for.or(job.agent).unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn agents(args: ListArgs) -> anyhow::Result<ExitCode> {
    let agents = args.client.client().await?.agents().await?;
    if args.json {
        print_json(&agents)?;
        return Ok(ExitCode::SUCCESS);
    }
    if agents.agents.is_empty() {
        outln!("no agents registered (start one: kiln agent --help)");
        return Ok(ExitCode::SUCCESS);
    }
    outln!("NAME\tHEALTH\tEXECUTOR\tLABELS\tJOBS\tRUNNING");
    for agent in agents.agents {
        let jobs: Vec<String> = agent
            .jobs
            .iter()
            .map(|j| format!("{}:{}", j.run_id, j.step))
            .collect();
        outln!(
            "{}\t{}\t{}\t[{}]\t{} jobs of {}\t{}",
            agent.name,
            agent.health,
            agent.executor,
            agent.labels.join(","),
            agent.jobs.len(),
            agent.concurrency,
            jobs.join(" ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
