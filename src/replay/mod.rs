//! `clerk-sync replay`: stored webhooks through the same ingestion core as `serve`.
//!
//! A bare body gets a stable delivery id derived from its content (`replay_` + a SHA-256
//! prefix), so replaying the same fixtures twice is idempotent: the second run is all
//! `duplicate`. A recorded delivery keeps its own `svix-id`, and its signature is checked with
//! the configured secret (its age ignored); a forged one is refused and reported, never applied.
//!
//! Directly into the database, deliveries are applied in batches, each batch in one
//! transaction and each delivery by the same rules as a webhook; if a batch fails as a whole,
//! its deliveries are applied one by one so that one bad delivery never fails its neighbours.

mod input;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use sha2::{Digest, Sha256};

pub use input::{read, Item, Located};

use crate::db::Database;
use crate::domain::{Event, MessageId};
use crate::sync::{Outcome, SyncOptions, WhenUnavailable};
use crate::verify::Verifier;

/// What happened to each replayed delivery.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    /// Written.
    pub applied: u64,
    /// Seen before (by delivery id).
    pub duplicate: u64,
    /// Older than what the table holds, or for a deleted user.
    pub stale: u64,
    /// An event type clerk-sync does not apply.
    pub ignored: u64,
    /// A delete the application's foreign keys still refuse.
    pub deferred: u64,
    /// Unreadable, invalid or forged: never applied.
    pub rejected: u64,
    /// Valid, but the database or the daemon failed to take it.
    pub failed: u64,
    /// `--dry-run`: valid deliveries that would have been replayed.
    pub valid: u64,
}

impl Summary {
    fn count(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Applied => self.applied += 1,
            Outcome::Duplicate => self.duplicate += 1,
            Outcome::Stale => self.stale += 1,
            Outcome::Ignored => self.ignored += 1,
            Outcome::Deferred => self.deferred += 1,
        }
    }

    /// Deliveries looked at.
    pub fn total(&self) -> u64 {
        self.applied
            + self.duplicate
            + self.stale
            + self.ignored
            + self.deferred
            + self.rejected
            + self.failed
            + self.valid
    }

    /// Adds `other`'s counts to these.
    fn absorb(&mut self, other: Summary) {
        self.applied += other.applied;
        self.duplicate += other.duplicate;
        self.stale += other.stale;
        self.ignored += other.ignored;
        self.deferred += other.deferred;
        self.rejected += other.rejected;
        self.failed += other.failed;
        self.valid += other.valid;
    }

    /// True when nothing was rejected or failed.
    pub fn succeeded(&self) -> bool {
        self.rejected == 0 && self.failed == 0
    }

    /// `(name, count)` for every outcome, in a fixed order.
    pub fn rows(&self) -> [(&'static str, u64); 8] {
        [
            ("applied", self.applied),
            ("duplicate", self.duplicate),
            ("stale", self.stale),
            ("ignored", self.ignored),
            ("deferred", self.deferred),
            ("rejected", self.rejected),
            ("failed", self.failed),
            ("valid", self.valid),
        ]
    }
}

/// Progress and problem reports; the command line shows them on a bar or as plain lines.
pub trait Reporter: Sync {
    /// One more delivery handled.
    fn advance(&self);
    /// A delivery rejected or failed, with where it came from.
    fn problem(&self, location: &str, kind: &str, reason: &str);
}

/// A delivery ready to apply or send.
struct Prepared {
    location: String,
    id: MessageId,
    event: Event,
    body: Vec<u8>,
}

/// The stable id of a bare body: replaying it again is a duplicate.
fn derived_id(body: &[u8]) -> MessageId {
    let digest = Sha256::digest(body);
    let hex = crate::domain::lower_hex(&digest[..16]);
    // 39 printable ASCII characters: always a valid id.
    MessageId::parse(&format!("replay_{hex}"))
        .unwrap_or_else(|_| unreachable!("derived ids are valid"))
}

fn prepare(located: Located, verifier: Option<&Verifier>) -> Result<Prepared, (String, String)> {
    let Located { location, item } = located;
    let fail = |reason: String| Err((location.clone(), reason));
    let bare = matches!(item, Item::Body(_));
    let (id, body) = match item {
        Item::Unreadable(reason) => return fail(reason),
        Item::Body(body) => (derived_id(&body), body),
        Item::Recorded { headers, body } => {
            let Some(verifier) = verifier else {
                return fail(
                    "a recorded delivery needs the signing secret to check its signature".into(),
                );
            };
            if let Err(e) = verifier.verify(&body, &headers, false) {
                return fail(format!("signature rejected: {e}"));
            }
            let raw = crate::verify::message_id(&headers).unwrap_or("");
            match MessageId::parse(raw) {
                Ok(id) => (id, body),
                Err(e) => return fail(e.to_string()),
            }
        }
    };
    match Event::parse(&body) {
        Ok(event) => Ok(Prepared {
            location,
            id,
            event,
            body,
        }),
        Err(e) if bare => fail(input::diagnose(&body, &e)),
        Err(e) => fail(format!("invalid event: {e}")),
    }
}

/// How a replay runs.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Validate only; write and send nothing.
    pub dry_run: bool,
    /// Deliveries per transaction (direct mode).
    pub batch_size: usize,
    /// Batches applied at once, each in its own transaction (direct mode).
    pub transactions: usize,
    /// Deliveries in flight at once (`--to`).
    pub concurrency: usize,
    /// How deliveries are applied.
    pub sync: SyncOptions,
}

/// What the reading thread hands to the applying side.
enum Message {
    /// Deliveries ready to apply or send, in input order, all of one partition (their
    /// users' share of the input; see [`partition`]).
    Batch(usize, Vec<Prepared>),
    /// An item that cannot be replayed.
    Rejected(String, String),
    /// `--dry-run`: an item that would be replayed.
    Valid,
}

/// The partition of `event` among `parts`: its user's, stable (FNV-1a of the user id), so
/// that all deliveries of one user fall in one partition, in input order.
fn partition(event: &Event, parts: usize) -> usize {
    let Some(user) = event.user_id() else {
        return 0;
    };
    let hash = user
        .as_str()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    // The remainder is below `parts`, a usize.
    usize::try_from(hash % parts as u64).unwrap_or(0)
}

/// Reads, verifies and parses on a thread of its own, so that the next batch is prepared
/// while the database applies the current one. Deliveries are split into `parts`
/// partitions by user; a batch holds one partition's.
/// Bodies are kept only for `--to` (`keep_bodies`), which sends them; applied directly, a
/// batch holds parsed events only.
fn produce(
    items: impl Iterator<Item = Located> + Send + 'static,
    verifier: Option<Arc<Verifier>>,
    options: Options,
    parts: usize,
    keep_bodies: bool,
) -> tokio::sync::mpsc::Receiver<Message> {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    std::thread::spawn(move || {
        let size = options.batch_size.max(1);
        let parts = parts.max(1);
        let mut batches: Vec<Vec<Prepared>> = (0..parts).map(|_| Vec::new()).collect();
        for located in items {
            let message = match prepare(located, verifier.as_deref()) {
                Err((location, reason)) => Message::Rejected(location, reason),
                Ok(_) if options.dry_run => Message::Valid,
                Ok(mut prepared) => {
                    if !keep_bodies {
                        prepared.body = Vec::new();
                    }
                    let part = partition(&prepared.event, parts);
                    let batch = &mut batches[part];
                    batch.push(prepared);
                    if batch.len() < size {
                        continue;
                    }
                    Message::Batch(part, std::mem::take(batch))
                }
            };
            if tx.blocking_send(message).is_err() {
                return;
            }
        }
        for (part, batch) in batches.into_iter().enumerate() {
            if !batch.is_empty() && tx.blocking_send(Message::Batch(part, batch)).is_err() {
                return;
            }
        }
    });
    rx
}

/// Applies stored webhooks directly to `db`.
pub async fn into_database(
    db: &Database,
    items: impl Iterator<Item = Located> + Send + 'static,
    verifier: Option<Arc<Verifier>>,
    options: Options,
    reporter: &dyn Reporter,
) -> Summary {
    use futures_util::stream::{FuturesUnordered, StreamExt};

    let mut summary = Summary::default();
    // One partition of the users per transaction in flight, and at most one batch of each
    // partition in flight: the transactions never wait on each other's users (only, rarely,
    // on an address two users share, and in one global order: no deadlock), so the
    // database works on all of them at once, and every user's deliveries are applied in
    // input order.
    let parts = options.transactions.max(1);
    let mut messages = produce(items, verifier, options, parts, false);
    let mut busy = vec![false; parts];
    let mut in_flight = FuturesUnordered::new();
    loop {
        // The batches in flight move only while polled: wait for the next message and for
        // them at once, never for the message alone.
        let message = tokio::select! {
            message = messages.recv() => message,
            Some((done_part, done)) = in_flight.next(), if !in_flight.is_empty() => {
                busy[done_part] = false;
                summary.absorb(done);
                continue;
            }
        };
        let Some(message) = message else {
            break;
        };
        match message {
            Message::Batch(part, batch) => {
                while busy[part] {
                    let Some((done_part, done)) = in_flight.next().await else {
                        break;
                    };
                    busy[done_part] = false;
                    summary.absorb(done);
                }
                busy[part] = true;
                in_flight
                    .push(async move { (part, flush(db, batch, options.sync, reporter).await) });
            }
            Message::Rejected(location, reason) => {
                summary.rejected += 1;
                reporter.problem(&location, "rejected", &reason);
                reporter.advance();
            }
            Message::Valid => {
                summary.valid += 1;
                reporter.advance();
            }
        }
    }
    while let Some((_, done)) = in_flight.next().await {
        summary.absorb(done);
    }
    summary
}

async fn flush(
    db: &Database,
    batch: Vec<Prepared>,
    sync: SyncOptions,
    reporter: &dyn Reporter,
) -> Summary {
    let mut summary = Summary::default();
    if batch.is_empty() {
        return summary;
    }
    let (locations, pairs): (Vec<String>, Vec<(MessageId, Event)>) = batch
        .into_iter()
        .map(|p| (p.location, (p.id, p.event)))
        .unzip();
    let pairs: Arc<[(MessageId, Event)]> = pairs.into();
    let results = crate::sync::apply_bulk(db, pairs, sync, WhenUnavailable::Continue).await;
    for (location, result) in locations.iter().zip(results) {
        match result {
            Ok(outcome) => summary.count(outcome),
            Err(e) => {
                summary.failed += 1;
                reporter.problem(location, "failed", &e.to_string());
            }
        }
        reporter.advance();
    }
    summary
}

/// Where a delivery came from, and what became of it.
type Sent = (String, Result<Outcome, SendError>);

/// Why a delivery sent with `--to` did not land.
#[derive(Debug)]
enum SendError {
    /// Not sent: unreadable, invalid or forged.
    Rejected(String),
    /// Not sent: `--dry-run`.
    DryRun,
    /// The daemon refused it (4xx).
    Refused(String),
    /// The daemon could not take it, even after retries.
    Failed(String),
}

/// Signs each stored webhook with the configured secret and POSTs it to a running daemon,
/// as Svix would: bounded concurrency, 503/429/5xx and connection errors retried with backoff.
pub async fn to_daemon(
    url: &str,
    items: impl Iterator<Item = Located> + Send + 'static,
    verifier: Arc<Verifier>,
    options: Options,
    reporter: &dyn Reporter,
) -> Summary {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new());
    let messages = produce(
        items,
        Some(verifier.clone()),
        Options {
            batch_size: 1,
            ..options
        },
        1,
        true,
    );
    let stream = futures_util::stream::unfold(messages, |mut rx| async move {
        rx.recv().await.map(|m| (m, rx))
    });
    let verifier = &verifier;
    let client = &client;
    let results: Vec<Sent> = stream
        .flat_map(|message| {
            let items: Vec<Result<Prepared, Sent>> = match message {
                Message::Batch(_, batch) => batch.into_iter().map(Ok).collect(),
                Message::Rejected(location, reason) => {
                    vec![Err((location, Err(SendError::Rejected(reason))))]
                }
                Message::Valid => vec![Err((String::new(), Err(SendError::DryRun)))],
            };
            futures_util::stream::iter(items)
        })
        .map(|item| async move {
            let result = match item {
                Ok(p) => (p.location.clone(), send(client, url, verifier, &p).await),
                Err(done) => done,
            };
            reporter.advance();
            result
        })
        .buffer_unordered(options.concurrency.max(1))
        .collect()
        .await;
    let mut summary = Summary::default();
    for (location, result) in results {
        match result {
            Ok(outcome) => summary.count(outcome),
            Err(SendError::DryRun) => summary.valid += 1,
            Err(SendError::Rejected(reason)) | Err(SendError::Refused(reason)) => {
                summary.rejected += 1;
                reporter.problem(&location, "rejected", &reason);
            }
            Err(SendError::Failed(reason)) => {
                summary.failed += 1;
                reporter.problem(&location, "failed", &reason);
            }
        }
    }
    summary
}

async fn send(
    client: &reqwest::Client,
    url: &str,
    verifier: &Verifier,
    p: &Prepared,
) -> Result<Outcome, SendError> {
    let mut delay = Duration::from_millis(250);
    let mut last = String::new();
    for attempt in 0..6 {
        if attempt > 0 {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        let ts = chrono::Utc::now().timestamp();
        let signature = verifier
            .sign(p.id.as_str(), ts, &p.body)
            .map_err(|e| SendError::Refused(e.to_string()))?;
        let response = client
            .post(url)
            .header("svix-id", p.id.as_str())
            .header("svix-timestamp", ts.to_string())
            .header("svix-signature", signature)
            .header("content-type", "application/json")
            .body(p.body.clone())
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                last = format!("cannot reach {url}: {e}");
                continue;
            }
        };
        let status = response.status();
        let json: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
        if status.is_success() {
            let name = json.get("outcome").and_then(|o| o.as_str()).unwrap_or("");
            return Outcome::parse(name)
                .ok_or_else(|| SendError::Failed(format!("unexpected answer {status}: {json}")));
        }
        let reason = json
            .get("error")
            .and_then(|e| e.as_str())
            .map_or_else(|| status.to_string(), |e| format!("{status}: {e}"));
        if status.as_u16() == 429 || status.is_server_error() {
            last = reason;
            continue;
        }
        return Err(SendError::Refused(reason));
    }
    Err(SendError::Failed(last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable() {
        // A body replayed again, by any version of clerk-sync, must find its first id.
        assert_eq!(
            derived_id(br#"{"type":"user.created"}"#).as_str(),
            "replay_eeda84e7bad3591de94def5c959f2cc3"
        );
    }
}
