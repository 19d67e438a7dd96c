//! `GuardedPool`: a pool that answers fast while its database is known to be down.
//!
//! sqlx's pool keeps trying to connect for its whole acquire timeout (10 s) while the
//! database refuses connections, so with PostgreSQL stopped every request waited 10 s
//! for its 503 (and the ingestor's queue behind one such wait). The guard keeps the
//! pool's patience for a database that answers and drops it for one that does not:
//!
//! - an error that says the database may be gone (I/O, TLS, a wait for a connection that
//!   ran out, PostgreSQL's connection-exception and shutdown codes) starts a **probe**:
//!   one fresh connection attempt outside the pool, bounded by `PROBE_TIMEOUT`;
//! - the database is **known down** from a probe that failed until a probe connects;
//! - while it is known down, taking a connection waits at most `DOWN_WAIT` (the caller
//!   gets `PoolTimedOut`, which the server answers with 503 and `Retry-After`), and
//!   each such wait starts a probe if none ran in the last `PROBE_INTERVAL`, so the
//!   guard notices the database's return by itself while requests keep coming;
//! - a wait that began before the database was known down is cut to `DOWN_WAIT` from
//!   the moment it is known.
//!
//! Only waiting for a connection is shortened: a query already running is never cut.
//! At most one probe runs at a time, and probes connect directly (not through the
//! pool), so a full pool is never mistaken for a dead database.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_core::future::BoxFuture;
use futures_core::stream::BoxStream;
use futures_util::TryStreamExt;
use sqlx::pool::{MaybePoolConnection, PoolConnection};
use sqlx::{ConnectOptions, Connection, Database, Either, Execute, Executor, Pool, SqlStr};
use sqlx_core::ext::async_stream::TryAsyncStream;
use tokio::sync::watch;

/// How long taking a connection waits while the database is known down.
pub(crate) const DOWN_WAIT: Duration = Duration::from_millis(500);
/// The least time between two probes' starts.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// How long one probe's connection attempt may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// A pool and what the guard knows about its database; cheap to clone.
pub(crate) struct GuardedPool<DB: Database> {
    pool: Pool<DB>,
    health: Arc<Health>,
}

struct Health {
    /// Whether the database is known down (the last probe failed).
    down: watch::Sender<bool>,
    probing: AtomicBool,
    last_probe: Mutex<Option<Instant>>,
}

impl<DB: Database> Clone for GuardedPool<DB> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            health: self.health.clone(),
        }
    }
}

impl<DB: Database> std::fmt::Debug for GuardedPool<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedPool")
            .field("down", &self.is_down())
            .finish_non_exhaustive()
    }
}

/// Whether `error` may mean the database cannot be reached (rather than a refused or
/// failed statement).
fn may_be_unreachable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(error) => error.code().is_some_and(|code| {
            // Class 08: connection exception; 57P01–57P03: the server shuts down,
            // crashed or cannot accept connections yet.
            code.starts_with("08") || code.starts_with("57P")
        }),
        _ => false,
    }
}

impl<DB: Database> GuardedPool<DB> {
    pub fn new(pool: Pool<DB>) -> Self {
        Self {
            pool,
            health: Arc::new(Health {
                down: watch::Sender::new(false),
                probing: AtomicBool::new(false),
                last_probe: Mutex::new(None),
            }),
        }
    }

    /// Whether the database is known down (the last probe could not connect).
    pub fn is_down(&self) -> bool {
        *self.health.down.borrow()
    }

    /// A connection from the pool: the pool's whole wait while the database answers,
    /// at most `DOWN_WAIT` while it is known down.
    pub async fn acquire(&self) -> Result<PoolConnection<DB>, sqlx::Error> {
        let mut down = self.health.down.subscribe();
        let result = if *down.borrow_and_update() {
            self.probe_soon();
            tokio::time::timeout(DOWN_WAIT, self.pool.acquire())
                .await
                .unwrap_or(Err(sqlx::Error::PoolTimedOut))
        } else {
            let acquire = self.pool.acquire();
            let mut acquire = std::pin::pin!(acquire);
            let known_down = async { down.wait_for(|down| *down).await.is_ok() };
            tokio::select! {
                result = &mut acquire => result,
                _ = known_down => {
                    tokio::time::timeout(DOWN_WAIT, acquire)
                        .await
                        .unwrap_or(Err(sqlx::Error::PoolTimedOut))
                }
            }
        };
        if let Err(error) = &result {
            self.observe(error);
        }
        result
    }

    /// A transaction on a connection taken as `acquire` takes it.
    pub async fn begin(&self) -> Result<sqlx::Transaction<'static, DB>, sqlx::Error> {
        let connection = self.acquire().await?;
        sqlx::Transaction::begin(MaybePoolConnection::PoolConnection(connection), None)
            .await
            .inspect_err(|error| self.observe(error))
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Checks an error a caller met on one of this pool's connections: one that may
    /// mean the database is gone starts a probe.
    pub fn observe(&self, error: &sqlx::Error) {
        if may_be_unreachable(error) {
            self.probe_soon();
        }
    }

    /// Starts a probe unless one is running or one started within `PROBE_INTERVAL`.
    pub fn probe_soon(&self) {
        {
            let mut last_probe = self.health.last_probe.lock().expect("probe lock");
            if last_probe.is_some_and(|started| started.elapsed() < PROBE_INTERVAL)
                || self.health.probing.swap(true, Ordering::SeqCst)
            {
                return;
            }
            *last_probe = Some(Instant::now());
        }
        let options = self.pool.connect_options();
        let health = self.health.clone();
        tokio::spawn(async move {
            let answered = match tokio::time::timeout(PROBE_TIMEOUT, options.connect()).await {
                Ok(Ok(connection)) => {
                    let _ = connection.close().await;
                    Ok(())
                }
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err(format!("no connection within {PROBE_TIMEOUT:?}")),
            };
            health.down.send_if_modified(|down| {
                let changed = *down != answered.is_err();
                match (&answered, changed) {
                    (Err(error), true) => tracing::error!(
                        %error,
                        "the database cannot be reached; requests that need it are answered 503 at once until it can"
                    ),
                    (Ok(()), true) => tracing::info!("the database answers again"),
                    _ => {}
                }
                *down = answered.is_err();
                changed
            });
            health.probing.store(false, Ordering::SeqCst);
        });
    }
}

/// Queries run on a connection taken by `GuardedPool::acquire`; errors are observed.
impl<'p, DB: Database> Executor<'p> for &'_ GuardedPool<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    type Database = DB;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<DB::QueryResult, DB::Row>, sqlx::Error>>
    where
        E: 'q + Execute<'q, Self::Database>,
    {
        let guarded = self.clone();
        Box::pin(TryAsyncStream::new(move |yielder| async move {
            let mut connection = guarded.acquire().await?;
            let mut results = (&mut *connection).fetch_many(query);
            while let Some(result) = results
                .try_next()
                .await
                .inspect_err(|error| guarded.observe(error))?
            {
                yielder.r#yield(result).await;
            }
            Ok(())
        }))
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<DB::Row>, sqlx::Error>>
    where
        E: 'q + Execute<'q, Self::Database>,
    {
        let guarded = self.clone();
        Box::pin(async move {
            let mut connection = guarded.acquire().await?;
            (&mut *connection)
                .fetch_optional(query)
                .await
                .inspect_err(|error| guarded.observe(error))
        })
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [<Self::Database as Database>::TypeInfo],
    ) -> BoxFuture<'e, Result<<Self::Database as Database>::Statement, sqlx::Error>>
    where
        'p: 'e,
    {
        let guarded = self.clone();
        Box::pin(async move {
            let mut connection = guarded.acquire().await?;
            (&mut *connection)
                .prepare_with(sql, parameters)
                .await
                .inspect_err(|error| guarded.observe(error))
        })
    }
}
