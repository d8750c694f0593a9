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
use smallvec::SmallVec;

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
    let u = walk.user(user)?;
    let state = walk.state(u)?;
    if !state.deleted || state.pending != Pending::Yes {
        return Ok(None);
    }
    walk.touch_user(u).attempted = true;
    let outcome = walk.finish_delete(u)?;
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

/// A user of the walk, by its place in [`Walk::users`]: each user id is looked up once per
/// delivery, and everything after goes by index.
type UserIx = usize;

/// An address of the walk, by its place in [`Walk::addresses`] (one place per text, so two
/// rows hold the same address exactly when their indices are equal).
type AddressIx = usize;

/// A row as the walk goes.
#[derive(Debug, Clone)]
struct Row {
    address: AddressIx,
    updated_ms: i64,
    /// The fields written by the newest applied version of this plan, if any; its address
    /// is the row's, filled in by [`Walk::finish`].
    full: Option<RowWrite>,
}

/// Everything the walk knows of one user.
#[derive(Debug)]
struct User<'s> {
    id: &'s str,
    /// Its bookkeeping as the walk goes; none for a holder without any (a row the
    /// application wrote).
    state: Option<State<'s>>,
    /// Its bookkeeping as read (a row made for this unit of work: as made).
    stored: Option<&'s Bookkeeping>,
    /// Its row as the walk goes.
    row: Option<Row>,
    /// The address its row held as read (none: no row was read).
    stored_address: Option<AddressIx>,
    /// Its bookkeeping changed, and how (written by [`Walk::finish`]).
    touched: Option<Marks>,
    /// Its row's address or fields changed.
    row_touched: bool,
    /// Its row's delete is planned.
    delete_planned: bool,
}

/// Everything the walk knows of one address.
#[derive(Debug)]
struct Address<'s> {
    /// Borrowed from the snapshot or the deliveries, except the placeholders the rules make.
    text: Cow<'s, str>,
    /// Locked for this unit of work (see [`Walk::covers`]).
    locked: bool,
    /// The user whose row holds it.
    holder: Option<UserIx>,
    /// The users claiming it (each once; the order does not matter, as [`Walk::settle`]
    /// takes the newest).
    claimants: SmallVec<[UserIx; 2]>,
    /// A row written by the plan takes it (known in [`Walk::finish`] only).
    taken: bool,
}

/// The walk over one snapshot.
/// (User ids, delivery ids and addresses are borrowed from the snapshot and the deliveries,
/// which outlive it; only the placeholders the rules make are owned.)
struct Walk<'s> {
    options: SyncOptions,
    recorded: &'s HashSet<String>,
    user_ix: HashMap<&'s str, UserIx>,
    users: Vec<User<'s>>,
    address_ix: HashMap<Cow<'s, str>, AddressIx>,
    addresses: Vec<Address<'s>>,
    /// Ids delivered so far in this plan.
    seen: HashSet<&'s str>,
    deletes: Vec<String>,
    record: Vec<Record>,
}

impl<'s> Walk<'s> {
    /// The walk over `snapshot` of `deliveries` deliveries (its maps sized for them: a bulk
    /// batch's thousands would grow them several times over).
    fn new(snapshot: &'s Snapshot, options: SyncOptions, deliveries: usize) -> Self {
        let users = snapshot.users.len().max(snapshot.rows.len());
        let addresses = snapshot.addresses.len() + snapshot.rows.len() + deliveries;
        let mut walk = Walk {
            options,
            recorded: &snapshot.recorded,
            user_ix: HashMap::with_capacity(users),
            users: Vec::with_capacity(users),
            address_ix: HashMap::with_capacity(addresses),
            addresses: Vec::with_capacity(addresses),
            seen: HashSet::with_capacity(deliveries),
            deletes: Vec::new(),
            record: Vec::new(),
        };
        for address in &snapshot.addresses {
            let a = walk.address(Cow::Borrowed(address));
            walk.addresses[a].locked = true;
        }
        for (id, row) in &snapshot.rows {
            let u = walk.intern_user(id);
            let a = walk.address(held(id, row));
            walk.addresses[a].holder = Some(u);
            let user = &mut walk.users[u];
            user.row = Some(Row {
                address: a,
                updated_ms: row.updated_ms,
                full: None,
            });
            user.stored_address = Some(a);
        }
        // A row made for this unit of work is, to the rules, a user clerk-sync has applied
        // nothing for, whatever it was made with.
        for (id, stored) in &snapshot.users {
            let u = walk.intern_user(id);
            let made = snapshot.made.contains(id);
            let state = if made {
                State::new_user()
            } else {
                State::from(stored)
            };
            let user = &mut walk.users[u];
            user.state = Some(state);
            user.stored = Some(stored);
            if made {
                // Its bookkeeping is written (made) whatever the plan.
                user.touched = Some(Marks::default());
            }
            if let Some(email) = state.email {
                if let Some(&a) = walk.address_ix.get(email) {
                    if walk.addresses[a].locked {
                        walk.addresses[a].claimants.push(u);
                    }
                }
            }
        }
        walk
    }

    /// The index of user `id`, made if new.
    fn intern_user(&mut self, id: &'s str) -> UserIx {
        let next = self.users.len();
        let u = *self.user_ix.entry(id).or_insert(next);
        if u == next {
            self.users.push(User {
                id,
                state: None,
                stored: None,
                row: None,
                stored_address: None,
                touched: None,
                row_touched: false,
                delete_planned: false,
            });
        }
        u
    }

    /// The index of address `text`, made if new.
    fn address(&mut self, text: Cow<'s, str>) -> AddressIx {
        if let Some(&a) = self.address_ix.get(text.as_ref()) {
            return a;
        }
        let a = self.addresses.len();
        self.address_ix.insert(text.clone(), a);
        self.addresses.push(Address {
            text,
            locked: false,
            holder: None,
            claimants: SmallVec::new(),
            taken: false,
        });
        a
    }

    /// The user `id`, which must have bookkeeping.
    fn user(&self, id: &str) -> Result<UserIx, Incomplete> {
        self.user_ix
            .get(id)
            .copied()
            .filter(|&u| self.users[u].state.is_some())
            .ok_or_else(|| Incomplete(format!("no bookkeeping row for {id}")))
    }

    /// The bookkeeping of `u` (found by [`Self::user`]).
    fn state(&mut self, u: UserIx) -> Result<&mut State<'s>, Incomplete> {
        let user = &mut self.users[u];
        let id = user.id;
        user.state
            .as_mut()
            .ok_or_else(|| Incomplete(format!("no bookkeeping row for {id}")))
    }

    fn touch_user(&mut self, u: UserIx) -> &mut Marks {
        self.users[u].touched.get_or_insert_default()
    }

    /// The address is one the walk knows every holder and claimant of: locked, or a
    /// placeholder (`.invalid` addresses are never claims, and only their user's row can
    /// hold one).
    fn covers(&self, a: AddressIx) -> bool {
        let address = &self.addresses[a];
        address.locked || is_placeholder(&address.text)
    }

    /// **Dedup**: a delivery whose id was recorded before, or delivered earlier in this
    /// plan, is a duplicate and changes nothing; by version (users read from Clerk's API),
    /// nothing is recorded and a repeat is told by its content instead (see [`Dedup`]).
    fn deliver(&mut self, id: &'s MessageId, event: &'s Event) -> Result<Planned, Incomplete> {
        let by_id = self.options.dedup == Dedup::ById;
        if by_id && (self.recorded.contains(id.as_str()) || !self.seen.insert(id.as_str())) {
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
        let u = self.user(user)?;
        let state = self.state(u)?;
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
        let row_address = self.users[u].row.as_ref().map(|r| r.address);
        let previous = previous.map(|p| self.address(Cow::Borrowed(p)));
        let claimed = email.map(|e| self.address(Cow::Borrowed(e)));
        self.set_claim(u, previous, claimed);
        self.touch_user(u);

        let address = match (claimed, self.options.addresses) {
            (None, _) => self.address(Cow::Owned(no_email(user))),
            (Some(a), Addresses::Follow) => a,
            (Some(a), Addresses::Unique) => self.claim(u, change, a)?,
        };
        self.write_row(u, change, address, role);

        // Addresses this user let go of return to their newest remaining claimant.
        let mut released: Vec<AddressIx> = [previous, row_address]
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

    /// Moves `u`'s claim from `from` to `to` in the claimants of the addresses.
    fn set_claim(&mut self, u: UserIx, from: Option<AddressIx>, to: Option<AddressIx>) {
        if from == to {
            return;
        }
        if let Some(from) = from {
            self.addresses[from].claimants.retain(|c| *c != u);
        }
        if let Some(to) = to {
            let claimants = &mut self.addresses[to].claimants;
            if !claimants.contains(&u) {
                claimants.push(u);
            }
        }
    }

    /// Settles who gets `email` between the incoming user `u` and its current holder, if
    /// any; returns the address the incoming user's row takes.
    fn claim(
        &mut self,
        u: UserIx,
        change: &'s UserChange,
        email: AddressIx,
    ) -> Result<AddressIx, Incomplete> {
        let user = change.id.as_str();
        if !self.covers(email) {
            return Err(Incomplete(format!(
                "the claimed address of {user} is not locked"
            )));
        }
        let address = &self.addresses[email];
        let Some(h) = address.holder.filter(|h| *h != u) else {
            return Ok(email);
        };
        let holder = &self.users[h];
        let updated_ms = holder
            .row
            .as_ref()
            .map(|r| r.updated_ms)
            .ok_or_else(|| Incomplete(format!("no row for the holder {}", holder.id)))?;
        let (holder_id, state) = (holder.id, holder.state.as_ref());
        if holder_loses(
            holder_id,
            state,
            updated_ms,
            &address.text,
            user,
            change.version,
        ) {
            let placeholder = self.address(Cow::Owned(displaced(holder_id)));
            self.move_row(h, placeholder);
            Ok(email)
        } else {
            Ok(self.address(Cow::Owned(displaced(user))))
        }
    }

    /// Writes `u`'s row of the version just applied.
    fn write_row(
        &mut self,
        u: UserIx,
        change: &'s UserChange,
        address: AddressIx,
        role: Option<Role>,
    ) {
        let user = &mut self.users[u];
        let exists = user.stored_address.is_some();
        let new = user.row.is_none();
        let updated_ms = change.updated_at.timestamp_millis();
        let row = user.row.get_or_insert(Row {
            // Takes the address below.
            address,
            updated_ms,
            full: None,
        });
        let previous_role = row.full.as_ref().and_then(|full| full.role);
        // A version that leaves the role alone keeps what an earlier version of this plan
        // wrote.
        let full = RowWrite {
            id: change.id.as_str().to_owned(),
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
        user.row_touched = true;
        self.move_row(u, address);
        if new {
            // A new row holds its address from here on.
            self.addresses[address].holder = Some(u);
        }
    }

    /// Moves `u`'s row to `address`.
    fn move_row(&mut self, u: UserIx, address: AddressIx) {
        let Some(row) = self.users[u].row.as_mut() else {
            return;
        };
        let from = std::mem::replace(&mut row.address, address);
        if from == address {
            return;
        }
        let from = &mut self.addresses[from];
        if from.holder == Some(u) {
            from.holder = None;
        }
        self.addresses[address].holder = Some(u);
        self.users[u].row_touched = true;
    }

    /// **Giving an address back**: once nobody live holds `address`, its newest live
    /// claimant whose row does not hold it gets it (a tombstoned holder, kept only for the
    /// application's foreign keys, always gives it up).
    fn settle(&mut self, a: AddressIx) -> Result<(), Incomplete> {
        if self.options.addresses == Addresses::Follow {
            return Ok(());
        }
        if !self.covers(a) {
            return Err(Incomplete(format!(
                "a released address is not locked: {:?}",
                self.addresses[a].text
            )));
        }
        let address = &self.addresses[a];
        let best = address
            .claimants
            .iter()
            .filter_map(|&c| {
                let claimant = &self.users[c];
                let state = claimant.state.as_ref()?;
                let row = claimant.row.as_ref()?;
                (!state.deleted && state.version >= 0 && row.address != a).then_some((
                    state.version,
                    claimant.id,
                    c,
                ))
            })
            .max()
            .map(|(_, _, c)| c);
        let Some(best) = best else { return Ok(()) };
        if let Some(h) = address.holder {
            let holder = &self.users[h];
            let dead = holder.state.as_ref().is_some_and(|s| s.deleted);
            if !dead {
                return Ok(());
            }
            let placeholder = self.address(Cow::Owned(displaced(holder.id)));
            self.move_row(h, placeholder);
        }
        self.move_row(best, a);
        Ok(())
    }

    /// `user.deleted`: the tombstone, then the row's delete.
    fn delete(&mut self, user: &'s str) -> Result<Planned, Incomplete> {
        let u = self.user(user)?;
        let state = self.state(u)?;
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
            state.deleted = true;
            self.touch_user(u).tombstone = true;
        }
        self.finish_delete(u)
    }

    /// **Deferred deletes**: the tombstoned user's row is deleted where the application's
    /// foreign keys allow, and kept (the delete retried later) where they refuse; either
    /// way its address goes to its newest remaining claimant.
    fn finish_delete(&mut self, u: UserIx) -> Result<Planned, Incomplete> {
        self.state(u)?.pending = Pending::IfRefused;
        self.touch_user(u);
        let user = &mut self.users[u];
        let id = user.id;
        if !std::mem::replace(&mut user.delete_planned, true) {
            self.deletes.push(id.to_owned());
        }
        if let Some(address) = user.row.as_ref().map(|r| r.address) {
            self.settle(address)?;
        }
        Ok(Planned::OnDelete {
            user: id.to_owned(),
            done: Outcome::Applied,
            refused: Outcome::Deferred,
        })
    }

    /// The net writes.
    fn finish(mut self) -> Writes {
        let mut writes = Writes::default();
        for user in &self.users {
            let (Some(state), Some(marks)) = (user.state.as_ref(), user.touched) else {
                continue;
            };
            // Only what changes is written (a row made for this unit of work holds what
            // it was made with).
            let unchanged = user.stored.is_some_and(|b| {
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
                user_id: user.id.to_owned(),
                version: state.version,
                digest: state.digest.to_owned(),
                email: state.email.map(str::to_owned),
                role_from_webhook: state.role_from_webhook,
                tombstone: marks.tombstone,
                attempted: marks.attempted,
            });
        }
        // Written in user order, as the locks were taken.
        writes
            .bookkeeping
            .sort_unstable_by(|a, b| a.user_id.cmp(&b.user_id));
        let mut touched: Vec<(&str, UserIx)> = (self.users.iter().enumerate())
            .filter(|(_, user)| user.row_touched)
            .map(|(u, user)| (user.id, u))
            .collect();
        touched.sort_unstable();
        // A row leaving an address another written row takes moves out of the way first.
        for &(_, u) in &touched {
            if let Some(row) = &self.users[u].row {
                self.addresses[row.address].taken = true;
            }
        }
        let unique = self.options.addresses == Addresses::Unique;
        writes.rows.reserve(touched.len());
        for (_, u) in touched {
            let user = &mut self.users[u];
            let Some(row) = user.row.as_mut() else {
                continue;
            };
            let address = &self.addresses[row.address].text;
            let before = user.stored_address;
            if let Some(before) = before {
                if unique && before != row.address && self.addresses[before].taken {
                    writes.vacate.push(user.id.to_owned());
                }
            }
            match row.full.take() {
                Some(mut full) => {
                    full.address = address.clone().into_owned();
                    writes.rows.push(full);
                }
                None if before != Some(row.address) => {
                    writes.moves.push((user.id.to_owned(), address.to_string()));
                }
                None => {}
            }
        }
        writes.deletes = self.deletes;
        writes.record = self.record;
        writes
    }
}
