//! Client commands for administrators and readers: projects, tokens, builds.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use kiln_client::BuildQuery;

use crate::settings::ClientArgs;

#[derive(Subcommand, Debug)]
pub enum ProjectCommand {
    /// Create a project.
    Create {
        /// URL-safe slug: lowercase letters, digits and '-'.
        slug: String,
        /// Display name (defaults to the slug).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List projects.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Set the git repository Kiln builds the project from (any git URL or a local path).
    SetRepo {
        slug: String,
        /// The repository: https://… (a token in it stays on the server), ssh://…,
        /// git@host:path, file://… or a local path.
        repo: String,
        /// The branch built when a trigger names none.
        #[arg(long)]
        default_branch: Option<String>,
        /// Jobs of this project that may run at once.
        #[arg(long)]
        max_concurrency: Option<i64>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a project token, or with --agent an agent token; printed once.
    Create {
        /// The project (required unless --agent).
        #[arg(long, required_unless_present = "agent")]
        project: Option<String>,
        /// An instance-wide agent token for `kiln agent` (instance admin token needed).
        #[arg(long, conflicts_with_all = ["project", "scopes"])]
        agent: bool,
        #[arg(long, default_value = "cli")]
        name: String,
        /// Scopes: ingest, read (repeat or comma-separate).
        #[arg(long = "scope", value_delimiter = ',', default_value = "ingest")]
        scopes: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List a project's tokens (never the secrets).
    List {
        #[arg(long)]
        project: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a token by id.
    Revoke {
        #[arg(long)]
        project: String,
        id: i64,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args, Debug)]
pub struct BuildsArgs {
    #[arg(long)]
    project: Option<String>,
    #[arg(long)]
    branch: Option<String>,
    #[arg(long)]
    status: Option<String>,
    #[arg(long, default_value_t = 20)]
    limit: i64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    run_id: String,
    /// Only events after this id (the cursor from a previous call).
    #[arg(long, default_value_t = 0)]
    after: i64,
    /// Print the JSON page instead of one line per event.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub async fn project(command: ProjectCommand) -> anyhow::Result<ExitCode> {
    match command {
        ProjectCommand::Create { slug, name, client } => {
            let project = client
                .client()?
                .create_project(&slug, name.as_deref().unwrap_or(&slug))
                .await?;
            println!("created project {} ({})", project.slug, project.name);
        }
        ProjectCommand::SetRepo {
            slug,
            repo,
            default_branch,
            max_concurrency,
            client,
        } => {
            let settings = kiln_protocol::RepoSettings {
                repo: Some(repo),
                default_branch,
                max_concurrency,
            };
            let answer = client.client()?.set_repo(&slug, &settings).await?;
            println!(
                "project {slug} builds {} (default branch {})",
                answer["repo"].as_str().unwrap_or("?"),
                answer["defaultBranch"].as_str().unwrap_or("?")
            );
        }
        ProjectCommand::List { client } => {
            for project in client.client()?.list_projects().await?.projects {
                println!("{}\t{}\t{}", project.slug, project.name, project.created_at);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn token(command: TokenCommand) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::Create {
            agent: true,
            name,
            client,
            ..
        } => {
            let created = client.client()?.create_agent_token(&name).await?;
            eprintln!(
                "created agent token {} '{}'; it works only for `kiln agent` and is shown only now:",
                created.info.id, created.info.name
            );
            println!("{}", created.token);
        }
        TokenCommand::Create {
            project,
            name,
            scopes,
            client,
            ..
        } => {
            let project = project.unwrap_or_default();
            let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
            let created = client
                .client()?
                .create_token(&project, &name, &scopes)
                .await?;
            eprintln!(
                "created token {} '{}' for {} with scopes {}; it is shown only now:",
                created.info.id,
                created.info.name,
                project,
                created.info.scopes.join(",")
            );
            println!("{}", created.token);
        }
        TokenCommand::List { project, client } => {
            for token in client.client()?.list_tokens(&project).await?.tokens {
                println!(
                    "{}\t{}\t{}…\t{}\tlast used {}\t{}",
                    token.id,
                    token.name,
                    token.prefix,
                    token.scopes.join(","),
                    token.last_used_at.as_deref().unwrap_or("never"),
                    if token.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    }
                );
            }
        }
        TokenCommand::Revoke {
            project,
            id,
            client,
        } => {
            let token = client.client()?.revoke_token(&project, id).await?;
            println!("revoked token {} '{}'", token.id, token.name);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn builds(args: BuildsArgs) -> anyhow::Result<ExitCode> {
    let list = args
        .client
        .client()?
        .list_builds(&BuildQuery {
            project: args.project,
            branch: args.branch,
            status: args.status,
            limit: Some(args.limit),
            before: None,
        })
        .await?;
    if args.json {
        print_json(&list)?;
        return Ok(ExitCode::SUCCESS);
    }
    for build in list.builds {
        println!(
            "{}#{}\t{}\t{}\t{}\t{}\t{}",
            build.project,
            build.number,
            build.status,
            build
                .progress
                .map_or_else(|| "-".into(), |p| format!("{p:.0}%")),
            build.branch.as_deref().unwrap_or("-"),
            build
                .duration_ms
                .map_or_else(|| "-".into(), |d| format!("{:.1}s", d as f64 / 1000.0)),
            build.run_id
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn show_build(run_id: &str, json: bool, client: &ClientArgs) -> anyhow::Result<ExitCode> {
    let build = client.client()?.get_build(run_id).await?;
    if json {
        print_json(&build)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{}#{} {} ({})",
        build.project, build.number, build.status, build.run_id
    );
    if let Some(command) = &build.command {
        println!("  command: {command}");
    }
    if let (Some(branch), Some(commit)) = (&build.branch, &build.commit) {
        println!("  git: {branch} @ {commit}");
    }
    if let Some(message) = &build.message {
        println!("  message: {message}");
    }
    for stage in build.stages.unwrap_or_default() {
        println!(
            "  {:<10} {}{}",
            stage.status,
            stage.name,
            stage
                .duration_ms
                .map_or_else(String::new, |d| format!(" ({:.1}s)", d as f64 / 1000.0))
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn events(args: EventsArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let mut cursor = args.after;
    let mut all = Vec::new();
    loop {
        let page = client
            .build_events(&args.run_id, cursor, Some(1000))
            .await?;
        cursor = page.last_event_id;
        let more = page.has_more;
        all.extend(page.events);
        if !more {
            break;
        }
    }
    if args.json {
        print_json(&serde_json::json!({ "events": all, "lastEventId": cursor }))?;
        return Ok(ExitCode::SUCCESS);
    }
    for event in all {
        println!(
            "{}\t{}\t{}\t{}{}",
            event["id"],
            event["receivedAt"].as_str().unwrap_or_default(),
            event["event"].as_str().unwrap_or_default(),
            event["stage"].as_str().unwrap_or_default(),
            event["message"]
                .as_str()
                .map(|m| format!("\t{m}"))
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}
