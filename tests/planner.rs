//! The planner alone, without a database: one table test per rule of "what one delivery
//! does", asserting the outcomes and the exact writes; then a property test of the planner
//! against an independent model of those rules (a naive in-memory database applying one
//! delivery at a time), written from DESIGN.md rather than from `src/sync/plan.rs`.
//!
//! Where DESIGN.md leaves a choice open, the model takes the one the rule-book in
//! `src/sync/mod.rs` documents: equal versions of one user are ordered by digest (greater
//! wins); equal versions of two users claiming one address by user id (greater wins); an
//! application row's age is its `updatedAt` to the second; a version that is not newer is
//! `stale` before a missing email makes it `ignored`.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use clerk_sync::db::port::{
    AppRow, Bookkeeping, BookkeepingWrite, Deleted, Record, Request, RowWrite, Snapshot, Writes,
};
use clerk_sync::domain::{Event, MessageId, Role, UserChange};
use clerk_sync::sync::plan::{plan, plan_retry, request, retry_request, Plan, Planned};
use clerk_sync::sync::{Addresses, Dedup, Outcome, SyncOptions};
use proptest::prelude::*;
use serde_json::json;

// ---------------------------------------------------------------------------------------
// Building deliveries and snapshots
// ---------------------------------------------------------------------------------------

/// One version of a Clerk user, as a `user.created`/`user.updated` body carries it.
#[derive(Clone, Debug)]
struct Version {
    kind: &'static str,
    user: String,
    at: i64,
    created: i64,
    name: Option<String>,
    email: Option<String>,
    role: Option<&'static str>,
}

impl Version {
    fn of(user: &str, at: i64) -> Self {
        Version {
            kind: "user.updated",
            user: user.to_owned(),
            at,
            created: 0,
            name: Some("Ada".to_owned()),
            email: None,
            role: None,
        }
    }

    fn email(mut self, email: &str) -> Self {
        self.email = Some(email.to_owned());
        self
    }

    fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    fn role(mut self, role: &'static str) -> Self {
        self.role = Some(role);
        self
    }

    fn body(&self) -> Vec<u8> {
        let addresses = match &self.email {
            Some(e) => vec![json!({"id": "idn_primary", "email_address": e})],
            None => Vec::new(),
        };
        let metadata = match self.role {
            Some(role) => json!({ "role": role }),
            None => json!({}),
        };
        json!({
            "object": "event",
            "type": self.kind,
            "timestamp": 1_716_883_200,
            "data": {
                "object": "user",
                "id": self.user,
                "created_at": self.created,
                "updated_at": self.at,
                "first_name": self.name,
                "last_name": null,
                "username": null,
                "primary_email_address_id": self.email.as_ref().map(|_| "idn_primary"),
                "email_addresses": addresses,
                "public_metadata": metadata,
            }
        })
        .to_string()
        .into_bytes()
    }

    fn event(&self) -> Event {
        Event::parse(&self.body()).expect("a valid user event")
    }

    fn change(&self) -> UserChange {
        match self.event() {
            Event::Upsert { change, .. } => change,
            other => panic!("not an upsert: {other:?}"),
        }
    }

    fn digest(&self) -> String {
        self.change().digest
    }

    /// The bookkeeping of this version once applied.
    fn applied(&self) -> Bookkeeping {
        Bookkeeping {
            version: self.at,
            digest: self.digest(),
            email: self.email.clone(),
            deleted: false,
            delete_pending: false,
            role_from_webhook: self.role.is_some(),
        }
    }

    /// The bookkeeping written when this version applies.
    fn bookkeeping_write(&self) -> BookkeepingWrite {
        BookkeepingWrite {
            user_id: self.user.clone(),
            version: self.at,
            digest: self.digest(),
            email: self.email.clone(),
            role_from_webhook: self.role.is_some(),
            tombstone: false,
            attempted: false,
        }
    }

    /// The row written when this version applies; `exists` when it did before the lock.
    fn row_write(&self, address: &str, role: Option<Role>, exists: bool) -> RowWrite {
        RowWrite {
            id: self.user.clone(),
            name: self.name.clone(),
            address: address.to_owned(),
            role,
            exists,
            created_at: at_ms(self.created),
            updated_at: at_ms(self.at),
            digest: self.digest(),
        }
    }

    /// The row inserted when this version applies to a user without one.
    fn row_insert(&self, address: &str, role: Option<Role>) -> RowWrite {
        // A new row always has a role: the one named, else USER.
        self.row_write(address, role.or(Some(Role::User)), false)
    }

    /// The row updated when this version applies to a user with one.
    fn row_update(&self, address: &str, role: Option<Role>) -> RowWrite {
        self.row_write(address, role, true)
    }
}

fn at_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).expect("a time in range")
}

fn deletion(user: &str) -> Event {
    let body = json!({
        "object": "event",
        "type": "user.deleted",
        "data": {"object": "user", "id": user, "deleted": true}
    });
    Event::parse(body.to_string().as_bytes()).expect("a valid user.deleted")
}

fn unhandled() -> Event {
    let body = json!({"object": "event", "type": "session.created", "data": {"id": "sess_1"}});
    Event::parse(body.to_string().as_bytes()).expect("a valid event")
}

fn msg(id: &str) -> MessageId {
    MessageId::parse(id).expect("a valid svix-id")
}

fn record(id: &str, event: &Event, outcome: Outcome, if_refused: Option<Outcome>) -> Record {
    Record {
        svix_id: id.to_owned(),
        event_type: event.event_type().to_owned(),
        user_id: event.user_id().map(|u| u.as_str().to_owned()),
        outcome,
        if_refused,
    }
}

fn displaced(user: &str) -> String {
    format!("{user}@displaced.invalid")
}

fn no_email(user: &str) -> String {
    format!("{user}@no-email.invalid")
}

fn moving(user: &str) -> String {
    format!("{user}@moving.invalid")
}

/// A snapshot as a backend reads it, built by hand.
#[derive(Default)]
struct Snap(Snapshot);

impl Snap {
    fn locked(mut self, addresses: &[&str]) -> Self {
        self.0
            .addresses
            .extend(addresses.iter().map(|a| (*a).to_owned()));
        self
    }

    fn user(mut self, user: &str, bookkeeping: Bookkeeping) -> Self {
        self.0.users.insert(user.to_owned(), bookkeeping);
        self
    }

    fn row(mut self, user: &str, address: &str, updated_ms: i64) -> Self {
        self.0.rows.insert(
            user.to_owned(),
            AppRow {
                address: Some(address.to_owned()),
                updated_ms,
            },
        );
        self
    }

    /// A user whose bookkeeping row the lock made now, with `initial`.
    fn made(mut self, user: &str, initial: Bookkeeping) -> Self {
        self.0.users.insert(user.to_owned(), initial);
        self.0.made.insert(user.to_owned());
        self
    }

    fn recorded(mut self, id: &str) -> Self {
        self.0.recorded.insert(id.to_owned());
        self
    }
}

fn new_user() -> Bookkeeping {
    Bookkeeping::new_user()
}

fn tombstoned(mut bookkeeping: Bookkeeping, pending: bool) -> Bookkeeping {
    bookkeeping.deleted = true;
    bookkeeping.delete_pending = pending;
    bookkeeping
}

fn plan_of(batch: &[(MessageId, Event)], snap: Snap, options: SyncOptions) -> Plan {
    plan(batch, &snap.0, options).expect("a complete snapshot")
}

fn known(outcomes: &[Outcome]) -> Vec<Planned> {
    outcomes.iter().map(|o| Planned::Known(*o)).collect()
}

fn none_deleted() -> Deleted {
    Deleted::default()
}

fn deleted_users(users: &[&str]) -> Deleted {
    Deleted(users.iter().map(|u| (*u).to_owned()).collect())
}

const ADA: &str = "ada@example.com";
const BOB: &str = "bob@example.com";

// ---------------------------------------------------------------------------------------
// One table test per rule
// ---------------------------------------------------------------------------------------

#[test]
fn an_older_holder_gives_its_address_to_a_newer_claimant() {
    let held = Version::of("user_old", 1_000).email(ADA);
    let claim = Version::of("user_new", 2_000).email(ADA);
    let batch = [(msg("msg_1"), claim.event())];
    let snap = Snap::default()
        .locked(&[ADA])
        .user("user_new", new_user())
        .user("user_old", held.applied())
        .row("user_old", ADA, 1_000);

    let plan = plan_of(&batch, snap, SyncOptions::default());

    assert_eq!(plan.outcomes, known(&[Outcome::Applied]));
    assert_eq!(
        plan.writes,
        Writes {
            bookkeeping: vec![claim.bookkeeping_write()],
            vacate: vec!["user_old".into()],
            rows: vec![claim.row_insert(ADA, None)],
            moves: vec![("user_old".into(), displaced("user_old"))],
            deletes: vec![],
            record: vec![record("msg_1", &batch[0].1, Outcome::Applied, None)],
            mapped: None,
        }
    );
}

#[test]
fn a_non_unique_address_just_follows_its_user() {
    // Two users of one address, on a table whose address column is not unique: nobody is
    // displaced, nothing is locked for the address, and a user leaving it gives nothing back.
    let other = Version::of("user_old", 1_000).email(ADA);
    let same = Version::of("user_new", 2_000).email(ADA);
    let moved = Version::of("user_new", 3_000).email(BOB);
    let batch = [(msg("msg_1"), same.event()), (msg("msg_2"), moved.event())];
    let options = SyncOptions {
        addresses: Addresses::Follow,
        ..SyncOptions::default()
    };
    let snap = Snap::default()
        .user("user_new", new_user())
        .user("user_old", other.applied())
        .row("user_old", ADA, 1_000);

    let plan = plan_of(&batch, snap, options);

    assert!(request(&batch, options).claims.is_empty());
    assert_eq!(plan.outcomes, known(&[Outcome::Applied, Outcome::Applied]));
    assert_eq!(plan.writes.rows, vec![moved.row_insert(BOB, None)]);
    assert!(plan.writes.vacate.is_empty() && plan.writes.moves.is_empty());
    assert_eq!(plan.writes.bookkeeping, vec![moved.bookkeeping_write()]);
}

#[test]
fn a_newer_holder_keeps_its_address_and_the_claimant_is_displaced() {
    let held = Version::of("user_new", 3_000).email(ADA);
    let claim = Version::of("user_old", 2_000).email(ADA);
    let batch = [(msg("msg_1"), claim.event())];
    let snap = Snap::default()
        .locked(&[ADA])
        .user("user_old", new_user())
        .user("user_new", held.applied())
        .row("user_new", ADA, 3_000);

    let plan = plan_of(&batch, snap, SyncOptions::default());

    assert_eq!(plan.outcomes, known(&[Outcome::Applied]));
    assert_eq!(
        plan.writes,
        Writes {
            // The claim is kept: the address comes back once the holder lets go of it.
            bookkeeping: vec![claim.bookkeeping_write()],
            rows: vec![claim.row_insert(&displaced("user_old"), None)],
            record: vec![record("msg_1", &batch[0].1, Outcome::Applied, None)],
            ..Writes::default()
        }
    );
}

#[test]
fn equal_versions_of_two_claimants_are_settled_by_user_id() {
    let held = Version::of("user_a", 2_000).email(ADA);
    let claim = Version::of("user_b", 2_000).email(ADA);
    let batch = [(msg("msg_1"), claim.event())];
    let snap = Snap::default()
        .locked(&[ADA])
        .user("user_b", new_user())
        .user("user_a", held.applied())
        .row("user_a", ADA, 2_000);

    let plan = plan_of(&batch, snap, SyncOptions::default());

    assert_eq!(
        plan.writes.moves,
        vec![("user_a".into(), displaced("user_a"))]
    );
    assert_eq!(plan.writes.rows, vec![claim.row_insert(ADA, None)]);
}

#[test]
fn a_user_without_email_gets_the_no_email_placeholder() {
    let v = Version::of("user_x", 1_000);
    let batch = [(msg("msg_1"), v.event())];
    let snap = Snap::default().user("user_x", new_user());

    let plan = plan_of(&batch, snap, SyncOptions::default());

    assert_eq!(plan.outcomes, known(&[Outcome::Applied]));
    assert_eq!(
        plan.writes,
        Writes {
            bookkeeping: vec![v.bookkeeping_write()],
            rows: vec![v.row_insert(&no_email("user_x"), None)],
            record: vec![record("msg_1", &batch[0].1, Outcome::Applied, None)],
            ..Writes::default()
        }
    );
}

#[test]
fn users_without_email_are_ignored_when_configured() {
    let v = Version::of("user_x", 1_000);
    let batch = [(msg("msg_1"), v.event())];
    let snap = Snap::default().user("user_x", new_user());
    let options = SyncOptions {
        skip_users_without_email: true,
        ..SyncOptions::default()
    };

    let plan = plan_of(&batch, snap, options);

    assert_eq!(plan.outcomes, known(&[Outcome::Ignored]));
    assert_eq!(
        plan.writes,
        Writes {
            record: vec![record("msg_1", &batch[0].1, Outcome::Ignored, None)],
            ..Writes::default()
        }
    );
}

#[test]
fn an_unhandled_event_type_is_ignored_and_recorded() {
    let batch = [(msg("msg_1"), unhandled())];

    let plan = plan_of(&batch, Snap::default(), SyncOptions::default());

    assert_eq!(plan.outcomes, known(&[Outcome::Ignored]));
    assert_eq!(
        plan.writes,
        Writes {
            record: vec![Record {
                svix_id: "msg_1".into(),
                event_type: "session.created".into(),
                user_id: None,
                outcome: Outcome::Ignored,
                if_refused: None,
            }],
            ..Writes::default()
        }
    );
}

#[test]
fn a_repeated_svix_id_is_a_duplicate_and_writes_nothing() {
    let v = Version::of("user_x", 1_000).email(ADA);
    let batch = [(msg("msg_1"), v.event())];
    let snap = Snap::default()
        .locked(&[ADA])
        .user("user_x", new_user())
        .recorded("msg_1");

    let plan = plan_of(&batch, snap, SyncOptions::default());

    assert_eq!(plan.outcomes, known(&[Outcome::Duplicate]));
    assert!(plan.writes.is_empty(), "{:?}", plan.writes);
}

#[test]
fn a_repeat_within_one_batch_is_a_duplicate() {
    let v = Version::of("user_x", 1_000).email(ADA);
    let batch = [(msg("msg_1"), v.event()), (msg("msg_1"), v.event())];
    let snap = Snap::default().locked(&[ADA]).user("user_x", new_user());

    let plan = plan_of(&batch, snap, SyncOptions::default());

    assert_eq!(
        plan.outcomes,
        known(&[Outcome::Applied, Outcome::Duplicate])
    );
    assert_eq!(
        plan.writes,
        Writes {
            bookkeeping: vec![v.bookkeeping_write()],
            rows: vec![v.row_insert(ADA, None)],
            record: vec![record("msg_1", &batch[0].1, Outcome::Applied, None)],
            ..Writes::default()
        }
    );
}

#[test]
fn an_older_version_is_stale() {
    let applied = Version::of("user_x", 2_000).email(ADA);
    let late = Version::of("user_x", 1_000).email(ADA).name("Old");
    let batch = [(msg("msg_late"), late.event())];
    let snap = Snap::default()
        .locked(&[ADA])
        .user("user_x", applied.applied())
        .row("user_x", ADA, 2_000);

    let plan = plan_of(&batch, snap, SyncOptions::default());

    assert_eq!(plan.outcomes, known(&[Outcome::Stale]));
    assert_eq!(
        plan.writes,
        Writes {
            record: vec![record("msg_late", &batch[0].1, Outcome::Stale, None)],
            ..Writes::default()
        }
    );
}

#[test]
fn equal_versions_are_ordered_by_digest() {
    let one = Version::of("user_x", 1_000).email(ADA).name("One");
    let two = Version::of("user_x", 1_000).email(ADA).name("Two");
    let (low, high) = if one.digest() < two.digest() {
        (one, two)
    } else {
        (two, one)
    };
    let snap = || Snap::default().locked(&[ADA]).user("user_x", new_user());

    let low_first = plan_of(
        &[(msg("msg_l"), low.event()), (msg("msg_h"), high.event())],
        snap(),
        SyncOptions::default(),
    );
    let high_first = plan_of(
        &[(msg("msg_h"), high.event()), (msg("msg_l"), low.event())],
        snap(),
        SyncOptions::default(),
    );

    assert_eq!(
        low_first.outcomes,
        known(&[Outcome::Applied, Outcome::Applied])
    );
    assert_eq!(
        high_first.outcomes,
        known(&[Outcome::Applied, Outcome::Stale])
    );
    for plan in [&low_first, &high_first] {
        assert_eq!(plan.writes.bookkeeping, vec![high.bookkeeping_write()]);
        assert_eq!(plan.writes.rows, vec![high.row_insert(ADA, None)]);
    }
}

#[test]
fn an_update_after_a_delete_is_stale() {
    let before = Version::of("user_x", 1_000).email(ADA);
    let late = Version::of("user_x", 5_000).email(ADA);
    let batch = [(msg("msg_late"), late.event())];
    let snap = Snap::default()
        .locked(&[ADA])
        .user("user_x", tombstoned(before.applied(), false));

    let plan = plan_of(&batch, snap, SyncOptions::default());

    assert_eq!(plan.outcomes, known(&[Outcome::Stale]));
    assert_eq!(
        plan.writes,
        Writes {
            record: vec![record("msg_late", &batch[0].1, Outcome::Stale, None)],
            ..Writes::default()
        }
    );
}

#[test]
fn a_delete_planned_over_foreign_keys_is_deferred_when_refused() {
    let applied = Version::of("user_a", 1_000).email(ADA);
    let batch = [(msg("msg_del"), deletion("user_a"))];
    let snap = Snap::default()
        .locked(&[ADA])
        .user("user_a", applied.applied())
        .row("user_a", ADA, 1_000);

    let plan = plan_of(&batch, snap, SyncOptions::default());

    let planned = Planned::OnDelete {
        user: "user_a".into(),
        done: Outcome::Applied,
        refused: Outcome::Deferred,
    };
    assert_eq!(plan.outcomes, vec![planned.clone()]);
    assert_eq!(planned.resolve(&none_deleted()), Outcome::Deferred);
    assert_eq!(
        planned.resolve(&deleted_users(&["user_a"])),
        Outcome::Applied
    );
    assert_eq!(
        plan.writes,
        Writes {
            bookkeeping: vec![BookkeepingWrite {
                tombstone: true,
                ..applied.bookkeeping_write()
            }],
            deletes: vec!["user_a".into()],
            record: vec![record(
                "msg_del",
                &batch[0].1,
                Outcome::Applied,
                Some(Outcome::Deferred)
            )],
            ..Writes::default()
        }
    );
}

#[test]
fn a_second_delete_after_a_refused_one_is_deferred_and_after_a_done_one_stale() {
    let applied = Version::of("user_a", 1_000).email(ADA);
    let again = [(msg("msg_del_2"), deletion("user_a"))];

    // Refused before: the row is still there and the delete is tried again.
    let after_refused = plan_of(
        &again,
        Snap::default()
            .locked(&[ADA])
            .user("user_a", tombstoned(applied.applied(), true))
            .row("user_a", ADA, 1_000),
        SyncOptions::default(),
    );
    // Done before: nothing left to do.
    let after_done = plan_of(
        &again,
        Snap::default()
            .locked(&[ADA])
            .user("user_a", tombstoned(applied.applied(), false)),
        SyncOptions::default(),
    );
    // Both in one batch: the same foreign keys answer both.
    let together = plan_of(
        &[
            (msg("msg_del_1"), deletion("user_a")),
            (msg("msg_del_2"), deletion("user_a")),
        ],
        Snap::default()
            .locked(&[ADA])
            .user("user_a", applied.applied())
            .row("user_a", ADA, 1_000),
        SyncOptions::default(),
    );

    let retried = Planned::OnDelete {
        user: "user_a".into(),
        done: Outcome::Applied,
        refused: Outcome::Deferred,
    };
    assert_eq!(after_refused.outcomes, vec![retried]);
    assert_eq!(
        after_refused.writes,
        Writes {
            // The tombstone is there and nothing else of the bookkeeping changes; the
            // delete's answer sets `delete_pending`.
            bookkeeping: vec![],
            deletes: vec!["user_a".into()],
            record: vec![record(
                "msg_del_2",
                &again[0].1,
                Outcome::Applied,
                Some(Outcome::Deferred)
            )],
            ..Writes::default()
        }
    );
    assert_eq!(after_done.outcomes, known(&[Outcome::Stale]));
    assert_eq!(
        after_done.writes,
        Writes {
            record: vec![record("msg_del_2", &again[0].1, Outcome::Stale, None)],
            ..Writes::default()
        }
    );
    let second = &together.outcomes[1];
    assert_eq!(second.resolve(&none_deleted()), Outcome::Deferred);
    assert_eq!(second.resolve(&deleted_users(&["user_a"])), Outcome::Stale);
    assert_eq!(together.writes.deletes, vec!["user_a".to_owned()]);
    assert_eq!(
        together.writes.record[1],
        record(
            "msg_del_2",
            &deletion("user_a"),
            Outcome::Stale,
            Some(Outcome::Deferred)
        )
    );
}

#[test]
fn leaving_an_address_hands_it_to_the_newest_remaining_claimant() {
    let holder = Version::of("user_h", 3_000).email(ADA);
    let newer_claimant = Version::of("user_b", 2_000).email(ADA);
    let older_claimant = Version::of("user_c", 1_000).email(ADA);
    let moves_on = Version::of("user_h", 4_000).email(BOB);
    let batch = [(msg("msg_1"), moves_on.event())];
    let snap = Snap::default()
        .locked(&[ADA, BOB])
        .user("user_h", holder.applied())
        .user("user_b", newer_claimant.applied())
        .user("user_c", older_claimant.applied())
        .row("user_h", ADA, 3_000)
        .row("user_b", &displaced("user_b"), 2_000)
        .row("user_c", &displaced("user_c"), 1_000);

    let plan = plan_of(&batch, snap, SyncOptions::default());

    assert_eq!(plan.outcomes, known(&[Outcome::Applied]));
    assert_eq!(
        plan.writes,
        Writes {
            bookkeeping: vec![moves_on.bookkeeping_write()],
            vacate: vec!["user_h".into()],
            rows: vec![moves_on.row_update(BOB, None)],
            moves: vec![("user_b".into(), ADA.into())],
            record: vec![record("msg_1", &batch[0].1, Outcome::Applied, None)],
            ..Writes::default()
        }
    );
}

#[test]
fn a_deleted_holder_hands_its_address_to_the_newest_claimant() {
    let holder = Version::of("user_h", 3_000).email(ADA);
    let claimant = Version::of("user_b", 2_000).email(ADA);
    let batch = [(msg("msg_del"), deletion("user_h"))];
    let snap = Snap::default()
        .locked(&[ADA])
        .user("user_h", holder.applied())
        .user("user_b", claimant.applied())
        .row("user_h", ADA, 3_000)
        .row("user_b", &displaced("user_b"), 2_000);

    let plan = plan_of(&batch, snap, SyncOptions::default());

    assert_eq!(
        plan.writes,
        Writes {
            bookkeeping: vec![BookkeepingWrite {
                tombstone: true,
                ..holder.bookkeeping_write()
            }],
            // Moved off first, should the foreign keys keep the row.
            vacate: vec!["user_h".into()],
            moves: vec![
                ("user_b".into(), ADA.into()),
                ("user_h".into(), displaced("user_h")),
            ],
            deletes: vec!["user_h".into()],
            record: vec![record(
                "msg_del",
                &batch[0].1,
                Outcome::Applied,
                Some(Outcome::Deferred)
            )],
            ..Writes::default()
        }
    );
}

#[test]
fn a_tombstoned_holder_always_gives_its_address_up() {
    let dead = Version::of("user_dead", 5_000).email(ADA);
    let claim = Version::of("user_new", 1_000).email(ADA);
    let batch = [(msg("msg_1"), claim.event())];
    let snap = Snap::default()
        .locked(&[ADA])
        .user("user_new", new_user())
        .user("user_dead", tombstoned(dead.applied(), true))
        .row("user_dead", ADA, 5_000);

    let plan = plan_of(&batch, snap, SyncOptions::default());

    assert_eq!(plan.outcomes, known(&[Outcome::Applied]));
    assert_eq!(
        plan.writes,
        Writes {
            bookkeeping: vec![claim.bookkeeping_write()],
            vacate: vec!["user_dead".into()],
            rows: vec![claim.row_insert(ADA, None)],
            moves: vec![("user_dead".into(), displaced("user_dead"))],
            record: vec![record("msg_1", &batch[0].1, Outcome::Applied, None)],
            ..Writes::default()
        }
    );
}

#[test]
fn the_role_set_by_a_webhook_goes_back_to_user_when_a_version_names_none() {
    let admin = Version::of("user_x", 1_000).email(ADA).role("admin");
    let silent = Version::of("user_x", 2_000).email(ADA);
    let batch = [(msg("msg_2"), silent.event())];
    let snap = Snap::default()
        .locked(&[ADA])
        .user("user_x", admin.applied())
        .row("user_x", ADA, 1_000);

    let plan = plan_of(&batch, snap, SyncOptions::default());

    assert_eq!(
        plan.writes.rows,
        vec![silent.row_update(ADA, Some(Role::User))]
    );
    assert_eq!(plan.writes.bookkeeping, vec![silent.bookkeeping_write()]);
    assert!(!plan.writes.bookkeeping[0].role_from_webhook);
}

#[test]
fn a_role_named_by_a_webhook_is_written() {
    let admin = Version::of("user_x", 1_000).email(ADA).role("ADMIN");
    let batch = [(msg("msg_1"), admin.event())];
    let snap = Snap::default().locked(&[ADA]).user("user_x", new_user());

    let plan = plan_of(&batch, snap, SyncOptions::default());

    assert_eq!(
        plan.writes.rows,
        vec![admin.row_insert(ADA, Some(Role::Admin))]
    );
    assert!(plan.writes.bookkeeping[0].role_from_webhook);
}

#[test]
fn a_role_the_application_set_is_left_alone() {
    let silent = Version::of("user_x", 2_000).email(ADA);
    let batch = [(msg("msg_1"), silent.event())];
    // A row the application wrote itself: no bookkeeping beyond the lock's.
    let snap = Snap::default()
        .locked(&[ADA])
        .user("user_x", new_user())
        .row("user_x", ADA, 500);

    let plan = plan_of(&batch, snap, SyncOptions::default());

    assert_eq!(plan.writes.rows, vec![silent.row_update(ADA, None)]);
    assert!(!plan.writes.bookkeeping[0].role_from_webhook);
}

#[test]
fn a_role_reset_earlier_in_the_batch_is_kept_by_a_later_version_naming_none() {
    let admin = Version::of("user_x", 1_000).email(ADA).role("admin");
    let reset = Version::of("user_x", 2_000).email(ADA);
    let later = Version::of("user_x", 3_000).email(ADA).name("Later");
    let batch = [(msg("msg_2"), reset.event()), (msg("msg_3"), later.event())];
    let snap = Snap::default()
        .locked(&[ADA])
        .user("user_x", admin.applied())
        .row("user_x", ADA, 1_000);

    let plan = plan_of(&batch, snap, SyncOptions::default());

    assert_eq!(plan.outcomes, known(&[Outcome::Applied, Outcome::Applied]));
    assert_eq!(
        plan.writes.rows,
        vec![later.row_update(ADA, Some(Role::User))]
    );
    assert_eq!(plan.writes.bookkeeping, vec![later.bookkeeping_write()]);
}

#[test]
fn an_application_row_is_as_new_as_its_updated_at_to_the_second() {
    // Written by the application at 2.999 s: as new as 2 s.
    let snap = || {
        Snap::default()
            .locked(&[ADA])
            .user("user_new", new_user())
            .row("user_app", ADA, 2_999)
    };
    let newer = Version::of("user_new", 2_500).email(ADA);
    let older = Version::of("user_new", 1_999).email(ADA);

    let won = plan_of(
        &[(msg("msg_1"), newer.event())],
        snap(),
        SyncOptions::default(),
    );
    let lost = plan_of(
        &[(msg("msg_1"), older.event())],
        snap(),
        SyncOptions::default(),
    );

    assert_eq!(won.writes.vacate, vec!["user_app".to_owned()]);
    assert_eq!(won.writes.rows, vec![newer.row_insert(ADA, None)]);
    assert_eq!(
        won.writes.moves,
        vec![("user_app".into(), displaced("user_app"))]
    );
    assert_eq!(
        lost.writes.rows,
        vec![older.row_insert(&displaced("user_new"), None)]
    );
    assert!(lost.writes.moves.is_empty() && lost.writes.vacate.is_empty());
}

#[test]
fn by_version_the_applied_version_is_the_duplicate_and_nothing_is_recorded() {
    let applied = Version::of("user_x", 1_000).email(ADA).name("One");
    let other = Version::of("user_x", 1_000).email(ADA).name("Two");
    let lower = if other.digest() < applied.digest() {
        other
    } else {
        Version::of("user_x", 999).email(ADA)
    };
    let newer = Version::of("user_x", 2_000).email(ADA);
    let snap = || {
        Snap::default()
            .locked(&[ADA])
            .user("user_x", applied.applied())
            .row("user_x", ADA, 1_000)
    };
    let by_version = SyncOptions {
        dedup: Dedup::ByVersion,
        ..SyncOptions::default()
    };

    let same = plan_of(&[(msg("api"), applied.event())], snap(), by_version);
    let stale = plan_of(&[(msg("api"), lower.event())], snap(), by_version);
    let fresh = plan_of(&[(msg("api"), newer.event())], snap(), by_version);

    assert_eq!(same.outcomes, known(&[Outcome::Duplicate]));
    assert!(same.writes.is_empty(), "{:?}", same.writes);
    assert_eq!(stale.outcomes, known(&[Outcome::Stale]));
    assert!(stale.writes.is_empty(), "{:?}", stale.writes);
    assert_eq!(fresh.outcomes, known(&[Outcome::Applied]));
    assert_eq!(
        fresh.writes,
        Writes {
            bookkeeping: vec![newer.bookkeeping_write()],
            rows: vec![newer.row_update(ADA, None)],
            ..Writes::default()
        }
    );
    assert!(request(&[(msg("api"), newer.event())], by_version)
        .ids
        .is_empty());
}

#[test]
fn rows_swapping_addresses_move_out_of_the_way_first() {
    let a1 = Version::of("user_a", 1_000).email(ADA);
    let b1 = Version::of("user_b", 1_000).email(BOB);
    let a2 = Version::of("user_a", 2_000).email(BOB);
    let b2 = Version::of("user_b", 2_000).email(ADA);
    let batch = [(msg("msg_a"), a2.event()), (msg("msg_b"), b2.event())];
    let snap = Snap::default()
        .locked(&[ADA, BOB])
        .user("user_a", a1.applied())
        .user("user_b", b1.applied())
        .row("user_a", ADA, 1_000)
        .row("user_b", BOB, 1_000);

    let plan = plan_of(&batch, snap, SyncOptions::default());

    assert_eq!(plan.outcomes, known(&[Outcome::Applied, Outcome::Applied]));
    assert_eq!(
        plan.writes,
        Writes {
            bookkeeping: vec![a2.bookkeeping_write(), b2.bookkeeping_write()],
            vacate: vec!["user_a".into(), "user_b".into()],
            rows: vec![a2.row_update(BOB, None), b2.row_update(ADA, None)],
            record: vec![
                record("msg_a", &batch[0].1, Outcome::Applied, None),
                record("msg_b", &batch[1].1, Outcome::Applied, None),
            ],
            ..Writes::default()
        }
    );
}

#[test]
fn a_retry_of_a_pending_delete_notes_the_attempt() {
    let applied = Version::of("user_a", 1_000).email(ADA);
    let pending = Snap::default()
        .locked(&[ADA])
        .user("user_a", tombstoned(applied.applied(), true))
        .row("user_a", ADA, 1_000);
    let done = Snap::default()
        .locked(&[ADA])
        .user("user_a", tombstoned(applied.applied(), false));

    let retry = plan_retry("user_a", &pending.0)
        .expect("a complete snapshot")
        .expect("a pending delete");
    let nothing = plan_retry("user_a", &done.0).expect("a complete snapshot");

    assert_eq!(retry_request("user_a").users, vec!["user_a".to_owned()]);
    assert_eq!(
        retry.outcomes,
        vec![Planned::OnDelete {
            user: "user_a".into(),
            done: Outcome::Applied,
            refused: Outcome::Deferred,
        }]
    );
    assert_eq!(
        retry.writes,
        Writes {
            bookkeeping: vec![BookkeepingWrite {
                attempted: true,
                ..applied.bookkeeping_write()
            }],
            deletes: vec!["user_a".into()],
            ..Writes::default()
        }
    );
    assert_eq!(nothing, None);
}

#[test]
fn a_new_user_made_with_the_right_guess_is_not_written_again() {
    let older = Version::of("user_x", 1_000).email(BOB);
    let newest = Version::of("user_x", 2_000).email(ADA).role("admin");
    // The newest version first: the guess is the newest, not the last.
    let batch = [
        (msg("msg_2"), newest.event()),
        (msg("msg_1"), older.event()),
    ];
    let by_version = SyncOptions {
        dedup: Dedup::ByVersion,
        ..SyncOptions::default()
    };

    let req = request(&batch, SyncOptions::default());
    assert_eq!(req.initial, vec![newest.applied()]);
    let snap = || {
        Snap::default()
            .locked(&[ADA, BOB])
            .made("user_x", newest.applied())
    };
    let by_id = plan_of(&batch, snap(), SyncOptions::default());
    // By version, were the row taken for what it was made with, the newest would be the
    // duplicate of it.
    let by_version = plan_of(&batch, snap(), by_version);

    // Made now, the user is new: its newest version applies over nothing, and what the row
    // was made with is what it ends with, so only the application row is written.
    assert_eq!(by_id.outcomes, known(&[Outcome::Applied, Outcome::Stale]));
    assert_eq!(
        by_id.writes,
        Writes {
            rows: vec![newest.row_insert(ADA, Some(Role::Admin))],
            record: vec![
                record("msg_2", &batch[0].1, Outcome::Applied, None),
                record("msg_1", &batch[1].1, Outcome::Stale, None),
            ],
            ..Writes::default()
        }
    );
    assert_eq!(
        by_version.outcomes,
        known(&[Outcome::Applied, Outcome::Stale])
    );
    assert_eq!(
        by_version.writes,
        Writes {
            rows: vec![newest.row_insert(ADA, Some(Role::Admin))],
            ..Writes::default()
        }
    );
}

#[test]
fn a_new_user_whose_guess_was_wrong_is_corrected() {
    let with_email = Version::of("user_x", 1_000).email(ADA);
    let without = Version::of("user_x", 2_000);
    let skip = SyncOptions {
        skip_users_without_email: true,
        ..SyncOptions::default()
    };
    // The newest version is ignored: the user ends with the older one...
    let both = [
        (msg("msg_1"), with_email.event()),
        (msg("msg_2"), without.event()),
    ];
    // ...or, alone, with nothing applied.
    let alone = [(msg("msg_2"), without.event())];
    for batch in [&both[..], &alone[..]] {
        assert_eq!(request(batch, skip).initial, vec![without.applied()]);
    }
    let snap = || {
        Snap::default()
            .locked(&[ADA])
            .made("user_x", without.applied())
    };

    let corrected = plan_of(&both, snap(), skip);
    let back_to_new = plan_of(&alone, snap(), skip);

    assert_eq!(
        corrected.outcomes,
        known(&[Outcome::Applied, Outcome::Ignored])
    );
    assert_eq!(
        corrected.writes,
        Writes {
            bookkeeping: vec![with_email.bookkeeping_write()],
            rows: vec![with_email.row_insert(ADA, None)],
            record: vec![
                record("msg_1", &both[0].1, Outcome::Applied, None),
                record("msg_2", &both[1].1, Outcome::Ignored, None),
            ],
            ..Writes::default()
        }
    );
    assert_eq!(back_to_new.outcomes, known(&[Outcome::Ignored]));
    assert_eq!(
        back_to_new.writes,
        Writes {
            // Back to a user with nothing applied: a version older than the ignored one
            // still applies later.
            bookkeeping: vec![BookkeepingWrite {
                user_id: "user_x".into(),
                version: -1,
                digest: String::new(),
                email: None,
                role_from_webhook: false,
                tombstone: false,
                attempted: false,
            }],
            record: vec![record("msg_2", &alone[0].1, Outcome::Ignored, None)],
            ..Writes::default()
        }
    );
}

#[test]
fn a_snapshot_missing_a_locked_address_is_refused_not_guessed() {
    let claim = Version::of("user_x", 1_000).email(ADA);
    let batch = [(msg("msg_1"), claim.event())];
    // The backend read the user but did not lock (or read) the address it claims.
    let unlocked = Snap::default().user("user_x", new_user());
    let no_user = Snap::default().locked(&[ADA]);

    let missing_address = plan(&batch, &unlocked.0, SyncOptions::default());
    let missing_user = plan(&batch, &no_user.0, SyncOptions::default());

    let error = missing_address.expect_err("an incomplete snapshot");
    assert!(error.to_string().contains("incomplete"), "{error}");
    assert!(missing_user.is_err());
}

#[test]
fn the_request_locks_the_users_claims_and_ids_of_the_batch() {
    let a = Version::of("user_a", 1).email(ADA);
    let batch = [
        (msg("msg_2"), Version::of("user_b", 1).email(BOB).event()),
        (msg("msg_1"), a.event()),
        (msg("msg_3"), deletion("user_b")),
        (msg("msg_4"), unhandled()),
    ];

    let req = request(&batch, SyncOptions::default());

    assert_eq!(
        req,
        Request {
            users: vec!["user_a".into(), "user_b".into()],
            // What each would most likely end with: user_a its version; user_b, deleted,
            // the row of a user clerk-sync has applied nothing for.
            initial: vec![a.applied(), new_user()],
            claims: vec![ADA.into(), BOB.into()],
            ids: vec![
                "msg_2".into(),
                "msg_1".into(),
                "msg_3".into(),
                "msg_4".into()
            ],
        }
    );
}

// ---------------------------------------------------------------------------------------
// The independent model: a naive database applying one delivery at a time by the rules
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
struct ModelRow {
    name: Option<String>,
    address: String,
    role: Role,
    created_ms: i64,
    updated_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ModelBook {
    version: i64,
    digest: String,
    email: Option<String>,
    deleted: bool,
    delete_pending: bool,
    role_from_webhook: bool,
    attempted: bool,
}

impl ModelBook {
    fn fresh() -> Self {
        ModelBook {
            version: -1,
            digest: String::new(),
            email: None,
            deleted: false,
            delete_pending: false,
            role_from_webhook: false,
            attempted: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ModelDelivery {
    event_type: String,
    user: Option<String>,
    outcome: Outcome,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ModelDb {
    books: BTreeMap<String, ModelBook>,
    rows: BTreeMap<String, ModelRow>,
    deliveries: BTreeMap<String, ModelDelivery>,
}

impl ModelDb {
    fn holder_of(&self, address: &str) -> Option<String> {
        self.rows
            .iter()
            .find(|(_, r)| r.address == address)
            .map(|(id, _)| id.clone())
    }

    /// Sets a row's address, as one statement under the unique constraint.
    fn set_address(&mut self, id: &str, address: &str) -> Result<(), String> {
        if let Some(other) = self.holder_of(address).filter(|h| h != id) {
            return Err(format!(
                "unique violation: {id} takes {address:?}, which {other} holds"
            ));
        }
        if let Some(row) = self.rows.get_mut(id) {
            row.address = address.to_owned();
        }
        Ok(())
    }

    fn insert_row(&mut self, id: &str, row: ModelRow) -> Result<(), String> {
        if let Some(other) = self.holder_of(&row.address).filter(|h| h != id) {
            return Err(format!(
                "unique violation: {id} written at {:?}, which {other} holds",
                row.address
            ));
        }
        self.rows.insert(id.to_owned(), row);
        Ok(())
    }

    fn book(&mut self, user: &str) -> &mut ModelBook {
        self.books
            .entry(user.to_owned())
            .or_insert_with(ModelBook::fresh)
    }
}

/// How new the row holding an address is: its user's newest applied Clerk version, or, for
/// a row the application wrote itself, its `updatedAt` to the second.
fn model_age(db: &ModelDb, holder: &str) -> i64 {
    match db.books.get(holder) {
        Some(b) if b.version >= 0 => b.version,
        _ => {
            let ms = db.rows.get(holder).map_or(0, |r| r.updated_ms);
            ms - ms.rem_euclid(1000)
        }
    }
}

/// DESIGN.md: "the newest claim on an address wins" — does `holder` give `address` up to
/// `claimant`'s version `at`?
fn model_holder_gives_way(
    db: &ModelDb,
    holder: &str,
    address: &str,
    claimant: &str,
    at: i64,
) -> bool {
    if let Some(b) = db.books.get(holder) {
        // Tombstoned, kept only for the application's foreign keys.
        if b.deleted {
            return true;
        }
        // Its own newest Clerk data does not claim the address at all.
        if b.version >= 0 && b.email.as_deref() != Some(address) {
            return true;
        }
    }
    let holder_age = model_age(db, holder);
    holder_age < at || (holder_age == at && holder < claimant)
}

/// DESIGN.md: when a user leaves an address, the newest remaining claimant gets it back (a
/// tombstoned holder giving it up).
fn model_hand_back(db: &mut ModelDb, address: &str) -> Result<(), String> {
    let best = db
        .books
        .iter()
        .filter(|(u, b)| {
            !b.deleted
                && b.version >= 0
                && b.email.as_deref() == Some(address)
                && db.rows.get(*u).is_some_and(|r| r.address != address)
        })
        .map(|(u, b)| (b.version, u.clone()))
        .max();
    let Some((_, best)) = best else {
        return Ok(());
    };
    if let Some(holder) = db.holder_of(address) {
        if !db.books.get(&holder).is_some_and(|b| b.deleted) {
            return Ok(());
        }
        db.set_address(&holder, &displaced(&holder))?;
    }
    db.set_address(&best, address)
}

fn model_upsert(
    db: &mut ModelDb,
    change: &UserChange,
    options: SyncOptions,
) -> Result<Outcome, String> {
    let user = change.id.as_str();
    let book = db.book(user).clone();
    if book.deleted {
        return Ok(Outcome::Stale);
    }
    let incoming = (change.version, change.digest.as_str());
    let applied = (book.version, book.digest.as_str());
    if incoming <= applied {
        let same = incoming == applied && options.dedup == Dedup::ByVersion;
        return Ok(if same {
            Outcome::Duplicate
        } else {
            Outcome::Stale
        });
    }
    if change.email.is_none() && options.skip_users_without_email {
        return Ok(Outcome::Ignored);
    }
    let email = change.email.as_ref().map(|e| e.as_str().to_owned());
    let old_row_address = db.rows.get(user).map(|r| r.address.clone());
    let old_claim = book.email.clone();

    {
        let b = db.book(user);
        b.version = change.version;
        b.digest = change.digest.clone();
        b.email = email.clone();
        b.role_from_webhook = change.role.is_some();
    }

    let target = match &email {
        None => no_email(user),
        Some(address) => match db.holder_of(address) {
            Some(holder) if holder != user => {
                if model_holder_gives_way(db, &holder, address, user, change.version) {
                    db.set_address(&holder, &displaced(&holder))?;
                    address.clone()
                } else {
                    displaced(user)
                }
            }
            _ => address.clone(),
        },
    };

    let role = match (change.role, book.role_from_webhook) {
        (Some(named), _) => named,
        (None, true) => Role::User,
        (None, false) => db.rows.get(user).map_or(Role::User, |r| r.role),
    };
    db.insert_row(
        user,
        ModelRow {
            name: change.name.clone(),
            address: target.clone(),
            role,
            created_ms: change.created_at.timestamp_millis(),
            updated_ms: change.updated_at.timestamp_millis(),
        },
    )?;

    for left in [old_claim, old_row_address].into_iter().flatten() {
        if left != target {
            model_hand_back(db, &left)?;
        }
    }
    Ok(Outcome::Applied)
}

/// Tries the tombstoned user's delete against the application's foreign keys.
fn model_try_delete(
    db: &mut ModelDb,
    user: &str,
    refused: &BTreeSet<String>,
) -> Result<Outcome, String> {
    let Some(address) = db.rows.get(user).map(|r| r.address.clone()) else {
        db.book(user).delete_pending = false;
        return Ok(Outcome::Applied);
    };
    if refused.contains(user) {
        db.book(user).delete_pending = true;
        model_hand_back(db, &address)?;
        return Ok(Outcome::Deferred);
    }
    db.rows.remove(user);
    db.book(user).delete_pending = false;
    model_hand_back(db, &address)?;
    Ok(Outcome::Applied)
}

fn model_delete(
    db: &mut ModelDb,
    user: &str,
    refused: &BTreeSet<String>,
) -> Result<Outcome, String> {
    let book = db.book(user).clone();
    if book.deleted && !book.delete_pending {
        return Ok(Outcome::Stale);
    }
    db.book(user).deleted = true;
    model_try_delete(db, user, refused)
}

/// One delivery, in a transaction of its own, by DESIGN.md's rules.
fn model_deliver(
    db: &mut ModelDb,
    id: &str,
    event: &Event,
    options: SyncOptions,
    refused: &BTreeSet<String>,
) -> Result<Outcome, String> {
    // The transaction's lock makes the user's bookkeeping row.
    if let Some(user) = event.user_id() {
        db.book(user.as_str());
    }
    let by_id = options.dedup == Dedup::ById;
    if by_id && db.deliveries.contains_key(id) {
        return Ok(Outcome::Duplicate);
    }
    let outcome = match event {
        Event::Ignored { .. } => Outcome::Ignored,
        Event::Delete { id: user } => model_delete(db, user.as_str(), refused)?,
        Event::Upsert { change, .. } => model_upsert(db, change, options)?,
    };
    if by_id {
        db.deliveries.insert(
            id.to_owned(),
            ModelDelivery {
                event_type: event.event_type().to_owned(),
                user: event.user_id().map(|u| u.as_str().to_owned()),
                outcome,
            },
        );
    }
    Ok(outcome)
}

fn model_retry(
    db: &mut ModelDb,
    user: &str,
    refused: &BTreeSet<String>,
) -> Result<Outcome, String> {
    db.book(user).attempted = true;
    model_try_delete(db, user, refused)
}

// ---------------------------------------------------------------------------------------
// The port on the model: lock, read, write (as src/db/port.rs documents them)
// ---------------------------------------------------------------------------------------

/// Locks `req.users`' bookkeeping rows, making those absent with their `req.initial`
/// values; answers which it made.
fn lock(db: &mut ModelDb, req: &Request) -> Result<BTreeSet<String>, String> {
    if req.initial.len() != req.users.len() {
        return Err(format!(
            "{} initial values for {} users",
            req.initial.len(),
            req.users.len()
        ));
    }
    let mut made = BTreeSet::new();
    for (user, initial) in req.users.iter().zip(&req.initial) {
        if !db.books.contains_key(user) {
            db.books.insert(
                user.clone(),
                ModelBook {
                    version: initial.version,
                    digest: initial.digest.clone(),
                    email: initial.email.clone(),
                    // What a backend writes of a row it makes: no tombstone, nothing pending.
                    deleted: false,
                    delete_pending: false,
                    role_from_webhook: initial.role_from_webhook,
                    attempted: false,
                },
            );
            made.insert(user.clone());
        }
    }
    Ok(made)
}

fn as_bookkeeping(b: &ModelBook) -> Bookkeeping {
    Bookkeeping {
        version: b.version,
        digest: b.digest.clone(),
        email: b.email.clone(),
        deleted: b.deleted,
        delete_pending: b.delete_pending,
        role_from_webhook: b.role_from_webhook,
    }
}

fn as_app_row(r: &ModelRow) -> AppRow {
    AppRow {
        address: Some(r.address.clone()),
        updated_ms: r.updated_ms,
    }
}

/// What a backend reads under `req`'s locks (taken by [`lock`], which made `made`).
fn snapshot_of(db: &ModelDb, req: &Request, made: &BTreeSet<String>) -> Snapshot {
    let mut snapshot = Snapshot::default();
    snapshot.made.extend(made.iter().cloned());
    let mut addresses: BTreeSet<String> = req.claims.iter().cloned().collect();
    for user in &req.users {
        let book = db.books.get(user).cloned().unwrap_or_else(ModelBook::fresh);
        addresses.extend(book.email.clone());
        snapshot.users.insert(user.clone(), as_bookkeeping(&book));
        if let Some(row) = db.rows.get(user) {
            addresses.insert(row.address.clone());
            snapshot.rows.insert(user.clone(), as_app_row(row));
        }
    }
    for address in &addresses {
        let holder = db.rows.iter().filter(|(_, r)| r.address == *address);
        let claimants = db
            .books
            .iter()
            .filter(|(_, b)| b.email.as_deref() == Some(address.as_str()));
        let involved: Vec<String> = holder
            .map(|(u, _)| u.clone())
            .chain(claimants.map(|(u, _)| u.clone()))
            .collect();
        for user in involved {
            if let Some(book) = db.books.get(&user) {
                snapshot
                    .users
                    .entry(user.clone())
                    .or_insert_with(|| as_bookkeeping(book));
            }
            if let Some(row) = db.rows.get(&user) {
                snapshot
                    .rows
                    .entry(user.clone())
                    .or_insert_with(|| as_app_row(row));
            }
        }
    }
    snapshot.addresses = addresses.into_iter().collect();
    snapshot.recorded = req
        .ids
        .iter()
        .filter(|id| db.deliveries.contains_key(*id))
        .cloned()
        .collect();
    snapshot
}

/// Executes `writes` on the model in the port's order, each statement under the unique
/// constraint on the address; the deletes of `refused` users' existing rows fail as the
/// application's foreign keys would make them.
fn apply_writes(
    db: &mut ModelDb,
    writes: &Writes,
    refused: &BTreeSet<String>,
) -> Result<Deleted, String> {
    for b in &writes.bookkeeping {
        let book = db
            .books
            .get_mut(&b.user_id)
            .ok_or_else(|| format!("bookkeeping of {} written but never locked", b.user_id))?;
        // The planner writes only bookkeeping that changes.
        let unchanged = b.version == book.version
            && b.digest == book.digest
            && b.email == book.email
            && b.role_from_webhook == book.role_from_webhook;
        if unchanged && !b.tombstone && !b.attempted {
            return Err(format!(
                "bookkeeping of {} written unchanged: {b:?}",
                b.user_id
            ));
        }
        book.version = b.version;
        book.digest.clone_from(&b.digest);
        book.email.clone_from(&b.email);
        book.role_from_webhook = b.role_from_webhook;
        if b.tombstone {
            book.deleted = true;
        }
        if b.attempted {
            book.attempted = true;
        }
    }
    for id in &writes.vacate {
        db.set_address(id, &moving(id))?;
    }
    for w in &writes.rows {
        let row = match db.rows.get(&w.id) {
            // A plain insert, under the primary key.
            Some(_) if !w.exists => {
                return Err(format!(
                    "primary key violation: {} inserted, but its row exists",
                    w.id
                ))
            }
            None if w.exists => {
                return Err(format!(
                    "{} written as existing before the lock, but it has no row",
                    w.id
                ))
            }
            Some(old) => ModelRow {
                name: w.name.clone(),
                address: w.address.clone(),
                role: w.role.unwrap_or(old.role),
                created_ms: w.created_at.timestamp_millis(),
                updated_ms: w.updated_at.timestamp_millis(),
            },
            None => ModelRow {
                name: w.name.clone(),
                address: w.address.clone(),
                role: w.role.unwrap_or(Role::User),
                created_ms: w.created_at.timestamp_millis(),
                updated_ms: w.updated_at.timestamp_millis(),
            },
        };
        db.insert_row(&w.id, row)?;
    }
    for (id, address) in &writes.moves {
        db.set_address(id, address)?;
    }
    let mut deleted = Deleted::default();
    for user in &writes.deletes {
        let blocked = refused.contains(user) && db.rows.contains_key(user);
        if !blocked {
            db.rows.remove(user);
            deleted.0.insert(user.clone());
        }
        db.books
            .get_mut(user)
            .ok_or_else(|| format!("delete of {user}, whose bookkeeping was never locked"))?
            .delete_pending = blocked;
    }
    for r in &writes.record {
        let refused_now = r.user_id.as_ref().is_some_and(|u| !deleted.0.contains(u));
        let outcome = match r.if_refused {
            Some(instead) if refused_now => instead,
            _ => r.outcome,
        };
        let delivery = ModelDelivery {
            event_type: r.event_type.clone(),
            user: r.user_id.clone(),
            outcome,
        };
        if db.deliveries.insert(r.svix_id.clone(), delivery).is_some() {
            return Err(format!("{} recorded twice", r.svix_id));
        }
    }
    if let Some((id, row)) = db
        .rows
        .iter()
        .find(|(_, r)| r.address.ends_with("@moving.invalid"))
    {
        return Err(format!("{id} left at {:?} at commit", row.address));
    }
    Ok(deleted)
}

// ---------------------------------------------------------------------------------------
// Histories
// ---------------------------------------------------------------------------------------

const USERS: &[&str] = &["user_a", "user_b", "user_c", "user_d"];
const APP_USERS: &[&str] = &["user_a", "user_b", "user_c", "user_d", "user_e"];
const ADDRESSES: &[&str] = &["ada@example.com", "bob@example.com", "cyd@example.com"];
const VERSIONS: &[i64] = &[1_000, 1_999, 2_000, 2_500, 3_000];
const APP_UPDATED: &[i64] = &[0, 1_500, 2_000, 2_999, 4_000];

#[derive(Debug, Clone)]
enum Step {
    Upsert {
        user: &'static str,
        at: i64,
        email: Option<&'static str>,
        name: Option<&'static str>,
        role: Option<&'static str>,
        created: i64,
    },
    Delete(&'static str),
    Unhandled,
    /// Svix delivers an earlier message again (the `back`-th last, modulo).
    Repeat(usize),
    /// The background retry of a pending delete, after the application freed the row
    /// (`release`) or not.
    Retry {
        user: &'static str,
        release: bool,
    },
    /// The application itself moves a row to a free address (Prisma sets `updatedAt`).
    AppEdit {
        user: &'static str,
        address: &'static str,
        updated_ms: i64,
    },
}

#[derive(Debug, Clone)]
struct AppRowSpec {
    user: &'static str,
    address: &'static str,
    updated_ms: i64,
    admin: bool,
}

#[derive(Debug, Clone)]
struct Case {
    app_rows: Vec<AppRowSpec>,
    refused: Vec<&'static str>,
    skip: bool,
    by_version: bool,
    steps: Vec<Step>,
    /// Where the chunked run ends a batch (after the i-th delivery, modulo).
    cuts: Vec<bool>,
}

fn step() -> impl Strategy<Value = Step> {
    let upsert = (
        prop::sample::select(USERS),
        prop::sample::select(VERSIONS),
        prop::option::weighted(0.8, prop::sample::select(ADDRESSES)),
        prop::option::of(prop::sample::select(&["Ada", "Bob"][..])),
        prop::option::weighted(0.4, prop::sample::select(&["admin", "user"][..])),
        0..2_i64,
    )
        .prop_map(|(user, at, email, name, role, created)| Step::Upsert {
            user,
            at,
            email,
            name,
            role,
            created,
        });
    prop_oneof![
        6 => upsert,
        2 => prop::sample::select(USERS).prop_map(Step::Delete),
        1 => Just(Step::Unhandled),
        2 => (0..8_usize).prop_map(Step::Repeat),
        1 => (prop::sample::select(USERS), any::<bool>())
            .prop_map(|(user, release)| Step::Retry { user, release }),
        1 => (
            prop::sample::select(APP_USERS),
            prop::sample::select(ADDRESSES),
            prop::sample::select(APP_UPDATED),
        )
            .prop_map(|(user, address, updated_ms)| Step::AppEdit {
                user,
                address,
                updated_ms,
            }),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    let app_row = (
        prop::sample::select(APP_USERS),
        prop::sample::select(ADDRESSES),
        prop::sample::select(APP_UPDATED),
        any::<bool>(),
    )
        .prop_map(|(user, address, updated_ms, admin)| AppRowSpec {
            user,
            address,
            updated_ms,
            admin,
        });
    (
        prop::collection::vec(app_row, 0..4),
        prop::sample::subsequence(USERS, 0..=USERS.len()),
        prop::bool::weighted(0.25),
        prop::bool::weighted(0.25),
        prop::collection::vec(step(), 1..16),
        prop::collection::vec(any::<bool>(), 1..6),
    )
        .prop_map(|(app_rows, refused, skip, by_version, steps, cuts)| Case {
            app_rows,
            refused,
            skip,
            by_version,
            steps,
            cuts,
        })
}

enum Op {
    Deliver(MessageId, Event),
    Retry {
        user: String,
        release: bool,
    },
    AppEdit {
        user: String,
        address: String,
        updated_ms: i64,
    },
}

/// The application's own write: only onto a free address (the unique constraint).
fn app_edit(db: &mut ModelDb, user: &str, address: &str, updated_ms: i64) {
    if db.holder_of(address).is_none() {
        if let Some(row) = db.rows.get_mut(user) {
            row.address = address.to_owned();
            row.updated_ms = updated_ms;
        }
    }
}

impl Case {
    fn options(&self) -> SyncOptions {
        SyncOptions {
            skip_users_without_email: self.skip,
            dedup: if self.by_version {
                Dedup::ByVersion
            } else {
                Dedup::ById
            },
            ..SyncOptions::default()
        }
    }

    /// The database before the history: rows the application wrote itself.
    fn initial(&self) -> ModelDb {
        let mut db = ModelDb::default();
        for spec in &self.app_rows {
            if db.rows.contains_key(spec.user) || db.holder_of(spec.address).is_some() {
                continue;
            }
            db.rows.insert(
                spec.user.to_owned(),
                ModelRow {
                    name: Some("App".to_owned()),
                    address: spec.address.to_owned(),
                    role: if spec.admin { Role::Admin } else { Role::User },
                    created_ms: 0,
                    updated_ms: spec.updated_ms,
                },
            );
        }
        db
    }

    fn refused(&self) -> BTreeSet<String> {
        self.refused.iter().map(|u| (*u).to_owned()).collect()
    }

    fn ops(&self) -> Vec<Op> {
        let mut ops = Vec::new();
        let mut sent: Vec<(MessageId, Event)> = Vec::new();
        for step in &self.steps {
            let delivery = match step {
                Step::Upsert {
                    user,
                    at,
                    email,
                    name,
                    role,
                    created,
                } => {
                    let v = Version {
                        kind: if sent.len() % 2 == 0 {
                            "user.created"
                        } else {
                            "user.updated"
                        },
                        user: (*user).to_owned(),
                        at: *at,
                        created: *created,
                        name: name.map(str::to_owned),
                        email: email.map(str::to_owned),
                        role: *role,
                    };
                    (msg(&format!("msg_{}", sent.len())), v.event())
                }
                Step::Delete(user) => (msg(&format!("msg_{}", sent.len())), deletion(user)),
                Step::Unhandled => (msg(&format!("msg_{}", sent.len())), unhandled()),
                Step::Repeat(back) => {
                    if sent.is_empty() {
                        continue;
                    }
                    sent[sent.len() - 1 - back % sent.len()].clone()
                }
                Step::Retry { user, release } => {
                    ops.push(Op::Retry {
                        user: (*user).to_owned(),
                        release: *release,
                    });
                    continue;
                }
                Step::AppEdit {
                    user,
                    address,
                    updated_ms,
                } => {
                    ops.push(Op::AppEdit {
                        user: (*user).to_owned(),
                        address: (*address).to_owned(),
                        updated_ms: *updated_ms,
                    });
                    continue;
                }
            };
            sent.push(delivery.clone());
            ops.push(Op::Deliver(delivery.0, delivery.1));
        }
        ops
    }
}

/// What a run ends with: the database and each op's outcome (none for a retry of a user
/// with no pending delete).
type Run = (ModelDb, Vec<Option<Outcome>>);

fn run_model(case: &Case) -> Result<Run, String> {
    let options = case.options();
    let mut refused = case.refused();
    let mut db = case.initial();
    let mut outcomes = Vec::new();
    for op in case.ops() {
        match op {
            Op::Deliver(id, event) => {
                outcomes.push(Some(model_deliver(
                    &mut db,
                    id.as_str(),
                    &event,
                    options,
                    &refused,
                )?));
            }
            Op::Retry { user, release } => {
                if release {
                    refused.remove(&user);
                }
                let pending = db.books.get(&user).is_some_and(|b| b.delete_pending);
                outcomes.push(if pending {
                    Some(model_retry(&mut db, &user, &refused)?)
                } else {
                    None
                });
            }
            Op::AppEdit {
                user,
                address,
                updated_ms,
            } => app_edit(&mut db, &user, &address, updated_ms),
        }
    }
    Ok((db, outcomes))
}

/// One transaction through the planner: lock, read, plan, write.
fn planner_batch(
    db: &mut ModelDb,
    batch: &[(MessageId, Event)],
    options: SyncOptions,
    refused: &BTreeSet<String>,
    outcomes: &mut Vec<Option<Outcome>>,
    log: &mut Vec<Logged>,
) -> Result<(), String> {
    if batch.is_empty() {
        return Ok(());
    }
    let req = request(batch, options);
    let made = lock(db, &req)?;
    let snapshot = snapshot_of(db, &req, &made);
    let plan = plan(batch, &snapshot, options).map_err(|e| e.to_string())?;
    if plan.outcomes.len() != batch.len() {
        return Err(format!(
            "{} outcomes for {} deliveries",
            plan.outcomes.len(),
            batch.len()
        ));
    }
    let deleted = apply_writes(db, &plan.writes, refused)?;
    outcomes.extend(plan.outcomes.iter().map(|p| Some(p.resolve(&deleted))));
    log.push((made, plan.writes));
    Ok(())
}

/// The planner over the history, a new batch starting after each delivery for which `cut`
/// says so (and around every retry).
fn run_planner(case: &Case, cut: impl Fn(usize) -> bool) -> Result<Run, String> {
    run_planner_logged(case, cut, &mut Vec::new())
}

/// A plan's writes, with the users whose bookkeeping rows its lock made.
type Logged = (BTreeSet<String>, Writes);

/// [`run_planner`], keeping every plan's writes in `log`.
fn run_planner_logged(
    case: &Case,
    cut: impl Fn(usize) -> bool,
    log: &mut Vec<Logged>,
) -> Result<Run, String> {
    let options = case.options();
    let mut refused = case.refused();
    let mut db = case.initial();
    let mut outcomes = Vec::new();
    let mut batch: Vec<(MessageId, Event)> = Vec::new();
    let mut delivered = 0;
    for op in case.ops() {
        match op {
            Op::Deliver(id, event) => {
                batch.push((id, event));
                delivered += 1;
                if cut(delivered) {
                    planner_batch(&mut db, &batch, options, &refused, &mut outcomes, log)?;
                    batch.clear();
                }
            }
            Op::Retry { user, release } => {
                planner_batch(&mut db, &batch, options, &refused, &mut outcomes, log)?;
                batch.clear();
                if release {
                    refused.remove(&user);
                }
                if !db.books.get(&user).is_some_and(|b| b.delete_pending) {
                    outcomes.push(None);
                    continue;
                }
                let req = retry_request(&user);
                let made = lock(&mut db, &req)?;
                let snapshot = snapshot_of(&db, &req, &made);
                let plan = plan_retry(&user, &snapshot)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("the pending delete of {user} was not retried"))?;
                let deleted = apply_writes(&mut db, &plan.writes, &refused)?;
                outcomes.push(plan.outcomes.first().map(|p| p.resolve(&deleted)));
                log.push((made, plan.writes));
            }
            Op::AppEdit {
                user,
                address,
                updated_ms,
            } => {
                planner_batch(&mut db, &batch, options, &refused, &mut outcomes, log)?;
                batch.clear();
                app_edit(&mut db, &user, &address, updated_ms);
            }
        }
    }
    planner_batch(&mut db, &batch, options, &refused, &mut outcomes, log)?;
    Ok((db, outcomes))
}

fn check(case: &Case) -> Result<(), TestCaseError> {
    let model = run_model(case).map_err(|e| TestCaseError::fail(format!("model: {e}")))?;
    let runs = [
        ("one delivery per plan", run_planner(case, |_| true)),
        (
            "the whole history as one batch",
            run_planner(case, |_| false),
        ),
        (
            "batches cut at random",
            run_planner(case, |i| case.cuts[i % case.cuts.len()]),
        ),
    ];
    for (how, run) in runs {
        let planned = run.map_err(|e| TestCaseError::fail(format!("{how}: {e}")))?;
        prop_assert_eq!(&planned.1, &model.1, "outcomes, {}", how);
        prop_assert_eq!(&planned.0.rows, &model.0.rows, "rows, {}", how);
        prop_assert_eq!(&planned.0.books, &model.0.books, "bookkeeping, {}", how);
        prop_assert_eq!(
            &planned.0.deliveries,
            &model.0.deliveries,
            "deliveries, {}",
            how
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 3000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_planner_agrees_with_a_model_of_the_rules_one_by_one_and_in_batches(case in case()) {
        check(&case)?;
    }
}

/// The property above proves nothing if its histories never reach a rule: over a fixed
/// sample of them, every outcome and every kind of write occurs, in batches as one by one.
#[test]
fn the_generated_histories_reach_every_rule() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let mut seen: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut note = |what: &'static str, yes: bool| {
        if yes {
            *seen.entry(what).or_default() += 1;
        }
    };
    for _ in 0..1_000 {
        let case = case().new_tree(&mut runner).expect("a history").current();
        let (db, outcomes) = run_model(&case).expect("the model runs");
        for outcome in outcomes.iter().flatten() {
            note(outcome.as_str(), true);
        }
        let at_end = |suffix: &str| db.rows.values().any(|r| r.address.ends_with(suffix));
        note("a row displaced at the end", at_end("@displaced.invalid"));
        note(
            "a row without email at the end",
            at_end("@no-email.invalid"),
        );
        note(
            "a tombstoned row kept",
            db.rows
                .keys()
                .any(|u| db.books.get(u).is_some_and(|b| b.deleted)),
        );
        let cuts: [&dyn Fn(usize) -> bool; 2] = [&|_| true, &|_| false];
        for cut in cuts {
            let mut log = Vec::new();
            run_planner_logged(&case, cut, &mut log).expect("the planner runs");
            for (made, w) in &log {
                let written = |u: &String| w.bookkeeping.iter().any(|b| b.user_id == *u);
                note(
                    "a made user's row inserted, its bookkeeping not written again",
                    made.iter()
                        .any(|u| !written(u) && w.rows.iter().any(|r| r.id == *u && !r.exists)),
                );
                note("a made user's guess corrected", made.iter().any(written));
                note(
                    "a touched user's unchanged bookkeeping not written",
                    w.deletes.iter().any(|u| !written(u)),
                );
                let displaced_move = |(_, a): &(String, String)| a.ends_with("@displaced.invalid");
                note("a row vacated", !w.vacate.is_empty());
                note(
                    "an address handed back",
                    w.moves.iter().any(|(_, a)| !a.ends_with(".invalid")),
                );
                note("a holder displaced", w.moves.iter().any(displaced_move));
                note(
                    "a claimant displaced",
                    w.rows
                        .iter()
                        .any(|r| r.address.ends_with("@displaced.invalid")),
                );
                note(
                    "a row only the application wrote displaced",
                    w.moves.iter().any(|m| displaced_move(m) && m.0 == "user_e"),
                );
                note(
                    "a role reset to USER",
                    w.rows.iter().any(|r| r.role == Some(Role::User))
                        && w.bookkeeping.iter().any(|b| !b.role_from_webhook),
                );
                note(
                    "a role named",
                    w.rows.iter().any(|r| r.role == Some(Role::Admin)),
                );
                note("a role left alone", w.rows.iter().any(|r| r.role.is_none()));
                note("a delete", !w.deletes.is_empty());
                note(
                    "a delete hanging on the foreign keys twice",
                    w.record
                        .iter()
                        .any(|r| r.if_refused.is_some() && r.outcome == Outcome::Stale),
                );
                note("a retry noted", w.bookkeeping.iter().any(|b| b.attempted));
            }
        }
    }
    for what in [
        "applied",
        "duplicate",
        "stale",
        "ignored",
        "deferred",
        "a row displaced at the end",
        "a row without email at the end",
        "a tombstoned row kept",
        "a row vacated",
        "an address handed back",
        "a holder displaced",
        "a claimant displaced",
        "a row only the application wrote displaced",
        "a role reset to USER",
        "a role named",
        "a role left alone",
        "a delete",
        "a delete hanging on the foreign keys twice",
        "a retry noted",
        "a made user's row inserted, its bookkeeping not written again",
        "a made user's guess corrected",
        "a touched user's unchanged bookkeeping not written",
    ] {
        let count = seen.get(what).copied().unwrap_or(0);
        assert!(count >= 10, "{what}: {count} times\n{seen:#?}");
    }
}
