//! A batch (bulk replay, backfill) decides most deliveries together, in one transaction;
//! it must give exactly what applying the same deliveries one by one gives: the same
//! outcome for each, the same rows, the same bookkeeping. A property test over histories
//! built to collide (few addresses, many users, duplicates, deletes, rows the application
//! wrote itself), on both backends, in batches of random sizes.

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
        Backend::Postgres => "'2024-05-01 12:00:03'",
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

async fn check(backend: Backend, case: Case) -> Result<(), TestCaseError> {
    let batch = deliveries(&case);
    let options = SyncOptions {
        skip_users_without_email: case.skip_users_without_email,
    };

    let (one_db, one) = fresh(backend, &case).await;
    let mut one_by_one: Vec<Outcome> = Vec::new();
    for (id, event) in &batch {
        one_by_one.push(one.apply(id, event, options).await.expect("apply"));
    }

    let (together_db, together) = fresh(backend, &case).await;
    let mut batched: Vec<Outcome> = Vec::new();
    for chunk in batch.chunks(case.batch_size) {
        batched.extend(
            together
                .apply_batch(chunk.into(), options)
                .await
                .expect("apply batch"),
        );
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

fn run(backend: Backend) {
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
    let result = runner.run(&case(), |case| runtime.block_on(check(backend, case)));
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn a_batch_decides_exactly_as_one_by_one_on_sqlite() {
    run(Backend::Sqlite);
}

#[test]
fn a_batch_decides_exactly_as_one_by_one_on_postgres() {
    run(Backend::Postgres);
}

/// Batches racing single deliveries and each other to make the same new users, on
/// PostgreSQL (where they run at once; SQLite has one writer): every delivery ends applied
/// or stale, recorded once, and every user at its newest version. A batch that loses a
/// race is applied one by one after what it committed, as replay and backfill do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_and_deliveries_racing_to_make_the_same_users_converge() {
    const USERS: usize = 40;
    const WRITERS: usize = 4;
    const ROUNDS: usize = 3;
    let db = TestDb::with_prisma_tables(Backend::Postgres).await;
    let url = DatabaseUrl::parse(&db.url).expect("url");
    let database = Database::open(&url, PoolOptions::default()).expect("open");
    database.migrate().await.expect("migrate");
    let options = SyncOptions::default();

    for round in 0..ROUNDS {
        let mut writers = tokio::task::JoinSet::new();
        for writer in 0..WRITERS {
            // Each writer has a version of every user; the newest of each user is a
            // different writer's.
            let deliveries: Vec<(MessageId, Event)> = (0..USERS)
                .map(|u| {
                    let version = 1_000 * (1 + (u + writer) % WRITERS) as i64;
                    let user = ClerkUser::new(
                        &format!("user_race{round}_{u}"),
                        version,
                        &format!("race{round}_{u}@example.com"),
                    );
                    let id = MessageId::parse(&format!("race{round}_{writer}_{u}")).expect("id");
                    (id, Event::parse(user.updated().as_bytes()).expect("event"))
                })
                .collect();
            let database = database.clone();
            writers.spawn(async move {
                let mut outcomes = Vec::new();
                if writer % 2 == 0 {
                    match database
                        .apply_batch(deliveries.clone().into(), options)
                        .await
                    {
                        Ok(all) => return all,
                        Err(failure) => outcomes = failure.decided,
                    }
                }
                for (id, event) in &deliveries[outcomes.len()..] {
                    let mut tries = 0;
                    let outcome = loop {
                        match database.apply(id, event, options).await {
                            Ok(outcome) => break outcome,
                            Err(e) if tries < 5 => {
                                tries += 1;
                                eprintln!("retrying {id:?}: {e}");
                            }
                            Err(e) => panic!("{id:?}: {e}"),
                        }
                    };
                    outcomes.push(outcome);
                }
                outcomes
            });
        }
        while let Some(outcomes) = writers.join_next().await {
            let outcomes = outcomes.expect("writer");
            assert_eq!(outcomes.len(), USERS);
            assert!(
                outcomes
                    .iter()
                    .all(|o| matches!(o, Outcome::Applied | Outcome::Stale)),
                "{outcomes:?}"
            );
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
    assert_eq!(
        counts.iter().sum::<i64>(),
        (USERS * WRITERS * ROUNDS) as i64
    );
    assert_eq!(counts[4], 0, "a delivery was left pending: {counts:?}");
}
