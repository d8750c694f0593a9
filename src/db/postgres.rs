//! PostgreSQL: `AsyncPgConnection` in a deadpool pool.
//!
//! One delivery is one statement, `SELECT clerk_sync.apply_delivery(…)`: dedup, version
//! gate, tombstone, address hand-over and upsert in a single round trip and a single
//! (implicit) transaction. The function is created by `migrations/postgres`.

use std::time::Duration;

use diesel::sql_types::{Bool, Integer, Nullable, Text, Timestamptz};
use diesel::QueryableByName;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};

use super::app_table::{self, Column};
use super::migrations::{self, History};
use super::{
    outcome, DatabaseUrl, DbError, GaugeRow, Gauges, MigrationReport, OutcomeCount, PendingDeletes,
    PoolOptions, Status, Totals,
};
use crate::domain::{Event, MessageId};
use crate::sync::{Outcome, SyncOptions};

const HISTORY: History = History {
    create: "CREATE SCHEMA IF NOT EXISTS clerk_sync;
             CREATE TABLE IF NOT EXISTS clerk_sync.schema_migrations (
                 version VARCHAR(50) PRIMARY KEY,
                 run_on TIMESTAMPTZ NOT NULL DEFAULT now()
             );",
    table: "clerk_sync.schema_migrations",
};

/// Session advisory lock held while migrating, so that instances starting together take turns.
const MIGRATION_LOCK: i64 = 0x636c_6572_6b5f_7379;

/// A PostgreSQL pool.
#[derive(Clone)]
pub struct Pg {
    pub(super) pool: Pool<AsyncPgConnection>,
    url: String,
    setup: String,
    /// How many committers apply deliveries together (0: none, each on its own).
    pub(super) committers: usize,
    /// The committers, started on first use (see `super::group`).
    pub(super) group: std::sync::Arc<std::sync::OnceLock<super::group::GroupCommit>>,
    /// Most deliveries one batch transaction takes: lowered when the server's lock table
    /// could not hold a batch's address locks (see [`Pg::apply_batch`]).
    batch_cap: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// [`Pg::preferred_batch`], once read from the server.
    preferred: std::sync::Arc<tokio::sync::OnceCell<usize>>,
}

#[derive(QueryableByName)]
struct LockTable {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    slots: i64,
}

/// The smallest batch split further when the server's lock table is full.
const SMALLEST_SPLIT: usize = 64;

/// A batch's address locks did not fit the server's shared lock table
/// (`max_locks_per_transaction` × connections; the transaction rolled back).
fn out_of_lock_space(error: &DbError) -> bool {
    matches!(error, DbError::Internal(text) if text.contains("out of shared memory"))
}

#[derive(QueryableByName)]
struct Exists {
    #[diesel(sql_type = Bool)]
    present: bool,
}

#[derive(QueryableByName)]
struct CatalogColumn {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    data_type: String,
    #[diesel(sql_type = Nullable<Integer>)]
    max_length: Option<i32>,
    #[diesel(sql_type = Bool)]
    nullable: bool,
    #[diesel(sql_type = Bool)]
    has_default: bool,
}

async fn connect(
    url: String,
    setup: String,
    timeout: Duration,
) -> diesel::ConnectionResult<AsyncPgConnection> {
    let attempt = async {
        let mut conn = AsyncPgConnection::establish(&url).await?;
        conn.batch_execute(&setup)
            .await
            .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?;
        Ok(conn)
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(diesel::ConnectionError::BadConnection(
                "connect timed out".into(),
            ))
        })
}

impl Pg {
    pub(super) fn open(url: &DatabaseUrl, options: PoolOptions) -> Result<Self, DbError> {
        let DatabaseUrl::Postgres { url, schema } = url else {
            return Err(DbError::Internal("not a PostgreSQL URL".into()));
        };
        let ms = options.statement_timeout.as_millis();
        let mut setup = format!("SET statement_timeout = {ms}; SET lock_timeout = {ms};");
        if let Some(schema) = schema {
            // Validated as a plain identifier by DatabaseUrl::parse.
            setup.push_str(&format!("SET search_path TO \"{schema}\";"));
        }
        let mut config = ManagerConfig::<AsyncPgConnection>::default();
        // No test query on every checkout (it would double the round trips of a delivery): a
        // connection the server closed is seen as closed and replaced, and a failure on one
        // that died silently is a 503 that Svix retries.
        config.recycling_method = diesel_async::pooled_connection::RecyclingMethod::Fast;
        let (setup_url, setup_sql, timeout) = (url.clone(), setup.clone(), options.acquire_timeout);
        config.custom_setup =
            Box::new(move |_| Box::pin(connect(setup_url.clone(), setup_sql.clone(), timeout)));
        let manager = AsyncDieselConnectionManager::new_with_config(url.clone(), config);
        let pool = Pool::builder(manager)
            .max_size(options.max_connections)
            .wait_timeout(Some(options.acquire_timeout))
            .create_timeout(Some(options.acquire_timeout))
            .recycle_timeout(Some(options.acquire_timeout))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| DbError::Internal(e.to_string()))?;
        Ok(Self {
            pool,
            url: url.clone(),
            setup,
            committers: options.committers.min(options.max_connections),
            group: Default::default(),
            batch_cap: std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX)),
            preferred: Default::default(),
        })
    }

    pub(super) async fn migrate(&self) -> Result<MigrationReport, DbError> {
        let (url, setup) = (self.url.clone(), self.setup.clone());
        // diesel's migrations run on a blocking connection: the async one, wrapped, on a
        // blocking thread.
        tokio::task::spawn_blocking(move || blocking::migrate(&url, &setup))
            .await
            .map_err(|e| DbError::Internal(format!("migration task failed: {e}")))?
    }

    pub(super) async fn check_ready(&self) -> Result<(), DbError> {
        let mut conn = self.pool.get().await?;
        let present: Exists = diesel::sql_query(
            "SELECT to_regclass('clerk_sync.schema_migrations') IS NOT NULL AS present",
        )
        .get_result(&mut conn)
        .await?;
        let applied = if present.present {
            let rows: Vec<Version> =
                diesel::sql_query("SELECT version FROM clerk_sync.schema_migrations")
                    .load(&mut conn)
                    .await?;
            rows.into_iter().map(|r| r.version).collect()
        } else {
            Vec::new()
        };
        migrations::require_current::<diesel::pg::Pg, _>(&migrations::POSTGRES, &applied)
    }

    pub(super) async fn apply(
        &self,
        id: &MessageId,
        event: &Event,
        options: SyncOptions,
    ) -> Result<Outcome, DbError> {
        let mut c = BatchColumns::default();
        c.push(id, event);
        let mut conn = self.pool.get().await?;
        // A typed, statically known statement: diesel-async prepares it once per connection,
        // after which every delivery is one round trip (bind + execute).
        let raw: String = diesel::select(functions::apply_delivery(
            c.svix_id.pop().unwrap_or_default(),
            c.event_type.pop().unwrap_or_default(),
            c.kind.pop().unwrap_or_default(),
            c.user_id.pop().flatten(),
            c.version.pop().flatten(),
            c.digest.pop().flatten(),
            c.name.pop().flatten(),
            c.email.pop().flatten(),
            c.role.pop().flatten(),
            c.created_at.pop().flatten(),
            c.updated_at.pop().flatten(),
            options.skip_users_without_email,
        ))
        .get_result(&mut conn)
        .await?;
        outcome(&raw)
    }

    /// Deliveries per bulk transaction: a third of the server's shared lock table, 500 to
    /// 10,000 (2,000 when it cannot be read).
    pub(super) async fn preferred_batch(&self) -> usize {
        *self
            .preferred
            .get_or_init(|| async {
                let slots = async {
                    let mut conn = self.pool.get().await?;
                    let table: LockTable = diesel::sql_query(
                        "SELECT current_setting('max_locks_per_transaction')::bigint
                                * (current_setting('max_connections')::bigint
                                   + current_setting('max_prepared_transactions')::bigint) AS slots",
                    )
                    .get_result(&mut conn)
                    .await?;
                    Ok::<i64, DbError>(table.slots)
                };
                match slots.await {
                    Ok(slots) => usize::try_from(slots / 3).unwrap_or(0).clamp(500, 10_000),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the server's lock table size: 2,000 deliveries per bulk transaction");
                        2_000
                    }
                }
            })
            .await
    }

    /// Applies `batch` in order, in one transaction — or, when the server's lock table
    /// cannot hold the advisory locks of that many addresses at once (each address of a
    /// batch holds one until commit; PostgreSQL's default table holds 64 per connection),
    /// in consecutive transactions of half the size, down to [`SMALLEST_SPLIT`]; the size
    /// that fits is kept for later batches. A failed transaction rolled back whole, so
    /// splitting changes no outcome.
    pub(super) async fn apply_batch(
        &self,
        batch: &[(MessageId, Event)],
        options: SyncOptions,
    ) -> Result<Vec<Outcome>, super::BatchFailure> {
        use std::sync::atomic::Ordering;
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut rest = batch;
        while !rest.is_empty() {
            let cap = std::sync::atomic::AtomicUsize::load(&self.batch_cap, Ordering::Relaxed);
            let (chunk, after) = rest.split_at(cap.min(rest.len()));
            let applied = match self.pool.get().await {
                Ok(mut conn) => super::pg_batch::apply(&mut conn, chunk, options).await,
                Err(e) => Err(e.into()),
            };
            match applied {
                Ok(decided) => {
                    outcomes.extend(decided);
                    rest = after;
                }
                Err(e) if out_of_lock_space(&e) && chunk.len() > SMALLEST_SPLIT => {
                    let smaller = (chunk.len() / 2).max(SMALLEST_SPLIT);
                    self.batch_cap.fetch_min(smaller, Ordering::Relaxed);
                    tracing::warn!(
                        deliveries = chunk.len(),
                        now = smaller,
                        "the server's lock table cannot hold the address locks of this many \
                         deliveries in one transaction: splitting batches (raising \
                         max_locks_per_transaction allows larger ones)"
                    );
                }
                Err(error) => {
                    return Err(super::BatchFailure {
                        decided: outcomes,
                        error,
                    })
                }
            }
        }
        Ok(outcomes)
    }

    /// Applies a few concurrent deliveries (group commit) in one transaction of ONE statement:
    /// each through `clerk_sync.apply_delivery`, exactly as alone. The batch planner's fixed
    /// cost (a dozen statements) pays off for thousands of deliveries, not for a handful.
    /// The i-th outcome answers the i-th delivery.
    pub(super) async fn apply_group(
        &self,
        group: &[(MessageId, Event)],
        options: SyncOptions,
    ) -> Result<Vec<Outcome>, DbError> {
        // Concurrent deliveries have no order among themselves: taking them by user id
        // (stable, so one user's keep their arrival order) makes two groups lock users in
        // the same order. A rare deadlock through an address fails the group, whose
        // deliveries are then applied one by one.
        let mut order: Vec<usize> = (0..group.len()).collect();
        order.sort_by(|&a, &b| {
            let user = |i: usize| group[i].1.user_id().map(|u| u.as_str());
            user(a).cmp(&user(b))
        });
        let mut conn = self.pool.get().await?;
        let decided =
            one_after_another(&mut conn, order.iter().map(|&i| &group[i]), options).await?;
        let mut outcomes = vec![Outcome::Ignored; group.len()];
        for (&i, decided) in order.iter().zip(decided) {
            outcomes[i] = decided;
        }
        Ok(outcomes)
    }

    pub(super) async fn status(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Status, DbError> {
        let mut conn = self.pool.get().await?;
        let by_outcome: Vec<OutcomeCount> = diesel::sql_query(
            "SELECT outcome, count(*) AS n FROM clerk_sync.deliveries WHERE received_at >= $1 GROUP BY outcome",
        )
        .bind::<Timestamptz, _>(since)
        .load(&mut conn)
        .await?;
        // Session syncs (`session:` ids) are not Clerk's deliveries: they must not hide a webhook
        // endpoint that stopped receiving.
        let totals: Totals = diesel::sql_query(
            "SELECT (SELECT to_char(max(received_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')
                       FROM clerk_sync.deliveries WHERE svix_id NOT LIKE 'session:%') AS last_delivery_at,
                    (SELECT count(*) FROM clerk_sync.users WHERE delete_pending) AS pending_deletes,
                    (SELECT count(*) FROM clerk_sync.users WHERE deleted_at IS NOT NULL) AS tombstones,
                    (SELECT count(*) FROM clerk_sync.users WHERE version >= 0 OR deleted_at IS NOT NULL) AS known_users",
        )
        .get_result(&mut conn)
        .await?;
        Ok(totals.into_status(by_outcome))
    }

    pub(super) fn pool_status(&self) -> deadpool::Status {
        self.pool.status()
    }

    pub(super) async fn gauges(&self) -> Result<Gauges, DbError> {
        let mut conn = self.pool.get().await?;
        // Session syncs (`session:` ids) are not Clerk's deliveries: they must not hide a webhook
        // endpoint that stopped receiving.
        let row: GaugeRow = diesel::sql_query(
            "SELECT (SELECT count(*) FROM clerk_sync.users WHERE delete_pending) AS pending_deletes,
                    (SELECT extract(epoch FROM now() - max(received_at))::float8 FROM clerk_sync.deliveries
                      WHERE svix_id NOT LIKE 'session:%')
                        AS last_delivery_age_seconds",
        )
        .get_result(&mut conn)
        .await?;
        Ok(row.into())
    }

    pub(super) async fn retry_pending_deletes(&self) -> Result<PendingDeletes, DbError> {
        let mut conn = self.pool.get().await?;
        // The longest-waiting first, so that deletes refused for good never starve the rest;
        // each retry in its own transaction.
        let pending: Vec<UserIdRow> = diesel::sql_query(
            "SELECT user_id FROM clerk_sync.users WHERE delete_pending
              ORDER BY delete_attempted_at NULLS FIRST, user_id LIMIT 100",
        )
        .load(&mut conn)
        .await?;
        let mut report = PendingDeletes::default();
        for row in pending {
            let done: Option<bool> = diesel::select(functions::retry_delete(row.user_id))
                .get_result(&mut conn)
                .await?;
            match done {
                Some(true) => report.completed += 1,
                Some(false) => report.still_pending += 1,
                None => {}
            }
        }
        Ok(report)
    }
}

#[derive(QueryableByName)]
struct UserIdRow {
    #[diesel(sql_type = Text)]
    user_id: String,
}

/// clerk-sync's PostgreSQL functions (see `migrations/postgres`), declared so that calls
/// to them are typed, cacheable statements.
#[expect(
    clippy::too_many_arguments,
    reason = "the SQL functions take one argument per column of a delivery"
)]
pub(super) mod functions {
    use diesel::sql_types::{Array, BigInt, Bool, Nullable, Text, Timestamp};

    diesel::define_sql_function! {
        /// One delivery: dedup, version gate, tombstone, address hand-over, upsert.
        #[sql_name = "clerk_sync.apply_delivery"]
        fn apply_delivery(
            svix_id: Text,
            event_type: Text,
            kind: Text,
            user_id: Nullable<Text>,
            version: Nullable<BigInt>,
            digest: Nullable<Text>,
            name: Nullable<Text>,
            email: Nullable<Text>,
            role: Nullable<Text>,
            created_at: Nullable<Timestamp>,
            updated_at: Nullable<Timestamp>,
            skip_no_email: Bool,
        ) -> Text;
    }

    diesel::define_sql_function! {
        /// One retry of a deferred delete; NULL when busy or already done.
        #[sql_name = "clerk_sync.retry_delete"]
        fn retry_delete(user_id: Text) -> Nullable<Bool>;
    }

    diesel::define_sql_function! {
        /// Several deliveries, in order, in the caller's transaction.
        #[sql_name = "clerk_sync.apply_batch"]
        fn apply_batch(
            svix_id: Array<Text>,
            event_type: Array<Text>,
            kind: Array<Text>,
            user_id: Array<Nullable<Text>>,
            version: Array<Nullable<BigInt>>,
            digest: Array<Nullable<Text>>,
            name: Array<Nullable<Text>>,
            email: Array<Nullable<Text>>,
            role: Array<Nullable<Text>>,
            created_at: Array<Nullable<Timestamp>>,
            updated_at: Array<Nullable<Timestamp>>,
            skip_no_email: Bool,
        ) -> Array<Text>;
    }
}

/// Applies `deliveries` in order through `clerk_sync.apply_batch`: one statement, in the
/// connection's current transaction (or a transaction of its own when there is none).
pub(super) async fn one_after_another<'a>(
    conn: &mut AsyncPgConnection,
    deliveries: impl ExactSizeIterator<Item = &'a (MessageId, Event)>,
    options: SyncOptions,
) -> Result<Vec<Outcome>, DbError> {
    let expected = deliveries.len();
    let mut c = BatchColumns::default();
    for (id, event) in deliveries {
        c.push(id, event);
    }
    let decided: Vec<String> = diesel::select(functions::apply_batch(
        c.svix_id,
        c.event_type,
        c.kind,
        c.user_id,
        c.version,
        c.digest,
        c.name,
        c.email,
        c.role,
        c.created_at,
        c.updated_at,
        options.skip_users_without_email,
    ))
    .get_result(conn)
    .await?;
    if decided.len() != expected {
        return Err(DbError::Internal(
            "clerk_sync.apply_batch answered a different number of outcomes".into(),
        ));
    }
    decided.iter().map(|raw| outcome(raw)).collect()
}

/// A batch of deliveries as the column arrays `clerk_sync.apply_batch` takes.
#[derive(Default)]
pub(super) struct BatchColumns {
    pub(super) svix_id: Vec<String>,
    pub(super) event_type: Vec<String>,
    pub(super) kind: Vec<String>,
    pub(super) user_id: Vec<Option<String>>,
    pub(super) version: Vec<Option<i64>>,
    pub(super) digest: Vec<Option<String>>,
    pub(super) name: Vec<Option<String>>,
    pub(super) email: Vec<Option<String>>,
    pub(super) role: Vec<Option<String>>,
    pub(super) created_at: Vec<Option<chrono::NaiveDateTime>>,
    pub(super) updated_at: Vec<Option<chrono::NaiveDateTime>>,
}

impl BatchColumns {
    pub(super) fn push(&mut self, id: &MessageId, event: &Event) {
        self.svix_id.push(id.as_str().to_owned());
        self.event_type.push(event.event_type().to_owned());
        self.user_id
            .push(event.user_id().map(|u| u.as_str().to_owned()));
        let change = match event {
            Event::Upsert { change, .. } => Some(change),
            _ => None,
        };
        self.kind.push(
            match event {
                Event::Upsert { .. } => "upsert",
                Event::Delete { .. } => "delete",
                Event::Ignored { .. } => "ignore",
            }
            .to_owned(),
        );
        self.version.push(change.map(|c| c.version));
        self.digest.push(change.map(|c| c.digest.clone()));
        self.name.push(change.and_then(|c| c.name.clone()));
        self.email
            .push(change.and_then(|c| c.email.as_ref().map(|e| e.as_str().to_owned())));
        self.role
            .push(change.and_then(|c| c.role.map(|r| r.as_db().to_owned())));
        self.created_at
            .push(change.map(|c| c.created_at.naive_utc()));
        self.updated_at
            .push(change.map(|c| c.updated_at.naive_utc()));
    }
}

#[derive(QueryableByName)]
struct Version {
    #[diesel(sql_type = Text)]
    version: String,
}

/// The migration path, on a blocking connection.
mod blocking {
    use diesel::connection::SimpleConnection;
    use diesel::{Connection, RunQueryDsl};
    use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
    use diesel_async::AsyncPgConnection;

    use super::{
        app_table, migrations, CatalogColumn, Column, DbError, Exists, MigrationReport, HISTORY,
        MIGRATION_LOCK,
    };

    type Wrapped = AsyncConnectionWrapper<AsyncPgConnection>;

    pub(super) fn migrate(url: &str, setup: &str) -> Result<MigrationReport, DbError> {
        let mut conn = <Wrapped as Connection>::establish(url)?;
        conn.batch_execute(setup)?;
        diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
            .execute(&mut conn)?;
        let result = migrate_locked(&mut conn);
        let unlocked = diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))
            .execute(&mut conn);
        let report = result?;
        unlocked?;
        Ok(report)
    }

    fn migrate_locked(conn: &mut Wrapped) -> Result<MigrationReport, DbError> {
        let applied = migrations::run_pending(conn, &migrations::POSTGRES, &HISTORY)?;
        let created_user_table = conn.transaction(|conn| {
            let present: Exists =
                diesel::sql_query("SELECT to_regclass('\"User\"') IS NOT NULL AS present").get_result(conn)?;
            if present.present {
                return Ok::<_, diesel::result::Error>(false);
            }
            let role: Exists = diesel::sql_query(
                "SELECT EXISTS (SELECT 1 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                  WHERE t.typname = 'Role' AND n.nspname = current_schema()) AS present",
            )
            .get_result(conn)?;
            if !role.present {
                conn.batch_execute(app_table::POSTGRES_ROLE_DDL)?;
            }
            conn.batch_execute(app_table::POSTGRES_USER_DDL)?;
            Ok(true)
        })?;
        check_user_table(conn)?;
        Ok(MigrationReport {
            applied,
            created_user_table,
        })
    }

    fn check_user_table(conn: &mut Wrapped) -> Result<(), DbError> {
        let columns: Vec<CatalogColumn> = diesel::sql_query(
            "SELECT a.attname::text AS name,
                    CASE WHEN t.typtype = 'e' THEN lower(t.typname)
                         ELSE format_type(a.atttypid, NULL) END AS data_type,
                    CASE WHEN a.atttypmod > 4 AND t.typname IN ('varchar', 'bpchar') THEN a.atttypmod - 4 END AS max_length,
                    NOT a.attnotnull AS nullable,
                    (a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '') AS has_default
               FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
              WHERE a.attrelid = to_regclass('\"User\"') AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum",
        )
        .load(conn)?;
        let columns: Vec<Column> = columns
            .into_iter()
            .map(|c| Column {
                name: c.name,
                data_type: c.data_type,
                max_length: c.max_length,
                nullable: c.nullable,
                has_default: c.has_default,
            })
            .collect();
        app_table::check(&columns, true)?;
        let labels: Exists = diesel::sql_query(
            "SELECT (SELECT count(*) FROM pg_enum e JOIN pg_attribute a ON a.atttypid = e.enumtypid
                      WHERE a.attrelid = to_regclass('\"User\"') AND a.attname = 'role'
                        AND e.enumlabel IN ('ADMIN', 'USER')) = 2 AS present",
        )
        .get_result(conn)?;
        if !labels.present {
            return Err(DbError::Incompatible(
                "column \"role\": the enum \"Role\" lacks ADMIN or USER".into(),
            ));
        }
        Ok(())
    }
}
