//! A value the mapped writer binds into one column of the application's table: typed, already
//! fitted to the column (cut, truncated, matched to an enum label) by `crate::mapping`, so that
//! a backend binds it as it is.

use chrono::{DateTime, NaiveDate, Utc};

/// A value as a backend binds it.
#[derive(Clone, PartialEq)]
pub enum Value {
    /// SQL `NULL`.
    Null,
    /// Text, already cut to the column's length.
    Text(String),
    /// A PostgreSQL `uuid`.
    Uuid(uuid::Uuid),
    /// A 32-bit integer.
    Int(i32),
    /// A 64-bit integer.
    BigInt(i64),
    /// A double.
    Float(f64),
    /// A decimal number as its exact text (`12.50`), to be bound as `numeric`.
    Decimal(String),
    /// A boolean.
    Bool(bool),
    /// A timestamp in UTC, already truncated to the column's precision.
    Timestamp(DateTime<Utc>),
    /// A calendar date (`@db.Date`), the UTC day.
    Date(NaiveDate),
    /// An enum value by its database label (`@map`, else its name).
    Enum(String),
    /// A JSON document.
    Json(serde_json::Value),
}

// Text and JSON carry names, addresses and metadata: `Debug` shows their size only.
impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Null => f.write_str("Null"),
            Self::Text(s) => write!(f, "Text({} chars)", s.chars().count()),
            Self::Uuid(u) => write!(f, "Uuid({u})"),
            Self::Int(i) => write!(f, "Int({i})"),
            Self::BigInt(i) => write!(f, "BigInt({i})"),
            Self::Float(x) => write!(f, "Float({x})"),
            Self::Decimal(d) => write!(f, "Decimal({d})"),
            Self::Bool(b) => write!(f, "Bool({b})"),
            Self::Timestamp(at) => write!(f, "Timestamp({})", at.to_rfc3339()),
            Self::Date(d) => write!(f, "Date({d})"),
            Self::Enum(label) => write!(f, "Enum({label})"),
            Self::Json(_) => f.write_str("Json(..)"),
        }
    }
}

impl Value {
    /// The text, when this is text.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Self::Text(s) => Some(s),
            _ => None,
        }
    }
}
