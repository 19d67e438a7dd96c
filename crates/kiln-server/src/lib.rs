//! Kiln's HTTP server: the router, authentication, the group-commit ingestor and the
//! stale-build reaper, wired around a `kiln_store::Store`.
//!
//! Only this crate knows axum. `run(listener, config, shutdown)` serves until `shutdown`
//! resolves, then stops accepting, finishes in-flight requests and commits, and returns.

mod accounts;
mod address;
mod analytics_keeper;
mod api;
mod auth;
mod background;
pub mod blobs;
pub mod clock;
mod config;
mod deploy;
mod error;
mod ingest;
mod live;
mod notify;
mod params;
mod range;
mod reaper;
mod retention;
mod routes;
mod scheduler;
mod secret_box;
mod serve;
mod service_error;
mod services;
mod telemetry;
mod web;
mod webhooks;
mod wire;

use std::future::Future;
use std::sync::Arc;

use kiln_core::token::{Scope, TokenKind, format_token};
use kiln_core::{Millis, ProjectSlug};
use kiln_store::{NewToken, Store, StoreError};
use tokio::net::TcpListener;

pub use accounts::PasswordConfig;
pub use background::{Passes, Periodic};
pub use config::{ArtifactConfig, Secret, ServerConfig};
pub use deploy::{SitesConfig, SitesListener};
pub use error::ApiError;
pub use notify::{EmailConfig, NotificationConfig, SmtpFiles};
pub use routes::{RouteRule, route_table};
pub use scheduler::{RepoPolicy, SchedulerConfig};
pub use secret_box::SecretKey;
pub use serve::{ConnectionConfig, MAX_REQUEST_HEAD_BYTES};
pub use telemetry::otlp::OtlpConfig;
pub use webhooks::WebhookConfig;

use crate::auth::Authenticator;
use crate::clock::Clock;
use crate::ingest::Ingestor;

/// Shared state of one server process.
#[derive(Clone)]
pub(crate) struct AppState {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub ingestor: Ingestor,
    pub authenticator: Authenticator,
    pub config: Arc<ServerConfig>,
    pub bus: Arc<live::Bus>,
    pub streams: api::StreamLimiter,
    pub scheduler: scheduler::Scheduler,
    /// Moves deployments along with their builds.
    pub deployer: deploy::Deployer,
    pub logins: Arc<accounts::LoginLimiter>,
    /// Argon2 hashing in a bounded number of slots (`ServerConfig::passwords`).
    pub passwords: Arc<accounts::Passwords>,
    /// Wakes the webhook sender when deliveries are queued (test events, redeliveries).
    pub webhook_sender: Arc<tokio::sync::Notify>,
    /// Line counts of job logs the build page has numbered (logs only grow).
    pub log_lines: Arc<web::LogLineCache>,
    /// What `/metrics` reports that the process recorded.
    pub metrics: Arc<telemetry::Metrics>,
    /// Traces waiting for the OTLP exporter (`--otlp-endpoint`), for `/metrics`.
    pub otlp_queue: Option<tokio::sync::mpsc::Sender<serde_json::Value>>,
}

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the database: {0}")]
    Store(#[from] StoreError),
    #[error("cannot serve: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Config(String),
}

/// Repositories stored by an earlier Kiln with credentials in their URL: the URL is
/// stored without them and they are encrypted (once; later starts find none).
async fn seal_repo_credentials(
    store: &dyn Store,
    key: &secret_box::SecretKey,
) -> Result<(), StartError> {
    for project in store.list_projects().await? {
        let Some(repo) = &project.repo else { continue };
        let (bare, Some((username, password))) = kiln_core::net::split_credentials(repo) else {
            continue;
        };
        let plain = serde_json::to_vec(&kiln_protocol::RepoCredentials { username, password })
            .unwrap_or_default();
        let sealed = key
            .seal(&secret_box::repo_credentials_context(project.id), &plain)
            .map_err(|error| {
                StartError::Config(format!("cannot encrypt repository credentials: {error}"))
            })?;
        store
            .set_repo_credentials(project.id, Some(&bare), Some(&sealed))
            .await?;
        tracing::info!(project = %project.slug, "repository credentials moved out of the URL and encrypted");
    }
    Ok(())
}

/// Serves Kiln on `listener` until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    store: Arc<dyn Store>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let clock = config.clock.clone();
    if let Some(admin_token) = &config.admin_token {
        ensure_admin_token(&*store, admin_token.expose(), clock.now()).await?;
    }
    seal_repo_credentials(&*store, &config.secret_key).await?;
    let config = Arc::new(config);
    let bus = Arc::new(live::Bus::default());
    let webhook_sender = Arc::new(tokio::sync::Notify::new());
    let metrics = Arc::new(telemetry::Metrics::default());
    let (ended_builds, ended_receiver) =
        tokio::sync::mpsc::channel(telemetry::ended::CHANNEL_CAPACITY);
    let (ingestor, ingest_task) = Ingestor::start(
        store.clone(),
        clock.clone(),
        bus.clone(),
        ingest::IngestObservers {
            metrics: metrics.clone(),
            ended: ended_builds,
        },
    );
    let mut webhook_config = config.webhooks.clone();
    webhook_config.message_key = Some(config.secret_key.clone());
    let mut scheduler_config = config.scheduler.clone();
    scheduler_config.secret_key = Some(config.secret_key.clone());
    let deployer = deploy::Deployer::new(
        store.clone(),
        ingestor.clone(),
        clock.clone(),
        config.sites.clone(),
    );
    let scheduler = scheduler::Scheduler::new(
        store.clone(),
        ingestor.clone(),
        clock.clone(),
        scheduler_config,
        metrics.clone(),
        deployer.clone(),
    );
    let otlp_export = config.otlp.clone().map(|otlp| {
        let (queue, receiver) = tokio::sync::mpsc::channel(telemetry::otlp::QUEUE_CAPACITY);
        (otlp, queue, receiver)
    });
    let state = AppState {
        store: store.clone(),
        clock: clock.clone(),
        ingestor: ingestor.clone(),
        authenticator: Authenticator::new(store.clone(), clock.clone()),
        config: config.clone(),
        bus: bus.clone(),
        streams: api::StreamLimiter::new(config.max_streams_per_token),
        scheduler: scheduler.clone(),
        deployer: deployer.clone(),
        logins: Arc::new(accounts::LoginLimiter::default()),
        passwords: Arc::new(accounts::Passwords::new(&config.passwords)),
        webhook_sender: webhook_sender.clone(),
        log_lines: Arc::new(web::LogLineCache::default()),
        metrics: metrics.clone(),
        otlp_queue: otlp_export.as_ref().map(|(_, queue, _)| queue.clone()),
    };
    let mut background = background::Background::new();
    let export = match otlp_export {
        Some((otlp, queue, receiver)) => {
            tracing::info!(endpoint = %otlp.endpoint, "exporting ended builds as OpenTelemetry traces");
            background.spawn(
                "otlp exporter",
                telemetry::otlp::run_exporter(
                    otlp,
                    receiver,
                    metrics.clone(),
                    background.stop_signal(),
                ),
            );
            Some(telemetry::ended::Export {
                queue,
                public_url: config.webhooks.public_url.clone(),
            })
        }
        None => None,
    };
    background.spawn(
        "build ends",
        telemetry::ended::run(
            store.clone(),
            metrics.clone(),
            ended_receiver,
            export,
            background.stop_signal(),
        ),
    );
    background.spawn(
        "live tailer",
        live::tail(store.clone(), bus.clone(), background.stop_signal()),
    );
    background.spawn(
        "deployments",
        deploy::run(deployer, background.stop_signal()),
    );
    background.spawn(
        "scheduler",
        scheduler::tasks::run(scheduler, background.stop_signal()),
    );
    let mail_queued = Arc::new(tokio::sync::Notify::new());
    background.spawn(
        "notifier",
        notify::run(
            store.clone(),
            bus.clone(),
            clock.clone(),
            config.notifications.clone(),
            mail_queued.clone(),
            config.passes.clone(),
            background.stop_signal(),
        ),
    );
    if let Some(email) = config.notifications.email.clone() {
        tracing::info!(relay = %email.relay_url(), from = %email.from, "notification emails on");
        background.spawn(
            "mail",
            notify::mail::run(
                store.clone(),
                clock.clone(),
                email,
                config.notifications.poll_interval,
                mail_queued,
                notify::mail::MailObservers {
                    passes: config.passes.clone(),
                    metrics: metrics.clone(),
                },
                background.stop_signal(),
            ),
        );
    }
    background.spawn(
        "webhook consumer",
        webhooks::run_consumer(
            store.clone(),
            bus.clone(),
            clock.clone(),
            config.webhooks.clone(),
            webhook_sender.clone(),
            webhooks::Pace::new(ingestor.load(), config.webhooks.busy_share),
            background.stop_signal(),
        ),
    );
    background.spawn(
        "webhook sender",
        webhooks::run_sender(
            store.clone(),
            clock.clone(),
            webhooks::SenderSettings {
                config: webhook_config,
                allow_private: config.webhooks_allow_private,
                metrics: metrics.clone(),
            },
            webhook_sender,
            webhooks::Pace::new(ingestor.load(), config.webhooks.busy_share),
            background.stop_signal(),
        ),
    );
    if let Some(artifacts) = &config.artifacts {
        background.spawn(
            "artifact digester",
            blobs::digest::run_digester(
                store.clone(),
                artifacts.blobs.clone(),
                artifacts.digester.clone(),
                artifacts.transfers.clone(),
                background.stop_signal(),
            ),
        );
    }
    if let Some(artifacts) = config.artifacts.clone() {
        background.spawn(
            "artifact retention",
            retention::run(
                store.clone(),
                artifacts,
                clock.clone(),
                config.passes.clone(),
                background.stop_signal(),
            ),
        );
    }
    background.spawn(
        "analytics keeper",
        analytics_keeper::run(
            store.clone(),
            clock.clone(),
            config.analytics_keep_interval,
            config.passes.clone(),
            background.stop_signal(),
        ),
    );
    background.spawn(
        "reaper",
        reaper::run(
            store.clone(),
            ingestor,
            clock,
            config.heartbeat_timeout_secs,
            config.reaper_interval,
            config.passes.clone(),
            background.stop_signal(),
        ),
    );

    let (app, socket_io) = routes::router(state);
    tracing::info!(address = %listener.local_addr()?, engine = store.engine().as_str(), "kiln serving");
    match &config.artifacts {
        Some(artifacts) => tracing::info!(
            blobs = %artifacts.blobs.describe(),
            staging = %artifacts.staging.dir().display(),
            "artifact storage"
        ),
        None => tracing::info!("no artifact storage: artifact uploads are refused"),
    }
    let shutdown = async move {
        shutdown.await;
        bus.close_streams();
        // Give followers a moment to emit their `shutdown` notices (with resume
        // cursors) before the sockets close; SSE streams end by themselves.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        socket_io.close().await;
    };
    // The sites listener stops with the dashboard's: one signal for both.
    let (stop_sites, sites_stopped) = tokio::sync::watch::channel(false);
    let sites_task = match config.sites.as_ref() {
        Some(sites_config) => {
            let sites_listener = sites_config.listener.take().ok_or_else(|| {
                StartError::Config("the sites listener was already taken by another run".into())
            })?;
            sites_listener.set_nonblocking(true)?;
            let sites_listener = TcpListener::from_std(sites_listener)?;
            tracing::info!(address = %sites_listener.local_addr()?, url = %sites_config.public_url, "serving published sites");
            let sites = deploy::sites::Sites::new(
                store.clone(),
                config
                    .artifacts
                    .as_ref()
                    .map(|artifacts| artifacts.blobs.clone()),
                sites_config.clone(),
            );
            let mut stopped = sites_stopped;
            Some(tokio::spawn(serve::serve(
                sites_listener,
                deploy::sites::router(sites),
                config.connections.clone(),
                async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                },
            )))
        }
        None => None,
    };
    let shutdown = async move {
        shutdown.await;
        let _ = stop_sites.send(true);
    };
    serve::serve(listener, app, config.connections.clone(), shutdown).await?;
    if let Some(sites_task) = sites_task {
        let _ = sites_task.await;
    }

    // Requests are done; stop the background tasks (the reaper and the scheduler hold the
    // last ingestor handles), then let the ingestor drain its queue.
    background.stop().await;
    let _ = ingest_task.await;
    tracing::info!("kiln stopped");
    Ok(())
}

/// Makes `token` an instance-admin token (stored hashed). Idempotent across restarts.
pub async fn ensure_admin_token(
    store: &dyn Store,
    token: &str,
    now: Millis,
) -> Result<(), StoreError> {
    store
        .ensure_token(
            &NewToken::new(token, TokenKind::Admin, None, "KILN_ADMIN_TOKEN", vec![]),
            now,
        )
        .await?;
    Ok(())
}

/// Makes `token` an agent token (stored hashed). Idempotent across restarts: `kiln up`
/// keeps its local agent's token in the data directory.
pub async fn ensure_agent_token(
    store: &dyn Store,
    token: &str,
    name: &str,
    now: Millis,
) -> Result<(), StoreError> {
    store
        .ensure_token(
            &NewToken::new(token, TokenKind::Agent, None, name, vec![]),
            now,
        )
        .await?;
    Ok(())
}

/// A new project token with the `ingest` and `read` scopes (`kiln up` prints its first;
/// `kiln up --demo` triggers its build with another).
pub async fn create_project_token(
    store: &dyn Store,
    project_slug: &str,
    name: &str,
    now: Millis,
) -> Result<String, StoreError> {
    let project = store
        .project_by_slug(project_slug)
        .await?
        .ok_or(StoreError::NotFound("project"))?;
    let token = generate_token();
    let scopes = vec![Scope::Ingest, Scope::Read];
    store
        .create_token(
            &NewToken::new(&token, TokenKind::Project, Some(project.id), name, scopes),
            now,
        )
        .await?;
    Ok(token)
}

/// Points a project at a git repository (what `PUT /api/v1/projects/{slug}/repo` does).
pub async fn set_project_repo(
    store: &dyn Store,
    project_slug: &str,
    repo: &str,
) -> Result<(), StoreError> {
    let project = store
        .project_by_slug(project_slug)
        .await?
        .ok_or(StoreError::NotFound("project"))?;
    store
        .set_project_repo(
            project.id,
            Some(repo),
            &project.default_branch,
            project.max_concurrency,
        )
        .await?;
    Ok(())
}

/// A fresh random token in Kiln's format.
pub fn generate_token() -> String {
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).expect("the operating system's random source is available");
    format_token(&random)
}

/// Installs rustls' ring provider once (webhook deliveries to https URLs).
pub(crate) fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// What `kiln up` creates on first run.
#[derive(Debug)]
pub struct Bootstrap {
    pub project_slug: String,
    /// The new ingest token, or `None` when the project existed already.
    pub ingest_token: Option<String>,
}

/// The dashboard login `kiln up` makes on a fresh instance.
#[derive(Debug)]
pub struct FirstUser {
    pub email: String,
    /// Generated, shown once.
    pub password: String,
}

/// The email of the first user `kiln up` creates.
pub const FIRST_USER_EMAIL: &str = "admin@kiln.localhost";

/// On an instance without users, creates an instance-admin user (`admin@kiln.localhost`,
/// "Admin") with a generated password, so a browser can log in; `None` when users exist.
pub async fn bootstrap_first_user(
    store: &dyn Store,
    now: Millis,
) -> Result<Option<FirstUser>, StoreError> {
    if !store.list_users().await?.is_empty() {
        return Ok(None);
    }
    let password = generate_password();
    let hash = accounts::Passwords::new(&accounts::PasswordConfig::default())
        .hash(password.clone())
        .await
        .map_err(StoreError::Unavailable)?;
    store
        .create_user(FIRST_USER_EMAIL, "Admin", Some(&hash), true, now)
        .await?;
    Ok(Some(FirstUser {
        email: FIRST_USER_EMAIL.into(),
        password,
    }))
}

/// 20 random letters and digits (over 110 bits), easy to copy from a terminal.
fn generate_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut random = [0u8; 20];
    getrandom::fill(&mut random).expect("the operating system's random source is available");
    random
        .iter()
        .map(|byte| ALPHABET[usize::from(*byte) % ALPHABET.len()] as char)
        .collect()
}

/// Creates the `default` project and an ingest+read token for it, unless it exists.
pub async fn bootstrap_default_project(
    store: &dyn Store,
    now: Millis,
) -> Result<Bootstrap, StoreError> {
    let slug = "default";
    if store.project_by_slug(slug).await?.is_some() {
        return Ok(Bootstrap {
            project_slug: slug.into(),
            ingest_token: None,
        });
    }
    store
        .create_project(
            &ProjectSlug::parse("slug", slug).map_err(|e| StoreError::Conflict(e.to_string()))?,
            "Default project",
            now,
        )
        .await?;
    let token = create_project_token(store, slug, "kiln up", now).await?;
    Ok(Bootstrap {
        project_slug: slug.into(),
        ingest_token: Some(token),
    })
}
