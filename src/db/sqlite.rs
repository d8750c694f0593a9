//! SQLite, the embedded default: `SyncConnectionWrapper<SqliteConnection>` in a pool.
//!
//! Deliveries reach it through the port (see `super::port` and `super::sqlite_port`), on
//! the blocking connection inside one `BEGIN IMMEDIATE` transaction. SQLite serialises
//! writers, so no further locks are needed. Both backends run the same test suite.
//!
//! Dates are written exactly as Prisma Client writes them on SQLite
//! (`2024-05-01T12:34:56.789+00:00`), so the application's range queries see them.

use std::path::Path;

use chrono::{DateTime, Utc};
use diesel::connection::SimpleConnection;
use diesel::result::Error as DieselError;
use diesel::sql_types::{BigInt, Bool, Text};
use diesel::{QueryResult, QueryableByName, RunQueryDsl, SqliteConnection};
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::AsyncConnection;

use super::app_table::{self, Column};
use super::migrations::{self, History};
use super::port::{Deleted, Request, Snapshot, Writes};
use super::sqlite_port::{self as port, prisma_date};
use super::{
    DbError, GaugeRow, Gauges, MigrationReport, OutcomeCount, PoolOptions, Status, Totals,
};

type Conn = SyncConnectionWrapper<SqliteConnection>;

const HISTORY: History = History {
    create: "CREATE TABLE IF NOT EXISTS clerk_sync_schema_migrations (
                 version VARCHAR(50) PRIMARY KEY NOT NULL,
                 run_on TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
             );",
    table: "clerk_sync_schema_migrations",
};

/// An SQLite pool.
#[derive(Clone)]
pub struct Lite {
    pool: Pool<Conn>,
    /// What the layer above keeps for this database (see [`super::Database::extension`]).
    pub(super) extension: super::Extension,
    /// The mapped table deliveries are written to, when it is not the seed's `User` (see
    /// [`super::Database::use_shape`]).
    pub(super) shape: super::Shape,
}

fn pragmas(busy_ms: u128, cache_kib: u32) -> String {
    // WAL lets readers (probes, status) run beside the writer; synchronous=FULL keeps every
    // acknowledged delivery across a power loss; foreign keys as Prisma enables them. A page
    // cache of 32 MiB (SQLite's default is 2; 256 MiB for bulk writes) keeps a large table's
    // index pages in memory instead of reading them again for every batch; it grows only as
    // pages are used. The temporary B-trees of a statement (a batch's keys sorted, made
    // distinct, looked up) in memory: on disk (SQLite's default, files under /var/tmp) a
    // 50,000-user backfill wrote ≈ 16,000 pages to them, and nothing of them outlives the
    // statement.
    format!(
        "PRAGMA busy_timeout = {busy_ms}; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA cache_size = -{cache_kib}; PRAGMA temp_store = MEMORY;"
    )
}

impl Lite {
    pub(super) fn open(path: &Path, options: PoolOptions) -> Result<Self, DbError> {
        let cache_kib = if options.bulk { 256 * 1024 } else { 32 * 1024 };
        let setup = pragmas(options.statement_timeout.as_millis(), cache_kib);
        let path_text = path.to_string_lossy().into_owned();
        let mut config = ManagerConfig::<Conn>::default();
        config.recycling_method = diesel_async::pooled_connection::RecyclingMethod::Fast;
        config.custom_setup = Box::new(move |url| {
            let (url, setup) = (url.to_owned(), setup.clone());
            Box::pin(async move {
                let mut conn = Conn::establish(&url).await?;
                conn.spawn_blocking(move |c| c.batch_execute(&setup))
                    .await
                    .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?;
                Ok(conn)
            })
        });
        let manager = AsyncDieselConnectionManager::new_with_config(path_text, config);
        let pool = Pool::builder(manager)
            // SQLite has one writer at a time: one connection queues deliveries in the pool
            // (fair, no busy-waiting), where several would sleep on SQLite's busy handler.
            .max_size(1)
            .wait_timeout(Some(options.acquire_timeout))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| DbError::Internal(e.to_string()))?;
        Ok(Self {
            pool,
            extension: Default::default(),
            shape: Default::default(),
        })
    }

    /// Runs `task` on a pooled connection's blocking thread.
    pub(super) async fn run<R: Send + 'static>(
        &self,
        task: impl FnOnce(&mut SqliteConnection) -> Result<R, DbError> + Send + 'static,
    ) -> Result<R, DbError> {
        // On a task of its own: the wrapper's blocking call must never be dropped half-way
        // (its clean-up blocks in place, which a single-threaded HTTP worker cannot do), so a
        // caller that stops waiting — a deadline, a client gone — leaves it to finish.
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let mut conn = pool.get().await?;
            conn.spawn_blocking(move |c| Ok(task(c)))
                .await
                .map_err(DbError::from)?
        })
        .await
        .map_err(|e| DbError::Internal(format!("database task failed: {e}")))?
    }

    pub(super) async fn migrate(&self) -> Result<MigrationReport, DbError> {
        self.migrate_with(true).await
    }

    /// Migrates; with `seed`, also creates the seed `User` table where absent and checks it.
    pub(super) async fn migrate_with(&self, seed: bool) -> Result<MigrationReport, DbError> {
        self.run(move |conn| {
            let applied = migrations::run_pending(conn, &migrations::SQLITE, &HISTORY)?;
            if !seed {
                return Ok(MigrationReport {
                    applied,
                    created_user_table: false,
                });
            }
            let created_user_table = conn.immediate_transaction(|conn| {
                if !columns(conn)?.is_empty() {
                    return Ok::<_, DieselError>(false);
                }
                conn.batch_execute(app_table::SQLITE_USER_DDL)?;
                Ok(true)
            })?;
            app_table::check(&columns(conn)?, false)?;
            Ok(MigrationReport {
                applied,
                created_user_table,
            })
        })
        .await
    }

    pub(super) async fn check_ready(&self) -> Result<(), DbError> {
        self.run(|conn| {
            let present: Count = diesel::sql_query(
                "SELECT count(*) AS n FROM sqlite_master WHERE type = 'table' AND name = 'clerk_sync_schema_migrations'",
            )
            .get_result(conn)?;
            let applied = if present.n > 0 { migrations::applied(conn, &HISTORY)? } else { Vec::new() };
            migrations::require_current::<diesel::sqlite::Sqlite, _>(&migrations::SQLITE, &applied)
        })
        .await
    }

    /// One unit of work (see [`super::port`]) in one `BEGIN IMMEDIATE` transaction.
    pub(super) async fn transact<T, F>(
        &self,
        request: Request,
        plan: F,
    ) -> Result<(T, Deleted), DbError>
    where
        F: FnOnce(&Snapshot) -> Result<(Writes, T), DbError> + Send + 'static,
        T: Send + 'static,
    {
        let (value, deleted, spent) = self
            .run(move |conn| {
                conn.immediate_transaction(|c| {
                    let snapshot = port::read(c, &request)?;
                    let (writes, value) = plan(&snapshot)?;
                    let deleted = port::write(c, &request, &snapshot, &writes)?;
                    Ok((value, deleted, (request, snapshot, writes)))
                })
            })
            .await?;
        // Freed here, once the connection is back in the pool: a bulk batch's request,
        // snapshot and writes hold tens of thousands of strings, and the one writer need not
        // wait for them.
        drop(spent);
        Ok((value, deleted))
    }

    pub(super) async fn status(&self, since: DateTime<Utc>) -> Result<Status, DbError> {
        self.run(move |conn| {
            let by_outcome: Vec<OutcomeCount> = diesel::sql_query(
                "SELECT outcome, count(*) AS n FROM clerk_sync_deliveries WHERE received_at >= ? GROUP BY outcome",
            )
            .bind::<Text, _>(prisma_date(since))
            .load(conn)?;
            // Session syncs (`session:` ids) are not Clerk's deliveries: they must not hide a webhook
            // endpoint that stopped receiving.
            let totals: Totals = diesel::sql_query(
                "SELECT (SELECT replace(max(received_at), '+00:00', 'Z') FROM clerk_sync_deliveries WHERE svix_id NOT LIKE 'session:%') AS last_delivery_at,
                        (SELECT count(*) FROM clerk_sync_users WHERE delete_pending) AS pending_deletes,
                        (SELECT count(*) FROM clerk_sync_users WHERE deleted_at IS NOT NULL) AS tombstones,
                        (SELECT count(*) FROM clerk_sync_users WHERE version >= 0 OR deleted_at IS NOT NULL) AS known_users",
            )
            .get_result(conn)?;
            Ok(totals.into_status(by_outcome))
        })
        .await
    }

    pub(super) fn pool_status(&self) -> deadpool::Status {
        self.pool.status()
    }

    pub(super) async fn gauges(&self) -> Result<Gauges, DbError> {
        self.run(|conn| {
            // Session syncs (`session:` ids) are not Clerk's deliveries: they must not hide a webhook
            // endpoint that stopped receiving.
            let row: GaugeRow = diesel::sql_query(
                "SELECT (SELECT count(*) FROM clerk_sync_users WHERE delete_pending) AS pending_deletes,
                        (SELECT (julianday('now') - julianday(max(received_at))) * 86400.0 FROM clerk_sync_deliveries
                          WHERE svix_id NOT LIKE 'session:%')
                            AS last_delivery_age_seconds",
            )
            .get_result(conn)?;
            Ok(row.into())
        })
        .await
    }

    pub(super) async fn pending_deletes(&self, limit: i64) -> Result<Vec<String>, DbError> {
        self.run(move |conn| Ok(port::pending_deletes(conn, limit)?))
            .await
    }
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct PragmaColumn {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    data_type: String,
    #[diesel(sql_type = Bool)]
    is_notnull: bool,
    #[diesel(sql_type = Bool)]
    has_default: bool,
}

fn columns(conn: &mut SqliteConnection) -> QueryResult<Vec<Column>> {
    let rows: Vec<PragmaColumn> = diesel::sql_query(
        "SELECT name, lower(type) AS data_type, \"notnull\" AS is_notnull, dflt_value IS NOT NULL AS has_default
           FROM pragma_table_info('User')",
    )
    .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|c| Column {
            name: c.name,
            data_type: c.data_type,
            max_length: None,
            nullable: !c.is_notnull,
            has_default: c.has_default,
        })
        .collect())
}
