//! Every rule of "what one delivery does", through the HTTP endpoint, on both backends.

mod common;

use std::time::Duration;

use common::{
    deleted, eventually, spawn_app, spawn_app_with, AppOptions, Backend, ClerkUser, TestDb, T0,
};
use serde_json::json;

async fn a_created_user_is_written_as_prisma_reads_it(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = ClerkUser::new("user_ada", 1_789, "ada@example.com");

    app.expect_outcome("msg_1", &user.created(), "applied")
        .await;

    let row = app.db.user("user_ada").await.expect("row written");
    assert_eq!(row.name.as_deref(), Some("Ada Lovelace"));
    assert_eq!(row.mail_address, "ada@example.com");
    assert_eq!(row.role, "USER");
    match backend {
        // Prisma's exact SQLite form: three decimals and +00:00.
        Backend::Sqlite => {
            assert_eq!(row.created_at, "2024-05-01T12:00:00.000+00:00");
            assert_eq!(row.updated_at, "2024-05-01T12:00:01.789+00:00");
        }
        // TIMESTAMP(0) keeps whole seconds (PostgreSQL rounds).
        Backend::Postgres | Backend::Pooled => {
            assert_eq!(row.created_at, "2024-05-01T12:00:00");
            assert_eq!(row.updated_at, "2024-05-01T12:00:02");
        }
    }
}

async fn a_duplicate_delivery_is_not_applied_twice(backend: Backend) {
    let app = spawn_app(backend).await;
    let v1 = ClerkUser::new("user_dup", 1_000, "dup@example.com");
    let mut v2 = v1.clone();
    v2.updated_at += 1_000;
    v2.first_name = Some("Second".into());
    app.expect_outcome("msg_dup_1", &v1.created(), "applied")
        .await;
    app.expect_outcome("msg_dup_2", &v2.updated(), "applied")
        .await;

    // Svix retries msg_dup_1 (same id): nothing applied again, the newer row stays.
    app.expect_outcome("msg_dup_1", &v1.created(), "duplicate")
        .await;

    let row = app.db.user("user_dup").await.expect("row");
    assert_eq!(row.name.as_deref(), Some("Second Lovelace"));
    let recorded = app
        .db
        .number(&format!(
            "SELECT count(*) AS n FROM {}",
            app.db.own_table("deliveries")
        ))
        .await;
    assert_eq!(recorded, 2);
}

async fn an_older_version_arriving_late_is_stale(backend: Backend) {
    let app = spawn_app(backend).await;
    let old = ClerkUser::new("user_late", 1_000, "late@example.com");
    let mut new = old.clone();
    new.updated_at += 5_000;
    new.last_name = Some("Byron".into());

    app.expect_outcome("msg_new", &new.updated(), "applied")
        .await;
    app.expect_outcome("msg_old", &old.updated(), "stale").await;

    assert_eq!(
        app.db.user("user_late").await.expect("row").name.as_deref(),
        Some("Ada Byron")
    );
}

async fn an_update_before_its_create_works(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = ClerkUser::new("user_order", 0, "order@example.com");
    let mut updated = created.clone();
    updated.updated_at += 60_000;
    updated.username = Some("ada".into());
    updated.first_name = None;
    updated.last_name = None;

    app.expect_outcome("msg_u", &updated.updated(), "applied")
        .await;
    app.expect_outcome("msg_c", &created.created(), "stale")
        .await;

    let row = app.db.user("user_order").await.expect("row");
    assert_eq!(row.name.as_deref(), Some("ada"));
}

async fn a_deleted_user_never_comes_back(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = ClerkUser::new("user_gone", 1_000, "gone@example.com");
    let mut later = user.clone();
    later.updated_at += 10_000;

    app.expect_outcome("msg_c", &user.created(), "applied")
        .await;
    app.expect_outcome("msg_d", &deleted("user_gone"), "applied")
        .await;
    assert!(app.db.user("user_gone").await.is_none());

    // An update (even with a newer time) and the create, arriving after the delete.
    app.expect_outcome("msg_u", &later.updated(), "stale").await;
    app.expect_outcome("msg_c2", &user.created(), "stale").await;
    assert!(app.db.user("user_gone").await.is_none());
    // A second delete (another delivery) changes nothing.
    app.expect_outcome("msg_d2", &deleted("user_gone"), "stale")
        .await;
}

async fn a_delete_before_the_create_keeps_the_user_out(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = ClerkUser::new("user_early_delete", 1_000, "early@example.com");
    app.expect_outcome("msg_d", &deleted("user_early_delete"), "applied")
        .await;
    app.expect_outcome("msg_c", &user.created(), "stale").await;
    assert!(app.db.users().await.is_empty());
}

async fn the_primary_email_is_chosen_by_id_not_position(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut user = ClerkUser::new("user_primary", 1_000, "first@example.com");
    user.emails
        .push(("idn_second".into(), "second@example.com".into()));
    user.primary = Some("idn_second".into());

    app.expect_outcome("msg_1", &user.created(), "applied")
        .await;

    assert_eq!(
        app.db.user("user_primary").await.expect("row").mail_address,
        "second@example.com"
    );
}

async fn a_user_without_email_gets_a_unique_invalid_placeholder(backend: Backend) {
    let app = spawn_app(backend).await;
    let phone_only = ClerkUser::new("user_phone1", 1_000, "x@example.com").without_email();
    let also_phone = ClerkUser::new("user_phone2", 1_000, "x@example.com").without_email();

    app.expect_outcome("msg_1", &phone_only.created(), "applied")
        .await;
    app.expect_outcome("msg_2", &also_phone.created(), "applied")
        .await;

    assert_eq!(
        app.db.user("user_phone1").await.expect("row").mail_address,
        "user_phone1@no-email.invalid"
    );
    assert_eq!(
        app.db.user("user_phone2").await.expect("row").mail_address,
        "user_phone2@no-email.invalid"
    );
}

async fn users_without_email_can_be_skipped_instead(backend: Backend) {
    let options = AppOptions {
        sync: clerk_sync::sync::SyncOptions {
            skip_users_without_email: true,
            ..Default::default()
        },
        ..AppOptions::default()
    };
    let app = spawn_app_with(TestDb::with_prisma_tables(backend).await, options).await;
    let phone_only = ClerkUser::new("user_phone", 1_000, "x@example.com").without_email();

    app.expect_outcome("msg_1", &phone_only.created(), "ignored")
        .await;

    assert!(app.db.users().await.is_empty());
}

async fn null_names_are_null_and_username_is_the_fallback(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut nameless = ClerkUser::new("user_nameless", 1_000, "nameless@example.com");
    nameless.first_name = None;
    nameless.last_name = None;
    let mut handle = ClerkUser::new("user_handle", 1_000, "handle@example.com");
    handle.first_name = None;
    handle.last_name = Some("  ".into());
    handle.username = Some("adal".into());
    let mut last_only = ClerkUser::new("user_last", 1_000, "last@example.com");
    last_only.first_name = None;

    app.expect_outcome("msg_1", &nameless.created(), "applied")
        .await;
    app.expect_outcome("msg_2", &handle.created(), "applied")
        .await;
    app.expect_outcome("msg_3", &last_only.created(), "applied")
        .await;

    assert_eq!(app.db.user("user_nameless").await.expect("row").name, None);
    assert_eq!(
        app.db
            .user("user_handle")
            .await
            .expect("row")
            .name
            .as_deref(),
        Some("adal")
    );
    assert_eq!(
        app.db.user("user_last").await.expect("row").name.as_deref(),
        Some("Lovelace")
    );
}

async fn the_role_comes_only_from_public_metadata(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut user = ClerkUser::new("user_role", 1_000, "role@example.com");
    app.expect_outcome("msg_1", &user.created(), "applied")
        .await;
    // The application promotes the user itself.
    app.db
        .exec(r#"UPDATE "User" SET role = 'ADMIN' WHERE id = 'user_role'"#)
        .await;

    // A webhook that says nothing about roles leaves the application's role alone.
    user.updated_at += 1_000;
    user.public_metadata = json!({"plan": "pro", "role": "owner"});
    app.expect_outcome("msg_2", &user.updated(), "applied")
        .await;
    assert_eq!(app.db.user("user_role").await.expect("row").role, "ADMIN");

    // public_metadata.role, in any case, sets it.
    user.updated_at += 1_000;
    user.public_metadata = json!({"role": "User"});
    app.expect_outcome("msg_3", &user.updated(), "applied")
        .await;
    assert_eq!(app.db.user("user_role").await.expect("row").role, "USER");
    user.updated_at += 1_000;
    user.public_metadata = json!({"role": "admin"});
    app.expect_outcome("msg_4", &user.updated(), "applied")
        .await;
    assert_eq!(app.db.user("user_role").await.expect("row").role, "ADMIN");

    // Once a webhook set the role, a newer version without one takes it back to USER: the
    // same result as if the versions had arrived the other way round.
    user.updated_at += 1_000;
    user.public_metadata = json!({});
    app.expect_outcome("msg_5", &user.updated(), "applied")
        .await;
    assert_eq!(app.db.user("user_role").await.expect("row").role, "USER");
}

async fn a_webhook_role_converges_whatever_the_order(backend: Backend) {
    let mut admin = ClerkUser::new("user_r", 1_000, "r@example.com");
    admin.public_metadata = json!({"role": "admin"});
    let mut plain = admin.clone();
    plain.updated_at += 1_000;
    plain.public_metadata = json!({});
    let forward = spawn_app(backend).await;
    forward
        .expect_outcome("m1", &admin.updated(), "applied")
        .await;
    forward
        .expect_outcome("m2", &plain.updated(), "applied")
        .await;
    let backward = spawn_app(backend).await;
    backward
        .expect_outcome("m2", &plain.updated(), "applied")
        .await;
    backward
        .expect_outcome("m1", &admin.updated(), "stale")
        .await;

    assert_eq!(forward.db.users().await, backward.db.users().await);
}

async fn an_address_an_application_row_gives_up_returns_to_its_claimant(backend: Backend) {
    // Both arrival orders must end alike: the application's own row (written before
    // clerk-sync, newer than user_u's data) holds the address first.
    for h_first in [false, true] {
        let db = TestDb::with_prisma_tables(backend).await;
        let when = match backend {
            Backend::Sqlite => "'2024-05-02T00:00:00.000+00:00'",
            Backend::Postgres | Backend::Pooled => "'2024-05-02 00:00:00'",
        };
        db.exec(&format!(
            r#"INSERT INTO "User" (id, name, mail_address, role, "createdAt", "updatedAt")
               VALUES ('user_h', 'H', 'e@example.com', 'USER', {when}, {when})"#
        ))
        .await;
        let app = spawn_app_with(db, AppOptions::default()).await;
        let u = ClerkUser::new("user_u", 1_000, "e@example.com");
        let h_moves = ClerkUser::new("user_h", 90_000_000, "f@example.com");
        if h_first {
            app.expect_outcome("m_h", &h_moves.updated(), "applied")
                .await;
            app.expect_outcome("m_u", &u.created(), "applied").await;
        } else {
            app.expect_outcome("m_u", &u.created(), "applied").await;
            assert_eq!(
                app.db.user("user_u").await.expect("row").mail_address,
                "user_u@displaced.invalid"
            );
            app.expect_outcome("m_h", &h_moves.updated(), "applied")
                .await;
        }

        assert_eq!(
            app.db.user("user_u").await.expect("row").mail_address,
            "e@example.com",
            "h first: {h_first}"
        );
        assert_eq!(
            app.db.user("user_h").await.expect("row").mail_address,
            "f@example.com"
        );
    }
}

async fn control_characters_in_names_are_dropped_not_retried_for_ever(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut user = ClerkUser::new("user_nul", 1_000, "nul@example.com");
    user.first_name = Some("Ada\u{0}".into());
    user.last_name = Some("Love\u{7}lace".into());

    app.expect_outcome("m1", &user.created(), "applied").await;

    assert_eq!(
        app.db.user("user_nul").await.expect("row").name.as_deref(),
        Some("Ada Lovelace")
    );
}

async fn an_address_under_invalid_counts_as_no_email(backend: Backend) {
    let app = spawn_app(backend).await;
    let displaced = ClerkUser::new("user_one", 1_000, "taken@example.com");
    let newer = ClerkUser::new("user_two", 2_000, "taken@example.com");
    app.expect_outcome("m1", &displaced.created(), "applied")
        .await;
    app.expect_outcome("m2", &newer.created(), "applied").await;
    // A claim on exactly the placeholder user_one holds now.
    let squatter = ClerkUser::new("user_three", 3_000, "user_one@displaced.invalid");

    app.expect_outcome("m3", &squatter.created(), "applied")
        .await;

    assert_eq!(
        app.db.user("user_three").await.expect("row").mail_address,
        "user_three@no-email.invalid"
    );
    assert_eq!(
        app.db.user("user_one").await.expect("row").mail_address,
        "user_one@displaced.invalid"
    );
}

async fn the_newest_claim_wins_an_email_and_the_older_gets_it_back(backend: Backend) {
    let app = spawn_app(backend).await;
    // user_old signed up, deleted their account, and re-signed up as user_new with the same
    // address; user_old's delete has not arrived yet.
    let old = ClerkUser::new("user_old", 1_000, "same@example.com");
    let new = ClerkUser::new("user_new", 9_000, "same@example.com");

    app.expect_outcome("msg_old", &old.created(), "applied")
        .await;
    app.expect_outcome("msg_new", &new.created(), "applied")
        .await;
    assert_eq!(
        app.db.user("user_new").await.expect("row").mail_address,
        "same@example.com"
    );
    assert_eq!(
        app.db.user("user_old").await.expect("row").mail_address,
        "user_old@displaced.invalid"
    );

    app.expect_outcome("msg_old_del", &deleted("user_old"), "applied")
        .await;
    assert!(app.db.user("user_old").await.is_none());
    assert_eq!(
        app.db.user("user_new").await.expect("row").mail_address,
        "same@example.com"
    );
}

async fn an_older_claim_arriving_late_takes_the_placeholder(backend: Backend) {
    let app = spawn_app(backend).await;
    let holder = ClerkUser::new("user_holder", 9_000, "taken@example.com");
    let older = ClerkUser::new("user_older", 1_000, "taken@example.com");

    app.expect_outcome("msg_h", &holder.created(), "applied")
        .await;
    app.expect_outcome("msg_o", &older.created(), "applied")
        .await;

    assert_eq!(
        app.db.user("user_holder").await.expect("row").mail_address,
        "taken@example.com"
    );
    assert_eq!(
        app.db.user("user_older").await.expect("row").mail_address,
        "user_older@displaced.invalid"
    );
}

async fn two_users_swapping_addresses_converge(backend: Backend) {
    let app = spawn_app(backend).await;
    let a1 = ClerkUser::new("user_a", 1_000, "one@example.com");
    let b1 = ClerkUser::new("user_b", 1_000, "two@example.com");
    // Then a moves to two@ and b to one@ (b's change first in Clerk's time).
    let b2 = ClerkUser::new("user_b", 2_000, "one@example.com");
    let a2 = ClerkUser::new("user_a", 3_000, "two@example.com");
    for (id, body) in [
        ("m1", a1.created()),
        ("m2", b1.created()),
        ("m3", a2.updated()),
    ] {
        app.expect_outcome(id, &body, "applied").await;
    }
    // a took two@ from b, whose data was older: b holds a placeholder until its own change lands.
    assert_eq!(
        app.db.user("user_b").await.expect("row").mail_address,
        "user_b@displaced.invalid"
    );
    app.expect_outcome("m4", &b2.updated(), "applied").await;

    assert_eq!(
        app.db.user("user_a").await.expect("row").mail_address,
        "two@example.com"
    );
    assert_eq!(
        app.db.user("user_b").await.expect("row").mail_address,
        "one@example.com"
    );
}

async fn an_address_left_behind_returns_to_its_other_claimant(backend: Backend) {
    let app = spawn_app(backend).await;
    let a = ClerkUser::new("user_a", 1_000, "shared@example.com");
    let b = ClerkUser::new("user_b", 2_000, "shared@example.com");
    let b_moves = ClerkUser::new("user_b", 3_000, "elsewhere@example.com");
    app.expect_outcome("m1", &a.created(), "applied").await;
    app.expect_outcome("m2", &b.created(), "applied").await;
    assert_eq!(
        app.db.user("user_a").await.expect("row").mail_address,
        "user_a@displaced.invalid"
    );

    app.expect_outcome("m3", &b_moves.updated(), "applied")
        .await;

    assert_eq!(
        app.db.user("user_a").await.expect("row").mail_address,
        "shared@example.com"
    );
    assert_eq!(
        app.db.user("user_b").await.expect("row").mail_address,
        "elsewhere@example.com"
    );
}

async fn a_delete_refused_by_foreign_keys_is_deferred_then_completed(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = ClerkUser::new("user_fav", 1_000, "fav@example.com");
    app.expect_outcome("msg_c", &user.created(), "applied")
        .await;
    app.db
        .exec(r#"INSERT INTO "Favorite" ("userId", "itemId") VALUES ('user_fav', 'item-1')"#)
        .await;

    app.expect_outcome("msg_d", &deleted("user_fav"), "deferred")
        .await;
    assert!(
        app.db.user("user_fav").await.is_some(),
        "the row stays while Favorite points at it"
    );
    // The tombstone is written already: a late update does not touch the row.
    let mut later = user.clone();
    later.updated_at += 5_000;
    later.first_name = Some("Changed".into());
    app.expect_outcome("msg_u", &later.updated(), "stale").await;
    assert_eq!(
        app.db.user("user_fav").await.expect("row").name.as_deref(),
        Some("Ada Lovelace")
    );

    // The application removes its row; the background retry completes the delete.
    app.db
        .exec(r#"DELETE FROM "Favorite" WHERE "userId" = 'user_fav'"#)
        .await;
    let gone = eventually(Duration::from_secs(10), || async {
        app.db.user("user_fav").await.is_none()
    })
    .await;
    assert!(gone, "the deferred delete was not completed");
    let pending = app
        .db
        .number(&format!(
            "SELECT count(*) AS n FROM {} WHERE delete_pending",
            app.db.own_table("users")
        ))
        .await;
    assert_eq!(pending, 0);
}

async fn a_deferred_delete_gives_its_address_to_a_new_claimant(backend: Backend) {
    let app = spawn_app(backend).await;
    let old = ClerkUser::new("user_old", 1_000, "reuse@example.com");
    app.expect_outcome("m1", &old.created(), "applied").await;
    app.db.exec(r#"INSERT INTO "Bookmark" ("userId", "url") VALUES ('user_old', 'https://example.com')"#).await;
    app.expect_outcome("m2", &deleted("user_old"), "deferred")
        .await;

    // An older-looking claim still wins over a deleted user's row.
    let new = ClerkUser::new("user_new", 500, "reuse@example.com");
    app.expect_outcome("m3", &new.created(), "applied").await;

    assert_eq!(
        app.db.user("user_new").await.expect("row").mail_address,
        "reuse@example.com"
    );
    assert_eq!(
        app.db.user("user_old").await.expect("row").mail_address,
        "user_old@displaced.invalid"
    );
}

async fn an_unknown_event_type_is_ignored_and_recorded(backend: Backend) {
    let app = spawn_app(backend).await;
    let body = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/clerk-events/session.created.openapi-example.json"
    ))
    .expect("fixture");

    app.expect_outcome("msg_s", &body, "ignored").await;
    app.expect_outcome("msg_s", &body, "duplicate").await;

    assert!(app.db.users().await.is_empty());
}

async fn equal_versions_settle_the_same_whatever_the_order(backend: Backend) {
    let x = ClerkUser::new("user_tie", 1_000, "tie-x@example.com");
    let mut y = x.clone();
    y.emails = vec![("idn_primary".into(), "tie-y@example.com".into())];
    let first = spawn_app(backend).await;
    first.expect_outcome("m1", &x.updated(), "applied").await;
    let (_, second_outcome) = first.deliver_outcome("m2", &y.updated()).await;
    let second = spawn_app(backend).await;
    second.expect_outcome("m1", &y.updated(), "applied").await;
    let (_, reversed_outcome) = second.deliver_outcome("m2", &x.updated()).await;

    // Exactly one of the two orders applies its second delivery; both end equal.
    assert_ne!(second_outcome, reversed_outcome);
    assert_eq!(first.db.users().await, second.db.users().await);
}

async fn the_published_clerk_examples_apply(backend: Backend) {
    let app = spawn_app(backend).await;
    let fixture = |name: &str| {
        std::fs::read_to_string(format!(
            "{}/fixtures/clerk-events/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .expect("fixture")
    };
    app.expect_outcome(
        "m1",
        &fixture("user.created.docs-example.email-password.json"),
        "applied",
    )
    .await;
    app.expect_outcome(
        "m2",
        &fixture("user.created.openapi-example.json"),
        "applied",
    )
    .await;
    app.expect_outcome(
        "m3",
        &fixture("user.updated.openapi-example.json"),
        "applied",
    )
    .await;

    let docs = app
        .db
        .user("user_29w83sxmDNGwOuEthce5gg56FcC")
        .await
        .expect("docs example row");
    assert_eq!(
        (docs.name.as_deref(), docs.mail_address.as_str()),
        (Some("Example Example"), "example@example.org")
    );
    // The spec's example names a primary address but lists none: a placeholder.
    let spec = app
        .db
        .user("user_2g7np7Hrk0SN6kj5EDMLDaKNL0S")
        .await
        .expect("spec example row");
    assert_eq!(spec.name.as_deref(), Some("John Doe Updated"));
    assert_eq!(
        spec.mail_address,
        "user_2g7np7Hrk0SN6kj5EDMLDaKNL0S@no-email.invalid"
    );

    app.expect_outcome(
        "m4",
        &fixture("user.deleted.openapi-example.with-external-id.json"),
        "applied",
    )
    .await;
    assert!(app
        .db
        .user("user_2g7np7Hrk0SN6kj5EDMLDaKNL0S")
        .await
        .is_none());
}

async fn an_empty_database_gets_the_user_table_from_prismas_ddl(backend: Backend) {
    let db = TestDb::empty(backend).await;
    let url = clerk_sync::db::DatabaseUrl::parse(&db.url).expect("url");
    let database = clerk_sync::db::Database::open(&url, Default::default()).expect("open");

    let first = database.migrate().await.expect("migrate");
    let second = database.migrate().await.expect("migrate again");

    assert!(first.created_user_table && !first.applied.is_empty());
    assert!(!second.created_user_table && second.applied.is_empty());
    let app = spawn_app_with(db, AppOptions::default()).await;
    app.expect_outcome(
        "m1",
        &ClerkUser::new("user_x", 1, "x@example.com").created(),
        "applied",
    )
    .await;
    assert_eq!(app.db.users().await.len(), 1);
}

async fn an_existing_prisma_table_is_adopted_with_its_rows(backend: Backend) {
    let db = TestDb::with_prisma_tables(backend).await;
    let when = match backend {
        Backend::Sqlite => "'2024-01-01T00:00:00.000+00:00'",
        Backend::Postgres | Backend::Pooled => "'2024-01-01 00:00:00'",
    };
    db.exec(&format!(
        r#"INSERT INTO "User" (id, name, mail_address, role, "createdAt", "updatedAt")
           VALUES ('user_existing', 'Existing', 'existing@example.com', 'ADMIN', {when}, {when})"#
    ))
    .await;
    let app = spawn_app_with(db, AppOptions::default()).await;

    let mut user = ClerkUser::new("user_existing", 1_000, "existing@example.com");
    user.created_at = T0 - 1_000;
    app.expect_outcome("m1", &user.updated(), "applied").await;

    let row = app.db.user("user_existing").await.expect("row");
    assert_eq!(
        (row.name.as_deref(), row.role.as_str()),
        (Some("Ada Lovelace"), "ADMIN")
    );
}

on_every_backend!(
    a_created_user_is_written_as_prisma_reads_it,
    a_duplicate_delivery_is_not_applied_twice,
    an_older_version_arriving_late_is_stale,
    an_update_before_its_create_works,
    a_deleted_user_never_comes_back,
    a_delete_before_the_create_keeps_the_user_out,
    the_primary_email_is_chosen_by_id_not_position,
    a_user_without_email_gets_a_unique_invalid_placeholder,
    users_without_email_can_be_skipped_instead,
    null_names_are_null_and_username_is_the_fallback,
    the_role_comes_only_from_public_metadata,
    a_webhook_role_converges_whatever_the_order,
    an_address_an_application_row_gives_up_returns_to_its_claimant,
    control_characters_in_names_are_dropped_not_retried_for_ever,
    an_address_under_invalid_counts_as_no_email,
    the_newest_claim_wins_an_email_and_the_older_gets_it_back,
    an_older_claim_arriving_late_takes_the_placeholder,
    two_users_swapping_addresses_converge,
    an_address_left_behind_returns_to_its_other_claimant,
    a_delete_refused_by_foreign_keys_is_deferred_then_completed,
    a_deferred_delete_gives_its_address_to_a_new_claimant,
    an_unknown_event_type_is_ignored_and_recorded,
    equal_versions_settle_the_same_whatever_the_order,
    the_published_clerk_examples_apply,
    an_empty_database_gets_the_user_table_from_prismas_ddl,
    an_existing_prisma_table_is_adopted_with_its_rows,
);
