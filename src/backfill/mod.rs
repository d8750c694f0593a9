//! `clerk-sync backfill`: every user of Clerk's Backend API through the webhook rules.
//!
//! The walk pages `GET /v1/users` in creation order with a cursor (`starting_after` the last
//! user seen, never a `limit` above 500), so users created meanwhile land at the end and are
//! walked too, and users deleted meanwhile shift nothing. Each user object becomes the
//! `user.updated` that would carry it and is applied with [`crate::sync::apply_bulk`]: the
//! pages fetched while the database was busy go together into one transaction (up to
//! [`Database::preferred_batch`] users), and up to `concurrency` transactions run at once:
//! last write wins on Clerk's `updated_at`, tombstones hold, and the email and role rules
//! are those of a webhook. A user object is a version, not a message: it is told by its
//! content ([`Dedup::ByVersion`]), so the version the table already holds is `unchanged`,
//! whichever path applied it, and nothing is recorded in `deliveries` — in a batch and
//! user by user alike (a batch that failed is applied user by user by the same rules).
//!
//! With each transaction's pages the cursor, their user ids and their outcomes are
//! checkpointed in clerk-sync's tables; an interrupted walk resumes after the last applied page. Should
//! the user a page would start after be deleted meanwhile (an empty page, or a refusal, after
//! a cursor that no longer exists), the walk steps back to the newest earlier user that
//! still exists; re-applied users are `unchanged`.
//!
//! `--prune` runs after a complete walk only: a user clerk-sync knows (its bookkeeping, or a
//! "User" row whose id is a Clerk id) that the walk did not see is deleted like a
//! `user.deleted` (tombstone, foreign-key deferral), unless anything about it is recent: a
//! delivery received since the walk began, or a `createdAt`, `updatedAt` or applied version
//! within [`PRUNE_MARGIN`] of the walk's start or later (Clerk's clock and ours may differ).
//! So a user who signs up during the walk is never pruned.

pub mod client;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use crate::db::{Database, DbError, Walk, WalkCounts};
use crate::domain::{ApiUser, ClerkUserId, Event, MessageId};
use crate::sync::{Dedup, Outcome, SyncOptions, WhenUnavailable};
use client::{ApiError, Client};

/// How far before the walk's start a user's Clerk times must lie for `--prune` to delete it.
pub const PRUNE_MARGIN: Duration = Duration::from_secs(300);

/// Cursors kept to step back to when the user a page would start after was deleted.
const STEP_BACK: usize = 500;

/// Most fetched pages waiting for the database; as many as are waiting when it is ready for
/// more are applied (and checkpointed) in one transaction, up to
/// [`Database::preferred_batch`] users.
const PAGES_AHEAD: usize = 20;

/// How a backfill runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Users per page (at most 500, Clerk's maximum).
    pub page_size: u32,
    /// Pages applied at once (each in its own transaction).
    pub concurrency: usize,
    /// Read only: report what would change.
    pub dry_run: bool,
    /// After a complete walk, delete the users Clerk no longer has.
    pub prune: bool,
    /// Abandon an unfinished walk and begin anew.
    pub restart: bool,
    /// How users are applied.
    pub sync: SyncOptions,
}

/// What a run did (or, with `--dry-run`, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    /// Users Clerk returned in this run.
    pub walked: u64,
    /// Written.
    pub applied: u64,
    /// The table holds a newer version, or the user is deleted.
    pub stale: u64,
    /// This very version was applied before.
    pub unchanged: u64,
    /// Users without email, when those are skipped.
    pub ignored: u64,
    /// Rows deleted by `--prune`.
    pub pruned: u64,
    /// `--prune` deletes the application's foreign keys refuse for now (tombstone written).
    pub deferred: u64,
    /// Users that could not be applied.
    pub errors: u64,
    /// Whether the walk reached the last user.
    pub complete: bool,
    /// Whether this run continued an interrupted walk.
    pub resumed: bool,
    /// Why the walk stopped early, if it did.
    pub stopped: Option<String>,
    /// Why `--prune` did not run or did not finish, if so.
    pub prune_skipped: Option<String>,
}

impl Summary {
    fn count(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Applied => self.applied += 1,
            Outcome::Duplicate => self.unchanged += 1,
            Outcome::Stale => self.stale += 1,
            Outcome::Ignored => self.ignored += 1,
            Outcome::Deferred => self.deferred += 1,
        }
    }

    fn merge(&mut self, other: &Summary) {
        self.walked += other.walked;
        self.applied += other.applied;
        self.stale += other.stale;
        self.unchanged += other.unchanged;
        self.ignored += other.ignored;
        self.pruned += other.pruned;
        self.deferred += other.deferred;
        self.errors += other.errors;
    }

    /// True when the walk completed without errors (and the prune, if asked, ran).
    pub fn succeeded(&self) -> bool {
        self.complete && self.errors == 0 && self.prune_skipped.is_none()
    }

    /// `(name, count)` for the summary, in a fixed order.
    pub fn rows(&self) -> [(&'static str, u64); 7] {
        [
            ("applied", self.applied),
            ("stale", self.stale),
            ("unchanged", self.unchanged),
            ("ignored", self.ignored),
            ("pruned", self.pruned),
            ("deferred", self.deferred),
            ("errors", self.errors),
        ]
    }
}

/// Progress reports; the command line shows them on a bar or as plain lines.
pub trait Progress: Sync {
    /// The number of users Clerk reports (it moves during a walk).
    fn total(&self, users: u64);
    /// Users already walked by an earlier run of this walk.
    fn resumed_at(&self, users: u64);
    /// More users handled.
    fn advance(&self, users: u64);
    /// A line worth showing (no personal data).
    fn note(&self, line: &str);
}

/// One page (or several, merged), prepared for the database while the next one is fetched.
struct Page {
    /// API pages merged into this one.
    pages: i64,
    items: Vec<(MessageId, Event)>,
    /// Every user id of the page, applicable or not: what `--prune` must keep.
    ids: Vec<String>,
    last_id: String,
    errors: Vec<String>,
}

enum Fetched {
    Page(Page),
    Done,
    Failed(ApiError),
}

/// The delivery id of one version of one user: re-applying it is a duplicate.
fn message_id(change_id: &ClerkUserId, version: i64, digest: &str) -> Result<MessageId, String> {
    // One allocation for the id: this runs for every user a backfill reads.
    let short = digest
        .char_indices()
        .nth(16)
        .and_then(|(end, _)| digest.get(..end))
        .unwrap_or(digest);
    let version = version.to_string();
    let id = ["backfill:", change_id.as_str(), ":", &version, ":", short].concat();
    MessageId::parse(&id).map_err(|e| format!("{change_id}: {e}"))
}

fn prepare(users: Vec<ApiUser>) -> Result<Page, String> {
    let mut page = Page {
        pages: 1,
        items: Vec::with_capacity(users.len()),
        ids: Vec::with_capacity(users.len()),
        last_id: String::new(),
        errors: Vec::new(),
    };
    for (index, user) in users.into_iter().enumerate() {
        // A user that cannot be applied still has its id counted as seen by `--prune`.
        let (id, parsed) = match user {
            Ok(event) => match event.user_id() {
                Some(id) => (id.as_str().to_owned(), Ok(event)),
                None => {
                    page.errors
                        .push(format!("user #{index} of a page is not a user: skipped"));
                    continue;
                }
            },
            Err((e, id)) => {
                let id = id.filter(|id| ClerkUserId::parse(id).is_ok());
                let Some(id) = id else {
                    page.errors
                        .push(format!("user #{index} of a page has no valid id: skipped"));
                    continue;
                };
                (id, Err(e))
            }
        };
        page.ids.push(id.clone());
        match parsed {
            Ok(event) => {
                let Event::Upsert { change, .. } = &event else {
                    continue;
                };
                match message_id(&change.id, change.version, &change.digest) {
                    Ok(mid) => page.items.push((mid, event)),
                    Err(e) => page.errors.push(e),
                }
            }
            Err(e) => page.errors.push(format!("{id}: {e}")),
        }
        page.last_id = id;
    }
    if page.last_id.is_empty() {
        // A page none of whose users has an id cannot move the cursor: stop, never loop.
        return Err("a page of users holds no valid user id; the cursor cannot advance".into());
    }
    Ok(page)
}

/// Merges runs of fetched pages, in walk order, into one page each (the end of the walk, or
/// a failure, stays behind them).
fn merge_pages(fetched: Vec<Fetched>) -> Vec<Fetched> {
    let mut merged: Vec<Fetched> = Vec::new();
    for next in fetched {
        match (merged.last_mut(), next) {
            (Some(Fetched::Page(page)), Fetched::Page(more)) => {
                page.pages += more.pages;
                page.items.extend(more.items);
                page.ids.extend(more.ids);
                page.last_id = more.last_id;
                page.errors.extend(more.errors);
            }
            (_, next) => merged.push(next),
        }
    }
    merged
}

/// Fetches pages ahead of the database, stepping back when the cursor's user was deleted.
async fn fetch_pages(
    client: Arc<Client>,
    mut cursor: Option<String>,
    mut back: Vec<String>,
    page_size: u32,
    tx: tokio::sync::mpsc::Sender<Fetched>,
) {
    loop {
        let listed = client.list_users(cursor.as_deref(), page_size).await;
        let users = match listed {
            Ok(users) if !users.is_empty() => users,
            other => {
                let end = match other {
                    Ok(_) => Fetched::Done,
                    Err(e) => Fetched::Failed(e),
                };
                // An empty page (or a refusal) after a cursor: the end, unless the user the
                // walk starts after is gone. Then step back to an earlier one.
                let suspect = matches!(
                    end,
                    Fetched::Done | Fetched::Failed(ApiError::Refused { .. })
                );
                if let (true, Some(gone)) = (suspect, cursor.clone()) {
                    match client.user_exists(&gone).await {
                        Ok(false) => {
                            back.retain(|id| *id != gone);
                            cursor = (!back.is_empty()).then(|| back.remove(0));
                            tracing::warn!(
                                deleted = %gone,
                                resume_after = cursor.as_deref().unwrap_or("the first user"),
                                "the user the walk would continue after was deleted meanwhile: stepping back"
                            );
                            continue;
                        }
                        Ok(true) => {}
                        Err(e) => {
                            let _ = tx.send(Fetched::Failed(e)).await;
                            return;
                        }
                    }
                }
                let _ = tx.send(end).await;
                return;
            }
        };
        let page = match prepare(users) {
            Ok(page) => page,
            Err(reason) => {
                let _ = tx
                    .send(Fetched::Failed(ApiError::Malformed {
                        what: "a page of users".into(),
                        reason,
                    }))
                    .await;
                return;
            }
        };
        let mut newest_first: Vec<String> = page.ids.iter().rev().cloned().collect();
        newest_first.extend(back.drain(..).take(STEP_BACK));
        newest_first.truncate(STEP_BACK);
        back = newest_first;
        cursor = Some(page.last_id.clone());
        if tx.send(Fetched::Page(page)).await.is_err() {
            return;
        }
    }
}

/// Applies a page, a transaction for the whole; when that fails, user by user, so that one
/// bad user never fails its neighbours. A database that stays unavailable stops the walk.
async fn apply_page(
    db: &Database,
    items: Vec<(MessageId, Event)>,
    sync: SyncOptions,
    summary: &mut Summary,
    progress: &dyn Progress,
) -> Result<(), DbError> {
    if items.is_empty() {
        return Ok(());
    }
    let n = items.len() as u64;
    let items: std::sync::Arc<[(MessageId, Event)]> = items.into();
    let results = crate::sync::apply_bulk(
        db,
        std::sync::Arc::clone(&items),
        sync,
        WhenUnavailable::Stop,
    )
    .await;
    for ((_, event), result) in items.iter().zip(results) {
        match result {
            Ok(outcome) => summary.count(outcome),
            Err(DbError::Unavailable(reason)) => return Err(DbError::Unavailable(reason)),
            Err(e) => {
                summary.errors += 1;
                let user = event.user_id().map(ClerkUserId::as_str).unwrap_or("?");
                progress.note(&format!("{user}: not applied: {e}"));
            }
        }
    }
    progress.advance(n);
    Ok(())
}

/// `--dry-run`: what applying the page would do, from the bookkeeping alone.
async fn preview_page(
    db: &Database,
    items: &[(MessageId, Event)],
    sync: SyncOptions,
    summary: &mut Summary,
) -> Result<(), DbError> {
    let ids: Vec<String> = items
        .iter()
        .filter_map(|(_, e)| e.user_id().map(|u| u.as_str().to_owned()))
        .collect();
    let known: HashMap<String, _> = db
        .backfill_known(ids)
        .await?
        .into_iter()
        .map(|k| (k.user_id.clone(), k))
        .collect();
    for (_, event) in items {
        let Event::Upsert { change, .. } = event else {
            continue;
        };
        let outcome = match known.get(change.id.as_str()) {
            Some(k) if k.deleted => Outcome::Stale,
            Some(k)
                if (k.version, k.digest.as_str()) == (change.version, change.digest.as_str()) =>
            {
                Outcome::Duplicate
            }
            Some(k)
                if (k.version, k.digest.as_str()) > (change.version, change.digest.as_str()) =>
            {
                Outcome::Stale
            }
            _ if change.email.is_none() && sync.skip_users_without_email => Outcome::Ignored,
            _ => Outcome::Applied,
        };
        summary.count(outcome);
    }
    Ok(())
}

/// What became of one fetched page.
enum Step {
    Handled(Handled),
    Done,
    Failed(ApiError),
}

/// A page applied (or previewed), ready to checkpoint.
struct Handled {
    pages: i64,
    ids: Vec<String>,
    last_id: String,
    delta: Summary,
    /// Why the walk must stop here (the database stayed unavailable).
    failure: Option<String>,
}

async fn handle_page(
    db: &Database,
    page: Page,
    options: &Options,
    progress: &dyn Progress,
) -> Handled {
    let Page {
        pages,
        items,
        ids,
        last_id,
        errors,
    } = page;
    let mut delta = Summary {
        walked: ids.len() as u64,
        errors: errors.len() as u64,
        ..Summary::default()
    };
    for error in &errors {
        progress.note(&format!("not applied: {error}"));
    }
    let failure = if options.dry_run {
        let n = items.len() as u64;
        let result = preview_page(db, &items, options.sync, &mut delta).await;
        progress.advance(n);
        result.err().map(|e| format!("reading the database: {e}"))
    } else {
        apply_page(db, items, options.sync, &mut delta, progress)
            .await
            .err()
            .map(|e| format!("writing the database: {e}"))
    };
    Handled {
        pages,
        ids,
        last_id,
        delta,
        failure,
    }
}

/// The user ids a walk has seen, to count each once (as 64-bit hashes: a few MB for a
/// million users; two ids sharing one would count as one, about once in 10^7 walks of a
/// million). A forward walk meets each user once; only a step-back walks ids again, and
/// never further back than the newest [`STEP_BACK`] ids, which a resumed walk loads.
#[derive(Default)]
struct SeenIds(HashSet<u64>);

impl SeenIds {
    /// Adds `ids`; returns how many were new.
    fn add<'a>(&mut self, ids: impl IntoIterator<Item = &'a String>) -> i64 {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hasher = BuildHasherDefault::<DefaultHasher>::default();
        ids.into_iter()
            .map(|id| i64::from(self.0.insert(hasher.hash_one(id))))
            .sum()
    }
}

/// Records applied pages (retried while the database is briefly unavailable).
async fn checkpoint(
    db: &Database,
    walk: &mut Walk,
    handled: Handled,
    new: i64,
    counts: WalkCounts,
) -> Result<(), DbError> {
    let Handled {
        pages,
        ids,
        last_id,
        ..
    } = handled;
    let last_id = last_id.as_str();
    let mut delay = Duration::from_millis(200);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match db
            .backfill_checkpoint(
                &walk.walk_id,
                walk.pages..walk.pages + pages,
                ids.clone(),
                new,
                last_id,
                counts,
            )
            .await
        {
            Ok(false) => {
                return Err(DbError::Internal(
                    "another `clerk-sync backfill` moved or abandoned this walk meanwhile: run one backfill at a time".into(),
                ))
            }
            Ok(true) => {
                walk.pages += pages;
                walk.seen += new;
                walk.cursor = Some(last_id.to_owned());
                return Ok(());
            }
            Err(DbError::Unavailable(_)) if attempt < 5 => {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => return Err(e),
        }
    }
}

fn counts_of(delta: &Summary) -> WalkCounts {
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    WalkCounts {
        applied: n(delta.applied),
        stale: n(delta.stale),
        unchanged: n(delta.unchanged),
        ignored: n(delta.ignored),
        errors: n(delta.errors),
    }
}

/// Where the walk begins: a new walk, or the unfinished one.
async fn open_walk(
    db: &Database,
    client: &Client,
    options: &Options,
    progress: &dyn Progress,
) -> anyhow::Result<(Walk, bool)> {
    if !options.restart {
        if let Some(walk) = db.backfill_open_walk().await? {
            if walk.api_url != client.base_url() {
                anyhow::bail!(
                    "an unfinished backfill read {} and this one reads {}: run with --restart to abandon it",
                    walk.api_url,
                    client.base_url()
                );
            }
            return Ok((walk, true));
        }
    }
    let walk = db
        .backfill_begin_walk(&uuid::Uuid::new_v4().to_string(), client.base_url())
        .await?;
    if options.restart {
        progress.note("clerk-sync: --restart: any unfinished backfill is abandoned");
    }
    Ok((walk, false))
}

/// Walks every user of Clerk's API into `db`; see the module documentation.
pub async fn run(
    db: &Database,
    client: Arc<Client>,
    options: &Options,
    progress: &dyn Progress,
) -> anyhow::Result<Summary> {
    // Users read from the API are versions, not messages: told apart by their content.
    let options = &Options {
        sync: SyncOptions {
            dedup: Dedup::ByVersion,
            ..options.sync
        },
        ..options.clone()
    };
    let mut summary = Summary::default();
    // First, so that a refused key stops the run before anything is written.
    match client.count_users().await {
        Ok(total) => progress.total(total),
        Err(e @ ApiError::Unauthorized { .. }) => return Err(e.into()),
        Err(e) => tracing::warn!(error = %e, "cannot read the user count: progress shows no total"),
    }
    // The walk: checkpointed, or (dry run) in memory only.
    let (mut walk, resumed) = if options.dry_run {
        let now = db.backfill_now_ms().await?;
        let walk = Walk {
            walk_id: "dry-run".into(),
            api_url: client.base_url().to_owned(),
            started_ms: now,
            cursor: None,
            pages: 0,
            seen: 0,
            counts: WalkCounts::default(),
        };
        (walk, false)
    } else {
        open_walk(db, &client, options, progress).await?
    };
    summary.resumed = resumed;
    if resumed {
        tracing::info!(
            walk = %walk.walk_id,
            after = walk.cursor.as_deref().unwrap_or("the first user"),
            pages = walk.pages,
            "resuming an unfinished backfill"
        );
        progress.note(&format!(
            "clerk-sync: resuming the unfinished backfill after {} users",
            walk.seen
        ));
        progress.resumed_at(u64::try_from(walk.seen).unwrap_or(0));
    } else {
        tracing::info!(walk = %walk.walk_id, dry_run = options.dry_run, "starting a backfill");
    }

    let back = if resumed {
        db.backfill_recent_seen(&walk.walk_id, STEP_BACK).await?
    } else {
        Vec::new()
    };
    let mut seen = SeenIds::default();
    seen.add(&back);
    let (tx, rx) = tokio::sync::mpsc::channel(PAGES_AHEAD);
    let pages_per_transaction =
        (db.preferred_batch().await / options.page_size.max(1) as usize).clamp(1, PAGES_AHEAD);
    let producer = tokio::spawn(fetch_pages(
        client.clone(),
        walk.cursor.clone(),
        back,
        options.page_size,
        tx,
    ));
    // Up to `concurrency` transactions in the database at once, each with the pages waiting
    // when it starts; results come back in walk order, and each is checkpointed only after
    // every page before it.
    let fetched =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    let steps = fetched
        .ready_chunks(pages_per_transaction)
        .flat_map(|chunk| futures_util::stream::iter(merge_pages(chunk)))
        .map(|fetched| async move {
            match fetched {
                Fetched::Page(page) => {
                    Step::Handled(handle_page(db, page, options, progress).await)
                }
                Fetched::Done => Step::Done,
                Fetched::Failed(e) => Step::Failed(e),
            }
        })
        .buffered(options.concurrency.max(1));
    let mut steps = Box::pin(steps);
    let mut seen_in_memory: HashSet<String> = HashSet::new();
    while let Some(step) = steps.next().await {
        let handled = match step {
            Step::Handled(handled) => handled,
            Step::Done => {
                summary.complete = true;
                break;
            }
            Step::Failed(e) => {
                summary.stopped = Some(e.to_string());
                break;
            }
        };
        summary.merge(&handled.delta);
        if let Some(failure) = handled.failure {
            summary.stopped = Some(failure);
            break;
        }
        if options.dry_run {
            seen_in_memory.extend(handled.ids);
            continue;
        }
        let counts = counts_of(&handled.delta);
        let new = seen.add(&handled.ids);
        if let Err(e) = checkpoint(db, &mut walk, handled, new, counts).await {
            summary.stopped = Some(format!("recording the checkpoint: {e}"));
            break;
        }
    }
    // The receiver goes with the stream: a producer waiting to send stops.
    drop(steps);
    let _ = producer.await;

    if summary.complete && !options.dry_run {
        db.backfill_complete(&walk.walk_id).await?;
        tracing::info!(walk = %walk.walk_id, pages = walk.pages, seen = walk.seen, "backfill walk complete");
    }
    if options.prune {
        if summary.complete {
            prune(db, &walk, options, &seen_in_memory, &mut summary, progress).await;
        } else {
            summary.prune_skipped = Some("the walk did not complete, so nothing was pruned".into());
        }
    }
    Ok(summary)
}

async fn prune(
    db: &Database,
    walk: &Walk,
    options: &Options,
    seen_in_memory: &HashSet<String>,
    summary: &mut Summary,
    progress: &dyn Progress,
) {
    let margin = i64::try_from(PRUNE_MARGIN.as_millis()).unwrap_or(i64::MAX);
    let cutoff = walk.started_ms.saturating_sub(margin);
    let seen_by = (!options.dry_run).then_some(walk.walk_id.as_str());
    let candidates = match db
        .backfill_prune_candidates(seen_by, walk.started_ms, cutoff)
        .await
    {
        Ok(candidates) => candidates,
        Err(e) => {
            summary.prune_skipped = Some(format!("reading what to prune: {e}"));
            return;
        }
    };
    let mut deletes = Vec::new();
    for user in candidates {
        if seen_in_memory.contains(&user) {
            continue;
        }
        let Ok(id) = ClerkUserId::parse(&user) else {
            continue;
        };
        if options.dry_run {
            summary.pruned += 1;
            continue;
        }
        let Ok(mid) = MessageId::parse(&format!("backfill-prune:{}:{id}", walk.walk_id)) else {
            continue;
        };
        deletes.push((mid, Event::Delete { id }));
    }
    tracing::info!(users = deletes.len(), "pruning users Clerk no longer has");
    for chunk in deletes.chunks(options.page_size.max(1) as usize) {
        let chunk: std::sync::Arc<[(MessageId, Event)]> = chunk.into();
        let results = crate::sync::apply_bulk(
            db,
            std::sync::Arc::clone(&chunk),
            options.sync,
            WhenUnavailable::Continue,
        )
        .await;
        for ((_, event), result) in chunk.iter().zip(results) {
            match result {
                Ok(Outcome::Applied) => summary.pruned += 1,
                Ok(Outcome::Deferred) => summary.deferred += 1,
                Ok(_) => {}
                Err(e) => {
                    summary.prune_skipped = Some(format!("pruning: {e}"));
                    let user = event.user_id().map(ClerkUserId::as_str).unwrap_or("?");
                    progress.note(&format!("{user}: not pruned: {e}"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One user object read on its own, as a page that does not parse in one pass is read.
    fn raw(json: &str) -> ApiUser {
        Event::from_api_user_or_id(json)
    }

    const USER: &str = r#"{"id":"user_1","created_at":1,"updated_at":2,"first_name":"Ada",
        "primary_email_address_id":"idn_1","email_addresses":[{"id":"idn_1","email_address":"a@example.com"}]}"#;

    #[test]
    fn a_version_always_gets_the_same_delivery_id_and_another_version_another() {
        let first = prepare(vec![raw(USER)]).expect("page");
        let again = prepare(vec![raw(USER)]).expect("page");
        let newer = prepare(vec![raw(
            &USER.replace(r#""updated_at":2"#, r#""updated_at":3"#)
        )])
        .expect("page");
        assert_eq!(first.items[0].0, again.items[0].0);
        assert_ne!(first.items[0].0, newer.items[0].0);
        assert!(first.items[0].0.as_str().starts_with("backfill:user_1:2:"));
    }

    #[test]
    fn a_user_that_cannot_be_applied_is_still_seen_and_counted_as_an_error() {
        let bad = r#"{"id":"user_2","created_at":"yesterday","updated_at":2}"#;
        let page = prepare(vec![raw(USER), raw(bad), raw(r#"{"id":7}"#)]).expect("page");
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.ids, ["user_1", "user_2"]);
        assert_eq!(page.last_id, "user_2");
        assert_eq!(page.errors.len(), 2);
    }

    #[test]
    fn a_page_read_in_one_pass_is_read_as_its_users_one_by_one() {
        let nameless = r#"{"id":"user_3","created_at":5,"updated_at":6,"unsafe_metadata":{"a":[1]},
            "primary_phone_number_id":"idn_p","phone_numbers":[{"id":"idn_p","phone_number":"+1"}]}"#;
        let invalid = r#"{"id":"user_4","created_at":1,"updated_at":-2}"#;
        let users = [USER, nameless, invalid, r#"{"id":"nobody"}"#];
        let page = format!("[{}]", users.join(",\n"));
        let one_pass = Event::from_api_users(page.as_bytes()).expect("one pass");
        let one_by_one: Vec<ApiUser> = users.iter().map(|u| raw(u)).collect();
        assert_eq!(one_pass, one_by_one);
        // A user that does not parse at all leaves the page to be read user by user.
        let bad = format!("[{USER},{}]", r#"{"id":"user_2","created_at":"yesterday"}"#);
        assert_eq!(Event::from_api_users(bad.as_bytes()), None);
        assert_eq!(Event::from_api_users(b"[{\"id\":\"user_\xff\"}]"), None);
        assert_eq!(Event::from_api_users(b"{}"), None);
    }

    #[test]
    fn seen_ids_count_each_id_once_across_checkpoints() {
        let mut seen = SeenIds::default();
        let ids = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(seen.add(&ids(&["user_1", "user_2", "user_2"])), 2);
        // A step-back walks user_2 again; only user_3 is new.
        assert_eq!(seen.add(&ids(&["user_2", "user_3"])), 1);
        assert_eq!(seen.add(&ids(&[])), 0);
    }

    #[test]
    fn a_page_without_any_id_stops_the_walk_instead_of_looping() {
        assert!(prepare(vec![raw(r#"{"object":"user"}"#)]).is_err());
    }
}
