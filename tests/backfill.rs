//! `clerk-sync backfill` through the real binary, against a stand-in of Clerk's Backend API
//! owned by each test, on both backends.

#[path = "common/clerk_api.rs"]
mod clerk_api;
mod common;

use std::process::{Command, Output};
use std::time::Duration;

use clerk_api::{
    clerk_user, generated_user, stored, user_id, Faults, Mutation, StandIn, StoredUser,
};
use clerk_sync::db::{Database, DatabaseUrl, PoolOptions};
use clerk_sync::domain::{Event, MessageId};
use clerk_sync::sync::SyncOptions;
use common::{Backend, ClerkUser, TestDb};

const BIN: &str = env!("CARGO_BIN_EXE_clerk-sync");
const KEY: &str = "sk_test_StandInSecretKey0123456789";

fn users(n: usize) -> Vec<StoredUser> {
    (0..n).map(generated_user).collect()
}

fn backfill(db: &TestDb, api: &StandIn, extra: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command.arg("backfill");
    if !extra.contains(&"--retries") {
        command.args(["--retries", "3"]);
    }
    command
        .args(["--api-url", &api.url, "--max-requests-per-10s", "0"])
        .args(extra)
        .env("DATABASE_URL", &db.url)
        .env("DIRECT_URL", db.direct.as_deref().unwrap_or(""))
        .env("CLERK_SECRET_KEY", KEY)
        .env_remove("CLERK_API_URL")
        .env("RUST_LOG", "info");
    command
}

/// Runs the binary off the async workers (the stand-in keeps serving meanwhile).
async fn run(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().expect("run clerk-sync"))
        .await
        .expect("join")
}

/// `clerk-sync status --json` on `db`.
async fn status(db: &TestDb) -> serde_json::Value {
    let mut command = Command::new(BIN);
    command
        .args(["status", "--json"])
        .env("DATABASE_URL", &db.url)
        .env("DIRECT_URL", db.direct.as_deref().unwrap_or(""))
        .env("RUST_LOG", "warn");
    let output = run(command).await;
    assert!(output.status.success(), "{}", text(&output));
    serde_json::from_slice(&output.stdout).expect("status --json prints JSON")
}

use common::{output_text as text, summary_count as count};

/// Every list request asked for at most 500 users, in creation order.
fn assert_paged_by_cursor(api: &StandIn) {
    let lists: Vec<_> = api
        .log()
        .into_iter()
        .filter(|r| r.path == "/v1/users")
        .collect();
    assert!(!lists.is_empty());
    for request in lists {
        let limit: usize = request
            .query
            .get("limit")
            .and_then(|l| l.parse().ok())
            .expect("a limit is always sent");
        assert!((1..=500).contains(&limit), "limit {limit} sent");
        assert_eq!(
            request.query.get("order_by").map(String::as_str),
            Some("created_at")
        );
        assert!(!request.query.contains_key("offset"));
    }
}

async fn user_count(db: &TestDb) -> i64 {
    db.number(r#"SELECT count(*) AS n FROM "User""#).await
}

async fn database(db: &TestDb) -> Database {
    let url = DatabaseUrl::parse(&db.url).expect("url");
    let database = Database::open(&url, PoolOptions::default()).expect("open");
    database.migrate().await.expect("migrate");
    database
}

/// Applies a webhook body as the daemon would.
async fn deliver(database: &Database, id: &str, body: &str) -> String {
    let event = Event::parse(body.as_bytes()).expect("event");
    let id = MessageId::parse(id).expect("id");
    clerk_sync::sync::ingest(database, &id, &event, SyncOptions::default())
        .await
        .expect("apply")
        .as_str()
        .to_owned()
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn a_complete_walk_imports_every_user_and_a_second_changes_nothing(backend: Backend) {
    let db = TestDb::with_prisma_tables(backend).await;
    let api = StandIn::start(users(3_000), KEY, 0).expect("stand-in");

    let first = run(backfill(&db, &api, &[])).await;

    assert!(first.status.success(), "{}", text(&first));
    assert_eq!(count(&first, "applied"), 3_000, "{}", text(&first));
    assert_eq!(count(&first, "errors"), 0);
    assert_eq!(user_count(&db).await, 3_000);
    let row = db.user(&user_id(1_234)).await.expect("row");
    assert_eq!(row.mail_address, "person1234@example.com");
    assert_eq!(row.name.as_deref(), Some("Grace Hopper 1234"));
    assert_eq!(row.role, "USER");
    assert!(
        row.created_at.starts_with("2024-05-01T12:20:34"),
        "{}",
        row.created_at
    );
    assert_paged_by_cursor(&api);
    let before = db.snapshot().await;

    let second = run(backfill(&db, &api, &[])).await;

    assert!(second.status.success(), "{}", text(&second));
    assert_eq!(count(&second, "applied"), 0);
    assert_eq!(count(&second, "unchanged"), 3_000);
    assert_eq!(db.snapshot().await, before, "a second walk changed nothing");
    api.stop().await;
}

async fn newer_webhook_rows_stay_and_tombstones_hold(backend: Backend) {
    let db = TestDb::with_prisma_tables(backend).await;
    let database = database(&db).await;
    let all = users(50);
    // user 10: a webhook brought a newer version than the API will list.
    let mut newer = ClerkUser::new(&user_id(10), 0, "newer@example.com");
    newer.created_at = clerk_api::BASE_MS + 10_000;
    newer.updated_at = clerk_api::BASE_MS + 10_000 + 120_000;
    newer.first_name = Some("Webhook".into());
    assert_eq!(
        deliver(&database, "msg_newer", &newer.updated()).await,
        "applied"
    );
    // user 20: deleted by a webhook; the API (lagging) still lists it.
    assert_eq!(
        deliver(&database, "msg_gone", &common::deleted(&user_id(20))).await,
        "applied"
    );
    // user 30: an older version in the table; the API's newer one must win.
    let older = ClerkUser::new(&user_id(30), 0, "old@example.com");
    assert_eq!(
        deliver(&database, "msg_older", &older.created()).await,
        "applied"
    );
    // user 40: a webhook brought the very version the API lists: nothing to do.
    let same = format!(
        r#"{{"type":"user.updated","object":"event","timestamp":1,"data":{}}}"#,
        all[40].json
    );
    assert_eq!(deliver(&database, "msg_same", &same).await, "applied");
    let api = StandIn::start(all, KEY, 0).expect("stand-in");
    let deliveries = db.snapshot().await.1;

    let output = run(backfill(&db, &api, &["--page-size", "20"])).await;

    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(count(&output, "stale"), 2, "{}", text(&output));
    assert_eq!(count(&output, "unchanged"), 1, "{}", text(&output));
    assert_eq!(count(&output, "applied"), 47);
    assert_eq!(
        db.snapshot().await.1,
        deliveries,
        "users read from the API are versions, not deliveries: none is recorded"
    );
    let kept = db.user(&user_id(10)).await.expect("row");
    assert_eq!(kept.mail_address, "newer@example.com");
    assert!(kept
        .name
        .as_deref()
        .is_some_and(|n| n.starts_with("Webhook")));
    assert!(
        db.user(&user_id(20)).await.is_none(),
        "a tombstoned user came back"
    );
    let replaced = db.user(&user_id(30)).await.expect("row");
    assert_eq!(replaced.mail_address, "person30@example.com");
    assert_eq!(user_count(&db).await, 49);
    api.stop().await;
}

async fn an_interrupted_walk_resumes_after_its_last_applied_page(backend: Backend) {
    let db = TestDb::with_prisma_tables(backend).await;
    let api = StandIn::start(users(2_000), KEY, 0).expect("stand-in");
    api.set_faults(Faults {
        fail_list_after_pages: Some(7),
        ..Faults::default()
    });

    let first = run(backfill(
        &db,
        &api,
        &["--page-size", "100", "--retries", "1"],
    ))
    .await;

    assert!(!first.status.success(), "{}", text(&first));
    assert!(
        text(&first).contains("backfill incomplete"),
        "{}",
        text(&first)
    );
    assert_eq!(count(&first, "applied"), 700);
    assert_eq!(user_count(&db).await, 700);
    let walk = &status(&db).await["backfill"];
    assert_eq!(walk["state"], "incomplete", "{walk}");
    assert_eq!(walk["seen"], 700, "{walk}");
    assert_eq!(walk["pages"], 7, "{walk}");
    assert!(walk["completed_at"].is_null(), "{walk}");

    // --restart walks from the first user again (and fails at the same place).
    api.clear_log();
    let restarted = run(backfill(
        &db,
        &api,
        &["--page-size", "100", "--retries", "1", "--restart"],
    ))
    .await;
    assert!(!restarted.status.success());
    let lists: Vec<_> = api
        .log()
        .into_iter()
        .filter(|r| r.path == "/v1/users")
        .collect();
    assert!(!lists[0].query.contains_key("starting_after"));
    assert_eq!(count(&restarted, "unchanged"), 700);

    api.set_faults(Faults::default());
    // The user the walk would resume after is deleted meanwhile: the resumed walk steps
    // back to the one before it, read from the checkpoint.
    api.delete(&user_id(699));
    api.clear_log();
    let resumed = run(backfill(&db, &api, &["--page-size", "100"])).await;

    assert!(resumed.status.success(), "{}", text(&resumed));
    assert!(text(&resumed).contains("resuming"), "{}", text(&resumed));
    let lists: Vec<_> = api
        .log()
        .into_iter()
        .filter(|r| r.path == "/v1/users")
        .collect();
    assert_eq!(
        lists[0].query.get("starting_after"),
        Some(&user_id(699)),
        "the walk continues after the last applied page"
    );
    assert_eq!(
        lists[1].query.get("starting_after"),
        Some(&user_id(698)),
        "the walk steps back past the deleted user"
    );
    assert!(
        lists.iter().all(|r| r.query.contains_key("starting_after")),
        "no page walked again from the start"
    );
    assert_eq!(count(&resumed, "applied"), 1_300);
    assert_eq!(count(&resumed, "unchanged"), 0);
    // User 699 was applied before Clerk deleted it (no webhook told this table).
    assert_eq!(user_count(&db).await, 2_000);
    let walk = &status(&db).await["backfill"];
    assert_eq!(walk["state"], "completed", "{walk}");
    assert_eq!(walk["seen"], 2_000, "{walk}");
    assert!(walk["completed_at"].is_string(), "{walk}");
    assert_paged_by_cursor(&api);
    api.stop().await;
}

async fn rate_limits_server_errors_and_slow_answers_are_survived(backend: Backend) {
    let db = TestDb::with_prisma_tables(backend).await;
    let api = StandIn::start(users(1_000), KEY, 0).expect("stand-in");
    api.set_faults(Faults {
        every_nth_429: Some(3),
        every_nth_5xx: Some(5),
        delay: Duration::from_millis(30),
        ..Faults::default()
    });

    let output = run(backfill(&db, &api, &["--page-size", "200"])).await;

    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(count(&output, "applied"), 1_000);
    assert_eq!(user_count(&db).await, 1_000);
    let log = api.log();
    assert!(log.iter().any(|r| r.status == 429));
    assert!(log.iter().any(|r| r.status == 503));
    assert_paged_by_cursor(&api);
    api.stop().await;
}

async fn users_created_and_deleted_during_the_walk_are_neither_missed_nor_stuck(backend: Backend) {
    let db = TestDb::with_prisma_tables(backend).await;
    let api = StandIn::start(users(1_000), KEY, 0).expect("stand-in");
    // Deleted before the walk reaches it.
    api.after_page(2, Mutation::Delete(user_id(500)));
    // Signed up during the walk.
    let now = now_ms();
    api.after_page(
        3,
        Mutation::Add(stored(clerk_user(
            "user_2bfsignedupduringwalk",
            now,
            now,
            Some("new@example.com"),
        ))),
    );
    // The user the next page would start after is deleted: the walk must step back.
    api.after_page(4, Mutation::Delete(user_id(399)));

    let output = run(backfill(&db, &api, &["--page-size", "100"])).await;

    assert!(output.status.success(), "{}", text(&output));
    assert!(db.user(&user_id(500)).await.is_none());
    assert!(db.user("user_2bfsignedupduringwalk").await.is_some());
    assert!(db.user(&user_id(999)).await.is_some());
    assert!(
        db.user(&user_id(400)).await.is_some(),
        "users after a deleted cursor were walked"
    );
    // 999 listed users + the sign-up; user 399 was applied before its deletion.
    assert_eq!(user_count(&db).await, 1_000);
    assert!(api
        .log()
        .iter()
        .any(|r| r.path == format!("/v1/users/{}", user_id(399)) && r.status == 404));
    api.stop().await;
}

async fn prune_removes_what_clerk_lost_and_keeps_what_signed_up_during_the_walk(backend: Backend) {
    let db = TestDb::with_prisma_tables(backend).await;
    let database = database(&db).await;
    // Deleted in Clerk while the endpoint was down: known to clerk-sync, no longer listed.
    for (id, email) in [
        ("user_lost1", "lost1@example.com"),
        ("user_lost2", "lost2@example.com"),
    ] {
        let user = ClerkUser::new(id, 0, email);
        assert_eq!(
            deliver(&database, &format!("msg_{id}"), &user.created()).await,
            "applied"
        );
    }
    // Lost too, but the application's foreign keys still hold it: deferred, not deleted.
    let held = ClerkUser::new("user_lostheld", 0, "held@example.com");
    assert_eq!(
        deliver(&database, "msg_held", &held.created()).await,
        "applied"
    );
    db.exec(r#"INSERT INTO "Favorite" ("userId", "itemId") VALUES ('user_lostheld', 'item-1')"#)
        .await;
    // Rows the application wrote itself: one with a Clerk id (old), one that is not a Clerk id.
    let old_row = match backend {
        Backend::Sqlite => {
            r#"INSERT INTO "User" (id, mail_address, role, "createdAt", "updatedAt") VALUES
               ('user_legacy', 'legacy@example.com', 'USER', '2023-01-01T00:00:00.000+00:00', '2023-01-01T00:00:00.000+00:00'),
               ('admin-local', 'admin@example.com', 'ADMIN', '2023-01-01T00:00:00.000+00:00', '2023-01-01T00:00:00.000+00:00')"#
        }
        Backend::Postgres | Backend::Pooled => {
            r#"INSERT INTO "User" (id, mail_address, role, "createdAt", "updatedAt") VALUES
               ('user_legacy', 'legacy@example.com', 'USER', '2023-01-01 00:00:00', '2023-01-01 00:00:00'),
               ('admin-local', 'admin@example.com', 'ADMIN', '2023-01-01 00:00:00', '2023-01-01 00:00:00')"#
        }
    };
    db.exec(old_row).await;
    let api = StandIn::start(users(600), KEY, 0).expect("stand-in");
    api.set_faults(Faults {
        pause_after_pages: Some(3),
        ..Faults::default()
    });

    let child = backfill(&db, &api, &["--page-size", "100", "--prune"]);
    let walk = tokio::spawn(run(child));
    assert!(
        common::eventually(Duration::from_secs(60), || async { api.is_paused() }).await,
        "the walk never reached the pause"
    );
    // Sign-ups while the walk runs, which the walk (past them) does not list: a webhook...
    let mut signup = ClerkUser::new("user_signupmidwalk", 0, "signup@example.com");
    signup.created_at = now_ms();
    signup.updated_at = signup.created_at;
    assert_eq!(
        deliver(&database, "msg_signup", &signup.created()).await,
        "applied"
    );
    // ... and a row the application wrote itself.
    let fresh_row = match backend {
        Backend::Sqlite => {
            r#"INSERT INTO "User" (id, mail_address, role, "createdAt", "updatedAt") VALUES
               ('user_appmidwalk', 'app@example.com', 'USER',
                strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'), strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))"#
        }
        Backend::Postgres | Backend::Pooled => {
            r#"INSERT INTO "User" (id, mail_address, role, "createdAt", "updatedAt") VALUES
               ('user_appmidwalk', 'app@example.com', 'USER', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC')"#
        }
    };
    db.exec(fresh_row).await;
    api.release();
    let output = walk.await.expect("join");

    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(count(&output, "applied"), 600, "{}", text(&output));
    assert_eq!(count(&output, "pruned"), 3, "{}", text(&output));
    assert_eq!(count(&output, "deferred"), 1);
    for gone in ["user_lost1", "user_lost2", "user_legacy"] {
        assert!(db.user(gone).await.is_none(), "{gone} was not pruned");
    }
    for kept in [
        "user_signupmidwalk",
        "user_appmidwalk",
        "admin-local",
        "user_lostheld",
    ] {
        assert!(db.user(kept).await.is_some(), "{kept} was pruned");
    }
    let tombstones = db
        .number(&format!(
            "SELECT count(*) AS n FROM {} WHERE deleted_at IS NOT NULL",
            db.own_table("users")
        ))
        .await;
    assert_eq!(
        tombstones, 4,
        "pruned users are tombstoned like user.deleted"
    );
    assert_eq!(user_count(&db).await, 600 + 4);
    api.stop().await;
}

async fn a_dry_run_reports_and_writes_nothing(backend: Backend) {
    let db = TestDb::with_prisma_tables(backend).await;
    let database = database(&db).await;
    let lost = ClerkUser::new("user_lost", 0, "lost@example.com");
    assert_eq!(
        deliver(&database, "msg_lost", &lost.created()).await,
        "applied"
    );
    let mut newer = ClerkUser::new(&user_id(7), 0, "newer@example.com");
    newer.updated_at = clerk_api::BASE_MS + 7_000 + 600_000;
    assert_eq!(
        deliver(&database, "msg_newer", &newer.updated()).await,
        "applied"
    );
    let api = StandIn::start(users(300), KEY, 0).expect("stand-in");
    let before = db.snapshot().await;

    let output = run(backfill(
        &db,
        &api,
        &["--dry-run", "--prune", "--page-size", "50"],
    ))
    .await;

    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("nothing written"));
    assert_eq!(count(&output, "applied"), 299, "{}", text(&output));
    assert_eq!(count(&output, "stale"), 1);
    assert_eq!(count(&output, "pruned"), 1);
    assert_eq!(db.snapshot().await, before, "a dry run wrote");
    let walks = db
        .number(&format!(
            "SELECT count(*) AS n FROM {}",
            db.own_table("backfill_walks")
        ))
        .await;
    assert_eq!(walks, 0, "a dry run checkpointed");
    api.stop().await;
}

async fn a_walk_moved_by_another_backfill_stops_this_one(backend: Backend) {
    let db = TestDb::with_prisma_tables(backend).await;
    let api = StandIn::start(users(500), KEY, 0).expect("stand-in");
    api.set_faults(Faults {
        pause_after_pages: Some(2),
        ..Faults::default()
    });
    let walk = tokio::spawn(run(backfill(&db, &api, &["--page-size", "100"])));
    assert!(
        common::eventually(Duration::from_secs(60), || async { api.is_paused() }).await,
        "the walk never reached the pause"
    );

    // Meanwhile another backfill checkpoints the same walk.
    db.exec(&format!(
        "UPDATE {} SET pages = pages + 1",
        db.own_table("backfill_walks")
    ))
    .await;
    api.release();
    let output = walk.await.expect("join");

    assert!(!output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("run one backfill at a time"),
        "{}",
        text(&output)
    );
    api.stop().await;
}

on_every_backend!(
    a_complete_walk_imports_every_user_and_a_second_changes_nothing,
    newer_webhook_rows_stay_and_tombstones_hold,
    an_interrupted_walk_resumes_after_its_last_applied_page,
    rate_limits_server_errors_and_slow_answers_are_survived,
    users_created_and_deleted_during_the_walk_are_neither_missed_nor_stuck,
    prune_removes_what_clerk_lost_and_keeps_what_signed_up_during_the_walk,
    a_dry_run_reports_and_writes_nothing,
    a_walk_moved_by_another_backfill_stops_this_one,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_refused_clearly_and_no_key_is_ever_logged() {
    let db = TestDb::with_prisma_tables(Backend::Sqlite).await;
    let api = StandIn::start(users(20), KEY, 0).expect("stand-in");
    let wrong = "sk_test_WrongKeyThatMustNeverBePrinted";

    let refused = run({
        let mut command = backfill(&db, &api, &[]);
        command
            .env("CLERK_SECRET_KEY", wrong)
            .env("RUST_LOG", "debug");
        command
    })
    .await;

    assert!(!refused.status.success());
    let said = text(&refused);
    assert!(
        said.contains("Clerk refused the secret key (401)"),
        "{said}"
    );
    assert!(said.contains("authentication_invalid"), "{said}");
    assert!(!said.contains(wrong), "the key was printed: {said}");
    assert_eq!(user_count(&db).await, 0);
    let walks = db
        .number("SELECT count(*) AS n FROM clerk_sync_backfill_walks")
        .await;
    assert_eq!(walks, 0, "a refused key began a walk");

    let accepted = run({
        let mut command = backfill(&db, &api, &[]);
        command.env("RUST_LOG", "debug").env("LOG_FORMAT", "json");
        command
    })
    .await;
    assert!(accepted.status.success(), "{}", text(&accepted));
    let said = text(&accepted);
    assert!(!said.contains(KEY), "the key was printed");
    assert!(
        !said.contains("person3@example.com"),
        "an address was logged"
    );

    let missing = run({
        let mut command = backfill(&db, &api, &[]);
        command.env_remove("CLERK_SECRET_KEY");
        command
    })
    .await;
    assert!(!missing.status.success());
    assert!(text(&missing).contains("CLERK_SECRET_KEY"));

    let too_large = run(backfill(&db, &api, &["--page-size", "501"])).await;
    assert!(!too_large.status.success(), "a page above 500 is refused");
    assert!(api.log().iter().all(|r| r
        .query
        .get("limit")
        .is_none_or(|l| l.parse::<usize>().is_ok_and(|l| l <= 500))));
    api.stop().await;
}
