//! The mapping against the live table: the Prisma schema compared with what the database's
//! catalog says ([`check_table`]), a schema made from the catalog when there is no schema file
//! ([`schema_from_table`]), and whether a mapping is the seed application's own shape
//! ([`Mapping::is_seed_shape`]).
//!
//! Policy: types are compared as Prisma 6 generates them (PostgreSQL: `String` is `text`,
//! `@db.VarChar(n)` is `character varying(n)`, `DateTime` is `timestamp(3) without time zone`,
//! an enum is its own type with its labels; SQLite: the declared type's affinity, `DATETIME`
//! and `BOOLEAN` by name). Every disagreement is reported, each naming the model, the field,
//! the column and what each side says; never a row's data. Without a schema file, the catalog
//! cannot tell a client-side key generator (`cuid()`, `uuid()`) or `@updatedAt`: those come
//! from conventions and `clerk-sync.toml`, as with a schema.

use std::fmt;

use crate::domain::table::{Catalog, LiveColumn, LiveTable};

use super::prisma::{self, Enum, EnumValue, NativeType};
use super::{
    Arity, Column, ColumnKind, Config, DefaultValue, FieldType, Fill, Mapping, Model, Schema,
};

/// The seed application's schema (the Clerk id as the key, `name`, `mail_address`, `role`),
/// the one shape the writer handles today.
pub const SEED_SCHEMA: &str = include_str!("seed.prisma");

/// One way the schema and the table disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disagreement {
    /// The Prisma field, when the column is one of the model's.
    pub field: Option<String>,
    /// The column.
    pub column: String,
    /// What each side says.
    pub message: String,
}

/// Why the mapping cannot be used with the live table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// The table the mapping names does not exist.
    #[error("model {model}: the table {table} does not exist in the database")]
    Absent {
        /// The model.
        model: String,
        /// The table, quoted.
        table: String,
    },
    /// The schema and the table disagree.
    #[error("{}", mismatch_message(model, table, problems))]
    Mismatch {
        /// The model.
        model: String,
        /// The table, quoted.
        table: String,
        /// Each disagreement.
        problems: Vec<Disagreement>,
    },
}

fn mismatch_message(model: &str, table: &str, problems: &[Disagreement]) -> String {
    let mut out = format!(
        "the Prisma schema's model {model} and the table {table} disagree; align them (prisma \
         migrate) before clerk-sync writes the table:"
    );
    for p in problems {
        match &p.field {
            Some(field) => out.push_str(&format!(
                "\n  {model}.{field} (column \"{}\"): {}",
                p.column, p.message
            )),
            None => out.push_str(&format!("\n  column \"{}\": {}", p.column, p.message)),
        }
    }
    out
}

/// A column type as the catalog would report it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expected {
    /// PostgreSQL: `format_type`'s name, with the length / precision when they matter.
    Pg {
        name: String,
        length: Option<Option<u32>>,
        precision: Option<u32>,
    },
    /// PostgreSQL enum type.
    PgEnum(String),
    /// SQLite: one of these words in the declared type (Prisma writes the first).
    Lite(&'static [&'static str]),
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pg {
                name,
                length,
                precision,
            } => {
                f.write_str(name)?;
                if let Some(Some(n)) = length {
                    write!(f, "({n})")?;
                }
                if let Some(p) = precision {
                    write!(f, " ({p} fractional digits)")?;
                }
                Ok(())
            }
            Self::PgEnum(name) => write!(f, "the enum type \"{name}\""),
            Self::Lite(words) => f.write_str(words.first().copied().unwrap_or("any")),
        }
    }
}

fn pg(name: &str) -> Option<Expected> {
    Some(Expected::Pg {
        name: name.to_owned(),
        length: None,
        precision: None,
    })
}

fn first_number(native: &NativeType) -> Option<u32> {
    native.args.first().and_then(|a| a.trim().parse().ok())
}

/// What PostgreSQL's catalog reports for a field, or `None` when clerk-sync does not compare
/// it (`Unsupported`, a native type it does not know).
fn expected_pg(field: &prisma::Field, schema: &Schema) -> Option<Expected> {
    let native = field.native.as_ref();
    let name = native.map(|n| n.name.as_str());
    let base = match (&field.ty, name) {
        (FieldType::String, None | Some("Text")) => pg("text"),
        (FieldType::String, Some("VarChar")) => Some(Expected::Pg {
            name: "character varying".to_owned(),
            length: Some(native.and_then(first_number)),
            precision: None,
        }),
        (FieldType::String, Some("Char")) => Some(Expected::Pg {
            name: "character".to_owned(),
            length: Some(Some(native.and_then(first_number).unwrap_or(1))),
            precision: None,
        }),
        (FieldType::String, Some("Uuid")) => pg("uuid"),
        (FieldType::String, Some("Citext")) => pg("citext"),
        (FieldType::String, Some("Xml")) => pg("xml"),
        (FieldType::String, Some("Inet")) => pg("inet"),
        (FieldType::Boolean, None | Some("Boolean")) => pg("boolean"),
        (FieldType::Int, None | Some("Integer")) => pg("integer"),
        (FieldType::Int, Some("SmallInt")) => pg("smallint"),
        (FieldType::Int, Some("Oid")) => pg("oid"),
        (FieldType::BigInt, None | Some("BigInt")) => pg("bigint"),
        (FieldType::Float, None | Some("DoublePrecision")) => pg("double precision"),
        (FieldType::Float, Some("Real")) => pg("real"),
        (FieldType::Decimal, None | Some("Decimal")) => pg("numeric"),
        (FieldType::Decimal, Some("Money")) => pg("money"),
        (FieldType::DateTime, None) => Some(Expected::Pg {
            name: "timestamp without time zone".to_owned(),
            length: None,
            precision: Some(3),
        }),
        (FieldType::DateTime, Some(n @ ("Timestamp" | "Timestamptz" | "Time" | "Timetz"))) => {
            Some(Expected::Pg {
                name: match n {
                    "Timestamp" => "timestamp without time zone",
                    "Timestamptz" => "timestamp with time zone",
                    "Time" => "time without time zone",
                    _ => "time with time zone",
                }
                .to_owned(),
                length: None,
                precision: Some(native.and_then(first_number).unwrap_or(6)),
            })
        }
        (FieldType::DateTime, Some("Date")) => pg("date"),
        (FieldType::Json, None | Some("JsonB")) => pg("jsonb"),
        (FieldType::Json, Some("Json")) => pg("json"),
        (FieldType::Bytes, None | Some("ByteA")) => pg("bytea"),
        (FieldType::Named(name), _) => schema
            .enum_named(name)
            .map(|e| Expected::PgEnum(e.db_name().to_owned())),
        _ => None,
    }?;
    if field.arity != Arity::List {
        return Some(base);
    }
    // Arrays: `format_type` says `text[]`; the element's modifiers are not compared.
    match base {
        Expected::Pg { name, .. } => Some(Expected::Pg {
            name: format!("{name}[]"),
            length: None,
            precision: None,
        }),
        Expected::PgEnum(name) => pg(&format!("\"{name}\"[]")),
        Expected::Lite(_) => None,
    }
}

/// What SQLite's declared type must contain for a field (Prisma's word first).
fn expected_lite(field: &prisma::Field, schema: &Schema) -> Option<Expected> {
    if field.arity == Arity::List {
        return None;
    }
    let words: &'static [&'static str] = match &field.ty {
        FieldType::String => &["TEXT", "CHAR", "CLOB"],
        FieldType::Named(name) if schema.enum_named(name).is_some() => &["TEXT", "CHAR", "CLOB"],
        FieldType::Int => &["INTEGER", "INT"],
        FieldType::BigInt => &["BIGINT", "INT"],
        FieldType::Boolean => &["BOOLEAN", "BOOL"],
        FieldType::Float => &["REAL", "FLOA", "DOUB"],
        FieldType::Decimal => &["DECIMAL", "DEC", "NUM"],
        FieldType::DateTime => &["DATETIME", "DATE", "TIME"],
        FieldType::Json => &["JSONB", "JSON", "TEXT"],
        FieldType::Bytes => &["BLOB"],
        _ => return None,
    };
    Some(Expected::Lite(words))
}

fn accepts(expected: &Expected, live: &LiveColumn) -> bool {
    match expected {
        Expected::Pg {
            name,
            length,
            precision,
        } => {
            live.enum_type.is_none()
                && live.data_type == *name
                && length.is_none_or(|n| n == live.max_length)
                && precision.is_none_or(|p| live.precision == Some(p))
        }
        Expected::PgEnum(name) => live.enum_type.as_ref().is_some_and(|e| e.name == *name),
        Expected::Lite(words) => {
            let declared = live.data_type.to_ascii_uppercase();
            words.iter().any(|w| declared.contains(w))
                || (declared.is_empty() && words.contains(&"BLOB"))
        }
    }
}

/// What the table says of a column's type, for a message.
fn live_type(live: &LiveColumn) -> String {
    if let Some(e) = &live.enum_type {
        return format!("the enum type \"{}\"", e.name);
    }
    let mut out = live.data_type.clone();
    if let Some(n) = live.max_length {
        if !out.contains('(') {
            out.push_str(&format!("({n})"));
        }
    }
    if let Some(p) = live.precision {
        out.push_str(&format!(" ({p} fractional digits)"));
    }
    if out.is_empty() {
        out.push_str("no declared type");
    }
    out
}

/// Compares the mapping's model with the live table: every column the model has, its type,
/// its nullability, its enum labels, what the database must fill, the Clerk id's uniqueness
/// and the primary key; and the table's own required columns the model does not know.
pub fn check_table(
    mapping: &Mapping,
    schema: &Schema,
    table: &LiveTable,
) -> Result<(), TableError> {
    let model = schema.model(&mapping.model);
    let mut problems = Vec::new();
    let mut problem = |column: &Column, message: String| {
        problems.push(Disagreement {
            field: Some(column.field.clone()),
            column: column.name.clone(),
            message,
        });
    };
    for column in &mapping.columns {
        let Some(live) = table.column(&column.name) else {
            problem(
                column,
                format!("the table {} has no such column", table.qualified_name()),
            );
            continue;
        };
        let field = model.and_then(|m| m.field(&column.field));
        if let Some(field) = field {
            let expected = match table.catalog {
                Catalog::Postgres => expected_pg(field, schema),
                Catalog::Sqlite => expected_lite(field, schema),
            };
            if let Some(expected) = expected.filter(|e| !accepts(e, live)) {
                let native = field
                    .native
                    .as_ref()
                    .map(|n| format!(" @db.{}", n.name))
                    .unwrap_or_default();
                problem(
                    column,
                    format!(
                        "the schema says {}{native} ({expected}), the table has {}",
                        field.ty,
                        live_type(live)
                    ),
                );
            }
        }
        if !matches!(column.kind, ColumnKind::List(_)) && column.nullable != live.nullable {
            problem(
                column,
                if column.nullable {
                    "the schema says optional, the table has NOT NULL".to_owned()
                } else {
                    "the schema says required, the table allows NULL".to_owned()
                },
            );
        }
        if let (ColumnKind::Enum { name, labels, .. }, Some(live_enum)) =
            (&column.kind, &live.enum_type)
        {
            let lacking: Vec<&str> = labels
                .iter()
                .map(|l| l.label.as_str())
                .filter(|l| !live_enum.labels.iter().any(|have| have == l))
                .collect();
            if !lacking.is_empty() {
                problem(
                    column,
                    format!(
                        "the schema's enum {name} has {}, the database type \"{}\" lacks it (it \
                         has {})",
                        lacking.join(", "),
                        live_enum.name,
                        live_enum.labels.join(", ")
                    ),
                );
            }
        }
        if column.fill == Fill::Database && !live.filled_by_database() {
            let default = column
                .default
                .as_ref()
                .map(|d| format!(" (@default({d}))"))
                .unwrap_or_default();
            problem(
                column,
                format!(
                    "the schema leaves it to the database{default}, but the table has no default \
                     for it"
                ),
            );
        }
        if column.name == mapping.clerk_id && !table.is_unique(&column.name) {
            problem(
                column,
                "holds the Clerk id, so it must be unique, but the table has no unique index or \
                 constraint on it alone"
                    .to_owned(),
            );
        }
        if column.name == mapping.key.column
            && column.name != mapping.clerk_id
            && table.primary_key != [column.name.clone()]
        {
            problem(
                column,
                format!(
                    "the schema's @id, but the table's primary key is {}",
                    if table.primary_key.is_empty() {
                        "absent".to_owned()
                    } else {
                        format!("({})", table.primary_key.join(", "))
                    }
                ),
            );
        }
    }
    for live in &table.columns {
        if mapping.column(&live.name).is_none() && !live.nullable && !live.filled_by_database() {
            problems.push(Disagreement {
                field: None,
                column: live.name.clone(),
                message: format!(
                    "NOT NULL without a default in the table, and not in model {}: no insert \
                     can fill it",
                    mapping.model
                ),
            });
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(TableError::Mismatch {
            model: mapping.model.clone(),
            table: table.qualified_name(),
            problems,
        })
    }
}

/// The table clerk-sync reads when there is no schema file: `[user] table`, else the model's
/// name (`--model`, else `[user] model`), else `User`.
pub fn table_without_schema(config: &Config, model: Option<&str>) -> String {
    config
        .user
        .table
        .as_ref()
        .map(|t| t.value.clone())
        .or_else(|| model.map(str::to_owned))
        .or_else(|| config.user.model.as_ref().map(|m| m.value.clone()))
        .unwrap_or_else(|| "User".to_owned())
}

/// A schema of one model made from the live table, as `prisma db pull` would make it: a field
/// per column under the column's name, types back from the catalog, `@id`, `@unique`,
/// `@default(autoincrement())` for identity and serial columns, `@default(now())` for
/// `CURRENT_TIMESTAMP`, constants, `dbgenerated("...")` for other defaults, and the enums the
/// columns use. `model` names the model (`@@map` to the table when it differs).
pub fn schema_from_table(table: &LiveTable, model: &str) -> Schema {
    let mut enums: Vec<Enum> = Vec::new();
    let mut fields = Vec::new();
    for (line, live) in table.columns.iter().enumerate() {
        let (ty, native, list) = match table.catalog {
            Catalog::Postgres => pg_type(live),
            Catalog::Sqlite => (lite_type(&live.data_type), None, false),
        };
        if let (Some(e), FieldType::Named(_)) = (&live.enum_type, &ty) {
            if !enums.iter().any(|have| have.name == e.name) {
                enums.push(Enum {
                    name: e.name.clone(),
                    line: 0,
                    values: e
                        .labels
                        .iter()
                        .map(|l| EnumValue {
                            name: l.clone(),
                            map: None,
                        })
                        .collect(),
                    map: None,
                    schema: None,
                });
            }
        }
        let id = table.primary_key.len() == 1 && table.primary_key[0] == live.name;
        let default = default_of(live, &ty);
        fields.push(prisma::Field {
            name: live.name.clone(),
            line: line + 1,
            arity: if list {
                Arity::List
            } else if live.nullable {
                Arity::Optional
            } else {
                Arity::Required
            },
            ty,
            id,
            unique: !id && table.is_unique(&live.name),
            updated_at: false,
            default,
            map: None,
            native,
            relation: None,
            other_attributes: Vec::new(),
        });
    }
    Schema {
        provider: Some(
            match table.catalog {
                Catalog::Postgres => "postgresql",
                Catalog::Sqlite => "sqlite",
            }
            .to_owned(),
        ),
        models: vec![Model {
            name: model.to_owned(),
            line: 0,
            fields,
            map: (model != table.name).then(|| table.name.clone()),
            schema: None,
            compound_id: (table.primary_key.len() > 1).then(|| table.primary_key.clone()),
            compound_unique: Vec::new(),
        }],
        enums,
    }
}

fn native(name: &str, args: Vec<String>) -> Option<NativeType> {
    Some(NativeType {
        name: name.to_owned(),
        args,
    })
}

/// A PostgreSQL column's Prisma type, native type, and whether it is a list.
fn pg_type(live: &LiveColumn) -> (FieldType, Option<NativeType>, bool) {
    if let Some(e) = &live.enum_type {
        return (FieldType::Named(e.name.clone()), None, false);
    }
    let (base, list) = match live.data_type.strip_suffix("[]") {
        Some(base) => (base, true),
        None => (live.data_type.as_str(), false),
    };
    let length = || live.max_length.map(|n| n.to_string()).into_iter().collect();
    let precision = |default: u32| match live.precision {
        Some(p) if p != default => vec![p.to_string()],
        _ => Vec::new(),
    };
    let (ty, native) = match base {
        "text" => (FieldType::String, None),
        "character varying" => (FieldType::String, native("VarChar", length())),
        "character" => (FieldType::String, native("Char", length())),
        "uuid" => (FieldType::String, native("Uuid", Vec::new())),
        "citext" => (FieldType::String, native("Citext", Vec::new())),
        "xml" => (FieldType::String, native("Xml", Vec::new())),
        "inet" => (FieldType::String, native("Inet", Vec::new())),
        "integer" => (FieldType::Int, None),
        "smallint" => (FieldType::Int, native("SmallInt", Vec::new())),
        "oid" => (FieldType::Int, native("Oid", Vec::new())),
        "bigint" => (FieldType::BigInt, None),
        "boolean" => (FieldType::Boolean, None),
        "double precision" => (FieldType::Float, None),
        "real" => (FieldType::Float, native("Real", Vec::new())),
        "numeric" => (FieldType::Decimal, None),
        "money" => (FieldType::Decimal, native("Money", Vec::new())),
        "timestamp without time zone" => match live.precision {
            Some(3) => (FieldType::DateTime, None),
            _ => (FieldType::DateTime, native("Timestamp", precision(6))),
        },
        "timestamp with time zone" => (FieldType::DateTime, native("Timestamptz", precision(6))),
        "time without time zone" => (FieldType::DateTime, native("Time", precision(6))),
        "time with time zone" => (FieldType::DateTime, native("Timetz", precision(6))),
        "date" => (FieldType::DateTime, native("Date", Vec::new())),
        "jsonb" => (FieldType::Json, None),
        "json" => (FieldType::Json, native("Json", Vec::new())),
        "bytea" => (FieldType::Bytes, None),
        other => (FieldType::Unsupported(other.to_owned()), None),
    };
    (ty, native, list)
}

/// An SQLite declared type's Prisma type: Prisma's own words first, then SQLite's affinity.
fn lite_type(declared: &str) -> FieldType {
    let t = declared.to_ascii_uppercase();
    match t.as_str() {
        "TEXT" => return FieldType::String,
        "INTEGER" | "INT" => return FieldType::Int,
        "BIGINT" => return FieldType::BigInt,
        "BOOLEAN" => return FieldType::Boolean,
        "REAL" | "DOUBLE" | "FLOAT" => return FieldType::Float,
        "DECIMAL" | "NUMERIC" => return FieldType::Decimal,
        "DATETIME" | "DATE" | "TIMESTAMP" => return FieldType::DateTime,
        "BLOB" | "" => return FieldType::Bytes,
        "JSONB" | "JSON" => return FieldType::Json,
        _ => {}
    }
    if t.contains("INT") {
        FieldType::Int
    } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
        FieldType::String
    } else if t.contains("BOOL") {
        FieldType::Boolean
    } else if t.contains("DATE") || t.contains("TIME") {
        FieldType::DateTime
    } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
        FieldType::Float
    } else {
        FieldType::Decimal
    }
}

/// `'it''s'::text` → `it's`; `'x'` → `x`; anything else → `None`.
fn string_literal(expr: &str) -> Option<String> {
    let rest = expr.strip_prefix('\'')?;
    let mut out = String::new();
    let mut chars = rest.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '\'' {
            if chars.peek().is_some_and(|(_, next)| *next == '\'') {
                chars.next();
                out.push('\'');
                continue;
            }
            let tail = &rest[i + 1..];
            return (tail.is_empty() || tail.starts_with("::")).then_some(out);
        }
        out.push(c);
    }
    None
}

/// A default expression as Prisma's `@default(...)`.
fn default_of(live: &LiveColumn, ty: &FieldType) -> Option<DefaultValue> {
    if let Some(expr) = &live.generated {
        return Some(DefaultValue::DbGenerated(Some(expr.clone())));
    }
    if live.is_autoincrement() && matches!(ty, FieldType::Int | FieldType::BigInt) {
        return Some(DefaultValue::Autoincrement);
    }
    let expr = live.default.as_deref()?.trim();
    let lower = expr.to_ascii_lowercase();
    if matches!(ty, FieldType::DateTime)
        && (lower.starts_with("current_timestamp") || lower == "now()")
    {
        return Some(DefaultValue::Now);
    }
    let literal = string_literal(expr);
    let bare = literal.clone().unwrap_or_else(|| {
        expr.trim_start_matches('(')
            .trim_end_matches(')')
            .to_owned()
    });
    let value = match ty {
        FieldType::String => literal.map(DefaultValue::String),
        FieldType::Named(_) if live.enum_type.is_some() => literal.map(DefaultValue::EnumValue),
        FieldType::Boolean => match bare.to_ascii_lowercase().as_str() {
            "true" | "1" => Some(DefaultValue::Boolean(true)),
            "false" | "0" => Some(DefaultValue::Boolean(false)),
            _ => None,
        },
        FieldType::Int | FieldType::BigInt | FieldType::Float | FieldType::Decimal => bare
            .parse::<f64>()
            .is_ok()
            .then(|| DefaultValue::Number(bare.clone())),
        _ => None,
    };
    Some(value.unwrap_or_else(|| DefaultValue::DbGenerated(Some(expr.to_owned()))))
}

impl Mapping {
    /// Whether this mapping writes what today's writer writes: the seed application's table
    /// `User` (the Clerk id as the key, `name`, `mail_address`, `role`, `createdAt`,
    /// `updatedAt`, filled as the seed schema fills them). Other columns may only be left to
    /// the database or not written. Text at least 255 characters wide and any timestamp
    /// precision are accepted, as the seed table's check has always accepted them.
    pub fn is_seed_shape(&self) -> bool {
        let Ok(seed) = Mapping::from_text(SEED_SCHEMA, None) else {
            return false;
        };
        if self.table.name != seed.table.name
            || self.table.schema.as_deref().is_some_and(|s| s != "public")
            || self.key.column != seed.key.column
            || self.key.generation != seed.key.generation
            || self.clerk_id != seed.clerk_id
            || self.delete != seed.delete
        {
            return false;
        }
        let seed_columns_match = seed.columns.iter().all(|want| {
            self.column(&want.name).is_some_and(|have| {
                same_kind(&have.kind, &want.kind)
                    && match (have.max_length, want.max_length) {
                        (Some(h), Some(w)) => h >= w,
                        (None, _) => true,
                        (Some(_), None) => false,
                    }
                    && have.nullable == want.nullable
                    && have.unique == want.unique
                    && have.fill == want.fill
                    && (have.default == want.default
                        || !matches!(have.fill, Fill::Database | Fill::NotWritten))
            })
        });
        let others_untouched = self.columns.iter().all(|have| {
            seed.column(&have.name).is_some()
                || matches!(have.fill, Fill::Database | Fill::NotWritten)
        });
        seed_columns_match && others_untouched
    }
}

fn same_kind(have: &ColumnKind, want: &ColumnKind) -> bool {
    match (have, want) {
        (
            ColumnKind::DateTime {
                with_time_zone: a, ..
            },
            ColumnKind::DateTime {
                with_time_zone: b, ..
            },
        ) => a == b,
        _ => have == want,
    }
}

#[cfg(test)]
mod tests;
