//! Connections as users' databases need them, through the real binary: TLS by `sslmode`
//! against the throwaway cluster's own certificates, client certificates, channel binding, and
//! a real PgBouncer in transaction mode without prepared-statement support.
//!
//! `scripts/test` starts every server these tests name (see `scripts/pg.sh`).

mod common;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{eventually, free_port, new_secret, test_env, Backend, ClerkUser, TestApp, TestDb};

const BIN: &str = env!("CARGO_BIN_EXE_clerk-sync");

/// The folder of the test certificates (`ca.pem`, `other-ca.pem`, `client.pem`, …).
fn certs() -> String {
    test_env("CLERK_SYNC_TEST_CERTS")
}

/// `db`'s database on the cluster, as `user` at `host`, with `query`.
fn url_for(db: &TestDb, user: &str, host: &str, query: &str) -> String {
    let direct = db.direct.as_deref().unwrap_or(&db.url);
    let after_at = direct
        .rsplit_once('@')
        .map(|(_, rest)| rest)
        .expect("test url");
    let (port, name) = after_at
        .split_once(':')
        .and_then(|(_, rest)| rest.split_once('/'))
        .expect("host:port/name");
    format!("postgres://{user}@{host}:{port}/{name}?{query}")
}

/// `db`'s database through the server at `base` (a PgBouncer of `scripts/test`).
fn through(base: &str, db: &TestDb, query: &str) -> String {
    let name = db.url.rsplit_once('/').map(|(_, n)| n).expect("name");
    let name = name.split('?').next().unwrap_or(name);
    format!("{base}/{name}?{query}")
}

fn clerk_sync(database_url: &str) -> Command {
    let mut command = Command::new(BIN);
    command
        .env("DATABASE_URL", database_url)
        .env_remove("DIRECT_URL")
        .env_remove("CLERK_WEBHOOK_SECRET")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

use common::output_text as text;

/// `clerk-sync migrate` with `database_url`: whether it succeeded, and what it printed.
async fn migrate(database_url: &str) -> (bool, String) {
    let mut command = clerk_sync(database_url);
    command.arg("migrate");
    let output = tokio::task::spawn_blocking(move || command.output().expect("run"))
        .await
        .expect("join");
    (output.status.success(), text(&output))
}

/// The real daemon, serving on a free port.
struct Daemon {
    child: Child,
    app: TestApp,
}

impl Daemon {
    /// Starts `serve` on `db` with `database_url` (and `direct_url`), and waits for `/readyz`.
    async fn start(db: TestDb, database_url: &str, direct_url: Option<&str>) -> Self {
        let secret = new_secret();
        let port = free_port();
        let mut command = clerk_sync(database_url);
        command
            .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
            .env("CLERK_WEBHOOK_SIGNING_SECRET", &secret);
        if let Some(direct) = direct_url {
            command.env("DIRECT_URL", direct);
        }
        let child = command.spawn().expect("spawn clerk-sync");
        let mut daemon = Self {
            child,
            app: TestApp {
                address: format!("http://127.0.0.1:{port}"),
                db,
                client: reqwest::Client::new(),
                secret,
            },
        };
        let url = format!("{}/readyz", daemon.app.address);
        let ready = eventually(Duration::from_secs(20), || {
            let url = url.clone();
            async move { matches!(reqwest::get(&url).await, Ok(r) if r.status() == 200) }
        })
        .await;
        if !ready {
            let _ = daemon.child.kill();
            let mut stderr = String::new();
            if let Some(mut pipe) = daemon.child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            panic!("the daemon never became ready:\n{stderr}");
        }
        daemon
    }

    /// Stops the daemon and returns what it logged.
    fn logs(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        stderr
    }

    async fn readyz(&self) -> serde_json::Value {
        self.app.get("/readyz").await.json().await.expect("JSON")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The daemon's own connections to its database, as the server sees them: (encrypted, not).
async fn server_side_encryption(db: &TestDb) -> (i64, i64) {
    let encrypted = db
        .number(
            "SELECT count(*) AS n FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
              WHERE a.datname = current_database() AND a.application_name = 'clerk-sync' AND s.ssl",
        )
        .await;
    let plain = db
        .number(
            "SELECT count(*) AS n FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
              WHERE a.datname = current_database() AND a.application_name = 'clerk-sync' AND NOT s.ssl",
        )
        .await;
    (encrypted, plain)
}

/// A delivery is applied and its row is there.
async fn delivers(daemon: &Daemon, user: &str) {
    let body = ClerkUser::new(user, 1, &format!("{user}@example.com")).created();
    daemon
        .app
        .expect_outcome(&format!("msg_{user}"), &body, "applied")
        .await;
    let row = daemon.app.db.user(user).await.expect("row written");
    assert_eq!(row.mail_address, format!("{user}@example.com"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_encrypts_every_connection_and_says_so() {
    let db = TestDb::with_prisma_tables(Backend::Postgres).await;
    // clerk_tls is refused without TLS by the cluster's pg_hba.conf.
    let url = url_for(&db, "clerk_tls", "127.0.0.1", "sslmode=require");
    let daemon = Daemon::start(db, &url, None).await;
    delivers(&daemon, "user_tls_require").await;
    let ready = daemon.readyz().await;
    assert_eq!(ready["tls"], "TLSv1.3", "{ready}");
    assert_eq!(ready["pooler_safe"], "off", "{ready}");
    let (encrypted, plain) = server_side_encryption(&daemon.app.db).await;
    assert!(
        encrypted >= 1,
        "the server sees {encrypted} encrypted connections"
    );
    assert_eq!(plain, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_the_servers_ca_works() {
    let db = TestDb::with_prisma_tables(Backend::Postgres).await;
    let query = format!("sslmode=verify-full&sslrootcert={}/ca.pem", certs());
    let url = url_for(&db, "clerk_tls", "localhost", &query);
    let daemon = Daemon::start(db, &url, None).await;
    delivers(&daemon, "user_tls_verified").await;
    // The address the certificate names as an IP works too.
    let (ok, out) = migrate(&url_for(&daemon.app.db, "clerk_tls", "127.0.0.1", &query)).await;
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prismas_sslaccept_strict_and_sslcert_mean_verify_full_against_that_ca() {
    let db = TestDb::with_prisma_tables(Backend::Postgres).await;
    let query = format!(
        "sslmode=require&sslaccept=strict&sslcert={}/ca.pem",
        certs()
    );
    let (ok, out) = migrate(&url_for(&db, "clerk_tls", "localhost", &query)).await;
    assert!(ok, "{out}");
    // Strict means the host name too.
    let (ok, out) = migrate(&url_for(&db, "clerk_tls", "127.0.0.2", &query)).await;
    assert!(!ok);
    assert!(
        out.contains("not valid for the host name \"127.0.0.2\""),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_refuses_a_host_name_the_certificate_does_not_carry() {
    let db = TestDb::with_prisma_tables(Backend::Postgres).await;
    // 127.0.0.2 reaches the same cluster; its certificate names localhost and 127.0.0.1.
    let query = format!("sslmode=verify-full&sslrootcert={}/ca.pem", certs());
    let (ok, out) = migrate(&url_for(&db, "clerk_tls", "127.0.0.2", &query)).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("not valid for the host name \"127.0.0.2\""),
        "{out}"
    );
    // verify-ca checks the chain only, so the same host is accepted.
    let query = format!("sslmode=verify-ca&sslrootcert={}/ca.pem", certs());
    let (ok, out) = migrate(&url_for(&db, "clerk_tls", "127.0.0.2", &query)).await;
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_refuses_a_certificate_from_an_untrusted_ca() {
    let db = TestDb::with_prisma_tables(Backend::Postgres).await;
    let query = format!("sslmode=verify-full&sslrootcert={}/other-ca.pem", certs());
    let (ok, out) = migrate(&url_for(&db, "clerk_tls", "localhost", &query)).await;
    assert!(!ok, "{out}");
    assert!(out.contains("not signed by a trusted CA"), "{out}");
    assert!(
        out.contains("other-ca.pem"),
        "names the roots it used: {out}"
    );
    // The system's store does not know the test CA either.
    let (ok, out) = migrate(&url_for(
        &db,
        "clerk_tls",
        "localhost",
        "sslmode=verify-full",
    ))
    .await;
    assert!(!ok, "{out}");
    assert!(out.contains("not signed by a trusted CA"), "{out}");
    // require encrypts without verifying, as libpq and Prisma do.
    let (ok, out) = migrate(&url_for(&db, "clerk_tls", "localhost", "sslmode=require")).await;
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_refuses_an_expired_certificate() {
    let db = TestDb::with_prisma_tables(Backend::Postgres).await;
    // A PgBouncer in front of the cluster that shows a certificate valid only in 2020.
    let base = test_env("CLERK_SYNC_TEST_EXPIRED_TLS_URL").replace("127.0.0.1", "localhost");
    let query = format!("sslmode=verify-full&sslrootcert={}/ca.pem", certs());
    let (ok, out) = migrate(&through(&base, &db, &query)).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("the server's certificate has expired"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_refuses_a_server_without_tls_and_prefer_falls_back_to_plaintext() {
    let db = TestDb::with_prisma_tables(Backend::Postgres).await;
    let plain = test_env("CLERK_SYNC_TEST_PLAINTEXT_URL");
    let (ok, out) = migrate(&through(&plain, &db, "sslmode=require")).await;
    assert!(!ok, "{out}");
    assert!(out.contains("the server refuses TLS"), "{out}");
    let url = through(&plain, &db, "sslmode=prefer");
    let daemon = Daemon::start(db, &url, None).await;
    delivers(&daemon, "user_tls_prefer").await;
    let ready = daemon.readyz().await;
    assert_eq!(ready["tls"], "none", "{ready}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_passes_cert_authentication_as_pem_and_as_pkcs12() {
    let db = TestDb::with_prisma_tables(Backend::Postgres).await;
    let dir = certs();
    let pem = format!(
        "sslmode=verify-full&sslrootcert={dir}/ca.pem&sslcert={dir}/client.pem&sslkey={dir}/client.key"
    );
    let url = url_for(&db, "clerk_cert", "localhost", &pem);
    let daemon = Daemon::start(db, &url, None).await;
    delivers(&daemon, "user_client_cert").await;
    let users = daemon
        .app
        .db
        .number(
            "SELECT count(*) AS n FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
              WHERE a.datname = current_database() AND a.usename = 'clerk_cert'
                AND s.client_dn = '/CN=clerk_cert'",
        )
        .await;
    assert!(users >= 1, "the server saw the client certificate");
    let p12 = format!("sslmode=require&sslidentity={dir}/client.p12&sslpassword=p12-test-password");
    let (ok, out) = migrate(&url_for(&daemon.app.db, "clerk_cert", "localhost", &p12)).await;
    assert!(ok, "{out}");
    // Without a certificate the role is refused.
    let (ok, out) = migrate(&url_for(
        &daemon.app.db,
        "clerk_cert",
        "localhost",
        "sslmode=require",
    ))
    .await;
    assert!(!ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_that_cannot_be_read_stops_the_start_by_name() {
    let db = TestDb::with_prisma_tables(Backend::Postgres).await;
    let dir = certs();
    let missing = format!("sslmode=require&sslcert={dir}/absent.pem&sslkey={dir}/client.key");
    let (ok, out) = migrate(&url_for(&db, "clerk_cert", "localhost", &missing)).await;
    assert!(!ok);
    assert!(
        out.contains("cannot read sslcert") && out.contains("absent.pem"),
        "{out}"
    );
    let not_a_key = format!("sslmode=require&sslcert={dir}/client.pem&sslkey={dir}/client.pem");
    let (ok, out) = migrate(&url_for(&db, "clerk_cert", "localhost", &not_a_key)).await;
    assert!(!ok);
    assert!(
        out.contains("sslkey") && out.contains("no PEM private key"),
        "{out}"
    );
    let wrong_password =
        format!("sslmode=require&sslidentity={dir}/client.p12&sslpassword=wrong-guess");
    let (ok, out) = migrate(&url_for(&db, "clerk_cert", "localhost", &wrong_password)).await;
    assert!(!ok);
    assert!(out.contains("sslidentity"), "{out}");
    assert!(
        !out.contains("wrong-guess"),
        "the password never shows: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_with_channel_binding_required_works_and_a_wrong_password_is_not_printed() {
    let db = TestDb::with_prisma_tables(Backend::Postgres).await;
    let url = url_for(
        &db,
        "clerk_scram:scram-test-password",
        "localhost",
        "sslmode=require&channel_binding=require",
    );
    let daemon = Daemon::start(db, &url, None).await;
    delivers(&daemon, "user_channel_binding").await;
    let wrong = url_for(
        &daemon.app.db,
        "clerk_scram:not-the-password",
        "localhost",
        "sslmode=require",
    );
    let (ok, out) = migrate(&wrong).await;
    assert!(!ok);
    assert!(out.contains("password authentication failed"), "{out}");
    assert!(!out.contains("not-the-password"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prismas_parameters_are_taken_and_unknown_ones_only_named() {
    let db = TestDb::with_prisma_tables(Backend::Postgres).await;
    let url = url_for(
        &db,
        "clerk_tls",
        "127.0.0.1",
        "sslmode=require&connection_limit=3&pool_timeout=10&connect_timeout=5&socket_timeout=4&application_name=clerk-sync&sslaccept=accept_invalid_certs&some_new_setting=s3cr3t-value",
    );
    let mut command = clerk_sync(&url);
    command.arg("migrate");
    let output = command.output().expect("run");
    let out = text(&output);
    assert!(output.status.success(), "{out}");
    assert!(
        out.contains("some_new_setting") && out.contains("ignored"),
        "{out}"
    );
    assert!(!out.contains("s3cr3t-value"), "{out}");
    assert!(
        out.contains("pool_size=3"),
        "connection_limit sizes the pool: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accelerate_url_stops_at_start_asking_for_the_direct_one() {
    let (ok, out) = migrate(
        "prisma+postgres://accelerate.prisma-data.net/?api_key=eyJhbGciOiJIUzI1NiJ9.secret",
    )
    .await;
    assert!(!ok);
    assert!(
        out.contains("Prisma Accelerate URL") && out.contains("direct URL"),
        "{out}"
    );
    assert!(!out.contains("eyJhbGciOiJIUzI1NiJ9"), "{out}");
}

/// A Neon-shaped pooled URL (`pgbouncer=true`, Prisma's timeouts, TLS) through the local
/// PgBouncer, with DIRECT_URL to the server: starts, answers `/readyz`, applies, and `status`
/// works through the pooler too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_url_with_direct_url_starts_applies_and_reports_the_mode() {
    let db = TestDb::with_prisma_tables(Backend::Postgres).await;
    let pooled = through(
        &test_env(common::BOUNCER_ENV),
        &db,
        "sslmode=require&pgbouncer=true&connect_timeout=15&pool_timeout=15&connection_limit=8",
    );
    let direct = url_for(
        &db,
        "clerk_tls",
        "127.0.0.1",
        "sslmode=require&channel_binding=prefer",
    );
    let daemon = Daemon::start(db, &pooled, Some(&direct)).await;
    delivers(&daemon, "user_pooled").await;
    let ready = daemon.readyz().await;
    assert_eq!(ready["pooler_safe"], "on (pgbouncer=true)", "{ready}");
    assert_eq!(ready["tls"], "TLSv1.3", "TLS to the pooler: {ready}");
    let mut command = clerk_sync(&pooled);
    command.args(["status", "--json"]);
    let output = command.output().expect("status");
    assert!(output.status.success(), "{}", text(&output));
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(status["deliveries_by_outcome"]["applied"], 1, "{status}");
    assert_eq!(
        status["connection"]["pooler"], "on (pgbouncer=true)",
        "{status}"
    );
}

/// Migrations through the pooler itself, with no DIRECT_URL: one transaction holding a
/// transaction-level lock, so several instances migrating at once take turns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_migrating_together_through_the_pooler_take_turns() {
    let db = TestDb::empty(Backend::Postgres).await;
    let pooled = through(&test_env(common::BOUNCER_ENV), &db, "pgbouncer=true");
    let runs: Vec<_> = (0..4).map(|_| migrate(&pooled)).collect();
    for (ok, out) in futures_util::future::join_all(runs).await {
        assert!(ok, "{out}");
    }
    let applied = db
        .number("SELECT count(*) AS n FROM clerk_sync.schema_migrations")
        .await;
    let embedded = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
        .expect("migrations folder")
        .count();
    assert_eq!(applied as usize, embedded, "every migration exactly once");
    let session_locks = db
        .number(
            "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory'
                AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .await;
    assert_eq!(session_locks, 0, "no lock outlives its transaction");
}

/// The failure the pooler-safe mode prevents: the same daemon and load, through the same
/// PgBouncer, without the mode (the pooler's address alone says nothing), fails deliveries
/// on statements prepared on another server connection; with `pgbouncer=true` every one
/// is applied (on a database of its own: see below).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_pooler_safe_mode_a_transaction_pooler_breaks_deliveries() {
    async fn burst(daemon: &Daemon, prefix: &str) -> (usize, Vec<(u16, String)>) {
        let mut ok = 0;
        let mut failed = Vec::new();
        for round in 0..10 {
            let sends: Vec<_> = (0..16)
                .map(|i| {
                    let user = format!("user_{prefix}_{round}_{i}");
                    let body = ClerkUser::new(&user, 1, &format!("{user}@example.com")).created();
                    let id = format!("msg_{user}");
                    async move { daemon.app.deliver_outcome(&id, &body).await }
                })
                .collect();
            for (status, outcome) in futures_util::future::join_all(sends).await {
                if status == 200 {
                    ok += 1;
                } else {
                    failed.push((status, outcome));
                }
            }
        }
        (ok, failed)
    }
    let bouncer = test_env(common::BOUNCER_ENV);
    let db = TestDb::with_prisma_tables(Backend::Postgres).await;
    let direct = url_for(&db, "postgres", "127.0.0.1", "sslmode=disable");
    let unsafe_url = through(&bouncer, &db, "sslmode=disable");
    let daemon = Daemon::start(second_handle(&db), &unsafe_url, Some(&direct)).await;
    let (_, failed) = burst(&daemon, "unsafe").await;
    drop(daemon);
    assert!(
        !failed.is_empty(),
        "without the mode, some deliveries must fail through the pooler"
    );

    // A database of its own, so a pool of server connections of its own: the daemon above
    // left its cached statements behind on the pooler's server connections for its database,
    // where any client preparing the same names would meet them.
    let db = TestDb::with_prisma_tables(Backend::Postgres).await;
    let direct = url_for(&db, "postgres", "127.0.0.1", "sslmode=disable");
    let safe_url = through(&bouncer, &db, "sslmode=disable&pgbouncer=true");
    let daemon = Daemon::start(db, &safe_url, Some(&direct)).await;
    let (ok, failed) = burst(&daemon, "safe").await;
    if !failed.is_empty() {
        panic!("{ok} applied, failed: {failed:?}\n{}", daemon.logs());
    }
}

/// The same database, for a second daemon.
fn second_handle(db: &TestDb) -> TestDb {
    TestDb {
        backend: db.backend,
        url: db.url.clone(),
        direct: db.direct.clone(),
        _dir: None,
    }
}
