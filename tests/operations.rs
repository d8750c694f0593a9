//! Operating clerk-sync: metrics after real deliveries, request ids, bounded answers.

mod common;

use std::time::{Duration, Instant};

use common::{
    deleted, now, spawn_app, spawn_app_with, AppOptions, Backend, ClerkUser, TestApp, TestDb,
};

/// The value of the series whose line starts with `series` (name and labels, exactly).
fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn scrape(app: &TestApp) -> String {
    let response = app.get("/metrics").await;
    assert_eq!(response.status().as_u16(), 200);
    assert!(response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/plain")));
    response.text().await.expect("body")
}

async fn metrics_move_with_real_deliveries(backend: Backend) {
    let app = spawn_app(backend).await;
    let before = scrape(&app).await;
    assert_eq!(
        sample(
            &before,
            "clerk_sync_deliveries_total{event_type=\"user.created\",outcome=\"applied\"}"
        ),
        None
    );
    assert_eq!(sample(&before, "clerk_sync_database_up"), Some(1.0));

    let user = ClerkUser::new("user_metrics", 1_000, "metrics@example.com");
    app.expect_outcome("m1", &user.created(), "applied").await;
    app.expect_outcome("m1", &user.created(), "duplicate").await;
    app.db
        .exec(r#"INSERT INTO "Favorite" ("userId", "itemId") VALUES ('user_metrics', 'i')"#)
        .await;
    app.expect_outcome("m2", &deleted("user_metrics"), "deferred")
        .await;
    let forged = app
        .post(
            &[
                ("svix-id", "m3".into()),
                ("svix-timestamp", now().to_string()),
                ("svix-signature", "v1,Zm9yZ2Vk".into()),
            ],
            user.updated(),
        )
        .await;
    assert_eq!(forged.status().as_u16(), 401);

    let after = scrape(&app).await;
    let series = |s: &str| sample(&after, s);
    assert_eq!(
        series("clerk_sync_deliveries_total{event_type=\"user.created\",outcome=\"applied\"}"),
        Some(1.0)
    );
    assert_eq!(
        series("clerk_sync_deliveries_total{event_type=\"user.created\",outcome=\"duplicate\"}"),
        Some(1.0)
    );
    assert_eq!(
        series("clerk_sync_deliveries_total{event_type=\"user.deleted\",outcome=\"deferred\"}"),
        Some(1.0)
    );
    assert_eq!(
        series("clerk_sync_rejected_total{reason=\"no_matching_signature\"}"),
        Some(1.0)
    );
    assert_eq!(
        series("clerk_sync_delivery_duration_seconds_count"),
        Some(4.0)
    );
    assert_eq!(series("clerk_sync_deferred_deletes_pending"), Some(1.0));
    assert!(series("clerk_sync_last_delivery_age_seconds")
        .is_some_and(|age| (0.0..60.0).contains(&age)));
    assert!(series("clerk_sync_db_pool_connections{state=\"idle\"}").is_some_and(|n| n >= 1.0));
    assert_eq!(series("clerk_sync_db_pool_waiting"), Some(0.0));
    assert_eq!(
        series(&format!(
            "clerk_sync_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        Some(1.0)
    );
}

async fn a_body_over_the_limit_is_counted(backend: Backend) {
    let options = AppOptions {
        body_limit: 1024,
        ..AppOptions::default()
    };
    let app = spawn_app_with(TestDb::with_prisma_tables(backend).await, options).await;
    let response = app.post(&[], "x".repeat(4096)).await;
    assert_eq!(response.status().as_u16(), 413);
    assert_eq!(
        sample(
            &scrape(&app).await,
            "clerk_sync_rejected_total{reason=\"body_too_large\"}"
        ),
        Some(1.0)
    );
}

async fn every_response_carries_a_request_id(backend: Backend) {
    let app = spawn_app(backend).await;
    let echoed = app
        .client
        .get(format!("{}/healthz", app.address))
        .header("x-request-id", "req-from-the-proxy")
        .send()
        .await
        .expect("request");
    assert_eq!(
        echoed
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("req-from-the-proxy")
    );

    let made = app
        .deliver(
            "m1",
            &ClerkUser::new("user_rid", 1, "rid@example.com").created(),
        )
        .await;
    let id = made
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert_eq!(id.len(), 32, "{id:?}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
}

async fn a_delivery_stuck_behind_a_lock_is_answered_503_within_the_deadline(backend: Backend) {
    let options = AppOptions {
        deadline: Duration::from_secs(1),
        ..AppOptions::default()
    };
    let app = spawn_app_with(TestDb::with_prisma_tables(backend).await, options).await;
    let user = ClerkUser::new("user_locked", 1_000, "locked@example.com");
    app.expect_outcome("m1", &user.created(), "applied").await;
    // Another transaction holds the user's row (PostgreSQL) or the write lock (SQLite).
    let held = match backend {
        Backend::Postgres | Backend::Pooled => app
            .db
            .hold("BEGIN; SELECT 1 FROM clerk_sync.users WHERE user_id = 'user_locked' FOR UPDATE")
            .await,
        Backend::Sqlite => app.db.hold("BEGIN IMMEDIATE").await,
    };
    let mut newer = user.clone();
    newer.updated_at += 1_000;
    newer.first_name = Some("Later".into());

    let started = Instant::now();
    let response = app.deliver("m2", &newer.updated()).await;
    let waited = started.elapsed();

    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().get("retry-after").is_some());
    assert!(waited < Duration::from_secs(4), "answered after {waited:?}");
    held.rollback().await;
    // Svix retries the same delivery: it lands.
    let retried = common::eventually(Duration::from_secs(10), || async {
        matches!(app.deliver_outcome("m2", &newer.updated()).await, (200, ref o) if o == "applied" || o == "duplicate")
    })
    .await;
    assert!(retried);
    assert_eq!(
        app.db
            .user("user_locked")
            .await
            .expect("row")
            .name
            .as_deref(),
        Some("Later Lovelace")
    );
}

/// SQLite has one writer: deliveries that arrive while it is busy are committed together,
/// each answered with its own outcome once that one transaction has committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_waiting_for_the_writer_are_committed_together() {
    let app = std::sync::Arc::new(spawn_app(Backend::Sqlite).await);
    let held = app.db.hold("BEGIN IMMEDIATE").await;
    let users: Vec<ClerkUser> = (0..12)
        .map(|i| ClerkUser::new(&format!("user_g{i}"), 1_000, &format!("g{i}@example.com")))
        .collect();
    // The first takes the writer (and waits on the held lock); the rest queue behind it.
    let first = {
        let (app, body) = (std::sync::Arc::clone(&app), users[0].created());
        tokio::spawn(async move { app.deliver_outcome("g0", &body).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rest: Vec<_> = users[1..]
        .iter()
        .enumerate()
        .map(|(i, user)| {
            let (app, body) = (std::sync::Arc::clone(&app), user.created());
            tokio::spawn(async move { app.deliver_outcome(&format!("g{}", i + 1), &body).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    held.rollback().await;

    assert_eq!(first.await.expect("task"), (200, "applied".to_owned()));
    for answer in rest {
        assert_eq!(answer.await.expect("task"), (200, "applied".to_owned()));
    }
    let exposition = scrape(&app).await;
    let commits = sample(&exposition, "clerk_sync_group_commits_total").unwrap_or(0.0);
    let together =
        sample(&exposition, "clerk_sync_group_committed_deliveries_total").unwrap_or(0.0);
    assert!(commits >= 1.0, "no shared commit:\n{exposition}");
    assert!(
        together >= 2.0 * commits,
        "{together} deliveries in {commits} commits"
    );
    let rows = app.db.users().await;
    assert_eq!(rows.len(), 12);
    for (row, user) in rows.iter().zip({
        let mut sorted = users.clone();
        sorted.sort_by(|a, b| a.id.cmp(&b.id));
        sorted
    }) {
        assert_eq!(row.id, user.id);
        assert_eq!(row.mail_address, user.emails[0].1);
    }
}

/// PostgreSQL with `--committers 1`: deliveries that wait while the committer is busy are
/// committed together, and each gets its own outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_committers_commit_what_waits_together() {
    use clerk_sync::db::{Database, DatabaseUrl, PoolOptions};
    use clerk_sync::domain::{Event, MessageId};
    use clerk_sync::sync::{Outcome, SyncOptions};

    let test_db = TestDb::with_prisma_tables(Backend::Postgres).await;
    let options = PoolOptions {
        committers: 1,
        ..PoolOptions::default()
    };
    let db =
        Database::open(&DatabaseUrl::parse(&test_db.url).expect("url"), options).expect("open");
    db.migrate().await.expect("migrate");
    let delivery = |id: &str, body: String| {
        (
            MessageId::parse(id).expect("id"),
            Event::parse(body.as_bytes()).expect("event"),
        )
    };
    let locked = ClerkUser::new("user_locked", 1_000, "locked@example.com");
    let (id, event) = delivery("c0", locked.created());
    let first = clerk_sync::sync::ingest(&db, &id, &event, SyncOptions::default()).await;
    assert_eq!(first.expect("apply"), Outcome::Applied);

    let held = test_db
        .hold("BEGIN; SELECT 1 FROM clerk_sync.users WHERE user_id = 'user_locked' FOR UPDATE")
        .await;
    let mut newer = locked.clone();
    newer.updated_at += 1_000;
    // The committer takes this one and waits on the held row; the rest queue behind it.
    let blocked = {
        let (db, (id, event)) = (db.clone(), delivery("c1", newer.updated()));
        tokio::spawn(async move {
            clerk_sync::sync::ingest(&db, &id, &event, SyncOptions::default()).await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let queued: Vec<_> = (0..8)
        .map(|i| {
            let user = ClerkUser::new(&format!("user_c{i}"), 1_000, &format!("c{i}@example.com"));
            let (db, (id, event)) = (db.clone(), delivery(&format!("c{}", i + 2), user.created()));
            tokio::spawn(async move {
                clerk_sync::sync::ingest(&db, &id, &event, SyncOptions::default()).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    held.rollback().await;

    assert_eq!(
        blocked.await.expect("task").expect("apply"),
        Outcome::Applied
    );
    for task in queued {
        assert_eq!(task.await.expect("task").expect("apply"), Outcome::Applied);
    }
    let (commits, together) = clerk_sync::sync::shared_commits(&db);
    assert!(commits >= 1, "nothing was committed together");
    assert!(
        together >= 2 * commits,
        "{together} deliveries in {commits} commits"
    );
    assert_eq!(test_db.users().await.len(), 9);
}

/// PostgreSQL group commit: a delivery stuck behind a lock fails its group's transaction
/// (the statement timeout), and its neighbours are then applied each on its own, while the
/// lock is still held: one stuck delivery never fails or holds up the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_stuck_delivery_never_fails_its_group() {
    use clerk_sync::db::{Database, DatabaseUrl, PoolOptions};
    use clerk_sync::domain::{Event, MessageId};
    use clerk_sync::sync::{Outcome, SyncOptions};

    let test_db = TestDb::with_prisma_tables(Backend::Postgres).await;
    let options = PoolOptions {
        committers: 1,
        statement_timeout: Duration::from_secs(1),
        ..PoolOptions::default()
    };
    let db =
        Database::open(&DatabaseUrl::parse(&test_db.url).expect("url"), options).expect("open");
    db.migrate().await.expect("migrate");
    let apply = |id: String, body: String| {
        let db = db.clone();
        tokio::spawn(async move {
            let id = MessageId::parse(&id).expect("id");
            let event = Event::parse(body.as_bytes()).expect("event");
            clerk_sync::sync::ingest(&db, &id, &event, SyncOptions::default()).await
        })
    };
    let locked = ClerkUser::new("user_stuck", 1_000, "stuck@example.com");
    let first = apply("s0".into(), locked.created()).await.expect("task");
    assert_eq!(first.expect("apply"), Outcome::Applied);

    let held = test_db
        .hold("BEGIN; SELECT 1 FROM clerk_sync.users WHERE user_id = 'user_stuck' FOR UPDATE")
        .await;
    // The committer takes the first update alone and waits on the held row; the second, and
    // eight deliveries for other users, queue behind it and then go together.
    let mut newer = locked.clone();
    newer.updated_at += 1_000;
    let alone = apply("s1".into(), newer.updated());
    tokio::time::sleep(Duration::from_millis(200)).await;
    newer.updated_at += 1_000;
    let stuck = apply("s2".into(), newer.updated());
    let neighbours: Vec<_> = (0..8)
        .map(|i| {
            let user = ClerkUser::new(&format!("user_n{i}"), 1_000, &format!("n{i}@example.com"));
            apply(format!("n{i}"), user.created())
        })
        .collect();
    for task in neighbours {
        let outcome = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("a neighbour was held up by the stuck delivery")
            .expect("task");
        assert_eq!(outcome.expect("a neighbour failed"), Outcome::Applied);
    }
    assert!(
        !stuck.is_finished(),
        "the stuck delivery cannot have finished while its row is held"
    );
    assert!(
        test_db.users().await.len() >= 9,
        "the neighbours' rows are written while the lock is still held"
    );
    held.rollback().await;

    // Behind the lock, each timed out (a 503 for Svix to retry) or, released, was applied.
    for task in [alone, stuck] {
        match task.await.expect("task") {
            Ok(outcome) => assert_eq!(outcome, Outcome::Applied),
            Err(clerk_sync::db::DbError::Unavailable(_)) => {}
            Err(e) => panic!("unexpected: {e}"),
        }
    }
}

on_both_backends!(
    metrics_move_with_real_deliveries,
    a_body_over_the_limit_is_counted,
    every_response_carries_a_request_id,
    a_delivery_stuck_behind_a_lock_is_answered_503_within_the_deadline,
);
