//! The real `clerk-sync` binary: start-up, configuration errors, migrations, logs.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{eventually, free_port, new_secret, now, Backend, ClerkUser, TestDb};

const BIN: &str = env!("CARGO_BIN_EXE_clerk-sync");

/// A `clerk-sync` command with a clean environment (none of the developer's settings).
fn clerk_sync(dir: &Path) -> Command {
    let mut command = Command::new(BIN);
    command
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("CLERK_WEBHOOK_SIGNING_SECRET")
        .env_remove("CLERK_WEBHOOK_SECRET")
        .env_remove("CLERK_SYNC_BIND")
        .env_remove("CLERK_SECRET_KEY")
        .env_remove("CLERK_PUBLISHABLE_KEY")
        .env_remove("NEXT_PUBLIC_CLERK_PUBLISHABLE_KEY")
        .env_remove("CLERK_JWT_KEY")
        .env_remove("CLERK_AUTHORIZED_PARTIES")
        .env_remove("LOG_FORMAT")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

struct Daemon {
    child: Child,
    address: String,
}

impl Daemon {
    fn start(mut command: Command) -> Self {
        let port = free_port();
        let child = command
            .arg("serve")
            .arg("--bind")
            .arg(format!("127.0.0.1:{port}"))
            .spawn()
            .expect("spawn");
        Self {
            child,
            address: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn ready(&mut self) -> bool {
        let url = format!("{}/readyz", self.address);
        eventually(Duration::from_secs(20), || {
            let url = url.clone();
            async move { matches!(reqwest::get(&url).await, Ok(r) if r.status() == 200) }
        })
        .await
    }

    async fn deliver(&self, secret: &str, id: &str, body: &str) -> reqwest::Response {
        let ts = now();
        let signature = svix::webhooks::Webhook::new(secret)
            .expect("secret")
            .sign(id, ts, body.as_bytes())
            .expect("sign");
        reqwest::Client::new()
            .post(format!("{}/webhooks/clerk", self.address))
            .header("svix-id", id)
            .header("svix-timestamp", ts.to_string())
            .header("svix-signature", signature)
            .body(body.to_owned())
            .send()
            .await
            .expect("request")
    }

    /// Sends SIGTERM and returns (exit success, stderr).
    fn stop(mut self) -> (bool, String) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = self.child.wait().expect("wait");
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        (status.success(), stderr)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_command_serves_on_an_sqlite_file_in_the_working_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = new_secret();
    let mut command = clerk_sync(dir.path());
    command.env("CLERK_WEBHOOK_SIGNING_SECRET", &secret);
    let mut daemon = Daemon::start(command);
    assert!(daemon.ready().await, "/readyz never answered 200");

    let response = daemon
        .deliver(
            &secret,
            "msg_cli",
            &ClerkUser::new("user_cli", 1_000, "cli@example.com").created(),
        )
        .await;
    assert_eq!(response.status().as_u16(), 200);

    let (clean_exit, _) = daemon.stop();
    assert!(clean_exit, "SIGTERM should stop the daemon with status 0");
    assert!(dir.path().join("clerk-sync.db").exists());
    let db = TestDb {
        backend: Backend::Sqlite,
        url: format!("sqlite://{}", dir.path().join("clerk-sync.db").display()),
        direct: None,
        _dir: None,
    };
    assert_eq!(
        db.user("user_cli").await.map(|u| u.mail_address).as_deref(),
        Some("cli@example.com")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_community_secret_name_is_accepted_too() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = new_secret();
    let mut command = clerk_sync(dir.path());
    command.env("CLERK_WEBHOOK_SECRET", &secret);
    let mut daemon = Daemon::start(command);
    assert!(daemon.ready().await);
    let response = daemon
        .deliver(
            &secret,
            "msg_1",
            &ClerkUser::new("user_alias", 1, "alias@example.com").created(),
        )
        .await;
    assert_eq!(response.status().as_u16(), 200);
}

#[test]
fn a_missing_secret_stops_the_daemon_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = clerk_sync(dir.path()).arg("serve").output().expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("CLERK_WEBHOOK_SIGNING_SECRET"), "{stderr}");
}

#[test]
fn a_malformed_secret_is_named_but_never_printed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = new_secret();
    let output = clerk_sync(dir.path())
        .env(
            "CLERK_WEBHOOK_SIGNING_SECRET",
            format!("{good} whsec_!!definitely-not-base64!!"),
        )
        .arg("serve")
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("secret #2 is not a valid whsec_"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("definitely-not-base64") && !stderr.contains(&good[6..]),
        "{stderr}"
    );
}

#[test]
fn an_incompatible_user_table_stops_migrate_naming_the_column() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("app.db");
    let conn_setup = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); \
             c.execute('CREATE TABLE \"User\" (id TEXT PRIMARY KEY NOT NULL, name TEXT, mail_address TEXT NOT NULL, role TEXT NOT NULL DEFAULT \\'USER\\', \"createdAt\" DATETIME NOT NULL)'); c.commit()",
        ])
        .arg(&file)
        .status()
        .expect("python3");
    assert!(conn_setup.success());

    let output = clerk_sync(dir.path())
        .env("DATABASE_URL", format!("sqlite://{}", file.display()))
        .arg("migrate")
        .output()
        .expect("run");

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("column \"updatedAt\" is missing"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incompatible_postgres_table_stops_serve_naming_the_column() {
    let db = TestDb::empty(Backend::Postgres).await;
    db.exec(
        r#"CREATE TYPE "Role" AS ENUM ('ADMIN', 'USER');
           CREATE TABLE "User" (id TEXT PRIMARY KEY, name VARCHAR(255), mail_address VARCHAR(100) NOT NULL,
                                role "Role" NOT NULL DEFAULT 'USER', "createdAt" TIMESTAMP(0) NOT NULL,
                                "updatedAt" TIMESTAMP(0) NOT NULL)"#,
    )
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let output = clerk_sync(dir.path())
        .env("DATABASE_URL", &db.url)
        .env("CLERK_WEBHOOK_SIGNING_SECRET", new_secret())
        .arg("serve")
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("column \"mail_address\" has type character varying(100)"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_writes_a_prisma_postgres_database_through_prismas_own_url() {
    let db = TestDb::with_prisma_tables(Backend::Postgres).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = new_secret();
    let mut command = clerk_sync(dir.path());
    // Prisma's DATABASE_URL carries ?schema=public; clerk-sync takes it as it is.
    command
        .env("DATABASE_URL", format!("{}?schema=public", db.url))
        .env("CLERK_WEBHOOK_SIGNING_SECRET", &secret);
    let mut daemon = Daemon::start(command);
    assert!(daemon.ready().await);

    let mut user = ClerkUser::new("user_pg", 1_000, "pg@example.com");
    user.public_metadata = serde_json::json!({"role": "admin"});
    assert_eq!(
        daemon
            .deliver(&secret, "msg_1", &user.created())
            .await
            .status()
            .as_u16(),
        200
    );

    let row = db.user("user_pg").await.expect("row");
    assert_eq!(
        (row.mail_address.as_str(), row.role.as_str()),
        ("pg@example.com", "ADMIN")
    );
    // clerk-sync's own tables, migration history included, are in clerk_sync, none in public.
    let own_in_public = db
        .number("SELECT count(*) AS n FROM pg_tables WHERE schemaname = 'public' AND tablename NOT IN ('User', 'Favorite', 'Bookmark')")
        .await;
    assert_eq!(own_in_public, 0);
    let history = db
        .number("SELECT count(*) AS n FROM clerk_sync.schema_migrations")
        .await;
    assert!(history >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_carry_ids_and_outcomes_but_never_the_secret_or_personal_data() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = new_secret();
    let mut command = clerk_sync(dir.path());
    command
        .env("CLERK_WEBHOOK_SIGNING_SECRET", &secret)
        .env("LOG_FORMAT", "json");
    let mut daemon = Daemon::start(command);
    assert!(daemon.ready().await);
    let mut user = ClerkUser::new("user_logged", 1_000, "private.person@example.com");
    user.first_name = Some("Privatename".into());
    assert_eq!(
        daemon
            .deliver(&secret, "msg_logged", &user.created())
            .await
            .status()
            .as_u16(),
        200
    );
    let forged = svix::webhooks::Webhook::new(&new_secret()).expect("secret");
    let ts = now();
    let body = user.updated();
    let response = reqwest::Client::new()
        .post(format!("{}/webhooks/clerk", daemon.address))
        .header("svix-id", "msg_forged")
        .header("svix-timestamp", ts.to_string())
        .header(
            "svix-signature",
            forged
                .sign("msg_forged", ts, body.as_bytes())
                .expect("sign"),
        )
        .body(body)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 401);

    let (_, logs) = daemon.stop();

    let handled = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["svix_id"] == "msg_logged")
        .expect("a JSON log line for the delivery");
    assert_eq!(handled["user_id"], "user_logged");
    assert_eq!(handled["outcome"], "applied");
    assert_eq!(handled["event_type"], "user.created");
    assert!(
        handled["span"]["request_id"]
            .as_str()
            .is_some_and(|id| id.len() == 32),
        "no request id in {handled}"
    );
    assert!(
        logs.contains("msg_forged") && logs.contains("no matching signature"),
        "{logs}"
    );
    for private in [&secret[6..], "private.person", "Privatename"] {
        assert!(!logs.contains(private), "logs contain {private}");
    }
}

#[test]
fn help_documents_every_setting() {
    let output = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .expect("run");
    let help = String::from_utf8_lossy(&output.stdout);
    for setting in [
        "DATABASE_URL",
        "CLERK_SYNC_BIND",
        "CLERK_WEBHOOK_SIGNING_SECRET",
        "CLERK_WEBHOOK_SECRET",
        "CLERK_SYNC_BODY_LIMIT",
        "LOG_FORMAT",
        "CLERK_SYNC_SKIP_USERS_WITHOUT_EMAIL",
        "CLERK_SYNC_CLIENT_TIMEOUT",
        "CLERK_SECRET_KEY",
        "CLERK_API_URL",
        "CLERK_PUBLISHABLE_KEY",
        "NEXT_PUBLIC_CLERK_PUBLISHABLE_KEY",
        "CLERK_FRONTEND_API_URL",
        "CLERK_JWT_KEY",
        "CLERK_AUTHORIZED_PARTIES",
        "CLERK_SYNC_ALLOW_PENDING_SESSIONS",
        "RUST_LOG",
    ] {
        assert!(help.contains(setting), "--help does not mention {setting}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_stream_loses_nothing_that_was_acknowledged() {
    use futures_util::StreamExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let dir = tempfile::tempdir().expect("temp dir");
    let secret = new_secret();
    let mut command = clerk_sync(dir.path());
    command.env("CLERK_WEBHOOK_SIGNING_SECRET", &secret);
    let mut daemon = Daemon::start(command);
    assert!(daemon.ready().await);
    let pid = daemon.child.id().to_string();
    let answered = AtomicUsize::new(0);
    let daemon_ref = &daemon;

    // 300 deliveries, 8 in flight; SIGTERM once 40 have been answered.
    let results: Vec<(String, bool)> = futures_util::stream::iter(0..300)
        .map(|n| {
            let (secret, pid, answered) = (&secret, &pid, &answered);
            async move {
                let user = format!("user_stream{n:04}");
                let body = ClerkUser::new(&user, 1_000, &format!("s{n}@example.com")).created();
                let ts = now();
                let id = format!("msg_stream{n}");
                let signature = svix::webhooks::Webhook::new(secret)
                    .expect("secret")
                    .sign(&id, ts, body.as_bytes())
                    .expect("sign");
                let acked = reqwest::Client::new()
                    .post(format!("{}/webhooks/clerk", daemon_ref.address))
                    .header("svix-id", &id)
                    .header("svix-timestamp", ts.to_string())
                    .header("svix-signature", signature)
                    .body(body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if answered.fetch_add(1, Ordering::SeqCst) + 1 == 40 {
                    let _ = Command::new("kill").args(["-TERM", pid]).status();
                }
                (user, acked)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;

    let (clean_exit, _) = daemon.stop();
    assert!(clean_exit, "the daemon should exit 0 after SIGTERM");
    let acked: Vec<&String> = results
        .iter()
        .filter(|(_, ok)| *ok)
        .map(|(u, _)| u)
        .collect();
    assert!(acked.len() >= 40, "only {} acknowledged", acked.len());
    assert!(acked.len() < results.len(), "SIGTERM stopped nothing");
    let db = TestDb {
        backend: Backend::Sqlite,
        url: format!("sqlite://{}", dir.path().join("clerk-sync.db").display()),
        direct: None,
        _dir: None,
    };
    let stored: std::collections::HashSet<String> =
        db.users().await.into_iter().map(|u| u.id).collect();
    for user in acked {
        assert!(
            stored.contains(user),
            "{user} was acknowledged but is not in the table"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn even_trace_logs_never_show_the_secret() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = new_secret();
    let old_secret = new_secret();
    let log_path = dir.path().join("trace.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut command = clerk_sync(dir.path());
    command
        .env(
            "CLERK_WEBHOOK_SIGNING_SECRET",
            format!("{secret} {old_secret}"),
        )
        .env("RUST_LOG", "trace")
        .stderr(log.try_clone().expect("log file"))
        .stdout(log);
    let mut daemon = Daemon::start(command);
    assert!(daemon.ready().await);

    let user = ClerkUser::new("user_traced", 1_000, "traced.person@example.com");
    let signed = daemon.deliver(&secret, "msg_traced", &user.created()).await;
    assert_eq!(signed.status().as_u16(), 200);
    let by_old = daemon
        .deliver(&old_secret, "msg_old", &user.updated())
        .await;
    assert_eq!(by_old.status().as_u16(), 200);
    let forged = daemon
        .deliver(&new_secret(), "msg_forged", &user.updated())
        .await;
    assert_eq!(forged.status().as_u16(), 401);
    let (clean_exit, _) = daemon.stop();
    assert!(clean_exit);

    let logs = std::fs::read_to_string(&log_path).expect("logs");
    assert!(
        logs.contains("msg_traced") && logs.contains("msg_forged"),
        "the deliveries are not in the trace logs"
    );
    assert!(logs.lines().count() > 20, "trace logging was not on");
    for key in [&secret, &old_secret] {
        assert!(!logs.contains(&key[6..]), "trace logs contain a secret");
        assert!(
            !logs.contains(&key[6..30]),
            "trace logs contain part of a secret"
        );
    }
}
