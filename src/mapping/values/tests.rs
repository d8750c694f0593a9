//! The values each real shape writes for real Clerk events, column by column.

use chrono::{TimeZone, Utc};
use serde_json::json;

use super::*;
use crate::domain::Event;

const SEED: &str = include_str!("../../../fixtures/prisma/schema.prisma");
const CUID: &str = include_str!("../../../fixtures/prisma/cuid-clerkid.prisma");
const AUTOINCREMENT: &str = include_str!("../../../fixtures/prisma/autoincrement-mapped.prisma");
const UUID: &str = include_str!("../../../fixtures/prisma/uuid-soft-delete.prisma");

/// Has a primary email, `external_id`, names, no phone, and no `banned` / `locked`.
const WITH_EMAIL: &str =
    include_str!("../../../fixtures/clerk-events/user.created.docs-example.email-password.json");
/// No email address at all, a username, `public_metadata.department`.
const WITHOUT_EMAIL: &str =
    include_str!("../../../fixtures/clerk-events/user.updated.openapi-example.json");

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The event's user, after `edit` changed its `data`.
fn change(
    event: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> Result<UserChange, Box<dyn std::error::Error>> {
    let mut body: serde_json::Value = serde_json::from_str(event)?;
    edit(&mut body["data"]);
    match Event::parse(body.to_string().as_bytes())? {
        Event::Upsert { change, .. } => Ok(change),
        other => Err(format!("not an upsert: {other:?}").into()),
    }
}

fn unchanged(_: &mut serde_json::Value) {}

fn now() -> DateTime<Utc> {
    // Nanoseconds on purpose: the insert's time keeps milliseconds at most.
    Utc.timestamp_opt(1_760_000_000, 123_456_789)
        .single()
        .unwrap_or_default()
}

fn at_ms(ms: i64) -> Value {
    Value::Timestamp(DateTime::from_timestamp_millis(ms).unwrap_or_default())
}

fn text(s: &str) -> Write {
    Write::Value(Value::Text(s.to_owned()))
}

fn value(v: Value) -> Write {
    Write::Value(v)
}

/// The rules' no-email placeholder, as `crate::sync::plan::no_email` makes it (the planner's
/// tests hold that one to this form).
fn no_email(user: &str) -> String {
    format!("{user}@no-email.invalid")
}

/// The columns an INSERT and an UPDATE write, by name.
struct Written<'m> {
    mapping: &'m Mapping,
    values: RowValues,
}

impl<'m> Written<'m> {
    fn new(mapping: &'m Mapping, change: &UserChange) -> Result<Self, ValueError> {
        Ok(Self {
            mapping,
            values: mapping.values(change, now(), no_email)?,
        })
    }

    fn name(&self, a: &Assignment) -> &'m str {
        &self.mapping.columns[a.column].name
    }

    fn insert(&self, column: &str) -> Option<&Write> {
        self.values
            .insert()
            .find(|a| self.name(a) == column)
            .map(|a| &a.write)
    }

    fn update(&self, column: &str) -> Option<&Write> {
        self.values
            .update()
            .iter()
            .find(|a| self.name(a) == column)
            .map(|a| &a.write)
    }

    fn insert_names(&self) -> Vec<&str> {
        self.values.insert().map(|a| self.name(a)).collect()
    }

    fn update_names(&self) -> Vec<&str> {
        self.values.update().iter().map(|a| self.name(a)).collect()
    }

    /// Asserts an INSERT and an UPDATE both write `expected` into `column`.
    fn both(&self, column: &str, expected: &Write) {
        assert_eq!(self.insert(column), Some(expected), "insert {column}");
        assert_eq!(self.update(column), Some(expected), "update {column}");
    }

    fn key(&self, column: &str) -> String {
        match self.insert(column).and_then(Write::value) {
            Some(Value::Text(key)) => key.clone(),
            Some(Value::Uuid(key)) => key.to_string(),
            other => panic!("{column} is {other:?}"),
        }
    }
}

#[test]
fn the_seed_shape_writes_the_clerk_id_name_address_role_and_times_to_the_second() -> TestResult {
    let m = Mapping::from_text(SEED, None)?;
    let user = change(WITH_EMAIL, |d| {
        d["public_metadata"]["role"] = "Admin".into()
    })?;
    let w = Written::new(&m, &user)?;
    assert_eq!(
        w.insert_names(),
        [
            "id",
            "name",
            "mail_address",
            "role",
            "createdAt",
            "updatedAt"
        ]
    );
    assert_eq!(
        w.insert("id"),
        Some(&text("user_29w83sxmDNGwOuEthce5gg56FcC"))
    );
    w.both("name", &text("Example Example"));
    w.both("mail_address", &text("example@example.org"));
    w.both("role", &value(Value::Enum("ADMIN".to_owned())));
    // TIMESTAMP(0): Clerk's 1654012591514 and …835 ms, truncated to the second.
    w.both("createdAt", &value(at_ms(1_654_012_591_000)));
    w.both("updatedAt", &value(at_ms(1_654_012_591_000)));
    assert_eq!(
        w.update_names(),
        ["name", "mail_address", "role", "createdAt", "updatedAt"]
    );
    Ok(())
}

#[test]
fn the_cuid_shape_makes_a_cuid_key_on_insert_and_never_updates_it() -> TestResult {
    let m = Mapping::from_text(CUID, None)?;
    let user = change(WITH_EMAIL, unchanged)?;
    let w = Written::new(&m, &user)?;
    let key = w.key("id");
    assert!(key.starts_with('c') && key.len() == 25, "{key}");
    assert_eq!(
        w.insert("clerkId"),
        Some(&text("user_29w83sxmDNGwOuEthce5gg56FcC"))
    );
    w.both("email", &text("example@example.org"));
    w.both("firstName", &text("Example"));
    w.both("lastName", &text("Example"));
    w.both("imageUrl", &text("https://img.clerk.com/xxxxxx"));
    // Prisma's default DateTime keeps milliseconds.
    w.both("createdAt", &value(at_ms(1_654_012_591_514)));
    w.both("updatedAt", &value(at_ms(1_654_012_591_835)));
    assert_eq!(
        w.update_names(),
        [
            "email",
            "firstName",
            "lastName",
            "imageUrl",
            "createdAt",
            "updatedAt"
        ]
    );
    let again = Written::new(&m, &user)?;
    assert_ne!(again.key("id"), key, "each insert makes its own key");
    Ok(())
}

#[test]
fn the_autoincrement_shape_leaves_the_key_and_the_plan_to_the_database() -> TestResult {
    let m = Mapping::from_text(AUTOINCREMENT, None)?;
    let user = change(WITHOUT_EMAIL, unchanged)?;
    let w = Written::new(&m, &user)?;
    assert_eq!(
        w.insert_names(),
        [
            "clerk_user_id",
            "email_address",
            "name",
            "username",
            "avatar_url",
            "created_at",
            "updated_at"
        ]
    );
    assert_eq!(
        w.insert("clerk_user_id"),
        Some(&text("user_2g7np7Hrk0SN6kj5EDMLDaKNL0S"))
    );
    // Optional and unique: no address is NULL, never a placeholder.
    w.both("email_address", &value(Value::Null));
    w.both("name", &text("John Doe Updated"));
    w.both("username", &text("johndoe"));
    w.both("avatar_url", &text("https://img.clerk.com/yyyyy"));
    w.both("created_at", &value(at_ms(1_716_883_200_000)));
    w.both("updated_at", &value(at_ms(1_716_883_500_000)));
    assert_eq!(w.insert("id"), None);
    assert_eq!(w.insert("plan"), None);
    assert_eq!(w.update("clerk_user_id"), None);
    Ok(())
}

#[test]
fn the_uuid_shape_makes_a_v4_key_and_never_writes_the_soft_delete_columns() -> TestResult {
    let m = Mapping::from_text(UUID, None)?;
    let user = change(WITH_EMAIL, |d| {
        d["public_metadata"]["role"] = "owner".into()
    })?;
    let w = Written::new(&m, &user)?;
    match w.insert("id").and_then(Write::value) {
        Some(Value::Uuid(key)) => assert_eq!(key.get_version_num(), 4),
        other => panic!("id is {other:?}"),
    }
    assert_eq!(
        w.insert("clerk_id"),
        Some(&text("user_29w83sxmDNGwOuEthce5gg56FcC"))
    );
    w.both("email", &text("example@example.org"));
    w.both("firstName", &text("Example"));
    w.both("lastName", &text("Example"));
    w.both("role", &value(Value::Enum("OWNER".to_owned())));
    w.both("createdAt", &value(at_ms(1_654_012_591_514)));
    w.both("updatedAt", &value(at_ms(1_654_012_591_835)));
    for column in ["deleted", "deletedAt"] {
        assert_eq!(w.insert(column), None, "{column}");
        assert_eq!(w.update(column), None, "{column}");
    }

    let deleted_at = DateTime::from_timestamp_millis(1_700_000_000_123).unwrap_or_default();
    let soft: Vec<(&str, Write)> = m
        .soft_delete_values(deleted_at)?
        .into_iter()
        .map(|a| (m.columns[a.column].name.as_str(), a.write))
        .collect();
    assert_eq!(
        soft,
        [
            ("deleted", value(Value::Bool(true))),
            ("deletedAt", value(at_ms(1_700_000_000_123)))
        ]
    );
    assert_eq!(
        Mapping::from_text(CUID, None)?.soft_delete_values(deleted_at)?,
        []
    );
    Ok(())
}

#[test]
fn a_user_without_email_gets_what_each_email_shape_allows() -> TestResult {
    let user = change(WITHOUT_EMAIL, unchanged)?;
    let placeholder = no_email("user_2g7np7Hrk0SN6kj5EDMLDaKNL0S");
    assert_eq!(
        placeholder,
        "user_2g7np7Hrk0SN6kj5EDMLDaKNL0S@no-email.invalid"
    );
    // (shape, column, unique, nullable, written)
    let cases = [
        (SEED, "mail_address", true, false, text(&placeholder)),
        (CUID, "email", true, false, text(&placeholder)),
        (
            AUTOINCREMENT,
            "email_address",
            true,
            true,
            value(Value::Null),
        ),
        (UUID, "email", false, false, text(&placeholder)),
    ];
    for (schema, column, unique, nullable, written) in cases {
        let m = Mapping::from_text(schema, None)?;
        let address = m.address_column().ok_or("no address column")?;
        assert_eq!(m.columns[address.column].name, column);
        assert_eq!(
            (address.unique, address.nullable),
            (unique, nullable),
            "{column}"
        );
        let w = Written::new(&m, &user)?;
        w.both(column, &written);
    }
    Ok(())
}

#[test]
fn made_keys_have_their_generator_s_format_and_never_reach_an_update() -> TestResult {
    let user = change(WITH_EMAIL, unchanged)?;
    let shape = |default: &str| {
        format!(
            "model User {{\n  id String @id @default({default})\n  clerkId String @unique\n  \
             email String?\n}}\n"
        )
    };
    type Check = fn(&str) -> bool;
    let cases: [(String, Option<&str>, Check); 5] = [
        (shape("cuid()"), None, |k| {
            k.len() == 25 && k.starts_with('c') && k.chars().all(|c| c.is_ascii_alphanumeric())
        }),
        (shape("cuid(2)"), None, |k| {
            k.len() == 24
                && k.starts_with(|c: char| c.is_ascii_lowercase())
                && k.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        }),
        (shape("nanoid(16)"), None, |k| {
            k.len() == 16
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        }),
        (shape("uuid()"), None, |k| {
            uuid::Uuid::parse_str(k).map(|u| u.get_version_num()) == Ok(4)
        }),
        (UUID.to_owned(), Some("[user]\nid = \"uuid7\"\n"), |k| {
            uuid::Uuid::parse_str(k).map(|u| u.get_version_num()) == Ok(7)
        }),
    ];
    for (schema, config, check) in cases {
        let m = Mapping::from_text(&schema, config)?;
        let w = Written::new(&m, &user)?;
        let key = w.key(&m.key.column);
        assert!(check(&key), "{key}");
        assert_eq!(w.update(&m.key.column), None, "an update carried the key");
        assert_eq!(
            w.update(&m.clerk_id),
            None,
            "an update carried the Clerk id"
        );
    }
    Ok(())
}

#[test]
fn an_update_writes_only_sourced_columns_in_the_mapping_s_order() -> TestResult {
    let user = change(WITH_EMAIL, unchanged)?;
    for schema in [SEED, CUID, AUTOINCREMENT, UUID] {
        let m = Mapping::from_text(schema, None)?;
        let values = m.values(&user, now(), no_email)?;
        let sourced: Vec<usize> = values.update().iter().map(|a| a.column).collect();
        assert_eq!(sourced, m.sourced_columns());
        let only: Vec<usize> = values.insert_only.iter().map(|a| a.column).collect();
        assert_eq!(only, m.insert_only_columns());
        for a in values.update() {
            let column = &m.columns[a.column];
            assert!(
                matches!(column.fill, Fill::Source { .. }),
                "{}: {:?}",
                column.name,
                column.fill
            );
            assert_ne!(column.name, m.key.column);
            assert_ne!(column.name, m.clerk_id);
        }
    }
    Ok(())
}

#[test]
fn text_is_cut_to_the_column_length_on_a_character_boundary() -> TestResult {
    let m = Mapping::from_text(
        "model User {\n  id String @id\n  firstName String? @db.VarChar(4)\n  \
         lastName String? @db.Char(3)\n  username String?\n}\n",
        None,
    )?;
    let user = change(WITH_EMAIL, |d| {
        d["first_name"] = "Zoë😀ée".into();
        d["last_name"] = "a\u{0}é\u{0}ß漢字".into();
        d["username"] = "ünïcödé".into();
    })?;
    let w = Written::new(&m, &user)?;
    w.both("firstName", &text("Zoë😀"));
    // NUL is dropped before the cut: PostgreSQL cannot store it.
    w.both("lastName", &text("aéß"));
    w.both("username", &text("ünïcödé"));
    Ok(())
}

#[test]
fn the_clerk_id_is_never_cut_and_an_address_too_long_for_its_column_is_none() -> TestResult {
    let user = change(WITH_EMAIL, unchanged)?;
    let narrow_id = Mapping::from_text(
        "model User {\n  id Int @id @default(autoincrement())\n  \
         clerkId String @unique @db.VarChar(10)\n}\n",
        None,
    )?;
    assert!(matches!(
        narrow_id.values(&user, now(), no_email),
        Err(ValueError::TooLong { column, max: 10, needed: 32 }) if column == "clerkId"
    ));
    let narrow_email = Mapping::from_text(
        "model User {\n  id String @id\n  email String? @unique @db.VarChar(10)\n}\n",
        None,
    )?;
    Written::new(&narrow_email, &user)?.both("email", &value(Value::Null));
    Ok(())
}

#[test]
fn timestamps_keep_the_column_s_precision_and_the_insert_time_milliseconds_at_most() -> TestResult {
    let m = Mapping::from_text(
        "model User {\n  id String @id\n  createdAt DateTime @db.Timestamp(1)\n  \
         joinedAt DateTime @default(now()) @db.Timestamptz(6)\n  \
         seenOn DateTime? @db.Date\n  lastSignInAt BigInt?\n}\n",
        Some("[user.fields]\nseenOn = \"last_sign_in_at\"\nlastSignInAt = \"last_sign_in_at\"\n"),
    )?;
    let user = change(WITH_EMAIL, unchanged)?;
    let w = Written::new(&m, &user)?;
    w.both("createdAt", &value(at_ms(1_654_012_591_500)));
    assert_eq!(w.insert("joinedAt"), Some(&value(at_ms(1_760_000_000_123))));
    assert_eq!(w.update("joinedAt"), None);
    w.both(
        "seenOn",
        &value(Value::Date(
            NaiveDate::from_ymd_opt(2022, 5, 31).ok_or("date")?,
        )),
    );
    w.both("lastSignInAt", &value(Value::BigInt(1_654_012_591_514)));
    Ok(())
}

#[test]
fn the_sqlite_text_of_a_timestamp_is_prisma_s() {
    let at = |ms| DateTime::from_timestamp_millis(ms).unwrap_or_default();
    // The example of prisma/README.md, and whole seconds with their three zeros.
    assert_eq!(
        sqlite_timestamp_text(at(1_714_566_896_789)),
        "2024-05-01T12:34:56.789+00:00"
    );
    assert_eq!(
        sqlite_timestamp_text(at(1_654_012_591_000)),
        "2022-05-31T15:56:31.000+00:00"
    );
}

#[test]
fn the_role_matches_a_mapped_enum_label_in_any_case_and_else_keeps_the_column() -> TestResult {
    let m = Mapping::from_text(
        "enum Role {\n  ADMIN @map(\"admin\")\n  USER @map(\"user\")\n  @@map(\"user_role\")\n}\n\
         model User {\n  id String @id\n  role Role @default(USER)\n}\n",
        None,
    )?;
    let cases = [
        (
            serde_json::json!("ADMIN"),
            value(Value::Enum("admin".to_owned())),
        ),
        (
            serde_json::json!("Admin"),
            value(Value::Enum("admin".to_owned())),
        ),
        (
            serde_json::json!("user"),
            value(Value::Enum("user".to_owned())),
        ),
        (serde_json::json!("owner"), Write::Keep),
        (serde_json::json!(1), Write::Keep),
        (serde_json::Value::Null, Write::Keep),
    ];
    for (role, written) in cases {
        let user = change(WITH_EMAIL, |d| d["public_metadata"]["role"] = role.clone())?;
        Written::new(&m, &user)?.both("role", &written);
    }
    Ok(())
}

#[test]
fn a_metadata_path_fills_a_column_of_each_shape_by_config() -> TestResult {
    let user = change(WITH_EMAIL, |d| {
        d["public_metadata"] = serde_json::json!({
            "billing": {"plan": "pro", "seats": 3},
            "profile": {"display_name": "Ada L."}
        });
        d["unsafe_metadata"] = serde_json::json!({"avatar": "https://img.example/a.png"});
        d["private_metadata"] = serde_json::json!({"org": {"role": "Owner"}});
    })?;
    // (shape, config, column, written)
    let cases = [
        (
            SEED,
            "[user.fields]\nname = \"public_metadata.profile.display_name\"\n",
            "name",
            text("Ada L."),
        ),
        (
            CUID,
            "[user.fields]\nimageUrl = \"unsafe_metadata.avatar\"\n",
            "imageUrl",
            text("https://img.example/a.png"),
        ),
        (
            AUTOINCREMENT,
            "[user.fields]\nplan = \"public_metadata.billing.plan\"\n",
            "plan",
            text("pro"),
        ),
        // A number into text is its JSON text.
        (
            AUTOINCREMENT,
            "[user.fields]\nplan = \"public_metadata.billing.seats\"\n",
            "plan",
            text("3"),
        ),
        // Nothing at the path: the column has a default, so it is left alone.
        (
            AUTOINCREMENT,
            "[user.fields]\nplan = \"public_metadata.billing.tier\"\n",
            "plan",
            Write::Keep,
        ),
        (
            UUID,
            "[user.fields]\nrole = \"private_metadata.org.role\"\n",
            "role",
            value(Value::Enum("OWNER".to_owned())),
        ),
    ];
    for (schema, config, column, written) in cases {
        let m = Mapping::from_text(schema, Some(config))?;
        Written::new(&m, &user)?.both(column, &written);
    }
    Ok(())
}

#[test]
fn metadata_lands_only_in_columns_of_its_json_type() -> TestResult {
    let m = Mapping::from_text(
        "model User {\n  id String @id\n  prefs Json?\n  seats Int?\n  views BigInt?\n  \
         score Float?\n  price Decimal?\n  beta Boolean?\n  trialEnds DateTime?\n  \
         tag String?\n  team String? @db.Uuid\n}\n",
        Some(
            "[user.fields]\nprefs = \"public_metadata.x\"\nseats = \"public_metadata.x\"\n\
             views = \"public_metadata.x\"\nscore = \"public_metadata.x\"\n\
             price = \"public_metadata.x\"\nbeta = \"public_metadata.x\"\n\
             trialEnds = \"public_metadata.x\"\ntag = \"public_metadata.x\"\n\
             team = \"public_metadata.x\"\n",
        ),
    )?;
    let trial = DateTime::from_timestamp_millis(1_714_566_896_789).unwrap_or_default();
    let team = "6f1c2a9e-3b7d-4c1e-9a2b-0d4e5f6a7b8c";
    let team_id = uuid::Uuid::parse_str(team)?;
    let null = Value::Null;
    // (metadata.x, [prefs, seats, views, score, price, beta, trialEnds, tag, team])
    let cases: Vec<(serde_json::Value, [Value; 9])> = vec![
        (
            json!({"theme": "dark\u{0}"}),
            [
                Value::Json(json!({"theme": "dark"})),
                null.clone(),
                null.clone(),
                null.clone(),
                null.clone(),
                null.clone(),
                null.clone(),
                // JSON text escapes the NUL: no NUL character reaches the column.
                Value::Text(r#"{"theme":"dark\u0000"}"#.to_owned()),
                null.clone(),
            ],
        ),
        (
            json!(42),
            [
                Value::Json(json!(42)),
                Value::Int(42),
                Value::BigInt(42),
                Value::Float(42.0),
                Value::Decimal("42".to_owned()),
                null.clone(),
                Value::Timestamp(DateTime::from_timestamp_millis(42).unwrap_or_default()),
                Value::Text("42".to_owned()),
                null.clone(),
            ],
        ),
        (
            json!(5_000_000_000_i64),
            [
                Value::Json(json!(5_000_000_000_i64)),
                null.clone(),
                Value::BigInt(5_000_000_000),
                Value::Float(5e9),
                Value::Decimal("5000000000".to_owned()),
                null.clone(),
                Value::Timestamp(
                    DateTime::from_timestamp_millis(5_000_000_000).unwrap_or_default(),
                ),
                Value::Text("5000000000".to_owned()),
                null.clone(),
            ],
        ),
        (
            json!(12.5),
            [
                Value::Json(json!(12.5)),
                null.clone(),
                null.clone(),
                Value::Float(12.5),
                Value::Decimal("12.5".to_owned()),
                null.clone(),
                null.clone(),
                Value::Text("12.5".to_owned()),
                null.clone(),
            ],
        ),
        (
            json!(true),
            [
                Value::Json(json!(true)),
                null.clone(),
                null.clone(),
                null.clone(),
                null.clone(),
                Value::Bool(true),
                null.clone(),
                Value::Text("true".to_owned()),
                null.clone(),
            ],
        ),
        (
            json!("2024-05-01T12:34:56.789Z"),
            [
                Value::Json(json!("2024-05-01T12:34:56.789Z")),
                null.clone(),
                null.clone(),
                null.clone(),
                null.clone(),
                null.clone(),
                Value::Timestamp(trial),
                Value::Text("2024-05-01T12:34:56.789Z".to_owned()),
                null.clone(),
            ],
        ),
        (
            json!(team),
            [
                Value::Json(json!(team)),
                null.clone(),
                null.clone(),
                null.clone(),
                null.clone(),
                null.clone(),
                null.clone(),
                Value::Text(team.to_owned()),
                Value::Uuid(team_id),
            ],
        ),
        (
            serde_json::Value::Null,
            std::array::from_fn(|_| Value::Null),
        ),
    ];
    let columns = [
        "prefs",
        "seats",
        "views",
        "score",
        "price",
        "beta",
        "trialEnds",
        "tag",
        "team",
    ];
    for (x, expected) in cases {
        let user = change(WITH_EMAIL, |d| d["public_metadata"]["x"] = x.clone())?;
        let w = Written::new(&m, &user)?;
        for (column, expected) in columns.iter().zip(expected) {
            let got = w.update(column).and_then(Write::value);
            assert_eq!(got, Some(&expected), "{x} into {column}");
        }
    }
    Ok(())
}

#[test]
fn constants_are_written_as_they_are_and_an_enum_constant_by_its_label() -> TestResult {
    let m = Mapping::from_text(
        "enum Tier {\n  GOLD @map(\"gold\")\n  SILVER\n}\nmodel User {\n  id String @id\n  \
         tier Tier\n  active Boolean\n  source String\n  credits Int\n  ratio Float\n}\n",
        Some(
            "[user.fields]\ntier = \"const:GOLD\"\nactive = true\nsource = \"const:clerk\"\n\
             credits = 10\nratio = 0.5\n",
        ),
    )?;
    let w = Written::new(&m, &change(WITH_EMAIL, unchanged)?)?;
    w.both("tier", &value(Value::Enum("gold".to_owned())));
    w.both("active", &value(Value::Bool(true)));
    w.both("source", &text("clerk"));
    w.both("credits", &value(Value::Int(10)));
    w.both("ratio", &value(Value::Float(0.5)));
    Ok(())
}

#[test]
fn user_object_fields_phone_and_flags_fill_their_columns() -> TestResult {
    let m = Mapping::from_text(
        "model User {\n  id String @id\n  phone String?\n  externalId String?\n  \
         isBanned Boolean\n  mfa Boolean?\n}\n",
        Some("[user.fields]\nexternalId = \"external_id\"\nisBanned = \"banned\"\nmfa = \"two_factor_enabled\"\n"),
    )?;
    // The docs' example leaves `banned` out: a flag Clerk does not send is off.
    let w = Written::new(&m, &change(WITH_EMAIL, unchanged)?)?;
    w.both("phone", &value(Value::Null));
    w.both("externalId", &text("567772"));
    w.both("isBanned", &value(Value::Bool(false)));
    w.both("mfa", &value(Value::Bool(false)));

    let user = change(WITH_EMAIL, |d| {
        d["banned"] = true.into();
        d["primary_phone_number_id"] = "idn_p2".into();
        d["phone_numbers"] = serde_json::json!([
            {"id": "idn_p1", "phone_number": "+15550000001"},
            {"id": "idn_p2", "phone_number": "+15550000002"}
        ]);
    })?;
    let w = Written::new(&m, &user)?;
    w.both("phone", &text("+15550000002"));
    w.both("isBanned", &value(Value::Bool(true)));
    Ok(())
}

#[test]
fn debug_of_the_values_shows_no_personal_data() -> TestResult {
    let m = Mapping::from_text(CUID, None)?;
    let values = m.values(&change(WITH_EMAIL, unchanged)?, now(), no_email)?;
    let shown = format!("{values:?}");
    for private in ["example@example.org", "Example", "img.clerk.com"] {
        assert!(!shown.contains(private), "{shown}");
    }
    Ok(())
}

#[test]
fn literal_defaults_are_values_a_backend_may_bind_in_place_of_default() -> TestResult {
    let m = Mapping::from_text(
        "enum Role {\n  ADMIN @map(\"admin\")\n  USER @map(\"user\")\n}\nmodel User {\n  \
         id String @id\n  role Role @default(USER)\n  plan String @default(\"free\")\n  \
         credits Int @default(-1)\n  ratio Float @default(1.5)\n  beta Boolean @default(false)\n  \
         seq Int @default(autoincrement())\n  joined DateTime @default(now())\n}\n",
        None,
    )?;
    let default = |field: &str| m.field(field).and_then(Column::default_value);
    assert_eq!(default("role"), Some(Value::Enum("user".to_owned())));
    assert_eq!(default("plan"), Some(Value::Text("free".to_owned())));
    assert_eq!(default("credits"), Some(Value::Int(-1)));
    assert_eq!(default("ratio"), Some(Value::Float(1.5)));
    assert_eq!(default("beta"), Some(Value::Bool(false)));
    // Only the database (or the write's time) makes these.
    assert_eq!(default("seq"), None);
    assert_eq!(default("joined"), None);
    assert_eq!(default("id"), None);
    Ok(())
}
