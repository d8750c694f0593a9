//! The rules of one delivery.
//!
//! A verified, parsed delivery is applied in ONE database transaction:
//!
//! 1. **Dedup.** The delivery is recorded by its `svix-id`. A second delivery with the
//!    same id changes nothing and is answered `duplicate`.
//! 2. **Tombstones.** `user.deleted` deletes the row and keeps a tombstone; any
//!    later-arriving `user.created`/`user.updated` for that user is `stale`, whatever its
//!    time (Clerk never reuses user ids). A delete that the application's foreign keys
//!    refuse keeps the row, answers `deferred`, and is retried in the background.
//! 3. **Last write wins** on Clerk's `data.updated_at` (ms); the envelope's `timestamp` is
//!    never used. An older or equal version is `stale`. Two versions with equal
//!    `updated_at` and different content are ordered by a digest of their content, so the
//!    result never depends on arrival order.
//! 4. **Addresses.** The newest claim on an address wins: the holder whose Clerk data is
//!    older (or whose user is deleted) gives it up for `<id>@displaced.invalid`; an incoming
//!    user older than the holder takes the placeholder instead. When a user leaves an
//!    address, the newest remaining claimant gets it back. A user with no email gets
//!    `<id>@no-email.invalid` (or, when configured, is skipped: `ignored`).
//! 5. **Role** only from `public_metadata.role`; otherwise the column is left alone.
//!
//! Each rule has one implementation, in [`plan`], named for it: dedup
//! (`Walk::deliver`), tombstones and deferred deletes (`Walk::delete`,
//! `Walk::finish_delete`), last write wins ([`plan::newer`]), the role rule
//! ([`plan::role_after`]), the placeholders ([`plan::no_email`], [`plan::displaced`]), the
//! newest claim (`Walk::claim`, `holder_loses`) and giving an address back
//! (`Walk::settle`).
//!
//! How a delivery is applied: the planner says what to lock and read ([`plan::request`]);
//! the database takes those locks (the users' bookkeeping rows, then advisory locks on the
//! addresses involved, in one global order) and reads a snapshot under them; the planner
//! walks the deliveries over it ([`plan::plan`]) and the database writes the result and
//! commits, all in one transaction (see [`crate::db::port`]). One delivery, a group of
//! concurrent ones ([`group`]), a replay or backfill batch, a prune and a deferred
//! delete's retry all take this one path. Concurrent deliveries serialise in the database,
//! never in memory, so several instances may share one database.
//!
//! On the application's own user model ([`use_mapping`]), the same planner decides; `mapped`
//! says what each planned row puts into the table's columns, and what the rules become where
//! the table differs: the newest claim applies only to a unique address column (a non-unique
//! one follows its user, [`Addresses::Follow`]), an optional one holds NULL instead of a
//! placeholder, the role rule names what the role column takes, a delete may be soft, and an
//! address a row holds without a Clerk id is never taken from it (the delivery is refused).

pub mod dead_letter;
mod group;
mod mapped;
pub mod plan;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crate::db::{Database, DbError};
use crate::domain::{Event, MessageId};

pub use crate::domain::Outcome;

/// Settings that change how deliveries are applied.
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncOptions {
    /// Skip users who have no email address instead of writing a placeholder.
    pub skip_users_without_email: bool,
    /// How a repeat is told.
    pub dedup: Dedup,
    /// Whether the newest-claim rule applies (set from the mapping in force).
    pub addresses: Addresses,
}

/// What the table's address column is to the rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Addresses {
    /// Unique: two rows may not hold one address, so the newest claim on it wins (the seed
    /// table's `mail_address`, any mapped unique email column).
    #[default]
    Unique,
    /// Not unique, or no such column: each row holds its own user's address and nobody
    /// claims it from anybody.
    Follow,
}

/// How a delivery that was applied before is told (and answered `duplicate`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Dedup {
    /// By its `svix-id`: every delivery is recorded in `deliveries` (webhooks, replay).
    #[default]
    ById,
    /// By its content, for users read from Clerk's API (backfill), which are versions of a
    /// user rather than messages: one equal to the newest applied version (same
    /// `updated_at`, same digest) is the duplicate, whichever path applied it, and nothing
    /// is recorded in `deliveries`.
    ByVersion,
}

/// A batch that failed after its first `decided.len()` deliveries were committed (none, unless
/// it had to be split); the rest were rolled back.
#[derive(Debug)]
pub struct BatchFailure {
    /// The outcomes of the deliveries committed before the failure, in order.
    pub decided: Vec<Outcome>,
    /// Why the rest failed.
    pub error: DbError,
}

impl From<DbError> for BatchFailure {
    fn from(error: DbError) -> Self {
        Self {
            decided: Vec::new(),
            error,
        }
    }
}

/// Deferred deletes retried in the background.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PendingDeletes {
    /// Completed now.
    pub completed: usize,
    /// Still refused by the application's foreign keys.
    pub still_pending: usize,
}

/// What this layer keeps for one database.
struct Engine {
    /// The committers, started on first use.
    group: OnceLock<group::GroupCommit>,
    /// Most deliveries one batch transaction takes: lowered when the server's lock table
    /// could not hold a batch's address locks (see [`apply_batch`]).
    batch_cap: AtomicUsize,
    /// The mapped table written, when it is not the seed's `User` (see [`use_mapping`]).
    mapped: OnceLock<Arc<mapped::Mapped>>,
}

fn engine(db: &Database) -> Arc<Engine> {
    db.extension(|| Engine {
        group: OnceLock::new(),
        batch_cap: AtomicUsize::new(usize::MAX),
        mapped: OnceLock::new(),
    })
}

/// From now on, deliveries are written into the application's own user model as `mapping`
/// says (a table other than the seed's `User`). Once, at start, before the first delivery.
pub fn use_mapping(db: &Database, mapping: crate::mapping::Mapping) -> Result<(), DbError> {
    let shape = mapping.write_shape();
    let clerk_id = shape.columns.get(shape.clerk_id).map(|c| c.name.as_str());
    if clerk_id != Some(mapping.clerk_id.as_str()) {
        // Rows are found by this column: never by another.
        return Err(DbError::Internal(
            "the mapping names a Clerk-id column its model lacks".into(),
        ));
    }
    db.use_shape(shape)?;
    engine(db)
        .mapped
        .set(Arc::new(mapped::Mapped::new(mapping)))
        .map_err(|_| DbError::Internal("the mapping was set twice".into()))
}

/// The smallest batch split further when the server's lock table is full.
const SMALLEST_SPLIT: usize = 64;

/// Applies one verified delivery; see the module documentation for the rules. When
/// deliveries wait for the database, they are applied together (see [`group`]); the answer
/// comes only once the change is committed.
pub async fn ingest(
    db: &Database,
    id: &MessageId,
    event: &Event,
    options: SyncOptions,
) -> Result<Outcome, DbError> {
    let committers = db.committers();
    if committers == 0 {
        return apply_one(db, id, event, options).await;
    }
    let engine = engine(db);
    engine
        .group
        .get_or_init(|| group::GroupCommit::start(db.clone(), committers))
        .apply(id.clone(), event.clone(), options)
        .await
}

/// Transactions that carried several deliveries so far (group commit), and how many
/// deliveries they carried.
pub fn shared_commits(db: &Database) -> (u64, u64) {
    engine(db)
        .group
        .get()
        .map_or((0, 0), group::GroupCommit::shared_commits)
}

/// Applies one delivery in a transaction of its own.
async fn apply_one(
    db: &Database,
    id: &MessageId,
    event: &Event,
    options: SyncOptions,
) -> Result<Outcome, DbError> {
    let batch: Arc<[(MessageId, Event)]> = Arc::from(vec![(id.clone(), event.clone())]);
    let outcomes = apply_together(db, batch, options).await?;
    outcomes
        .into_iter()
        .next()
        .ok_or_else(|| DbError::Internal("a delivery was not decided".into()))
}

/// Applies deliveries in order in ONE transaction, each by the rules; the i-th outcome
/// answers the i-th delivery. A failure rolls all of them back.
async fn apply_together(
    db: &Database,
    batch: Arc<[(MessageId, Event)]>,
    options: SyncOptions,
) -> Result<Vec<Outcome>, DbError> {
    let mapped = engine(db).mapped.get().cloned();
    let (batch, options) = match &mapped {
        Some(mapped) => (mapped.prepare(batch), mapped.options(options)),
        None => (batch, options),
    };
    let request = plan::request(&batch, options);
    let (planned, deleted) = db
        .transact(request, move |snapshot| {
            let mut plan = plan::plan(&batch, snapshot, options)
                .map_err(|e| DbError::Internal(e.to_string()))?;
            if let Some(mapped) = &mapped {
                mapped.fill(&mut plan.writes, &batch, snapshot, chrono::Utc::now())?;
            }
            Ok((plan.writes, plan.outcomes))
        })
        .await?;
    Ok(planned.iter().map(|p| p.resolve(&deleted)).collect())
}

/// Applies deliveries in order (replay, backfill), in one transaction — or, when the
/// server's lock table cannot hold the advisory locks of that many addresses at once (each
/// address of a batch holds one until commit; PostgreSQL's default table holds 64 per
/// connection), in consecutive transactions of half the size, down to [`SMALLEST_SPLIT`];
/// the size that fits is kept for later batches. A failed transaction rolled back whole,
/// so splitting changes no outcome. On failure, the deliveries before
/// [`BatchFailure::decided`]'s end were committed, with those outcomes, and the rest rolled
/// back: the caller applies the rest one by one.
pub async fn apply_batch(
    db: &Database,
    batch: Arc<[(MessageId, Event)]>,
    options: SyncOptions,
) -> Result<Vec<Outcome>, BatchFailure> {
    let engine = engine(db);
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut start = 0;
    while start < batch.len() {
        let cap = engine.batch_cap.load(Ordering::Relaxed);
        let end = start + cap.min(batch.len() - start);
        let chunk: Arc<[(MessageId, Event)]> = if start == 0 && end == batch.len() {
            Arc::clone(&batch)
        } else {
            Arc::from(&batch[start..end])
        };
        match apply_together(db, chunk, options).await {
            Ok(decided) => {
                outcomes.extend(decided);
                start = end;
            }
            Err(e) if e.is_out_of_lock_space() && end - start > SMALLEST_SPLIT => {
                let smaller = ((end - start) / 2).max(SMALLEST_SPLIT);
                engine.batch_cap.fetch_min(smaller, Ordering::Relaxed);
                tracing::warn!(
                    deliveries = end - start,
                    now = smaller,
                    "the server's lock table cannot hold the address locks of this many \
                     deliveries in one transaction: splitting batches (raising \
                     max_locks_per_transaction allows larger ones)"
                );
            }
            Err(error) => {
                return Err(BatchFailure {
                    decided: outcomes,
                    error,
                })
            }
        }
    }
    Ok(outcomes)
}

/// Retries the deletes the application's foreign keys refused so far, the longest-waiting
/// first (so that deletes refused for good never starve the rest), each in a transaction
/// of its own.
pub async fn retry_pending_deletes(db: &Database) -> Result<PendingDeletes, DbError> {
    let mut report = PendingDeletes::default();
    let mapped = engine(db).mapped.get().cloned();
    for user in db.pending_deletes(100).await? {
        let request = plan::retry_request(&user);
        let mapped = mapped.clone();
        let (planned, deleted) = db
            .transact(request, move |snapshot| {
                match plan::plan_retry(&user, snapshot)
                    .map_err(|e| DbError::Internal(e.to_string()))?
                {
                    Some(mut plan) => {
                        if let Some(mapped) = &mapped {
                            mapped.fill(&mut plan.writes, &[], snapshot, chrono::Utc::now())?;
                        }
                        Ok((plan.writes, plan.outcomes))
                    }
                    None => Ok((Default::default(), Vec::new())),
                }
            })
            .await?;
        match planned.first().map(|p| p.resolve(&deleted)) {
            Some(Outcome::Applied) => report.completed += 1,
            Some(_) => report.still_pending += 1,
            None => {}
        }
    }
    Ok(report)
}

/// What to do when a delivery of a bulk batch still finds the database unavailable after
/// its retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenUnavailable {
    /// Go on with the next delivery (replay: each is reported on its own).
    Continue,
    /// Stop there: the results end with that delivery's (backfill: the walk stops, to
    /// resume later).
    Stop,
}

/// The apply stage that replay and backfill share: `batch` in one transaction (see
/// [`apply_batch`]); when that fails, the deliveries it did not commit one by one, each
/// retried while the database is unavailable, so that one bad delivery never fails its
/// neighbours. On a task of its own, so that a caller that stops waiting never abandons a
/// transaction half-way. The i-th result is the i-th delivery's.
pub async fn apply_bulk(
    db: &Database,
    batch: Arc<[(MessageId, Event)]>,
    options: SyncOptions,
    when_unavailable: WhenUnavailable,
) -> Vec<Result<Outcome, DbError>> {
    let applied = {
        let (db, batch) = (db.clone(), Arc::clone(&batch));
        tokio::spawn(async move { apply_batch(&db, batch, options).await })
            .await
            .unwrap_or_else(|e| Err(DbError::Internal(format!("database task failed: {e}")).into()))
    };
    let failure = match applied {
        Ok(outcomes) => return outcomes.into_iter().map(Ok).collect(),
        Err(failure) => failure,
    };
    tracing::warn!(
        error = %failure.error,
        deliveries = batch.len(),
        committed = failure.decided.len(),
        "a batch failed as a whole: applying the rest of its deliveries one by one"
    );
    let mut results: Vec<Result<Outcome, DbError>> =
        failure.decided.iter().copied().map(Ok).collect();
    for (id, event) in batch.iter().skip(results.len()) {
        let result = ingest_with_retries(db, id, event, options).await;
        let stop = when_unavailable == WhenUnavailable::Stop
            && matches!(result, Err(DbError::Unavailable(_)));
        results.push(result);
        if stop {
            break;
        }
    }
    results
}

/// [`ingest`], retried with a growing pause (0.2 s to 1.6 s) while the database is
/// unavailable.
pub async fn ingest_with_retries(
    db: &Database,
    id: &MessageId,
    event: &Event,
    options: SyncOptions,
) -> Result<Outcome, DbError> {
    let mut delay = std::time::Duration::from_millis(200);
    for _ in 0..4 {
        match ingest(db, id, event, options).await {
            Err(DbError::Unavailable(_)) => {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            other => return other,
        }
    }
    ingest(db, id, event, options).await
}
