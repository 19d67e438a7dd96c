//! The backup file itself: written as header, database, key, blobs and manifest under a
//! temporary name; read back into a staging directory with every entry hashed and held
//! to the manifest before anything is trusted.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use kiln_core::backup::{
    BackupEntry, BackupFile, BackupHeader, BackupManifest, HEADER_ENTRY, MANIFEST_ENTRY,
    SECRET_KEY_ENTRY, blob_entry_path,
};
use sha2::{Digest, Sha256};

/// The most a header or manifest entry may hold (read into memory).
const MAX_JSON_ENTRY_BYTES: u64 = 256 * 1024 * 1024;

/// What goes into a backup file besides its header.
pub struct Contents<'a> {
    /// The database entry's name (`kiln.db` or `kiln.pgdump`) and the file holding it.
    pub database: (&'a str, &'a Path),
    pub secret_key: &'a Path,
    /// The local blob store's root; `None` for an S3 store (nothing copied).
    pub blob_root: Option<&'a Path>,
    /// The blobs the snapshot's manifests name (SHA-256, size).
    pub blobs: &'a [(String, u64)],
}

/// What was written, for the command's report.
#[derive(Default)]
pub struct Written {
    pub size: u64,
    pub blobs: usize,
    pub blob_bytes: u64,
    pub has_key: bool,
    pub missing_blobs: Vec<String>,
    pub warnings: Vec<String>,
}

/// Copies everything read through it, counting and hashing it.
pub struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
}

impl<R: Read> Hashing<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    pub fn finish(self, path: &str) -> BackupFile {
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

/// Writes the backup file `target` (through `partial`, renamed once complete and synced).
pub fn write(
    target: &Path,
    partial: &Path,
    header: &BackupHeader,
    contents: &Contents<'_>,
) -> anyhow::Result<Written> {
    let file =
        File::create(partial).with_context(|| format!("cannot create {}", partial.display()))?;
    let writer: Box<dyn Write> = if is_gzip_name(target) {
        Box::new(flate2::write::GzEncoder::new(
            BufWriter::new(file),
            flate2::Compression::fast(),
        ))
    } else {
        Box::new(BufWriter::new(file))
    };
    let mtime = header.created_at;
    let mut tar = tar::Builder::new(writer);
    append_bytes(&mut tar, HEADER_ENTRY, &header.to_json(), mtime)?;
    let mut manifest = BackupManifest::default();
    let mut written = Written::default();
    let (database_entry, database_path) = contents.database;
    manifest
        .files
        .push(append_file(&mut tar, database_entry, database_path, mtime)?);
    match File::open(contents.secret_key) {
        Ok(_) => {
            manifest.files.push(append_file(
                &mut tar,
                SECRET_KEY_ENTRY,
                contents.secret_key,
                mtime,
            )?);
            written.has_key = true;
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            written.warnings.push(format!(
                "no secret key file at {} (pass --secret-key-file if the server uses another): project secrets and repository credentials in this backup cannot be decrypted without it",
                contents.secret_key.display()
            ))
        }
        Err(error) => bail!(
            "cannot read the secret key file {}: {error}",
            contents.secret_key.display()
        ),
    }
    match contents.blob_root {
        Some(root) => {
            for (sha256, _size) in contents.blobs {
                let path = root.join(&sha256[..2]).join(&sha256[2..4]).join(sha256);
                match File::open(&path) {
                    Ok(_) => {
                        let file =
                            append_file(&mut tar, &blob_entry_path(sha256), &path, mtime)?;
                        if file.sha256 == *sha256 {
                            written.blobs += 1;
                            written.blob_bytes += file.size;
                        } else {
                            written.warnings.push(format!(
                                "blob {sha256} is damaged in the store (its bytes hash to {}): left out; `kiln artifact verify RUN` names the files",
                                file.sha256
                            ));
                            manifest.missing_blobs.push(sha256.clone());
                        }
                        manifest.files.push(file);
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                        manifest.missing_blobs.push(sha256.clone());
                    }
                    Err(error) => bail!("cannot read blob {}: {error}", path.display()),
                }
            }
        }
        None => written.warnings.push(format!(
            "the artifact store is an S3 bucket: its {} blobs are not in this backup (keep the bucket, with versioning, as their backup)",
            contents.blobs.len()
        )),
    }
    append_bytes(&mut tar, MANIFEST_ENTRY, &manifest.to_json(), mtime)?;
    let mut writer = tar.into_inner().context("cannot finish the tar")?;
    writer.flush()?;
    drop(writer);
    File::open(partial)?.sync_all()?;
    std::fs::rename(partial, target)
        .with_context(|| format!("cannot move the backup to {}", target.display()))?;
    if let Some(parent) = target.parent() {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        File::open(parent).and_then(|dir| dir.sync_all()).ok();
    }
    written.size = std::fs::metadata(target).map(|m| m.len()).unwrap_or(0);
    written.missing_blobs = manifest.missing_blobs;
    Ok(written)
}

fn entry_header(size: u64, mtime_ms: i64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o600);
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
    let mut header = entry_header(bytes.len() as u64, mtime_ms);
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
    let mut header = entry_header(size, mtime_ms);
    // The entry's length is fixed up front: a file that changed length under us (it never
    // should: snapshots and blobs are immutable) fails the backup.
    let mut reader = Hashing::new(BufReader::new(file).take(size));
    tar.append_data(&mut header, path, &mut reader)
        .with_context(|| format!("cannot write {path} to the backup"))?;
    if reader.size != size {
        bail!("{} changed while it was copied", source.display());
    }
    Ok(reader.finish(path))
}

/// A backup file read into `staging` and verified: its header, its manifest, and where
/// each entry landed (`staging/ENTRY` for the database and key, `staging/blobs/SHA256`).
pub struct Staged {
    pub header: BackupHeader,
    pub manifest: BackupManifest,
    pub dir: PathBuf,
}

impl Staged {
    pub fn path(&self, entry: &str) -> PathBuf {
        self.dir.join(entry)
    }

    pub fn blob(&self, sha256: &str) -> PathBuf {
        self.dir.join("blobs").join(sha256)
    }
}

/// Reads `from` into the empty directory `staging`, hashing every entry, and holds the
/// result to the manifest (and the header's schema to `latest_schema`).
pub fn read_verified(from: &Path, staging: &Path, latest_schema: i64) -> anyhow::Result<Staged> {
    let name = from.display();
    let mut source =
        BufReader::new(File::open(from).with_context(|| format!("cannot open the backup {name}"))?);
    let gzip = {
        use std::io::BufRead;
        source.fill_buf()?.starts_with(&[0x1f, 0x8b])
    };
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(source))
    } else {
        Box::new(source)
    };
    std::fs::create_dir_all(staging.join("blobs"))?;
    let mut archive = tar::Archive::new(reader);
    let mut header: Option<BackupHeader> = None;
    let mut manifest: Option<BackupManifest> = None;
    let mut found = Vec::new();
    for entry in archive
        .entries()
        .with_context(|| format!("{name} is not a Kiln backup (not a tar file)"))?
    {
        let mut entry = match entry {
            Ok(entry) => entry,
            Err(error) if header.is_none() => {
                bail!("{name} is not a Kiln backup (no tar entry could be read: {error})")
            }
            Err(error) => bail!("{name} is damaged or cut short: {error}"),
        };
        let path = entry.path()?.to_string_lossy().into_owned();
        if header.is_none() && path != HEADER_ENTRY {
            bail!("{name} is not a Kiln backup: it does not start with {HEADER_ENTRY}");
        }
        let kind =
            BackupEntry::classify(&path).map_err(|error| anyhow::anyhow!("{name}: {error}"))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            bail!("{name}: {path} is not a regular file");
        }
        if manifest.is_some() {
            bail!("{name}: {path} follows the manifest");
        }
        match kind {
            BackupEntry::Header | BackupEntry::Manifest => {
                let mut bytes = Vec::new();
                (&mut entry)
                    .take(MAX_JSON_ENTRY_BYTES)
                    .read_to_end(&mut bytes)
                    .with_context(|| format!("{name} is damaged or cut short"))?;
                if kind == BackupEntry::Header {
                    if header.is_some() {
                        bail!("{name}: two {HEADER_ENTRY} entries");
                    }
                    let parsed = BackupHeader::parse(&bytes)
                        .map_err(|error| anyhow::anyhow!("{name}: {error}"))?;
                    parsed
                        .check_schema(latest_schema)
                        .map_err(|error| anyhow::anyhow!("{name}: {error}"))?;
                    header = Some(parsed);
                } else {
                    manifest = Some(
                        BackupManifest::parse(&bytes)
                            .map_err(|error| anyhow::anyhow!("{name}: {error}"))?,
                    );
                }
            }
            BackupEntry::Database
            | BackupEntry::Dump
            | BackupEntry::SecretKey
            | BackupEntry::Blob { .. } => {
                let target = match &kind {
                    BackupEntry::Blob { sha256 } => staging.join("blobs").join(sha256),
                    _ => staging.join(&path),
                };
                let mut out = BufWriter::new(
                    File::create(&target)
                        .with_context(|| format!("cannot write {}", target.display()))?,
                );
                let mut hashing = Hashing::new(&mut entry);
                std::io::copy(&mut hashing, &mut out)
                    .with_context(|| format!("{name} is damaged or cut short (in {path})"))?;
                found.push(hashing.finish(&path));
                out.into_inner()
                    .map_err(|error| error.into_error())?
                    .sync_all()?;
            }
        }
    }
    let header = header.with_context(|| format!("{name} is not a Kiln backup (empty)"))?;
    let manifest = manifest.with_context(|| {
        format!("{name} is damaged or cut short: it ends before its {MANIFEST_ENTRY}")
    })?;
    manifest
        .verify(&found, &header.engine)
        .map_err(|error| anyhow::anyhow!("{name}: {error}"))?;
    Ok(Staged {
        header,
        manifest,
        dir: staging.to_path_buf(),
    })
}

/// Moves the staged secret key and blobs into `data_dir` (the key with mode 0600);
/// answers whether there was a key and how many blobs moved.
pub fn place_key_and_blobs(staged: &Staged, data_dir: &Path) -> anyhow::Result<(bool, usize)> {
    let key = staged.path(SECRET_KEY_ENTRY);
    let has_key = key.exists();
    if has_key {
        let target = data_dir.join("secret.key");
        std::fs::rename(&key, &target)
            .with_context(|| format!("cannot move the secret key to {}", target.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600))?;
    }
    let mut blobs = 0;
    for file in &staged.manifest.files {
        if let Ok(BackupEntry::Blob { sha256 }) = BackupEntry::classify(&file.path) {
            if staged.manifest.missing_blobs.contains(&sha256) {
                continue;
            }
            let target = data_dir.join(blob_entry_path(&sha256));
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::rename(staged.blob(&sha256), &target)
                .with_context(|| format!("cannot move a blob to {}", target.display()))?;
            blobs += 1;
        }
    }
    File::open(data_dir).and_then(|dir| dir.sync_all()).ok();
    Ok((has_key, blobs))
}
