//! The mapping of each real shape, column by column, with and without a config.

use super::*;

const SEED: &str = include_str!("../../fixtures/prisma/schema.prisma");
const CUID: &str = include_str!("../../fixtures/prisma/cuid-clerkid.prisma");
const AUTOINCREMENT: &str = include_str!("../../fixtures/prisma/autoincrement-mapped.prisma");
const UUID: &str = include_str!("../../fixtures/prisma/uuid-soft-delete.prisma");

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn column<'m>(mapping: &'m Mapping, field: &str) -> Result<&'m Column, String> {
    mapping
        .field(field)
        .ok_or_else(|| format!("no column for field {field}"))
}

fn source(mapping: &Mapping, field: &str) -> Result<(Source, Absent), String> {
    match &column(mapping, field)?.fill {
        Fill::Source { source, absent } => Ok((source.clone(), *absent)),
        other => Err(format!("{field} is filled by {other:?}")),
    }
}

fn timestamp(precision: u8) -> ColumnKind {
    ColumnKind::DateTime {
        precision,
        with_time_zone: false,
    }
}

fn unfilled(result: Result<Mapping, MappingError>) -> Result<Vec<Unfilled>, String> {
    match result {
        Err(MappingError::Unfilled { columns, .. }) => Ok(columns),
        other => Err(format!("expected unfilled columns, got {other:?}")),
    }
}

#[test]
fn the_seed_shape_keys_rows_by_the_clerk_id() -> TestResult {
    let m = Mapping::from_text(SEED, None)?;
    assert_eq!(m.model, "User");
    assert_eq!(m.table.to_string(), "\"User\"");
    assert_eq!(m.provider.as_deref(), Some("postgresql"));
    assert_eq!(m.key.generation, KeyGeneration::Clerk);
    assert_eq!(m.clerk_id, "id");
    assert_eq!(m.delete, Delete::Hard);
    let names: Vec<&str> = m.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "id",
            "name",
            "mail_address",
            "role",
            "createdAt",
            "updatedAt"
        ]
    );

    assert_eq!(column(&m, "id")?.fill, Fill::ClerkId);
    let name = column(&m, "name")?;
    assert_eq!((name.max_length, name.nullable), (Some(255), true));
    assert_eq!(source(&m, "name")?, (Source::FullName, Absent::Null));
    let mail = column(&m, "mail_address")?;
    assert_eq!(
        (mail.max_length, mail.nullable, mail.unique),
        (Some(255), false, true)
    );
    assert_eq!(
        source(&m, "mail_address")?,
        (Source::PrimaryEmail, Absent::Placeholder)
    );
    let role = column(&m, "role")?;
    let ColumnKind::Enum {
        db_type, labels, ..
    } = &role.kind
    else {
        return Err(format!("role is {:?}", role.kind).into());
    };
    assert_eq!(db_type, "Role");
    let labels: Vec<&str> = labels.iter().map(|l| l.label.as_str()).collect();
    assert_eq!(labels, ["ADMIN", "USER"]);
    assert_eq!(source(&m, "role")?, (Source::Role, Absent::Keep));
    assert_eq!(column(&m, "createdAt")?.kind, timestamp(0));
    assert_eq!(
        source(&m, "createdAt")?,
        (Source::User(UserField::CreatedAt), Absent::Never)
    );
    assert_eq!(column(&m, "updatedAt")?.kind, timestamp(0));
    assert_eq!(
        source(&m, "updatedAt")?,
        (Source::User(UserField::UpdatedAt), Absent::Never)
    );
    assert_eq!(
        column(&m, "updatedAt")?.reason,
        Reason::Attribute("@updatedAt".to_owned())
    );
    Ok(())
}

#[test]
fn the_cuid_shape_makes_a_cuid_key_and_keeps_the_clerk_id_apart() -> TestResult {
    let m = Mapping::from_text(CUID, None)?;
    assert_eq!(m.table.name, "User");
    assert_eq!(m.key.field, "id");
    assert_eq!(m.key.generation, KeyGeneration::Cuid);
    assert_eq!(
        m.key.reason,
        Reason::Attribute("@default(cuid())".to_owned())
    );
    assert_eq!(m.clerk_id, "clerkId");
    assert_eq!(m.delete, Delete::Hard);
    // The relation field `posts` is no column.
    let names: Vec<&str> = m.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "id",
            "clerkId",
            "email",
            "firstName",
            "lastName",
            "imageUrl",
            "createdAt",
            "updatedAt"
        ]
    );
    assert_eq!(column(&m, "id")?.fill, Fill::Generated(KeyGeneration::Cuid));
    let clerk = column(&m, "clerkId")?;
    assert_eq!((clerk.fill.clone(), clerk.unique), (Fill::ClerkId, true));
    assert!(matches!(clerk.reason, Reason::Convention(_)));
    assert!(column(&m, "email")?.unique);
    assert_eq!(
        source(&m, "email")?,
        (Source::PrimaryEmail, Absent::Placeholder)
    );
    assert_eq!(
        source(&m, "firstName")?,
        (Source::User(UserField::FirstName), Absent::Null)
    );
    assert_eq!(
        source(&m, "lastName")?,
        (Source::User(UserField::LastName), Absent::Null)
    );
    assert_eq!(
        source(&m, "imageUrl")?,
        (Source::User(UserField::ImageUrl), Absent::Null)
    );
    assert_eq!(column(&m, "createdAt")?.kind, timestamp(3));
    assert_eq!(
        source(&m, "createdAt")?.0,
        Source::User(UserField::CreatedAt)
    );
    assert_eq!(
        source(&m, "updatedAt")?.0,
        Source::User(UserField::UpdatedAt)
    );
    Ok(())
}

#[test]
fn the_autoincrement_shape_leaves_the_key_to_the_database_and_follows_the_maps() -> TestResult {
    let m = Mapping::from_text(AUTOINCREMENT, None)?;
    assert_eq!(m.table.to_string(), "\"users\"");
    assert_eq!(m.key.column, "id");
    assert_eq!(m.key.generation, KeyGeneration::Database);
    assert_eq!(column(&m, "id")?.kind, ColumnKind::Int);
    assert_eq!(column(&m, "id")?.fill, Fill::Database);
    assert_eq!(m.clerk_id, "clerk_user_id");
    assert_eq!(column(&m, "clerkUserId")?.fill, Fill::ClerkId);
    let email = column(&m, "emailAddress")?;
    assert_eq!(
        (email.name.as_str(), email.nullable, email.unique),
        ("email_address", true, true)
    );
    assert_eq!(
        source(&m, "emailAddress")?,
        (Source::PrimaryEmail, Absent::Null)
    );
    assert_eq!(source(&m, "name")?, (Source::FullName, Absent::Null));
    assert_eq!(
        source(&m, "username")?,
        (Source::User(UserField::Username), Absent::Null)
    );
    assert_eq!(column(&m, "avatarUrl")?.name, "avatar_url");
    assert_eq!(
        source(&m, "avatarUrl")?,
        (Source::User(UserField::ImageUrl), Absent::Null)
    );
    let plan = column(&m, "plan")?;
    assert_eq!(plan.fill, Fill::Database);
    assert_eq!(plan.default, Some(DefaultValue::String("free".to_owned())));
    assert_eq!(column(&m, "createdAt")?.name, "created_at");
    assert_eq!(
        source(&m, "createdAt")?.0,
        Source::User(UserField::CreatedAt)
    );
    assert_eq!(column(&m, "updatedAt")?.name, "updated_at");
    assert_eq!(
        source(&m, "updatedAt")?.0,
        Source::User(UserField::UpdatedAt)
    );
    Ok(())
}

#[test]
fn the_uuid_shape_makes_uuid_keys_and_soft_deletes() -> TestResult {
    let m = Mapping::from_text(UUID, None)?;
    assert_eq!(m.key.generation, KeyGeneration::Uuid4);
    assert_eq!(column(&m, "id")?.kind, ColumnKind::Uuid);
    assert_eq!(m.clerk_id, "clerk_id");
    assert!(matches!(
        &m.delete,
        Delete::Soft { flag: Some(f), at: Some(a), .. } if f == "deleted" && a == "deletedAt"
    ));
    let email = column(&m, "email")?;
    assert_eq!((email.nullable, email.unique), (false, false));
    assert_eq!(
        source(&m, "email")?,
        (Source::PrimaryEmail, Absent::Placeholder)
    );
    assert_eq!(
        source(&m, "firstName")?,
        (Source::User(UserField::FirstName), Absent::Empty)
    );
    assert_eq!(
        source(&m, "lastName")?,
        (Source::User(UserField::LastName), Absent::Empty)
    );
    let role = column(&m, "role")?;
    let ColumnKind::Enum { labels, .. } = &role.kind else {
        return Err(format!("role is {:?}", role.kind).into());
    };
    let names: Vec<&str> = labels.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["MEMBER", "ADMIN", "OWNER"]);
    assert_eq!(source(&m, "role")?, (Source::Role, Absent::Keep));
    assert_eq!(column(&m, "deleted")?.fill, Fill::SoftDelete);
    assert_eq!(column(&m, "deletedAt")?.fill, Fill::SoftDelete);
    assert_eq!(
        source(&m, "updatedAt")?.0,
        Source::User(UserField::UpdatedAt)
    );
    Ok(())
}

#[test]
fn the_seed_shape_takes_a_name_from_metadata_by_config() -> TestResult {
    let m = Mapping::from_text(
        SEED,
        Some("[user]\n\n[user.fields]\nname = \"public_metadata.profile.display_name\"\n"),
    )?;
    assert_eq!(
        source(&m, "name")?,
        (
            Source::Metadata {
                kind: MetadataKind::Public,
                path: vec!["profile".to_owned(), "display_name".to_owned()],
            },
            Absent::Null
        )
    );
    assert_eq!(column(&m, "name")?.reason, Reason::Config(4));
    Ok(())
}

#[test]
fn the_cuid_shape_takes_the_image_from_unsafe_metadata_by_config() -> TestResult {
    let m = Mapping::from_text(
        CUID,
        Some("[user.fields]\nimageUrl = \"unsafe_metadata.avatar\"\n"),
    )?;
    assert_eq!(
        source(&m, "imageUrl")?.0,
        Source::Metadata {
            kind: MetadataKind::Unsafe,
            path: vec!["avatar".to_owned()],
        }
    );
    assert_eq!(column(&m, "imageUrl")?.reason, Reason::Config(2));
    // The other columns keep their conventions.
    assert_eq!(
        source(&m, "firstName")?.0,
        Source::User(UserField::FirstName)
    );
    Ok(())
}

#[test]
fn the_autoincrement_shape_takes_the_plan_from_metadata_keeping_its_default() -> TestResult {
    let m = Mapping::from_text(
        AUTOINCREMENT,
        Some("[user]\nmodel = \"User\"\n[user.fields]\nplan = \"public_metadata.plan\"\n"),
    )?;
    assert_eq!(
        source(&m, "plan")?,
        (
            Source::Metadata {
                kind: MetadataKind::Public,
                path: vec!["plan".to_owned()],
            },
            Absent::Keep
        )
    );
    assert_eq!(column(&m, "plan")?.reason, Reason::Config(4));
    Ok(())
}

#[test]
fn the_uuid_shape_takes_the_role_from_private_metadata_and_a_hard_delete_by_config() -> TestResult {
    let m = Mapping::from_text(
        UUID,
        Some(
            "[user]\ndelete = \"delete\"\nid = \"uuid7\"\n\n[user.fields]\n\
             role = \"private_metadata.org.role\"\n",
        ),
    )?;
    assert_eq!(
        source(&m, "role")?.0,
        Source::Metadata {
            kind: MetadataKind::Private,
            path: vec!["org".to_owned(), "role".to_owned()],
        }
    );
    assert_eq!(m.delete, Delete::Hard);
    assert_eq!(m.key.generation, KeyGeneration::Uuid7);
    assert_eq!(m.key.reason, Reason::Config(3));
    // Without the soft delete the flag is left to its default and the time is not written.
    assert_eq!(column(&m, "deleted")?.fill, Fill::Database);
    assert_eq!(column(&m, "deletedAt")?.fill, Fill::NotWritten);
    Ok(())
}

#[test]
fn a_required_column_nothing_fills_is_named_with_the_line_that_would_fill_it() -> TestResult {
    let schema = "model User {\n  id String @id @default(cuid())\n  clerkId String @unique\n  \
                  company String\n  email String\n}\n";
    let columns = unfilled(Mapping::from_text(schema, None))?;
    assert_eq!(columns.len(), 1);
    assert_eq!(columns[0].field, "company");
    assert_eq!(
        columns[0].suggestion,
        "company = \"public_metadata.company\""
    );
    let message = MappingError::Unfilled {
        model: "User".to_owned(),
        columns,
    }
    .to_string();
    assert!(message.contains("User.company"), "{message}");
    assert!(
        message.contains("company = \"public_metadata.company\""),
        "{message}"
    );

    // The suggested line fills it.
    let m = Mapping::from_text(
        schema,
        Some("[user.fields]\ncompany = \"public_metadata.company\"\n"),
    )?;
    assert_eq!(source(&m, "company")?.1, Absent::Empty);
    Ok(())
}

#[test]
fn a_required_enum_nothing_can_default_is_refused() -> TestResult {
    let schema = "enum Tier {\n  GOLD\n  SILVER\n}\nmodel User {\n  id String @id\n  \
                  tier Tier\n  active Boolean\n}\n";
    let columns = unfilled(Mapping::from_text(schema, None))?;
    let fields: Vec<&str> = columns.iter().map(|c| c.field.as_str()).collect();
    assert_eq!(fields, ["tier", "active"]);
    assert_eq!(columns[0].suggestion, "tier = \"const:GOLD\"");
    assert_eq!(columns[1].suggestion, "active = false");
    let m = Mapping::from_text(
        schema,
        Some("[user.fields]\ntier = \"const:SILVER\"\nactive = true\n"),
    )?;
    assert_eq!(
        source(&m, "tier")?,
        (
            Source::Constant(Constant::Text("SILVER".to_owned())),
            Absent::Never
        )
    );
    assert_eq!(
        source(&m, "active")?.0,
        Source::Constant(Constant::Bool(true))
    );
    Ok(())
}

#[test]
fn config_errors_name_the_field_and_line() {
    let cases: [(&str, &str, &str); 6] = [
        (CUID, "[user.fields]\nnickname = \"username\"\n", "nickname"),
        (CUID, "[user.fields]\nposts = \"username\"\n", "relation"),
        (
            CUID,
            "[user.fields]\n\ncreatedAt = \"first_name\"\n",
            "createdAt",
        ),
        (UUID, "[user.fields]\nrole = \"const:GUEST\"\n", "GUEST"),
        (UUID, "[user]\ndelete = \"soft:email\"\n", "email"),
        (CUID, "[user.fields]\nclerkId = \"username\"\n", "Clerk id"),
    ];
    for (schema, config, word) in cases {
        match Mapping::from_text(schema, Some(config)) {
            Ok(_) => panic!("{config:?} accepted"),
            Err(err) => {
                let text = err.to_string();
                let line = config.lines().count();
                assert!(text.contains(&format!("line {line}")), "{config:?}: {text}");
                assert!(text.contains(word), "{config:?}: {text}");
            }
        }
    }
}

#[test]
fn an_id_mode_the_schema_contradicts_is_refused() {
    for (config, word) in [
        ("[user]\nid = \"database\"\n", "Prisma Client"),
        ("[user]\nid = \"clerk\"\n", "clerkId"),
    ] {
        match Mapping::from_text(CUID, Some(config)) {
            Ok(_) => panic!("{config:?} accepted"),
            Err(err) => assert!(err.to_string().contains(word), "{config:?}: {err}"),
        }
    }
    let cuid_in_a_uuid_column = Mapping::from_text(UUID, Some("[user]\nid = \"cuid\"\n"));
    assert!(
        matches!(&cuid_in_a_uuid_column, Err(MappingError::Field { field, .. }) if field == "id"),
        "{cuid_in_a_uuid_column:?}"
    );
}

#[test]
fn the_model_is_the_one_with_a_clerk_id_when_none_is_named_user() -> TestResult {
    let schema =
        "model Post {\n  id Int @id\n}\nmodel Member {\n  id Int @id @default(autoincrement())\n  \
                  clerk_user_id String @unique\n}\n";
    let m = Mapping::from_text(schema, None)?;
    assert_eq!(m.model, "Member");
    assert_eq!(m.clerk_id, "clerk_user_id");

    let by_table = Mapping::from_text(AUTOINCREMENT, Some("[user]\ntable = \"users\"\n"))?;
    assert_eq!(by_table.model, "User");

    let missing = Mapping::from_text(CUID, Some("[user]\nmodel = \"Account\"\n"));
    assert!(
        matches!(&missing, Err(MappingError::Model { line: Some(2), message }) if message.contains("Account")),
        "{missing:?}"
    );
    Ok(())
}

#[test]
fn a_model_without_a_clerk_id_asks_for_one() {
    let result = Mapping::from_text(
        "model User {\n  id String @id @default(cuid())\n  email String @unique\n}\n",
        None,
    );
    match result {
        Ok(m) => panic!("mapped: {m:?}"),
        Err(err) => assert!(err.to_string().contains("clerk_id = "), "{err}"),
    }
}

#[test]
fn a_clerk_id_field_that_is_not_unique_is_refused() {
    let result = Mapping::from_text(
        "model User {\n  id Int @id @default(autoincrement())\n  clerkId String\n}\n",
        None,
    );
    assert!(
        matches!(&result, Err(MappingError::Field { field, .. }) if field == "clerkId"),
        "{result:?}"
    );
}

#[test]
fn client_side_defaults_and_now_are_made_by_clerk_sync_on_insert() -> TestResult {
    let m = Mapping::from_text(
        "model User {\n  id String @id @default(nanoid(16))\n  clerkId String @unique\n  \
         publicId String @unique @default(cuid(2))\n  joinedAt DateTime @default(now()) @db.Timestamptz(6)\n  \
         score Int @default(0)\n}\n",
        None,
    )?;
    assert_eq!(m.key.generation, KeyGeneration::Nanoid(16));
    assert_eq!(
        column(&m, "publicId")?.fill,
        Fill::Generated(KeyGeneration::Cuid2)
    );
    let joined = column(&m, "joinedAt")?;
    assert_eq!(joined.fill, Fill::InsertTime);
    assert_eq!(
        joined.kind,
        ColumnKind::DateTime {
            precision: 6,
            with_time_zone: true
        }
    );
    assert_eq!(column(&m, "score")?.fill, Fill::Database);
    Ok(())
}

#[test]
fn a_mapped_enum_keeps_its_database_labels() -> TestResult {
    let m = Mapping::from_text(
        "enum Role {\n  ADMIN @map(\"admin\")\n  USER @map(\"user\")\n  @@map(\"user_role\")\n}\n\
         model User {\n  id String @id\n  role Role @default(USER)\n}\n",
        None,
    )?;
    let ColumnKind::Enum {
        db_type, labels, ..
    } = &column(&m, "role")?.kind
    else {
        return Err("role is not an enum".into());
    };
    assert_eq!(db_type, "user_role");
    assert_eq!(
        labels,
        &[
            EnumLabel {
                name: "ADMIN".to_owned(),
                label: "admin".to_owned()
            },
            EnumLabel {
                name: "USER".to_owned(),
                label: "user".to_owned()
            }
        ]
    );
    Ok(())
}

#[test]
fn the_report_lists_every_column_with_its_source_and_reason() -> TestResult {
    let report = Mapping::from_text(AUTOINCREMENT, None)?.report();
    assert!(
        report.starts_with("model User -> table \"users\" (postgresql)\n"),
        "{report}"
    );
    assert!(
        report.contains("key: \"id\", made by the database"),
        "{report}"
    );
    for line in [
        "\"clerk_user_id\"",
        "\"email_address\"",
        "primary_email; NULL when none",
        "attribute @updatedAt",
        "left to the database:",
        "default \"free\"",
    ] {
        assert!(report.contains(line), "{line:?} missing from\n{report}");
    }
    let report = Mapping::from_text(UUID, None)?.report();
    assert!(
        report.contains("delete: soft, the row stays and \"deleted\" = true"),
        "{report}"
    );
    let report = Mapping::from_text(CUID, Some("[user.fields]\nimageUrl = \"none\"\n"))?.report();
    assert!(report.contains("not written:"), "{report}");
    assert!(report.contains("clerk-sync.toml line 2"), "{report}");
    Ok(())
}

#[test]
fn load_reads_the_schema_and_config_files() -> TestResult {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/prisma");
    let m = load(&dir.join("cuid-clerkid.prisma"), None)?;
    assert_eq!(m.clerk_id, "clerkId");
    let missing = load(&dir.join("no-such.prisma"), None);
    assert!(
        matches!(&missing, Err(MappingError::Read { path, .. }) if path.ends_with("no-such.prisma")),
        "{missing:?}"
    );
    Ok(())
}

#[test]
fn the_write_shape_names_fields_and_finds_clerks_creation_and_update_columns() -> TestResult {
    let mapping = Mapping::from_text(AUTOINCREMENT, None)?;

    let shape = mapping.write_shape();

    let named = |index: Option<usize>| {
        index
            .and_then(|i| shape.columns.get(i))
            .map(|c| (c.name.as_str(), c.field.as_str()))
    };
    assert_eq!(
        named(Some(shape.clerk_id)),
        Some(("clerk_user_id", "clerkUserId"))
    );
    assert_eq!(named(shape.created_at), Some(("created_at", "createdAt")));
    assert_eq!(named(shape.updated_at), Some(("updated_at", "updatedAt")));
    Ok(())
}
