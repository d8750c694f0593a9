//! The planner alone, on the shapes of the bulk paths: `cargo bench --bench plan_speed`.
//!
//! Prints the time per delivery of [`plan`] over a batch of 10,000 users, median of several
//! rounds, for a backfill of new users (the snapshot as a backend reads it when every user's
//! bookkeeping row is made now), a backfill over users already applied (each a newer
//! version), and a replay of new users (deliveries recorded by id). No database: what it
//! measures is the planner's own work per delivery, which a bulk path's one SQLite writer
//! pays in full.

use std::time::{Duration, Instant};

use clerk_sync::db::port::{AppRow, Bookkeeping, Snapshot};
use clerk_sync::domain::{Event, MessageId};
use clerk_sync::sync::plan::{plan, request};
use clerk_sync::sync::{Addresses, Dedup, SyncOptions};

const USERS: usize = 10_000;
const ROUNDS: usize = 15;

/// A user id of Clerk's shape (`user_` and 27 base-62 characters), distinct for each `n` and
/// in no particular order, as Clerk's are.
fn user_id(n: usize) -> String {
    const DIGITS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut x = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5DEE_CE66_D1CE_4E5B;
    let mut id = String::from("user_");
    for i in 0..27 {
        if i % 9 == 0 {
            x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9).rotate_left(31) ^ n as u64;
        }
        id.push(char::from(DIGITS[(x % 62) as usize]));
        x /= 62;
    }
    id
}

fn user_object(n: usize, updated_at: i64) -> String {
    serde_json::json!({
        "object": "user",
        "id": user_id(n),
        "created_at": 1_700_000_000_000_i64,
        "updated_at": updated_at,
        "first_name": "Ada",
        "last_name": format!("Lovelace {n}"),
        "username": null,
        "image_url": "https://img.clerk.com/x",
        "primary_email_address_id": "idn_1",
        "email_addresses": [{"id": "idn_1", "email_address": format!("user{n}@example.com")}],
        "public_metadata": if n % 10 == 0 { serde_json::json!({"role": "admin"}) } else { serde_json::json!({}) },
    })
    .to_string()
}

fn batch(updated_at: i64) -> Vec<(MessageId, Event)> {
    (0..USERS)
        .map(|n| {
            let id = MessageId::parse(&format!("msg_{}", &user_id(n)[5..])).expect("a valid id");
            let event = Event::from_api_user(&user_object(n, updated_at)).expect("a valid user");
            (id, event)
        })
        .collect()
}

/// What a backend reads for `batch`: every user's bookkeeping made now with its initial
/// values, when `existing` is false; else every user applied at an older version, with its
/// row holding its address.
fn snapshot(batch: &[(MessageId, Event)], options: SyncOptions, existing: bool) -> Snapshot {
    let request = request(batch, options);
    let mut snapshot = Snapshot {
        addresses: request.claims.iter().cloned().collect(),
        ..Snapshot::default()
    };
    for (user, initial) in request.users.iter().zip(&request.initial) {
        if existing {
            let older = Bookkeeping {
                version: initial.version - 1_000,
                ..initial.clone()
            };
            snapshot.users.insert(user.clone(), older);
            snapshot.rows.insert(
                user.clone(),
                AppRow {
                    address: initial.email.clone(),
                    updated_ms: initial.version - 1_000,
                },
            );
        } else {
            snapshot.users.insert(user.clone(), initial.clone());
            snapshot.made.insert(user.clone());
        }
    }
    snapshot
}

fn measure(name: &str, batch: &[(MessageId, Event)], options: SyncOptions, existing: bool) {
    let snapshot = snapshot(batch, options, existing);
    let mut times: Vec<Duration> = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            let planned = plan(batch, &snapshot, options).expect("a complete snapshot");
            let took = start.elapsed();
            assert_eq!(planned.outcomes.len(), batch.len());
            assert_eq!(planned.writes.rows.len(), batch.len());
            drop(planned);
            took
        })
        .collect();
    times.sort_unstable();
    let median = times[ROUNDS / 2];
    println!(
        "{name:<28} {:>8.0} ns a delivery (median of {ROUNDS}; fastest {:.0})",
        median.as_nanos() as f64 / batch.len() as f64,
        times[0].as_nanos() as f64 / batch.len() as f64
    );
}

fn main() {
    let backfill = SyncOptions {
        dedup: Dedup::ByVersion,
        addresses: Addresses::Unique,
        ..SyncOptions::default()
    };
    let replay = SyncOptions {
        dedup: Dedup::ById,
        ..backfill
    };
    let versions = batch(1_716_883_200_000);
    measure("backfill, new users", &versions, backfill, false);
    measure("backfill, applied users", &versions, backfill, true);
    measure("replay, new users", &versions, replay, false);
}
