//! Many deliveries in one transaction, decided together where that is provably the same as
//! deciding them one by one.
//!
//! A batch (bulk replay, backfill) is applied in ONE transaction. After the backend has
//! taken the same locks a single delivery takes (each user's bookkeeping row, then every
//! address involved, in one global order) and read a [`Snapshot`], [`plan`] walks the
//! batch in order exactly as the single-delivery path would, keeping each user's running
//! version instead of reading it back. Users whose deliveries touch nobody else's
//! address are decided here and written with a few set-wide statements; everything else
//! (deletes, address hand-overs, the skip-without-email option) is left to the
//! single-delivery path, in batch order, inside the same transaction.
//!
//! A user is decided here only when, in batch order, every delivery for it is an upsert,
//! the user has no tombstone, every version that would be applied claims the same
//! address, and that address is nobody else's: no other row holds it, no other user
//! claims it, in the table or anywhere in the batch, and the user's own row and claim are
//! already on it (or absent). Then the outcome of each delivery is that of the
//! one-by-one path, and the final row is the newest applied version's, with the role rule
//! seen through every applied version in order.

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use crate::domain::{Event, MessageId, Role, UserChange};
use crate::sync::{Dedup, Outcome, SyncOptions};

/// What the database holds for one user when the batch starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The newest applied version (-1 when none).
    pub version: i64,
    /// Its digest.
    pub digest: String,
    /// The address that version claims.
    pub email: Option<String>,
    /// Tombstoned.
    pub deleted: bool,
    /// The row's role was last set by `public_metadata.role`.
    pub role_from_webhook: bool,
}

impl Stored {
    /// A user clerk-sync has applied nothing for: the placeholder a single delivery makes.
    pub fn new_user() -> Self {
        Stored {
            version: -1,
            digest: String::new(),
            email: None,
            deleted: false,
            role_from_webhook: false,
        }
    }
}

/// What the database holds, read under the batch's locks.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// `svix-id`s of the batch already recorded.
    pub recorded: HashSet<String>,
    /// Bookkeeping rows of the batch's users.
    pub users: HashMap<String, Stored>,
    /// The address each of the batch's users' rows holds (users with a row only).
    pub rows: HashMap<String, String>,
    /// For each address of [`addresses`]: the rows holding it.
    pub holders: HashMap<String, Vec<String>>,
    /// For each address of [`addresses`]: the users whose newest version claims it.
    pub claimants: HashMap<String, Vec<String>>,
}

impl Snapshot {
    /// Notes that the row of `holder` holds `address`.
    pub fn add_holder(&mut self, address: String, holder: String) {
        self.holders.entry(address).or_default().push(holder);
    }

    /// Notes that the newest version of `claimant` claims `address`.
    pub fn add_claimant(&mut self, address: String, claimant: String) {
        self.claimants.entry(address).or_default().push(claimant);
    }
}

/// What [`Snapshot`] needs read.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Lookups {
    /// The batch's users, sorted (the order their locks are taken in).
    pub users: Vec<String>,
    /// The batch's `svix-id`s.
    pub ids: Vec<String>,
}

/// A bookkeeping row to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bookkeeping {
    /// The user.
    pub user_id: String,
    /// The newest applied version.
    pub version: i64,
    /// Its digest.
    pub digest: String,
    /// The address it claims.
    pub email: Option<String>,
    /// Whether it named a role.
    pub role_from_webhook: bool,
}

/// An application row to insert or update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row<'a> {
    /// The newest applied version.
    pub change: &'a UserChange,
    /// The address the row holds.
    pub address: String,
    /// The role to write; none leaves an existing row's role alone (a new row gets USER).
    pub role: Option<Role>,
}

/// What to write for a batch.
#[derive(Debug, Default)]
pub struct Plan<'a> {
    /// The outcome of each delivery; none for those left to the one-by-one path.
    pub outcomes: Vec<Option<Outcome>>,
    /// Deliveries decided here and new: recorded with their outcome.
    pub record: Vec<usize>,
    /// Bookkeeping rows to update (each user's row exists: the backend made it).
    pub bookkeeping: Vec<Bookkeeping>,
    /// Application rows to upsert.
    pub rows: Vec<Row<'a>>,
    /// Deliveries left to the one-by-one path, in batch order.
    pub one_by_one: Vec<usize>,
}

/// The address an upsert writes: the claimed one, or the user's no-email placeholder.
fn address_of(change: &UserChange) -> String {
    match &change.email {
        Some(email) => email.as_str().to_owned(),
        None => format!("{}@no-email.invalid", change.id.as_str()),
    }
}

fn change_of(event: &Event) -> Option<&UserChange> {
    match event {
        Event::Upsert { change, .. } => Some(change),
        _ => None,
    }
}

/// The users, ids and addresses to read before planning.
pub fn lookups(batch: &[(MessageId, Event)]) -> Lookups {
    let mut users: Vec<String> = batch
        .iter()
        .filter_map(|(_, e)| e.user_id().map(|u| u.as_str().to_owned()))
        .collect();
    users.sort_unstable();
    users.dedup();
    Lookups {
        users,
        ids: batch.iter().map(|(id, _)| id.as_str().to_owned()).collect(),
    }
}

/// Every address the batch touches, sorted: what its users claim and hold now, and what
/// its upserts would write. The backend locks them (after the users' rows, in this order)
/// and reads their holders and claimants into the [`Snapshot`].
pub fn addresses(batch: &[(MessageId, Event)], snapshot: &Snapshot) -> Vec<String> {
    let mut all: Vec<String> = batch
        .iter()
        .filter_map(|(_, e)| change_of(e).map(address_of))
        .chain(snapshot.users.values().filter_map(|s| s.email.clone()))
        .chain(snapshot.rows.values().cloned())
        .collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// Decides what it can of `batch`; see the module documentation.
pub fn plan<'a>(
    batch: &'a [(MessageId, Event)],
    snapshot: &Snapshot,
    options: SyncOptions,
) -> Plan<'a> {
    let mut plan = Plan {
        outcomes: vec![None; batch.len()],
        ..Plan::default()
    };
    // Dedup first, in batch order: a repeat of an id earlier in the batch is a duplicate
    // whichever path records the first.
    // (By version, repeats are told in each user's walk below instead.)
    let by_id = options.dedup == Dedup::ById;
    let mut first_seen = HashSet::new();
    let mut by_user: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut user_order: Vec<&str> = Vec::new();
    // Who claims each address anywhere in the batch.
    let mut batch_claims: HashMap<&str, HashSet<&str>> = HashMap::new();
    for (i, (id, event)) in batch.iter().enumerate() {
        if by_id && (snapshot.recorded.contains(id.as_str()) || !first_seen.insert(id.as_str())) {
            plan.outcomes[i] = Some(Outcome::Duplicate);
            continue;
        }
        let Some(user) = event.user_id() else {
            plan.outcomes[i] = Some(Outcome::Ignored);
            if by_id {
                plan.record.push(i);
            }
            continue;
        };
        if let Some(email) = change_of(event).and_then(|c| c.email.as_ref()) {
            batch_claims
                .entry(email.as_str())
                .or_default()
                .insert(user.as_str());
        }
        by_user
            .entry(user.as_str())
            .or_insert_with(|| {
                user_order.push(user.as_str());
                Vec::new()
            })
            .push(i);
    }

    for user in user_order {
        let indices = &by_user[user];
        match decide_user(batch, snapshot, options, user, indices, &batch_claims) {
            Some(decided) => {
                for (i, outcome) in decided.outcomes {
                    plan.outcomes[i] = Some(outcome);
                    if by_id {
                        plan.record.push(i);
                    }
                }
                if let Some((bookkeeping, row)) = decided.write {
                    plan.bookkeeping.push(bookkeeping);
                    plan.rows.push(row);
                }
            }
            None => plan.one_by_one.extend_from_slice(indices),
        }
    }
    plan.record.sort_unstable();
    plan.one_by_one.sort_unstable();
    tracing::debug!(
        deliveries = batch.len(),
        one_by_one = plan.one_by_one.len(),
        "batch planned"
    );
    plan
}

struct Decided<'a> {
    outcomes: Vec<(usize, Outcome)>,
    write: Option<(Bookkeeping, Row<'a>)>,
}

/// One user's deliveries, or none when they need the one-by-one path.
fn decide_user<'a>(
    batch: &'a [(MessageId, Event)],
    snapshot: &Snapshot,
    options: SyncOptions,
    user: &str,
    indices: &[usize],
    batch_claims: &HashMap<&str, HashSet<&str>>,
) -> Option<Decided<'a>> {
    let changes: Vec<(usize, &UserChange)> = indices
        .iter()
        .map(|&i| change_of(&batch[i].1).map(|c| (i, c)))
        .collect::<Option<_>>()?;
    if options.skip_users_without_email && changes.iter().any(|(_, c)| c.email.is_none()) {
        return None;
    }
    let stored = snapshot.users.get(user);
    if stored.is_some_and(|s| s.deleted) {
        return Some(Decided {
            outcomes: indices.iter().map(|&i| (i, Outcome::Stale)).collect(),
            write: None,
        });
    }
    // The one-by-one walk: each version against the newest applied before it.
    let mut newest: (i64, &str) = stored.map_or((-1, ""), |s| (s.version, s.digest.as_str()));
    let mut role_from_webhook = stored.is_some_and(|s| s.role_from_webhook);
    let mut role = None;
    let mut winner: Option<&UserChange> = None;
    // Every address the user's row passes through, one by one.
    let mut touched: Vec<String> = Vec::new();
    let mut outcomes = Vec::with_capacity(indices.len());
    for &(i, change) in &changes {
        let version = (change.version, change.digest.as_str());
        if version <= newest {
            let repeat = options.dedup == Dedup::ByVersion && version == newest;
            outcomes.push((
                i,
                if repeat {
                    Outcome::Duplicate
                } else {
                    Outcome::Stale
                },
            ));
            continue;
        }
        newest = (change.version, change.digest.as_str());
        // What this version writes; a version that leaves the role alone keeps what an
        // earlier version of the batch wrote.
        role = match change.role {
            Some(named) => Some(named),
            None if role_from_webhook => Some(Role::User),
            None => role,
        };
        role_from_webhook = change.role.is_some();
        winner = Some(change);
        touched.push(address_of(change));
        outcomes.push((i, Outcome::Applied));
    }
    let Some(winner) = winner else {
        return Some(Decided {
            outcomes,
            write: None,
        });
    };

    // Each address the row takes, and each it leaves, must be nobody else's: then taking
    // one displaces nobody, and leaving one hands it to nobody.
    touched.extend(stored.and_then(|s| s.email.clone()));
    touched.extend(snapshot.rows.get(user).cloned());
    let only_user = |users: Option<&Vec<String>>| users.is_none_or(|u| u.iter().all(|u| u == user));
    let nobody_else = touched.iter().all(|address| {
        only_user(snapshot.holders.get(address))
            && only_user(snapshot.claimants.get(address))
            && batch_claims
                .get(address.as_str())
                .is_none_or(|users| users.iter().all(|u| *u == user))
    });
    if !nobody_else {
        return None;
    }
    let address = address_of(winner);
    let claim = winner.email.as_ref().map(|e| e.as_str());
    Some(Decided {
        outcomes,
        write: Some((
            Bookkeeping {
                user_id: user.to_owned(),
                version: winner.version,
                digest: winner.digest.clone(),
                email: claim.map(str::to_owned),
                role_from_webhook,
            },
            Row {
                change: winner,
                address,
                role,
            },
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upsert(
        id: &str,
        user: &str,
        version: i64,
        email: Option<&str>,
        role: Option<&str>,
    ) -> (MessageId, Event) {
        let emails = match email {
            Some(e) => format!(r#"[{{"id":"idn_1","email_address":"{e}"}}]"#),
            None => "[]".into(),
        };
        let metadata = role.map_or("{}".to_owned(), |r| format!(r#"{{"role":"{r}"}}"#));
        let body = format!(
            r#"{{"type":"user.updated","data":{{"id":"{user}","created_at":1,"updated_at":{version},
                "first_name":"A","last_name":null,"primary_email_address_id":"idn_1",
                "email_addresses":{emails},"public_metadata":{metadata}}}}}"#
        );
        let event = Event::parse(body.as_bytes()).expect("valid event");
        (MessageId::parse(id).expect("valid id"), event)
    }

    fn delete(id: &str, user: &str) -> (MessageId, Event) {
        let body = format!(r#"{{"type":"user.deleted","data":{{"id":"{user}","deleted":true}}}}"#);
        (
            MessageId::parse(id).expect("valid id"),
            Event::parse(body.as_bytes()).expect("valid"),
        )
    }

    fn stored(version: i64, email: Option<&str>) -> Stored {
        Stored {
            version,
            digest: String::new(),
            email: email.map(str::to_owned),
            deleted: false,
            role_from_webhook: false,
        }
    }

    #[test]
    fn versions_of_one_user_are_walked_in_batch_order() {
        let batch = vec![
            upsert("m1", "user_a", 20, Some("a@x.io"), None),
            upsert("m2", "user_a", 10, Some("a@x.io"), None),
            upsert("m3", "user_a", 30, Some("a@x.io"), None),
            upsert("m3", "user_a", 30, Some("a@x.io"), None),
        ];
        let plan = plan(&batch, &Snapshot::default(), SyncOptions::default());
        assert_eq!(
            plan.outcomes,
            vec![
                Some(Outcome::Applied),
                Some(Outcome::Stale),
                Some(Outcome::Applied),
                Some(Outcome::Duplicate)
            ]
        );
        assert_eq!(plan.record, vec![0, 1, 2]);
        assert_eq!(plan.bookkeeping[0].version, 30);
        assert_eq!(plan.rows[0].address, "a@x.io");
        assert!(plan.one_by_one.is_empty());
    }

    #[test]
    fn by_version_the_applied_version_is_the_duplicate_and_nothing_is_recorded() {
        let same = upsert("m1", "user_a", 20, Some("a@x.io"), None);
        let digest = match &same.1 {
            Event::Upsert { change, .. } => change.digest.clone(),
            _ => unreachable!("an upsert"),
        };
        let batch = vec![
            same,
            upsert("m2", "user_b", 10, Some("b@x.io"), None),
            upsert("m3", "user_c", 31, Some("c@x.io"), None),
            upsert("m3", "user_c", 31, Some("c@x.io"), None),
        ];
        let mut snapshot = Snapshot::default();
        snapshot.users.insert(
            "user_a".into(),
            Stored {
                digest,
                ..stored(20, Some("a@x.io"))
            },
        );
        snapshot
            .users
            .insert("user_b".into(), stored(20, Some("b@x.io")));
        // A recorded id means nothing by version.
        snapshot.recorded.insert("m3".into());
        let options = SyncOptions {
            dedup: Dedup::ByVersion,
            ..SyncOptions::default()
        };
        let plan = plan(&batch, &snapshot, options);
        assert_eq!(
            plan.outcomes,
            vec![
                Some(Outcome::Duplicate),
                Some(Outcome::Stale),
                Some(Outcome::Applied),
                Some(Outcome::Duplicate)
            ]
        );
        assert!(plan.record.is_empty());
        assert_eq!(plan.bookkeeping.len(), 1);
        assert_eq!(plan.bookkeeping[0].user_id, "user_c");
    }

    #[test]
    fn recorded_ids_are_duplicates_and_older_versions_stale() {
        let batch = vec![
            upsert("m1", "user_a", 20, Some("a@x.io"), None),
            upsert("m2", "user_a", 5, Some("a@x.io"), None),
        ];
        let mut snapshot = Snapshot::default();
        snapshot.recorded.insert("m1".into());
        snapshot
            .users
            .insert("user_a".into(), stored(10, Some("a@x.io")));
        snapshot.rows.insert("user_a".into(), "a@x.io".into());
        let plan = plan(&batch, &snapshot, SyncOptions::default());
        assert_eq!(
            plan.outcomes,
            vec![Some(Outcome::Duplicate), Some(Outcome::Stale)]
        );
        assert!(plan.rows.is_empty());
    }

    #[test]
    fn contested_addresses_deletes_and_moves_go_one_by_one() {
        let batch = vec![
            upsert("m1", "user_a", 20, Some("shared@x.io"), None),
            upsert("m2", "user_b", 20, Some("shared@x.io"), None),
            delete("m3", "user_c"),
            upsert("m4", "user_d", 20, Some("new@x.io"), None),
            upsert("m5", "user_e", 20, Some("held@x.io"), None),
            upsert("m6", "user_f", 20, Some("f@x.io"), None),
        ];
        let mut snapshot = Snapshot::default();
        snapshot
            .users
            .insert("user_d".into(), stored(10, Some("old@x.io")));
        snapshot
            .claimants
            .insert("old@x.io".into(), vec!["user_d".into(), "user_y".into()]);
        snapshot
            .holders
            .insert("held@x.io".into(), vec!["user_z".into()]);
        let plan = plan(&batch, &snapshot, SyncOptions::default());
        assert_eq!(plan.one_by_one, vec![0, 1, 2, 3, 4]);
        assert_eq!(plan.record, vec![5]);
    }

    #[test]
    fn moves_between_addresses_nobody_else_has_are_decided_together() {
        let batch = vec![
            upsert("m1", "user_a", 10, Some("one@x.io"), None),
            upsert("m2", "user_a", 20, Some("two@x.io"), None),
        ];
        let mut snapshot = Snapshot::default();
        snapshot
            .users
            .insert("user_a".into(), stored(5, Some("zero@x.io")));
        snapshot.rows.insert("user_a".into(), "zero@x.io".into());
        let plan = plan(&batch, &snapshot, SyncOptions::default());
        assert!(plan.one_by_one.is_empty());
        assert_eq!(plan.rows[0].address, "two@x.io");
        assert_eq!(plan.bookkeeping[0].email.as_deref(), Some("two@x.io"));

        // The address left behind has another claimant: it must be handed over, one by one.
        snapshot
            .claimants
            .insert("zero@x.io".into(), vec!["user_b".into()]);
        let plan = super::plan(&batch, &snapshot, SyncOptions::default());
        assert_eq!(plan.one_by_one, vec![0, 1]);
    }

    #[test]
    fn an_in_between_claim_on_a_held_address_goes_one_by_one() {
        let batch = vec![
            upsert("m1", "user_a", 10, Some("held@x.io"), None),
            upsert("m2", "user_a", 20, Some("two@x.io"), None),
        ];
        let mut snapshot = Snapshot::default();
        snapshot
            .holders
            .insert("held@x.io".into(), vec!["user_z".into()]);
        let plan = plan(&batch, &snapshot, SyncOptions::default());
        assert_eq!(plan.one_by_one, vec![0, 1]);
    }

    #[test]
    fn the_role_rule_is_seen_through_every_applied_version() {
        let batch = vec![
            upsert("m1", "user_a", 10, Some("a@x.io"), Some("admin")),
            upsert("m2", "user_a", 20, Some("a@x.io"), None),
            upsert("m3", "user_b", 20, Some("b@x.io"), None),
        ];
        let plan = plan(&batch, &Snapshot::default(), SyncOptions::default());
        // user_a: ADMIN from a webhook, then a version naming no role: back to USER.
        assert_eq!(plan.rows[0].role, Some(Role::User));
        assert!(!plan.bookkeeping[0].role_from_webhook);
        // user_b: no role named, none set by a webhook: the application's role stays.
        assert_eq!(plan.rows[1].role, None);
    }

    #[test]
    fn a_role_reset_earlier_in_the_batch_is_kept_by_a_later_version_naming_none() {
        // ADMIN set by a webhook before the batch; one by one, the first version resets
        // the row to USER and the second leaves it alone: USER, not the stored ADMIN.
        let mut snapshot = Snapshot::default();
        snapshot.users.insert(
            "user_a".into(),
            Stored {
                role_from_webhook: true,
                ..stored(1, Some("a@x.io"))
            },
        );
        let batch = vec![
            upsert("m1", "user_a", 4, Some("a@x.io"), None),
            upsert("m2", "user_a", 5, Some("a@x.io"), None),
        ];
        let plan = plan(&batch, &snapshot, SyncOptions::default());
        assert_eq!(plan.rows[0].role, Some(Role::User));
        assert!(!plan.bookkeeping[0].role_from_webhook);
    }

    #[test]
    fn tombstoned_users_are_stale_and_skipped_users_go_one_by_one() {
        let batch = vec![
            upsert("m1", "user_a", 10, Some("a@x.io"), None),
            upsert("m2", "user_b", 10, None, None),
        ];
        let mut snapshot = Snapshot::default();
        snapshot.users.insert(
            "user_a".into(),
            Stored {
                deleted: true,
                ..stored(5, Some("a@x.io"))
            },
        );
        let options = SyncOptions {
            skip_users_without_email: true,
            ..SyncOptions::default()
        };
        let plan = plan(&batch, &snapshot, options);
        assert_eq!(plan.outcomes[0], Some(Outcome::Stale));
        assert_eq!(plan.one_by_one, vec![1]);
    }
}
