//! Faults in the middle of a stream of deliveries: PostgreSQL stopped and started again, the
//! daemon killed with SIGKILL and restarted. Each test ends the same way: the sender, which
//! retries every delivery until it gets a 2xx (as Svix does), got one for every delivery, and
//! the final table equals the model of the history: nothing acknowledged is lost.
//! (A database that is slow or locked is tested in `operations.rs`.)

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{
    deleted, eventually, free_port, new_secret, now, spawn_app_with, AppOptions, Backend,
    ClerkUser, TestDb,
};
use futures_util::StreamExt;

const BIN: &str = env!("CARGO_BIN_EXE_clerk-sync");

/// Deliveries as (svix-id, body).
type Deliveries = Vec<(String, String)>;
/// The expected table: (name, address) per user id.
type Table = BTreeMap<String, (String, String)>;

/// A history for `users` users: each signs up, then changes name; every third changes
/// address; every fourth is deleted. Returns the deliveries (id, body) and the model: the
/// final (name, address) of each user still present.
fn history(prefix: &str, users: usize) -> (Deliveries, Table) {
    let mut deliveries = Vec::new();
    let mut model = BTreeMap::new();
    for n in 0..users {
        let id = format!("user_{prefix}{n:03}");
        let mut user = ClerkUser::new(&id, 0, &format!("{prefix}{n}@example.com"));
        user.last_name = None;
        deliveries.push((format!("msg_{prefix}{n}_c"), user.created()));
        user.updated_at += 1_000;
        user.first_name = Some(format!("Renamed{n}"));
        if n % 3 == 0 {
            user.emails = vec![("idn_primary".into(), format!("{prefix}{n}-new@example.com"))];
        }
        deliveries.push((format!("msg_{prefix}{n}_u"), user.updated()));
        if n % 4 == 0 {
            deliveries.push((format!("msg_{prefix}{n}_d"), deleted(&id)));
        } else {
            let address = user.emails[0].1.clone();
            model.insert(id, (format!("Renamed{n}"), address));
        }
    }
    // Interleave users so that each one's events are spread over the stream, newest first
    // for every other user.
    deliveries.sort_by_key(|(id, _)| {
        let n: usize = id[4 + prefix.len()..][..3].parse().unwrap_or(0);
        (id.ends_with("_c") == (n % 2 == 0), n)
    });
    (deliveries, model)
}

/// The table as (name, address) per user id.
async fn table(db: &TestDb) -> Table {
    db.users()
        .await
        .into_iter()
        .map(|u| (u.id, (u.name.unwrap_or_default(), u.mail_address)))
        .collect()
}

/// What the sender saw for one delivery.
#[derive(Debug, Default)]
struct Attempts {
    /// The status of every attempt that got an answer, in order.
    statuses: Vec<u16>,
    /// Attempts that got no answer (connection refused or reset).
    unanswered: usize,
    /// The longest any answered attempt took.
    slowest: Duration,
}

/// Sends one delivery, signed afresh each time, until it gets a 2xx; gives up after a
/// minute (the test then fails on the missing 2xx).
async fn deliver_until_2xx(
    client: &reqwest::Client,
    address: &str,
    secret: &str,
    id: &str,
    body: &str,
) -> Attempts {
    let mut attempts = Attempts::default();
    let give_up = Instant::now() + Duration::from_secs(60);
    while Instant::now() < give_up {
        let ts = now();
        let signature = svix::webhooks::Webhook::new(secret)
            .expect("secret")
            .sign(id, ts, body.as_bytes())
            .expect("sign");
        let started = Instant::now();
        let sent = client
            .post(format!("{address}/webhooks/clerk"))
            .header("svix-id", id)
            .header("svix-timestamp", ts.to_string())
            .header("svix-signature", signature)
            .body(body.to_owned())
            .timeout(Duration::from_secs(20))
            .send()
            .await;
        match sent {
            Ok(response) => {
                attempts.slowest = attempts.slowest.max(started.elapsed());
                let status = response.status().as_u16();
                attempts.statuses.push(status);
                if response.status().is_success() {
                    return attempts;
                }
            }
            Err(_) => attempts.unanswered += 1,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    attempts
}

/// Delivered with `in_flight` at once, each after a short pause (so a fault lands mid-stream);
/// `acked` counts the 2xx answers as they come.
async fn stream(
    address: &str,
    secret: &str,
    deliveries: &[(String, String)],
    in_flight: usize,
    acked: &AtomicUsize,
) -> Vec<Attempts> {
    let client = reqwest::Client::new();
    futures_util::stream::iter(deliveries)
        .map(|(id, body)| {
            let client = &client;
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let attempts = deliver_until_2xx(client, address, secret, id, body).await;
                if attempts.statuses.last().is_some_and(|s| *s < 300) {
                    acked.fetch_add(1, Ordering::SeqCst);
                }
                attempts
            }
        })
        .buffer_unordered(in_flight)
        .collect()
        .await
}

async fn wait_for(counter: &AtomicUsize, at_least: usize) {
    while counter.load(Ordering::SeqCst) < at_least {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A PostgreSQL cluster of the test's own, which it may stop and start: initdb into a temp
/// folder, its own port. Run as the `postgres` user when the test runs as root (as
/// `scripts/pg.sh` does). Without PostgreSQL's server binaries the test fails.
struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_root: bool,
    /// Server settings (`name=value`) besides the port and socket.
    settings: Vec<String>,
}

impl Cluster {
    fn bin() -> PathBuf {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path().join("bin"))
            .filter(|bin| bin.join("initdb").exists())
            .collect();
        found.sort();
        if let Some(bin) = found.pop() {
            return bin;
        }
        let on_path = Command::new("sh")
            .args(["-c", "command -v initdb"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        match on_path {
            Some(initdb) if !initdb.is_empty() => Path::new(&initdb)
                .parent()
                .expect("initdb's folder")
                .to_path_buf(),
            _ => panic!(
                "this test starts and stops a PostgreSQL cluster of its own: install the \
                 PostgreSQL server (initdb, pg_ctl), as scripts/test does"
            ),
        }
    }

    fn run(&self, program: &str, args: &[&str]) -> bool {
        let program = self.bin.join(program);
        let mut command = if self.as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        command
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn init() -> Self {
        Self::init_with(&[])
    }

    fn init_with(settings: &[&str]) -> Self {
        let as_root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let dir = tempfile::tempdir().expect("temp dir");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        if as_root {
            let owned = Command::new("chown")
                .arg("postgres")
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                owned,
                "as root, the cluster's folder must belong to postgres"
            );
        }
        let cluster = Self {
            dir,
            bin: Self::bin(),
            port: free_port(),
            as_root,
            settings: settings.iter().map(|s| (*s).to_owned()).collect(),
        };
        let data = cluster.data();
        assert!(
            cluster.run(
                "initdb",
                &[
                    "-D",
                    &data,
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "--no-sync",
                    "-E",
                    "UTF8"
                ]
            ),
            "initdb failed"
        );
        cluster.start();
        cluster
    }

    fn start(&self) {
        let data = self.data();
        let log = self.dir.path().join("server.log").display().to_string();
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        for setting in &self.settings {
            options.push_str(" -c ");
            options.push_str(setting);
        }
        assert!(
            self.run(
                "pg_ctl",
                &["-D", &data, "-l", &log, "-w", "-t", "60", "-o", &options, "start"]
            ),
            "pg_ctl start failed"
        );
    }

    /// A fast shutdown: open connections are cut, as when the server goes away.
    fn stop(&self) {
        assert!(
            self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]),
            "pg_ctl stop failed"
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The cluster's database, holding Prisma's tables.
    async fn with_prisma_tables(&self) -> TestDb {
        let db = TestDb {
            backend: Backend::Postgres,
            url: self.url(),
            direct: None,
            _dir: None,
        };
        let ddl = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/prisma/ddl-postgresql.sql"),
        )
        .expect("prisma DDL");
        db.exec(&ddl).await;
        db
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "stop"]);
    }
}

async fn readyz(client: &reqwest::Client, address: &str) -> Option<u16> {
    client
        .get(format!("{address}/readyz"))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_mid_stream_is_a_quick_503_and_every_retried_delivery_lands() {
    // Arrange: a cluster of the test's own, the app on it, a history of 60 users.
    let cluster = tokio::task::spawn_blocking(Cluster::init)
        .await
        .expect("cluster");
    let db = cluster.with_prisma_tables().await;
    let secret = new_secret();
    let options = AppOptions {
        secrets: vec![secret.clone()],
        deadline: Duration::from_secs(3),
        ..AppOptions::default()
    };
    let app = spawn_app_with(db, options).await;
    let (deliveries, model) = history("pgstop", 60);
    let acked = AtomicUsize::new(0);
    let client = reqwest::Client::new();

    // Act: stream; once 30 are acknowledged, stop PostgreSQL for a few seconds.
    let sender = stream(&app.address, &secret, &deliveries, 4, &acked);
    let fault = async {
        wait_for(&acked, 30).await;
        let cluster = &cluster;
        tokio::task::block_in_place(|| cluster.stop());
        let stopped_at = acked.load(Ordering::SeqCst);
        let not_ready = eventually(Duration::from_secs(10), || async {
            readyz(&client, &app.address).await == Some(503)
        })
        .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let during = acked.load(Ordering::SeqCst);
        tokio::task::block_in_place(|| cluster.start());
        let ready_again = eventually(Duration::from_secs(20), || async {
            readyz(&client, &app.address).await == Some(200)
        })
        .await;
        (stopped_at, not_ready, during, ready_again)
    };
    let (attempts, (stopped_at, not_ready, during, ready_again)) = tokio::join!(sender, fault);

    // Assert: while PostgreSQL was down, quick 503s and /readyz 503; no 500, no lost delivery.
    assert!(
        not_ready,
        "/readyz did not turn 503 while PostgreSQL was down"
    );
    assert!(
        ready_again,
        "/readyz did not turn 200 once PostgreSQL was back"
    );
    assert!(
        stopped_at < deliveries.len(),
        "the stream ended before the fault"
    );
    assert!(
        during - stopped_at <= 4,
        "{} deliveries were acknowledged while PostgreSQL was down",
        during - stopped_at
    );
    let statuses: Vec<u16> = attempts
        .iter()
        .flat_map(|a| a.statuses.iter().copied())
        .collect();
    let refused = statuses.iter().filter(|s| **s == 503).count();
    assert!(
        refused > 0,
        "no delivery was answered 503 during the outage"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "answers other than 200 and 503: {:?}",
        statuses
            .iter()
            .filter(|s| **s != 200 && **s != 503)
            .collect::<Vec<_>>()
    );
    let slowest = attempts.iter().map(|a| a.slowest).max().unwrap_or_default();
    assert!(
        slowest < Duration::from_secs(8),
        "an answer took {slowest:?} (Svix gives up at 15 s)"
    );
    assert!(attempts.iter().all(|a| a.unanswered == 0));
    assert!(
        attempts
            .iter()
            .all(|a| a.statuses.last().is_some_and(|s| *s == 200)),
        "a delivery never got its 2xx"
    );
    assert_eq!(table(&app.db).await, model, "final table != model");
    let recorded = app
        .db
        .number("SELECT count(*) AS n FROM clerk_sync.deliveries WHERE outcome <> 'pending'")
        .await;
    assert_eq!(recorded, deliveries.len() as i64);
    println!(
        "PostgreSQL stopped after {stopped_at} of {} deliveries: {refused} answers 503, slowest answer {slowest:?}, lost: 0",
        deliveries.len()
    );
}

/// A `clerk-sync serve` process on `url`, listening on `port`.
fn serve(url: &str, port: u16, secret: &str) -> Child {
    Command::new(BIN)
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .args(["--database-url", url, "--workers", "2"])
        .env_remove("DATABASE_URL")
        .env_remove("CLERK_WEBHOOK_SECRET")
        .env("CLERK_WEBHOOK_SIGNING_SECRET", secret)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn clerk-sync")
}

/// Half-applied deliveries a reader can see, as (query, count): a delivery recorded without
/// its outcome, an applied upsert without its row, a row without its bookkeeping.
async fn half_applied(db: &TestDb) -> Vec<(String, i64)> {
    let (deliveries, users) = (db.own_table("deliveries"), db.own_table("users"));
    let checks = [
        format!("SELECT count(*) AS n FROM {deliveries} WHERE outcome = 'pending'"),
        format!(
            r#"SELECT count(*) AS n FROM {deliveries} d JOIN {users} s ON s.user_id = d.user_id
                WHERE d.outcome = 'applied' AND d.event_type <> 'user.deleted'
                  AND s.deleted_at IS NULL
                  AND NOT EXISTS (SELECT 1 FROM "User" u WHERE u.id = d.user_id)"#
        ),
        format!(
            r#"SELECT count(*) AS n FROM "User" u
                WHERE NOT EXISTS (SELECT 1 FROM {users} s WHERE s.user_id = u.id AND s.version >= 0)"#
        ),
    ];
    let mut found = Vec::new();
    for sql in checks {
        let n = db.number(&sql).await;
        if n != 0 {
            found.push((sql, n));
        }
    }
    found
}

async fn sigkill_mid_stream_then_restart_converges(backend: Backend) {
    // Arrange: the real binary on a fresh database, a history of 80 users.
    let db = TestDb::with_prisma_tables(backend).await;
    let secret = new_secret();
    let port = free_port();
    let address = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let daemon = Mutex::new(serve(&db.url, port, &secret));
    assert!(
        eventually(Duration::from_secs(20), || async {
            readyz(&client, &address).await == Some(200)
        })
        .await,
        "the daemon never became ready"
    );
    let (deliveries, model) = history("kill", 80);
    let acked = AtomicUsize::new(0);
    let done = AtomicBool::new(false);

    // Act: stream with 8 in flight; SIGKILL once 40 are acknowledged, restart on the same
    // database and port. Meanwhile a reader looks for half-applied deliveries.
    let sender = async {
        let attempts = stream(&address, &secret, &deliveries, 8, &acked).await;
        done.store(true, Ordering::SeqCst);
        attempts
    };
    let fault = async {
        wait_for(&acked, 40).await;
        let killed_at = {
            let mut child = daemon.lock().expect("daemon");
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
            acked.load(Ordering::SeqCst)
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        *daemon.lock().expect("daemon") = serve(&db.url, port, &secret);
        killed_at
    };
    let reader = async {
        let mut seen = Vec::new();
        let mut looks = 0;
        while !done.load(Ordering::SeqCst) {
            seen.extend(half_applied(&db).await);
            looks += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (seen, looks)
    };
    let (attempts, killed_at, (seen, looks)) = tokio::join!(sender, fault, reader);
    let _ = daemon.lock().map(|mut c| {
        let _ = c.kill();
        let _ = c.wait();
    });

    // Assert: the kill cut the stream; every delivery got its 2xx after retries; the table is
    // the model; nothing half-applied was ever visible.
    assert!(
        killed_at < deliveries.len(),
        "the stream ended before SIGKILL"
    );
    let unanswered: usize = attempts.iter().map(|a| a.unanswered).sum();
    assert!(unanswered > 0, "no attempt met the killed daemon");
    assert!(
        attempts
            .iter()
            .all(|a| a.statuses.last().is_some_and(|s| *s == 200)),
        "a delivery never got its 2xx"
    );
    assert!(seen.is_empty(), "half-applied deliveries visible: {seen:?}");
    assert!(looks > 0);
    assert!(half_applied(&db).await.is_empty());
    assert_eq!(table(&db).await, model, "final table != model");
    let recorded = db
        .number(&format!(
            "SELECT count(*) AS n FROM {}",
            db.own_table("deliveries")
        ))
        .await;
    assert_eq!(recorded, deliveries.len() as i64);
    println!(
        "{backend:?}: SIGKILL after {killed_at} of {} acknowledged, {unanswered} attempts unanswered, {looks} looks for half-applied deliveries, lost: 0",
        deliveries.len()
    );
}

mod sigkill_mid_stream {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        sigkill_mid_stream_then_restart_converges(Backend::Sqlite).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        sigkill_mid_stream_then_restart_converges(Backend::Postgres).await
    }
}

/// A batch whose address locks overflow the server's shared lock table (here 10 per
/// connection, a few hundred in all; PostgreSQL's default is 64 per connection) is split
/// into transactions that fit, and every delivery is still applied once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_too_large_for_the_servers_lock_table_is_split() {
    use clerk_sync::db::{Database, DatabaseUrl, PoolOptions};
    use clerk_sync::domain::{Event, MessageId};
    use clerk_sync::sync::{Outcome, SyncOptions};

    let cluster = tokio::task::spawn_blocking(|| {
        Cluster::init_with(&["max_locks_per_transaction=10", "max_connections=20"])
    })
    .await
    .expect("cluster");
    let db = cluster.with_prisma_tables().await;
    let options = PoolOptions {
        max_connections: 4,
        ..PoolOptions::default()
    };
    let database =
        Database::open(&DatabaseUrl::parse(&db.url).expect("url"), options).expect("open");
    database.migrate().await.expect("migrate");
    let users = 3_000;
    let mut batch = Vec::with_capacity(users + 1);
    for n in 0..users {
        let user = ClerkUser::new(
            &format!("user_lock{n}"),
            1_000,
            &format!("lock{n}@example.com"),
        );
        let event = Event::parse(user.created().as_bytes()).expect("event");
        batch.push((MessageId::parse(&format!("lock{n}")).expect("id"), event));
    }
    // The first user again, newer, at the very end: order must survive the split.
    let mut last = ClerkUser::new("user_lock0", 1_000, "moved@example.com");
    last.updated_at += 1_000;
    let event = Event::parse(last.updated().as_bytes()).expect("event");
    batch.push((MessageId::parse("lock-last").expect("id"), event));

    let outcomes = clerk_sync::sync::apply_batch(&database, batch.into(), SyncOptions::default())
        .await
        .expect("the batch is applied, split");

    assert_eq!(outcomes.len(), users + 1);
    assert!(
        outcomes.iter().all(|o| *o == Outcome::Applied),
        "{outcomes:?}"
    );
    let rows = db.users().await;
    assert_eq!(rows.len(), users);
    let first = rows.iter().find(|r| r.id == "user_lock0").expect("row");
    assert_eq!(first.mail_address, "moved@example.com");
}
