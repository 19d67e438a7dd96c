//! `kiln backup` and `kiln restore`: one file holding a consistent database snapshot (a
//! SQLite copy, or a `pg_dump` of an exported PostgreSQL snapshot), the secret key file and
//! the artifact blobs the snapshot's manifests name, with a checksum per file (the format's
//! rules are `kiln_core::backup`, the snapshots `kiln_store::backup`, the file `archive`).

mod archive;
mod postgres;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use kiln_core::backup::{BackupHeader, DATABASE_ENTRY, DUMP_ENTRY, FORMAT_VERSION};
use kiln_store::Engine;

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// The backup file to write (a tar; gzip-compressed when it ends in .gz or .tgz).
    /// Written under a temporary name and renamed once complete.
    #[arg(long, value_name = "FILE")]
    pub to: PathBuf,
    /// The data directory of the server to back up (its kiln.db, secret.key and
    /// artifacts/blobs).
    #[arg(long, env = "KILN_DATA_DIR", default_value = "./kiln-data")]
    pub data_dir: PathBuf,
    /// The server's database URL when it is not the data dir's kiln.db: sqlite://PATH, or
    /// postgres://… (dumped with pg_dump, which must be as new as the server).
    #[arg(long, env = "KILN_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// The server's secret key file when it is not the data dir's secret.key.
    #[arg(long, env = "KILN_SECRET_KEY_FILE", value_name = "PATH")]
    pub secret_key_file: Option<PathBuf>,
    /// The server's --artifact-store when it is a directory (an s3:// store is left out:
    /// the bucket keeps its own copies).
    #[arg(long, env = "KILN_ARTIFACT_STORE", value_name = "URL_OR_DIR")]
    pub artifact_store: Option<String>,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The backup file `kiln backup` wrote.
    #[arg(long, value_name = "FILE")]
    pub from: PathBuf,
    /// The data directory to restore into (created if missing; must be empty unless
    /// --force). Start the server on it with `kiln serve --data-dir DIR`.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Restore into a directory that is not empty (or, for a PostgreSQL backup, a
    /// database that holds Kiln's tables): its database, secret key and blobs are replaced
    /// (stop any server on it first). Other files stay.
    #[arg(long)]
    pub force: bool,
    /// For a PostgreSQL backup: the empty database to restore into (postgres://…); its
    /// key and blobs go to --data-dir. Start the server with both. Never read from
    /// KILN_DATABASE_URL: a restore names its target itself.
    #[arg(long)]
    pub database_url: Option<String>,
}

pub async fn backup(args: BackupArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let engine = match &args.database_url {
        Some(url) => kiln_store::sql::engine_of(url)
            .map_err(|error| anyhow::anyhow!("--database-url: {error}"))?,
        None => Engine::Sqlite,
    };
    let target = args.to.clone();
    if target.is_dir() {
        bail!(
            "--to {} is a directory: name a file such as kiln-backup.tar.gz",
            target.display()
        );
    }
    let parent = match target.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    // The snapshot and the partial file sit next to the target, on its file system.
    let work = tempfile::Builder::new()
        .prefix(".kiln-backup-")
        .tempdir_in(&parent)
        .with_context(|| {
            format!(
                "cannot create a temporary directory in {}",
                parent.display()
            )
        })?;
    let created_at = now_ms();
    let (entry, snapshot_path, facts) = match engine {
        Engine::Sqlite => {
            let database = match &args.database_url {
                Some(url) => kiln_store::backup::sqlite_path_of(url)
                    .with_context(|| format!("--database-url {url}: use sqlite://PATH"))?,
                None => args.data_dir.join("kiln.db"),
            };
            if !database.is_file() {
                bail!(
                    "no database at {}: point --data-dir at the server's data directory (or --database-url at its database)",
                    database.display()
                );
            }
            let snapshot = work.path().join(DATABASE_ENTRY);
            let facts = {
                let snapshot = snapshot.clone();
                tokio::task::spawn_blocking(move || {
                    kiln_store::backup::snapshot_sqlite(&database, &snapshot).map_err(|error| {
                        anyhow::anyhow!("cannot snapshot {}: {}", database.display(), error.chain())
                    })?;
                    kiln_store::backup::inspect_sqlite(&snapshot).map_err(|error| {
                        anyhow::anyhow!("the snapshot cannot be read back: {}", error.chain())
                    })
                })
                .await
                .context("the snapshot thread failed")??
            };
            (DATABASE_ENTRY, snapshot, facts)
        }
        Engine::Postgres => {
            let url = args.database_url.clone().unwrap_or_default();
            let snapshot = kiln_store::backup::export_postgres_snapshot(&url)
                .await
                .map_err(|error| {
                    anyhow::anyhow!(
                        "cannot open the database for its snapshot: {}",
                        error.chain()
                    )
                })?;
            postgres::check_tool("pg_dump", snapshot.server_major_version)?;
            let dump = work.path().join(DUMP_ENTRY);
            let dumped = {
                let (url, id, dump) = (url.clone(), snapshot.id.clone(), dump.clone());
                tokio::task::spawn_blocking(move || postgres::dump(&url, &id, &dump))
                    .await
                    .context("the pg_dump thread failed")?
            };
            let facts = snapshot.facts.clone();
            snapshot.release().await;
            dumped?;
            (DUMP_ENTRY, dump, facts)
        }
    };
    let snapshot_seconds = started.elapsed().as_secs_f64();

    // The file: header, database, key, blobs (immutable, so copied after the snapshot),
    // manifest.
    let header = BackupHeader {
        format_version: FORMAT_VERSION,
        created_at,
        kiln_version: env!("CARGO_PKG_VERSION").to_owned(),
        engine: engine.as_str().to_owned(),
        schema_version: facts.schema_version,
    };
    let blob_root = match args.artifact_store.as_deref().map(str::trim) {
        None | Some("") => Some(args.data_dir.join("artifacts").join("blobs")),
        Some(url) if url.starts_with("s3://") => None,
        Some(dir) => Some(PathBuf::from(dir)),
    };
    let key_path = args
        .secret_key_file
        .clone()
        .unwrap_or_else(|| args.data_dir.join("secret.key"));
    let partial = work.path().join("backup.partial");
    let blobs = facts.artifact_blobs.clone();
    let written = tokio::task::spawn_blocking({
        let target = target.clone();
        move || {
            archive::write(
                &target,
                &partial,
                &header,
                &archive::Contents {
                    database: (entry, &snapshot_path),
                    secret_key: &key_path,
                    blob_root: blob_root.as_deref(),
                    blobs: &blobs,
                },
            )
        }
    })
    .await
    .context("the backup thread failed")??;
    drop(work);
    outln!(
        "backup written to {}: {} bytes in {:.2} s ({} snapshot {:.2} s: {} events, schema {}; secret key {}; {} artifact blobs, {} bytes)",
        target.display(),
        written.size,
        started.elapsed().as_secs_f64(),
        engine.as_str(),
        snapshot_seconds,
        facts.events,
        facts.schema_version,
        if written.has_key {
            "included"
        } else {
            "MISSING"
        },
        written.blobs,
        written.blob_bytes
    );
    for warning in &written.warnings {
        errln!("warning: {warning}");
    }
    if !written.missing_blobs.is_empty() {
        errln!(
            "warning: {} blob(s) named by artifact manifests were not in the store and are not in the backup (deleted by retention after the snapshot, or lost): {}",
            written.missing_blobs.len(),
            written.missing_blobs.join(", ")
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}

pub async fn restore(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let data_dir = args.data_dir.clone();
    if data_dir.exists() {
        let mut entries = std::fs::read_dir(&data_dir)
            .with_context(|| format!("cannot read {}", data_dir.display()))?;
        if entries.next().is_some() && !args.force {
            bail!(
                "{} is not empty: restore into a new directory, or pass --force to replace its database, secret key and blobs (stop any kiln serve on it first)",
                data_dir.display()
            );
        }
    }
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let target_engine = match &args.database_url {
        Some(url) => kiln_store::sql::engine_of(url)
            .map_err(|error| anyhow::anyhow!("--database-url: {error}"))?,
        None => Engine::Sqlite,
    };
    let staging = tempfile::Builder::new()
        .prefix(".kiln-restore-")
        .tempdir_in(&data_dir)
        .with_context(|| {
            format!(
                "cannot create a temporary directory in {}",
                data_dir.display()
            )
        })?;
    let latest = kiln_store::backup::latest_schema_version(target_engine);
    let staged = {
        let (from, staging) = (args.from.clone(), staging.path().to_path_buf());
        tokio::task::spawn_blocking(move || archive::read_verified(&from, &staging, latest))
            .await
            .context("the restore thread failed")??
    };
    let from = args.from.display();
    let events = match (staged.header.engine.as_str(), target_engine) {
        ("sqlite", Engine::Sqlite) => {
            if args.database_url.is_some() {
                bail!(
                    "{from} holds a SQLite database: it is restored as kiln.db in --data-dir; leave out --database-url"
                );
            }
            let staged_database = staged.path(DATABASE_ENTRY);
            let facts = kiln_store::backup::inspect_sqlite(&staged_database)
                .map_err(|error| anyhow::anyhow!("{from}: {}", error.chain()))?;
            // The old database's WAL and shared memory go first, or SQLite would replay
            // them into the restored file.
            for stale in ["kiln.db-wal", "kiln.db-shm", "kiln.db-journal"] {
                match std::fs::remove_file(data_dir.join(stale)) {
                    Ok(()) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => {
                        bail!("cannot remove {}: {error}", data_dir.join(stale).display())
                    }
                }
            }
            let database = data_dir.join("kiln.db");
            std::fs::rename(&staged_database, &database)
                .with_context(|| format!("cannot move the database to {}", database.display()))?;
            Some(facts.events)
        }
        ("postgres", Engine::Postgres) => {
            let url = args.database_url.clone().unwrap_or_default();
            let (empty, server_major) =
                kiln_store::backup::postgres_target(&url)
                    .await
                    .map_err(|error| {
                        anyhow::anyhow!("cannot open the target database: {}", error.chain())
                    })?;
            if !empty && !args.force {
                bail!(
                    "the target database already holds Kiln's tables: restore into an empty database (createdb), or pass --force to replace them (stop every kiln serve on it first)"
                );
            }
            postgres::check_tool("pg_restore", server_major)?;
            let dump = staged.path(DUMP_ENTRY);
            let clean = !empty;
            tokio::task::spawn_blocking(move || postgres::restore(&url, &dump, clean))
                .await
                .context("the pg_restore thread failed")??;
            None
        }
        ("postgres", Engine::Sqlite) => bail!(
            "{from} holds a PostgreSQL dump: give --database-url postgres://… of an empty database to restore it into"
        ),
        _ => bail!(
            "{from} holds a SQLite database: it is restored as kiln.db in --data-dir, not into PostgreSQL (leave out --database-url)"
        ),
    };
    let (has_key, blobs) = archive::place_key_and_blobs(&staged, &data_dir)?;
    let header = &staged.header;
    outln!(
        "restored {} into {}{} in {:.2} s: {}{} artifact blobs, secret key {}; database schema {}{}",
        from,
        data_dir.display(),
        if target_engine == Engine::Postgres {
            " and the database"
        } else {
            ""
        },
        started.elapsed().as_secs_f64(),
        events.map(|n| format!("{n} events, ")).unwrap_or_default(),
        blobs,
        if has_key {
            "restored"
        } else {
            "not in the backup"
        },
        header.schema_version,
        if header.schema_version < latest {
            format!(" (kiln serve migrates it to {latest} at start)")
        } else {
            String::new()
        }
    );
    outln!(
        "start the server on it: kiln serve --data-dir {}{}",
        data_dir.display(),
        if target_engine == Engine::Postgres {
            " --database-url …"
        } else {
            ""
        }
    );
    if !staged.manifest.missing_blobs.is_empty() {
        errln!(
            "warning: {} blob(s) were missing when the backup was taken; `kiln artifact verify RUN` reports the files that name them: {}",
            staged.manifest.missing_blobs.len(),
            staged.manifest.missing_blobs.join(", ")
        );
    }
    if !has_key {
        errln!(
            "warning: the backup holds no secret key: the server creates a new one, and project secrets and repository credentials must be set again"
        );
    }
    drop(staging);
    Ok(ExitCode::SUCCESS)
}
