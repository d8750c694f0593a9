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
//! Concurrent deliveries serialise in the database (the user's bookkeeping row lock, then
//! advisory locks on the addresses involved, in one global order), never in memory, so
//! several instances may share one database.

pub mod batch;
pub mod dead_letter;

use crate::db::{Database, DbError};
use crate::domain::{Event, MessageId};

/// What a delivery did; the answer's body names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The change was written.
    Applied,
    /// This `svix-id` was seen before; nothing was done.
    Duplicate,
    /// A newer version or a tombstone was already applied; nothing was written.
    Stale,
    /// An event type clerk-sync does not apply (or a user without email, when skipped).
    Ignored,
    /// The tombstone was written but the application's foreign keys still hold the row.
    Deferred,
}

impl Outcome {
    /// The outcome's name as stored and answered.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::Stale => "stale",
            Outcome::Ignored => "ignored",
            Outcome::Deferred => "deferred",
        }
    }

    /// Parses a stored outcome name.
    pub fn parse(raw: &str) -> Option<Self> {
        [
            Outcome::Applied,
            Outcome::Duplicate,
            Outcome::Stale,
            Outcome::Ignored,
            Outcome::Deferred,
        ]
        .into_iter()
        .find(|o| o.as_str() == raw)
    }
}

/// Settings that change how deliveries are applied.
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncOptions {
    /// Skip users who have no email address instead of writing a placeholder.
    pub skip_users_without_email: bool,
    /// How a repeat is told.
    pub dedup: Dedup,
}

/// How a delivery that was applied before is told (and answered `duplicate`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Dedup {
    /// By its `svix-id`: every delivery is recorded in `deliveries` (webhooks, replay).
    #[default]
    ById,
    /// By its content, for batches of users read from Clerk's API (backfill), which are
    /// versions of a user rather than messages: one equal to the newest applied version
    /// (same `updated_at`, same digest) is the duplicate, and the batch records nothing in
    /// `deliveries`. A version the batch decides is compared with the newest applied one,
    /// whichever path applied it. Deliveries it leaves to the one-by-one path (a change to
    /// a contested address, a user skipped for want of an email, a delete) go the
    /// single-delivery way: recorded by id, an equal version there is `stale`.
    ByVersion,
}

/// Applies one verified delivery; see the module documentation for the rules.
pub async fn ingest(
    db: &Database,
    id: &MessageId,
    event: &Event,
    options: SyncOptions,
) -> Result<Outcome, DbError> {
    db.apply(id, event, options).await
}
