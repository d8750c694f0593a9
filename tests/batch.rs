//! A batch (bulk replay, backfill) decides most deliveries together, in one transaction;
//! it must give exactly what applying the same deliveries one by one gives: the same
//! outcome for each, the same rows, the same bookkeeping. A property test over histories
//! built to collide (few addresses, many users, duplicates, deletes, rows the application
//! wrote itself), on both backends, in batches of random sizes — and on PostgreSQL once more
//! with the whole history in one batch padded past 64 users by users of their own, so that
//! the executors' set-based shape decides every delivery (unpadded, small batches take their
//! few-rows shape, larger ones the set-based one).

mod common;

use common::{deleted, Backend, ClerkUser, TestDb};

use clerk_sync::db::{Database, DatabaseUrl, PoolOptions};
use clerk_sync::domain::{Event, MessageId};
use clerk_sync::sync::{Outcome, SyncOptions};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use serde_json::json;

/// One delivery of a generated history.
#[derive(Debug, Clone)]
enum Step {
    Upsert {
        user: u8,
        version: u8,
        email: Option<u8>,
        role: Option<bool>,
        name: u8,
    },
    Delete {
        user: u8,
    },
    /// The same `svix-id` (and body) as an earlier step, sent again.
    Repeat(usize),
}

#[derive(Debug, Clone)]
struct Case {
    steps: Vec<Step>,
    /// Rows the application wrote itself before any delivery: (user, address).
    app_rows: Vec<(u8, u8)>,
    batch_size: usize,
    skip_users_without_email: bool,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0..6u8, 1..8u8, proptest::option::weighted(0.85, 0..4u8),
              proptest::option::weighted(0.3, any::<bool>()), 0..3u8)
            .prop_map(|(user, version, email, role, name)| Step::Upsert { user, version, email, role, name }),
        1 => (0..6u8).prop_map(|user| Step::Delete { user }),
        1 => (0..64usize).prop_map(Step::Repeat),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        proptest::collection::vec(step(), 1..40),
        proptest::collection::vec((6..8u8, 0..4u8), 0..2),
        1..24usize,
        proptest::bool::weighted(0.2),
    )
        .prop_map(|(steps, app_rows, batch_size, skip)| Case {
            steps,
            app_rows,
            batch_size,
            skip_users_without_email: skip,
        })
}

fn user_id(user: u8) -> String {
    format!("user_p{user}")
}

fn address(n: u8) -> String {
    format!("shared{n}@example.com")
}

/// The deliveries of a case, with their ids.
fn deliveries(case: &Case) -> Vec<(MessageId, Event)> {
    let mut out: Vec<(MessageId, Event)> = Vec::new();
    for (i, step) in case.steps.iter().enumerate() {
        let body = match step {
            Step::Repeat(k) => {
                if out.is_empty() {
                    continue;
                }
                let again = out[k % out.len()].clone();
                out.push(again);
                continue;
            }
            Step::Delete { user } => deleted(&user_id(*user)),
            Step::Upsert {
                user,
                version,
                email,
                role,
                name,
            } => {
                let mut u = ClerkUser::new(
                    &user_id(*user),
                    i64::from(*version) * 1_000,
                    &address(email.unwrap_or(0)),
                );
                if email.is_none() {
                    u = u.without_email();
                }
                u.first_name = Some(format!("Name{name}"));
                u.public_metadata = match role {
                    Some(true) => json!({"role": "admin"}),
                    Some(false) => json!({"role": "user"}),
                    None => json!({}),
                };
                u.updated()
            }
        };
        let id = MessageId::parse(&format!("msg_{i}")).expect("id");
        let event = Event::parse(body.as_bytes()).expect("event");
        out.push((id, event));
    }
    out
}

async fn fresh(backend: Backend, case: &Case) -> (TestDb, Database) {
    let db = TestDb::with_prisma_tables(backend).await;
    let when = match backend {
        Backend::Sqlite => "'2024-05-01T12:00:03.000+00:00'",
        Backend::Postgres | Backend::Pooled => "'2024-05-01 12:00:03'",
    };
    let mut taken = Vec::new();
    for (user, n) in &case.app_rows {
        if taken.contains(n) {
            continue;
        }
        taken.push(*n);
        db.exec(&format!(
            r#"INSERT INTO "User" (id, name, mail_address, role, "createdAt", "updatedAt")
               VALUES ('{}', 'App', '{}', 'ADMIN', {when}, {when})"#,
            user_id(*user),
            address(*n)
        ))
        .await;
    }
    let url = DatabaseUrl::parse(&db.url).expect("url");
    let database = Database::open(&url, PoolOptions::default()).expect("open");
    database.migrate().await.expect("migrate");
    (db, database)
}

/// Bookkeeping as comparable text (deletion times differ: only whether there is one).
async fn bookkeeping(db: &TestDb) -> Vec<String> {
    let table = db.own_table("users");
    let mut rows = Vec::new();
    for user in 0..8u8 {
        let id = user_id(user);
        let n = db
            .number(&format!(
                "SELECT count(*) AS n FROM {table} WHERE user_id = '{id}'"
            ))
            .await;
        if n == 0 {
            continue;
        }
        let version = db
            .number(&format!(
                "SELECT version AS n FROM {table} WHERE user_id = '{id}'"
            ))
            .await;
        let flags = db
            .number(&format!(
                "SELECT CAST((CASE WHEN deleted_at IS NULL THEN 0 ELSE 1 END)
                      + (CASE WHEN delete_pending THEN 2 ELSE 0 END)
                      + (CASE WHEN role_from_webhook THEN 4 ELSE 0 END) AS BIGINT) AS n
                   FROM {table} WHERE user_id = '{id}'"
            ))
            .await;
        // Claims are `sharedN@example.com`: N, or -1 for none.
        let claim = db
            .number(&format!(
                "SELECT COALESCE(CAST(substr(email, 7, 1) AS BIGINT), -1) AS n
                   FROM {table} WHERE user_id = '{id}'"
            ))
            .await;
        rows.push(format!("{id} v{version} flags{flags} claim{claim}"));
    }
    rows
}

/// Deliveries recorded, by outcome.
async fn recorded(db: &TestDb) -> Vec<i64> {
    let table = db.own_table("deliveries");
    let mut counts = Vec::new();
    for outcome in ["applied", "stale", "ignored", "deferred", "pending"] {
        let sql = format!("SELECT count(*) AS n FROM {table} WHERE outcome = '{outcome}'");
        counts.push(db.number(&sql).await);
    }
    counts
}

/// Users of their own (their own addresses) that pad the `chunk`-th batch: `count` new users.
fn padding(chunk: usize, count: usize) -> Vec<(MessageId, Event)> {
    (0..count)
        .map(|j| {
            let user = ClerkUser::new(
                &format!("user_f{chunk}x{j}"),
                1_000,
                &format!("f{chunk}x{j}@example.com"),
            );
            let id = MessageId::parse(&format!("msg_f{chunk}x{j}")).expect("id");
            let event = Event::parse(user.created().as_bytes()).expect("event");
            (id, event)
        })
        .collect()
}

/// Compares batches with one by one; `pad` users of their own ahead of every batch (and
/// applied one by one first on the other side).
async fn check(backend: Backend, case: Case, pad: usize) -> Result<(), TestCaseError> {
    let batch = deliveries(&case);
    let options = SyncOptions {
        skip_users_without_email: case.skip_users_without_email,
        ..SyncOptions::default()
    };
    // Padded, the whole history is one batch (padding each of many small batches would cost
    // more than it shows).
    let size = if pad > 0 {
        batch.len().max(1)
    } else {
        case.batch_size
    };
    let chunks: Vec<_> = batch.chunks(size).collect();

    let (one_db, one) = fresh(backend, &case).await;
    for k in 0..chunks.len() {
        for (id, event) in &padding(k, pad) {
            clerk_sync::sync::ingest(&one, id, event, options)
                .await
                .expect("apply padding");
        }
    }
    let mut one_by_one: Vec<Outcome> = Vec::new();
    for (id, event) in &batch {
        one_by_one.push(
            clerk_sync::sync::ingest(&one, id, event, options)
                .await
                .expect("apply"),
        );
    }

    let (together_db, together) = fresh(backend, &case).await;
    let mut batched: Vec<Outcome> = Vec::new();
    for (k, chunk) in chunks.iter().enumerate() {
        let mut padded = padding(k, pad);
        padded.extend_from_slice(chunk);
        let outcomes = clerk_sync::sync::apply_batch(&together, padded.into(), options)
            .await
            .expect("apply batch");
        batched.extend(outcomes.into_iter().skip(pad));
    }

    prop_assert_eq!(&batched, &one_by_one, "outcomes differ");
    prop_assert_eq!(
        together_db.users().await,
        one_db.users().await,
        "rows differ"
    );
    prop_assert_eq!(
        bookkeeping(&together_db).await,
        bookkeeping(&one_db).await,
        "bookkeeping differs"
    );
    prop_assert_eq!(recorded(&together_db).await, recorded(&one_db).await);
    Ok(())
}

fn run(backend: Backend, pad: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let config = Config {
        cases: 24,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&case(), |case| runtime.block_on(check(backend, case, pad)));
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn a_batch_decides_exactly_as_one_by_one_on_sqlite() {
    run(Backend::Sqlite, 0);
}

#[test]
fn a_batch_decides_exactly_as_one_by_one_on_postgres() {
    run(Backend::Postgres, 0);
}

#[test]
fn a_batch_of_more_than_64_users_decides_exactly_as_one_by_one_on_postgres() {
    run(Backend::Postgres, 65);
}

/// Batches racing each other and the daemon's group commit over the same users, half of
/// them new, on PostgreSQL (where they run at once; SQLite has one writer). Every batch
/// takes its users' rows in the one global order before anything else, so none may fail
/// (a deadlock would fail it); every delivery ends applied or stale, recorded once; each
/// user's newest version is applied and is what its row holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_and_deliveries_racing_over_the_same_users_converge() {
    const USERS: usize = 40;
    const WRITERS: usize = 4;
    const ROUNDS: usize = 3;
    let db = TestDb::with_prisma_tables(Backend::Postgres).await;
    let url = DatabaseUrl::parse(&db.url).expect("url");
    let database = Database::open(&url, PoolOptions::default()).expect("open");
    database.migrate().await.expect("migrate");
    let options = SyncOptions::default();
    let id = |round: usize, u: usize| format!("user_race{round}_{u:02}");

    for round in 0..ROUNDS {
        // Every other user exists already, so that each batch both locks and makes rows,
        // their ids interleaved.
        for u in (0..USERS).step_by(2) {
            let user = ClerkUser::new(&id(round, u), 0, &format!("race{round}_{u}@example.com"));
            let event = Event::parse(user.created().as_bytes()).expect("event");
            let mid = MessageId::parse(&format!("race{round}_seed_{u}")).expect("id");
            clerk_sync::sync::ingest(&database, &mid, &event, options)
                .await
                .expect("seed");
        }
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(WRITERS));
        let mut writers = tokio::task::JoinSet::new();
        for writer in 0..WRITERS {
            // Each writer has a version of every user; the newest of each user is a
            // different writer's.
            let deliveries: Vec<(MessageId, Event)> = (0..USERS)
                .map(|u| {
                    let version = 1_000 * (1 + (u + writer) % WRITERS) as i64;
                    let user = ClerkUser::new(
                        &id(round, u),
                        version,
                        &format!("race{round}_{u}@example.com"),
                    );
                    let mid = MessageId::parse(&format!("race{round}_{writer}_{u}")).expect("id");
                    (mid, Event::parse(user.updated().as_bytes()).expect("event"))
                })
                .collect();
            let (database, start) = (database.clone(), start.clone());
            writers.spawn(async move {
                start.wait().await;
                let outcomes = if writer % 2 == 0 {
                    // One transaction for the whole batch.
                    match clerk_sync::sync::apply_batch(&database, deliveries.into(), options).await
                    {
                        Ok(all) => all,
                        Err(failure) => panic!("batch of writer {writer}: {}", failure.error),
                    }
                } else {
                    // The daemon's path: waiting deliveries are committed together.
                    let mut outcomes = Vec::new();
                    for (mid, event) in &deliveries {
                        outcomes.push(
                            clerk_sync::sync::ingest(&database, mid, event, options)
                                .await
                                .expect("apply"),
                        );
                    }
                    outcomes
                };
                (writer, outcomes)
            });
        }
        while let Some(done) = writers.join_next().await {
            let (writer, outcomes) = done.expect("writer");
            assert_eq!(outcomes.len(), USERS);
            for (u, outcome) in outcomes.iter().enumerate() {
                let newest = (u + writer) % WRITERS == WRITERS - 1;
                match outcome {
                    Outcome::Applied => {}
                    Outcome::Stale if !newest => {}
                    other => panic!("writer {writer}, user {u} (newest: {newest}): {other:?}"),
                }
            }
        }
    }

    let newest = "2024-05-01T12:00:04";
    let rows = db.users().await;
    assert_eq!(rows.len(), USERS * ROUNDS);
    let behind: Vec<_> = rows.iter().filter(|r| r.updated_at != newest).collect();
    assert!(
        behind.is_empty(),
        "rows not at their newest version: {behind:?}"
    );
    let table = db.own_table("users");
    let newest_version = common::T0 + 1_000 * WRITERS as i64;
    let sql = format!("SELECT count(*) AS n FROM {table} WHERE version = {newest_version}");
    assert_eq!(db.number(&sql).await, (USERS * ROUNDS) as i64);
    let counts = recorded(&db).await;
    let seeded = (USERS / 2 * ROUNDS) as i64;
    assert_eq!(
        counts.iter().sum::<i64>(),
        (USERS * WRITERS * ROUNDS) as i64 + seeded
    );
    assert_eq!(counts[4], 0, "a delivery was left pending: {counts:?}");
}

/// Another transaction takes a row of user 1 (`first`) and then wants one of user 2
/// (`then`), as a single delivery or a group does, while a batch of users 1 and 2 runs
/// (`existing` has a row before). The batch must wait for user 1 holding nothing, then
/// apply both.
async fn a_batch_waits_for_its_first_user_holding_nothing(existing: u8, first: &str, then: &str) {
    let db = TestDb::with_prisma_tables(Backend::Postgres).await;
    let url = DatabaseUrl::parse(&db.url).expect("url");
    let database = Database::open(&url, PoolOptions::default()).expect("open");
    database.migrate().await.expect("migrate");
    let options = SyncOptions::default();
    let delivery = |n: u8, version: i64| {
        let user = ClerkUser::new(
            &format!("user_order{n}"),
            version,
            &format!("order{n}@example.com"),
        );
        let id = MessageId::parse(&format!("order{n}_{version}")).expect("id");
        (id, Event::parse(user.updated().as_bytes()).expect("event"))
    };
    let (id, event) = delivery(existing, 0);
    clerk_sync::sync::ingest(&database, &id, &event, options)
        .await
        .expect("the existing user");

    let table = db.own_table("users");
    let mut other = db
        .hold(&format!("BEGIN; {}", first.replace("{table}", &table)))
        .await;
    let batch: Vec<(MessageId, Event)> = vec![delivery(1, 1_000), delivery(2, 1_000)];
    let running = start_waiting(&db, &database, batch, options).await;
    other
        .run(&format!(
            "SET lock_timeout = '10s'; {}; COMMIT",
            then.replace("{table}", &table)
        ))
        .await
        .expect("the other transaction gets user 2's row and commits");
    let outcomes = running
        .await
        .expect("task")
        .unwrap_or_else(|failure| panic!("the batch failed: {}", failure.error));
    assert_eq!(outcomes, vec![Outcome::Applied, Outcome::Applied]);
    let rows = db.users().await;
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter().all(|r| r.updated_at == "2024-05-01T12:00:01"),
        "{rows:?}"
    );
}

/// Starts `batch` on a task of its own; returns once it waits for a lock (in this test's
/// database: tests run side by side).
async fn start_waiting(
    db: &TestDb,
    database: &Database,
    batch: Vec<(MessageId, Event)>,
    options: SyncOptions,
) -> tokio::task::JoinHandle<Result<Vec<Outcome>, clerk_sync::sync::BatchFailure>> {
    let running = {
        let database = database.clone();
        tokio::spawn(async move {
            clerk_sync::sync::apply_batch(&database, batch.into(), options).await
        })
    };
    let waiting = "SELECT count(*) AS n FROM pg_stat_activity
                    WHERE datname = current_database() AND wait_event_type = 'Lock'";
    let mut waited = 0;
    while db.number(waiting).await == 0 {
        assert!(waited < 1_000, "the batch never waited");
        waited += 1;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    running
}

const MAKE_USER_1: &str =
    "INSERT INTO {table} (user_id, version, digest) VALUES ('user_order1', -1, '')";
const MAKE_USER_2: &str =
    "INSERT INTO {table} (user_id, version, digest) VALUES ('user_order2', -1, '')";
const LOCK_USER_1: &str = "SELECT 1 FROM {table} WHERE user_id = 'user_order1' FOR UPDATE";
const LOCK_USER_2: &str = "SELECT 1 FROM {table} WHERE user_id = 'user_order2' FOR UPDATE";

/// Deadlocked a batch that locked the rows that exist before making the missing ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_waiting_for_a_new_users_row_holds_nothing_yet() {
    a_batch_waits_for_its_first_user_holding_nothing(2, MAKE_USER_1, LOCK_USER_2).await;
}

/// Deadlocked a batch that made the missing rows before locking the ones that exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_waiting_for_an_existing_users_row_holds_nothing_yet() {
    a_batch_waits_for_its_first_user_holding_nothing(1, LOCK_USER_1, MAKE_USER_2).await;
}

/// A bulk batch (replay, backfill: more users than a group commit holds) reaches the tables by
/// key however large they have grown since they were last analyzed — as during a backfill,
/// which autovacuum does not get to analyze while it runs. Free to choose, the planner read
/// both tables whole for such a batch once it judged that cheaper than an index probe per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_batch_reaches_grown_unanalyzed_tables_by_key() {
    // Arrange: the seed's tables grown to 20,000 rows each, never analyzed; one pool connection
    let db = TestDb::with_prisma_tables(Backend::Postgres).await;
    let url = DatabaseUrl::parse(&db.url).expect("url");
    let one = PoolOptions {
        max_connections: 1,
        ..PoolOptions::default()
    };
    let database = Database::open(&url, one).expect("open");
    database.migrate().await.expect("migrate");
    db.exec(
        r#"ALTER TABLE "User" SET (autovacuum_enabled = false);
           ALTER TABLE clerk_sync.users SET (autovacuum_enabled = false);
           INSERT INTO "User" (id, name, mail_address, role, "createdAt", "updatedAt")
             SELECT 'user_g' || g, 'Grown', 'g' || g || '@example.com', 'USER', now(), now()
               FROM generate_series(1, 20000) g;
           INSERT INTO clerk_sync.users (user_id, version, digest, email)
             SELECT 'user_g' || g, 1, 'd', 'g' || g || '@example.com'
               FROM generate_series(1, 20000) g"#,
    )
    .await;

    // Act: 200 deliveries, half new users, half newer versions of grown ones
    let batch: Vec<(MessageId, Event)> = (0..200)
        .map(|i| {
            let user = if i % 2 == 0 {
                format!("user_new{i}")
            } else {
                format!("user_g{i}")
            };
            let body = ClerkUser::new(&user, 5_000, &format!("b{i}@example.com")).updated();
            let id = MessageId::parse(&format!("msg_bulk{i}")).expect("id");
            (id, Event::parse(body.as_bytes()).expect("event"))
        })
        .collect();
    let outcomes = clerk_sync::sync::apply_batch(&database, batch.into(), SyncOptions::default())
        .await
        .expect("apply batch");

    // Assert: every delivery applied, and neither table read whole (the pool's connection's
    // counts are flushed as it ends)
    assert!(
        outcomes.iter().all(|o| *o == Outcome::Applied),
        "{outcomes:?}"
    );
    drop(database);
    let others = "SELECT count(*) AS n FROM pg_stat_activity \
                  WHERE datname = current_database() AND pid <> pg_backend_pid()";
    let mut ended = false;
    for _ in 0..100 {
        if db.number(others).await == 0 {
            ended = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ended, "the pool's connection did not end");
    for table in ["\"User\"", "clerk_sync.users"] {
        let read = db
            .number(&format!(
                "SELECT COALESCE(seq_tup_read, 0) AS n FROM pg_stat_all_tables \
                  WHERE relid = '{table}'::regclass"
            ))
            .await;
        assert!(
            read < 20_000,
            "{table}: {read} rows read by sequential scans"
        );
    }
    assert_eq!(
        db.number("SELECT count(*) AS n FROM \"User\" WHERE mail_address LIKE 'b%@example.com'")
            .await,
        200
    );
}

/// A bulk batch finds its users' rows before it locks the addresses they hold, and another
/// writer holding one of those addresses may give such a row a placeholder meanwhile. The
/// batch must plan from the row as it is once it holds the address: here user X's row was
/// given a placeholder for user Y while the batch waited, and X's newer claim takes the
/// address back (as its row, not a second one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_batch_plans_from_a_row_displaced_while_it_waited_for_the_address() {
    // Arrange: X's row holds the address; another transaction holds the address's lock
    let db = TestDb::with_prisma_tables(Backend::Postgres).await;
    let url = DatabaseUrl::parse(&db.url).expect("url");
    let database = Database::open(&url, PoolOptions::default()).expect("open");
    database.migrate().await.expect("migrate");
    let options = SyncOptions::default();
    let address = "shared@example.com";
    let seed = ClerkUser::new("user_dispx", 0, address).created();
    let id = MessageId::parse("disp_seed").expect("id");
    clerk_sync::sync::ingest(
        &database,
        &id,
        &Event::parse(seed.as_bytes()).expect("event"),
        options,
    )
    .await
    .expect("user X");
    let mut other = db
        .hold(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock(hashtextextended('{address}', 7))"
        ))
        .await;

    // Act: a bulk batch (X's newer version and 70 new users) waits for the address; the
    // other transaction gives X's row a placeholder, gives the address to Y, commits
    let mut batch: Vec<(MessageId, Event)> = (0..70)
        .map(|i| {
            let body = ClerkUser::new(&format!("user_pad{i}"), 0, &format!("pad{i}@example.com"));
            let id = MessageId::parse(&format!("disp_pad{i}")).expect("id");
            (id, Event::parse(body.created().as_bytes()).expect("event"))
        })
        .collect();
    let newer = ClerkUser::new("user_dispx", 5_000, address).updated();
    batch.push((
        MessageId::parse("disp_x").expect("id"),
        Event::parse(newer.as_bytes()).expect("event"),
    ));
    let running = start_waiting(&db, &database, batch, options).await;
    let table = db.own_table("users");
    other
        .run(&format!(
            r#"UPDATE "User" SET mail_address = 'user_dispx@displaced.invalid'
                WHERE id = 'user_dispx';
               INSERT INTO "User" (id, name, mail_address, role, "createdAt", "updatedAt")
               VALUES ('user_dispy', 'Y', '{address}', 'USER', now(), now());
               INSERT INTO {table} (user_id, version, digest, email)
               VALUES ('user_dispy', 1, 'y', '{address}');
               COMMIT"#
        ))
        .await
        .expect("the other writer moves the address and commits");

    // Assert: every delivery applied; X's row holds the address again, Y's the placeholder
    let outcomes = running
        .await
        .expect("task")
        .unwrap_or_else(|failure| panic!("the batch failed: {}", failure.error));
    assert!(
        outcomes.iter().all(|o| *o == Outcome::Applied),
        "{outcomes:?}"
    );
    let rows = db.users().await;
    let holder = |id: &str| {
        rows.iter()
            .find(|r| r.id == id)
            .map(|r| r.mail_address.as_str())
            .unwrap_or_else(|| panic!("no row for {id}: {rows:?}"))
    };
    assert_eq!(holder("user_dispx"), address);
    assert_eq!(holder("user_dispy"), "user_dispy@displaced.invalid");
    assert_eq!(rows.len(), 72);
}
