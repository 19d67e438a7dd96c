//! Fresh databases for tests: a new SQLite file, or a new PostgreSQL database on the
//! server named by `KILN_TEST_DATABASE_URL` (which `.ci/run` starts).

use std::sync::Arc;

use sqlx::{Connection, Executor};

use crate::sql::db;
use crate::sql::trusted;

use crate::{Engine, SqlStore, Store};

/// Declares one test per engine, `NAME::sqlite` and `NAME::postgres`, each calling
/// `async fn NAME(engine: Engine)`: the one engine macro of every crate's tests.
/// PostgreSQL variants need `KILN_TEST_DATABASE_URL` (set by `.ci/run`); without it they
/// are listed as ignored with that reason. `engine_test!(NAME, smtp)` also needs a real
/// SMTP server (Python's aiosmtpd), and is ignored with the reason where there is none
/// (the cfgs come from `build-support/prerequisites.rs`).
#[macro_export]
macro_rules! engine_test {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(kiln_store::Engine::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[cfg_attr(
                not(kiln_postgres_tests),
                ignore = "PostgreSQL skipped: set KILN_TEST_DATABASE_URL (bash .ci/run does)"
            )]
            async fn postgres() {
                super::$name(kiln_store::Engine::Postgres).await;
            }
        }
    };
    ($name:ident, smtp) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[cfg_attr(
                not(kiln_smtp_tests),
                ignore = "SMTP skipped: python3 cannot import aiosmtpd (bash .ci/smtp.sh installs it)"
            )]
            async fn sqlite() {
                super::$name(kiln_store::Engine::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[cfg_attr(
                not(all(kiln_postgres_tests, kiln_smtp_tests)),
                ignore = "PostgreSQL or SMTP skipped: set KILN_TEST_DATABASE_URL and install aiosmtpd (bash .ci/run does)"
            )]
            async fn postgres() {
                super::$name(kiln_store::Engine::Postgres).await;
            }
        }
    };
}

/// The environment variable naming a PostgreSQL server for tests.
pub const POSTGRES_URL_VAR: &str = "KILN_TEST_DATABASE_URL";

/// A fresh database; the SQLite directory is removed when this is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    pub url: String,
    _directory: Option<tempfile::TempDir>,
}

impl TestDatabase {
    pub async fn create(engine: Engine) -> TestDatabase {
        match engine {
            Engine::Sqlite => {
                let directory = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}/kiln.db", directory.path().display());
                TestDatabase {
                    url,
                    _directory: Some(directory),
                }
            }
            Engine::Postgres => {
                let base = std::env::var(POSTGRES_URL_VAR).unwrap_or_else(|_| {
                    panic!("{POSTGRES_URL_VAR} must name a PostgreSQL server for this test")
                });
                let name = format!("kiln_t_{}", uuid::Uuid::new_v4().simple());
                let mut admin = sqlx::PgConnection::connect(&base)
                    .await
                    .expect("connect to KILN_TEST_DATABASE_URL");
                admin
                    .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .await
                    .expect("create test database");
                admin.close().await.ok();
                let (prefix, _) = base.rsplit_once('/').expect("URL with a database name");
                TestDatabase {
                    url: format!("{prefix}/{name}"),
                    _directory: None,
                }
            }
        }
    }

    /// A copy of a SQLite database file (one an earlier Kiln wrote), in a directory of
    /// its own that goes when this is dropped.
    pub fn from_sqlite_file(file: &std::path::Path) -> TestDatabase {
        let directory = tempfile::tempdir().expect("temp dir");
        let copy = directory.path().join("kiln.db");
        std::fs::copy(file, &copy).expect("copy the database file");
        TestDatabase {
            url: format!("sqlite://{}", copy.display()),
            _directory: Some(directory),
        }
    }

    /// A fresh PostgreSQL database restored from a plain-text `pg_dump` (`--inserts`) an
    /// earlier Kiln's database was dumped to; `psql` meta-commands (`\restrict`) are left
    /// out, the rest runs as one script on a connection of its own.
    pub async fn from_postgres_dump(script: &str) -> TestDatabase {
        let database = TestDatabase::create(Engine::Postgres).await;
        let script: String = script
            .lines()
            .filter(|line| !line.starts_with('\\'))
            .map(|line| format!("{line}\n"))
            .collect();
        let mut connection = sqlx::PgConnection::connect(&database.url)
            .await
            .expect("connect to the new database");
        sqlx::raw_sql(sqlx::AssertSqlSafe(script))
            .execute(&mut connection)
            .await
            .expect("the dump restores");
        connection.close().await.ok();
        database
    }

    /// A database someone else made at `url` (a private PostgreSQL server a test starts
    /// and stops); nothing is removed when this is dropped.
    pub fn existing(url: String) -> TestDatabase {
        TestDatabase {
            url,
            _directory: None,
        }
    }

    /// PostgreSQL only: cuts every other connection to this database, as a restart or an
    /// administrator's `pg_terminate_backend` would; answers how many were cut.
    pub async fn cut_connections(&self) -> i64 {
        let mut admin = sqlx::PgConnection::connect(&self.url)
            .await
            .expect("connect to the test database");
        sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()) AS t",
        )
        .fetch_one(&mut admin)
        .await
        .expect("cut the connections")
    }

    /// Brings the empty database to the schema of migration `last_version` only (an
    /// earlier release's), and runs `setup` statements there: rows an earlier Kiln wrote.
    pub async fn at_schema_version(&self, last_version: i64, setup: &[&str]) {
        let engine = crate::sql::engine_of(&self.url).expect("a database URL");
        let mut connection = db::Conn::open(&self.url)
            .await
            .expect("connect to the test database");
        crate::migrations::run_up_to(&mut connection, engine, last_version)
            .await
            .expect("earlier migrations apply");
        for statement in setup {
            db::query(trusted(statement.to_string()))
                .unprepared()
                .execute(&mut connection)
                .await
                .expect("setup statement");
        }
        connection.close().await;
    }

    /// The first column of every row of `sql` as integers: for tests that look at what
    /// the store wrote without an API for it.
    pub async fn integers(&self, sql: &str) -> Vec<i64> {
        let mut connection = db::Conn::open(&self.url)
            .await
            .expect("connect to the test database");
        let values = db::query_scalar::<i64>(trusted(sql.to_owned()))
            .fetch_all(&mut connection)
            .await
            .expect("test query (integers)");
        connection.close().await;
        values
    }

    /// Every row of `sql`, each column as text (integers and reals written out, NULL as
    /// `None`): for tests that look at what the store wrote without an API for it.
    pub async fn rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let mut connection = db::Conn::open(&self.url)
            .await
            .expect("connect to the test database");
        let rows = db::query(trusted(sql.to_owned()))
            .fetch_all(&mut connection)
            .await
            .expect("test query (rows)");
        connection.close().await;
        rows.iter()
            .map(|row| {
                (0..row.len())
                    .map(|column| {
                        row.try_get::<Option<i64>, _>(column)
                            .map(|value| value.map(|value| value.to_string()))
                            .or_else(|_| {
                                row.try_get::<Option<f64>, _>(column)
                                    .map(|value| value.map(|value| value.to_string()))
                            })
                            .or_else(|_| row.try_get::<Option<String>, _>(column))
                            .expect("an integer, real or text column")
                    })
                    .collect()
            })
            .collect()
    }

    pub async fn open(&self) -> Arc<SqlStore> {
        Arc::new(SqlStore::connect(&self.url).await.expect("open store"))
    }

    pub async fn open_dyn(&self) -> Arc<dyn Store> {
        self.open().await
    }
}
