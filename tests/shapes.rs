//! The rules on the application's own user model: each shape of `fixtures/prisma/` created
//! from the DDL Prisma generated for it, clerk-sync pointed at its schema with no configuration,
//! deliveries signed with the real `svix` signer through the HTTP endpoint, on PostgreSQL and
//! SQLite; rows asserted column by column.

mod common;

use std::time::Duration;

use clerk_sync::mapping::Mapping;
use common::{
    deleted, eventually, prisma_fixture_text, shape_db, spawn_app_with, AppOptions, Backend,
    ClerkUser, TestApp, TestDb, T0,
};
use serde_json::json;

const CUID: &str = "cuid-clerkid";
const AUTOINCREMENT: &str = "autoincrement-mapped";
const UUID: &str = "uuid-soft-delete";

/// The app on the shape's table, mapped from its schema alone (and `config`, if any).
async fn shape_app(shape: &str, backend: Backend, config: Option<&str>) -> TestApp {
    let db = shape_db(shape, backend).await;
    let mapping = Mapping::from_text(&prisma_fixture_text(&format!("{shape}.prisma")), config)
        .expect("the mapping");
    spawn_app_with(
        db,
        AppOptions {
            mapping: Some(mapping),
            ..AppOptions::default()
        },
    )
    .await
}

/// Where a shape keeps what the tests look at.
struct Names {
    table: &'static str,
    clerk: &'static str,
    key: &'static str,
    email: &'static str,
}

fn names(shape: &str) -> Names {
    match shape {
        AUTOINCREMENT => Names {
            table: "users",
            clerk: "clerk_user_id",
            key: "id",
            email: "email_address",
        },
        UUID => Names {
            table: "User",
            clerk: "clerk_id",
            key: "id",
            email: "email",
        },
        _ => Names {
            table: "User",
            clerk: "clerkId",
            key: "id",
            email: "email",
        },
    }
}

/// Reads one column of a user's row as text: timestamps as ms since the epoch, booleans as
/// `true`/`false`, NULL as `None`. `None` too when there is no such row (see [`rows`]).
async fn column(app: &TestApp, shape: &str, user: &str, column: &str) -> Option<String> {
    let n = names(shape);
    let pg = app.db.backend != Backend::Sqlite;
    let sql = format!(
        "SELECT {} AS v FROM \"{}\" WHERE \"{}\" = '{user}'",
        read_as_text(pg, shape, column),
        n.table,
        n.clerk
    );
    let value = app.db.text(&sql).await;
    if !pg && is_time(shape, column) {
        return value.map(|t| {
            chrono::DateTime::parse_from_rfc3339(&t)
                .unwrap_or_else(|e| panic!("{column} = {t}: {e}"))
                .timestamp_millis()
                .to_string()
        });
    }
    if !pg && column == "deleted" {
        return value.map(|b| if b == "1" { "true" } else { "false" }.to_owned());
    }
    value
}

fn is_time(shape: &str, column: &str) -> bool {
    let _ = shape;
    [
        "createdAt",
        "updatedAt",
        "created_at",
        "updated_at",
        "deletedAt",
    ]
    .contains(&column)
}

fn read_as_text(pg: bool, shape: &str, column: &str) -> String {
    match (pg, is_time(shape, column)) {
        (true, true) => {
            format!("(floor(extract(epoch FROM \"{column}\") * 1000))::bigint::text")
        }
        (true, false) => format!("\"{column}\"::text"),
        (false, _) => format!("CAST(\"{column}\" AS TEXT)"),
    }
}

/// How many rows the shape's table holds for `user` (by its Clerk-id column).
async fn rows(app: &TestApp, shape: &str, user: &str) -> i64 {
    let n = names(shape);
    app.db
        .number(&format!(
            "SELECT count(*) AS n FROM \"{}\" WHERE \"{}\" = '{user}'",
            n.table, n.clerk
        ))
        .await
}

fn ms(at: i64) -> Option<String> {
    Some(at.to_string())
}

fn some(text: &str) -> Option<String> {
    Some(text.to_owned())
}

/// The key a shape's row was given, checked against its generator's format.
async fn key(app: &TestApp, shape: &str, user: &str) -> String {
    let key = column(app, shape, user, names(shape).key)
        .await
        .expect("a key");
    let well_formed = match shape {
        // cuid(): 25 characters, `c` then lowercase base 36.
        CUID => {
            key.len() == 25
                && key.starts_with('c')
                && key
                    .chars()
                    .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
        }
        // uuid(): a version 4 UUID, hyphenated lowercase.
        UUID => {
            uuid::Uuid::parse_str(&key).is_ok_and(|u| u.get_version_num() == 4)
                && key == key.to_lowercase()
        }
        // autoincrement(): the database's integer.
        _ => key.parse::<i64>().is_ok_and(|k| k > 0),
    };
    assert!(well_formed, "{shape}: key {key:?}");
    key
}

async fn created_updated_stale_and_out_of_order(shape: &str, backend: Backend) {
    let app = shape_app(shape, backend, None).await;
    let mut ada = ClerkUser::new("user_ada", 1_000, "ada@example.com");
    ada.username = Some("ada".into());

    app.expect_outcome("msg_1", &ada.created(), "applied").await;
    let first_key = key(&app, shape, "user_ada").await;

    let mut v3 = ada.clone();
    v3.updated_at = T0 + 3_000;
    v3.first_name = Some("Augusta".into());
    app.expect_outcome("msg_3", &v3.updated(), "applied").await;
    let mut v2 = ada.clone();
    v2.updated_at = T0 + 2_000;
    v2.first_name = Some("Stale".into());
    app.expect_outcome("msg_2", &v2.updated(), "stale").await;

    // The newer version arrives before the user's creation: the creation is then stale.
    let mut bob = ClerkUser::new("user_bob", 1_000, "bob@example.com");
    bob.first_name = Some("Bob".into());
    bob.last_name = None;
    let mut bob2 = bob.clone();
    bob2.updated_at = T0 + 5_000;
    bob2.last_name = Some("Later".into());
    app.expect_outcome("msg_b2", &bob2.updated(), "applied")
        .await;
    app.expect_outcome("msg_b1", &bob.created(), "stale").await;

    assert_eq!(
        key(&app, shape, "user_ada").await,
        first_key,
        "a key never changes"
    );
    assert_eq!(rows(&app, shape, "user_ada").await, 1);
    let col = |user: &'static str, c: &'static str| column(&app, shape, user, c);
    let n = names(shape);
    assert_eq!(col("user_ada", n.email).await, some("ada@example.com"));
    match shape {
        CUID => {
            assert_eq!(col("user_ada", "firstName").await, some("Augusta"));
            assert_eq!(col("user_ada", "lastName").await, some("Lovelace"));
            assert_eq!(
                col("user_ada", "imageUrl").await,
                some("https://img.clerk.com/x")
            );
            assert_eq!(col("user_bob", "lastName").await, some("Later"));
        }
        AUTOINCREMENT => {
            assert_eq!(col("user_ada", "name").await, some("Augusta Lovelace"));
            assert_eq!(col("user_ada", "username").await, some("ada"));
            assert_eq!(
                col("user_ada", "avatar_url").await,
                some("https://img.clerk.com/x")
            );
            // Left to the database.
            assert_eq!(col("user_ada", "plan").await, some("free"));
            assert_eq!(col("user_bob", "name").await, some("Bob Later"));
        }
        _ => {
            assert_eq!(col("user_ada", "firstName").await, some("Augusta"));
            assert_eq!(col("user_ada", "lastName").await, some("Lovelace"));
            assert_eq!(col("user_ada", "role").await, some("MEMBER"));
            assert_eq!(col("user_ada", "deleted").await, some("false"));
            assert_eq!(col("user_ada", "deletedAt").await, None);
            assert_eq!(col("user_bob", "lastName").await, some("Later"));
        }
    }
    let (created, updated) = match shape {
        AUTOINCREMENT => ("created_at", "updated_at"),
        _ => ("createdAt", "updatedAt"),
    };
    assert_eq!(col("user_ada", created).await, ms(T0));
    assert_eq!(col("user_ada", updated).await, ms(T0 + 3_000));
    assert_eq!(col("user_bob", updated).await, ms(T0 + 5_000));
}

async fn an_email_is_handed_over_where_the_column_is_unique(shape: &str, backend: Backend) {
    let app = shape_app(shape, backend, None).await;
    let n = names(shape);
    let old = ClerkUser::new("user_old", 1_000, "shared@example.com");
    let new = ClerkUser::new("user_new", 2_000, "shared@example.com");
    app.expect_outcome("msg_old", &old.created(), "applied")
        .await;
    app.expect_outcome("msg_new", &new.created(), "applied")
        .await;

    let col = |user: &'static str| column(&app, shape, user, n.email);
    assert_eq!(col("user_new").await, some("shared@example.com"));
    let displaced = match shape {
        // Required and unique: the displaced placeholder.
        CUID => some("user_old@displaced.invalid"),
        // Optional and unique: NULL.
        AUTOINCREMENT => None,
        // Not unique: it just follows its user.
        _ => some("shared@example.com"),
    };
    assert_eq!(col("user_old").await, displaced, "{shape}");

    // The newer claimant moves on: the address goes back to the older one where it was taken.
    let mut moved = new.clone();
    moved.updated_at = T0 + 3_000;
    moved.emails = vec![("idn_primary".into(), "elsewhere@example.com".into())];
    app.expect_outcome("msg_moved", &moved.updated(), "applied")
        .await;
    assert_eq!(col("user_new").await, some("elsewhere@example.com"));
    assert_eq!(col("user_old").await, some("shared@example.com"), "{shape}");

    // A user without any address.
    let none = ClerkUser::new("user_none", 1_000, "x@example.com").without_email();
    app.expect_outcome("msg_none", &none.created(), "applied")
        .await;
    let expected = match shape {
        AUTOINCREMENT => None,
        _ => some("user_none@no-email.invalid"),
    };
    assert_eq!(col("user_none").await, expected, "{shape}");
}

async fn a_deleted_user_goes_as_the_shape_says(shape: &str, backend: Backend) {
    let app = shape_app(shape, backend, None).await;
    let n = names(shape);
    let ada = ClerkUser::new("user_ada", 1_000, "ada@example.com");
    app.expect_outcome("msg_1", &ada.created(), "applied").await;
    let ada_key = key(&app, shape, "user_ada").await;
    if shape == CUID {
        // A relation to the generated key refuses the delete: deferred, retried later.
        app.db
            .exec(&format!(
                "INSERT INTO \"Post\" (id, title, \"authorId\") VALUES ('post_1', 'Hello', '{ada_key}')"
            ))
            .await;
        app.expect_outcome("msg_del", &deleted("user_ada"), "deferred")
            .await;
        assert_eq!(
            rows(&app, shape, "user_ada").await,
            1,
            "kept for the foreign key"
        );
        app.db.exec("DELETE FROM \"Post\"").await;
        let gone = eventually(Duration::from_secs(10), || async {
            rows(&app, shape, "user_ada").await == 0
        })
        .await;
        assert!(gone, "the deferred delete completes once the post is gone");
    } else {
        app.expect_outcome("msg_del", &deleted("user_ada"), "applied")
            .await;
    }
    // A late update never brings it back, nor clears a soft delete.
    let mut late = ada.clone();
    late.updated_at = T0 + 9_000;
    late.first_name = Some("Late".into());
    app.expect_outcome("msg_late", &late.updated(), "stale")
        .await;

    if shape == UUID {
        assert_eq!(
            rows(&app, shape, "user_ada").await,
            1,
            "a soft delete keeps the row"
        );
        assert_eq!(
            column(&app, shape, "user_ada", "deleted").await,
            some("true")
        );
        let at: i64 = column(&app, shape, "user_ada", "deletedAt")
            .await
            .expect("deletedAt set")
            .parse()
            .expect("ms");
        let now = chrono::Utc::now().timestamp_millis();
        assert!(
            (now - 60_000..=now + 1_000).contains(&at),
            "deletedAt {at}, now {now}"
        );
        assert_eq!(
            column(&app, shape, "user_ada", "firstName").await,
            some("Ada")
        );
        assert_eq!(
            column(&app, shape, "user_ada", n.email).await,
            some("ada@example.com")
        );
    } else {
        assert_eq!(rows(&app, shape, "user_ada").await, 0);
    }
}

async fn the_role_rule_on_the_application_s_enum(backend: Backend) {
    let shape = UUID;
    let app = shape_app(shape, backend, None).await;
    let role = || column(&app, shape, "user_ada", "role");
    let mut v = ClerkUser::new("user_ada", 1_000, "ada@example.com");
    v.public_metadata = json!({"role": "admin"});
    app.expect_outcome("msg_1", &v.created(), "applied").await;
    assert_eq!(role().await, some("ADMIN"));

    v.updated_at += 1_000;
    v.public_metadata = json!({"role": "Owner"});
    app.expect_outcome("msg_2", &v.updated(), "applied").await;
    assert_eq!(
        role().await,
        some("OWNER"),
        "any case, any label of the enum"
    );

    // A role the enum lacks names none: the webhook's role goes back to the default.
    v.updated_at += 1_000;
    v.public_metadata = json!({"role": "superuser"});
    app.expect_outcome("msg_3", &v.updated(), "applied").await;
    assert_eq!(role().await, some("MEMBER"));

    // A role the application set is left alone by versions naming none.
    let cast = if backend == Backend::Sqlite {
        "'ADMIN'"
    } else {
        "'ADMIN'::\"Role\""
    };
    app.db
        .exec(&format!(
            "UPDATE \"User\" SET role = {cast} WHERE clerk_id = 'user_ada'"
        ))
        .await;
    v.updated_at += 1_000;
    v.public_metadata = json!({});
    app.expect_outcome("msg_4", &v.updated(), "applied").await;
    assert_eq!(role().await, some("ADMIN"));
}

async fn a_row_the_application_made_first_is_adopted(shape: &str, backend: Backend) {
    let app = shape_app(shape, backend, None).await;
    let n = names(shape);
    let pg = backend != Backend::Sqlite;
    let insert = match shape {
        CUID => format!(
            "INSERT INTO \"User\" (id, \"clerkId\", email, \"updatedAt\") \
             VALUES ('app_made_key', 'user_ada', 'ada@example.com', {})",
            if pg { "now()" } else { "'2024-01-01T00:00:00.000+00:00'" }
        ),
        AUTOINCREMENT => format!(
            "INSERT INTO users (clerk_user_id, email_address, plan, updated_at) \
             VALUES ('user_ada', 'ada@example.com', 'pro', {})",
            if pg { "now()" } else { "'2024-01-01T00:00:00.000+00:00'" }
        ),
        _ => format!(
            "INSERT INTO \"User\" (id, clerk_id, email, \"firstName\", \"lastName\", \"updatedAt\") \
             VALUES ('8d6ed3b6-2a68-4f0e-9a4e-7c0d5f7c2a11', 'user_ada', 'ada@example.com', 'A', 'L', {})",
            if pg { "now()" } else { "'2024-01-01T00:00:00.000+00:00'" }
        ),
    };
    app.db.exec(&insert).await;
    let before = column(&app, shape, "user_ada", n.key).await;

    let ada = ClerkUser::new("user_ada", 1_000, "ada@example.com");
    app.expect_outcome("msg_1", &ada.created(), "applied").await;

    assert_eq!(rows(&app, shape, "user_ada").await, 1);
    assert_eq!(
        column(&app, shape, "user_ada", n.key).await,
        before,
        "its key stays"
    );
    let updated = if shape == AUTOINCREMENT {
        "updated_at"
    } else {
        "updatedAt"
    };
    assert_eq!(
        column(&app, shape, "user_ada", updated).await,
        ms(T0 + 1_000)
    );
    if shape == AUTOINCREMENT {
        assert_eq!(column(&app, shape, "user_ada", "plan").await, some("pro"));
    }
}

async fn a_metadata_path_from_clerk_sync_toml(shape: &str, backend: Backend) {
    let (config, column_name) = match shape {
        CUID => (
            "[user.fields]\nimageUrl = \"public_metadata.picture.url\"\n",
            "imageUrl",
        ),
        AUTOINCREMENT => ("[user.fields]\nplan = \"public_metadata.plan\"\n", "plan"),
        _ => (
            "[user.fields]\nlastName = \"public_metadata.surname\"\n",
            "lastName",
        ),
    };
    let app = shape_app(shape, backend, Some(config)).await;
    let mut v = ClerkUser::new("user_ada", 1_000, "ada@example.com");
    v.public_metadata =
        json!({"picture": {"url": "https://pics/ada"}, "plan": "team", "surname": "Byron"});
    app.expect_outcome("msg_1", &v.created(), "applied").await;
    let expected = match shape {
        CUID => "https://pics/ada",
        AUTOINCREMENT => "team",
        _ => "Byron",
    };
    assert_eq!(
        column(&app, shape, "user_ada", column_name).await,
        some(expected)
    );

    // The path gone: NULL where optional, the default or the empty string where required.
    v.updated_at += 1_000;
    v.public_metadata = json!({});
    app.expect_outcome("msg_2", &v.updated(), "applied").await;
    let gone = match shape {
        CUID => None,
        AUTOINCREMENT => some("team"),
        _ => some(""),
    };
    assert_eq!(
        column(&app, shape, "user_ada", column_name).await,
        gone,
        "{shape}"
    );
}

/// Two versions with the same `updated_at` that differ only in a column the seed's digest does
/// not cover (here `username`, beside first and last names) end in the same row whatever the
/// order they arrive in.
async fn equal_versions_settle_the_same_whatever_the_order(shape: &str, backend: Backend) {
    let mut a = ClerkUser::new("user_ada", 1_000, "ada@example.com");
    a.username = Some("ada_a".into());
    let mut b = a.clone();
    b.username = Some("ada_b".into());
    let mut finals = Vec::new();
    for (first, second) in [(&a, &b), (&b, &a)] {
        let app = shape_app(shape, backend, None).await;
        app.expect_outcome("msg_1", &first.created(), "applied")
            .await;
        let (_, outcome) = app.deliver_outcome("msg_2", &second.updated()).await;
        finals.push((outcome, column(&app, shape, "user_ada", "username").await));
    }
    assert_eq!(finals[0].1, finals[1].1, "{finals:?}");
    let mut outcomes = [finals[0].0.clone(), finals[1].0.clone()];
    outcomes.sort();
    assert_eq!(
        outcomes,
        ["applied", "stale"],
        "one order applies the second, the other not"
    );
}

/// Two instances on one database insert the same new user at once: one row.
async fn two_instances_make_one_row(shape: &str, backend: Backend) {
    let first = shape_app(shape, backend, None).await;
    let mapping = Mapping::from_text(&prisma_fixture_text(&format!("{shape}.prisma")), None)
        .expect("the mapping");
    let second_db = TestDb {
        backend: first.db.backend,
        url: first.db.url.clone(),
        direct: first.db.direct.clone(),
        _dir: None,
    };
    let second = spawn_app_with(
        second_db,
        AppOptions {
            mapping: Some(mapping),
            secrets: vec![first.secret.clone()],
            ..AppOptions::default()
        },
    )
    .await;
    for round in 0..10 {
        let user = format!("user_{round}");
        let body = ClerkUser::new(&user, 1_000, &format!("{user}@example.com")).created();
        let (id_a, id_b) = (format!("msg_a{round}"), format!("msg_b{round}"));
        let (a, b) = tokio::join!(
            first.deliver_outcome(&id_a, &body),
            second.deliver_outcome(&id_b, &body)
        );
        let mut outcomes = [a.1, b.1];
        outcomes.sort();
        assert_eq!(outcomes, ["applied", "stale"], "round {round}");
        assert_eq!(rows(&first, shape, &user).await, 1, "round {round}");
    }
}

/// An application row without a Clerk id (the application made it, no Clerk user owns it)
/// holding the address a new user claims: the delivery is refused and kept as a dead letter,
/// naming the user and the fix, never the address; nothing is written. Once the application
/// gives that row the user's Clerk id, Svix's retry adopts it.
async fn an_address_held_by_a_row_without_a_clerk_id_is_never_taken(backend: Backend) {
    // Arrange: the cuid shape with an optional Clerk id, and such a row
    let db = TestDb::empty(backend).await;
    if let Some(path) = db.sqlite_path() {
        std::fs::File::create(path).expect("create the sqlite file");
    }
    let ddl = match backend {
        Backend::Sqlite => "cuid-clerkid.sqlite.sql",
        Backend::Postgres | Backend::Pooled => "cuid-clerkid.postgresql.sql",
    };
    let ddl = prisma_fixture_text(ddl);
    assert!(ddl.contains("\"clerkId\" TEXT NOT NULL,"));
    db.exec(&ddl.replace("\"clerkId\" TEXT NOT NULL,", "\"clerkId\" TEXT,"))
        .await;
    let schema = prisma_fixture_text("cuid-clerkid.prisma");
    assert!(schema.contains("clerkId   String   @unique"));
    let mapping = Mapping::from_text(
        &schema.replace("clerkId   String   @unique", "clerkId   String?  @unique"),
        None,
    )
    .expect("the mapping");
    let app = spawn_app_with(
        db,
        AppOptions {
            mapping: Some(mapping),
            ..AppOptions::default()
        },
    )
    .await;
    let pg = backend != Backend::Sqlite;
    app.db
        .exec(&format!(
            "INSERT INTO \"User\" (id, email, \"firstName\", \"updatedAt\") \
             VALUES ('app_made_key', 'ada@example.com', 'Invited', {})",
            if pg {
                "now()"
            } else {
                "'2024-01-01T00:00:00.000+00:00'"
            }
        ))
        .await;
    let ada = ClerkUser::new("user_ada", 1_000, "ada@example.com");
    let bob = ClerkUser::new("user_bob", 1_000, "bob@example.com");

    // Act
    let (status, _) = app.deliver_outcome("msg_ada", &ada.created()).await;
    app.expect_outcome("msg_bob", &bob.created(), "applied")
        .await;

    // Assert: refused, nothing of Ada written, the row untouched; Bob unaffected
    assert_eq!(status, 500);
    assert_eq!(rows(&app, CUID, "user_ada").await, 0);
    assert_eq!(rows(&app, CUID, "user_bob").await, 1);
    assert_eq!(
        app.db
            .text("SELECT email || '/' || \"firstName\" AS v FROM \"User\" WHERE id = 'app_made_key' AND \"clerkId\" IS NULL")
            .await,
        some("ada@example.com/Invited")
    );
    let detail = app
        .db
        .text(&format!(
            "SELECT detail AS v FROM {} WHERE svix_id = 'msg_ada'",
            app.db.own_table("dead_letters")
        ))
        .await
        .expect("kept as a dead letter");
    assert!(
        detail.contains("user_ada") && detail.contains("without a Clerk id"),
        "{detail}"
    );
    assert!(!detail.contains("ada@example.com"), "{detail}");

    // Act: the application adopts the row; Svix retries
    app.db
        .exec("UPDATE \"User\" SET \"clerkId\" = 'user_ada' WHERE id = 'app_made_key'")
        .await;
    app.expect_outcome("msg_ada", &ada.created(), "applied")
        .await;

    // Assert: one row, its key kept, Clerk's values in it
    assert_eq!(rows(&app, CUID, "user_ada").await, 1);
    assert_eq!(
        column(&app, CUID, "user_ada", "id").await,
        some("app_made_key")
    );
    assert_eq!(
        column(&app, CUID, "user_ada", "updatedAt").await,
        ms(T0 + 1_000)
    );
}

#[tokio::test]
async fn an_address_held_by_a_row_without_a_clerk_id_is_never_taken_sqlite() {
    an_address_held_by_a_row_without_a_clerk_id_is_never_taken(Backend::Sqlite).await
}

#[tokio::test]
async fn an_address_held_by_a_row_without_a_clerk_id_is_never_taken_postgres() {
    an_address_held_by_a_row_without_a_clerk_id_is_never_taken(Backend::Postgres).await
}

macro_rules! per_shape {
    ($module:ident = $shape:literal => [$($case:ident),* $(,)?]) => {
        mod $module {
            $(
                mod $case {
                    #[tokio::test]
                    async fn sqlite() {
                        super::super::$case($shape, crate::common::Backend::Sqlite).await
                    }
                    #[tokio::test]
                    async fn postgres() {
                        super::super::$case($shape, crate::common::Backend::Postgres).await
                    }
                }
            )*
        }
    };
}

async fn the_role_rule(shape: &str, backend: Backend) {
    assert_eq!(
        shape, UUID,
        "the shape with an enum of the application's own"
    );
    the_role_rule_on_the_application_s_enum(backend).await;
}

per_shape!(cuid_clerkid = "cuid-clerkid" => [
    created_updated_stale_and_out_of_order,
    an_email_is_handed_over_where_the_column_is_unique,
    a_deleted_user_goes_as_the_shape_says,
    a_row_the_application_made_first_is_adopted,
    a_metadata_path_from_clerk_sync_toml,
    two_instances_make_one_row,
]);

per_shape!(autoincrement_mapped = "autoincrement-mapped" => [
    created_updated_stale_and_out_of_order,
    equal_versions_settle_the_same_whatever_the_order,
    an_email_is_handed_over_where_the_column_is_unique,
    a_deleted_user_goes_as_the_shape_says,
    a_row_the_application_made_first_is_adopted,
    a_metadata_path_from_clerk_sync_toml,
    two_instances_make_one_row,
]);

per_shape!(uuid_soft_delete = "uuid-soft-delete" => [
    created_updated_stale_and_out_of_order,
    an_email_is_handed_over_where_the_column_is_unique,
    a_deleted_user_goes_as_the_shape_says,
    a_row_the_application_made_first_is_adopted,
    a_metadata_path_from_clerk_sync_toml,
    two_instances_make_one_row,
    the_role_rule,
]);

/// Through a transaction pooler (PgBouncer, transaction mode, no prepared statements).
#[tokio::test]
async fn through_a_transaction_pooler() {
    created_updated_stale_and_out_of_order(CUID, Backend::Pooled).await;
    an_email_is_handed_over_where_the_column_is_unique(AUTOINCREMENT, Backend::Pooled).await;
}
