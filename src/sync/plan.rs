//! The planner: every rule of [`crate::sync`], decided once, here.
//!
//! [`plan`] takes deliveries in order and the [`Snapshot`] a backend read under their locks,
//! and walks the deliveries one after another over an in-memory copy of the rows and
//! bookkeeping they can touch, exactly as applying them one by one would. It returns the
//! outcome of each delivery and the net [`Writes`]. One delivery is a batch of one; a
//! group commit, a replay or backfill batch, a prune and a deferred delete's retry are all
//! planned by the same walk. No I/O, no database type, nothing async.
//!
//! Each rule has one function, named for it:
//! dedup ([`Walk::deliver`]), tombstones and deferred deletes ([`Walk::delete`],
//! [`Walk::finish_delete`]), last write wins with the digest tie-break ([`newer`]), the
//! skip-without-email option and the role rule ([`role_after`]) in [`Walk::upsert`], the
//! no-email placeholder ([`no_email`]), the newest claim on an address ([`Walk::claim`],
//! [`holder_loses`]) with its displaced placeholder ([`displaced`]), and giving an address
//! back to its newest remaining claimant ([`Walk::settle`]).

use std::borrow::Cow;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use crate::db::port::{
    AppRow, Bookkeeping, BookkeepingWrite, Record, Request, RowWrite, Snapshot, Writes,
};
use crate::domain::{ClerkUserId, EmailAddress, Event, MessageId, Outcome, Role, UserChange};
use crate::sync::{Addresses, Dedup, SyncOptions};

/// A delivery's outcome as planned: known now, or hanging on whether the application's
/// foreign keys let a planned delete through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Planned {
    /// Known.
    Known(Outcome),
    /// `done` if the delete of `user` went through, else `refused`.
    OnDelete {
        /// The user whose delete decides.
        user: String,
        /// The outcome when it went through.
        done: Outcome,
        /// The outcome when the foreign keys refused it.
        refused: Outcome,
    },
}

impl Planned {
    /// The outcome, once the deletes that went through are known.
    pub fn resolve(&self, deleted: &crate::db::port::Deleted) -> Outcome {
        match self {
            Planned::Known(outcome) => *outcome,
            Planned::OnDelete {
                user,
                done,
                refused,
            } => {
                if deleted.0.contains(user) {
                    *done
                } else {
                    *refused
                }
            }
        }
    }
}

/// A plan that cannot be made: the snapshot lacks what the walk needs (a backend that did
/// not read what its [`Request`] asked for).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the snapshot read for the plan is incomplete: {0}")]
pub struct Incomplete(String);

/// What to write for some deliveries, and what each did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// The i-th delivery's outcome.
    pub outcomes: Vec<Planned>,
    /// The writes.
    pub writes: Writes,
}

/// What to lock and read before planning `batch`.
pub fn request(batch: &[(MessageId, Event)], options: SyncOptions) -> Request {
    // Sorted and deduplicated borrowed, copied once.
    let sorted = |mut list: Vec<&str>| -> Vec<String> {
        list.sort_unstable();
        list.dedup();
        list.into_iter().map(str::to_owned).collect()
    };
    let users = sorted(
        batch
            .iter()
            .filter_map(|(_, e)| e.user_id().map(ClerkUserId::as_str))
            .collect(),
    );
    let claims = match options.addresses {
        Addresses::Unique => sorted(
            batch
                .iter()
                .filter_map(|(_, e)| change_of(e).and_then(|c| c.email.as_ref()))
                .map(EmailAddress::as_str)
                .collect(),
        ),
        Addresses::Follow => Vec::new(),
    };
    let ids = match options.dedup {
        Dedup::ById => batch.iter().map(|(id, _)| id.as_str().to_owned()).collect(),
        Dedup::ByVersion => Vec::new(),
    };
    let initial = initial(batch, &users);
    Request {
        users,
        initial,
        claims,
        ids,
    }
}

/// What a new user's bookkeeping most likely holds after `batch`: its newest version's
/// (version, digest, claim, whether it names a role); a user with a delete, the row of a user
/// clerk-sync has applied nothing for. A guess only: the plan writes what it decides
/// wherever the guess was wrong.
fn initial(batch: &[(MessageId, Event)], users: &[String]) -> Vec<Bookkeeping> {
    let mut newest: HashMap<&str, &UserChange> = HashMap::with_capacity(users.len());
    let mut deleted: HashSet<&str> = HashSet::new();
    for (_, event) in batch {
        match event {
            Event::Upsert { change, .. } => {
                let slot = newest.entry(change.id.as_str()).or_insert(change);
                if newer(change, (slot.version, slot.digest.as_str())) {
                    *slot = change;
                }
            }
            Event::Delete { id } => {
                deleted.insert(id.as_str());
            }
            Event::Ignored { .. } => {}
        }
    }
    users
        .iter()
        .map(|user| match newest.get(user.as_str()) {
            Some(change) if !deleted.contains(user.as_str()) => Bookkeeping {
                version: change.version,
                digest: change.digest.clone(),
                email: change.email.as_ref().map(|e| e.as_str().to_owned()),
                deleted: false,
                delete_pending: false,
                role_from_webhook: change.role.is_some(),
            },
            _ => Bookkeeping::new_user(),
        })
        .collect()
}

/// What to lock and read before retrying `user`'s deferred delete.
pub fn retry_request(user: &str) -> Request {
    Request {
        users: vec![user.to_owned()],
        initial: vec![Bookkeeping::new_user()],
        ..Request::default()
    }
}

/// Plans `batch`, in order, over `snapshot`; see the module documentation.
pub fn plan(
    batch: &[(MessageId, Event)],
    snapshot: &Snapshot,
    options: SyncOptions,
) -> Result<Plan, Incomplete> {
    let mut walk = Walk::new(snapshot, options, batch.len());
    let mut outcomes = Vec::with_capacity(batch.len());
    for (id, event) in batch {
        outcomes.push(walk.deliver(id, event)?);
    }
    Ok(Plan {
        outcomes,
        writes: walk.finish(),
    })
}

/// Plans one retry of `user`'s deferred delete; none when it is not pending.
pub fn plan_retry(user: &str, snapshot: &Snapshot) -> Result<Option<Plan>, Incomplete> {
    let mut walk = Walk::new(snapshot, SyncOptions::default(), 1);
    let state = walk.user(user)?;
    if !state.deleted || state.pending != Pending::Yes {
        return Ok(None);
    }
    walk.touch_user(user).attempted = true;
    let outcome = walk.finish_delete(user)?;
    Ok(Some(Plan {
        outcomes: vec![outcome],
        writes: walk.finish(),
    }))
}

/// **Last write wins**: a version applies only over an older one; two versions with the
/// same `updated_at` are ordered by their digests (byte order), so the result never
/// depends on the order they arrive in.
pub fn newer(change: &UserChange, than: (i64, &str)) -> bool {
    (change.version, change.digest.as_str()) > than
}

/// **The role rule**: `public_metadata.role` when named; when not, a role an earlier
/// webhook set goes back to `USER`, and one the application set is left alone (none).
pub fn role_after(named: Option<Role>, set_by_webhook: bool) -> Option<Role> {
    match named {
        Some(role) => Some(role),
        None if set_by_webhook => Some(Role::User),
        None => None,
    }
}

/// **The no-email placeholder**: what the row of a user without an address holds.
pub fn no_email(user: &str) -> String {
    format!("{user}@no-email.invalid")
}

/// **The displaced placeholder**: what a row holds once it lost its address to a newer
/// claim.
pub fn displaced(user: &str) -> String {
    format!("{user}@displaced.invalid")
}

/// **Placeholders**: an address in the reserved `.invalid` domain is one the rules made (no
/// email, displaced, moving), never a claim.
pub fn is_placeholder(address: &str) -> bool {
    address.ends_with(".invalid")
}

/// The address a row holds to the rules: a row holding none (NULL in an optional address
/// column, or a table without one) holds its user's no-email placeholder, which nothing else
/// can claim.
fn held<'a>(user: &str, row: &'a AppRow) -> Cow<'a, str> {
    match row.address.as_deref() {
        Some(address) => Cow::Borrowed(address),
        None => Cow::Owned(no_email(user)),
    }
}

/// How new a holder is: the newest version clerk-sync applied for it, or, for a row the
/// application wrote itself (updated at `updated_ms`), its `updatedAt` to the second (the
/// precision both backends keep alike).
fn holder_version(state: Option<&State<'_>>, updated_ms: i64) -> i64 {
    match state {
        Some(s) if s.version >= 0 => s.version,
        _ => updated_ms.div_euclid(1000) * 1000,
    }
}

/// **The newest claim on an address**: whether the row holding `address` (updated at
/// `updated_ms`) gives it up to `claimant` at `version`. A tombstoned holder always does; so
/// does a holder whose own newest version claims another address; otherwise the older one
/// loses (the user id settling equal versions).
fn holder_loses(
    holder: &str,
    state: Option<&State<'_>>,
    updated_ms: i64,
    address: &str,
    claimant: &str,
    version: i64,
) -> bool {
    let dead = state.is_some_and(|s| s.deleted);
    let known = state.is_some_and(|s| s.version >= 0);
    let claims_another = known && state.and_then(|s| s.email) != Some(address);
    dead || claims_another || (holder_version(state, updated_ms), holder) < (version, claimant)
}

fn change_of(event: &Event) -> Option<&UserChange> {
    match event {
        Event::Upsert { change, .. } => Some(change),
        _ => None,
    }
}

/// Whether a user's refused delete is still to be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    No,
    Yes,
    /// Tried in this plan: pending exactly when the foreign keys refuse.
    IfRefused,
}

/// A user's bookkeeping as the walk goes, borrowed from the snapshot or the deliveries
/// (which outlive the walk).
#[derive(Debug, Clone, Copy)]
struct State<'s> {
    version: i64,
    digest: &'s str,
    email: Option<&'s str>,
    deleted: bool,
    pending: Pending,
    role_from_webhook: bool,
}

impl<'s> State<'s> {
    /// The bookkeeping of a user clerk-sync has applied nothing for
    /// ([`Bookkeeping::new_user`]).
    fn new_user() -> Self {
        State {
            version: -1,
            digest: "",
            email: None,
            deleted: false,
            pending: Pending::No,
            role_from_webhook: false,
        }
    }
}

impl<'s> From<&'s Bookkeeping> for State<'s> {
    fn from(b: &'s Bookkeeping) -> Self {
        State {
            version: b.version,
            digest: &b.digest,
            email: b.email.as_deref(),
            deleted: b.deleted,
            pending: if b.delete_pending {
                Pending::Yes
            } else {
                Pending::No
            },
            role_from_webhook: b.role_from_webhook,
        }
    }
}

/// What the walk writes to a user's bookkeeping beyond its fields.
#[derive(Debug, Default, Clone, Copy)]
struct Marks {
    tombstone: bool,
    attempted: bool,
}

/// A row as the walk goes.
#[derive(Debug, Clone)]
struct Row<'s> {
    /// Borrowed from the snapshot or the deliveries, except the placeholders the rules make.
    address: Cow<'s, str>,
    updated_ms: i64,
    /// The fields written by the newest applied version of this plan, if any; its address
    /// is the row's, filled in by [`Walk::finish`].
    full: Option<RowWrite>,
}

/// The walk over one snapshot.
/// (User ids, delivery ids and addresses are borrowed from the snapshot and the deliveries,
/// which outlive it; only the placeholders the rules make are owned.)
struct Walk<'s> {
    snapshot: &'s Snapshot,
    options: SyncOptions,
    users: HashMap<&'s str, State<'s>>,
    rows: HashMap<&'s str, Row<'s>>,
    /// Who holds each address of the walk.
    holders: HashMap<Cow<'s, str>, &'s str>,
    /// Who claims each locked address (each claimant once; the order does not matter, as
    /// [`Walk::settle`] takes the newest).
    claimants: HashMap<&'s str, Vec<&'s str>>,
    /// Ids delivered so far in this plan.
    seen: HashSet<&'s str>,
    /// Users whose bookkeeping changed, and how (sorted once, by [`Walk::finish`]).
    touched_users: HashMap<&'s str, Marks>,
    /// Rows whose address or fields changed.
    touched_rows: HashSet<&'s str>,
    deletes: Vec<String>,
    record: Vec<Record>,
}

impl<'s> Walk<'s> {
    /// The walk over `snapshot` of `deliveries` deliveries (its maps sized for them: a bulk
    /// batch's thousands would grow them several times over).
    fn new(snapshot: &'s Snapshot, options: SyncOptions, deliveries: usize) -> Self {
        let mut holders = HashMap::with_capacity(snapshot.rows.len() + deliveries);
        let mut rows = HashMap::with_capacity(snapshot.rows.len() + deliveries);
        for (id, row) in &snapshot.rows {
            let address = held(id, row);
            holders.insert(address.clone(), id.as_str());
            rows.insert(
                id.as_str(),
                Row {
                    address,
                    updated_ms: row.updated_ms,
                    full: None,
                },
            );
        }
        // A row made for this unit of work is, to the rules, a user clerk-sync has applied
        // nothing for, whatever it was made with.
        let users: HashMap<&'s str, State<'s>> = snapshot
            .users
            .iter()
            .map(|(u, b)| {
                let state = if snapshot.made.contains(u) {
                    State::new_user()
                } else {
                    State::from(b)
                };
                (u.as_str(), state)
            })
            .collect();
        let mut claimants: HashMap<&'s str, Vec<&'s str>> =
            HashMap::with_capacity(snapshot.addresses.len());
        for (&user, state) in &users {
            if let Some(email) = state.email {
                if snapshot.addresses.contains(email) {
                    claimants.entry(email).or_default().push(user);
                }
            }
        }
        Walk {
            snapshot,
            options,
            users,
            rows,
            holders,
            claimants,
            seen: HashSet::with_capacity(deliveries),
            touched_users: HashMap::with_capacity(snapshot.users.len()),
            touched_rows: HashSet::with_capacity(deliveries),
            deletes: Vec::new(),
            record: Vec::new(),
        }
    }

    fn user(&self, user: &str) -> Result<&State<'s>, Incomplete> {
        self.users
            .get(user)
            .ok_or_else(|| Incomplete(format!("no bookkeeping row for {user}")))
    }

    fn user_mut(&mut self, user: &str) -> Result<&mut State<'s>, Incomplete> {
        self.users
            .get_mut(user)
            .ok_or_else(|| Incomplete(format!("no bookkeeping row for {user}")))
    }

    fn touch_user(&mut self, user: &'s str) -> &mut Marks {
        self.touched_users.entry(user).or_default()
    }

    /// The address is one the walk knows every holder and claimant of: locked, or a
    /// placeholder (`.invalid` addresses are never claims, and only their user's row can
    /// hold one).
    fn covers(&self, address: &str) -> bool {
        self.snapshot.addresses.contains(address) || is_placeholder(address)
    }

    /// **Dedup**: a delivery whose id was recorded before, or delivered earlier in this
    /// plan, is a duplicate and changes nothing; by version (users read from Clerk's API),
    /// nothing is recorded and a repeat is told by its content instead (see [`Dedup`]).
    fn deliver(&mut self, id: &'s MessageId, event: &'s Event) -> Result<Planned, Incomplete> {
        let by_id = self.options.dedup == Dedup::ById;
        if by_id && (self.snapshot.recorded.contains(id.as_str()) || !self.seen.insert(id.as_str()))
        {
            return Ok(Planned::Known(Outcome::Duplicate));
        }
        let planned = match event {
            Event::Ignored { .. } => Planned::Known(Outcome::Ignored),
            Event::Delete { id: user } => self.delete(user.as_str())?,
            Event::Upsert { change, .. } => Planned::Known(self.upsert(change)?),
        };
        if by_id {
            let (outcome, if_refused) = match &planned {
                Planned::Known(outcome) => (*outcome, None),
                Planned::OnDelete { done, refused, .. } => (*done, Some(*refused)),
            };
            self.record.push(Record {
                svix_id: id.as_str().to_owned(),
                event_type: event.event_type().to_owned(),
                user_id: event.user_id().map(|u| u.as_str().to_owned()),
                outcome,
                if_refused,
            });
        }
        Ok(planned)
    }

    /// `user.created` / `user.updated`.
    fn upsert(&mut self, change: &'s UserChange) -> Result<Outcome, Incomplete> {
        let user = change.id.as_str();
        let (dedup, skip_without_email) =
            (self.options.dedup, self.options.skip_users_without_email);
        let state = self.user_mut(user)?;
        // **Tombstones**: Clerk never reuses a user id, so nothing revives a deleted user.
        if state.deleted {
            return Ok(Outcome::Stale);
        }
        if !newer(change, (state.version, state.digest)) {
            let repeat = dedup == Dedup::ByVersion
                && (change.version, change.digest.as_str()) == (state.version, state.digest);
            return Ok(if repeat {
                Outcome::Duplicate
            } else {
                Outcome::Stale
            });
        }
        // **Skip without email**, when configured.
        if change.email.is_none() && skip_without_email {
            return Ok(Outcome::Ignored);
        }
        let role = role_after(change.role, state.role_from_webhook);
        let email = change.email.as_ref().map(|e| e.as_str());

        // The bookkeeping: this version is the newest applied, with its claim.
        let previous = std::mem::replace(&mut state.email, email);
        state.version = change.version;
        state.digest = &change.digest;
        state.role_from_webhook = change.role.is_some();
        let row_address = self.rows.get(user).map(|r| r.address.clone());
        self.set_claim(user, previous, email);
        self.touch_user(user);

        let address = match (email, self.options.addresses) {
            (None, _) => Cow::Owned(no_email(user)),
            (Some(email), Addresses::Follow) => Cow::Borrowed(email),
            (Some(email), Addresses::Unique) => self.claim(change, email)?,
        };
        self.write_row(change, address.clone(), role);

        // Addresses this user let go of return to their newest remaining claimant.
        let mut released: Vec<Cow<'s, str>> = [previous.map(Cow::Borrowed), row_address]
            .into_iter()
            .flatten()
            .filter(|a| *a != address)
            .collect();
        released.dedup();
        for old in released {
            self.settle(old)?;
        }
        Ok(Outcome::Applied)
    }

    /// Moves `user`'s claim from `from` to `to` in the claimants of the locked addresses.
    fn set_claim(&mut self, user: &'s str, from: Option<&'s str>, to: Option<&'s str>) {
        if from == to {
            return;
        }
        if let Some(from) = from {
            if let Some(users) = self.claimants.get_mut(from) {
                users.retain(|u| *u != user);
            }
        }
        if let Some(to) = to {
            let users = self.claimants.entry(to).or_default();
            if !users.contains(&user) {
                users.push(user);
            }
        }
    }

    /// Settles who gets `email` between the incoming user and its current holder, if any;
    /// returns the address the incoming user's row takes.
    fn claim(
        &mut self,
        change: &'s UserChange,
        email: &'s str,
    ) -> Result<Cow<'s, str>, Incomplete> {
        let user = change.id.as_str();
        if !self.covers(email) {
            return Err(Incomplete(format!(
                "the claimed address of {user} is not locked"
            )));
        }
        let Some(holder) = self.holders.get(email).copied().filter(|h| *h != user) else {
            return Ok(Cow::Borrowed(email));
        };
        let updated_ms = self
            .rows
            .get(holder)
            .map(|r| r.updated_ms)
            .ok_or_else(|| Incomplete(format!("no row for the holder {holder}")))?;
        let state = self.users.get(holder);
        if holder_loses(holder, state, updated_ms, email, user, change.version) {
            self.move_row(holder, Cow::Owned(displaced(holder)));
            Ok(Cow::Borrowed(email))
        } else {
            Ok(Cow::Owned(displaced(user)))
        }
    }

    /// Writes the row of the version just applied.
    fn write_row(&mut self, change: &'s UserChange, address: Cow<'s, str>, role: Option<Role>) {
        let user = change.id.as_str();
        let exists = self.snapshot.rows.contains_key(user);
        let updated_ms = change.updated_at.timestamp_millis();
        let row = self.rows.entry(user).or_insert_with(|| Row {
            // Takes the address below.
            address: Cow::Borrowed(""),
            updated_ms,
            full: None,
        });
        let previous_role = row.full.as_ref().and_then(|full| full.role);
        // A version that leaves the role alone keeps what an earlier version of this plan
        // wrote.
        let full = RowWrite {
            id: user.to_owned(),
            name: change.name.clone(),
            // The row's, once the walk is done.
            address: String::new(),
            // A version that names no role leaves an existing row's own alone; a new row has
            // none of its own and gets USER.
            role: role.or(previous_role).or((!exists).then_some(Role::User)),
            created_at: change.created_at,
            updated_at: change.updated_at,
            digest: change.digest.clone(),
            exists,
        };
        row.full = Some(full);
        row.updated_ms = updated_ms;
        self.move_row(user, address);
        self.touched_rows.insert(user);
    }

    /// Moves `id`'s row to `address`.
    fn move_row(&mut self, id: &'s str, address: Cow<'s, str>) {
        let Some(row) = self.rows.get_mut(id) else {
            return;
        };
        if row.address == address {
            return;
        }
        if self
            .holders
            .get(row.address.as_ref())
            .is_some_and(|h| *h == id)
        {
            self.holders.remove(row.address.as_ref());
        }
        row.address.clone_from(&address);
        self.holders.insert(address, id);
        self.touched_rows.insert(id);
    }

    /// **Giving an address back**: once nobody live holds `address`, its newest live
    /// claimant whose row does not hold it gets it (a tombstoned holder, kept only for the
    /// application's foreign keys, always gives it up).
    fn settle(&mut self, address: Cow<'s, str>) -> Result<(), Incomplete> {
        if self.options.addresses == Addresses::Follow {
            return Ok(());
        }
        if !self.covers(&address) {
            return Err(Incomplete(format!(
                "a released address is not locked: {address:?}"
            )));
        }
        let Some(claimants) = self.claimants.get(address.as_ref()) else {
            return Ok(());
        };
        let best = claimants
            .iter()
            .filter_map(|&c| {
                let state = self.users.get(c)?;
                let row = self.rows.get(c)?;
                (!state.deleted && state.version >= 0 && row.address != address)
                    .then_some((state.version, c))
            })
            .max()
            .map(|(_, c)| c);
        let Some(best) = best else { return Ok(()) };
        if let Some(holder) = self.holders.get(address.as_ref()).copied() {
            let dead = self.users.get(holder).is_some_and(|s| s.deleted);
            if !dead {
                return Ok(());
            }
            self.move_row(holder, Cow::Owned(displaced(holder)));
        }
        self.move_row(best, address);
        Ok(())
    }

    /// `user.deleted`: the tombstone, then the row's delete.
    fn delete(&mut self, user: &'s str) -> Result<Planned, Incomplete> {
        let state = *self.user(user)?;
        if state.deleted {
            match state.pending {
                Pending::No => return Ok(Planned::Known(Outcome::Stale)),
                // Tried in this plan already: the same foreign keys answer the same way.
                Pending::IfRefused => {
                    return Ok(Planned::OnDelete {
                        user: user.to_owned(),
                        done: Outcome::Stale,
                        refused: Outcome::Deferred,
                    })
                }
                Pending::Yes => {}
            }
        } else {
            self.user_mut(user)?.deleted = true;
            self.touch_user(user).tombstone = true;
        }
        self.finish_delete(user)
    }

    /// **Deferred deletes**: the tombstoned user's row is deleted where the application's
    /// foreign keys allow, and kept (the delete retried later) where they refuse; either
    /// way its address goes to its newest remaining claimant.
    fn finish_delete(&mut self, user: &'s str) -> Result<Planned, Incomplete> {
        self.user_mut(user)?.pending = Pending::IfRefused;
        self.touch_user(user);
        if !self.deletes.iter().any(|d| d == user) {
            self.deletes.push(user.to_owned());
        }
        if let Some(address) = self.rows.get(user).map(|r| r.address.clone()) {
            self.settle(address)?;
        }
        Ok(Planned::OnDelete {
            user: user.to_owned(),
            done: Outcome::Applied,
            refused: Outcome::Deferred,
        })
    }

    /// The net writes.
    fn finish(mut self) -> Writes {
        let mut writes = Writes::default();
        let mut touched_users = std::mem::take(&mut self.touched_users);
        for user in &self.snapshot.made {
            touched_users.entry(user.as_str()).or_default();
        }
        // Written in user order, as the locks were taken.
        let mut touched_users: Vec<(&str, Marks)> = touched_users.into_iter().collect();
        touched_users.sort_unstable_by_key(|&(user, _)| user);
        writes.bookkeeping.reserve(touched_users.len());
        for (user, marks) in touched_users {
            let Some(state) = self.users.get(user) else {
                continue;
            };
            // Only what changes is written (a row made for this unit of work holds what
            // it was made with).
            let stored = self.snapshot.users.get(user);
            let unchanged = stored.is_some_and(|b| {
                (
                    b.version,
                    b.digest.as_str(),
                    b.email.as_deref(),
                    b.role_from_webhook,
                ) == (
                    state.version,
                    state.digest,
                    state.email,
                    state.role_from_webhook,
                )
            });
            if unchanged && !marks.tombstone && !marks.attempted {
                continue;
            }
            writes.bookkeeping.push(BookkeepingWrite {
                user_id: user.to_owned(),
                version: state.version,
                digest: state.digest.to_owned(),
                email: state.email.map(str::to_owned),
                role_from_webhook: state.role_from_webhook,
                tombstone: marks.tombstone,
                attempted: marks.attempted,
            });
        }
        let mut touched: Vec<&str> = self.touched_rows.iter().copied().collect();
        touched.sort_unstable();
        // A row leaving an address another written row takes moves out of the way first.
        let taken: HashSet<&str> = touched
            .iter()
            .filter_map(|id| self.rows.get(id))
            .map(|row| row.address.as_ref())
            .collect();
        let mut fulls = Vec::with_capacity(touched.len());
        for &id in &touched {
            let Some(row) = self.rows.get(id) else {
                continue;
            };
            let before = self.snapshot.rows.get(id).map(|r| held(id, r));
            let before = before.as_deref();
            if let Some(before) = before {
                let unique = self.options.addresses == Addresses::Unique;
                if unique && before != row.address && taken.contains(before) {
                    writes.vacate.push(id.to_owned());
                }
            }
            match &row.full {
                Some(_) => fulls.push(id),
                None if before != Some(row.address.as_ref()) => {
                    writes.moves.push((id.to_owned(), row.address.to_string()));
                }
                None => {}
            }
        }
        drop(taken);
        writes.rows.reserve(fulls.len());
        for id in fulls {
            let Some(row) = self.rows.get_mut(id) else {
                continue;
            };
            if let Some(mut full) = row.full.take() {
                full.address = std::mem::take(&mut row.address).into_owned();
                writes.rows.push(full);
            }
        }
        writes.deletes = self.deletes;
        writes.record = self.record;
        writes
    }
}
