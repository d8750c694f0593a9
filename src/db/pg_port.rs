//! The port on PostgreSQL: `clerk_sync.lock_and_read` takes a unit of work's locks and reads
//! its snapshot in one statement, `clerk_sync.write_plan` writes the plan in another (both
//! in `migrations/postgres`, executors only: see [`super::port`]). A lone unit of work (one
//! user, one claim, one delivery; one row of each kind written, nothing moved or deleted)
//! goes through `clerk_sync.lock_and_read_one` and `clerk_sync.write_one` instead, which do
//! the same with scalar parameters and fewer statements.
//!
//! The unit of work is two round trips: `BEGIN` pipelined with the read, then the write
//! pipelined with `COMMIT` (see [`Pg::transact`]). The first unit of work on a connection, and
//! every one through a transaction pooler (pooler-safe mode, where the statement cache is off
//! and each statement is prepared within the transaction), takes three: the write, then
//! `COMMIT`.

use chrono::NaiveDateTime;
use std::future::Future as _;
use std::task::Poll;

use deadpool::managed::ObjectId;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::AsyncPgConnection;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use serde::Deserialize;

use super::port::{Deleted, Request, Snapshot, StoredRow, Writes};
use super::postgres::Pg;
use super::DbError;
use crate::domain::Role;

#[expect(
    clippy::too_many_arguments,
    reason = "the executors take one array per column of what they read or write"
)]
mod functions {
    use diesel::sql_types::{Array, BigInt, Bool, Nullable, Text, Timestamp};

    diesel::define_sql_function! {
        /// Locks, then reads the snapshot (JSON).
        #[sql_name = "clerk_sync.lock_and_read"]
        fn lock_and_read(
            users: Array<Text>,
            i_version: Array<BigInt>,
            i_digest: Array<Text>,
            i_email: Array<Nullable<Text>>,
            i_role: Array<Bool>,
            claims: Array<Text>,
            ids: Array<Text>,
        ) -> Text;
    }

    diesel::define_sql_function! {
        /// Locks, then reads the snapshot (JSON) of a lone unit of work.
        #[sql_name = "clerk_sync.lock_and_read_one"]
        fn lock_and_read_one(
            user: Text,
            i_version: BigInt,
            i_digest: Text,
            i_email: Nullable<Text>,
            i_role: Bool,
            claim: Nullable<Text>,
            id: Nullable<Text>,
        ) -> Text;
    }

    diesel::define_sql_function! {
        /// Writes a lone plan (each part absent where its key is NULL; never a delete).
        #[sql_name = "clerk_sync.write_one"]
        fn write_one(
            b_user: Nullable<Text>,
            b_version: Nullable<BigInt>,
            b_digest: Nullable<Text>,
            b_email: Nullable<Text>,
            b_role: Nullable<Bool>,
            b_tombstone: Nullable<Bool>,
            b_attempted: Nullable<Bool>,
            r_id: Nullable<Text>,
            r_name: Nullable<Text>,
            r_address: Nullable<Text>,
            r_role: Nullable<Text>,
            r_created: Nullable<Timestamp>,
            r_updated: Nullable<Timestamp>,
            r_new: Nullable<Bool>,
            d_id: Nullable<Text>,
            d_type: Nullable<Text>,
            d_user: Nullable<Text>,
            d_outcome: Nullable<Text>,
        ) -> Array<Text>;
    }

    diesel::define_sql_function! {
        /// Writes a plan; answers the users whose rows were deleted.
        #[sql_name = "clerk_sync.write_plan"]
        fn write_plan(
            b_user: Array<Text>,
            b_version: Array<BigInt>,
            b_digest: Array<Text>,
            b_email: Array<Nullable<Text>>,
            b_role: Array<Bool>,
            b_tombstone: Array<Bool>,
            b_attempted: Array<Bool>,
            vacate: Array<Text>,
            r_id: Array<Text>,
            r_name: Array<Nullable<Text>>,
            r_address: Array<Text>,
            r_role: Array<Nullable<Text>>,
            r_created: Array<Timestamp>,
            r_updated: Array<Timestamp>,
            r_new: Array<Bool>,
            m_id: Array<Text>,
            m_address: Array<Text>,
            deletes: Array<Text>,
            d_id: Array<Text>,
            d_type: Array<Text>,
            d_user: Array<Nullable<Text>>,
            d_outcome: Array<Text>,
            d_refused: Array<Nullable<Text>>,
        ) -> Array<Text>;
    }
}

/// `clerk_sync.lock_and_read`'s answer.
#[derive(Deserialize)]
struct Read {
    a: Vec<String>,
    m: Vec<String>,
    r: Vec<String>,
    b: Vec<StoredRow>,
    w: Vec<(String, String, i64)>,
}

/// Reads `clerk_sync.lock_and_read`'s answer to `request`. A bookkeeping row the executor made
/// holds the request's initial values; where the answer leaves such a row out (a bulk batch's
/// read does), they are what it holds.
fn snapshot(raw: &str, request: &Request) -> Result<Snapshot, DbError> {
    let read: Read = serde_json::from_str(raw).map_err(|e| {
        DbError::Internal(format!("clerk_sync.lock_and_read answered unreadably: {e}"))
    })?;
    let mut snapshot = Snapshot {
        addresses: read.a.into_iter().collect(),
        made: read.m.into_iter().collect(),
        recorded: read.r.into_iter().collect(),
        ..Snapshot::default()
    };
    for row in read.b {
        snapshot.add_bookkeeping(row);
    }
    for (id, address, updated_ms) in read.w {
        snapshot.add_row(id, Some(address), updated_ms);
    }
    if !snapshot.made.is_empty() {
        for (user, initial) in request.users.iter().zip(&request.initial) {
            if snapshot.made.contains(user) && !snapshot.users.contains_key(user) {
                snapshot.users.insert(user.clone(), initial.clone());
            }
        }
    }
    Ok(snapshot)
}

fn naive(at: chrono::DateTime<chrono::Utc>) -> NaiveDateTime {
    at.naive_utc()
}

/// The read as a typed statement (prepared once per connection, then one round trip).
macro_rules! read_query {
    ($request:expr) => {{
        let request: &Request = $request;
        let i = &request.initial;
        diesel::select(functions::lock_and_read(
            &request.users,
            i.iter().map(|b| b.version).collect::<Vec<_>>(),
            i.iter().map(|b| b.digest.as_str()).collect::<Vec<_>>(),
            i.iter().map(|b| b.email.as_deref()).collect::<Vec<_>>(),
            i.iter().map(|b| b.role_from_webhook).collect::<Vec<_>>(),
            &request.claims,
            &request.ids,
        ))
    }};
}

/// Whether a request is lone: one user, at most one address claimed and one delivery id
/// (`clerk_sync.lock_and_read_one`).
pub(super) fn lone_request(request: &Request) -> bool {
    request.users.len() == 1
        && request.initial.len() == 1
        && request.claims.len() <= 1
        && request.ids.len() <= 1
}

/// Whether a plan is lone: at most one bookkeeping row, one application row and one record
/// with one outcome, nothing vacated, moved or deleted (`clerk_sync.write_one`).
/// `write_one` takes no outcome-if-refused: `write_plan` records that one whenever the
/// record's user was not deleted by the plan, so a record carrying one is written by
/// `write_plan`, whatever else the plan holds.
fn lone_writes(writes: &Writes) -> bool {
    writes.bookkeeping.len() <= 1
        && writes.vacate.is_empty()
        && writes.rows.len() <= 1
        && writes.moves.is_empty()
        && writes.deletes.is_empty()
        && writes.record.len() <= 1
        && writes.record.iter().all(|r| r.if_refused.is_none())
}

/// The read of a lone request as a typed statement.
macro_rules! read_one_query {
    ($request:expr) => {{
        let request: &Request = $request;
        let initial = request.initial.iter().next();
        diesel::select(functions::lock_and_read_one(
            request.users.iter().next().cloned().unwrap_or_default(),
            initial.map_or(-1, |b| b.version),
            initial.map(|b| b.digest.clone()).unwrap_or_default(),
            initial.and_then(|b| b.email.clone()),
            initial.is_some_and(|b| b.role_from_webhook),
            request.claims.iter().next().cloned(),
            request.ids.iter().next().cloned(),
        ))
    }};
}

/// The write of a lone plan as a typed statement.
macro_rules! write_one_query {
    ($writes:expr) => {{
        let writes: &Writes = $writes;
        let (b, r, d) = (
            writes.bookkeeping.iter().next(),
            writes.rows.iter().next(),
            writes.record.iter().next(),
        );
        diesel::select(functions::write_one(
            b.map(|b| b.user_id.clone()),
            b.map(|b| b.version),
            b.map(|b| b.digest.clone()),
            b.and_then(|b| b.email.clone()),
            b.map(|b| b.role_from_webhook),
            b.map(|b| b.tombstone),
            b.map(|b| b.attempted),
            r.map(|r| r.id.clone()),
            r.and_then(|r| r.name.clone()),
            r.map(|r| r.address.clone()),
            r.and_then(|r| r.role.map(|role| role.as_db().to_owned())),
            r.map(|r| naive(r.created_at)),
            r.map(|r| naive(r.updated_at)),
            r.map(|r| !r.exists),
            d.map(|d| d.svix_id.clone()),
            d.map(|d| d.event_type.clone()),
            d.and_then(|d| d.user_id.clone()),
            d.map(|d| d.outcome.as_str().to_owned()),
        ))
    }};
}

/// The write as a typed statement.
macro_rules! write_query {
    ($writes:expr) => {{
        let writes: &Writes = $writes;
        let (b, r, d) = (&writes.bookkeeping, &writes.rows, &writes.record);
        diesel::select(functions::write_plan(
            b.iter().map(|b| b.user_id.as_str()).collect::<Vec<_>>(),
            b.iter().map(|b| b.version).collect::<Vec<_>>(),
            b.iter().map(|b| b.digest.as_str()).collect::<Vec<_>>(),
            b.iter().map(|b| b.email.as_deref()).collect::<Vec<_>>(),
            b.iter().map(|b| b.role_from_webhook).collect::<Vec<_>>(),
            b.iter().map(|b| b.tombstone).collect::<Vec<_>>(),
            b.iter().map(|b| b.attempted).collect::<Vec<_>>(),
            &writes.vacate,
            r.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            r.iter().map(|r| r.name.as_deref()).collect::<Vec<_>>(),
            r.iter().map(|r| r.address.as_str()).collect::<Vec<_>>(),
            r.iter()
                .map(|r| r.role.map(Role::as_db))
                .collect::<Vec<_>>(),
            r.iter().map(|r| naive(r.created_at)).collect::<Vec<_>>(),
            r.iter().map(|r| naive(r.updated_at)).collect::<Vec<_>>(),
            r.iter().map(|r| !r.exists).collect::<Vec<_>>(),
            writes
                .moves
                .iter()
                .map(|m| m.0.as_str())
                .collect::<Vec<_>>(),
            writes
                .moves
                .iter()
                .map(|m| m.1.as_str())
                .collect::<Vec<_>>(),
            &writes.deletes,
            d.iter().map(|d| d.svix_id.as_str()).collect::<Vec<_>>(),
            d.iter().map(|d| d.event_type.as_str()).collect::<Vec<_>>(),
            d.iter().map(|d| d.user_id.as_deref()).collect::<Vec<_>>(),
            d.iter().map(|d| d.outcome.as_str()).collect::<Vec<_>>(),
            d.iter()
                .map(|d| d.if_refused.map(|o| o.as_str()))
                .collect::<Vec<_>>(),
        ))
    }};
}

/// Sends a plan's write (`clerk_sync.write_one` for a lone plan) on its first poll.
async fn write(
    mut on: &AsyncPgConnection,
    writes: &Writes,
    lone: bool,
) -> diesel::QueryResult<Vec<String>> {
    if lone {
        write_one_query!(writes).get_result(&mut on).await
    } else {
        write_query!(writes).get_result(&mut on).await
    }
}

impl Pg {
    /// One unit of work: lock and read `request`, plan, write, commit (see [`super::port`]).
    /// `BEGIN` (through a pooler, with its `SET LOCAL`s) pipelined with the read (`BEGIN`
    /// goes first, so whatever the read sends comes after it); then the write pipelined with
    /// `COMMIT` where the write's statement is known to be prepared on the connection, else
    /// the write and then `COMMIT`. diesel does not see this transaction: it is ended here,
    /// whatever happens.
    pub(super) async fn transact<T, F>(
        &self,
        request: Request,
        plan: F,
    ) -> Result<(T, Deleted), DbError>
    where
        F: FnOnce(&Snapshot) -> Result<(Writes, T), DbError>,
    {
        let open = InTransaction(Some(self.pool.get().await?));
        let conn: &AsyncPgConnection = open.connection()?;
        let id = open.id()?;
        let result = async {
            let (mut begin_on, mut read_on) = (conn, conn);
            let by_key;
            let begin_sql = if !lone_request(&request) {
                by_key = format!("{}; {BY_KEY}", self.begin_sql());
                &by_key
            } else {
                self.begin_sql()
            };
            let begin = begin_on.batch_execute(begin_sql);
            // (Either statement is sent on this future's first poll, after BEGIN's.)
            let read = async {
                if lone_request(&request) {
                    read_one_query!(&request)
                        .get_result::<String>(&mut read_on)
                        .await
                } else {
                    read_query!(&request)
                        .get_result::<String>(&mut read_on)
                        .await
                }
            };
            let (begun, read) = futures_util::future::join(begin, read).await;
            begun?;
            let (writes, value) = plan(&snapshot(&read?, &request)?)?;
            let mut on = conn;
            if writes.is_empty() {
                on.batch_execute("COMMIT").await?;
                return Ok((value, Deleted::default()));
            }
            let lone = lone_writes(&writes);
            let write = |on| write(on, &writes, lone);
            let statement = (id, lone);
            let done = if self.prepared_on(statement) {
                // Unconstrained: tokio's cooperative budget must not make the write's first
                // poll stop short of sending it.
                tokio::task::unconstrained(async {
                    let mut commit_on = conn;
                    let mut write = std::pin::pin!(write(conn));
                    // The write's statement is prepared on this connection, so its first poll
                    // sends its execution; the COMMIT sent after that follows it. A write that
                    // ended on that poll failed before sending anything: no COMMIT then.
                    let first =
                        std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
                    if let Poll::Ready(done) = first {
                        let done = done?;
                        on.batch_execute("COMMIT").await?;
                        return Ok::<_, DbError>(done);
                    }
                    let commit = commit_on.batch_execute("COMMIT");
                    let (done, committed) = futures_util::future::join(write, commit).await;
                    let done = done?;
                    committed?;
                    Ok(done)
                })
                .await?
            } else {
                // Not pipelined with COMMIT: a statement this connection has not prepared
                // yet is prepared first, and a COMMIT sent meanwhile would overtake its
                // execution.
                let done = write(conn).await?;
                on.batch_execute("COMMIT").await?;
                self.note_prepared(statement);
                done
            };
            Ok::<_, DbError>((value, Deleted(done.into_iter().collect())))
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
}

/// A pool connection inside a transaction [`Pg::transact`] (or `Pg::transact_mapped`)
/// opened. Dropped before [`Self::release`] (a failed rollback, a panic in the planner, a
/// cancelled future), it is detached from the pool and closed, so that the server rolls the
/// transaction back and the pool never hands it out mid-transaction.
pub(super) struct InTransaction(pub(super) Option<PgObject>);

/// A connection of [`Pg`]'s pool.
type PgObject = deadpool::managed::Object<AsyncDieselConnectionManager<AsyncPgConnection>>;

impl InTransaction {
    fn object(&self) -> Result<&PgObject, DbError> {
        self.0
            .as_ref()
            .ok_or_else(|| DbError::Internal("a unit of work without its connection".into()))
    }

    pub(super) fn connection(&self) -> Result<&AsyncPgConnection, DbError> {
        Ok(self.object()?)
    }

    fn id(&self) -> Result<ObjectId, DbError> {
        Ok(deadpool::managed::Object::id(self.object()?))
    }

    /// The transaction ended: the connection goes back to the pool.
    pub(super) fn release(mut self) {
        drop(self.0.take());
    }
}

impl Drop for InTransaction {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            drop(deadpool::managed::Object::take(conn));
        }
    }
}

/// A write statement on a pool connection: the connection, and whether it is the lone write.
pub(super) type WriteStatement = (ObjectId, bool);

/// Most statements [`Pg::note_prepared`] remembers before it starts over: the pool holds far
/// fewer, so only connections replaced many times over are forgotten (and they then take one
/// more round trip on their next write).
const PREPARED_REMEMBERED: usize = 1_024;

/// Plans that reach every table by its keys, set for a transaction (here every one but a lone
/// delivery's: a group commit's and a bulk batch's; every one on a mapped table in
/// [`super::pg_mapped`]). A group commit's statements are planned once per connection and the
/// plan kept; free to choose, one made after autovacuum analyzed a table that was small may
/// read it whole for a handful of keys (with this setting, 16 clients ran 1.11–1.12× faster,
/// after a one-client phase and on a fresh table alike: BENCHMARKS.md, session 17). A bulk
/// batch (more than 64 users; a group commit never holds more) `clerk_sync.lock_and_read`
/// reads with statements of its own (migration 20), each table through one index scan over the
/// batch's keys. Free to choose, the planner reads a table
/// whole once it judges that cheaper than an index probe per key — for a batch of hundreds of
/// keys, or for a plan made while the table was small and kept as it grows — and tables are
/// not analyzed while a backfill runs: a 200,000-user backfill read `clerk_sync.users` and
/// `"User"` whole 139 and 117 times where the index would have served each key.
pub(super) const BY_KEY: &str = "SET LOCAL enable_seqscan = off; \
                                 SET LOCAL enable_hashjoin = off; \
                                 SET LOCAL enable_mergejoin = off";

impl Pg {
    /// Whether a write statement (the lone one, or the other) was prepared on the pool
    /// connection `id` (its statement cache keeps it for the connection's life; deadpool never
    /// reuses an id). Never through a pooler: there nothing stays prepared.
    fn prepared_on(&self, statement: WriteStatement) -> bool {
        !self.pooler().safe()
            && self
                .prepared
                .lock()
                .is_ok_and(|prepared| prepared.contains(&statement))
    }

    /// Notes that a write statement ran on a pool connection.
    fn note_prepared(&self, statement: WriteStatement) {
        if self.pooler().safe() {
            return;
        }
        if let Ok(mut prepared) = self.prepared.lock() {
            if prepared.len() >= PREPARED_REMEMBERED {
                prepared.clear();
            }
            prepared.insert(statement);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::port::Record;
    use crate::domain::Outcome;

    fn record(if_refused: Option<Outcome>) -> Record {
        Record {
            svix_id: "msg_1".into(),
            event_type: "user.deleted".into(),
            user_id: Some("user_1".into()),
            outcome: Outcome::Applied,
            if_refused,
        }
    }

    #[test]
    fn a_record_with_an_outcome_if_refused_is_not_written_by_the_lone_executor() {
        let plain = Writes {
            record: vec![record(None)],
            ..Writes::default()
        };
        let refusable = Writes {
            record: vec![record(Some(Outcome::Deferred))],
            ..Writes::default()
        };

        assert!(lone_writes(&plain));
        assert!(!lone_writes(&refusable));
    }
}
