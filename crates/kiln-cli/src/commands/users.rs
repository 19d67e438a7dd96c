//! Accounts from the command line: `kiln user create|list`, `kiln login` (a personal
//! token from an email and password), `kiln member set|remove|list`, `kiln audit`.

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

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

async fn request(
    client: &ClientArgs,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let answer = client
        .client()
        .await?
        .send_value(method, path, body.as_ref())
        .await?;
    Ok(answer.unwrap_or(Value::Null))
}

async fn answer(response: reqwest::Response) -> anyhow::Result<Value> {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if !status.is_success() {
        bail!(
            "{} ({status})",
            value["error"]["message"].as_str().unwrap_or(&text)
        );
    }
    Ok(value)
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
    let command_kind = match &command {
        UserCommand::Disable { .. } => "disable",
        _ => "other",
    };
    match command {
        UserCommand::Create {
            email,
            name,
            instance_admin,
            password_stdin,
            client,
        } => {
            let mut body = json!({"email": email, "name": name, "instanceAdmin": instance_admin});
            if password_stdin {
                body["password"] = json!(read_password("password: ")?);
            }
            let created =
                request(&client, reqwest::Method::POST, "/api/v1/users", Some(body)).await?;
            errln!(
                "created user {} ({})",
                created["user"]["email"].as_str().unwrap_or("?"),
                created["user"]["id"]
            );
            if let Some(password) = created["password"].as_str() {
                errln!("one-time password (shown only now; log in with `kiln login --email …`):");
                outln!("{password}");
            }
        }
        UserCommand::List { client } => {
            let users = request(&client, reqwest::Method::GET, "/api/v1/users", None).await?;
            for user in users["users"].as_array().into_iter().flatten() {
                outln!(
                    "{}\t{}\t{}\t{}",
                    user["id"],
                    user["email"].as_str().unwrap_or_default(),
                    user["name"].as_str().unwrap_or_default(),
                    if user["instanceAdmin"] == true {
                        "instance admin"
                    } else {
                        ""
                    }
                );
            }
        }
        UserCommand::Disable { user, client } | UserCommand::Enable { user, client } => {
            let action = if matches!(command_kind, "disable") {
                "disable"
            } else {
                "enable"
            };
            let path = format!("/api/v1/users/{}/{action}", user);
            let changed = request(&client, reqwest::Method::POST, &path, Some(json!({}))).await?;
            errln!(
                "{} user {} ({})",
                if action == "disable" {
                    "deactivated"
                } else {
                    "reactivated"
                },
                changed["user"]["email"].as_str().unwrap_or("?"),
                changed["user"]["id"]
            );
        }
        UserCommand::ResetPassword {
            user,
            password_stdin,
            client,
        } => {
            let mut body = json!({});
            if password_stdin {
                body["password"] = json!(read_password("new password: ")?);
            }
            let path = format!("/api/v1/users/{}/password", user);
            let changed = request(&client, reqwest::Method::POST, &path, Some(body)).await?;
            errln!(
                "set the password of {} ({}); their sessions ended",
                changed["user"]["email"].as_str().unwrap_or("?"),
                changed["user"]["id"]
            );
            if let Some(password) = changed["password"].as_str() {
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
        .json(&json!({"email": args.email, "password": password}))
        .send()
        .await
        .context("cannot reach the Kiln server")?;
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned);
    let session = answer(login).await?;
    let cookie = cookie.context("the server set no session cookie")?;
    let csrf = session["csrfToken"].as_str().unwrap_or_default().to_owned();
    let token = answer(
        http.post(format!("{}/api/v1/me/tokens", target.server))
            .header("cookie", &cookie)
            .header("x-csrf-token", &csrf)
            .json(&json!({"name": args.token_name}))
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
    outln!("{}", token["token"].as_str().unwrap_or_default());
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
            let answer = request(
                &client,
                reqwest::Method::PUT,
                &format!("/api/v1/projects/{project}/members/{user}"),
                Some(json!({"role": role})),
            )
            .await?;
            outln!(
                "{} is {} of {project}",
                answer["user"]["email"].as_str().unwrap_or("?"),
                answer["role"].as_str().unwrap_or("?")
            );
        }
        MemberCommand::Remove {
            project,
            user,
            client,
        } => {
            let project = member_project(&client, project.as_deref()).await?;
            request(
                &client,
                reqwest::Method::DELETE,
                &format!("/api/v1/projects/{project}/members/{user}"),
                None,
            )
            .await?;
            outln!("removed {user} from {project}");
        }
        MemberCommand::List { project, client } => {
            let project = member_project(&client, project.as_deref()).await?;
            let members = request(
                &client,
                reqwest::Method::GET,
                &format!("/api/v1/projects/{project}/members"),
                None,
            )
            .await?;
            for member in members["members"].as_array().into_iter().flatten() {
                outln!(
                    "{}\t{}",
                    member["user"]["email"].as_str().unwrap_or_default(),
                    member["role"].as_str().unwrap_or_default()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn audit(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let mut path = format!("/api/v1/audit?limit={}", args.limit);
    if let Some(project) = &args.project {
        path.push_str(&format!("&project={project}"));
    }
    let log = request(&args.client, reqwest::Method::GET, &path, None).await?;
    for entry in log["entries"].as_array().into_iter().flatten() {
        let actor = entry["actor"].as_str().unwrap_or_default();
        let actor = match entry["actorName"].as_str() {
            Some(name) => format!("{name} ({actor})"),
            None => actor.to_owned(),
        };
        outln!(
            "{}\t{}\t{}\t{}",
            entry["at"].as_str().unwrap_or_default(),
            actor,
            entry["action"].as_str().unwrap_or_default(),
            entry["target"].as_str().unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}
