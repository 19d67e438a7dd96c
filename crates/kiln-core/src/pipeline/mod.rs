//! The pipeline file (`.kiln.yml`): parsing and validation, branch filters, the step graph,
//! and the pipeline inferred for a repository that has no file.
//!
//! Everything here is pure: the caller reads the file (or lists the repository) and hands
//! over text. A [`Pipeline`] exists only once the whole file passed validation, so the
//! queue and the agents never see a step with a dangling dependency, a cycle, an unknown
//! key or an out-of-range value. Every refusal is a [`PipelineError`] carrying the line,
//! the field path (`steps[2].depends_on`) and a message that says what to change.
//!
//! The format, its defaults and limits are documented for users in `docs/pipeline.md`.

mod branch;
mod dag;
mod duration;
mod infer;
pub(crate) mod parse;
mod render;
mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::ids::{AgentLabel, StageName};
use crate::limits;

pub use branch::BranchPattern;
pub use dag::Dag;
pub use duration::{format_duration, parse_duration};
pub use infer::{RepoListing, infer};

/// The pipeline file's name, at the repository's root.
pub const PIPELINE_FILE: &str = ".kiln.yml";

/// A validated pipeline: what a build runs.
///
/// Built only by [`Pipeline::parse`] or [`infer`]; both guarantee that step names are
/// unique, every `depends_on` names a step of this pipeline and the dependencies form no
/// cycle.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Pipeline {
    /// The build's priority when the trigger names none: 1 (highest) to 10.
    pub priority: Option<Priority>,
    /// Variables set for every step; a step's own `env` overrides them (see
    /// [`Pipeline::env_for`]).
    pub env: BTreeMap<String, String>,
    /// The top-level `timeout`: the default for steps that set none. Already applied to
    /// each [`Step::timeout`].
    pub timeout: Option<Duration>,
    /// The steps, in file order.
    pub steps: Vec<Step>,
}

/// One step: commands run in order in one workspace on one agent.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Step {
    /// Unique within the pipeline; also the stage name in the build's events.
    pub name: StageName,
    /// Shell commands, run in order; the step fails at the first that fails.
    pub run: Vec<String>,
    /// Steps that must have succeeded before this one starts, in file order as written.
    pub depends_on: Vec<StageName>,
    /// The step's own variables (without the pipeline's; see [`Pipeline::env_for`]).
    pub env: BTreeMap<String, String>,
    /// The effective timeout: the step's own, else the pipeline's, else 60 minutes.
    pub timeout: Duration,
    /// The dependency cache restored before and saved after the step.
    pub cache: Option<CacheSpec>,
    /// Branch patterns; empty means every branch. See [`Step::runs_on_branch`].
    pub branches: Vec<BranchPattern>,
    /// Labels an agent must all offer to run this step; empty means any agent.
    pub agents: Vec<AgentLabel>,
    /// Container image for the container executor.
    pub image: Option<String>,
    /// Whether the step may use the network under the `sandbox` and `container`
    /// executors (off unless the file says `network: true`; the `process` executor does
    /// not isolate).
    pub network: bool,
    /// When a failed attempt is retried automatically.
    pub retry: Option<AutomaticRetry>,
    /// Globs, relative to the workspace, of files uploaded after the step succeeds.
    pub artifacts: Vec<String>,
    /// Whether the step fails when its `artifacts:` globs match no file (otherwise the
    /// agent says so in the log and the step succeeds).
    pub artifacts_required: bool,
    /// Whether the artifacts of the steps this one depends on (transitively) are
    /// downloaded into its workspace before it runs (`needs_artifacts: false` opts out).
    pub needs_artifacts: bool,
    /// Globs, relative to the workspace, of JUnit XML reports the agent uploads as the
    /// build's test results after the step ran (passed or failed).
    pub test_reports: Vec<String>,
    /// Project secrets the step receives as environment variables (`secrets:`).
    pub secrets: Vec<SecretUse>,
    /// What the step deploys when the build succeeds (`deploy:`).
    pub deploy: Option<crate::deployments::DeploySpec>,
}

/// A project secret a step asks for, optionally only on some branches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretUse {
    pub name: crate::SecretName,
    /// Branch patterns; empty means every branch the step runs on.
    pub branches: Vec<BranchPattern>,
}

impl SecretUse {
    /// Whether the secret is given to the step on `branch`.
    pub fn given_on(&self, branch: &str) -> bool {
        branch::runs_on(&self.branches, branch)
    }
}

/// A step's dependency cache: restored from a key made of the hash of `key_files`'
/// contents and the step name; saved after a successful run on a miss.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheSpec {
    /// Files (usually lockfiles), relative to the workspace, whose contents form the key.
    pub key_files: Vec<String>,
    /// Directories or files, relative to the workspace, that are restored and saved.
    pub paths: Vec<String>,
}

/// A build priority: 1 is the highest, 10 the lowest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Priority(u8);

impl Priority {
    pub const HIGHEST: Priority = Priority(1);
    pub const LOWEST: Priority = Priority(10);
    /// Used when neither the trigger, the branch settings nor the file name one.
    pub const DEFAULT: Priority = Priority(5);

    /// `None` outside 1..=10.
    pub fn new(value: i64) -> Option<Self> {
        u8::try_from(value)
            .ok()
            .filter(|value| (1..=10).contains(value))
            .map(Priority)
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// `retry: {automatic: {on: [...], limit: N}}`: retry a failed attempt whose failure
/// matches one of `on`, at most `limit` times.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AutomaticRetry {
    pub on: Vec<RetryOn>,
    /// 0..=10; 2 when the file names none.
    pub limit: u32,
}

/// The automatic retry limit when `limit` is omitted.
pub const DEFAULT_RETRY_LIMIT: u32 = 2;

/// One failure that `retry.automatic.on` may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RetryOn {
    /// `agent_lost`: the agent's lease expired mid-step (killed, network cut).
    AgentLost,
    /// `exit_status:N`: a command exited with status N.
    ExitStatus(u8),
    /// `exit_status:*`: a command exited with any non-zero status.
    AnyExitStatus,
}

impl fmt::Display for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AgentLost => f.write_str("agent_lost"),
            Self::ExitStatus(status) => write!(f, "exit_status:{status}"),
            Self::AnyExitStatus => f.write_str("exit_status:*"),
        }
    }
}

/// Why an attempt of a step failed, as the queue learns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StepFailure {
    /// The agent's lease expired.
    AgentLost,
    /// A command exited non-zero (a process killed by a signal is reported as 128 + N).
    ExitStatus(i32),
    /// The step ran past its timeout; never retried automatically.
    TimedOut,
    /// The build was cancelled; never retried.
    Cancelled,
}

impl AutomaticRetry {
    /// Whether an attempt that failed with `failure` is retried, given how many automatic
    /// retries of this step already happened.
    pub fn allows(&self, failure: StepFailure, retries_so_far: u32) -> bool {
        if retries_so_far >= self.limit {
            return false;
        }
        self.on.iter().any(|condition| match (condition, failure) {
            (RetryOn::AgentLost, StepFailure::AgentLost) => true,
            (RetryOn::ExitStatus(wanted), StepFailure::ExitStatus(status)) => {
                i32::from(*wanted) == status
            }
            (RetryOn::AnyExitStatus, StepFailure::ExitStatus(status)) => status != 0,
            _ => false,
        })
    }
}

/// Why a pipeline file (or an inference) was refused.
///
/// Displayed as `line 12: steps[2].depends_on: <message>`; the line is 1-based and absent
/// only when the problem has no single place (an empty file, an inference failure).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct PipelineError {
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// The path of the offending value, such as `steps[2].depends_on[0]`; empty for a
    /// problem with the file as a whole (invalid YAML).
    pub field: String,
    /// What is wrong and what to do about it.
    pub message: String,
}

impl fmt::Display for PipelineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl Pipeline {
    /// Parses and validates the text of a `.kiln.yml`.
    pub fn parse(text: &str) -> Result<Pipeline, PipelineError> {
        parse::parse_pipeline(text)
    }

    /// Renders the pipeline as a `.kiln.yml` that parses back to an equal pipeline (used
    /// to show users what was inferred, so they can commit it and edit it).
    pub fn to_yaml(&self) -> String {
        render::render(self)
    }

    /// The step with this name.
    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|step| step.name.as_str() == name)
    }

    /// The steps that run on `branch`, in file order.
    pub fn steps_for_branch(&self, branch: &str) -> Vec<&Step> {
        self.steps
            .iter()
            .filter(|step| step.runs_on_branch(branch))
            .collect()
    }

    /// The dependency graph of every step.
    pub fn dag(&self) -> Dag {
        Dag::new(&self.steps, |_| true)
    }

    /// The dependency graph of the steps that run on `branch`. A dependency on a step that
    /// does not run on this branch is replaced by that step's own dependencies
    /// (transitively), so the order between the steps that do run is kept.
    pub fn dag_for_branch(&self, branch: &str) -> Dag {
        Dag::new(&self.steps, |step| step.runs_on_branch(branch))
    }

    /// The environment of one step: the pipeline's `env` overlaid with the step's.
    pub fn env_for(&self, step: &Step) -> BTreeMap<String, String> {
        let mut env = self.env.clone();
        env.extend(
            step.env
                .iter()
                .map(|(name, value)| (name.clone(), value.clone())),
        );
        env
    }

    /// The priority a build of this pipeline gets when the trigger names none.
    pub fn priority_or_default(&self) -> Priority {
        self.priority.unwrap_or(Priority::DEFAULT)
    }
}

impl Step {
    /// A step without `branches` runs on every branch. Otherwise it runs when the branch
    /// matches at least one plain pattern (or there are only `!` patterns) and matches no
    /// `!` pattern.
    pub fn runs_on_branch(&self, branch: &str) -> bool {
        branch::runs_on(&self.branches, branch)
    }

    /// The default step timeout, when neither the step nor the pipeline sets one.
    pub fn default_timeout() -> Duration {
        Duration::from_secs(limits::DEFAULT_STEP_TIMEOUT_SECS)
    }
}

impl Pipeline {
    pub(crate) fn new_unchecked(
        priority: Option<Priority>,
        env: BTreeMap<String, String>,
        timeout: Option<Duration>,
        steps: Vec<Step>,
    ) -> Self {
        Pipeline {
            priority,
            env,
            timeout,
            steps,
        }
    }
}

impl Step {
    /// A step with only a name and commands; every other field at its default.
    pub(crate) fn with_commands(name: StageName, run: Vec<String>) -> Self {
        Step {
            name,
            run,
            depends_on: Vec::new(),
            env: BTreeMap::new(),
            timeout: Step::default_timeout(),
            cache: None,
            branches: Vec::new(),
            agents: Vec::new(),
            image: None,
            network: false,
            retry: None,
            artifacts: Vec::new(),
            artifacts_required: false,
            needs_artifacts: true,
            test_reports: Vec::new(),
            secrets: Vec::new(),
            deploy: None,
        }
    }
}

impl CacheSpec {
    pub(crate) fn new(key_files: Vec<String>, paths: Vec<String>) -> Self {
        CacheSpec { key_files, paths }
    }
}

impl AutomaticRetry {
    pub(crate) fn new(on: Vec<RetryOn>, limit: u32) -> Self {
        AutomaticRetry { on, limit }
    }
}
