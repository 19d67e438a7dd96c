//! A project's secrets from the command line: `kiln secret set|list|rm`. The value is
//! read from standard input (never a command-line argument, which `ps` and shell
//! history would keep) and never printed.

use std::io::Read;
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use clap::{Args, Subcommand};

use super::admin::print_json;
use crate::settings::{ClientArgs, project_of_token};

#[derive(Args, Debug)]
pub struct SecretProject {
    /// The project [default: the token's project if it has one, else default].
    #[arg(long, env = "KILN_PROJECT")]
    project: Option<String>,
    /// Print the API's JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Subcommand, Debug)]
pub enum SecretCommand {
    /// Create or replace a secret; the value is read from standard input (one trailing
    /// newline is dropped), e.g. `printf %s "$TOKEN" | kiln secret set DEPLOY_TOKEN`.
    Set {
        /// The name steps use (`secrets: [NAME]` in .kiln.yml), e.g. DEPLOY_TOKEN.
        name: String,
        #[command(flatten)]
        project: SecretProject,
    },
    /// List the project's secrets by name and last change (values are never shown).
    List {
        #[command(flatten)]
        project: SecretProject,
    },
    /// Delete a secret.
    Rm {
        /// The secret's name.
        name: String,
        #[command(flatten)]
        project: SecretProject,
    },
}

impl SecretProject {
    /// The client, and the project from the flag or the token.
    async fn connect(&self) -> anyhow::Result<(kiln_client::Client, String)> {
        let client = self.client.client().await?;
        let project = project_of_token(&client, self.project.as_deref()).await?;
        Ok((client, project))
    }
}

pub async fn secret(command: SecretCommand) -> anyhow::Result<ExitCode> {
    match command {
        SecretCommand::Set { name, project } => {
            let mut value = String::new();
            std::io::stdin()
                .read_to_string(&mut value)
                .context("cannot read the secret's value from standard input")?;
            if value.ends_with('\n') {
                value.pop();
                if value.ends_with('\r') {
                    value.pop();
                }
            }
            if value.is_empty() {
                return Err(anyhow!(
                    "no value on standard input: pipe it in, e.g. printf %s \"$VALUE\" | kiln secret set {name}"
                ));
            }
            let (client, slug) = project.connect().await?;
            let secret = client.set_secret(&slug, &name, &value).await?;
            if project.json {
                print_json(&secret)?;
            } else {
                outln!(
                    "secret {} of {} set ({})",
                    secret.name,
                    slug,
                    secret.updated_at
                );
            }
        }
        SecretCommand::List { project } => {
            let (client, slug) = project.connect().await?;
            let list = client.list_secrets(&slug).await?;
            if project.json {
                print_json(&list)?;
            } else {
                for secret in list.secrets {
                    outln!("{}\tupdated {}", secret.name, secret.updated_at);
                }
            }
        }
        SecretCommand::Rm { name, project } => {
            let (client, slug) = project.connect().await?;
            client.delete_secret(&slug, &name).await?;
            if !project.json {
                outln!("secret {name} of {slug} deleted");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
