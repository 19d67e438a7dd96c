//! `Db`: the store's query layer over each engine's native driver — rusqlite on SQLite
//! (reads on a pool of read-only connections, each on its own thread; every write on the
//! writer thread of `sqlite_writer`), sqlx's PostgreSQL driver on PostgreSQL (typed binds,
//! statements prepared once per connection). One statement text (`$N` placeholders, which
//! both engines accept) and one row mapping serve both engines.
//!
//! The surface mirrors the part of sqlx the areas use: `query(sql).bind(v).fetch_all(&db)`,
//! `query_scalar`, `db.begin()` for a transaction, `Row::try_get` by name or position.
//! Values are owned (`Value`), so a query can be sent to a SQLite thread as it is.
//!
//! A SQLite transaction holds the writer thread from `begin` to `commit` (SQLite has one
//! writer anyway); its statements are sent there one by one. One left idle for
//! `SESSION_IDLE` is rolled back, so a caller that forgot it cannot stop ingest for good.

use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use rusqlite::types::Value as SqliteValue;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::{Arguments, Postgres, Row as _};
use tokio::sync::oneshot;

use super::outage::GuardedPool;
use super::rows::corrupt;
use super::sqlite_writer::SqliteWriter;
use crate::{StoreError, StoreResult};

/// How long a SQLite transaction may leave the writer waiting for its next statement.
const SESSION_IDLE: Duration = Duration::from_secs(30);

/// Read-only SQLite connections (threads) per store.
const SQLITE_READERS: usize = 4;

/// A statement's text: a constant, or `trusted` text built from constants.
#[derive(Clone, Debug)]
pub(crate) struct Sql(Arc<str>);

impl From<&'static str> for Sql {
    fn from(text: &'static str) -> Self {
        Sql(Arc::from(text))
    }
}

/// Marks a statement assembled only from this crate's constants, never from input (the
/// one way a `String` becomes a statement).
pub(crate) fn trusted(sql: String) -> Sql {
    Sql(Arc::from(sql))
}

/// The type of a bound NULL (PostgreSQL wants one).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    Int,
    Real,
    Text,
    Blob,
    Bool,
}

/// One bound value.
#[derive(Clone, Debug)]
pub(crate) enum Value {
    Null(Kind),
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
    Bool(bool),
}

/// What `Query::bind` takes.
pub(crate) trait Bind {
    const KIND: Kind;
    fn value(self) -> Value;
}

macro_rules! bind_as {
    ($kind:ident, $variant:ident, $($type:ty => $convert:expr),*) => {$(
        impl Bind for $type {
            const KIND: Kind = Kind::$kind;
            fn value(self) -> Value {
                #[allow(clippy::redundant_closure_call)]
                Value::$variant(($convert)(self))
            }
        }
    )*};
}
bind_as!(Int, Int, i64 => |v| v, i32 => i64::from, u32 => i64::from);
bind_as!(Real, Real, f64 => |v| v);
bind_as!(Bool, Bool, bool => |v| v);
bind_as!(Text, Text, String => |v| v, &str => str::to_owned, &String => String::clone);
bind_as!(Blob, Blob, Vec<u8> => |v| v, &[u8] => <[u8]>::to_vec);

impl<T: Bind> Bind for Option<T> {
    const KIND: Kind = T::KIND;
    fn value(self) -> Value {
        match self {
            Some(value) => value.value(),
            None => Value::Null(T::KIND),
        }
    }
}

impl<T: Bind + Clone> Bind for &Option<T> {
    const KIND: Kind = T::KIND;
    fn value(self) -> Value {
        self.clone().value()
    }
}

/// A statement and its bound values.
#[derive(Clone, Debug)]
pub(crate) struct Query {
    sql: Sql,
    args: Vec<Value>,
    /// Run as text, not kept as a prepared statement (DDL, run once).
    unprepared: bool,
}

pub(crate) fn query(sql: impl Into<Sql>) -> Query {
    Query {
        sql: sql.into(),
        args: Vec::new(),
        unprepared: false,
    }
}

/// A query whose answer is the first column of each row.
pub(crate) struct QueryScalar<T> {
    query: Query,
    _type: std::marker::PhantomData<fn() -> T>,
}

pub(crate) fn query_scalar<T: Decode>(sql: impl Into<Sql>) -> QueryScalar<T> {
    QueryScalar {
        query: query(sql),
        _type: std::marker::PhantomData,
    }
}

/// What a statement that returns no rows reports.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Done(u64);

impl Done {
    pub(crate) fn rows_affected(&self) -> u64 {
        self.0
    }
}

/// Where a query runs: the database (a free connection of the right kind) or a held
/// connection (a transaction).
pub(crate) enum Target<'a> {
    Db(&'a Db),
    Conn(&'a mut Conn),
}

impl<'a> From<&'a Db> for Target<'a> {
    fn from(db: &'a Db) -> Self {
        Target::Db(db)
    }
}

impl<'a> From<&'a mut Conn> for Target<'a> {
    fn from(conn: &'a mut Conn) -> Self {
        Target::Conn(conn)
    }
}

impl<'a> From<&'a mut Tx> for Target<'a> {
    fn from(tx: &'a mut Tx) -> Self {
        Target::Conn(&mut tx.conn)
    }
}

impl Query {
    pub(crate) fn bind(mut self, value: impl Bind) -> Self {
        self.args.push(value.value());
        self
    }

    /// Runs the statement as text instead of preparing and keeping it (for `execute` of a
    /// statement without parameters that runs once, such as a migration's DDL).
    pub(crate) fn unprepared(mut self) -> Self {
        self.unprepared = true;
        self
    }

    pub(crate) async fn fetch_all<'a>(
        self,
        target: impl Into<Target<'a>>,
    ) -> StoreResult<Vec<Row>> {
        self.run(target.into(), Fetch::All).await
    }

    pub(crate) async fn fetch_optional<'a>(
        self,
        target: impl Into<Target<'a>>,
    ) -> StoreResult<Option<Row>> {
        Ok(self
            .run(target.into(), Fetch::One)
            .await?
            .into_iter()
            .next())
    }

    pub(crate) async fn fetch_one<'a>(self, target: impl Into<Target<'a>>) -> StoreResult<Row> {
        self.fetch_optional(target)
            .await?
            .ok_or(StoreError::NotFound("row"))
    }

    pub(crate) async fn execute<'a>(self, target: impl Into<Target<'a>>) -> StoreResult<Done> {
        let target = target.into();
        if self.unprepared
            && self.args.is_empty()
            && let Target::Conn(Conn::Postgres(connection)) = target
        {
            let raw = sqlx::raw_sql(sqlx::AssertSqlSafe(self.sql.0.to_string()));
            return Ok(Done(
                raw.execute(connection.as_mut()).await?.rows_affected(),
            ));
        }
        match target {
            Target::Db(Db::Postgres(pool)) => Ok(Done(
                self.postgres()?
                    .execute(pool)
                    .await
                    .map_err(StoreError::from)?
                    .rows_affected(),
            )),
            Target::Conn(Conn::Postgres(connection)) => Ok(Done(
                self.postgres()?
                    .execute(connection.as_mut())
                    .await?
                    .rows_affected(),
            )),
            Target::Db(Db::Sqlite(sqlite)) => {
                let routed = sqlite.route(&self.sql);
                sqlite.call(routed, move |c| sqlite_execute(c, &self)).await
            }
            Target::Conn(Conn::Sqlite(session)) => {
                session.call(move |c| sqlite_execute(c, &self)).await
            }
        }
    }

    async fn run(self, target: Target<'_>, fetch: Fetch) -> StoreResult<Vec<Row>> {
        match target {
            Target::Db(Db::Postgres(pool)) => self.postgres_rows(pool, fetch).await,
            Target::Conn(Conn::Postgres(connection)) => {
                self.postgres_rows(connection.as_mut(), fetch).await
            }
            Target::Db(Db::Sqlite(sqlite)) => {
                let routed = sqlite.route(&self.sql);
                sqlite
                    .call(routed, move |c| sqlite_rows(c, &self, fetch))
                    .await
            }
            Target::Conn(Conn::Sqlite(session)) => {
                session.call(move |c| sqlite_rows(c, &self, fetch)).await
            }
        }
    }

    async fn postgres_rows<'e, E>(self, executor: E, fetch: Fetch) -> StoreResult<Vec<Row>>
    where
        E: sqlx::Executor<'e, Database = Postgres>,
    {
        let query = self.postgres()?;
        let rows = match fetch {
            Fetch::All => query.fetch_all(executor).await?,
            Fetch::One => query.fetch_optional(executor).await?.into_iter().collect(),
        };
        Ok(rows.into_iter().map(Row::Postgres).collect())
    }

    fn postgres(self) -> StoreResult<sqlx::query::Query<'static, Postgres, PgArguments>> {
        let mut arguments = PgArguments::default();
        for value in self.args {
            let added = match value {
                Value::Null(Kind::Int) => arguments.add(None::<i64>),
                Value::Null(Kind::Real) => arguments.add(None::<f64>),
                Value::Null(Kind::Text) => arguments.add(None::<String>),
                Value::Null(Kind::Blob) => arguments.add(None::<Vec<u8>>),
                Value::Null(Kind::Bool) => arguments.add(None::<bool>),
                Value::Int(value) => arguments.add(value),
                Value::Real(value) => arguments.add(value),
                Value::Text(value) => arguments.add(value),
                Value::Blob(value) => arguments.add(value),
                Value::Bool(value) => arguments.add(value),
            };
            added.map_err(StoreError::Database)?;
        }
        Ok(sqlx::query_with(
            sqlx::AssertSqlSafe(self.sql.0.to_string()),
            arguments,
        ))
    }
}

impl<T: Decode + Send + 'static> QueryScalar<T> {
    pub(crate) fn bind(mut self, value: impl Bind) -> Self {
        self.query = self.query.bind(value);
        self
    }

    pub(crate) async fn fetch_all<'a>(self, target: impl Into<Target<'a>>) -> StoreResult<Vec<T>> {
        self.query
            .fetch_all(target)
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect()
    }

    pub(crate) async fn fetch_optional<'a>(
        self,
        target: impl Into<Target<'a>>,
    ) -> StoreResult<Option<T>> {
        self.query
            .fetch_optional(target)
            .await?
            .map(|row| row.try_get(0))
            .transpose()
    }

    pub(crate) async fn fetch_one<'a>(self, target: impl Into<Target<'a>>) -> StoreResult<T> {
        self.query.fetch_one(target).await?.try_get(0)
    }
}

#[derive(Clone, Copy)]
enum Fetch {
    All,
    One,
}

/// The database: a pool of the engine's native connections.
pub(crate) enum Db {
    Sqlite(SqliteDb),
    Postgres(GuardedPool<Postgres>),
}

impl Db {
    /// A transaction: on SQLite it holds the writer (`BEGIN IMMEDIATE`), on PostgreSQL a
    /// pooled connection.
    pub(crate) async fn begin(&self) -> StoreResult<Tx> {
        Ok(Tx {
            conn: match self {
                Db::Postgres(pool) => Conn::Postgres(PgConn::Tx(pool.begin().await?)),
                Db::Sqlite(sqlite) => Conn::Sqlite(sqlite.writer.session(true).await?),
            },
        })
    }

    /// A connection of its own (not in a transaction), for statements that set session
    /// state or must run one after another on one connection.
    pub(crate) async fn connection(&self) -> StoreResult<Conn> {
        Ok(match self {
            Db::Postgres(pool) => Conn::Postgres(PgConn::Detached(pool.acquire().await?.detach())),
            Db::Sqlite(sqlite) => Conn::Sqlite(sqlite.writer.session(false).await?),
        })
    }

    /// The PostgreSQL pool, for what only it has (its guard, a native connection).
    pub(crate) fn postgres(&self) -> Option<&GuardedPool<Postgres>> {
        match self {
            Db::Postgres(pool) => Some(pool),
            Db::Sqlite(_) => None,
        }
    }

    pub(crate) async fn close(&self) {
        if let Db::Postgres(pool) = self {
            pool.close().await;
        }
    }
}

/// A held connection.
pub(crate) enum Conn {
    Postgres(PgConn),
    Sqlite(Session),
}

pub(crate) enum PgConn {
    Tx(sqlx::Transaction<'static, Postgres>),
    Detached(sqlx::PgConnection),
}

impl PgConn {
    fn as_mut(&mut self) -> &mut sqlx::PgConnection {
        match self {
            PgConn::Tx(transaction) => transaction,
            PgConn::Detached(connection) => connection,
        }
    }
}

impl Conn {
    /// A connection of its own to the database at `url`, outside any store (tests and
    /// tools): on SQLite a writer of its own, which ends with the connection.
    #[cfg(feature = "test-support")]
    pub(crate) async fn open(url: &str) -> StoreResult<Conn> {
        match super::engine_of(url)? {
            crate::Engine::Postgres => Ok(Conn::Postgres(PgConn::Detached(
                <sqlx::PgConnection as sqlx::Connection>::connect(url).await?,
            ))),
            crate::Engine::Sqlite => {
                let path = crate::backup::sqlite_path_of(url).ok_or_else(|| {
                    StoreError::Unavailable(format!("no file in the SQLite URL '{url}'"))
                })?;
                Ok(Conn::Sqlite(
                    SqliteWriter::start(&path)?.session(false).await?,
                ))
            }
        }
    }

    /// Closes the connection (a PostgreSQL one) or ends the session (SQLite).
    pub(crate) async fn close(self) {
        if let Conn::Postgres(PgConn::Detached(connection)) = self {
            let _ = sqlx::Connection::close(connection).await;
        }
    }
}

/// A transaction; dropped without `commit`, it rolls back (sqlx's transaction does on
/// PostgreSQL; on SQLite the writer does when the session's channel closes).
pub(crate) struct Tx {
    conn: Conn,
}

impl Deref for Tx {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        &self.conn
    }
}

impl DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut Conn {
        &mut self.conn
    }
}

impl Tx {
    pub(crate) async fn commit(self) -> StoreResult<()> {
        self.end(true).await
    }

    pub(crate) async fn rollback(self) -> StoreResult<()> {
        self.end(false).await
    }

    async fn end(self, commit: bool) -> StoreResult<()> {
        match self.conn {
            Conn::Postgres(PgConn::Tx(transaction)) if commit => Ok(transaction.commit().await?),
            Conn::Postgres(PgConn::Tx(transaction)) => Ok(transaction.rollback().await?),
            Conn::Postgres(PgConn::Detached(_)) => Ok(()),
            Conn::Sqlite(session) => {
                let statement = if commit { "COMMIT" } else { "ROLLBACK" };
                session
                    .call(move |connection| Ok(connection.execute_batch(statement)?))
                    .await
            }
        }
    }
}

/// A row of either engine.
pub(crate) enum Row {
    Postgres(PgRow),
    Sqlite(SqliteRow),
}

pub(crate) struct SqliteRow {
    columns: Arc<[String]>,
    values: Vec<SqliteValue>,
}

/// A column by name or position.
pub(crate) trait ColumnIndex {
    fn position(&self, row: &Row) -> StoreResult<usize>;
}

impl ColumnIndex for &str {
    fn position(&self, row: &Row) -> StoreResult<usize> {
        let found = match row {
            Row::Postgres(row) => row.try_column(*self).ok().map(sqlx::Column::ordinal),
            Row::Sqlite(row) => row.columns.iter().position(|name| name == self),
        };
        found.ok_or_else(|| corrupt("result", format!("no column '{self}'")))
    }
}

impl ColumnIndex for usize {
    fn position(&self, row: &Row) -> StoreResult<usize> {
        let count = match row {
            Row::Postgres(row) => row.len(),
            Row::Sqlite(row) => row.values.len(),
        };
        (*self < count)
            .then_some(*self)
            .ok_or_else(|| corrupt("result", format!("no column {self}")))
    }
}

impl Row {
    /// How many columns the row has.
    #[cfg(feature = "test-support")]
    pub(crate) fn len(&self) -> usize {
        match self {
            Row::Postgres(row) => row.len(),
            Row::Sqlite(row) => row.values.len(),
        }
    }

    pub(crate) fn try_get<T: Decode, I: ColumnIndex>(&self, index: I) -> StoreResult<T> {
        let position = index.position(self)?;
        let decoded = match self {
            Row::Postgres(row) => {
                let raw = row.try_get_raw(position)?;
                if sqlx::ValueRef::is_null(&raw) {
                    T::null()
                } else {
                    T::from_postgres(row, position)
                }
            }
            Row::Sqlite(row) => match &row.values[position] {
                SqliteValue::Null => T::null(),
                value => T::from_sqlite(value),
            },
        };
        decoded.ok_or_else(|| {
            let name = match self {
                Row::Postgres(row) => sqlx::Column::name(&row.columns()[position]).to_owned(),
                Row::Sqlite(row) => row.columns[position].clone(),
            };
            corrupt(
                "result",
                format!("column '{name}' is not a {}", std::any::type_name::<T>()),
            )
        })
    }
}

/// A Rust type read from a column: integers from either integer width, reals from
/// integers too, booleans from integers (SQLite has none).
pub(crate) trait Decode: Sized {
    /// The value of a NULL column (`None` for a type that cannot be NULL).
    fn null() -> Option<Self> {
        None
    }
    fn from_sqlite(value: &SqliteValue) -> Option<Self>;
    fn from_postgres(row: &PgRow, position: usize) -> Option<Self>;
}

impl Decode for i64 {
    fn from_sqlite(value: &SqliteValue) -> Option<Self> {
        match value {
            SqliteValue::Integer(value) => Some(*value),
            _ => None,
        }
    }
    fn from_postgres(row: &PgRow, position: usize) -> Option<Self> {
        row.try_get::<i64, _>(position)
            .ok()
            .or_else(|| row.try_get::<i32, _>(position).ok().map(i64::from))
            .or_else(|| row.try_get::<i16, _>(position).ok().map(i64::from))
    }
}

impl Decode for i32 {
    fn from_sqlite(value: &SqliteValue) -> Option<Self> {
        i64::from_sqlite(value).and_then(|value| value.try_into().ok())
    }
    fn from_postgres(row: &PgRow, position: usize) -> Option<Self> {
        i64::from_postgres(row, position).and_then(|value| value.try_into().ok())
    }
}

impl Decode for f64 {
    fn from_sqlite(value: &SqliteValue) -> Option<Self> {
        match value {
            SqliteValue::Real(value) => Some(*value),
            SqliteValue::Integer(value) => Some(*value as f64),
            _ => None,
        }
    }
    fn from_postgres(row: &PgRow, position: usize) -> Option<Self> {
        row.try_get::<f64, _>(position)
            .ok()
            .or_else(|| row.try_get::<f32, _>(position).ok().map(f64::from))
            .or_else(|| i64::from_postgres(row, position).map(|value| value as f64))
    }
}

impl Decode for bool {
    fn from_sqlite(value: &SqliteValue) -> Option<Self> {
        i64::from_sqlite(value).map(|value| value != 0)
    }
    fn from_postgres(row: &PgRow, position: usize) -> Option<Self> {
        row.try_get::<bool, _>(position)
            .ok()
            .or_else(|| i64::from_postgres(row, position).map(|value| value != 0))
    }
}

impl Decode for String {
    fn from_sqlite(value: &SqliteValue) -> Option<Self> {
        match value {
            SqliteValue::Text(value) => Some(value.clone()),
            _ => None,
        }
    }
    fn from_postgres(row: &PgRow, position: usize) -> Option<Self> {
        row.try_get::<String, _>(position).ok()
    }
}

impl Decode for Vec<u8> {
    fn from_sqlite(value: &SqliteValue) -> Option<Self> {
        match value {
            SqliteValue::Blob(value) => Some(value.clone()),
            SqliteValue::Text(value) => Some(value.clone().into_bytes()),
            _ => None,
        }
    }
    fn from_postgres(row: &PgRow, position: usize) -> Option<Self> {
        row.try_get::<Vec<u8>, _>(position).ok()
    }
}

impl<T: Decode> Decode for Option<T> {
    fn null() -> Option<Self> {
        Some(None)
    }
    fn from_sqlite(value: &SqliteValue) -> Option<Self> {
        T::from_sqlite(value).map(Some)
    }
    fn from_postgres(row: &PgRow, position: usize) -> Option<Self> {
        T::from_postgres(row, position).map(Some)
    }
}

// ---------------------------------------------------------------------------------------
// SQLite

/// Work for a SQLite connection's thread.
pub(crate) type SqliteWork = Box<dyn FnOnce(&mut rusqlite::Connection) + Send>;

/// SQLite: read-only connections on threads of their own, and the writer.
pub(crate) struct SqliteDb {
    readers: mpsc::Sender<SqliteWork>,
    pub(crate) writer: Arc<SqliteWriter>,
}

/// Which connection a statement runs on.
#[derive(Clone, Copy)]
enum Route {
    Reader,
    Writer,
}

impl SqliteDb {
    /// Starts the readers on `path` (the writer has created and migrated it).
    pub(crate) fn start(path: &Path, writer: Arc<SqliteWriter>) -> StoreResult<Self> {
        let (readers, work) = mpsc::channel::<SqliteWork>();
        let work = Arc::new(Mutex::new(work));
        for number in 0..SQLITE_READERS {
            let connection = open_reader(path)?;
            let work = work.clone();
            std::thread::Builder::new()
                .name(format!("kiln-sqlite-read-{number}"))
                .spawn(move || {
                    let mut connection = connection;
                    loop {
                        let next = work.lock().map(|receiver| receiver.recv());
                        match next {
                            Ok(Ok(job)) => job(&mut connection),
                            _ => break,
                        }
                    }
                })
                .map_err(|error| {
                    StoreError::Unavailable(format!("cannot start a SQLite reader thread: {error}"))
                })?;
        }
        Ok(Self { readers, writer })
    }

    /// Reads go to the readers, everything else to the writer.
    fn route(&self, sql: &Sql) -> Route {
        let head = sql.0.trim_start();
        let select = head
            .get(..6)
            .is_some_and(|word| word.eq_ignore_ascii_case("select"));
        if select { Route::Reader } else { Route::Writer }
    }

    async fn call<T, F>(&self, route: Route, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut rusqlite::Connection) -> StoreResult<T> + Send + 'static,
    {
        match route {
            Route::Writer => self.writer.write(work).await,
            Route::Reader => {
                let (reply, answer) = oneshot::channel();
                self.readers
                    .send(Box::new(move |connection| {
                        let _ = reply.send(work(connection));
                    }))
                    .map_err(|_| stopped("reader"))?;
                answer.await.map_err(|_| stopped("reader"))?
            }
        }
    }
}

fn stopped(what: &str) -> StoreError {
    StoreError::Unavailable(format!("the SQLite {what} thread stopped"))
}

fn open_reader(path: &Path) -> StoreResult<rusqlite::Connection> {
    use rusqlite::OpenFlags;
    // Read-write without create, and `query_only`: a WAL database is read through its
    // shared-memory file, which a read-only connection may not be able to open.
    let connection = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.execute_batch("PRAGMA query_only = ON; PRAGMA foreign_keys = ON;")?;
    connection.busy_timeout(Duration::from_secs(10))?;
    connection.set_prepared_statement_cache_capacity(128);
    Ok(connection)
}

/// A connection of the writer held by one caller (a transaction, or migrations).
pub(crate) struct Session {
    work: mpsc::Sender<SqliteWork>,
}

impl Session {
    pub(crate) fn new(work: mpsc::Sender<SqliteWork>) -> Self {
        Self { work }
    }

    async fn call<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut rusqlite::Connection) -> StoreResult<T> + Send + 'static,
    {
        let ended = || {
            StoreError::Unavailable(format!(
                "the SQLite transaction ended (it left the writer idle for {} s)",
                SESSION_IDLE.as_secs()
            ))
        };
        let (reply, answer) = oneshot::channel();
        self.work
            .send(Box::new(move |connection| {
                let _ = reply.send(work(connection));
            }))
            .map_err(|_| ended())?;
        answer.await.map_err(|_| ended())?
    }
}

/// Runs a session on the writer's thread: `work` until its sender is dropped or idle for
/// `SESSION_IDLE`, then rolls back what it left open.
pub(crate) fn run_session(connection: &mut rusqlite::Connection, work: mpsc::Receiver<SqliteWork>) {
    loop {
        match work.recv_timeout(SESSION_IDLE) {
            Ok(job) => job(connection),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                tracing::error!(
                    "a SQLite transaction left the writer idle for {} s; rolled back",
                    SESSION_IDLE.as_secs()
                );
                break;
            }
        }
    }
    if !connection.is_autocommit() {
        let _ = connection.execute_batch("ROLLBACK");
    }
}

/// Binds `args` to `$N` (or `?N`, or `?`) parameters.
fn bind_all(statement: &mut rusqlite::Statement<'_>, args: &[Value]) -> StoreResult<()> {
    for index in 1..=statement.parameter_count() {
        let wanted = match statement.parameter_name(index) {
            Some(name) => name[1..].parse::<usize>().map_err(|_| {
                StoreError::Unavailable(format!("unsupported SQL parameter '{name}'"))
            })?,
            None => index,
        };
        let value = args.get(wanted.wrapping_sub(1)).ok_or_else(|| {
            StoreError::Unavailable(format!("SQL parameter {wanted} has no value"))
        })?;
        match value {
            Value::Null(_) => statement.raw_bind_parameter(index, rusqlite::types::Null)?,
            Value::Int(value) => statement.raw_bind_parameter(index, value)?,
            Value::Real(value) => statement.raw_bind_parameter(index, value)?,
            Value::Text(value) => statement.raw_bind_parameter(index, value)?,
            Value::Blob(value) => statement.raw_bind_parameter(index, value)?,
            Value::Bool(value) => statement.raw_bind_parameter(index, i64::from(*value))?,
        }
    }
    Ok(())
}

fn sqlite_rows(
    connection: &mut rusqlite::Connection,
    query: &Query,
    fetch: Fetch,
) -> StoreResult<Vec<Row>> {
    let mut statement = connection.prepare_cached(&query.sql.0)?;
    bind_all(&mut statement, &query.args)?;
    let columns: Arc<[String]> = statement
        .column_names()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let count = columns.len();
    let mut rows = statement.raw_query();
    let mut answer = Vec::new();
    while let Some(row) = rows.next()? {
        let mut values = Vec::with_capacity(count);
        for position in 0..count {
            values.push(row.get::<_, SqliteValue>(position)?);
        }
        answer.push(Row::Sqlite(SqliteRow {
            columns: columns.clone(),
            values,
        }));
        if matches!(fetch, Fetch::One) {
            break;
        }
    }
    Ok(answer)
}

fn sqlite_execute(connection: &mut rusqlite::Connection, query: &Query) -> StoreResult<Done> {
    if query.unprepared && query.args.is_empty() {
        connection.execute_batch(&query.sql.0)?;
        return Ok(Done(connection.changes()));
    }
    let mut statement = connection.prepare_cached(&query.sql.0)?;
    let readonly = statement.readonly();
    bind_all(&mut statement, &query.args)?;
    let mut rows = statement.raw_query();
    while rows.next()?.is_some() {}
    drop(rows);
    drop(statement);
    Ok(Done(if readonly { 0 } else { connection.changes() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sqlite_db(directory: &tempfile::TempDir) -> Db {
        let path = directory.path().join("kiln.db");
        let writer = Arc::new(SqliteWriter::start(&path).expect("writer"));
        let db = Db::Sqlite(SqliteDb::start(&path, writer).expect("readers"));
        query("CREATE TABLE t (id BIGINT PRIMARY KEY, name TEXT, score DOUBLE PRECISION)")
            .execute(&db)
            .await
            .expect("create table");
        db
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_binds_dollar_parameters_by_number_not_by_appearance() {
        let directory = tempfile::tempdir().unwrap();
        let db = sqlite_db(&directory).await;
        let done = query("INSERT INTO t (name, id, score) VALUES ($3, $1, $2), ($3, $1 + 1, NULL)")
            .bind(7_i64)
            .bind(1.5_f64)
            .bind("seven")
            .execute(&db)
            .await
            .unwrap();
        assert_eq!(done.rows_affected(), 2);
        let row = query("SELECT $2 AS second, name, id, score FROM t WHERE id = $1")
            .bind(7_i64)
            .bind("two")
            .fetch_one(&db)
            .await
            .unwrap();
        assert_eq!(row.try_get::<String, _>("second").unwrap(), "two");
        assert_eq!(row.try_get::<String, _>("name").unwrap(), "seven");
        assert_eq!(row.try_get::<i64, _>(2).unwrap(), 7);
        assert_eq!(row.try_get::<f64, _>("score").unwrap(), 1.5);
        let null = query("SELECT score FROM t WHERE id = 8")
            .fetch_one(&db)
            .await
            .unwrap();
        assert_eq!(null.try_get::<Option<f64>, _>(0).unwrap(), None);
        assert!(null.try_get::<f64, _>(0).is_err(), "NULL is not a number");
        assert!(
            row.try_get::<i64, _>("name").is_err(),
            "text is not a number"
        );
        assert!(row.try_get::<i64, _>("missing").is_err());
        let missing = query("SELECT id FROM t WHERE id = $1")
            .bind(1_i64)
            .bind(2_i64)
            .fetch_optional(&db)
            .await
            .unwrap();
        assert!(missing.is_none());
        let unbound = query("SELECT id FROM t WHERE id = $2")
            .bind(1_i64)
            .fetch_all(&db)
            .await;
        assert!(unbound.is_err(), "a parameter without a value is an error");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sqlite_transaction_dropped_without_commit_rolls_back_and_frees_the_writer() {
        let directory = tempfile::tempdir().unwrap();
        let db = sqlite_db(&directory).await;
        {
            let mut transaction = db.begin().await.unwrap();
            query("INSERT INTO t (id, name) VALUES (1, 'gone')")
                .execute(&mut transaction)
                .await
                .unwrap();
            let inside = query_scalar::<i64>("SELECT COUNT(*) FROM t")
                .fetch_one(&mut transaction)
                .await
                .unwrap();
            assert_eq!(inside, 1, "the transaction sees its own write");
            let outside = query_scalar::<i64>("SELECT COUNT(*) FROM t")
                .fetch_one(&db)
                .await
                .unwrap();
            assert_eq!(outside, 0, "readers do not see an uncommitted write");
        }
        // The writer is free again: a write outside any transaction goes through at once.
        tokio::time::timeout(
            Duration::from_secs(5),
            query("INSERT INTO t (id, name) VALUES (2, 'kept')").execute(&db),
        )
        .await
        .expect("the writer was released")
        .unwrap();
        let mut transaction = db.begin().await.unwrap();
        query("INSERT INTO t (id, name) VALUES (3, 'committed')")
            .execute(&mut transaction)
            .await
            .unwrap();
        transaction.commit().await.unwrap();
        let ids = query_scalar::<i64>("SELECT id FROM t ORDER BY id")
            .fetch_all(&db)
            .await
            .unwrap();
        assert_eq!(ids, vec![2, 3]);
        let conflict = query("INSERT INTO t (id, name) VALUES (2, 'again')")
            .execute(&db)
            .await;
        assert!(
            matches!(conflict, Err(StoreError::Conflict(_))),
            "{conflict:?}"
        );
    }
}
