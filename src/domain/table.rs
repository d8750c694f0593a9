//! An application table as the database's catalog describes it: plain data, read by `db` and
//! compared with the Prisma schema by `mapping`, so that neither needs the other.
//!
//! It holds names, types and constraints only, never a row.

/// Which catalog described the table: the type names differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Catalog {
    /// `pg_catalog`: types as `format_type` names them (`text`, `character varying`, …).
    Postgres,
    /// `pragma_table_xinfo`: the declared type as written in `CREATE TABLE`.
    Sqlite,
}

/// A table and what its catalog says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveTable {
    /// Which catalog described it.
    pub catalog: Catalog,
    /// The PostgreSQL schema it was found in; none on SQLite.
    pub schema: Option<String>,
    /// The table's name.
    pub name: String,
    /// Its columns, in the table's order.
    pub columns: Vec<LiveColumn>,
    /// The primary key's columns, in key order (empty when there is none).
    pub primary_key: Vec<String>,
    /// Columns unique on their own: a unique index or constraint (not partial, not on an
    /// expression) of exactly that one column; the primary key's column when it has one.
    pub unique: Vec<String>,
}

impl LiveTable {
    /// The column of that name.
    pub fn column(&self, name: &str) -> Option<&LiveColumn> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Whether the column is unique on its own (a one-column primary key or unique index).
    pub fn is_unique(&self, column: &str) -> bool {
        self.unique.iter().any(|u| u == column)
            || (self.primary_key.len() == 1 && self.primary_key[0] == column)
    }

    /// `"schema"."name"`, or `"name"` without a schema.
    pub fn qualified_name(&self) -> String {
        match &self.schema {
            Some(schema) => format!("\"{schema}\".\"{}\"", self.name),
            None => format!("\"{}\"", self.name),
        }
    }
}

/// One column, as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveColumn {
    /// The column's name.
    pub name: String,
    /// PostgreSQL: `format_type` without modifiers (`text`, `character varying`, `timestamp
    /// without time zone`, `uuid`, `integer`, `text[]`, an enum's quoted name); SQLite: the
    /// declared type as written (`TEXT`, `DATETIME`, possibly empty).
    pub data_type: String,
    /// `varchar(n)` / `char(n)`: the declared length.
    pub max_length: Option<u32>,
    /// Timestamps and times on PostgreSQL: fractional digits kept (6 when undeclared).
    pub precision: Option<u32>,
    /// An enum column (PostgreSQL): its type and labels.
    pub enum_type: Option<LiveEnum>,
    /// Whether NULL is allowed.
    pub nullable: bool,
    /// The default expression as the catalog prints it (`'free'::text`, `CURRENT_TIMESTAMP`,
    /// `nextval('users_id_seq'::regclass)`).
    pub default: Option<String>,
    /// An identity column, or SQLite's `INTEGER PRIMARY KEY` (the rowid).
    pub identity: bool,
    /// A generated column's expression.
    pub generated: Option<String>,
}

impl LiveColumn {
    /// Whether the database fills it on insert when it is not written.
    pub fn filled_by_database(&self) -> bool {
        self.default.is_some() || self.identity || self.generated.is_some()
    }

    /// A serial column (`nextval(...)`) or an identity.
    pub fn is_autoincrement(&self) -> bool {
        self.identity
            || self
                .default
                .as_deref()
                .is_some_and(|d| d.starts_with("nextval("))
    }
}

/// A PostgreSQL enum type and its labels, in the type's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveEnum {
    /// The type's name.
    pub name: String,
    /// Its labels.
    pub labels: Vec<String>,
}
