//! Accounts from the command line: `kiln user create|list`, `kiln login` (a personal
//! token from an email and password), `kiln member set|remove|list`, `kiln audit`.

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use kiln_client::protocol::{
    CreateNamedToken, CreateUser, CreatedToken, ErrorBody, Login, Session,
};

use crate::settings::ClientArgs;

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create a user (instance admin token); prints a one-time password unless
    /// --password-stdin gives one.
    Create {
        /// The user's email address, which they log in with.
        #[arg(long)]
        email: String,
        /// The user's display name.
        #[arg(long)]
        name: String,
        /// Make the user an instance admin.
        #[arg(long)]
        instance_admin: bool,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List users (instance admin token).
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Deactivate a user (instance admin token): their sessions end at once, their
    /// logins and personal tokens are refused.
    Disable {
        /// The user's email address or id.
        user: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Reactivate a deactivated user (instance admin token).
    Enable {
        /// The user's email address or id.
        user: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Set another user's password (instance admin token) and end their sessions;
    /// prints a one-time password unless --password-stdin gives one.
    ResetPassword {
        /// The user's email address or id.
        user: String,
        /// Read the new password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum MemberCommand {
    /// Give a user a role in a project (viewer, developer, admin).
    Set {
        /// The project [default: the token's project if it has one, else default].
        #[arg(long, env = "KILN_PROJECT")]
        project: Option<String>,
        /// The user's email or id.
        user: String,
        /// viewer, developer or admin.
        role: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a user from a project.
    Remove {
        /// The project [default: the token's project if it has one, else default].
        #[arg(long, env = "KILN_PROJECT")]
        project: Option<String>,
        /// The user's email or id.
        user: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A project's members and their roles.
    List {
        /// The project [default: the token's project if it has one, else default].
        #[arg(long, env = "KILN_PROJECT")]
        project: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// Your email address (the password is read from standard input).
    #[arg(long)]
    email: String,
    /// A name for the personal token this creates.
    #[arg(long, default_value = "kiln cli")]
    token_name: String,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Only this project's entries (default: every project you administer).
    #[arg(long)]
    project: Option<String>,
    /// How many entries, newest first.
    #[arg(long, default_value_t = 50)]
    limit: i64,
    #[command(flatten)]
    client: ClientArgs,
}

/// A typed answer of a request made outside the client (the session's cookie flow); an
/// error status becomes the server's message.
async fn answer<T: serde::de::DeserializeOwned>(response: reqwest::Response) -> anyhow::Result<T> {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        let message = serde_json::from_str::<ErrorBody>(&text)
            .map(|body| body.error.message)
            .unwrap_or(text);
        bail!("{message} ({status})");
    }
    serde_json::from_str(&text)
        .with_context(|| format!("the server's answer is not understood: {text}"))
}

fn read_password(prompt: &str) -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        let mut stderr = std::io::stderr();
        let _ = std::io::Write::write_all(&mut stderr, prompt.as_bytes());
        let _ = std::io::Write::flush(&mut stderr);
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

/// A member command's project: the flag, else the token's only project, else default.
async fn member_project(client: &ClientArgs, explicit: Option<&str>) -> anyhow::Result<String> {
    if let Some(project) = explicit {
        return Ok(project.to_owned());
    }
    crate::settings::project_of_token(&client.client().await?, None).await
}

pub async fn user(command: UserCommand) -> anyhow::Result<ExitCode> {
    match command {
        UserCommand::Create {
            email,
            name,
            instance_admin,
            password_stdin,
            client,
        } => {
            let password = password_stdin
                .then(|| read_password("password: "))
                .transpose()?;
            let request = CreateUser {
                email,
                name,
                password,
                instance_admin: Some(instance_admin),
            };
            let created = client.client().await?.create_user(&request).await?;
            errln!("created user {} ({})", created.user.email, created.user.id);
            if let Some(password) = created.password {
                errln!("one-time password (shown only now; log in with `kiln login --email …`):");
                outln!("{password}");
            }
        }
        UserCommand::List { client } => {
            for user in client.client().await?.list_users().await?.users {
                outln!(
                    "{}\t{}\t{}\t{}",
                    user.id,
                    user.email,
                    user.name,
                    if user.instance_admin {
                        "instance admin"
                    } else {
                        ""
                    }
                );
            }
        }
        UserCommand::Disable { user, client } => {
            let changed = client
                .client()
                .await?
                .set_user_disabled(&user, true)
                .await?;
            errln!(
                "deactivated user {} ({})",
                changed.user.email,
                changed.user.id
            );
        }
        UserCommand::Enable { user, client } => {
            let changed = client
                .client()
                .await?
                .set_user_disabled(&user, false)
                .await?;
            errln!(
                "reactivated user {} ({})",
                changed.user.email,
                changed.user.id
            );
        }
        UserCommand::ResetPassword {
            user,
            password_stdin,
            client,
        } => {
            let password = password_stdin
                .then(|| read_password("new password: "))
                .transpose()?;
            let changed = client
                .client()
                .await?
                .reset_user_password(&user, password)
                .await?;
            errln!(
                "set the password of {} ({}); their sessions ended",
                changed.user.email,
                changed.user.id
            );
            if let Some(password) = changed.password {
                errln!("one-time password (shown only now):");
                outln!("{password}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Logs in with email and password (read from standard input) and prints a new personal
/// token, to use as KILN_TOKEN.
pub async fn login(args: LoginArgs) -> anyhow::Result<ExitCode> {
    let target = args.client.target()?;
    crate::report::spool::resend_before_command(&target).await;
    let password = read_password("password: ")?;
    kiln_client::install_crypto_provider();
    let http = reqwest::Client::new();
    let login = http
        .post(format!("{}/api/v1/session", target.server))
        .json(&Login {
            email: args.email.clone(),
            password,
        })
        .send()
        .await
        .context("cannot reach the Kiln server")?;
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned);
    let session: Session = answer(login).await?;
    let cookie = cookie.context("the server set no session cookie")?;
    let csrf = session.csrf_token;
    let token: CreatedToken = answer(
        http.post(format!("{}/api/v1/me/tokens", target.server))
            .header("cookie", &cookie)
            .header("x-csrf-token", &csrf)
            .json(&CreateNamedToken {
                name: args.token_name,
            })
            .send()
            .await?,
    )
    .await?;
    // The session was only needed to make the token.
    let _ = http
        .delete(format!("{}/api/v1/session", target.server))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .send()
        .await;
    errln!(
        "logged in as {}; your personal token (shown only now; export KILN_TOKEN=…):",
        args.email
    );
    outln!("{}", token.token);
    Ok(ExitCode::SUCCESS)
}

pub async fn member(command: MemberCommand) -> anyhow::Result<ExitCode> {
    match command {
        MemberCommand::Set {
            project,
            user,
            role,
            client,
        } => {
            let project = member_project(&client, project.as_deref()).await?;
            let member = client
                .client()
                .await?
                .set_member(&project, &user, &role)
                .await?;
            outln!("{} is {} of {project}", member.user.email, member.role);
        }
        MemberCommand::Remove {
            project,
            user,
            client,
        } => {
            let project = member_project(&client, project.as_deref()).await?;
            client
                .client()
                .await?
                .remove_member(&project, &user)
                .await?;
            outln!("removed {user} from {project}");
        }
        MemberCommand::List { project, client } => {
            let project = member_project(&client, project.as_deref()).await?;
            for member in client.client().await?.list_members(&project).await?.members {
                outln!("{}\t{}", member.user.email, member.role);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn audit(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let log = args
        .client
        .client()
        .await?
        .audit_log(args.project.as_deref(), args.limit)
        .await?;
    for entry in log.entries {
        let actor = match entry.actor_name {
            Some(name) => format!("{name} ({})", entry.actor),
            None => entry.actor,
        };
        outln!(
            "{}\t{}\t{}\t{}",
            entry.at,
            actor,
            entry.action,
            entry.target.unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}
