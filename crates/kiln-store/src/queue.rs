//! Records of builds Kiln runs: branches of a project, agents, jobs and job logs.

use kiln_core::{JobState, Millis};
use serde_json::Value;

/// A branch Kiln knows of: its priority and whether new commits are built by themselves.
#[derive(Clone, Debug, PartialEq)]
pub struct BranchRecord {
    pub project_id: i64,
    pub name: String,
    /// 1 (highest) … 10; `None` takes the pipeline's or the default.
    pub priority: Option<i64>,
    pub auto_build: bool,
    /// The last commit the poller queued a build for.
    pub last_commit: Option<String>,
    pub created_at: Millis,
}

/// What an agent says of itself when it registers.
#[derive(Clone, Debug, PartialEq)]
pub struct NewAgent {
    pub name: String,
    pub token_id: i64,
    pub labels: Vec<String>,
    pub concurrency: i64,
    pub executor: String,
    pub hostname: Option<String>,
    pub version: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AgentRecord {
    pub id: i64,
    pub name: String,
    pub token_id: Option<i64>,
    pub labels: Vec<String>,
    pub concurrency: i64,
    pub executor: String,
    pub hostname: Option<String>,
    pub version: Option<String>,
    pub registered_at: Millis,
    pub last_seen_at: Millis,
    /// The last heartbeat's resource use (CPU, memory, disk), as sent.
    pub metrics: Option<Value>,
}

/// One job: a step of a build, with where it is in the queue.
#[derive(Clone, Debug, PartialEq)]
pub struct JobRecord {
    pub id: i64,
    pub build_id: i64,
    pub project_id: i64,
    pub project_slug: String,
    /// The project's repository now (what an agent checks out).
    pub repo: Option<String>,
    pub run_id: String,
    pub build_number: i64,
    pub branch: Option<String>,
    pub commit: Option<String>,
    pub step: String,
    pub position: i64,
    pub state: JobState,
    pub priority: i64,
    pub depends_on: Vec<String>,
    pub labels: Vec<String>,
    pub spec: Value,
    /// Claims so far: 1 while the first attempt runs.
    pub attempt: i64,
    pub agent_id: Option<i64>,
    pub agent_name: Option<String>,
    pub lease_expires_at: Option<Millis>,
    pub cancel_requested: bool,
    pub created_at: Millis,
    pub queued_at: Option<Millis>,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
    pub log_size: i64,
    /// Reported by a `kiln run` wrapping a command outside Kiln (its output as the
    /// build's log): never queued, claimed or leased; ended by its reporter, or with
    /// its build when the reporter stopped without saying so.
    pub reported: bool,
    /// Whether the project holds repository credentials (their ciphertext is read only
    /// when it does, so a claim for a project without them costs no extra read).
    pub has_repo_credentials: bool,
}

/// A job to create (see `kiln_core::jobs::plan`).
pub use kiln_core::jobs::JobPlan;

/// How a claim picks jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClaimRules {
    /// The lease the claimed job gets.
    pub lease_ms: i64,
    /// A waiting job gains one priority level per this many milliseconds.
    pub aging_ms: i64,
}

/// How an attempt ended, as the agent (or the lease reaper) reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct JobEnd {
    pub state: JobState,
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
}

/// A running job of one agent, after a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldJob {
    pub job_id: i64,
    /// False when the job is no longer this agent's (lease expired, requeued, ended):
    /// the agent must stop it.
    pub held: bool,
    pub cancel_requested: bool,
}

/// The answer to a log append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogAppend {
    /// Stored (or stored before: a retried chunk); the log's size now.
    Stored { size: i64 },
    /// The chunk does not start where the log ends.
    WrongOffset { size: i64 },
    /// The log would grow past its cap.
    TooLarge { size: i64 },
}

/// How long a claim by the agent a job avoids (`JobPlan::avoid_agent_id`: a rebuild to
/// verify avoids the agent that ran the step in the original build) passes the job over,
/// from when it was queued: another agent that claims meanwhile takes it; after this any
/// agent does, the avoided one included, so a fleet without another eligible agent waits
/// no longer than this.
pub const AVOIDED_AGENT_HOLD_MS: i64 = 10_000;

/// What the scheduler's agent recommendation asks of a claim (see
/// `kiln_core::recommend`). The default asks nothing: the plain claim order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimHints {
    /// Steps (project id, step name) another idle, polling agent is expected to finish
    /// clearly sooner: their jobs queued at or after `hold_queued_after` are passed
    /// over. Older ones never are, which bounds how long a job is held back.
    pub held_steps: Vec<(i64, String)>,
    pub hold_queued_after: Millis,
    /// Steps this agent is recommended for: among jobs of equal aged priority, theirs
    /// come first.
    pub preferred_steps: Vec<(i64, String)>,
}

impl Default for ClaimHints {
    fn default() -> Self {
        Self {
            held_steps: Vec::new(),
            hold_queued_after: Millis(i64::MAX),
            preferred_steps: Vec::new(),
        }
    }
}

impl ClaimHints {
    pub fn is_empty(&self) -> bool {
        self.held_steps.is_empty() && self.preferred_steps.is_empty()
    }
}

/// One successful run of a step by an agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepRun {
    pub project_id: i64,
    pub step: String,
    pub agent_id: i64,
    pub duration_ms: i64,
}

/// A cache key an agent holds: it passed a job of `step` with that key at `used_at`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentCache {
    pub agent_id: i64,
    pub project_id: i64,
    pub step: String,
    pub cache_key: String,
    pub used_at: Millis,
}
