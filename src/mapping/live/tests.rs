//! The schema against hand-made catalog descriptions of the real shapes' tables (as Prisma's
//! DDL makes them), and schemas made back from them.

use super::*;
use crate::domain::table::LiveEnum;

const SEED: &str = include_str!("../../../fixtures/prisma/schema.prisma");
const CUID: &str = include_str!("../../../fixtures/prisma/cuid-clerkid.prisma");
const AUTOINCREMENT: &str = include_str!("../../../fixtures/prisma/autoincrement-mapped.prisma");
const UUID: &str = include_str!("../../../fixtures/prisma/uuid-soft-delete.prisma");

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn col(name: &str, data_type: &str, nullable: bool) -> LiveColumn {
    LiveColumn {
        name: name.to_owned(),
        data_type: data_type.to_owned(),
        max_length: None,
        precision: data_type.starts_with("timestamp").then_some(3),
        enum_type: None,
        nullable,
        default: None,
        identity: false,
        generated: None,
    }
}

fn with_default(mut c: LiveColumn, default: &str) -> LiveColumn {
    c.default = Some(default.to_owned());
    c
}

fn role(labels: &[&str], default: &str) -> LiveColumn {
    LiveColumn {
        enum_type: Some(LiveEnum {
            name: "Role".to_owned(),
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
        }),
        ..with_default(col("role", "\"Role\"", false), default)
    }
}

const TS: &str = "timestamp without time zone";

/// `cuid-clerkid.postgresql.sql`'s "User", as the catalog reads it.
fn cuid_table() -> LiveTable {
    LiveTable {
        catalog: Catalog::Postgres,
        schema: Some("public".to_owned()),
        name: "User".to_owned(),
        columns: vec![
            col("id", "text", false),
            col("clerkId", "text", false),
            col("email", "text", false),
            col("firstName", "text", true),
            col("lastName", "text", true),
            col("imageUrl", "text", true),
            with_default(col("createdAt", TS, false), "CURRENT_TIMESTAMP"),
            col("updatedAt", TS, false),
        ],
        primary_key: vec!["id".to_owned()],
        unique: vec!["id".to_owned(), "clerkId".to_owned(), "email".to_owned()],
    }
}

/// `uuid-soft-delete.postgresql.sql`'s "User".
fn uuid_table() -> LiveTable {
    LiveTable {
        catalog: Catalog::Postgres,
        schema: Some("public".to_owned()),
        name: "User".to_owned(),
        columns: vec![
            col("id", "uuid", false),
            col("clerk_id", "text", false),
            col("email", "text", false),
            col("firstName", "text", false),
            col("lastName", "text", false),
            role(&["MEMBER", "ADMIN", "OWNER"], "'MEMBER'::\"Role\""),
            with_default(col("deleted", "boolean", false), "false"),
            col("deletedAt", TS, true),
            with_default(col("createdAt", TS, false), "CURRENT_TIMESTAMP"),
            col("updatedAt", TS, false),
        ],
        primary_key: vec!["id".to_owned()],
        unique: vec!["id".to_owned(), "clerk_id".to_owned()],
    }
}

/// `autoincrement-mapped.postgresql.sql`'s "users".
fn autoincrement_table() -> LiveTable {
    LiveTable {
        catalog: Catalog::Postgres,
        schema: Some("public".to_owned()),
        name: "users".to_owned(),
        columns: vec![
            with_default(
                col("id", "integer", false),
                "nextval('users_id_seq'::regclass)",
            ),
            col("clerk_user_id", "text", false),
            col("email_address", "text", true),
            col("name", "text", true),
            col("username", "text", true),
            col("avatar_url", "text", true),
            with_default(col("plan", "text", false), "'free'::text"),
            with_default(col("created_at", TS, false), "CURRENT_TIMESTAMP"),
            col("updated_at", TS, false),
        ],
        primary_key: vec!["id".to_owned()],
        unique: vec![
            "id".to_owned(),
            "clerk_user_id".to_owned(),
            "email_address".to_owned(),
        ],
    }
}

fn check(schema_text: &str, table: &LiveTable) -> Result<(), TableError> {
    let schema = Schema::parse(schema_text).map_err(|e| TableError::Absent {
        model: e.to_string(),
        table: String::new(),
    })?;
    let mapping =
        Mapping::resolve(&schema, &Config::default()).map_err(|e| TableError::Absent {
            model: e.to_string(),
            table: String::new(),
        })?;
    check_table(&mapping, &schema, table)
}

fn problems(result: Result<(), TableError>) -> Result<Vec<Disagreement>, String> {
    match result {
        Err(TableError::Mismatch { problems, .. }) => Ok(problems),
        other => Err(format!("expected a mismatch, got {other:?}")),
    }
}

#[test]
fn each_shape_matches_the_table_its_ddl_makes() -> TestResult {
    check(CUID, &cuid_table())?;
    check(UUID, &uuid_table())?;
    check(AUTOINCREMENT, &autoincrement_table())?;
    Ok(())
}

#[test]
fn another_type_names_the_field_the_column_and_both_types() -> TestResult {
    let mut table = cuid_table();
    table.columns[3] = col("firstName", "integer", true);
    let found = problems(check(CUID, &table))?;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].field.as_deref(), Some("firstName"));
    assert!(found[0].message.contains("String"), "{}", found[0].message);
    assert!(found[0].message.contains("integer"), "{}", found[0].message);
    let message = TableError::Mismatch {
        model: "User".into(),
        table: "\"User\"".into(),
        problems: found,
    }
    .to_string();
    assert!(
        message.contains("User.firstName (column \"firstName\")"),
        "{message}"
    );
    Ok(())
}

#[test]
fn a_timestamp_of_another_precision_or_a_narrower_varchar_is_another_type() -> TestResult {
    let mut table = cuid_table();
    table.columns[7].precision = Some(6);
    let found = problems(check(CUID, &table))?;
    assert_eq!(found[0].column, "updatedAt", "{found:?}");
    let mut seed = cuid_table();
    seed.columns = vec![
        col("id", "text", false),
        LiveColumn {
            max_length: Some(100),
            ..col("name", "character varying", true)
        },
        LiveColumn {
            max_length: Some(255),
            ..col("mail_address", "character varying", false)
        },
        role(&["ADMIN", "USER"], "'USER'::\"Role\""),
        LiveColumn {
            precision: Some(0),
            ..with_default(col("createdAt", TS, false), "CURRENT_TIMESTAMP")
        },
        LiveColumn {
            precision: Some(0),
            ..col("updatedAt", TS, false)
        },
    ];
    seed.unique = vec!["id".into(), "mail_address".into()];
    let found = problems(check(SEED, &seed))?;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].column, "name");
    assert!(
        found[0].message.contains("character varying(255)"),
        "{found:?}"
    );
    Ok(())
}

#[test]
fn nullability_is_compared_both_ways() -> TestResult {
    let mut table = cuid_table();
    table.columns[2].nullable = true;
    table.columns[3].nullable = false;
    let found = problems(check(CUID, &table))?;
    let said: Vec<(&str, &str)> = found
        .iter()
        .map(|p| (p.column.as_str(), p.message.as_str()))
        .collect();
    assert_eq!(
        said,
        [
            ("email", "the schema says required, the table allows NULL"),
            (
                "firstName",
                "the schema says optional, the table has NOT NULL"
            ),
        ]
    );
    Ok(())
}

#[test]
fn an_enum_label_the_database_lacks_is_named() -> TestResult {
    let mut table = uuid_table();
    table.columns[5] = role(&["MEMBER", "ADMIN"], "'MEMBER'::\"Role\"");
    let found = problems(check(UUID, &table))?;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].field.as_deref(), Some("role"));
    assert!(found[0].message.contains("OWNER"), "{}", found[0].message);
    Ok(())
}

#[test]
fn a_missing_column_a_clerk_id_not_unique_and_a_lost_default_are_each_named() -> TestResult {
    let mut table = autoincrement_table();
    table.columns.retain(|c| c.name != "username");
    table.unique.retain(|c| c != "clerk_user_id");
    if let Some(plan) = table.columns.iter_mut().find(|c| c.name == "plan") {
        plan.default = None;
    }
    table.columns.push(col("tenant", "text", false));
    let found = problems(check(AUTOINCREMENT, &table))?;
    let columns: Vec<&str> = found.iter().map(|p| p.column.as_str()).collect();
    assert_eq!(
        columns,
        ["clerk_user_id", "username", "plan", "tenant"],
        "{found:?}"
    );
    assert!(found[0].message.contains("unique"), "{found:?}");
    assert!(found[1].message.contains("no such column"), "{found:?}");
    assert!(found[2].message.contains("no default"), "{found:?}");
    assert!(found[3].field.is_none() && found[3].message.contains("NOT NULL"));
    Ok(())
}

#[test]
fn sqlite_compares_declared_types_by_prismas_words() -> TestResult {
    let lite = |c: LiveColumn, t: &str| LiveColumn {
        data_type: t.to_owned(),
        precision: None,
        enum_type: None,
        ..c
    };
    let mut table = uuid_table();
    table.catalog = Catalog::Sqlite;
    table.schema = None;
    let types = [
        "TEXT", "TEXT", "TEXT", "TEXT", "TEXT", "TEXT", "BOOLEAN", "DATETIME", "DATETIME",
        "DATETIME",
    ];
    table.columns = table
        .columns
        .into_iter()
        .zip(types)
        .map(|(c, t)| lite(c, t))
        .collect();
    check(UUID, &table)?;
    table.columns[6].data_type = "TEXT".to_owned();
    let found = problems(check(UUID, &table))?;
    assert_eq!(found[0].column, "deleted", "{found:?}");
    assert!(found[0].message.contains("BOOLEAN"), "{found:?}");
    Ok(())
}

/// Each column's kind, nullability, uniqueness, default and fill (reasons name fields, which
/// the catalog names by their columns).
fn columns(mapping: &Mapping) -> Vec<(String, ColumnKind, bool, bool, Fill)> {
    mapping
        .columns
        .iter()
        .map(|c| {
            (
                c.name.clone(),
                c.kind.clone(),
                c.nullable,
                c.unique,
                c.fill.clone(),
            )
        })
        .collect()
}

#[test]
fn a_schema_made_from_the_table_maps_as_the_schema_file_does() -> TestResult {
    let key = Config::parse("[user]\nid = \"cuid\"\n")?;
    let uuid_key = Config::parse("[user]\nid = \"uuid\"\n")?;
    for (text, table, config) in [
        (CUID, cuid_table(), &key),
        (UUID, uuid_table(), &uuid_key),
        (AUTOINCREMENT, autoincrement_table(), &Config::default()),
    ] {
        let from_file = Mapping::resolve(&Schema::parse(text)?, config)?;
        let pulled = schema_from_table(&table, "User");
        let from_table = Mapping::resolve(&pulled, config)?;
        assert_eq!(columns(&from_table), columns(&from_file), "{}", table.name);
        assert_eq!(from_table.table.name, table.name);
        assert_eq!(from_table.key.generation, from_file.key.generation);
        assert_eq!(from_table.delete, from_file.delete);
        check_table(&from_table, &pulled, &table)?;
    }
    Ok(())
}

#[test]
fn defaults_come_back_as_prisma_writes_them() {
    let pulled = schema_from_table(&autoincrement_table(), "users");
    let model = &pulled.models[0];
    let default = |f: &str| model.field(f).and_then(|f| f.default.clone());
    assert_eq!(default("id"), Some(DefaultValue::Autoincrement));
    assert_eq!(default("plan"), Some(DefaultValue::String("free".into())));
    assert_eq!(default("created_at"), Some(DefaultValue::Now));
    assert_eq!(model.map, None);
    let pulled = schema_from_table(&uuid_table(), "User");
    let model = &pulled.models[0];
    assert_eq!(
        model.field("role").and_then(|f| f.default.clone()),
        Some(DefaultValue::EnumValue("MEMBER".into()))
    );
    assert_eq!(
        model.field("deleted").and_then(|f| f.default.clone()),
        Some(DefaultValue::Boolean(false))
    );
    assert_eq!(string_literal("'it''s'::text"), Some("it's".to_owned()));
    assert_eq!(string_literal("'a'||'b'"), None);
}

#[test]
fn only_the_seed_shape_is_the_seed_shape() -> TestResult {
    assert!(Mapping::from_text(SEED, None)?.is_seed_shape());
    assert!(Mapping::from_text(SEED_SCHEMA, None)?.is_seed_shape());
    let extra = SEED.replace(
        "  Favorite     Favorite[]",
        "  bio String?\n  Favorite Favorite[]",
    );
    assert!(Mapping::from_text(&extra, None)?.is_seed_shape());
    let image = SEED.replace(
        "  Favorite     Favorite[]",
        "  imageUrl String?\n  Favorite Favorite[]",
    );
    assert!(!Mapping::from_text(&image, None)?.is_seed_shape());
    let renamed = format!("{SEED}\n").replace("model User {", "model User {\n  @@map(\"users\")");
    assert!(!Mapping::from_text(&renamed, None)?.is_seed_shape());
    for other in [CUID, UUID, AUTOINCREMENT] {
        assert!(!Mapping::from_text(other, None)?.is_seed_shape());
    }
    let configured = Mapping::from_text(
        SEED,
        Some("[user.fields]\nname = \"public_metadata.nickname\"\n"),
    )?;
    assert!(!configured.is_seed_shape());
    Ok(())
}
