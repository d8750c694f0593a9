//! The mapping against the live table, through the real binary: each application shape of
//! `fixtures/prisma/` created from the DDL Prisma generated for it, on PostgreSQL and SQLite;
//! `clerk-sync mapping --database-url` without a schema (the same columns as with it), with
//! it (they agree), with a schema altered in a type, a nullability or an enum label (exit 1,
//! the field named); and `serve` / `migrate` at start.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Backend, TestDb};

const BIN: &str = env!("CARGO_BIN_EXE_clerk-sync");

/// The three shapes: file stem, and a `clerk-sync.toml` for what the catalog cannot tell
/// (a client-side key generator, a table not named `User`), used with and without a schema.
const SHAPES: [(&str, &str); 3] = [
    ("cuid-clerkid", "[user]\nid = \"cuid\"\n"),
    ("autoincrement-mapped", "[user]\ntable = \"users\"\n"),
    ("uuid-soft-delete", "[user]\nid = \"uuid\"\n"),
];

use common::{prisma_fixture as fixture, shape_db};

/// A `clerk-sync` command in `dir`, with none of the developer's settings.
fn clerk_sync(dir: &Path) -> Command {
    let mut command = Command::new(BIN);
    command
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("DATABASE_URL_FILE")
        .env_remove("DIRECT_URL")
        .env_remove("CLERK_SYNC_PRISMA_SCHEMA")
        .env_remove("CLERK_SYNC_CONFIG")
        .env_remove("CLERK_SYNC_MODEL")
        .env_remove("CLERK_WEBHOOK_SECRET")
        .env_remove("CLERK_SYNC_BIND")
        .env_remove("CLERK_SECRET_KEY")
        .env_remove("LOG_FORMAT")
        .env("RUST_LOG", "warn");
    command
}

struct Run {
    status: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(mut command: Command) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().expect("the binary runs");
    Run {
        status: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// `clerk-sync mapping --database-url URL --config CONFIG [more]`.
fn mapping(dir: &Path, db: &TestDb, config: &Path, more: &[&Path]) -> Run {
    let mut command = clerk_sync(dir);
    command
        .arg("mapping")
        .arg("--database-url")
        .arg(&db.url)
        .arg("--config")
        .arg(config);
    if let Some(schema) = more.first() {
        command.arg("--prisma-schema").arg(schema);
    }
    run(command)
}

/// The report's column lines: column → (type, what fills it). The reason is left out: it
/// names the Prisma field, which a schema made from the table names by its column.
fn columns(report: &str) -> BTreeMap<String, (String, String)> {
    report
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('"'))
        .map(|line| {
            let cells: Vec<&str> = line
                .split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect();
            assert!(cells.len() >= 3, "a column line: {line}");
            (
                cells[0].trim_matches('"').to_owned(),
                (cells[1].to_owned(), cells[2].to_owned()),
            )
        })
        .collect()
}

fn line_starting<'a>(report: &'a str, prefix: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{report}"))
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

/// The shape's schema with `from` replaced by `to` (which must occur).
fn altered(dir: &Path, shape: &str, from: &str, to: &str) -> PathBuf {
    let text = std::fs::read_to_string(fixture(&format!("{shape}.prisma"))).expect("schema");
    assert!(text.contains(from), "{shape}.prisma has no `{from}`");
    write(dir, "altered.prisma", &text.replacen(from, to, 1))
}

async fn the_table_alone_maps_as_the_schema_does(backend: Backend) {
    for (shape, config_text) in SHAPES {
        let db = shape_db(shape, backend).await;
        let dir = tempfile::tempdir().expect("dir");
        let config = write(dir.path(), "clerk-sync.toml", config_text);
        let schema = fixture(&format!("{shape}.prisma"));

        let pulled = mapping(dir.path(), &db, &config, &[]);
        let checked = mapping(dir.path(), &db, &config, &[&schema]);

        assert_eq!(pulled.status, Some(0), "{shape}: {}", pulled.stderr);
        assert_eq!(checked.status, Some(0), "{shape}: {}", checked.stderr);
        assert!(
            pulled.stdout.contains("no schema file"),
            "{shape}: {}",
            pulled.stdout
        );
        assert!(
            checked.stdout.contains("they agree"),
            "{shape}: {}",
            checked.stdout
        );
        for prefix in ["key:", "delete:"] {
            assert_eq!(
                line_starting(&pulled.stdout, prefix),
                line_starting(&checked.stdout, prefix),
                "{shape}"
            );
        }
        let clerk_id = |report: &str| {
            line_starting(report, "Clerk id:")
                .split(" (")
                .next()
                .map(str::to_owned)
        };
        assert_eq!(clerk_id(&pulled.stdout), clerk_id(&checked.stdout));
        let (from_table, from_schema) = (columns(&pulled.stdout), columns(&checked.stdout));
        assert_eq!(
            from_table.keys().collect::<Vec<_>>(),
            from_schema.keys().collect::<Vec<_>>(),
            "{shape}"
        );
        assert!(from_schema.len() >= 8, "{shape}: {from_schema:?}");
        // SQLite's catalog cannot tell an enum (TEXT) or a @db.Uuid (TEXT) from text.
        let cannot_tell: &[&str] = match (backend, shape) {
            (Backend::Sqlite, "uuid-soft-delete") => &["id", "role"],
            _ => &[],
        };
        let differing: Vec<&String> = from_schema
            .iter()
            .filter(|(column, seen)| from_table.get(*column) != Some(*seen))
            .map(|(column, _)| column)
            .collect();
        assert_eq!(
            differing, cannot_tell,
            "{shape} on {backend:?}: from the table\n{}\nfrom the schema\n{}",
            pulled.stdout, checked.stdout
        );
    }
}

async fn a_schema_that_disagrees_with_the_table_exits_1_naming_the_field(backend: Backend) {
    let mut cases = vec![
        // Another type.
        (
            "cuid-clerkid",
            "firstName String?",
            "firstName Int?",
            "User.firstName",
        ),
        (
            "autoincrement-mapped",
            "username     String?",
            "username     Boolean?",
            "User.username",
        ),
        (
            "uuid-soft-delete",
            "deleted   Boolean",
            "deleted   Int",
            "User.deleted",
        ),
        // Another nullability, both ways.
        (
            "cuid-clerkid",
            "lastName  String?",
            "lastName  String",
            "User.lastName",
        ),
        (
            "autoincrement-mapped",
            "plan         String ",
            "plan         String? ",
            "User.plan",
        ),
        (
            "uuid-soft-delete",
            "email     String\n",
            "email     String?\n",
            "User.email",
        ),
    ];
    if backend != Backend::Sqlite {
        // An enum label the database type lacks (SQLite keeps enums as text).
        cases.push((
            "uuid-soft-delete",
            "OWNER\n",
            "OWNER\n  GUEST\n",
            "User.role",
        ));
        // A native type: text is not VARCHAR(64).
        cases.push((
            "cuid-clerkid",
            "imageUrl  String?",
            "imageUrl  String? @db.VarChar(64)",
            "User.imageUrl",
        ));
    }
    for (shape, from, to, named) in cases {
        let config_text = SHAPES
            .iter()
            .find(|(s, _)| *s == shape)
            .map(|(_, c)| *c)
            .unwrap_or_default();
        let db = shape_db(shape, backend).await;
        let dir = tempfile::tempdir().expect("dir");
        let config = write(dir.path(), "clerk-sync.toml", config_text);
        let schema = altered(dir.path(), shape, from, to);

        let checked = mapping(dir.path(), &db, &config, &[&schema]);

        assert_eq!(
            checked.status,
            Some(1),
            "{shape} `{to}`: {}",
            checked.stdout
        );
        assert!(
            checked.stderr.contains(named),
            "{shape} `{to}`: {}",
            checked.stderr
        );
        assert!(checked.stderr.contains("disagree"), "{}", checked.stderr);
        assert!(checked.stdout.is_empty(), "{}", checked.stdout);
    }
}

async fn serve_refuses_a_table_that_disagrees_and_serves_one_that_agrees(backend: Backend) {
    let shape = "cuid-clerkid";
    let db = shape_db(shape, backend).await;
    let dir = tempfile::tempdir().expect("dir");
    let secret = common::new_secret();
    let config = write(dir.path(), "clerk-sync.toml", "[user]\nid = \"cuid\"\n");
    let wrong = altered(dir.path(), shape, "firstName String?", "firstName Int?");
    let serve = |schema: &Path| {
        let mut command = clerk_sync(dir.path());
        command
            .arg("serve")
            .arg("--bind")
            .arg("127.0.0.1:0")
            .arg("--database-url")
            .arg(&db.url)
            .arg("--prisma-schema")
            .arg(schema)
            .arg("--config")
            .arg(&config)
            .env("CLERK_WEBHOOK_SIGNING_SECRET", &secret)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null());
        command
    };

    let disagrees = run(serve(&wrong));
    let agrees = running_for(
        serve(&fixture("cuid-clerkid.prisma")),
        Duration::from_secs(3),
    );

    assert_eq!(disagrees.status, Some(1), "{}", disagrees.stderr);
    assert!(
        disagrees
            .stderr
            .contains("User.firstName (column \"firstName\")"),
        "{}",
        disagrees.stderr
    );
    assert_eq!(agrees.status, None, "serve stopped: {}", agrees.stderr);
    assert!(
        agrees
            .stderr
            .contains("writing the application's own user model"),
        "{}",
        agrees.stderr
    );
    assert!(agrees.stderr.contains("listening"), "{}", agrees.stderr);
}

/// Runs `command` for `limit`, then stops it: its exit status (none when it was still
/// running) and what it wrote.
fn running_for(mut command: Command, limit: Duration) -> Run {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let started = Instant::now();
    let mut exited = None;
    while started.elapsed() < limit {
        if let Ok(Some(status)) = child.try_wait() {
            exited = status.code();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let output = child.wait_with_output().expect("its output");
    Run {
        status: exited,
        stdout: String::new(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn replay_writes_a_mapped_table(backend: Backend) {
    let shape = "cuid-clerkid";
    let db = shape_db(shape, backend).await;
    let dir = tempfile::tempdir().expect("dir");
    let event = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/clerk-events/user.created.openapi-example.json");
    let mut replay = clerk_sync(dir.path());
    replay
        .arg("replay")
        .arg(&event)
        .arg("--database-url")
        .arg(&db.url)
        .arg("--prisma-schema")
        .arg(fixture("cuid-clerkid.prisma"))
        .stdin(Stdio::null());
    let replayed = run(replay);

    assert_eq!(replayed.status, Some(0), "{}", replayed.stderr);
    assert_eq!(
        db.number(
            "SELECT count(*) AS n FROM \"User\" \
             WHERE \"clerkId\" = 'user_2g7np7Hrk0SN6kj5EDMLDaKNL0S' AND length(id) = 25"
        )
        .await,
        1,
        "{}",
        replayed.stdout
    );
    // Only clerk-sync's own tables were added: no seed table in the shape's place.
    assert_eq!(db.number("SELECT count(*) AS n FROM \"User\"").await, 1);
}

async fn migrate_checks_a_mapped_table_and_creates_no_seed_table(backend: Backend) {
    let shape = "autoincrement-mapped";
    let db = shape_db(shape, backend).await;
    let dir = tempfile::tempdir().expect("dir");
    let migrate = |schema: &Path| {
        let mut command = clerk_sync(dir.path());
        command
            .arg("migrate")
            .arg("--database-url")
            .arg(&db.url)
            .arg("--prisma-schema")
            .arg(schema);
        run(command)
    };
    let wrong = altered(
        dir.path(),
        shape,
        "name         String?",
        "name         String",
    );

    let executors = "SELECT count(*) AS n FROM pg_proc p \
                       JOIN pg_namespace n ON n.oid = p.pronamespace \
                      WHERE n.nspname = 'clerk_sync' AND p.proname LIKE 'mapped_lock_and_read_%'";
    let refused = migrate(&wrong);
    let executors_after_refused = match backend {
        Backend::Sqlite => 0,
        _ => db.number(executors).await,
    };
    let migrated = migrate(&fixture("autoincrement-mapped.prisma"));

    assert_eq!(refused.status, Some(1), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("User.name (column \"name\")"),
        "{}",
        refused.stderr
    );
    assert_eq!(migrated.status, Some(0), "{}", migrated.stderr);
    let seed_tables = match backend {
        Backend::Sqlite => {
            "SELECT count(*) AS n FROM sqlite_master WHERE type = 'table' AND name = 'User'"
        }
        _ => "SELECT count(*) AS n FROM pg_class WHERE relname = 'User'",
    };
    assert_eq!(db.number(seed_tables).await, 0, "no seed table was created");
    if backend != Backend::Sqlite {
        // The mapped table's executors (for many users and for one) are made by the
        // migration that checked the table.
        assert_eq!(executors_after_refused, 0);
        assert_eq!(db.number(executors).await, 2, "the executors were made");
    }
}

async fn the_seed_schema_on_an_empty_database_migrates_then_serves(backend: Backend) {
    let db = TestDb::empty(backend).await;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::create_dir(dir.path().join("prisma")).expect("prisma dir");
    std::fs::copy(
        fixture("schema.prisma"),
        dir.path().join("prisma/schema.prisma"),
    )
    .expect("copy the seed schema");

    let mut command = clerk_sync(dir.path());
    command.arg("migrate").arg("--database-url").arg(&db.url);
    let migrated = run(command);
    let mut daemon = clerk_sync(dir.path())
        .arg("serve")
        .arg("--bind")
        .arg("127.0.0.1:0")
        .arg("--database-url")
        .arg(&db.url)
        .env("CLERK_WEBHOOK_SIGNING_SECRET", common::new_secret())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let started = Instant::now();
    let mut exited = None;
    while started.elapsed() < Duration::from_secs(3) {
        if let Ok(Some(status)) = daemon.try_wait() {
            exited = Some(status);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = daemon.kill();
    let output = daemon.wait_with_output().expect("serve's output");
    let log = String::from_utf8_lossy(&output.stderr);

    assert_eq!(migrated.status, Some(0), "{}", migrated.stderr);
    assert_eq!(db.number("SELECT count(*) AS n FROM \"User\"").await, 0);
    assert!(exited.is_none(), "serve stopped: {exited:?}\n{log}");
    assert!(
        log.contains("the table agrees with the Prisma schema"),
        "{log}"
    );
    assert!(log.contains("listening"), "{log}");
}

// Through a transaction pooler too: the catalog is read in a transaction of its own.
on_every_backend!(the_table_alone_maps_as_the_schema_does);

on_both_backends!(
    a_schema_that_disagrees_with_the_table_exits_1_naming_the_field,
    serve_refuses_a_table_that_disagrees_and_serves_one_that_agrees,
    replay_writes_a_mapped_table,
    migrate_checks_a_mapped_table_and_creates_no_seed_table,
    the_seed_schema_on_an_empty_database_migrates_then_serves,
);
