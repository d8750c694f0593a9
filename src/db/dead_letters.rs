//! Dead letters in clerk-sync's own tables (`clerk_sync.dead_letters`, `clerk_sync_dead_letters`
//! on SQLite); what they are and when one is kept is decided in `crate::sync::dead_letter`.
//!
//! Each write is one transaction that works through a transaction-mode pooler: every value is
//! a bind parameter, and writers take turns on the `dead_letter_drops` row (a row lock held
//! until commit) rather than on a session lock, so that the cap is counted on a table no
//! other writer is changing.

use diesel::sql_types::{BigInt, Integer, Nullable, Text};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;

use super::{Database, DbError};

/// A dead letter to keep.
#[derive(Debug, Clone)]
pub struct NewDeadLetter {
    /// The delivery's `svix-id` (or `webhook-id`).
    pub svix_id: String,
    /// Its headers, as a JSON array of `[name, value]` pairs.
    pub headers: String,
    /// Its raw body.
    pub body: String,
    /// `invalid_event` or `refused`.
    pub reason: &'static str,
    /// The error's text.
    pub detail: String,
}

/// How much is kept at most; past it the oldest are dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetterLimits {
    /// Most dead letters kept (0: none are kept).
    pub max_count: u64,
    /// Most bytes of headers and bodies kept.
    pub max_bytes: u64,
}

impl Default for DeadLetterLimits {
    fn default() -> Self {
        Self {
            max_count: 10_000,
            max_bytes: 100 * 1024 * 1024,
        }
    }
}

/// What keeping one did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept {
    /// How often this `svix-id` arrived as a dead letter so far (1 the first time).
    pub attempts: i32,
    /// Dead letters dropped now to stay within the cap.
    pub dropped: u64,
    /// False when this one was not kept: it alone is larger than the byte cap (it is counted
    /// as dropped, and nothing else is).
    pub kept: bool,
}

impl Kept {
    const TOO_LARGE: Kept = Kept {
        attempts: 0,
        dropped: 1,
        kept: false,
    };
}

/// A dead letter as stored.
#[derive(Debug, Clone, QueryableByName)]
pub struct StoredDeadLetter {
    /// The delivery's id.
    #[diesel(sql_type = Text)]
    pub svix_id: String,
    /// Its headers, a JSON array of `[name, value]` pairs.
    #[diesel(sql_type = Text)]
    pub headers: String,
    /// Its raw body.
    #[diesel(sql_type = Text)]
    pub body: String,
    /// `invalid_event` or `refused`.
    #[diesel(sql_type = Text)]
    pub reason: String,
    /// The error's text.
    #[diesel(sql_type = Text)]
    pub detail: String,
    /// When it first arrived (UTC, RFC 3339).
    #[diesel(sql_type = Text)]
    pub first_seen: String,
    /// When it last arrived (UTC, RFC 3339).
    #[diesel(sql_type = Text)]
    pub last_seen: String,
    /// How often it arrived.
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
}

/// The dead letters kept, for `/metrics` and `clerk-sync status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, QueryableByName, serde::Serialize)]
pub struct DeadLetterStats {
    /// Dead letters kept.
    #[diesel(sql_type = BigInt)]
    pub kept: i64,
    /// Their bytes.
    #[diesel(sql_type = BigInt)]
    pub bytes: i64,
    /// Dropped so far to stay within the cap.
    #[diesel(sql_type = BigInt)]
    pub dropped: i64,
    /// Bytes dropped so far.
    #[diesel(sql_type = BigInt)]
    pub dropped_bytes: i64,
    /// When the oldest kept first arrived (UTC, RFC 3339).
    #[diesel(sql_type = Nullable<Text>)]
    pub oldest_first_seen: Option<String>,
}

#[derive(QueryableByName)]
struct Attempts {
    #[diesel(sql_type = Integer)]
    attempts: i32,
}

#[derive(QueryableByName)]
struct Dropped {
    #[diesel(sql_type = BigInt)]
    bytes: i64,
}

/// The SQL of one backend: the statements are the same but for table names and clocks.
struct Sql {
    lock: &'static str,
    upsert: &'static str,
    trim: &'static str,
    count_drops: &'static str,
    list: &'static str,
    remove: &'static str,
    stats: &'static str,
}

const POSTGRES: Sql = Sql {
    lock: "SELECT 1 AS attempts FROM clerk_sync.dead_letter_drops WHERE id = 1 FOR UPDATE",
    upsert: "INSERT INTO clerk_sync.dead_letters (svix_id, headers, body, reason, detail, bytes)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (svix_id) DO UPDATE
                SET headers = EXCLUDED.headers, body = EXCLUDED.body, reason = EXCLUDED.reason,
                    detail = EXCLUDED.detail, bytes = EXCLUDED.bytes, last_seen = now(),
                    attempts = clerk_sync.dead_letters.attempts + 1
             RETURNING attempts",
    trim: "DELETE FROM clerk_sync.dead_letters WHERE svix_id IN (
               SELECT svix_id FROM (
                   SELECT svix_id, row_number() OVER w AS n, sum(bytes) OVER w AS running
                     FROM clerk_sync.dead_letters
                   WINDOW w AS (ORDER BY first_seen DESC, svix_id DESC)
               ) ranked
               WHERE n > $1 OR running > $2)
           RETURNING bytes",
    count_drops: "UPDATE clerk_sync.dead_letter_drops
                     SET dropped = dropped + $1, dropped_bytes = dropped_bytes + $2 WHERE id = 1",
    list: "SELECT svix_id, headers, body, reason, detail,
                  to_char(first_seen AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS first_seen,
                  to_char(last_seen AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS last_seen,
                  attempts
             FROM clerk_sync.dead_letters ORDER BY first_seen, svix_id",
    remove: "DELETE FROM clerk_sync.dead_letters WHERE svix_id = $1",
    stats: "SELECT (SELECT count(*) FROM clerk_sync.dead_letters) AS kept,
                   (SELECT coalesce(sum(bytes), 0)::bigint FROM clerk_sync.dead_letters) AS bytes,
                   d.dropped, d.dropped_bytes,
                   (SELECT to_char(min(first_seen) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')
                      FROM clerk_sync.dead_letters) AS oldest_first_seen
              FROM clerk_sync.dead_letter_drops d WHERE d.id = 1",
};

const SQLITE: Sql = Sql {
    // SQLite's writer lock (BEGIN IMMEDIATE) already makes writers take turns.
    lock: "SELECT 1 AS attempts",
    upsert: "INSERT INTO clerk_sync_dead_letters (svix_id, headers, body, reason, detail, bytes)
             VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT (svix_id) DO UPDATE
                SET headers = excluded.headers, body = excluded.body, reason = excluded.reason,
                    detail = excluded.detail, bytes = excluded.bytes,
                    last_seen = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                    attempts = clerk_sync_dead_letters.attempts + 1
             RETURNING attempts",
    trim: "DELETE FROM clerk_sync_dead_letters WHERE svix_id IN (
               SELECT svix_id FROM (
                   SELECT svix_id, row_number() OVER w AS n, sum(bytes) OVER w AS running
                     FROM clerk_sync_dead_letters
                   WINDOW w AS (ORDER BY first_seen DESC, svix_id DESC)
               ) ranked
               WHERE n > ? OR running > ?)
           RETURNING bytes",
    count_drops: "UPDATE clerk_sync_dead_letter_drops
                     SET dropped = dropped + ?, dropped_bytes = dropped_bytes + ? WHERE id = 1",
    list: "SELECT svix_id, headers, body, reason, detail, first_seen, last_seen, attempts
             FROM clerk_sync_dead_letters ORDER BY first_seen, svix_id",
    remove: "DELETE FROM clerk_sync_dead_letters WHERE svix_id = ?",
    stats: "SELECT (SELECT count(*) FROM clerk_sync_dead_letters) AS kept,
                   (SELECT coalesce(sum(bytes), 0) FROM clerk_sync_dead_letters) AS bytes,
                   d.dropped, d.dropped_bytes,
                   (SELECT min(first_seen) FROM clerk_sync_dead_letters) AS oldest_first_seen
              FROM clerk_sync_dead_letter_drops d WHERE d.id = 1",
};

fn limit(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Database {
    /// Keeps `letter` (once per `svix-id`: a repeat counts an attempt and refreshes it), then
    /// drops the oldest past `limits`, in one transaction; a letter larger alone than the byte
    /// cap is not kept (and counted as dropped). Runs on a task of its own, so that
    /// a caller that stops waiting never leaves the transaction half-way.
    pub async fn keep_dead_letter(
        &self,
        letter: NewDeadLetter,
        limits: DeadLetterLimits,
    ) -> Result<Kept, DbError> {
        let bytes =
            limit(u64::try_from(letter.headers.len() + letter.body.len()).unwrap_or(u64::MAX));
        let (max_count, max_bytes) = (limit(limits.max_count), limit(limits.max_bytes));
        let db = self.clone();
        let task = async move {
            match db {
                Database::Postgres(pg) => {
                    let mut conn = pg.pool.get().await?;
                    // The pool's transaction: through a transaction pooler it carries the
                    // settings a direct connection has for its session.
                    pg.transaction_on(&mut conn, async |c| {
                        let sql = &POSTGRES;
                        diesel::sql_query(sql.lock).load::<Attempts>(c).await?;
                        if bytes > max_bytes {
                            // Alone larger than the cap: keeping it would drop every other.
                            diesel::sql_query(sql.count_drops)
                                .bind::<BigInt, _>(1i64)
                                .bind::<BigInt, _>(bytes)
                                .execute(c)
                                .await?;
                            return Ok(Kept::TOO_LARGE);
                        }
                        let kept: Attempts = diesel::sql_query(sql.upsert)
                            .bind::<Text, _>(&letter.svix_id)
                            .bind::<Text, _>(&letter.headers)
                            .bind::<Text, _>(&letter.body)
                            .bind::<Text, _>(letter.reason)
                            .bind::<Text, _>(&letter.detail)
                            .bind::<BigInt, _>(bytes)
                            .get_result(c)
                            .await?;
                        let gone: Vec<Dropped> = diesel::sql_query(sql.trim)
                            .bind::<BigInt, _>(max_count)
                            .bind::<BigInt, _>(max_bytes)
                            .load(c)
                            .await?;
                        let (n, b) = totals(&gone);
                        if n > 0 {
                            diesel::sql_query(sql.count_drops)
                                .bind::<BigInt, _>(n)
                                .bind::<BigInt, _>(b)
                                .execute(c)
                                .await?;
                        }
                        Ok(Kept {
                            attempts: kept.attempts,
                            dropped: n.unsigned_abs(),
                            kept: true,
                        })
                    })
                    .await
                }
                Database::Sqlite(lite) => {
                    lite.run(move |conn| {
                        Ok(conn.immediate_transaction(|c| {
                            blocking::keep(c, &letter, bytes, max_count, max_bytes)
                        })?)
                    })
                    .await
                }
            }
        };
        tokio::spawn(task)
            .await
            .map_err(|e| DbError::Internal(format!("database task failed: {e}")))?
    }

    /// Every dead letter, oldest first.
    pub async fn dead_letters(&self) -> Result<Vec<StoredDeadLetter>, DbError> {
        match self {
            Database::Postgres(pg) => {
                pg.with_conn(async |conn| Ok(diesel::sql_query(POSTGRES.list).load(conn).await?))
                    .await
            }
            Database::Sqlite(lite) => lite.run(|conn| Ok(blocking::list(conn)?)).await,
        }
    }

    /// Removes one dead letter (it was applied); false when it was not there.
    pub async fn remove_dead_letter(&self, svix_id: &str) -> Result<bool, DbError> {
        let id = svix_id.to_owned();
        let removed = match self {
            Database::Postgres(pg) => {
                pg.with_conn(async move |conn| {
                    Ok(diesel::sql_query(POSTGRES.remove)
                        .bind::<Text, _>(id)
                        .execute(conn)
                        .await?)
                })
                .await?
            }
            Database::Sqlite(lite) => {
                lite.run(move |conn| Ok(blocking::remove(conn, &id)?))
                    .await?
            }
        };
        Ok(removed > 0)
    }

    /// How many are kept, their bytes, and how many were dropped.
    pub async fn dead_letter_stats(&self) -> Result<DeadLetterStats, DbError> {
        match self {
            Database::Postgres(pg) => {
                pg.with_conn(async |conn| {
                    Ok(diesel::sql_query(POSTGRES.stats).get_result(conn).await?)
                })
                .await
            }
            Database::Sqlite(lite) => lite.run(|conn| Ok(blocking::stats(conn)?)).await,
        }
    }
}

/// How many rows, and how many bytes, `gone` holds.
fn totals(gone: &[Dropped]) -> (i64, i64) {
    let n = i64::try_from(gone.len()).unwrap_or(i64::MAX);
    let bytes = gone.iter().map(|g| g.bytes).fold(0i64, i64::saturating_add);
    (n, bytes)
}

/// SQLite's side, on the blocking connection.
mod blocking {
    use diesel::sql_types::{BigInt, Text};
    use diesel::{QueryResult, RunQueryDsl, SqliteConnection};

    use super::{
        totals, Attempts, DeadLetterStats, Dropped, Kept, NewDeadLetter, StoredDeadLetter, SQLITE,
    };

    pub(super) fn keep(
        c: &mut SqliteConnection,
        letter: &NewDeadLetter,
        bytes: i64,
        max_count: i64,
        max_bytes: i64,
    ) -> QueryResult<Kept> {
        if bytes > max_bytes {
            // Alone larger than the cap: keeping it would drop every other.
            diesel::sql_query(SQLITE.count_drops)
                .bind::<BigInt, _>(1i64)
                .bind::<BigInt, _>(bytes)
                .execute(c)?;
            return Ok(Kept::TOO_LARGE);
        }
        let kept: Attempts = diesel::sql_query(SQLITE.upsert)
            .bind::<Text, _>(&letter.svix_id)
            .bind::<Text, _>(&letter.headers)
            .bind::<Text, _>(&letter.body)
            .bind::<Text, _>(letter.reason)
            .bind::<Text, _>(&letter.detail)
            .bind::<BigInt, _>(bytes)
            .get_result(c)?;
        let gone: Vec<Dropped> = diesel::sql_query(SQLITE.trim)
            .bind::<BigInt, _>(max_count)
            .bind::<BigInt, _>(max_bytes)
            .load(c)?;
        let (n, b) = totals(&gone);
        if n > 0 {
            diesel::sql_query(SQLITE.count_drops)
                .bind::<BigInt, _>(n)
                .bind::<BigInt, _>(b)
                .execute(c)?;
        }
        Ok(Kept {
            attempts: kept.attempts,
            dropped: n.unsigned_abs(),
            kept: true,
        })
    }

    pub(super) fn list(c: &mut SqliteConnection) -> QueryResult<Vec<StoredDeadLetter>> {
        diesel::sql_query(SQLITE.list).load(c)
    }

    pub(super) fn remove(c: &mut SqliteConnection, id: &str) -> QueryResult<usize> {
        diesel::sql_query(SQLITE.remove)
            .bind::<Text, _>(id)
            .execute(c)
    }

    pub(super) fn stats(c: &mut SqliteConnection) -> QueryResult<DeadLetterStats> {
        diesel::sql_query(SQLITE.stats).get_result(c)
    }
}
