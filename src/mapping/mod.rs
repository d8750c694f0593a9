//! The mapping: how Clerk's user lands in the application's own user model, decided once at
//! start from its Prisma schema and an optional `clerk-sync.toml`, and trusted after.
//!
//! For the user model it says which table, which column holds the Clerk id, how a new row's key
//! is made, how a delete is done, and for every column what fills it and why. It is pure: no
//! database and no I/O except [`load`], which only reads the two files.
//!
//! Policy, in the order it is applied to each column:
//! 1. the primary key (made by clerk-sync in Prisma Client's format, left to the database, or
//!    the Clerk id) and the Clerk-id column;
//! 2. a `[user.fields]` line;
//! 3. the soft-delete field(s);
//! 4. `@updatedAt` (Clerk's `updated_at` of the version written, on every write);
//! 5. conventions by name and type (see [`CONVENTIONS`]);
//! 6. a client-side `@default` (`cuid()`, `uuid()`, …: made by clerk-sync on insert),
//!    `@default(now())` (the insert's time, in Prisma's form), any other default (left to the
//!    database);
//! 7. an optional column nothing fills is not written (NULL);
//! 8. a required column without a default that nothing fills makes [`Mapping::resolve`] fail,
//!    naming the field and the `[user.fields]` line that would fill it.
//!
//! A source Clerk may leave empty falls back per column ([`Absent`]): NULL when optional, the
//! column left alone when it has a default, the empty string for other required text (the
//! reserved `.invalid` placeholder for a required email), and otherwise the mapping is refused.
//!
//! What one user version then writes, column by column, is [`Mapping::values`] (see
//! [`values`] for the policy of each type).

pub mod config;
pub mod keys;
pub mod live;
pub mod prisma;
mod shape;
pub mod source;
pub mod values;

use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

pub use config::{Config, ConfigError, DeleteRule, FieldFill, FieldRule, KeyMode, UserConfig};
pub use keys::{KeyGeneration, NANOID_DEFAULT_LENGTH};
pub use live::{check_table, schema_from_table, table_without_schema, Disagreement, TableError};
pub use prisma::{Arity, DefaultValue, FieldType, Model, Schema, SchemaError};
pub use source::{Constant, MetadataKind, Source, UserField, ValueType};
pub use values::{
    sqlite_timestamp_text, AddressColumn, Assignment, RowValues, Value, ValueError, Write,
};

/// Why the mapping cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The schema does not parse.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// The config does not parse.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No user model can be chosen.
    #[error("{}{message}", at(*line))]
    Model {
        /// What is wrong.
        message: String,
        /// The config line at fault, if any.
        line: Option<usize>,
    },
    /// One field cannot serve as configured or as the convention needs.
    #[error("{}{model}.{field}: {message}", at(*line))]
    Field {
        /// The model.
        model: String,
        /// The field.
        field: String,
        /// What is wrong.
        message: String,
        /// The config line at fault, if any.
        line: Option<usize>,
    },
    /// Required columns without a default that nothing fills.
    #[error("{}", unfilled_message(model, columns))]
    Unfilled {
        /// The model.
        model: String,
        /// Each such column.
        columns: Vec<Unfilled>,
    },
}

fn at(line: Option<usize>) -> String {
    line.map(|l| format!("clerk-sync.toml, line {l}: "))
        .unwrap_or_default()
}

/// A required column without a default that nothing fills.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfilled {
    /// The Prisma field.
    pub field: String,
    /// Its column.
    pub column: String,
    /// Why nothing fills it.
    pub why: String,
    /// The `[user.fields]` line that would fill it.
    pub suggestion: String,
}

fn unfilled_message(model: &str, columns: &[Unfilled]) -> String {
    let mut out = format!(
        "{model} has required columns without a default that clerk-sync cannot fill; \
         give each a default in the schema or a line under [user.fields] in clerk-sync.toml:"
    );
    for c in columns {
        let _ = write!(
            out,
            "\n  {model}.{} (column \"{}\"): {}; for example `{}`",
            c.field, c.column, c.why, c.suggestion
        );
    }
    out
}

/// The user model's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// `@@schema`, when the model names one.
    pub schema: Option<String>,
    /// The table's name (`@@map`, else the model's).
    pub name: String,
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(schema) = &self.schema {
            write!(f, "\"{schema}\".")?;
        }
        write!(f, "\"{}\"", self.name)
    }
}

/// One label of an enum column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnumLabel {
    /// The value's name in the schema (and in `@default`).
    pub name: String,
    /// What the database stores (`@map`, else the name).
    pub label: String,
}

/// What a column holds, as the writer must bind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnKind {
    /// `String` (text, varchar, char, citext).
    Text,
    /// `String @db.Uuid`: a PostgreSQL `uuid`.
    Uuid,
    /// `Int`
    Int,
    /// `BigInt`
    BigInt,
    /// `Float`
    Float,
    /// `Decimal`
    Decimal,
    /// `Boolean`
    Bool,
    /// `DateTime`: a timestamp with this many fractional digits (Prisma's default is 3).
    DateTime {
        /// Fractional second digits kept.
        precision: u8,
        /// `@db.Timestamptz`
        with_time_zone: bool,
    },
    /// `DateTime @db.Date`
    Date,
    /// A Prisma enum.
    Enum {
        /// The enum's name in the schema.
        name: String,
        /// The database type's name (`@@map`, else the name).
        db_type: String,
        /// Its values in schema order.
        labels: Vec<EnumLabel>,
    },
    /// `Json`
    Json,
    /// `Bytes`
    Bytes,
    /// A scalar list (`String[]`).
    List(Box<ColumnKind>),
    /// `Unsupported("...")` or a native type clerk-sync does not write.
    Unsupported(String),
}

impl fmt::Display for ColumnKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text => f.write_str("text"),
            Self::Uuid => f.write_str("uuid"),
            Self::Int => f.write_str("int"),
            Self::BigInt => f.write_str("bigint"),
            Self::Float => f.write_str("float"),
            Self::Decimal => f.write_str("decimal"),
            Self::Bool => f.write_str("boolean"),
            Self::DateTime {
                precision,
                with_time_zone,
            } => write!(
                f,
                "timestamp{}({precision})",
                if *with_time_zone { "tz" } else { "" }
            ),
            Self::Date => f.write_str("date"),
            Self::Enum { name, .. } => write!(f, "enum {name}"),
            Self::Json => f.write_str("json"),
            Self::Bytes => f.write_str("bytes"),
            Self::List(inner) => write!(f, "{inner}[]"),
            Self::Unsupported(what) => write!(f, "unsupported {what}"),
        }
    }
}

/// What clerk-sync does when a column's source has no value for a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Absent {
    /// The source always has a value (`created_at`, a constant, …).
    Never,
    /// Write NULL.
    Null,
    /// Leave the column alone: its default on insert, its value on update.
    Keep,
    /// Write the empty string (required text).
    Empty,
    /// Write the reserved `.invalid` placeholder address (a required email column).
    Placeholder,
}

/// What fills a column.
#[derive(Debug, Clone, PartialEq)]
pub enum Fill {
    /// The Clerk user id; written on insert, the column a user's row is found by.
    ClerkId,
    /// A new value made by clerk-sync on insert and never changed after.
    Generated(KeyGeneration),
    /// A value from Clerk's user on every insert and update.
    Source {
        /// Where the value comes from.
        source: Source,
        /// What to write when Clerk has no value.
        absent: Absent,
    },
    /// The time of the insert, in the column's precision; never changed after.
    InsertTime,
    /// Set by a delete (`true`, or the deletion's time); never written otherwise, so a late
    /// update never clears it.
    SoftDelete,
    /// Left to the database: never written (an `autoincrement()`, a `dbgenerated(...)`, a
    /// default).
    Database,
    /// Never written (optional, NULL unless the application sets it).
    NotWritten,
}

impl Fill {
    /// Written by an insert.
    pub fn on_insert(&self) -> bool {
        matches!(
            self,
            Self::ClerkId | Self::Generated(_) | Self::Source { .. } | Self::InsertTime
        )
    }

    /// Written by an update.
    pub fn on_update(&self) -> bool {
        matches!(self, Self::Source { .. })
    }
}

/// Why a column is filled as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// A convention of names and types, described.
    Convention(String),
    /// A schema attribute, as written (`@updatedAt`, `@default(cuid())`).
    Attribute(String),
    /// A `clerk-sync.toml` line.
    Config(usize),
    /// Nothing fills it, and it may stay NULL.
    Nothing,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Convention(why) => write!(f, "convention: {why}"),
            Self::Attribute(attr) => write!(f, "attribute {attr}"),
            Self::Config(line) => write!(f, "clerk-sync.toml line {line}"),
            Self::Nothing => f.write_str("optional, nothing fills it"),
        }
    }
}

/// One column of the user table and what fills it.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// The Prisma field.
    pub field: String,
    /// The database column (`@map`, else the field).
    pub name: String,
    /// What it holds.
    pub kind: ColumnKind,
    /// `@db.VarChar(n)` / `@db.Char(n)`: text is cut to this many characters.
    pub max_length: Option<usize>,
    /// Optional in the schema.
    pub nullable: bool,
    /// Unique on its own.
    pub unique: bool,
    /// The schema's `@default`, if any.
    pub default: Option<DefaultValue>,
    /// What fills it.
    pub fill: Fill,
    /// Why.
    pub reason: Reason,
}

/// The user model's primary key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// The Prisma field.
    pub field: String,
    /// The column.
    pub column: String,
    /// How a new row's key is made.
    pub generation: KeyGeneration,
    /// Why.
    pub reason: Reason,
}

/// How a `user.deleted` is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delete {
    /// The row is deleted.
    Hard,
    /// The row stays; these columns are set instead.
    Soft {
        /// A Boolean column set to `true`.
        flag: Option<String>,
        /// A DateTime column set to the deletion's time.
        at: Option<String>,
        /// Why.
        reason: Reason,
    },
}

/// The whole mapping of Clerk's user onto the application's user model.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    /// The Prisma model.
    pub model: String,
    /// Its table.
    pub table: Table,
    /// The datasource provider, when the schema names one.
    pub provider: Option<String>,
    /// The primary key.
    pub key: Key,
    /// The column holding the Clerk id (the key's column when the key is the Clerk id).
    pub clerk_id: String,
    /// How deletes are done.
    pub delete: Delete,
    /// Every column of the table, in schema order.
    pub columns: Vec<Column>,
}

/// Field names that hold the Clerk id, compared after [`normalize`].
pub const CLERK_ID_NAMES: [&str; 2] = ["clerkid", "clerkuserid"];

/// The name conventions: normalized field names and the source that fills them.
pub const CONVENTIONS: &[(&[&str], Conventional)] = &[
    (
        &[
            "email",
            "emailaddress",
            "mailaddress",
            "mail",
            "primaryemail",
            "primaryemailaddress",
        ],
        Conventional::Email,
    ),
    (&["name", "fullname", "displayname"], Conventional::FullName),
    (
        &["firstname", "givenname", "fname", "forename"],
        Conventional::User(UserField::FirstName),
    ),
    (
        &["lastname", "familyname", "surname", "lname"],
        Conventional::User(UserField::LastName),
    ),
    (&["username"], Conventional::User(UserField::Username)),
    (
        &[
            "imageurl",
            "image",
            "avatarurl",
            "avatar",
            "photo",
            "photourl",
            "profileimage",
            "profileimageurl",
            "picture",
            "pictureurl",
            "profilepicture",
            "profilepictureurl",
        ],
        Conventional::User(UserField::ImageUrl),
    ),
    (
        &[
            "phone",
            "phonenumber",
            "primaryphone",
            "primaryphonenumber",
            "mobile",
        ],
        Conventional::Phone,
    ),
    (
        &["createdat", "created", "createdon", "insertedat"],
        Conventional::User(UserField::CreatedAt),
    ),
    (
        &["updatedat", "updated", "updatedon", "modifiedat"],
        Conventional::User(UserField::UpdatedAt),
    ),
    (
        &["lastsigninat", "lastloginat", "lastsignedinat"],
        Conventional::User(UserField::LastSignInAt),
    ),
    (
        &["lastactiveat"],
        Conventional::User(UserField::LastActiveAt),
    ),
    (&["role"], Conventional::Role),
];

/// A source a convention assigns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conventional {
    /// The primary email address.
    Email,
    /// The primary phone number.
    Phone,
    /// The name rule.
    FullName,
    /// The role rule (enum columns only).
    Role,
    /// A user-object field.
    User(UserField),
}

impl Conventional {
    fn source(self) -> Source {
        match self {
            Self::Email => Source::PrimaryEmail,
            Self::Phone => Source::PrimaryPhone,
            Self::FullName => Source::FullName,
            Self::Role => Source::Role,
            Self::User(field) => Source::User(field),
        }
    }
}

/// A field name lowercased without `_` or `-`: `clerk_user_id`, `clerkUserId` → `clerkuserid`.
pub fn normalize(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

const SOFT_FLAG_NAMES: [&str; 4] = ["deleted", "isdeleted", "softdeleted", "removed"];
const SOFT_AT_NAMES: [&str; 2] = ["deletedat", "removedat"];

/// Reads the schema and, when given, the config, and resolves the mapping.
pub fn load(schema_path: &Path, config_path: Option<&Path>) -> Result<Mapping, MappingError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| MappingError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let schema = Schema::parse(&read(schema_path)?)?;
    let config = match config_path {
        Some(path) => Config::parse(&read(path)?)?,
        None => Config::default(),
    };
    Mapping::resolve(&schema, &config)
}

impl Mapping {
    /// Parses both texts and resolves the mapping.
    pub fn from_text(schema: &str, config: Option<&str>) -> Result<Self, MappingError> {
        let schema = Schema::parse(schema)?;
        let config = config.map(Config::parse).transpose()?.unwrap_or_default();
        Self::resolve(&schema, &config)
    }

    /// Resolves the mapping of the user model.
    pub fn resolve(schema: &Schema, config: &Config) -> Result<Self, MappingError> {
        Self::resolve_model(schema, config, None)
    }

    /// Resolves the mapping, with `model` (a `--model` flag) ahead of the config's choice.
    pub fn resolve_model(
        schema: &Schema,
        config: &Config,
        model: Option<&str>,
    ) -> Result<Self, MappingError> {
        let user = &config.user;
        let model = pick_model(schema, user, model)?;
        Resolver {
            schema,
            model,
            user,
        }
        .run()
    }

    /// The column holding the Clerk id.
    pub fn clerk_id_column(&self) -> Option<&Column> {
        self.column(&self.clerk_id)
    }

    /// The column of that database name.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The column of that Prisma field.
    pub fn field(&self, field: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.field == field)
    }

    /// What `clerk-sync mapping` prints: the table, the key, the delete mode, and each column
    /// with what fills it and why, grouped as written, left to the database, not written.
    pub fn report(&self) -> String {
        let mut out = String::new();
        let provider = self
            .provider
            .as_deref()
            .map(|p| format!(" ({p})"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "model {} -> table {}{provider}",
            self.model, self.table
        );
        let _ = writeln!(
            out,
            "key: \"{}\", {} ({})",
            self.key.column, self.key.generation, self.key.reason
        );
        let why = self
            .clerk_id_column()
            .map(|c| format!(" ({})", c.reason))
            .unwrap_or_default();
        let _ = writeln!(out, "Clerk id: \"{}\"{why}", self.clerk_id);
        match &self.delete {
            Delete::Hard => {
                let _ = writeln!(out, "delete: the row is deleted");
            }
            Delete::Soft { flag, at, reason } => {
                let set: Vec<String> = flag
                    .iter()
                    .map(|f| format!("\"{f}\" = true"))
                    .chain(at.iter().map(|a| format!("\"{a}\" = the deletion's time")))
                    .collect();
                let _ = writeln!(
                    out,
                    "delete: soft, the row stays and {} ({reason})",
                    set.join(", ")
                );
            }
        }
        let groups: [(&str, FillTest); 3] = [
            ("written", |f| {
                !matches!(f, Fill::Database | Fill::NotWritten)
            }),
            ("left to the database", |f| matches!(f, Fill::Database)),
            ("not written", |f| matches!(f, Fill::NotWritten)),
        ];
        let rows: Vec<[String; 4]> = self
            .columns
            .iter()
            .map(|c| {
                [
                    format!("\"{}\"", c.name),
                    describe_type(c),
                    describe_fill(c),
                    c.reason.to_string(),
                ]
            })
            .collect();
        let width = |i: usize| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0);
        let (w0, w1, w2) = (width(0), width(1), width(2));
        for (title, belongs) in groups {
            let members: Vec<&[String; 4]> = self
                .columns
                .iter()
                .zip(&rows)
                .filter(|(c, _)| belongs(&c.fill))
                .map(|(_, r)| r)
                .collect();
            if members.is_empty() {
                continue;
            }
            let _ = writeln!(out, "\n{title}:");
            for [name, ty, fill, reason] in members {
                let _ = writeln!(out, "  {name:<w0$}  {ty:<w1$}  {fill:<w2$}  {reason}",);
            }
        }
        out
    }
}

/// Whether a fill belongs to a group of the report.
type FillTest = fn(&Fill) -> bool;

fn describe_type(c: &Column) -> String {
    let mut ty = c.kind.to_string();
    if let Some(n) = c.max_length {
        let _ = write!(ty, "({n})");
    }
    ty.push_str(if c.nullable {
        ", optional"
    } else {
        ", required"
    });
    if c.unique {
        ty.push_str(", unique");
    }
    ty
}

fn describe_fill(c: &Column) -> String {
    match &c.fill {
        Fill::ClerkId => "the Clerk user id".to_owned(),
        Fill::Generated(g) => format!("{g} on insert"),
        Fill::Source { source, absent } => {
            let fallback = match absent {
                Absent::Never | Absent::Keep if matches!(source, Source::Role) => {
                    "; an unknown role leaves it alone"
                }
                Absent::Never => "",
                Absent::Null => "; NULL when none",
                Absent::Keep => "; unchanged when none",
                Absent::Empty => "; empty when none",
                Absent::Placeholder => "; a placeholder when none",
            };
            format!("{source}{fallback}")
        }
        Fill::InsertTime => "the insert's time".to_owned(),
        Fill::SoftDelete => "set by a delete".to_owned(),
        Fill::Database => match &c.default {
            Some(d) => format!("default {d}"),
            None => "the database".to_owned(),
        },
        Fill::NotWritten => "NULL".to_owned(),
    }
}

fn pick_model<'s>(
    schema: &'s Schema,
    user: &UserConfig,
    flag: Option<&str>,
) -> Result<&'s Model, MappingError> {
    let named = |name: &str, line: Option<usize>| {
        schema.model(name).ok_or_else(|| MappingError::Model {
            message: format!(
                "no model `{name}` in the schema (models: {})",
                model_names(schema)
            ),
            line,
        })
    };
    let by_name = match (flag, &user.model) {
        (Some(name), _) => Some(named(name, None)?),
        (None, Some(m)) => Some(named(&m.value, Some(m.line))?),
        (None, None) => None,
    };
    if let Some(table) = &user.table {
        let found = schema
            .models
            .iter()
            .find(|m| m.table_name() == table.value)
            .ok_or_else(|| MappingError::Model {
                message: format!("no model maps to table `{}`", table.value),
                line: Some(table.line),
            })?;
        if let Some(m) = by_name.filter(|m| m.name != found.name) {
            return Err(MappingError::Model {
                message: format!(
                    "table `{}` is model {}'s, not the chosen model {}'s",
                    table.value, found.name, m.name
                ),
                line: Some(table.line),
            });
        }
        return Ok(found);
    }
    if let Some(m) = by_name {
        return Ok(m);
    }
    if let Some(m) = schema.model("User") {
        return Ok(m);
    }
    let with_clerk_id: Vec<&Model> = schema
        .models
        .iter()
        .filter(|m| {
            m.fields
                .iter()
                .any(|f| CLERK_ID_NAMES.contains(&normalize(&f.name).as_str()))
        })
        .collect();
    match with_clerk_id.as_slice() {
        [one] => Ok(one),
        [] => Err(MappingError::Model {
            message: format!(
                "no model named User and none with a Clerk-id field (clerkId, clerkUserId, \
                 clerk_id, clerk_user_id); name it with `model = \"...\"` under [user] \
                 (models: {})",
                model_names(schema)
            ),
            line: None,
        }),
        several => Err(MappingError::Model {
            message: format!(
                "models {} all have a Clerk-id field; name one with `model = \"...\"` under [user]",
                several
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            line: None,
        }),
    }
}

fn model_names(schema: &Schema) -> String {
    let names: Vec<&str> = schema.models.iter().map(|m| m.name.as_str()).collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

struct Resolver<'a> {
    schema: &'a Schema,
    model: &'a Model,
    user: &'a UserConfig,
}

impl Resolver<'_> {
    fn field_error(&self, field: &str, message: String, line: Option<usize>) -> MappingError {
        MappingError::Field {
            model: self.model.name.clone(),
            field: field.to_owned(),
            message,
            line,
        }
    }

    /// A field that is a column (not a relation or a composite).
    fn is_column(&self, field: &prisma::Field) -> bool {
        match &field.ty {
            FieldType::Named(name) => self.schema.enum_named(name).is_some(),
            _ => true,
        }
    }

    fn kind(&self, field: &prisma::Field) -> (ColumnKind, Option<usize>) {
        let native = field.native.as_ref();
        let native_name = native.map(|n| n.name.as_str());
        let first_arg = native
            .and_then(|n| n.args.first())
            .and_then(|a| a.parse::<usize>().ok());
        let mut max_length = None;
        let scalar = match &field.ty {
            FieldType::String => match native_name {
                Some("Uuid") => ColumnKind::Uuid,
                Some("VarChar" | "Char" | "NVarChar" | "NChar") => {
                    max_length = first_arg;
                    ColumnKind::Text
                }
                _ => ColumnKind::Text,
            },
            FieldType::Boolean => ColumnKind::Bool,
            FieldType::Int => ColumnKind::Int,
            FieldType::BigInt => ColumnKind::BigInt,
            FieldType::Float => ColumnKind::Float,
            FieldType::Decimal => ColumnKind::Decimal,
            FieldType::DateTime => match native_name {
                Some("Date") => ColumnKind::Date,
                Some("Time" | "Timetz") => ColumnKind::Unsupported("time".to_owned()),
                Some(name) => ColumnKind::DateTime {
                    // Without an argument PostgreSQL keeps microseconds, MySQL whole seconds.
                    precision: first_arg
                        .and_then(|p| u8::try_from(p).ok())
                        .unwrap_or(match name {
                            "Timestamp" | "Timestamptz" => 6,
                            "DateTime2" => 7,
                            _ => 0,
                        }),
                    with_time_zone: name == "Timestamptz",
                },
                None => ColumnKind::DateTime {
                    precision: 3,
                    with_time_zone: false,
                },
            },
            FieldType::Json => ColumnKind::Json,
            FieldType::Bytes => ColumnKind::Bytes,
            FieldType::Unsupported(db) => ColumnKind::Unsupported(db.clone()),
            FieldType::Named(name) => match self.schema.enum_named(name) {
                Some(e) => ColumnKind::Enum {
                    name: e.name.clone(),
                    db_type: e.db_name().to_owned(),
                    labels: e
                        .values
                        .iter()
                        .map(|v| EnumLabel {
                            name: v.name.clone(),
                            label: v.db_label().to_owned(),
                        })
                        .collect(),
                },
                None => ColumnKind::Unsupported(name.clone()),
            },
        };
        if field.arity == Arity::List {
            (ColumnKind::List(Box::new(scalar)), None)
        } else {
            (scalar, max_length)
        }
    }

    fn column_field(
        &self,
        name: &str,
        line: Option<usize>,
    ) -> Result<&prisma::Field, MappingError> {
        let field = self
            .model
            .field(name)
            .ok_or_else(|| self.field_error(name, "no such field in the model".to_owned(), line))?;
        if !self.is_column(field) {
            return Err(self.field_error(name, "is a relation, not a column".to_owned(), line));
        }
        Ok(field)
    }

    fn clerk_id_field(&self) -> Result<(&prisma::Field, Reason), MappingError> {
        let check = |field: &prisma::Field, line: Option<usize>| {
            if field.ty != FieldType::String || field.arity == Arity::List {
                return Err(self.field_error(
                    &field.name,
                    "the Clerk id needs a String field".to_owned(),
                    line,
                ));
            }
            if !self.model.is_unique(field) {
                return Err(self.field_error(
                    &field.name,
                    "the Clerk id's field must be @unique (or the @id): a user's row is found \
                     by it"
                        .to_owned(),
                    line,
                ));
            }
            Ok(())
        };
        if let Some(named) = &self.user.clerk_id {
            let field = self.column_field(&named.value, Some(named.line))?;
            check(field, Some(named.line))?;
            return Ok((field, Reason::Config(named.line)));
        }
        if let Some(field) = self
            .model
            .fields
            .iter()
            .find(|f| CLERK_ID_NAMES.contains(&normalize(&f.name).as_str()))
        {
            check(field, None)?;
            return Ok((
                field,
                Reason::Convention(format!(
                    "a unique String named like clerkId ({})",
                    field.name
                )),
            ));
        }
        let clerk_key = self.user.id.as_ref().map(|m| m.value) == Some(KeyMode::Clerk);
        if let Some(id) = self.id_field()? {
            if id.ty == FieldType::String && (clerk_key || id.default.is_none()) {
                let reason = match &self.user.id {
                    Some(m) if clerk_key => Reason::Config(m.line),
                    _ => Reason::Convention(
                        "the @id is a String nothing generates: it holds the Clerk id".to_owned(),
                    ),
                };
                return Ok((id, reason));
            }
        }
        Err(MappingError::Model {
            message: format!(
                "{}: no field holds the Clerk id (a unique String named clerkId, clerkUserId, \
                 clerk_id or clerk_user_id, or a String @id without a default); name it with \
                 `clerk_id = \"field\"` under [user]",
                self.model.name
            ),
            line: None,
        })
    }

    fn id_field(&self) -> Result<Option<&prisma::Field>, MappingError> {
        if let Some(f) = self.model.fields.iter().find(|f| f.id) {
            return Ok(Some(f));
        }
        match self.model.compound_id.as_deref() {
            Some([one]) => Ok(self.model.field(one)),
            Some(_) => Err(MappingError::Model {
                message: format!(
                    "{}: a compound @@id is not supported as the user's key",
                    self.model.name
                ),
                line: None,
            }),
            None => Ok(None),
        }
    }

    fn key(&self, id: &prisma::Field, clerk_id: &prisma::Field) -> Result<Key, MappingError> {
        let is_clerk = id.name == clerk_id.name;
        let text_key = id.ty == FieldType::String;
        let from_default = || -> Option<(KeyGeneration, String)> {
            let d = id.default.as_ref()?;
            let g = match d {
                DefaultValue::Cuid(2) => KeyGeneration::Cuid2,
                DefaultValue::Cuid(_) => KeyGeneration::Cuid,
                DefaultValue::Uuid(7) => KeyGeneration::Uuid7,
                DefaultValue::Uuid(_) => KeyGeneration::Uuid4,
                DefaultValue::Nanoid(n) => {
                    KeyGeneration::Nanoid(n.unwrap_or(NANOID_DEFAULT_LENGTH))
                }
                DefaultValue::Autoincrement
                | DefaultValue::Sequence
                | DefaultValue::DbGenerated(_)
                | DefaultValue::Auto => KeyGeneration::Database,
                _ => return None,
            };
            Some((g, format!("@default({d})")))
        };
        let (generation, reason) = if let Some(mode) = &self.user.id {
            let line = Some(mode.line);
            let fail = |message: String| Err(self.field_error(&id.name, message, line));
            let generation = match mode.value {
                KeyMode::Clerk if !is_clerk => {
                    return fail(format!(
                        "`id = \"clerk\"` makes the key the Clerk id, but the Clerk id is in `{}`",
                        clerk_id.name
                    ))
                }
                KeyMode::Clerk => KeyGeneration::Clerk,
                KeyMode::Database => {
                    if let Some(d) = id.default.as_ref().filter(|d| d.is_client_side()) {
                        return fail(format!(
                            "`id = \"database\"`, but @default({d}) is made by Prisma Client: \
                             the database has no default for it"
                        ));
                    }
                    KeyGeneration::Database
                }
                made => {
                    if !text_key {
                        return fail(format!(
                            "a {} key cannot take a generated string key",
                            id.ty
                        ));
                    }
                    if is_clerk {
                        return fail("holds the Clerk id, so clerk-sync cannot make it".to_owned());
                    }
                    let is_uuid_column = id.native.as_ref().is_some_and(|n| n.name == "Uuid");
                    let g = match made {
                        KeyMode::Cuid => KeyGeneration::Cuid,
                        KeyMode::Cuid2 => KeyGeneration::Cuid2,
                        KeyMode::Uuid => KeyGeneration::Uuid4,
                        KeyMode::Uuid7 => KeyGeneration::Uuid7,
                        _ => KeyGeneration::Nanoid(match id.default {
                            Some(DefaultValue::Nanoid(Some(n))) => n,
                            _ => NANOID_DEFAULT_LENGTH,
                        }),
                    };
                    if is_uuid_column && !matches!(g, KeyGeneration::Uuid4 | KeyGeneration::Uuid7) {
                        return fail("a @db.Uuid key can only take uuid or uuid7".to_owned());
                    }
                    g
                }
            };
            (generation, Reason::Config(mode.line))
        } else if is_clerk {
            if let Some(d) = &id.default {
                return Err(self.field_error(
                    &id.name,
                    format!(
                        "holds the Clerk id but has @default({d}); set `id = \"...\"` under [user]"
                    ),
                    None,
                ));
            }
            (
                KeyGeneration::Clerk,
                Reason::Convention("the @id holds the Clerk id".to_owned()),
            )
        } else if let Some((g, attr)) = from_default() {
            (g, Reason::Attribute(attr))
        } else {
            return Err(self.field_error(
                &id.name,
                format!(
                    "cannot tell how a new row's key is made ({}); set `id = \"cuid\" | \"cuid2\" \
                     | \"uuid\" | \"uuid7\" | \"nanoid\" | \"database\"` under [user]",
                    id.default
                        .as_ref()
                        .map_or_else(|| "no @default".to_owned(), |d| format!("@default({d})"))
                ),
                None,
            ));
        };
        Ok(Key {
            field: id.name.clone(),
            column: id.column_name().to_owned(),
            generation,
            reason,
        })
    }

    fn delete(&self) -> Result<Delete, MappingError> {
        match &self.user.delete {
            Some(rule) => match &rule.value {
                DeleteRule::Delete => Ok(Delete::Hard),
                DeleteRule::Soft(name) => {
                    let field = self.column_field(name, Some(rule.line))?;
                    let column = Some(field.column_name().to_owned());
                    let reason = Reason::Config(rule.line);
                    match (&field.ty, field.arity) {
                        (FieldType::Boolean, Arity::Required | Arity::Optional) => {
                            Ok(Delete::Soft {
                                flag: column,
                                at: None,
                                reason,
                            })
                        }
                        (FieldType::DateTime, Arity::Optional) => Ok(Delete::Soft {
                            flag: None,
                            at: column,
                            reason,
                        }),
                        _ => Err(self.field_error(
                            name,
                            "a soft delete needs a Boolean or an optional DateTime field"
                                .to_owned(),
                            Some(rule.line),
                        )),
                    }
                }
            },
            None => {
                let find = |names: &[&str], ty: FieldType, optional_only: bool| {
                    self.model
                        .fields
                        .iter()
                        .find(|f| {
                            f.ty == ty
                                && f.arity != Arity::List
                                && (!optional_only || f.arity == Arity::Optional)
                                && names.contains(&normalize(&f.name).as_str())
                                && self.user.field(&f.name).is_none()
                        })
                        .map(|f| f.column_name().to_owned())
                };
                let flag = find(&SOFT_FLAG_NAMES, FieldType::Boolean, false);
                let at = find(&SOFT_AT_NAMES, FieldType::DateTime, true);
                if flag.is_none() && at.is_none() {
                    return Ok(Delete::Hard);
                }
                Ok(Delete::Soft {
                    flag,
                    at,
                    reason: Reason::Convention(
                        "fields named like deleted / deletedAt mark a soft delete".to_owned(),
                    ),
                })
            }
        }
    }

    fn run(self) -> Result<Mapping, MappingError> {
        let (clerk_field, clerk_reason) = self.clerk_id_field()?;
        let id = self.id_field()?.ok_or_else(|| MappingError::Model {
            message: format!("{} has no @id", self.model.name),
            line: None,
        })?;
        let key = self.key(id, clerk_field)?;
        let delete = self.delete()?;
        let soft_columns: Vec<&str> = match &delete {
            Delete::Hard => Vec::new(),
            Delete::Soft { flag, at, .. } => {
                flag.iter().chain(at.iter()).map(String::as_str).collect()
            }
        };
        for rule in &self.user.fields {
            let field = self.column_field(&rule.field, Some(rule.line))?;
            let taken = if field.name == id.name {
                Some("is the primary key")
            } else if field.name == clerk_field.name {
                Some("holds the Clerk id")
            } else if soft_columns.contains(&field.column_name()) {
                Some("marks the soft delete")
            } else {
                None
            };
            if let Some(taken) = taken {
                return Err(self.field_error(
                    &rule.field,
                    format!("{taken}; it cannot also be given a source"),
                    Some(rule.line),
                ));
            }
        }
        let mut columns = Vec::new();
        let mut unfilled = Vec::new();
        for field in self.model.fields.iter().filter(|f| self.is_column(f)) {
            let (kind, max_length) = self.kind(field);
            let nullable = field.arity != Arity::Required;
            let mut column = Column {
                field: field.name.clone(),
                name: field.column_name().to_owned(),
                kind,
                max_length,
                nullable,
                unique: self.model.is_unique(field),
                default: field.default.clone(),
                fill: Fill::NotWritten,
                reason: Reason::Nothing,
            };
            match self.fill(
                field,
                &column,
                id,
                (clerk_field, &clerk_reason),
                &key,
                &soft_columns,
            )? {
                Some((fill, reason)) => {
                    column.fill = fill;
                    column.reason = reason;
                }
                None if nullable || field.arity == Arity::List => {}
                None => unfilled.push(Unfilled {
                    field: field.name.clone(),
                    column: column.name.clone(),
                    why: format!(
                        "a required {} with no default and no convention",
                        column.kind
                    ),
                    suggestion: suggestion(&field.name, &column.kind),
                }),
            }
            if let Fill::Source { source, .. } = &column.fill {
                match fallback(source, &column) {
                    Some(a) => {
                        if let Fill::Source { absent, .. } = &mut column.fill {
                            *absent = a;
                        }
                    }
                    None => unfilled.push(Unfilled {
                        field: field.name.clone(),
                        column: column.name.clone(),
                        why: format!(
                            "a required {} with no default, and `{source}` may be empty",
                            column.kind
                        ),
                        suggestion: format!("{} = {}", field.name, constant_example(&column.kind)),
                    }),
                }
            }
            columns.push(column);
        }
        if !unfilled.is_empty() {
            return Err(MappingError::Unfilled {
                model: self.model.name.clone(),
                columns: unfilled,
            });
        }
        Ok(Mapping {
            model: self.model.name.clone(),
            table: Table {
                schema: self.model.schema.clone(),
                name: self.model.table_name().to_owned(),
            },
            provider: self.schema.provider.clone(),
            clerk_id: clerk_field.column_name().to_owned(),
            key,
            delete,
            columns,
        })
    }

    /// What fills one column, or `None` when nothing does.
    fn fill(
        &self,
        field: &prisma::Field,
        column: &Column,
        id: &prisma::Field,
        (clerk_field, clerk_reason): (&prisma::Field, &Reason),
        key: &Key,
        soft_columns: &[&str],
    ) -> Result<Option<(Fill, Reason)>, MappingError> {
        // Settled by `fallback` once the column is known.
        let pending = Absent::Never;
        if field.name == id.name {
            let fill = match key.generation {
                KeyGeneration::Clerk => Fill::ClerkId,
                KeyGeneration::Database => Fill::Database,
                g => Fill::Generated(g),
            };
            return Ok(Some((fill, key.reason.clone())));
        }
        if field.name == clerk_field.name {
            return Ok(Some((Fill::ClerkId, clerk_reason.clone())));
        }
        if let Some(rule) = self.user.field(&field.name) {
            let line = Some(rule.line);
            return match &rule.fill {
                FieldFill::NotWritten if !column.nullable && column.default.is_none() => Ok(None),
                FieldFill::NotWritten if column.default.is_some() => {
                    Ok(Some((Fill::Database, Reason::Config(rule.line))))
                }
                FieldFill::NotWritten => Ok(Some((Fill::NotWritten, Reason::Config(rule.line)))),
                FieldFill::Source(source) => {
                    if let Err(why) = accepts(&column.kind, source) {
                        return Err(self.field_error(&field.name, why, line));
                    }
                    Ok(Some((
                        Fill::Source {
                            source: source.clone(),
                            absent: pending,
                        },
                        Reason::Config(rule.line),
                    )))
                }
            };
        }
        if soft_columns.contains(&column.name.as_str()) {
            let reason = match &self.user.delete {
                Some(rule) => Reason::Config(rule.line),
                None => Reason::Convention("named like deleted / deletedAt".to_owned()),
            };
            return Ok(Some((Fill::SoftDelete, reason)));
        }
        let source = |source: Source, reason: Reason| {
            Some((
                Fill::Source {
                    source,
                    absent: pending,
                },
                reason,
            ))
        };
        if field.updated_at {
            return Ok(source(
                Source::User(UserField::UpdatedAt),
                Reason::Attribute("@updatedAt".to_owned()),
            ));
        }
        let normalized = normalize(&field.name);
        if let Some((_, conventional)) = CONVENTIONS
            .iter()
            .find(|(names, _)| names.contains(&normalized.as_str()))
        {
            let candidate = conventional.source();
            let fits = match conventional {
                Conventional::Role => matches!(column.kind, ColumnKind::Enum { .. }),
                _ => accepts(&column.kind, &candidate).is_ok(),
            };
            if fits {
                let why = match (conventional, &field.default) {
                    (Conventional::User(UserField::CreatedAt), Some(DefaultValue::Now)) => {
                        format!("{} with @default(now()): Clerk's created_at", field.name)
                    }
                    (Conventional::Role, _) => format!(
                        "an enum named {}: public_metadata.role matched to its values, any case",
                        field.name
                    ),
                    _ => format!("the name {} means {candidate}", field.name),
                };
                return Ok(source(candidate, Reason::Convention(why)));
            }
        }
        Ok(match &field.default {
            Some(d) if d.is_client_side() => {
                let g = match d {
                    DefaultValue::Cuid(2) => Some(KeyGeneration::Cuid2),
                    DefaultValue::Cuid(_) => Some(KeyGeneration::Cuid),
                    DefaultValue::Uuid(7) => Some(KeyGeneration::Uuid7),
                    DefaultValue::Uuid(_) => Some(KeyGeneration::Uuid4),
                    DefaultValue::Nanoid(n) => {
                        Some(KeyGeneration::Nanoid(n.unwrap_or(NANOID_DEFAULT_LENGTH)))
                    }
                    _ => None,
                };
                match g {
                    Some(g) => Some((Fill::Generated(g), Reason::Attribute(format!("@default({d})")))),
                    None => {
                        return Err(self.field_error(
                            &field.name,
                            format!("@default({d}) is made by Prisma Client, and clerk-sync does not make it; map it under [user.fields]"),
                            None,
                        ))
                    }
                }
            }
            // Prisma Client fills now() itself, in its own text form on SQLite; the database's
            // CURRENT_TIMESTAMP would not be that form.
            Some(DefaultValue::Now) => Some((
                Fill::InsertTime,
                Reason::Attribute("@default(now())".to_owned()),
            )),
            Some(d) => Some((Fill::Database, Reason::Attribute(format!("@default({d})")))),
            None => None,
        })
    }
}

/// Whether a source can fill a column of that kind; the reason when not.
fn accepts(kind: &ColumnKind, source: &Source) -> Result<(), String> {
    let ok = match (source.value_type(), kind) {
        (_, ColumnKind::Unsupported(_) | ColumnKind::Bytes | ColumnKind::List(_)) => false,
        (ValueType::Any, _) => match source {
            Source::Constant(Constant::Int(_)) => matches!(
                kind,
                ColumnKind::Int | ColumnKind::BigInt | ColumnKind::Float | ColumnKind::Decimal
            ),
            Source::Constant(Constant::Float(_)) => {
                matches!(kind, ColumnKind::Float | ColumnKind::Decimal)
            }
            _ => true,
        },
        (ValueType::Text, ColumnKind::Enum { labels, name, .. }) => match source {
            Source::Constant(Constant::Text(value)) => {
                if labels.iter().any(|l| &l.name == value) {
                    true
                } else {
                    return Err(format!(
                        "`{value}` is not a value of enum {name} ({})",
                        labels
                            .iter()
                            .map(|l| l.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
            _ => false,
        },
        (ValueType::Text, ColumnKind::Uuid) => {
            matches!(source, Source::Constant(Constant::Text(_)))
        }
        (ValueType::Text, k) => *k == ColumnKind::Text,
        (ValueType::Timestamp, k) => matches!(
            k,
            ColumnKind::DateTime { .. } | ColumnKind::Date | ColumnKind::BigInt
        ),
        (ValueType::Bool, k) => *k == ColumnKind::Bool,
        (ValueType::Role, k) => matches!(k, ColumnKind::Enum { .. } | ColumnKind::Text),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("a {kind} column cannot be filled from `{source}`"))
    }
}

/// What to write when the source has nothing; `None` when nothing can be (a required column
/// without a default that must then be refused).
fn fallback(source: &Source, column: &Column) -> Option<Absent> {
    Some(if source.always_present() {
        Absent::Never
    } else if matches!(source, Source::Role) {
        // The role rule: a value the enum lacks leaves the column alone.
        if !column.nullable && column.default.is_none() {
            return None;
        }
        Absent::Keep
    } else if column.nullable {
        Absent::Null
    } else if column.default.is_some() {
        Absent::Keep
    } else if column.kind == ColumnKind::Text && matches!(source, Source::PrimaryEmail) {
        Absent::Placeholder
    } else if column.kind == ColumnKind::Text {
        Absent::Empty
    } else {
        return None;
    })
}

fn constant_example(kind: &ColumnKind) -> String {
    match kind {
        ColumnKind::Int | ColumnKind::BigInt | ColumnKind::Float | ColumnKind::Decimal => {
            "0".to_owned()
        }
        ColumnKind::Bool => "false".to_owned(),
        ColumnKind::Enum { labels, .. } => format!(
            "\"const:{}\"",
            labels.first().map_or("VALUE", |l| l.name.as_str())
        ),
        _ => "\"const:...\"".to_owned(),
    }
}

/// The `[user.fields]` line that would fill a required column.
fn suggestion(field: &str, kind: &ColumnKind) -> String {
    match kind {
        ColumnKind::DateTime { .. } | ColumnKind::Date => format!("{field} = \"created_at\""),
        ColumnKind::Text | ColumnKind::Json => {
            format!("{field} = \"public_metadata.{field}\"")
        }
        other => format!("{field} = {}", constant_example(other)),
    }
}

#[cfg(test)]
mod tests;
