//! A project's outbound webhooks from the command line: `kiln webhook create|list|show|
//! update|delete|rotate-secret|test|deliveries|redeliver|status`, through `kiln-client`.

use std::process::ExitCode;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use kiln_client::ClientError;
use kiln_protocol::{CreateWebhook, UpdateWebhook, WebhookDeliveryDto, WebhookDto};

use super::admin::print_json;
use crate::settings::{ClientArgs, project_of_token};

/// What every command on one project's webhooks takes.
#[derive(Args, Debug)]
pub struct ProjectArgs {
    /// The project [default: the token's project if it has one, else default].
    #[arg(long, env = "KILN_PROJECT")]
    project: Option<String>,
    /// Print the API's JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Subcommand, Debug)]
pub enum WebhookCommand {
    /// Register an endpoint; prints its signing secret (whsec_…), shown only this once.
    Create {
        /// The receiver's http(s) URL.
        #[arg(long)]
        url: String,
        /// Event types or prefix patterns, comma-separated (build_*,stage_failed)
        /// [default: every event].
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
        /// The body: kiln ({buildId, type, data, timestamp}) or cdevents (CloudEvents).
        #[arg(long, value_parser = ["kiln", "cdevents"])]
        format: Option<String>,
        /// Create it inactive: nothing is sent until `kiln webhook update ID --active true`.
        #[arg(long)]
        inactive: bool,
        #[command(flatten)]
        project: ProjectArgs,
    },
    /// The project's endpoints (never their secrets).
    List {
        #[command(flatten)]
        project: ProjectArgs,
    },
    /// One endpoint.
    Show {
        /// The endpoint's id (`kiln webhook list` shows it).
        id: i64,
        #[command(flatten)]
        project: ProjectArgs,
    },
    /// Change an endpoint: only the options given change.
    Update {
        /// The endpoint's id (`kiln webhook list` shows it).
        id: i64,
        /// The receiver's new http(s) URL.
        #[arg(long)]
        url: Option<String>,
        /// Event types or prefix patterns, comma-separated; '*' for every event.
        #[arg(long, value_delimiter = ',')]
        events: Option<Vec<String>>,
        /// The body: kiln or cdevents.
        #[arg(long, value_parser = ["kiln", "cdevents"])]
        format: Option<String>,
        /// true sends again (and clears why Kiln disabled it); false stops sending, the
        /// deliveries wait.
        #[arg(long, value_name = "true|false")]
        active: Option<bool>,
        /// With --active true: mark the deliveries held while it was disabled failed
        /// (redeliverable one by one) instead of sending them.
        #[arg(long, requires = "active")]
        discard_held: bool,
        #[command(flatten)]
        project: ProjectArgs,
    },
    /// Delete an endpoint with its deliveries.
    Delete {
        /// The endpoint's id (`kiln webhook list` shows it).
        id: i64,
        #[command(flatten)]
        project: ProjectArgs,
    },
    /// Give an endpoint a new secret, printed once; the old one keeps signing for a while
    /// (see `show`), so the receiver can switch without losing a delivery.
    RotateSecret {
        /// The endpoint's id (`kiln webhook list` shows it).
        id: i64,
        #[command(flatten)]
        project: ProjectArgs,
    },
    /// Send a `webhook_test` event to an endpoint.
    Test {
        /// The endpoint's id (`kiln webhook list` shows it).
        id: i64,
        #[command(flatten)]
        project: ProjectArgs,
    },
    /// An endpoint's newest deliveries with their attempts.
    Deliveries {
        /// The endpoint's id (`kiln webhook list` shows it).
        id: i64,
        /// How many, newest first (the server keeps the newest 100 in this log).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i64).range(1..=100))]
        limit: i64,
        #[command(flatten)]
        project: ProjectArgs,
    },
    /// Send a delivered or failed delivery once more (same webhook-id).
    Redeliver {
        /// The endpoint's id (`kiln webhook list` shows it).
        id: i64,
        /// The delivery's id (from `kiln webhook deliveries ID`).
        delivery: i64,
        #[command(flatten)]
        project: ProjectArgs,
    },
    /// Pending, delivered and failed deliveries, and each endpoint's health.
    Status {
        /// Only this project [default: every project you may read].
        #[arg(long, env = "KILN_PROJECT")]
        project: Option<String>,
        /// Print the API's JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// An API error as the CLI reports it: with the option to fix when the server names
/// one of ours, and with where to look when something was not found.
fn explain(error: ClientError, not_found: &str) -> anyhow::Error {
    if let ClientError::Api { status, body } = &error {
        if let Some(field) = body.error.field.as_deref()
            && ["url", "events", "format", "active"].contains(&field)
        {
            return anyhow!("{error} (check --{field})");
        }
        if *status == 404 && !not_found.is_empty() {
            return anyhow!("{error}; {not_found}");
        }
    }
    error.into()
}

fn list_hint(project: &str) -> String {
    format!("`kiln webhook list --project {project}` lists the project's webhooks")
}

fn events_text(events: &[String]) -> String {
    if events.is_empty() {
        "every event".into()
    } else {
        events.join(",")
    }
}

fn state_text(webhook: &WebhookDto) -> String {
    match (&webhook.active, &webhook.disabled_reason) {
        (true, _) => "active".into(),
        (false, Some(reason)) => format!("disabled: {reason}"),
        (false, None) => "inactive".into(),
    }
}

/// One line per endpoint: id, state, format, events, URL.
fn webhook_line(webhook: &WebhookDto) -> String {
    format!(
        "{}\t{}\t{}\t{}\t{}",
        webhook.id,
        state_text(webhook),
        webhook.format,
        events_text(&webhook.events),
        webhook.url
    )
}

/// One line per delivery: id, state, type, attempts, the last answer, when.
fn delivery_line(delivery: &WebhookDeliveryDto) -> String {
    let last = match (&delivery.last_status, &delivery.last_error) {
        (Some(status), _) => format!("HTTP {status}"),
        (None, Some(error)) => error.clone(),
        (None, None) => "-".into(),
    };
    let when = match (&delivery.finished_at, &delivery.next_attempt_at) {
        (Some(finished), _) => format!("finished {finished}"),
        (None, Some(next)) => format!("next attempt {next}"),
        (None, None) => format!("created {}", delivery.created_at),
    };
    format!(
        "{}\t{}\t{}\t{} attempts\t{last}\t{when}",
        delivery.id, delivery.state, delivery.event_type, delivery.attempts
    )
}

impl ProjectArgs {
    /// The client, and the project from the flag or the token.
    async fn connect(&self) -> anyhow::Result<(kiln_client::Client, String)> {
        let client = self.client.client().await?;
        let project = project_of_token(&client, self.project.as_deref()).await?;
        Ok((client, project))
    }
}

pub async fn webhook(command: WebhookCommand) -> anyhow::Result<ExitCode> {
    match command {
        WebhookCommand::Create {
            url,
            events,
            format,
            inactive,
            project: args,
        } => {
            let (client, project_slug) = args.connect().await?;
            let request = CreateWebhook {
                url,
                events: (!events.is_empty()).then_some(events),
                format,
                active: Some(!inactive),
            };
            let created = client
                .create_webhook(&project_slug, &request)
                .await
                .map_err(|error| explain(error, ""))?;
            if args.json {
                print_json(&created)?;
                return Ok(ExitCode::SUCCESS);
            }
            let webhook = &created.webhook;
            errln!(
                "created webhook {} of {}: {} ({}, {} format, {}); its signing secret is shown only now:",
                webhook.id,
                webhook.project,
                webhook.url,
                events_text(&webhook.events),
                webhook.format,
                state_text(webhook)
            );
            outln!("{}", created.secret);
        }
        WebhookCommand::List { project: args } => {
            let (client, project_slug) = args.connect().await?;
            let list = client.list_webhooks(&project_slug).await?;
            if args.json {
                print_json(&list)?;
                return Ok(ExitCode::SUCCESS);
            }
            if list.webhooks.is_empty() {
                errln!(
                    "{} has no webhooks; add one with `kiln webhook create --project {} --url URL`",
                    project_slug,
                    project_slug
                );
            }
            for webhook in &list.webhooks {
                outln!("{}", webhook_line(webhook));
            }
        }
        WebhookCommand::Show { id, project: args } => {
            let (client, project_slug) = args.connect().await?;
            let webhook = client
                .get_webhook(&project_slug, id)
                .await
                .map_err(|error| explain(error, &list_hint(&project_slug)))?;
            if args.json {
                print_json(&webhook)?;
                return Ok(ExitCode::SUCCESS);
            }
            outln!(
                "webhook {} of {}: {}",
                webhook.id,
                webhook.project,
                state_text(&webhook)
            );
            outln!("  url: {}", webhook.url);
            outln!("  events: {}", events_text(&webhook.events));
            outln!("  format: {}", webhook.format);
            outln!("  secret: {}…", webhook.secret_prefix);
            if let Some(until) = &webhook.previous_secret_until {
                outln!("  previous secret signs until: {until}");
            }
            outln!("  created: {}", webhook.created_at);
            outln!("  updated: {}", webhook.updated_at);
        }
        WebhookCommand::Update {
            id,
            url,
            events,
            format,
            active,
            discard_held,
            project: args,
        } => {
            let (client, project_slug) = args.connect().await?;
            if url.is_none() && events.is_none() && format.is_none() && active.is_none() {
                anyhow::bail!(
                    "nothing to change: give --url, --events, --format or --active true|false"
                );
            }
            if discard_held && active != Some(true) {
                anyhow::bail!(
                    "--discard-held goes with --active true (it applies at re-activation)"
                );
            }
            let patch = UpdateWebhook {
                url,
                events,
                format,
                active,
                discard_held,
            };
            let webhook = client
                .update_webhook(&project_slug, id, &patch)
                .await
                .map_err(|error| explain(error, &list_hint(&project_slug)))?;
            if args.json {
                print_json(&webhook)?;
                return Ok(ExitCode::SUCCESS);
            }
            outln!("{}", webhook_line(&webhook));
        }
        WebhookCommand::Delete { id, project: args } => {
            let (client, project_slug) = args.connect().await?;
            client
                .delete_webhook(&project_slug, id)
                .await
                .map_err(|error| explain(error, &list_hint(&project_slug)))?;
            if args.json {
                print_json(&serde_json::json!({"deleted": id}))?;
                return Ok(ExitCode::SUCCESS);
            }
            outln!(
                "deleted webhook {id} of {} with its deliveries",
                project_slug
            );
        }
        WebhookCommand::RotateSecret { id, project: args } => {
            let (client, project_slug) = args.connect().await?;
            let rotated = client
                .rotate_webhook_secret(&project_slug, id)
                .await
                .map_err(|error| explain(error, &list_hint(&project_slug)))?;
            if args.json {
                print_json(&rotated)?;
                return Ok(ExitCode::SUCCESS);
            }
            errln!(
                "rotated the secret of webhook {}; the previous secret also signs until {}, so switch the receiver before then. The new secret is shown only now:",
                rotated.webhook.id,
                rotated
                    .webhook
                    .previous_secret_until
                    .as_deref()
                    .unwrap_or("now")
            );
            outln!("{}", rotated.secret);
        }
        WebhookCommand::Test { id, project: args } => {
            let (client, project_slug) = args.connect().await?;
            let queued = client
                .test_webhook(&project_slug, id)
                .await
                .map_err(|error| explain(error, &list_hint(&project_slug)))?;
            if args.json {
                print_json(&queued)?;
                return Ok(ExitCode::SUCCESS);
            }
            outln!(
                "queued test delivery {} to webhook {id}; see how it went with `kiln webhook deliveries {id} --project {}`",
                queued
                    .delivery_id
                    .map_or_else(|| "?".into(), |id| id.to_string()),
                project_slug
            );
            if !queued.active {
                errln!(
                    "webhook {id} is inactive: the test is sent once you activate it (`kiln webhook update {id} --active true --project {}`)",
                    project_slug
                );
            }
        }
        WebhookCommand::Deliveries {
            id,
            limit,
            project: args,
        } => {
            let (client, project_slug) = args.connect().await?;
            let mut list = client
                .webhook_deliveries(&project_slug, id)
                .await
                .map_err(|error| explain(error, &list_hint(&project_slug)))?;
            list.deliveries.truncate(limit as usize);
            if args.json {
                print_json(&list)?;
                return Ok(ExitCode::SUCCESS);
            }
            if list.deliveries.is_empty() {
                errln!(
                    "webhook {id} has no deliveries yet; `kiln webhook test {id} --project {}` sends one",
                    project_slug
                );
            }
            for delivery in &list.deliveries {
                outln!("{}", delivery_line(delivery));
            }
        }
        WebhookCommand::Redeliver {
            id,
            delivery,
            project: args,
        } => {
            let (client, project_slug) = args.connect().await?;
            let project = project_slug.clone();
            let queued = client
                .redeliver_webhook(&project_slug, id, delivery)
                .await
                .map_err(|error| {
                    explain(
                        error,
                        &format!(
                            "`kiln webhook deliveries {id} --project {project}` lists its deliveries"
                        ),
                    )
                })?;
            if args.json {
                print_json(&queued)?;
                return Ok(ExitCode::SUCCESS);
            }
            outln!(
                "delivery {} ({}) queued again for webhook {id}; it goes out as attempt {}",
                queued.id,
                queued.event_type,
                queued.attempts + 1
            );
        }
        WebhookCommand::Status {
            project,
            json,
            client,
        } => {
            let status = client
                .client()
                .await?
                .webhook_status(project.as_deref())
                .await?;
            if json {
                print_json(&status)?;
                return Ok(ExitCode::SUCCESS);
            }
            outln!(
                "{} pending, {} delivered, {} failed{}",
                status.pending,
                status.delivered,
                status.failed,
                status
                    .oldest_pending_age_seconds
                    .map_or_else(String::new, |age| format!(
                        "; the oldest pending is {age} s old"
                    ))
            );
            for endpoint in &status.endpoints {
                outln!(
                    "{}\t{}\t{} pending\t{} delivered\t{} failed\tsuccess {}\tp50 {}\t{}",
                    endpoint.id,
                    match (endpoint.active, endpoint.dropped_while_disabled) {
                        (true, 0) => "active".to_owned(),
                        (false, 0) => "inactive".to_owned(),
                        (true, dropped) => format!("active ({dropped} dropped while disabled)"),
                        (false, dropped) => format!("inactive ({dropped} dropped)"),
                    },
                    endpoint.pending,
                    endpoint.delivered,
                    endpoint.failed,
                    endpoint
                        .success_rate
                        .map_or_else(|| "-".into(), |rate| format!("{:.0}%", rate * 100.0)),
                    endpoint
                        .p50_latency_ms
                        .map_or_else(|| "-".into(), |ms| format!("{ms} ms")),
                    endpoint.url
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
