//! `clerk-sync replay`, `check` and `status` through the real binary, on both backends.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use common::{new_secret, spawn_app, spawn_app_with, AppOptions, Backend, ClerkUser, TestDb};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_clerk-sync");

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn clerk_sync(db: &TestDb, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env("DIRECT_URL", db.direct.as_deref().unwrap_or(""))
        .env_remove("CLERK_WEBHOOK_SIGNING_SECRET")
        .env_remove("CLERK_WEBHOOK_SECRET")
        .env("RUST_LOG", "warn");
    command
}

fn run(db: &TestDb, args: &[&str]) -> Output {
    clerk_sync(db, args).output().expect("run clerk-sync")
}

use common::output_text as text;

/// The count printed for `outcome` in the replay summary.
fn count(output: &Output, outcome: &str) -> u64 {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(outcome))
                .then(|| words.next().and_then(|n| n.parse().ok()))
                .flatten()
        })
        .unwrap_or(0)
}

async fn table(db: &TestDb) -> Value {
    let rows: Vec<Value> = db
        .users()
        .await
        .into_iter()
        .map(|u| serde_json::json!({"id": u.id, "name": u.name, "mail_address": u.mail_address, "role": u.role}))
        .collect();
    Value::Array(rows)
}

/// The scenario files, in order.
fn scenarios() -> Vec<PathBuf> {
    let mut scenarios: Vec<PathBuf> = std::fs::read_dir(fixtures().join("scenarios"))
        .expect("scenarios")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    scenarios.sort();
    scenarios
}

/// The table a scenario states it must produce.
fn expected_table(scenario: &std::path::Path) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(scenario.with_extension("expected.json")).expect("expected table"),
    )
    .expect("expected json")
}

async fn every_scenario_produces_its_expected_table_and_replays_idempotently(backend: Backend) {
    let scenarios = scenarios();
    assert!(scenarios.len() >= 6);
    for scenario in scenarios {
        let db = TestDb::with_prisma_tables(backend).await;
        let path = scenario.to_string_lossy().into_owned();
        let expected = expected_table(&scenario);

        let first = run(&db, &["replay", &path]);
        assert!(first.status.success(), "{path}: {}", text(&first));
        assert_eq!(table(&db).await, expected, "{path}");

        let second = run(&db, &["replay", &path]);
        assert!(second.status.success(), "{}", text(&second));
        assert_eq!(count(&second, "applied"), 0, "{path}: {}", text(&second));
        assert!(count(&second, "duplicate") > 0);
        assert_eq!(table(&db).await, expected, "{path} after a second replay");
    }
}

/// Several transactions in flight keep every user's deliveries in input order: each
/// scenario, one delivery per transaction and four at once, gives exactly the outcomes of
/// one at a time, and the expected table.
async fn transactions_in_flight_keep_each_users_order(backend: Backend) {
    let scenarios = scenarios();
    let outcomes = |output: &Output| {
        ["applied", "duplicate", "stale", "ignored", "deferred"].map(|o| count(output, o))
    };
    for scenario in scenarios {
        let path = scenario.to_string_lossy().into_owned();
        let expected = expected_table(&scenario);
        let serial_db = TestDb::with_prisma_tables(backend).await;
        let serial = run(
            &serial_db,
            &["replay", "--batch-size", "1", "--transactions", "1", &path],
        );
        assert!(serial.status.success(), "{path}: {}", text(&serial));
        let parallel_db = TestDb::with_prisma_tables(backend).await;
        let parallel = run(
            &parallel_db,
            &["replay", "--batch-size", "1", "--transactions", "4", &path],
        );
        assert!(parallel.status.success(), "{path}: {}", text(&parallel));

        assert_eq!(
            outcomes(&parallel),
            outcomes(&serial),
            "{path}: {}",
            text(&parallel)
        );
        assert_eq!(table(&parallel_db).await, expected, "{path}");
    }
}

async fn the_published_examples_replay_from_a_folder(backend: Backend) {
    let db = TestDb::empty(backend).await;
    let folder = fixtures().join("clerk-events");

    let output = run(&db, &["replay", &folder.to_string_lossy()]);

    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(count(&output, "ignored"), 4, "{}", text(&output));
    assert_eq!(count(&output, "applied") + count(&output, "stale"), 4);
    assert!(db.user("user_29w83sxmDNGwOuEthce5gg56FcC").await.is_some());
}

async fn recorded_deliveries_are_checked_and_forged_ones_refused(backend: Backend) {
    let db = TestDb::with_prisma_tables(backend).await;
    let secret = new_secret();
    let signer = svix::webhooks::Webhook::new(&secret).expect("secret");
    let genuine_body = ClerkUser::new("user_recorded", 1_000, "rec@example.com").created();
    let forged_body = ClerkUser::new("user_forged", 1_000, "forged@example.com").created();
    // Recorded a week ago: the age is not held against a replay.
    let ts = common::now() - 7 * 24 * 3600;
    let record = |id: &str, body: &str, signature: String| {
        serde_json::json!({"headers": {"svix-id": id, "svix-timestamp": ts.to_string(), "svix-signature": signature}, "body": body})
            .to_string()
    };
    let genuine = record(
        "msg_genuine",
        &genuine_body,
        signer
            .sign("msg_genuine", ts, genuine_body.as_bytes())
            .expect("sign"),
    );
    let other = svix::webhooks::Webhook::new(&new_secret()).expect("secret");
    let forged = record(
        "msg_forged",
        &forged_body,
        other
            .sign("msg_forged", ts, forged_body.as_bytes())
            .expect("sign"),
    );
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("recorded.jsonl");
    std::fs::write(&file, format!("{genuine}\n{forged}\n")).expect("write");

    let output = clerk_sync(&db, &["replay", &file.to_string_lossy()])
        .env("CLERK_WEBHOOK_SIGNING_SECRET", &secret)
        .output()
        .expect("run");

    assert!(
        !output.status.success(),
        "a forged delivery must fail the replay"
    );
    assert!(
        text(&output).contains("recorded.jsonl:2: rejected: signature rejected"),
        "{}",
        text(&output)
    );
    assert!(db.user("user_recorded").await.is_some());
    assert!(db.user("user_forged").await.is_none());
    let recorded_id = db
        .number(&format!(
            "SELECT count(*) AS n FROM {} WHERE svix_id = 'msg_genuine'",
            db.own_table("deliveries")
        ))
        .await;
    assert_eq!(recorded_id, 1, "a recorded delivery keeps its svix-id");
}

async fn bad_files_are_reported_with_their_place_and_the_rest_still_replays(backend: Backend) {
    let db = TestDb::with_prisma_tables(backend).await;
    let dir = tempfile::tempdir().expect("dir");
    let good = ClerkUser::new("user_good", 1_000, "good@example.com").created();
    std::fs::write(dir.path().join("a-broken.json"), "{\"type\": ").expect("write");
    std::fs::write(
        dir.path().join("b-lines.jsonl"),
        format!("{good}\nnot json\n[1, 2]\n"),
    )
    .expect("write");
    std::fs::write(
        dir.path().join("c-shape.json"),
        "{\"type\": \"user.created\", \"data\": {\"id\": 7}}",
    )
    .expect("write");
    let missing = dir.path().join("missing.json");

    let output = run(
        &db,
        &[
            "replay",
            &dir.path().to_string_lossy(),
            &missing.to_string_lossy(),
        ],
    );

    assert!(!output.status.success());
    let all = text(&output);
    for expected in [
        "a-broken.json: rejected: invalid JSON",
        "b-lines.jsonl:2: rejected: invalid JSON",
        "b-lines.jsonl:3: rejected: not a webhook body",
        "c-shape.json: rejected: invalid event",
        "missing.json: rejected: cannot open",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in {all}");
    }
    assert_eq!(count(&output, "rejected"), 5);
    assert_eq!(count(&output, "applied"), 1);
    assert!(db.user("user_good").await.is_some());
}

async fn a_dry_run_and_stdin(backend: Backend) {
    let db = TestDb::with_prisma_tables(backend).await;
    let body = ClerkUser::new("user_stdin", 1_000, "stdin@example.com").created();
    let mut dry = clerk_sync(&db, &["replay", "--dry-run", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    dry.stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write");
    let dry = dry.wait_with_output().expect("wait");
    assert!(dry.status.success(), "{}", text(&dry));
    assert_eq!(count(&dry, "valid"), 1);

    let mut real = clerk_sync(&db, &["replay", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    real.stdin
        .take()
        .expect("stdin")
        .write_all(format!("{body}\n{body}\n").as_bytes())
        .expect("write");
    let real = real.wait_with_output().expect("wait");
    assert!(real.status.success(), "{}", text(&real));
    assert_eq!((count(&real, "applied"), count(&real, "duplicate")), (1, 1));
    assert!(db.user("user_stdin").await.is_some());
}

async fn replay_to_a_running_daemon_signs_like_svix(backend: Backend) {
    let app = spawn_app(backend).await;
    let scenario = fixtures()
        .join("scenarios")
        .join("two-users-swap-addresses.jsonl");
    let url = format!("{}/webhooks/clerk", app.address);

    let output = Command::new(BIN)
        .args(["replay", "--to", &url, &scenario.to_string_lossy()])
        .env("CLERK_WEBHOOK_SIGNING_SECRET", &app.secret)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run");

    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(
        count(&output, "applied") + count(&output, "stale"),
        4,
        "{}",
        text(&output)
    );
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(scenario.with_extension("expected.json")).expect("expected"),
    )
    .expect("json");
    assert_eq!(table(&app.db).await, expected);

    let wrong_secret = Command::new(BIN)
        .args(["replay", "--to", &url, &scenario.to_string_lossy()])
        .env("CLERK_WEBHOOK_SIGNING_SECRET", new_secret())
        .output()
        .expect("run");
    assert!(!wrong_secret.status.success());
    assert!(
        text(&wrong_secret).contains("401"),
        "{}",
        text(&wrong_secret)
    );
}

async fn status_reports_what_the_database_says(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = ClerkUser::new("user_status", 1_000, "status@example.com");
    app.expect_outcome("m1", &user.created(), "applied").await;
    app.expect_outcome("m1", &user.created(), "duplicate").await;
    app.db
        .exec(r#"INSERT INTO "Favorite" ("userId", "itemId") VALUES ('user_status', 'i')"#)
        .await;
    app.expect_outcome("m2", &common::deleted("user_status"), "deferred")
        .await;

    let output = run(&app.db, &["status", "--json"]);

    assert!(output.status.success(), "{}", text(&output));
    let json: Value = serde_json::from_slice(&output.stdout).expect("status JSON");
    assert_eq!(json["deliveries_by_outcome"]["applied"], 1);
    assert_eq!(json["deliveries_by_outcome"]["deferred"], 1);
    assert_eq!(json["pending_deletes"], 1);
    assert_eq!(json["tombstones"], 1);
    assert!(json["last_delivery_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    let human = run(&app.db, &["status"]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("pending deletes:  1"));
}

async fn check_tells_ready_from_not_ready_and_from_nothing(backend: Backend) {
    let app = spawn_app_with(
        TestDb::with_prisma_tables(backend).await,
        AppOptions::default(),
    )
    .await;
    let probe = |address: &str| {
        Command::new(BIN)
            .args(["check", "--bind", address, "--timeout", "2"])
            .env_clear()
            .output()
            .expect("run check")
    };
    let bind = app.address.trim_start_matches("http://").to_owned();

    let ready = probe(&bind);
    assert!(ready.status.success(), "{}", text(&ready));
    assert_eq!(String::from_utf8_lossy(&ready.stdout).trim(), "ready");

    // The database goes away under the running daemon.
    let down = match backend {
        Backend::Sqlite => {
            app.db.exec("DROP TABLE clerk_sync_schema_migrations").await;
            probe(&bind)
        }
        Backend::Postgres | Backend::Pooled => {
            let direct = app.db.direct.as_deref().unwrap_or(&app.db.url);
            let name = direct.rsplit('/').next().expect("db name").to_owned();
            let admin = TestDb {
                backend,
                url: common::pg_admin_url(),
                direct: None,
                _dir: None,
            };
            admin
                .exec(&format!(
                    "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false"
                ))
                .await;
            // A connection the pool was opening as connections were closed can outlive one
            // round of terminations (it is not yet listed under the database): terminate
            // again until the probe sees the database gone. No new connection can open.
            let mut down = None;
            for _ in 0..20 {
                admin
                    .exec(&format!(
                        "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE datname = '{name}'"
                    ))
                    .await;
                let answer = probe(&bind);
                if answer.status.code() == Some(1) {
                    down = Some(answer);
                    break;
                }
            }
            down.expect("the probe still says ready after the database went away")
        }
    };
    assert_eq!(down.status.code(), Some(1), "{}", text(&down));
    assert!(
        String::from_utf8_lossy(&down.stdout).starts_with("not ready: 503"),
        "{}",
        text(&down)
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let nothing = probe(&format!("127.0.0.1:{port}"));
    assert_eq!(nothing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&nothing.stdout).starts_with("unreachable"),
        "{}",
        text(&nothing)
    );
}

on_every_backend!(
    every_scenario_produces_its_expected_table_and_replays_idempotently,
    transactions_in_flight_keep_each_users_order,
    the_published_examples_replay_from_a_folder,
    recorded_deliveries_are_checked_and_forged_ones_refused,
    bad_files_are_reported_with_their_place_and_the_rest_still_replays,
    a_dry_run_and_stdin,
    replay_to_a_running_daemon_signs_like_svix,
    status_reports_what_the_database_says,
    check_tells_ready_from_not_ready_and_from_nothing,
);
