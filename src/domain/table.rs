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

/// The application's user table as the mapped writer writes it (a table other than the seed
/// application's `User`): names and how each column binds, made once at start from the mapping
/// (`crate::mapping`) and checked against the live table. Plain data: the writer in `db` builds
/// its statements from it and decides nothing by it beyond which statement to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteShape {
    /// The PostgreSQL schema (`@@schema`); none for the connection's own (and on SQLite).
    pub schema: Option<String>,
    /// The table's name.
    pub name: String,
    /// Every column, by the mapping's index (`Mapping::columns`): the writes name them by it.
    pub columns: Vec<WriteColumn>,
    /// The column holding the Clerk user id (unique): rows are found by it.
    pub clerk_id: usize,
    /// The column holding the user's address, when the newest-claim rule applies to it (it is
    /// unique): rows holding a locked address are read by it, and the address is locked.
    pub unique_address: Option<usize>,
    /// The column holding the row's last update (a timestamp), read as [`crate::db`]'s
    /// `AppRow::updated_ms`.
    pub updated_at: Option<usize>,
    /// The column filled from Clerk's `created_at` (a timestamp): `backfill --prune` keeps a
    /// row created after its cutoff.
    pub created_at: Option<usize>,
}

impl WriteShape {
    /// `"schema"."name"`, or `"name"` without a schema.
    pub fn qualified_name(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{}.{}", quoted(schema), quoted(&self.name)),
            None => quoted(&self.name),
        }
    }

    /// The column's name, double-quoted for SQL.
    pub fn quoted_column(&self, index: usize) -> String {
        self.columns
            .get(index)
            .map_or_else(|| quoted(""), |c| quoted(&c.name))
    }
}

/// An identifier double-quoted for SQL (a `"` inside doubled).
pub fn quoted(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// One column of a [`WriteShape`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteColumn {
    /// Its name.
    pub name: String,
    /// The Prisma field it holds: the key it is read back as (the session sync's answer).
    pub field: String,
    /// How a value is bound into it.
    pub bind: Bind,
}

/// How a [`crate::domain::Value`] is bound into a column: on PostgreSQL the type its text is
/// cast to; on SQLite the storage class Prisma writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bind {
    /// `text`, `varchar`, `char`, `citext`.
    Text,
    /// `uuid` (text on SQLite).
    Uuid,
    /// `integer`.
    Int,
    /// `bigint`.
    BigInt,
    /// `double precision`.
    Float,
    /// `numeric` (its exact text on SQLite).
    Decimal,
    /// `boolean` (0 or 1 on SQLite).
    Bool,
    /// `timestamp without time zone` (Prisma's text form on SQLite).
    Timestamp,
    /// `timestamp with time zone`.
    TimestampTz,
    /// `date`.
    Date,
    /// A PostgreSQL enum: the type's name, double-quoted (and schema-qualified) for SQL (text
    /// on SQLite).
    Enum(String),
    /// `jsonb` (text on SQLite).
    Json,
    /// Never written by clerk-sync.
    Unsupported,
}
