//! The `kiln` binary: parses flags and environment, then hands over to a command module.

mod commands;
mod report;
mod settings;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::commands::{admin, emit, run, serve, watch};

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
    /// Run Kiln for a newcomer: server on SQLite, a default project and token on first run.
    Up(serve::ServeArgs),
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
    /// Manage project tokens (instance admin token).
    Token {
        #[command(subcommand)]
        command: admin::TokenCommand,
    },
    /// List builds, newest first.
    Builds(admin::BuildsArgs),
    /// Show one build with its stages.
    Build(admin::BuildArgs),
    /// List a build's events (all, or those after --after).
    Events(admin::EventsArgs),
    /// Follow a build live until it ends; exits 0 if it succeeded, 1 otherwise.
    Watch(watch::WatchArgs),
}

#[derive(Subcommand, Debug)]
enum SpoolCommand {
    /// Send spooled events now; exits 1 if some could not be sent.
    Send(settings::ClientArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kiln: cannot start the async runtime: {error}");
            return ExitCode::from(70);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::serve(args).await,
            Command::Up(args) => serve::up(args).await,
            Command::Emit(args) => emit::emit(args).await,
            Command::Run(args) => run::run(args).await,
            Command::Spool {
                command: SpoolCommand::Send(args),
            } => report::spool::send_command(args).await,
            Command::Project { command } => admin::project(command).await,
            Command::Token { command } => admin::token(command).await,
            Command::Builds(args) => admin::builds(args).await,
            Command::Build(args) => admin::build(args).await,
            Command::Events(args) => admin::events(args).await,
            Command::Watch(args) => watch::watch(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("kiln: {error:#}");
            ExitCode::from(2)
        }
    }
}
