//! The server's settings tree (what `kiln serve` parses flags, env and file into).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};

pub use crate::secret_box::Secret;

#[derive(Clone)]
pub struct ServerConfig {
    /// Default seconds without any event before a running build is marked stale.
    pub heartbeat_timeout_secs: i64,
    /// How often the reaper scans for stale builds.
    pub reaper_interval: Duration,
    /// `KILN_ADMIN_TOKEN`: made an instance-admin token at start-up.
    pub admin_token: Option<Secret>,
    /// Concurrent live streams (SSE and Socket.IO subscriptions) one token may hold.
    pub max_streams_per_token: usize,
    pub clock: Arc<dyn Clock>,
    /// Builds Kiln runs: leases, aging, branch polling, log cap, git mirrors.
    pub scheduler: crate::scheduler::SchedulerConfig,
    /// The passes the periodic background tasks completed (tests wait on them).
    pub passes: Arc<crate::background::Passes>,
    /// Mark session cookies `Secure` (always, not only behind `X-Forwarded-Proto: https`).
    pub secure_cookies: bool,
    /// Notifications of build events: retention, email.
    pub notifications: crate::notify::NotificationConfig,
    /// Outbound webhooks: retry schedule, timeout, secret overlap.
    pub webhooks: crate::webhooks::WebhookConfig,
    /// Let webhooks call private, loopback and link-local addresses
    /// (`--webhooks-allow-private`; off by default, on in tests).
    pub webhooks_allow_private: bool,
    /// Connection timeouts and caps.
    pub connections: crate::serve::ConnectionConfig,
    /// Password hashing: slots at once, and how long a check waits for one.
    pub passwords: crate::accounts::PasswordConfig,
    /// Encrypts project secrets and repository credentials at rest
    /// (`--secret-key-file`); every replica of one database needs the same key.
    pub secret_key: crate::secret_box::SecretKey,
    /// `--metrics-token`: the bearer token `GET /metrics` requires; without one, only
    /// loopback clients may scrape.
    pub metrics_token: Option<Secret>,
    /// `--otlp-endpoint`: export every ended build as an OpenTelemetry trace.
    pub otlp: Option<crate::telemetry::otlp::OtlpConfig>,
    /// Where build artifacts are stored, with their limits; `None` refuses artifact
    /// uploads (503) — `kiln serve` always sets it (the data dir by default).
    pub artifacts: Option<ArtifactConfig>,
    /// `--sites-listen`: published sites served on a listener of their own (another
    /// origin than the dashboard's); `None` serves no sites.
    pub sites: Option<crate::deploy::SitesConfig>,
    /// How often the analytics keeper keeps the recent closed days of every project
    /// (`analytics_keeper`); it also runs at start-up.
    pub analytics_keep_interval: Duration,
}

/// Artifact storage: the blob store, the staging area uploads arrive in, the limits.
#[derive(Clone, Debug)]
pub struct ArtifactConfig {
    pub blobs: Arc<dyn crate::blobs::BlobStore>,
    pub staging: Arc<crate::blobs::staging::Staging>,
    /// `--artifact-max-file-bytes`: the largest one file may be.
    pub max_file_bytes: u64,
    /// `--artifact-max-build-bytes`: the most one build's files may hold together.
    pub max_build_bytes: u64,
    /// The most files one build's manifest may name (10,000; tests lower it).
    pub max_files_per_build: usize,
    /// Wakes the digester (MD5 and SHA-512 of new blobs) after a publish.
    pub digester: Arc<tokio::sync::Notify>,
    /// How often artifact retention runs (hourly; tests shorten it).
    pub retention_interval: Duration,
    /// Held shared while an upload links or publishes a blob and its manifest row, and
    /// exclusively while retention deletes blobs no manifest names: in one process, a
    /// blob is never deleted under an upload that is about to name it.
    pub blob_gate: Arc<tokio::sync::RwLock<()>>,
    /// Uploads and downloads in flight; the digester waits while there are any.
    pub transfers: Arc<crate::blobs::transfers::Transfers>,
}

impl ArtifactConfig {
    /// Default limits: 2 GiB per file, 10 GiB per build.
    pub const DEFAULT_MAX_FILE_BYTES: u64 = 2 << 30;
    pub const DEFAULT_MAX_BUILD_BYTES: u64 = 10 << 30;
    /// Retention runs hourly.
    pub const DEFAULT_RETENTION_INTERVAL: Duration = Duration::from_secs(3600);

    /// Blobs on local disk under `dir/blobs`, uploads staged in `dir/uploads` (the same
    /// file system, so publishing is a rename).
    pub fn local(dir: &std::path::Path) -> std::io::Result<Self> {
        Ok(Self {
            blobs: Arc::new(crate::blobs::local::LocalBlobStore::open(
                dir.join("blobs"),
            )?),
            staging: Arc::new(crate::blobs::staging::Staging::open(dir.join("uploads"))?),
            max_file_bytes: Self::DEFAULT_MAX_FILE_BYTES,
            max_build_bytes: Self::DEFAULT_MAX_BUILD_BYTES,
            max_files_per_build: kiln_core::artifacts::MAX_FILES_PER_BUILD,
            digester: Arc::default(),
            retention_interval: Self::DEFAULT_RETENTION_INTERVAL,
            blob_gate: Arc::default(),
            transfers: Arc::default(),
        })
    }
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("heartbeat_timeout_secs", &self.heartbeat_timeout_secs)
            .field("reaper_interval", &self.reaper_interval)
            .field("admin_token", &self.admin_token)
            .field("max_streams_per_token", &self.max_streams_per_token)
            .field("scheduler", &self.scheduler)
            .field("notifications", &self.notifications)
            .field("webhooks", &self.webhooks)
            .field("webhooks_allow_private", &self.webhooks_allow_private)
            .field("connections", &self.connections)
            .field("passwords", &self.passwords)
            .field("metrics_token", &self.metrics_token)
            .field("otlp", &self.otlp)
            .field("artifacts", &self.artifacts)
            .field("sites", &self.sites)
            .field("analytics_keep_interval", &self.analytics_keep_interval)
            .finish_non_exhaustive()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            heartbeat_timeout_secs: 90,
            reaper_interval: Duration::from_secs(5),
            admin_token: None,
            max_streams_per_token: 500,
            clock: Arc::new(SystemClock),
            scheduler: crate::scheduler::SchedulerConfig::default(),
            passes: Arc::default(),
            secure_cookies: false,
            notifications: crate::notify::NotificationConfig::default(),
            webhooks: crate::webhooks::WebhookConfig::default(),
            webhooks_allow_private: false,
            connections: crate::serve::ConnectionConfig::default(),
            passwords: crate::accounts::PasswordConfig::default(),
            secret_key: crate::secret_box::SecretKey::generate()
                .expect("the operating system provides randomness"),
            metrics_token: None,
            otlp: None,
            artifacts: None,
            sites: None,
            analytics_keep_interval: Duration::from_secs(3600),
        }
    }
}
