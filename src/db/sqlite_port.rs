//! The port on SQLite: read a snapshot, write the planned changes (see [`super::port`]).
//! SQLite serialises writers, so the caller's `BEGIN IMMEDIATE` transaction is the only
//! lock. A few users or rows go one statement each, each prepared once per connection and
//! reused: diesel caches the `SELECT`s and single-row `INSERT`s its query builder makes, but
//! never an `UPDATE`, an upsert or a multi-row `INSERT` (their `walk_ast` opts out), so the
//! per-row updates are fixed texts with binds (`sqlite_mapped::Statement`, which diesel does
//! cache) — raw `sql_query` would be parsed again each time too. Many go a set of keys or rows
//! per statement (prepared each time, as its length varies), as few statements as the bulk
//! paths need.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{Nullable, Text};
use diesel::upsert::excluded;

use foldhash::{HashMap, HashSet};
use std::borrow::{Borrow, Cow};
use std::sync::LazyLock;

use super::sqlite_mapped::{Bound, Sql, Statement};

use super::port::{
    moving, Bookkeeping, BookkeepingWrite, Deleted, Record, Request, RowWrite, Snapshot, StoredRow,
    Writes,
};
use crate::domain::Role;

pub(super) mod schema {
    diesel::table! {
        /// The application's table, as Prisma created it on SQLite.
        #[sql_name = "User"]
        app_user (id) {
            id -> Text,
            name -> Nullable<Text>,
            mail_address -> Text,
            role -> Text,
            #[sql_name = "createdAt"]
            created_at -> Text,
            #[sql_name = "updatedAt"]
            updated_at -> Text,
        }
    }

    diesel::table! {
        clerk_sync_deliveries (svix_id) {
            svix_id -> Text,
            event_type -> Text,
            user_id -> Nullable<Text>,
            outcome -> Text,
            received_at -> Text,
        }
    }

    diesel::table! {
        clerk_sync_users (user_id) {
            user_id -> Text,
            version -> BigInt,
            digest -> Text,
            email -> Nullable<Text>,
            deleted_at -> Nullable<Text>,
            delete_pending -> Bool,
            delete_attempted_at -> Nullable<Text>,
            role_from_webhook -> Bool,
        }
    }
}

use schema::app_user as u;
pub(super) use schema::clerk_sync_deliveries as d;
pub(super) use schema::clerk_sync_users as s;

/// Prisma's SQLite date format.
pub use crate::domain::prisma_sqlite_date as prisma_date;

/// A date the application wrote, in ms (0 when unreadable).
pub(super) fn app_date_ms(text: &str) -> i64 {
    let parsed = DateTime::parse_from_rfc3339(text)
        .map(|d| d.with_timezone(&Utc))
        .or_else(|_| {
            NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f").map(|n| n.and_utc())
        });
    parsed.map(|d| d.timestamp_millis()).unwrap_or(0)
}

pub(super) type BookkeepingColumns = (
    s::user_id,
    s::version,
    s::digest,
    s::email,
    diesel::dsl::IsNotNull<s::deleted_at>,
    s::delete_pending,
    s::role_from_webhook,
);

pub(super) fn bookkeeping() -> BookkeepingColumns {
    (
        s::user_id,
        s::version,
        s::digest,
        s::email,
        s::deleted_at.is_not_null(),
        s::delete_pending,
        s::role_from_webhook,
    )
}

fn note_row(snapshot: &mut Snapshot, (id, address, updated_at): (String, String, String)) {
    let updated_ms = app_date_ms(&updated_at);
    snapshot.add_row(id, Some(address), updated_ms);
}

/// One bookkeeping row written (its tombstone and its attempt too), as a statement diesel
/// prepares once per connection: diesel never caches an `UPDATE` it builds (its `walk_ast`
/// opts out), and preparing one again for every delivery cost more than running it.
static WRITE_ONE_BOOKKEEPING: LazyLock<Sql> = LazyLock::new(|| {
    Sql::new("UPDATE clerk_sync_users SET version = ")
        .then(", digest = ")
        .then(", email = ")
        .then(", role_from_webhook = ")
        .then(", deleted_at = CASE WHEN ")
        .then(" THEN COALESCE(deleted_at, ")
        .then(") ELSE deleted_at END, delete_attempted_at = CASE WHEN ")
        .then(" THEN ")
        .then(" ELSE delete_attempted_at END WHERE user_id = ")
        .then("")
});

/// One application row updated (a role of NULL leaves the row's own), prepared once per
/// connection (see [`WRITE_ONE_BOOKKEEPING`]).
static UPDATE_ONE_ROW: LazyLock<Sql> = LazyLock::new(|| {
    Sql::new("UPDATE \"User\" SET name = ")
        .then(", mail_address = ")
        .then(", \"createdAt\" = ")
        .then(", \"updatedAt\" = ")
        .then(", role = COALESCE(")
        .then(", role) WHERE id = ")
        .then("")
});

/// Up to this many users, the snapshot is read key by key (statements prepared once); beyond
/// it, a set of keys at a time.
const FEW: usize = 8;

/// Largest number of keys or rows per statement, well under SQLite's bound on parameters.
pub(super) const CHUNK: usize = 2_000;

/// The bookkeeping row made for `user`, as a read would find it.
fn made_row(user: &str, initial: &Bookkeeping) -> StoredRow {
    let Bookkeeping {
        version,
        digest,
        email,
        role_from_webhook,
        ..
    } = initial.clone();
    (
        user.to_owned(),
        version,
        digest,
        email,
        false,
        false,
        role_from_webhook,
    )
}

/// Inserts `values` (a `Vec` of diesel value tuples) into `table`: one row as a statement
/// diesel prepares once per connection, several in one statement (prepared each time, as its
/// length varies), none not at all.
macro_rules! insert_one_or_many {
    ($conn:expr, $table:expr, $values:expr) => {{
        let values = $values;
        if let [one] = values.as_slice() {
            diesel::insert_into($table).values(one).execute($conn)?;
        } else if !values.is_empty() {
            diesel::insert_into($table).values(&values).execute($conn)?;
        }
    }};
}

/// Makes the bookkeeping rows of `users` (absent, under the transaction's lock) with their
/// initial values (`initial[i]` is `users[i]`'s, by position), in one statement.
/// [`Request::initial`] may be shorter than the users: the rest get a new user's values.
fn make_users(conn: &mut SqliteConnection, users: &[(&String, &Bookkeeping)]) -> QueryResult<()> {
    let values: Vec<_> = users
        .iter()
        .map(|(user, initial)| {
            (
                s::user_id.eq(*user),
                s::version.eq(initial.version),
                s::digest.eq(&initial.digest),
                s::email.eq(initial.email.as_deref()),
                s::role_from_webhook.eq(initial.role_from_webhook),
            )
        })
        .collect();
    insert_one_or_many!(conn, s::table, values);
    Ok(())
}

/// Notes the bookkeeping rows of `users`, those `read` and, for the rest (absent), the rows
/// made with their initial values as a read would find them once made, and the addresses
/// they claim; answers the rest, whose rows are still to be made.
fn note_found<'a>(
    users: &[(&'a String, &'a Bookkeeping)],
    read: Vec<StoredRow>,
    snapshot: &mut Snapshot,
    addresses: &mut Vec<String>,
) -> Vec<(&'a String, &'a Bookkeeping)> {
    let found: HashSet<&str> = read.iter().map(|row| row.0.as_str()).collect();
    let missing: Vec<(&String, &Bookkeeping)> = users
        .iter()
        .filter(|(user, _)| !found.contains(user.as_str()))
        .copied()
        .collect();
    let made = missing
        .iter()
        .map(|(user, initial)| made_row(user, initial));
    for row in read.into_iter().chain(made) {
        addresses.extend(row.3.clone());
        snapshot.add_bookkeeping(row);
    }
    snapshot
        .made
        .extend(missing.iter().map(|(user, _)| (*user).clone()));
    missing
}

/// Notes the bookkeeping rows of `users`, those `read` and those made now for the rest, and
/// the addresses they claim.
pub(super) fn note_users(
    conn: &mut SqliteConnection,
    users: &[(&String, &Bookkeeping)],
    read: Vec<StoredRow>,
    snapshot: &mut Snapshot,
    addresses: &mut Vec<String>,
) -> QueryResult<()> {
    let missing = note_found(users, read, snapshot, addresses);
    make_users(conn, &missing)
}

/// Rows inserted per statement by [`MAKE_MANY_USERS`] and [`INSERT_MANY_ROWS`].
const MADE_PER_STATEMENT: usize = 100;

/// `insert` (`INSERT INTO t (c1, …, cN)`) of [`MADE_PER_STATEMENT`] rows of `columns`
/// values, as a statement diesel prepares once per connection: a multi-row `INSERT` diesel
/// builds is prepared anew every time (its `walk_ast` opts out of the cache), and parsing its
/// text cost about as much as running it.
fn insert_many(insert: &str, columns: usize) -> Sql {
    let mut sql = Sql::new(format!("{insert} VALUES ("));
    for row in 0..MADE_PER_STATEMENT {
        for _ in 1..columns {
            sql = sql.then(", ");
        }
        sql = sql.then(if row + 1 < MADE_PER_STATEMENT {
            "), ("
        } else {
            ")"
        });
    }
    sql
}

/// [`MADE_PER_STATEMENT`] bookkeeping rows made (see [`insert_many`]).
static MAKE_MANY_USERS: LazyLock<Sql> = LazyLock::new(|| {
    insert_many(
        "INSERT INTO clerk_sync_users (user_id, version, digest, email, role_from_webhook, \
         deleted_at, delete_attempted_at)",
        7,
    )
});

/// [`MADE_PER_STATEMENT`] new application rows inserted (see [`insert_many`]).
static INSERT_MANY_ROWS: LazyLock<Sql> = LazyLock::new(|| {
    insert_many(
        "INSERT INTO \"User\" (id, name, mail_address, role, \"createdAt\", \"updatedAt\")",
        6,
    )
});

/// A bookkeeping row to make: user, version, digest, email, role set by a webhook,
/// tombstone's time, delete attempt's time.
type MadeRow<'a> = (
    &'a str,
    i64,
    &'a str,
    Option<&'a str>,
    bool,
    Option<&'a str>,
    Option<&'a str>,
);

/// Makes the bookkeeping rows [`read`] found absent ([`Snapshot::made`]; it notes them as
/// made without writing them, so that the reads of the locked addresses do not find them
/// again), in the request's order, each with what `planned` writes to it where it writes
/// something (as making it with its initial values, then writing that, would leave it), else
/// with its initial values; [`MADE_PER_STATEMENT`] rows per statement, the rest in one. The
/// tombstone's and the attempt's times are `now` where asked.
fn make_noted_users(
    conn: &mut SqliteConnection,
    request: &Request,
    snapshot: &Snapshot,
    planned: &[&BookkeepingWrite],
    now: &str,
) -> QueryResult<()> {
    if snapshot.made.is_empty() {
        return Ok(());
    }
    let planned: HashMap<&str, &BookkeepingWrite> =
        planned.iter().map(|b| (b.user_id.as_str(), *b)).collect();
    let new_user = Bookkeeping::new_user();
    let rows: Vec<MadeRow<'_>> = with_initial(request, &new_user)
        .into_iter()
        .filter(|(user, _)| snapshot.made.contains(user.as_str()))
        .map(|(user, initial)| match planned.get(user.as_str()) {
            Some(b) => (
                user.as_str(),
                b.version,
                b.digest.as_str(),
                b.email.as_deref(),
                b.role_from_webhook,
                b.tombstone.then_some(now),
                b.attempted.then_some(now),
            ),
            None => (
                user.as_str(),
                initial.version,
                initial.digest.as_str(),
                initial.email.as_deref(),
                initial.role_from_webhook,
                None,
                None,
            ),
        })
        .collect();
    if rows.len() != snapshot.made.len() {
        return Err(DieselError::QueryBuilderError(
            "a bookkeeping row to make is not among the request's users".into(),
        ));
    }
    let many = rows.chunks_exact(MADE_PER_STATEMENT);
    let rest = many.remainder();
    for chunk in many {
        let mut binds = Vec::with_capacity(7 * MADE_PER_STATEMENT);
        for &(user, version, digest, email, role_from_webhook, tombstone, attempted) in chunk {
            binds.extend([
                Bound::Text(Some(Cow::Borrowed(user))),
                Bound::BigInt(Some(version)),
                Bound::Text(Some(Cow::Borrowed(digest))),
                Bound::Text(email.map(Cow::Borrowed)),
                Bound::Integer(Some(i32::from(role_from_webhook))),
                Bound::Text(tombstone.map(Cow::Borrowed)),
                Bound::Text(attempted.map(Cow::Borrowed)),
            ]);
        }
        Statement {
            sql: &MAKE_MANY_USERS,
            binds,
        }
        .execute(conn)?;
    }
    let values: Vec<_> = rest
        .iter()
        .map(
            |&(user, version, digest, email, role_from_webhook, tombstone, attempted)| {
                (
                    s::user_id.eq(user),
                    s::version.eq(version),
                    s::digest.eq(digest),
                    s::email.eq(email),
                    s::role_from_webhook.eq(role_from_webhook),
                    s::deleted_at.eq(tombstone),
                    s::delete_attempted_at.eq(attempted),
                )
            },
        )
        .collect();
    insert_one_or_many!(conn, s::table, values);
    Ok(())
}

/// The request's users, each with the values its bookkeeping row is made with if absent
/// ([`Request::initial`] by position; `new_user` past its end).
pub(super) fn with_initial<'a>(
    request: &'a Request,
    new_user: &'a Bookkeeping,
) -> Vec<(&'a String, &'a Bookkeeping)> {
    let initial = request.initial.iter().chain(std::iter::repeat(new_user));
    request.users.iter().zip(initial).collect()
}

/// `column IN (values)` with the values bound as one JSON array, so that the statement is the
/// same whatever their number: prepared once per connection and cached, where an
/// `IN (?, ?, …)` list is a new statement, parsed again, for every length.
#[derive(Debug, Clone, diesel::query_builder::QueryId)]
pub(super) struct InJson<C> {
    column: C,
    values: String,
}

pub(super) fn in_json<C>(column: C, values: &[impl AsRef<str>]) -> QueryResult<InJson<C>> {
    let values: Vec<&str> = values.iter().map(AsRef::as_ref).collect();
    let values =
        serde_json::to_string(&values).map_err(|e| DieselError::SerializationError(Box::new(e)))?;
    Ok(InJson { column, values })
}

impl<C: diesel::Expression> diesel::Expression for InJson<C> {
    type SqlType = diesel::sql_types::Bool;
}

impl<C, QS> diesel::AppearsOnTable<QS> for InJson<C> where C: diesel::AppearsOnTable<QS> {}

impl<C, GB> diesel::expression::ValidGrouping<GB> for InJson<C>
where
    C: diesel::expression::ValidGrouping<GB>,
{
    type IsAggregate = C::IsAggregate;
}

impl<C> diesel::query_builder::QueryFragment<diesel::sqlite::Sqlite> for InJson<C>
where
    C: diesel::query_builder::QueryFragment<diesel::sqlite::Sqlite>,
{
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, diesel::sqlite::Sqlite>,
    ) -> QueryResult<()> {
        self.column.walk_ast(out.reborrow())?;
        out.push_sql(" IN (SELECT value FROM json_each(");
        out.push_bind_param::<Text, _>(&self.values)?;
        out.push_sql("))");
        Ok(())
    }
}

/// [`read`] for many users: the same snapshot, a set of keys per statement.
fn read_many(conn: &mut SqliteConnection, request: &Request) -> QueryResult<Snapshot> {
    let mut snapshot = Snapshot::default();
    let mut addresses: Vec<String> = request.claims.clone();
    let new_user = Bookkeeping::new_user();
    for chunk in with_initial(request, &new_user).chunks(CHUNK) {
        let users: Vec<&String> = chunk.iter().map(|(user, _)| *user).collect();
        let rows: Vec<StoredRow> = s::table
            .filter(in_json(s::user_id, &users)?)
            .select(bookkeeping())
            .load(conn)?;
        note_found(chunk, rows, &mut snapshot, &mut addresses);
        let rows: Vec<(String, String, String)> = u::table
            .filter(in_json(u::id, &users)?)
            .select((u::id, u::mail_address, u::updated_at))
            .load(conn)?;
        for row in rows {
            addresses.push(row.1.clone());
            note_row(&mut snapshot, row);
        }
    }
    addresses.sort_unstable();
    addresses.dedup();
    let (mut holders, mut claimants) = (Vec::new(), Vec::new());
    for chunk in addresses.chunks(CHUNK) {
        let rows: Vec<(String, String, String)> = u::table
            .filter(in_json(u::mail_address, chunk)?)
            .select((u::id, u::mail_address, u::updated_at))
            .load(conn)?;
        for row in rows {
            if !snapshot.users.contains_key(&row.0) {
                holders.push(row.0.clone());
            }
            note_row(&mut snapshot, row);
        }
        note_claimants(conn, chunk, &mut snapshot, &mut claimants)?;
    }
    note_holders(conn, &holders, &mut snapshot)?;
    for chunk in claimants.chunks(CHUNK) {
        let rows: Vec<(String, String, String)> = u::table
            .filter(in_json(u::id, chunk)?)
            .select((u::id, u::mail_address, u::updated_at))
            .load(conn)?;
        for row in rows {
            note_row(&mut snapshot, row);
        }
    }
    snapshot.addresses = addresses.into_iter().collect();
    note_recorded(conn, &request.ids, &mut snapshot)?;
    Ok(snapshot)
}

/// Notes the bookkeeping rows of the users claiming `addresses` (at most [`CHUNK`]) not noted
/// yet; adds those without an application row noted to `claimants`.
pub(super) fn note_claimants(
    conn: &mut SqliteConnection,
    addresses: &[String],
    snapshot: &mut Snapshot,
    claimants: &mut Vec<String>,
) -> QueryResult<()> {
    let rows: Vec<StoredRow> = s::table
        .filter(in_json(s::email, addresses)?)
        .select(bookkeeping())
        .load(conn)?;
    for row in rows {
        if !snapshot.rows.contains_key(&row.0) {
            claimants.push(row.0.clone());
        }
        if !snapshot.users.contains_key(&row.0) {
            snapshot.add_bookkeeping(row);
        }
    }
    Ok(())
}

/// Notes the bookkeeping rows of `holders` (users whose rows hold a locked address).
pub(super) fn note_holders(
    conn: &mut SqliteConnection,
    holders: &[String],
    snapshot: &mut Snapshot,
) -> QueryResult<()> {
    for chunk in holders.chunks(CHUNK) {
        let rows: Vec<StoredRow> = s::table
            .filter(in_json(s::user_id, chunk)?)
            .select(bookkeeping())
            .load(conn)?;
        for row in rows {
            snapshot.add_bookkeeping(row);
        }
    }
    Ok(())
}

/// Notes which of `ids` are recorded deliveries.
pub(super) fn note_recorded(
    conn: &mut SqliteConnection,
    ids: &[String],
    snapshot: &mut Snapshot,
) -> QueryResult<()> {
    for ids in ids.chunks(CHUNK) {
        let recorded: Vec<String> = d::table
            .filter(in_json(d::svix_id, ids)?)
            .select(d::svix_id)
            .load(conn)?;
        snapshot.recorded.extend(recorded);
    }
    Ok(())
}

/// Reads the snapshot (the caller holds the transaction). The request's bookkeeping rows
/// found absent are noted as made ([`Snapshot::made`]) but made by [`write`], in the same
/// transaction: SQLite's one writer holds the tables from here to the commit.
pub fn read(conn: &mut SqliteConnection, request: &Request) -> QueryResult<Snapshot> {
    if request.users.len() > FEW {
        return read_many(conn, request);
    }
    let mut snapshot = Snapshot::default();
    let mut addresses: Vec<String> = request.claims.clone();
    let new_user = Bookkeeping::new_user();
    for one in with_initial(request, &new_user).chunks(1) {
        let user = one[0].0;
        let row: Option<StoredRow> = s::table
            .find(user)
            .select(bookkeeping())
            .first(conn)
            .optional()?;
        note_found(
            one,
            row.into_iter().collect(),
            &mut snapshot,
            &mut addresses,
        );
        let row: Option<(String, String, String)> = u::table
            .find(user)
            .select((u::id, u::mail_address, u::updated_at))
            .first(conn)
            .optional()?;
        if let Some(row) = row {
            addresses.push(row.1.clone());
            note_row(&mut snapshot, row);
        }
    }
    addresses.sort_unstable();
    addresses.dedup();
    for address in &addresses {
        let holder: Option<(String, String, String)> = u::table
            .filter(u::mail_address.eq(address))
            .select((u::id, u::mail_address, u::updated_at))
            .first(conn)
            .optional()?;
        if let Some(holder) = holder {
            if !snapshot.users.contains_key(&holder.0) {
                let bookkeeping: Option<StoredRow> = s::table
                    .find(&holder.0)
                    .select(bookkeeping())
                    .first(conn)
                    .optional()?;
                if let Some(row) = bookkeeping {
                    snapshot.add_bookkeeping(row);
                }
            }
            note_row(&mut snapshot, holder);
        }
        let claimants: Vec<StoredRow> = s::table
            .filter(s::email.eq(address))
            .select(bookkeeping())
            .load(conn)?;
        for claimant in claimants {
            if !snapshot.rows.contains_key(&claimant.0) {
                let row: Option<(String, String, String)> = u::table
                    .find(&claimant.0)
                    .select((u::id, u::mail_address, u::updated_at))
                    .first(conn)
                    .optional()?;
                if let Some(row) = row {
                    note_row(&mut snapshot, row);
                }
            }
            if !snapshot.users.contains_key(&claimant.0) {
                snapshot.add_bookkeeping(claimant);
            }
        }
    }
    snapshot.addresses = addresses.into_iter().collect();
    for id in &request.ids {
        let recorded: Option<String> = d::table
            .find(id)
            .select(d::svix_id)
            .first(conn)
            .optional()?;
        snapshot.recorded.extend(recorded);
    }
    Ok(snapshot)
}

diesel::define_sql_function! {
    /// SQL's `coalesce` of two texts: the first that is not NULL.
    fn coalesce(first: Nullable<Text>, second: Nullable<Text>) -> Nullable<Text>;
}

/// Up to this many rows of one kind, they are written one statement per row (statements
/// prepared once); beyond it, many rows per statement (prepared each time, as its length
/// varies).
const ONE_BY_ONE: usize = FEW;

/// Writes bookkeeping rows (they exist: read, or made before this): the planned columns, the
/// tombstone's time (`now`) where asked and none is there, the delete attempt's time (`now`)
/// where asked.
pub(super) fn write_bookkeeping<B: Borrow<BookkeepingWrite>>(
    conn: &mut SqliteConnection,
    rows: &[B],
    now: &str,
) -> QueryResult<()> {
    if rows.len() <= ONE_BY_ONE {
        for b in rows {
            let b = b.borrow();
            let binds = vec![
                Bound::BigInt(Some(b.version)),
                Bound::Text(Some(Cow::Borrowed(&b.digest))),
                Bound::Text(b.email.as_deref().map(Cow::Borrowed)),
                Bound::Integer(Some(i32::from(b.role_from_webhook))),
                Bound::Integer(Some(i32::from(b.tombstone))),
                Bound::Text(Some(Cow::Borrowed(now))),
                Bound::Integer(Some(i32::from(b.attempted))),
                Bound::Text(Some(Cow::Borrowed(now))),
                Bound::Text(Some(Cow::Borrowed(&b.user_id))),
            ];
            Statement {
                sql: &WRITE_ONE_BOOKKEEPING,
                binds,
            }
            .execute(conn)?;
        }
        return Ok(());
    }
    // Many: upserts on the user that always update (the rows exist). The tombstone's and the
    // attempt's times are inserted as `now` where asked and NULL elsewhere, and the update
    // keeps a stored tombstone and a stored attempt where none is asked.
    for chunk in rows.chunks(CHUNK) {
        let values: Vec<_> = chunk
            .iter()
            .map(|b| {
                let b = b.borrow();
                (
                    s::user_id.eq(&b.user_id),
                    s::version.eq(b.version),
                    s::digest.eq(&b.digest),
                    s::email.eq(b.email.as_deref()),
                    s::role_from_webhook.eq(b.role_from_webhook),
                    s::deleted_at.eq(b.tombstone.then_some(now)),
                    s::delete_attempted_at.eq(b.attempted.then_some(now)),
                )
            })
            .collect();
        diesel::insert_into(s::table)
            .values(values)
            .on_conflict(s::user_id)
            .do_update()
            .set((
                s::version.eq(excluded(s::version)),
                s::digest.eq(excluded(s::digest)),
                s::email.eq(excluded(s::email)),
                s::role_from_webhook.eq(excluded(s::role_from_webhook)),
                s::deleted_at.eq(coalesce(s::deleted_at, excluded(s::deleted_at))),
                s::delete_attempted_at.eq(coalesce(
                    excluded(s::delete_attempted_at),
                    s::delete_attempted_at,
                )),
            ))
            .execute(conn)?;
    }
    Ok(())
}

/// An application row's values to insert (a role of none: see where it is used).
macro_rules! row_values {
    ($row:expr) => {
        (
            u::id.eq(&$row.id),
            u::name.eq($row.name.as_deref()),
            u::mail_address.eq(&$row.address),
            u::role.eq($row.role.unwrap_or(Role::User).as_db()),
            u::created_at.eq(prisma_date($row.created_at)),
            u::updated_at.eq(prisma_date($row.updated_at)),
        )
    };
}

/// Writes application rows: existing ones updated (a role of none leaves the row's own),
/// then new ones inserted. (The planner has moved every row off an address another of these
/// rows takes, so their order among themselves does not matter.)
fn write_rows(conn: &mut SqliteConnection, rows: &[RowWrite]) -> QueryResult<()> {
    let (mut set_role, mut keep_role, mut new_rows) = (Vec::new(), Vec::new(), Vec::new());
    for row in rows {
        match (row.exists, row.role) {
            (false, None) => {
                return Err(DieselError::QueryBuilderError(
                    "a new row was planned without a role".into(),
                ))
            }
            (false, Some(role)) => new_rows.push((row, role)),
            (true, Some(_)) => set_role.push(row),
            (true, None) => keep_role.push(row),
        }
    }
    for (part, with_role) in [(set_role, true), (keep_role, false)] {
        if part.len() <= ONE_BY_ONE {
            // SQLite's one writer holds the table since the read: the rows are there.
            for row in part {
                let binds = vec![
                    Bound::Text(row.name.as_deref().map(Cow::Borrowed)),
                    Bound::Text(Some(Cow::Borrowed(&row.address))),
                    Bound::Text(Some(Cow::Owned(prisma_date(row.created_at)))),
                    Bound::Text(Some(Cow::Owned(prisma_date(row.updated_at)))),
                    Bound::Text(row.role.map(|role| Cow::Borrowed(role.as_db()))),
                    Bound::Text(Some(Cow::Borrowed(&row.id))),
                ];
                Statement {
                    sql: &UPDATE_ONE_ROW,
                    binds,
                }
                .execute(conn)?;
            }
            continue;
        }
        // Upserts on the id that always update (the rows exist; a role of none is inserted
        // as USER but never read). SQLite checks an upsert's conflict target before the
        // table's other unique indexes (`sqlite3GenerateConstraintChecks`, since 3.25), so
        // a row keeping its address is an update of itself, not a clash on `mail_address`.
        let part: Vec<_> = part.iter().map(|row| row_values!(row)).collect();
        for chunk in part.chunks(CHUNK) {
            let upsert = diesel::insert_into(u::table)
                .values(chunk)
                .on_conflict(u::id)
                .do_update();
            if with_role {
                upsert
                    .set((
                        u::name.eq(excluded(u::name)),
                        u::mail_address.eq(excluded(u::mail_address)),
                        u::role.eq(excluded(u::role)),
                        u::created_at.eq(excluded(u::created_at)),
                        u::updated_at.eq(excluded(u::updated_at)),
                    ))
                    .execute(conn)?;
            } else {
                upsert
                    .set((
                        u::name.eq(excluded(u::name)),
                        u::mail_address.eq(excluded(u::mail_address)),
                        u::created_at.eq(excluded(u::created_at)),
                        u::updated_at.eq(excluded(u::updated_at)),
                    ))
                    .execute(conn)?;
            }
        }
    }
    let many = new_rows.chunks_exact(MADE_PER_STATEMENT);
    let rest = many.remainder();
    for chunk in many {
        let mut binds = Vec::with_capacity(6 * MADE_PER_STATEMENT);
        for (row, role) in chunk {
            binds.extend([
                Bound::Text(Some(Cow::Borrowed(&row.id))),
                Bound::Text(row.name.as_deref().map(Cow::Borrowed)),
                Bound::Text(Some(Cow::Borrowed(&row.address))),
                Bound::Text(Some(Cow::Borrowed(role.as_db()))),
                Bound::Text(Some(Cow::Owned(prisma_date(row.created_at)))),
                Bound::Text(Some(Cow::Owned(prisma_date(row.updated_at)))),
            ]);
        }
        Statement {
            sql: &INSERT_MANY_ROWS,
            binds,
        }
        .execute(conn)?;
    }
    let rest: Vec<_> = rest.iter().map(|(row, _)| row_values!(row)).collect();
    insert_one_or_many!(conn, u::table, rest);
    Ok(())
}

/// Writes `writes`, planned over `snapshot` as [`read`] read it for `request`, in the port's
/// order, the bookkeeping rows the read found absent made first (the caller holds the
/// transaction); answers which deletes went through.
pub fn write(
    conn: &mut SqliteConnection,
    request: &Request,
    snapshot: &Snapshot,
    writes: &Writes,
) -> QueryResult<Deleted> {
    let now = prisma_date(Utc::now());
    let (made, kept): (Vec<&BookkeepingWrite>, Vec<&BookkeepingWrite>) = writes
        .bookkeeping
        .iter()
        .partition(|b| snapshot.made.contains(&b.user_id));
    make_noted_users(conn, request, snapshot, &made, &now)?;
    write_bookkeeping(conn, &kept, &now)?;
    for id in &writes.vacate {
        diesel::update(u::table.find(id))
            .set(u::mail_address.eq(moving(id)))
            .execute(conn)?;
    }
    write_rows(conn, &writes.rows)?;
    for (id, address) in &writes.moves {
        diesel::update(u::table.find(id))
            .set(u::mail_address.eq(address))
            .execute(conn)?;
    }
    let mut deleted = Deleted::default();
    for user in &writes.deletes {
        // A savepoint, so that a refused delete leaves the rest of the transaction intact.
        let attempt = conn.transaction(|c| diesel::delete(u::table.find(user)).execute(c));
        let done = match attempt {
            Ok(_) => true,
            Err(error) if refused_by_foreign_key(&error) => false,
            Err(other) => return Err(other),
        };
        diesel::update(s::table.find(user))
            .set(s::delete_pending.eq(!done))
            .execute(conn)?;
        if done {
            deleted.0.insert(user.clone());
        }
    }
    write_records(conn, &writes.record, &deleted, &now)?;
    Ok(deleted)
}

/// Whether a delete failed because the application's foreign keys refused it.
pub(super) fn refused_by_foreign_key(error: &DieselError) -> bool {
    match error {
        // SQLite reports the violation with the plain (not extended) error code, so diesel
        // does not classify it; its message is fixed by SQLite.
        DieselError::DatabaseError(kind, info) => {
            *kind == DatabaseErrorKind::ForeignKeyViolation
                || info.message().contains("FOREIGN KEY constraint failed")
        }
        _ => false,
    }
}

/// Records deliveries, received `now`: each with its outcome, or its outcome-if-refused when
/// its user is not among those `deleted`.
pub(super) fn write_records(
    conn: &mut SqliteConnection,
    records: &[Record],
    deleted: &Deleted,
    now: &str,
) -> QueryResult<()> {
    let records: Vec<_> = records
        .iter()
        .map(|record| {
            let refused = record
                .user_id
                .as_ref()
                .is_some_and(|user| !deleted.0.contains(user));
            let outcome = match record.if_refused {
                Some(instead) if refused => instead,
                _ => record.outcome,
            };
            (
                d::svix_id.eq(&record.svix_id),
                d::event_type.eq(&record.event_type),
                d::user_id.eq(record.user_id.as_deref()),
                d::outcome.eq(outcome.as_str()),
                d::received_at.eq(now),
            )
        })
        .collect::<Vec<_>>();
    if records.len() == 1 {
        // One record: a statement prepared once per connection.
        for one in records {
            diesel::insert_into(d::table).values(one).execute(conn)?;
        }
        return Ok(());
    }
    for chunk in records.chunks(CHUNK) {
        diesel::insert_into(d::table).values(chunk).execute(conn)?;
    }
    Ok(())
}

/// Deferred deletes, the longest-waiting first (SQLite sorts NULL first).
pub fn pending_deletes(conn: &mut SqliteConnection, limit: i64) -> QueryResult<Vec<String>> {
    s::table
        .filter(s::delete_pending.eq(true))
        .order((s::delete_attempted_at.asc(), s::user_id.asc()))
        .select(s::user_id)
        .limit(limit)
        .load(conn)
}

#[cfg(test)]
mod tests {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;

    use super::*;

    fn bookkeeping_table() -> SqliteConnection {
        let mut conn = SqliteConnection::establish(":memory:").expect("an in-memory database");
        conn.batch_execute(include_str!(
            "../../migrations/sqlite/2026-11-27-000001_bookkeeping/up.sql"
        ))
        .expect("the bookkeeping tables");
        conn
    }

    fn planned(user: &str, tombstone: bool, attempted: bool) -> BookkeepingWrite {
        BookkeepingWrite {
            user_id: user.to_owned(),
            version: 7,
            digest: "d7".to_owned(),
            email: Some(format!("{user}@example.com")),
            role_from_webhook: true,
            tombstone,
            attempted,
        }
    }

    type Stored = (
        String,
        i64,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        bool,
    );

    fn stored(conn: &mut SqliteConnection) -> Vec<Stored> {
        s::table
            .order(s::user_id)
            .select((
                s::user_id,
                s::version,
                s::digest,
                s::email,
                s::deleted_at,
                s::delete_attempted_at,
                s::role_from_webhook,
            ))
            .load(conn)
            .expect("the bookkeeping rows")
    }

    /// Many bookkeeping rows (one statement) and a few (one each) are written alike: the
    /// planned columns, a tombstone only where none is there, an attempt only where asked.
    #[test]
    fn many_bookkeeping_rows_are_written_as_a_few_are() {
        for many in [false, true] {
            let mut conn = bookkeeping_table();
            let users: Vec<String> = (0..if many { 3 * ONE_BY_ONE } else { 4 })
                .map(|i| format!("user_{i:02}"))
                .collect();
            for user in &users {
                diesel::insert_into(s::table)
                    .values((s::user_id.eq(user), s::version.eq(1), s::digest.eq("d1")))
                    .execute(&mut conn)
                    .expect("a row");
            }
            // The first user's tombstone and attempt are older than this write.
            diesel::update(s::table.find(&users[0]))
                .set((s::deleted_at.eq("then"), s::delete_attempted_at.eq("then")))
                .execute(&mut conn)
                .expect("an old tombstone");
            let writes: Vec<BookkeepingWrite> = users
                .iter()
                .enumerate()
                .map(|(i, user)| planned(user, i % 2 == 0, i % 3 == 0))
                .collect();

            write_bookkeeping(&mut conn, &writes, "now").expect("the write");

            let rows = stored(&mut conn);
            assert_eq!(rows.len(), users.len());
            for (i, row) in rows.into_iter().enumerate() {
                let tombstone = match i {
                    0 => Some("then"),
                    _ if i % 2 == 0 => Some("now"),
                    _ => None,
                };
                let attempt = match i {
                    0 => Some("now"),
                    _ if i % 3 == 0 => Some("now"),
                    _ => None,
                };
                let expected: Stored = (
                    users[i].clone(),
                    7,
                    "d7".to_owned(),
                    Some(format!("{}@example.com", users[i])),
                    tombstone.map(str::to_owned),
                    attempt.map(str::to_owned),
                    true,
                );
                assert_eq!(row, expected, "many: {many}");
            }
        }
    }

    /// Many existing rows (upserts on the id) and a few (updates) are written alike: each
    /// keeps its own address or takes a free one, a role of none keeps the row's own; new
    /// rows are inserted.
    #[test]
    fn many_rows_are_written_as_a_few_are() {
        for many in [false, true] {
            let mut conn = SqliteConnection::establish(":memory:").expect("a database");
            conn.batch_execute(crate::db::app_table::SQLITE_USER_DDL)
                .expect("the User table");
            // Many: each group (role set, role kept) past ONE_BY_ONE.
            let n = if many { 4 * ONE_BY_ONE } else { 4 };
            let at = DateTime::from_timestamp_millis(1_700_000_000_000).expect("a date");
            for i in 0..n {
                diesel::insert_into(u::table)
                    .values((
                        u::id.eq(format!("user_{i:02}")),
                        u::mail_address.eq(format!("{i}@old.example")),
                        u::role.eq("ADMIN"),
                        u::updated_at.eq("then"),
                    ))
                    .execute(&mut conn)
                    .expect("a row");
            }
            let write = |i: usize, exists: bool| RowWrite {
                id: format!("user_{i:02}"),
                name: Some(format!("name {i}")),
                // Even rows keep their address, odd ones take a new one.
                address: match i % 2 {
                    0 => format!("{i}@old.example"),
                    _ => format!("{i}@new.example"),
                },
                role: (i % 4 < 2 || !exists).then_some(Role::User),
                exists,
                created_at: at,
                updated_at: at,
                digest: String::new(),
            };
            let mut rows: Vec<RowWrite> = (0..n).map(|i| write(i, true)).collect();
            rows.extend((n..n + 3).map(|i| write(i, false)));

            write_rows(&mut conn, &rows).expect("the write");

            let stored: Vec<(String, Option<String>, String, String, String)> = u::table
                .order(u::id)
                .select((u::id, u::name, u::mail_address, u::role, u::updated_at))
                .load(&mut conn)
                .expect("the rows");
            let expected: Vec<_> = rows
                .iter()
                .map(|r| {
                    let role = match r.role {
                        Some(role) => role.as_db(),
                        None => "ADMIN",
                    };
                    let date = prisma_date(at);
                    (
                        r.id.clone(),
                        r.name.clone(),
                        r.address.clone(),
                        role.to_owned(),
                        date,
                    )
                })
                .collect();
            assert_eq!(stored, expected, "many: {many}");
        }
    }
}
