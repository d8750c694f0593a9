//! Group commit: deliveries that arrive while every committer is busy are applied together,
//! in one transaction, when a committer frees up.
//!
//! Each committer takes the oldest waiting delivery and, with it, whatever else is waiting
//! (up to [`MOST_PER_COMMIT`]). Alone, a delivery is a unit of work of its own; together,
//! they are one unit of work, planned by the same walk that decides each exactly as one by
//! one would. Every
//! delivery is answered only after the transaction holding it committed. If the shared
//! transaction fails, each of its deliveries is applied again in a transaction of its own,
//! so one bad delivery never fails its neighbours. A delivery whose caller stopped waiting
//! (its request deadline passed, and the sender was told 503) is dropped before it starts:
//! the sender retries it anyway.
//!
//! SQLite has one committer (one writer): a burst costs one fsync per commit instead of one
//! per delivery. PostgreSQL has two by default (`--committers N`, 0 for a transaction per
//! delivery).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Mutex};

use crate::db::{Database, DbError};
use crate::domain::{Event, MessageId, Outcome};
use crate::sync::SyncOptions;

/// Most deliveries one transaction takes.
pub(super) const MOST_PER_COMMIT: usize = 64;

struct Job {
    id: MessageId,
    event: Event,
    options: SyncOptions,
    reply: oneshot::Sender<Result<Outcome, DbError>>,
}

/// The queue in front of the committers.
pub(super) struct GroupCommit {
    queue: mpsc::Sender<Job>,
    shared: Arc<Shared>,
}

/// Transactions that carried several deliveries, and those deliveries.
#[derive(Default)]
struct Shared {
    commits: AtomicU64,
    deliveries: AtomicU64,
}

impl GroupCommit {
    /// Starts `committers` tasks applying to `db` (on the current runtime).
    pub(super) fn start(db: Database, committers: usize) -> Self {
        let (queue, waiting) = mpsc::channel(4_096);
        let waiting = Arc::new(Mutex::new(waiting));
        let shared = Arc::new(Shared::default());
        for _ in 0..committers.max(1) {
            tokio::spawn(commit_loop(
                db.clone(),
                Arc::clone(&waiting),
                Arc::clone(&shared),
            ));
        }
        Self { queue, shared }
    }

    /// Transactions that carried several deliveries so far, and how many deliveries they
    /// carried.
    pub(super) fn shared_commits(&self) -> (u64, u64) {
        (
            self.shared.commits.load(Ordering::Relaxed),
            self.shared.deliveries.load(Ordering::Relaxed),
        )
    }

    /// Queues one delivery and waits for its outcome.
    pub(super) async fn apply(
        &self,
        id: MessageId,
        event: Event,
        options: SyncOptions,
    ) -> Result<Outcome, DbError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            id,
            event,
            options,
            reply,
        };
        self.queue
            .send(job)
            .await
            .map_err(|_| DbError::Internal("the committers stopped".into()))?;
        answer
            .await
            .map_err(|_| DbError::Internal("a committer stopped before answering".into()))?
    }
}

async fn commit_loop(db: Database, waiting: Arc<Mutex<mpsc::Receiver<Job>>>, shared: Arc<Shared>) {
    loop {
        let mut jobs = Vec::new();
        {
            let mut waiting = waiting.lock().await;
            match waiting.recv().await {
                Some(job) => jobs.push(job),
                None => return,
            }
            while jobs.len() < MOST_PER_COMMIT {
                match waiting.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
        }
        jobs.retain(|job| !job.reply.is_closed());
        // One transaction per setting (in practice all deliveries share one).
        while !jobs.is_empty() {
            let options = jobs[0].options;
            let (same, rest): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|job| {
                job.options.skip_users_without_email == options.skip_users_without_email
            });
            commit(&db, same, options, &shared).await;
            jobs = rest;
        }
    }
}

async fn commit(db: &Database, mut jobs: Vec<Job>, options: SyncOptions, shared: &Shared) {
    if jobs.len() == 1 {
        if let Some(job) = jobs.pop() {
            let result = super::apply_one(db, &job.id, &job.event, job.options).await;
            let _ = job.reply.send(result);
        }
        return;
    }
    let group: Vec<(MessageId, Event)> = jobs
        .iter()
        .map(|job| (job.id.clone(), job.event.clone()))
        .collect();
    if let Ok(outcomes) = super::apply_together(db, group.into(), options).await {
        shared.commits.fetch_add(1, Ordering::Relaxed);
        shared
            .deliveries
            .fetch_add(jobs.len() as u64, Ordering::Relaxed);
        for (job, outcome) in jobs.into_iter().zip(outcomes) {
            // The caller may have stopped waiting meanwhile; the change is committed.
            let _ = job.reply.send(Ok(outcome));
        }
        return;
    }
    // Each again on a task of its own, so that a delivery stuck behind a lock (until the
    // statement timeout) holds up neither its neighbours nor this committer; those whose
    // caller stopped waiting meanwhile are not (their sender retries them).
    jobs.retain(|job| !job.reply.is_closed());
    for job in jobs {
        let db = db.clone();
        tokio::spawn(async move {
            let result = super::apply_one(&db, &job.id, &job.event, job.options).await;
            let _ = job.reply.send(result);
        });
    }
}
