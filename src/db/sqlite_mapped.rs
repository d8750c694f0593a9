//! The port on SQLite for a mapped table (see [`crate::domain::table::WriteShape`]): the same
//! unit of work as [`super::sqlite_port`], its statements built from the shape.
//!
//! Policy a reader needs before editing:
//!
//! - **The transaction is the lock.** SQLite has one writer at a time: `BEGIN IMMEDIATE`
//!   holds every table until commit, so no address is locked one by one.
//! - **Bookkeeping and deliveries go through the seed port's own code** (their tables are the
//!   same); only the application's table is reached through the statements built here.
//! - **Prepared once per connection.** diesel never caches a `sql_query` (boxed or not: its
//!   `walk_ast` calls `unsafe_to_cache_prepared`), nor any `diesel::update`. A [`Statement`]
//!   does not opt out, so diesel's cache keys it by its SQL text and bind types and prepares
//!   it once per connection: a text is the same for the same list of columns, and a column's
//!   bind type is its own whatever the value (a NULL included), so the cache holds one
//!   statement per list of columns the mapping writes.
//! - **Identifiers only through [`quoted`] and [`WriteShape::qualified_name`]**; every value is
//!   a bind parameter. No value (a name, an address) goes into an error or a log line.

use std::borrow::Cow;
use std::sync::Arc;

use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::result::Error as DieselError;
use diesel::sql_types::{BigInt, Double, Integer, Nullable, Text, Untyped};
use diesel::sqlite::Sqlite;

use super::port::{
    moving, Bookkeeping, Deleted, MappedWrites, Request, Snapshot, StoredRow, Writes,
};
use super::sqlite::Lite;
use super::sqlite_port::{self as seed, in_json, prisma_date, s, CHUNK};
use super::DbError;
use crate::domain::table::{quoted, Bind, WriteShape};
use crate::domain::Value;

impl Lite {
    /// One unit of work on a mapped table in one `BEGIN IMMEDIATE` transaction.
    pub(super) async fn transact_mapped<T, F>(
        &self,
        shape: Arc<WriteShape>,
        request: Request,
        plan: F,
    ) -> Result<(T, Deleted), DbError>
    where
        F: FnOnce(&Snapshot) -> Result<(Writes, T), DbError> + Send + 'static,
        T: Send + 'static,
    {
        self.run(move |conn| {
            conn.immediate_transaction(|c| {
                let table = Table::new(&shape)?;
                let snapshot = read(c, &table, &request)?;
                let (writes, value) = plan(&snapshot)?;
                let deleted = write(c, &table, &writes)?;
                Ok((value, deleted))
            })
        })
        .await
    }
}

/// A value as bound: the storage class Prisma writes on SQLite (NULL keeps its column's).
#[derive(Debug)]
pub(super) enum Bound<'a> {
    Text(Option<Cow<'a, str>>),
    BigInt(Option<i64>),
    Double(Option<f64>),
    Integer(Option<i32>),
}

impl<'a> Bound<'a> {
    /// NULL, bound with the column's type, so that a statement's bind types are the same
    /// whatever its values (diesel keys its cache by them too).
    fn null(column: &Bind) -> Self {
        match column {
            Bind::Int | Bind::BigInt => Bound::BigInt(None),
            Bind::Float => Bound::Double(None),
            Bind::Bool => Bound::Integer(None),
            _ => Bound::Text(None),
        }
    }

    fn value(value: &'a Value, column: &Bind) -> Self {
        match value {
            Value::Null => Self::null(column),
            Value::Text(text) | Value::Decimal(text) | Value::Enum(text) => {
                Bound::Text(Some(Cow::Borrowed(text)))
            }
            Value::Uuid(uuid) => Bound::Text(Some(Cow::Owned(uuid.hyphenated().to_string()))),
            Value::Json(json) => Bound::Text(Some(Cow::Owned(json.to_string()))),
            Value::Int(i) => Bound::BigInt(Some(i64::from(*i))),
            Value::BigInt(i) => Bound::BigInt(Some(*i)),
            Value::Float(x) => Bound::Double(Some(*x)),
            Value::Bool(b) => Bound::Integer(Some(i32::from(*b))),
            Value::Timestamp(at) => Bound::Text(Some(Cow::Owned(prisma_date(*at)))),
            Value::Date(day) => Bound::Text(Some(Cow::Owned(prisma_date(
                day.and_time(chrono::NaiveTime::MIN).and_utc(),
            )))),
        }
    }

    fn text(text: &'a str) -> Self {
        Bound::Text(Some(Cow::Borrowed(text)))
    }

    fn walk<'b>(&'b self, out: &mut AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        match self {
            Bound::Text(v) => out.push_bind_param::<Nullable<Text>, _>(v),
            Bound::BigInt(v) => out.push_bind_param::<Nullable<BigInt>, _>(v),
            Bound::Double(v) => out.push_bind_param::<Nullable<Double>, _>(v),
            Bound::Integer(v) => out.push_bind_param::<Nullable<Integer>, _>(v),
        }
    }
}

/// An SQL text cut where its bind parameters go: diesel writes each placeholder itself (and a
/// quoted name may hold any character, so no character can stand for one).
#[derive(Debug, Clone)]
pub(super) struct Sql(Vec<String>);

impl Sql {
    pub(super) fn new(text: impl Into<String>) -> Self {
        Sql(vec![text.into()])
    }

    /// `text` after what is there.
    fn push(&mut self, text: &str) {
        if let Some(last) = self.0.last_mut() {
            last.push_str(text);
        }
    }

    /// A bind parameter, then `text`.
    pub(super) fn then(mut self, text: impl Into<String>) -> Self {
        self.0.push(text.into());
        self
    }
}

/// A statement on the application's table: its SQL text and its binds, in order. Cached by
/// diesel per connection by its text (see the module's documentation).
#[derive(Debug)]
pub(super) struct Statement<'a> {
    pub(super) sql: &'a Sql,
    pub(super) binds: Vec<Bound<'a>>,
}

impl QueryId for Statement<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl QueryFragment<Sqlite> for Statement<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        let (first, rest) = self.sql.0.split_first().unzip();
        if rest.map_or(0, <[String]>::len) != self.binds.len() {
            return Err(DieselError::QueryBuilderError(
                "a statement's binds do not match its text".into(),
            ));
        }
        out.push_sql(first.map_or("", String::as_str));
        for (bind, text) in self.binds.iter().zip(rest.unwrap_or_default()) {
            bind.walk(&mut out)?;
            out.push_sql(text);
        }
        Ok(())
    }
}

impl Query for Statement<'_> {
    type SqlType = Untyped;
}

impl<C> RunQueryDsl<C> for Statement<'_> {}

/// An application row as read: its Clerk id, its address, its last update (as stored).
#[derive(QueryableByName)]
struct Found {
    /// NULL only for a row holding an address without a Clerk id.
    #[diesel(sql_type = Nullable<Text>)]
    clerk_id: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    address: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    updated: Option<String>,
}

/// The row's last update in ms: Prisma's text (as the seed port reads it), or integer ms.
fn updated_ms(stored: Option<&str>) -> i64 {
    match stored {
        None => 0,
        Some(text) => text
            .parse::<i64>()
            .unwrap_or_else(|_| seed::app_date_ms(text)),
    }
}

fn note(snapshot: &mut Snapshot, row: Found) {
    let updated_ms = updated_ms(row.updated.as_deref());
    match row.clerk_id {
        Some(clerk_id) => snapshot.add_row(clerk_id, row.address, updated_ms),
        None => snapshot.foreign.extend(row.address),
    }
}

/// A write naming a column the shape does not have, or a plan the shape cannot carry out: a
/// bug above, never a value to show.
fn mismatch(what: &'static str) -> DbError {
    DbError::Internal(format!("the mapped writes do not fit the table: {what}"))
}

/// The shape's fixed statements, made once per unit of work.
struct Table<'s> {
    shape: &'s WriteShape,
    name: String,
    clerk_id: String,
    /// The rows of a set of Clerk ids (bound as one JSON array).
    rows_by_id: Sql,
    /// The rows holding a set of addresses (a unique address column only), those without a
    /// Clerk id too.
    rows_by_address: Option<Sql>,
    /// The address column := ?, by Clerk id.
    set_address: Option<Sql>,
    /// The row's delete, by Clerk id.
    delete: Sql,
}

impl<'s> Table<'s> {
    fn new(shape: &'s WriteShape) -> Result<Self, DbError> {
        let column = |index: usize| {
            shape
                .columns
                .get(index)
                .map(|c| quoted(&c.name))
                .ok_or_else(|| mismatch("a column index past the shape's columns"))
        };
        let name = shape.qualified_name();
        let clerk_id = column(shape.clerk_id)?;
        let address = shape.unique_address.map(column).transpose()?;
        let updated = shape.updated_at.map(column).transpose()?;
        let select = format!(
            "SELECT CAST({clerk_id} AS TEXT) AS clerk_id, {} AS address, {} AS updated FROM {name}",
            address
                .as_ref()
                .map_or("NULL".into(), |a| format!("CAST({a} AS TEXT)")),
            updated
                .as_ref()
                .map_or("NULL".into(), |u| format!("CAST({u} AS TEXT)")),
        );
        let in_set = |column: &str| {
            Sql::new(format!(
                "{select} WHERE {column} IN (SELECT value FROM json_each("
            ))
        };
        let rows_by_id = in_set(&clerk_id).then("))");
        let rows_by_address = address.as_ref().map(|a| in_set(a).then("))"));
        let set_address = address.as_ref().map(|a| {
            Sql::new(format!("UPDATE {name} SET {a} = "))
                .then(format!(" WHERE {clerk_id} = "))
                .then("")
        });
        let delete = Sql::new(format!("DELETE FROM {name} WHERE {clerk_id} = ")).then("");
        Ok(Table {
            shape,
            name,
            clerk_id,
            rows_by_id,
            rows_by_address,
            set_address,
            delete,
        })
    }

    /// The bind of the column at `index`.
    fn bind(&self, index: usize) -> Result<&'s Bind, DbError> {
        self.shape
            .columns
            .get(index)
            .map(|c| &c.bind)
            .ok_or_else(|| mismatch("a column index past the shape's columns"))
    }

    /// The rows of the Clerk ids `keys` (with `by_address`: the rows holding the addresses
    /// `keys`, none without an address column).
    fn rows(
        &self,
        conn: &mut SqliteConnection,
        keys: &[impl AsRef<str>],
        by_address: bool,
    ) -> Result<Vec<Found>, DbError> {
        let sql = match (by_address, &self.rows_by_address) {
            (false, _) => &self.rows_by_id,
            (true, Some(sql)) => sql,
            (true, None) => return Ok(Vec::new()),
        };
        let mut found = Vec::new();
        for chunk in keys.chunks(CHUNK) {
            let keys: Vec<&str> = chunk.iter().map(AsRef::as_ref).collect();
            let keys = serde_json::to_string(&keys)
                .map_err(|e| DieselError::SerializationError(Box::new(e)))?;
            let statement = Statement {
                sql,
                binds: vec![Bound::Text(Some(Cow::Owned(keys)))],
            };
            found.extend(statement.load::<Found>(conn)?);
        }
        Ok(found)
    }

    /// The address column := `value` where the Clerk id is `id`.
    fn set_address(
        &self,
        conn: &mut SqliteConnection,
        id: &str,
        value: Bound<'_>,
    ) -> Result<(), DbError> {
        let sql = self
            .set_address
            .as_ref()
            .ok_or_else(|| mismatch("an address written without an address column"))?;
        Statement {
            sql,
            binds: vec![value, Bound::text(id)],
        }
        .execute(conn)?;
        Ok(())
    }

    /// `INSERT INTO t (<columns>) VALUES (…)`: the same text for the same columns.
    fn insert(
        &self,
        conn: &mut SqliteConnection,
        values: &[(usize, Value)],
    ) -> Result<(), DbError> {
        let mut binds = Vec::with_capacity(values.len());
        let mut columns = Vec::with_capacity(values.len());
        for (index, value) in values {
            binds.push(Bound::value(value, self.bind(*index)?));
            columns.push(self.shape.quoted_column(*index));
        }
        let sql = if columns.is_empty() {
            Sql::new(format!("INSERT INTO {} DEFAULT VALUES", self.name))
        } else {
            let mut sql = Sql::new(format!(
                "INSERT INTO {} ({}) VALUES (",
                self.name,
                columns.join(", ")
            ));
            for n in 1..=columns.len() {
                sql = sql.then(if n == columns.len() { ")" } else { ", " });
            }
            sql
        };
        Statement { sql: &sql, binds }.execute(conn)?;
        Ok(())
    }

    /// `UPDATE t SET <columns> WHERE <clerk id> = id`: how many rows it changed (none written
    /// when `values` is empty: the row's presence is then checked instead).
    fn update(
        &self,
        conn: &mut SqliteConnection,
        id: &str,
        values: &[(usize, Value)],
    ) -> Result<usize, DbError> {
        let mut binds = Vec::with_capacity(values.len() + 1);
        let mut sql = if values.is_empty() {
            Sql::new(format!("SELECT 1 AS n FROM {}", self.name))
        } else {
            Sql::new(format!("UPDATE {} SET ", self.name))
        };
        for (n, (index, value)) in values.iter().enumerate() {
            binds.push(Bound::value(value, self.bind(*index)?));
            if n > 0 {
                sql.push(", ");
            }
            sql.push(&self.shape.quoted_column(*index));
            sql.push(" = ");
            sql = sql.then("");
        }
        binds.push(Bound::text(id));
        sql.push(" WHERE ");
        sql.push(&self.clerk_id);
        sql.push(" = ");
        let sql = sql.then("");
        let statement = Statement { sql: &sql, binds };
        if values.is_empty() {
            return Ok(statement.load::<One>(conn)?.len());
        }
        Ok(statement.execute(conn)?)
    }
}

#[derive(QueryableByName)]
struct One {
    #[diesel(sql_type = Integer)]
    #[expect(dead_code, reason = "read to count rows only")]
    n: i32,
}

/// Steps 1 and 2 of [`super::port`]: the users' bookkeeping rows made where absent, then the
/// snapshot of every user involved (the caller holds the transaction, which is the lock).
fn read(
    conn: &mut SqliteConnection,
    table: &Table<'_>,
    request: &Request,
) -> Result<Snapshot, DbError> {
    let mut snapshot = Snapshot::default();
    let mut addresses: Vec<String> = request.claims.clone();
    let new_user = Bookkeeping::new_user();
    for chunk in seed::with_initial(request, &new_user).chunks(CHUNK) {
        let users: Vec<&String> = chunk.iter().map(|(user, _)| *user).collect();
        let rows: Vec<StoredRow> = s::table
            .filter(in_json(s::user_id, &users)?)
            .select(seed::bookkeeping())
            .load(conn)?;
        seed::note_users(conn, chunk, rows, &mut snapshot, &mut addresses)?;
    }
    for row in table.rows(conn, &request.users, false)? {
        addresses.extend(row.address.clone());
        note(&mut snapshot, row);
    }
    if table.shape.unique_address.is_some() {
        addresses.sort_unstable();
        addresses.dedup();
        read_addresses(conn, table, &addresses, &mut snapshot)?;
        snapshot.addresses = addresses.into_iter().collect();
    }
    seed::note_recorded(conn, &request.ids, &mut snapshot)?;
    Ok(snapshot)
}

/// The rows holding `addresses` and the users claiming them, each with its bookkeeping row
/// and its row.
fn read_addresses(
    conn: &mut SqliteConnection,
    table: &Table<'_>,
    addresses: &[String],
    snapshot: &mut Snapshot,
) -> Result<(), DbError> {
    let mut holders = Vec::new();
    for row in table.rows(conn, addresses, true)? {
        if let Some(clerk_id) = &row.clerk_id {
            if !snapshot.users.contains_key(clerk_id) {
                holders.push(clerk_id.clone());
            }
        }
        note(snapshot, row);
    }
    let mut claimants = Vec::new();
    for chunk in addresses.chunks(CHUNK) {
        seed::note_claimants(conn, chunk, snapshot, &mut claimants)?;
    }
    seed::note_holders(conn, &holders, snapshot)?;
    for row in table.rows(conn, &claimants, false)? {
        note(snapshot, row);
    }
    Ok(())
}

/// The mapped values, checked against the plan's writes they go with.
fn mapped(writes: &Writes) -> Result<&MappedWrites, DbError> {
    let mapped = writes
        .mapped
        .as_deref()
        .ok_or_else(|| mismatch("no column values"))?;
    if mapped.rows.len() != writes.rows.len() || mapped.moves.len() != writes.moves.len() {
        return Err(mismatch(
            "column values not one for one with the rows and moves",
        ));
    }
    Ok(mapped)
}

/// Step 3 of [`super::port`], in its order (the caller holds the transaction); answers which
/// deletes went through.
fn write(
    conn: &mut SqliteConnection,
    table: &Table<'_>,
    writes: &Writes,
) -> Result<Deleted, DbError> {
    let mapped = mapped(writes)?;
    let now = prisma_date(chrono::Utc::now());
    seed::write_bookkeeping(conn, &writes.bookkeeping, &now)?;
    for id in &writes.vacate {
        let placeholder = moving(id);
        table.set_address(conn, id, Bound::text(&placeholder))?;
    }
    for (row, values) in writes.rows.iter().zip(&mapped.rows) {
        if !row.exists {
            table.insert(conn, &values.insert)?;
        } else if table.update(conn, &row.id, &values.update)? == 0 {
            // Planned as existing, gone now: the next attempt reads it absent and inserts it.
            return Err(DbError::Unavailable(
                "an application row to update was not there; retrying".into(),
            ));
        }
    }
    let address = match table.shape.unique_address {
        Some(index) => table.bind(index)?,
        None => &Bind::Text,
    };
    for ((id, _), value) in writes.moves.iter().zip(&mapped.moves) {
        table.set_address(conn, id, Bound::value(value, address))?;
    }
    let mut deleted = Deleted::default();
    for user in &writes.deletes {
        let done = if mapped.soft_delete.is_empty() {
            // A savepoint, so that a refused delete leaves the rest of the transaction intact.
            let statement = Statement {
                sql: &table.delete,
                binds: vec![Bound::text(user)],
            };
            match conn.transaction(|c| statement.execute(c)) {
                Ok(_) => true,
                Err(error) if seed::refused_by_foreign_key(&error) => false,
                Err(other) => return Err(other.into()),
            }
        } else {
            table.update(conn, user, &mapped.soft_delete)?;
            true
        };
        diesel::update(s::table.find(user))
            .set(s::delete_pending.eq(!done))
            .execute(conn)?;
        if done {
            deleted.0.insert(user.clone());
        }
    }
    seed::write_records(conn, &writes.record, &deleted, &now)?;
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use diesel::connection::{Instrumentation, InstrumentationEvent, SimpleConnection};

    use super::*;
    use crate::domain::table::WriteColumn;

    /// Counts the statements diesel puts in the connection's cache.
    fn counting(conn: &mut SqliteConnection) -> Arc<AtomicUsize> {
        let cached = Arc::new(AtomicUsize::new(0));
        let counter = cached.clone();
        let instrumentation = move |event: InstrumentationEvent<'_>| {
            if let InstrumentationEvent::CacheQuery { .. } = event {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        };
        let instrumentation: Box<dyn Instrumentation> = Box::new(instrumentation);
        conn.set_instrumentation(instrumentation);
        cached
    }

    fn shape() -> WriteShape {
        let column = |name: &str, bind: Bind| WriteColumn {
            name: name.to_owned(),
            field: name.to_owned(),
            bind,
        };
        WriteShape {
            schema: None,
            name: "people".to_owned(),
            columns: vec![
                column("clerk", Bind::Text),
                column("mail", Bind::Text),
                column("seats", Bind::Int),
                column("at", Bind::Timestamp),
            ],
            clerk_id: 0,
            unique_address: Some(1),
            updated_at: Some(3),
            created_at: None,
        }
    }

    /// The module's claim: a statement of one text is prepared once per connection, whatever
    /// its values (NULL included) and however many keys a set holds; a `sql_query` never is.
    #[test]
    fn a_statement_of_one_text_is_prepared_once_per_connection() -> Result<(), DbError> {
        let mut conn = SqliteConnection::establish(":memory:")?;
        conn.batch_execute(include_str!(
            "../../migrations/sqlite/2026-11-27-000001_bookkeeping/up.sql"
        ))?;
        conn.batch_execute(
            "CREATE TABLE people (clerk TEXT UNIQUE, mail TEXT UNIQUE, seats INTEGER, at TEXT);
             INSERT INTO people VALUES ('a', 'a@x', 1, NULL), ('b', 'b@x', 2, NULL);",
        )?;
        let shape = shape();
        let table = Table::new(&shape)?;
        let cached = counting(&mut conn);

        for keys in [vec!["a"], vec!["a", "b"], vec!["c", "b", "a"]] {
            table.rows(&mut conn, &keys, false)?;
        }
        let values = [
            vec![(2, Value::Int(3)), (1, Value::Text("c@x".into()))],
            vec![(2, Value::Null), (1, Value::Null)],
        ];
        for (id, values) in ["a", "b"].into_iter().zip(&values) {
            assert_eq!(table.update(&mut conn, id, values)?, 1);
        }
        assert_eq!(cached.load(Ordering::SeqCst), 2, "one select, one update");

        for _ in 0..2 {
            diesel::sql_query("SELECT 1 AS n").load::<One>(&mut conn)?;
        }
        assert_eq!(
            cached.load(Ordering::SeqCst),
            2,
            "sql_query is never cached"
        );

        for version in [1, 2] {
            diesel::update(s::table.find("a"))
                .set(s::version.eq(version))
                .execute(&mut conn)?;
        }
        assert_eq!(cached.load(Ordering::SeqCst), 2, "nor is diesel's UPDATE");
        Ok(())
    }
}
