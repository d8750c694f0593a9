//! Convergence: whatever the order, duplication and concurrency of Clerk's deliveries, the
//! User table ends as a simple model of the history says: the newest state of each user,
//! deleted users absent, each address held by its newest claimant.
//!
//! Histories are generated (sign-ups, edits, address changes, claims of an address another
//! user holds, two users exchanging addresses, a deleted user's address signed up again
//! under a new id, deletes) and delivered through the HTTP endpoint with real signatures,
//! in a random permutation with random duplicates, by several concurrent senders: on
//! PostgreSQL through three daemon instances sharing one database, on SQLite through one.
//! Failing cases are kept in `proptest-regressions/convergence.txt` and tried first.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{deleted, spawn_app_with, AppOptions, Backend, ClerkUser, TestApp, TestDb, T0};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use serde_json::json;

/// Cases per backend; each is a fresh history of up to 50 steps. A longer run:
/// `CLERK_SYNC_CONVERGENCE_CASES=500 scripts/test --test convergence -- --nocapture`.
const CASES: u32 = 32;
/// Addresses the users of one history compete for.
const ADDRESSES: usize = 4;
const NAMES: [&str; 3] = ["Ada", "Grace", "Edsger"];
const ROLES: [Option<&str>; 3] = [None, Some("admin"), Some("user")];

/// One step of a history, in Clerk's time order. User numbers pick among the users alive at
/// that point (modulo their count); steps that find nobody to act on are skipped.
#[derive(Debug, Clone)]
enum Step {
    /// A new user signs up with address `address` (`ADDRESSES`: with no email).
    SignUp {
        address: usize,
        name: usize,
        role: usize,
    },
    /// A user changes name and role.
    Edit {
        user: usize,
        name: usize,
        role: usize,
    },
    /// A user's primary address becomes `address`, which another user may hold.
    ChangeAddress { user: usize, address: usize },
    /// Two users exchange addresses (two updates, one after the other).
    Exchange { a: usize, b: usize },
    /// A user is deleted.
    Delete { user: usize },
    /// A new user signs up with the address a deleted user had.
    Resignup { deleted: usize, name: usize },
}

fn step() -> impl Strategy<Value = Step> {
    let sign_up =
        (0..=ADDRESSES, 0..NAMES.len(), 0..ROLES.len()).prop_map(|(address, name, role)| {
            Step::SignUp {
                address,
                name,
                role,
            }
        });
    prop_oneof![
        3 => sign_up,
        3 => (any::<usize>(), 0..NAMES.len(), 0..ROLES.len())
            .prop_map(|(user, name, role)| Step::Edit { user, name, role }),
        4 => (any::<usize>(), 0..=ADDRESSES)
            .prop_map(|(user, address)| Step::ChangeAddress { user, address }),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Step::Exchange { a, b }),
        2 => any::<usize>().prop_map(|user| Step::Delete { user }),
        2 => (any::<usize>(), 0..NAMES.len())
            .prop_map(|(deleted, name)| Step::Resignup { deleted, name }),
    ]
}

/// What was sent for one delivery.
#[derive(Debug, Clone)]
enum Sent {
    Upsert(ClerkUser),
    Delete(String),
}

/// One Svix message: its id, its body, and what it says.
#[derive(Debug, Clone)]
struct Delivery {
    id: String,
    body: String,
    sent: Sent,
}

/// Plays a history the way Clerk would emit it: one event per change, `updated_at`
/// increasing by a second each time (whole seconds: PostgreSQL's column keeps no more).
fn emit(prefix: &str, steps: &[Step]) -> Vec<Delivery> {
    let address = |i: usize| (i < ADDRESSES).then(|| format!("{prefix}a{i}@example.com"));
    let mut clock = T0;
    let mut users: Vec<ClerkUser> = Vec::new();
    let mut alive: Vec<usize> = Vec::new();
    let mut gone: Vec<usize> = Vec::new();
    let mut out: Vec<Delivery> = Vec::new();
    let push = |out: &mut Vec<Delivery>, sent: Sent| {
        let body = match &sent {
            Sent::Upsert(user) if user.created_at == user.updated_at => user.created(),
            Sent::Upsert(user) => user.updated(),
            Sent::Delete(id) => deleted(id),
        };
        out.push(Delivery {
            id: format!("msg_{prefix}{}", out.len()),
            body,
            sent,
        });
    };
    let set_address = |user: &mut ClerkUser, address: Option<String>| match address {
        Some(a) => {
            user.emails = vec![("idn_primary".into(), a)];
            user.primary = Some("idn_primary".into());
        }
        None => {
            user.emails.clear();
            user.primary = None;
        }
    };
    let sign_up = |users: &mut Vec<ClerkUser>,
                   alive: &mut Vec<usize>,
                   clock: i64,
                   address: Option<String>,
                   name: usize,
                   role: usize|
     -> ClerkUser {
        let id = format!("user_{prefix}u{}", users.len());
        let mut user = ClerkUser::new(&id, 0, "");
        user.created_at = clock;
        user.updated_at = clock;
        user.first_name = Some(NAMES[name].into());
        user.last_name = None;
        user.public_metadata = ROLES[role].map_or(json!({}), |r| json!({ "role": r }));
        set_address(&mut user, address);
        alive.push(users.len());
        users.push(user.clone());
        user
    };
    for step in steps {
        clock += 1_000;
        match *step {
            Step::SignUp {
                address: a,
                name,
                role,
            } => {
                let user = sign_up(&mut users, &mut alive, clock, address(a), name, role);
                push(&mut out, Sent::Upsert(user));
            }
            Step::Resignup { deleted, name } => {
                let Some(&old) = gone.get(deleted % gone.len().max(1)) else {
                    continue;
                };
                let Some((_, taken)) = users[old].emails.first().cloned() else {
                    continue;
                };
                let user = sign_up(&mut users, &mut alive, clock, Some(taken), name, 0);
                push(&mut out, Sent::Upsert(user));
            }
            Step::Edit { user, name, role } if !alive.is_empty() => {
                let u = &mut users[alive[user % alive.len()]];
                u.updated_at = clock;
                u.first_name = Some(NAMES[name].into());
                u.public_metadata = ROLES[role].map_or(json!({}), |r| json!({ "role": r }));
                push(&mut out, Sent::Upsert(u.clone()));
            }
            Step::ChangeAddress { user, address: a } if !alive.is_empty() => {
                let u = &mut users[alive[user % alive.len()]];
                u.updated_at = clock;
                set_address(u, address(a));
                push(&mut out, Sent::Upsert(u.clone()));
            }
            Step::Exchange { a, b } if alive.len() >= 2 => {
                let a = alive[a % alive.len()];
                let mut b = alive[b % alive.len()];
                if a == b {
                    b = alive[(alive.iter().position(|&x| x == a).unwrap_or(0) + 1) % alive.len()];
                }
                let (ea, eb) = (
                    users[a].emails.first().cloned(),
                    users[b].emails.first().cloned(),
                );
                set_address(&mut users[a], eb.map(|(_, e)| e));
                users[a].updated_at = clock;
                push(&mut out, Sent::Upsert(users[a].clone()));
                clock += 1_000;
                set_address(&mut users[b], ea.map(|(_, e)| e));
                users[b].updated_at = clock;
                push(&mut out, Sent::Upsert(users[b].clone()));
            }
            Step::Delete { user } if !alive.is_empty() => {
                let index = alive.remove(user % alive.len());
                gone.push(index);
                push(&mut out, Sent::Delete(users[index].id.clone()));
            }
            _ => {}
        }
    }
    out
}

/// A row as the model expects it: (name, mail_address, role, createdAt, updatedAt), dates
/// to the second as `YYYY-MM-DDTHH:MM:SS`.
type Row = (Option<String>, String, String, String, String);

fn date(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("date in range")
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string()
}

/// The reference model, written from the rules alone: a deleted user is absent; anyone
/// else is their newest version; an address goes to the claimant whose newest version is
/// newest (then the greater id); the others get `<id>@displaced.invalid`, and a user with
/// no email `<id>@no-email.invalid`; the role is the newest version's, else `USER`.
fn model(deliveries: &[Delivery]) -> BTreeMap<String, Row> {
    let mut newest: BTreeMap<String, ClerkUser> = BTreeMap::new();
    let mut deleted: Vec<String> = Vec::new();
    for delivery in deliveries {
        match &delivery.sent {
            Sent::Delete(id) => deleted.push(id.clone()),
            Sent::Upsert(user) => {
                let keep = newest
                    .get(&user.id)
                    .is_some_and(|known| known.updated_at >= user.updated_at);
                if !keep {
                    newest.insert(user.id.clone(), user.clone());
                }
            }
        }
    }
    newest.retain(|id, _| !deleted.contains(id));
    let claim = |u: &ClerkUser| u.emails.first().map(|(_, e)| e.clone());
    let mut holder: BTreeMap<String, (i64, String)> = BTreeMap::new();
    for user in newest.values() {
        if let Some(address) = claim(user) {
            let candidate = (user.updated_at, user.id.clone());
            let best = holder.entry(address).or_insert_with(|| candidate.clone());
            if candidate > *best {
                *best = candidate;
            }
        }
    }
    newest
        .values()
        .map(|user| {
            let address = match claim(user) {
                Some(a) if holder[&a].1 == user.id => a,
                Some(_) => format!("{}@displaced.invalid", user.id),
                None => format!("{}@no-email.invalid", user.id),
            };
            let role = match user.public_metadata.get("role").and_then(|r| r.as_str()) {
                Some(r) => r.to_ascii_uppercase(),
                None => "USER".into(),
            };
            let row = (
                user.first_name.clone(),
                address,
                role,
                date(user.created_at),
                date(user.updated_at),
            );
            (user.id.clone(), row)
        })
        .collect()
}

/// What one case sends: the history, the arrival order (a permutation with duplicates
/// inserted) and how many senders share it.
#[derive(Debug, Clone)]
struct Case {
    steps: Vec<Step>,
    order: Vec<usize>,
    senders: usize,
}

fn case() -> impl Strategy<Value = Case> {
    let first = (0..ADDRESSES, 0..NAMES.len()).prop_map(|(address, name)| Step::SignUp {
        address,
        name,
        role: 0,
    });
    (first, prop::collection::vec(step(), 0..50))
        .prop_map(|(first, mut rest)| {
            rest.insert(0, first);
            rest
        })
        .prop_flat_map(|steps| {
            let n = emit("x", &steps).len();
            let permutation = Just((0..n).collect::<Vec<_>>()).prop_shuffle();
            let duplicates = prop::collection::vec((0..n, 0..=n), 0..=n / 2 + 1);
            (Just(steps), permutation, duplicates, 1..=4usize)
        })
        .prop_map(|(steps, mut order, duplicates, senders)| {
            for (delivery, position) in duplicates {
                let at = position.min(order.len());
                order.insert(at, delivery);
            }
            Case {
                steps,
                order,
                senders,
            }
        })
}

/// What a run sent and found, for the summary line.
#[derive(Debug, Default)]
struct Tally {
    cases: usize,
    deliveries: usize,
    applied: usize,
    duplicate: usize,
    stale: usize,
    retried_after_503: usize,
    deleted_users: usize,
    displaced_rows: usize,
    no_email_rows: usize,
}

/// Svix's behaviour: a delivery is retried until it gets a 2xx. A 503 is a passing
/// failure; anything else ends the case as a failure. Returns (outcome, retries).
async fn deliver_until_accepted(
    app: &TestApp,
    delivery: &Delivery,
) -> Result<(String, usize), String> {
    let mut retries = 0;
    loop {
        let (status, outcome) = app.deliver_outcome(&delivery.id, &delivery.body).await;
        match status {
            200 if ["applied", "duplicate", "stale"].contains(&outcome.as_str()) => {
                return Ok((outcome, retries))
            }
            503 if retries < 20 => {
                retries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => return Err(format!("{}: {status} {outcome}", delivery.id)),
        }
    }
}

static CASE_NUMBER: AtomicUsize = AtomicUsize::new(0);

/// Runs one case against `apps` (all on one database). Every case uses its own ids and
/// addresses, so cases share the database without meeting.
async fn run_case(apps: &[TestApp], case: &Case, tally: &mut Tally) -> Result<(), TestCaseError> {
    let prefix = format!("c{}_", CASE_NUMBER.fetch_add(1, Ordering::SeqCst));
    let deliveries = emit(&prefix, &case.steps);
    let senders = (0..case.senders).map(|s| {
        let app = &apps[s % apps.len()];
        let mine: Vec<&Delivery> = case
            .order
            .iter()
            .skip(s)
            .step_by(case.senders)
            .map(|&i| &deliveries[i])
            .collect();
        async move {
            let mut answers = Vec::new();
            for delivery in mine {
                answers.push(deliver_until_accepted(app, delivery).await?);
            }
            Ok::<_, String>(answers)
        }
    });
    for result in futures_util::future::join_all(senders).await {
        for (outcome, retries) in result.map_err(TestCaseError::fail)? {
            tally.deliveries += 1;
            tally.retried_after_503 += retries;
            match outcome.as_str() {
                "applied" => tally.applied += 1,
                "duplicate" => tally.duplicate += 1,
                _ => tally.stale += 1,
            }
        }
    }

    let db = &apps[0].db;
    let actual: BTreeMap<String, Row> = db
        .users()
        .await
        .into_iter()
        .filter(|row| row.id.starts_with(&format!("user_{prefix}")))
        .map(|row| {
            let second = |d: &str| d.chars().take(19).collect::<String>();
            let cells = (
                row.name,
                row.mail_address,
                row.role,
                second(&row.created_at),
                second(&row.updated_at),
            );
            (row.id, cells)
        })
        .collect();
    let expected = model(&deliveries);
    prop_assert_eq!(&actual, &expected, "case {}", prefix);

    // Every delivery is recorded once, with its outcome: nothing half-applied.
    let recorded = db
        .number(&format!(
            "SELECT count(*) AS n FROM {} WHERE svix_id LIKE 'msg_{prefix}%' AND outcome <> 'pending'",
            db.own_table("deliveries")
        ))
        .await;
    prop_assert_eq!(recorded, deliveries.len() as i64);

    tally.cases += 1;
    tally.deleted_users += deliveries
        .iter()
        .filter(|d| matches!(d.sent, Sent::Delete(_)))
        .count();
    tally.displaced_rows += expected
        .values()
        .filter(|r| r.1.ends_with("@displaced.invalid"))
        .count();
    tally.no_email_rows += expected
        .values()
        .filter(|r| r.1.ends_with("@no-email.invalid"))
        .count();
    Ok(())
}

fn converges(backend: Backend, instances: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let secret = common::new_secret();
    let options = AppOptions {
        secrets: vec![secret],
        ..AppOptions::default()
    };
    let apps: Vec<TestApp> = runtime.block_on(async {
        let db = TestDb::with_prisma_tables(backend).await;
        let (url, direct) = (db.url.clone(), db.direct.clone());
        let mut apps = vec![spawn_app_with(db, options.clone()).await];
        for _ in 1..instances {
            let shared = TestDb {
                backend,
                url: url.clone(),
                direct: direct.clone(),
                _dir: None,
            };
            apps.push(spawn_app_with(shared, options.clone()).await);
        }
        apps
    });

    let cases = std::env::var("CLERK_SYNC_CONVERGENCE_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(CASES);
    let config = Config {
        cases,
        max_shrink_time: 120_000,
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/proptest-regressions/convergence.txt"
        )))),
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let tally = std::cell::RefCell::new(Tally::default());
    let result = runner.run(&case(), |case| {
        runtime.block_on(run_case(&apps, &case, &mut tally.borrow_mut()))
    });
    println!(
        "{backend:?} through {instances} instance(s): {:?}",
        tally.borrow()
    );
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

#[test]
fn histories_converge_on_sqlite_through_one_instance() {
    converges(Backend::Sqlite, 1);
}

#[test]
fn histories_converge_on_postgres_through_three_instances_sharing_the_database() {
    converges(Backend::Postgres, 3);
}

#[test]
fn histories_converge_through_a_transaction_pooler_with_two_instances() {
    converges(Backend::Pooled, 2);
}
