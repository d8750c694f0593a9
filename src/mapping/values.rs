//! The values one user version writes into the mapped table: a pure function of the mapping, a
//! parsed [`UserChange`] and the time of the write, typed so that a backend binds them without
//! looking at a rule.
//!
//! Policy ("write what Prisma would write"), column by column:
//! - An INSERT writes the key when clerk-sync makes it (in the generator's own format), the
//!   Clerk id, `@default(now())` columns (the write's time) and every [`Fill::Source`] column.
//!   An UPDATE writes only the [`Fill::Source`] columns: never the key, never the Clerk id,
//!   never the insert time, never a soft-delete column (so a late update never clears a soft
//!   delete). Both lists always hold the same columns in the same order for a given mapping,
//!   so a statement prepared once binds every user's values; a column this user leaves alone
//!   is [`Write::Keep`], not a missing entry.
//! - Text is cut to the column's `max_length` on a character boundary, and NUL characters are
//!   dropped (PostgreSQL cannot store them, and both backends must store the same text). The
//!   Clerk id and a made key are never cut: a cut id would name another user, so one that does
//!   not fit is a [`ValueError`]. An email address is never cut either (a cut address is
//!   someone else's mailbox): one longer than the column counts as no address.
//! - Timestamps are truncated (not rounded) to the column's precision, so a stored time is
//!   never later than Clerk's and both backends store the same instant. The insert's time is
//!   kept to milliseconds at most, as Prisma Client's JavaScript `Date` has no more.
//!   On SQLite a timestamp is written as Prisma writes it, [`sqlite_timestamp_text`].
//! - An enum is written by its database label (`@map`). The role rule matches
//!   `public_metadata.role` to the enum's values and labels, exactly first, then in any case;
//!   a role the enum lacks (or none) is [`Write::Keep`]: the column keeps its value on update
//!   and gets its default on insert. A metadata path into an enum column matches the same way
//!   and falls back to the column's [`Absent`] when nothing matches.
//! - A metadata path (`public_metadata.a.b`, …) of any JSON type goes into a Json column as
//!   JSON (NUL characters dropped from its strings, which `jsonb` refuses); into a text column
//!   as the string, or the JSON text of anything else; into bool / int / bigint / float /
//!   decimal only when the JSON is a boolean / an integer that fits / a number; into a
//!   timestamp or date from an RFC 3339 string (or a date `YYYY-MM-DD`) or integer
//!   milliseconds; into a uuid from a UUID string. Anything else, JSON `null` included, is
//!   absent.
//! - A source with no value for this user takes the column's [`Absent`]: NULL, [`Write::Keep`],
//!   the empty string, or the no-email placeholder (`<id>@no-email.invalid`, made by
//!   `crate::sync::plan::no_email`). A flag Clerk always sends (`banned`, `locked`, …) but
//!   left out of an event reads as `false`, the flag's off state.
//! - Constants are written as they are, an enum constant by its label.

use chrono::{DateTime, NaiveDate, SubsecRound, Utc};

use super::{Absent, Column, ColumnKind, Constant, DefaultValue, Delete, EnumLabel, Fill, Mapping};
use super::{MetadataKind, Source, UserField};
use crate::domain::UserChange;
pub use crate::domain::Value;

/// What one write does with one column for this user.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Bind this value.
    Value(Value),
    /// Leave the column alone: its default on insert, its current value on update.
    Keep,
}

impl Write {
    /// The value, unless the column is left alone.
    pub fn value(&self) -> Option<&Value> {
        match self {
            Self::Value(v) => Some(v),
            Self::Keep => None,
        }
    }
}

/// One column's part in a write.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// The column's index in [`Mapping::columns`].
    pub column: usize,
    /// What to write.
    pub write: Write,
}

/// What one user version writes: an INSERT writes `insert_only` then `sourced`, an UPDATE
/// writes `sourced` alone.
#[derive(Debug, Clone, PartialEq)]
pub struct RowValues {
    /// Written only when the row is made: made keys, the Clerk id, the insert's time; in the
    /// order of [`Mapping::insert_only_columns`].
    pub insert_only: Vec<Assignment>,
    /// Written by every insert and update: the [`Fill::Source`] columns; in the order of
    /// [`Mapping::sourced_columns`].
    pub sourced: Vec<Assignment>,
}

impl RowValues {
    /// Every column an INSERT writes.
    pub fn insert(&self) -> impl Iterator<Item = &Assignment> {
        self.insert_only.iter().chain(&self.sourced)
    }

    /// Every column an UPDATE writes.
    pub fn update(&self) -> &[Assignment] {
        &self.sourced
    }
}

/// Why a user version cannot be written into the mapped table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// The Clerk id, a made key or the placeholder is longer than its column.
    #[error("column \"{column}\": the value needs {needed} characters, the column holds {max}")]
    TooLong {
        /// The column.
        column: String,
        /// Its `max_length`.
        max: usize,
        /// The value's length.
        needed: usize,
    },
    /// A constant does not fit an `Int` column.
    #[error("column \"{column}\": the constant does not fit a 32-bit int")]
    OutOfRange {
        /// The column.
        column: String,
    },
    /// Text bound for a uuid column is not a UUID.
    #[error("column \"{column}\": the value is not a UUID")]
    NotUuid {
        /// The column.
        column: String,
    },
    /// A source the column's type cannot take (a mapping [`Mapping::resolve`] did not make).
    #[error("column \"{column}\": a {kind} column cannot be filled from `{from}`")]
    Mismatch {
        /// The column.
        column: String,
        /// Its type.
        kind: String,
        /// The source.
        from: String,
    },
}

/// The column the newest-claim rule applies to: the one the primary email fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressColumn {
    /// Its index in [`Mapping::columns`].
    pub column: usize,
    /// Unique: two rows may not hold one address, so the newest claim on an address wins.
    /// A non-unique address just follows its user.
    pub unique: bool,
    /// Optional: a user without an address holds NULL (never a placeholder).
    pub nullable: bool,
    /// What a user without an address gets.
    pub absent: Absent,
}

/// A timestamp as Prisma Client writes it on SQLite (`2024-05-01T12:34:56.789+00:00`); the
/// form `src/db`'s SQLite writer uses for its dates.
pub use crate::domain::prisma_sqlite_date as sqlite_timestamp_text;

/// Kept to `precision` fractional digits, the rest dropped.
fn at_precision(at: DateTime<Utc>, precision: u8) -> DateTime<Utc> {
    at.trunc_subsecs(u16::from(precision.min(9)))
}

impl Mapping {
    /// The indexes of the columns only an INSERT writes, in schema order.
    pub fn insert_only_columns(&self) -> Vec<usize> {
        self.indexes(|f| f.on_insert() && !f.on_update())
    }

    /// The indexes of the columns every INSERT and UPDATE writes, in schema order.
    pub fn sourced_columns(&self) -> Vec<usize> {
        self.indexes(Fill::on_update)
    }

    fn indexes(&self, keep: impl Fn(&Fill) -> bool) -> Vec<usize> {
        (0..self.columns.len())
            .filter(|&i| keep(&self.columns[i].fill))
            .collect()
    }

    /// The column the primary email fills (a unique one first), if any.
    pub fn address_column(&self) -> Option<AddressColumn> {
        let emails = || {
            self.columns
                .iter()
                .enumerate()
                .filter_map(|(i, c)| match &c.fill {
                    Fill::Source {
                        source: Source::PrimaryEmail,
                        absent,
                    } => Some(AddressColumn {
                        column: i,
                        unique: c.unique,
                        nullable: c.nullable,
                        absent: *absent,
                    }),
                    _ => None,
                })
        };
        emails().find(|a| a.unique).or_else(|| emails().next())
    }

    /// The values one user version writes, `now` being the time of the write; a required
    /// address column of a user without an address takes `no_email(user id)` (the rules'
    /// placeholder, `crate::sync`'s to make).
    pub fn values(
        &self,
        change: &UserChange,
        now: DateTime<Utc>,
        no_email: fn(&str) -> String,
    ) -> Result<RowValues, ValueError> {
        self.row_values(change, Some(now), no_email)
    }

    /// What an update of this user's row writes: [`RowValues::update`] of [`Self::values`],
    /// without making what only an insert writes (a new key among them).
    pub fn update_values(
        &self,
        change: &UserChange,
        no_email: fn(&str) -> String,
    ) -> Result<Vec<Assignment>, ValueError> {
        Ok(self.row_values(change, None, no_email)?.sourced)
    }

    /// [`Self::values`], the insert-only ones only with the time of an insert (`now`).
    fn row_values(
        &self,
        change: &UserChange,
        now: Option<DateTime<Utc>>,
        no_email: fn(&str) -> String,
    ) -> Result<RowValues, ValueError> {
        let mut insert_only = Vec::new();
        let mut sourced = Vec::new();
        for (i, column) in self.columns.iter().enumerate() {
            let write = match (&column.fill, now) {
                // An update writes none of these.
                (Fill::ClerkId | Fill::Generated(_) | Fill::InsertTime, None) => continue,
                (Fill::ClerkId, _) => {
                    Write::Value(fixed_text(column, change.id.as_str().to_owned())?)
                }
                (Fill::Generated(generation), _) => {
                    let key = generation
                        .generate()
                        .ok_or_else(|| mismatch(column, &generation.to_string()))?;
                    Write::Value(fixed_text(column, key)?)
                }
                // Prisma Client's `now()` is a JavaScript `Date`: milliseconds at most.
                (Fill::InsertTime, Some(now)) => Write::Value(time(column, now, 3)?),
                (Fill::Source { source, absent }, _) => {
                    let value = source_value(column, source, change)?;
                    sourced.push(Assignment {
                        column: i,
                        write: fill_absent(column, value, *absent, change, no_email)?,
                    });
                    continue;
                }
                (Fill::SoftDelete | Fill::Database | Fill::NotWritten, _) => continue,
            };
            insert_only.push(Assignment { column: i, write });
        }
        Ok(RowValues {
            insert_only,
            sourced,
        })
    }

    /// Whether this version names a role the role column takes (`public_metadata.role`
    /// matched to the column's enum, or any text for a text column): the role rule's "named".
    /// False without a role column.
    pub fn names_role(&self, change: &UserChange) -> bool {
        self.role_column().is_some_and(|i| {
            matches!(
                source_value(&self.columns[i], &Source::Role, change),
                Ok(Some(_))
            )
        })
    }

    /// What a soft delete sets at `at`: the flag to `true`, the time column to `at` (in its
    /// precision); nothing for a hard delete.
    pub fn soft_delete_values(&self, at: DateTime<Utc>) -> Result<Vec<Assignment>, ValueError> {
        let Delete::Soft {
            flag,
            at: time_column,
            ..
        } = &self.delete
        else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (i, column) in self.columns.iter().enumerate() {
            let value = if flag.as_deref() == Some(column.name.as_str()) {
                Value::Bool(true)
            } else if time_column.as_deref() == Some(column.name.as_str()) {
                time(column, at, 3)?
            } else {
                continue;
            };
            out.push(Assignment {
                column: i,
                write: Write::Value(value),
            });
        }
        Ok(out)
    }
}

impl Column {
    /// The schema's `@default` as a value when it is a literal (text, number, boolean, enum
    /// value, a time as text): what the database puts into a column an INSERT leaves alone, so
    /// a backend may bind it in place of `DEFAULT`, and what the role rule puts back when a
    /// role Clerk set is no longer named. `None` for a default only the database can make.
    pub fn default_value(&self) -> Option<Value> {
        match (self.default.as_ref()?, &self.kind) {
            (DefaultValue::String(s), ColumnKind::Text) => Some(Value::Text(s.clone())),
            (DefaultValue::String(s), ColumnKind::Uuid) => {
                uuid::Uuid::parse_str(s).ok().map(Value::Uuid)
            }
            (DefaultValue::String(s), ColumnKind::Json) => {
                serde_json::from_str(s).ok().map(Value::Json)
            }
            (DefaultValue::String(s), ColumnKind::DateTime { precision, .. }) => {
                parse_time(s).map(|at| Value::Timestamp(at_precision(at, *precision)))
            }
            (DefaultValue::String(s), ColumnKind::Date) => {
                parse_time(s).map(|at| Value::Date(at.date_naive()))
            }
            (DefaultValue::Number(n), ColumnKind::Int) => n.parse().ok().map(Value::Int),
            (DefaultValue::Number(n), ColumnKind::BigInt) => n.parse().ok().map(Value::BigInt),
            (DefaultValue::Number(n), ColumnKind::Float) => n.parse().ok().map(Value::Float),
            (DefaultValue::Number(n), ColumnKind::Decimal) => Some(Value::Decimal(n.clone())),
            (DefaultValue::Boolean(b), ColumnKind::Bool) => Some(Value::Bool(*b)),
            (DefaultValue::EnumValue(name), ColumnKind::Enum { labels, .. }) => labels
                .iter()
                .find(|l| &l.name == name)
                .map(|l| Value::Enum(l.label.clone())),
            _ => None,
        }
    }
}

fn mismatch(column: &Column, source: &str) -> ValueError {
    ValueError::Mismatch {
        column: column.name.clone(),
        kind: column.kind.to_string(),
        from: source.to_owned(),
    }
}

/// Text that must be stored whole (the Clerk id, a made key, the placeholder).
fn fixed_text(column: &Column, text: String) -> Result<Value, ValueError> {
    if column.kind == ColumnKind::Uuid {
        return uuid::Uuid::parse_str(&text)
            .map(Value::Uuid)
            .map_err(|_| ValueError::NotUuid {
                column: column.name.clone(),
            });
    }
    let needed = text.chars().count();
    match column.max_length {
        Some(max) if needed > max => Err(ValueError::TooLong {
            column: column.name.clone(),
            max,
            needed,
        }),
        _ => Ok(Value::Text(text)),
    }
}

/// Text that may be cut: NUL dropped, then at most `max_length` characters.
fn cut_text(column: &Column, text: &str) -> Value {
    let max = column.max_length.unwrap_or(usize::MAX);
    // Most text fits whole (its bytes, never fewer than its characters, do) and has no NUL.
    if text.len() <= max && !text.contains('\0') {
        return Value::Text(text.to_owned());
    }
    Value::Text(text.chars().filter(|c| *c != '\0').take(max).collect())
}

/// A time into a timestamp, date or bigint column; `at_most` caps the precision kept.
fn time(column: &Column, at: DateTime<Utc>, at_most: u8) -> Result<Value, ValueError> {
    match &column.kind {
        ColumnKind::DateTime { precision, .. } => Ok(Value::Timestamp(at_precision(
            at,
            (*precision).min(at_most),
        ))),
        ColumnKind::Date => Ok(Value::Date(at.date_naive())),
        ColumnKind::BigInt => Ok(Value::BigInt(at.timestamp_millis())),
        _ => Err(mismatch(column, "a time")),
    }
}

/// The value of a source for this user, `None` when it has none.
fn source_value(
    column: &Column,
    source: &Source,
    change: &UserChange,
) -> Result<Option<Value>, ValueError> {
    let profile = &change.profile;
    let text = |s: Option<&str>| -> Result<Option<Value>, ValueError> {
        if column.kind != ColumnKind::Text {
            return Err(mismatch(column, &source.to_string()));
        }
        Ok(s.map(|s| cut_text(column, s)))
    };
    let clerk_time = |at: Option<DateTime<Utc>>| at.map(|at| time(column, at, 3)).transpose();
    let flag = |b: Option<bool>| -> Result<Option<Value>, ValueError> {
        if column.kind != ColumnKind::Bool {
            return Err(mismatch(column, &source.to_string()));
        }
        Ok(b.map(Value::Bool))
    };
    match source {
        Source::User(field) => match field {
            UserField::FirstName => text(profile.first_name.as_deref()),
            UserField::LastName => text(profile.last_name.as_deref()),
            UserField::Username => text(profile.username.as_deref()),
            UserField::ImageUrl => text(profile.image_url.as_deref()),
            UserField::ProfileImageUrl => text(profile.profile_image_url.as_deref()),
            UserField::ExternalId => text(profile.external_id.as_deref()),
            UserField::PrimaryEmailAddressId => text(profile.primary_email_address_id.as_deref()),
            UserField::PrimaryPhoneNumberId => text(profile.primary_phone_number_id.as_deref()),
            UserField::CreatedAt => clerk_time(Some(change.created_at)),
            UserField::UpdatedAt => clerk_time(Some(change.updated_at)),
            UserField::LastSignInAt => clerk_time(profile.last_sign_in_at),
            UserField::LastActiveAt => clerk_time(profile.last_active_at),
            UserField::Banned => flag(profile.banned),
            UserField::Locked => flag(profile.locked),
            UserField::HasImage => flag(profile.has_image),
            UserField::TwoFactorEnabled => flag(profile.two_factor_enabled),
            UserField::PasswordEnabled => flag(profile.password_enabled),
        },
        Source::PrimaryEmail => {
            let fits = |e: &&str| column.max_length.is_none_or(|max| e.chars().count() <= max);
            text(change.email.as_ref().map(|e| e.as_str()).filter(fits))
        }
        Source::PrimaryPhone => text(profile.primary_phone.as_deref()),
        Source::FullName => text(change.name.as_deref()),
        Source::Role => {
            let role = profile
                .public_metadata
                .as_ref()
                .and_then(|m| m.get("role"))
                .and_then(serde_json::Value::as_str);
            match &column.kind {
                ColumnKind::Enum { labels, .. } => {
                    Ok(role.and_then(|r| enum_label(labels, r)).map(Value::Enum))
                }
                _ => text(role),
            }
        }
        Source::Metadata { kind, path } => {
            let read;
            let object = match kind {
                MetadataKind::Public => profile.public_metadata.as_ref(),
                MetadataKind::Unsafe => {
                    read = profile.unsafe_metadata();
                    read.as_ref()
                }
                MetadataKind::Private => {
                    read = profile.private_metadata();
                    read.as_ref()
                }
            };
            let found = object
                .and_then(|object| path.iter().try_fold(object, |at, key| at.get(key.as_str())));
            found.map_or(Ok(None), |json| json_value(column, json, source))
        }
        Source::Constant(constant) => constant_value(column, constant).map(Some),
    }
}

/// The database label of the enum value `raw` names: by name or label exactly, else in any
/// case.
fn enum_label(labels: &[EnumLabel], raw: &str) -> Option<String> {
    let same_case = |a: &str| a == raw;
    let any_case = |a: &str| {
        a.chars()
            .flat_map(char::to_lowercase)
            .eq(raw.chars().flat_map(char::to_lowercase))
    };
    labels
        .iter()
        .find(|l| same_case(&l.name) || same_case(&l.label))
        .or_else(|| {
            labels
                .iter()
                .find(|l| any_case(&l.name) || any_case(&l.label))
        })
        .map(|l| l.label.clone())
}

/// A metadata value into a column, `None` when it is not of a type the column takes.
fn json_value(
    column: &Column,
    json: &serde_json::Value,
    source: &Source,
) -> Result<Option<Value>, ValueError> {
    use serde_json::Value as J;
    if json.is_null() {
        return Ok(None);
    }
    let value = match &column.kind {
        ColumnKind::Json => Some(Value::Json(without_nul(json.clone()))),
        ColumnKind::Text => Some(match json {
            J::String(s) => cut_text(column, s),
            other => cut_text(column, &other.to_string()),
        }),
        ColumnKind::Bool => json.as_bool().map(Value::Bool),
        ColumnKind::Int => json
            .as_i64()
            .and_then(|i| i32::try_from(i).ok())
            .map(Value::Int),
        ColumnKind::BigInt => json.as_i64().map(Value::BigInt),
        ColumnKind::Float => json.as_f64().map(Value::Float),
        ColumnKind::Decimal => match json {
            J::Number(n) => Some(Value::Decimal(n.to_string())),
            _ => None,
        },
        ColumnKind::Enum { labels, .. } => json
            .as_str()
            .and_then(|s| enum_label(labels, s))
            .map(Value::Enum),
        ColumnKind::Uuid => json
            .as_str()
            .and_then(|s| uuid::Uuid::parse_str(s).ok())
            .map(Value::Uuid),
        ColumnKind::DateTime { .. } | ColumnKind::Date => {
            let at = match json {
                J::String(s) => parse_time(s),
                J::Number(n) => n.as_i64().and_then(DateTime::from_timestamp_millis),
                _ => None,
            };
            at.map(|at| time(column, at, 9)).transpose()?
        }
        ColumnKind::Bytes | ColumnKind::List(_) | ColumnKind::Unsupported(_) => {
            return Err(mismatch(column, &source.to_string()))
        }
    };
    Ok(value)
}

/// An RFC 3339 time, or a date `YYYY-MM-DD` as its midnight in UTC.
fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|at| at.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|n| n.and_utc())
        })
}

/// The document with NUL dropped from every string and key.
fn without_nul(json: serde_json::Value) -> serde_json::Value {
    use serde_json::Value as J;
    let clean = |s: String| {
        if s.contains('\0') {
            s.replace('\0', "")
        } else {
            s
        }
    };
    match json {
        J::String(s) => J::String(clean(s)),
        J::Array(items) => J::Array(items.into_iter().map(without_nul).collect()),
        J::Object(map) => J::Object(
            map.into_iter()
                .map(|(k, v)| (clean(k), without_nul(v)))
                .collect(),
        ),
        other => other,
    }
}

/// A constant into its column.
fn constant_value(column: &Column, constant: &Constant) -> Result<Value, ValueError> {
    let wrong = || mismatch(column, &constant.to_string());
    Ok(match (constant, &column.kind) {
        (Constant::Text(s), ColumnKind::Text) => cut_text(column, s),
        (Constant::Text(s), ColumnKind::Uuid) => fixed_text(column, s.clone())?,
        (Constant::Text(s), ColumnKind::Enum { labels, .. }) => {
            Value::Enum(enum_label(labels, s).ok_or_else(wrong)?)
        }
        (Constant::Int(i), ColumnKind::Int) => {
            Value::Int(i32::try_from(*i).map_err(|_| ValueError::OutOfRange {
                column: column.name.clone(),
            })?)
        }
        (Constant::Int(i), ColumnKind::BigInt) => Value::BigInt(*i),
        // A config line's integer: the nearest double, as Prisma would send it.
        (Constant::Int(i), ColumnKind::Float) => Value::Float(*i as f64),
        (Constant::Int(i), ColumnKind::Decimal) => Value::Decimal(i.to_string()),
        (Constant::Float(x), ColumnKind::Float) => Value::Float(*x),
        (Constant::Float(x), ColumnKind::Decimal) => Value::Decimal(x.to_string()),
        (Constant::Bool(b), ColumnKind::Bool) => Value::Bool(*b),
        _ => return Err(wrong()),
    })
}

/// The write for a source's value, or for its absence by the column's [`Absent`].
fn fill_absent(
    column: &Column,
    value: Option<Value>,
    absent: Absent,
    change: &UserChange,
    no_email: fn(&str) -> String,
) -> Result<Write, ValueError> {
    if let Some(value) = value {
        return Ok(Write::Value(value));
    }
    Ok(match absent {
        Absent::Null => Write::Value(Value::Null),
        Absent::Keep => Write::Keep,
        Absent::Empty => Write::Value(Value::Text(String::new())),
        Absent::Placeholder => Write::Value(fixed_text(column, no_email(change.id.as_str()))?),
        // Only the flags Clerk always sends get here, when an event leaves one out.
        Absent::Never if column.kind == ColumnKind::Bool => Write::Value(Value::Bool(false)),
        Absent::Never => return Err(mismatch(column, "a source with no value")),
    })
}

#[cfg(test)]
mod tests;
