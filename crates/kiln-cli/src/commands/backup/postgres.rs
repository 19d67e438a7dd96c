//! PostgreSQL's side of `kiln backup` and `kiln restore`: `pg_dump --format=custom` of an
//! exported snapshot (the blobs to copy are read in that same snapshot), `pg_restore` into
//! an empty database; the password reaches both tools through `PGPASSWORD`, never argv.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use kiln_core::backup::split_postgres_password;

/// The major version of a PostgreSQL client tool (`pg_dump (PostgreSQL) 15.18 …` → 15).
pub fn tool_major_version(tool: &str) -> anyhow::Result<i64> {
    let output = Command::new(tool).arg("--version").output().with_context(|| {
        format!(
            "cannot run {tool}: install PostgreSQL's client tools (Debian: postgresql-client) of the server's version, or put them on PATH"
        )
    })?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace()
        .find_map(|word| {
            word.split('.')
                .next()
                .and_then(|major| major.parse::<i64>().ok())
        })
        .with_context(|| format!("cannot read {tool}'s version from '{}'", text.trim()))
}

/// Refuses a client tool older than the server: `pg_dump` cannot dump a newer server.
pub fn check_tool(tool: &str, server_major: i64) -> anyhow::Result<()> {
    let tool_major = tool_major_version(tool)?;
    if tool_major < server_major {
        bail!(
            "{tool} {tool_major} is older than the PostgreSQL {server_major} server: install {tool} {server_major} or newer (Debian: postgresql-client-{server_major})"
        );
    }
    Ok(())
}

fn command(tool: &str, database_url: &str) -> (Command, String) {
    let (url, password) = split_postgres_password(database_url);
    let mut command = Command::new(tool);
    if let Some(password) = password {
        command.env("PGPASSWORD", password);
    }
    (command, url)
}

fn run(mut command: Command, what: &str) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Dumps the database as the exported snapshot `snapshot` sees it into `file`.
pub fn dump(database_url: &str, snapshot: &str, file: &Path) -> anyhow::Result<()> {
    let (mut command, url) = command("pg_dump", database_url);
    command
        .args(["--format=custom", "--no-owner", "--no-privileges"])
        .arg(format!("--snapshot={snapshot}"))
        .arg("--file")
        .arg(file)
        .arg("--dbname")
        .arg(url);
    run(command, "pg_dump")
}

/// Restores `file` into the database, in one transaction (`--clean` drops what a forced
/// restore replaces).
pub fn restore(database_url: &str, file: &Path, clean: bool) -> anyhow::Result<()> {
    let (mut command, url) = command("pg_restore", database_url);
    command.args([
        "--no-owner",
        "--no-privileges",
        "--exit-on-error",
        "--single-transaction",
    ]);
    if clean {
        command.args(["--clean", "--if-exists"]);
    }
    command.arg("--dbname").arg(url).arg(file);
    run(command, "pg_restore")
}
