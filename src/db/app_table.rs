//! The application's `User` table: created with Prisma's DDL where absent, checked where present.
//!
//! clerk-sync adopts an existing Prisma database. It never alters the application's table;
//! a table it cannot write safely (a missing column, another type, a name that may not be
//! NULL, a `Role` type without `ADMIN`/`USER`) stops it at start with the column named.

use super::DbError;

/// Prisma's `CREATE TYPE "Role"`, run when the type is absent.
pub const POSTGRES_ROLE_DDL: &str = r#"CREATE TYPE "Role" AS ENUM ('ADMIN', 'USER')"#;
/// Prisma's `User` DDL for PostgreSQL.
pub const POSTGRES_USER_DDL: &str = include_str!("app_ddl/postgres.sql");
/// Prisma's `User` DDL for SQLite.
pub const SQLITE_USER_DDL: &str = include_str!("app_ddl/sqlite.sql");

/// One column of the existing table, as the catalog describes it (type lower-cased).
#[derive(Debug, Clone)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// Type as the catalog names it: `text`, `character varying`, `timestamp without time zone`,
    /// `role` (an enum's name) on PostgreSQL; the declared type on SQLite.
    pub data_type: String,
    /// Declared length, where the type has one.
    pub max_length: Option<i32>,
    /// Whether NULL is allowed.
    pub nullable: bool,
    /// Whether the database fills the column itself (a default, identity or generated value).
    pub has_default: bool,
}

#[derive(Clone, Copy)]
enum Kind {
    Text,
    Timestamp,
    Role,
}

const EXPECTED: [(&str, Kind, bool); 6] = [
    ("id", Kind::Text, false),
    ("name", Kind::Text, true),
    ("mail_address", Kind::Text, false),
    ("role", Kind::Role, false),
    ("createdAt", Kind::Timestamp, false),
    ("updatedAt", Kind::Timestamp, false),
];

fn accepts(kind: Kind, postgres: bool, column: &Column) -> bool {
    let t = column.data_type.as_str();
    match (kind, postgres) {
        (Kind::Text, true) => {
            (t == "text" || t == "character varying") && column.max_length.is_none_or(|n| n >= 255)
        }
        (Kind::Timestamp, true) => t.starts_with("timestamp"),
        (Kind::Role, true) => t == "role",
        (Kind::Text | Kind::Role, false) => {
            t.is_empty() || t.contains("text") || t.contains("char") || t.contains("clob")
        }
        (Kind::Timestamp, false) => t.contains("date") || t.contains("time") || t.contains("text"),
    }
}

/// Checks the existing table's columns; the error names the first incompatible one.
pub fn check(columns: &[Column], postgres: bool) -> Result<(), DbError> {
    for (name, kind, needs_null) in EXPECTED {
        let Some(column) = columns.iter().find(|c| c.name == name) else {
            return Err(DbError::Incompatible(format!(
                "column \"{name}\" is missing"
            )));
        };
        if !accepts(kind, postgres, column) {
            let length = column
                .max_length
                .map(|n| format!("({n})"))
                .unwrap_or_default();
            return Err(DbError::Incompatible(format!(
                "column \"{name}\" has type {}{length}, expected {}",
                column.data_type,
                match (kind, postgres) {
                    (Kind::Text, true) => "TEXT or VARCHAR(255)",
                    (Kind::Timestamp, true) => "TIMESTAMP",
                    (Kind::Role, true) => "the enum \"Role\"",
                    (Kind::Timestamp, false) => "DATETIME",
                    (_, false) => "TEXT",
                }
            )));
        }
        if needs_null && !column.nullable {
            return Err(DbError::Incompatible(format!(
                "column \"{name}\" is NOT NULL, but users without a name must be written as NULL"
            )));
        }
    }
    for column in columns {
        let known = EXPECTED.iter().any(|(n, _, _)| *n == column.name);
        if !known && !column.nullable && !column.has_default {
            return Err(DbError::Incompatible(format!(
                "column \"{}\" is NOT NULL without a default, and clerk-sync cannot fill it",
                column.name
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prisma_columns() -> Vec<Column> {
        let c = |name: &str, t: &str, len: Option<i32>, nullable: bool| Column {
            name: name.into(),
            data_type: t.into(),
            max_length: len,
            nullable,
            has_default: false,
        };
        vec![
            c("id", "text", None, false),
            c("name", "character varying", Some(255), true),
            c("mail_address", "character varying", Some(255), false),
            c("role", "role", None, false),
            c("createdAt", "timestamp without time zone", None, false),
            c("updatedAt", "timestamp without time zone", None, false),
        ]
    }

    #[test]
    fn prismas_table_is_accepted() {
        assert!(check(&prisma_columns(), true).is_ok());
    }

    #[test]
    fn each_incompatibility_names_its_column() {
        let mut missing = prisma_columns();
        missing.retain(|c| c.name != "updatedAt");
        let mut narrow = prisma_columns();
        narrow[2].max_length = Some(100);
        let mut required_name = prisma_columns();
        required_name[1].nullable = false;
        for (columns, column) in [
            (missing, "updatedAt"),
            (narrow, "mail_address"),
            (required_name, "name"),
        ] {
            let message = check(&columns, true).expect_err("accepted").to_string();
            assert!(message.contains(&format!("\"{column}\"")), "{message}");
        }
    }
}
