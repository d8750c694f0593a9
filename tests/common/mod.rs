//! Test helpers: a throwaway database per test (a temp SQLite file, or a fresh PostgreSQL
//! database), the real app served on 127.0.0.1:0, and deliveries signed by the real svix
//! signer.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clerk_sync::db::{Database, DatabaseUrl, PoolOptions};
use clerk_sync::startup::{AppState, Application, ServerSettings};
use clerk_sync::sync::SyncOptions;
use clerk_sync::verify::Verifier;
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::{QueryableByName, SqliteConnection};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use serde_json::{json, Value};
use svix::webhooks::Webhook;

/// The backends every rule is tested on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    /// PostgreSQL through a transaction-mode PgBouncer without prepared-statement support
    /// (`pgbouncer=true`), with `DIRECT_URL` to the server itself.
    Pooled,
}

/// Runs an async scenario once per backend, as two tests.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::common::Backend::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::common::Backend::Postgres).await
                }
            }
        )*
    };
}

/// Runs an async scenario on SQLite, PostgreSQL, and PostgreSQL through a transaction
/// pooler, as three tests.
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::common::Backend::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::common::Backend::Postgres).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn pooled() {
                    super::$name($crate::common::Backend::Pooled).await
                }
            }
        )*
    };
}

/// The environment variable naming the PgBouncer (transaction mode) in front of that server.
pub const BOUNCER_ENV: &str = "CLERK_SYNC_TEST_PGBOUNCER_URL";

/// A URL of the test environment (`scripts/test` sets them all); never skips: without it the
/// test fails, naming the variable.
pub fn test_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => value,
        _ => {
            panic!("this test needs {name}: run `scripts/test`, which starts the servers it names")
        }
    }
}

/// The environment variable naming the PostgreSQL server tests create their databases on.
pub const PG_ENV: &str = "CLERK_SYNC_TEST_DATABASE_URL";

/// The admin URL of the test PostgreSQL server. Never skips: without it the test fails.
pub fn pg_admin_url() -> String {
    match std::env::var(PG_ENV) {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "this test needs PostgreSQL: run `scripts/test`, which starts a throwaway cluster, \
             or set {PG_ENV} to a server where databases may be created"
        ),
    }
}

/// A throwaway database.
pub struct TestDb {
    pub backend: Backend,
    /// The `DATABASE_URL` the app under test uses.
    pub url: String,
    /// The `DIRECT_URL` beside it, when `url` goes through a pooler; the test's own
    /// connections use it.
    pub direct: Option<String>,
    pub _dir: Option<tempfile::TempDir>,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

#[derive(QueryableByName, Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    #[diesel(sql_type = Text)]
    pub id: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub name: Option<String>,
    #[diesel(sql_type = Text)]
    pub mail_address: String,
    #[diesel(sql_type = Text)]
    pub role: String,
    #[diesel(sql_type = Text)]
    pub created_at: String,
    #[diesel(sql_type = Text)]
    pub updated_at: String,
}

#[derive(QueryableByName)]
struct Text1 {
    #[diesel(sql_type = Nullable<Text>)]
    v: Option<String>,
}

#[derive(QueryableByName)]
struct Number {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// A connection kept open by a test (see [`TestDb::hold`]).
pub struct Held(Conn);

impl Held {
    /// Runs more SQL in the held transaction; the error, if any, as text.
    pub async fn run(&mut self, sql: &str) -> Result<(), String> {
        match &mut self.0 {
            Conn::Pg(c) => c.batch_execute(sql).await,
            Conn::Lite(c) => c.batch_execute(sql).await,
        }
        .map_err(|e| e.to_string())
    }

    /// Ends the held transaction.
    pub async fn rollback(mut self) {
        match &mut self.0 {
            Conn::Pg(c) => c.batch_execute("ROLLBACK").await,
            Conn::Lite(c) => c.batch_execute("ROLLBACK").await,
        }
        .expect("rollback");
    }
}

enum Conn {
    Pg(Box<AsyncPgConnection>),
    Lite(SyncConnectionWrapper<SqliteConnection>),
}

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

impl TestDb {
    /// A fresh, empty database.
    pub async fn empty(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("app.db").display());
                Self {
                    backend,
                    url,
                    direct: None,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres | Backend::Pooled => {
                let admin = pg_admin_url();
                let name = format!(
                    "clerk_sync_test_{}_{}",
                    std::process::id(),
                    COUNTER.fetch_add(1, Ordering::SeqCst)
                );
                let mut conn = AsyncPgConnection::establish(&admin)
                    .await
                    .unwrap_or_else(|e| {
                        panic!("cannot reach the test PostgreSQL at {PG_ENV}: {e}")
                    });
                conn.batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
                    .await
                    .expect("drop old test database");
                conn.batch_execute(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("create test database");
                let (base, query) = admin
                    .split_once('?')
                    .map_or((admin.as_str(), None), |(b, q)| (b, Some(q)));
                let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
                let url = match query {
                    Some(q) => format!("{base}/{name}?{q}"),
                    None => format!("{base}/{name}"),
                };
                if backend == Backend::Pooled {
                    let pooled = format!("{}/{name}?pgbouncer=true", test_env(BOUNCER_ENV));
                    return Self {
                        backend,
                        url: pooled,
                        direct: Some(url),
                        _dir: None,
                    };
                }
                Self {
                    backend,
                    url,
                    direct: None,
                    _dir: None,
                }
            }
        }
    }

    /// A database holding the application's tables, created from Prisma's own DDL.
    pub async fn with_prisma_tables(backend: Backend) -> Self {
        let db = Self::empty(backend).await;
        let ddl = match backend {
            Backend::Sqlite => "fixtures/prisma/ddl-sqlite.sql",
            Backend::Postgres | Backend::Pooled => "fixtures/prisma/ddl-postgresql.sql",
        };
        let sql = std::fs::read_to_string(repo_file(ddl)).expect("prisma DDL fixture");
        db.exec(&sql).await;
        db
    }

    /// The SQLite file, for SQLite databases.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        self.url.strip_prefix("sqlite://").map(PathBuf::from)
    }

    async fn connect(&self) -> Conn {
        match self.backend {
            Backend::Postgres | Backend::Pooled => {
                let conn =
                    AsyncPgConnection::establish(self.direct.as_deref().unwrap_or(&self.url))
                        .await
                        .expect("connect");
                Conn::Pg(Box::new(conn))
            }
            Backend::Sqlite => {
                let path = self.sqlite_path().expect("sqlite url");
                let mut conn =
                    SyncConnectionWrapper::<SqliteConnection>::establish(&path.to_string_lossy())
                        .await
                        .expect("open sqlite");
                conn.batch_execute("PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;")
                    .await
                    .expect("pragmas");
                Conn::Lite(conn)
            }
        }
    }

    /// Runs SQL statements as they are.
    pub async fn exec(&self, sql: &str) {
        match self.connect().await {
            Conn::Pg(mut c) => c.batch_execute(sql).await,
            Conn::Lite(mut c) => c.batch_execute(sql).await,
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Opens a connection and runs `sql` on it (e.g. a transaction that takes a lock); the
    /// lock is held until the returned connection runs `ROLLBACK` or is dropped.
    pub async fn hold(&self, sql: &str) -> Held {
        let mut conn = self.connect().await;
        match &mut conn {
            Conn::Pg(c) => c.batch_execute(sql).await,
            Conn::Lite(c) => c.batch_execute(sql).await,
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
        Held(conn)
    }

    /// Runs SQL and reports the error instead of panicking.
    pub async fn try_exec(&self, sql: &str) -> Result<(), String> {
        match self.connect().await {
            Conn::Pg(mut c) => c.batch_execute(sql).await,
            Conn::Lite(mut c) => c.batch_execute(sql).await,
        }
        .map_err(|e| e.to_string())
    }

    /// A single number (`SELECT … AS n`).
    pub async fn number(&self, sql: &str) -> i64 {
        let query = diesel::sql_query(sql);
        let row: Number = match self.connect().await {
            Conn::Pg(mut c) => query.get_result(&mut *c).await,
            Conn::Lite(mut c) => query.get_result(&mut c).await,
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
        row.n
    }

    /// A single nullable text (`SELECT … AS v`).
    pub async fn text(&self, sql: &str) -> Option<String> {
        let query = diesel::sql_query(sql);
        let row: Text1 = match self.connect().await {
            Conn::Pg(mut c) => query.get_result(&mut *c).await,
            Conn::Lite(mut c) => query.get_result(&mut c).await,
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
        row.v
    }

    /// The application's User table, ordered by id; dates as text (Prisma's form on SQLite,
    /// `YYYY-MM-DDTHH:MM:SS` on PostgreSQL).
    pub async fn users(&self) -> Vec<UserRow> {
        let sql = match self.backend {
            Backend::Postgres | Backend::Pooled => {
                r#"SELECT id, name, mail_address, role::text AS role,
                          to_char("createdAt", 'YYYY-MM-DD"T"HH24:MI:SS') AS created_at,
                          to_char("updatedAt", 'YYYY-MM-DD"T"HH24:MI:SS') AS updated_at
                     FROM "User" ORDER BY id"#
            }
            Backend::Sqlite => {
                r#"SELECT id, name, mail_address, role, "createdAt" AS created_at, "updatedAt" AS updated_at
                     FROM "User" ORDER BY id"#
            }
        };
        let query = diesel::sql_query(sql);
        match self.connect().await {
            Conn::Pg(mut c) => query.load(&mut *c).await,
            Conn::Lite(mut c) => query.load(&mut c).await,
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// One user's row, if present.
    pub async fn user(&self, id: &str) -> Option<UserRow> {
        self.users().await.into_iter().find(|u| u.id == id)
    }

    /// The name of one of clerk-sync's own tables on this backend.
    pub fn own_table(&self, name: &str) -> String {
        match self.backend {
            Backend::Postgres | Backend::Pooled => format!("clerk_sync.{name}"),
            Backend::Sqlite => format!("clerk_sync_{name}"),
        }
    }

    /// Everything a delivery could change: the users and clerk-sync's bookkeeping.
    pub async fn snapshot(&self) -> (Vec<UserRow>, i64, i64) {
        let deliveries = self
            .number(&format!(
                "SELECT count(*) AS n FROM {}",
                self.own_table("deliveries")
            ))
            .await;
        let states = self
            .number(&format!(
                "SELECT count(*) AS n FROM {}",
                self.own_table("users")
            ))
            .await;
        (self.users().await, deliveries, states)
    }
}

/// Settings of an app under test.
#[derive(Debug, Clone)]
pub struct AppOptions {
    pub sync: SyncOptions,
    pub body_limit: usize,
    pub pending_delete_interval: Duration,
    /// Secrets configured; deliveries are signed with the first.
    pub secrets: Vec<String>,
    /// The per-delivery deadline.
    pub deadline: Duration,
    /// How long a client may take to send headers, then body; idle keep-alive limit.
    pub client_timeout: Duration,
    /// The dead-letter cap.
    pub dead_letters: clerk_sync::db::DeadLetterLimits,
    /// The session sync (`POST /api/auth/sync`); off when `None`.
    pub session: Option<clerk_sync::session::Config>,
    /// The application's own user model, when it is not the seed's `User`: only clerk-sync's
    /// tables are migrated, and deliveries are written as the mapping says.
    pub mapping: Option<clerk_sync::mapping::Mapping>,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            sync: SyncOptions::default(),
            body_limit: 1024 * 1024,
            pending_delete_interval: Duration::from_millis(200),
            secrets: vec![new_secret()],
            deadline: Duration::from_secs(5),
            client_timeout: Duration::from_secs(5),
            dead_letters: clerk_sync::db::DeadLetterLimits::default(),
            session: None,
            mapping: None,
        }
    }
}

/// A fresh random `whsec_…` secret.
pub fn new_secret() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut bytes = Vec::with_capacity(32);
    while bytes.len() < 32 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(bytes.len());
        bytes.extend_from_slice(&h.finish().to_le_bytes());
    }
    use base64::Engine;
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(&bytes[..32])
    )
}

/// The real app, served on 127.0.0.1 with a throwaway database.
pub struct TestApp {
    pub address: String,
    pub db: TestDb,
    pub client: reqwest::Client,
    pub secret: String,
}

/// A loopback port nothing listens on (at the moment of asking).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Starts the app on a database holding Prisma's tables.
pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(
        TestDb::with_prisma_tables(backend).await,
        AppOptions::default(),
    )
    .await
}

/// Starts the app on `db` with `options`: migrates, binds port 0, serves in the background.
pub async fn spawn_app_with(db: TestDb, options: AppOptions) -> TestApp {
    // `TEST_LOG=1 scripts/test … -- --nocapture` shows the app's logs.
    if std::env::var_os("TEST_LOG").is_some() {
        clerk_sync::telemetry::init(false);
    }
    let mut url = DatabaseUrl::parse(&db.url).expect("test url");
    if let Some(direct) = &db.direct {
        url = url
            .with_direct(DatabaseUrl::parse(direct).expect("direct url"))
            .expect("direct url");
    }
    let database = Database::open(&url, PoolOptions::default()).expect("open database");
    match options.mapping {
        Some(mapping) => {
            database.migrate_own().await.expect("migrate");
            clerk_sync::sync::use_mapping(&database, mapping).expect("the mapping");
            // As `serve` does where it migrates: the mapped table's executor on PostgreSQL.
            let executor = database.prepare_mapped(true).await.expect("the executor");
            assert_eq!(
                executor,
                db.backend != Backend::Sqlite,
                "the executor in use"
            );
        }
        None => {
            database.migrate().await.expect("migrate");
        }
    }
    let verifier = Verifier::parse(&options.secrets.join(" ")).expect("secrets");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let state = AppState {
        db: database,
        secrets: verifier.into(),
        sync: options.sync,
        deadline: options.deadline,
        metrics: clerk_sync::metrics::Metrics::new(),
        dead_letters: options.dead_letters,
        session: options
            .session
            .as_ref()
            .map(|config| clerk_sync::session::build(config).expect("session settings"))
            .and_then(|s| s),
    };
    let settings = ServerSettings {
        body_limit: options.body_limit,
        workers: 1,
        pending_delete_interval: options.pending_delete_interval,
        shutdown_grace: Duration::from_secs(2),
        client_timeout: options.client_timeout,
    };
    let app = Application::build(listener, state, &settings).expect("build app");
    let address = format!("http://{}", app.address());
    tokio::spawn(app.run());
    TestApp {
        address,
        db,
        client: reqwest::Client::new(),
        secret: options.secrets[0].clone(),
    }
}

/// A command's stdout then stderr, as text.
pub fn output_text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The count printed for `name` in a command's summary (a `name count` line of its stdout).
pub fn summary_count(output: &std::process::Output, name: &str) -> u64 {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(name))
                .then(|| words.next().and_then(|n| n.parse().ok()))
                .flatten()
        })
        .unwrap_or_else(|| panic!("no {name} in the summary: {}", output_text(output)))
}

/// A file of `fixtures/prisma/` (the application shapes, their schemas and Prisma's DDL).
pub fn prisma_fixture(name: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/prisma")
        .join(name)
}

/// The text of a file of `fixtures/prisma/`.
pub fn prisma_fixture_text(name: &str) -> String {
    let path = prisma_fixture(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A fresh database holding an application shape's tables (`fixtures/prisma/<shape>`), made
/// from the DDL Prisma generated for the backend.
pub async fn shape_db(shape: &str, backend: Backend) -> TestDb {
    let db = TestDb::empty(backend).await;
    let ddl = match backend {
        Backend::Sqlite => format!("{shape}.sqlite.sql"),
        Backend::Postgres | Backend::Pooled => format!("{shape}.postgresql.sql"),
    };
    if let Some(path) = db.sqlite_path() {
        // The file must exist before the test's own connection makes the tables.
        std::fs::File::create(path).expect("create the sqlite file");
    }
    db.exec(&prisma_fixture_text(&ddl)).await;
    db
}

/// Seconds since the epoch, now.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl TestApp {
    /// A signature for `body` with the app's secret.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        Webhook::new(&self.secret)
            .expect("secret")
            .sign(id, timestamp, body)
            .expect("sign")
    }

    /// POSTs `body` to the webhook with the given headers.
    pub async fn post(
        &self,
        headers: &[(&str, String)],
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}/webhooks/clerk", self.address))
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        request.send().await.expect("request")
    }

    /// Delivers `body` as Svix would: signed now, with message id `id`.
    pub async fn deliver(&self, id: &str, body: &str) -> reqwest::Response {
        let ts = now();
        let signature = self.sign(id, ts, body.as_bytes());
        self.post(
            &[
                ("svix-id", id.to_owned()),
                ("svix-timestamp", ts.to_string()),
                ("svix-signature", signature),
            ],
            body.to_owned(),
        )
        .await
    }

    /// Delivers and returns (status, outcome or error text).
    pub async fn deliver_outcome(&self, id: &str, body: &str) -> (u16, String) {
        let response = self.deliver(id, body).await;
        let status = response.status().as_u16();
        let json: Value = response.json().await.unwrap_or(Value::Null);
        let text = json
            .get("outcome")
            .or_else(|| json.get("error"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        (status, text)
    }

    /// Delivers and asserts a 200 with `expected` as the outcome.
    pub async fn expect_outcome(&self, id: &str, body: &str, expected: &str) {
        let (status, outcome) = self.deliver_outcome(id, body).await;
        assert_eq!((status, outcome.as_str()), (200, expected), "delivery {id}");
    }

    /// GETs a path.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("request")
    }
}

/// A Clerk user object, built up for a test.
#[derive(Debug, Clone)]
pub struct ClerkUser {
    pub id: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub username: Option<String>,
    pub emails: Vec<(String, String)>,
    pub primary: Option<String>,
    pub public_metadata: Value,
}

/// 2024-05-01T12:00:00Z in ms: the base of test timelines.
pub const T0: i64 = 1_714_564_800_000;

impl ClerkUser {
    /// A user with one primary address, created at T0 and updated `version_ms` after.
    pub fn new(id: &str, version_ms: i64, email: &str) -> Self {
        Self {
            id: id.to_owned(),
            created_at: T0,
            updated_at: T0 + version_ms,
            first_name: Some("Ada".into()),
            last_name: Some("Lovelace".into()),
            username: None,
            emails: vec![("idn_primary".into(), email.to_owned())],
            primary: Some("idn_primary".into()),
            public_metadata: json!({}),
        }
    }

    /// The same user with no email at all.
    pub fn without_email(mut self) -> Self {
        self.emails.clear();
        self.primary = None;
        self
    }

    /// A webhook body of `event_type` carrying this user.
    pub fn body(&self, event_type: &str) -> String {
        let emails: Vec<Value> = self
            .emails
            .iter()
            .map(|(id, address)| {
                json!({"id": id, "object": "email_address", "email_address": address,
                       "verification": {"status": "verified", "strategy": "email_code"}, "linked_to": []})
            })
            .collect();
        json!({
            "type": event_type,
            "object": "event",
            "timestamp": self.updated_at,
            "instance_id": "ins_test",
            "data": {
                "object": "user",
                "id": self.id,
                "created_at": self.created_at,
                "updated_at": self.updated_at,
                "first_name": self.first_name,
                "last_name": self.last_name,
                "username": self.username,
                "email_addresses": emails,
                "primary_email_address_id": self.primary,
                "phone_numbers": [],
                "public_metadata": self.public_metadata,
                "private_metadata": {},
                "unsafe_metadata": {},
                "image_url": "https://img.clerk.com/x"
            }
        })
        .to_string()
    }

    pub fn created(&self) -> String {
        self.body("user.created")
    }

    pub fn updated(&self) -> String {
        self.body("user.updated")
    }
}

/// A `user.deleted` body as Clerk sends it.
pub fn deleted(id: &str) -> String {
    json!({"type": "user.deleted", "object": "event", "timestamp": T0, "instance_id": "ins_test",
           "data": {"object": "user", "id": id, "deleted": true}})
    .to_string()
}

/// Polls `check` every 50 ms for at most `limit`; true once it holds.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
