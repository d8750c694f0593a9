//! Storage: PostgreSQL in production, SQLite as the embedded default.
//!
//! Error policy: a failure the next attempt may not meet (connection lost or refused, pool
//! exhausted, lock or statement timeout, serialisation failure, deadlock, SQLite busy) is
//! [`DbError::Unavailable`] and becomes a 503 with `Retry-After`; anything else is
//! [`DbError::Internal`], an opaque 500 with the whole chain logged. Either way the
//! delivery's transaction rolled back: nothing half-written, nothing recorded.
//!
//! No diesel type leaves this module.

mod app_table;
mod backfill;
mod dead_letters;
mod describe;
mod migrations;
mod pg_mapped;
mod pg_port;
pub mod port;
mod postgres;
mod read;
mod sqlite;
mod sqlite_mapped;
mod sqlite_port;
mod tls;
mod url;

use std::sync::Arc;
use std::time::Duration;

use diesel::result::{DatabaseErrorKind, Error as DieselError};

use port::{Deleted, Request, Snapshot, Writes};

pub use backfill::{KnownUser, LastWalk, Walk, WalkCounts};
pub use dead_letters::{DeadLetterLimits, DeadLetterStats, Kept, NewDeadLetter, StoredDeadLetter};
pub use read::{AppUser, UserLookup};
pub use tls::TlsError;
pub use url::{
    ChannelBinding, DatabaseUrl, Identity, PgHost, PgUrl, Pooler, Roots, SslMode, TlsSettings,
    UrlError, DEFAULT_SQLITE_FILE,
};

/// The slot of [`Database::use_shape`].
type Shape = Arc<std::sync::OnceLock<Arc<crate::domain::table::WriteShape>>>;

/// The slot of [`Database::extension`].
type Extension = Arc<std::sync::OnceLock<Arc<dyn std::any::Any + Send + Sync>>>;

/// Why a database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Transient: the database is unreachable, busy or timed out.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The application's `User` table exists but clerk-sync cannot write it safely.
    #[error("the application's \"User\" table is incompatible: {0}")]
    Incompatible(String),
    /// The connection settings cannot be used (a certificate file that cannot be read, …).
    #[error("database connection settings: {0}")]
    Config(String),
    /// The database is reachable but clerk-sync's migrations have not been applied.
    #[error("database not migrated: {0} pending migration(s); run `clerk-sync migrate`")]
    NotMigrated(usize),
    /// The application's table refuses a value for good (a CHECK or NOT NULL constraint, a
    /// column too narrow): the same delivery will fail the same way until the table changes.
    #[error("the application's table refuses the change: {0}")]
    Refused(String),
    /// Anything else: a bug or an unexpected state.
    #[error("database error: {0}")]
    Internal(String),
}

impl DbError {
    /// A batch's address locks did not fit the server's shared lock table
    /// (`max_locks_per_transaction` × connections; the transaction rolled back): a smaller
    /// batch may.
    pub fn is_out_of_lock_space(&self) -> bool {
        matches!(self, DbError::Internal(text) if text.contains("out of shared memory"))
    }
}

impl From<DieselError> for DbError {
    fn from(error: DieselError) -> Self {
        let mut text = error.to_string();
        if text.contains("prepared statement \"") {
            // A statement prepared on one server connection and used on another: a
            // transaction-mode pooler is in front of a connection not set up for one.
            text.push_str(
                " (a transaction-mode pooler seems to be in front of the database: add \
                 pgbouncer=true to DATABASE_URL, and set DIRECT_URL for migrations)",
            );
            return DbError::Unavailable(text);
        }
        let transient = match &error {
            DieselError::DatabaseError(kind, info) => match kind {
                DatabaseErrorKind::UnableToSendCommand
                | DatabaseErrorKind::ClosedConnection
                | DatabaseErrorKind::SerializationFailure
                // Another writer took the address between our read and our write: retrying settles it.
                | DatabaseErrorKind::UniqueViolation => true,
                _ => {
                    let message = info.message();
                    [
                        "deadlock detected",
                        "canceling statement due to",
                        "could not obtain lock",
                        "terminating connection",
                        "database is locked",
                        "database system is",
                    ]
                    .iter()
                    .any(|m| message.contains(m))
                }
            },
            DieselError::BrokenTransactionManager => true,
            _ => false,
        };
        let refused = match &error {
            DieselError::DatabaseError(kind, info) => {
                matches!(
                    kind,
                    DatabaseErrorKind::CheckViolation | DatabaseErrorKind::NotNullViolation
                ) || info.message().contains("value too long for type")
            }
            _ => false,
        };
        if transient {
            DbError::Unavailable(text)
        } else if refused {
            DbError::Refused(text)
        } else {
            DbError::Internal(text)
        }
    }
}

impl From<diesel::ConnectionError> for DbError {
    fn from(error: diesel::ConnectionError) -> Self {
        DbError::Unavailable(error.to_string())
    }
}

impl From<diesel_async::pooled_connection::deadpool::PoolError> for DbError {
    fn from(error: diesel_async::pooled_connection::deadpool::PoolError) -> Self {
        use diesel_async::pooled_connection::deadpool::PoolError;
        match error {
            PoolError::Timeout(_) => {
                DbError::Unavailable("no database connection free in time".into())
            }
            other => DbError::Unavailable(other.to_string()),
        }
    }
}

/// How the pool behaves.
#[derive(Debug, Clone, Copy)]
pub struct PoolOptions {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Longest wait for a connection (also the connect timeout); past it, 503.
    pub acquire_timeout: Duration,
    /// Longest a statement may run or wait for a lock; past it, 503.
    pub statement_timeout: Duration,
    /// Committers applying waiting deliveries together on PostgreSQL (0: none, each delivery
    /// in its own transaction); see [`group`].
    pub committers: usize,
    /// Bulk writes (replay, backfill): SQLite keeps up to 256 MiB of pages in memory instead
    /// of 32 MiB.
    pub bulk: bool,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(3),
            statement_timeout: Duration::from_secs(5),
            committers: 2,
            bulk: false,
        }
    }
}

/// What `migrate` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions of clerk-sync's own migrations applied now.
    pub applied: Vec<String>,
    /// Whether the application's `User` table was absent and created now.
    pub created_user_table: bool,
}

/// How the daemon reaches its database, for `/readyz`, `status` and the start-up log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConnectionInfo {
    /// `TLSv1.3`, `TLSv1.2`, `none`, or `not connected yet`.
    pub tls: String,
    /// `off`, or `on (…why)`.
    pub pooler: String,
}

/// What the database says about recent work (`clerk-sync status`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    /// Deliveries received in the window, by outcome.
    pub deliveries_by_outcome: std::collections::BTreeMap<String, i64>,
    /// When the newest delivery was received (UTC, RFC 3339), if any.
    pub last_delivery_at: Option<String>,
    /// Deletes the application's foreign keys still refuse.
    pub pending_deletes: i64,
    /// Users deleted in Clerk (tombstones kept).
    pub tombstones: i64,
    /// Users clerk-sync has applied at least one change for.
    pub known_users: i64,
}

/// The pool's connections now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStatus {
    /// Most connections the pool opens.
    pub max_size: usize,
    /// Connections open.
    pub size: usize,
    /// Open connections not in use.
    pub available: usize,
    /// Requests waiting for a connection.
    pub waiting: usize,
}

/// Figures operators alert on, read from the database (shared by every instance).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Gauges {
    /// Deletes the application's foreign keys still refuse.
    pub pending_deletes: i64,
    /// Seconds since the newest delivery was received; none before the first.
    pub last_delivery_age_seconds: Option<f64>,
}

/// A connection pool to one of the two backends.
#[derive(Clone)]
pub enum Database {
    /// PostgreSQL through `AsyncPgConnection`.
    Postgres(postgres::Pg),
    /// SQLite through `SyncConnectionWrapper`.
    Sqlite(sqlite::Lite),
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.backend())
    }
}

impl Database {
    /// Opens a pool; connections are made on first use.
    pub fn open(url: &DatabaseUrl, options: PoolOptions) -> Result<Self, DbError> {
        Ok(match url {
            DatabaseUrl::Postgres { .. } => Database::Postgres(postgres::Pg::open(url, options)?),
            DatabaseUrl::Sqlite { path } => Database::Sqlite(sqlite::Lite::open(path, options)?),
        })
    }

    /// Whether the connection is encrypted and whether the pooler-safe mode is on.
    pub fn connection(&self) -> ConnectionInfo {
        match self {
            Database::Postgres(db) => ConnectionInfo {
                tls: match db.negotiated() {
                    None => "not connected yet".into(),
                    Some(None) => "none".into(),
                    Some(Some(version)) => version.into(),
                },
                pooler: db.pooler().reason().into(),
            },
            Database::Sqlite(_) => ConnectionInfo {
                tls: "none (a local file)".into(),
                pooler: "off".into(),
            },
        }
    }

    /// `postgres` or `sqlite`.
    pub fn backend(&self) -> &'static str {
        match self {
            Database::Postgres(_) => "postgres",
            Database::Sqlite(_) => "sqlite",
        }
    }

    /// Applies clerk-sync's migrations, creates the application's `User` table where it is
    /// absent, and checks that the table is one clerk-sync can write.
    pub async fn migrate(&self) -> Result<MigrationReport, DbError> {
        match self {
            Database::Postgres(db) => db.migrate().await,
            Database::Sqlite(db) => db.migrate().await,
        }
    }

    /// Applies clerk-sync's own migrations only: the application's table is neither created
    /// nor checked here (for a mapped table, which the layer above checks against its schema).
    pub async fn migrate_own(&self) -> Result<MigrationReport, DbError> {
        match self {
            Database::Postgres(db) => db.migrate_with(false).await,
            Database::Sqlite(db) => db.migrate_with(false).await,
        }
    }

    /// The table `name` as the catalog describes it, or `None` when there is no such table.
    /// `schema` is PostgreSQL's (the connection's current schema when `None`); SQLite has one.
    pub async fn describe_table(
        &self,
        schema: Option<&str>,
        name: &str,
    ) -> Result<Option<crate::domain::table::LiveTable>, DbError> {
        match self {
            Database::Postgres(db) => db.describe_table(schema, name).await,
            Database::Sqlite(db) => db.describe_table(name).await,
        }
    }

    /// Reachable, migrated, and the `User` table compatible: the readiness check.
    pub async fn check_ready(&self) -> Result<(), DbError> {
        match self {
            Database::Postgres(db) => db.check_ready().await,
            Database::Sqlite(db) => db.check_ready().await,
        }
    }

    /// One unit of work through the [`port`]: takes `request`'s locks, reads the snapshot,
    /// writes what `plan` makes of it and commits, in one transaction. On a task of its own,
    /// so that a caller that stops waiting (a request deadline) never abandons the
    /// transaction half-way: it commits or rolls back by itself.
    pub async fn transact<T, F>(&self, request: Request, plan: F) -> Result<(T, Deleted), DbError>
    where
        F: FnOnce(&Snapshot) -> Result<(Writes, T), DbError> + Send + 'static,
        T: Send + 'static,
    {
        let db = self.clone();
        tokio::spawn(async move {
            match db {
                Database::Postgres(db) => match db.shape.get().cloned() {
                    Some(shape) => db.transact_mapped(shape, request, plan).await,
                    None => db.transact(request, plan).await,
                },
                Database::Sqlite(db) => match db.shape.get().cloned() {
                    Some(shape) => db.transact_mapped(shape, request, plan).await,
                    None => db.transact(request, plan).await,
                },
            }
        })
        .await
        .map_err(|e| DbError::Internal(format!("database task failed: {e}")))?
    }

    /// From now on, [`Self::transact`] writes the application's rows into this mapped table
    /// (the seed's `User` table otherwise). Set once, at start, before the first delivery; a
    /// second call is refused.
    pub fn use_shape(&self, shape: crate::domain::table::WriteShape) -> Result<(), DbError> {
        let slot = match self {
            Database::Postgres(db) => &db.shape,
            Database::Sqlite(db) => &db.shape,
        };
        slot.set(Arc::new(shape))
            .map_err(|_| DbError::Internal("the mapped table was set twice".into()))
    }

    /// Readies the mapped table of [`Self::use_shape`] for writing: on PostgreSQL, its
    /// executor (made where absent when `create`, i.e. where migrations run; see
    /// `pg_mapped::Executor`). Answers whether the executor is used; without it, or on
    /// SQLite, the statements are.
    pub async fn prepare_mapped(&self, create: bool) -> Result<bool, DbError> {
        match self {
            Database::Postgres(db) => db.prepare_mapped(create).await,
            Database::Sqlite(_) => Ok(false),
        }
    }

    /// How many units of work the layer above should run at once, together: PostgreSQL's
    /// `--committers` (0: none, each delivery on its own), SQLite's one writer.
    pub fn committers(&self) -> usize {
        match self {
            Database::Postgres(db) => db.committers,
            Database::Sqlite(_) => 1,
        }
    }

    /// State the layer above keeps for this database (its committers), made on first use
    /// and shared by every clone.
    pub fn extension<T: std::any::Any + Send + Sync>(&self, init: impl Fn() -> T) -> Arc<T> {
        let slot = match self {
            Database::Postgres(db) => &db.extension,
            Database::Sqlite(db) => &db.extension,
        };
        let value = slot.get_or_init(|| Arc::new(init())).clone();
        match value.downcast::<T>() {
            Ok(value) => value,
            // One type is ever kept here; should another be asked for, it is not shared.
            Err(_) => Arc::new(init()),
        }
    }

    /// Deliveries per bulk transaction (replay, backfill) unless told otherwise.
    /// PostgreSQL: every address of a batch holds an advisory lock until commit, in the
    /// server's shared lock table (`max_locks_per_transaction` × connections): a third of
    /// that table, from 500 to 10,000 (about 2,000 at PostgreSQL's defaults).
    /// SQLite: 10,000 (one writer; the fewer commits, the fewer page writes).
    pub async fn preferred_batch(&self) -> usize {
        match self {
            Database::Postgres(db) => db.preferred_batch().await,
            Database::Sqlite(_) => 10_000,
        }
    }

    /// Users whose deletes the application's foreign keys refused, the longest-waiting
    /// first.
    pub async fn pending_deletes(&self, limit: i64) -> Result<Vec<String>, DbError> {
        match self {
            Database::Postgres(db) => db.pending_deletes(limit).await,
            Database::Sqlite(db) => db.pending_deletes(limit).await,
        }
    }

    /// Counts for `clerk-sync status`: deliveries received since `since`, and the current state.
    pub async fn status(&self, since: chrono::DateTime<chrono::Utc>) -> Result<Status, DbError> {
        match self {
            Database::Postgres(db) => db.status(since).await,
            Database::Sqlite(db) => db.status(since).await,
        }
    }

    /// The pool's connections now.
    pub fn pool_status(&self) -> PoolStatus {
        let status = match self {
            Database::Postgres(db) => db.pool_status(),
            Database::Sqlite(db) => db.pool_status(),
        };
        PoolStatus {
            max_size: status.max_size,
            size: status.size,
            available: status.available,
            waiting: status.waiting,
        }
    }

    /// Pending deletes and the age of the newest delivery, for `/metrics`.
    pub async fn gauges(&self) -> Result<Gauges, DbError> {
        match self {
            Database::Postgres(db) => db.gauges().await,
            Database::Sqlite(db) => db.gauges().await,
        }
    }
}

#[derive(diesel::QueryableByName)]
struct OutcomeCount {
    #[diesel(sql_type = diesel::sql_types::Text)]
    outcome: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

#[derive(diesel::QueryableByName)]
struct Totals {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    last_delivery_at: Option<String>,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pending_deletes: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    tombstones: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    known_users: i64,
}

impl Totals {
    fn into_status(self, by_outcome: Vec<OutcomeCount>) -> Status {
        Status {
            deliveries_by_outcome: by_outcome.into_iter().map(|c| (c.outcome, c.n)).collect(),
            last_delivery_at: self.last_delivery_at,
            pending_deletes: self.pending_deletes,
            tombstones: self.tombstones,
            known_users: self.known_users,
        }
    }
}

#[derive(diesel::QueryableByName)]
struct GaugeRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pending_deletes: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Double>)]
    last_delivery_age_seconds: Option<f64>,
}

impl From<GaugeRow> for Gauges {
    fn from(row: GaugeRow) -> Self {
        Gauges {
            pending_deletes: row.pending_deletes,
            last_delivery_age_seconds: row.last_delivery_age_seconds,
        }
    }
}
