//! Where client commands find the server and their token: flags, then `KILN_URL` /
//! `KILN_TOKEN`, then the seed's `OM_BUILD_EVENT_URL` / `OM_BUILD_EVENT_TOKEN`.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use kiln_client::Client;

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8090";

#[derive(Args, Debug, Clone, Default)]
pub struct ClientArgs {
    /// Kiln server URL [env: KILN_URL, or the seed's OM_BUILD_EVENT_URL] [default: http://127.0.0.1:8090]
    #[arg(long)]
    pub server: Option<String>,
    /// API token [env: KILN_TOKEN, or the seed's OM_BUILD_EVENT_TOKEN]
    #[arg(long)]
    pub token: Option<String>,
}

/// The resolved server base URL and token.
#[derive(Clone, Debug)]
pub struct Target {
    pub server: String,
    pub token: Option<String>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl ClientArgs {
    pub fn target(&self) -> anyhow::Result<Target> {
        let server = self
            .server
            .clone()
            .or_else(|| env("KILN_URL"))
            .or_else(|| env("OM_BUILD_EVENT_URL").map(|url| base_of_seed_url(&url)))
            .unwrap_or_else(|| DEFAULT_SERVER.to_owned());
        if !(server.starts_with("http://") || server.starts_with("https://")) {
            bail!("the server URL '{server}' must start with http:// or https://");
        }
        let token = self
            .token
            .clone()
            .or_else(|| env("KILN_TOKEN"))
            .or_else(|| env("OM_BUILD_EVENT_TOKEN"));
        Ok(Target {
            server: server.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// A client for commands that need a token (admin and read commands). Events spooled
    /// earlier are resent first (see `spool::resend_before_command`), so what the command
    /// reads includes them.
    pub async fn client(&self) -> anyhow::Result<Client> {
        let target = self.target()?;
        let token = target
            .token
            .clone()
            .context("no token: pass --token or set KILN_TOKEN")?;
        crate::report::spool::resend_before_command(&target).await;
        Ok(Client::with_timeout(
            &target.server,
            Some(token),
            Duration::from_secs(30),
        ))
    }
}

/// The project a command without a run id is about: `--project` (or `KILN_PROJECT`), else
/// the token's only project, else `default` (an instance admin's token reaches every
/// project). A token reaching several projects must name one.
pub async fn project_of_token(client: &Client, explicit: Option<&str>) -> anyhow::Result<String> {
    if let Some(project) = explicit {
        return Ok(project.to_owned());
    }
    let whoami = match client.whoami().await {
        Ok(whoami) => whoami,
        // A server from before /api/v1/whoami: the old default.
        Err(error) if error.status() == Some(404) => return Ok(DEFAULT_PROJECT.to_owned()),
        Err(error) => return Err(error.into()),
    };
    match whoami.projects.as_slice() {
        [only] => Ok(only.clone()),
        [] => Ok(DEFAULT_PROJECT.to_owned()),
        several => bail!(
            "this token reaches several projects ({}): pass --project NAME or set KILN_PROJECT",
            several.join(", ")
        ),
    }
}

/// The project of build `run_id`: `--project` (or `KILN_PROJECT`) when given, else the
/// build's own, asked of the server.
pub async fn project_of_run(
    client: &Client,
    explicit: Option<&str>,
    run_id: &str,
) -> anyhow::Result<String> {
    if let Some(project) = explicit {
        return Ok(project.to_owned());
    }
    match client.get_build(run_id).await {
        Ok(build) => Ok(build.project),
        Err(error) if error.status() == Some(404) => bail!(
            "no build '{run_id}' that this token may read: check the run id (`kiln builds` lists them) and that KILN_TOKEN is a token of the build's project"
        ),
        Err(error) => Err(error.into()),
    }
}

/// The project commands fall back to when neither a flag nor the token names one.
pub const DEFAULT_PROJECT: &str = "default";

/// The seed configured the full ingest URL (`…/api/internal/build-events`); Kiln wants
/// the server's base URL.
fn base_of_seed_url(url: &str) -> String {
    match url.find("/api/") {
        Some(index) => url[..index].to_owned(),
        None => url.trim_end_matches('/').to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_urls_become_base_urls() {
        assert_eq!(
            base_of_seed_url("https://ci.example.com/api/internal/build-events"),
            "https://ci.example.com"
        );
        assert_eq!(base_of_seed_url("http://h:1/"), "http://h:1");
    }
}
