//! The mapped port on PostgreSQL (`Pg::transact_mapped`): one unit of work on a Prisma user
//! table other than the seed's, through the public API only (`Database::open`,
//! `migrate_own`, `use_shape`, `transact` with hand-made requests and writes), on the shapes
//! of `fixtures/prisma/*.postgresql.sql`. Each test asserts the snapshot the unit of work read
//! and the table's rows column by column, read back with SQL of its own; most run on a direct
//! connection and through a transaction-mode PgBouncer (`Backend::Pooled`).

mod common;

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use clerk_sync::db::port::{
    AppRow, Bookkeeping, BookkeepingWrite, Deleted, MappedRow, MappedWrites, Record, Request,
    RowWrite, Snapshot, Writes,
};
use clerk_sync::db::{Database, DatabaseUrl, DbError, PoolOptions};
use clerk_sync::domain::table::{Bind, WriteColumn, WriteShape};
use clerk_sync::domain::{Outcome, Value};
use common::{Backend, TestDb};
use diesel::sql_types::Text;
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::json;

/// Where a scenario runs: PostgreSQL directly or through the transaction pooler; the lock
/// and the read through the shape's executor (as `serve` runs where it migrates) or as
/// pipelined statements (`--no-migrate` before any instance made the executor).
#[derive(Debug, Clone, Copy)]
struct On {
    backend: Backend,
    executor: bool,
}

/// Runs an async scenario on PostgreSQL directly and through the transaction pooler, each
/// through the executor and through the statements.
macro_rules! on_postgres_and_pooled {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use crate::common::Backend::{Pooled, Postgres};
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres_executor() {
                    super::$name(super::On { backend: Postgres, executor: true }).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres_statements() {
                    super::$name(super::On { backend: Postgres, executor: false }).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn pooled_executor() {
                    super::$name(super::On { backend: Pooled, executor: true }).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn pooled_statements() {
                    super::$name(super::On { backend: Pooled, executor: false }).await
                }
            }
        )*
    };
}

/// Runs an async scenario on PostgreSQL directly, through the executor and through the
/// statements.
macro_rules! on_postgres {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use crate::common::Backend::Postgres;
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn executor() {
                    super::$name(super::On { backend: Postgres, executor: true }).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn statements() {
                    super::$name(super::On { backend: Postgres, executor: false }).await
                }
            }
        )*
    };
}

on_postgres_and_pooled!(
    an_insert_writes_its_columns_and_leaves_the_others_to_their_defaults,
    an_update_writes_its_columns_only,
    a_failing_write_rolls_the_whole_unit_of_work_back,
    vacate_and_move_swap_two_rows_addresses,
    a_hard_delete_goes_through_unless_a_foreign_key_refuses_it,
    a_soft_delete_sets_its_columns_and_keeps_the_row,
);

on_postgres!(
    a_row_the_application_inserted_with_the_clerk_id_is_read_as_existing,
    the_snapshot_holds_every_row_and_claimant_of_a_locked_address,
    a_lone_requests_snapshot_holds_every_row_claimant_and_record_of_its_addresses,
    the_addresses_involved_are_locked_and_without_an_address_column_none_are,
    the_users_bookkeeping_rows_are_locked_for_update,
    a_lone_users_bookkeeping_row_is_locked_for_update_or_made,
    every_bind_is_cast_to_its_column_type_and_no_value_reaches_an_error,
    a_plan_without_its_column_values_is_an_internal_error_and_writes_nothing,
    statements_planned_on_empty_tables_reach_them_by_key_once_they_have_grown,
);

#[derive(Debug, Clone, Copy)]
enum Fixture {
    /// `"User"`: cuid `id` made by the client, `clerkId`, unique `email`, `"Post"` → `id`.
    Cuid,
    /// `"users"`: serial `id`, `clerk_user_id`, optional unique `email_address`, `plan`.
    Autoincrement,
    /// `"User"`: uuid `id`, `clerk_id`, non-unique `email`, enum `"Role"`, soft delete.
    UuidSoftDelete,
}

fn column(name: &str, bind: Bind) -> WriteColumn {
    WriteColumn {
        name: name.into(),
        field: name.into(),
        bind,
    }
}

impl Fixture {
    fn ddl(self) -> &'static str {
        match self {
            Fixture::Cuid => "fixtures/prisma/cuid-clerkid.postgresql.sql",
            Fixture::Autoincrement => "fixtures/prisma/autoincrement-mapped.postgresql.sql",
            Fixture::UuidSoftDelete => "fixtures/prisma/uuid-soft-delete.postgresql.sql",
        }
    }

    fn shape(self) -> WriteShape {
        match self {
            Fixture::Cuid => WriteShape {
                schema: None,
                name: "User".into(),
                columns: vec![
                    column("id", Bind::Text),
                    column("clerkId", Bind::Text),
                    column("email", Bind::Text),
                    column("firstName", Bind::Text),
                    column("lastName", Bind::Text),
                    column("imageUrl", Bind::Text),
                    column("createdAt", Bind::Timestamp),
                    column("updatedAt", Bind::Timestamp),
                ],
                clerk_id: 1,
                unique_address: Some(2),
                updated_at: Some(7),
                created_at: None,
            },
            Fixture::Autoincrement => WriteShape {
                schema: Some("public".into()),
                name: "users".into(),
                columns: vec![
                    column("id", Bind::Int),
                    column("clerk_user_id", Bind::Text),
                    column("email_address", Bind::Text),
                    column("name", Bind::Text),
                    column("username", Bind::Text),
                    column("avatar_url", Bind::Text),
                    column("plan", Bind::Text),
                    column("created_at", Bind::Timestamp),
                    column("updated_at", Bind::Timestamp),
                ],
                clerk_id: 1,
                unique_address: Some(2),
                updated_at: Some(8),
                created_at: None,
            },
            Fixture::UuidSoftDelete => WriteShape {
                schema: None,
                name: "User".into(),
                columns: vec![
                    column("id", Bind::Uuid),
                    column("clerk_id", Bind::Text),
                    column("email", Bind::Text),
                    column("firstName", Bind::Text),
                    column("lastName", Bind::Text),
                    column("role", Bind::Enum("\"Role\"".into())),
                    column("deleted", Bind::Bool),
                    column("deletedAt", Bind::Timestamp),
                    column("createdAt", Bind::Timestamp),
                    column("updatedAt", Bind::Timestamp),
                ],
                clerk_id: 1,
                unique_address: None,
                updated_at: Some(9),
                created_at: None,
            },
        }
    }
}

/// A fresh database holding the fixture's tables and clerk-sync's own, and a pool writing
/// the fixture's table.
async fn setup(on: On, fixture: Fixture) -> (TestDb, Database) {
    setup_with(on, fixture, PoolOptions::default()).await
}

/// [`setup`] with `options`.
async fn setup_with(on: On, fixture: Fixture, options: PoolOptions) -> (TestDb, Database) {
    let db = TestDb::empty(on.backend).await;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(fixture.ddl());
    db.exec(&std::fs::read_to_string(path).expect("fixture DDL"))
        .await;
    let database = open_with(&db, fixture.shape(), on.executor, options).await;
    (db, database)
}

/// A pool on `db`, migrated, writing `shape`'s table, through its executor or not.
async fn open(db: &TestDb, shape: WriteShape, executor: bool) -> Database {
    open_with(db, shape, executor, PoolOptions::default()).await
}

/// [`open`] with `options`.
async fn open_with(
    db: &TestDb,
    shape: WriteShape,
    executor: bool,
    options: PoolOptions,
) -> Database {
    let mut url = DatabaseUrl::parse(&db.url).expect("url");
    if let Some(direct) = &db.direct {
        url = url
            .with_direct(DatabaseUrl::parse(direct).expect("direct url"))
            .expect("direct url");
    }
    let database = Database::open(&url, options).expect("open");
    database.migrate_own().await.expect("migrate");
    database.use_shape(shape).expect("shape");
    let used = database.prepare_mapped(executor).await.expect("executor");
    assert_eq!(used, executor, "the executor in use");
    database
}

/// A lone delivery's writes for `user`: its bookkeeping, its row (inserted or updated) and
/// its record, as one statement.
fn lone_write(user: &str, version: i64, exists: bool) -> Writes {
    let email = format!("{user}@x.test");
    let values = vec![
        (1, text(user)),
        (2, text(&email)),
        (7, Value::Timestamp(at(version))),
    ];
    let row = if exists {
        update(values)
    } else {
        let mut values = values;
        values.push((0, text(&format!("c{user}"))));
        insert(values)
    };
    Writes {
        bookkeeping: vec![keep(user, version, Some(&email))],
        rows: vec![row_write(user, exists)],
        record: vec![record(
            &format!("msg_{user}_{version}"),
            user,
            Outcome::Applied,
            None,
        )],
        mapped: mapped(vec![row]),
        ..Writes::default()
    }
}

/// One unit of work writing `writes` whatever it reads; answers what it read.
async fn run(
    database: &Database,
    request: Request,
    writes: Writes,
) -> Result<(Snapshot, Deleted), DbError> {
    database
        .transact(request, move |snapshot| Ok((writes, snapshot.clone())))
        .await
}

fn request(users: &[&str], claims: &[&str], ids: &[&str]) -> Request {
    Request {
        users: users.iter().map(|u| (*u).to_owned()).collect(),
        initial: users.iter().map(|_| Bookkeeping::new_user()).collect(),
        claims: claims.iter().map(|c| (*c).to_owned()).collect(),
        ids: ids.iter().map(|i| (*i).to_owned()).collect(),
    }
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

/// 2024-05-01T12:00:00.123Z plus `seconds`.
fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(1_714_564_800_123 + seconds * 1000)
        .single()
        .expect("time")
}

/// A row write; the seed's own fields are not the mapped writer's business.
fn row_write(id: &str, exists: bool) -> RowWrite {
    RowWrite {
        id: id.into(),
        name: None,
        address: String::new(),
        role: None,
        exists,
        created_at: at(0),
        updated_at: at(0),
        digest: String::new(),
    }
}

fn keep(user: &str, version: i64, email: Option<&str>) -> BookkeepingWrite {
    BookkeepingWrite {
        user_id: user.into(),
        version,
        digest: format!("d{version}"),
        email: email.map(Into::into),
        role_from_webhook: false,
        tombstone: false,
        attempted: false,
    }
}

fn record(id: &str, user: &str, outcome: Outcome, if_refused: Option<Outcome>) -> Record {
    Record {
        svix_id: id.into(),
        event_type: "user.updated".into(),
        user_id: Some(user.into()),
        outcome,
        if_refused,
    }
}

fn mapped(rows: Vec<MappedRow>) -> Option<Box<MappedWrites>> {
    Some(Box::new(MappedWrites {
        rows,
        ..MappedWrites::default()
    }))
}

fn insert(values: Vec<(usize, Value)>) -> MappedRow {
    MappedRow {
        insert: values,
        update: Vec::new(),
    }
}

fn update(values: Vec<(usize, Value)>) -> MappedRow {
    MappedRow {
        insert: Vec::new(),
        update: values,
    }
}

#[derive(QueryableByName)]
struct Json {
    #[diesel(sql_type = Text)]
    j: String,
}

/// The rows `sql` selects, as JSON objects (`row_to_json`: timestamps as
/// `2024-05-01T12:00:00.123`).
async fn rows(db: &TestDb, sql: &str) -> Vec<serde_json::Value> {
    let mut conn = AsyncPgConnection::establish(db.direct.as_deref().unwrap_or(&db.url))
        .await
        .expect("connect");
    let wrapped = format!("SELECT COALESCE(json_agg(t), '[]')::text AS j FROM ({sql}) t");
    let json: Json = diesel::sql_query(&wrapped)
        .get_result(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{wrapped}: {e}"));
    serde_json::from_str::<Vec<serde_json::Value>>(&json.j).expect("json")
}

/// clerk-sync's bookkeeping rows: user, version, digest, email, tombstoned, pending.
async fn bookkeeping(db: &TestDb) -> Vec<serde_json::Value> {
    rows(
        db,
        "SELECT user_id, version, digest, email, deleted_at IS NOT NULL AS deleted, delete_pending
           FROM clerk_sync.users ORDER BY user_id",
    )
    .await
}

/// The deliveries recorded: id and outcome.
async fn deliveries(db: &TestDb) -> Vec<serde_json::Value> {
    rows(
        db,
        "SELECT svix_id, outcome FROM clerk_sync.deliveries ORDER BY svix_id",
    )
    .await
}

fn stored(version: i64, digest: &str, email: Option<&str>) -> Bookkeeping {
    Bookkeeping {
        version,
        digest: digest.into(),
        email: email.map(Into::into),
        ..Bookkeeping::new_user()
    }
}

async fn an_insert_writes_its_columns_and_leaves_the_others_to_their_defaults(on: On) {
    // Arrange
    let (db, database) = setup(on, Fixture::Cuid).await;
    let writes = Writes {
        bookkeeping: vec![keep("user_a", 5, Some("a@x.test"))],
        rows: vec![row_write("user_a", false)],
        record: vec![record("msg_1", "user_a", Outcome::Applied, None)],
        mapped: mapped(vec![insert(vec![
            (0, text("ck_made_by_the_mapping")),
            (1, text("user_a")),
            (2, text("a@x.test")),
            (3, text("Ada")),
            (4, Value::Null),
            (7, Value::Timestamp(at(60))),
        ])]),
        ..Writes::default()
    };

    // Act
    let (snapshot, deleted) = run(
        &database,
        request(&["user_a"], &["a@x.test"], &["msg_1"]),
        writes,
    )
    .await
    .expect("unit of work");

    // Assert: what was read before the write
    assert_eq!(snapshot.made.iter().collect::<Vec<_>>(), ["user_a"]);
    assert_eq!(snapshot.users.get("user_a"), Some(&Bookkeeping::new_user()));
    assert!(snapshot.rows.is_empty());
    assert_eq!(snapshot.addresses.iter().collect::<Vec<_>>(), ["a@x.test"]);
    assert!(snapshot.recorded.is_empty());
    assert!(deleted.0.is_empty());
    // ... and what was written
    let table = rows(
        &db,
        r#"SELECT id, "clerkId", email, "firstName", "lastName", "imageUrl", "updatedAt",
                  "createdAt" IS NOT NULL AS created FROM "User""#,
    )
    .await;
    assert_eq!(
        table,
        [
            json!({"id": "ck_made_by_the_mapping", "clerkId": "user_a", "email": "a@x.test",
                "firstName": "Ada", "lastName": null, "imageUrl": null,
                "updatedAt": "2024-05-01T12:01:00.123", "created": true})
        ]
    );
    assert_eq!(
        bookkeeping(&db).await,
        [
            json!({"user_id": "user_a", "version": 5, "digest": "d5", "email": "a@x.test",
                "deleted": false, "delete_pending": false})
        ]
    );
    assert_eq!(
        deliveries(&db).await,
        [json!({"svix_id": "msg_1", "outcome": "applied"})]
    );

    // Act: the next unit of work reads what this one wrote
    let (snapshot, _) = run(
        &database,
        request(&["user_a"], &[], &["msg_1", "msg_2"]),
        Writes::default(),
    )
    .await
    .expect("second unit of work");

    // Assert
    assert!(snapshot.made.is_empty());
    assert_eq!(
        snapshot.users.get("user_a"),
        Some(&stored(5, "d5", Some("a@x.test")))
    );
    assert_eq!(
        snapshot.rows.get("user_a"),
        Some(&AppRow {
            address: Some("a@x.test".into()),
            updated_ms: at(60).timestamp_millis(),
        })
    );
    assert_eq!(snapshot.recorded.iter().collect::<Vec<_>>(), ["msg_1"]);
    assert_eq!(snapshot.addresses.iter().collect::<Vec<_>>(), ["a@x.test"]);
}

async fn an_update_writes_its_columns_only(on: On) {
    // Arrange: a row made with the database's serial key and defaults
    let (db, database) = setup(on, Fixture::Autoincrement).await;
    let made = Writes {
        rows: vec![row_write("user_a", false)],
        mapped: mapped(vec![insert(vec![
            (1, text("user_a")),
            (2, text("a@x.test")),
            (3, text("Ada Lovelace")),
            (8, Value::Timestamp(at(0))),
        ])]),
        ..Writes::default()
    };
    run(&database, request(&["user_a"], &[], &[]), made)
        .await
        .expect("insert");
    let before = rows(&db, "SELECT id, plan, created_at FROM users").await;
    assert_eq!(before.len(), 1);
    assert_eq!(before[0]["id"], json!(1));
    assert_eq!(before[0]["plan"], json!("free"));

    // Act: an update naming two columns
    let writes = Writes {
        rows: vec![row_write("user_a", true)],
        mapped: mapped(vec![update(vec![
            (3, text("Ada King")),
            (8, Value::Timestamp(at(30))),
        ])]),
        ..Writes::default()
    };
    let (snapshot, _) = run(&database, request(&["user_a"], &[], &[]), writes)
        .await
        .expect("update");

    // Assert
    assert_eq!(
        snapshot.rows.get("user_a"),
        Some(&AppRow {
            address: Some("a@x.test".into()),
            updated_ms: at(0).timestamp_millis(),
        })
    );
    assert_eq!(
        rows(
            &db,
            "SELECT id, clerk_user_id, email_address, name, username, plan, created_at, updated_at FROM users"
        )
        .await,
        [json!({"id": 1, "clerk_user_id": "user_a", "email_address": "a@x.test",
                "name": "Ada King", "username": null, "plan": "free",
                "created_at": before[0]["created_at"], "updated_at": "2024-05-01T12:00:30.123"})]
    );

    // Act: an update naming no column
    let writes = Writes {
        rows: vec![row_write("user_a", true)],
        mapped: mapped(vec![update(Vec::new())]),
        ..Writes::default()
    };
    run(&database, request(&["user_a"], &[], &[]), writes)
        .await
        .expect("an empty update");

    // Assert: nothing changed
    assert_eq!(
        rows(&db, "SELECT name, updated_at FROM users").await,
        [json!({"name": "Ada King", "updated_at": "2024-05-01T12:00:30.123"})]
    );

    // Act: an update of a row the application deleted since
    db.exec("DELETE FROM users").await;
    let writes = Writes {
        bookkeeping: vec![keep("user_a", 9, Some("a@x.test"))],
        rows: vec![row_write("user_a", true)],
        record: vec![record("msg_9", "user_a", Outcome::Applied, None)],
        mapped: mapped(vec![update(vec![(3, text("Ada"))])]),
        ..Writes::default()
    };
    let result = run(&database, request(&["user_a"], &[], &["msg_9"]), writes).await;

    // Assert: transient, and nothing of it written
    assert!(matches!(result, Err(DbError::Unavailable(_))), "{result:?}");
    assert_eq!(bookkeeping(&db).await[0]["version"], json!(-1));
    assert!(deliveries(&db).await.is_empty());
}

async fn a_row_the_application_inserted_with_the_clerk_id_is_read_as_existing(on: On) {
    // Arrange: the application's own row, no bookkeeping
    let (db, database) = setup(on, Fixture::Cuid).await;
    db.exec(
        r#"INSERT INTO "User" (id, "clerkId", email, "updatedAt")
           VALUES ('app_1', 'user_b', 'b@x.test', '2024-05-01 12:00:10.5')"#,
    )
    .await;

    // Act: the row adopted by an update
    let writes = Writes {
        bookkeeping: vec![keep("user_b", 3, Some("b@x.test"))],
        rows: vec![row_write("user_b", true)],
        mapped: mapped(vec![update(vec![(3, text("Grace"))])]),
        ..Writes::default()
    };
    let (snapshot, _) = run(&database, request(&["user_b"], &["b@x.test"], &[]), writes)
        .await
        .expect("unit of work");

    // Assert
    assert_eq!(snapshot.made.iter().collect::<Vec<_>>(), ["user_b"]);
    assert_eq!(
        snapshot.rows.get("user_b"),
        Some(&AppRow {
            address: Some("b@x.test".into()),
            updated_ms: 1_714_564_810_500,
        })
    );
    assert_eq!(
        rows(
            &db,
            r#"SELECT id, "clerkId", email, "firstName" FROM "User""#
        )
        .await,
        [json!({"id": "app_1", "clerkId": "user_b", "email": "b@x.test", "firstName": "Grace"})]
    );
}

/// On the autoincrement shape: user_c's row holds c@ (no bookkeeping) and user_d claims it; a
/// row without a Clerk id holds d@; user_a's row holds a@ (updated at `a_updated`) while its
/// bookkeeping claims `a_claims`; user_z claims z@, involved in nothing.
async fn held_and_claimed(db: &TestDb, a_updated: &str, a_claims: &str) {
    db.exec(&format!(
        "ALTER TABLE users ALTER COLUMN clerk_user_id DROP NOT NULL;
         INSERT INTO users (clerk_user_id, email_address, updated_at) VALUES
             ('user_c', 'c@x.test', '2024-05-01 12:00:00'),
             (NULL, 'd@x.test', '2024-05-01 12:00:00'),
             ('user_a', 'a@x.test', '{a_updated}');
         INSERT INTO clerk_sync.users (user_id, version, digest, email) VALUES
             ('user_d', 7, 'd7', 'c@x.test'),
             ('user_a', 2, 'd2', '{a_claims}'),
             ('user_z', 1, 'd1', 'z@x.test');"
    ))
    .await;
}

async fn the_snapshot_holds_every_row_and_claimant_of_a_locked_address(on: On) {
    // Arrange: user_c's row holds c@ (the application's, no bookkeeping); user_d claims it;
    // a row without a Clerk id holds d@; user_a's bookkeeping claims e@, its row holds a@
    let (db, database) = setup(on, Fixture::Autoincrement).await;
    held_and_claimed(&db, "infinity", "e@x.test").await;

    // Act: user_a claims c@ and d@; user_new is made with values past `initial`'s end
    let mut request = request(&["user_a", "user_new"], &["d@x.test", "c@x.test"], &[]);
    request.initial.truncate(1);
    let (snapshot, _) = run(&database, request, Writes::default())
        .await
        .expect("unit of work");

    // Assert
    let mut addresses: Vec<_> = snapshot.addresses.iter().cloned().collect();
    addresses.sort();
    assert_eq!(addresses, ["a@x.test", "c@x.test", "d@x.test", "e@x.test"]);
    assert_eq!(snapshot.made.iter().collect::<Vec<_>>(), ["user_new"]);
    let mut users: Vec<_> = snapshot.users.keys().cloned().collect();
    users.sort();
    assert_eq!(users, ["user_a", "user_d", "user_new"]);
    assert_eq!(
        snapshot.users.get("user_new"),
        Some(&Bookkeeping::new_user())
    );
    let mut held: Vec<_> = snapshot
        .rows
        .iter()
        .map(|(id, row)| (id.clone(), row.address.clone(), row.updated_ms))
        .collect();
    held.sort();
    assert_eq!(
        held,
        [
            // An infinite update time cannot be read: 0.
            ("user_a".to_owned(), Some("a@x.test".to_owned()), 0),
            (
                "user_c".to_owned(),
                Some("c@x.test".to_owned()),
                1_714_564_800_000
            ),
        ]
    );
}

async fn a_lone_requests_snapshot_holds_every_row_claimant_and_record_of_its_addresses(on: On) {
    // Arrange: user_c's row holds c@ (no bookkeeping); user_d claims c@; a row without a
    // Clerk id holds d@; user_a's bookkeeping claims d@, its row holds a@; msg_1 is recorded
    let (db, database) = setup(on, Fixture::Autoincrement).await;
    held_and_claimed(&db, "2024-05-01 12:00:01", "d@x.test").await;
    db.exec(
        "INSERT INTO clerk_sync.deliveries (svix_id, event_type, user_id, outcome) VALUES
             ('msg_1', 'user.updated', 'user_a', 'applied')",
    )
    .await;

    // Act: one user, one claim, one delivery id (the lone executor's request)
    let (snapshot, _) = run(
        &database,
        request(&["user_a"], &["c@x.test"], &["msg_1"]),
        Writes::default(),
    )
    .await
    .expect("unit of work");

    // Assert
    let sorted = |set: &dyn Fn() -> Vec<String>| {
        let mut v = set();
        v.sort();
        v
    };
    assert_eq!(
        sorted(&|| snapshot.addresses.iter().cloned().collect()),
        ["a@x.test", "c@x.test", "d@x.test"]
    );
    assert_eq!(
        sorted(&|| snapshot.foreign.iter().cloned().collect()),
        ["d@x.test"]
    );
    assert!(snapshot.made.is_empty());
    assert_eq!(
        sorted(&|| snapshot.recorded.iter().cloned().collect()),
        ["msg_1"]
    );
    assert_eq!(
        sorted(&|| snapshot.users.keys().cloned().collect()),
        ["user_a", "user_d"]
    );
    assert_eq!(
        snapshot.users.get("user_a"),
        Some(&stored(2, "d2", Some("d@x.test")))
    );
    let mut held: Vec<_> = snapshot
        .rows
        .iter()
        .map(|(id, row)| (id.clone(), row.address.clone(), row.updated_ms))
        .collect();
    held.sort();
    assert_eq!(
        held,
        [
            (
                "user_a".to_owned(),
                Some("a@x.test".to_owned()),
                1_714_564_801_000
            ),
            (
                "user_c".to_owned(),
                Some("c@x.test".to_owned()),
                1_714_564_800_000
            ),
        ]
    );
}

async fn the_addresses_involved_are_locked_and_without_an_address_column_none_are(on: On) {
    for fixture in [Fixture::Cuid, Fixture::UuidSoftDelete] {
        // Arrange: another transaction holds the advisory lock of a@
        let (db, database) = setup(on, fixture).await;
        let holder = db
            .hold("BEGIN; SELECT pg_advisory_xact_lock(hashtextextended('a@x.test', 7))")
            .await;

        // Act
        let unit = tokio::spawn({
            let database = database.clone();
            async move {
                run(
                    &database,
                    request(&["user_a"], &["a@x.test"], &[]),
                    Writes::default(),
                )
                .await
            }
        });
        tokio::time::sleep(Duration::from_millis(400)).await;
        let finished_while_held = unit.is_finished();
        holder.rollback().await;
        let (snapshot, _) = unit.await.expect("task").expect("unit of work");

        // Assert
        match fixture {
            Fixture::Cuid => {
                assert!(!finished_while_held, "the address lock was not taken");
                assert_eq!(snapshot.addresses.iter().collect::<Vec<_>>(), ["a@x.test"]);
            }
            _ => {
                assert!(finished_while_held, "an address was locked");
                assert!(snapshot.addresses.is_empty());
            }
        }
    }
}

/// Runs `request` while another transaction holds user_a's bookkeeping row (version 1,
/// digest d1) FOR KEY SHARE, which only FOR UPDATE waits for; answers whether the unit of work
/// finished while the row was held, then its snapshot.
async fn read_while_key_share_held(
    db: &TestDb,
    database: &Database,
    request: Request,
) -> (bool, Snapshot) {
    db.exec("INSERT INTO clerk_sync.users (user_id, version, digest) VALUES ('user_a', 1, 'd1')")
        .await;
    let holder = db
        .hold("BEGIN; SELECT 1 FROM clerk_sync.users WHERE user_id = 'user_a' FOR KEY SHARE")
        .await;
    let unit = tokio::spawn({
        let database = database.clone();
        async move { run(&database, request, Writes::default()).await }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let finished_while_held = unit.is_finished();
    holder.rollback().await;
    let (snapshot, _) = unit.await.expect("task").expect("unit of work");
    (finished_while_held, snapshot)
}

async fn the_users_bookkeeping_rows_are_locked_for_update(on: On) {
    // Arrange
    let (db, database) = setup(on, Fixture::Cuid).await;

    // Act: user_a (held) and user_b (absent: made)
    let (finished_while_held, snapshot) =
        read_while_key_share_held(&db, &database, request(&["user_a", "user_b"], &[], &[])).await;

    // Assert
    assert!(
        !finished_while_held,
        "the user's row was not locked FOR UPDATE"
    );
    assert_eq!(snapshot.made.iter().collect::<Vec<_>>(), ["user_b"]);
    assert_eq!(snapshot.users.get("user_a"), Some(&stored(1, "d1", None)));
}

async fn a_lone_users_bookkeeping_row_is_locked_for_update_or_made(on: On) {
    // Arrange
    let (db, database) = setup(on, Fixture::Cuid).await;

    // Act: user_a alone (held), then user_b alone (absent: made with its initial values)
    let (finished_while_held, existing) =
        read_while_key_share_held(&db, &database, request(&["user_a"], &[], &[])).await;
    let mut new_user = request(&["user_b"], &[], &[]);
    new_user.initial[0] = stored(3, "d3", Some("b@x.test"));
    let (made, _) = run(&database, new_user, Writes::default())
        .await
        .expect("unit of work");

    // Assert
    assert!(
        !finished_while_held,
        "the user's row was not locked FOR UPDATE"
    );
    assert!(existing.made.is_empty());
    assert_eq!(existing.users.get("user_a"), Some(&stored(1, "d1", None)));
    assert_eq!(made.made.iter().collect::<Vec<_>>(), ["user_b"]);
    assert_eq!(
        made.users.get("user_b"),
        Some(&stored(3, "d3", Some("b@x.test")))
    );
    assert_eq!(
        db.number(
            "SELECT count(*) AS n FROM clerk_sync.users WHERE user_id = 'user_b' AND version = 3"
        )
        .await,
        1,
        "the new user's row was made with its initial values"
    );
}

async fn a_failing_write_rolls_the_whole_unit_of_work_back(on: On) {
    // Arrange
    let (db, database) = setup(on, Fixture::UuidSoftDelete).await;
    let id = uuid::Uuid::new_v4();
    let row = |first_name: Value| {
        insert(vec![
            (0, Value::Uuid(id)),
            (1, text("user_a")),
            (2, text("a@x.test")),
            (3, first_name),
            (4, text("Lovelace")),
            (9, Value::Timestamp(at(0))),
        ])
    };
    let writes = |first_name: Value| Writes {
        bookkeeping: vec![keep("user_a", 1, Some("a@x.test"))],
        rows: vec![row_write("user_a", false)],
        record: vec![record("msg_1", "user_a", Outcome::Applied, None)],
        mapped: mapped(vec![row(first_name)]),
        ..Writes::default()
    };

    // Act: a NULL into a NOT NULL column
    let result = run(
        &database,
        request(&["user_a"], &["a@x.test"], &["msg_1"]),
        writes(Value::Null),
    )
    .await;

    // Assert: refused for good, and nothing written, not even the bookkeeping row made
    assert!(matches!(result, Err(DbError::Refused(_))), "{result:?}");
    assert!(bookkeeping(&db).await.is_empty());
    assert!(deliveries(&db).await.is_empty());
    assert!(rows(&db, r#"SELECT id FROM "User""#).await.is_empty());

    // Act: the same unit of work, fixed, on the pool's connections
    run(
        &database,
        request(&["user_a"], &["a@x.test"], &["msg_1"]),
        writes(text("Ada")),
    )
    .await
    .expect("the retry");

    // Assert: the enum column took its default, the uuid its value
    assert_eq!(
        rows(
            &db,
            r#"SELECT id, clerk_id, "firstName", role, deleted, "deletedAt" FROM "User""#
        )
        .await,
        [
            json!({"id": id.to_string(), "clerk_id": "user_a", "firstName": "Ada",
                "role": "MEMBER", "deleted": false, "deletedAt": null})
        ]
    );
    assert_eq!(
        deliveries(&db).await,
        [json!({"svix_id": "msg_1", "outcome": "applied"})]
    );
}

async fn every_bind_is_cast_to_its_column_type_and_no_value_reaches_an_error(on: On) {
    // Arrange: a table with a column of every bind, its names needing quotes; the address
    // column's name holds the executor's dollar-quote tag, a quote and a comment (the
    // executor's body, between dollar quotes, names it many times)
    let db = TestDb::empty(on.backend).await;
    db.exec(
        r#"CREATE SCHEMA "odd ""schema";
           CREATE TYPE "odd ""schema"."Plan ""x""" AS ENUM ('free', 'pro');
           CREATE TABLE "odd ""schema"."Users ""mapped""" (
               "clerk ""id""" TEXT UNIQUE, "mail$cs$' --" VARCHAR(40) UNIQUE, "u" UUID, "i" INT4,
               "b" INT8, "f" FLOAT8, "n" NUMERIC(10, 2), "ok" BOOLEAN, "ts" TIMESTAMP(3),
               "tz" TIMESTAMPTZ, "d" DATE, "plan" "odd ""schema"."Plan ""x""", "j" JSONB,
               "updated" TIMESTAMPTZ)"#,
    )
    .await;
    let names = [
        ("clerk \"id\"", Bind::Text),
        ("mail$cs$' --", Bind::Text),
        ("u", Bind::Uuid),
        ("i", Bind::Int),
        ("b", Bind::BigInt),
        ("f", Bind::Float),
        ("n", Bind::Decimal),
        ("ok", Bind::Bool),
        ("ts", Bind::Timestamp),
        ("tz", Bind::TimestampTz),
        ("d", Bind::Date),
        ("plan", Bind::Enum(r#""odd ""schema"."Plan ""x""""#.into())),
        ("j", Bind::Json),
        ("updated", Bind::TimestampTz),
    ];
    let shape = WriteShape {
        schema: Some("odd \"schema".into()),
        name: "Users \"mapped\"".into(),
        columns: names.iter().map(|(n, b)| column(n, b.clone())).collect(),
        clerk_id: 0,
        unique_address: Some(1),
        updated_at: Some(13),
        created_at: None,
    };
    let database = open(&db, shape, on.executor).await;
    let id = uuid::Uuid::new_v4();
    let values = vec![
        (0, text("user_a")),
        (1, text("a@x.test")),
        (2, Value::Uuid(id)),
        (3, Value::Int(-7)),
        (4, Value::BigInt(9_007_199_254_740_993)),
        (5, Value::Float(0.1)),
        (6, Value::Decimal("12.50".into())),
        (7, Value::Bool(true)),
        (8, Value::Timestamp(at(0))),
        (9, Value::Timestamp(at(1))),
        (
            10,
            Value::Date(chrono::NaiveDate::from_ymd_opt(2024, 2, 29).expect("date")),
        ),
        (11, Value::Enum("pro".into())),
        (12, Value::Json(json!({"a": [1, "two"]}))),
        (13, Value::Timestamp(at(2))),
    ];
    let writes = Writes {
        rows: vec![row_write("user_a", false)],
        mapped: mapped(vec![insert(values)]),
        ..Writes::default()
    };

    // Act
    run(&database, request(&["user_a"], &["a@x.test"], &[]), writes)
        .await
        .expect("insert");
    let (snapshot, _) = run(&database, request(&["user_a"], &[], &[]), Writes::default())
        .await
        .expect("read");

    // Assert
    assert_eq!(
        snapshot.rows.get("user_a"),
        Some(&AppRow {
            address: Some("a@x.test".into()),
            updated_ms: at(2).timestamp_millis(),
        })
    );
    assert_eq!(
        rows(
            &db,
            r#"SELECT "clerk ""id""" AS clerk, "mail$cs$' --" AS mail, u, i, b::text AS b, f, n::text AS n, ok,
                      ts, tz AT TIME ZONE 'UTC' AS tz, d, plan, j
                 FROM "odd ""schema"."Users ""mapped""""#
        )
        .await,
        [
            json!({"clerk": "user_a", "mail": "a@x.test", "u": id.to_string(), "i": -7,
                "b": "9007199254740993", "f": 0.1, "n": "12.50", "ok": true,
                "ts": "2024-05-01T12:00:00.123", "tz": "2024-05-01T12:00:01.123",
                "d": "2024-02-29", "plan": "pro", "j": {"a": [1, "two"]}})
        ]
    );

    // Act: a value its column cannot read
    let writes = Writes {
        rows: vec![row_write("user_b", false)],
        mapped: mapped(vec![insert(vec![
            (0, text("user_b")),
            (2, text("not-a-uuid secret@x.test")),
        ])]),
        ..Writes::default()
    };
    let result = run(&database, request(&["user_b"], &[], &[]), writes).await;

    // Assert: the error names the type, never the value
    let error = result
        .expect_err("a value the column cannot read")
        .to_string();
    assert!(error.contains("uuid"), "{error}");
    assert!(!error.contains("secret"), "{error}");
}

async fn vacate_and_move_swap_two_rows_addresses(on: On) {
    // Arrange: user_a holds a@, user_b holds b@
    let (db, database) = setup(on, Fixture::Cuid).await;
    let new_row = |n: &str| {
        insert(vec![
            (0, text(&format!("ck_{n}"))),
            (1, text(&format!("user_{n}"))),
            (2, text(&format!("{n}@x.test"))),
            (7, Value::Timestamp(at(0))),
        ])
    };
    let writes = Writes {
        rows: vec![row_write("user_a", false), row_write("user_b", false)],
        mapped: mapped(vec![new_row("a"), new_row("b")]),
        ..Writes::default()
    };
    run(&database, request(&["user_a", "user_b"], &[], &[]), writes)
        .await
        .expect("two inserts");

    // Act: a leaves a@ for b, and takes b@ by a move
    let writes = Writes {
        vacate: vec!["user_a".into()],
        rows: vec![row_write("user_b", true)],
        moves: vec![("user_a".into(), "b@x.test".into())],
        mapped: Some(Box::new(MappedWrites {
            rows: vec![update(vec![
                (2, text("a@x.test")),
                (7, Value::Timestamp(at(5))),
            ])],
            moves: vec![text("b@x.test")],
            soft_delete: Vec::new(),
        })),
        ..Writes::default()
    };
    let (snapshot, _) = run(
        &database,
        request(&["user_a", "user_b"], &["a@x.test"], &[]),
        writes,
    )
    .await
    .expect("swap");

    // Assert
    let mut addresses: Vec<_> = snapshot.addresses.iter().cloned().collect();
    addresses.sort();
    assert_eq!(addresses, ["a@x.test", "b@x.test"]);
    assert_eq!(
        rows(
            &db,
            r#"SELECT "clerkId", email FROM "User" ORDER BY "clerkId""#
        )
        .await,
        [
            json!({"clerkId": "user_a", "email": "b@x.test"}),
            json!({"clerkId": "user_b", "email": "a@x.test"}),
        ]
    );

    // Act: a NULL move on a table whose address column allows it
    let (db, database) = setup(on, Fixture::Autoincrement).await;
    let writes = Writes {
        rows: vec![row_write("user_a", false)],
        mapped: mapped(vec![insert(vec![
            (1, text("user_a")),
            (2, text("a@x.test")),
            (8, Value::Timestamp(at(0))),
        ])]),
        ..Writes::default()
    };
    run(&database, request(&["user_a"], &[], &[]), writes)
        .await
        .expect("insert");
    let writes = Writes {
        moves: vec![("user_a".into(), String::new())],
        mapped: Some(Box::new(MappedWrites {
            moves: vec![Value::Null],
            ..MappedWrites::default()
        })),
        ..Writes::default()
    };
    run(&database, request(&["user_a"], &[], &[]), writes)
        .await
        .expect("move to NULL");
    let (snapshot, _) = run(&database, request(&["user_a"], &[], &[]), Writes::default())
        .await
        .expect("read");

    // Assert
    assert_eq!(
        rows(&db, "SELECT clerk_user_id, email_address FROM users").await,
        [json!({"clerk_user_id": "user_a", "email_address": null})]
    );
    assert_eq!(
        snapshot.rows.get("user_a").map(|r| r.address.clone()),
        Some(None)
    );
    assert!(snapshot.addresses.is_empty());
}

async fn a_hard_delete_goes_through_unless_a_foreign_key_refuses_it(on: On) {
    // Arrange: user_a's row has a post; user_b's has none; user_c has no row at all
    let (db, database) = setup(on, Fixture::Cuid).await;
    db.exec(
        r#"INSERT INTO "User" (id, "clerkId", email, "updatedAt") VALUES
               ('ck_a', 'user_a', 'a@x.test', now()), ('ck_b', 'user_b', 'b@x.test', now());
           INSERT INTO "Post" (id, title, "authorId") VALUES ('p1', 'Notes', 'ck_a');"#,
    )
    .await;
    let tombstone = |user: &str| BookkeepingWrite {
        tombstone: true,
        attempted: true,
        ..keep(user, 1, None)
    };
    let deleted_record = |id: &str, user: &str| Record {
        event_type: "user.deleted".into(),
        ..record(id, user, Outcome::Applied, Some(Outcome::Deferred))
    };
    let writes = Writes {
        bookkeeping: vec![
            tombstone("user_a"),
            tombstone("user_b"),
            tombstone("user_c"),
        ],
        deletes: vec!["user_a".into(), "user_b".into(), "user_c".into()],
        record: vec![
            deleted_record("msg_a", "user_a"),
            deleted_record("msg_b", "user_b"),
            deleted_record("msg_c", "user_c"),
        ],
        mapped: mapped(Vec::new()),
        ..Writes::default()
    };

    // Act
    let (_, deleted) = run(
        &database,
        request(
            &["user_a", "user_b", "user_c"],
            &[],
            &["msg_a", "msg_b", "msg_c"],
        ),
        writes,
    )
    .await
    .expect("deletes");

    // Assert
    let mut done: Vec<_> = deleted.0.into_iter().collect();
    done.sort();
    assert_eq!(done, ["user_b", "user_c"]);
    assert_eq!(
        rows(&db, r#"SELECT "clerkId" FROM "User""#).await,
        [json!({"clerkId": "user_a"})]
    );
    assert_eq!(
        rows(&db, r#"SELECT id FROM "Post""#).await,
        [json!({"id": "p1"})]
    );
    let pending: Vec<_> = bookkeeping(&db)
        .await
        .into_iter()
        .map(|b| {
            (
                b["user_id"].clone(),
                b["deleted"].clone(),
                b["delete_pending"].clone(),
            )
        })
        .collect();
    assert_eq!(
        pending,
        [
            (json!("user_a"), json!(true), json!(true)),
            (json!("user_b"), json!(true), json!(false)),
            (json!("user_c"), json!(true), json!(false)),
        ]
    );
    assert_eq!(
        deliveries(&db).await,
        [
            json!({"svix_id": "msg_a", "outcome": "deferred"}),
            json!({"svix_id": "msg_b", "outcome": "applied"}),
            json!({"svix_id": "msg_c", "outcome": "applied"}),
        ]
    );
}

async fn a_soft_delete_sets_its_columns_and_keeps_the_row(on: On) {
    // Arrange
    let (db, database) = setup(on, Fixture::UuidSoftDelete).await;
    db.exec(
        r#"INSERT INTO "User" (id, clerk_id, email, "firstName", "lastName", role, "updatedAt")
           VALUES (gen_random_uuid(), 'user_a', 'a@x.test', 'Ada', 'Lovelace', 'ADMIN', now())"#,
    )
    .await;
    let writes = Writes {
        bookkeeping: vec![BookkeepingWrite {
            tombstone: true,
            ..keep("user_a", 1, None)
        }],
        deletes: vec!["user_a".into()],
        record: vec![record(
            "msg_1",
            "user_a",
            Outcome::Applied,
            Some(Outcome::Deferred),
        )],
        mapped: Some(Box::new(MappedWrites {
            soft_delete: vec![(6, Value::Bool(true)), (7, Value::Timestamp(at(9)))],
            ..MappedWrites::default()
        })),
        ..Writes::default()
    };

    // Act
    let (snapshot, deleted) = run(&database, request(&["user_a"], &[], &["msg_1"]), writes)
        .await
        .expect("soft delete");

    // Assert
    assert_eq!(
        snapshot.rows.get("user_a").map(|r| r.address.clone()),
        Some(None),
        "without a unique address column, no address is read"
    );
    assert_eq!(deleted.0.into_iter().collect::<Vec<_>>(), ["user_a"]);
    assert_eq!(
        rows(
            &db,
            r#"SELECT clerk_id, "firstName", role, deleted, "deletedAt" FROM "User""#
        )
        .await,
        [
            json!({"clerk_id": "user_a", "firstName": "Ada", "role": "ADMIN", "deleted": true,
                "deletedAt": "2024-05-01T12:00:09.123"})
        ]
    );
    assert_eq!(bookkeeping(&db).await[0]["delete_pending"], json!(false));
    assert_eq!(
        deliveries(&db).await,
        [json!({"svix_id": "msg_1", "outcome": "applied"})]
    );
}

async fn a_plan_without_its_column_values_is_an_internal_error_and_writes_nothing(on: On) {
    // Arrange
    let (db, database) = setup(on, Fixture::Cuid).await;
    let without = Writes {
        bookkeeping: vec![keep("user_a", 1, None)],
        rows: vec![row_write("user_a", false)],
        ..Writes::default()
    };
    let mismatched = Writes {
        mapped: mapped(Vec::new()),
        ..without.clone()
    };

    for writes in [without, mismatched] {
        // Act
        let result = run(&database, request(&["user_a"], &[], &[]), writes).await;

        // Assert
        assert!(matches!(result, Err(DbError::Internal(_))), "{result:?}");
        assert!(bookkeeping(&db).await.is_empty());
    }
}

async fn statements_planned_on_empty_tables_reach_them_by_key_once_they_have_grown(on: On) {
    // Arrange: one connection, whose statements (each planned once, on its first run, and
    // kept) are first run while the tables are empty; then the tables grow, unanalyzed
    let one = PoolOptions {
        max_connections: 1,
        ..PoolOptions::default()
    };
    let (db, database) = setup_with(on, Fixture::Cuid, one).await;
    db.exec(
        "ALTER TABLE \"User\" SET (autovacuum_enabled = false); \
         ALTER TABLE clerk_sync.users SET (autovacuum_enabled = false)",
    )
    .await;
    for (user, version, exists) in [("user_a", 1, false), ("user_a", 2, true)] {
        run(
            &database,
            request(&[user], &[], &[]),
            lone_write(user, version, exists),
        )
        .await
        .expect("write while empty");
    }
    db.exec(
        "INSERT INTO \"User\" (id, \"clerkId\", email, \"updatedAt\") \
           SELECT 'c' || g, 'user_' || g, g || '@x.test', now() FROM generate_series(1, 20000) g; \
         INSERT INTO clerk_sync.users (user_id, version, digest, email) \
           SELECT 'user_' || g, 1, 'd', g || '@x.test' FROM generate_series(1, 20000) g",
    )
    .await;

    // Act: a new user, then an update, on the grown tables
    for (user, version, exists) in [
        ("user_b", 1, false),
        ("user_b", 2, true),
        ("user_7", 2, true),
    ] {
        run(
            &database,
            request(&[user], &[], &[]),
            lone_write(user, version, exists),
        )
        .await
        .expect("write once grown");
    }

    // Assert: no statement read either table whole (the connection's counts are flushed as
    // it ends)
    drop(database);
    let mut ended = false;
    for _ in 0..100 {
        let others = rows(
            &db,
            "SELECT pid FROM pg_stat_activity \
              WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .await;
        if others.is_empty() {
            ended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ended, "the pool's connection did not end");
    assert_eq!(
        rows(
            &db,
            "SELECT relname, COALESCE(seq_tup_read, 0) < 20000 AS by_key FROM pg_stat_all_tables \
              WHERE relid IN ('\"User\"'::regclass, 'clerk_sync.users'::regclass) \
              ORDER BY relname"
        )
        .await,
        [
            json!({"relname": "User", "by_key": true}),
            json!({"relname": "users", "by_key": true}),
        ]
    );
    assert_eq!(
        rows(&db, "SELECT \"clerkId\", email FROM \"User\" WHERE \"clerkId\" IN ('user_a', 'user_b', 'user_7') ORDER BY 1").await,
        [
            json!({"clerkId": "user_7", "email": "user_7@x.test"}),
            json!({"clerkId": "user_a", "email": "user_a@x.test"}),
            json!({"clerkId": "user_b", "email": "user_b@x.test"}),
        ]
    );
}
