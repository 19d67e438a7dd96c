//! The dependency cache on the agent: entries keyed by a hash of a step's lockfiles
//! ([`cache_key`]), holding copies of workspace directories such as `node_modules` or
//! `target`, size-capped with least-recently-used eviction.
//!
//! Layout under the cache directory, one directory per entry:
//!
//! ```text
//! <dir>/<key>/manifest.json   {"bytes": 12345, "paths": ["node_modules"]}, written last
//! <dir>/<key>/last-used       a use stamp (Unix milliseconds, strictly increasing)
//! <dir>/<key>/tree/<path>     the saved copies, symlinks and permission bits included
//! <dir>/.tmp-*                saves in progress (removed when the cache is opened)
//! ```
//!
//! A save builds its entry under `.tmp-*` and renames it into place, so an entry is
//! either whole or absent; when two saves of one key race, the first rename wins and
//! the other copy is removed. The index is read back from the directory whenever it is
//! needed, so it survives an agent restart; an entry without a readable manifest is a
//! leftover and is removed. One agent process owns a cache directory: entries being
//! restored are pinned against eviction in memory, not on disk.
//!
//! Copies are plain file copies (`copy_file_range`, so reflinks where the filesystem
//! has them); regular files keep their permission bits and modification time, symlinks
//! are recreated as symlinks (never followed), other file types (sockets, fifos) are
//! skipped.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

const MANIFEST_FILE: &str = "manifest.json";
const LAST_USED_FILE: &str = "last-used";
const TREE_DIR: &str = "tree";
const TEMP_PREFIX: &str = ".tmp-";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(
        "cache path '{path}' {reason}: list paths relative to the workspace, such as \
         'node_modules' or 'target'"
    )]
    InvalidPath { path: String, reason: &'static str },
    #[error("'{key}' is not a cache key: use the hex string returned by cache_key")]
    InvalidKey { key: String },
    #[error("cache key file '{path}' could not be read ({source}); list files, not directories")]
    KeyFile {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the cache task stopped unexpectedly: {0}")]
    TaskFailed(String),
}

/// The hash identifying a cache entry: the step name and, for each key file in order,
/// its path and contents (a missing file counts as "missing", so a step whose lockfile
/// does not exist yet still gets a stable key). Key files are workspace-relative
/// paths; absolute paths and `..` are refused.
pub fn cache_key(step: &str, key_files: &[String], workspace: &Path) -> Result<String, CacheError> {
    let mut contents: Vec<Option<Vec<u8>>> = Vec::with_capacity(key_files.len());
    for key_file in key_files {
        let relative = parse_relative_path(key_file)?;
        match fs::read(workspace.join(&relative)) {
            Ok(bytes) => contents.push(Some(bytes)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => contents.push(None),
            Err(source) => {
                return Err(CacheError::KeyFile {
                    path: key_file.clone(),
                    source,
                });
            }
        }
    }
    // The same function the server uses on the commit, so both name the entry alike.
    Ok(kiln_core::cache_key::cache_key(
        step,
        key_files
            .iter()
            .zip(&contents)
            .map(|(path, bytes)| (path.as_str(), bytes.as_deref())),
    ))
}

/// What a save did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SavedInfo {
    /// The size of the entry (sum of file sizes and symlink target lengths).
    pub bytes: u64,
    pub outcome: SaveOutcome,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveOutcome {
    /// A new entry was written.
    Stored,
    /// An entry with this key already existed (possibly written by a concurrent save);
    /// it was kept and marked as used.
    AlreadyCached,
    /// The paths alone are bigger than the cache's size cap; nothing was kept.
    /// `bytes` then counts what was seen before giving up.
    TooLarge,
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    bytes: u64,
    /// The workspace-relative paths this entry holds (those that existed at save time).
    paths: Vec<String>,
}

/// A size-capped dependency cache in one directory. Cheap to clone; clones share the
/// pins that keep entries being restored from eviction.
#[derive(Clone, Debug)]
pub struct Cache {
    inner: Arc<CacheInner>,
}

#[derive(Debug)]
struct CacheInner {
    dir: PathBuf,
    max_bytes: u64,
    /// Entries currently being restored, with a count: eviction skips them.
    pinned: Mutex<HashMap<String, usize>>,
    /// The last use stamp handed out, so stamps are strictly increasing within the
    /// process even when two uses fall in the same millisecond.
    last_stamp: Mutex<u64>,
}

impl Cache {
    /// Opens (creating if needed) the cache in `dir`, removing leftovers of saves
    /// interrupted by a crash, and evicts down to `max_bytes`.
    pub async fn open(dir: PathBuf, max_bytes: u64) -> Result<Cache, CacheError> {
        blocking(move || {
            fs::create_dir_all(&dir).map_err(io_error("create the cache directory", &dir))?;
            let mut last_stamp = 0;
            for entry in fs::read_dir(&dir).map_err(io_error("read the cache directory", &dir))? {
                let entry = entry.map_err(io_error("read the cache directory", &dir))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let path = entry.path();
                if name.starts_with(TEMP_PREFIX) {
                    remove_path(&path)?;
                } else if parse_key(&name).is_ok() {
                    match read_entry(&path) {
                        Some((_, stamp)) => last_stamp = last_stamp.max(stamp),
                        None => remove_path(&path)?,
                    }
                }
            }
            let cache = Cache {
                inner: Arc::new(CacheInner {
                    dir,
                    max_bytes,
                    pinned: Mutex::new(HashMap::new()),
                    last_stamp: Mutex::new(last_stamp),
                }),
            };
            cache.evict_blocking()?;
            Ok(cache)
        })
        .await
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The total size of all entries, as the eviction counts it.
    pub async fn total_bytes(&self) -> Result<u64, CacheError> {
        let cache = self.clone();
        blocking(move || Ok(cache.entries()?.iter().map(|entry| entry.bytes).sum())).await
    }

    /// Puts the entry's copies of `paths` back into `workspace`, replacing whatever is
    /// there. Returns `false` (a miss) when there is no entry for `key`. Paths the
    /// entry does not hold (they did not exist at save time) are left alone.
    pub async fn restore(
        &self,
        key: &str,
        paths: &[String],
        workspace: &Path,
    ) -> Result<bool, CacheError> {
        let key = parse_key(key)?;
        let relative_paths = parse_cache_paths(paths)?;
        let cache = self.clone();
        let workspace = workspace.to_owned();
        blocking(move || {
            let entry_dir = cache.inner.dir.join(&key);
            let _pin = cache.pin(&key);
            let Some((manifest, _)) = read_entry(&entry_dir) else {
                return Ok(false);
            };
            let tree = entry_dir.join(TREE_DIR);
            for (path, relative) in paths_iter(&relative_paths) {
                if !manifest.paths.iter().any(|saved| saved == path) {
                    continue;
                }
                let destination = workspace.join(relative);
                ensure_no_symlink_parent(&workspace, relative, path)?;
                remove_path(&destination)?;
                if let Some(parent) = destination.parent() {
                    fs::create_dir_all(parent).map_err(io_error("create the directory", parent))?;
                }
                copy_tree(
                    &tree.join(relative),
                    &destination,
                    &mut ByteBudget::unlimited(),
                )?;
            }
            cache.touch(&entry_dir)?;
            Ok(true)
        })
        .await
    }

    /// Saves copies of `paths` (those that exist) from `workspace` under `key`, then
    /// evicts least-recently-used entries until the cache fits its size cap. An
    /// existing entry for `key` is kept as it is (first writer wins).
    pub async fn save(
        &self,
        key: &str,
        paths: &[String],
        workspace: &Path,
    ) -> Result<SavedInfo, CacheError> {
        let key = parse_key(key)?;
        let relative_paths = parse_cache_paths(paths)?;
        let cache = self.clone();
        let workspace = workspace.to_owned();
        blocking(move || {
            let entry_dir = cache.inner.dir.join(&key);
            if let Some((manifest, _)) = read_entry(&entry_dir) {
                cache.touch(&entry_dir)?;
                return Ok(SavedInfo {
                    bytes: manifest.bytes,
                    outcome: SaveOutcome::AlreadyCached,
                });
            }
            let temp_dir = cache.inner.dir.join(format!(
                "{TEMP_PREFIX}{key}-{}-{}",
                std::process::id(),
                cache.next_stamp()
            ));
            let result = cache.save_into(&temp_dir, &entry_dir, &relative_paths, &workspace);
            // On success the temp dir was renamed away; on any failure it is removed.
            if temp_dir.exists() {
                remove_path(&temp_dir)?;
            }
            let info = result?;
            cache.evict_blocking()?;
            Ok(info)
        })
        .await
    }

    fn save_into(
        &self,
        temp_dir: &Path,
        entry_dir: &Path,
        relative_paths: &[(String, PathBuf)],
        workspace: &Path,
    ) -> Result<SavedInfo, CacheError> {
        let tree = temp_dir.join(TREE_DIR);
        fs::create_dir_all(&tree).map_err(io_error("create the directory", &tree))?;
        let mut budget = ByteBudget::limited(self.inner.max_bytes);
        let mut saved_paths = Vec::new();
        for (path, relative) in paths_iter(relative_paths) {
            ensure_no_symlink_parent(workspace, relative, path)?;
            let source = workspace.join(relative);
            if fs::symlink_metadata(&source).is_err() {
                continue;
            }
            let destination = tree.join(relative);
            if let Some(parent) = destination.parent() {
                fs::create_dir_all(parent).map_err(io_error("create the directory", parent))?;
            }
            copy_tree(&source, &destination, &mut budget)?;
            if budget.exceeded() {
                return Ok(SavedInfo {
                    bytes: budget.used,
                    outcome: SaveOutcome::TooLarge,
                });
            }
            saved_paths.push(path.to_owned());
        }
        let manifest = Manifest {
            bytes: budget.used,
            paths: saved_paths,
        };
        write_file(
            &temp_dir.join(LAST_USED_FILE),
            self.next_stamp().to_string(),
        )?;
        let manifest_json = serde_json::to_vec(&manifest).map_err(|error| CacheError::Io {
            action: "encode the manifest",
            path: temp_dir.to_owned(),
            source: io::Error::other(error),
        })?;
        write_file(&temp_dir.join(MANIFEST_FILE), manifest_json)?;
        match fs::rename(temp_dir, entry_dir) {
            Ok(()) => Ok(SavedInfo {
                bytes: manifest.bytes,
                outcome: SaveOutcome::Stored,
            }),
            // A concurrent save renamed its copy first (the target is a non-empty
            // directory now); theirs is as good as ours.
            Err(_) if read_entry(entry_dir).is_some() => {
                self.touch(entry_dir)?;
                Ok(SavedInfo {
                    bytes: manifest.bytes,
                    outcome: SaveOutcome::AlreadyCached,
                })
            }
            Err(source) => Err(CacheError::Io {
                action: "move the new entry into place at",
                path: entry_dir.to_owned(),
                source,
            }),
        }
    }

    fn pin(&self, key: &str) -> Pin {
        let mut pinned = lock(&self.inner.pinned);
        *pinned.entry(key.to_owned()).or_insert(0) += 1;
        Pin {
            cache: self.clone(),
            key: key.to_owned(),
        }
    }

    fn next_stamp(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|duration| duration.as_millis() as u64)
            .unwrap_or(0);
        let mut last_stamp = lock(&self.inner.last_stamp);
        *last_stamp = now.max(*last_stamp + 1);
        *last_stamp
    }

    fn touch(&self, entry_dir: &Path) -> Result<(), CacheError> {
        write_file(
            &entry_dir.join(LAST_USED_FILE),
            self.next_stamp().to_string(),
        )
    }

    fn entries(&self) -> Result<Vec<IndexEntry>, CacheError> {
        let dir = &self.inner.dir;
        let mut entries = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_error("read the cache directory", dir))? {
            let entry = entry.map_err(io_error("read the cache directory", dir))?;
            let key = entry.file_name().to_string_lossy().into_owned();
            if parse_key(&key).is_err() {
                continue;
            }
            if let Some((manifest, last_used)) = read_entry(&entry.path()) {
                entries.push(IndexEntry {
                    key,
                    bytes: manifest.bytes,
                    last_used,
                });
            }
        }
        Ok(entries)
    }

    fn evict_blocking(&self) -> Result<(), CacheError> {
        let mut entries = self.entries()?;
        let mut total: u64 = entries.iter().map(|entry| entry.bytes).sum();
        entries.sort_by_key(|entry| entry.last_used);
        for entry in entries {
            if total <= self.inner.max_bytes {
                break;
            }
            // Rename first, so the entry disappears at once and a crash halfway
            // through the removal leaves a temp dir that the next open removes. The
            // pin lock is held across the rename so a restore cannot start reading
            // the entry in between.
            let entry_dir = self.inner.dir.join(&entry.key);
            let doomed = self.inner.dir.join(format!(
                "{TEMP_PREFIX}evicted-{}-{}",
                entry.key,
                self.next_stamp()
            ));
            {
                let pinned = lock(&self.inner.pinned);
                if pinned.contains_key(&entry.key) {
                    continue;
                }
                match fs::rename(&entry_dir, &doomed) {
                    Ok(()) => {}
                    // A concurrent save's eviction got there first.
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {
                        total -= entry.bytes;
                        continue;
                    }
                    Err(source) => {
                        return Err(CacheError::Io {
                            action: "evict",
                            path: entry_dir,
                            source,
                        });
                    }
                }
            }
            remove_path(&doomed)?;
            tracing::debug!(key = %entry.key, bytes = entry.bytes, "evicted a cache entry");
            total -= entry.bytes;
        }
        Ok(())
    }
}

struct IndexEntry {
    key: String,
    bytes: u64,
    last_used: u64,
}

/// Keeps an entry from eviction while it is being restored.
struct Pin {
    cache: Cache,
    key: String,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut pinned = lock(&self.cache.inner.pinned);
        if let Some(count) = pinned.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                pinned.remove(&self.key);
            }
        }
    }
}

/// A poisoned lock only means another thread panicked while holding it; the maps it
/// guards stay consistent (single inserts and removes), so keep going.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The manifest and use stamp of a complete entry, `None` for anything else.
fn read_entry(entry_dir: &Path) -> Option<(Manifest, u64)> {
    let manifest_bytes = fs::read(entry_dir.join(MANIFEST_FILE)).ok()?;
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes).ok()?;
    let last_used = fs::read_to_string(entry_dir.join(LAST_USED_FILE))
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0);
    Some((manifest, last_used))
}

fn parse_key(key: &str) -> Result<String, CacheError> {
    if !key.is_empty() && key.len() <= 128 && key.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(key.to_ascii_lowercase())
    } else {
        Err(CacheError::InvalidKey {
            key: key.to_owned(),
        })
    }
}

/// A workspace-relative path without `..`, `.` or a root.
fn parse_relative_path(path: &str) -> Result<PathBuf, CacheError> {
    let invalid = |reason| CacheError::InvalidPath {
        path: path.to_owned(),
        reason,
    };
    if path.is_empty() {
        return Err(invalid("is empty"));
    }
    let mut relative = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) => relative.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(invalid("leaves the workspace ('..')")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(invalid("is absolute"));
            }
        }
    }
    if relative.as_os_str().is_empty() {
        return Err(invalid("is the workspace itself"));
    }
    Ok(relative)
}

fn parse_cache_paths(paths: &[String]) -> Result<Vec<(String, PathBuf)>, CacheError> {
    paths
        .iter()
        .map(|path| Ok((path.clone(), parse_relative_path(path)?)))
        .collect()
}

fn paths_iter(paths: &[(String, PathBuf)]) -> impl Iterator<Item = (&str, &Path)> {
    paths
        .iter()
        .map(|(path, relative)| (path.as_str(), relative.as_path()))
}

/// Refuses a path whose parent directories inside the workspace include a symlink:
/// restoring through it would write outside the workspace.
fn ensure_no_symlink_parent(
    workspace: &Path,
    relative: &Path,
    path: &str,
) -> Result<(), CacheError> {
    let mut current = workspace.to_owned();
    let mut components = relative.components().peekable();
    while let Some(component) = components.next() {
        if components.peek().is_none() {
            break;
        }
        current.push(component);
        if fs::symlink_metadata(&current).is_ok_and(|meta| meta.file_type().is_symlink()) {
            return Err(CacheError::InvalidPath {
                path: path.to_owned(),
                reason: "goes through a symlink in the workspace",
            });
        }
    }
    Ok(())
}

/// Counts copied bytes and stops a copy that goes over a limit.
struct ByteBudget {
    used: u64,
    limit: Option<u64>,
}

impl ByteBudget {
    fn unlimited() -> Self {
        Self {
            used: 0,
            limit: None,
        }
    }

    fn limited(limit: u64) -> Self {
        Self {
            used: 0,
            limit: Some(limit),
        }
    }

    fn exceeded(&self) -> bool {
        self.limit.is_some_and(|limit| self.used > limit)
    }
}

/// Copies `source` (a file, symlink or directory tree) to `destination`, which must
/// not exist. Stops early, leaving a partial copy, once `budget` is exceeded.
fn copy_tree(source: &Path, destination: &Path, budget: &mut ByteBudget) -> Result<(), CacheError> {
    // Directories get their permissions after their contents, in case they are
    // read-only; deepest first.
    let mut directory_permissions = Vec::new();
    let mut pending = vec![(source.to_owned(), destination.to_owned())];
    while let Some((from, to)) = pending.pop() {
        if budget.exceeded() {
            break;
        }
        let metadata = fs::symlink_metadata(&from).map_err(io_error("read", &from))?;
        let file_type = metadata.file_type();
        if file_type.is_symlink() {
            let target = fs::read_link(&from).map_err(io_error("read the symlink", &from))?;
            budget.used += target.as_os_str().len() as u64;
            symlink(&target, &to).map_err(io_error("create the symlink", &to))?;
        } else if file_type.is_dir() {
            fs::create_dir(&to).map_err(io_error("create the directory", &to))?;
            fs::set_permissions(&to, fs::Permissions::from_mode(0o700))
                .map_err(io_error("set permissions on", &to))?;
            directory_permissions.push((to.clone(), metadata.permissions()));
            for child in fs::read_dir(&from).map_err(io_error("read the directory", &from))? {
                let child = child.map_err(io_error("read the directory", &from))?;
                pending.push((child.path(), to.join(child.file_name())));
            }
        } else if file_type.is_file() {
            budget.used += metadata.len();
            if budget.exceeded() {
                break;
            }
            fs::copy(&from, &to).map_err(io_error("copy", &from))?;
            if let Ok(modified) = metadata.modified() {
                // Build tools (cargo, make) compare modification times; a failure
                // here only costs a rebuild, so it is not an error.
                // Setting times needs ownership, not write access, so a read-only
                // handle also works for read-only files.
                let _ = fs::File::open(&to).and_then(|file| file.set_modified(modified));
            }
        }
    }
    for (directory, permissions) in directory_permissions.into_iter().rev() {
        fs::set_permissions(&directory, permissions)
            .map_err(io_error("set permissions on", &directory))?;
    }
    Ok(())
}

/// Removes a file, symlink (not its target) or directory tree; a missing path is fine.
/// Read-only directories (Go's module cache makes them) are made writable first.
fn remove_path(path: &Path) -> Result<(), CacheError> {
    let metadata = match fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(CacheError::Io {
                action: "read",
                path: path.to_owned(),
                source,
            });
        }
    };
    if !metadata.is_dir() {
        return fs::remove_file(path).map_err(io_error("remove", path));
    }
    if fs::remove_dir_all(path).is_ok() {
        return Ok(());
    }
    make_tree_writable(path);
    fs::remove_dir_all(path).map_err(io_error("remove", path))
}

fn make_tree_writable(path: &Path) {
    let mut pending = vec![path.to_owned()];
    while let Some(directory) = pending.pop() {
        let _ = fs::set_permissions(&directory, fs::Permissions::from_mode(0o700));
        if let Ok(children) = fs::read_dir(&directory) {
            for child in children.flatten() {
                if child.file_type().is_ok_and(|file_type| file_type.is_dir()) {
                    pending.push(child.path());
                }
            }
        }
    }
}

fn write_file(path: &Path, contents: impl AsRef<[u8]>) -> Result<(), CacheError> {
    fs::write(path, contents).map_err(io_error("write", path))
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CacheError {
    let path = path.to_owned();
    move |source| CacheError::Io {
        action,
        path,
        source,
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, CacheError> + Send + 'static,
) -> Result<T, CacheError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| CacheError::TaskFailed(error.to_string()))?
}
