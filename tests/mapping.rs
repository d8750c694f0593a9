//! `clerk-sync mapping`, through the real binary: for each application shape of
//! `fixtures/prisma/`, what it says fills each column; for a schema it cannot fill, the exit
//! status and the message naming the field and the line that would fill it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_clerk-sync");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/prisma")
        .join(name)
}

fn mapping(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("mapping")
        .args(args)
        .current_dir(dir)
        .env_remove("CLERK_SYNC_PRISMA_SCHEMA")
        .env_remove("CLERK_SYNC_CONFIG")
        .env_remove("CLERK_SYNC_MODEL")
        .env_remove("DATABASE_URL")
        .env_remove("DATABASE_URL_FILE")
        .env("RUST_LOG", "warn")
        .output()
        .expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The report's line for a column, trimmed.
fn line_of<'a>(report: &'a str, column: &str) -> &'a str {
    let quoted = format!("\"{column}\"");
    report
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(&quoted))
        .unwrap_or_else(|| panic!("no line for {column} in:\n{report}"))
}

#[test]
fn the_cuid_shape_gets_a_new_cuid_key_and_the_clerk_id_in_its_own_column() {
    let dir = tempfile::tempdir().expect("dir");
    let schema = fixture("cuid-clerkid.prisma");
    let output = mapping(
        dir.path(),
        &["--prisma-schema", schema.to_str().expect("path")],
    );
    let report = stdout(&output);
    assert!(output.status.success(), "{report}{}", stderr(&output));
    assert!(report.contains("key: \"id\", a new cuid"), "{report}");
    assert!(report.contains("Clerk id: \"clerkId\""), "{report}");
    assert!(
        line_of(&report, "email").contains("primary_email"),
        "{report}"
    );
    assert!(
        line_of(&report, "firstName").contains("first_name"),
        "{report}"
    );
    assert!(
        line_of(&report, "imageUrl").contains("image_url"),
        "{report}"
    );
}

#[test]
fn the_autoincrement_shape_leaves_its_key_to_the_database_under_its_mapped_names() {
    let dir = tempfile::tempdir().expect("dir");
    let schema = fixture("autoincrement-mapped.prisma");
    let output = mapping(
        dir.path(),
        &["--prisma-schema", schema.to_str().expect("path")],
    );
    let report = stdout(&output);
    assert!(output.status.success(), "{report}{}", stderr(&output));
    assert!(report.contains("table \"users\""), "{report}");
    assert!(
        report.contains("key: \"id\", made by the database"),
        "{report}"
    );
    assert!(report.contains("Clerk id: \"clerk_user_id\""), "{report}");
    let email = line_of(&report, "email_address");
    assert!(email.contains("primary_email; NULL when none"), "{report}");
    assert!(
        line_of(&report, "avatar_url").contains("image_url"),
        "{report}"
    );
    assert!(
        line_of(&report, "plan").contains("default \"free\""),
        "{report}"
    );
}

#[test]
fn the_uuid_shape_gets_a_uuid_key_and_a_soft_delete() {
    let dir = tempfile::tempdir().expect("dir");
    let schema = fixture("uuid-soft-delete.prisma");
    let output = mapping(
        dir.path(),
        &["--prisma-schema", schema.to_str().expect("path")],
    );
    let report = stdout(&output);
    assert!(output.status.success(), "{report}{}", stderr(&output));
    assert!(report.contains("a new UUID"), "{report}");
    assert!(report.contains("delete: soft"), "{report}");
}

#[test]
fn the_schema_in_the_working_directory_is_found_without_a_flag() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::create_dir(dir.path().join("prisma")).expect("mkdir");
    std::fs::copy(
        fixture("schema.prisma"),
        dir.path().join("prisma/schema.prisma"),
    )
    .expect("copy");
    let output = mapping(dir.path(), &[]);
    let report = stdout(&output);
    assert!(output.status.success(), "{report}{}", stderr(&output));
    assert!(report.contains("the Clerk user id"), "{report}");
}

#[test]
fn a_metadata_path_in_clerk_sync_toml_fills_a_column() {
    let dir = tempfile::tempdir().expect("dir");
    let schema = "datasource db {\n  provider = \"postgresql\"\n  url = env(\"DATABASE_URL\")\n}\n\
                  model User {\n  id String @id @default(cuid())\n  clerkId String @unique\n  \
                  email String @unique\n  company String\n}\n";
    std::fs::write(dir.path().join("schema.prisma"), schema).expect("schema");
    std::fs::write(
        dir.path().join("clerk-sync.toml"),
        "[user.fields]\ncompany = \"public_metadata.company\"\n",
    )
    .expect("config");
    let output = mapping(dir.path(), &["--prisma-schema", "schema.prisma"]);
    let report = stdout(&output);
    assert!(output.status.success(), "{report}{}", stderr(&output));
    assert!(
        line_of(&report, "company").contains("public_metadata.company"),
        "{report}"
    );
}

#[test]
fn a_required_column_nothing_fills_exits_non_zero_naming_the_field_and_the_line() {
    let dir = tempfile::tempdir().expect("dir");
    let schema = "datasource db {\n  provider = \"postgresql\"\n  url = env(\"DATABASE_URL\")\n}\n\
                  model User {\n  id String @id @default(cuid())\n  clerkId String @unique\n  \
                  email String @unique\n  company String\n}\n";
    std::fs::write(dir.path().join("schema.prisma"), schema).expect("schema");
    let output = mapping(dir.path(), &["--prisma-schema", "schema.prisma"]);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(message.contains("User.company"), "{message}");
    assert!(message.contains("[user.fields]"), "{message}");
    assert!(message.contains("company = "), "{message}");
}

#[test]
fn without_a_schema_it_says_how_to_name_one() {
    let dir = tempfile::tempdir().expect("dir");
    let output = mapping(dir.path(), &[]);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(message.contains("--prisma-schema"), "{message}");
}
