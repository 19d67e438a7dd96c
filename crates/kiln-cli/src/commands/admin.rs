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
        /// The project's slug.
        slug: String,
        /// The repository: https://… (a token in it stays on the server), ssh://…,
        /// git@host:path, file://… or a local path.
        repo: String,
        /// The branch built when a trigger names none.
        #[arg(long)]
        default_branch: Option<String>,
        /// Jobs of this project that may run at once (1–10000).
        #[arg(long, conflicts_with = "no_concurrency_limit")]
        max_concurrency: Option<i64>,
        /// Remove the project's concurrency limit.
        #[arg(long)]
        no_concurrency_limit: bool,
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
        /// A name for the token, to recognise it in lists.
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
        /// The project whose tokens to list.
        #[arg(long)]
        project: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a token by id.
    Revoke {
        /// The token's project.
        #[arg(long)]
        project: String,
        /// The token's id (`kiln token list` shows it).
        id: i64,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args, Debug)]
pub struct BuildsArgs {
    /// Only this project's builds (default: every project the token may read).
    #[arg(long)]
    project: Option<String>,
    /// Only builds of this branch.
    #[arg(long)]
    branch: Option<String>,
    /// Only builds with this status: queued, running, success, failed, cancelled, stale.
    #[arg(long)]
    status: Option<String>,
    /// How many builds to list, newest first.
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
    /// The build's run id.
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
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub async fn project(command: ProjectCommand) -> anyhow::Result<ExitCode> {
    match command {
        ProjectCommand::Create { slug, name, client } => {
            let project = client
                .client()
                .await?
                .create_project(&slug, name.as_deref().unwrap_or(&slug))
                .await?;
            outln!("created project {} ({})", project.slug, project.name);
        }
        ProjectCommand::SetRepo {
            slug,
            repo,
            default_branch,
            max_concurrency,
            no_concurrency_limit,
            client,
        } => {
            let settings = kiln_protocol::RepoSettings {
                repo: Some(repo),
                default_branch,
                // Absent keeps the current limit.
                max_concurrency: if no_concurrency_limit {
                    Some(None)
                } else {
                    max_concurrency.map(Some)
                },
            };
            let answer = client.client().await?.set_repo(&slug, &settings).await?;
            outln!(
                "project {slug} builds {} (default branch {})",
                answer.repo.as_deref().unwrap_or("?"),
                answer.default_branch
            );
        }
        ProjectCommand::List { client } => {
            outln!("SLUG\tNAME\tCREATED");
            for project in client.client().await?.list_projects().await?.projects {
                outln!("{}\t{}\t{}", project.slug, project.name, project.created_at);
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
            let created = client.client().await?.create_agent_token(&name).await?;
            errln!(
                "created agent token {} '{}'; it works only for `kiln agent` and is shown only now:",
                created.info.id,
                created.info.name
            );
            outln!("{}", created.token);
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
                .client()
                .await?
                .create_token(&project, &name, &scopes)
                .await?;
            errln!(
                "created token {} '{}' for {} with scopes {}; it is shown only now:",
                created.info.id,
                created.info.name,
                project,
                created.info.scopes.join(",")
            );
            outln!("{}", created.token);
        }
        TokenCommand::List { project, client } => {
            outln!("ID\tNAME\tPREFIX\tSCOPES\tLAST USED\tSTATE");
            for token in client.client().await?.list_tokens(&project).await?.tokens {
                outln!(
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
            let token = client.client().await?.revoke_token(&project, id).await?;
            outln!("revoked token {} '{}'", token.id, token.name);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn builds(args: BuildsArgs) -> anyhow::Result<ExitCode> {
    let list = args
        .client
        .client()
        .await?
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
    if list.builds.is_empty() {
        outln!(
            "no builds yet (report one with `kiln run -- CMD`, or start one with `kiln trigger`)"
        );
        return Ok(ExitCode::SUCCESS);
    }
    outln!("BUILD\tSTATUS\tPROGRESS\tBRANCH\tDURATION\tRUN ID");
    for build in list.builds {
        outln!(
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
    let build = client.client().await?.get_build(run_id).await?;
    if json {
        print_json(&build)?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{}#{} {} ({})",
        build.project,
        build.number,
        build.status,
        build.run_id
    );
    if let Some(command) = &build.command {
        outln!("  command: {command}");
    }
    if let (Some(branch), Some(commit)) = (&build.branch, &build.commit) {
        outln!("  git: {branch} @ {commit}");
    }
    if let Some(message) = &build.message {
        outln!("  message: {message}");
    }
    for stage in build.stages.unwrap_or_default() {
        outln!(
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
    let client = args.client.client().await?;
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
        outln!(
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
