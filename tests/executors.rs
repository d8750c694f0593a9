//! The lone executors of migration 17 (`clerk_sync.lock_and_read_one`,
//! `clerk_sync.write_one`) must do, for a lone unit of work, exactly what the few-rows shape
//! of `clerk_sync.lock_and_read` and `clerk_sync.write_plan` (migration 16) does: the same
//! locks, the same snapshot, the same writes, the same errors. Both are called on the same
//! random small state (a few users, bookkeeping with versions, addresses, tombstones and
//! pending deletes; rows holding addresses out of a small pool, some without bookkeeping;
//! recorded deliveries), each in a transaction of its own that is rolled back, and compared:
//! the snapshot as sets (its addresses in order: the order they are locked in), the advisory
//! locks held, and the tables as the call leaves them. A second test makes the user's
//! bookkeeping row change under the read — made by another writer meanwhile, or updated by one
//! holding its lock — where the lone read reads that row with its lock instead of again later.
//! A third reads the same random states through the larger shapes of migration 19 (a group
//! commit's, by key on generic plans; a bulk batch's, planned per call), the request padded
//! with new users without addresses, and compares them, pads aside, with the few-rows shape.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use clerk_sync::db::{Database, DatabaseUrl, PoolOptions};
use common::{Backend, TestDb};
use diesel::result::Error as DieselError;
use diesel::sql_types::{Array, BigInt, Bool, Integer, Nullable, Text, Timestamp};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// Random states compared (each: one read and one write per shape).
const CASES: usize = 600;
/// The seed; `CLERK_SYNC_EXECUTORS_SEED` replays another.
const SEED: u64 = 0x5eed_0017;

const USERS: [&str; 5] = ["user_a", "user_b", "user_c", "user_d", "user_e"];
/// In byte order `B@` < `_@` < `a@` < `b@` < `c@`: an order a collation could change.
const ADDRESSES: [&str; 5] = ["a@x.test", "B@x.test", "b@x.test", "_@x.test", "c@x.test"];
const IDS: [&str; 3] = ["msg_0", "msg_1", "msg_2"];

#[derive(Debug, Clone)]
struct Bookkeeping {
    user: String,
    version: i64,
    digest: String,
    email: Option<String>,
    deleted: bool,
    pending: bool,
    attempted: bool,
    role: bool,
}

#[derive(Debug, Clone)]
struct Row {
    id: String,
    name: Option<String>,
    address: String,
    role: &'static str,
    created: String,
    updated: String,
}

#[derive(Debug, Clone)]
struct State {
    bookkeeping: Vec<Bookkeeping>,
    rows: Vec<Row>,
    recorded: Vec<String>,
}

/// A lone request: one user, at most one claim and one delivery id.
#[derive(Debug, Clone)]
struct Request {
    user: String,
    version: i64,
    digest: String,
    email: Option<String>,
    role: bool,
    claim: Option<String>,
    id: Option<String>,
}

#[derive(Debug, Clone)]
struct BookkeepingWrite {
    user: String,
    version: i64,
    digest: String,
    email: Option<String>,
    role: bool,
    tombstone: bool,
    attempted: bool,
}

#[derive(Debug, Clone)]
struct RowWrite {
    id: String,
    name: Option<String>,
    address: String,
    role: Option<String>,
    created: NaiveDateTime,
    updated: NaiveDateTime,
    new: bool,
}

#[derive(Debug, Clone)]
struct RecordWrite {
    id: String,
    event_type: String,
    user: Option<String>,
    outcome: String,
}

/// A lone plan: at most one write of each kind, nothing vacated, moved or deleted.
#[derive(Debug, Clone)]
struct Plan {
    bookkeeping: Option<BookkeepingWrite>,
    row: Option<RowWrite>,
    record: Option<RecordWrite>,
}

fn pick<'a>(rng: &mut StdRng, from: &[&'a str]) -> &'a str {
    from[rng.gen_range(0..from.len())]
}

fn maybe(rng: &mut StdRng, p: f64, from: &[&str]) -> Option<String> {
    rng.gen_bool(p).then(|| pick(rng, from).to_owned())
}

fn when(rng: &mut StdRng) -> NaiveDateTime {
    chrono::DateTime::from_timestamp(1_714_564_800 + rng.gen_range(0..100_000), 0)
        .expect("a time")
        .naive_utc()
}

fn random_state(rng: &mut StdRng) -> State {
    let mut bookkeeping = Vec::new();
    let mut rows = Vec::new();
    let mut taken: Vec<String> = Vec::new();
    for user in USERS {
        if rng.gen_bool(0.7) {
            bookkeeping.push(Bookkeeping {
                user: user.to_owned(),
                version: rng.gen_range(-1..6),
                digest: pick(rng, &["d0", "d1"]).to_owned(),
                email: maybe(rng, 0.8, &ADDRESSES[..4]),
                deleted: rng.gen_bool(0.2),
                pending: rng.gen_bool(0.2),
                attempted: rng.gen_bool(0.2),
                role: rng.gen(),
            });
        }
        if rng.gen_bool(0.65) {
            let address = if rng.gen_bool(0.1) {
                format!("{user}@moving.invalid")
            } else {
                pick(rng, &ADDRESSES).to_owned()
            };
            if taken.contains(&address) {
                continue;
            }
            taken.push(address.clone());
            rows.push(Row {
                id: user.to_owned(),
                name: maybe(rng, 0.7, &["Ada", "Grace"]),
                address,
                role: pick(rng, &["ADMIN", "USER"]),
                created: when(rng).to_string(),
                updated: when(rng).to_string(),
            });
        }
    }
    let recorded = IDS
        .iter()
        .filter(|_| rng.gen_bool(0.4))
        .map(|id| (*id).to_owned())
        .collect();
    State {
        bookkeeping,
        rows,
        recorded,
    }
}

fn random_request(rng: &mut StdRng) -> Request {
    Request {
        user: pick(rng, &USERS).to_owned(),
        version: rng.gen_range(-1..6),
        digest: pick(rng, &["", "d0", "d2"]).to_owned(),
        email: maybe(rng, 0.7, &ADDRESSES),
        role: rng.gen(),
        claim: maybe(rng, 0.7, &ADDRESSES),
        id: maybe(rng, 0.7, &IDS),
    }
}

fn random_plan(rng: &mut StdRng, state: &State, case: usize) -> Plan {
    let bookkeeping = rng.gen_bool(0.8).then(|| BookkeepingWrite {
        user: pick(rng, &USERS).to_owned(),
        version: rng.gen_range(-1..9),
        digest: pick(rng, &["d0", "d3"]).to_owned(),
        email: maybe(rng, 0.8, &ADDRESSES),
        role: rng.gen(),
        tombstone: rng.gen_bool(0.3),
        attempted: rng.gen_bool(0.3),
    });
    let row = rng.gen_bool(0.8).then(|| {
        let id = pick(rng, &USERS).to_owned();
        let exists = state.rows.iter().any(|r| r.id == id);
        // Mostly what the lock found; else a row deleted since (or one made meanwhile).
        let new = if rng.gen_bool(0.8) { !exists } else { exists };
        let free: Vec<&str> = ADDRESSES
            .iter()
            .copied()
            .filter(|a| !state.rows.iter().any(|r| r.address == *a && r.id != id))
            .collect();
        let address = if !free.is_empty() && rng.gen_bool(0.85) {
            pick(rng, &free).to_owned()
        } else {
            pick(rng, &ADDRESSES).to_owned()
        };
        RowWrite {
            id,
            name: maybe(rng, 0.7, &["Ada", "Grace", "Hopper"]),
            address,
            role: maybe(rng, if new { 0.95 } else { 0.5 }, &["ADMIN", "USER"]),
            created: when(rng),
            updated: when(rng),
            new,
        }
    });
    let record = rng.gen_bool(0.8).then(|| RecordWrite {
        id: if rng.gen_bool(0.25) {
            pick(rng, &IDS).to_owned()
        } else {
            format!("msg_new_{case}")
        },
        event_type: pick(rng, &["user.created", "user.updated", "user.deleted"]).to_owned(),
        user: maybe(rng, 0.9, &USERS),
        outcome: pick(rng, &["applied", "stale", "duplicate", "ignored"]).to_owned(),
    });
    Plan {
        bookkeeping,
        row,
        record,
    }
}

fn literal(value: Option<&str>) -> String {
    value.map_or_else(
        || "NULL".to_owned(),
        |v| format!("'{}'", v.replace('\'', "''")),
    )
}

/// The state, committed, in place of whatever was there.
async fn put_state(conn: &mut AsyncPgConnection, state: &State) {
    let mut sql = String::from(
        "BEGIN; DELETE FROM clerk_sync.deliveries; DELETE FROM clerk_sync.users; \
         DELETE FROM \"User\";",
    );
    for b in &state.bookkeeping {
        sql.push_str(&format!(
            "INSERT INTO clerk_sync.users (user_id, version, digest, email, deleted_at, \
             delete_pending, delete_attempted_at, role_from_webhook) \
             VALUES ({}, {}, {}, {}, {}, {}, {}, {});",
            literal(Some(&b.user)),
            b.version,
            literal(Some(&b.digest)),
            literal(b.email.as_deref()),
            if b.deleted {
                "'2024-01-01 00:00:00+00'"
            } else {
                "NULL"
            },
            b.pending,
            if b.attempted {
                "'2024-01-02 00:00:00+00'"
            } else {
                "NULL"
            },
            b.role,
        ));
    }
    for r in &state.rows {
        sql.push_str(&format!(
            "INSERT INTO \"User\" (id, name, mail_address, role, \"createdAt\", \"updatedAt\") \
             VALUES ({}, {}, {}, '{}', '{}', '{}');",
            literal(Some(&r.id)),
            literal(r.name.as_deref()),
            literal(Some(&r.address)),
            r.role,
            r.created,
            r.updated,
        ));
    }
    for id in &state.recorded {
        sql.push_str(&format!(
            "INSERT INTO clerk_sync.deliveries (svix_id, event_type, user_id, outcome) \
             VALUES ({}, 'user.updated', NULL, 'applied');",
            literal(Some(id)),
        ));
    }
    sql.push_str("COMMIT;");
    conn.batch_execute(&sql).await.expect("seed the state");
}

#[derive(QueryableByName)]
struct Answer {
    #[diesel(sql_type = Text)]
    j: String,
}

#[derive(QueryableByName)]
struct Line {
    #[diesel(sql_type = Text)]
    line: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Pid {
    #[diesel(sql_type = Integer)]
    pid: i32,
}

/// A snapshot as the Rust side reads it: `a` in lock order, the rest as sets.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Read {
    addresses: Vec<String>,
    made: BTreeSet<String>,
    recorded: BTreeSet<String>,
    bookkeeping: BTreeSet<String>,
    rows: BTreeSet<String>,
}

impl Read {
    fn parse(raw: &str) -> Self {
        let json: Value = serde_json::from_str(raw).expect("the snapshot is JSON");
        let strings = |key: &str| -> Vec<String> {
            json[key]
                .as_array()
                .unwrap_or_else(|| panic!("{key} is an array in {raw}"))
                .iter()
                .map(|v| v.as_str().expect("a string").to_owned())
                .collect()
        };
        // Entries as they serialise; each user at most once (the Rust side keys them by user).
        let entries = |key: &str| -> BTreeSet<String> {
            let all = json[key]
                .as_array()
                .unwrap_or_else(|| panic!("{key} is an array in {raw}"));
            let keys: BTreeSet<&str> = all.iter().filter_map(|e| e[0].as_str()).collect();
            let set: BTreeSet<String> = all.iter().map(Value::to_string).collect();
            assert_eq!(keys.len(), set.len(), "{key}: one entry per user in {raw}");
            set
        };
        Read {
            addresses: strings("a"),
            made: strings("m").into_iter().collect(),
            recorded: strings("r").into_iter().collect(),
            bookkeeping: entries("b"),
            rows: entries("w"),
        }
    }

    fn user(&self, user: &str) -> Option<Value> {
        self.bookkeeping
            .iter()
            .map(|b| serde_json::from_str::<Value>(b).expect("json"))
            .find(|b| b[0] == user)
    }
}

/// What one call left: its answer, the advisory locks held and the tables; or its error.
type Outcome<T> = Result<(T, BTreeSet<(i64, i64)>, Vec<String>), String>;

fn error_text(e: &DieselError) -> String {
    match e {
        DieselError::DatabaseError(kind, info) => format!("{kind:?}: {}", info.message()),
        other => format!("{other}"),
    }
}

/// The tables as comparable lines (a time written now shows as `now`; `received_at` left out).
async fn tables(conn: &mut AsyncPgConnection) -> Vec<String> {
    let sql = r#"
        SELECT format('b %L %L %L %L %L %L %L %L', user_id, version, digest, email,
                      CASE WHEN deleted_at IS NULL THEN NULL
                           WHEN deleted_at = now() THEN 'now' ELSE deleted_at::text END,
                      delete_pending,
                      CASE WHEN delete_attempted_at IS NULL THEN NULL
                           WHEN delete_attempted_at = now() THEN 'now'
                           ELSE delete_attempted_at::text END,
                      role_from_webhook) AS line
          FROM clerk_sync.users
        UNION ALL
        SELECT format('d %L %L %L %L', svix_id, event_type, user_id, outcome)
          FROM clerk_sync.deliveries
        UNION ALL
        SELECT format('u %L %L %L %L %L %L', id, name, mail_address, role, "createdAt",
                      "updatedAt")
          FROM "User"
        ORDER BY 1"#;
    diesel::sql_query(sql)
        .load::<Line>(conn)
        .await
        .expect("read the tables")
        .into_iter()
        .map(|l| l.line)
        .collect()
}

async fn advisory_locks(conn: &mut AsyncPgConnection) -> BTreeSet<(i64, i64)> {
    #[derive(QueryableByName)]
    struct Lock {
        #[diesel(sql_type = BigInt)]
        hi: i64,
        #[diesel(sql_type = BigInt)]
        lo: i64,
    }
    diesel::sql_query(
        "SELECT classid::bigint AS hi, objid::bigint AS lo FROM pg_locks \
         WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted",
    )
    .load::<Lock>(conn)
    .await
    .expect("read the advisory locks")
    .into_iter()
    .map(|l| (l.hi, l.lo))
    .collect()
}

async fn read_lone(conn: &mut AsyncPgConnection, q: &Request) -> Result<String, DieselError> {
    diesel::sql_query("SELECT clerk_sync.lock_and_read_one($1, $2, $3, $4, $5, $6, $7) AS j")
        .bind::<Text, _>(&q.user)
        .bind::<BigInt, _>(q.version)
        .bind::<Text, _>(&q.digest)
        .bind::<Nullable<Text>, _>(q.email.as_deref())
        .bind::<Bool, _>(q.role)
        .bind::<Nullable<Text>, _>(q.claim.as_deref())
        .bind::<Nullable<Text>, _>(q.id.as_deref())
        .get_result::<Answer>(conn)
        .await
        .map(|a| a.j)
}

async fn read_few(conn: &mut AsyncPgConnection, q: &Request) -> Result<String, DieselError> {
    diesel::sql_query("SELECT clerk_sync.lock_and_read($1, $2, $3, $4, $5, $6, $7) AS j")
        .bind::<Array<Text>, _>(vec![q.user.clone()])
        .bind::<Array<BigInt>, _>(vec![q.version])
        .bind::<Array<Text>, _>(vec![q.digest.clone()])
        .bind::<Array<Nullable<Text>>, _>(vec![q.email.clone()])
        .bind::<Array<Bool>, _>(vec![q.role])
        .bind::<Array<Text>, _>(q.claim.iter().cloned().collect::<Vec<_>>())
        .bind::<Array<Text>, _>(q.id.iter().cloned().collect::<Vec<_>>())
        .get_result::<Answer>(conn)
        .await
        .map(|a| a.j)
}

#[derive(QueryableByName)]
struct Done {
    #[diesel(sql_type = Array<Text>)]
    done: Vec<String>,
}

async fn write_lone(conn: &mut AsyncPgConnection, p: &Plan) -> Result<Vec<String>, DieselError> {
    let (b, r, d) = (p.bookkeeping.as_ref(), p.row.as_ref(), p.record.as_ref());
    diesel::sql_query(
        "SELECT clerk_sync.write_one($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
         $14, $15, $16, $17, $18) AS done",
    )
    .bind::<Nullable<Text>, _>(b.map(|b| b.user.clone()))
    .bind::<Nullable<BigInt>, _>(b.map(|b| b.version))
    .bind::<Nullable<Text>, _>(b.map(|b| b.digest.clone()))
    .bind::<Nullable<Text>, _>(b.and_then(|b| b.email.clone()))
    .bind::<Nullable<Bool>, _>(b.map(|b| b.role))
    .bind::<Nullable<Bool>, _>(b.map(|b| b.tombstone))
    .bind::<Nullable<Bool>, _>(b.map(|b| b.attempted))
    .bind::<Nullable<Text>, _>(r.map(|r| r.id.clone()))
    .bind::<Nullable<Text>, _>(r.and_then(|r| r.name.clone()))
    .bind::<Nullable<Text>, _>(r.map(|r| r.address.clone()))
    .bind::<Nullable<Text>, _>(r.and_then(|r| r.role.clone()))
    .bind::<Nullable<Timestamp>, _>(r.map(|r| r.created))
    .bind::<Nullable<Timestamp>, _>(r.map(|r| r.updated))
    .bind::<Nullable<Bool>, _>(r.map(|r| r.new))
    .bind::<Nullable<Text>, _>(d.map(|d| d.id.clone()))
    .bind::<Nullable<Text>, _>(d.map(|d| d.event_type.clone()))
    .bind::<Nullable<Text>, _>(d.and_then(|d| d.user.clone()))
    .bind::<Nullable<Text>, _>(d.map(|d| d.outcome.clone()))
    .get_result::<Done>(conn)
    .await
    .map(|d| d.done)
}

async fn write_few(conn: &mut AsyncPgConnection, p: &Plan) -> Result<Vec<String>, DieselError> {
    let (b, r, d) = (&p.bookkeeping, &p.row, &p.record);
    let none: Vec<String> = Vec::new();
    diesel::sql_query(
        "SELECT clerk_sync.write_plan($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
         $14, $15, $16, $17, $18, $19, $20, $21, $22, $23) AS done",
    )
    .bind::<Array<Text>, _>(b.iter().map(|b| b.user.clone()).collect::<Vec<_>>())
    .bind::<Array<BigInt>, _>(b.iter().map(|b| b.version).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(b.iter().map(|b| b.digest.clone()).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(b.iter().map(|b| b.email.clone()).collect::<Vec<_>>())
    .bind::<Array<Bool>, _>(b.iter().map(|b| b.role).collect::<Vec<_>>())
    .bind::<Array<Bool>, _>(b.iter().map(|b| b.tombstone).collect::<Vec<_>>())
    .bind::<Array<Bool>, _>(b.iter().map(|b| b.attempted).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(none.clone())
    .bind::<Array<Text>, _>(r.iter().map(|r| r.id.clone()).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(r.iter().map(|r| r.name.clone()).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(r.iter().map(|r| r.address.clone()).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(r.iter().map(|r| r.role.clone()).collect::<Vec<_>>())
    .bind::<Array<Timestamp>, _>(r.iter().map(|r| r.created).collect::<Vec<_>>())
    .bind::<Array<Timestamp>, _>(r.iter().map(|r| r.updated).collect::<Vec<_>>())
    .bind::<Array<Bool>, _>(r.iter().map(|r| r.new).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(none.clone())
    .bind::<Array<Text>, _>(none.clone())
    .bind::<Array<Text>, _>(none)
    .bind::<Array<Text>, _>(d.iter().map(|d| d.id.clone()).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(d.iter().map(|d| d.event_type.clone()).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(d.iter().map(|d| d.user.clone()).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(d.iter().map(|d| d.outcome.clone()).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(d.iter().map(|_| None::<String>).collect::<Vec<_>>())
    .get_result::<Done>(conn)
    .await
    .map(|d| d.done)
}

/// Runs `call` in a transaction of its own, notes what it left, and rolls it back.
async fn rolled_back<T, F>(conn: &mut AsyncPgConnection, call: F) -> Outcome<T>
where
    F: AsyncFnOnce(&mut AsyncPgConnection) -> Result<T, DieselError>,
{
    conn.batch_execute("BEGIN").await.expect("begin");
    let result = match call(conn).await {
        Ok(answer) => Ok((answer, advisory_locks(conn).await, tables(conn).await)),
        Err(e) => Err(error_text(&e)),
    };
    conn.batch_execute("ROLLBACK").await.expect("rollback");
    result
}

/// A fresh database with the application's tables and clerk-sync's migrations.
async fn fresh() -> (TestDb, AsyncPgConnection) {
    let db = TestDb::with_prisma_tables(Backend::Postgres).await;
    let url = DatabaseUrl::parse(&db.url).expect("url");
    let database = Database::open(&url, PoolOptions::default()).expect("open");
    database.migrate().await.expect("migrate");
    let conn = AsyncPgConnection::establish(&db.url)
        .await
        .expect("connect");
    (db, conn)
}

fn seed_from_env() -> u64 {
    std::env::var("CLERK_SYNC_EXECUTORS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEED)
}

/// Scenarios the random states must reach, counted over the run.
#[derive(Debug, Default)]
struct Reached {
    made: usize,
    nothing_to_lock: usize,
    held_and_claimed: usize,
    held_by_another: usize,
    claimant_also_holder: usize,
    several_claimants: usize,
    recorded: usize,
    user_without_row: usize,
    row_without_bookkeeping: usize,
    written: usize,
    row_deleted: usize,
    recorded_meanwhile: usize,
    other_errors: usize,
}

impl Reached {
    fn note_read(&mut self, state: &State, q: &Request, read: &Read) {
        let claimants = |a: &str| {
            state
                .bookkeeping
                .iter()
                .filter(|b| b.email.as_deref() == Some(a))
                .count()
        };
        let holder = |a: &str| state.rows.iter().find(|r| r.address == a);
        self.made += usize::from(!read.made.is_empty());
        self.nothing_to_lock += usize::from(read.addresses.is_empty());
        self.recorded += usize::from(!read.recorded.is_empty());
        self.user_without_row += usize::from(!state.rows.iter().any(|r| r.id == q.user));
        let locked = || read.addresses.iter().map(String::as_str);
        self.held_and_claimed +=
            usize::from(locked().any(|a| holder(a).is_some() && claimants(a) > 0));
        self.held_by_another +=
            usize::from(locked().any(|a| holder(a).is_some_and(|r| r.id != q.user)));
        self.several_claimants += usize::from(locked().any(|a| claimants(a) >= 2));
        self.claimant_also_holder += usize::from(state.bookkeeping.iter().any(|b| {
            b.user != q.user
                && b.email
                    .as_deref()
                    .is_some_and(|e| read.addresses.contains(&e.to_owned()))
                && state
                    .rows
                    .iter()
                    .any(|r| r.id == b.user && read.addresses.contains(&r.address))
        }));
        self.row_without_bookkeeping +=
            usize::from(locked().any(|a| {
                holder(a).is_some_and(|r| !state.bookkeeping.iter().any(|b| b.user == r.id))
            }));
    }

    fn note_write(&mut self, outcome: &Result<Vec<String>, String>) {
        match outcome {
            Ok(_) => self.written += 1,
            Err(e) if e.contains("row of the plan was deleted") => self.row_deleted += 1,
            Err(e) if e.contains("delivery of the plan was recorded") => {
                self.recorded_meanwhile += 1
            }
            Err(_) => self.other_errors += 1,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lone_executors_read_and_write_what_the_few_rows_shape_does() {
    let (_db, mut conn) = fresh().await;
    let seed = seed_from_env();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut reached = Reached::default();
    let started = Instant::now();

    for case in 0..CASES {
        // Arrange
        let state = random_state(&mut rng);
        let request = random_request(&mut rng);
        let plan = random_plan(&mut rng, &state, case);
        let context = format!("seed {seed}, case {case}:\n{state:#?}\n{request:#?}\n{plan:#?}");
        put_state(&mut conn, &state).await;

        // Act
        let lone = rolled_back(&mut conn, async |c| read_lone(c, &request).await).await;
        let few = rolled_back(&mut conn, async |c| read_few(c, &request).await).await;
        let written_lone = rolled_back(&mut conn, async |c| write_lone(c, &plan).await).await;
        let written_few = rolled_back(&mut conn, async |c| write_few(c, &plan).await).await;

        // Assert
        let (lone, lone_locks, lone_tables) = lone.unwrap_or_else(|e| panic!("{e}\n{context}"));
        let (few, few_locks, few_tables) = few.unwrap_or_else(|e| panic!("{e}\n{context}"));
        let (lone, few) = (Read::parse(&lone), Read::parse(&few));
        assert_eq!(lone, few, "the snapshots differ\n{context}");
        let mut sorted = lone.addresses.clone();
        sorted.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        sorted.dedup();
        assert_eq!(lone.addresses, sorted, "locked in byte order\n{context}");
        assert_eq!(
            lone_locks, few_locks,
            "the advisory locks differ\n{context}"
        );
        assert_eq!(lone_locks.len(), lone.addresses.len(), "{context}");
        assert_eq!(
            lone_tables, few_tables,
            "the read wrote differently\n{context}"
        );
        reached.note_read(&state, &request, &lone);

        let project = |o: Outcome<Vec<String>>| o.map(|(done, _, tables)| (done, tables));
        let (written_lone, written_few) = (project(written_lone), project(written_few));
        assert_eq!(written_lone, written_few, "the writes differ\n{context}");
        reached.note_write(&written_lone.map(|(done, _)| done));
        // A row the plan updates that is gone: both fail as transient (SQLSTATE 40001).
        if let Some(row) = plan.row.as_ref().filter(|r| !r.new) {
            if !state.rows.iter().any(|r| r.id == row.id) {
                let err = written_few.expect_err("an update of a deleted row fails");
                assert!(err.starts_with("SerializationFailure"), "{err}\n{context}");
            }
        }
    }

    let elapsed = started.elapsed();
    eprintln!("{CASES} cases in {elapsed:?} (seed {seed}): {reached:#?}");
    for (scenario, n) in [
        ("a bookkeeping row made", reached.made),
        ("no address to lock", reached.nothing_to_lock),
        ("an address held and claimed", reached.held_and_claimed),
        ("an address held by another user", reached.held_by_another),
        ("a claimant also a holder", reached.claimant_also_holder),
        ("several claimants of an address", reached.several_claimants),
        ("a delivery recorded", reached.recorded),
        ("a user without a row", reached.user_without_row),
        (
            "a holder without bookkeeping",
            reached.row_without_bookkeeping,
        ),
        ("a plan written", reached.written),
        ("a row deleted before its update", reached.row_deleted),
        ("a delivery recorded meanwhile", reached.recorded_meanwhile),
    ] {
        assert!(
            n >= 5,
            "the random states reached {scenario} only {n} times"
        );
    }
}

/// `clerk_sync.lock_and_read` for the request's user and `pads` users more, each new, with
/// no address (migration 19's shapes by size: up to 4 users by statement, up to 64 by key on
/// generic plans, more planned per call).
async fn read_padded(
    conn: &mut AsyncPgConnection,
    q: &Request,
    pads: usize,
) -> Result<String, DieselError> {
    let mut users = vec![q.user.clone()];
    users.extend((0..pads).map(|i| format!("pad_{i:03}")));
    let n = users.len();
    let mut versions = vec![q.version];
    versions.resize(n, -1);
    let mut digests = vec![q.digest.clone()];
    digests.resize(n, String::new());
    let mut emails = vec![q.email.clone()];
    emails.resize(n, None);
    let mut roles = vec![q.role];
    roles.resize(n, false);
    diesel::sql_query("SELECT clerk_sync.lock_and_read($1, $2, $3, $4, $5, $6, $7) AS j")
        .bind::<Array<Text>, _>(users)
        .bind::<Array<BigInt>, _>(versions)
        .bind::<Array<Text>, _>(digests)
        .bind::<Array<Nullable<Text>>, _>(emails)
        .bind::<Array<Bool>, _>(roles)
        .bind::<Array<Text>, _>(q.claim.iter().cloned().collect::<Vec<_>>())
        .bind::<Array<Text>, _>(q.id.iter().cloned().collect::<Vec<_>>())
        .get_result::<Answer>(conn)
        .await
        .map(|a| a.j)
}

/// What a padded read answered and left, without the pads.
fn without_pads(outcome: Outcome<String>) -> Outcome<Read> {
    outcome.map(|(raw, locks, tables)| {
        let mut read = Read::parse(&raw);
        let real = |e: &String| !e.contains("pad_");
        read.made.retain(real);
        read.bookkeeping.retain(real);
        read.rows.retain(real);
        (read, locks, tables.into_iter().filter(real).collect())
    })
}

/// A read with the request's user's bookkeeping row as sent where the executor made it and left
/// it out of the answer (the bulk shape does; the port adds it, see `pg_port::snapshot`).
fn with_made_as_sent(mut read: Read, q: &Request) -> Read {
    if read.made.contains(&q.user) && read.user(&q.user).is_none() {
        let row = json!([q.user, q.version, q.digest, q.email, false, false, q.role]);
        read.bookkeeping.insert(row.to_string());
    }
    read
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_larger_group_and_bulk_reads_read_what_the_few_rows_shape_does() {
    let (_db, mut conn) = fresh().await;
    let seed = seed_from_env();
    let mut rng = StdRng::seed_from_u64(seed);

    for case in 0..CASES / 3 {
        // Arrange
        let state = random_state(&mut rng);
        let request = random_request(&mut rng);
        let context = format!("seed {seed}, case {case}:\n{state:#?}\n{request:#?}");
        put_state(&mut conn, &state).await;
        let group = rng.gen_range(4..=63);

        // Act: the same user alone, in a group commit's size, in a bulk batch's
        let few = rolled_back(&mut conn, async |c| read_padded(c, &request, 0).await).await;
        let by_key = rolled_back(&mut conn, async |c| read_padded(c, &request, group).await).await;
        let bulk = rolled_back(&mut conn, async |c| read_padded(c, &request, 80).await).await;

        // Assert: the same snapshot, locks and tables, but for the pads
        let few = without_pads(few).unwrap_or_else(|e| panic!("{e}\n{context}"));
        let by_key = without_pads(by_key).unwrap_or_else(|e| panic!("{e}\n{context}"));
        let bulk = without_pads(bulk)
            .map(|(read, locks, tables)| (with_made_as_sent(read, &request), locks, tables))
            .unwrap_or_else(|e| panic!("{e}\n{context}"));
        assert_eq!(few, by_key, "by key ({group} pads)\n{context}");
        assert_eq!(few, bulk, "planned per call\n{context}");
    }
}

/// Runs a read in its own transaction while another connection holds `blocker` (a
/// transaction on the user's bookkeeping row), commits the blocker once the read waits for
/// it, and answers the read's snapshot.
async fn read_behind(
    db: &TestDb,
    admin: &mut AsyncPgConnection,
    request: &Request,
    lone: bool,
    blocker: &str,
) -> Read {
    let mut holder = AsyncPgConnection::establish(&db.url)
        .await
        .expect("connect");
    holder
        .batch_execute(&format!("BEGIN; {blocker}"))
        .await
        .expect("the blocker");
    let mut reader = AsyncPgConnection::establish(&db.url)
        .await
        .expect("connect");
    let pid = diesel::sql_query("SELECT pg_backend_pid() AS pid")
        .get_result::<Pid>(&mut reader)
        .await
        .expect("pid")
        .pid;
    let request = request.clone();
    let read = tokio::spawn(async move {
        reader.batch_execute("BEGIN").await.expect("begin");
        let answer = if lone {
            read_lone(&mut reader, &request).await
        } else {
            read_few(&mut reader, &request).await
        };
        reader.batch_execute("ROLLBACK").await.expect("rollback");
        answer
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting = diesel::sql_query(
            "SELECT count(*) AS n FROM pg_stat_activity \
             WHERE pid = $1 AND wait_event_type = 'Lock'",
        )
        .bind::<Integer, _>(pid)
        .get_result::<Count>(admin)
        .await
        .expect("pg_stat_activity")
        .n;
        if waiting == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the read never waited for the blocker"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    holder
        .batch_execute("COMMIT")
        .await
        .expect("commit the blocker");
    let raw = read.await.expect("the read's task").expect("the read");
    Read::parse(&raw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lone_read_sees_the_users_bookkeeping_as_it_is_once_locked() {
    let (db, mut admin) = fresh().await;
    let seed = seed_from_env() ^ 0xb10c;
    let mut rng = StdRng::seed_from_u64(seed);

    for case in 0..12 {
        // Arrange: the user's row made by another writer meanwhile (even cases), or updated
        // by one holding its lock (odd cases), with an address of its own.
        let mut state = random_state(&mut rng);
        let request = random_request(&mut rng);
        let email = pick(&mut rng, &ADDRESSES).to_owned();
        let made_meanwhile = case % 2 == 0;
        let blocker = if made_meanwhile {
            state.bookkeeping.retain(|b| b.user != request.user);
            format!(
                "INSERT INTO clerk_sync.users (user_id, version, digest, email, role_from_webhook) \
                 VALUES ('{}', 41, 'theirs', '{email}', true)",
                request.user
            )
        } else {
            if !state.bookkeeping.iter().any(|b| b.user == request.user) {
                state.bookkeeping.push(Bookkeeping {
                    user: request.user.clone(),
                    version: 1,
                    digest: "d0".into(),
                    email: None,
                    deleted: false,
                    pending: false,
                    attempted: false,
                    role: false,
                });
            }
            format!(
                "UPDATE clerk_sync.users SET version = 41, digest = 'theirs', email = '{email}' \
                 WHERE user_id = '{}'",
                request.user
            )
        };
        let context = format!("seed {seed}, case {case}:\n{state:#?}\n{request:#?}\n{blocker}");

        // Act
        put_state(&mut admin, &state).await;
        let lone = read_behind(&db, &mut admin, &request, true, &blocker).await;
        put_state(&mut admin, &state).await;
        let few = read_behind(&db, &mut admin, &request, false, &blocker).await;

        // Assert
        assert_eq!(lone, few, "the snapshots differ\n{context}");
        assert!(lone.made.is_empty(), "another writer made it\n{context}");
        let theirs = lone.user(&request.user).expect("the user's bookkeeping");
        assert_eq!(
            (&theirs[1], &theirs[2], &theirs[3]),
            (
                &Value::from(41),
                &Value::from("theirs"),
                &Value::from(email.as_str())
            ),
            "the user's bookkeeping as the other writer left it\n{context}"
        );
        assert!(lone.addresses.contains(&email), "{context}");
    }
}
