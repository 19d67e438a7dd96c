//! Every size limit that ingest and the API enforce, in one place so docs and code agree.

/// Largest request body accepted by any JSON route.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Most events in one ingest request (a batch is one transaction).
pub const MAX_BATCH_EVENTS: usize = 1000;
/// Longest run id.
pub const MAX_RUN_ID_LEN: usize = 128;
/// Longest event type name (custom types included).
pub const MAX_EVENT_TYPE_LEN: usize = 50;
/// Longest client event id (`eventId`).
pub const MAX_CLIENT_EVENT_ID_LEN: usize = 128;
/// Longest stage name.
pub const MAX_STAGE_LEN: usize = 200;
/// Longest `command`.
pub const MAX_COMMAND_LEN: usize = 4096;
/// Longest `message`.
pub const MAX_MESSAGE_LEN: usize = 16 * 1024;
/// Longest of the short descriptive fields: env, origin, host, repo, branch.
pub const MAX_SHORT_FIELD_LEN: usize = 255;
/// Longest `commit` (a full SHA-256 object name is 64 hex digits).
pub const MAX_COMMIT_LEN: usize = 64;
/// Largest `data` object, measured as compact JSON.
pub const MAX_DATA_BYTES: usize = 64 * 1024;
/// Custom metrics one event may carry (`metrics: {"bundle_kb": 412}`).
pub const MAX_METRICS_PER_EVENT: usize = 50;
/// Metric names a build keeps; further new names are ignored (their values stay in the
/// stored events).
pub const MAX_METRICS_PER_BUILD: usize = 200;
/// A metric name: 1 to this many characters of `A-Z a-z 0-9 _ . : -`.
pub const MAX_METRIC_NAME_LEN: usize = 100;
/// The largest magnitude a metric value may have.
pub const MAX_METRIC_VALUE: f64 = 1e15;
/// Largest `durationMs` (about 31 years), to keep arithmetic far from overflow.
pub const MAX_DURATION_MS: i64 = 1_000_000_000_000;
/// Shortest and longest per-build heartbeat timeout override, in seconds.
pub const MIN_HEARTBEAT_TIMEOUT_SECS: i64 = 5;
pub const MAX_HEARTBEAT_TIMEOUT_SECS: i64 = 7 * 24 * 3600;
/// Project slug length.
pub const MAX_SLUG_LEN: usize = 64;
/// Project and token display names.
pub const MAX_NAME_LEN: usize = 200;
/// Largest page of events or builds a read may ask for.
pub const MAX_PAGE_LIMIT: i64 = 1000;
/// Page size when a read names none.
pub const DEFAULT_EVENT_PAGE_LIMIT: i64 = 500;
pub const DEFAULT_BUILD_PAGE_LIMIT: i64 = 50;

// The pipeline file (`.kiln.yml`); see docs/pipeline.md.

/// Largest pipeline file.
pub const MAX_PIPELINE_FILE_BYTES: usize = 256 * 1024;
/// Most steps in one pipeline.
pub const MAX_PIPELINE_STEPS: usize = 200;
/// Most commands in one step's `run`.
pub const MAX_STEP_COMMANDS: usize = 100;
/// Longest single command (a block script counts as one command).
pub const MAX_STEP_COMMAND_BYTES: usize = 64 * 1024;
/// Most variables in one `env` mapping (top-level or one step's).
pub const MAX_ENV_VARS: usize = 100;
/// Longest environment variable name.
pub const MAX_ENV_NAME_LEN: usize = 128;
/// Longest environment variable value.
pub const MAX_ENV_VALUE_BYTES: usize = 32 * 1024;
/// Most entries in one of a step's short lists: `branches`, `agents`, `artifacts`,
/// `cache.key_files`, `cache.paths`, `retry.automatic.on`.
pub const MAX_STEP_LIST_ENTRIES: usize = 50;
/// Longest path, glob or branch pattern.
pub const MAX_PIPELINE_PATH_LEN: usize = 1024;
/// Longest agent label.
pub const MAX_AGENT_LABEL_LEN: usize = 64;
/// Longest container image reference.
pub const MAX_IMAGE_LEN: usize = 255;
/// Shortest, longest and default step timeout, in seconds.
pub const MIN_STEP_TIMEOUT_SECS: u64 = 1;
pub const MAX_STEP_TIMEOUT_SECS: u64 = 72 * 3600;
pub const DEFAULT_STEP_TIMEOUT_SECS: u64 = 60 * 60;
/// Most automatic retries of one step.
pub const MAX_RETRY_LIMIT: u32 = 10;
/// Largest `package.json` that pipeline inference reads.
pub const MAX_PACKAGE_JSON_BYTES: usize = 1024 * 1024;

/// A job's log is capped at this size by default; past it the agent writes one marker
/// line and discards the rest (the server refuses more than the cap plus the marker).
pub const DEFAULT_JOB_LOG_CAP_BYTES: u64 = 100 * 1024 * 1024;
/// One log chunk sent by an agent.
pub const MAX_LOG_CHUNK_BYTES: usize = 1024 * 1024;
/// The checkout of a job's commit fails with reason `timeout` past this.
pub const DEFAULT_CHECKOUT_TIMEOUT_SECS: u64 = 5 * 60;
/// Most time one git command the server runs for a trigger or a branch poll may take
/// (`ls-remote`, a shallow fetch of one commit).
pub const DEFAULT_SERVER_GIT_TIMEOUT_SECS: u64 = 30;
/// A claimed job's lease; an agent renews it by heartbeats.
pub const DEFAULT_JOB_LEASE_SECS: u64 = 60;
/// How long a claim waits for work before answering "nothing" (long poll).
pub const MAX_CLAIM_WAIT_SECS: u64 = 30;
/// A waiting job gains one priority level per this much waiting (aging), so low
/// priorities cannot starve.
pub const DEFAULT_PRIORITY_AGING_SECS: u64 = 5 * 60;
/// Agent names and hostnames.
pub const MAX_AGENT_NAME_LEN: usize = 128;
/// Labels per agent.
pub const MAX_AGENT_LABELS: usize = 50;
/// Jobs one agent may run at once.
pub const MAX_AGENT_CONCURRENCY: i64 = 64;
/// Git repository URLs and branch names.
pub const MAX_REPO_URL_LEN: usize = 2048;
pub const MAX_BRANCH_LEN: usize = 255;
/// Active personal tokens one user may hold.
pub const MAX_PERSONAL_TOKENS_PER_USER: usize = 20;
/// A project secret's value.
pub const MAX_SECRET_VALUE_BYTES: usize = 64 * 1024;
/// Secrets one project may hold.
pub const MAX_SECRETS_PER_PROJECT: usize = 200;
