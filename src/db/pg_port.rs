//! The port on PostgreSQL: `clerk_sync.lock_and_read` takes a unit of work's locks and reads
//! its snapshot in one statement, `clerk_sync.write_plan` writes the plan in another (both
//! in `migrations/postgres`, executors only: see [`super::port`]).
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

fn snapshot(raw: &str) -> Result<Snapshot, DbError> {
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
        snapshot.add_row(id, address, updated_ms);
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
            request.users.clone(),
            i.iter().map(|b| b.version).collect::<Vec<_>>(),
            i.iter().map(|b| b.digest.clone()).collect::<Vec<_>>(),
            i.iter().map(|b| b.email.clone()).collect::<Vec<_>>(),
            i.iter().map(|b| b.role_from_webhook).collect::<Vec<_>>(),
            request.claims.clone(),
            request.ids.clone(),
        ))
    }};
}

/// The write as a typed statement.
macro_rules! write_query {
    ($writes:expr) => {{
        let writes: &Writes = $writes;
        let (b, r, d) = (&writes.bookkeeping, &writes.rows, &writes.record);
        diesel::select(functions::write_plan(
            b.iter().map(|b| b.user_id.clone()).collect::<Vec<_>>(),
            b.iter().map(|b| b.version).collect::<Vec<_>>(),
            b.iter().map(|b| b.digest.clone()).collect::<Vec<_>>(),
            b.iter().map(|b| b.email.clone()).collect::<Vec<_>>(),
            b.iter().map(|b| b.role_from_webhook).collect::<Vec<_>>(),
            b.iter().map(|b| b.tombstone).collect::<Vec<_>>(),
            b.iter().map(|b| b.attempted).collect::<Vec<_>>(),
            writes.vacate.clone(),
            r.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
            r.iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
            r.iter().map(|r| r.address.clone()).collect::<Vec<_>>(),
            r.iter()
                .map(|r| r.role.map(|role| role.as_db().to_owned()))
                .collect::<Vec<_>>(),
            r.iter().map(|r| naive(r.created_at)).collect::<Vec<_>>(),
            r.iter().map(|r| naive(r.updated_at)).collect::<Vec<_>>(),
            r.iter().map(|r| !r.exists).collect::<Vec<_>>(),
            writes.moves.iter().map(|m| m.0.clone()).collect::<Vec<_>>(),
            writes.moves.iter().map(|m| m.1.clone()).collect::<Vec<_>>(),
            writes.deletes.clone(),
            d.iter().map(|d| d.svix_id.clone()).collect::<Vec<_>>(),
            d.iter().map(|d| d.event_type.clone()).collect::<Vec<_>>(),
            d.iter().map(|d| d.user_id.clone()).collect::<Vec<_>>(),
            d.iter()
                .map(|d| d.outcome.as_str().to_owned())
                .collect::<Vec<_>>(),
            d.iter()
                .map(|d| d.if_refused.map(|o| o.as_str().to_owned()))
                .collect::<Vec<_>>(),
        ))
    }};
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
            let begin = begin_on.batch_execute(self.begin_sql());
            let read = read_query!(&request).get_result::<String>(&mut read_on);
            let (begun, read) = futures_util::future::join(begin, read).await;
            begun?;
            let (writes, value) = plan(&snapshot(&read?)?)?;
            let mut on = conn;
            if writes.is_empty() {
                on.batch_execute("COMMIT").await?;
                return Ok((value, Deleted::default()));
            }
            let done = if self.prepared_on(id) {
                // Unconstrained: tokio's cooperative budget must not make the write's first
                // poll stop short of sending it.
                tokio::task::unconstrained(async {
                    let (mut write_on, mut commit_on) = (conn, conn);
                    let mut write = std::pin::pin!(
                        write_query!(&writes).get_result::<Vec<String>>(&mut write_on)
                    );
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
                let done = write_query!(&writes)
                    .get_result::<Vec<String>>(&mut on)
                    .await?;
                on.batch_execute("COMMIT").await?;
                self.note_prepared(id);
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

/// A pool connection inside a transaction [`Pg::transact`] opened. Dropped before
/// [`Self::release`] (a failed rollback, a panic in the planner, a cancelled future), it is
/// detached from the pool and closed, so that the server rolls the transaction back and the
/// pool never hands it out mid-transaction.
struct InTransaction(Option<PgObject>);

/// A connection of [`Pg`]'s pool.
type PgObject = deadpool::managed::Object<AsyncDieselConnectionManager<AsyncPgConnection>>;

impl InTransaction {
    fn object(&self) -> Result<&PgObject, DbError> {
        self.0
            .as_ref()
            .ok_or_else(|| DbError::Internal("a unit of work without its connection".into()))
    }

    fn connection(&self) -> Result<&AsyncPgConnection, DbError> {
        Ok(self.object()?)
    }

    fn id(&self) -> Result<ObjectId, DbError> {
        Ok(deadpool::managed::Object::id(self.object()?))
    }

    /// The transaction ended: the connection goes back to the pool.
    fn release(mut self) {
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

/// Most connections [`Pg::note_prepared`] remembers before it starts over: the pool holds far
/// fewer, so only connections replaced many times over are forgotten (and they then take one
/// more round trip on their next write).
const PREPARED_REMEMBERED: usize = 1_024;

impl Pg {
    /// Whether the write's statement was prepared on the pool connection `id` (its statement
    /// cache keeps it for the connection's life; deadpool never reuses an id). Never
    /// through a pooler: there nothing stays prepared.
    fn prepared_on(&self, id: ObjectId) -> bool {
        !self.pooler().safe()
            && self
                .prepared
                .lock()
                .is_ok_and(|prepared| prepared.contains(&id))
    }

    /// Notes that a write ran on the pool connection `id`.
    fn note_prepared(&self, id: ObjectId) {
        if self.pooler().safe() {
            return;
        }
        if let Ok(mut prepared) = self.prepared.lock() {
            if prepared.len() >= PREPARED_REMEMBERED {
                prepared.clear();
            }
            prepared.insert(id);
        }
    }
}
