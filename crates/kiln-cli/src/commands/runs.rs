//! Builds Kiln runs, from the command line: `kiln build` (trigger), `cancel`, `retry`,
//! `logs [-f]`, `branch add|list|remove`, `queue` and `agents`.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use kiln_protocol::TriggerBuild;

use super::admin::{print_json, show_build};
use crate::settings::ClientArgs;

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Show this build (omit to trigger a new one).
    run_id: Option<String>,
    /// The project to build [default: default].
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
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct RunRef {
    run_id: String,
    #[arg(long, env = "KILN_PROJECT", default_value = "default")]
    project: String,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    run_id: String,
    #[arg(long, env = "KILN_PROJECT", default_value = "default")]
    project: String,
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
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Subcommand, Debug)]
pub enum BranchCommand {
    /// Add a branch (or change it): its priority and whether new commits build by themselves.
    Add {
        name: String,
        #[arg(long, env = "KILN_PROJECT", default_value = "default")]
        project: String,
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
    if let Some(run_id) = &args.run_id {
        return show_build(run_id, args.json, &args.client).await;
    }
    let project = args.project.clone().unwrap_or_else(|| "default".into());
    let request = TriggerBuild {
        branch: args.branch.clone(),
        commit: args.commit.clone(),
        priority: args.priority,
    };
    let build = args
        .client
        .client()?
        .trigger_build(&project, &request)
        .await?;
    if args.json {
        print_json(&build)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{}#{} {} {} @ {} ({})",
        build.project,
        build.number,
        build.status,
        build.branch,
        &build.commit[..12.min(build.commit.len())],
        build.run_id
    );
    if let Some(message) = &build.commit_message {
        println!("  {}", message.lines().next().unwrap_or_default());
    }
    for job in &build.jobs {
        println!("  {:<8} {}", job.state, job.step);
    }
    println!(
        "follow it: kiln logs -f {} --project {}",
        build.run_id, build.project
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn cancel(args: RunRef) -> anyhow::Result<ExitCode> {
    let answer = args
        .client
        .client()?
        .cancel_build(&args.project, &args.run_id)
        .await?;
    println!(
        "cancelled {} ({} running jobs are being stopped)",
        args.run_id, answer["stoppingJobs"]
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn retry(args: RunRef) -> anyhow::Result<ExitCode> {
    let build = args
        .client
        .client()?
        .retry_build(&args.project, &args.run_id)
        .await?;
    println!(
        "{}#{} {} ({})",
        build.project, build.number, build.status, build.run_id
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn logs(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let mut offsets: std::collections::HashMap<i64, i64> = Default::default();
    let mut stdout = std::io::stdout();
    loop {
        let jobs = client
            .build_jobs(&args.project, &args.run_id)
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
        let mut all_ended = true;
        for job in &jobs {
            let offset = offsets.entry(job.id).or_insert(0);
            loop {
                let page = client
                    .job_log(&args.project, &args.run_id, &job.id.to_string(), *offset)
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
            let branch = client
                .client()?
                .add_branch(&project, &name, priority, auto_build)
                .await?;
            println!(
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
    let queue = args.client.client()?.queue().await?;
    if args.json {
        print_json(&queue)?;
        return Ok(ExitCode::SUCCESS);
    }
    for job in queue.jobs {
        println!(
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
    let agents = args.client.client()?.agents().await?;
    if args.json {
        print_json(&agents)?;
        return Ok(ExitCode::SUCCESS);
    }
    for agent in agents.agents {
        let jobs: Vec<String> = agent
            .jobs
            .iter()
            .map(|j| format!("{}:{}", j.run_id, j.step))
            .collect();
        println!(
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
