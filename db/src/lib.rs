//! One database handle over SQLite (the embedded default) and PostgreSQL (the
//! production deployment), chosen by the URL scheme.
//!
//! Both backends run the same lowercase SQL with `$n` placeholders; the
//! [`with_db!`](crate::with_db) macro expands a query once per backend so that
//! each expansion is type-checked against its own driver. Rows decode through
//! `#[derive(sqlx::FromRow)]`, which is generic over the backend.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Decode, Encode, PgPool, Postgres, Sqlite, SqlitePool, Type};

/// The PostgreSQL schema that holds every email2fa table, so that the service
/// can live in the host's shared database without clashing with its tables.
pub const PG_SCHEMA: &str = "email2fa";

/// A connection pool on one of the two supported backends.
#[derive(Clone, Debug)]
pub enum Db {
    /// The embedded default: one SQLite file in WAL mode, and the lock that
    /// lines up this process's write transactions.
    Sqlite(SqlitePool, WriteLock),
    /// The production deployment: the host's shared PostgreSQL database.
    Postgres(PgPool),
}

/// Lines up one process's SQLite write transactions.
///
/// SQLite admits one writer at a time. Without this lock every other writer
/// waits in SQLite's busy handler, which polls in sleeps of up to 100 ms, so
/// under load a transaction waits far longer than the lock is held. Here the
/// writers queue in FIFO order and the next starts the moment the last one
/// commits. Other processes on the same file (a separate `worker`, the CLI)
/// still meet the busy handler. Waiting longer than the pool's acquire
/// timeout counts as the database being unavailable, like a pool timeout.
#[derive(Clone, Debug)]
pub struct WriteLock {
    lock: Arc<tokio::sync::Mutex<()>>,
    timeout: Duration,
}

impl WriteLock {
    fn new(timeout: Duration) -> Self {
        Self {
            lock: Arc::default(),
            timeout,
        }
    }

    async fn acquire(&self) -> Result<tokio::sync::OwnedMutexGuard<()>, sqlx::Error> {
        tokio::time::timeout(self.timeout, Arc::clone(&self.lock).lock_owned())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)
    }
}

/// Runs the same expression against whichever pool a [`Db`] holds.
///
/// `with_db!(db, pool => sqlx::query("…").execute(pool).await)` expands the
/// body twice, once with `pool: &SqlitePool` and once with `pool: &PgPool`.
#[macro_export]
macro_rules! with_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::Db::Sqlite($pool, _) => $body,
            $crate::Db::Postgres($pool) => $body,
        }
    };
}

/// An open transaction on one of the two backends.
///
/// SQLite transactions start with `begin immediate`, taking the write lock at
/// once: a deferred transaction that reads first and writes later can fail
/// with `SQLITE_BUSY` when another writer slipped in between. They hold the
/// process's [`WriteLock`] until they end.
#[derive(Debug)]
pub enum Tx {
    /// On SQLite, with this process's write lock (released after the
    /// transaction: the fields drop in order).
    Sqlite(
        sqlx::Transaction<'static, Sqlite>,
        tokio::sync::OwnedMutexGuard<()>,
    ),
    /// On PostgreSQL.
    Postgres(PgTx),
}

/// An open PostgreSQL transaction: on a connection of the pool, or on the
/// connection of an ingress lane ([`Db::begin_lane`]).
#[derive(Debug)]
pub enum PgTx {
    /// Begun on a connection of the pool, which goes back when it ends.
    Pool(sqlx::Transaction<'static, Postgres>),
    /// Begun on a lane's own connection. It is closed if the transaction
    /// is dropped instead of finished (the server then rolls back).
    Lane(LaneConn),
}

impl std::ops::Deref for PgTx {
    type Target = sqlx::PgConnection;

    fn deref(&self) -> &Self::Target {
        match self {
            Self::Pool(tx) => tx,
            Self::Lane(lane) => &lane.conn,
        }
    }
}

impl std::ops::DerefMut for PgTx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match self {
            Self::Pool(tx) => tx,
            Self::Lane(lane) => &mut lane.conn,
        }
    }
}

/// The PostgreSQL connection an ingress lane keeps for its batches, out of
/// the pool (so the pool holds up to its size besides the lanes'), with the
/// session settings of [`Db::begin_lane`].
///
/// Between two batches under load it sits in a transaction already begun
/// (no locks, no snapshot, no transaction id yet), so that a batch costs
/// three round trips, not four: its read, its write, and `commit; begin`.
/// A lane that goes quiet ends that transaction ([`LaneConn::idle`]), so
/// no session stays idle in a transaction. Timestamps come from the
/// service, never from the transaction's start (`now()`), so an early
/// `begin` changes no value written.
///
/// At least every [`IDLE_EVERY`] a batch's commit does not begin the next
/// transaction (the next batch then begins its own): a PostgreSQL session
/// reports its table statistics (rows inserted, updated, deleted) only
/// while it waits outside a transaction. Without those reports the tables
/// are never analyzed (neither by autovacuum nor by the service's own
/// `analyze` of grown tables), and the plans made while they were nearly
/// empty stay: measured, a batch's read grew to 20 ms (a scan of every
/// pending challenge and every recent delivery) within 20 s.
#[derive(Debug)]
pub struct LaneConn {
    conn: sqlx::PgConnection,
    /// A transaction is begun (between batches: one that ran nothing).
    open: bool,
    /// When the session last waited for a command outside a transaction.
    idle_at: std::time::Instant,
}

/// How often a lane's session at least ends a transaction without
/// beginning the next: see [`LaneConn`].
const IDLE_EVERY: Duration = Duration::from_secs(1);

impl LaneConn {
    /// Ends the transaction begun for a next batch that did not come
    /// (a lane gone quiet): `rollback` of a transaction that ran nothing.
    /// A connection that fails it is dropped (the next batch opens another).
    pub async fn idle(lane: &mut Option<LaneConn>) {
        if let Some(conn) = lane.as_mut()
            && !conn.end_open().await
        {
            *lane = None;
        }
    }

    /// Closes the connection politely (a lane stopping).
    pub async fn close(lane: Option<LaneConn>) {
        use sqlx::Connection;
        if let Some(mut conn) = lane
            && conn.end_open().await
        {
            drop(conn.conn.close().await);
        }
    }

    /// Rolls back the transaction begun early, if any; false if the
    /// connection failed.
    async fn end_open(&mut self) -> bool {
        use sqlx::Executor;
        if !self.open {
            return true;
        }
        let ended = self.conn.execute("rollback").await.is_ok();
        self.open = !ended;
        if ended {
            self.idle_at = std::time::Instant::now();
        }
        ended
    }
}

/// Runs the same expression against the connection of a [`Tx`]:
/// `with_tx!(tx, conn => sqlx::query("…").execute(conn).await)`.
#[macro_export]
macro_rules! with_tx {
    ($tx:expr, $conn:ident => $body:expr) => {
        match $tx {
            $crate::Tx::Sqlite(tx, _) => {
                let $conn = &mut **tx;
                $body
            }
            $crate::Tx::Postgres(tx) => {
                let $conn: &mut ::sqlx::PgConnection = &mut *tx;
                $body
            }
        }
    };
}

impl Tx {
    /// Makes the transaction's writes durable and visible.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.finish_lane(true).await.map(drop)
    }

    /// Drops the transaction's writes.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.finish_lane(false).await.map(drop)
    }

    /// Commits (`commit`) or rolls back the transaction; on a lane's
    /// connection ([`Db::begin_lane`]) also begins the next batch's
    /// transaction in the same round trip (`commit; begin`: if the commit
    /// fails, the `begin` does not run) and gives the connection back for
    /// it. A lane's connection that fails is dropped.
    pub async fn finish_lane(self, commit: bool) -> Result<Option<LaneConn>, sqlx::Error> {
        use sqlx::Executor;
        match self {
            Self::Sqlite(tx, _turn) if commit => tx.commit().await.map(|()| None),
            Self::Sqlite(tx, _turn) => tx.rollback().await.map(|()| None),
            Self::Postgres(PgTx::Pool(tx)) if commit => tx.commit().await.map(|()| None),
            Self::Postgres(PgTx::Pool(tx)) => tx.rollback().await.map(|()| None),
            Self::Postgres(PgTx::Lane(mut lane)) => {
                let idle = lane.idle_at.elapsed() >= IDLE_EVERY;
                let sql = match (commit, idle) {
                    (true, false) => "commit; begin",
                    (true, true) => "commit",
                    (false, false) => "rollback; begin",
                    (false, true) => "rollback",
                };
                lane.conn.execute(sql).await?;
                lane.open = !idle;
                if idle {
                    lane.idle_at = std::time::Instant::now();
                }
                Ok(Some(lane))
            }
        }
    }
}

/// Pool sizing and timeouts.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Most connections the pool opens.
    pub max_connections: u32,
    /// How long a caller waits for a connection before the database counts as
    /// unavailable (the ingress then answers 503 rather than hanging).
    pub acquire_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(3),
        }
    }
}

/// Why a database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL is neither `sqlite:` nor `postgres://`.
    #[error("unsupported database URL scheme (expected sqlite: or postgres://)")]
    UnsupportedScheme,
    /// The URL does not parse.
    #[error("invalid database URL: {0}")]
    InvalidUrl(#[source] sqlx::Error),
    /// The directory of the SQLite file could not be created.
    #[error("cannot create the directory of the SQLite database: {0}")]
    Directory(#[source] std::io::Error),
    /// The server refused or could not be reached.
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] sqlx::Error),
}

impl Db {
    /// Opens a pool for `url` (`sqlite:…` or `postgres://…`).
    ///
    /// SQLite files are created when missing, in WAL mode with
    /// `synchronous=NORMAL` (durable across process crashes, the trade-off
    /// SQLite recommends for WAL), a 5 s busy timeout and foreign keys on.
    /// PostgreSQL connections put the [`PG_SCHEMA`] schema first on their
    /// search path.
    pub async fn connect(url: &str, config: &PoolConfig) -> Result<Self, ConnectError> {
        if url.starts_with("sqlite:") {
            Self::connect_sqlite(url, config).await
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Self::connect_postgres(url, config).await
        } else {
            Err(ConnectError::UnsupportedScheme)
        }
    }

    async fn connect_sqlite(url: &str, config: &PoolConfig) -> Result<Self, ConnectError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(ConnectError::InvalidUrl)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        if let Some(dir) = options.get_filename().parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(ConnectError::Directory)?;
        }
        // No ping before each checkout (sqlx's default): one round trip per
        // transaction for nothing; a dead connection fails its statement,
        // which answers 503 and is dropped from the pool.
        let pool = SqlitePoolOptions::new()
            .max_connections(config.max_connections)
            .test_before_acquire(false)
            .acquire_timeout(config.acquire_timeout)
            .connect_with(options)
            .await
            .map_err(ConnectError::Connect)?;
        Ok(Self::Sqlite(pool, WriteLock::new(config.acquire_timeout)))
    }

    async fn connect_postgres(url: &str, config: &PoolConfig) -> Result<Self, ConnectError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(ConnectError::InvalidUrl)?
            .options([("search_path", format!("{PG_SCHEMA},public"))]);
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .test_before_acquire(false)
            .acquire_timeout(config.acquire_timeout)
            .connect_with(options)
            .await
            .map_err(ConnectError::Connect)?;
        Ok(Self::Postgres(pool))
    }

    /// Starts a transaction (`begin immediate` on SQLite).
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        match self {
            Self::Sqlite(pool, lock) => {
                let turn = lock.acquire().await?;
                Ok(Tx::Sqlite(pool.begin_with("begin immediate").await?, turn))
            }
            Self::Postgres(pool) => Ok(Tx::Postgres(PgTx::Pool(pool.begin().await?))),
        }
    }

    /// Starts a transaction of set-based statements over short JSON lists
    /// (the ingress's batches), on the connection one ingress lane keeps
    /// (`lane`, PostgreSQL; see [`LaneConn`]) or, on SQLite, as
    /// [`Db::begin`] does.
    ///
    /// A lane's connection has hash joins, merge joins and sequential scans
    /// turned off for its whole session: the planner reckons every JSON
    /// list at 100 rows, so on tables of up to some ten thousand rows it
    /// hashed whole tables for lists of a dozen keys; with this every batch
    /// statement walks the indexes, whatever the table sizes and
    /// statistics. (A plan is cached with the settings it was made under.)
    /// It also plans each statement once per connection (`plan_cache_mode =
    /// force_generic_plan`): a plan made for the values of one batch is no
    /// better than the generic one when the values are JSON lists the
    /// planner cannot see into, and planning them afresh for every batch
    /// took a fifth of PostgreSQL's CPU under load. Only batches run on
    /// these connections, and they never go back to the pool.
    ///
    /// The transaction was usually begun by the previous batch's
    /// [`Tx::finish_lane`] (`commit; begin` in one round trip), so this
    /// costs no round trip under load; a new connection (settings and
    /// `begin`) or one left idle ([`LaneConn::idle`]) costs one.
    pub async fn begin_lane(&self, lane: &mut Option<LaneConn>) -> Result<Tx, sqlx::Error> {
        let Self::Postgres(pool) = self else {
            return self.begin().await;
        };
        use sqlx::Executor;
        let mut conn = match lane.take() {
            Some(conn) => conn,
            None => {
                let mut conn = pool.acquire().await?.detach();
                conn.execute(
                    "set enable_hashjoin = off; set enable_mergejoin = off; \
                     set enable_seqscan = off; set plan_cache_mode = force_generic_plan",
                )
                .await?;
                LaneConn {
                    conn,
                    open: false,
                    idle_at: std::time::Instant::now(),
                }
            }
        };
        if !conn.open {
            conn.conn.execute("begin").await?;
            conn.open = true;
        }
        Ok(Tx::Postgres(PgTx::Lane(conn)))
    }

    /// On SQLite, this process's turn to write (see [`WriteLock`]), to hold
    /// while one write statement runs on the pool outside a transaction;
    /// `None` on PostgreSQL.
    pub async fn write_turn(
        &self,
    ) -> Result<Option<tokio::sync::OwnedMutexGuard<()>>, sqlx::Error> {
        match self {
            Self::Sqlite(_, lock) => lock.acquire().await.map(Some),
            Self::Postgres(_) => Ok(None),
        }
    }

    /// `"sqlite"` or `"postgres"`, for logs and metrics.
    pub fn backend_name(&self) -> &'static str {
        match self {
            Self::Sqlite(..) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    /// One round trip, for readiness checks.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        with_db!(self, pool => sqlx::query("select 1").execute(pool).await.map(drop))
    }

    /// Closes every connection (graceful shutdown).
    pub async fn close(&self) {
        with_db!(self, pool => pool.close().await)
    }
}

/// The same server's URL with another database name (the query string
/// kept): for tests and the benchmark, which create scratch databases.
pub fn with_database_name(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_end..].find('/') {
        Some(slash) => &base[..authority_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}

/// True when an error means the database could not be reached or is
/// overloaded (pool timeout, I/O, TLS, closed pool), as opposed to a problem
/// with the statement itself. Callers answer the first kind with 503.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            // SQLITE_BUSY / SQLITE_LOCKED after the busy timeout, and the
            // PostgreSQL classes for "cannot connect now" (57P*, 08*, 53*).
            let code = db.code().unwrap_or_default();
            matches!(code.as_ref(), "5" | "6" | "517" | "261")
                || code.starts_with("57P")
                || code.starts_with("08")
                || code.starts_with("53")
        }
        _ => false,
    }
}

/// True when a statement failed on a unique or primary-key constraint.
pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// A point in time, stored as `timestamptz` on PostgreSQL and as fixed-width
/// RFC 3339 text (`2026-11-28T07:15:00.123456Z`) on SQLite.
///
/// The fixed width matters: SQLite compares the text, so every value carries
/// exactly six fractional digits and a `Z`, which makes text order equal time
/// order. Values are truncated to microseconds, PostgreSQL's precision, so a
/// value reads back equal on both backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        Self::from(Utc::now())
    }

    /// The wrapped time.
    pub fn as_datetime(&self) -> DateTime<Utc> {
        self.0
    }

    /// This time plus (or minus) a number of seconds.
    pub fn plus_seconds(&self, seconds: i64) -> Self {
        Self(self.0 + chrono::Duration::seconds(seconds))
    }

    /// RFC 3339 with second precision and `Z`, as answers show times.
    pub fn to_rfc3339(&self) -> String {
        self.0.to_rfc3339_opts(SecondsFormat::Secs, true)
    }

    /// Unix seconds.
    pub fn unix_seconds(&self) -> i64 {
        self.0.timestamp()
    }

    /// Fixed-width RFC 3339 text (`2026-11-28T07:15:00.123456Z`): what
    /// SQLite stores, and what PostgreSQL parses as a `timestamptz`.
    pub fn db_text(&self) -> String {
        use chrono::{Datelike, Timelike};
        use std::fmt::Write;
        // By hand rather than through `format`, which parses its pattern on
        // every call: the ingress writes several times per webhook.
        let t = &self.0;
        let mut text = String::with_capacity(27);
        let _ = write!(
            text,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            t.year(),
            t.month(),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.nanosecond() / 1000 % 1_000_000
        );
        text
    }

    fn sqlite_text(&self) -> String {
        self.db_text()
    }
}

impl From<DateTime<Utc>> for Timestamp {
    fn from(value: DateTime<Utc>) -> Self {
        Self(value.trunc_subsecs(6))
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Type<Sqlite> for Timestamp {
    fn type_info() -> <Sqlite as sqlx::Database>::TypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
    fn compatible(ty: &<Sqlite as sqlx::Database>::TypeInfo) -> bool {
        <DateTime<Utc> as Type<Sqlite>>::compatible(ty)
    }
}

impl Encode<'_, Sqlite> for Timestamp {
    fn encode_by_ref(
        &self,
        buf: &mut <Sqlite as sqlx::Database>::ArgumentBuffer,
    ) -> Result<IsNull, BoxDynError> {
        Encode::<Sqlite>::encode(self.sqlite_text(), buf)
    }
}

impl<'r> Decode<'r, Sqlite> for Timestamp {
    fn decode(value: <Sqlite as sqlx::Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Self::from(<DateTime<Utc> as Decode<Sqlite>>::decode(
            value,
        )?))
    }
}

impl Type<Postgres> for Timestamp {
    fn type_info() -> <Postgres as sqlx::Database>::TypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }
}

impl Encode<'_, Postgres> for Timestamp {
    fn encode_by_ref(
        &self,
        buf: &mut <Postgres as sqlx::Database>::ArgumentBuffer,
    ) -> Result<IsNull, BoxDynError> {
        <DateTime<Utc> as Encode<Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> Decode<'r, Postgres> for Timestamp {
    fn decode(value: <Postgres as sqlx::Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Self::from(<DateTime<Utc> as Decode<Postgres>>::decode(
            value,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_text_is_fixed_width_so_text_order_is_time_order() {
        let whole = Timestamp::from(DateTime::from_timestamp(1_800_000_000, 0).expect("valid"));
        let later = whole.plus_seconds(0);
        let fraction =
            Timestamp::from(DateTime::from_timestamp(1_800_000_000, 5_000_000).expect("valid"));
        assert_eq!(whole.sqlite_text(), "2027-01-15T08:00:00.000000Z");
        assert!(whole.sqlite_text() < fraction.sqlite_text());
        assert_eq!(whole, later);
    }

    #[test]
    fn db_text_matches_the_fixed_width_format() {
        for (seconds, nanos) in [(0, 0), (1_800_000_000, 5_000), (1_999_999_999, 999_999_999)] {
            let t = Timestamp::from(DateTime::from_timestamp(seconds, nanos).expect("valid"));
            assert_eq!(
                t.db_text(),
                t.0.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
            );
        }
    }

    #[test]
    fn times_are_truncated_to_microseconds() {
        let t = Timestamp::from(DateTime::from_timestamp(0, 123_456_789).expect("valid"));
        assert_eq!(t.as_datetime().timestamp_subsec_nanos(), 123_456_000);
    }
}
