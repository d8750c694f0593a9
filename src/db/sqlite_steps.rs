//! The steps of one delivery on SQLite, in diesel's query builder so that every statement
//! is prepared once per connection and reused (raw SQL would be parsed again each time).
//! They mirror `clerk_sync.apply_delivery` in `migrations/postgres` step for step; the rules
//! are documented in `crate::sync`. SQLite serialises writers, so no locks are taken here:
//! the caller runs each delivery (or batch) in one `BEGIN IMMEDIATE` transaction.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::upsert::excluded;

use crate::domain::{ClerkUserId, Event, MessageId, Role, UserChange};
use crate::sync::{Outcome, SyncOptions};

mod schema {
    diesel::table! {
        /// The application's table, as Prisma created it on SQLite.
        #[sql_name = "User"]
        app_user (id) {
            id -> Text,
            name -> Nullable<Text>,
            mail_address -> Text,
            role -> Text,
            #[sql_name = "createdAt"]
            created_at -> Text,
            #[sql_name = "updatedAt"]
            updated_at -> Text,
        }
    }

    diesel::table! {
        clerk_sync_deliveries (svix_id) {
            svix_id -> Text,
            event_type -> Text,
            user_id -> Nullable<Text>,
            outcome -> Text,
            received_at -> Text,
        }
    }

    diesel::table! {
        clerk_sync_users (user_id) {
            user_id -> Text,
            version -> BigInt,
            digest -> Text,
            email -> Nullable<Text>,
            deleted_at -> Nullable<Text>,
            delete_pending -> Bool,
            delete_attempted_at -> Nullable<Text>,
            role_from_webhook -> Bool,
        }
    }

    diesel::allow_tables_to_appear_in_same_query!(app_user, clerk_sync_users);
}

use schema::app_user as u;

/// Inserts application rows, or updates them; the role only when `$set_role` (else a new row
/// gets what `$values` says and an existing one keeps its own). A macro: one row and many
/// are different statement types.
macro_rules! upsert_rows {
    ($conn:expr, $values:expr, $set_role:expr) => {{
        let upsert = diesel::insert_into(u::table)
            .values($values)
            .on_conflict(u::id)
            .do_update();
        if $set_role {
            upsert
                .set((
                    u::name.eq(excluded(u::name)),
                    u::mail_address.eq(excluded(u::mail_address)),
                    u::role.eq(excluded(u::role)),
                    u::created_at.eq(excluded(u::created_at)),
                    u::updated_at.eq(excluded(u::updated_at)),
                ))
                .execute($conn)?;
        } else {
            upsert
                .set((
                    u::name.eq(excluded(u::name)),
                    u::mail_address.eq(excluded(u::mail_address)),
                    u::created_at.eq(excluded(u::created_at)),
                    u::updated_at.eq(excluded(u::updated_at)),
                ))
                .execute($conn)?;
        }
    }};
}
use schema::clerk_sync_deliveries as d;
use schema::clerk_sync_users as s;

/// Prisma's SQLite date format.
pub fn prisma_date(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.3f+00:00").to_string()
}

/// A date the application wrote, to the second, in ms (0 when unreadable).
fn app_date_ms(text: &str) -> i64 {
    let parsed = DateTime::parse_from_rfc3339(text)
        .map(|d| d.with_timezone(&Utc))
        .or_else(|_| {
            NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f").map(|n| n.and_utc())
        });
    parsed.map(|d| d.timestamp() * 1000).unwrap_or(0)
}

struct State {
    version: i64,
    digest: String,
    email: Option<String>,
    deleted: bool,
    delete_pending: bool,
    role_from_webhook: bool,
}

/// Applies one delivery (the caller holds the transaction).
pub fn apply(
    conn: &mut SqliteConnection,
    id: &MessageId,
    event: &Event,
    options: SyncOptions,
) -> QueryResult<Outcome> {
    let inserted = diesel::insert_into(d::table)
        .values((
            d::svix_id.eq(id.as_str()),
            d::event_type.eq(event.event_type()),
            d::user_id.eq(event.user_id().map(ClerkUserId::as_str)),
            d::outcome.eq("pending"),
            d::received_at.eq(prisma_date(Utc::now())),
        ))
        .on_conflict(d::svix_id)
        .do_nothing()
        .execute(conn)?;
    if inserted == 0 {
        return Ok(Outcome::Duplicate);
    }
    let outcome = match event {
        Event::Ignored { .. } => Outcome::Ignored,
        Event::Upsert { change, .. } => upsert(conn, change, options)?,
        Event::Delete { id: user } => delete(conn, user)?,
    };
    diesel::update(d::table.find(id.as_str()))
        .set(d::outcome.eq(outcome.as_str()))
        .execute(conn)?;
    Ok(outcome)
}

fn state(conn: &mut SqliteConnection, user: &str) -> QueryResult<State> {
    diesel::insert_into(s::table)
        .values((s::user_id.eq(user), s::version.eq(-1_i64), s::digest.eq("")))
        .on_conflict(s::user_id)
        .do_nothing()
        .execute(conn)?;
    let (version, digest, email, deleted_at, delete_pending, role_from_webhook) = s::table
        .find(user)
        .select((
            s::version,
            s::digest,
            s::email,
            s::deleted_at,
            s::delete_pending,
            s::role_from_webhook,
        ))
        .first::<(i64, String, Option<String>, Option<String>, bool, bool)>(conn)?;
    Ok(State {
        version,
        digest,
        email,
        deleted: deleted_at.is_some(),
        delete_pending,
        role_from_webhook,
    })
}

fn displaced(user: &str) -> String {
    format!("{user}@displaced.invalid")
}

/// Moves `holder` off `address` to its placeholder, if it still holds it.
fn displace(conn: &mut SqliteConnection, holder: &str, address: &str) -> QueryResult<usize> {
    diesel::update(
        u::table
            .filter(u::id.eq(holder))
            .filter(u::mail_address.eq(address)),
    )
    .set(u::mail_address.eq(displaced(holder)))
    .execute(conn)
}

/// The address the user's row holds now, if it has a row.
fn row_address(conn: &mut SqliteConnection, user: &str) -> QueryResult<Option<String>> {
    u::table
        .find(user)
        .select(u::mail_address)
        .first(conn)
        .optional()
}

fn upsert(
    conn: &mut SqliteConnection,
    change: &UserChange,
    options: SyncOptions,
) -> QueryResult<Outcome> {
    let user = change.id.as_str();
    let current = state(conn, user)?;
    if current.deleted
        || (change.version, change.digest.as_str()) <= (current.version, current.digest.as_str())
    {
        return Ok(Outcome::Stale);
    }
    if change.email.is_none() && options.skip_users_without_email {
        return Ok(Outcome::Ignored);
    }
    let email = change.email.as_ref().map(|e| e.as_str());
    let row_address = row_address(conn, user)?;
    // The role: public_metadata.role when named; when not, a role an earlier webhook set goes
    // back to USER, and one the application set is left alone.
    let role = match change.role {
        Some(role) => Some(role.as_db()),
        None if current.role_from_webhook => Some(Role::User.as_db()),
        None => None,
    };
    diesel::update(s::table.find(user))
        .set((
            s::version.eq(change.version),
            s::digest.eq(&change.digest),
            s::email.eq(email),
            s::role_from_webhook.eq(change.role.is_some()),
        ))
        .execute(conn)?;

    let address = match email {
        None => format!("{user}@no-email.invalid"),
        Some(email) => claim(conn, change, email)?,
    };

    let values = (
        u::id.eq(user),
        u::name.eq(change.name.as_deref()),
        u::mail_address.eq(&address),
        u::role.eq(role.unwrap_or(Role::User.as_db())),
        u::created_at.eq(prisma_date(change.created_at)),
        u::updated_at.eq(prisma_date(change.updated_at)),
    );
    upsert_rows!(conn, values, role.is_some());

    // Addresses this user let go of return to their newest remaining claimant.
    let mut released: Vec<&str> = [current.email.as_deref(), row_address.as_deref()]
        .into_iter()
        .flatten()
        .filter(|a| *a != address)
        .collect();
    released.dedup();
    for old in released {
        settle_address(conn, old)?;
    }
    Ok(Outcome::Applied)
}

/// Settles who gets `email` between the incoming user and its current holder, if any;
/// returns the address the incoming user's row takes.
fn claim(conn: &mut SqliteConnection, change: &UserChange, email: &str) -> QueryResult<String> {
    let user = change.id.as_str();
    let holder = u::table
        .left_join(s::table.on(s::user_id.eq(u::id)))
        .filter(u::mail_address.eq(email))
        .filter(u::id.ne(user))
        .select((
            u::id,
            u::updated_at,
            s::version.nullable(),
            s::deleted_at.nullable(),
            s::email.nullable(),
        ))
        .first::<(String, String, Option<i64>, Option<String>, Option<String>)>(conn)
        .optional()?;
    let Some((holder, updated_at, version, deleted_at, claim)) = holder else {
        return Ok(email.to_owned());
    };
    // A holder clerk-sync never applied a version for (the application's own row) is as new
    // as its "updatedAt", to the second on both backends.
    let known = version.is_some_and(|v| v >= 0);
    let holder_version = match version {
        Some(v) if v >= 0 => v,
        _ => app_date_ms(&updated_at),
    };
    let holder_loses = deleted_at.is_some()
        || (known && claim.as_deref() != Some(email))
        || (holder_version, holder.as_str()) < (change.version, user);
    if holder_loses {
        displace(conn, &holder, email)?;
        Ok(email.to_owned())
    } else {
        Ok(displaced(user))
    }
}

fn delete(conn: &mut SqliteConnection, user: &ClerkUserId) -> QueryResult<Outcome> {
    let current = state(conn, user.as_str())?;
    if current.deleted && !current.delete_pending {
        return Ok(Outcome::Stale);
    }
    if !current.deleted {
        diesel::update(s::table.find(user.as_str()))
            .set(s::deleted_at.eq(prisma_date(Utc::now())))
            .execute(conn)?;
    }
    Ok(if finish_delete(conn, user.as_str())? {
        Outcome::Applied
    } else {
        Outcome::Deferred
    })
}

/// Deletes a tombstoned user's row; false when the application's foreign keys refuse.
pub fn finish_delete(conn: &mut SqliteConnection, user: &str) -> QueryResult<bool> {
    let address = row_address(conn, user)?;
    // A savepoint, so that a refused delete leaves the rest of the transaction intact.
    let deleted = conn.transaction(|c| diesel::delete(u::table.find(user)).execute(c));
    let done = match deleted {
        Ok(_) => true,
        // SQLite reports the violation with the plain (not extended) error code, so diesel
        // does not classify it; its message is fixed by SQLite.
        Err(DieselError::DatabaseError(kind, info))
            if kind == DatabaseErrorKind::ForeignKeyViolation
                || info.message().contains("FOREIGN KEY constraint failed") =>
        {
            false
        }
        Err(other) => return Err(other),
    };
    diesel::update(s::table.find(user))
        .set(s::delete_pending.eq(!done))
        .execute(conn)?;
    if let Some(address) = address {
        settle_address(conn, &address)?;
    }
    Ok(done)
}

/// One retry of a deferred delete (the caller holds the transaction).
pub fn retry_delete(conn: &mut SqliteConnection, user: &str) -> QueryResult<Option<bool>> {
    let pending: Option<bool> = s::table
        .find(user)
        .select(s::delete_pending)
        .first(conn)
        .optional()?;
    if pending != Some(true) {
        return Ok(None);
    }
    diesel::update(s::table.find(user))
        .set(s::delete_attempted_at.eq(prisma_date(Utc::now())))
        .execute(conn)?;
    finish_delete(conn, user).map(Some)
}

/// Deferred deletes, the longest-waiting first (SQLite sorts NULL first).
pub fn pending_deletes(conn: &mut SqliteConnection, limit: i64) -> QueryResult<Vec<String>> {
    s::table
        .filter(s::delete_pending.eq(true))
        .order((s::delete_attempted_at.asc(), s::user_id.asc()))
        .select(s::user_id)
        .limit(limit)
        .load(conn)
}

/// Hands `address` to its newest live claimant once nobody live holds it.
fn settle_address(conn: &mut SqliteConnection, address: &str) -> QueryResult<()> {
    let best: Option<String> = s::table
        .inner_join(u::table.on(u::id.eq(s::user_id)))
        .filter(s::email.eq(address))
        .filter(s::deleted_at.is_null())
        .filter(s::version.ge(0))
        .filter(u::mail_address.ne(address))
        .order((s::version.desc(), s::user_id.desc()))
        .select(s::user_id)
        .first(conn)
        .optional()?;
    let Some(best) = best else { return Ok(()) };
    let holder = u::table
        .left_join(s::table.on(s::user_id.eq(u::id)))
        .filter(u::mail_address.eq(address))
        .select((u::id, s::deleted_at.nullable()))
        .first::<(String, Option<String>)>(conn)
        .optional()?;
    if let Some((holder, deleted_at)) = holder {
        if deleted_at.is_none() {
            return Ok(());
        }
        displace(conn, &holder, address)?;
    }
    diesel::update(u::table.find(&best))
        .set(u::mail_address.eq(address))
        .execute(conn)?;
    Ok(())
}

/// Largest number of rows per multi-row statement, well under SQLite's bound on parameters.
const CHUNK: usize = 2_000;

/// Applies a batch (the caller holds the transaction): the plan of [`crate::sync::batch`]
/// written with a few multi-row statements, and the deliveries it leaves, one by one in
/// batch order. SQLite's one writer at a time stands in for the locks PostgreSQL takes.
pub fn apply_batch(
    conn: &mut SqliteConnection,
    batch: &[(MessageId, Event)],
    options: SyncOptions,
) -> QueryResult<Vec<Outcome>> {
    use crate::sync::batch::{self, Snapshot, Stored};

    let lookups = batch::lookups(batch);
    let mut snapshot = Snapshot::default();
    for users in lookups.users.chunks(CHUNK) {
        let rows = s::table
            .filter(s::user_id.eq_any(users))
            .select((
                s::user_id,
                s::version,
                s::digest,
                s::email,
                s::deleted_at.is_not_null(),
                s::role_from_webhook,
            ))
            .load::<(String, i64, String, Option<String>, bool, bool)>(conn)?;
        for (user, version, digest, email, deleted, role_from_webhook) in rows {
            let stored = Stored {
                version,
                digest,
                email,
                deleted,
                role_from_webhook,
            };
            snapshot.users.insert(user, stored);
        }
        let rows = u::table
            .filter(u::id.eq_any(users))
            .select((u::id, u::mail_address))
            .load::<(String, String)>(conn)?;
        snapshot.rows.extend(rows);
    }
    let recorded_ids = match options.dedup {
        crate::sync::Dedup::ById => lookups.ids.as_slice(),
        crate::sync::Dedup::ByVersion => &[],
    };
    for ids in recorded_ids.chunks(CHUNK) {
        let recorded = d::table
            .filter(d::svix_id.eq_any(ids))
            .select(d::svix_id)
            .load::<String>(conn)?;
        snapshot.recorded.extend(recorded);
    }
    for addresses in batch::addresses(batch, &snapshot).chunks(CHUNK) {
        let holders = u::table
            .filter(u::mail_address.eq_any(addresses))
            .select((u::mail_address, u::id))
            .load::<(String, String)>(conn)?;
        for (address, holder) in holders {
            snapshot.add_holder(address, holder);
        }
        let claimants = s::table
            .filter(s::email.eq_any(addresses))
            .select((s::email.assume_not_null(), s::user_id))
            .load::<(String, String)>(conn)?;
        for (address, claimant) in claimants {
            snapshot.add_claimant(address, claimant);
        }
    }

    let plan = batch::plan(batch, &snapshot, options);
    for rows in plan.bookkeeping.chunks(CHUNK) {
        let values: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    s::user_id.eq(&r.user_id),
                    s::version.eq(r.version),
                    s::digest.eq(&r.digest),
                    s::email.eq(r.email.as_deref()),
                    s::role_from_webhook.eq(r.role_from_webhook),
                )
            })
            .collect();
        diesel::insert_into(s::table)
            .values(values)
            .on_conflict(s::user_id)
            .do_update()
            .set((
                s::version.eq(excluded(s::version)),
                s::digest.eq(excluded(s::digest)),
                s::email.eq(excluded(s::email)),
                s::role_from_webhook.eq(excluded(s::role_from_webhook)),
            ))
            .execute(conn)?;
    }
    for set_role in [true, false] {
        let part: Vec<&batch::Row> = plan
            .rows
            .iter()
            .filter(|r| r.role.is_some() == set_role)
            .collect();
        for rows in part.chunks(CHUNK) {
            let values: Vec<_> = rows
                .iter()
                .map(|r| {
                    (
                        u::id.eq(r.change.id.as_str()),
                        u::name.eq(r.change.name.as_deref()),
                        u::mail_address.eq(r.address.as_str()),
                        u::role.eq(r.role.unwrap_or(Role::User).as_db()),
                        u::created_at.eq(prisma_date(r.change.created_at)),
                        u::updated_at.eq(prisma_date(r.change.updated_at)),
                    )
                })
                .collect();
            upsert_rows!(conn, values, set_role);
        }
    }
    let received_at = prisma_date(Utc::now());
    for indices in plan.record.chunks(CHUNK) {
        let values: Vec<_> = indices
            .iter()
            .map(|&i| {
                let (id, event) = &batch[i];
                (
                    d::svix_id.eq(id.as_str()),
                    d::event_type.eq(event.event_type()),
                    d::user_id.eq(event.user_id().map(ClerkUserId::as_str)),
                    d::outcome.eq(plan.outcomes[i].map_or("pending", Outcome::as_str)),
                    d::received_at.eq(received_at.as_str()),
                )
            })
            .collect();
        diesel::insert_into(d::table).values(values).execute(conn)?;
    }

    let mut outcomes = plan.outcomes;
    for &i in &plan.one_by_one {
        let (id, event) = &batch[i];
        outcomes[i] = Some(apply(conn, id, event, options)?);
    }
    outcomes
        .into_iter()
        .map(|o| {
            o.ok_or_else(|| {
                DieselError::QueryBuilderError("a delivery of the batch was not decided".into())
            })
        })
        .collect()
}
