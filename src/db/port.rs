//! The port through which deliveries reach storage: what to lock, what was read under the
//! locks, and what to write. The rules that turn a snapshot into writes live in
//! `crate::sync`; a backend only takes the locks, reads, writes and commits, and never looks
//! at a version, a digest, a role or an address to choose what to write.
//!
//! One unit of work is one transaction (see [`super::Database::transact`]):
//!
//! 1. **Lock.** The bookkeeping rows of [`Request::users`] (made where absent, as a user
//!    clerk-sync has applied nothing for), in byte order; then, on PostgreSQL, a
//!    transaction-level advisory lock on every address involved — those the deliveries
//!    claim, those the users' bookkeeping claims and those their rows hold — in byte
//!    order. Every writer takes its locks in this one global order, so none waits for
//!    another in a cycle. (SQLite has one writer at a time: its transaction is the lock.)
//! 2. **Read** a [`Snapshot`] under those locks: the users' bookkeeping and rows, and for
//!    every locked address the row holding it and every user claiming it, with their
//!    bookkeeping and rows.
//! 3. **Write** the [`Writes`] planned from it, in a fixed order: bookkeeping, rows moved
//!    off an address another row takes, rows written, rows moved, deletes tried, deliveries
//!    recorded.
//! 4. **Commit.**

use chrono::{DateTime, Utc};
use foldhash::{HashMap, HashSet};

use crate::domain::{Outcome, Role, Value};

/// What a unit of work needs locked and read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// The users whose bookkeeping rows to lock (made where absent): sorted, no repeats.
    pub users: Vec<String>,
    /// For each of [`Self::users`], what its row holds if it has to be made now: what the
    /// user most likely ends the unit of work with, so that a new user's row is written
    /// once. (To the rules, a row made now is a user clerk-sync has applied nothing for;
    /// see [`Snapshot::made`].)
    pub initial: Vec<Bookkeeping>,
    /// The addresses the deliveries claim; locked with those the users' bookkeeping
    /// claims and their rows hold.
    pub claims: Vec<String>,
    /// Delivery ids whose record to look up.
    pub ids: Vec<String>,
}

/// A bookkeeping row as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bookkeeping {
    /// The newest applied version (-1 when none).
    pub version: i64,
    /// Its digest.
    pub digest: String,
    /// The address that version claims.
    pub email: Option<String>,
    /// Tombstoned.
    pub deleted: bool,
    /// The application's foreign keys refused the row's delete so far.
    pub delete_pending: bool,
    /// The row's role was last set by `public_metadata.role`.
    pub role_from_webhook: bool,
}

impl Bookkeeping {
    /// The row made for a user clerk-sync has applied nothing for.
    pub fn new_user() -> Self {
        Bookkeeping {
            version: -1,
            digest: String::new(),
            email: None,
            deleted: false,
            delete_pending: false,
            role_from_webhook: false,
        }
    }
}

/// An application row as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRow {
    /// The address it holds (none: a mapped table's address column holds NULL, or there is no
    /// such column).
    pub address: Option<String>,
    /// Its `updatedAt`, in ms since the epoch (0 when it cannot be read).
    pub updated_ms: i64,
}

/// What the database holds, read under a [`Request`]'s locks.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The addresses locked: for these, [`Self::rows`] holds every row holding one and
    /// [`Self::users`] every user claiming one.
    pub addresses: HashSet<String>,
    /// The request's delivery ids already recorded.
    pub recorded: HashSet<String>,
    /// The request's users whose bookkeeping rows were made now (with their
    /// [`Request::initial`] values, which [`Self::users`] shows as stored).
    pub made: HashSet<String>,
    /// Bookkeeping rows: the request's users (all of them), and the holders and claimants
    /// of the locked addresses (where they have one).
    pub users: HashMap<String, Bookkeeping>,
    /// Application rows: the request's users' (where they have one), and those holding or
    /// claiming a locked address.
    pub rows: HashMap<String, AppRow>,
    /// The locked addresses a row of a mapped table holds without a Clerk id: a row the
    /// application made that no Clerk user owns.
    pub foreign: HashSet<String>,
}

/// A bookkeeping row as a backend reads it: user, version, digest, email, tombstoned,
/// delete pending, role set by a webhook.
pub(super) type StoredRow = (String, i64, String, Option<String>, bool, bool, bool);

impl Snapshot {
    /// Notes a bookkeeping row read.
    pub(super) fn add_bookkeeping(&mut self, row: StoredRow) {
        let (user, version, digest, email, deleted, delete_pending, role_from_webhook) = row;
        let stored = Bookkeeping {
            version,
            digest,
            email,
            deleted,
            delete_pending,
            role_from_webhook,
        };
        self.users.insert(user, stored);
    }

    /// Notes an application row read.
    pub(super) fn add_row(&mut self, id: String, address: Option<String>, updated_ms: i64) {
        self.rows.insert(
            id,
            AppRow {
                address,
                updated_ms,
            },
        );
    }
}

/// A bookkeeping row to write (it exists: the lock made it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookkeepingWrite {
    /// The user.
    pub user_id: String,
    /// The newest applied version.
    pub version: i64,
    /// Its digest.
    pub digest: String,
    /// The address it claims.
    pub email: Option<String>,
    /// Whether the row's role was set by `public_metadata.role`.
    pub role_from_webhook: bool,
    /// Write the tombstone (now), unless one is there.
    pub tombstone: bool,
    /// Note a retry of the deferred delete (now).
    pub attempted: bool,
}

/// An application row to insert, or to update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowWrite {
    /// The row's id (the Clerk user id).
    pub id: String,
    /// `name`.
    pub name: Option<String>,
    /// `mail_address`.
    pub address: String,
    /// `role`; none leaves an existing row's own (a new row always has one).
    pub role: Option<Role>,
    /// The row existed when its user's lock was taken: it is updated (should the application
    /// have deleted it since, the unit of work fails as transient, and the next attempt
    /// inserts it); else it is a plain insert (only clerk-sync's writers, under that lock,
    /// make one).
    pub exists: bool,
    /// `createdAt`.
    pub created_at: DateTime<Utc>,
    /// `updatedAt`.
    pub updated_at: DateTime<Utc>,
    /// The digest of the version written (which, with `updated_at`, names it).
    pub digest: String,
}

/// A delivery to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its `svix-id`.
    pub svix_id: String,
    /// Its event type.
    pub event_type: String,
    /// Its user, if any.
    pub user_id: Option<String>,
    /// Its outcome.
    pub outcome: Outcome,
    /// The outcome instead, should the application's foreign keys refuse the delete of
    /// [`Self::user_id`] planned in the same writes.
    pub if_refused: Option<Outcome>,
}

/// What to write, in the order [`super::port`]'s documentation gives.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Writes {
    /// Bookkeeping rows.
    pub bookkeeping: Vec<BookkeepingWrite>,
    /// Rows to move off their address first, because another row of these writes takes
    /// it: each to a placeholder of its own until its own write below.
    pub vacate: Vec<String>,
    /// Rows to insert or update.
    pub rows: Vec<RowWrite>,
    /// Rows whose address alone changes: (id, address).
    pub moves: Vec<(String, String)>,
    /// Rows to delete where the application's foreign keys allow; each user's
    /// `delete_pending` then says whether they refused.
    pub deletes: Vec<String>,
    /// Deliveries to record.
    pub record: Vec<Record>,
    /// On a mapped table (see [`crate::domain::table::WriteShape`]), what the rows hold,
    /// column by column; none on the seed application's `User` table.
    pub mapped: Option<Box<MappedWrites>>,
}

/// The column values of a plan's writes on a mapped table, made by the layer above from the
/// mapping: the writer binds them as they are.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MappedWrites {
    /// For each of [`Writes::rows`], by position, what its insert or update writes.
    pub rows: Vec<MappedRow>,
    /// For each of [`Writes::moves`], by position, what the address column takes (the
    /// address, or NULL).
    pub moves: Vec<Value>,
    /// What a delete sets instead of deleting the row (a soft delete): (column, value). Empty:
    /// rows are deleted.
    pub soft_delete: Vec<(usize, Value)>,
}

/// What one row write binds: (column index in the shape, value) pairs. A column absent from
/// the list is left alone (its default on insert, its value on update).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MappedRow {
    /// What an insert writes (when [`RowWrite::exists`] is false).
    pub insert: Vec<(usize, Value)>,
    /// What an update writes (when it is true).
    pub update: Vec<(usize, Value)>,
}

impl Writes {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.bookkeeping.is_empty()
            && self.vacate.is_empty()
            && self.rows.is_empty()
            && self.moves.is_empty()
            && self.deletes.is_empty()
            && self.record.is_empty()
    }
}

/// The placeholder a row takes while it moves between addresses within one transaction.
pub(super) fn moving(id: &str) -> String {
    format!("{id}@moving.invalid")
}

/// Which of [`Writes::deletes`] went through (the rest the foreign keys refused).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deleted(pub HashSet<String>);
