//! Deployments from the command line: `kiln deploy ENV` (build the branch's tip and
//! deploy it, `--wait` follows it), `kiln rollback ENV --to RUN_ID` (a site switched at
//! once; a script deployment's step run again in a build of its own) and
//! `kiln deployments [ENV]` (the environments and the history).

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use kiln_protocol::{DeployRequest, DeploymentDto};

use super::admin::print_json;
use crate::settings::{ClientArgs, project_of_token};

#[derive(Args, Debug)]
pub struct DeployArgs {
    /// The environment (a step of the pipeline deploys to it: `deploy: {environment: …}`).
    environment: String,
    /// The branch whose tip is built and deployed [default: the project's default branch].
    #[arg(long)]
    branch: Option<String>,
    /// The project [default: the token's project if it has one, else default].
    #[arg(long, env = "KILN_PROJECT")]
    project: Option<String>,
    /// Wait until the deployment ends; exit 0 only if it was deployed.
    #[arg(long, conflicts_with = "json")]
    wait: bool,
    /// Print the build and its deployment as JSON instead of lines.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    /// The environment to switch back.
    environment: String,
    /// The run id of an earlier build deployed there (`kiln deployments ENV` lists them).
    #[arg(long, value_name = "RUN_ID")]
    to: String,
    /// The project [default: the token's project if it has one, else default].
    #[arg(long, env = "KILN_PROJECT")]
    project: Option<String>,
    /// Print the new deployment as JSON instead of a line.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct DeploymentsArgs {
    /// Only this environment's deployments.
    environment: Option<String>,
    /// The project [default: the token's project if it has one, else default].
    #[arg(long, env = "KILN_PROJECT")]
    project: Option<String>,
    /// How many deployments to list (1-200).
    #[arg(long, default_value_t = 20)]
    limit: i64,
    /// Print the environments and the history as JSON instead of lines.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

fn line(deployment: &DeploymentDto) -> String {
    let commit = deployment.commit.as_deref().unwrap_or("");
    let mut text = format!(
        "#{:<5} {:<10} {:<10} build #{} {} {}",
        deployment.id,
        deployment.environment,
        deployment.status,
        deployment.build_number,
        &commit[..commit.len().min(12)],
        deployment.run_id
    );
    if let Some(of) = deployment.rollback_of {
        match deployment.rollback_build_number {
            Some(number) => {
                text.push_str(&format!(" (rollback to deployment {of}, build #{number})"))
            }
            None => text.push_str(&format!(" (rollback to deployment {of})")),
        }
    }
    if deployment.current {
        text.push_str(" [live]");
    }
    if let Some(url) = &deployment.url {
        text.push_str(&format!(" {url}"));
    }
    text
}

pub async fn deploy(args: DeployArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client().await?;
    let project = project_of_token(&client, args.project.as_deref()).await?;
    let started = client
        .deploy(
            &project,
            &args.environment,
            &DeployRequest {
                branch: args.branch.clone(),
            },
        )
        .await?;
    if args.json {
        print_json(&started)?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "deploying {}#{} ({} @ {}) to {}",
        started.build.project,
        started.build.number,
        started.build.branch,
        &started.build.commit[..started.build.commit.len().min(12)],
        args.environment
    );
    outln!("{}", line(&started.deployment));
    if !args.wait {
        outln!("follow it: kiln watch {}", started.build.run_id);
        return Ok(ExitCode::SUCCESS);
    }
    let mut last = started.deployment.status.clone();
    loop {
        let deployment = client.deployment(started.deployment.id).await?;
        if deployment.status != last {
            outln!("{}", line(&deployment));
            last = deployment.status.clone();
        }
        match deployment.status.as_str() {
            "deployed" => return Ok(ExitCode::SUCCESS),
            "failed" | "cancelled" => {
                if let Some(message) = &deployment.message {
                    outln!("  {message}");
                }
                outln!("its log: kiln logs {}", deployment.run_id);
                return Ok(ExitCode::FAILURE);
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

pub async fn rollback(args: RollbackArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client().await?;
    let project = project_of_token(&client, args.project.as_deref()).await?;
    let deployment = client
        .rollback(&project, &args.environment, &args.to)
        .await?;
    if args.json {
        print_json(&deployment)?;
    } else if deployment.status == "deployed" {
        outln!("rolled back: {}", line(&deployment));
    } else {
        // A script deployment: its step runs again in a build of its own.
        outln!("rollback started: {}", line(&deployment));
        outln!(
            "the environment switches once its step succeeds; follow it: kiln watch {}",
            deployment.run_id
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn list(args: DeploymentsArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client().await?;
    let project = project_of_token(&client, args.project.as_deref()).await?;
    let environments = client.environments(&project).await?;
    let history = client
        .deployments(&project, args.environment.as_deref(), args.limit)
        .await?;
    if args.json {
        print_json(&serde_json::json!({
            "environments": environments.environments,
            "lastSuccessfulBuilds": environments.last_successful_builds,
            "deployments": history.deployments,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    for environment in &environments.environments {
        if args
            .environment
            .as_ref()
            .is_some_and(|wanted| *wanted != environment.name)
        {
            continue;
        }
        outln!("{}:", environment.name);
        match &environment.current {
            Some(current) => outln!("  live:      {}", line(current)),
            None => outln!("  live:      nothing"),
        }
        if let Some(good) = &environment.last_good {
            outln!("  last good: {}", line(good));
        }
        if let Some(running) = &environment.running {
            outln!("  running:   {}", line(running));
        }
    }
    if args.environment.is_none() {
        for build in &environments.last_successful_builds {
            outln!(
                "last successful build of {}: #{} {}",
                build.branch,
                build.number,
                build.run_id
            );
        }
    }
    outln!("history:");
    for deployment in &history.deployments {
        outln!("  {}", line(deployment));
    }
    Ok(ExitCode::SUCCESS)
}
