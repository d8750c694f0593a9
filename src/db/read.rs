//! Reading one user's row back, as the application's Prisma Client would read it (the
//! session sync answers with it).
//!
//! Policy: the seed's `User` is read column by column, as always. A mapped table (see
//! [`Database::use_shape`]) is read in one statement that answers the row as one JSON text of
//! raw values (PostgreSQL's `row_to_json`, SQLite's `json_object`), keyed `c<index>` by the
//! shape's column index, never by a name; [`prisma_row`] then decides, in Rust, each value's
//! JSON form by the column's [`Bind`] and keys it by its Prisma field. Identifiers reach SQL
//! only through [`quoted`] and [`WriteShape::qualified_name`]; the Clerk id is a bind
//! parameter; no value reaches an error or a log line.

use std::sync::Arc;

use diesel::sql_types::{Bool, Nullable, Text};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl as _;
use serde_json::{Map, Value};

use super::{Database, DbError};
use crate::domain::table::{quoted, Bind, WriteShape};
use crate::domain::ClerkUserId;

/// A row of the application's user table as Prisma Client serializes it to JSON, keyed by
/// the model's field names: the seed's `User` as `id, name, mail_address, role, createdAt,
/// updatedAt`; a mapped table by its Prisma fields (see [`prisma_row`] for each type's form).
/// Dates in Prisma Client's JSON form (`2024-05-01T12:34:56.000Z`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct AppUser(Map<String, Value>);

impl AppUser {
    /// The value of one field, if the row has it.
    pub fn get(&self, field: &str) -> Option<&Value> {
        self.0.get(field)
    }

    /// Every field of the row.
    pub fn fields(&self) -> &Map<String, Value> {
        &self.0
    }
}

/// What the database holds for one user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserLookup {
    /// The application's row, if there is one.
    pub row: Option<AppUser>,
    /// Whether clerk-sync holds a tombstone for the user (a row may remain while the
    /// application's foreign keys hold it).
    pub deleted: bool,
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Nullable<Text>)]
    name: Option<String>,
    #[diesel(sql_type = Text)]
    mail_address: String,
    #[diesel(sql_type = Text)]
    role: String,
    #[diesel(sql_type = Text)]
    created_at: String,
    #[diesel(sql_type = Text)]
    updated_at: String,
}

#[derive(QueryableByName)]
struct Tombstone {
    #[diesel(sql_type = Bool)]
    deleted: bool,
}

/// Prisma Client's JSON form of a date written on SQLite (`…+00:00` text); text it cannot
/// read is passed on as it is rather than failing the answer.
fn iso_millis(text: String) -> String {
    match chrono::DateTime::parse_from_rfc3339(&text) {
        Ok(at) => at
            .with_timezone(&chrono::Utc)
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string(),
        Err(_) => text,
    }
}

impl From<Row> for AppUser {
    fn from(row: Row) -> Self {
        let mut fields = Map::new();
        fields.insert("id".into(), Value::String(row.id));
        fields.insert("name".into(), row.name.map_or(Value::Null, Value::String));
        fields.insert("mail_address".into(), Value::String(row.mail_address));
        fields.insert("role".into(), Value::String(row.role));
        fields.insert(
            "createdAt".into(),
            Value::String(iso_millis(row.created_at)),
        );
        fields.insert(
            "updatedAt".into(),
            Value::String(iso_millis(row.updated_at)),
        );
        Self(fields)
    }
}

/// A mapped table's row, as one JSON text of raw values (see the module docs).
#[derive(QueryableByName)]
struct RawRow {
    #[diesel(sql_type = Text)]
    raw: String,
}

const PG_TOMBSTONE: &str =
    "SELECT deleted_at IS NOT NULL AS deleted FROM clerk_sync.users WHERE user_id = $1";
const SQLITE_TOMBSTONE: &str =
    "SELECT deleted_at IS NOT NULL AS deleted FROM clerk_sync_users WHERE user_id = ?";

/// Which backend's storage the raw values come from: SQLite keeps JSON as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stored {
    Postgres,
    Sqlite,
}

/// The key of column `index` in the raw JSON text.
fn raw_key(index: usize) -> String {
    format!("c{index}")
}

/// The columns read back: every one but those clerk-sync cannot read (`Bind::Unsupported`).
fn readable(
    shape: &WriteShape,
) -> impl Iterator<Item = (usize, &crate::domain::table::WriteColumn)> {
    shape
        .columns
        .iter()
        .enumerate()
        .filter(|(_, c)| c.bind != Bind::Unsupported)
}

/// One statement answering the row found by the Clerk id (`$1`) as one JSON object text.
/// `numeric` is read as text: a JSON number would lose its digits.
fn pg_select(shape: &WriteShape) -> Result<String, DbError> {
    let clerk = clerk_column(shape)?;
    let list = readable(shape)
        .map(|(i, c)| {
            let cast = if c.bind == Bind::Decimal {
                "::text"
            } else {
                ""
            };
            format!("r.{}{cast} AS {}", quoted(&c.name), raw_key(i))
        })
        .collect::<Vec<_>>()
        .join(", ");
    Ok(format!(
        "SELECT row_to_json(j)::text AS raw FROM (SELECT {list} FROM {} r WHERE r.{clerk} = $1) j",
        shape.qualified_name()
    ))
}

/// Columns per `json_object` call: SQLite caps a function's arguments (1000 in the bundled
/// build), and a table may have up to 2000 columns.
const SQLITE_CHUNK: usize = 200;

/// One statement answering the row found by the Clerk id (`?`) as a JSON array of objects
/// (one per [`SQLITE_CHUNK`] columns). Text-like columns are cast to text (a stray BLOB would
/// fail `json_object`); an infinite REAL, which JSON cannot hold, reads as NULL.
fn sqlite_select(shape: &WriteShape) -> Result<String, DbError> {
    let clerk = clerk_column(shape)?;
    let pairs: Vec<String> = readable(shape)
        .map(|(i, c)| {
            let name = format!("r.{}", quoted(&c.name));
            let value = match c.bind {
                Bind::Text | Bind::Uuid | Bind::Enum(_) | Bind::Decimal | Bind::BigInt => {
                    format!("CAST({name} AS TEXT)")
                }
                Bind::Float => {
                    format!("CASE WHEN abs({name}) <= 1.7976931348623157e308 THEN {name} END")
                }
                _ => name,
            };
            format!("'{}', {value}", raw_key(i))
        })
        .collect();
    let objects = pairs
        .chunks(SQLITE_CHUNK)
        .map(|chunk| format!("json_object({})", chunk.join(", ")))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(format!(
        "SELECT json_array({objects}) AS raw FROM {} r WHERE r.{clerk} = ?",
        shape.qualified_name()
    ))
}

fn clerk_column(shape: &WriteShape) -> Result<String, DbError> {
    shape
        .columns
        .get(shape.clerk_id)
        .map(|c| quoted(&c.name))
        .ok_or_else(|| DbError::Internal("the mapped shape lacks its Clerk id column".into()))
}

/// The row as Prisma Client serializes it to JSON, from the raw JSON text the statement
/// answered (an object, or on SQLite an array of objects), keyed by each column's Prisma
/// field. Each value's form:
/// - text, uuid, enum: a string (an enum by its label);
/// - `Int`, `Float`: a number (`NaN` or an infinity, which JSON cannot hold, `null` as
///   `JSON.stringify` writes it);
/// - `BigInt` and `Decimal`: a string of the exact digits (Prisma Client's `BigInt` has no
///   JSON form and its `Decimal` serializes as a string; a number would lose digits past 2^53);
/// - `Boolean`: `true`/`false` (SQLite stores 0/1);
/// - `DateTime` (and `@db.Date`): ISO-8601 in UTC with milliseconds and `Z`, as a JavaScript
///   `Date` serializes; text it cannot read is passed on as it is;
/// - `Json`: the JSON itself (SQLite stores its text; text that is not JSON stays a string);
/// - NULL: `null`.
fn prisma_row(shape: &WriteShape, raw: &str, stored: Stored) -> Result<AppUser, DbError> {
    let unreadable = || DbError::Internal("the row read back is not a JSON object".into());
    let parsed: Value = serde_json::from_str(raw).map_err(|_| unreadable())?;
    let mut values = Map::new();
    match parsed {
        Value::Object(object) => values = object,
        Value::Array(parts) => {
            for part in parts {
                let Value::Object(object) = part else {
                    return Err(unreadable());
                };
                values.extend(object);
            }
        }
        _ => return Err(unreadable()),
    }
    let mut fields = Map::new();
    for (i, column) in readable(shape) {
        let value = values.remove(&raw_key(i)).unwrap_or(Value::Null);
        fields.insert(
            column.field.clone(),
            prisma_value(&column.bind, value, stored),
        );
    }
    Ok(AppUser(fields))
}

/// One raw value in Prisma Client's JSON form (see [`prisma_row`]).
fn prisma_value(bind: &Bind, raw: Value, stored: Stored) -> Value {
    match (bind, raw) {
        (_, Value::Null) => Value::Null,
        (Bind::BigInt | Bind::Decimal, Value::Number(n)) => Value::String(n.to_string()),
        (Bind::Float, Value::String(_)) => Value::Null,
        (Bind::Bool, Value::Number(n)) => Value::Bool(n.as_f64().is_some_and(|x| x != 0.0)),
        (Bind::Timestamp | Bind::TimestampTz | Bind::Date, raw) => prisma_time(raw),
        (Bind::Json, Value::String(text)) if stored == Stored::Sqlite => {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        }
        (_, raw) => raw,
    }
}

/// A stored time as a JavaScript `Date` serializes: RFC 3339 text (SQLite's `…+00:00`,
/// `timestamptz`), zone-less text in UTC (`timestamp`, SQLite's `CURRENT_TIMESTAMP`), a date
/// alone (midnight UTC), or a number of ms since the epoch (SQLite).
fn prisma_time(raw: Value) -> Value {
    use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
    let at: Option<DateTime<Utc>> = match &raw {
        Value::String(text) => DateTime::parse_from_rfc3339(text)
            .map(|at| at.with_timezone(&Utc))
            .ok()
            .or_else(|| {
                ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
                    .iter()
                    .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
                    .map(|at| at.and_utc())
            })
            .or_else(|| {
                NaiveDate::parse_from_str(text, "%Y-%m-%d")
                    .ok()
                    .and_then(|day| day.and_hms_opt(0, 0, 0))
                    .map(|at| at.and_utc())
            }),
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|x| x.floor() as i64))
            .and_then(DateTime::from_timestamp_millis),
        _ => None,
    };
    match at {
        Some(at) => Value::String(at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()),
        None => raw,
    }
}

impl Database {
    /// The application's row for `id` and whether the user is tombstoned: the seed's `User`
    /// by its `id`, or the mapped table by its Clerk-id column.
    pub async fn read_user(&self, id: &ClerkUserId) -> Result<UserLookup, DbError> {
        let shape = match self {
            Database::Postgres(db) => db.shape.get().cloned(),
            Database::Sqlite(db) => db.shape.get().cloned(),
        };
        match shape {
            Some(shape) => self.read_mapped_user(shape, id).await,
            None => self.read_seed_user(id).await,
        }
    }

    async fn read_mapped_user(
        &self,
        shape: Arc<WriteShape>,
        id: &ClerkUserId,
    ) -> Result<UserLookup, DbError> {
        let id = id.as_str().to_owned();
        let (rows, tombstones, stored) = match self {
            Database::Postgres(db) => {
                let sql = pg_select(&shape)?;
                // Through a pooler, both reads in one transaction (see `Pg::with_conn`).
                let (rows, tombstones) = db
                    .with_conn(async |conn| {
                        let rows: Vec<RawRow> = diesel::sql_query(sql)
                            .bind::<Text, _>(&id)
                            .load(conn)
                            .await?;
                        let tombstones: Vec<Tombstone> = diesel::sql_query(PG_TOMBSTONE)
                            .bind::<Text, _>(&id)
                            .load(conn)
                            .await?;
                        Ok((rows, tombstones))
                    })
                    .await?;
                (rows, tombstones, Stored::Postgres)
            }
            Database::Sqlite(db) => {
                let sql = sqlite_select(&shape)?;
                let (rows, tombstones) = db
                    .run(move |conn| {
                        let rows: Vec<RawRow> = diesel::RunQueryDsl::load(
                            diesel::sql_query(sql).bind::<Text, _>(&id),
                            conn,
                        )?;
                        let tombstones: Vec<Tombstone> = diesel::RunQueryDsl::load(
                            diesel::sql_query(SQLITE_TOMBSTONE).bind::<Text, _>(&id),
                            conn,
                        )?;
                        Ok((rows, tombstones))
                    })
                    .await?;
                (rows, tombstones, Stored::Sqlite)
            }
        };
        let row = match rows.into_iter().next() {
            Some(row) => Some(prisma_row(&shape, &row.raw, stored)?),
            None => None,
        };
        Ok(UserLookup {
            row,
            deleted: tombstones.iter().any(|t| t.deleted),
        })
    }

    async fn read_seed_user(&self, id: &ClerkUserId) -> Result<UserLookup, DbError> {
        let id = id.as_str().to_owned();
        match self {
            Database::Postgres(db) => {
                // Through a pooler, both reads in one transaction (see `Pg::with_conn`).
                db.with_conn(async |conn| {
                    // Prisma's TIMESTAMP(0) columns hold UTC wall time.
                    let rows: Vec<Row> = diesel::sql_query(
                        r#"SELECT id, name, mail_address, role::text AS role,
                              to_char("createdAt", 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS created_at,
                              to_char("updatedAt", 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS updated_at
                         FROM "User" WHERE id = $1"#,
                    )
                    .bind::<Text, _>(&id)
                    .load(conn)
                    .await?;
                    let tombstones: Vec<Tombstone> = diesel::sql_query(PG_TOMBSTONE)
                        .bind::<Text, _>(&id)
                        .load(conn)
                        .await?;
                    Ok(UserLookup {
                        row: rows.into_iter().next().map(AppUser::from),
                        deleted: tombstones.iter().any(|t| t.deleted),
                    })
                })
                .await
            }
            Database::Sqlite(db) => {
                db.run(move |conn| {
                    let rows: Vec<Row> = diesel::RunQueryDsl::load(
                        diesel::sql_query(
                            r#"SELECT id, name, mail_address, role,
                                  "createdAt" AS created_at, "updatedAt" AS updated_at
                             FROM "User" WHERE id = ?"#,
                        )
                        .bind::<Text, _>(&id),
                        conn,
                    )?;
                    let tombstones: Vec<Tombstone> = diesel::RunQueryDsl::load(
                        diesel::sql_query(SQLITE_TOMBSTONE).bind::<Text, _>(&id),
                        conn,
                    )?;
                    Ok(UserLookup {
                        row: rows.into_iter().next().map(AppUser::from),
                        deleted: tombstones.iter().any(|t| t.deleted),
                    })
                })
                .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::table::WriteColumn;
    use serde_json::json;

    fn shape() -> WriteShape {
        let column = |name: &str, field: &str, bind: Bind| WriteColumn {
            name: name.into(),
            field: field.into(),
            bind,
        };
        WriteShape {
            schema: Some("app \"s".into()),
            name: "users".into(),
            columns: vec![
                column("clerk_id", "clerkId", Bind::Text),
                column("seats", "seats", Bind::Int),
                column("big", "big", Bind::BigInt),
                column("ratio", "ratio", Bind::Float),
                column("price", "price", Bind::Decimal),
                column("active", "active", Bind::Bool),
                column("created_at", "createdAt", Bind::Timestamp),
                column("seen", "seen", Bind::TimestampTz),
                column("born", "born", Bind::Date),
                column("meta", "meta", Bind::Json),
                column("role", "role", Bind::Enum("\"Role\"".into())),
                column("tags", "tags", Bind::Unsupported),
                column("gone", "gone", Bind::Text),
            ],
            clerk_id: 0,
            unique_address: None,
            updated_at: None,
            created_at: Some(6),
        }
    }

    #[test]
    fn a_postgres_row_answers_as_prisma_client_serializes_it() {
        let raw = json!({
            "c0": "user_a", "c1": 3, "c2": 9_007_199_254_740_993_i64, "c3": "NaN",
            "c4": "12.50", "c5": true, "c6": "2024-05-01T12:00:01.789123",
            "c7": "2024-05-01T14:00:01.7+02:00", "c8": "2024-05-01",
            "c9": {"plan": "pro", "n": [1]}, "c10": "ADMIN", "c12": null
        })
        .to_string();

        let row = prisma_row(&shape(), &raw, Stored::Postgres).expect("test value");

        assert_eq!(
            serde_json::to_value(&row).expect("test value"),
            json!({
                "clerkId": "user_a", "seats": 3, "big": "9007199254740993", "ratio": null,
                "price": "12.50", "active": true, "createdAt": "2024-05-01T12:00:01.789Z",
                "seen": "2024-05-01T12:00:01.700Z", "born": "2024-05-01T00:00:00.000Z",
                "meta": {"plan": "pro", "n": [1]}, "role": "ADMIN", "gone": null
            })
        );
    }

    #[test]
    fn a_sqlite_row_reads_its_0_1_booleans_text_json_and_either_date_form() {
        let raw = json!([
            {"c0": "user_a", "c1": 3, "c2": "-5", "c3": 0.5, "c4": "1E+2", "c5": 0,
             "c6": "2024-05-01T12:00:01.789+00:00", "c7": 1_714_564_801_789_i64},
            {"c8": "2024-05-01 12:00:00", "c9": "{\"a\":1}", "c10": "MEMBER", "c12": "x"}
        ])
        .to_string();

        let row = prisma_row(&shape(), &raw, Stored::Sqlite).expect("test value");

        assert_eq!(row.get("active"), Some(&json!(false)));
        assert_eq!(row.get("big"), Some(&json!("-5")));
        assert_eq!(row.get("price"), Some(&json!("1E+2")));
        assert_eq!(
            row.get("createdAt"),
            Some(&json!("2024-05-01T12:00:01.789Z"))
        );
        assert_eq!(row.get("seen"), Some(&json!("2024-05-01T12:00:01.789Z")));
        assert_eq!(row.get("born"), Some(&json!("2024-05-01T12:00:00.000Z")));
        assert_eq!(row.get("meta"), Some(&json!({"a": 1})));
        assert_eq!(row.get("tags"), None, "an unsupported column is left out");
    }

    #[test]
    fn json_text_stays_a_string_on_postgres_and_unreadable_times_pass_as_they_are() {
        assert_eq!(
            prisma_value(&Bind::Json, json!("{\"a\":1}"), Stored::Postgres),
            json!("{\"a\":1}")
        );
        assert_eq!(
            prisma_value(&Bind::Json, json!("not json"), Stored::Sqlite),
            json!("not json")
        );
        assert_eq!(
            prisma_value(&Bind::Timestamp, json!("infinity"), Stored::Postgres),
            json!("infinity")
        );
        assert!(prisma_row(&shape(), "[1]", Stored::Sqlite).is_err());
    }

    #[test]
    fn the_statements_name_columns_by_index_and_quote_every_identifier() {
        let shape = shape();

        let pg = pg_select(&shape).expect("test value");
        let lite = sqlite_select(&shape).expect("test value");

        assert!(pg.starts_with(
            "SELECT row_to_json(j)::text AS raw FROM (SELECT r.\"clerk_id\" AS c0, r.\"seats\" AS c1"
        ));
        assert!(pg.contains("r.\"price\"::text AS c4"));
        assert!(pg.ends_with("FROM \"app \"\"s\".\"users\" r WHERE r.\"clerk_id\" = $1) j"));
        assert!(!pg.contains("tags") && !lite.contains("tags"));
        assert!(
            lite.starts_with("SELECT json_array(json_object('c0', CAST(r.\"clerk_id\" AS TEXT)")
        );
        assert!(lite.ends_with("WHERE r.\"clerk_id\" = ?"));
    }

    #[test]
    fn the_seed_row_answers_with_its_own_keys() {
        let row = AppUser::from(Row {
            id: "user_a".into(),
            name: None,
            mail_address: "a@x.test".into(),
            role: "USER".into(),
            created_at: "2024-05-01T12:00:00.000+00:00".into(),
            updated_at: "2024-05-01T12:00:05.000Z".into(),
        });

        assert_eq!(
            serde_json::to_string(&row).expect("test value"),
            r#"{"createdAt":"2024-05-01T12:00:00.000Z","id":"user_a","mail_address":"a@x.test","name":null,"role":"USER","updatedAt":"2024-05-01T12:00:05.000Z"}"#
        );
    }
}
