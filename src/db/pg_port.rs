//! The port on PostgreSQL: `clerk_sync.lock_and_read` takes a unit of work's locks and reads
//! its snapshot in one statement, `clerk_sync.write_plan` writes the plan in another (both
//! in `migrations/postgres`, executors only: see [`super::port`]).
//!
//! On a direct connection the unit of work is two round trips: `BEGIN` pipelined with the
//! read, then the write pipelined with `COMMIT`. Through a transaction pooler (pooler-safe
//! mode) each statement is prepared within the transaction, so they go one after another.

use chrono::NaiveDateTime;
use diesel::sql_types::{Array, BigInt, Bool, Integer, Nullable, Text, Timestamp};
use diesel::QueryableByName;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};

use super::port::{AppRow, Bookkeeping, Deleted, Request, Snapshot, Writes};
use super::postgres::Pg;
use super::DbError;

#[derive(QueryableByName)]
struct Item {
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Text)]
    key: String,
    #[diesel(sql_type = Nullable<Text>)]
    address: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    version: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    digest: Option<String>,
    #[diesel(sql_type = Nullable<Integer>)]
    flags: Option<i32>,
    #[diesel(sql_type = Nullable<BigInt>)]
    updated_ms: Option<i64>,
}

const READ: &str = "SELECT * FROM clerk_sync.lock_and_read($1, $2, $3)";

const WRITE: &str = "SELECT clerk_sync.write_plan($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
                     $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22) AS done";

#[derive(QueryableByName)]
struct Done {
    #[diesel(sql_type = Array<Text>)]
    done: Vec<String>,
}

type Query =
    diesel::query_builder::BoxedSqlQuery<'static, diesel::pg::Pg, diesel::query_builder::SqlQuery>;

fn read_query(request: &Request) -> Query {
    diesel::sql_query(READ)
        .into_boxed()
        .bind::<Array<Text>, _>(request.users.clone())
        .bind::<Array<Text>, _>(request.claims.clone())
        .bind::<Array<Text>, _>(request.ids.clone())
}

fn snapshot(items: Vec<Item>) -> Result<Snapshot, DbError> {
    let mut snapshot = Snapshot::default();
    for item in items {
        match item.kind.as_str() {
            "a" => {
                snapshot.addresses.insert(item.key);
            }
            "r" => {
                snapshot.recorded.insert(item.key);
            }
            "b" => {
                let flags = item.flags.unwrap_or(0);
                snapshot.users.insert(
                    item.key,
                    Bookkeeping {
                        version: item.version.unwrap_or(-1),
                        digest: item.digest.unwrap_or_default(),
                        email: item.address,
                        deleted: flags & 1 != 0,
                        delete_pending: flags & 2 != 0,
                        role_from_webhook: flags & 4 != 0,
                    },
                );
            }
            "w" => {
                let address = item.address.ok_or_else(|| {
                    DbError::Internal("clerk_sync.lock_and_read read a row without address".into())
                })?;
                snapshot.rows.insert(
                    item.key,
                    AppRow {
                        address,
                        updated_ms: item.updated_ms.unwrap_or(0),
                    },
                );
            }
            other => {
                return Err(DbError::Internal(format!(
                    "clerk_sync.lock_and_read answered an unknown item {other:?}"
                )))
            }
        }
    }
    Ok(snapshot)
}

fn naive(at: chrono::DateTime<chrono::Utc>) -> NaiveDateTime {
    at.naive_utc()
}

fn write_query(writes: &Writes) -> Query {
    let b = &writes.bookkeeping;
    let r = &writes.rows;
    let d = &writes.record;
    diesel::sql_query(WRITE)
        .into_boxed()
        .bind::<Array<Text>, _>(b.iter().map(|b| b.user_id.clone()).collect::<Vec<_>>())
        .bind::<Array<BigInt>, _>(b.iter().map(|b| b.version).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(b.iter().map(|b| b.digest.clone()).collect::<Vec<_>>())
        .bind::<Array<Nullable<Text>>, _>(b.iter().map(|b| b.email.clone()).collect::<Vec<_>>())
        .bind::<Array<Bool>, _>(b.iter().map(|b| b.role_from_webhook).collect::<Vec<_>>())
        .bind::<Array<Bool>, _>(b.iter().map(|b| b.tombstone).collect::<Vec<_>>())
        .bind::<Array<Bool>, _>(b.iter().map(|b| b.attempted).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(writes.vacate.clone())
        .bind::<Array<Text>, _>(r.iter().map(|r| r.id.clone()).collect::<Vec<_>>())
        .bind::<Array<Nullable<Text>>, _>(r.iter().map(|r| r.name.clone()).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(r.iter().map(|r| r.address.clone()).collect::<Vec<_>>())
        .bind::<Array<Nullable<Text>>, _>(
            r.iter()
                .map(|r| r.role.map(|role| role.as_db().to_owned()))
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Timestamp>, _>(r.iter().map(|r| naive(r.created_at)).collect::<Vec<_>>())
        .bind::<Array<Timestamp>, _>(r.iter().map(|r| naive(r.updated_at)).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(writes.moves.iter().map(|m| m.0.clone()).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(writes.moves.iter().map(|m| m.1.clone()).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(writes.deletes.clone())
        .bind::<Array<Text>, _>(d.iter().map(|d| d.svix_id.clone()).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(d.iter().map(|d| d.event_type.clone()).collect::<Vec<_>>())
        .bind::<Array<Nullable<Text>>, _>(d.iter().map(|d| d.user_id.clone()).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(
            d.iter()
                .map(|d| d.outcome.as_str().to_owned())
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Nullable<Text>>, _>(
            d.iter()
                .map(|d| d.if_refused.map(|o| o.as_str().to_owned()))
                .collect::<Vec<_>>(),
        )
}

impl Pg {
    /// One unit of work: lock and read `request`, plan, write, commit (see [`super::port`]).
    pub(super) async fn transact<T, F>(
        &self,
        request: Request,
        plan: F,
    ) -> Result<(T, Deleted), DbError>
    where
        F: FnOnce(&Snapshot) -> Result<(Writes, T), DbError>,
    {
        let mut conn = self.pool.get().await?;
        if self.pooler().safe() {
            return self
                .transaction_on(&mut conn, async move |conn| {
                    let items: Vec<Item> = read_query(&request).load(conn).await?;
                    let (writes, value) = plan(&snapshot(items)?)?;
                    if writes.is_empty() {
                        return Ok((value, Deleted::default()));
                    }
                    let done: Done = write_query(&writes).get_result(conn).await?;
                    Ok((value, Deleted(done.done.into_iter().collect())))
                })
                .await;
        }
        // `BEGIN` and the read in one round trip, the write and `COMMIT` in another. diesel
        // does not see this transaction: it is ended here, whatever happens.
        let result = async {
            let (mut begin_on, mut read_on) = (&*conn, &*conn);
            let begin = diesel::sql_query("BEGIN").execute(&mut begin_on);
            let read = read_query(&request).load::<Item>(&mut read_on);
            let (_, items) = futures_util::future::try_join(begin, read).await?;
            let (writes, value) = plan(&snapshot(items)?)?;
            let (mut write_on, mut commit_on) = (&*conn, &*conn);
            if writes.is_empty() {
                diesel::sql_query("COMMIT").execute(&mut commit_on).await?;
                return Ok((value, Deleted::default()));
            }
            let write = write_query(&writes).get_result::<Done>(&mut write_on);
            let commit = diesel::sql_query("COMMIT").execute(&mut commit_on);
            // The write's error is the one to report: a COMMIT after it only ends the
            // aborted transaction.
            let (done, committed) = futures_util::future::join(write, commit).await;
            let done = done?;
            committed?;
            Ok::<_, DbError>((value, Deleted(done.done.into_iter().collect())))
        }
        .await;
        if result.is_err() {
            // Whatever failed, no transaction may outlive this unit of work on a connection
            // the pool hands out again; if even that fails, the connection is dropped.
            if conn.batch_execute("ROLLBACK").await.is_err() {
                let _ = deadpool::managed::Object::take(conn);
            }
        }
        result
    }
}
