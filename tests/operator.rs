//! Operating the real `clerk-sync` binary: the internal listener, signing secrets from a file
//! rotated while deliveries stream in, dead letters and their cap, and the Grafana dashboard's
//! queries against a real `/metrics`.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{deleted, eventually, free_port, new_secret, now, Backend, ClerkUser, TestDb};

const BIN: &str = env!("CARGO_BIN_EXE_clerk-sync");

/// A `clerk-sync` command with none of the developer's settings.
fn clerk_sync(db: &TestDb) -> Command {
    let mut command = Command::new(BIN);
    command
        .env("DATABASE_URL", &db.url)
        .env_remove("DATABASE_URL_FILE")
        .env_remove("CLERK_WEBHOOK_SIGNING_SECRET")
        .env_remove("CLERK_WEBHOOK_SIGNING_SECRET_FILE")
        .env_remove("CLERK_WEBHOOK_SECRET")
        .env_remove("CLERK_SYNC_BIND")
        .env_remove("CLERK_SYNC_INTERNAL_BIND")
        .env_remove("LOG_FORMAT")
        .env("RUST_LOG", "info");
    command
}

use common::output_text as text;

/// A running `clerk-sync serve` with a public and an internal listener, its log in a file.
struct Daemon {
    child: Child,
    public: String,
    internal: String,
    log: PathBuf,
    client: reqwest::Client,
}

impl Daemon {
    /// Starts `command serve --bind … --internal-bind … extra…` and waits for readiness.
    async fn start(mut command: Command, log_dir: &Path, extra: &[&str]) -> Self {
        let (public, internal) = (free_port(), free_port());
        let log = log_dir.join(format!("daemon-{public}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = command
            .arg("serve")
            .args(["--bind", &format!("127.0.0.1:{public}")])
            .args(["--internal-bind", &format!("127.0.0.1:{internal}")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn");
        let daemon = Self {
            child,
            public: format!("http://127.0.0.1:{public}"),
            internal: format!("http://127.0.0.1:{internal}"),
            log,
            client: reqwest::Client::new(),
        };
        let url = format!("{}/readyz", daemon.internal);
        let ready = eventually(Duration::from_secs(30), || {
            let url = url.clone();
            async move { matches!(reqwest::get(&url).await, Ok(r) if r.status() == 200) }
        })
        .await;
        assert!(ready, "the daemon never became ready:\n{}", daemon.logs());
        daemon
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Delivers `body` signed with `secret` now, as Svix would; the status.
    async fn deliver(&self, secret: &str, id: &str, body: &str) -> u16 {
        let ts = now();
        let signature = svix::webhooks::Webhook::new(secret)
            .expect("secret")
            .sign(id, ts, body.as_bytes())
            .expect("sign");
        self.client
            .post(format!("{}/webhooks/clerk", self.public))
            .header("svix-id", id)
            .header("svix-timestamp", ts.to_string())
            .header("svix-signature", signature)
            .body(body.to_owned())
            .send()
            .await
            .expect("request")
            .status()
            .as_u16()
    }

    async fn status_of(&self, url: String) -> u16 {
        self.client
            .get(url)
            .send()
            .await
            .expect("request")
            .status()
            .as_u16()
    }

    async fn metrics(&self) -> String {
        let response = self
            .client
            .get(format!("{}/metrics", self.internal))
            .send()
            .await
            .expect("scrape");
        assert_eq!(response.status().as_u16(), 200);
        response.text().await.expect("body")
    }

    /// The value of one series (name and labels exactly), if exported.
    async fn sample(&self, series: &str) -> Option<f64> {
        sample(&self.metrics().await, series)
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Daemon {
    /// SIGTERM, then whether it exited 0.
    fn stop(mut self) -> bool {
        self.signal("TERM");
        self.child.wait().expect("wait").success()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Replaces `path`'s contents in one step, as Kubernetes and editors do (write, then rename).
fn replace_file(path: &Path, contents: &str) {
    let staged = path.with_extension("staged");
    std::fs::write(&staged, contents).expect("write");
    std::fs::rename(&staged, path).expect("rename");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_internal_bind_the_public_port_serves_only_the_webhook() {
    let db = TestDb::with_prisma_tables(Backend::Sqlite).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = new_secret();
    let mut command = clerk_sync(&db);
    command.env("CLERK_WEBHOOK_SIGNING_SECRET", &secret);
    let daemon = Daemon::start(command, dir.path(), &[]).await;

    let user = ClerkUser::new("user_split", 1_000, "split@example.com");
    assert_eq!(
        daemon.deliver(&secret, "msg_split", &user.created()).await,
        200
    );
    for path in ["/healthz", "/readyz", "/metrics", "/", "/webhooks/other"] {
        assert_eq!(
            daemon.status_of(format!("{}{path}", daemon.public)).await,
            404,
            "public {path}"
        );
    }
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            daemon.status_of(format!("{}{path}", daemon.internal)).await,
            200,
            "internal {path}"
        );
    }
    let on_internal = daemon
        .client
        .post(format!("{}/webhooks/clerk", daemon.internal))
        .body(user.updated())
        .send()
        .await
        .expect("request");
    assert_eq!(on_internal.status().as_u16(), 404);
    assert_eq!(
        daemon
            .sample("clerk_sync_deliveries_total{event_type=\"user.created\",outcome=\"applied\"}")
            .await,
        Some(1.0)
    );

    // `check` follows CLERK_SYNC_INTERNAL_BIND; asked on the public port alone, it is refused.
    let public = daemon.public.trim_start_matches("http://").to_owned();
    let internal = daemon.internal.trim_start_matches("http://").to_owned();
    let check = |envs: &[(&str, &str)]| {
        let mut command = Command::new(BIN);
        command.arg("check").env_clear();
        for (name, value) in envs {
            command.env(name, value);
        }
        command.output().expect("run check")
    };
    let followed = check(&[
        ("CLERK_SYNC_BIND", &public),
        ("CLERK_SYNC_INTERNAL_BIND", &internal),
    ]);
    assert!(followed.status.success(), "{}", text(&followed));
    let public_only = check(&[("CLERK_SYNC_BIND", &public)]);
    assert_eq!(public_only.status.code(), Some(1), "{}", text(&public_only));
    assert!(
        String::from_utf8_lossy(&public_only.stdout).starts_with("not ready: 404"),
        "{}",
        text(&public_only)
    );
    // SIGTERM stops both listeners, and the process exits cleanly.
    assert!(daemon.stop(), "the daemon did not exit 0 after SIGTERM");
}

#[test]
fn the_internal_bind_must_differ_from_the_public_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = TestDb {
        backend: Backend::Sqlite,
        url: format!("sqlite://{}", dir.path().join("x.db").display()),
        direct: None,
        _dir: None,
    };
    let output = clerk_sync(&db)
        .env("CLERK_WEBHOOK_SIGNING_SECRET", new_secret())
        .args([
            "serve",
            "--bind",
            "127.0.0.1:9",
            "--internal-bind",
            "127.0.0.1:9",
        ])
        .output()
        .expect("run");
    assert!(!output.status.success());
    assert!(
        text(&output).contains("--internal-bind must differ from --bind"),
        "{}",
        text(&output)
    );
}

/// Which secret the stream signs with: the old, both in turn, the new.
const OLD: u8 = 0;
const BOTH: u8 = 1;
const NEW: u8 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_by_file_while_deliveries_stream_in_refuses_none() {
    let db = TestDb::with_prisma_tables(Backend::Sqlite).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (old, new) = (new_secret(), new_secret());
    let secret_file = dir.path().join("signing-secret");
    std::fs::write(&secret_file, format!("{old}\n")).expect("write");
    let mut command = clerk_sync(&db);
    command.env("CLERK_WEBHOOK_SIGNING_SECRET_FILE", &secret_file);
    let daemon = Arc::new(Daemon::start(command, dir.path(), &[]).await);
    assert_eq!(daemon.sample("clerk_sync_signing_secrets").await, Some(1.0));

    let phase = Arc::new(AtomicU8::new(OLD));
    let stop = Arc::new(AtomicBool::new(false));
    let stream = {
        let (daemon, phase, stop) = (daemon.clone(), phase.clone(), stop.clone());
        let (old, new) = (old.clone(), new.clone());
        tokio::spawn(async move {
            // (phase, status) of every delivery, in order.
            let mut answers = Vec::new();
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let now_in = phase.load(Ordering::SeqCst);
                let secret = match now_in {
                    OLD => &old,
                    BOTH if n % 2 == 0 => &old,
                    _ => &new,
                };
                let user = ClerkUser::new(
                    &format!("user_rot{n:05}"),
                    1_000,
                    &format!("rot{n}@example.com"),
                );
                let status = daemon
                    .deliver(secret, &format!("msg_rot{n}"), &user.created())
                    .await;
                answers.push((now_in, status));
                n += 1;
            }
            answers
        })
    };
    // Each phase lasts until at least 20 more deliveries were applied in it.
    let wait_for_more = || {
        let daemon = daemon.clone();
        async move {
            let applied = || async {
                daemon
                    .sample(
                        "clerk_sync_deliveries_total{event_type=\"user.created\",outcome=\"applied\"}",
                    )
                    .await
                    .unwrap_or(0.0)
            };
            let start = applied().await;
            assert!(
                eventually(Duration::from_secs(30), || async {
                    applied().await >= start + 20.0
                })
                .await
            );
        }
    };
    wait_for_more().await;

    // The new secret beside the old: once the daemon has it, Clerk may sign with either.
    replace_file(&secret_file, &format!("{new}\n{old}\n"));
    assert!(
        eventually(Duration::from_secs(30), || async {
            daemon.sample("clerk_sync_signing_secrets").await == Some(2.0)
        })
        .await,
        "the daemon never read the new file:\n{}",
        daemon.logs()
    );
    phase.store(BOTH, Ordering::SeqCst);
    wait_for_more().await;

    // Clerk signs with the new one only; then the old is removed from the file.
    phase.store(NEW, Ordering::SeqCst);
    wait_for_more().await;
    replace_file(&secret_file, &format!("{new}\n"));
    assert!(
        eventually(Duration::from_secs(30), || async {
            daemon.sample("clerk_sync_signing_secrets").await == Some(1.0)
        })
        .await
    );
    wait_for_more().await;
    stop.store(true, Ordering::SeqCst);
    let answers = stream.await.expect("stream");

    let in_phase = |p: u8| answers.iter().filter(|(q, _)| *q == p).count();
    eprintln!(
        "rotation: {} deliveries (old secret {}, both {}, new {})",
        answers.len(),
        in_phase(OLD),
        in_phase(BOTH),
        in_phase(NEW)
    );
    let refused: Vec<&(u8, u16)> = answers.iter().filter(|(_, s)| *s != 200).collect();
    assert!(
        refused.is_empty(),
        "refused during the rotation: {refused:?}"
    );
    for p in [OLD, BOTH, NEW] {
        assert!(in_phase(p) >= 20, "too few deliveries in phase {p}");
    }
    assert_eq!(
        daemon
            .sample("clerk_sync_secrets_reloads_total{result=\"applied\"}")
            .await,
        Some(2.0)
    );
    // The old secret is gone now; the new one works.
    let user = ClerkUser::new("user_after", 1_000, "after@example.com");
    assert_eq!(
        daemon.deliver(&old, "msg_after_old", &user.created()).await,
        401
    );
    assert_eq!(
        daemon.deliver(&new, "msg_after_new", &user.created()).await,
        200
    );
    let logs = daemon.logs();
    assert!(
        logs.contains("signing secrets reloaded from their file"),
        "{logs}"
    );
    for secret in [&old, &new] {
        assert!(!logs.contains(&secret[6..]), "a secret is in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_or_missing_secret_file_keeps_the_secrets_in_force() {
    let db = TestDb::with_prisma_tables(Backend::Sqlite).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (old, new) = (new_secret(), new_secret());
    let secret_file = dir.path().join("signing-secret");
    std::fs::write(&secret_file, &old).expect("write");
    let mut command = clerk_sync(&db);
    command.env("CLERK_WEBHOOK_SIGNING_SECRET_FILE", &secret_file);
    let daemon = Daemon::start(command, dir.path(), &[]).await;
    let user = ClerkUser::new("user_kept", 1_000, "kept@example.com");
    assert_eq!(
        daemon.sample("clerk_sync_secrets_reload_failing").await,
        Some(0.0)
    );

    // Malformed: a bad entry beside a good-looking one. SIGHUP makes it read at once.
    replace_file(&secret_file, &format!("{new} whsec_!!not-a-secret!!\n"));
    daemon.signal("HUP");
    assert!(
        eventually(Duration::from_secs(30), || async {
            daemon.sample("clerk_sync_secrets_reload_failing").await == Some(1.0)
        })
        .await
    );
    assert_eq!(daemon.deliver(&old, "msg_k1", &user.created()).await, 200);
    assert_eq!(daemon.deliver(&new, "msg_k2", &user.updated()).await, 401);
    assert_eq!(daemon.sample("clerk_sync_signing_secrets").await, Some(1.0));

    // Empty, then gone: still the old secret.
    replace_file(&secret_file, "");
    daemon.signal("HUP");
    std::fs::remove_file(&secret_file).expect("remove");
    daemon.signal("HUP");
    assert!(
        eventually(Duration::from_secs(30), || async {
            daemon.logs().contains("No such file")
        })
        .await,
        "{}",
        daemon.logs()
    );
    let mut newer = user.clone();
    newer.updated_at += 1;
    assert_eq!(daemon.deliver(&old, "msg_k3", &newer.updated()).await, 200);

    // A valid file again: it replaces the set, and the gauge clears.
    replace_file(&secret_file, &format!("{new}\n"));
    assert!(
        eventually(Duration::from_secs(30), || async {
            daemon.sample("clerk_sync_secrets_reload_failing").await == Some(0.0)
        })
        .await
    );
    newer.updated_at += 1;
    assert_eq!(daemon.deliver(&new, "msg_k4", &newer.updated()).await, 200);
    assert_eq!(daemon.deliver(&old, "msg_k5", &newer.updated()).await, 401);

    let logs = daemon.logs();
    assert!(
        logs.contains("cannot reload the signing secrets: the secrets in force stay")
            && logs.contains("secret #2 is not a valid whsec_"),
        "{logs}"
    );
    assert!(
        !logs.contains("not-a-secret") && !logs.contains(&new[6..]),
        "{logs}"
    );
}

#[test]
fn file_settings_are_read_and_conflicts_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = TestDb {
        backend: Backend::Sqlite,
        url: format!("sqlite://{}", dir.path().join("x.db").display()),
        direct: None,
        _dir: None,
    };
    // DATABASE_URL_FILE names the database `migrate` creates.
    let url_file = dir.path().join("database-url");
    let target = dir.path().join("from-file.db");
    std::fs::write(&url_file, format!("sqlite://{}\n", target.display())).expect("write");
    let migrated = clerk_sync(&db)
        .env_remove("DATABASE_URL")
        .env("DATABASE_URL_FILE", &url_file)
        .arg("migrate")
        .output()
        .expect("run");
    assert!(migrated.status.success(), "{}", text(&migrated));
    assert!(target.exists());

    let both = clerk_sync(&db)
        .env("DATABASE_URL_FILE", &url_file)
        .arg("migrate")
        .output()
        .expect("run");
    assert!(!both.status.success());
    assert!(
        text(&both).contains("both DATABASE_URL and DATABASE_URL_FILE are set"),
        "{}",
        text(&both)
    );

    let secret_file = dir.path().join("signing-secret");
    std::fs::write(&secret_file, new_secret()).expect("write");
    let both_secrets = clerk_sync(&db)
        .env("CLERK_WEBHOOK_SIGNING_SECRET", new_secret())
        .env("CLERK_WEBHOOK_SIGNING_SECRET_FILE", &secret_file)
        .arg("serve")
        .output()
        .expect("run");
    assert!(!both_secrets.status.success());
    assert!(
        text(&both_secrets).contains("both CLERK_WEBHOOK_SIGNING_SECRET and"),
        "{}",
        text(&both_secrets)
    );

    let missing = clerk_sync(&db)
        .env(
            "CLERK_WEBHOOK_SIGNING_SECRET_FILE",
            dir.path().join("absent"),
        )
        .arg("serve")
        .output()
        .expect("run");
    assert!(!missing.status.success());
    assert!(
        text(&missing).contains("cannot read") && text(&missing).contains("absent"),
        "{}",
        text(&missing)
    );

    // CLERK_SECRET_KEY_FILE: a key that holds a space is refused, naming the file only.
    let key_file = dir.path().join("clerk-key");
    std::fs::write(&key_file, "sk_test_has a space").expect("write");
    let bad_key = clerk_sync(&db)
        .env_remove("CLERK_SECRET_KEY")
        .env("CLERK_SECRET_KEY_FILE", &key_file)
        .arg("backfill")
        .output()
        .expect("run");
    assert!(!bad_key.status.success());
    let said = text(&bad_key);
    assert!(said.contains("clerk-key"), "{said}");
    assert!(!said.contains("has a space"), "{said}");
}

/// A verified body that is not a usable event: the user object lost its email list's shape.
fn poison(id: &str, padding: usize) -> String {
    serde_json::json!({
        "type": "user.created", "object": "event", "timestamp": 1, "instance_id": "ins_test",
        "data": {"object": "user", "id": id, "created_at": 1, "updated_at": 2,
                 "email_addresses": "no longer a list", "primary_email_address_id": "idn_1",
                 "padding": "x".repeat(padding)}
    })
    .to_string()
}

async fn dead_letter_count(db: &TestDb) -> i64 {
    db.number(&format!(
        "SELECT count(*) AS n FROM {}",
        db.own_table("dead_letters")
    ))
    .await
}

async fn a_verified_poison_delivery_is_kept_once_however_often_it_is_retried(backend: Backend) {
    let db = TestDb::with_prisma_tables(backend).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = new_secret();
    let mut command = clerk_sync(&db);
    command.env("CLERK_WEBHOOK_SIGNING_SECRET", &secret);
    let daemon = Daemon::start(command, dir.path(), &[]).await;

    // Svix retries the same message: the answer stays 400 each time.
    for _ in 0..4 {
        assert_eq!(
            daemon
                .deliver(&secret, "msg_poison", &poison("user_poison", 0))
                .await,
            400
        );
    }
    // And in a burst, 12 attempts at once (as after an outage): still one dead letter.
    let body = poison("user_poison", 0);
    let burst = futures_util::future::join_all(
        (0..12).map(|_| daemon.deliver(&secret, "msg_poison", &body)),
    )
    .await;
    assert!(burst.iter().all(|s| *s == 400), "{burst:?}");
    // A forged delivery is never kept.
    assert_eq!(
        daemon
            .deliver(&new_secret(), "msg_forged", &poison("user_forged", 0))
            .await,
        401
    );
    assert_eq!(dead_letter_count(&db).await, 1);
    let attempts = db
        .number(&format!(
            "SELECT CAST(attempts AS BIGINT) AS n FROM {} WHERE svix_id = 'msg_poison' AND reason = 'invalid_event'",
            db.own_table("dead_letters")
        ))
        .await;
    assert_eq!(attempts, 16);
    let m = daemon.metrics().await;
    assert_eq!(sample(&m, "clerk_sync_dead_letters"), Some(1.0));
    assert_eq!(
        sample(
            &m,
            "clerk_sync_dead_lettered_total{reason=\"invalid_event\"}"
        ),
        Some(16.0)
    );
    assert_eq!(
        sample(&m, "clerk_sync_rejected_total{reason=\"invalid_event\"}"),
        Some(16.0)
    );

    let status = clerk_sync(&db).arg("status").output().expect("status");
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("dead letters:     1 kept"),
        "{}",
        text(&status)
    );
    let json = clerk_sync(&db)
        .args(["status", "--json"])
        .output()
        .expect("status");
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(json["dead_letters"]["kept"], 1);

    // The dead letter still does not parse: replay keeps it and says why.
    let replay = clerk_sync(&db)
        .args(["replay", "--dead-letters"])
        .output()
        .expect("replay");
    assert_eq!(replay.status.code(), Some(1), "{}", text(&replay));
    assert!(
        text(&replay).contains("msg_poison") && text(&replay).contains("still fails, kept"),
        "{}",
        text(&replay)
    );
    assert_eq!(dead_letter_count(&db).await, 1);
}

async fn a_delivery_the_table_refuses_is_kept_and_replayed_once_the_table_accepts_it(
    backend: Backend,
) {
    let db = TestDb::with_prisma_tables(backend).await;
    // The application's own rule: no address at blocked.example.
    match backend {
        Backend::Postgres | Backend::Pooled => {
            db.exec(r#"ALTER TABLE "User" ADD CONSTRAINT "User_not_blocked" CHECK (mail_address NOT LIKE '%@blocked.example')"#)
                .await
        }
        // SQLite adds a CHECK only by rebuilding the table.
        Backend::Sqlite => {
            rebuild_sqlite_user_table(
                &db,
                r#", CONSTRAINT "User_not_blocked" CHECK (mail_address NOT LIKE '%@blocked.example')"#,
            )
            .await
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = new_secret();
    let mut command = clerk_sync(&db);
    command.env("CLERK_WEBHOOK_SIGNING_SECRET", &secret);
    let daemon = Daemon::start(command, dir.path(), &[]).await;

    let refused = ClerkUser::new("user_blocked", 1_000, "someone@blocked.example");
    let fine = ClerkUser::new("user_fine", 1_000, "fine@example.com");
    for _ in 0..2 {
        assert_eq!(
            daemon
                .deliver(&secret, "msg_refused", &refused.created())
                .await,
            500,
            "{}",
            daemon.logs()
        );
    }
    assert_eq!(
        daemon.deliver(&secret, "msg_fine", &fine.created()).await,
        200
    );
    assert_eq!(dead_letter_count(&db).await, 1);
    let reason = db
        .number(&format!(
            "SELECT CAST(attempts AS BIGINT) AS n FROM {} WHERE svix_id = 'msg_refused' AND reason = 'refused'",
            db.own_table("dead_letters")
        ))
        .await;
    assert_eq!(reason, 2);
    assert!(db.user("user_blocked").await.is_none());

    // The application drops its rule.
    match backend {
        Backend::Postgres | Backend::Pooled => {
            db.exec(r#"ALTER TABLE "User" DROP CONSTRAINT "User_not_blocked""#)
                .await
        }
        Backend::Sqlite => rebuild_sqlite_user_table(&db, "").await,
    }
    let dry = clerk_sync(&db)
        .args(["replay", "--dead-letters", "--dry-run"])
        .output()
        .expect("dry run");
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(
        text(&dry).contains("msg_refused") && text(&dry).contains("would be applied"),
        "{}",
        text(&dry)
    );
    assert_eq!(dead_letter_count(&db).await, 1, "a dry run removed it");
    assert!(db.user("user_blocked").await.is_none(), "a dry run wrote");

    let replay = clerk_sync(&db)
        .args(["replay", "--dead-letters"])
        .output()
        .expect("replay");
    assert!(replay.status.success(), "{}", text(&replay));
    assert!(
        text(&replay).contains("applied (applied), removed"),
        "{}",
        text(&replay)
    );
    assert_eq!(dead_letter_count(&db).await, 0);
    assert_eq!(
        db.user("user_blocked").await.map(|u| u.mail_address),
        Some("someone@blocked.example".to_owned())
    );
    // Svix's next retry of the same message changes nothing.
    assert_eq!(
        daemon
            .deliver(&secret, "msg_refused", &refused.created())
            .await,
        200
    );
    assert!(daemon
        .sample("clerk_sync_deliveries_total{event_type=\"user.created\",outcome=\"duplicate\"}")
        .await
        .is_some_and(|n| n >= 1.0));
}

/// Rebuilds SQLite's "User" table from Prisma's DDL with `extra` table constraints, keeping
/// its rows (SQLite can neither add nor drop a CHECK in place).
async fn rebuild_sqlite_user_table(db: &TestDb, extra: &str) {
    let sql = format!(
        r#"PRAGMA foreign_keys = OFF;
           BEGIN;
           CREATE TABLE "User_new" (
               "id" TEXT NOT NULL PRIMARY KEY,
               "name" TEXT,
               "mail_address" TEXT NOT NULL,
               "role" TEXT NOT NULL DEFAULT 'USER',
               "createdAt" DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
               "updatedAt" DATETIME NOT NULL{extra}
           );
           INSERT INTO "User_new" SELECT * FROM "User";
           DROP TABLE "User";
           ALTER TABLE "User_new" RENAME TO "User";
           CREATE UNIQUE INDEX "User_id_key" ON "User"("id");
           CREATE UNIQUE INDEX "User_mail_address_key" ON "User"("mail_address");
           COMMIT;
           PRAGMA foreign_keys = ON;"#
    );
    db.exec(&sql).await;
}

async fn the_dead_letter_cap_drops_the_oldest_and_counts_them(backend: Backend) {
    let db = TestDb::with_prisma_tables(backend).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = new_secret();
    let mut command = clerk_sync(&db);
    command.env("CLERK_WEBHOOK_SIGNING_SECRET", &secret);
    // At most 3 letters, and at most 25,000 bytes: two 10 kB letters fit, three do not.
    let daemon = Daemon::start(
        command,
        dir.path(),
        &[
            "--dead-letter-max-count",
            "3",
            "--dead-letter-max-bytes",
            "25000",
        ],
    )
    .await;
    for n in 1..=5 {
        let id = format!("msg_cap{n}");
        assert_eq!(
            daemon.deliver(&secret, &id, &poison("user_cap", 10)).await,
            400
        );
    }
    assert_eq!(dead_letter_count(&db).await, 3);
    let newest_three = db
        .number(&format!(
            "SELECT count(*) AS n FROM {} WHERE svix_id IN ('msg_cap3', 'msg_cap4', 'msg_cap5')",
            db.own_table("dead_letters")
        ))
        .await;
    assert_eq!(newest_three, 3, "the newest three are kept");
    assert_eq!(
        daemon.sample("clerk_sync_dead_letters_dropped_total").await,
        Some(2.0)
    );

    // Three large letters (each over 10 kB): the byte cap leaves only the newest two.
    for n in 6..=8 {
        let id = format!("msg_cap{n}");
        assert_eq!(
            daemon
                .deliver(&secret, &id, &poison("user_cap", 10_000))
                .await,
            400
        );
    }
    assert_eq!(dead_letter_count(&db).await, 2);
    let newest = db
        .number(&format!(
            "SELECT count(*) AS n FROM {} WHERE svix_id IN ('msg_cap7', 'msg_cap8')",
            db.own_table("dead_letters")
        ))
        .await;
    assert_eq!(newest, 2);
    // One larger alone than the byte cap is not kept, and leaves the others alone.
    assert_eq!(
        daemon
            .deliver(&secret, "msg_cap9", &poison("user_cap", 30_000))
            .await,
        400
    );
    assert_eq!(dead_letter_count(&db).await, 2);
    assert_eq!(
        db.number(&format!(
            "SELECT count(*) AS n FROM {} WHERE svix_id IN ('msg_cap7', 'msg_cap8')",
            db.own_table("dead_letters")
        ))
        .await,
        2
    );
    let m = daemon.metrics().await;
    assert_eq!(
        sample(&m, "clerk_sync_dead_letters_dropped_total"),
        Some(7.0)
    );
    assert!(
        sample(&m, "clerk_sync_dead_letter_bytes").is_some_and(|b| b > 20_000.0 && b <= 25_000.0)
    );
    let status = clerk_sync(&db).arg("status").output().expect("status");
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("7 dropped past the cap"),
        "{}",
        text(&status)
    );
}

on_both_backends!(
    a_verified_poison_delivery_is_kept_once_however_often_it_is_retried,
    a_delivery_the_table_refuses_is_kept_and_replayed_once_the_table_accepts_it,
    the_dead_letter_cap_drops_the_oldest_and_counts_them,
);

/// Every `clerk_sync_…` name in the dashboard's queries.
fn dashboard_metric_names(dashboard: &serde_json::Value) -> Vec<String> {
    fn walk(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    if key == "expr" {
                        let expr = v.as_str().unwrap_or("");
                        let mut rest = expr;
                        while let Some(at) = rest.find("clerk_sync_") {
                            let name: String = rest[at..]
                                .chars()
                                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                                .collect();
                            rest = &rest[at + name.len()..];
                            out.push(name);
                        }
                    } else {
                        walk(v, out);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut names = Vec::new();
    walk(dashboard, &mut names);
    names.sort();
    names.dedup();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_in_a_real_scrape() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana-dashboard.json");
    let mut raw = String::new();
    std::fs::File::open(&path)
        .expect("deploy/grafana-dashboard.json")
        .read_to_string(&mut raw)
        .expect("read");
    let dashboard: serde_json::Value = serde_json::from_str(&raw).expect("the dashboard is JSON");
    // Importable as is: the data source is a variable, and every panel uses it.
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    assert!(variables.iter().any(|v| v["type"] == "datasource"
        && v["query"] == "prometheus"
        && v["name"] == "datasource"));
    let panels = dashboard["panels"].as_array().expect("panels");
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel {}",
            panel["title"]
        );
        assert!(
            panel["targets"].as_array().is_some_and(|t| !t.is_empty()),
            "panel {} has no query",
            panel["title"]
        );
    }
    let names = dashboard_metric_names(&dashboard);
    assert!(names.len() >= 10, "{names:?}");

    // A real daemon after real deliveries of every kind the panels show.
    let db = TestDb::with_prisma_tables(Backend::Sqlite).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = new_secret();
    let mut command = clerk_sync(&db);
    command.env("CLERK_WEBHOOK_SIGNING_SECRET", &secret);
    let daemon = Daemon::start(command, dir.path(), &[]).await;
    let user = ClerkUser::new("user_dash", 1_000, "dash@example.com");
    assert_eq!(
        daemon.deliver(&secret, "msg_d1", &user.created()).await,
        200
    );
    assert_eq!(
        daemon.deliver(&secret, "msg_d1", &user.created()).await,
        200
    );
    db.exec(r#"INSERT INTO "Favorite" ("userId", "itemId") VALUES ('user_dash', 'i')"#)
        .await;
    assert_eq!(
        daemon
            .deliver(&secret, "msg_d2", &deleted("user_dash"))
            .await,
        200
    );
    assert_eq!(
        daemon
            .deliver(&new_secret(), "msg_d3", &user.updated())
            .await,
        401
    );
    assert_eq!(
        daemon
            .deliver(&secret, "msg_d4", &poison("user_dash", 0))
            .await,
        400
    );

    let exposition = daemon.metrics().await;
    let exported: std::collections::BTreeSet<&str> = exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !exported.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries series /metrics does not export: {missing:?}\n{exposition}"
    );
}

#[test]
fn help_documents_the_operating_settings() {
    let help = |args: &[&str]| {
        let output = Command::new(BIN).args(args).output().expect("run");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let serve = help(&["serve", "--help"]);
    for setting in [
        "CLERK_SYNC_INTERNAL_BIND",
        "CLERK_WEBHOOK_SIGNING_SECRET_FILE",
        "DATABASE_URL_FILE",
        "CLERK_SYNC_DEAD_LETTER_MAX_COUNT",
        "CLERK_SYNC_DEAD_LETTER_MAX_BYTES",
    ] {
        assert!(
            serve.contains(setting),
            "serve --help does not mention {setting}"
        );
    }
    assert!(help(&["check", "--help"]).contains("CLERK_SYNC_INTERNAL_BIND"));
    assert!(help(&["backfill", "--help"]).contains("CLERK_SECRET_KEY_FILE"));
    assert!(help(&["replay", "--help"]).contains("--dead-letters"));
}
