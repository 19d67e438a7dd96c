//! What the builds pages show of a build: status, progress, ETA, duration, commit and
//! trigger, computed for a whole page of builds with three queries (the first event of
//! each build, the recent durations of each running build's pipeline, and how far the
//! jobs of builds that failed got).

use std::collections::HashMap;

use kiln_core::eta::{self, ETA_SAMPLE};
use kiln_core::predict;
use kiln_core::{BuildStatus, Millis};
use kiln_store::{BuildRecord, JobTally, PipelineKey, StoredEvent};
use serde_json::Value;

use super::PageError;
use super::when::When;
use crate::AppState;

/// One build as the overview and the build page's header show it.
#[derive(Clone, Debug)]
pub(crate) struct BuildView {
    pub run_id: String,
    pub project: String,
    pub number: i64,
    pub status: &'static str,
    pub active: bool,
    pub branch: String,
    pub commit: String,
    pub commit_short: String,
    pub commit_message: String,
    /// Who or what started it, in words ("dev@example.com (API)", "kiln run on ci-3").
    pub trigger: String,
    /// The build this one retries, if any.
    pub retry_of: String,
    pub started: When,
    pub ended: Option<When>,
    /// Elapsed so far for an active build, the final duration for an ended one.
    pub duration_ms: i64,
    pub duration: String,
    /// Percent done for the progress bar (0–100, one decimal), when known. For a build
    /// that ended without success: how far it got (its last reported `progress`, else
    /// the share of its jobs that passed), not a full bar.
    pub percent: Option<f64>,
    /// Whether `percent` is the build's own `progress` or derived from history.
    pub percent_reported: bool,
    pub eta: Option<EtaView>,
    pub current_stage: String,
    pub message: String,
    pub origin: String,
    pub host: String,
    pub command: String,
}

#[derive(Clone, Debug)]
pub(crate) struct EtaView {
    pub remaining_ms: i64,
    pub words: String,
    pub source: &'static str,
    pub overdue: bool,
    /// The pipeline's median duration (history estimates; 0 otherwise), for the script.
    pub median_ms: i64,
}

impl BuildView {
    pub fn branch_query(&self) -> String {
        super::encode_query(&self.branch)
    }

    pub fn percent_text(&self) -> String {
        self.percent.map(|p| format!("{p:.0}")).unwrap_or_default()
    }

    /// The width of the bar: the percent; empty when not known (a success is 100).
    pub fn bar_width(&self) -> String {
        match self.percent {
            Some(p) => format!("{p:.1}"),
            None => "0".into(),
        }
    }

    /// The bar in words, beside it and as its `aria-valuetext`: "40%" while it runs,
    /// "100%" for a success, "failed at 40%" where an ended build stopped.
    pub fn progress_words(&self) -> String {
        match (self.percent, self.active || self.status == "success") {
            (Some(p), true) => format!("{p:.0}%"),
            (None, true) => String::new(),
            (Some(p), false) => format!("{} at {p:.0}%", self.status),
            (None, false) => format!("{}, progress unknown", self.status),
        }
    }
}

/// Views of a page of builds: one query for their first events (the trigger), one for
/// the recent durations of the pipelines of the active ones (their ETA), and one for
/// the jobs of those that ended without success and reported no progress (where they
/// stopped).
pub(crate) async fn build_views(
    state: &AppState,
    builds: &[BuildRecord],
) -> Result<Vec<BuildView>, PageError> {
    let now = state.clock.now();
    let ids: Vec<i64> = builds.iter().map(|b| b.id).collect();
    let firsts: HashMap<i64, StoredEvent> = state
        .store
        .first_events(&ids)
        .await?
        .into_iter()
        .map(|event| (event.build_id, event))
        .collect();
    let mut keys: Vec<PipelineKey> = Vec::new();
    for build in builds.iter().filter(|b| !b.state.status.is_terminal()) {
        let key = PipelineKey::of(build);
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    // How far builds that ended without success got, when they reported no progress.
    let stopped: Vec<i64> = builds
        .iter()
        .filter(|b| {
            b.state.status.is_terminal()
                && b.state.status != BuildStatus::Success
                && b.state.progress.is_none()
        })
        .map(|b| b.id)
        .collect();
    let tallies: HashMap<i64, JobTally> = state
        .store
        .job_tallies(&stopped)
        .await?
        .into_iter()
        .map(|tally| (tally.build_id, tally))
        .collect();
    // What each pipeline is expected to take, predicted for a build starting when this
    // one did (recency-weighted, the same hour of the day weighted up).
    let histories: HashMap<PipelineKey, Vec<predict::Sample>> = state
        .store
        .recent_success_durations(&keys, ETA_SAMPLE)
        .await?
        .into_iter()
        .collect();
    Ok(builds
        .iter()
        .map(|build| {
            let median = histories
                .get(&PipelineKey::of(build))
                .and_then(|history| predict::predict(history, Some(build.state.started_at)))
                .map(|prediction| prediction.expected_ms);
            build_view(
                build,
                firsts.get(&build.id),
                tallies.get(&build.id),
                median,
                now,
            )
        })
        .collect())
}

/// A metric value as read: whole numbers plainly, others with up to three decimals.
pub(crate) fn metric_value(value: &f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        let text = format!("{value:.3}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

pub(crate) fn build_view(
    build: &BuildRecord,
    first: Option<&StoredEvent>,
    jobs: Option<&JobTally>,
    history_expected_ms: Option<i64>,
    now: Millis,
) -> BuildView {
    let state = &build.state;
    let active = !state.status.is_terminal();
    let duration_ms = match (state.duration_ms, state.ended_at) {
        (Some(duration), _) => duration,
        (None, Some(ended)) => ended.saturating_sub(state.started_at),
        (None, None) => now.saturating_sub(state.started_at),
    }
    .max(0);
    let (percent, eta) = if active {
        let elapsed = now.saturating_sub(state.started_at);
        let percent = eta::percent_done(elapsed, state.progress, history_expected_ms);
        let eta =
            eta::estimate(elapsed, state.progress, history_expected_ms).map(|estimate| EtaView {
                remaining_ms: estimate.remaining_ms,
                words: eta::describe_remaining(&estimate),
                source: estimate.source.as_str(),
                overdue: estimate.overdue,
                median_ms: history_expected_ms.unwrap_or(0),
            });
        (percent, eta)
    } else if state.status == BuildStatus::Success {
        (Some(100.0), None)
    } else {
        let jobs_share = jobs
            .filter(|tally| tally.total > 0)
            .map(|tally| (tally.passed as f64 * 1000.0 / tally.total as f64).round() / 10.0);
        (
            state.progress.map(|p| p.clamp(0.0, 100.0)).or(jobs_share),
            None,
        )
    };
    let payload = first.map(|event| &event.payload);
    let data = payload.and_then(|p| p.get("data"));
    let text = |value: Option<&Value>, key: &str| {
        value
            .and_then(|v| v.get(key))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let commit = state.commit.clone().unwrap_or_default();
    BuildView {
        run_id: state.run_id.to_string(),
        project: build.project_slug.clone(),
        number: build.number,
        status: state.status.as_str(),
        active,
        branch: state.branch.clone().unwrap_or_default(),
        commit_short: commit.chars().take(8).collect(),
        commit,
        commit_message: first_line(&text(data, "commitMessage")),
        trigger: describe_trigger(state.origin.as_deref(), state.host.as_deref(), data),
        retry_of: text(data, "retryOf"),
        started: When::new(state.started_at, now),
        ended: state.ended_at.map(|ended| When::new(ended, now)),
        duration_ms,
        duration: eta::format_duration(duration_ms),
        percent_reported: state.progress.is_some(),
        percent,
        eta,
        current_stage: state
            .current_stage
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        message: super::ansi::plain(state.message.as_deref().unwrap_or_default()),
        origin: state.origin.clone().unwrap_or_default(),
        host: state.host.clone().unwrap_or_default(),
        command: state.command.clone().unwrap_or_default(),
    }
}

/// The user and token that asked for a build: "Ada (ada@example.com)", "Ada
/// (ada@example.com) with token 'laptop' (#12)", "token 'ci' (#5)".
fn requester_words(data: Option<&Value>) -> Option<String> {
    let text = |key: &str| {
        data.and_then(|d| d.get(key))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let person = match (text("byName"), text("by")) {
        (Some(name), Some(email)) if name != email => Some(format!("{name} ({email})")),
        (_, Some(email)) => Some(email.to_owned()),
        (Some(name), None) => Some(name.to_owned()),
        (None, None) => None,
    };
    let token = data.and_then(|d| d.get("token")).and_then(|token| {
        let id = token.get("id").and_then(Value::as_i64)?;
        let name = token
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        Some(format!("token '{name}' (#{id})"))
    });
    match (person, token) {
        (Some(person), Some(token)) => Some(format!("{person} with {token}")),
        (person, token) => person.or(token),
    }
}

fn first_line(text: &str) -> String {
    let text = super::ansi::plain(text);
    let line = text.lines().next().unwrap_or_default().trim();
    if line.chars().count() > 100 {
        format!("{}…", line.chars().take(99).collect::<String>())
    } else {
        line.to_owned()
    }
}

/// Who or what started a build, from its first event: Kiln's own triggers carry
/// `data.trigger` and, for a request, who made it (`data.by`, `data.byName`,
/// `data.token`, `data.via`; builds queued before the token was recorded have only
/// `by`); builds that report themselves carry their origin and host, and `kiln run` in
/// CI adds `data.ci`.
pub(crate) fn describe_trigger(
    origin: Option<&str>,
    host: Option<&str>,
    data: Option<&Value>,
) -> String {
    let field = |key: &str| {
        data.and_then(|d| d.get(key))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let requester = requester_words(data);
    let from_dashboard = field("via") == Some("dashboard");
    let kiln_trigger = match field("trigger") {
        Some("api") => Some(match requester {
            Some(who) if from_dashboard => format!("{who}, Build button"),
            Some(who) if field("via").is_some() => format!("{who}, API"),
            Some(who) => format!("{who} (Build button or API)"),
            None => "the API (who called was not recorded)".to_owned(),
        }),
        Some("retry") => Some(match requester {
            Some(who) if from_dashboard => format!("{who}, Retry button"),
            Some(who) if field("via").is_some() => format!("{who}, retry through the API"),
            Some(who) => format!("{who} (retry)"),
            None => "a retry".to_owned(),
        }),
        Some("poll") => Some("branch poll (a new commit on the branch)".to_owned()),
        Some("github") => Some("a GitHub push".to_owned()),
        Some(other) => Some(other.to_owned()),
        None => None,
    };
    if let Some(trigger) = kiln_trigger {
        return trigger;
    }
    let ci = data.and_then(|d| d.get("ci"));
    let ci_text = ci.map(|ci| {
        let provider = ci
            .get("provider")
            .and_then(Value::as_str)
            .unwrap_or("CI")
            .replace('_', " ");
        let person = ["actor", "user"]
            .iter()
            .find_map(|key| ci.get(*key).and_then(Value::as_str));
        match person {
            Some(person) => format!("{provider} ({person})"),
            None => provider,
        }
    });
    let reporter = match origin {
        Some("kiln-cli") => "kiln run".to_owned(),
        Some(origin) if !origin.is_empty() => origin.to_owned(),
        _ => "a build script".to_owned(),
    };
    let mut words = match host.filter(|h| !h.is_empty()) {
        Some(host) => format!("{reporter} on {host}"),
        None => reporter,
    };
    if let Some(ci_text) = ci_text {
        words.push_str(&format!(", {ci_text}"));
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn triggers_in_words() {
        assert_eq!(
            describe_trigger(
                Some("kiln"),
                None,
                Some(&json!({"trigger": "api", "by": "ada@example.com"}))
            ),
            "ada@example.com (Build button or API)"
        );
        assert_eq!(
            describe_trigger(
                Some("kiln"),
                None,
                Some(
                    &json!({"trigger": "api", "by": "ada@example.com", "byName": "Ada", "via": "dashboard"})
                )
            ),
            "Ada (ada@example.com), Build button"
        );
        assert_eq!(
            describe_trigger(
                Some("kiln"),
                None,
                Some(
                    &json!({"trigger": "api", "by": null, "token": {"id": 5, "name": "ci"}, "via": "api"})
                )
            ),
            "token 'ci' (#5), API"
        );
        assert_eq!(
            describe_trigger(
                Some("kiln"),
                None,
                Some(
                    &json!({"trigger": "retry", "by": "ada@example.com", "byName": "Ada",
                             "token": {"id": 12, "name": "laptop"}, "via": "api"})
                )
            ),
            "Ada (ada@example.com) with token 'laptop' (#12), retry through the API"
        );
        assert_eq!(
            describe_trigger(Some("kiln"), None, Some(&json!({"trigger": "api"}))),
            "the API (who called was not recorded)"
        );
        assert_eq!(
            describe_trigger(Some("kiln"), None, Some(&json!({"trigger": "poll"}))),
            "branch poll (a new commit on the branch)"
        );
        assert_eq!(
            describe_trigger(
                Some("kiln-cli"),
                Some("ci-3"),
                Some(&json!({"ci": {"provider": "github_actions", "actor": "ada"}}))
            ),
            "kiln run on ci-3, github actions (ada)"
        );
        assert_eq!(describe_trigger(None, None, None), "a build script");
    }
}
