//! The port on PostgreSQL for a mapped table (see [`crate::domain::table::WriteShape`]): the
//! same unit of work as [`super::pg_port`], its statements built from the shape.
//!
//! Statements: each is a [`Statement`], whose text depends on the shape and on which columns a
//! write names, never on a value or on how many rows it writes (several rows go in as one
//! array per column, `unnest`ed). diesel-async keeps such a statement prepared on its
//! connection, keyed by its text and its parameters' types, so a connection prepares each one
//! once. (`diesel::sql_query` would not do: it marks itself unsafe to cache, and every
//! execution would be prepared anew, one more round trip.) Through a transaction pooler the
//! cache is off, and each statement is prepared within its transaction.
//!
//! Values: every value is bound as text and cast in the statement to its column's type, by
//! the column's [`Bind`]; identifiers only ever through [`quoted`].
//!
//! Round trips of one unit of work: `BEGIN` pipelined with the users' lock, the address locks
//! (only with a unique address column) and the read — one call of the shape's [`Executor`]
//! where it is there (made where migrations run), else the three statements; then a plan that writes bookkeeping, one
//! set of inserted columns, one set of updated ones and records (every lone delivery's) is one
//! statement, pipelined with `COMMIT`: two round trips, as the seed's port. Any other plan
//! writes a statement per kind of write (one per list of columns, one per delete), then
//! `COMMIT`. The first time a connection runs a statement it prepares it first (a round trip
//! more); through a pooler, where every statement is prepared in its transaction, `COMMIT`
//! follows the write instead of being pipelined with it.
//!
//! Errors: as `DbError::from` classes diesel's, with the server's message cut before any
//! quoted value it echoes (`invalid input syntax for type uuid: "…"`): no user data reaches an
//! error.

use std::future::Future as _;
use std::sync::Arc;
use std::task::Poll;

use diesel::pg::Pg as PgBackend;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{Array, BigInt, Bool, Nullable, Text, Untyped};
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use foldhash::{HashMap, HashSet};
use sha2::{Digest as _, Sha256};

use super::pg_port::{lone_request, InTransaction, BY_KEY};
use super::port::{
    moving, Bookkeeping, BookkeepingWrite, Deleted, MappedWrites, Record, Request, Snapshot, Writes,
};
use super::postgres::Pg;
use super::DbError;
use crate::domain::table::{quoted, Bind, WriteColumn, WriteShape};
use crate::domain::{Outcome, Value};

impl Pg {
    /// One unit of work on a mapped table: lock and read `request`, plan, write, commit (the
    /// steps of [`super::port`], on `shape`'s table). `BEGIN` (through a pooler, with its
    /// `SET LOCAL`s) is pipelined with the locks and the read; the write with `COMMIT` where
    /// it is one statement (see the module's doc). diesel does not see this transaction: it is
    /// ended here, whatever happens.
    pub(super) async fn transact_mapped<T, F>(
        &self,
        shape: Arc<WriteShape>,
        request: Request,
        plan: F,
    ) -> Result<(T, Deleted), DbError>
    where
        F: FnOnce(&Snapshot) -> Result<(Writes, T), DbError>,
    {
        // Checked before a connection is taken: a shape naming a column it lacks is a bug.
        let table = self.mapped_table(&shape)?;
        let open = InTransaction(Some(self.pool.get().await?));
        let conn: &AsyncPgConnection = open.connection()?;
        let result = async {
            let (mut begin_on, mut users_on, mut addresses_on, mut read_on) =
                (conn, conn, conn, conn);
            // One round trip: BEGIN goes first on the first poll, then each statement in
            // turn, each its own snapshot after the locks before it. A statement not yet
            // prepared on this connection holds diesel-async's statement cache while it is
            // prepared, so the ones after it wait and still run after it.
            let begin_sql = format!("{}; {GENERIC}; {BY_KEY}", self.begin_sql());
            let begin = begin_on.batch_execute(&begin_sql);
            if let Some(executor) = self.executor.get() {
                let read = executor.call(&request).load::<ReadRow>(&mut read_on);
                let (begun, read) = futures_util::future::join(begin, read).await;
                begun.map_err(db_error)?;
                let snapshot = snapshot(Vec::new(), Vec::new(), read.map_err(db_error)?);
                return self.write_and_commit(conn, &table, snapshot, plan).await;
            }
            let users = lock_users(&request).load::<Name>(&mut users_on);
            let addresses = async {
                match table.address {
                    Some(_) => table
                        .lock_addresses(&request)
                        .get_result::<Addresses>(&mut addresses_on)
                        .await
                        .map(|locked| locked.addresses),
                    None => Ok(Vec::new()),
                }
            };
            let read = table.read(&request, None).load::<ReadRow>(&mut read_on);
            let (begun, made, addresses, read) =
                futures_util::future::join4(begin, users, addresses, read).await;
            begun.map_err(db_error)?;
            let made = made.map_err(db_error)?;
            let addresses = addresses.map_err(db_error)?;
            let read = read.map_err(db_error)?;
            // The read found the involved addresses again, after the locks: the snapshot holds
            // every holder and claimant of the locked ones only if they are the same.
            let found: HashSet<&str> = read
                .iter()
                .filter(|row| row.locked)
                .filter_map(|row| row.address.as_deref())
                .collect();
            if found
                != addresses
                    .iter()
                    .map(String::as_str)
                    .collect::<HashSet<&str>>()
            {
                return Err(DbError::Unavailable(
                    "the addresses involved changed between the lock and the read; retry".into(),
                ));
            }
            let snapshot = snapshot(made, addresses, read);
            self.write_and_commit(conn, &table, snapshot, plan).await
        }
        .await;
        // No transaction may outlive this unit of work on a connection the pool hands out
        // again: after a failure it is rolled back; if even that fails, `open` drops the
        // connection instead of returning it.
        let mut on = conn;
        if result.is_ok() || on.batch_execute("ROLLBACK").await.is_ok() {
            open.release();
        }
        result
    }

    /// The rest of a unit of work once read: plan, write, commit.
    async fn write_and_commit<T, F>(
        &self,
        conn: &AsyncPgConnection,
        table: &Table,
        snapshot: Snapshot,
        plan: F,
    ) -> Result<(T, Deleted), DbError>
    where
        F: FnOnce(&Snapshot) -> Result<(Writes, T), DbError>,
    {
        let (writes, value) = plan(&snapshot)?;
        let mut on = conn;
        if writes.is_empty() {
            on.batch_execute("COMMIT").await.map_err(db_error)?;
            return Ok((value, Deleted::default()));
        }
        // Through a pooler every statement is prepared in its transaction: a COMMIT
        // statement there would cost a round trip more than `batch_execute`'s.
        let commit = !self.pooler().safe();
        let (done, committed) = write(conn, table, &writes, commit).await?;
        if !committed {
            on.batch_execute("COMMIT").await.map_err(db_error)?;
        }
        Ok((value, Deleted(done)))
    }
}

impl Pg {
    /// Uses the mapped table's [`Executor`] from now on if it is there and the pool's role may
    /// call it, making it first where it is absent and `create` allows (where migrations
    /// run, on their server, under their lock); answers whether it is used. Without it (`--no-migrate` before any instance made it), the statements are
    /// pipelined instead, as the module's doc says.
    pub(super) async fn prepare_mapped(&self, create: bool) -> Result<bool, DbError> {
        let Some(shape) = self.shape.get().cloned() else {
            return Ok(false);
        };
        if self.executor.get().is_some() {
            return Ok(true);
        }
        let executor = self.mapped_table(&shape)?.executor()?;
        let [many, one] = &executor.signatures;
        if create {
            // The DDL makes both, the lone one second.
            self.ensure_function(one, &executor.ddl).await?;
        }
        // Checked as the role that calls them (`DIRECT_URL`'s may have made them).
        let usable = self.function_usable(many).await? && self.function_usable(one).await?;
        if usable {
            // Another caller may have set the same one meanwhile.
            let _ = self.executor.set(executor);
        }
        Ok(usable)
    }
}

impl Pg {
    /// `shape`'s [`Table`], made once (with the texts of its writes).
    fn mapped_table(&self, shape: &Arc<WriteShape>) -> Result<Arc<Table>, DbError> {
        if let Some(table) = self.table.get().filter(|t| Arc::ptr_eq(&t.shape, shape)) {
            return Ok(table.clone());
        }
        let table = Arc::new(Table::new(shape.clone())?);
        // Another caller may have set it meanwhile: the same shape, the same table.
        let _ = self.table.set(table.clone());
        Ok(table)
    }
}

/// How the statements of a unit of work on a mapped table are planned, set for its
/// transaction: one generic plan per statement and connection (a custom plan would be
/// planned anew on every call), reaching every table by its keys. That plan is made once, the
/// first time a connection runs the statement, often while the tables are still small
/// (a table never analyzed counts as ten pages), and kept until the table is next analyzed:
/// a plan free to choose would read a small table whole, or hash it, and go on doing so as
/// it grows ([`BY_KEY`]). (The statements reach each table by key besides, see
/// [`Table::read`].)
const GENERIC: &str = "SET LOCAL plan_cache_mode = force_generic_plan";

/// The snapshot from what the lock and the read answered.
fn snapshot(made: Vec<Name>, addresses: Vec<String>, read: Vec<ReadRow>) -> Snapshot {
    let mut snapshot = Snapshot {
        made: made.into_iter().map(|n| n.user_id).collect(),
        addresses: addresses.into_iter().collect(),
        ..Snapshot::default()
    };
    for row in read {
        if row.made {
            snapshot.made.insert(row.id);
            continue;
        }
        if row.locked {
            snapshot.addresses.extend(row.address);
            continue;
        }
        if row.foreign {
            snapshot.foreign.extend(row.address);
            continue;
        }
        if row.recorded {
            snapshot.recorded.insert(row.id);
            continue;
        }
        if row.held {
            snapshot.add_row(row.id.clone(), row.address, row.updated_ms.unwrap_or(0));
        }
        if row.kept {
            snapshot.add_bookkeeping((
                row.id,
                row.version.unwrap_or(-1),
                row.digest.unwrap_or_default(),
                row.email,
                row.deleted,
                row.delete_pending,
                row.role_from_webhook,
            ));
        }
    }
    snapshot
}

/// Writes the plan, in the port's order; answers the users whose rows were deleted, and
/// whether it committed too (`commit`: it may pipeline `COMMIT` after a lone statement).
async fn write(
    mut on: &AsyncPgConnection,
    table: &Table,
    writes: &Writes,
    commit: bool,
) -> Result<(HashSet<String>, bool), DbError> {
    let mapped = match writes.mapped.as_deref() {
        Some(mapped)
            if mapped.rows.len() == writes.rows.len()
                && mapped.moves.len() == writes.moves.len() =>
        {
            mapped
        }
        Some(_) => {
            return Err(DbError::Internal(
                "a mapped plan whose column values do not match its rows or moves".into(),
            ))
        }
        None => {
            return Err(DbError::Internal(
                "a plan for a mapped table without its column values".into(),
            ))
        }
    };
    // As the seed port: every insert, then every update.
    let rows = writes.rows.iter().zip(&mapped.rows);
    let inserts: Vec<_> = rows
        .clone()
        .filter(|(row, _)| !row.exists)
        .map(|(row, values)| (row.id.as_str(), values.insert.as_slice()))
        .collect();
    let updates: Vec<_> = rows
        .filter(|(row, _)| row.exists)
        .map(|(row, values)| (row.id.as_str(), values.update.as_slice()))
        .collect();
    let (insert_groups, update_groups) = (groups(&inserts), groups(&updates));
    let one_statement = writes.vacate.is_empty()
        && writes.moves.is_empty()
        && writes.deletes.is_empty()
        && insert_groups.len() <= 1
        && update_groups.len() <= 1
        && insert_groups
            .iter()
            .chain(&update_groups)
            .all(|(columns, _)| !columns.is_empty());
    if one_statement {
        let statement = together(table, writes, &insert_groups, &update_groups)?;
        let mut write_on = on;
        let mut write = std::pin::pin!(statement.get_result::<Written>(&mut write_on));
        if !commit {
            return Ok((written(write.await)?, false));
        }
        // The first poll sends the write (or fails before sending anything: no COMMIT then).
        let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
        if let Poll::Ready(done) = first {
            return Ok((written(done)?, false));
        }
        // The COMMIT goes through diesel-async's statement cache too (a statement prepared
        // once per connection), so it is sent after the write's execution even while the
        // write is still being prepared. A write that fails leaves the transaction aborted,
        // and the COMMIT then rolls it back.
        let mut commit_on = on;
        let commit = Statement::new("COMMIT").execute(&mut commit_on);
        let (done, committed) = futures_util::future::join(write, commit).await;
        let done = written(done)?;
        committed.map_err(db_error)?;
        return Ok((done, true));
    }
    if !writes.bookkeeping.is_empty() {
        Statement::build(|s| {
            bookkeeping(s, writes);
            Ok(())
        })?
        .execute(&mut on)
        .await
        .map_err(db_error)?;
    }
    if !writes.vacate.is_empty() {
        let placeholders = writes.vacate.iter().map(|id| Some(moving(id))).collect();
        table
            .set_address(writes.vacate.clone(), placeholders)?
            .execute(&mut on)
            .await
            .map_err(db_error)?;
    }
    for (columns, group) in insert_groups {
        if columns.is_empty() {
            for _ in &group {
                let sql = format!("INSERT INTO {} DEFAULT VALUES", table.name);
                Statement::new(&sql)
                    .execute(&mut on)
                    .await
                    .map_err(db_error)?;
            }
            continue;
        }
        Statement::build(|s| table.insert(s, &columns, &group))?
            .execute(&mut on)
            .await
            .map_err(db_error)?;
    }
    for (columns, group) in update_groups {
        let found = if columns.is_empty() {
            // Nothing to write, but the row must still be there.
            let ids = group.iter().map(|(id, _)| (*id).to_owned()).collect();
            let count: Count = table
                .count(ids)
                .get_result(&mut on)
                .await
                .map_err(db_error)?;
            usize::try_from(count.n).unwrap_or(0)
        } else {
            Statement::build(|s| table.update(s, &columns, &group))?
                .execute(&mut on)
                .await
                .map_err(db_error)?
        };
        if found != group.len() {
            // The application deleted a row since the lock was taken: the next attempt
            // inserts it.
            return Err(DbError::Unavailable(
                "a row of the plan was deleted concurrently; retry".into(),
            ));
        }
    }
    if !writes.moves.is_empty() {
        let ids = writes.moves.iter().map(|(id, _)| id.clone()).collect();
        let bind = table.address_bind()?;
        let addresses = mapped.moves.iter().map(|v| text(v, bind)).collect();
        table
            .set_address(ids, addresses)?
            .execute(&mut on)
            .await
            .map_err(db_error)?;
    }
    let done = delete(on, table, mapped, &writes.deletes).await?;
    if !writes.deletes.is_empty() {
        let mut done_ids: Vec<String> = done.iter().cloned().collect();
        done_ids.sort_unstable();
        pending(writes.deletes.clone(), done_ids)
            .execute(&mut on)
            .await
            .map_err(db_error)?;
    }
    if !writes.record.is_empty() {
        let count = writes.record.len();
        let written = Statement::build(|s| {
            record(s, writes, &done);
            Ok(())
        })?
        .execute(&mut on)
        .await
        .map_err(db_error)?;
        if written != count {
            return Err(DbError::Unavailable(
                "a delivery of the plan was recorded concurrently; retry".into(),
            ));
        }
    }
    Ok((done, false))
}

/// A plan that only writes bookkeeping, rows (one set of columns inserted, one updated) and
/// records, in ONE statement: each write a data-modifying `WITH` of its own (they touch
/// different tables, or different rows of one), the counts checked as [`write`] checks them,
/// in the statement (`clerk_sync.written_or_retry`), so that it fails whole: a `COMMIT`
/// pipelined after it never commits half a plan. Two round trips fewer than a statement each.
fn together(
    table: &Table,
    writes: &Writes,
    inserts: &[Group<'_>],
    updates: &[Group<'_>],
) -> Result<Statement, DbError> {
    // Its text is made once for what it writes, then only its values are bound.
    let rows = |groups: &[Group<'_>]| groups.first().map_or(0, |(_, group)| group.len());
    let what = Together {
        lone: writes.bookkeeping.len() <= 1
            && rows(inserts) <= 1
            && rows(updates) <= 1
            && writes.record.len() <= 1,
        bookkeeping: !writes.bookkeeping.is_empty(),
        inserted: inserts.first().map(|(columns, _)| columns.clone()),
        updated: updates.first().map(|(columns, _)| columns.clone()),
        record: !writes.record.is_empty(),
    };
    let made = table
        .texts
        .lock()
        .ok()
        .and_then(|texts| texts.get(&what).cloned());
    let new = made.is_none();
    let mut s = made.map_or_else(Statement::default, Statement::with_text);
    s.push("WITH cs_b AS (");
    match (what.lone, writes.bookkeeping.as_slice().first()) {
        (true, Some(one)) => Lone::bookkeeping(&mut s, one),
        (false, Some(_)) => bookkeeping(&mut s, writes),
        (_, None) => s.push("SELECT 1"),
    }
    s.push("), cs_i AS (");
    match inserts.first() {
        Some((columns, group)) => {
            match (what.lone, group.as_slice().first()) {
                (true, Some(row)) => Lone::insert(table, &mut s, columns, row)?,
                _ => table.insert(&mut s, columns, group)?,
            }
            s.push(" RETURNING 1");
        }
        None => s.push("SELECT 1 WHERE false"),
    }
    s.push("), cs_u AS (");
    match updates.first() {
        Some((columns, group)) => {
            match (what.lone, group.as_slice().first()) {
                (true, Some(row)) => Lone::update(table, &mut s, columns, row)?,
                _ => table.update(&mut s, columns, group)?,
            }
            s.push(" RETURNING 1");
        }
        None => s.push("SELECT 1 WHERE false"),
    }
    s.push("), cs_d AS (");
    match (what.lone, writes.record.as_slice().first()) {
        (true, Some(one)) => {
            Lone::record(&mut s, one);
            s.push(" RETURNING 1");
        }
        (false, Some(_)) => {
            record(&mut s, writes, &HashSet::default());
            s.push(" RETURNING 1");
        }
        (_, None) => s.push("SELECT 1 WHERE false"),
    }
    let updated = updates.first().map_or(0, |(_, group)| group.len());
    s.push(") SELECT clerk_sync.written_or_retry((SELECT count(*) FROM cs_u), ");
    s.bind(Param::BigInt(i64::try_from(updated).unwrap_or(i64::MAX)));
    s.push("::int8, (SELECT count(*) FROM cs_d), ");
    s.bind(Param::BigInt(
        i64::try_from(writes.record.len()).unwrap_or(i64::MAX),
    ));
    s.push("::int8) AS written");
    let text = s.text()?;
    if new {
        if let Ok(mut texts) = table.texts.lock() {
            if texts.len() < TEXTS_KEPT {
                texts.insert(what, text);
            }
        }
    }
    Ok(s)
}

/// The scalar forms of [`together`]'s writes for a lone delivery: one value per parameter
/// (`VALUES`, `WHERE key = $n`), where the general forms bind an array per column and
/// `unnest` them — for one row, a function scan and an array each to build and read.
struct Lone;

impl Lone {
    /// [`bookkeeping`] of one user.
    fn bookkeeping(s: &mut Statement, b: &BookkeepingWrite) {
        s.push("UPDATE clerk_sync.users s SET version = ");
        s.bind(Param::BigInt(b.version));
        s.push("::int8, digest = ");
        s.bind(Param::Text(Some(b.digest.clone())));
        s.push("::text, email = ");
        s.bind(Param::Text(b.email.clone()));
        s.push("::text, role_from_webhook = ");
        s.bind(Param::Bool(b.role_from_webhook));
        s.push("::bool, deleted_at = CASE WHEN ");
        s.bind(Param::Bool(b.tombstone));
        s.push(
            "::bool THEN COALESCE(s.deleted_at, now()) ELSE s.deleted_at END, \
             delete_attempted_at = CASE WHEN ",
        );
        s.bind(Param::Bool(b.attempted));
        s.push("::bool THEN now() ELSE s.delete_attempted_at END WHERE s.user_id = ");
        s.bind(Param::Text(Some(b.user_id.clone())));
        s.push("::text");
    }

    /// [`Table::insert`] of one row.
    fn insert(
        table: &Table,
        s: &mut Statement,
        columns: &[usize],
        (_, values): &(&str, &[(usize, Value)]),
    ) -> Result<(), DbError> {
        s.push_with(|| {
            let names: Vec<String> = columns
                .iter()
                .map(|&c| table.column(c).map(|(name, _)| name))
                .collect::<Result<_, _>>()?;
            Ok(format!(
                "INSERT INTO {} ({}) VALUES (",
                table.name,
                names.join(", ")
            ))
        })?;
        for (i, &column) in columns.iter().enumerate() {
            if i > 0 {
                s.push(", ");
            }
            Lone::value(table, s, column, values.get(i))?;
        }
        s.push(")");
        Ok(())
    }

    /// [`Table::update`] of one row, by Clerk id.
    fn update(
        table: &Table,
        s: &mut Statement,
        columns: &[usize],
        (id, values): &(&str, &[(usize, Value)]),
    ) -> Result<(), DbError> {
        s.push_with(|| Ok(format!("UPDATE {} AS cs_row SET ", table.name)))?;
        for (i, &column) in columns.iter().enumerate() {
            s.push_with(|| {
                let (name, _) = table.column(column)?;
                Ok(format!("{}{name} = ", if i > 0 { ", " } else { "" }))
            })?;
            Lone::value(table, s, column, values.get(i))?;
        }
        s.push_with(|| Ok(format!(" WHERE cs_row.{} = ", table.clerk_id)))?;
        s.bind(Param::Text(Some((*id).to_owned())));
        s.push("::text");
        Ok(())
    }

    /// One column's value as its text, cast to the column's type.
    fn value(
        table: &Table,
        s: &mut Statement,
        column: usize,
        value: Option<&(usize, Value)>,
    ) -> Result<(), DbError> {
        let bind = table.bind(column)?;
        s.bind(Param::Text(value.and_then(|(_, v)| text(v, bind))));
        s.push_with(|| Ok(format!("::text{}", cast(bind)?)))
    }

    /// [`record`] of one delivery (as [`together`] records: nothing deleted).
    fn record(s: &mut Statement, d: &Record) {
        s.push(
            "INSERT INTO clerk_sync.deliveries (svix_id, event_type, user_id, outcome) VALUES (",
        );
        s.bind(Param::Text(Some(d.svix_id.clone())));
        s.push("::text, ");
        s.bind(Param::Text(Some(d.event_type.clone())));
        s.push("::text, ");
        s.bind(Param::Text(d.user_id.clone()));
        s.push("::text, ");
        let outcome = recorded(d, &HashSet::default());
        s.bind(Param::Text(Some(outcome.as_str().to_owned())));
        s.push("::text) ON CONFLICT (svix_id) DO NOTHING");
    }
}

/// What [`together`]'s statement answered: nothing deleted (it never deletes).
fn written(answer: diesel::QueryResult<Written>) -> Result<HashSet<String>, DbError> {
    if answer.map_err(db_error)?.written {
        Ok(HashSet::default())
    } else {
        Err(DbError::Internal(
            "clerk_sync.written_or_retry answered false".into(),
        ))
    }
}

/// What [`together`]'s check answers (it fails the statement instead of answering
/// false).
#[derive(QueryableByName)]
struct Written {
    #[diesel(sql_type = Bool)]
    written: bool,
}

/// The deletes: soft (one update, always through), or each row in a savepoint of its own, a
/// foreign key's refusal undoing that delete only. Answers the users whose deletes went
/// through.
async fn delete(
    mut on: &AsyncPgConnection,
    table: &Table,
    mapped: &MappedWrites,
    users: &[String],
) -> Result<HashSet<String>, DbError> {
    let mut done = HashSet::default();
    if users.is_empty() {
        return Ok(done);
    }
    if !mapped.soft_delete.is_empty() {
        table
            .soft_delete(&mapped.soft_delete, users.to_vec())?
            .execute(&mut on)
            .await
            .map_err(db_error)?;
        done.extend(users.iter().cloned());
        return Ok(done);
    }
    for user in users {
        // A foreign key the application declared DEFERRABLE would only fail at COMMIT, past
        // the savepoint: checked now.
        on.batch_execute("SAVEPOINT clerk_sync_delete; SET CONSTRAINTS ALL IMMEDIATE")
            .await
            .map_err(db_error)?;
        match table.delete(user).execute(&mut on).await {
            Ok(_) => {
                on.batch_execute("RELEASE SAVEPOINT clerk_sync_delete")
                    .await
                    .map_err(db_error)?;
                done.insert(user.clone());
            }
            Err(DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _)) => {
                on.batch_execute(
                    "ROLLBACK TO SAVEPOINT clerk_sync_delete; RELEASE SAVEPOINT clerk_sync_delete",
                )
                .await
                .map_err(db_error)?;
            }
            Err(other) => return Err(db_error(other)),
        }
    }
    Ok(done)
}

/// Row writes with the same columns, in the order of their first row: (columns, rows).
type Group<'w> = (Vec<usize>, Vec<(&'w str, &'w [(usize, Value)])>);

/// `rows` grouped by the columns they write (in the order written), so that each group is one
/// statement whose text is the same whatever the rows.
fn groups<'w>(rows: &[(&'w str, &'w [(usize, Value)])]) -> Vec<Group<'w>> {
    let mut groups: Vec<Group<'w>> = Vec::new();
    for &(id, values) in rows {
        let columns = values.iter().map(|(c, _)| *c);
        match groups
            .iter_mut()
            .find(|(c, _)| c.iter().copied().eq(columns.clone()))
        {
            Some((_, group)) => group.push((id, values)),
            None => groups.push((columns.collect(), vec![(id, values)])),
        }
    }
    groups
}

/// A function of the shape's own in `clerk_sync` that takes the users' lock, then the
/// address locks, then reads (each statement its own snapshot, as when pipelined), answering
/// the read's rows with the users it made (`made`) and the addresses it locked (`locked`):
/// one statement for the first round trip instead of three. It comes in two: one over arrays
/// for any request, one with scalar arguments for a lone request ([`Table::lone_executor`]),
/// chosen by the request as the seed's port chooses. Made from the shape at start by
/// [`Pg::prepare_mapped`], named by a hash of their bodies, so that a changed shape (or a
/// changed statement) makes another pair and instances of either kind keep theirs.
pub(super) struct Executor {
    /// `CREATE OR REPLACE FUNCTION …` of both (the array one, then the lone one).
    ddl: String,
    /// `clerk_sync.mapped_lock_and_read_<hash>(argument types)`, then
    /// `clerk_sync.mapped_lock_and_read_one_<hash>(argument types)`.
    signatures: [String; 2],
    /// `clerk_sync.mapped_lock_and_read_<hash>`.
    name: String,
    /// `clerk_sync.mapped_lock_and_read_one_<hash>`.
    one_name: String,
    /// The text of its call (see [`call`]).
    call: Arc<[String]>,
    /// The text of the lone one's call (see [`call_one`]).
    one_call: Arc<[String]>,
}

impl Executor {
    /// The call for `request`: the lone executor's where the request is lone.
    fn call(&self, request: &Request) -> Statement {
        if lone_request(request) {
            let mut s = Statement::with_text(self.one_call.clone());
            call_one(&mut s, &self.one_name, request);
            return s;
        }
        let mut s = Statement::with_text(self.call.clone());
        call(&mut s, &self.name, request);
        s
    }
}

/// `CREATE OR REPLACE FUNCTION` of an executor: `body` between dollar quotes whose tag it
/// does not contain (its identifiers are the application's).
fn function(name: &str, arguments: &str, body: &str) -> String {
    let mut tag = "$cs$".to_owned();
    while body.contains(&tag) {
        tag.insert(tag.len() - 1, '_');
    }
    format!(
        "CREATE OR REPLACE FUNCTION {name}({arguments}) RETURNS SETOF record \
         LANGUAGE plpgsql VOLATILE AS {tag}{body}{tag}"
    )
}

/// The call of the lone executor named `name` for the lone `request` (see
/// [`Table::lone_executor`]).
fn call_one(s: &mut Statement, name: &str, request: &Request) {
    let new_user = Bookkeeping::new_user();
    let initial = request.initial.as_slice().first().unwrap_or(&new_user);
    s.push("SELECT * FROM ");
    s.push(name);
    s.push("(");
    s.bind(Param::Text(request.users.as_slice().first().cloned()));
    s.push("::text, ");
    s.bind(Param::BigInt(initial.version));
    s.push("::int8, ");
    s.bind(Param::Text(Some(initial.digest.clone())));
    s.push("::text, ");
    s.bind(Param::Text(initial.email.clone()));
    s.push("::text, ");
    s.bind(Param::Bool(initial.role_from_webhook));
    s.push("::bool, ");
    s.bind(Param::Text(request.claims.as_slice().first().cloned()));
    s.push("::text, ");
    s.bind(Param::Text(request.ids.as_slice().first().cloned()));
    s.push("::text) AS x(");
    s.push(READ_ROW);
    s.push(")");
}

/// The call of the executor named `name` for `request`: its arguments in [`Arg`]'s order.
fn call(s: &mut Statement, name: &str, request: &Request) {
    s.push("SELECT * FROM ");
    s.push(name);
    s.push("(");
    bind_users(s, request);
    s.push("::bool[], ");
    s.bind_arg(Arg::Claims, Param::Texts(request.claims.clone()));
    s.push("::text[], ");
    s.bind_arg(Arg::Ids, Param::Texts(request.ids.clone()));
    s.push("::text[]) AS x(");
    s.push(READ_ROW);
    s.push(")");
}

/// The shape's table as its statements name it: made once per database (see
/// [`Pg::mapped_table`]), with the texts of the writes made so far.
pub(super) struct Table {
    shape: Arc<WriteShape>,
    /// `"schema"."name"`.
    name: String,
    /// The Clerk id column, quoted.
    clerk_id: String,
    /// The unique address column, quoted, and how it binds.
    address: Option<(String, Bind)>,
    /// The expression reading the row's update time (alias `r`) in ms, NULL when unreadable.
    updated_ms: String,
    /// The one-statement writes' texts made so far, by what they write (see [`together`]).
    texts: std::sync::Mutex<HashMap<Together, Arc<[String]>>>,
}

/// What a [`together`] statement writes, which alone decides its text.
#[derive(PartialEq, Eq, Hash)]
struct Together {
    /// At most one row of each kind: the scalar forms ([`Lone`]).
    lone: bool,
    bookkeeping: bool,
    inserted: Option<Vec<usize>>,
    updated: Option<Vec<usize>>,
    record: bool,
}

/// Most texts a [`Table`] keeps: one per combination of columns a lone delivery writes,
/// which the mapping bounds to a handful; past that (a shape of many optional columns),
/// the rest are made each time.
const TEXTS_KEPT: usize = 64;

impl Table {
    fn new(shape: Arc<WriteShape>) -> Result<Self, DbError> {
        let column = |index: usize| {
            shape
                .columns
                .get(index)
                .map(|c| (quoted(&c.name), c.bind.clone()))
                .ok_or_else(|| DbError::Internal("the mapped shape lacks a column it names".into()))
        };
        let (clerk_id, _) = column(shape.clerk_id)?;
        let address = shape.unique_address.map(column).transpose()?;
        let updated_ms = match shape.updated_at.map(column).transpose()? {
            Some((name, Bind::Timestamp | Bind::TimestampTz | Bind::Date)) => format!(
                "CASE WHEN isfinite(r.{name}) \
                 THEN floor(extract(epoch FROM r.{name}) * 1000)::int8 END"
            ),
            _ => "NULL::int8".to_owned(),
        };
        Ok(Self {
            name: shape.qualified_name(),
            clerk_id,
            address,
            updated_ms,
            texts: Default::default(),
            shape,
        })
    }

    /// A column the writes name, quoted, and how it binds.
    fn column(&self, index: usize) -> Result<(String, &Bind), DbError> {
        let column = self.written(index)?;
        Ok((quoted(&column.name), &column.bind))
    }

    /// How a column the writes name binds.
    fn bind(&self, index: usize) -> Result<&Bind, DbError> {
        Ok(&self.written(index)?.bind)
    }

    fn written(&self, index: usize) -> Result<&WriteColumn, DbError> {
        self.shape
            .columns
            .get(index)
            .ok_or_else(|| DbError::Internal("a write names a column the shape lacks".into()))
    }

    /// How the address column binds (there must be one).
    fn address_bind(&self) -> Result<&Bind, DbError> {
        self.address
            .as_ref()
            .map(|(_, bind)| bind)
            .ok_or_else(no_address_column)
    }

    /// The addresses involved: the claims, the users' bookkeeping emails and the addresses
    /// their rows hold, as a `SELECT` of one column `a` (never NULL).
    fn involved_addresses(&self, s: &mut Statement, request: &Request, address: &str) {
        // Each table by key, as `Self::read` reaches them (a generic plan made while a table
        // was small would otherwise scan it whole as it grows).
        s.push("SELECT a FROM (SELECT unnest(");
        s.bind_arg(Arg::Claims, Param::Texts(request.claims.clone()));
        s.push("::text[]) AS a UNION SELECT s.email FROM unnest(");
        s.bind_arg(Arg::Users, Param::Texts(request.users.clone()));
        s.push(
            "::text[]) AS k(id) CROSS JOIN LATERAL \
               (SELECT s.email FROM clerk_sync.users s WHERE s.user_id = k.id LIMIT 1) s \
             UNION SELECT r.a FROM unnest(",
        );
        s.bind_arg(Arg::Users, Param::Texts(request.users.clone()));
        s.push(&format!(
            "::text[]) AS k(id) CROSS JOIN LATERAL \
               (SELECT r.{address}::text AS a FROM {} r WHERE r.{} = k.id LIMIT 1) r) AS d \
             WHERE a IS NOT NULL",
            self.name, self.clerk_id
        ));
    }

    /// Locks the addresses involved ([`Self::involved_addresses`]), in byte order; answers
    /// them.
    fn lock_addresses(&self, request: &Request) -> Statement {
        let address = self
            .address
            .as_ref()
            .map_or("NULL", |(name, _)| name.as_str());
        let mut s = Statement::new(
            "SELECT l.addresses, \
                    (SELECT count(pg_advisory_xact_lock(hashtextextended(a, 7))) \
                       FROM unnest(l.addresses) AS a) AS locked \
               FROM (SELECT COALESCE(array_agg(a ORDER BY a COLLATE \"C\"), '{}') AS addresses \
                       FROM (",
        );
        self.involved_addresses(&mut s, request, address);
        s.push(") AS i) AS l");
        s
    }

    /// One row of [`ReadRow`] per user of `ids` (a relation of one column `id`): its
    /// bookkeeping and its row, each reached by key (`address`: the row's address as text).
    fn user_rows(&self, ids: &str, address: &str) -> String {
        format!(
            "SELECT false AS recorded, k.id, \
                    s.user_id IS NOT NULL AS kept, s.version, s.digest, s.email, \
                    s.deleted_at IS NOT NULL AS deleted, \
                    COALESCE(s.delete_pending, false) AS delete_pending, \
                    COALESCE(s.role_from_webhook, false) AS role_from_webhook, \
                    r.{clerk} IS NOT NULL AS held, {address} AS address, \
                    {updated} AS updated_ms, false AS foreign, false AS made, \
                    false AS locked \
               FROM {ids} k \
               LEFT JOIN LATERAL (SELECT * FROM clerk_sync.users s \
                                   WHERE s.user_id = k.id LIMIT 1) s ON true \
               LEFT JOIN LATERAL (SELECT * FROM {table} r \
                                   WHERE r.{clerk} = k.id LIMIT 1) r ON true",
            clerk = self.clerk_id,
            table = self.name,
            updated = self.updated_ms,
        )
    }

    /// Reads, under the locks, the involved users' bookkeeping and rows (one row each), and
    /// the deliveries already recorded (`recorded`). The involved users are the request's,
    /// the holders of the involved addresses and the users claiming one; those addresses are
    /// found again here, as [`Self::lock_addresses`] found them (the read is pipelined after
    /// the locks, without their answer).
    ///
    /// Every table is reached by one key at a time (a `LATERAL` subquery the planner cannot
    /// flatten, `LIMIT`/`OFFSET` in it): the unit of work runs each statement on its generic
    /// plan (`plan_cache_mode`; a custom plan would be planned anew on every call), made
    /// without the arrays' lengths, and a join would let that plan scan a small table whole
    /// instead of using its index.
    ///
    /// `locked`: an array expression holding the locked addresses (the executor's), read
    /// instead of finding them again; without it the addresses found again are answered too
    /// (`locked` rows), for the caller to compare with those it locked.
    fn read(&self, request: &Request, locked: Option<&str>) -> Statement {
        let mut s = Statement::new("WITH ");
        let address = match &self.address {
            Some((address, _)) => {
                s.push("cs_a AS (");
                match locked {
                    Some(locked) => s.push(&format!("SELECT unnest({locked}) AS a")),
                    None => self.involved_addresses(&mut s, request, address),
                }
                s.push("), ");
                Some(address)
            }
            None => None,
        };
        s.push("ids AS (SELECT unnest(");
        s.bind_arg(Arg::Users, Param::Texts(request.users.clone()));
        s.push("::text[]) AS id");
        let address = match address {
            Some(address) => {
                // The rows holding a locked address, and the users claiming one.
                s.push(&format!(
                    " UNION SELECT h.id FROM cs_a CROSS JOIN LATERAL \
                        (SELECT r.{clerk}::text AS id FROM {table} r \
                          WHERE r.{address} = cs_a.a AND r.{clerk} IS NOT NULL OFFSET 0) h \
                      UNION SELECT c.id FROM cs_a CROSS JOIN LATERAL \
                        (SELECT s.user_id AS id FROM clerk_sync.users s \
                          WHERE s.email = cs_a.a OFFSET 0) c",
                    clerk = self.clerk_id,
                    table = self.name,
                ));
                format!("r.{address}::text")
            }
            None => "NULL::text".to_owned(),
        };
        s.push(&format!(
            ") {users} UNION ALL {recorded} FROM unnest(",
            users = self.user_rows("ids", &address),
            recorded = mark(Mark::Recorded("d.svix_id")),
        ));
        s.bind_arg(Arg::Ids, Param::Texts(request.ids.clone()));
        s.push(
            "::text[]) AS x(id) CROSS JOIN LATERAL \
               (SELECT d.svix_id FROM clerk_sync.deliveries d WHERE d.svix_id = x.id LIMIT 1) d",
        );
        if locked.is_none() && self.address.is_some() {
            // The addresses found here, to be compared with those locked (the application may
            // have moved a row's address between the two statements).
            s.push(&format!(
                " UNION ALL {} FROM cs_a",
                mark(Mark::Locked("cs_a.a"))
            ));
        }
        if let Some((address, _)) = &self.address {
            // The locked addresses a row holds without a Clerk id.
            s.push(&format!(
                " UNION ALL {foreign} \
                   FROM cs_a CROSS JOIN LATERAL \
                        (SELECT 1 FROM {table} r \
                          WHERE r.{address} = cs_a.a AND r.{clerk} IS NULL LIMIT 1) f",
                foreign = mark(Mark::Foreign("cs_a.a")),
                table = self.name,
                clerk = self.clerk_id,
            ));
        }
        s
    }

    /// The shape's executor: the users' lock, the address locks and the read of the
    /// pipelined statements, in one function (see [`Executor`]).
    fn executor(&self) -> Result<Executor, DbError> {
        // Only the statements' text is used: their values are the call's arguments.
        let request = Request::default();
        let mut body = format!(
            "BEGIN RETURN QUERY WITH cs_m AS ({users}) {made} FROM cs_m; ",
            users = lock_users(&request).in_executor()?,
            made = mark(Mark::Made("cs_m.user_id")),
        );
        let mut locked = None;
        if let Some((address, _)) = &self.address {
            // The involved addresses found once, kept in a variable of the function's block
            // (named through its label: no column can shadow it), locked in byte order, and
            // answered; the read reads them from there.
            let mut involved = Statement::new("");
            self.involved_addresses(&mut involved, &request, address);
            body = format!(
                "<<cs_executor>> DECLARE addresses text[]; {body}\
                 SELECT COALESCE(array_agg(i.a ORDER BY i.a COLLATE \"C\"), '{{}}') \
                   INTO cs_executor.addresses FROM ({involved}) AS i; \
                 PERFORM pg_advisory_xact_lock(hashtextextended(l.a, 7)) \
                    FROM unnest(cs_executor.addresses) AS l(a); \
                 RETURN QUERY {locked} FROM unnest(cs_executor.addresses) AS l(a); ",
                involved = involved.in_executor()?,
                locked = mark(Mark::Locked("l.a")),
            );
            locked = Some("cs_executor.addresses");
        }
        body.push_str(&format!(
            "RETURN QUERY {read}; END",
            read = self.read(&request, locked).in_executor()?
        ));
        let one = self.lone_executor();
        // One name for the two: the one made second is there only if both are.
        let mut digest = Sha256::new();
        digest.update(body.as_bytes());
        digest.update(one.as_bytes());
        let hash: String = digest
            .finalize()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect();
        let name = format!("clerk_sync.mapped_lock_and_read_{hash}");
        let one_name = format!("clerk_sync.mapped_lock_and_read_one_{hash}");
        let arguments = "text[], int8[], text[], text[], bool[], text[], text[]";
        let one_arguments = "text, int8, text, text, bool, text, text";
        let mut text = Statement::default();
        call(&mut text, &name, &request);
        let mut one_text = Statement::default();
        call_one(&mut one_text, &one_name, &request);
        Ok(Executor {
            ddl: format!(
                "{}; {}",
                function(&name, arguments, &body),
                function(&one_name, one_arguments, &one)
            ),
            signatures: [
                format!("{name}({arguments})"),
                format!("{one_name}({one_arguments})"),
            ],
            call: text.text()?,
            one_call: one_text.text()?,
            name,
            one_name,
        })
    }

    /// The body of the shape's executor for a lone request (one user, at most one claim and
    /// one delivery id; see [`lone_request`]): what [`Self::executor`]'s does, with scalar
    /// arguments (`user, version, digest, email, role` of its bookkeeping row if made, `claim`,
    /// `id`) and statements that each reach one row by key, as the seed's
    /// `clerk_sync.lock_and_read_one`. Its variables are named through the block's label
    /// (`one`): no column can shadow them.
    fn lone_executor(&self) -> String {
        let lock = "SELECT s.email INTO one.email FROM clerk_sync.users s \
                    WHERE s.user_id = $1 FOR UPDATE";
        let mut body = format!(
            "<<one>> DECLARE made bool := false; email text; held text; \
                 addresses text[] := '{{}}'; involved text[]; others text[] := '{{}}'; \
                 seen text[] := '{{}}'; held_foreign text[] := '{{}}'; a text; i int4; void text; \
             BEGIN \
             {lock}; \
             IF NOT FOUND THEN \
                 INSERT INTO clerk_sync.users AS s \
                        (user_id, version, digest, email, role_from_webhook) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (user_id) DO UPDATE SET user_id = s.user_id WHERE false \
                 RETURNING s.email INTO one.email; \
                 one.made := FOUND; \
                 IF NOT one.made THEN {lock}; END IF; \
             END IF; "
        );
        let mut address = "NULL::text".to_owned();
        if let Some((column, _)) = &self.address {
            // The involved addresses (the claim, the bookkeeping's, the row's), distinct, in
            // byte order, each locked; then whoever holds or claims each.
            body.push_str(&format!(
                "SELECT r.{column}::text INTO one.held FROM {table} r \
                  WHERE r.{clerk} = $1 LIMIT 1; \
                 FOREACH one.a IN ARRAY ARRAY[$6, one.email, one.held] LOOP \
                     CONTINUE WHEN one.a IS NULL OR one.a = ANY(one.addresses); \
                     one.i := cardinality(one.addresses); \
                     WHILE one.i > 0 \
                       AND one.addresses[one.i] COLLATE \"C\" > one.a COLLATE \"C\" LOOP \
                         one.addresses[one.i + 1] := one.addresses[one.i]; \
                         one.i := one.i - 1; \
                     END LOOP; \
                     one.addresses[one.i + 1] := one.a; \
                 END LOOP; \
                 FOREACH one.a IN ARRAY one.addresses LOOP \
                     one.void := pg_advisory_xact_lock(hashtextextended(one.a, 7))::text; \
                 END LOOP; \
                 FOREACH one.a IN ARRAY one.addresses LOOP \
                     one.involved := ARRAY(SELECT r.{clerk}::text FROM {table} r \
                                         WHERE r.{column} = one.a \
                                        UNION ALL \
                                        SELECT s.user_id FROM clerk_sync.users s \
                                         WHERE s.email = one.a); \
                     IF array_position(one.involved, NULL) IS NOT NULL THEN \
                         one.held_foreign := one.held_foreign || one.a; \
                     END IF; \
                     one.others := one.others || one.involved; \
                 END LOOP; \
                 FOREACH one.a IN ARRAY one.others LOOP \
                     CONTINUE WHEN one.a IS NULL OR one.a = $1 OR one.a = ANY(one.seen); \
                     one.seen := one.seen || one.a; \
                     RETURN QUERY {other}; \
                 END LOOP; ",
                table = self.name,
                clerk = self.clerk_id,
                other = self.user_rows("(SELECT one.a AS id)", &format!("r.{column}::text")),
            ));
            address = format!("r.{column}::text");
        }
        body.push_str(&format!(
            "RETURN QUERY {user} \
              UNION ALL {made} WHERE one.made \
              UNION ALL {locked} FROM unnest(one.addresses) AS l(a) \
              UNION ALL {foreign} FROM unnest(one.held_foreign) AS l(a) \
              UNION ALL {recorded} FROM clerk_sync.deliveries d WHERE d.svix_id = $7; \
             END",
            user = self.user_rows("(SELECT $1 AS id)", &address),
            made = mark(Mark::Made("$1")),
            locked = mark(Mark::Locked("l.a")),
            foreign = mark(Mark::Foreign("l.a")),
            recorded = mark(Mark::Recorded("d.svix_id")),
        ));
        body
    }

    /// Inserts a group of rows writing the same columns.
    fn insert(
        &self,
        s: &mut Statement,
        columns: &[usize],
        rows: &[(&str, &[(usize, Value)])],
    ) -> Result<(), DbError> {
        s.push_with(|| {
            let mut names = Vec::with_capacity(columns.len());
            let mut values = Vec::with_capacity(columns.len());
            for (i, &column) in columns.iter().enumerate() {
                let (name, bind) = self.column(column)?;
                names.push(name);
                values.push(format!("cs_new.c{i}{}", cast(bind)?));
            }
            Ok(format!(
                "INSERT INTO {} ({}) SELECT {} FROM unnest(",
                self.name,
                names.join(", "),
                values.join(", ")
            ))
        })?;
        for (i, &column) in columns.iter().enumerate() {
            if i > 0 {
                s.push(", ");
            }
            s.bind(Param::NullableTexts(self.column_values(i, column, rows)?));
            s.push("::text[]");
        }
        s.push_with(|| {
            let aliases: Vec<String> = (0..columns.len()).map(|i| format!("c{i}")).collect();
            Ok(format!(") AS cs_new({})", aliases.join(", ")))
        })
    }

    /// Updates a group of rows writing the same columns, by Clerk id.
    fn update(
        &self,
        s: &mut Statement,
        columns: &[usize],
        rows: &[(&str, &[(usize, Value)])],
    ) -> Result<(), DbError> {
        s.push_with(|| {
            let mut sets = Vec::with_capacity(columns.len());
            for (i, &column) in columns.iter().enumerate() {
                let (name, bind) = self.column(column)?;
                sets.push(format!("{name} = cs_new.c{i}{}", cast(bind)?));
            }
            Ok(format!(
                "UPDATE {} AS cs_row SET {} FROM unnest(",
                self.name,
                sets.join(", ")
            ))
        })?;
        s.bind(Param::Texts(
            rows.iter().map(|(id, _)| (*id).to_owned()).collect(),
        ));
        s.push("::text[]");
        for (i, &column) in columns.iter().enumerate() {
            s.push(", ");
            s.bind(Param::NullableTexts(self.column_values(i, column, rows)?));
            s.push("::text[]");
        }
        s.push_with(|| {
            let aliases: Vec<String> = (0..columns.len()).map(|i| format!(", c{i}")).collect();
            Ok(format!(
                ") AS cs_new(id{}) WHERE cs_row.{} = cs_new.id",
                aliases.concat(),
                self.clerk_id
            ))
        })
    }

    /// The `i`th value of every row of a group (which writes `column` there), as text.
    fn column_values(
        &self,
        i: usize,
        column: usize,
        rows: &[(&str, &[(usize, Value)])],
    ) -> Result<Vec<Option<String>>, DbError> {
        let bind = self.bind(column)?;
        Ok(rows
            .iter()
            .map(|(_, values)| values.get(i).and_then(|(_, v)| text(v, bind)))
            .collect())
    }

    /// How many of these users have a row.
    fn count(&self, ids: Vec<String>) -> Statement {
        let mut s = Statement::new(&format!(
            "SELECT count(*) AS n FROM {} WHERE {} = ANY(",
            self.name, self.clerk_id
        ));
        s.bind(Param::Texts(ids));
        s.push("::text[])");
        s
    }

    /// The address column of each row := its value (a vacated row's placeholder, a move).
    fn set_address(
        &self,
        ids: Vec<String>,
        addresses: Vec<Option<String>>,
    ) -> Result<Statement, DbError> {
        let (address, bind) = self.address.as_ref().ok_or_else(no_address_column)?;
        let mut s = Statement::new(&format!(
            "UPDATE {} AS cs_row SET {address} = cs_new.a{} FROM unnest(",
            self.name,
            cast(bind)?
        ));
        s.bind(Param::Texts(ids));
        s.push("::text[], ");
        s.bind(Param::NullableTexts(addresses));
        s.push(&format!(
            "::text[]) AS cs_new(id, a) WHERE cs_row.{} = cs_new.id",
            self.clerk_id
        ));
        Ok(s)
    }

    /// A soft delete: the columns := their values for every user's row.
    fn soft_delete(
        &self,
        values: &[(usize, Value)],
        users: Vec<String>,
    ) -> Result<Statement, DbError> {
        let mut s = Statement::new(&format!("UPDATE {} SET ", self.name));
        for (i, (column, value)) in values.iter().enumerate() {
            let (name, bind) = self.column(*column)?;
            if i > 0 {
                s.push(", ");
            }
            s.push(&format!("{name} = "));
            s.bind(Param::Text(text(value, bind)));
            s.push(&format!("::text{}", cast(bind)?));
        }
        s.push(&format!(" WHERE {} = ANY(", self.clerk_id));
        s.bind(Param::Texts(users));
        s.push("::text[])");
        Ok(s)
    }

    /// Deletes a user's row.
    fn delete(&self, user: &str) -> Statement {
        let mut s = Statement::new(&format!(
            "DELETE FROM {} WHERE {} = ",
            self.name, self.clerk_id
        ));
        s.bind(Param::Text(Some(user.to_owned())));
        s.push("::text");
        s
    }
}

fn no_address_column() -> DbError {
    DbError::Internal("a plan moves addresses on a table without an address column".into())
}

/// Locks the users' bookkeeping rows in byte order, making those absent (with their initial
/// values, a new user's past the end of [`Request::initial`]); answers those made.
///
/// Rows that conflict are locked (DO UPDATE ... WHERE false: locked, left as they are) in the
/// order the SELECT gives them; the RETURNING rows are those inserted. Naming the key in the
/// SET makes the lock FOR UPDATE, as the seed's lone lock (a SET of other columns only would
/// take FOR NO KEY UPDATE).
fn lock_users(request: &Request) -> Statement {
    let mut s = Statement::new(
        "INSERT INTO clerk_sync.users AS s (user_id, version, digest, email, role_from_webhook) \
         SELECT * FROM unnest(",
    );
    bind_users(&mut s, request);
    s.push(
        "::bool[]) AS n(user_id, version, digest, email, role_from_webhook) \
         ORDER BY n.user_id COLLATE \"C\" \
         ON CONFLICT (user_id) DO UPDATE SET user_id = s.user_id WHERE false \
         RETURNING s.user_id",
    );
    s
}

/// Binds the users and what each one's bookkeeping row holds if it has to be made (a new
/// user's past the end of [`Request::initial`]), as `$u::text[], …, $r` (`::bool[]` to come).
fn bind_users(s: &mut Statement, request: &Request) {
    let new_user = Bookkeeping::new_user();
    let initial: Vec<&Bookkeeping> = (0..request.users.len())
        .map(|i| request.initial.get(i).unwrap_or(&new_user))
        .collect();
    s.bind_arg(Arg::Users, Param::Texts(request.users.clone()));
    s.push("::text[], ");
    s.bind_arg(
        Arg::Versions,
        Param::BigInts(initial.iter().map(|b| b.version).collect()),
    );
    s.push("::int8[], ");
    s.bind_arg(
        Arg::Digests,
        Param::Texts(initial.iter().map(|b| b.digest.clone()).collect()),
    );
    s.push("::text[], ");
    s.bind_arg(
        Arg::Emails,
        Param::NullableTexts(initial.iter().map(|b| b.email.clone()).collect()),
    );
    s.push("::text[], ");
    s.bind_arg(
        Arg::Roles,
        Param::Bools(initial.iter().map(|b| b.role_from_webhook).collect()),
    );
}

/// The bookkeeping rows written, as the seed port writes them.
fn bookkeeping(s: &mut Statement, writes: &Writes) {
    let b = &writes.bookkeeping;
    s.push(
        "UPDATE clerk_sync.users s \
            SET version = n.version, digest = n.digest, email = n.email, \
                role_from_webhook = n.role, \
                deleted_at = CASE WHEN n.tombstone THEN COALESCE(s.deleted_at, now()) \
                                  ELSE s.deleted_at END, \
                delete_attempted_at = CASE WHEN n.attempted THEN now() \
                                           ELSE s.delete_attempted_at END \
           FROM unnest(",
    );
    s.bind(Param::Texts(b.iter().map(|b| b.user_id.clone()).collect()));
    s.push("::text[], ");
    s.bind(Param::BigInts(b.iter().map(|b| b.version).collect()));
    s.push("::int8[], ");
    s.bind(Param::Texts(b.iter().map(|b| b.digest.clone()).collect()));
    s.push("::text[], ");
    s.bind(Param::NullableTexts(
        b.iter().map(|b| b.email.clone()).collect(),
    ));
    s.push("::text[], ");
    s.bind(Param::Bools(
        b.iter().map(|b| b.role_from_webhook).collect(),
    ));
    s.push("::bool[], ");
    s.bind(Param::Bools(b.iter().map(|b| b.tombstone).collect()));
    s.push("::bool[], ");
    s.bind(Param::Bools(b.iter().map(|b| b.attempted).collect()));
    s.push(
        "::bool[]) AS n(user_id, version, digest, email, role, tombstone, attempted) \
         WHERE s.user_id = n.user_id",
    );
}

/// Each deleted user's `delete_pending`: whether its delete was refused.
fn pending(users: Vec<String>, done: Vec<String>) -> Statement {
    let mut s = Statement::new("UPDATE clerk_sync.users SET delete_pending = NOT (user_id = ANY(");
    s.bind(Param::Texts(done));
    s.push("::text[])) WHERE user_id = ANY(");
    s.bind(Param::Texts(users));
    s.push("::text[])");
    s
}

/// The deliveries recorded, each with its outcome, or its outcome-if-refused when its user's
/// delete did not go through.
fn record(s: &mut Statement, writes: &Writes, done: &HashSet<String>) {
    let r = &writes.record;
    let outcome = |d: &Record| recorded(d, done);
    s.push(
        "INSERT INTO clerk_sync.deliveries (svix_id, event_type, user_id, outcome) \
         SELECT * FROM unnest(",
    );
    s.bind(Param::Texts(r.iter().map(|d| d.svix_id.clone()).collect()));
    s.push("::text[], ");
    s.bind(Param::Texts(
        r.iter().map(|d| d.event_type.clone()).collect(),
    ));
    s.push("::text[], ");
    s.bind(Param::NullableTexts(
        r.iter().map(|d| d.user_id.clone()).collect(),
    ));
    s.push("::text[], ");
    s.bind(Param::Texts(
        r.iter().map(|d| outcome(d).as_str().to_owned()).collect(),
    ));
    s.push("::text[]) ON CONFLICT (svix_id) DO NOTHING");
}

/// The outcome recorded for `d`: its outcome-if-refused when its user's delete did not go
/// through (is not among those `done`).
fn recorded(d: &Record, done: &HashSet<String>) -> Outcome {
    match (d.if_refused, &d.user_id) {
        (Some(refused), Some(user)) if !done.contains(user) => refused,
        _ => d.outcome,
    }
}

/// The cast of a value's text to a column's type.
fn cast(bind: &Bind) -> Result<String, DbError> {
    Ok(match bind {
        Bind::Text => String::new(),
        Bind::Uuid => "::uuid".into(),
        Bind::Int => "::int4".into(),
        Bind::BigInt => "::int8".into(),
        Bind::Float => "::float8".into(),
        Bind::Decimal => "::numeric".into(),
        Bind::Bool => "::boolean".into(),
        Bind::Timestamp => "::timestamp".into(),
        Bind::TimestampTz => "::timestamptz".into(),
        Bind::Date => "::date".into(),
        // Already quoted (and qualified) by the mapping.
        Bind::Enum(name) => format!("::{name}"),
        Bind::Json => "::jsonb".into(),
        Bind::Unsupported => {
            return Err(DbError::Internal(
                "a write names a column clerk-sync never writes".into(),
            ))
        }
    })
}

/// A value as the text its column's cast reads (none: NULL).
fn text(value: &Value, bind: &Bind) -> Option<String> {
    Some(match value {
        Value::Null => return None,
        Value::Text(s) | Value::Decimal(s) | Value::Enum(s) => s.clone(),
        Value::Uuid(u) => u.to_string(),
        Value::Int(i) => i.to_string(),
        Value::BigInt(i) => i.to_string(),
        Value::Float(x) if x.is_nan() => "NaN".into(),
        Value::Float(x) if x.is_infinite() => {
            if *x > 0.0 { "Infinity" } else { "-Infinity" }.into()
        }
        // Rust prints the shortest text that reads back as the same double.
        Value::Float(x) => x.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Timestamp(at) => timestamp_text(at, matches!(bind, Bind::TimestampTz)),
        Value::Date(day) => day.format("%Y-%m-%d").to_string(),
        Value::Json(json) => json.to_string(),
    })
}

/// A time as `timestamp` (`timestamptz` with `zone`: at UTC) reads it, to the microsecond:
/// `%Y-%m-%d %H:%M:%S%.6f` written out by hand (a format string is parsed on every use, a
/// cost on every delivery's two times); any year outside 0–9999 through the format string.
fn timestamp_text(at: &chrono::DateTime<chrono::Utc>, zone: bool) -> String {
    use chrono::{Datelike as _, Timelike as _};
    use std::fmt::Write as _;
    if !(0..=9999).contains(&at.year()) {
        let format = if zone {
            "%Y-%m-%d %H:%M:%S%.6f+00"
        } else {
            "%Y-%m-%d %H:%M:%S%.6f"
        };
        return at.format(format).to_string();
    }
    // A leap second is second 59 with a second's nanoseconds more: 60, as `%S` writes it.
    let (second, nanos) = match at.nanosecond().checked_sub(1_000_000_000) {
        Some(nanos) => (at.second() + 1, nanos),
        None => (at.second(), at.nanosecond()),
    };
    let mut text = String::with_capacity(29);
    let _ = write!(
        text,
        "{:04}-{:02}-{:02} {:02}:{:02}:{second:02}.{:06}{}",
        at.year(),
        at.month(),
        at.day(),
        at.hour(),
        at.minute(),
        nanos / 1000,
        if zone { "+00" } else { "" }
    );
    text
}

/// A diesel error as [`DbError::from`] classes it, the server's message cut before any
/// quoted value it echoes.
fn db_error(error: DieselError) -> DbError {
    match error {
        DieselError::DatabaseError(kind, info) => match info.message().find(": \"") {
            Some(at) => {
                let cut = info.message()[..at].to_owned();
                DbError::from(DieselError::DatabaseError(kind, Box::new(cut)))
            }
            None => DbError::from(DieselError::DatabaseError(kind, info)),
        },
        other => DbError::from(other),
    }
}

/// One parameter of a [`Statement`].
enum Param {
    /// `text`, maybe NULL.
    Text(Option<String>),
    /// `text[]`.
    Texts(Vec<String>),
    /// `int8`.
    BigInt(i64),
    /// `text[]` with NULLs.
    NullableTexts(Vec<Option<String>>),
    /// `int8[]`.
    BigInts(Vec<i64>),
    /// `bool`.
    Bool(bool),
    /// `bool[]`.
    Bools(Vec<bool>),
}

/// The arguments of the shape's executor (see [`Executor`]), by position.
#[derive(Clone, Copy)]
enum Arg {
    Users = 1,
    Versions = 2,
    Digests = 3,
    Emails = 4,
    Roles = 5,
    Claims = 6,
    Ids = 7,
}

/// SQL text with parameters between its pieces. Unlike `diesel::sql_query`, it leaves diesel
/// free to cache its prepared statement (by its text and its parameters' types): built from
/// identifiers and column lists only, its text is the same every time for the same writes.
///
/// Its text may come made (`Statement::with_text`, a statement built before with the same
/// text): then only its parameters are bound, and text pushed is ignored — the builders make
/// text through [`Statement::push_with`] so that such text is not even formatted.
#[derive(Default)]
struct Statement {
    /// The text before each parameter, then after the last one (one more than `params`),
    /// while it is being built.
    sql: Vec<String>,
    /// The text, when it came made.
    made: Option<Arc<[String]>>,
    /// The parameters, `$1`, `$2`, … in order.
    params: Vec<Param>,
    /// Which of the executor's arguments each parameter is, where it is one (see
    /// [`Statement::in_executor`]).
    args: Vec<Option<Arg>>,
}

impl Statement {
    fn new(sql: &str) -> Self {
        Self {
            sql: vec![sql.to_owned()],
            ..Self::default()
        }
    }

    /// The statement `build` makes.
    fn build(
        build: impl FnOnce(&mut Statement) -> Result<(), DbError>,
    ) -> Result<Statement, DbError> {
        let mut s = Statement::default();
        build(&mut s)?;
        Ok(s)
    }

    /// A statement whose text is `text` (made by an earlier statement's [`Self::text`]): its
    /// builder only binds.
    fn with_text(text: Arc<[String]>) -> Self {
        Self {
            made: Some(text),
            ..Self::default()
        }
    }

    fn push(&mut self, sql: &str) {
        if self.made.is_some() {
            return;
        }
        match self.sql.last_mut() {
            Some(last) => last.push_str(sql),
            None => self.sql.push(sql.to_owned()),
        }
    }

    /// Pushes the text `sql` makes, made only where the text did not come made.
    fn push_with(&mut self, sql: impl FnOnce() -> Result<String, DbError>) -> Result<(), DbError> {
        if self.made.is_none() {
            self.push(&sql()?);
        }
        Ok(())
    }

    fn bind(&mut self, param: Param) {
        if self.made.is_none() {
            if self.sql.is_empty() {
                self.sql.push(String::new());
            }
            self.sql.push(String::new());
        }
        self.params.push(param);
        self.args.push(None);
    }

    /// Binds `param`, which is the executor's argument `arg` when the statement runs in it.
    fn bind_arg(&mut self, arg: Arg, param: Param) {
        self.bind(param);
        if let Some(last) = self.args.last_mut() {
            *last = Some(arg);
        }
    }

    /// The text's pieces: one before each parameter, then the rest.
    fn pieces(&self) -> &[String] {
        match &self.made {
            Some(text) => text,
            None => &self.sql,
        }
    }

    /// The text, for [`Self::with_text`]; an error where the parameters bound do not fit it
    /// (a builder whose text depends on more than what its cache is keyed by: a bug).
    fn text(&mut self) -> Result<Arc<[String]>, DbError> {
        if self.made.is_none() {
            if self.sql.is_empty() {
                self.sql.push(String::new());
            }
            self.made = Some(std::mem::take(&mut self.sql).into());
        }
        match &self.made {
            Some(text) if text.len() == self.params.len() + 1 => Ok(text.clone()),
            _ => Err(DbError::Internal(
                "a statement's parameters do not fit its text".into(),
            )),
        }
    }

    /// The text as a statement of the executor's body: each parameter its argument by
    /// position (`$n` there names the function's argument, and no column can shadow it).
    fn in_executor(&self) -> Result<String, DbError> {
        let mut text = String::new();
        for (i, sql) in self.pieces().iter().enumerate() {
            text.push_str(sql);
            if i < self.params.len() {
                let arg = self.args.get(i).copied().flatten().ok_or_else(|| {
                    DbError::Internal(
                        "an executor's statement binds a value it has no argument for".into(),
                    )
                })?;
                text.push_str(&format!("${}", arg as u8));
            }
        }
        Ok(text)
    }
}

impl QueryFragment<PgBackend> for Statement {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, PgBackend>) -> diesel::QueryResult<()> {
        for (i, sql) in self.pieces().iter().enumerate() {
            out.push_sql(sql);
            match self.params.get(i) {
                Some(Param::Text(v)) => out.push_bind_param::<Nullable<Text>, _>(v)?,
                Some(Param::Texts(v)) => out.push_bind_param::<Array<Text>, _>(v)?,
                Some(Param::NullableTexts(v)) => {
                    out.push_bind_param::<Array<Nullable<Text>>, _>(v)?
                }
                Some(Param::BigInt(v)) => out.push_bind_param::<BigInt, _>(v)?,
                Some(Param::Bool(v)) => out.push_bind_param::<Bool, _>(v)?,
                Some(Param::BigInts(v)) => out.push_bind_param::<Array<BigInt>, _>(v)?,
                Some(Param::Bools(v)) => out.push_bind_param::<Array<Bool>, _>(v)?,
                None => {}
            }
        }
        Ok(())
    }
}

impl QueryId for Statement {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for Statement {
    type SqlType = Untyped;
}

/// A user made by the lock.
#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    user_id: String,
}

/// The addresses locked, in byte order.
#[derive(QueryableByName)]
struct Addresses {
    #[diesel(sql_type = Array<Text>)]
    addresses: Vec<String>,
}

/// A count.
#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// A row of the read: a delivery already recorded, a locked address a row holds without a
/// Clerk id (`foreign`), or an involved user's bookkeeping row
/// (`kept`) and application row (`held`), either of which may be absent.
#[derive(QueryableByName)]
struct ReadRow {
    #[diesel(sql_type = Bool)]
    recorded: bool,
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Bool)]
    kept: bool,
    #[diesel(sql_type = Nullable<BigInt>)]
    version: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    digest: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    email: Option<String>,
    #[diesel(sql_type = Bool)]
    deleted: bool,
    #[diesel(sql_type = Bool)]
    delete_pending: bool,
    #[diesel(sql_type = Bool)]
    role_from_webhook: bool,
    #[diesel(sql_type = Bool)]
    held: bool,
    #[diesel(sql_type = Nullable<Text>)]
    address: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    updated_ms: Option<i64>,
    /// A locked address (`address`) a row holds without a Clerk id.
    #[diesel(sql_type = Bool)]
    foreign: bool,
    /// (The executor only) a user whose bookkeeping row the lock made (`id`).
    #[diesel(sql_type = Bool)]
    made: bool,
    /// (The executor only) an address locked (`address`).
    #[diesel(sql_type = Bool)]
    locked: bool,
}

/// What a [`ReadRow`] that is no user's bookkeeping and row marks.
enum Mark<'e> {
    /// A delivery recorded, by id (an expression).
    Recorded(&'e str),
    /// A user whose bookkeeping row the lock made, by id.
    Made(&'e str),
    /// An address locked.
    Locked(&'e str),
    /// A locked address a row holds without a Clerk id.
    Foreign(&'e str),
}

/// The `SELECT` list of a [`ReadRow`] marking `mark`.
fn mark(mark: Mark) -> String {
    let (recorded, id, address, foreign, made, locked) = match mark {
        Mark::Recorded(id) => (true, id, "NULL::text", false, false, false),
        Mark::Made(id) => (false, id, "NULL::text", false, true, false),
        Mark::Locked(address) => (false, "''", address, false, false, true),
        Mark::Foreign(address) => (false, "''", address, true, false, false),
    };
    format!(
        "SELECT {recorded}, {id}, false, NULL::int8, NULL::text, NULL::text, false, false, \
                false, false, {address}, NULL::int8, {foreign}, {made}, {locked}"
    )
}

/// The columns of a [`ReadRow`], as the call of the executor names them.
const READ_ROW: &str = "recorded bool, id text, kept bool, version int8, digest text, \
                        email text, deleted bool, delete_pending bool, \
                        role_from_webhook bool, held bool, address text, updated_ms int8, \
                        \"foreign\" bool, made bool, locked bool";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::port::RowWrite;
    use chrono::{TimeZone, Utc};

    fn shape() -> WriteShape {
        let column = |name: &str, bind| WriteColumn {
            name: name.into(),
            field: name.into(),
            bind,
        };
        WriteShape {
            schema: None,
            name: "User".into(),
            columns: vec![
                column("clerkId", Bind::Text),
                column("email", Bind::Text),
                column("role", Bind::Enum("\"Role\"".into())),
            ],
            clerk_id: 0,
            unique_address: Some(1),
            updated_at: None,
            created_at: None,
        }
    }

    fn sql(statement: &Statement) -> String {
        diesel::debug_query::<PgBackend, _>(statement)
            .to_string()
            .split(" -- binds")
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    fn safe_to_cache(statement: &impl QueryFragment<PgBackend>) -> bool {
        statement
            .is_safe_to_cache_prepared(&PgBackend)
            .expect("test value")
    }

    #[test]
    fn a_statement_is_cached_by_its_text_which_is_the_same_whatever_the_rows() {
        let shape = shape();
        let table = Table::new(Arc::new(shape)).expect("test value");
        let one = vec![(1, Value::Text("a@x.test".into()))];
        let two = vec![(1, Value::Text("b@x.test".into()))];
        let (one, two) = (one.as_slice(), two.as_slice());

        let single =
            Statement::build(|s| table.insert(s, &[1], &[("user_a", one)])).expect("test value");
        let double =
            Statement::build(|s| table.insert(s, &[1], &[("user_a", one), ("user_b", two)]))
                .expect("test value");

        assert!(safe_to_cache(&single));
        assert_eq!(sql(&single), sql(&double));
        assert_eq!(
            sql(&single),
            "INSERT INTO \"User\" (\"email\") SELECT cs_new.c0 FROM unnest($1::text[]) AS cs_new(c0)"
        );
    }

    fn one_write(user: &str, email: &str, exists: bool) -> (Writes, Vec<(usize, Value)>) {
        let at = Utc
            .timestamp_millis_opt(1_714_564_800_123)
            .single()
            .expect("test value");
        let writes = Writes {
            bookkeeping: vec![BookkeepingWrite {
                user_id: user.into(),
                version: 7,
                digest: "d".into(),
                email: Some(email.into()),
                role_from_webhook: false,
                tombstone: false,
                attempted: false,
            }],
            rows: vec![RowWrite {
                id: user.into(),
                name: None,
                address: email.into(),
                role: None,
                exists,
                created_at: at,
                updated_at: at,
                digest: "d".into(),
            }],
            record: vec![Record {
                svix_id: format!("msg_{user}"),
                event_type: "user.updated".into(),
                user_id: Some(user.into()),
                outcome: Outcome::Applied,
                if_refused: None,
            }],
            ..Writes::default()
        };
        let values = vec![
            (0, Value::Text(user.into())),
            (1, Value::Text(email.into())),
        ];
        (writes, values)
    }

    /// The one-statement write of `writes`, its one row writing `values`.
    fn together_of(table: &Table, writes: &Writes, values: &[(usize, Value)]) -> Statement {
        let row = [(writes.rows[0].id.as_str(), values)];
        let (inserts, updates) = if writes.rows[0].exists {
            (Vec::new(), groups(&row))
        } else {
            (groups(&row), Vec::new())
        };
        together(table, writes, &inserts, &updates).expect("test value")
    }

    #[test]
    fn a_write_made_from_its_kept_text_binds_what_one_made_anew_binds() {
        let kept = Table::new(Arc::new(shape())).expect("test value");
        let mut texts = Vec::new();
        for (user, email, exists) in [
            ("user_a", "a@x.test", false),
            ("user_b", "b@x.test", false),
            ("user_a", "c@x.test", true),
            ("user_b", "d@x.test", true),
        ] {
            let (writes, values) = one_write(user, email, exists);
            let anew = Table::new(Arc::new(shape())).expect("test value");

            let from_kept = together_of(&kept, &writes, &values);
            let made = together_of(&anew, &writes, &values);

            texts.extend(from_kept.made.clone());
            assert_eq!(
                diesel::debug_query::<PgBackend, _>(&from_kept).to_string(),
                diesel::debug_query::<PgBackend, _>(&made).to_string()
            );
            assert!(diesel::debug_query::<PgBackend, _>(&made)
                .to_string()
                .contains(email));
        }
        // One text for inserts, one for updates, each made once.
        assert_eq!(kept.texts.lock().map(|t| t.len()).ok(), Some(2));
        assert!(Arc::ptr_eq(&texts[0], &texts[1]) && Arc::ptr_eq(&texts[2], &texts[3]));
        assert!(!Arc::ptr_eq(&texts[0], &texts[2]));
    }

    #[test]
    fn a_lone_write_binds_scalars_and_a_larger_one_arrays() {
        let table = Table::new(Arc::new(shape())).expect("test value");
        let (lone, values) = one_write("user_a", "a@x.test", false);
        let (mut two, _) = one_write("user_a", "a@x.test", false);
        let (b, b_values) = one_write("user_b", "b@x.test", false);
        two.bookkeeping.extend(b.bookkeeping);
        two.record.extend(b.record);
        let rows = [
            ("user_a", values.as_slice()),
            ("user_b", b_values.as_slice()),
        ];

        let lone = sql(&together_of(&table, &lone, &values));
        let two = sql(&together(&table, &two, &groups(&rows), &[]).expect("test value"));

        assert!(!lone.contains("unnest"), "{lone}");
        assert!(
            lone.contains(
                "INSERT INTO \"User\" (\"clerkId\", \"email\") VALUES ($8::text, $9::text)"
            ),
            "{lone}"
        );
        assert!(lone.contains("WHERE s.user_id = $7::text"), "{lone}");
        assert!(two.contains("unnest"), "{two}");
        assert!(!two.contains("VALUES"), "{two}");
    }

    #[test]
    fn a_time_is_written_as_the_format_string_writes_it() {
        use chrono::{DateTime, NaiveDate, TimeZone as _, Utc};
        let mut times: Vec<DateTime<Utc>> = [
            0_i64,
            1,
            999,
            1_714_564_800_123,
            -1,
            -62_135_596_800_000,
            253_402_300_799_999,
        ]
        .iter()
        .filter_map(|ms| Utc.timestamp_millis_opt(*ms).single())
        .collect();
        let leap = NaiveDate::from_ymd_opt(2016, 12, 31)
            .and_then(|d| d.and_hms_nano_opt(23, 59, 59, 1_500_000_000))
            .map(|at| at.and_utc());
        let far = NaiveDate::from_ymd_opt(12_345, 1, 2)
            .and_then(|d| d.and_hms_micro_opt(3, 4, 5, 6))
            .map(|at| at.and_utc());
        let before = NaiveDate::from_ymd_opt(-44, 3, 15)
            .and_then(|d| d.and_hms_opt(12, 0, 0))
            .map(|at| at.and_utc());
        times.extend([leap, far, before].into_iter().flatten());
        assert_eq!(times.len(), 10);

        for at in times {
            for (zone, format) in [
                (false, "%Y-%m-%d %H:%M:%S%.6f"),
                (true, "%Y-%m-%d %H:%M:%S%.6f+00"),
            ] {
                assert_eq!(timestamp_text(&at, zone), at.format(format).to_string());
            }
        }
    }

    #[test]
    fn a_kept_text_that_does_not_fit_its_parameters_is_refused() {
        let mut s = Statement::with_text(Arc::from(vec!["SELECT ".to_owned()]));
        s.bind(Param::BigInt(1));

        assert!(matches!(s.text(), Err(DbError::Internal(_))));
    }

    #[test]
    fn diesel_never_caches_a_sql_query_even_boxed() {
        // Why `Statement` exists: `sql_query` marks itself unsafe to cache.
        let boxed = diesel::sql_query("SELECT $1")
            .into_boxed::<PgBackend>()
            .bind::<Nullable<Text>, _>(Some("x"));

        assert!(!safe_to_cache(&boxed));
        assert!(!safe_to_cache(&diesel::sql_query("SELECT 1")));
    }

    #[test]
    fn each_value_is_sent_as_the_text_its_cast_reads() {
        let at = Utc
            .timestamp_millis_opt(1_714_564_800_123)
            .single()
            .expect("test value");

        assert_eq!(
            text(&Value::Timestamp(at), &Bind::Timestamp).as_deref(),
            Some("2024-05-01 12:00:00.123000")
        );
        assert_eq!(
            text(&Value::Timestamp(at), &Bind::TimestampTz).as_deref(),
            Some("2024-05-01 12:00:00.123000+00")
        );
        assert_eq!(
            text(&Value::Float(f64::NAN), &Bind::Float).as_deref(),
            Some("NaN")
        );
        assert_eq!(
            text(&Value::Float(f64::NEG_INFINITY), &Bind::Float).as_deref(),
            Some("-Infinity")
        );
        assert_eq!(text(&Value::Null, &Bind::Uuid), None);
        assert_eq!(
            cast(&Bind::Enum("\"Role\"".into())).expect("test value"),
            "::\"Role\""
        );
        assert!(cast(&Bind::Unsupported).is_err());
    }

    #[test]
    fn an_error_keeps_its_class_but_not_the_value_the_server_echoed() {
        let echoed = DieselError::DatabaseError(
            DatabaseErrorKind::Unknown,
            Box::new("invalid input syntax for type uuid: \"secret@x.test\"".to_owned()),
        );
        let refused = DieselError::DatabaseError(
            DatabaseErrorKind::NotNullViolation,
            Box::new("null value in column \"email\" of relation \"User\"".to_owned()),
        );

        let echoed = db_error(echoed);
        let refused = db_error(refused);

        assert!(
            matches!(&echoed, DbError::Internal(t) if !t.contains("secret") && t.contains("uuid"))
        );
        assert!(matches!(&refused, DbError::Refused(t) if t.contains("\"email\"")));
    }
}
