//! One job on the agent: a fresh workspace, the checkout of the exact commit, the
//! dependency cache, the step in the configured executor, its log shipped live, and the
//! report of how it ended (retried until the server takes it).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kiln_client::ClientError;
use kiln_protocol::{AgentJob, FinishJob};
use tokio::sync::watch;

use super::{Running, Shared};
use crate::cache::{SaveOutcome, cache_key};
use crate::checkout::{CheckoutError, checkout};
use crate::executor::{Ending, StepLimits, StepSpec, run_step};
use crate::logs::{LogSink, LogSinkError, ShipOptions, ship_logs};
use crate::output::{OutputChunk, OutputSender, OutputTail};

/// Artifact files sent or fetched at once.
const TRANSFERS_IN_FLIGHT: usize = 8;

/// How long the agent keeps trying to report a job's end while the server is away.
const REPORT_PATIENCE: Duration = Duration::from_secs(600);

/// Ships log chunks to the server at the job's offset.
struct ServerLog {
    shared: Arc<Shared>,
    job_id: i64,
    attempt: i64,
    base: i64,
    cancel: watch::Sender<bool>,
}

impl LogSink for ServerLog {
    async fn append(&self, offset: u64, bytes: Bytes) -> Result<(), LogSinkError> {
        let result = self
            .shared
            .client
            .agent_log(
                self.job_id,
                self.shared.agent_id(),
                self.attempt,
                self.base + offset as i64,
                bytes.to_vec(),
            )
            .await;
        match result {
            Ok(ack) => {
                if ack.cancel {
                    let _ = self.cancel.send(true);
                }
                Ok(())
            }
            Err(ClientError::Api { status, body })
                if (400..500).contains(&status) && status != 429 =>
            {
                Err(LogSinkError::Refused(body.error.message))
            }
            Err(error) => Err(LogSinkError::Transient(error.to_string())),
        }
    }
}

/// Quotes text for `sh`.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// The step's script: each command echoed (`$ command`) before it runs; `sh -e` stops
/// at the first that fails.
fn script(commands: &[String]) -> String {
    let mut script = String::new();
    for command in commands {
        script.push_str(&format!(
            "printf '%s\\n' {}\n",
            shell_quote(&format!("$ {command}"))
        ));
        script.push_str(command);
        script.push('\n');
    }
    script
}

struct Report {
    state: &'static str,
    exit_code: Option<i64>,
    reason: Option<&'static str>,
    message: Option<String>,
}

pub(super) async fn run(shared: &Arc<Shared>, job: AgentJob) {
    let (cancel_sender, cancel) = watch::channel(false);
    let lost = Arc::new(AtomicBool::new(false));
    shared.running.lock().expect("running lock").insert(
        job.job_id,
        Running {
            cancel: cancel_sender.clone(),
            lost: lost.clone(),
        },
    );
    tracing::info!(job = job.job_id, run_id = %job.run_id, step = %job.step, attempt = job.attempt, "job started");
    let started = Instant::now();
    // Output goes through the masker, so no secret of the job reaches the log.
    let (output, unmasked) = tokio::sync::mpsc::channel(256);
    let (masked, received) = tokio::sync::mpsc::channel(256);
    let masker = crate::mask::Masker::new(job.secrets.0.values().map(String::as_str));
    let relay = tokio::spawn(crate::mask::relay(unmasked, masked, masker));
    // The masked output's end, to name a command the step's shell did not find.
    let (shipped_sender, shipped) = tokio::sync::mpsc::channel(256);
    let tail = Arc::new(std::sync::Mutex::new(OutputTail::default()));
    let tap = tokio::spawn(crate::output::tap(received, shipped_sender, tail.clone()));
    let sink = ServerLog {
        shared: shared.clone(),
        job_id: job.job_id,
        attempt: job.attempt,
        base: job.log_offset,
        cancel: cancel_sender.clone(),
    };
    let options = ShipOptions {
        cap_bytes: job
            .log_cap_bytes
            .saturating_sub(job.log_offset.max(0) as u64)
            .max(4096),
        ..ShipOptions::default()
    };
    let shipper = tokio::spawn(ship_logs(shipped, sink, options));
    let workspace = shared
        .options
        .work_dir
        .join(format!("job-{}-{}", job.job_id, job.attempt));
    let mut report = execute(shared, &job, &workspace, &output, cancel).await;
    if !lost.load(Ordering::SeqCst) {
        upload_test_reports(shared, &job, &workspace, &output).await;
        if report.state == "passed"
            && let Err(message) = upload_artifacts(shared, &job, &workspace, &output).await
        {
            say(&output, format!("step failed: {message}")).await;
            report = Report {
                state: "failed",
                exit_code: None,
                reason: Some("artifacts"),
                message: Some(message),
            };
        }
    }
    drop(output);
    let _ = relay.await;
    let _ = tap.await;
    if report.reason == Some("exit_status")
        && report.exit_code == Some(127)
        && let Some(name) = tail.lock().expect("output tail lock").missing_command()
    {
        report.message = Some(format!("command not found: {name}"));
    }
    match shipper.await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => tracing::warn!(job = job.job_id, %error, "log shipping ended early"),
        Err(error) => tracing::warn!(job = job.job_id, %error, "log shipper failed"),
    }
    if let Err(error) = tokio::fs::remove_dir_all(&workspace).await
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %workspace.display(), %error, "cannot remove the workspace");
    }
    if !lost.load(Ordering::SeqCst) {
        finish(shared, &job, report, started.elapsed()).await;
    } else {
        tracing::warn!(
            job = job.job_id,
            "the server gave this job to another agent; not reporting it"
        );
    }
    shared
        .running
        .lock()
        .expect("running lock")
        .remove(&job.job_id);
}

/// Uploads the JUnit reports the step wrote (`test_reports:`), whatever its outcome,
/// saying in the log what each held; a report the server refuses is named with the reason
/// and does not change the step's outcome.
async fn upload_test_reports(
    shared: &Arc<Shared>,
    job: &AgentJob,
    workspace: &std::path::Path,
    output: &OutputSender,
) {
    if job.test_reports.is_empty() {
        return;
    }
    let root = workspace.to_path_buf();
    let patterns = job.test_reports.clone();
    let (found, notes) = match tokio::task::spawn_blocking(move || {
        crate::test_reports::find(&root, &patterns)
    })
    .await
    {
        Ok(found) => found,
        Err(error) => {
            say(output, format!("cannot look for test reports: {error}")).await;
            return;
        }
    };
    for note in notes {
        say(output, note).await;
    }
    if found.is_empty() {
        say(
            output,
            format!(
                "no test report matched {} in the workspace",
                job.test_reports.join(", ")
            ),
        )
        .await;
        return;
    }
    for path in found {
        let shown = path
            .strip_prefix(workspace)
            .unwrap_or(&path)
            .display()
            .to_string();
        let xml = match tokio::fs::read(&path).await {
            Ok(xml) => xml,
            Err(error) => {
                say(
                    output,
                    format!("test report {shown}: cannot read it ({error})"),
                )
                .await;
                continue;
            }
        };
        match shared
            .client
            .agent_test_report(job.job_id, shared.agent_id(), job.attempt, xml)
            .await
        {
            Ok(stored) => {
                let s = stored.stored;
                say(
                    output,
                    format!(
                        "test report {shown}: {} tests, {} passed, {} failed, {} errors, {} skipped",
                        s.total, s.passed, s.failed, s.errors, s.skipped
                    ),
                )
                .await;
            }
            Err(error) => say(output, format!("test report {shown} not stored: {error}")).await,
        }
    }
}

/// Uploads the files of the step's `artifacts:` globs. A glob set matching nothing is a
/// note (an error with `artifacts_required`); a file the server does not take fails the
/// step with the reason.
async fn upload_artifacts(
    shared: &Arc<Shared>,
    job: &AgentJob,
    workspace: &std::path::Path,
    output: &OutputSender,
) -> Result<(), String> {
    if job.artifact_globs.is_empty() {
        return Ok(());
    }
    let root = workspace.to_path_buf();
    let patterns = job.artifact_globs.clone();
    let (found, notes) =
        tokio::task::spawn_blocking(move || crate::artifacts::find(&root, &patterns))
            .await
            .map_err(|error| format!("cannot look for artifacts: {error}"))?;
    for note in notes {
        say(output, note).await;
    }
    if found.is_empty() {
        let message = format!(
            "no file matched the artifacts globs {}",
            job.artifact_globs.join(", ")
        );
        if job.artifacts_required {
            return Err(format!("{message} (artifacts_required: true)"));
        }
        say(output, format!("warning: {message}; nothing uploaded")).await;
        return Ok(());
    }
    let target = kiln_client::ArtifactTarget::Job {
        job_id: job.job_id,
        agent_id: shared.agent_id(),
        attempt: job.attempt,
    };
    let started = Instant::now();
    let mut bytes = 0u64;
    // A few at a time: many small files (node_modules) are bound by round trips.
    let mut transfers = tokio::task::JoinSet::new();
    let mut pending = found.iter().cloned();
    loop {
        while transfers.len() < TRANSFERS_IN_FLIGHT {
            let Some(file) = pending.next() else { break };
            let client = shared.client.clone();
            let target = target.clone();
            transfers.spawn(async move {
                let stored = client
                    .upload_artifact(&target, &file.local, &file.path, file.mode, None)
                    .await;
                (file.path, stored)
            });
        }
        let Some(done) = transfers.join_next().await else {
            break;
        };
        match done {
            Ok((_, Ok(stored))) => bytes += stored.size,
            Ok((path, Err(error))) => return Err(format!("artifact {path} not stored: {error}")),
            Err(error) => return Err(format!("an artifact upload stopped: {error}")),
        }
    }
    say(
        output,
        format!(
            "artifacts: {} files, {bytes} bytes uploaded in {:.1}s",
            found.len(),
            started.elapsed().as_secs_f64()
        ),
    )
    .await;
    Ok(())
}

/// Writes the artifacts of the steps this one depends on into the workspace, each
/// checked against its SHA-256.
async fn restore_artifacts(
    shared: &Arc<Shared>,
    job: &AgentJob,
    workspace: &std::path::Path,
    output: &OutputSender,
) -> Result<(), String> {
    if job.artifacts.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    let mut places = Vec::with_capacity(job.artifacts.len());
    for file in &job.artifacts {
        let dest = {
            let workspace = workspace.to_path_buf();
            let path = file.path.clone();
            tokio::task::spawn_blocking(move || crate::artifacts::destination(&workspace, &path))
                .await
                .map_err(|error| format!("cannot place artifacts: {error}"))?
                .map_err(|why| format!("artifact {} cannot be written: {why}", file.path))?
        };
        places.push((file.clone(), dest));
    }
    let mut bytes = 0u64;
    let mut transfers = tokio::task::JoinSet::new();
    let mut pending = places.into_iter();
    let (agent_id, job_id, attempt) = (shared.agent_id(), job.job_id, job.attempt);
    loop {
        while transfers.len() < TRANSFERS_IN_FLIGHT {
            let Some((file, dest)) = pending.next() else {
                break;
            };
            let client = shared.client.clone();
            transfers.spawn(async move {
                client
                    .download_job_artifact(job_id, agent_id, attempt, &file.sha256, &dest)
                    .await
                    .map_err(|error| format!("artifact {} not downloaded: {error}", file.path))
                    .and_then(|written| {
                        crate::artifacts::set_mode(&dest, file.mode)
                            .map(|()| written)
                            .map_err(|error| {
                                format!("artifact {}: cannot set its mode: {error}", file.path)
                            })
                    })
            });
        }
        let Some(done) = transfers.join_next().await else {
            break;
        };
        bytes += done.map_err(|error| format!("an artifact download stopped: {error}"))??;
    }
    let steps: std::collections::BTreeSet<&str> = job
        .artifacts
        .iter()
        .filter_map(|file| file.step.as_deref())
        .collect();
    say(
        output,
        format!(
            "artifacts of {}: {} files, {bytes} bytes restored and verified in {:.1}s",
            steps.into_iter().collect::<Vec<_>>().join(", "),
            job.artifacts.len(),
            started.elapsed().as_secs_f64()
        ),
    )
    .await;
    Ok(())
}

async fn say(output: &OutputSender, message: impl Into<String>) {
    let _ = output.send(OutputChunk::agent(message)).await;
}

async fn execute(
    shared: &Arc<Shared>,
    job: &AgentJob,
    workspace: &std::path::Path,
    output: &OutputSender,
    cancel: watch::Receiver<bool>,
) -> Report {
    let options = &shared.options;
    say(
        output,
        format!(
            "step '{}' of build #{} ({}), attempt {}, on agent '{}' with the {} executor",
            job.step,
            job.build_number,
            job.project,
            job.attempt,
            options.name,
            options.executor.name()
        ),
    )
    .await;
    let _ = tokio::fs::remove_dir_all(workspace).await;
    if job.repo.is_empty() {
        return Report {
            state: "failed",
            exit_code: None,
            reason: Some("checkout"),
            message: Some("the project has no repository to check out".into()),
        };
    }
    for name in &job.missing_secrets {
        say(
            output,
            format!(
                "secret {name} is named by the step but project '{}' has none; a project admin sets it with `kiln secret set {name} --project {}`",
                job.project, job.project
            ),
        )
        .await;
    }
    let checkout_timeout = Duration::from_secs(job.checkout_timeout_secs.max(1));
    match checkout(
        &job.repo,
        job.repo_credentials.as_ref(),
        &job.commit,
        workspace,
        checkout_timeout,
        output,
        cancel.clone(),
    )
    .await
    {
        Ok(_) => {}
        Err(CheckoutError::Cancelled) => {
            return Report {
                state: "cancelled",
                exit_code: None,
                reason: Some("cancelled"),
                message: Some("cancelled during the checkout".into()),
            };
        }
        Err(error @ CheckoutError::TimedOut { .. }) => {
            say(output, error.to_string()).await;
            return Report {
                state: "failed",
                exit_code: None,
                reason: Some("timeout"),
                message: Some(format!("checkout: {error}")),
            };
        }
        Err(error) => {
            say(output, format!("checkout failed: {error}")).await;
            return Report {
                state: "failed",
                exit_code: None,
                reason: Some("checkout"),
                message: Some(format!("checkout failed: {error}")),
            };
        }
    }

    let mut cache_miss_key = None;
    if let Some(cache) = &job.cache {
        match cache_key(&job.step, &cache.key_files, workspace) {
            Ok(key) => match shared.cache.restore(&key, &cache.paths, workspace).await {
                Ok(true) => {
                    say(
                        output,
                        format!(
                            "cache hit: restored {} (key {})",
                            cache.paths.join(", "),
                            &key[..12.min(key.len())]
                        ),
                    )
                    .await
                }
                Ok(false) => {
                    say(
                        output,
                        format!(
                            "cache miss (key {}); it is saved after the step succeeds",
                            &key[..12.min(key.len())]
                        ),
                    )
                    .await;
                    cache_miss_key = Some(key);
                }
                Err(error) => say(output, format!("cache not restored: {error}")).await,
            },
            Err(error) => say(output, format!("cache skipped: {error}")).await,
        }
    }

    // After the cache: a file a step passed on wins over a cached one.
    if let Err(message) = restore_artifacts(shared, job, workspace, output).await {
        say(output, message.clone()).await;
        return Report {
            state: "failed",
            exit_code: None,
            reason: Some("artifacts"),
            message: Some(message),
        };
    }

    let mut spec = StepSpec::new(
        job.step.clone(),
        script(&job.commands),
        workspace.to_path_buf(),
    );
    spec.env = job.env.clone();
    // The step's secrets, as it named them; they win over the step's own `env`.
    for (name, value) in &job.secrets.0 {
        spec.env.insert(name.clone(), value.clone());
    }
    spec.image = job.image.clone();
    spec.network = job.network;
    let limits = StepLimits {
        timeout: Duration::from_secs(job.timeout_secs.max(1)),
        grace: options.grace,
    };
    let outcome = match run_step(&options.executor, &spec, output.clone(), cancel, limits).await {
        Ok(outcome) => outcome,
        Err(error) => {
            say(output, format!("the step could not run: {error}")).await;
            return Report {
                state: "failed",
                exit_code: None,
                reason: Some("error"),
                message: Some(error.to_string()),
            };
        }
    };
    let code = outcome
        .exit_code
        .map(i64::from)
        .or(outcome.signal.map(|s| 128 + i64::from(s)));
    let report = match outcome.ending {
        Ending::Exited if outcome.success() => Report {
            state: "passed",
            exit_code: Some(0),
            reason: None,
            message: None,
        },
        Ending::Exited => Report {
            state: "failed",
            exit_code: code,
            reason: Some("exit_status"),
            message: Some(match (outcome.exit_code, outcome.signal) {
                (_, Some(signal)) => format!("killed by signal {signal}"),
                (Some(status), None) => format!("exit code {status}"),
                (None, None) => "ended without a status".into(),
            }),
        },
        Ending::TimedOut => Report {
            state: "failed",
            exit_code: code,
            reason: Some("timeout"),
            message: Some(format!(
                "timed out after {}",
                kiln_core::pipeline::format_duration(limits.timeout)
            )),
        },
        Ending::Cancelled => Report {
            state: "cancelled",
            exit_code: code,
            reason: Some("cancelled"),
            message: Some("cancelled".into()),
        },
    };
    let seconds = outcome.duration.as_secs_f64();
    match &report.message {
        None => say(output, format!("step passed in {seconds:.1}s")).await,
        Some(why) => {
            say(
                output,
                format!("step {}: {why} after {seconds:.1}s", report.state),
            )
            .await
        }
    }
    if report.state == "passed"
        && let (Some(key), Some(cache)) = (cache_miss_key, &job.cache)
    {
        {
            match shared.cache.save(&key, &cache.paths, workspace).await {
                Ok(saved) if saved.outcome == SaveOutcome::Stored => {
                    say(output, format!("cache saved: {} bytes", saved.bytes)).await
                }
                Ok(saved) if saved.outcome == SaveOutcome::TooLarge => {
                    say(
                        output,
                        format!(
                            "cache not saved: {} bytes exceed the agent's cache size",
                            saved.bytes
                        ),
                    )
                    .await
                }
                Ok(_) => {}
                Err(error) => say(output, format!("cache not saved: {error}")).await,
            }
        }
    }
    report
}

async fn finish(shared: &Arc<Shared>, job: &AgentJob, report: Report, elapsed: Duration) {
    let request = FinishJob {
        agent_id: shared.agent_id(),
        attempt: job.attempt,
        state: report.state.into(),
        exit_code: report.exit_code,
        reason: report.reason.map(str::to_owned),
        message: report.message,
        duration_ms: Some(elapsed.as_millis() as i64),
    };
    let deadline = Instant::now() + REPORT_PATIENCE;
    let mut delay = Duration::from_millis(200);
    loop {
        match shared.client.agent_finish(job.job_id, &request).await {
            Ok(()) => {
                tracing::info!(job = job.job_id, state = report.state, "job reported");
                return;
            }
            Err(
                error @ ClientError::Api {
                    status: 400..=499, ..
                },
            ) if !matches!(error, ClientError::Api { status: 429, .. }) => {
                tracing::warn!(job = job.job_id, %error, "the server refused the job's report");
                return;
            }
            Err(error) if Instant::now() < deadline => {
                tracing::warn!(job = job.job_id, %error, "cannot report the job yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(error) => {
                tracing::error!(job = job.job_id, %error, "gave up reporting the job");
                return;
            }
        }
    }
}
