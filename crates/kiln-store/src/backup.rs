//! Database snapshots for `kiln backup` and the checks `kiln restore` makes of one: an
//! online SQLite copy (`VACUUM INTO`), the artifact blobs a snapshot's manifests name, its
//! schema version, and its integrity; on PostgreSQL an exported snapshot that `pg_dump
//! --snapshot` dumps while the same facts are read in it.
//!
//! A snapshot is taken on a connection of its own, never through a running server: in WAL
//! mode `VACUUM INTO` reads inside one read transaction, so it copies the database as of
//! one commit while the server's writer thread goes on committing (readers and the writer
//! do not block each other; the server's checkpoints are PASSIVE and skip the pages the
//! snapshot still reads).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::{Engine, StoreError, StoreResult};

/// What a database snapshot holds, as far as a backup cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotFacts {
    /// The newest migration applied (0 for a database Kiln never opened).
    pub schema_version: i64,
    /// Every blob a build's manifest names: (SHA-256, size), sorted by digest.
    pub artifact_blobs: Vec<(String, u64)>,
    /// Stored events (for the report).
    pub events: i64,
}

/// The schema version this build of Kiln migrates to.
pub fn latest_schema_version(engine: Engine) -> i64 {
    crate::migrations::latest_version(engine)
}

/// The file of a `sqlite://PATH` URL (query parameters dropped), or `None` for another
/// engine.
pub fn sqlite_path_of(database_url: &str) -> Option<PathBuf> {
    let rest = database_url
        .strip_prefix("sqlite://")
        .or_else(|| database_url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty()).then(|| PathBuf::from(path))
}

/// Copies the SQLite database `source` to the new file `target` as of one commit, while
/// other processes (a running `kiln serve`) read and write it. `target` must not exist.
pub fn snapshot_sqlite(source: &Path, target: &Path) -> StoreResult<()> {
    if !source.is_file() {
        return Err(StoreError::Unavailable(format!(
            "no SQLite database at {}",
            source.display()
        )));
    }
    // Read-write without create: a WAL database is read through its shared-memory file,
    // which a read-only connection cannot create when no server runs. Nothing is written.
    let connection = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.busy_timeout(Duration::from_secs(30))?;
    let target = target
        .to_str()
        .ok_or_else(|| StoreError::Unavailable("the snapshot path is not UTF-8".into()))?;
    connection.execute("VACUUM INTO ?1", [target])?;
    Ok(())
}

/// Checks a snapshot (`PRAGMA integrity_check`) and reads what a backup needs from it.
/// Opened read-only: a restored file is inspected before anything starts on it.
pub fn inspect_sqlite(path: &Path) -> StoreResult<SnapshotFacts> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let integrity: String = connection.query_row("PRAGMA integrity_check", [], |row| row.get(0))?;
    if integrity != "ok" {
        return Err(StoreError::Unavailable(format!(
            "the database snapshot {} is damaged: {integrity}",
            path.display()
        )));
    }
    let has_table = |name: &str| -> StoreResult<bool> {
        Ok(connection
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [name],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    };
    let schema_version = if has_table("kiln_migrations")? {
        connection.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM kiln_migrations",
            [],
            |row| row.get(0),
        )?
    } else {
        0
    };
    let events = if has_table("events")? {
        connection.query_row("SELECT COUNT(*) FROM events", [], |row| row.get(0))?
    } else {
        0
    };
    let mut artifact_blobs = Vec::new();
    // Artifacts came with migration 15: an older snapshot names none.
    if has_table("artifacts")? {
        let mut statement = connection.prepare(
            "SELECT b.sha256, b.size FROM artifact_blobs b \
             WHERE EXISTS (SELECT 1 FROM artifacts a WHERE a.sha256 = b.sha256) ORDER BY b.sha256",
        )?;
        let rows = statement.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
        })?;
        for row in rows {
            let (sha256, size) = row?;
            artifact_blobs.push((sha256, u64::try_from(size).unwrap_or(0)));
        }
    }
    Ok(SnapshotFacts {
        schema_version,
        artifact_blobs,
        events,
    })
}

/// A PostgreSQL snapshot exported by an open `REPEATABLE READ` transaction: `pg_dump
/// --snapshot=ID` dumps exactly what this transaction sees, so the facts read here (the
/// blobs to copy) describe the dump. Held until `release`.
pub struct PostgresSnapshot {
    connection: sqlx::PgConnection,
    /// The id `pg_dump --snapshot` takes.
    pub id: String,
    /// The server's major version (`pg_dump` must be as new).
    pub server_major_version: i64,
    pub facts: SnapshotFacts,
}

impl std::fmt::Debug for PostgresSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSnapshot")
            .field("id", &self.id)
            .field("facts", &self.facts)
            .finish()
    }
}

/// Opens a read-only transaction on `database_url`, exports its snapshot and reads the
/// backup's facts in it.
pub async fn export_postgres_snapshot(database_url: &str) -> StoreResult<PostgresSnapshot> {
    use sqlx::{Connection, Row};
    let mut connection = sqlx::PgConnection::connect(database_url).await?;
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut connection)
        .await?;
    let id: String = sqlx::query("SELECT pg_export_snapshot()")
        .fetch_one(&mut connection)
        .await?
        .try_get(0)?;
    let version: String = sqlx::query("SHOW server_version_num")
        .fetch_one(&mut connection)
        .await?
        .try_get(0)?;
    let server_major_version = version.trim().parse::<i64>().unwrap_or(0) / 10_000;
    let has_table = |name: &'static str| {
        sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL").bind(name)
    };
    let schema_version: i64 = if has_table("kiln_migrations")
        .fetch_one(&mut connection)
        .await?
    {
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0)::BIGINT FROM kiln_migrations")
            .fetch_one(&mut connection)
            .await?
    } else {
        0
    };
    let events: i64 = if has_table("events").fetch_one(&mut connection).await? {
        sqlx::query_scalar("SELECT COUNT(*)::BIGINT FROM events")
            .fetch_one(&mut connection)
            .await?
    } else {
        0
    };
    let mut artifact_blobs = Vec::new();
    if has_table("artifacts").fetch_one(&mut connection).await? {
        let rows = sqlx::query(
            "SELECT b.sha256, b.size FROM artifact_blobs b \
             WHERE EXISTS (SELECT 1 FROM artifacts a WHERE a.sha256 = b.sha256) ORDER BY b.sha256",
        )
        .fetch_all(&mut connection)
        .await?;
        for row in rows {
            let size: i64 = row.try_get(1)?;
            artifact_blobs.push((
                row.try_get::<String, _>(0)?,
                u64::try_from(size).unwrap_or(0),
            ));
        }
    }
    Ok(PostgresSnapshot {
        connection,
        id,
        server_major_version,
        facts: SnapshotFacts {
            schema_version,
            artifact_blobs,
            events,
        },
    })
}

impl PostgresSnapshot {
    /// Ends the transaction (after `pg_dump` finished with the snapshot).
    pub async fn release(mut self) {
        use sqlx::Connection;
        let _ = sqlx::query("COMMIT").execute(&mut self.connection).await;
        let _ = self.connection.close().await;
    }
}

/// Whether the PostgreSQL database holds no Kiln schema (a restore's target must not,
/// unless forced), and the server's major version.
pub async fn postgres_target(database_url: &str) -> StoreResult<(bool, i64)> {
    use sqlx::{Connection, Row};
    let mut connection = sqlx::PgConnection::connect(database_url).await?;
    let empty: bool = sqlx::query_scalar("SELECT to_regclass('kiln_migrations') IS NULL")
        .fetch_one(&mut connection)
        .await?;
    let version: String = sqlx::query("SHOW server_version_num")
        .fetch_one(&mut connection)
        .await?
        .try_get(0)?;
    let _ = connection.close().await;
    Ok((empty, version.trim().parse::<i64>().unwrap_or(0) / 10_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_name_their_file() {
        assert_eq!(
            sqlite_path_of("sqlite:///var/lib/kiln/kiln.db?mode=rwc"),
            Some(PathBuf::from("/var/lib/kiln/kiln.db"))
        );
        assert_eq!(
            sqlite_path_of("sqlite:kiln.db"),
            Some(PathBuf::from("kiln.db"))
        );
        assert_eq!(sqlite_path_of("postgres://u@h/db"), None);
    }

    #[test]
    fn a_snapshot_copies_the_database_and_names_its_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("kiln.db");
        let connection = Connection::open(&source).unwrap();
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 CREATE TABLE kiln_migrations (version BIGINT PRIMARY KEY, name TEXT, applied_at BIGINT);
                 INSERT INTO kiln_migrations VALUES (15, 'artifacts', 0);
                 CREATE TABLE events (id BIGINT);
                 INSERT INTO events VALUES (1), (2);
                 CREATE TABLE artifact_blobs (sha256 TEXT PRIMARY KEY, size BIGINT);
                 CREATE TABLE artifacts (path TEXT, sha256 TEXT);
                 INSERT INTO artifact_blobs VALUES ('bb', 2), ('aa', 1), ('cc', 3);
                 INSERT INTO artifacts VALUES ('x', 'bb'), ('y', 'aa'), ('z', 'aa');",
            )
            .unwrap();
        let target = dir.path().join("snapshot.db");
        snapshot_sqlite(&source, &target).unwrap();
        // Written after the snapshot: not in it.
        connection
            .execute("INSERT INTO events VALUES (3)", [])
            .unwrap();
        let facts = inspect_sqlite(&target).unwrap();
        assert_eq!(
            facts,
            SnapshotFacts {
                schema_version: 15,
                artifact_blobs: vec![("aa".into(), 1), ("bb".into(), 2)],
                events: 2,
            }
        );
        // The target must be new.
        assert!(snapshot_sqlite(&source, &target).is_err());
        assert!(snapshot_sqlite(&dir.path().join("missing.db"), &dir.path().join("t")).is_err());
    }

    #[test]
    fn a_damaged_snapshot_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.db");
        std::fs::write(&path, b"not a database at all, just text").unwrap();
        assert!(inspect_sqlite(&path).is_err());
    }
}
