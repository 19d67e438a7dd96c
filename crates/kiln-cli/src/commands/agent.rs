//! `kiln agent`: runs the build agent until Ctrl-C or SIGTERM (running jobs are then
//! cancelled and reported).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use kiln_agent::agent::{AgentOptions, run};
use kiln_agent::executor::ExecutorKind;

#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// Kiln server URL.
    #[arg(long, env = "KILN_URL", default_value = crate::settings::DEFAULT_SERVER)]
    pub server: String,
    /// Agent token (`kiln token create --agent`).
    #[arg(long, env = "KILN_AGENT_TOKEN", hide_env_values = true)]
    pub token: String,
    /// This agent's name [default: the host name].
    #[arg(long, env = "KILN_AGENT_NAME")]
    pub name: Option<String>,
    /// Labels offered to steps' `agents:` (comma-separated).
    #[arg(long, env = "KILN_AGENT_LABELS", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Jobs run at once.
    #[arg(long, env = "KILN_AGENT_CONCURRENCY", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub concurrency: u64,
    /// process (default), sandbox (bubblewrap) or container (Docker Engine API).
    #[arg(long, env = "KILN_AGENT_EXECUTOR", default_value = "process")]
    pub executor: String,
    /// The Docker Engine API socket (Docker, or `podman system service`) for --executor container.
    #[arg(long, env = "KILN_DOCKER_SOCKET", default_value = kiln_agent::executor::DEFAULT_DOCKER_SOCKET)]
    pub docker_socket: PathBuf,
    /// Where job workspaces are made.
    #[arg(long, env = "KILN_AGENT_WORK_DIR", default_value = "./kiln-agent/work")]
    pub work_dir: PathBuf,
    /// Where the dependency cache lives.
    #[arg(
        long,
        env = "KILN_AGENT_CACHE_DIR",
        default_value = "./kiln-agent/cache"
    )]
    pub cache_dir: PathBuf,
    /// The cache's size cap in MiB (least recently used entries go first).
    #[arg(long, env = "KILN_AGENT_CACHE_MIB", default_value_t = 5120)]
    pub cache_mib: u64,
    /// Seconds between SIGTERM and SIGKILL when a step is cancelled or times out.
    #[arg(long, default_value_t = 10)]
    pub grace_secs: u64,
    /// Colours in the log on stderr: auto (only when stderr is a terminal and NO_COLOR is
    /// unset), always or never.
    #[arg(long, env = "KILN_COLOR", value_enum, default_value_t = super::serve::ColorChoice::Auto)]
    pub color: super::serve::ColorChoice,
}

impl AgentArgs {
    pub fn options(&self) -> anyhow::Result<AgentOptions> {
        let executor = match self.executor.as_str() {
            "container" => ExecutorKind::Container {
                socket: self.docker_socket.clone(),
            },
            other => other
                .parse()
                .map_err(|e| anyhow::anyhow!("--executor: {e}"))?,
        };
        Ok(AgentOptions {
            server: self.server.trim_end_matches('/').to_owned(),
            token: self.token.clone(),
            name: self.name.clone().unwrap_or_else(AgentOptions::hostname),
            labels: self
                .labels
                .iter()
                .map(|l| l.trim().to_owned())
                .filter(|l| !l.is_empty())
                .collect(),
            concurrency: self.concurrency as usize,
            executor,
            work_dir: absolute(&self.work_dir)?,
            cache_dir: absolute(&self.cache_dir)?,
            cache_max_bytes: self.cache_mib.saturating_mul(1024 * 1024),
            grace: Duration::from_secs(self.grace_secs),
        })
    }
}

fn absolute(path: &std::path::Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?;
    std::fs::canonicalize(path).with_context(|| format!("cannot resolve {}", path.display()))
}

pub async fn agent(args: AgentArgs) -> anyhow::Result<ExitCode> {
    super::serve::init_logging(super::serve::LogFormat::Text, args.color);
    let options = args.options()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        super::serve::shutdown_signal().await;
        let _ = stop.send(true);
    });
    errln!(
        "kiln agent '{}' working for {}",
        options.name,
        options.server
    );
    run(options, stopped).await?;
    Ok(ExitCode::SUCCESS)
}
