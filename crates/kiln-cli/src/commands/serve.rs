//! `kiln serve` and `kiln up`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use kiln_server::clock::{Clock, SystemClock};
use kiln_server::{Secret, ServerConfig};

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "KILN_LISTEN", default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// Directory for the SQLite database (kiln.db) when no --database-url is given.
    #[arg(long, env = "KILN_DATA_DIR", default_value = "./kiln-data")]
    pub data_dir: PathBuf,
    /// Database URL: sqlite://PATH or postgres://USER@HOST:PORT/DB.
    #[arg(long, env = "KILN_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Seconds without any event after which a running build is marked stale.
    #[arg(long, env = "KILN_HEARTBEAT_TIMEOUT", default_value_t = 90, value_parser = clap::value_parser!(i64).range(5..=604800))]
    pub heartbeat_timeout: i64,
    /// Milliseconds between scans for stale builds.
    #[arg(long, env = "KILN_STALE_CHECK_INTERVAL_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub stale_check_interval_ms: u64,
    /// Concurrent live streams (SSE and Socket.IO subscriptions) one token may hold.
    #[arg(long, env = "KILN_MAX_STREAMS_PER_TOKEN", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_streams_per_token: u64,
    /// Log format on stderr.
    #[arg(long, env = "KILN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Colours in the text log on stderr: auto (only when stderr is a terminal and
    /// NO_COLOR is unset), always or never.
    #[arg(long, env = "KILN_COLOR", value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
    /// Seconds a claimed job's lease lasts without a heartbeat; then the job is
    /// requeued or failed (reason agent_lost).
    #[arg(long, env = "KILN_JOB_LEASE", default_value_t = 60, value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub job_lease: u64,
    /// Seconds between polls of auto-build branches (`git ls-remote`).
    #[arg(long, env = "KILN_BRANCH_POLL_INTERVAL", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub branch_poll_interval: u64,
    /// Seconds a waiting job needs to gain one priority level (aging).
    #[arg(long, env = "KILN_PRIORITY_AGING", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub priority_aging: u64,
    /// A job's log cap in MiB; past it the rest is discarded with a marker line.
    #[arg(long, env = "KILN_JOB_LOG_CAP_MIB", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10240))]
    pub job_log_cap_mib: u64,
    /// Mark session cookies Secure (Kiln behind an https proxy that sets no X-Forwarded-Proto).
    #[arg(long, env = "KILN_SECURE_COOKIES")]
    pub secure_cookies: bool,
    /// Days after which notifications are archived automatically.
    #[arg(long, env = "KILN_NOTIFICATION_RETENTION_DAYS", default_value_t = 30, value_parser = clap::value_parser!(i64).range(1..=36500))]
    pub notification_retention_days: i64,
    /// Email notifications through this SMTP relay; off when absent.
    /// smtp://HOST[:PORT] (port 25): STARTTLS when the relay offers it, plain otherwise;
    /// add ?tls=required to never send in plain, ?tls=none to never try TLS.
    /// smtps://HOST[:PORT] (port 465): TLS from the first byte. A login: USER:PASSWORD@
    /// before the host (percent-encoded), or USER@ with --smtp-password-file; with a
    /// login, smtp:// requires STARTTLS unless ?tls=none.
    #[arg(
        long,
        env = "KILN_SMTP_URL",
        requires = "smtp_from",
        hide_env_values = true,
        value_name = "URL",
        value_parser = secret_value
    )]
    pub smtp_url: Option<Secret>,
    /// File holding the SMTP relay's password (one line), for the user named in
    /// --smtp-url (smtp://USER@HOST).
    #[arg(
        long,
        env = "KILN_SMTP_PASSWORD_FILE",
        requires = "smtp_url",
        value_name = "PATH"
    )]
    pub smtp_password_file: Option<PathBuf>,
    /// PEM file with the CA certificate(s) that signed the relay's certificate (a private
    /// relay), trusted in addition to the public CAs Kiln knows (Mozilla's roots).
    #[arg(
        long,
        env = "KILN_SMTP_CA_FILE",
        requires = "smtp_url",
        value_name = "PATH"
    )]
    pub smtp_ca_file: Option<PathBuf>,
    /// The sender address of notification emails.
    #[arg(long, env = "KILN_SMTP_FROM", requires = "smtp_url")]
    pub smtp_from: Option<String>,
    /// Let webhooks call private, loopback and link-local addresses (refused by default).
    #[arg(long, env = "KILN_WEBHOOKS_ALLOW_PRIVATE")]
    pub webhooks_allow_private: bool,
    /// Directories whose git repositories projects may build by local path or file://
    /// URL (repeat the flag or separate with commas). None by default: a project admin
    /// could otherwise read any repository the server can. Nothing inside the data
    /// directory qualifies, except an allowed directory inside it.
    #[arg(
        long = "allow-local-repos",
        env = "KILN_ALLOW_LOCAL_REPOS",
        value_delimiter = ',',
        value_name = "DIR"
    )]
    pub allow_local_repos: Vec<PathBuf>,
    /// Let repositories be at private, loopback and link-local addresses (refused by
    /// default, as for webhooks).
    #[arg(long, env = "KILN_REPOS_ALLOW_PRIVATE")]
    pub repos_allow_private: bool,
    /// Seconds one git command the server runs for a trigger or a branch poll may take
    /// (ls-remote, fetching one commit).
    #[arg(long, env = "KILN_GIT_TIMEOUT", default_value_t = kiln_core::limits::DEFAULT_SERVER_GIT_TIMEOUT_SECS, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub git_timeout: u64,
    /// Seconds a client has to send a complete request head once it sent its first byte
    /// (slow clients holding connections are closed).
    #[arg(long, env = "KILN_HEADER_READ_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_read_timeout: u64,
    /// Seconds a connection with no request in flight is kept open (keep-alive).
    #[arg(long, env = "KILN_IDLE_TIMEOUT", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub idle_timeout: u64,
    /// Open connections at most (live streams included); more are closed on arrival.
    /// Lowered to fit the open-files limit, which Kiln raises to its hard limit.
    #[arg(long, env = "KILN_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub max_connections: u64,
    /// Open connections from one client address at most.
    #[arg(long, env = "KILN_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 2_500, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub max_connections_per_address: u64,
    /// The key that encrypts project secrets and repository credentials at rest (64 hex
    /// digits). Created with mode 0600 on first start when missing; every replica of one
    /// database needs the same file. Default: secret.key in the data directory.
    #[arg(long, env = "KILN_SECRET_KEY_FILE", value_name = "PATH")]
    pub secret_key_file: Option<PathBuf>,
    /// Reverse proxies (address ranges like 10.0.0.0/8, comma-separated) whose
    /// X-Forwarded-For / Forwarded headers name the client for per-address limits;
    /// from other peers those headers are ignored.
    #[arg(long, env = "KILN_TRUSTED_PROXIES", value_delimiter = ',', value_name = "CIDR", value_parser = parse_cidr)]
    pub trusted_proxies: Vec<kiln_core::net::Cidr>,
    /// Seconds before each webhook retry, comma-separated (the last repeats).
    #[arg(long, env = "KILN_WEBHOOK_RETRY_SCHEDULE", value_delimiter = ',', default_value = "60,120,240,480,960", value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub webhook_retry_schedule: Vec<u64>,
    /// Webhook retries after the first attempt before a delivery is marked failed.
    #[arg(long, env = "KILN_WEBHOOK_MAX_RETRIES", default_value_t = 5, value_parser = clap::value_parser!(i64).range(0..=100))]
    pub webhook_max_retries: i64,
    /// Percent of the time webhook delivery may take while ingest is busy (its commits
    /// fill half the time with requests queued); 100 never holds delivery back.
    #[arg(long, env = "KILN_WEBHOOK_BUSY_SHARE", default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub webhook_busy_share: u8,
    /// The address users reach the dashboard at (https://kiln.example.com): CDEvents
    /// webhooks link to builds under it. Without it they carry the build's path only.
    #[arg(long, env = "KILN_PUBLIC_URL", value_name = "URL", value_parser = parse_public_url)]
    pub public_url: Option<String>,
    /// The bearer token Prometheus must send to GET /metrics (at least 16 characters).
    /// Without one, /metrics answers only clients on a loopback address.
    #[arg(long, env = "KILN_METRICS_TOKEN", hide_env_values = true, value_name = "TOKEN", value_parser = parse_metrics_token)]
    pub metrics_token: Option<Secret>,
    /// Export every ended build as an OpenTelemetry trace (a span per build, stage and
    /// job) to this OTLP/HTTP collector, JSON-encoded, at {URL}/v1/traces
    /// (http://localhost:4318). Off when absent.
    #[arg(long, env = "KILN_OTLP_ENDPOINT", value_name = "URL", value_parser = kiln_server::OtlpConfig::parse_endpoint)]
    pub otlp_endpoint: Option<String>,
    /// Where artifact contents go: `s3://BUCKET[/PREFIX]` (credentials from
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION) or a directory. Default: the
    /// data dir's `artifacts/blobs`. Uploads are staged in the data dir either way.
    #[arg(long, env = "KILN_ARTIFACT_STORE", value_name = "URL_OR_DIR")]
    pub artifact_store: Option<String>,
    /// The S3-compatible endpoint for an s3:// artifact store (e.g. http://127.0.0.1:9000);
    /// default https://s3.{region}.amazonaws.com.
    #[arg(long, env = "KILN_S3_ENDPOINT", value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// The largest one artifact file may be, in bytes.
    #[arg(long, env = "KILN_ARTIFACT_MAX_FILE_BYTES", default_value_t = kiln_server::ArtifactConfig::DEFAULT_MAX_FILE_BYTES, value_parser = clap::value_parser!(u64).range(1..))]
    pub artifact_max_file_bytes: u64,
    /// The most one build's artifacts may hold together, in bytes.
    #[arg(long, env = "KILN_ARTIFACT_MAX_BUILD_BYTES", default_value_t = kiln_server::ArtifactConfig::DEFAULT_MAX_BUILD_BYTES, value_parser = clap::value_parser!(u64).range(1..))]
    pub artifact_max_build_bytes: u64,
    /// Serve published sites (`deploy: {publish: …}`) on this address, an origin of
    /// their own so a site's scripts never act with a dashboard session:
    /// /{project}/{environment}/ there. Off when absent (`kiln up` picks a free loopback
    /// port).
    #[arg(long, env = "KILN_SITES_LISTEN", value_name = "ADDR")]
    pub sites_listen: Option<SocketAddr>,
    /// The address users reach the sites listener at (https://sites.example.com), for
    /// the URLs deployments show; default http://{--sites-listen}.
    #[arg(long, env = "KILN_SITES_URL", value_name = "URL", value_parser = parse_public_url)]
    pub sites_url: Option<String>,
    /// Also answer, and show, each site at {project}--{environment}.{DOMAIN} (a
    /// wildcard DNS name pointing at the sites listener): every site an origin of its own.
    #[arg(long, env = "KILN_SITES_DOMAIN", value_name = "DOMAIN")]
    pub sites_domain: Option<String>,
}

impl ServeArgs {
    /// The artifact storage these flags describe (the directories are created).
    fn artifact_config(&self) -> anyhow::Result<kiln_server::ArtifactConfig> {
        use anyhow::Context;
        let root = self.data_dir.join("artifacts");
        let mut config = kiln_server::ArtifactConfig::local(&root)
            .with_context(|| format!("cannot create the artifact directory {}", root.display()))?;
        match self.artifact_store.as_deref().map(str::trim) {
            None | Some("") => {}
            Some(url) if url.starts_with("s3://") => {
                use kiln_server::blobs::s3::{S3BlobStore, S3Config, S3Credentials};
                let store = S3Credentials::from_env()
                    .and_then(|credentials| {
                        S3Config::from_url(url, self.s3_endpoint.as_deref(), credentials)
                    })
                    .and_then(S3BlobStore::new)
                    .map_err(|error| anyhow::anyhow!("--artifact-store {url}: {error}"))?;
                config.blobs = std::sync::Arc::new(store);
            }
            Some(dir) => {
                let store = kiln_server::blobs::local::LocalBlobStore::open(dir)
                    .with_context(|| format!("--artifact-store: cannot create {dir}"))?;
                config.blobs = std::sync::Arc::new(store);
            }
        }
        config.max_file_bytes = self.artifact_max_file_bytes;
        config.max_build_bytes = self.artifact_max_build_bytes;
        Ok(config)
    }

    /// The sites listener's settings, binding `--sites-listen` (or `fallback`).
    pub fn sites_config(
        &self,
        fallback: Option<SocketAddr>,
    ) -> anyhow::Result<Option<kiln_server::SitesConfig>> {
        let Some(address) = self.sites_listen.or(fallback) else {
            if self.sites_domain.is_some() || self.sites_url.is_some() {
                anyhow::bail!(
                    "--sites-domain and --sites-url need --sites-listen (the address published sites are served on)"
                );
            }
            return Ok(None);
        };
        let listener = std::net::TcpListener::bind(address).with_context(|| {
            format!("cannot listen on {address} for published sites (pick --sites-listen)")
        })?;
        let mut sites = kiln_server::SitesConfig::new(listener)?;
        if let Some(url) = &self.sites_url {
            sites.public_url = url.trim_end_matches('/').to_owned();
        }
        if let Some(domain) = &self.sites_domain {
            let domain = domain.trim().trim_matches('.').to_ascii_lowercase();
            if domain.is_empty()
                || !domain
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            {
                anyhow::bail!("--sites-domain must be a DNS name such as sites.example.com");
            }
            sites.domain = Some(domain);
        }
        Ok(Some(sites))
    }
}

/// `--metrics-token`: long enough not to be guessed, kept as a `Secret`.
fn parse_metrics_token(value: &str) -> Result<Secret, String> {
    let value = value.trim();
    if value.chars().count() < 16 || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("give a token of at least 16 characters without spaces (e.g. from `openssl rand -hex 24`)".into());
    }
    Ok(Secret::new(value))
}

/// `--public-url`: an http(s) URL, kept without its trailing slash.
fn parse_public_url(value: &str) -> Result<String, String> {
    let trimmed = value.trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("https://")
        .or_else(|| trimmed.strip_prefix("http://"))
        .ok_or("give an http(s) URL such as https://kiln.example.com")?;
    if rest.is_empty() || rest.contains(['?', '#', ' ']) || rest.chars().any(char::is_control) {
        return Err(
            "give an http(s) URL without a query or fragment, such as https://kiln.example.com"
                .into(),
        );
    }
    Ok(trimmed.to_owned())
}

/// `kiln up`: the server, a local agent, and optionally a demo build.
#[derive(Args, Debug, Clone)]
pub struct UpArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Create a small git repository with a .kiln.yml and build it at once.
    #[arg(long)]
    pub demo: bool,
    /// Do not start the local agent.
    #[arg(long)]
    pub no_agent: bool,
    /// The local agent's executor: process, sandbox or container.
    #[arg(long, default_value = "process")]
    pub agent_executor: String,
}

fn parse_cidr(text: &str) -> Result<kiln_core::net::Cidr, String> {
    kiln_core::net::Cidr::parse(text)
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `--color`: whether the log on stderr carries ANSI colour codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    /// Colours when stderr is a terminal and NO_COLOR is not set.
    Auto,
    Always,
    Never,
}

impl ColorChoice {
    /// Whether to write colour codes to stderr.
    pub fn for_stderr(self) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                use std::io::IsTerminal;
                std::io::stderr().is_terminal()
                    && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty())
            }
        }
    }
}

pub fn init_logging(format: LogFormat, color: ColorChoice) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(color.for_stderr())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// A flag whose value may hold a password: kept as a `Secret`, so `Debug` hides it.
fn secret_value(value: &str) -> Result<Secret, std::convert::Infallible> {
    Ok(Secret::new(value))
}

impl ServeArgs {
    fn database_url(&self) -> anyhow::Result<String> {
        if let Some(url) = &self.database_url {
            return Ok(url.clone());
        }
        std::fs::create_dir_all(&self.data_dir).with_context(|| {
            format!(
                "cannot create the data directory {}",
                self.data_dir.display()
            )
        })?;
        Ok(format!("sqlite://{}/kiln.db", self.data_dir.display()))
    }

    /// Connection limits, the cap lowered to what the open-files limit allows (raised to
    /// its hard limit first, leaving room for the database, git and log files).
    fn connection_config(&self) -> kiln_server::ConnectionConfig {
        let files = super::limits::raise_open_files_limit();
        let reserve = 256;
        let mut max_connections = self.max_connections as usize;
        if let Some(files) = files
            && files > reserve
            && max_connections > (files - reserve) as usize
        {
            max_connections = (files - reserve) as usize;
            tracing::warn!(
                max_connections,
                open_files_limit = files,
                "--max-connections lowered to fit the open-files limit"
            );
        }
        kiln_server::ConnectionConfig {
            header_read_timeout: Duration::from_secs(self.header_read_timeout),
            idle_timeout: Duration::from_secs(self.idle_timeout),
            max_connections,
            max_connections_per_address: (self.max_connections_per_address as usize)
                .min(max_connections),
            trusted_proxies: self.trusted_proxies.clone(),
        }
    }

    /// Reads the secret key file, creating it (mode 0600) on first start.
    fn secret_key(&self) -> anyhow::Result<kiln_server::SecretKey> {
        let path = self
            .secret_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("secret.key"));
        match std::fs::read_to_string(&path) {
            Ok(text) => kiln_server::SecretKey::parse(&text)
                .map_err(|error| anyhow::anyhow!("{}: {error}", path.display())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let key = kiln_server::SecretKey::generate().map_err(anyhow::Error::msg)?;
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).with_context(|| {
                        format!("cannot create {} for the secret key", parent.display())
                    })?;
                }
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .with_context(|| {
                        format!("cannot create the secret key file {}", path.display())
                    })?;
                file.write_all(format!("{}\n", key.to_hex()).as_bytes())?;
                tracing::info!(path = %path.display(), "created the secret key file (keep it: secrets and repository credentials cannot be read without it)");
                Ok(key)
            }
            Err(error) => Err(anyhow::anyhow!(
                "cannot read the secret key file {}: {error}",
                path.display()
            )),
        }
    }

    fn config(&self) -> anyhow::Result<ServerConfig> {
        let email = match (&self.smtp_url, &self.smtp_from) {
            (Some(url), Some(from)) => {
                let files = kiln_server::SmtpFiles {
                    password: self
                        .smtp_password_file
                        .as_ref()
                        .map(|path| {
                            std::fs::read_to_string(path).with_context(|| {
                                format!("cannot read --smtp-password-file {}", path.display())
                            })
                        })
                        .transpose()?
                        .map(Secret::new),
                    ca_certificates_pem: self
                        .smtp_ca_file
                        .as_ref()
                        .map(|path| {
                            std::fs::read(path).with_context(|| {
                                format!("cannot read --smtp-ca-file {}", path.display())
                            })
                        })
                        .transpose()?,
                };
                Some(
                    kiln_server::EmailConfig::parse(url.expose(), from, &files)
                        .map_err(anyhow::Error::msg)?,
                )
            }
            _ => None,
        };
        Ok(ServerConfig {
            heartbeat_timeout_secs: self.heartbeat_timeout,
            reaper_interval: Duration::from_millis(self.stale_check_interval_ms),
            max_streams_per_token: self.max_streams_per_token as usize,
            admin_token: std::env::var("KILN_ADMIN_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
                .map(Secret::new),
            scheduler: kiln_server::SchedulerConfig {
                job_lease: Duration::from_secs(self.job_lease),
                heartbeat_interval: Duration::from_secs(1),
                priority_aging: Duration::from_secs(self.priority_aging),
                branch_poll_interval: Duration::from_secs(self.branch_poll_interval),
                log_cap_bytes: self.job_log_cap_mib * 1024 * 1024,
                git_dir: self.data_dir.join("git"),
                repo_policy: kiln_server::RepoPolicy {
                    allow_local: self.allow_local_repos.clone(),
                    allow_private: self.repos_allow_private,
                    data_dir: Some(self.data_dir.clone()),
                    git_timeout: Duration::from_secs(self.git_timeout),
                },
                ..kiln_server::SchedulerConfig::default()
            },
            secure_cookies: self.secure_cookies,
            notifications: kiln_server::NotificationConfig {
                retention_days: self.notification_retention_days,
                email,
                ..kiln_server::NotificationConfig::default()
            },
            webhooks: kiln_server::WebhookConfig {
                retry_schedule: self
                    .webhook_retry_schedule
                    .iter()
                    .map(|seconds| Duration::from_secs(*seconds))
                    .collect(),
                max_retries: self.webhook_max_retries,
                busy_share: f64::from(self.webhook_busy_share) / 100.0,
                public_url: self.public_url.clone(),
                ..kiln_server::WebhookConfig::default()
            },
            webhooks_allow_private: self.webhooks_allow_private,
            connections: self.connection_config(),
            secret_key: self.secret_key()?,
            metrics_token: self.metrics_token.clone(),
            otlp: self.otlp_endpoint.clone().map(kiln_server::OtlpConfig::new),
            artifacts: Some(self.artifact_config()?),
            ..ServerConfig::default()
        })
    }
}

pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutting down: finishing in-flight requests");
}

async fn start(
    args: &ServeArgs,
) -> anyhow::Result<(
    tokio::net::TcpListener,
    std::sync::Arc<dyn kiln_store::Store>,
    String,
)> {
    let database_url = args.database_url()?;
    let store = kiln_store::connect(&database_url).await.with_context(|| {
        "cannot open the database (check --database-url / --data-dir)".to_string()
    })?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (is another server running? pick --listen)",
                args.listen
            )
        })?;
    let url = format!("http://{}", listener.local_addr()?);
    Ok((listener, store, url))
}

/// Whether `kiln` on PATH is this binary (so the printed hints work as typed).
fn on_path(binary: &std::path::Path) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    let binary = std::fs::canonicalize(binary).unwrap_or_else(|_| binary.to_owned());
    std::env::split_paths(&path)
        .any(|dir| std::fs::canonicalize(dir.join("kiln")).is_ok_and(|found| found == binary))
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    init_logging(args.log_format, args.color);
    // Bad settings stop the command before it opens the database or listens.
    let mut config = args.config()?;
    config.sites = args.sites_config(None)?;
    let (listener, store, url) = start(&args).await?;
    // Tests and scripts read this line to learn the port when listening on :0.
    errln!("kiln listening on {url}");
    if let Some(sites) = &config.sites {
        errln!("kiln serving published sites on {}", sites.public_url);
    }
    kiln_server::run(listener, store, config, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn up(up: UpArgs) -> anyhow::Result<ExitCode> {
    let mut args = up.serve.clone();
    // The repository `--demo` creates (now or on an earlier run) may be built.
    args.allow_local_repos
        .push(args.data_dir.join(super::up::DEMO_REPO_DIR));
    init_logging(args.log_format, args.color);
    let mut config = args.config()?;
    // Published sites on a free loopback port of their own unless told otherwise.
    config.sites = args.sites_config(Some(SocketAddr::from(([127, 0, 0, 1], 0))))?;
    let sites = config.sites.clone();
    let (listener, store, url) = start(&args).await?;
    let now = SystemClock.now();
    let bootstrap = kiln_server::bootstrap_default_project(&*store, now).await?;
    let first_user = kiln_server::bootstrap_first_user(&*store, now).await?;
    outln!("Kiln is running at {url}");
    outln!("  dashboard and API: {url}/");
    if let Some(sites) = &sites {
        outln!(
            "  published sites: {}/{{project}}/{{environment}}/",
            sites.public_url
        );
    }
    if let Some(user) = &first_user {
        // Tests read this line for the password.
        outln!(
            "  dashboard login: {} / {} (shown once; change it on the Account page, {url}/account)",
            user.email,
            user.password
        );
    }
    if let Ok(binary) = std::env::current_exe() {
        // The README's commands say `kiln`: this is the binary to put on PATH.
        outln!("  kiln binary: {}", binary.display());
        if !on_path(&binary) {
            outln!(
                "    not on PATH: `cargo install --path crates/kiln-cli --locked` installs it, or link it: ln -s {} ~/.local/bin/kiln",
                binary.display()
            );
        }
    }
    outln!(
        "  data: {}",
        args.database_url.as_deref().map_or_else(
            || args.data_dir.display().to_string(),
            |_| "the configured database".into()
        )
    );
    match &bootstrap.ingest_token {
        Some(token) => {
            let admin_token = kiln_server::generate_token();
            kiln_server::ensure_admin_token(&*store, &admin_token, now).await?;
            outln!("  project: {} (created)", bootstrap.project_slug);
            outln!("  project token (ingest + read; shown once, keep it): {token}");
            outln!("  admin token (instance admin; shown once, keep it):  {admin_token}");
            outln!();
            outln!("Report a build from another terminal:");
            outln!("  export KILN_URL={url} KILN_TOKEN={token}");
            outln!("  kiln run --stage \"Build=sleep 1\" -- echo done");
            outln!("  kiln builds");
        }
        None => {
            outln!(
                "  project: {} (exists; its token was printed on the first run)",
                bootstrap.project_slug
            );
            outln!("  lost it? create another with an admin token:");
            outln!(
                "    KILN_URL={url} KILN_TOKEN=<admin token> kiln token create --project {} --name laptop",
                bootstrap.project_slug
            );
        }
    }
    let (agent_stop, agent_stopped) = tokio::sync::watch::channel(false);
    let mut agent_task = None;
    if !up.no_agent {
        let options =
            super::up::local_agent(&*store, &args.data_dir, &url, &up.agent_executor, now).await?;
        outln!(
            "  local agent: '{}' ({} executor, work in {})",
            options.name,
            options.executor.name(),
            options.work_dir.display()
        );
        agent_task = Some(tokio::spawn(kiln_agent::agent::run(options, agent_stopped)));
    }
    if up.demo {
        super::up::demo(&*store, &args.data_dir, &url, now).await?;
        if let Some(sites) = &sites {
            outln!(
                "  demo site (live once the demo build is deployed): {}",
                sites.site_url(&bootstrap.project_slug, "production")
            );
        }
    }
    outln!("Stop with Ctrl-C.");
    let shutdown = async move {
        shutdown_signal().await;
        // The local agent cancels and reports its jobs while the server still answers.
        let _ = agent_stop.send(true);
        if let Some(task) = agent_task {
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
    };
    kiln_server::run(listener, store, config, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
