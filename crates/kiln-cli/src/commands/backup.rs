//! `kiln backup` and `kiln restore`: one file holding a consistent database snapshot, the
//! secret key file and the artifact blobs the snapshot's manifests name, with a checksum
//! per file (the format's rules are `kiln_core::backup`, the snapshot `kiln_store::backup`).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use kiln_core::backup::{
    BackupEntry, BackupFile, BackupHeader, BackupManifest, DATABASE_ENTRY, FORMAT_VERSION,
    HEADER_ENTRY, MANIFEST_ENTRY, SECRET_KEY_ENTRY, blob_entry_path,
};
use sha2::{Digest, Sha256};

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
    /// The server's database URL when it is not the data dir's kiln.db (sqlite://PATH;
    /// a postgres:// URL is refused with the pg_dump commands to use).
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
    /// Restore into a directory that is not empty: its database, secret key and blobs
    /// are replaced (stop any server on it first). Other files stay.
    #[arg(long)]
    pub force: bool,
}

/// The most a header or manifest entry may hold (read into memory).
const MAX_JSON_ENTRY_BYTES: u64 = 256 * 1024 * 1024;

pub async fn backup(args: BackupArgs) -> anyhow::Result<ExitCode> {
    tokio::task::spawn_blocking(move || backup_blocking(&args))
        .await
        .context("the backup thread failed")?
}

pub async fn restore(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    tokio::task::spawn_blocking(move || restore_blocking(&args))
        .await
        .context("the restore thread failed")?
}

/// Copies everything read through it to `inner`, counting and hashing it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
}

impl<R: Read> Hashing<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    fn finish(self, path: &str) -> BackupFile {
        BackupFile {
            path: path.to_owned(),
            size: self.size,
            sha256: hex::encode(self.hasher.finalize()),
        }
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buffer)?;
        self.hasher.update(&buffer[..read]);
        self.size += read as u64;
        Ok(read)
    }
}

fn is_gzip_name(path: &Path) -> bool {
    let name = path.to_string_lossy();
    name.ends_with(".gz") || name.ends_with(".tgz")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}

/// The refusal for a PostgreSQL database: what to run instead.
fn postgres_refusal() -> anyhow::Error {
    anyhow::anyhow!(
        "kiln backup copies SQLite databases; for PostgreSQL back up the database with pg_dump and the data dir's files yourself (docs/operations.md, \"Backup and restore\"):\n  \
         pg_dump --format=custom --file kiln.pgdump \"$KILN_DATABASE_URL\"\n  \
         cp DATA_DIR/secret.key kiln.secret.key   # and DATA_DIR/artifacts/blobs when the blobs are on disk\n\
         restore into an empty database with: pg_restore --no-owner --dbname NEW_DATABASE_URL kiln.pgdump"
    )
}

fn backup_blocking(args: &BackupArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let database = match &args.database_url {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            return Err(postgres_refusal());
        }
        Some(url) => kiln_store::backup::sqlite_path_of(url).with_context(|| {
            format!(
                "--database-url {url}: use sqlite://PATH (or postgres://…, see docs/operations.md)"
            )
        })?,
        None => args.data_dir.join("kiln.db"),
    };
    if !database.is_file() {
        bail!(
            "no database at {}: point --data-dir at the server's data directory (or --database-url at its database)",
            database.display()
        );
    }
    let blob_root = match args.artifact_store.as_deref().map(str::trim) {
        None | Some("") => Some(args.data_dir.join("artifacts").join("blobs")),
        Some(url) if url.starts_with("s3://") => None,
        Some(dir) => Some(PathBuf::from(dir)),
    };
    let key_path = args
        .secret_key_file
        .clone()
        .unwrap_or_else(|| args.data_dir.join("secret.key"));
    let target = &args.to;
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

    // 1. The database as of one commit, while the server goes on writing.
    let snapshot = work.path().join(DATABASE_ENTRY);
    let created_at = now_ms();
    kiln_store::backup::snapshot_sqlite(&database, &snapshot).map_err(|error| {
        anyhow::anyhow!("cannot snapshot {}: {}", database.display(), error.chain())
    })?;
    let snapshot_seconds = started.elapsed().as_secs_f64();
    let facts = kiln_store::backup::inspect_sqlite(&snapshot)
        .map_err(|error| anyhow::anyhow!("the snapshot cannot be read back: {}", error.chain()))?;

    // 2. The file: header, database, key, blobs (immutable, so copied after the
    // snapshot), manifest.
    let partial = work.path().join("backup.partial");
    let file =
        File::create(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
    let writer: Box<dyn Write> = if is_gzip_name(target) {
        Box::new(flate2::write::GzEncoder::new(
            BufWriter::new(file),
            flate2::Compression::fast(),
        ))
    } else {
        Box::new(BufWriter::new(file))
    };
    let mut tar = tar::Builder::new(writer);
    let header = BackupHeader {
        format_version: FORMAT_VERSION,
        created_at,
        kiln_version: env!("CARGO_PKG_VERSION").to_owned(),
        engine: "sqlite".into(),
        schema_version: facts.schema_version,
    };
    append_bytes(&mut tar, HEADER_ENTRY, &header.to_json(), created_at)?;
    let mut manifest = BackupManifest::default();
    manifest.files.push(append_file(
        &mut tar,
        DATABASE_ENTRY,
        &snapshot,
        created_at,
    )?);
    let mut warnings = Vec::new();
    match File::open(&key_path) {
        Ok(_) => manifest
            .files
            .push(append_file(&mut tar, SECRET_KEY_ENTRY, &key_path, created_at)?),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => warnings.push(format!(
            "no secret key file at {} (pass --secret-key-file if the server uses another): project secrets and repository credentials in this backup cannot be decrypted without it",
            key_path.display()
        )),
        Err(error) => bail!("cannot read the secret key file {}: {error}", key_path.display()),
    }
    let mut blob_bytes = 0;
    let mut blobs = 0;
    match &blob_root {
        Some(root) => {
            for (sha256, _size) in &facts.artifact_blobs {
                let path = root.join(&sha256[..2]).join(&sha256[2..4]).join(sha256);
                let entry = blob_entry_path(sha256);
                match File::open(&path) {
                    Ok(_) => {
                        let written = append_file(&mut tar, &entry, &path, created_at)?;
                        if written.sha256 != *sha256 {
                            warnings.push(format!(
                                "blob {sha256} is damaged in the store (its bytes hash to {}): left out; `kiln artifact verify RUN` names the files",
                                written.sha256
                            ));
                            manifest.missing_blobs.push(sha256.clone());
                        } else {
                            blob_bytes += written.size;
                            blobs += 1;
                        }
                        manifest.files.push(written);
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                        manifest.missing_blobs.push(sha256.clone());
                    }
                    Err(error) => bail!("cannot read blob {}: {error}", path.display()),
                }
            }
        }
        None => warnings.push(format!(
            "the artifact store is an S3 bucket: its {} blobs are not in this backup (keep the bucket, with versioning, as their backup)",
            facts.artifact_blobs.len()
        )),
    }
    append_bytes(&mut tar, MANIFEST_ENTRY, &manifest.to_json(), created_at)?;
    let mut writer = tar.into_inner().context("cannot finish the tar")?;
    writer.flush()?;
    drop(writer);
    File::open(&partial)?.sync_all()?;
    std::fs::rename(&partial, target)
        .with_context(|| format!("cannot move the backup to {}", target.display()))?;
    File::open(&parent).and_then(|dir| dir.sync_all()).ok();
    let size = std::fs::metadata(target).map(|m| m.len()).unwrap_or(0);
    outln!(
        "backup written to {}: {} bytes in {:.2} s (database snapshot {:.2} s: {} events, schema {}; secret key {}; {} artifact blobs, {} bytes)",
        target.display(),
        size,
        started.elapsed().as_secs_f64(),
        snapshot_seconds,
        facts.events,
        facts.schema_version,
        if manifest.files.iter().any(|f| f.path == SECRET_KEY_ENTRY) {
            "included"
        } else {
            "MISSING"
        },
        blobs,
        blob_bytes
    );
    for warning in &warnings {
        errln!("warning: {warning}");
    }
    if !manifest.missing_blobs.is_empty() {
        errln!(
            "warning: {} blob(s) named by artifact manifests were not in the store and are not in the backup (deleted by retention after the snapshot, or lost): {}",
            manifest.missing_blobs.len(),
            manifest.missing_blobs.join(", ")
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn entry_header(size: u64, mtime_ms: i64, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(mode);
    header.set_mtime(u64::try_from(mtime_ms / 1000).unwrap_or(0));
    header.set_entry_type(tar::EntryType::Regular);
    header
}

fn append_bytes<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    bytes: &[u8],
    mtime_ms: i64,
) -> anyhow::Result<()> {
    let mut header = entry_header(bytes.len() as u64, mtime_ms, 0o600);
    tar.append_data(&mut header, path, bytes)
        .with_context(|| format!("cannot write {path} to the backup"))
}

/// Appends the file at `source` as `path`, returning its size and SHA-256 as written.
fn append_file<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    source: &Path,
    mtime_ms: i64,
) -> anyhow::Result<BackupFile> {
    let file = File::open(source).with_context(|| format!("cannot read {}", source.display()))?;
    let size = file.metadata()?.len();
    let mut header = entry_header(size, mtime_ms, 0o600);
    // The tar entry's length is fixed up front: a file that changes length under us (it
    // never should: snapshots and blobs are immutable) fails the backup.
    let mut reader = Hashing::new(BufReader::new(file).take(size));
    tar.append_data(&mut header, path, &mut reader)
        .with_context(|| format!("cannot write {path} to the backup"))?;
    if reader.size != size {
        bail!("{} changed while it was copied", source.display());
    }
    Ok(reader.finish(path))
}

fn restore_blocking(args: &RestoreArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let data_dir = &args.data_dir;
    if data_dir.exists() {
        let mut entries = std::fs::read_dir(data_dir)
            .with_context(|| format!("cannot read {}", data_dir.display()))?;
        if entries.next().is_some() && !args.force {
            bail!(
                "{} is not empty: restore into a new directory, or pass --force to replace its database, secret key and blobs (stop any kiln serve on it first)",
                data_dir.display()
            );
        }
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let mut source = BufReader::new(
        File::open(&args.from)
            .with_context(|| format!("cannot open the backup {}", args.from.display()))?,
    );
    let gzip = {
        use std::io::BufRead;
        source.fill_buf()?.starts_with(&[0x1f, 0x8b])
    };
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(source))
    } else {
        Box::new(source)
    };
    let staging = tempfile::Builder::new()
        .prefix(".kiln-restore-")
        .tempdir_in(data_dir)
        .with_context(|| {
            format!(
                "cannot create a temporary directory in {}",
                data_dir.display()
            )
        })?;
    std::fs::create_dir(staging.path().join("blobs"))?;
    let from = args.from.display();
    let mut archive = tar::Archive::new(reader);
    let mut header: Option<BackupHeader> = None;
    let mut manifest: Option<BackupManifest> = None;
    let mut found = Vec::new();
    for entry in archive
        .entries()
        .with_context(|| format!("{from} is not a Kiln backup (not a tar file)"))?
    {
        let mut entry = match entry {
            Ok(entry) => entry,
            Err(error) if header.is_none() => {
                bail!("{from} is not a Kiln backup (no tar entry could be read: {error})")
            }
            Err(error) => bail!("{from} is damaged or cut short: {error}"),
        };
        let path = entry.path()?.to_string_lossy().into_owned();
        if header.is_none() && path != HEADER_ENTRY {
            bail!("{from} is not a Kiln backup: it does not start with {HEADER_ENTRY}");
        }
        let kind =
            BackupEntry::classify(&path).map_err(|error| anyhow::anyhow!("{from}: {error}"))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            bail!("{from}: {path} is not a regular file");
        }
        if manifest.is_some() {
            bail!("{from}: {path} follows the manifest");
        }
        match kind {
            BackupEntry::Header | BackupEntry::Manifest => {
                let mut bytes = Vec::new();
                (&mut entry)
                    .take(MAX_JSON_ENTRY_BYTES)
                    .read_to_end(&mut bytes)
                    .with_context(|| format!("{from} is damaged or cut short"))?;
                if kind == BackupEntry::Header {
                    if header.is_some() {
                        bail!("{from}: two {HEADER_ENTRY} entries");
                    }
                    let parsed = BackupHeader::parse(&bytes)
                        .map_err(|error| anyhow::anyhow!("{from}: {error}"))?;
                    parsed
                        .check_schema(kiln_store::backup::latest_schema_version(
                            kiln_store::Engine::Sqlite,
                        ))
                        .map_err(|error| anyhow::anyhow!("{from}: {error}"))?;
                    header = Some(parsed);
                } else {
                    manifest = Some(
                        BackupManifest::parse(&bytes)
                            .map_err(|error| anyhow::anyhow!("{from}: {error}"))?,
                    );
                }
            }
            BackupEntry::Database | BackupEntry::SecretKey | BackupEntry::Blob { .. } => {
                let target = match &kind {
                    BackupEntry::Blob { sha256 } => staging.path().join("blobs").join(sha256),
                    _ => staging.path().join(&path),
                };
                let mut out = BufWriter::new(
                    File::create(&target)
                        .with_context(|| format!("cannot write {}", target.display()))?,
                );
                let mut hashing = Hashing::new(&mut entry);
                std::io::copy(&mut hashing, &mut out)
                    .with_context(|| format!("{from} is damaged or cut short (in {path})"))?;
                found.push(hashing.finish(&path));
                out.into_inner()
                    .map_err(|error| error.into_error())?
                    .sync_all()?;
            }
        }
    }
    let header = header.with_context(|| format!("{from} is not a Kiln backup (empty)"))?;
    let manifest = manifest.with_context(|| {
        format!("{from} is damaged or cut short: it ends before its {MANIFEST_ENTRY}")
    })?;
    manifest
        .verify(&found)
        .map_err(|error| anyhow::anyhow!("{from}: {error}"))?;
    let staged_database = staging.path().join(DATABASE_ENTRY);
    let facts = kiln_store::backup::inspect_sqlite(&staged_database)
        .map_err(|error| anyhow::anyhow!("{from}: {}", error.chain()))?;

    // Verified: move into place. The old database's WAL and shared memory go first, or
    // SQLite would replay them into the restored file.
    let database = data_dir.join("kiln.db");
    for stale in ["kiln.db-wal", "kiln.db-shm", "kiln.db-journal"] {
        match std::fs::remove_file(data_dir.join(stale)) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => bail!("cannot remove {}: {error}", data_dir.join(stale).display()),
        }
    }
    std::fs::rename(&staged_database, &database)
        .with_context(|| format!("cannot move the database to {}", database.display()))?;
    let key = staging.path().join(SECRET_KEY_ENTRY);
    let has_key = key.exists();
    if has_key {
        let target = data_dir.join("secret.key");
        std::fs::rename(&key, &target)
            .with_context(|| format!("cannot move the secret key to {}", target.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600))?;
    }
    let mut blobs = 0;
    for file in &manifest.files {
        if let Ok(BackupEntry::Blob { sha256 }) = BackupEntry::classify(&file.path) {
            if manifest.missing_blobs.contains(&sha256) {
                continue;
            }
            let target = data_dir.join(blob_entry_path(&sha256));
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::rename(staging.path().join("blobs").join(&sha256), &target)
                .with_context(|| format!("cannot move a blob to {}", target.display()))?;
            blobs += 1;
        }
    }
    File::open(data_dir).and_then(|dir| dir.sync_all()).ok();
    let latest = kiln_store::backup::latest_schema_version(kiln_store::Engine::Sqlite);
    outln!(
        "restored {} into {} in {:.2} s: {} events, {} artifact blobs, secret key {}; database schema {}{}",
        from,
        data_dir.display(),
        started.elapsed().as_secs_f64(),
        facts.events,
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
        "start the server on it: kiln serve --data-dir {}",
        data_dir.display()
    );
    if !manifest.missing_blobs.is_empty() {
        errln!(
            "warning: {} blob(s) were missing when the backup was taken; `kiln artifact verify RUN` reports the files that name them: {}",
            manifest.missing_blobs.len(),
            manifest.missing_blobs.join(", ")
        );
    }
    if !has_key {
        errln!(
            "warning: the backup holds no secret key: the server creates a new one, and project secrets and repository credentials must be set again"
        );
    }
    Ok(ExitCode::SUCCESS)
}
