//! The build state machine: how each event changes a build and its stages.
//!
//! `BuildState::apply` is the single place that decides whether an event is accepted,
//! ignored or rejected. The store calls it inside the ingest transaction with the row it
//! loaded, then persists the result, so both engines share one definition of the rules.

use std::collections::BTreeMap;
use std::fmt;

use crate::event::{CoreEventType, NewEvent};
use crate::ids::{RunId, StageName};
use crate::time::Millis;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BuildStatus {
    Queued,
    Running,
    Success,
    Failed,
    Cancelled,
    Stale,
}

impl BuildStatus {
    pub const ALL: [BuildStatus; 6] = [
        Self::Queued,
        Self::Running,
        Self::Success,
        Self::Failed,
        Self::Cancelled,
        Self::Stale,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Success => "success",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Stale => "stale",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == name)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Success | Self::Failed | Self::Cancelled | Self::Stale
        )
    }
}

impl fmt::Display for BuildStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StageStatus {
    Running,
    Success,
    Failed,
    Cancelled,
}

impl StageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Success => "success",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Running, Self::Success, Self::Failed, Self::Cancelled]
            .into_iter()
            .find(|status| status.as_str() == name)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct StageState {
    pub name: StageName,
    /// Order of first appearance within the build, from 0.
    pub position: i64,
    pub status: StageStatus,
    pub started_at: Millis,
    pub ended_at: Option<Millis>,
    pub duration_ms: Option<i64>,
    pub message: Option<String>,
    /// Set when the stage changed during the current `apply` batch; the store writes
    /// only dirty stages.
    pub dirty: bool,
}

/// Everything Kiln derives about one build from its events.
#[derive(Clone, Debug, PartialEq)]
pub struct BuildState {
    pub run_id: RunId,
    pub status: BuildStatus,
    pub progress: Option<f64>,
    pub current_stage: Option<StageName>,
    pub env: Option<String>,
    pub origin: Option<String>,
    pub command: Option<String>,
    pub host: Option<String>,
    pub pid: Option<i64>,
    pub repo: Option<String>,
    pub branch: Option<String>,
    pub commit: Option<String>,
    /// The last failure message (build or stage).
    pub message: Option<String>,
    pub created_at: Millis,
    pub started_at: Millis,
    pub ended_at: Option<Millis>,
    pub duration_ms: Option<i64>,
    pub last_event_at: Millis,
    pub heartbeat_timeout_secs: Option<i64>,
    /// Number of stored events; the next event gets `last_seq + 1`.
    pub last_seq: i64,
    pub stages: Vec<StageState>,
    /// Custom metrics: the last value reported of each name (at most
    /// `limits::MAX_METRICS_PER_BUILD` names).
    pub metrics: BTreeMap<String, f64>,
}

/// What `apply` did with an accepted event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Store the event; the build changed.
    Stored,
    /// Acknowledge without storing (a heartbeat after the build ended, or a stale check
    /// that found the build alive).
    Ignored,
}

/// Why an event was refused. The whole request that carried it is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error(
        "build {run_id} already ended with status '{status}'; {event} is not accepted after the end. Start a new build with a fresh runId"
    )]
    Terminal {
        run_id: RunId,
        status: BuildStatus,
        event: String,
    },
}

impl BuildState {
    /// A build created by its first event.
    pub fn new(run_id: RunId, now: Millis) -> Self {
        Self {
            run_id,
            status: BuildStatus::Running,
            progress: None,
            current_stage: None,
            env: None,
            origin: None,
            command: None,
            host: None,
            pid: None,
            repo: None,
            branch: None,
            commit: None,
            message: None,
            created_at: now,
            started_at: now,
            ended_at: None,
            duration_ms: None,
            last_event_at: now,
            heartbeat_timeout_secs: None,
            last_seq: 0,
            stages: Vec::new(),
            metrics: BTreeMap::new(),
        }
    }

    /// Keeps the event's metrics: a known name takes the new value, a new name is added
    /// while the build has fewer than `MAX_METRICS_PER_BUILD`.
    fn merge_metrics(&mut self, event: &NewEvent) {
        for (name, value) in event.metrics.iter().flatten() {
            if let Some(kept) = self.metrics.get_mut(name) {
                *kept = *value;
            } else if self.metrics.len() < crate::limits::MAX_METRICS_PER_BUILD {
                self.metrics.insert(name.clone(), *value);
            }
        }
    }

    /// True when a running build has had no event for its heartbeat timeout.
    pub fn is_stale(&self, now: Millis, default_timeout_secs: i64) -> bool {
        let timeout_ms = self
            .heartbeat_timeout_secs
            .unwrap_or(default_timeout_secs)
            .saturating_mul(1000);
        !self.status.is_terminal() && now.saturating_sub(self.last_event_at) >= timeout_ms
    }

    /// Applies one event at server time `now`.
    pub fn apply(&mut self, event: &NewEvent, now: Millis) -> Result<Applied, Rejection> {
        let core = event.event_type.core();
        if self.status.is_terminal() {
            return match core {
                Some(CoreEventType::Heartbeat) => Ok(Applied::Ignored),
                // Custom events annotate a finished build (deploys, uploads, metrics
                // measured afterwards); they do not change its status.
                None => {
                    self.merge_metrics(event);
                    self.record(now);
                    Ok(Applied::Stored)
                }
                Some(_) => Err(Rejection::Terminal {
                    run_id: self.run_id.clone(),
                    status: self.status,
                    event: event.event_type.to_string(),
                }),
            };
        }

        self.merge_descriptive_fields(event);
        self.merge_metrics(event);
        if let Some(progress) = event.progress {
            self.progress = Some(progress);
        }
        match core {
            None | Some(CoreEventType::Heartbeat | CoreEventType::BuildProgress) => {}
            Some(CoreEventType::BuildQueued) => {
                // Only a build's first event queues it; later it changes nothing.
                if self.last_seq == 0 {
                    self.status = BuildStatus::Queued;
                }
            }
            Some(CoreEventType::BuildStarted) => {
                if self.status == BuildStatus::Queued {
                    self.status = BuildStatus::Running;
                    self.started_at = now;
                }
            }
            Some(CoreEventType::StageStarted) => {
                if self.status == BuildStatus::Queued {
                    self.status = BuildStatus::Running;
                    self.started_at = now;
                }
                if let Some(name) = &event.stage {
                    self.start_stage(name, now);
                }
            }
            Some(CoreEventType::StageCompleted) => {
                if let Some(name) = &event.stage {
                    self.end_stage(name, StageStatus::Success, event, now);
                }
            }
            Some(CoreEventType::StageFailed) => {
                if let Some(name) = &event.stage {
                    self.end_stage(name, StageStatus::Failed, event, now);
                    if event.message.is_some() {
                        self.message.clone_from(&event.message);
                    }
                }
            }
            Some(CoreEventType::BuildCompleted) => {
                self.progress = Some(100.0);
                self.finish(BuildStatus::Success, StageStatus::Success, event, now);
            }
            Some(CoreEventType::BuildFailed) => {
                let status = if event.data_reason() == Some("stale") {
                    BuildStatus::Stale
                } else {
                    BuildStatus::Failed
                };
                if event.message.is_some() {
                    self.message.clone_from(&event.message);
                }
                self.finish(status, StageStatus::Failed, event, now);
            }
            Some(CoreEventType::BuildCancelled) => {
                self.finish(BuildStatus::Cancelled, StageStatus::Cancelled, event, now);
            }
        }
        self.record(now);
        Ok(Applied::Stored)
    }

    fn record(&mut self, now: Millis) {
        self.last_seq += 1;
        self.last_event_at = self.last_event_at.max(now);
    }

    fn merge_descriptive_fields(&mut self, event: &NewEvent) {
        let fields = [
            (&mut self.env, &event.env),
            (&mut self.origin, &event.origin),
            (&mut self.command, &event.command),
            (&mut self.host, &event.host),
            (&mut self.repo, &event.repo),
            (&mut self.branch, &event.branch),
            (&mut self.commit, &event.commit),
        ];
        for (target, source) in fields {
            if source.is_some() {
                target.clone_from(source);
            }
        }
        if event.pid.is_some() {
            self.pid = event.pid;
        }
        if event.heartbeat_timeout_secs.is_some() {
            self.heartbeat_timeout_secs = event.heartbeat_timeout_secs;
        }
    }

    fn stage_index(&mut self, name: &StageName, now: Millis) -> usize {
        if let Some(index) = self.stages.iter().position(|stage| &stage.name == name) {
            return index;
        }
        let position = self.stages.len() as i64;
        self.stages.push(StageState {
            name: name.clone(),
            position,
            status: StageStatus::Running,
            started_at: now,
            ended_at: None,
            duration_ms: None,
            message: None,
            dirty: true,
        });
        self.stages.len() - 1
    }

    fn start_stage(&mut self, name: &StageName, now: Millis) {
        let index = self.stage_index(name, now);
        let stage = &mut self.stages[index];
        // A stage started again (a retried step) restarts its clock.
        stage.status = StageStatus::Running;
        stage.started_at = now;
        stage.ended_at = None;
        stage.duration_ms = None;
        stage.message = None;
        stage.dirty = true;
        self.current_stage = Some(name.clone());
    }

    fn end_stage(&mut self, name: &StageName, status: StageStatus, event: &NewEvent, now: Millis) {
        let index = self.stage_index(name, now);
        let stage = &mut self.stages[index];
        let duration = event
            .duration_ms
            .unwrap_or_else(|| now.saturating_sub(stage.started_at).max(0));
        if stage.ended_at.is_none() && stage.started_at == now && event.duration_ms.is_some() {
            // Reported only at its end: place its start where its duration says.
            stage.started_at = now.plus_ms(-duration);
        }
        stage.status = status;
        stage.ended_at = Some(now);
        stage.duration_ms = Some(duration);
        if event.message.is_some() {
            stage.message.clone_from(&event.message);
        }
        stage.dirty = true;
        self.current_stage = self
            .stages
            .iter()
            .rev()
            .find(|stage| stage.status == StageStatus::Running)
            .map(|stage| stage.name.clone());
    }

    fn finish(
        &mut self,
        status: BuildStatus,
        open_stage_status: StageStatus,
        event: &NewEvent,
        now: Millis,
    ) {
        for stage in self
            .stages
            .iter_mut()
            .filter(|stage| stage.status == StageStatus::Running)
        {
            stage.status = open_stage_status;
            stage.ended_at = Some(now);
            stage.duration_ms = Some(now.saturating_sub(stage.started_at).max(0));
            stage.dirty = true;
        }
        self.status = status;
        self.current_stage = None;
        self.ended_at = Some(now);
        self.duration_ms = Some(
            event
                .duration_ms
                .unwrap_or_else(|| now.saturating_sub(self.started_at).max(0)),
        );
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::event::EventType;

    fn event(kind: &str, stage: Option<&str>) -> NewEvent {
        let mut event = NewEvent::new(
            RunId::parse("runId", "r1").unwrap(),
            EventType::parse("event", kind).unwrap(),
        );
        event.stage = stage.map(|s| StageName::parse("stage", s).unwrap());
        event
    }

    #[test]
    fn a_seed_build_runs_to_success() {
        let mut build = BuildState::new(RunId::parse("runId", "r1").unwrap(), Millis(1000));
        build
            .apply(&event("build_started", None), Millis(1000))
            .unwrap();
        build
            .apply(&event("stage_started", Some("Clean")), Millis(2000))
            .unwrap();
        assert_eq!(build.current_stage.as_ref().unwrap().as_str(), "Clean");
        build
            .apply(&event("stage_completed", Some("Clean")), Millis(3500))
            .unwrap();
        assert_eq!(build.stages[0].duration_ms, Some(1500));
        assert_eq!(build.current_stage, None);
        let mut progress = event("build_progress", None);
        progress.progress = Some(40.0);
        build.apply(&progress, Millis(4000)).unwrap();
        assert_eq!(build.progress, Some(40.0));
        build
            .apply(&event("stage_started", Some("Deploy")), Millis(5000))
            .unwrap();
        build
            .apply(&event("build_completed", None), Millis(9000))
            .unwrap();
        assert_eq!(build.status, BuildStatus::Success);
        assert_eq!(build.progress, Some(100.0));
        assert_eq!(build.duration_ms, Some(8000));
        assert_eq!(build.stages[1].status, StageStatus::Success);
        assert_eq!(build.last_seq, 6);
    }

    #[test]
    fn terminal_builds_refuse_lifecycle_and_ignore_heartbeats() {
        let mut build = BuildState::new(RunId::parse("runId", "r1").unwrap(), Millis(0));
        let mut failed = event("build_failed", None);
        failed.message = Some("tests failed".into());
        build
            .apply(&event("stage_started", Some("Test")), Millis(10))
            .unwrap();
        build.apply(&failed, Millis(20)).unwrap();
        assert_eq!(build.status, BuildStatus::Failed);
        assert_eq!(build.stages[0].status, StageStatus::Failed);
        assert_eq!(build.message.as_deref(), Some("tests failed"));
        assert_eq!(
            build.apply(&event("heartbeat", None), Millis(30)),
            Ok(Applied::Ignored)
        );
        let rejection = build
            .apply(&event("stage_started", Some("X")), Millis(30))
            .unwrap_err();
        assert!(
            rejection
                .to_string()
                .contains("already ended with status 'failed'")
        );
        assert_eq!(
            build.apply(&event("deploy_completed", None), Millis(40)),
            Ok(Applied::Stored)
        );
        assert_eq!(build.status, BuildStatus::Failed);
    }

    #[test]
    fn stale_detection_and_stale_failure() {
        let mut build = BuildState::new(RunId::parse("runId", "r1").unwrap(), Millis(0));
        assert!(!build.is_stale(Millis(89_999), 90));
        assert!(build.is_stale(Millis(90_000), 90));
        let mut override_timeout = event("heartbeat", None);
        override_timeout.heartbeat_timeout_secs = Some(10);
        build.apply(&override_timeout, Millis(1000)).unwrap();
        assert!(build.is_stale(Millis(11_000), 90));
        let mut stale = event("build_failed", None);
        stale.data = Some(json!({"reason": "stale"}));
        build.apply(&stale, Millis(11_000)).unwrap();
        assert_eq!(build.status, BuildStatus::Stale);
        assert!(!build.is_stale(Millis(1_000_000), 90));
    }

    #[test]
    fn a_stage_reported_only_at_its_end_gets_its_start_from_the_duration() {
        let mut build = BuildState::new(RunId::parse("runId", "r1").unwrap(), Millis(0));
        let mut done = event("stage_completed", Some("Lint"));
        done.duration_ms = Some(700);
        build.apply(&done, Millis(5000)).unwrap();
        assert_eq!(build.stages[0].started_at, Millis(4300));
        assert_eq!(build.stages[0].duration_ms, Some(700));
    }
}
