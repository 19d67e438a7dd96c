//! The rules of a `kiln backup` file: its header (format, version, engine, schema), its
//! manifest (every file with size and SHA-256, the blobs that could not be copied), the
//! names an entry may have, and what a restore checks before it trusts one.
//!
//! The file is a tar (gzip-compressed when its name ends in `.gz` or `.tgz`): first the
//! header entry, then the database snapshot, the secret key file and the artifact blobs,
//! last the manifest. The manifest comes last because it carries checksums computed while
//! the entries were written; a restore reads every entry (hashing it) before it believes
//! any, so the order costs nothing.

use serde_json::{Value, json};

/// The header entry, first in the file.
pub const HEADER_ENTRY: &str = "kiln-backup.json";
/// The manifest entry, last in the file.
pub const MANIFEST_ENTRY: &str = "MANIFEST.json";
/// The SQLite snapshot, restored as the data dir's `kiln.db`.
pub const DATABASE_ENTRY: &str = "kiln.db";
/// A PostgreSQL database as `pg_dump --format=custom` wrote it, restored by `pg_restore`.
pub const DUMP_ENTRY: &str = "kiln.pgdump";
/// The secret key file, restored as the data dir's `secret.key`.
pub const SECRET_KEY_ENTRY: &str = "secret.key";
/// Artifact blobs live under this prefix, laid out as the local blob store lays them out.
pub const BLOB_PREFIX: &str = "artifacts/blobs/";

/// What the header's `format` says.
pub const FORMAT: &str = "kiln-backup";
/// The version of the layout this Kiln writes and reads.
pub const FORMAT_VERSION: i64 = 1;

/// What a backup file cannot be trusted for; the message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackupError {
    #[error("not a Kiln backup: {0}")]
    NotABackup(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("the backup is damaged: {0} (take a new backup, or use another copy)")]
    Damaged(String),
}

/// The first entry: what made the backup and what it holds, readable before the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupHeader {
    pub format_version: i64,
    /// Milliseconds since the epoch when the snapshot was taken.
    pub created_at: i64,
    /// The `kiln` version that wrote it.
    pub kiln_version: String,
    /// `sqlite` (the file holds `kiln.db`) or `postgres` (it holds `kiln.pgdump`).
    pub engine: String,
    /// The newest migration the snapshot's database had.
    pub schema_version: i64,
}

impl BackupHeader {
    pub fn to_json(&self) -> Vec<u8> {
        let value = json!({
            "format": FORMAT,
            "formatVersion": self.format_version,
            "createdAt": self.created_at,
            "kilnVersion": self.kiln_version,
            "engine": self.engine,
            "schemaVersion": self.schema_version,
        });
        serde_json::to_vec_pretty(&value).unwrap_or_default()
    }

    /// Reads a header, refusing another format or a layout newer than this Kiln reads.
    pub fn parse(bytes: &[u8]) -> Result<Self, BackupError> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|_| BackupError::NotABackup(format!("{HEADER_ENTRY} is not JSON")))?;
        if value["format"] != FORMAT {
            return Err(BackupError::NotABackup(format!(
                "{HEADER_ENTRY} does not say format \"{FORMAT}\""
            )));
        }
        let format_version = value["formatVersion"].as_i64().unwrap_or(0);
        if format_version > FORMAT_VERSION {
            return Err(BackupError::Unsupported(format!(
                "the backup's layout is version {format_version}, this kiln reads up to {FORMAT_VERSION}: restore it with the newer kiln that wrote it ({})",
                value["kilnVersion"].as_str().unwrap_or("unknown")
            )));
        }
        if format_version < 1 {
            return Err(BackupError::NotABackup("no formatVersion".into()));
        }
        let engine = value["engine"].as_str().unwrap_or_default().to_owned();
        if engine != "sqlite" && engine != "postgres" {
            return Err(BackupError::Unsupported(format!(
                "the backup holds a '{engine}' database; this kiln restores sqlite and postgres backups"
            )));
        }
        Ok(Self {
            format_version,
            created_at: value["createdAt"].as_i64().unwrap_or(0),
            kiln_version: value["kilnVersion"].as_str().unwrap_or_default().to_owned(),
            engine,
            schema_version: value["schemaVersion"].as_i64().unwrap_or(0),
        })
    }

    /// A restore runs migrations forward, never back: a schema newer than this Kiln
    /// knows is refused.
    pub fn check_schema(&self, latest_known: i64) -> Result<(), BackupError> {
        if self.schema_version > latest_known {
            return Err(BackupError::Unsupported(format!(
                "the backup's database has schema version {}, newer than this kiln's {latest_known}: restore it with kiln {} or newer",
                self.schema_version, self.kiln_version
            )));
        }
        Ok(())
    }
}

/// One file of a backup, as written or as found.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct BackupFile {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// The last entry: every file with its checksum, and the blobs the snapshot's manifests
/// name that the backup could not copy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackupManifest {
    pub files: Vec<BackupFile>,
    pub missing_blobs: Vec<String>,
}

impl BackupManifest {
    pub fn to_json(&self) -> Vec<u8> {
        let files: Vec<Value> = self
            .files
            .iter()
            .map(|file| json!({"path": file.path, "size": file.size, "sha256": file.sha256}))
            .collect();
        serde_json::to_vec_pretty(&json!({"files": files, "missingBlobs": self.missing_blobs}))
            .unwrap_or_default()
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, BackupError> {
        let damaged = |what: &str| BackupError::Damaged(format!("{MANIFEST_ENTRY}: {what}"));
        let value: Value = serde_json::from_slice(bytes).map_err(|_| damaged("not JSON"))?;
        let mut files = Vec::new();
        for file in value["files"]
            .as_array()
            .ok_or_else(|| damaged("no files"))?
        {
            let (Some(path), Some(size), Some(sha256)) = (
                file["path"].as_str(),
                file["size"].as_u64(),
                file["sha256"].as_str(),
            ) else {
                return Err(damaged("a file without path, size or sha256"));
            };
            files.push(BackupFile {
                path: path.to_owned(),
                size,
                sha256: sha256.to_owned(),
            });
        }
        let missing_blobs = value["missingBlobs"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|digest| digest.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            files,
            missing_blobs,
        })
    }

    /// Holds the files `found` (each hashed while it was read) to the manifest: the same
    /// set, sizes and digests, a database among them, and each blob named by its digest
    /// (except one the backup found damaged and listed as missing: not restored).
    pub fn verify(&self, found: &[BackupFile], engine: &str) -> Result<(), BackupError> {
        let mut expected = self.files.clone();
        expected.sort();
        let mut found = found.to_vec();
        found.sort();
        for file in &expected {
            match found.binary_search_by(|other| other.path.cmp(&file.path)) {
                Err(_) => {
                    return Err(BackupError::Damaged(format!("{} is missing", file.path)));
                }
                Ok(index) if found[index] != *file => {
                    return Err(BackupError::Damaged(format!(
                        "{} does not match its checksum (SHA-256 {} and {} bytes expected, {} and {} bytes found)",
                        file.path, file.sha256, file.size, found[index].sha256, found[index].size
                    )));
                }
                Ok(_) => {}
            }
        }
        if let Some(extra) = found.iter().find(|file| {
            expected
                .binary_search_by(|other| other.path.cmp(&file.path))
                .is_err()
        }) {
            return Err(BackupError::Damaged(format!(
                "{} is not in the manifest",
                extra.path
            )));
        }
        let (database, other) = if engine == "postgres" {
            (DUMP_ENTRY, DATABASE_ENTRY)
        } else {
            (DATABASE_ENTRY, DUMP_ENTRY)
        };
        if !expected.iter().any(|file| file.path == database)
            || expected.iter().any(|file| file.path == other)
        {
            return Err(BackupError::Damaged(format!(
                "a {engine} backup holds {database} and no {other}"
            )));
        }
        for file in &expected {
            if let Ok(BackupEntry::Blob { sha256 }) = BackupEntry::classify(&file.path)
                && sha256 != file.sha256
                && !self.missing_blobs.contains(&sha256)
            {
                return Err(BackupError::Damaged(format!(
                    "{} holds content with SHA-256 {}",
                    file.path, file.sha256
                )));
            }
        }
        Ok(())
    }
}

/// What an entry of a backup file is, by its name. Any other name is refused, so a
/// restore writes nothing outside the places it knows (no `..`, no absolute paths).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackupEntry {
    Header,
    Manifest,
    Database,
    Dump,
    SecretKey,
    Blob { sha256: String },
}

impl BackupEntry {
    pub fn classify(path: &str) -> Result<Self, BackupError> {
        match path {
            HEADER_ENTRY => return Ok(Self::Header),
            MANIFEST_ENTRY => return Ok(Self::Manifest),
            DATABASE_ENTRY => return Ok(Self::Database),
            DUMP_ENTRY => return Ok(Self::Dump),
            SECRET_KEY_ENTRY => return Ok(Self::SecretKey),
            _ => {}
        }
        if let Some(rest) = path.strip_prefix(BLOB_PREFIX)
            && let [a, b, sha256] = rest.split('/').collect::<Vec<_>>()[..]
            && crate::artifacts::is_sha256_hex(sha256)
            && a == &sha256[..2]
            && b == &sha256[2..4]
        {
            return Ok(Self::Blob {
                sha256: sha256.to_owned(),
            });
        }
        Err(BackupError::Damaged(format!(
            "unexpected entry '{}'",
            path.chars().take(200).collect::<String>()
        )))
    }
}

/// A PostgreSQL URL without its password, and the password (percent-decoded): tools
/// (`pg_dump`, `pg_restore`) get it through `PGPASSWORD`, never on a command line where
/// `ps` shows it. Other URLs come back unchanged.
pub fn split_postgres_password(url: &str) -> (String, Option<String>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_owned(), None);
    };
    if scheme != "postgres" && scheme != "postgresql" {
        return (url.to_owned(), None);
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return (url.to_owned(), None);
    };
    let Some((user, password)) = userinfo.split_once(':') else {
        return (url.to_owned(), None);
    };
    (
        format!("{scheme}://{user}@{host}{path}"),
        Some(crate::net::percent_decode(password)),
    )
}

/// Where a blob goes in the backup file (and, under the data dir, in the local store).
pub fn blob_entry_path(sha256: &str) -> String {
    format!("{BLOB_PREFIX}{}/{}/{sha256}", &sha256[..2], &sha256[2..4])
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn header() -> BackupHeader {
        BackupHeader {
            format_version: FORMAT_VERSION,
            created_at: 1_800_000_000_000,
            kiln_version: "0.1.0".into(),
            engine: "sqlite".into(),
            schema_version: 18,
        }
    }

    #[test]
    fn headers_round_trip_and_newer_ones_are_refused() {
        let header = header();
        assert_eq!(BackupHeader::parse(&header.to_json()).unwrap(), header);
        assert!(header.check_schema(18).is_ok());
        assert!(header.check_schema(19).is_ok());
        let error = header.check_schema(17).unwrap_err().to_string();
        assert!(error.contains("newer than this kiln's 17"), "{error}");
        let newer = BackupHeader {
            format_version: FORMAT_VERSION + 1,
            ..header.clone()
        };
        assert!(matches!(
            BackupHeader::parse(&newer.to_json()),
            Err(BackupError::Unsupported(_))
        ));
        assert!(matches!(
            BackupHeader::parse(b"{\"format\":\"tar\"}"),
            Err(BackupError::NotABackup(_))
        ));
        let postgres = BackupHeader {
            engine: "postgres".into(),
            ..header.clone()
        };
        assert_eq!(BackupHeader::parse(&postgres.to_json()).unwrap(), postgres);
        let mysql = BackupHeader {
            engine: "mysql".into(),
            ..header
        };
        assert!(BackupHeader::parse(&mysql.to_json()).is_err());
    }

    #[test]
    fn postgres_passwords_leave_the_url() {
        assert_eq!(
            split_postgres_password("postgres://kiln:p%40ss@db:5432/kiln?sslmode=require"),
            (
                "postgres://kiln@db:5432/kiln?sslmode=require".to_owned(),
                Some("p@ss".to_owned())
            )
        );
        assert_eq!(
            split_postgres_password("postgres://kiln@db/kiln"),
            ("postgres://kiln@db/kiln".to_owned(), None)
        );
    }

    #[test]
    fn entry_names_are_known_or_refused() {
        assert_eq!(BackupEntry::classify("kiln.db"), Ok(BackupEntry::Database));
        let blob = blob_entry_path(DIGEST);
        assert_eq!(blob, format!("artifacts/blobs/ba/78/{DIGEST}"));
        assert_eq!(
            BackupEntry::classify(&blob),
            Ok(BackupEntry::Blob {
                sha256: DIGEST.into()
            })
        );
        for bad in [
            "../kiln.db",
            "/etc/passwd",
            "artifacts/blobs/../../x",
            &format!("artifacts/blobs/aa/78/{DIGEST}"),
            &format!("artifacts/blobs/ba/78/{DIGEST}/x"),
            "kiln.db-wal",
        ] {
            assert!(BackupEntry::classify(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_manifest_holds_what_was_found_to_account() {
        let database = BackupFile {
            path: DATABASE_ENTRY.into(),
            size: 10,
            sha256: "00".repeat(32),
        };
        let blob = BackupFile {
            path: blob_entry_path(DIGEST),
            size: 3,
            sha256: DIGEST.into(),
        };
        let manifest = BackupManifest {
            files: vec![database.clone(), blob.clone()],
            missing_blobs: vec!["ff".repeat(32)],
        };
        let parsed = BackupManifest::parse(&manifest.to_json()).unwrap();
        assert_eq!(parsed, manifest);
        assert!(
            manifest
                .verify(&[blob.clone(), database.clone()], "sqlite")
                .is_ok()
        );
        let missing = manifest
            .verify(std::slice::from_ref(&database), "sqlite")
            .unwrap_err();
        assert!(missing.to_string().contains("is missing"), "{missing}");
        let changed = BackupFile {
            sha256: "11".repeat(32),
            ..database.clone()
        };
        let error = manifest
            .verify(&[changed, blob.clone()], "sqlite")
            .unwrap_err();
        assert!(
            error.to_string().contains("does not match its checksum"),
            "{error}"
        );
        let extra = BackupFile {
            path: SECRET_KEY_ENTRY.into(),
            size: 1,
            sha256: "22".repeat(32),
        };
        assert!(
            manifest
                .verify(&[database.clone(), blob.clone(), extra], "sqlite")
                .is_err()
        );
        // A blob whose content is not its name.
        let liar = BackupManifest {
            files: vec![
                database.clone(),
                BackupFile {
                    sha256: "33".repeat(32),
                    ..blob
                },
            ],
            missing_blobs: vec![],
        };
        assert!(liar.verify(&liar.files, "sqlite").is_err());
        // No database.
        let empty = BackupManifest::default();
        assert!(empty.verify(&[], "sqlite").is_err());
        // The database must be the engine's.
        assert!(manifest.verify(&manifest.files, "postgres").is_err());
    }
}
