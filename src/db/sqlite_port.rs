//! The port on SQLite: read a snapshot, write the planned changes (see [`super::port`]).
//! SQLite serialises writers, so the caller's `BEGIN IMMEDIATE` transaction is the only
//! lock. Every statement is built with diesel's query builder, so that it is prepared once
//! per connection and reused (raw SQL would be parsed again each time).

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};

use super::port::{moving, Bookkeeping, Deleted, Request, Snapshot, StoredRow, Writes};

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
}

use schema::app_user as u;
use schema::clerk_sync_deliveries as d;
use schema::clerk_sync_users as s;

/// Prisma's SQLite date format.
pub fn prisma_date(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.3f+00:00").to_string()
}

/// A date the application wrote, in ms (0 when unreadable).
fn app_date_ms(text: &str) -> i64 {
    let parsed = DateTime::parse_from_rfc3339(text)
        .map(|d| d.with_timezone(&Utc))
        .or_else(|_| {
            NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f").map(|n| n.and_utc())
        });
    parsed.map(|d| d.timestamp_millis()).unwrap_or(0)
}

type BookkeepingColumns = (
    s::user_id,
    s::version,
    s::digest,
    s::email,
    diesel::dsl::IsNotNull<s::deleted_at>,
    s::delete_pending,
    s::role_from_webhook,
);

fn bookkeeping() -> BookkeepingColumns {
    (
        s::user_id,
        s::version,
        s::digest,
        s::email,
        s::deleted_at.is_not_null(),
        s::delete_pending,
        s::role_from_webhook,
    )
}

fn note_row(snapshot: &mut Snapshot, (id, address, updated_at): (String, String, String)) {
    let updated_ms = app_date_ms(&updated_at);
    snapshot.add_row(id, address, updated_ms);
}

/// Up to this many users, the snapshot is read key by key (statements prepared once); beyond
/// it, a set of keys at a time.
const FEW: usize = 8;

/// Largest number of keys or rows per statement, well under SQLite's bound on parameters.
const CHUNK: usize = 2_000;

/// Makes the request's bookkeeping rows where absent, with their initial values; notes the
/// ones made.
fn make_users(
    conn: &mut SqliteConnection,
    request: &Request,
    snapshot: &mut Snapshot,
) -> QueryResult<()> {
    let new_user = Bookkeeping::new_user();
    for (at, user) in request.users.iter().enumerate() {
        let initial = request.initial.get(at).unwrap_or(&new_user);
        let made = diesel::insert_into(s::table)
            .values((
                s::user_id.eq(user),
                s::version.eq(initial.version),
                s::digest.eq(&initial.digest),
                s::email.eq(initial.email.as_deref()),
                s::role_from_webhook.eq(initial.role_from_webhook),
            ))
            .on_conflict(s::user_id)
            .do_nothing()
            .execute(conn)?;
        if made > 0 {
            snapshot.made.insert(user.clone());
        }
    }
    Ok(())
}

/// [`read`] for many users: the same snapshot, a set of keys per statement.
fn read_many(conn: &mut SqliteConnection, request: &Request) -> QueryResult<Snapshot> {
    let mut snapshot = Snapshot::default();
    make_users(conn, request, &mut snapshot)?;
    let mut addresses: Vec<String> = request.claims.clone();
    for users in request.users.chunks(CHUNK) {
        let rows: Vec<StoredRow> = s::table
            .filter(s::user_id.eq_any(users))
            .select(bookkeeping())
            .load(conn)?;
        for row in rows {
            addresses.extend(row.3.clone());
            snapshot.add_bookkeeping(row);
        }
        let rows: Vec<(String, String, String)> = u::table
            .filter(u::id.eq_any(users))
            .select((u::id, u::mail_address, u::updated_at))
            .load(conn)?;
        for row in rows {
            addresses.push(row.1.clone());
            note_row(&mut snapshot, row);
        }
    }
    addresses.sort_unstable();
    addresses.dedup();
    let (mut holders, mut claimants) = (Vec::new(), Vec::new());
    for chunk in addresses.chunks(CHUNK) {
        let rows: Vec<(String, String, String)> = u::table
            .filter(u::mail_address.eq_any(chunk))
            .select((u::id, u::mail_address, u::updated_at))
            .load(conn)?;
        for row in rows {
            if !snapshot.users.contains_key(&row.0) {
                holders.push(row.0.clone());
            }
            note_row(&mut snapshot, row);
        }
        let rows: Vec<StoredRow> = s::table
            .filter(s::email.eq_any(chunk))
            .select(bookkeeping())
            .load(conn)?;
        for row in rows {
            if !snapshot.rows.contains_key(&row.0) {
                claimants.push(row.0.clone());
            }
            if !snapshot.users.contains_key(&row.0) {
                snapshot.add_bookkeeping(row);
            }
        }
    }
    for chunk in holders.chunks(CHUNK) {
        let rows: Vec<StoredRow> = s::table
            .filter(s::user_id.eq_any(chunk))
            .select(bookkeeping())
            .load(conn)?;
        for row in rows {
            snapshot.add_bookkeeping(row);
        }
    }
    for chunk in claimants.chunks(CHUNK) {
        let rows: Vec<(String, String, String)> = u::table
            .filter(u::id.eq_any(chunk))
            .select((u::id, u::mail_address, u::updated_at))
            .load(conn)?;
        for row in rows {
            note_row(&mut snapshot, row);
        }
    }
    snapshot.addresses = addresses.into_iter().collect();
    for ids in request.ids.chunks(CHUNK) {
        let recorded: Vec<String> = d::table
            .filter(d::svix_id.eq_any(ids))
            .select(d::svix_id)
            .load(conn)?;
        snapshot.recorded.extend(recorded);
    }
    Ok(snapshot)
}

/// Makes the request's bookkeeping rows where absent and reads the snapshot (the caller
/// holds the transaction).
pub fn read(conn: &mut SqliteConnection, request: &Request) -> QueryResult<Snapshot> {
    if request.users.len() > FEW {
        return read_many(conn, request);
    }
    let mut snapshot = Snapshot::default();
    make_users(conn, request, &mut snapshot)?;
    let mut addresses: Vec<String> = request.claims.clone();
    for user in &request.users {
        let row: StoredRow = s::table.find(user).select(bookkeeping()).first(conn)?;
        addresses.extend(row.3.clone());
        snapshot.add_bookkeeping(row);
        let row: Option<(String, String, String)> = u::table
            .find(user)
            .select((u::id, u::mail_address, u::updated_at))
            .first(conn)
            .optional()?;
        if let Some(row) = row {
            addresses.push(row.1.clone());
            note_row(&mut snapshot, row);
        }
    }
    addresses.sort_unstable();
    addresses.dedup();
    for address in &addresses {
        let holder: Option<(String, String, String)> = u::table
            .filter(u::mail_address.eq(address))
            .select((u::id, u::mail_address, u::updated_at))
            .first(conn)
            .optional()?;
        if let Some(holder) = holder {
            if !snapshot.users.contains_key(&holder.0) {
                let bookkeeping: Option<StoredRow> = s::table
                    .find(&holder.0)
                    .select(bookkeeping())
                    .first(conn)
                    .optional()?;
                if let Some(row) = bookkeeping {
                    snapshot.add_bookkeeping(row);
                }
            }
            note_row(&mut snapshot, holder);
        }
        let claimants: Vec<StoredRow> = s::table
            .filter(s::email.eq(address))
            .select(bookkeeping())
            .load(conn)?;
        for claimant in claimants {
            if !snapshot.rows.contains_key(&claimant.0) {
                let row: Option<(String, String, String)> = u::table
                    .find(&claimant.0)
                    .select((u::id, u::mail_address, u::updated_at))
                    .first(conn)
                    .optional()?;
                if let Some(row) = row {
                    note_row(&mut snapshot, row);
                }
            }
            if !snapshot.users.contains_key(&claimant.0) {
                snapshot.add_bookkeeping(claimant);
            }
        }
    }
    snapshot.addresses = addresses.into_iter().collect();
    for id in &request.ids {
        let recorded: Option<String> = d::table
            .find(id)
            .select(d::svix_id)
            .first(conn)
            .optional()?;
        snapshot.recorded.extend(recorded);
    }
    Ok(snapshot)
}

/// Writes `writes` in the port's order (the caller holds the transaction); answers which
/// deletes went through.
pub fn write(conn: &mut SqliteConnection, writes: &Writes) -> QueryResult<Deleted> {
    let now = prisma_date(Utc::now());
    for b in &writes.bookkeeping {
        diesel::update(s::table.find(&b.user_id))
            .set((
                s::version.eq(b.version),
                s::digest.eq(&b.digest),
                s::email.eq(b.email.as_deref()),
                s::role_from_webhook.eq(b.role_from_webhook),
            ))
            .execute(conn)?;
        if b.tombstone {
            diesel::update(s::table.find(&b.user_id).filter(s::deleted_at.is_null()))
                .set(s::deleted_at.eq(&now))
                .execute(conn)?;
        }
        if b.attempted {
            diesel::update(s::table.find(&b.user_id))
                .set(s::delete_attempted_at.eq(&now))
                .execute(conn)?;
        }
    }
    for id in &writes.vacate {
        diesel::update(u::table.find(id))
            .set(u::mail_address.eq(moving(id)))
            .execute(conn)?;
    }
    let mut new_rows = Vec::new();
    for row in &writes.rows {
        let (created, updated) = (prisma_date(row.created_at), prisma_date(row.updated_at));
        if !row.exists {
            let role = row.role.ok_or_else(|| {
                DieselError::QueryBuilderError("a new row was planned without a role".into())
            })?;
            new_rows.push((
                u::id.eq(&row.id),
                u::name.eq(row.name.as_deref()),
                u::mail_address.eq(&row.address),
                u::role.eq(role.as_db()),
                u::created_at.eq(created),
                u::updated_at.eq(updated),
            ));
            continue;
        }
        // A role of none leaves the row's own. (SQLite's one writer holds the table since the
        // read: the row is there.)
        let target = u::table.find(&row.id);
        let fields = (
            u::name.eq(row.name.as_deref()),
            u::mail_address.eq(&row.address),
            u::created_at.eq(&created),
            u::updated_at.eq(&updated),
        );
        match row.role {
            Some(role) => diesel::update(target)
                .set((fields, u::role.eq(role.as_db())))
                .execute(conn)?,
            None => diesel::update(target).set(fields).execute(conn)?,
        };
    }
    for rows in new_rows.chunks(CHUNK) {
        diesel::insert_into(u::table).values(rows).execute(conn)?;
    }
    for (id, address) in &writes.moves {
        diesel::update(u::table.find(id))
            .set(u::mail_address.eq(address))
            .execute(conn)?;
    }
    let mut deleted = Deleted::default();
    for user in &writes.deletes {
        // A savepoint, so that a refused delete leaves the rest of the transaction intact.
        let attempt = conn.transaction(|c| diesel::delete(u::table.find(user)).execute(c));
        let done = match attempt {
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
        if done {
            deleted.0.insert(user.clone());
        }
    }
    let records: Vec<_> = writes
        .record
        .iter()
        .map(|record| {
            let refused = record
                .user_id
                .as_ref()
                .is_some_and(|user| !deleted.0.contains(user));
            let outcome = match record.if_refused {
                Some(instead) if refused => instead,
                _ => record.outcome,
            };
            (
                d::svix_id.eq(&record.svix_id),
                d::event_type.eq(&record.event_type),
                d::user_id.eq(record.user_id.as_deref()),
                d::outcome.eq(outcome.as_str()),
                d::received_at.eq(&now),
            )
        })
        .collect();
    for chunk in records.chunks(CHUNK) {
        diesel::insert_into(d::table).values(chunk).execute(conn)?;
    }
    Ok(deleted)
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
