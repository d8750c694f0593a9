//! The bookkeeping of `clerk-sync backfill`: the walk's checkpoint, the user ids it saw, and
//! the reads behind `--prune` and `--dry-run`. Users are never written here: every change to
//! the application's table goes through `apply_batch`, by the webhook rules.
//!
//! Times are ms since the epoch from the database's own clock where it has one (PostgreSQL),
//! because the prune compares them with `deliveries.received_at`, which that clock stamps.

use diesel::sql_types::{BigInt, Bool, Nullable, Text};
use diesel::QueryableByName;

use super::{Database, DbError};
use crate::domain::table::quoted;

/// A walk over Clerk's users, as checkpointed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walk {
    /// Identifies the walk (its seen ids, its prune deliveries).
    pub walk_id: String,
    /// The API the walk reads (a resume against another one is refused).
    pub api_url: String,
    /// When the walk began, ms since the epoch.
    pub started_ms: i64,
    /// The last user id of the last applied page.
    pub cursor: Option<String>,
    /// Pages applied.
    pub pages: i64,
    /// Distinct user ids seen.
    pub seen: i64,
    /// Outcomes so far, over every run of the walk.
    pub counts: WalkCounts,
}

/// Outcomes of the users a walk applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalkCounts {
    /// Written.
    pub applied: i64,
    /// Older than what the table holds, or the user is deleted.
    pub stale: i64,
    /// This very version was applied before.
    pub unchanged: i64,
    /// Users without email, when those are skipped.
    pub ignored: i64,
    /// Users Clerk sent that could not be applied.
    pub errors: i64,
}

/// What clerk-sync's bookkeeping holds about one user (for `--dry-run`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownUser {
    /// The Clerk user.
    pub user_id: String,
    /// The newest version applied (-1: none).
    pub version: i64,
    /// That version's content digest.
    pub digest: String,
    /// Tombstoned.
    pub deleted: bool,
}

#[derive(QueryableByName)]
struct WalkRow {
    #[diesel(sql_type = Text)]
    walk_id: String,
    #[diesel(sql_type = Text)]
    api_url: String,
    #[diesel(sql_type = BigInt)]
    started_ms: i64,
    #[diesel(sql_type = Nullable<Text>)]
    cursor: Option<String>,
    #[diesel(sql_type = BigInt)]
    pages: i64,
    #[diesel(sql_type = BigInt)]
    seen: i64,
    #[diesel(sql_type = BigInt)]
    applied: i64,
    #[diesel(sql_type = BigInt)]
    stale: i64,
    #[diesel(sql_type = BigInt)]
    unchanged: i64,
    #[diesel(sql_type = BigInt)]
    ignored: i64,
    #[diesel(sql_type = BigInt)]
    errors: i64,
}

impl From<WalkRow> for Walk {
    fn from(r: WalkRow) -> Self {
        Walk {
            walk_id: r.walk_id,
            api_url: r.api_url,
            started_ms: r.started_ms,
            cursor: r.cursor,
            pages: r.pages,
            seen: r.seen,
            counts: WalkCounts {
                applied: r.applied,
                stale: r.stale,
                unchanged: r.unchanged,
                ignored: r.ignored,
                errors: r.errors,
            },
        }
    }
}

/// The newest walk, finished or not (`clerk-sync status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWalk {
    /// The walk as checkpointed.
    pub walk: Walk,
    /// When it completed, ms since the epoch; none while it can still be resumed.
    pub completed_ms: Option<i64>,
}

#[derive(QueryableByName)]
struct LastWalkRow {
    #[diesel(embed)]
    walk: WalkRow,
    #[diesel(sql_type = Nullable<BigInt>)]
    completed_ms: Option<i64>,
}

#[derive(QueryableByName)]
struct KnownRow {
    #[diesel(sql_type = Text)]
    user_id: String,
    #[diesel(sql_type = BigInt)]
    version: i64,
    #[diesel(sql_type = Text)]
    digest: String,
    #[diesel(sql_type = Bool)]
    deleted: bool,
}

#[derive(QueryableByName)]
struct SeenRow {
    #[diesel(sql_type = BigInt)]
    page: i64,
    /// A JSON array.
    #[diesel(sql_type = Text)]
    user_ids: String,
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = Text)]
    user_id: String,
}

#[derive(QueryableByName)]
struct Number {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

const WALK_COLUMNS: &str =
    "walk_id, api_url, started_ms, cursor, pages, seen, applied, stale, unchanged, ignored, errors";

/// A JSON array of strings, which SQLite reads with `json_each`.
fn json_list(items: &[String]) -> Result<String, DbError> {
    serde_json::to_string(items).map_err(|e| DbError::Internal(e.to_string()))
}

/// The application's table as the prune reads it: its name, the column holding the Clerk id,
/// and the columns holding Clerk's creation and update times, all quoted for SQL.
struct PruneTable {
    name: String,
    clerk: String,
    times: Vec<String>,
}

impl PruneTable {
    /// The seed's `User`, or the mapped table (see [`Database::use_shape`]).
    fn of(db: &Database) -> Result<Self, DbError> {
        let shape = match db {
            Database::Postgres(db) => db.shape.get().cloned(),
            Database::Sqlite(db) => db.shape.get().cloned(),
        };
        let Some(shape) = shape else {
            return Ok(Self {
                name: quoted("User"),
                clerk: quoted("id"),
                times: vec![quoted("createdAt"), quoted("updatedAt")],
            });
        };
        let column = |index: usize| {
            shape
                .columns
                .get(index)
                .map(|c| quoted(&c.name))
                .ok_or_else(|| DbError::Internal("the mapped shape lacks a column it names".into()))
        };
        Ok(Self {
            name: shape.qualified_name(),
            clerk: column(shape.clerk_id)?,
            times: [shape.created_at, shape.updated_at]
                .into_iter()
                .flatten()
                .map(column)
                .collect::<Result<_, _>>()?,
        })
    }

    /// Each time column before the cutoff (`before` writes one comparison), all together;
    /// `TRUE` when the table has none.
    fn times_before(&self, before: impl Fn(&str) -> String) -> String {
        if self.times.is_empty() {
            return "TRUE".into();
        }
        self.times
            .iter()
            .map(|c| before(c))
            .collect::<Vec<_>>()
            .join(" AND ")
    }
}

impl Database {
    /// The database's clock, in ms since the epoch.
    pub async fn backfill_now_ms(&self) -> Result<i64, DbError> {
        match self {
            Database::Postgres(_) => {
                let row: Number = pg::get(
                    self,
                    diesel::sql_query(
                        "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS n",
                    ),
                )
                .await?;
                Ok(row.n)
            }
            Database::Sqlite(_) => Ok(chrono::Utc::now().timestamp_millis()),
        }
    }

    /// The newest walk, completed or not, if any.
    pub async fn backfill_last_walk(&self) -> Result<Option<LastWalk>, DbError> {
        let sql = |table: &str| {
            format!(
                "SELECT {WALK_COLUMNS}, completed_ms FROM {table} ORDER BY started_ms DESC LIMIT 1"
            )
        };
        let rows: Vec<LastWalkRow> = match self {
            Database::Postgres(_) => {
                pg::load(self, diesel::sql_query(sql("clerk_sync.backfill_walks"))).await?
            }
            Database::Sqlite(db) => {
                let query = sql("clerk_sync_backfill_walks");
                db.run(move |conn| {
                    use diesel::RunQueryDsl;
                    Ok(diesel::sql_query(query).load(conn)?)
                })
                .await?
            }
        };
        Ok(rows.into_iter().next().map(|r| LastWalk {
            walk: r.walk.into(),
            completed_ms: r.completed_ms,
        }))
    }

    /// The newest walk that has not completed, if any.
    pub async fn backfill_open_walk(&self) -> Result<Option<Walk>, DbError> {
        match self {
            Database::Postgres(_) => {
                let rows: Vec<WalkRow> = pg::load(
                    self,
                    diesel::sql_query(format!(
                        "SELECT {WALK_COLUMNS} FROM clerk_sync.backfill_walks
                          WHERE completed_ms IS NULL ORDER BY started_ms DESC LIMIT 1"
                    )),
                )
                .await?;
                Ok(rows.into_iter().next().map(Walk::from))
            }
            Database::Sqlite(db) => {
                db.run(|conn| {
                    use diesel::RunQueryDsl;
                    let rows: Vec<WalkRow> = diesel::sql_query(format!(
                        "SELECT {WALK_COLUMNS} FROM clerk_sync_backfill_walks
                          WHERE completed_ms IS NULL ORDER BY started_ms DESC LIMIT 1"
                    ))
                    .load(conn)?;
                    Ok(rows.into_iter().next().map(Walk::from))
                })
                .await
            }
        }
    }

    /// Begins a new walk now, forgetting every earlier one (and the ids they saw).
    pub async fn backfill_begin_walk(&self, walk_id: &str, api_url: &str) -> Result<Walk, DbError> {
        let now = self.backfill_now_ms().await?;
        let (id, url) = (walk_id.to_owned(), api_url.to_owned());
        match self {
            Database::Postgres(_) => {
                let _: Vec<Number> = pg::load(
                    self,
                    diesel::sql_query(
                        "WITH seen AS (DELETE FROM clerk_sync.backfill_seen),
                              gone AS (DELETE FROM clerk_sync.backfill_walks)
                         INSERT INTO clerk_sync.backfill_walks (walk_id, api_url, started_ms, checkpoint_ms)
                         VALUES ($1, $2, $3, $3) RETURNING started_ms AS n",
                    )
                    .bind::<Text, _>(id.clone())
                    .bind::<Text, _>(url.clone())
                    .bind::<BigInt, _>(now),
                )
                .await?;
            }
            Database::Sqlite(db) => {
                let (id, url) = (id.clone(), url.clone());
                db.run(move |conn| {
                    use diesel::RunQueryDsl;
                    conn.immediate_transaction(|c| {
                        diesel::sql_query("DELETE FROM clerk_sync_backfill_seen").execute(c)?;
                        diesel::sql_query("DELETE FROM clerk_sync_backfill_walks").execute(c)?;
                        diesel::sql_query(
                            "INSERT INTO clerk_sync_backfill_walks (walk_id, api_url, started_ms, checkpoint_ms)
                             VALUES (?, ?, ?, ?)",
                        )
                        .bind::<Text, _>(&id)
                        .bind::<Text, _>(&url)
                        .bind::<BigInt, _>(now)
                        .bind::<BigInt, _>(now)
                        .execute(c)
                    })?;
                    Ok(())
                })
                .await?;
            }
        }
        Ok(Walk {
            walk_id: id,
            api_url: url,
            started_ms: now,
            cursor: None,
            pages: 0,
            seen: 0,
            counts: WalkCounts::default(),
        })
    }

    /// Records applied pages in one transaction, taking the walk from `pages.start` pages to
    /// `pages.end`: their user ids (in walk order, one row), how many of those the walk had
    /// not seen before (`new`), the new cursor and the pages' outcomes — provided the walk
    /// still exists and has `pages.start` pages, i.e. no other backfill moved it meanwhile.
    /// Returns false (nothing recorded) when another backfill moved or abandoned the walk.
    pub async fn backfill_checkpoint(
        &self,
        walk_id: &str,
        pages: std::ops::Range<i64>,
        seen: Vec<String>,
        new: i64,
        cursor: &str,
        counts: WalkCounts,
    ) -> Result<bool, DbError> {
        let (id, cursor) = (walk_id.to_owned(), cursor.to_owned());
        let (pages_before, pages) = (pages.start, pages.end - pages.start);
        match self {
            Database::Postgres(_) => {
                let rows: Vec<Number> = pg::load(
                    self,
                    diesel::sql_query(
                        "WITH walk AS (
                             SELECT walk_id FROM clerk_sync.backfill_walks
                              WHERE walk_id = $1 AND pages = $10 FOR UPDATE),
                         added AS (
                             INSERT INTO clerk_sync.backfill_seen (walk_id, page, user_ids)
                             SELECT walk_id, $10, $3 FROM walk)
                         UPDATE clerk_sync.backfill_walks
                            SET cursor = $4, pages = pages + $11, seen = seen + $2,
                                applied = applied + $5, stale = stale + $6, unchanged = unchanged + $7,
                                ignored = ignored + $8, errors = errors + $9,
                                checkpoint_ms = (extract(epoch FROM clock_timestamp()) * 1000)::bigint
                          WHERE walk_id IN (SELECT walk_id FROM walk)
                         RETURNING pages AS n",
                    )
                    .bind::<Text, _>(id)
                    .bind::<BigInt, _>(new)
                    .bind::<diesel::sql_types::Array<Text>, _>(seen)
                    .bind::<Text, _>(cursor)
                    .bind::<BigInt, _>(counts.applied)
                    .bind::<BigInt, _>(counts.stale)
                    .bind::<BigInt, _>(counts.unchanged)
                    .bind::<BigInt, _>(counts.ignored)
                    .bind::<BigInt, _>(counts.errors)
                    .bind::<BigInt, _>(pages_before)
                    .bind::<BigInt, _>(pages),
                )
                .await?;
                Ok(!rows.is_empty())
            }
            Database::Sqlite(db) => {
                let list = json_list(&seen)?;
                let now = chrono::Utc::now().timestamp_millis();
                db.run(move |conn| {
                    use diesel::RunQueryDsl;
                    let recorded = conn.immediate_transaction(|c| {
                        let updated = diesel::sql_query(
                            "UPDATE clerk_sync_backfill_walks
                                SET cursor = ?, pages = pages + ?, seen = seen + ?,
                                    applied = applied + ?, stale = stale + ?, unchanged = unchanged + ?,
                                    ignored = ignored + ?, errors = errors + ?, checkpoint_ms = ?
                              WHERE walk_id = ? AND pages = ?",
                        )
                        .bind::<Text, _>(&cursor)
                        .bind::<BigInt, _>(pages)
                        .bind::<BigInt, _>(new)
                        .bind::<BigInt, _>(counts.applied)
                        .bind::<BigInt, _>(counts.stale)
                        .bind::<BigInt, _>(counts.unchanged)
                        .bind::<BigInt, _>(counts.ignored)
                        .bind::<BigInt, _>(counts.errors)
                        .bind::<BigInt, _>(now)
                        .bind::<Text, _>(&id)
                        .bind::<BigInt, _>(pages_before)
                        .execute(c)?;
                        if updated == 0 {
                            // Another backfill moved or abandoned the walk: record nothing.
                            return Err(diesel::result::Error::RollbackTransaction);
                        }
                        diesel::sql_query(
                            "INSERT INTO clerk_sync_backfill_seen (walk_id, page, user_ids)
                             VALUES (?, ?, ?)",
                        )
                        .bind::<Text, _>(&id)
                        .bind::<BigInt, _>(pages_before)
                        .bind::<Text, _>(&list)
                        .execute(c)
                    });
                    match recorded {
                        Ok(_) => Ok(true),
                        Err(diesel::result::Error::RollbackTransaction) => Ok(false),
                        Err(e) => Err(e.into()),
                    }
                })
                .await
            }
        }
    }

    /// The last `limit` user ids the walk saw, newest first: cursors to step back to.
    pub async fn backfill_recent_seen(
        &self,
        walk_id: &str,
        limit: usize,
    ) -> Result<Vec<String>, DbError> {
        let mut recent = Vec::new();
        // Checkpoints newest first, until they hold `limit` ids (usually the newest does).
        let mut before = i64::MAX;
        while recent.len() < limit {
            let id = walk_id.to_owned();
            let rows: Vec<SeenRow> = match self {
                Database::Postgres(_) => {
                    pg::load(
                        self,
                        diesel::sql_query(
                            "SELECT page, array_to_json(user_ids)::text AS user_ids
                               FROM clerk_sync.backfill_seen
                              WHERE walk_id = $1 AND page < $2 ORDER BY page DESC LIMIT 1",
                        )
                        .bind::<Text, _>(id)
                        .bind::<BigInt, _>(before),
                    )
                    .await?
                }
                Database::Sqlite(db) => {
                    db.run(move |conn| {
                        use diesel::RunQueryDsl;
                        Ok(diesel::sql_query(
                            "SELECT page, user_ids FROM clerk_sync_backfill_seen
                              WHERE walk_id = ? AND page < ? ORDER BY page DESC LIMIT 1",
                        )
                        .bind::<Text, _>(id)
                        .bind::<BigInt, _>(before)
                        .load(conn)?)
                    })
                    .await?
                }
            };
            let Some(row) = rows.into_iter().next() else {
                break;
            };
            let ids: Vec<String> = serde_json::from_str(&row.user_ids).map_err(|e| {
                DbError::Internal(format!("a checkpoint's seen ids are unreadable: {e}"))
            })?;
            recent.extend(ids.into_iter().rev());
            before = row.page;
        }
        recent.truncate(limit);
        Ok(recent)
    }

    /// Marks the walk complete: the next run begins a new one.
    pub async fn backfill_complete(&self, walk_id: &str) -> Result<(), DbError> {
        let id = walk_id.to_owned();
        match self {
            Database::Postgres(_) => {
                let _: Vec<Number> = pg::load(
                    self,
                    diesel::sql_query(
                        "UPDATE clerk_sync.backfill_walks
                            SET completed_ms = (extract(epoch FROM clock_timestamp()) * 1000)::bigint
                          WHERE walk_id = $1 RETURNING pages AS n",
                    )
                    .bind::<Text, _>(id),
                )
                .await?;
            }
            Database::Sqlite(db) => {
                let now = chrono::Utc::now().timestamp_millis();
                db.run(move |conn| {
                    use diesel::RunQueryDsl;
                    diesel::sql_query(
                        "UPDATE clerk_sync_backfill_walks SET completed_ms = ? WHERE walk_id = ?",
                    )
                    .bind::<BigInt, _>(now)
                    .bind::<Text, _>(id)
                    .execute(conn)?;
                    Ok(())
                })
                .await?;
            }
        }
        Ok(())
    }

    /// Users a complete walk did not see and whose rows may be pruned: rows of the
    /// application's table whose Clerk id (the seed's `id`, a mapped table's Clerk-id column)
    /// is a Clerk id, and users clerk-sync's bookkeeping knows, that are not tombstoned, were
    /// not seen by `walk_id` (when given), whose Clerk times (the row's creation and update
    /// columns, where the table has them, and the applied version) are all before
    /// `cutoff_ms`, and that received no delivery since `started_ms`. Anything unreadable is
    /// kept. (The deliveries since the walk began are read once, through the index on
    /// `received_at`: no index on `deliveries.user_id` is added to the webhook path for the
    /// prune's sake.)
    pub async fn backfill_prune_candidates(
        &self,
        walk_id: Option<&str>,
        started_ms: i64,
        cutoff_ms: i64,
    ) -> Result<Vec<String>, DbError> {
        let table = PruneTable::of(self)?;
        let walk = walk_id.map(str::to_owned);
        let rows: Vec<IdRow> = match self {
            Database::Postgres(_) => {
                let times = table.times_before(|column| {
                    format!("floor(extract(epoch FROM u.{column}) * 1000) < $2")
                });
                pg::load(
                    self,
                    diesel::sql_query(format!(
                        r#"SELECT c.id AS user_id FROM (
                               SELECT {clerk} AS id FROM {name} WHERE {clerk} LIKE 'user\_%'
                               UNION
                               SELECT user_id FROM clerk_sync.users WHERE deleted_at IS NULL
                           ) c
                           LEFT JOIN clerk_sync.users s ON s.user_id = c.id
                           LEFT JOIN {name} u ON u.{clerk} = c.id
                          WHERE s.deleted_at IS NULL
                            AND NOT EXISTS (
                                    SELECT 1 FROM (
                                        SELECT unnest(b.user_ids) AS id FROM clerk_sync.backfill_seen b
                                         WHERE b.walk_id = $1) seen
                                     WHERE seen.id = c.id)
                            AND (u.{clerk} IS NULL OR ({times}))
                            AND (s.version IS NULL OR s.version < $2)
                            AND NOT EXISTS (
                                    SELECT 1 FROM clerk_sync.deliveries d
                                     WHERE d.user_id = c.id AND d.received_at >= to_timestamp($3 / 1000.0))
                          ORDER BY c.id"#,
                        clerk = table.clerk,
                        name = table.name,
                    ))
                    .bind::<Nullable<Text>, _>(walk)
                    .bind::<BigInt, _>(cutoff_ms)
                    .bind::<BigInt, _>(started_ms),
                )
                .await?
            }
            Database::Sqlite(db) => {
                let started = chrono::DateTime::from_timestamp_millis(started_ms)
                    .map(super::sqlite_port::prisma_date)
                    .ok_or_else(|| DbError::Internal("walk start out of range".into()))?;
                // Prisma's text, or ms as integers or reals; numbered parameters, each bound once.
                let times = table.times_before(|column| {
                    let column = format!("u.{column}");
                    format!(
                        "(CASE typeof({column}) WHEN 'integer' THEN {column} WHEN 'real' THEN {column}
                          ELSE CAST((julianday({column}) - 2440587.5) * 86400000.0 AS INTEGER) END) < ?2"
                    )
                });
                let sql = format!(
                    r#"SELECT c.id AS user_id FROM (
                           SELECT {clerk} AS id FROM {name} WHERE {clerk} LIKE 'user\_%' ESCAPE '\'
                           UNION
                           SELECT user_id FROM clerk_sync_users WHERE deleted_at IS NULL
                       ) c
                       LEFT JOIN clerk_sync_users s ON s.user_id = c.id
                       LEFT JOIN {name} u ON u.{clerk} = c.id
                      WHERE s.deleted_at IS NULL
                        AND c.id NOT IN (
                                SELECT j.value FROM clerk_sync_backfill_seen b, json_each(b.user_ids) j
                                 WHERE b.walk_id = ?1)
                        AND (u.{clerk} IS NULL OR ({times}))
                        AND (s.version IS NULL OR s.version < ?2)
                        AND c.id NOT IN (
                                SELECT d.user_id FROM clerk_sync_deliveries d
                                 WHERE d.received_at >= ?3 AND d.user_id IS NOT NULL)
                      ORDER BY c.id"#,
                    clerk = table.clerk,
                    name = table.name,
                );
                db.run(move |conn| {
                    use diesel::RunQueryDsl;
                    Ok(diesel::sql_query(sql)
                        .bind::<Nullable<Text>, _>(walk)
                        .bind::<BigInt, _>(cutoff_ms)
                        .bind::<Text, _>(started)
                        .load(conn)?)
                })
                .await?
            }
        };
        Ok(rows.into_iter().map(|r| r.user_id).collect())
    }

    /// What the bookkeeping holds about these users (those it knows).
    pub async fn backfill_known(&self, ids: Vec<String>) -> Result<Vec<KnownUser>, DbError> {
        let rows: Vec<KnownRow> = match self {
            Database::Postgres(_) => {
                pg::load(
                    self,
                    diesel::sql_query(
                        "SELECT user_id, version, digest, deleted_at IS NOT NULL AS deleted
                           FROM clerk_sync.users WHERE user_id = ANY($1)",
                    )
                    .bind::<diesel::sql_types::Array<Text>, _>(ids),
                )
                .await?
            }
            Database::Sqlite(db) => {
                let list = json_list(&ids)?;
                db.run(move |conn| {
                    use diesel::RunQueryDsl;
                    Ok(diesel::sql_query(
                        "SELECT user_id, version, digest, deleted_at IS NOT NULL AS deleted
                           FROM clerk_sync_users WHERE user_id IN (SELECT value FROM json_each(?))",
                    )
                    .bind::<Text, _>(list)
                    .load(conn)?)
                })
                .await?
            }
        };
        Ok(rows
            .into_iter()
            .map(|r| KnownUser {
                user_id: r.user_id,
                version: r.version,
                digest: r.digest,
                deleted: r.deleted,
            })
            .collect())
    }
}

/// Runs raw queries on the PostgreSQL pool.
mod pg {
    use diesel::query_builder::{QueryFragment, QueryId};
    use diesel_async::methods::LoadQuery;
    use diesel_async::{AsyncPgConnection, RunQueryDsl};

    use super::{Database, DbError};

    pub(super) async fn load<'q, Q, R>(db: &Database, query: Q) -> Result<Vec<R>, DbError>
    where
        Q: RunQueryDsl<AsyncPgConnection>
            + LoadQuery<'q, AsyncPgConnection, R>
            + QueryFragment<diesel::pg::Pg>
            + QueryId
            + Send
            + 'q,
        R: Send + 'q,
    {
        let Database::Postgres(pg) = db else {
            return Err(DbError::Internal("not a PostgreSQL database".into()));
        };
        pg.with_conn(async move |conn| Ok(query.load(conn).await?))
            .await
    }

    /// The one row `query` returns.
    pub(super) async fn get<'q, Q, R>(db: &Database, query: Q) -> Result<R, DbError>
    where
        Q: RunQueryDsl<AsyncPgConnection>
            + LoadQuery<'q, AsyncPgConnection, R>
            + QueryFragment<diesel::pg::Pg>
            + QueryId
            + Send
            + 'q,
        R: Send + 'q,
    {
        load(db, query)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| DbError::Internal("a query for one row returned none".into()))
    }
}
