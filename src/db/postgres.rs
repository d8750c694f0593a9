//! PostgreSQL: `AsyncPgConnection` in a deadpool pool.
//!
//! Deliveries reach it through the port (see `super::port` and `super::pg_port`).

use std::time::Duration;

use diesel::sql_types::{Bool, Integer, Nullable, Text, Timestamptz};
use diesel::QueryableByName;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};

use super::app_table::{self, Column};
use super::migrations::{self, History};
use super::tls;
use super::url::{ChannelBinding, PgHost, PgUrl, Pooler, SslMode};
use super::{
    DatabaseUrl, DbError, GaugeRow, Gauges, MigrationReport, OutcomeCount, PoolOptions, Status,
    Totals,
};
use tokio_postgres::config::SslMode as PgSslMode;

const HISTORY: History = History {
    create: "CREATE SCHEMA IF NOT EXISTS clerk_sync;
             CREATE TABLE IF NOT EXISTS clerk_sync.schema_migrations (
                 version VARCHAR(50) PRIMARY KEY,
                 run_on TIMESTAMPTZ NOT NULL DEFAULT now()
             );",
    table: "clerk_sync.schema_migrations",
};

/// Transaction-level advisory lock held while migrating, so that instances starting together
/// take turns (never a session lock: through a transaction pooler it would outlive the
/// transaction on a server connection another client gets next).
const MIGRATION_LOCK: i64 = 0x636c_6572_6b5f_7379;

/// A PostgreSQL pool.
#[derive(Clone)]
pub struct Pg {
    pub(super) pool: Pool<AsyncPgConnection>,
    /// How a transaction begins: `BEGIN`, and through a pooler the `SET LOCAL`s.
    begin: String,
    /// How the migration's one transaction begins (longer timeouts).
    migration_begin: String,
    /// Whether the pooler-safe mode is on.
    pooler: Pooler,
    /// The server of `DATABASE_URL`.
    endpoint: std::sync::Arc<Endpoint>,
    /// Where migrations go: `DIRECT_URL`'s server, else `DATABASE_URL`'s.
    direct: std::sync::Arc<Endpoint>,
    /// How many committers apply deliveries together (0: none, each on its own).
    pub(super) committers: usize,
    /// What the layer above keeps for this database (see [`super::Database::extension`]).
    pub(super) extension: super::Extension,
    /// The mapped table deliveries are written to, when it is not the seed's `User` (see
    /// [`super::Database::use_shape`]).
    pub(super) shape: super::Shape,
    /// The mapped table's executor, once [`Pg::prepare_mapped`] found or made it.
    pub(super) executor: std::sync::Arc<std::sync::OnceLock<super::pg_mapped::Executor>>,
    /// The mapped table as its statements name it, once made.
    pub(super) table: std::sync::Arc<std::sync::OnceLock<std::sync::Arc<super::pg_mapped::Table>>>,
    /// [`Pg::preferred_batch`], once read from the server.
    preferred: std::sync::Arc<tokio::sync::OnceCell<usize>>,
    /// The port's write statements prepared on pool connections (see `super::pg_port`).
    pub(super) prepared:
        std::sync::Arc<std::sync::Mutex<foldhash::HashSet<super::pg_port::WriteStatement>>>,
}

#[derive(QueryableByName)]
struct LockTable {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    slots: i64,
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

/// How to reach the server and what every connection is set up with.
pub(super) struct Endpoint {
    /// Host, port, role, password, database, timeouts: what the driver understands.
    config: tokio_postgres::Config,
    /// TLS by `sslmode`.
    mode: SslMode,
    /// The TLS client, unless `sslmode=disable`.
    connector: Option<tls::Connector>,
    /// Pooler-safe: no statement outlives its transaction, no session state.
    pooled: bool,
    /// Statements a direct connection runs once, at connect (session settings).
    session_setup: String,
    /// What the newest connection negotiated: `Some(version)` over TLS, `None` in plaintext;
    /// unset before the first.
    negotiated: std::sync::Mutex<Option<Option<&'static str>>>,
    /// Longest a new connection may take.
    connect_timeout: Duration,
}

impl Endpoint {
    /// Reads the URL's TLS files now, so that one that cannot be read stops the start.
    pub(super) fn new(
        url: &PgUrl,
        statement_timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Self, DbError> {
        let connector = match url.tls.mode {
            SslMode::Disable => None,
            _ => Some(tls::Connector::new(&url.tls).map_err(|e| DbError::Config(e.to_string()))?),
        };
        Ok(Self {
            config: driver_config(url, connect_timeout),
            mode: url.tls.mode,
            connector,
            pooled: url.pooler.safe(),
            session_setup: settings_sql(url.schema.as_deref(), statement_timeout, false),
            negotiated: std::sync::Mutex::new(None),
            connect_timeout,
        })
    }

    /// Opens one connection, by `sslmode`.
    pub(super) async fn connect(&self) -> diesel::ConnectionResult<AsyncPgConnection> {
        let attempt = async {
            let mut conn = match (self.mode, &self.connector) {
                (SslMode::Disable, _) | (_, None) => self.plain().await?,
                // libpq's `allow`: plaintext first, TLS when the server refuses it.
                (SslMode::Allow, Some(connector)) => match self.plain().await {
                    Ok(conn) => conn,
                    Err(_) => self.encrypted(connector, PgSslMode::Require).await?,
                },
                (SslMode::Prefer, Some(connector)) => {
                    self.encrypted(connector, PgSslMode::Prefer).await?
                }
                (_, Some(connector)) => self.encrypted(connector, PgSslMode::Require).await?,
            };
            // Through a pooler the settings are `SET LOCAL` in every transaction instead
            // (see `Pg::transaction_on`), and `wrap` turned the statement cache off.
            if !self.pooled {
                conn.batch_execute(&self.session_setup)
                    .await
                    .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?;
            }
            Ok(conn)
        };
        tokio::time::timeout(self.connect_timeout, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(diesel::ConnectionError::BadConnection(format!(
                    "connecting took longer than {} s",
                    self.connect_timeout.as_secs()
                )))
            })
    }

    async fn plain(&self) -> diesel::ConnectionResult<AsyncPgConnection> {
        let mut config = self.config.clone();
        config.ssl_mode(PgSslMode::Disable);
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| connect_error(&e, self.mode))?;
        self.record(None);
        self.wrap(client, connection).await
    }

    async fn encrypted(
        &self,
        connector: &tls::Connector,
        mode: PgSslMode,
    ) -> diesel::ConnectionResult<AsyncPgConnection> {
        let mut config = self.config.clone();
        config.ssl_mode(mode);
        let (connector, negotiated) = connector.for_connection();
        let (client, connection) = config
            .connect(connector)
            .await
            .map_err(|e| connect_error(&e, self.mode))?;
        let version = negotiated.lock().ok().and_then(|v| *v);
        self.record(version);
        self.wrap(client, connection).await
    }

    /// Hands the driver's connection to diesel-async. Its set-up runs two prepared
    /// statements (`SET TIME ZONE`, `SET CLIENT_ENCODING`) and keeps them cached; through a
    /// transaction pooler, their preparation and execution could reach different server
    /// connections, and the statements would stay behind on one another client gets next. So
    /// there the set-up runs inside a transaction, and the statements are closed before it
    /// commits. (The two settings are ones PgBouncer carries from server to server.)
    async fn wrap<S>(
        &self,
        client: tokio_postgres::Client,
        connection: tokio_postgres::Connection<tokio_postgres::Socket, S>,
    ) -> diesel::ConnectionResult<AsyncPgConnection>
    where
        S: tokio_postgres::tls::TlsStream + Unpin + Send + 'static,
    {
        if !self.pooled {
            return AsyncPgConnection::try_from_client_and_connection(client, connection).await;
        }
        let bad = |e: String| diesel::ConnectionError::BadConnection(e);
        let mut connection = connection;
        // The driver answers only while its connection is polled; diesel-async polls it from
        // the hand-over on, so until then this does.
        let begun = {
            let begin = client.batch_execute("BEGIN");
            tokio::pin!(begin);
            tokio::select! {
                answer = &mut begin => answer.map_err(|e| bad(e.to_string())),
                ended = &mut connection => Err(bad(match ended {
                    Ok(()) => "the server closed the connection".to_owned(),
                    Err(e) => e.to_string(),
                })),
            }
        };
        begun?;
        let mut conn =
            AsyncPgConnection::try_from_client_and_connection(client, connection).await?;
        // No statement may outlive its transaction: the next transaction may run on another
        // server connection, where it was never prepared. Dropping the cache closes the two.
        conn.set_prepared_statement_cache_size(diesel::connection::CacheSize::Disabled);
        conn.batch_execute("COMMIT")
            .await
            .map_err(|e| bad(e.to_string()))?;
        Ok(conn)
    }

    fn record(&self, version: Option<&'static str>) {
        if let Ok(mut slot) = self.negotiated.lock() {
            *slot = Some(version);
        }
    }

    /// The TLS version of the newest connection (`None`: plaintext), once one was made.
    pub(super) fn negotiated(&self) -> Option<Option<&'static str>> {
        self.negotiated.lock().ok().and_then(|v| *v)
    }
}

/// The driver's configuration: only what tokio-postgres understands.
fn driver_config(url: &PgUrl, connect_timeout: Duration) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    for host in &url.hosts {
        match host {
            PgHost::Tcp { host, port } => {
                config.host(host).port(*port);
            }
            PgHost::Socket { dir, port } => {
                config.host_path(dir).port(*port);
            }
        }
    }
    match &url.user {
        Some(user) => config.user(user),
        // libpq's default role: the operating system's user.
        None => config.user(std::env::var("USER").unwrap_or_else(|_| "postgres".into())),
    };
    if let Some(password) = &url.password {
        config.password(password.expose());
    }
    if let Some(dbname) = &url.dbname {
        config.dbname(dbname);
    }
    config.application_name(url.application_name.as_deref().unwrap_or("clerk-sync"));
    if let Some(options) = &url.options {
        config.options(options);
    }
    config.channel_binding(match url.channel_binding {
        ChannelBinding::Disable => tokio_postgres::config::ChannelBinding::Disable,
        ChannelBinding::Prefer => tokio_postgres::config::ChannelBinding::Prefer,
        ChannelBinding::Require => tokio_postgres::config::ChannelBinding::Require,
    });
    config.connect_timeout(connect_timeout);
    config.keepalives(true);
    config
}

/// The settings every transaction needs: `SET` once per session on a direct connection,
/// `SET LOCAL` in every transaction through a pooler. Only clerk-sync's own numbers and the
/// schema (a plain identifier, checked when the URL was parsed) reach this text.
fn settings_sql(schema: Option<&str>, statement_timeout: Duration, local: bool) -> String {
    let set = if local { "SET LOCAL" } else { "SET" };
    let ms = statement_timeout.as_millis();
    let mut sql = format!("{set} statement_timeout = {ms}; {set} lock_timeout = {ms};");
    if let Some(schema) = schema {
        sql.push_str(&format!(" {set} search_path TO \"{schema}\";"));
    }
    sql
}

/// A connection failure as a sentence: the driver's error with its causes, which name what
/// failed (a refused certificate, a server without TLS, a refused password); never the
/// password itself, which the driver does not print.
fn connect_error(error: &tokio_postgres::Error, mode: SslMode) -> diesel::ConnectionError {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if text.contains("server does not support TLS") {
        text = format!(
            "the server refuses TLS, and sslmode={} asks for it (sslmode=prefer falls back to plaintext; use it only on a trusted network)",
            mode.as_str()
        );
    }
    diesel::ConnectionError::BadConnection(text)
}

/// Longest a migration statement may run or wait for a lock (another instance migrating).
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(300);

impl Pg {
    pub(super) fn open(url: &DatabaseUrl, options: PoolOptions) -> Result<Self, DbError> {
        let Some(pg) = url.postgres() else {
            return Err(DbError::Internal("not a PostgreSQL URL".into()));
        };
        let connect_timeout = pg.connect_timeout.unwrap_or(options.acquire_timeout);
        let endpoint = std::sync::Arc::new(Endpoint::new(
            pg,
            options.statement_timeout,
            connect_timeout,
        )?);
        let direct = match pg.direct.as_deref() {
            Some(direct) => std::sync::Arc::new(Endpoint::new(
                direct,
                options.statement_timeout,
                direct.connect_timeout.unwrap_or(options.acquire_timeout),
            )?),
            None => endpoint.clone(),
        };
        let mut config = ManagerConfig::<AsyncPgConnection>::default();
        // No test query on every checkout (it would double the round trips of a delivery): a
        // connection the server closed is seen as closed and replaced, and a failure on one
        // that died silently is a 503 that Svix retries.
        config.recycling_method = diesel_async::pooled_connection::RecyclingMethod::Fast;
        let setup = endpoint.clone();
        config.custom_setup = Box::new(move |_| {
            let setup = setup.clone();
            Box::pin(async move { setup.connect().await })
        });
        // The manager's own URL is never used: every connection is made by `custom_setup`.
        let manager = AsyncDieselConnectionManager::new_with_config("postgres://", config);
        let pool = Pool::builder(manager)
            .max_size(options.max_connections)
            .wait_timeout(Some(options.acquire_timeout))
            .create_timeout(Some(connect_timeout))
            .recycle_timeout(Some(options.acquire_timeout))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| DbError::Internal(e.to_string()))?;
        Ok(Self {
            pool,
            begin: if pg.pooler.safe() {
                format!(
                    "BEGIN; {}",
                    settings_sql(pg.schema.as_deref(), options.statement_timeout, true)
                )
            } else {
                "BEGIN".into()
            },
            migration_begin: format!(
                "BEGIN; {}",
                settings_sql(pg.schema.as_deref(), MIGRATION_TIMEOUT, true)
            ),
            pooler: pg.pooler,
            endpoint,
            direct,
            committers: options.committers.min(options.max_connections),
            extension: Default::default(),
            shape: Default::default(),
            executor: Default::default(),
            table: Default::default(),
            preferred: Default::default(),
            prepared: Default::default(),
        })
    }

    /// How a transaction begins: `BEGIN`, and through a pooler the `SET LOCAL`s.
    pub(super) fn begin_sql(&self) -> &str {
        &self.begin
    }

    /// Whether the pooler-safe mode is on, and why.
    pub(super) fn pooler(&self) -> Pooler {
        self.pooler
    }

    /// The TLS version of the newest pool connection (`None`: plaintext), once one was made.
    pub(super) fn negotiated(&self) -> Option<Option<&'static str>> {
        self.endpoint.negotiated()
    }

    /// Runs `work` on a pool connection: as it is on a direct connection; through a pooler,
    /// in a transaction of its own, so that each statement's preparation and execution reach
    /// the same server connection.
    pub(super) async fn with_conn<T, F>(&self, work: F) -> Result<T, DbError>
    where
        F: for<'c> AsyncFnOnce(&'c mut AsyncPgConnection) -> Result<T, DbError>,
    {
        let mut conn = self.pool.get().await?;
        if self.pooler.safe() {
            self.transaction_on(&mut conn, work).await
        } else {
            work(&mut conn).await
        }
    }

    /// Runs `work` in one transaction on `conn`; through a pooler, the transaction begins
    /// with the settings a direct connection has for its whole session (`SET LOCAL`), in
    /// the same round trip as `BEGIN`.
    pub(super) async fn transaction_on<T, F>(
        &self,
        conn: &mut AsyncPgConnection,
        work: F,
    ) -> Result<T, DbError>
    where
        F: for<'c> AsyncFnOnce(&'c mut AsyncPgConnection) -> Result<T, DbError>,
    {
        use diesel_async::{AnsiTransactionManager, TransactionManager};
        if let Err(error) =
            AnsiTransactionManager::begin_transaction_sql(&mut *conn, &self.begin).await
        {
            // `BEGIN; SET LOCAL …` failing half-way leaves the server in an aborted
            // transaction diesel does not know of: end it, so that the pool's next user of
            // this connection does not inherit it.
            let _ = conn.batch_execute("ROLLBACK").await;
            return Err(error.into());
        }
        match work(&mut *conn).await {
            Ok(value) => {
                AnsiTransactionManager::commit_transaction(&mut *conn).await?;
                Ok(value)
            }
            Err(error) => {
                // The work's error is the one to report; a rollback that fails too leaves the
                // connection broken, and the pool discards it.
                if let Err(rollback) =
                    AnsiTransactionManager::rollback_transaction(&mut *conn).await
                {
                    tracing::debug!(error = %rollback, "rollback failed");
                }
                Err(error)
            }
        }
    }

    pub(super) async fn migrate(&self) -> Result<MigrationReport, DbError> {
        self.migrate_with(true).await
    }

    /// Migrates; with `seed`, also creates the seed `User` table where absent and checks it.
    pub(super) async fn migrate_with(&self, seed: bool) -> Result<MigrationReport, DbError> {
        // On DIRECT_URL's server when it is set (Prisma's `directUrl`), else DATABASE_URL's.
        let conn = self.direct.connect().await?;
        let begin = self.migration_begin.clone();
        // diesel's migrations run on a blocking connection: the async one, wrapped, on a
        // blocking thread.
        tokio::task::spawn_blocking(move || blocking::migrate(conn, &begin, seed))
            .await
            .map_err(|e| DbError::Internal(format!("migration task failed: {e}")))?
    }

    /// Makes the function `signature` by `ddl` where it is absent: in one transaction holding
    /// the migrations' lock, on their server (where migrations run).
    pub(super) async fn ensure_function(&self, signature: &str, ddl: &str) -> Result<(), DbError> {
        let mut conn = self.direct.connect().await?;
        let begin = format!(
            "{} SELECT pg_advisory_xact_lock({MIGRATION_LOCK});",
            self.migration_begin
        );
        conn.batch_execute(&begin).await?;
        let result = async {
            let present: Exists =
                diesel::sql_query("SELECT to_regprocedure($1) IS NOT NULL AS present")
                    .bind::<Text, _>(signature)
                    .get_result(&mut conn)
                    .await?;
            if !present.present {
                conn.batch_execute(ddl).await?;
            }
            Ok::<_, DbError>(())
        }
        .await;
        match result {
            Ok(()) => Ok(conn.batch_execute("COMMIT").await?),
            Err(error) => {
                // The connection is dropped after this either way.
                let _ = conn.batch_execute("ROLLBACK").await;
                Err(error)
            }
        }
    }

    /// Whether the function `signature` is there and the pool's role may call it.
    pub(super) async fn function_usable(&self, signature: &str) -> Result<bool, DbError> {
        let signature = signature.to_owned();
        self.with_conn(async move |conn| {
            let usable: Exists = diesel::sql_query(
                "SELECT COALESCE(has_function_privilege(to_regprocedure($1), 'EXECUTE'), false) \
                 AS present",
            )
            .bind::<Text, _>(signature)
            .get_result(conn)
            .await?;
            Ok(usable.present)
        })
        .await
    }

    pub(super) async fn check_ready(&self) -> Result<(), DbError> {
        let applied = self
            .with_conn(async |conn| {
                let present: Exists = diesel::sql_query(
                    "SELECT to_regclass('clerk_sync.schema_migrations') IS NOT NULL AS present",
                )
                .get_result(conn)
                .await?;
                if !present.present {
                    return Ok(Vec::new());
                }
                let rows: Vec<Version> =
                    diesel::sql_query("SELECT version FROM clerk_sync.schema_migrations")
                        .load(conn)
                        .await?;
                Ok(rows.into_iter().map(|r| r.version).collect::<Vec<_>>())
            })
            .await?;
        migrations::require_current::<diesel::pg::Pg, _>(&migrations::POSTGRES, &applied)
    }

    /// Deliveries per bulk transaction: a third of the server's shared lock table, 500 to
    /// 10,000 (2,000 when it cannot be read).
    pub(super) async fn preferred_batch(&self) -> usize {
        *self
            .preferred
            .get_or_init(|| async {
                let slots = async {
                    let table: LockTable = self
                        .with_conn(async |conn| {
                            Ok(diesel::sql_query(
                                "SELECT current_setting('max_locks_per_transaction')::bigint
                                * (current_setting('max_connections')::bigint
                                   + current_setting('max_prepared_transactions')::bigint) AS slots",
                            )
                            .get_result(conn)
                            .await?)
                        })
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

    pub(super) async fn status(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Status, DbError> {
        self.with_conn(async move |conn| {
        let by_outcome: Vec<OutcomeCount> = diesel::sql_query(
            "SELECT outcome, count(*) AS n FROM clerk_sync.deliveries WHERE received_at >= $1 GROUP BY outcome",
        )
        .bind::<Timestamptz, _>(since)
        .load(conn)
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
        .get_result(conn)
        .await?;
        Ok(totals.into_status(by_outcome))
        })
        .await
    }

    pub(super) fn pool_status(&self) -> deadpool::Status {
        self.pool.status()
    }

    pub(super) async fn gauges(&self) -> Result<Gauges, DbError> {
        // Session syncs (`session:` ids) are not Clerk's deliveries: they must not hide a webhook
        // endpoint that stopped receiving.
        let row: GaugeRow = self
            .with_conn(async |conn| {
                Ok(diesel::sql_query(
            "SELECT (SELECT count(*) FROM clerk_sync.users WHERE delete_pending) AS pending_deletes,
                    (SELECT extract(epoch FROM now() - max(received_at))::float8 FROM clerk_sync.deliveries
                      WHERE svix_id NOT LIKE 'session:%')
                        AS last_delivery_age_seconds",
        )
        .get_result(conn)
        .await?)
            })
            .await?;
        Ok(row.into())
    }

    pub(super) async fn pending_deletes(&self, limit: i64) -> Result<Vec<String>, DbError> {
        // The longest-waiting first, so that deletes refused for good never starve the rest.
        let pending: Vec<UserIdRow> = self
            .with_conn(async move |conn| {
                Ok(diesel::sql_query(
                    "SELECT user_id FROM clerk_sync.users WHERE delete_pending
                      ORDER BY delete_attempted_at NULLS FIRST, user_id LIMIT $1",
                )
                .bind::<diesel::sql_types::BigInt, _>(limit)
                .load(conn)
                .await?)
            })
            .await?;
        Ok(pending.into_iter().map(|row| row.user_id).collect())
    }
}

#[derive(QueryableByName)]
struct UserIdRow {
    #[diesel(sql_type = Text)]
    user_id: String,
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

    /// Everything in ONE transaction that holds a transaction-level advisory lock, so that
    /// instances starting together take turns, and so that nothing of it is session state: it
    /// works the same through a transaction pooler, and a migration that fails leaves nothing
    /// half-applied.
    pub(super) fn migrate(
        conn: AsyncPgConnection,
        begin: &str,
        seed: bool,
    ) -> Result<MigrationReport, DbError> {
        let mut conn = Wrapped::from(conn);
        let mut begin_sql = begin.strip_prefix("BEGIN;").unwrap_or(begin).to_owned();
        begin_sql.push_str(&format!(" SELECT pg_advisory_xact_lock({MIGRATION_LOCK});"));
        conn.transaction(|conn| {
            conn.batch_execute(&begin_sql)?;
            migrate_locked(conn, seed)
        })
    }

    fn migrate_locked(conn: &mut Wrapped, seed: bool) -> Result<MigrationReport, DbError> {
        let applied = migrations::run_pending(conn, &migrations::POSTGRES, &HISTORY)?;
        if !seed {
            return Ok(MigrationReport {
                applied,
                created_user_table: false,
            });
        }
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
