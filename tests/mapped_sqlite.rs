//! The mapped writer on SQLite (`Lite::transact_mapped`), through the public API: a real
//! SQLite file holding one of Prisma's user tables (`fixtures/prisma/*.sqlite.sql`), hand-made
//! requests and writes, the snapshot read and the table's rows checked column by column with
//! SQL of the test's own.

mod common;

use chrono::{DateTime, NaiveDate, Utc};
use clerk_sync::db::port::{
    BookkeepingWrite, Deleted, MappedRow, MappedWrites, Record, Request, RowWrite, Snapshot, Writes,
};
use clerk_sync::db::{Database, DatabaseUrl, DbError, PoolOptions};
use clerk_sync::domain::table::{Bind, WriteColumn, WriteShape};
use clerk_sync::domain::{Outcome, Value};
use common::{Backend, TestDb};
use diesel::sql_types::Text;
use diesel::{Connection, QueryableByName, RunQueryDsl, SqliteConnection};
use serde_json::{json, Value as Json};

const CUID: &str = include_str!("../fixtures/prisma/cuid-clerkid.sqlite.sql");
const AUTOINCREMENT: &str = include_str!("../fixtures/prisma/autoincrement-mapped.sqlite.sql");
const SOFT_DELETE: &str = include_str!("../fixtures/prisma/uuid-soft-delete.sqlite.sql");

/// A table whose names need quoting, a Clerk-id column that may be NULL and a column of each
/// storage class the writer binds.
const ODD: &str = r#"
CREATE TABLE "we""ird table" (
    "key" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    "clerk ""id""" TEXT,
    "mail; --" TEXT,
    "big" BIGINT,
    "small" INTEGER,
    "ratio" REAL,
    "price" DECIMAL,
    "flag" BOOLEAN,
    "meta" JSONB,
    "born" DATETIME,
    "seen" DATETIME,
    "touched" DATETIME
);
CREATE UNIQUE INDEX "odd_clerk" ON "we""ird table"("clerk ""id""");
CREATE UNIQUE INDEX "odd_mail" ON "we""ird table"("mail; --");
"#;

fn column(name: &str, bind: Bind) -> WriteColumn {
    WriteColumn {
        name: name.to_owned(),
        field: name.to_owned(),
        bind,
    }
}

fn shape(
    name: &str,
    columns: Vec<WriteColumn>,
    ids: (usize, Option<usize>, Option<usize>),
) -> WriteShape {
    WriteShape {
        schema: None,
        name: name.to_owned(),
        columns,
        clerk_id: ids.0,
        unique_address: ids.1,
        updated_at: ids.2,
        created_at: None,
    }
}

/// `User` of cuid-clerkid: its own cuid key, `clerkId`, a unique `email`, a `Post` FK.
fn cuid_shape() -> WriteShape {
    use Bind::*;
    let columns = vec![
        column("id", Text),
        column("clerkId", Text),
        column("email", Text),
        column("firstName", Text),
        column("lastName", Text),
        column("imageUrl", Text),
        column("createdAt", Timestamp),
        column("updatedAt", Timestamp),
    ];
    shape("User", columns, (1, Some(2), Some(7)))
}

/// `users` of autoincrement-mapped: a serial key, an optional unique `email_address`.
fn autoincrement_shape() -> WriteShape {
    use Bind::*;
    let columns = vec![
        column("id", Int),
        column("clerk_user_id", Text),
        column("email_address", Text),
        column("name", Text),
        column("username", Text),
        column("avatar_url", Text),
        column("plan", Text),
        column("created_at", Timestamp),
        column("updated_at", Timestamp),
    ];
    shape("users", columns, (1, Some(2), Some(8)))
}

/// `User` of uuid-soft-delete: a uuid key, a non-unique `email`, the enum `Role`.
fn soft_delete_shape() -> WriteShape {
    use Bind::*;
    let columns = vec![
        column("id", Uuid),
        column("clerk_id", Text),
        column("email", Text),
        column("firstName", Text),
        column("lastName", Text),
        column("role", Enum("\"Role\"".to_owned())),
        column("deleted", Bool),
        column("deletedAt", Timestamp),
        column("createdAt", Timestamp),
        column("updatedAt", Timestamp),
    ];
    shape("User", columns, (1, None, Some(9)))
}

fn odd_shape() -> WriteShape {
    use Bind::*;
    let columns = vec![
        column("key", Int),
        column("clerk \"id\"", Text),
        column("mail; --", Text),
        column("big", BigInt),
        column("small", Int),
        column("ratio", Float),
        column("price", Decimal),
        column("flag", Bool),
        column("meta", Json),
        column("born", Date),
        column("seen", Timestamp),
        column("touched", Timestamp),
    ];
    shape("we\"ird table", columns, (1, Some(2), Some(11)))
}

/// A fresh SQLite file holding `ddl`, clerk-sync's own tables, and the writer set to `shape`.
async fn database(ddl: &str, shape: WriteShape) -> (TestDb, Database) {
    let test = TestDb::empty(Backend::Sqlite).await;
    test.exec(ddl).await;
    let url = DatabaseUrl::parse(&test.url).expect("url");
    let db = Database::open(&url, PoolOptions::default()).expect("open");
    db.migrate_own().await.expect("clerk-sync's migrations");
    db.use_shape(shape).expect("the shape");
    (test, db)
}

#[derive(QueryableByName)]
struct JsonRow {
    #[diesel(sql_type = Text)]
    j: String,
}

/// Rows as JSON objects (`SELECT json_object(…) AS j …`), so that each column's storage class
/// shows: an integer stays a number, text a string, NULL null.
fn rows(test: &TestDb, sql: &str) -> Vec<Json> {
    let path = test.sqlite_path().expect("an SQLite file");
    let mut conn = SqliteConnection::establish(&path.to_string_lossy()).expect("open");
    let found: Vec<JsonRow> = diesel::sql_query(sql)
        .load(&mut conn)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    found
        .into_iter()
        .map(|r| serde_json::from_str(&r.j).expect("json"))
        .collect()
}

/// Every bookkeeping row: user, version, email, tombstoned, delete pending.
fn bookkeeping(test: &TestDb) -> Vec<Json> {
    rows(
        test,
        "SELECT json_object('user', user_id, 'version', version, 'email', email,
                'tombstone', deleted_at IS NOT NULL, 'pending', delete_pending) AS j
           FROM clerk_sync_users ORDER BY user_id",
    )
}

/// Every delivery recorded: id and outcome.
fn deliveries(test: &TestDb) -> Vec<Json> {
    rows(
        test,
        "SELECT json_object('id', svix_id, 'outcome', outcome) AS j
           FROM clerk_sync_deliveries ORDER BY svix_id",
    )
}

fn request(users: &[&str], claims: &[&str], ids: &[&str]) -> Request {
    let own = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    Request {
        users: own(users),
        initial: Vec::new(),
        claims: own(claims),
        ids: own(ids),
    }
}

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).expect("a date")
}

const T0: i64 = 1_714_564_800_000;

/// A row write: only its id and whether it exists matter to the mapped writer.
fn row(id: &str, exists: bool) -> RowWrite {
    RowWrite {
        id: id.to_owned(),
        name: None,
        address: String::new(),
        role: None,
        exists,
        created_at: at(T0),
        updated_at: at(T0),
        digest: String::new(),
    }
}

fn planned(user: &str, version: i64, email: Option<&str>) -> BookkeepingWrite {
    BookkeepingWrite {
        user_id: user.to_owned(),
        version,
        digest: format!("d{version}"),
        email: email.map(str::to_owned),
        role_from_webhook: false,
        tombstone: false,
        attempted: false,
    }
}

fn record(id: &str, user: &str, outcome: Outcome, if_refused: Option<Outcome>) -> Record {
    Record {
        svix_id: id.to_owned(),
        event_type: "user.updated".to_owned(),
        user_id: Some(user.to_owned()),
        outcome,
        if_refused,
    }
}

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

fn mapped(
    rows: Vec<MappedRow>,
    moves: Vec<Value>,
    soft_delete: Vec<(usize, Value)>,
) -> Option<Box<MappedWrites>> {
    Some(Box::new(MappedWrites {
        rows,
        moves,
        soft_delete,
    }))
}

/// One unit of work: `writes` whatever the snapshot; answers the snapshot read.
async fn transact(
    db: &Database,
    request: Request,
    writes: Writes,
) -> Result<(Snapshot, Deleted), DbError> {
    db.transact(request, move |snapshot| Ok((writes, snapshot.clone())))
        .await
}

/// Reads only: the snapshot under the request's locks, nothing planned.
async fn snapshot(db: &Database, request: Request) -> Snapshot {
    let writes = Writes {
        mapped: mapped(Vec::new(), Vec::new(), Vec::new()),
        ..Writes::default()
    };
    transact(db, request, writes).await.expect("a read").0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_user_is_inserted_with_the_columns_written_and_the_database_filling_the_rest() {
    let (test, db) = database(AUTOINCREMENT, autoincrement_shape()).await;
    let writes = Writes {
        bookkeeping: vec![planned("user_1", 3, Some("ada@example.com"))],
        rows: vec![row("user_1", false)],
        record: vec![record("msg_1", "user_1", Outcome::Applied, None)],
        mapped: mapped(
            vec![MappedRow {
                insert: vec![
                    (1, text("user_1")),
                    (2, text("ada@example.com")),
                    (3, text("Ada")),
                    (4, Value::Null),
                    (8, Value::Timestamp(at(T0 + 7))),
                ],
                update: Vec::new(),
            }],
            Vec::new(),
            Vec::new(),
        ),
        ..Writes::default()
    };

    let (read, deleted) = transact(
        &db,
        request(&["user_1"], &["ada@example.com"], &["msg_1"]),
        writes,
    )
    .await
    .expect("the unit of work");

    assert!(read.made.contains("user_1"));
    assert!(read.rows.is_empty());
    assert!(read.recorded.is_empty());
    assert!(read.addresses.contains("ada@example.com"));
    assert!(deleted.0.is_empty());
    let stored = rows(
        &test,
        "SELECT json_object('id', id, 'clerk', clerk_user_id, 'email', email_address, 'name', name,
                'username', username, 'plan', plan, 'created_set', created_at IS NOT NULL,
                'updated', updated_at, 'updated_type', typeof(updated_at)) AS j FROM users",
    );
    assert_eq!(
        stored,
        vec![json!({
            "id": 1, "clerk": "user_1", "email": "ada@example.com", "name": "Ada",
            "username": null, "plan": "free", "created_set": 1,
            "updated": "2024-05-01T12:00:00.007+00:00", "updated_type": "text",
        })]
    );
    assert_eq!(
        bookkeeping(&test),
        vec![
            json!({"user": "user_1", "version": 3, "email": "ada@example.com", "tombstone": 0, "pending": 0})
        ]
    );
    assert_eq!(
        deliveries(&test),
        vec![json!({"id": "msg_1", "outcome": "applied"})]
    );

    // Read again, the row is the user's: its address and its update time.
    let again = snapshot(&db, request(&["user_1"], &[], &["msg_1"])).await;
    assert!(again.made.is_empty());
    assert!(again.recorded.contains("msg_1"));
    let found = &again.rows["user_1"];
    assert_eq!(found.address.as_deref(), Some("ada@example.com"));
    assert_eq!(found.updated_ms, T0 + 7);
    assert_eq!(again.users["user_1"].version, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_application_made_is_adopted_and_updated_in_the_columns_written_only() {
    let (test, db) = database(CUID, cuid_shape()).await;
    test.exec(
        r#"INSERT INTO "User" (id, "clerkId", email, "firstName", "imageUrl", "updatedAt")
           VALUES ('ckq1', 'user_1', 'ada@example.com', 'Ada', 'https://img', '2024-05-01T12:00:00.500+00:00')"#,
    )
    .await;

    let read = snapshot(&db, request(&["user_1"], &[], &[])).await;
    assert!(read.made.contains("user_1"), "no bookkeeping row until now");
    let found = &read.rows["user_1"];
    assert_eq!(found.address.as_deref(), Some("ada@example.com"));
    assert_eq!(found.updated_ms, T0 + 500);

    let writes = Writes {
        bookkeeping: vec![planned("user_1", 4, Some("ada@example.com"))],
        rows: vec![row("user_1", true)],
        mapped: mapped(
            vec![MappedRow {
                insert: Vec::new(),
                update: vec![
                    (3, text("Augusta")),
                    (4, text("King")),
                    (7, Value::Timestamp(at(T0 + 1_000))),
                ],
            }],
            Vec::new(),
            Vec::new(),
        ),
        ..Writes::default()
    };
    transact(&db, request(&["user_1"], &[], &[]), writes)
        .await
        .expect("the update");

    let stored = rows(
        &test,
        r#"SELECT json_object('id', id, 'clerk', "clerkId", 'email', email, 'first', "firstName",
                'last', "lastName", 'image', "imageUrl", 'updated', "updatedAt") AS j FROM "User""#,
    );
    assert_eq!(
        stored,
        vec![json!({
            "id": "ckq1", "clerk": "user_1", "email": "ada@example.com", "first": "Augusta",
            "last": "King", "image": "https://img", "updated": "2024-05-01T12:00:01.000+00:00",
        })]
    );

    // An update with no column to write goes through, and changes nothing.
    let writes = Writes {
        rows: vec![row("user_1", true)],
        mapped: mapped(vec![MappedRow::default()], Vec::new(), Vec::new()),
        ..Writes::default()
    };
    transact(&db, request(&["user_1"], &[], &[]), writes)
        .await
        .expect("an empty update");
    assert_eq!(
        rows(
            &test,
            r#"SELECT json_object('first', "firstName") AS j FROM "User""#
        ),
        vec![json!({"first": "Augusta"})]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_time_stored_as_integer_ms_is_read() {
    let (test, db) = database(AUTOINCREMENT, autoincrement_shape()).await;
    test.exec(&format!(
        "INSERT INTO users (clerk_user_id, email_address, updated_at) VALUES ('user_1', NULL, {T0})"
    ))
    .await;

    let read = snapshot(&db, request(&["user_1"], &[], &[])).await;

    let found = &read.rows["user_1"];
    assert_eq!(found.address, None);
    assert_eq!(found.updated_ms, T0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_holds_every_row_and_claimant_of_a_locked_address() {
    let (test, db) = database(CUID, cuid_shape()).await;
    // user_2's row holds the address user_1 claims; user_3's bookkeeping claims it too
    // (without a row); user_1's own row holds another address, which is locked as well.
    test.exec(
        r#"INSERT INTO "User" (id, "clerkId", email, "updatedAt")
             VALUES ('c1', 'user_1', 'old@example.com', '2024-05-01T12:00:00.000+00:00'),
                    ('c2', 'user_2', 'new@example.com', '2024-05-01T12:00:00.000+00:00'),
                    ('c4', 'user_4', 'other@example.com', '2024-05-01T12:00:00.000+00:00');
           INSERT INTO clerk_sync_users (user_id, version, digest, email)
             VALUES ('user_2', 1, 'd', 'new@example.com'),
                    ('user_3', 2, 'd', 'new@example.com');"#,
    )
    .await;

    let read = snapshot(&db, request(&["user_1"], &["new@example.com"], &[])).await;

    let mut addresses: Vec<&str> = read.addresses.iter().map(String::as_str).collect();
    addresses.sort_unstable();
    assert_eq!(addresses, ["new@example.com", "old@example.com"]);
    let mut users: Vec<&str> = read.users.keys().map(String::as_str).collect();
    users.sort_unstable();
    assert_eq!(users, ["user_1", "user_2", "user_3"]);
    let mut with_rows: Vec<&str> = read.rows.keys().map(String::as_str).collect();
    with_rows.sort_unstable();
    assert_eq!(with_rows, ["user_1", "user_2"]);
    assert_eq!(
        read.rows["user_2"].address.as_deref(),
        Some("new@example.com")
    );
    assert_eq!(read.users["user_3"].version, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_unique_address_column_no_address_is_locked_nor_read() {
    let (test, db) = database(SOFT_DELETE, soft_delete_shape()).await;
    test.exec(
        r#"INSERT INTO "User" (id, clerk_id, email, "firstName", "lastName", "updatedAt")
             VALUES ('u1', 'user_1', 'ada@example.com', 'A', 'L', '2024-05-01T12:00:00.000+00:00'),
                    ('u2', 'user_2', 'ada@example.com', 'B', 'L', '2024-05-01T12:00:00.000+00:00');"#,
    )
    .await;

    let read = snapshot(&db, request(&["user_1"], &["ada@example.com"], &[])).await;

    assert!(read.addresses.is_empty());
    assert_eq!(read.rows.len(), 1);
    assert_eq!(read.rows["user_1"].address, None);
    assert_eq!(read.rows["user_1"].updated_ms, T0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_names_are_quoted_values_bound_as_prisma_stores_them_and_rows_without_a_clerk_id_never_read(
) {
    let (test, db) = database(ODD, odd_shape()).await;
    // The application's own row, no Clerk id, holding the address the user claims.
    test.exec(r#"INSERT INTO "we""ird table" ("mail; --") VALUES ('ada@example.com')"#)
        .await;
    let day = NaiveDate::from_ymd_opt(2024, 5, 1).expect("a day");
    let writes = Writes {
        bookkeeping: vec![planned("user_1", 1, Some("ada2@example.com"))],
        rows: vec![row("user_1", false)],
        mapped: mapped(
            vec![MappedRow {
                insert: vec![
                    (1, text("user_1")),
                    (2, text("ada2@example.com")),
                    (3, Value::BigInt(9_007_199_254_740_993)),
                    (4, Value::Int(-7)),
                    (5, Value::Float(0.25)),
                    (6, Value::Decimal("12.50".to_owned())),
                    (7, Value::Bool(true)),
                    (8, Value::Json(json!({"plan": "pro", "seats": 3}))),
                    (9, Value::Date(day)),
                    (10, Value::Null),
                    (11, Value::Timestamp(at(T0))),
                ],
                update: Vec::new(),
            }],
            Vec::new(),
            Vec::new(),
        ),
        ..Writes::default()
    };

    let (read, _) = transact(&db, request(&["user_1"], &["ada@example.com"], &[]), writes)
        .await
        .expect("the insert");

    assert!(read.addresses.contains("ada@example.com"));
    assert!(
        read.rows.is_empty(),
        "a row without a Clerk id is no user's"
    );
    let stored = rows(
        &test,
        r#"SELECT json_object('clerk', "clerk ""id""", 'big', big, 'small', small, 'ratio', ratio,
                'price', price, 'price_type', typeof(price), 'flag', flag, 'meta', meta,
                'born', born, 'seen', seen, 'seen_type', typeof(seen), 'touched', touched) AS j
             FROM "we""ird table" WHERE "clerk ""id""" IS NOT NULL"#,
    );
    assert_eq!(
        stored,
        vec![json!({
            "clerk": "user_1", "big": 9_007_199_254_740_993_i64, "small": -7, "ratio": 0.25,
            // DECIMAL has NUMERIC affinity: SQLite keeps the text as the number it spells.
            "price": 12.5, "price_type": "real", "flag": 1,
            "meta": "{\"plan\":\"pro\",\"seats\":3}", "born": "2024-05-01T00:00:00.000+00:00",
            "seen": null, "seen_type": "null", "touched": "2024-05-01T12:00:00.000+00:00",
        })]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_vacates_its_address_for_another_and_moves_to_a_new_one_or_to_null() {
    let (test, db) = database(AUTOINCREMENT, autoincrement_shape()).await;
    test.exec(
        "INSERT INTO users (clerk_user_id, email_address, updated_at)
           VALUES ('user_a', 'a@example.com', '2024-05-01T12:00:00.000+00:00'),
                  ('user_b', 'b@example.com', '2024-05-01T12:00:00.000+00:00')",
    )
    .await;
    // The two swap addresses: b leaves its own first, a takes it, b moves to a's old one.
    let writes = Writes {
        vacate: vec!["user_b".to_owned()],
        rows: vec![row("user_a", true)],
        moves: vec![("user_b".to_owned(), "a@example.com".to_owned())],
        mapped: mapped(
            vec![MappedRow {
                insert: Vec::new(),
                update: vec![(2, text("b@example.com"))],
            }],
            vec![text("a@example.com")],
            Vec::new(),
        ),
        ..Writes::default()
    };

    let (read, _) = transact(&db, request(&["user_a", "user_b"], &[], &[]), writes)
        .await
        .expect("the swap");

    assert_eq!(read.addresses.len(), 2);
    let addresses = "SELECT json_object('clerk', clerk_user_id, 'email', email_address) AS j
                       FROM users ORDER BY clerk_user_id";
    assert_eq!(
        rows(&test, addresses),
        vec![
            json!({"clerk": "user_a", "email": "b@example.com"}),
            json!({"clerk": "user_b", "email": "a@example.com"}),
        ]
    );

    // A move to NULL leaves the row without an address.
    let writes = Writes {
        moves: vec![("user_b".to_owned(), String::new())],
        mapped: mapped(Vec::new(), vec![Value::Null], Vec::new()),
        ..Writes::default()
    };
    transact(&db, request(&["user_b"], &[], &[]), writes)
        .await
        .expect("the move to NULL");
    assert_eq!(
        rows(&test, addresses),
        vec![
            json!({"clerk": "user_a", "email": "b@example.com"}),
            json!({"clerk": "user_b", "email": null}),
        ]
    );
    let read = snapshot(&db, request(&["user_b"], &[], &[])).await;
    assert_eq!(read.rows["user_b"].address, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_delete_goes_through_where_no_foreign_key_refuses_it_and_is_deferred_where_one_does()
{
    let (test, db) = database(CUID, cuid_shape()).await;
    test.exec(
        r#"INSERT INTO "User" (id, "clerkId", email, "updatedAt")
             VALUES ('c1', 'user_1', 'a@example.com', '2024-05-01T12:00:00.000+00:00'),
                    ('c2', 'user_2', 'b@example.com', '2024-05-01T12:00:00.000+00:00');
           INSERT INTO "Post" (id, title, "authorId") VALUES ('p1', 'kept', 'c2');"#,
    )
    .await;
    let tombstone = |user: &str| BookkeepingWrite {
        tombstone: true,
        ..planned(user, 5, None)
    };
    let writes = Writes {
        bookkeeping: vec![tombstone("user_1"), tombstone("user_2")],
        deletes: vec!["user_1".to_owned(), "user_2".to_owned()],
        record: vec![
            record("msg_1", "user_1", Outcome::Applied, Some(Outcome::Deferred)),
            record("msg_2", "user_2", Outcome::Applied, Some(Outcome::Deferred)),
        ],
        mapped: mapped(Vec::new(), Vec::new(), Vec::new()),
        ..Writes::default()
    };

    let (_, deleted) = transact(
        &db,
        request(&["user_1", "user_2"], &[], &["msg_1", "msg_2"]),
        writes,
    )
    .await
    .expect("the deletes");

    assert_eq!(deleted.0.into_iter().collect::<Vec<_>>(), ["user_1"]);
    assert_eq!(
        rows(&test, r#"SELECT json_object('id', id) AS j FROM "User""#),
        vec![json!({"id": "c2"})]
    );
    assert_eq!(
        bookkeeping(&test),
        vec![
            json!({"user": "user_1", "version": 5, "email": null, "tombstone": 1, "pending": 0}),
            json!({"user": "user_2", "version": 5, "email": null, "tombstone": 1, "pending": 1}),
        ]
    );
    assert_eq!(
        deliveries(&test),
        vec![
            json!({"id": "msg_1", "outcome": "applied"}),
            json!({"id": "msg_2", "outcome": "deferred"}),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_delete_sets_its_columns_and_keeps_the_row() {
    let (test, db) = database(SOFT_DELETE, soft_delete_shape()).await;
    test.exec(
        r#"INSERT INTO "User" (id, clerk_id, email, "firstName", "lastName", "updatedAt")
             VALUES ('u1', 'user_1', 'ada@example.com', 'A', 'L', '2024-05-01T12:00:00.000+00:00')"#,
    )
    .await;
    let writes = Writes {
        bookkeeping: vec![BookkeepingWrite {
            tombstone: true,
            ..planned("user_1", 9, None)
        }],
        deletes: vec!["user_1".to_owned()],
        record: vec![record(
            "msg_1",
            "user_1",
            Outcome::Applied,
            Some(Outcome::Deferred),
        )],
        mapped: mapped(
            Vec::new(),
            Vec::new(),
            vec![
                (6, Value::Bool(true)),
                (7, Value::Timestamp(at(T0 + 60_000))),
            ],
        ),
        ..Writes::default()
    };

    let (_, deleted) = transact(&db, request(&["user_1"], &[], &["msg_1"]), writes)
        .await
        .expect("the soft delete");

    assert!(deleted.0.contains("user_1"));
    assert_eq!(
        rows(
            &test,
            r#"SELECT json_object('id', id, 'deleted', deleted, 'at', "deletedAt") AS j FROM "User""#
        ),
        vec![json!({"id": "u1", "deleted": 1, "at": "2024-05-01T12:01:00.000+00:00"})]
    );
    assert_eq!(
        bookkeeping(&test),
        vec![json!({"user": "user_1", "version": 9, "email": null, "tombstone": 1, "pending": 0})]
    );
    assert_eq!(
        deliveries(&test),
        vec![json!({"id": "msg_1", "outcome": "applied"})]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enum_a_uuid_and_a_boolean_are_stored_as_prisma_stores_them() {
    let (test, db) = database(SOFT_DELETE, soft_delete_shape()).await;
    let key = uuid::Uuid::from_u128(0x0192_3e4f_5a6b_7c8d_9eaf_b0c1_d2e3_f405);
    let writes = Writes {
        rows: vec![row("user_1", false)],
        mapped: mapped(
            vec![MappedRow {
                insert: vec![
                    (0, Value::Uuid(key)),
                    (1, text("user_1")),
                    (2, text("ada@example.com")),
                    (3, text("Ada")),
                    (4, text("Lovelace")),
                    (5, Value::Enum("ADMIN".to_owned())),
                    (6, Value::Bool(false)),
                    (9, Value::Timestamp(at(T0))),
                ],
                update: Vec::new(),
            }],
            Vec::new(),
            Vec::new(),
        ),
        ..Writes::default()
    };

    transact(&db, request(&["user_1"], &[], &[]), writes)
        .await
        .expect("the insert");

    assert_eq!(
        rows(
            &test,
            r#"SELECT json_object('id', id, 'role', role, 'deleted', deleted,
                    'deleted_type', typeof(deleted), 'at', "deletedAt") AS j FROM "User""#
        ),
        vec![json!({
            "id": "01923e4f-5a6b-7c8d-9eaf-b0c1d2e3f405", "role": "ADMIN", "deleted": 0,
            "deleted_type": "integer", "at": null,
        })]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_write_rolls_the_whole_unit_of_work_back() {
    let (test, db) = database(AUTOINCREMENT, autoincrement_shape()).await;
    let insert = |user: &str, updated: bool| MappedRow {
        insert: [(1, text(user)), (8, Value::Timestamp(at(T0)))]
            .into_iter()
            .filter(|(index, _)| updated || *index != 8)
            .collect(),
        update: Vec::new(),
    };
    // The second row leaves out the required `updated_at`: NOT NULL refuses it.
    let writes = Writes {
        bookkeeping: vec![planned("user_1", 1, None), planned("user_2", 1, None)],
        rows: vec![row("user_1", false), row("user_2", false)],
        record: vec![record("msg_1", "user_1", Outcome::Applied, None)],
        mapped: mapped(
            vec![insert("user_1", true), insert("user_2", false)],
            Vec::new(),
            Vec::new(),
        ),
        ..Writes::default()
    };

    let result = transact(&db, request(&["user_1", "user_2"], &[], &["msg_1"]), writes).await;

    assert!(matches!(result, Err(DbError::Refused(_))), "{result:?}");
    assert_eq!(test.number("SELECT count(*) AS n FROM users").await, 0);
    assert!(
        bookkeeping(&test).is_empty(),
        "the rows made are undone too"
    );
    assert!(deliveries(&test).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_without_their_column_values_or_not_one_for_one_are_refused_as_a_bug() {
    let (test, db) = database(AUTOINCREMENT, autoincrement_shape()).await;
    let without = Writes {
        bookkeeping: vec![planned("user_1", 1, None)],
        ..Writes::default()
    };
    let short = Writes {
        rows: vec![row("user_1", false)],
        mapped: mapped(Vec::new(), Vec::new(), Vec::new()),
        ..Writes::default()
    };

    for writes in [without, short] {
        let result = transact(&db, request(&["user_1"], &[], &[]), writes).await;
        assert!(matches!(result, Err(DbError::Internal(_))), "{result:?}");
    }
    assert!(bookkeeping(&test).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_of_a_row_that_is_gone_fails_as_transient() {
    let (test, db) = database(CUID, cuid_shape()).await;
    for update in [vec![(3, text("Ada"))], Vec::new()] {
        let writes = Writes {
            bookkeeping: vec![planned("user_1", 1, None)],
            rows: vec![row("user_1", true)],
            mapped: mapped(
                vec![MappedRow {
                    insert: Vec::new(),
                    update,
                }],
                Vec::new(),
                Vec::new(),
            ),
            ..Writes::default()
        };

        let result = transact(&db, request(&["user_1"], &[], &[]), writes).await;

        assert!(matches!(result, Err(DbError::Unavailable(_))), "{result:?}");
    }
    assert!(bookkeeping(&test).is_empty());
}
