//! `kiln emit TYPE`: one event for the current build.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use kiln_client::protocol::EventPayload;
use kiln_core::EventType;

use crate::report::{Reporter, spool};
use crate::settings::ClientArgs;

#[derive(Args, Debug)]
pub struct EmitArgs {
    /// Event type: build_started, stage_started, stage_completed, stage_failed,
    /// build_progress, heartbeat, build_completed, build_failed, build_cancelled, or a
    /// custom snake_case name.
    pub event: String,
    /// The build's run id (inside `kiln run` it is inherited from KILN_RUN_ID).
    #[arg(long, env = "KILN_RUN_ID")]
    pub run_id: Option<String>,
    /// The stage the event is about (stage_started, stage_completed, stage_failed).
    #[arg(long)]
    pub stage: Option<String>,
    /// A human-readable message stored with the event.
    #[arg(long)]
    pub message: Option<String>,
    /// How long the build or stage took, in milliseconds.
    #[arg(long)]
    pub duration_ms: Option<u64>,
    /// The build's progress in percent, 0-100 (build_progress).
    #[arg(long)]
    pub progress: Option<f64>,
    /// A JSON object attached as `data`.
    #[arg(long)]
    pub data: Option<String>,
    /// A custom metric, NAME=NUMBER (repeatable): `--metric bundle_kb=412`.
    #[arg(long = "metric", value_name = "NAME=NUMBER")]
    pub metrics: Vec<String>,
    /// Deployment environment label (e.g. prod).
    #[arg(long, env = "KILN_ENV")]
    pub env: Option<String>,
    /// Seconds to wait for delivery before spooling.
    #[arg(long, env = "KILN_FLUSH_TIMEOUT", default_value_t = 5.0)]
    pub flush_timeout: f64,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub fn new_event_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

pub async fn emit(args: EmitArgs) -> anyhow::Result<ExitCode> {
    EventType::parse("event", &args.event).map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let run_id = args.run_id.clone().context(
        "no run id: pass --run-id, set KILN_RUN_ID, or call kiln emit inside `kiln run`",
    )?;
    let data = match &args.data {
        Some(raw) => {
            let value: serde_json::Value =
                serde_json::from_str(raw).context("--data must be JSON")?;
            if !value.is_object() {
                bail!("--data must be a JSON object, like '{{\"key\": 1}}'");
            }
            Some(value)
        }
        None => None,
    };
    let mut metrics = std::collections::BTreeMap::new();
    for raw in &args.metrics {
        let parsed = raw.split_once('=').and_then(|(name, value)| {
            let value: f64 = value.trim().parse().ok().filter(|v: &f64| v.is_finite())?;
            kiln_core::event::valid_metric_name(name.trim())
                .then(|| (name.trim().to_owned(), value))
        });
        let Some((name, value)) = parsed else {
            bail!(
                "--metric {raw}: use NAME=NUMBER, the name 1-100 characters of letters, digits, _ . : - (e.g. --metric bundle_kb=412)"
            );
        };
        metrics.insert(name, value);
    }
    if let Some(progress) = args.progress
        && !(0.0..=100.0).contains(&progress)
    {
        bail!("--progress must be between 0 and 100");
    }
    let target = args.client.target()?;
    let flush_timeout = Duration::from_secs_f64(args.flush_timeout.max(0.0));
    let previous = tokio::spawn({
        let target = target.clone();
        async move { spool::send_all(Some(&target), spool::Pass::Background).await }
    });
    let reporter = Reporter::start(target);
    reporter.send(EventPayload {
        run_id,
        event: args.event,
        event_id: Some(new_event_id()),
        env: args.env,
        origin: Some("kiln-cli".into()),
        host: crate::report::metadata::hostname(),
        pid: Some(std::process::id()),
        stage: args.stage,
        message: args.message,
        duration_ms: args.duration_ms,
        progress: args.progress,
        data,
        metrics: (!metrics.is_empty()).then_some(metrics),
        ..EventPayload::default()
    });
    reporter.finish(flush_timeout).await;
    let _ = tokio::time::timeout(flush_timeout, previous).await;
    Ok(ExitCode::SUCCESS)
}
