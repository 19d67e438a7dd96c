//! The `kiln` binary: parses flags and environment, then hands over to a command module.

#[macro_use]
mod output;
mod commands;
mod report;
mod settings;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::commands::{
    admin, agent, analytics, artifacts, backup, deployments, emit, lifecycle, run, runs, secrets,
    serve, test_reports, users, watch, webhooks,
};

#[derive(Parser, Debug)]
#[command(
    name = "kiln",
    version,
    about = "Kiln: a self-hosted build observatory and build runner"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the Kiln server.
    Serve(serve::ServeArgs),
    /// Run Kiln for a newcomer: server on SQLite with a local agent, a default project and
    /// tokens on first run; `--demo` builds a small example repository at once.
    Up(serve::UpArgs),
    /// Back up a server's data (a consistent database snapshot — SQLite, or pg_dump for
    /// PostgreSQL — the secret key and the artifact blobs) into one file, while it runs.
    Backup(backup::BackupArgs),
    /// Restore a `kiln backup` file into a new data directory, checking every file.
    Restore(backup::RestoreArgs),
    /// Run a build agent: claims jobs from the server and runs them.
    Agent(agent::AgentArgs),
    /// Report one event of the current build (inside `kiln run`, the run id is inherited).
    Emit(emit::EmitArgs),
    /// Run a command as a build, reporting its lifecycle; exits with the command's code.
    Run(run::RunArgs),
    /// Events that could not be delivered earlier.
    Spool {
        #[command(subcommand)]
        command: SpoolCommand,
    },
    /// Manage projects (instance admin token).
    Project {
        #[command(subcommand)]
        command: admin::ProjectCommand,
    },
    /// Manage users (instance admin token).
    User {
        #[command(subcommand)]
        command: users::UserCommand,
    },
    /// Log in with email and password; prints a personal token for KILN_TOKEN.
    Login(users::LoginArgs),
    /// A project's members and their roles (project admin).
    Member {
        #[command(subcommand)]
        command: users::MemberCommand,
    },
    /// The audit log of admin actions.
    Audit(users::AuditArgs),
    /// Manage project tokens (project admin token).
    Token {
        #[command(subcommand)]
        command: admin::TokenCommand,
    },
    /// List builds, newest first.
    Builds(admin::BuildsArgs),
    /// A project's build statistics over a range of days: success rate, durations,
    /// stages, queue wait, time to recovery.
    Analytics(analytics::AnalyticsArgs),
    /// What a build of a pipeline is expected to take, per stage too, and how accurate
    /// that has been.
    Predict(analytics::PredictArgs),
    /// Upload JUnit XML test reports for the current build (inside `kiln run`, or
    /// --run-id).
    TestReport(test_reports::TestReportArgs),
    /// A build's test results: the failures with their messages (--all: every test).
    Tests(test_reports::TestsArgs),
    /// A project's flaky tests: passed and failed on one commit, or flipping.
    Flaky(test_reports::FlakyArgs),
    /// A build's artifacts: upload, list, download, verify.
    Artifact {
        #[command(subcommand)]
        command: artifacts::ArtifactCommand,
    },
    /// Compare two builds' artifacts file by file (exit 1 unless reproducible).
    Compare(lifecycle::CompareArgs),
    /// A build's report: summary, stages, failures with their last log lines, tests,
    /// artifacts (JSON, or --markdown).
    Report(lifecycle::ReportArgs),
    /// Build an ended build's commit again and compare the two when it ends (--status:
    /// the newest rebuild and its comparison).
    RebuildVerify(lifecycle::RebuildVerifyArgs),
    /// Pin a build so retention keeps its artifacts (--remove: unpin).
    Pin(lifecycle::PinArgs),
    /// A project's artifact retention rule: show it, set it (--keep-builds, --keep-days,
    /// --keep-all), apply it (--run) or show what it would delete (--dry-run).
    Retention(lifecycle::RetentionArgs),
    /// Start a build of the project's repository (--wait follows it and exits with its
    /// result).
    Trigger(runs::TriggerArgs),
    /// With RUN_ID: show one build with its stages (--wait: follow it to its end).
    /// Without: start a build, as `kiln trigger` does.
    Build(runs::BuildArgs),
    /// Cancel a build Kiln runs.
    Cancel(runs::RunRef),
    /// Build the branch's tip and deploy it to an environment (--wait follows it).
    Deploy(deployments::DeployArgs),
    /// Serve an earlier deployed build's site again, at once, without rebuilding.
    Rollback(deployments::RollbackArgs),
    /// A project's environments (live, last good) and its deployment history.
    Deployments(deployments::DeploymentsArgs),
    /// Build the same commit again.
    Retry(runs::RunRef),
    /// Print a build's job logs (-f: follow until the jobs end).
    Logs(runs::LogsArgs),
    /// A project's branches (which to build by themselves, and their priority).
    Branch {
        #[command(subcommand)]
        command: runs::BranchCommand,
    },
    /// Jobs waiting or running, with why each waits.
    Queue(runs::ListArgs),
    /// Build agents, their health and current jobs.
    Agents(runs::ListArgs),
    /// List a build's events (all, or those after --after).
    Events(admin::EventsArgs),
    /// Follow a build live until it ends; exits 0 if it succeeded, 1 otherwise.
    Watch(watch::WatchArgs),
    /// A project's outbound webhooks: endpoints, secrets, deliveries (project admin).
    Webhook {
        #[command(subcommand)]
        command: webhooks::WebhookCommand,
    },
    /// A project's secrets for steps: set (value on stdin), list, rm (project admin).
    Secret {
        #[command(subcommand)]
        command: secrets::SecretCommand,
    },
}

#[derive(Subcommand, Debug)]
enum SpoolCommand {
    /// Send spooled events now; exits 1 if some could not be sent.
    Send(settings::ClientArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Serve(_) | Command::Up(_) | Command::Agent(_) | Command::Run(_) | Command::Emit(_)
    ) {
        // A server, an agent or a build must not stop because its stdout went away.
        output::keep_running_when_stdout_closes();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            errln!("kiln: cannot start the async runtime: {error}");
            return ExitCode::from(70);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::serve(args).await,
            Command::Up(args) => serve::up(args).await,
            Command::Agent(args) => agent::agent(args).await,
            Command::Backup(args) => backup::backup(args).await,
            Command::Restore(args) => backup::restore(args).await,
            Command::Emit(args) => emit::emit(args).await,
            Command::Run(args) => run::run(args).await,
            Command::Spool {
                command: SpoolCommand::Send(args),
            } => report::spool::send_command(args).await,
            Command::Project { command } => admin::project(command).await,
            Command::Token { command } => admin::token(command).await,
            Command::User { command } => users::user(command).await,
            Command::Login(args) => users::login(args).await,
            Command::Member { command } => users::member(command).await,
            Command::Audit(args) => users::audit(args).await,
            Command::Builds(args) => admin::builds(args).await,
            Command::Analytics(args) => analytics::analytics(args).await,
            Command::Predict(args) => analytics::predict(args).await,
            Command::TestReport(args) => test_reports::test_report(args).await,
            Command::Tests(args) => test_reports::tests(args).await,
            Command::Flaky(args) => test_reports::flaky(args).await,
            Command::Artifact { command } => artifacts::run(command).await,
            Command::Compare(args) => lifecycle::compare(args).await,
            Command::Report(args) => lifecycle::report(args).await,
            Command::RebuildVerify(args) => lifecycle::rebuild_verify(args).await,
            Command::Pin(args) => lifecycle::pin(args).await,
            Command::Retention(args) => lifecycle::retention(args).await,
            Command::Trigger(args) => runs::trigger(args).await,
            Command::Build(args) => runs::build(args).await,
            Command::Cancel(args) => runs::cancel(args).await,
            Command::Deploy(args) => deployments::deploy(args).await,
            Command::Rollback(args) => deployments::rollback(args).await,
            Command::Deployments(args) => deployments::list(args).await,
            Command::Retry(args) => runs::retry(args).await,
            Command::Logs(args) => runs::logs(args).await,
            Command::Branch { command } => runs::branch(command).await,
            Command::Queue(args) => runs::queue(args).await,
            Command::Agents(args) => runs::agents(args).await,
            Command::Events(args) => admin::events(args).await,
            Command::Watch(args) => watch::watch(args).await,
            Command::Webhook { command } => webhooks::webhook(command).await,
            Command::Secret { command } => secrets::secret(command).await,
        }
    });
    match result {
        Ok(code) => code,
        // Standard output closed early (`kiln logs RUN | head`): end quietly, as `git log`.
        Err(error) if output::is_closed_pipe(&error) => {
            ExitCode::from(output::CLOSED_PIPE_EXIT_CODE as u8)
        }
        Err(error) => {
            errln!("kiln: {error:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every flag and argument of every command says what it is in `--help`.
    #[test]
    fn every_flag_has_help_text() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for argument in command.get_arguments() {
                let id = argument.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if argument.get_help().is_none() && argument.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in command.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "kiln", &mut missing);
        assert!(missing.is_empty(), "flags without help text: {missing:#?}");
    }
}
