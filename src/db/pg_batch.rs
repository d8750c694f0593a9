//! A batch on PostgreSQL: the locks a single delivery takes, for every user and address of
//! the batch at once and in the same global order; a snapshot; the plan of
//! [`crate::sync::batch`]; its writes as a few set-wide statements; and the rest through
//! `clerk_sync.apply_batch`, one delivery after another — all in one transaction.
//!
//! Lock order, as in `clerk_sync.apply_delivery`: bookkeeping rows (sorted by user id),
//! then address advisory locks (sorted, byte order). A single delivery takes one user's
//! row and then its addresses, so it never holds an address while waiting for a row the
//! batch holds: no cycle. A group of the daemon's group commit (several single deliveries
//! in one transaction, by user id) can: it holds a user's addresses while it waits for the
//! next user's row. PostgreSQL then detects the deadlock (after `deadlock_timeout`) and
//! fails one of the two transactions whole, which is applied again: a group one delivery at
//! a time, a batch one by one. Rare (the two must share an address and a user), never wrong.
//! The same goes for a delivery that arrives live while a batch carries it too (one
//! `svix-id`): it holds its dedup record while it waits for the user's row, and the batch,
//! holding the row, then wants to record the same id.

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use diesel::sql_types::{Array, BigInt, Bool, Nullable, Text, Timestamp};
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::postgres::one_after_another;
use super::DbError;
use crate::domain::{Event, MessageId};
use crate::sync::batch::{self, Snapshot, Stored};
use crate::sync::{Dedup, Outcome, SyncOptions};

#[derive(QueryableByName)]
struct StoredRow {
    #[diesel(sql_type = Text)]
    user_id: String,
    #[diesel(sql_type = BigInt)]
    version: i64,
    #[diesel(sql_type = Text)]
    digest: String,
    #[diesel(sql_type = Nullable<Text>)]
    email: Option<String>,
    #[diesel(sql_type = Bool)]
    deleted: bool,
    #[diesel(sql_type = Bool)]
    role_from_webhook: bool,
}

#[derive(QueryableByName)]
struct Pair {
    #[diesel(sql_type = Text)]
    a: String,
    #[diesel(sql_type = Text)]
    b: String,
}

#[derive(QueryableByName)]
struct Single {
    #[diesel(sql_type = Text)]
    a: String,
}

async fn pairs(
    conn: &mut AsyncPgConnection,
    sql: &'static str,
    keys: &[String],
) -> Result<Vec<(String, String)>, DbError> {
    let rows: Vec<Pair> = diesel::sql_query(sql)
        .bind::<Array<Text>, _>(keys)
        .load(conn)
        .await?;
    Ok(rows.into_iter().map(|p| (p.a, p.b)).collect())
}

/// Applies `batch` in the connection's transaction (which the caller began); the i-th
/// outcome answers the i-th delivery.
pub(super) async fn apply_in_transaction(
    conn: &mut AsyncPgConnection,
    batch: &[(MessageId, Event)],
    options: SyncOptions,
) -> Result<Vec<Outcome>, DbError> {
    // The reads below look up a few thousand keys each with `= ANY($1)`. Planned for the
    // array at hand, PostgreSQL would rather scan a table of up to a few hundred thousand rows
    // whole than probe its index that often, which costs twice as much here; a generic plan
    // probes the index. (Not for the writes: there a generic plan would test `= ANY` by
    // walking the array for every row.)
    plan_cache_mode(conn, "force_generic_plan").await?;
    let lookups = batch::lookups(batch);
    let mut snapshot = Snapshot::default();

    // The users' locks: their bookkeeping rows, each locked where it exists and made where
    // it does not, one after another in id order, in one statement: as a single delivery
    // locks or makes its one. (`DO UPDATE … WHERE false` locks a row that exists without
    // writing it, FOR NO KEY UPDATE; `RETURNING` then names only the rows made.) Until
    // every row is held the batch holds nothing else, and it takes them in the one global
    // order: a single delivery or a group it waits for never waits for it in turn.
    // A row made here already holds what the user most likely ends the batch with (see
    // `guesses`), so that a new user's row is written once; to the plan, it is new.
    let guessed = guesses(batch, &lookups.users);
    let made: Vec<Single> = diesel::sql_query(
        "INSERT INTO clerk_sync.users AS s (user_id, version, digest, email, role_from_webhook)
         SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bool[])
                 AS n(user_id, version, digest, email, role_from_webhook)
          ORDER BY user_id COLLATE \"C\"
         ON CONFLICT (user_id) DO UPDATE SET version = s.version WHERE false
         RETURNING user_id AS a",
    )
    .bind::<Array<Text>, _>(&lookups.users)
    .bind::<Array<BigInt>, _>(guessed.iter().map(|g| g.version).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(guessed.iter().map(|g| g.digest).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(guessed.iter().map(|g| g.email).collect::<Vec<_>>())
    .bind::<Array<Bool>, _>(
        guessed
            .iter()
            .map(|g| g.role_from_webhook)
            .collect::<Vec<_>>(),
    )
    .load(conn)
    .await?;
    let made: HashMap<&str, &Guess> = {
        let made: HashSet<String> = made.into_iter().map(|m| m.a).collect();
        lookups
            .users
            .iter()
            .zip(&guessed)
            .filter(|(user, _)| made.contains(user.as_str()))
            .map(|(user, guess)| (user.as_str(), guess))
            .collect()
    };
    // Every row is held already (FOR NO KEY UPDATE, which excludes every other writer: no
    // foreign key points at the bookkeeping, so nobody takes the one lock it lets through).
    // Read in a snapshot taken after they were all held, the rows are their newest
    // versions; locking them again would only write each one more time. The rows made
    // just now are new users', known already.
    let existing: Vec<&str> = lookups
        .users
        .iter()
        .map(String::as_str)
        .filter(|user| !made.contains_key(user))
        .collect();
    let stored: Vec<StoredRow> = if existing.is_empty() {
        Vec::new()
    } else {
        diesel::sql_query(
            "SELECT user_id, version, digest, email, deleted_at IS NOT NULL AS deleted, role_from_webhook
               FROM clerk_sync.users WHERE user_id = ANY($1)",
        )
        .bind::<Array<Text>, _>(&existing)
        .load(conn)
        .await?
    };
    if stored.len() != existing.len() {
        return Err(DbError::Internal(
            "a locked bookkeeping row of the batch was not read".into(),
        ));
    }
    snapshot.users = stored
        .into_iter()
        .map(|r| {
            let stored = Stored {
                version: r.version,
                digest: r.digest,
                email: r.email,
                deleted: r.deleted,
                role_from_webhook: r.role_from_webhook,
            };
            (r.user_id, stored)
        })
        .chain(
            made.keys()
                .map(|user| ((*user).to_owned(), Stored::new_user())),
        )
        .collect();
    const ROWS: &str = "SELECT id AS a, mail_address AS b FROM \"User\" WHERE id = ANY($1)";
    snapshot.rows = pairs(conn, ROWS, &lookups.users)
        .await?
        .into_iter()
        .collect();

    // The addresses' locks, in the global order; then the rows again, since a row can only
    // have moved under the lock of the address it left.
    let addresses = batch::addresses(batch, &snapshot);
    diesel::sql_query(
        "SELECT count(pg_advisory_xact_lock(hashtextextended(a, 7))) FROM unnest($1::text[]) AS a",
    )
    .bind::<Array<Text>, _>(&addresses)
    .execute(conn)
    .await?;
    // Only rows that exist can have moved: a user's row is made (or deleted) only under
    // that user's lock, which the batch holds.
    if !snapshot.rows.is_empty() {
        let with_rows: Vec<String> = snapshot.rows.keys().cloned().collect();
        let moved: HashMap<String, String> =
            pairs(conn, ROWS, &with_rows).await?.into_iter().collect();
        snapshot.rows = moved;
    }

    if options.dedup == Dedup::ById {
        let recorded: Vec<Single> = diesel::sql_query(
            "SELECT svix_id AS a FROM clerk_sync.deliveries WHERE svix_id = ANY($1)",
        )
        .bind::<Array<Text>, _>(&lookups.ids)
        .load(conn)
        .await?;
        snapshot.recorded = recorded.into_iter().map(|r| r.a).collect();
    }
    for (address, holder) in pairs(
        conn,
        "SELECT mail_address AS a, id AS b FROM \"User\" WHERE mail_address = ANY($1)",
        &addresses,
    )
    .await?
    {
        snapshot.add_holder(address, holder);
    }
    for (address, claimant) in pairs(
        conn,
        "SELECT email AS a, user_id AS b FROM clerk_sync.users WHERE email = ANY($1)",
        &addresses,
    )
    .await?
    {
        // A row made by this batch claims nothing yet.
        if !made.contains_key(claimant.as_str()) {
            snapshot.add_claimant(address, claimant);
        }
    }

    plan_cache_mode(conn, "auto").await?;
    let plan = batch::plan(batch, &snapshot, options);
    let known: Vec<&str> = snapshot.users.keys().map(String::as_str).collect();
    write_bookkeeping(conn, &corrections(&plan.bookkeeping, &made), &known).await?;
    write_rows(conn, &plan.rows, &snapshot.rows).await?;
    record(conn, batch, &plan.record, &plan.outcomes).await?;

    let mut outcomes = plan.outcomes;
    if !plan.one_by_one.is_empty() {
        let slow = plan.one_by_one.iter().map(|&i| &batch[i]);
        let decided = one_after_another(conn, slow, options).await?;
        for (&i, decided) in plan.one_by_one.iter().zip(decided) {
            outcomes[i] = Some(decided);
        }
    }
    outcomes
        .into_iter()
        .map(|o| {
            o.ok_or_else(|| DbError::Internal("a delivery of the batch was not decided".into()))
        })
        .collect()
}

/// Sets `plan_cache_mode` until the transaction ends.
async fn plan_cache_mode(conn: &mut AsyncPgConnection, mode: &str) -> Result<(), DbError> {
    diesel::sql_query("SELECT set_config('plan_cache_mode', $1, true)")
        .bind::<Text, _>(mode)
        .execute(conn)
        .await?;
    Ok(())
}

/// A new user's likely bookkeeping after the batch: its newest version's (version, digest,
/// claimed address, whether it names a role), as the plan writes it for a new user decided
/// in memory. A user with a delete gets the placeholder a single delivery makes.
struct Guess<'a> {
    version: i64,
    digest: &'a str,
    email: Option<&'a str>,
    role_from_webhook: bool,
}

impl Guess<'_> {
    const NEW: Guess<'static> = Guess {
        version: -1,
        digest: "",
        email: None,
        role_from_webhook: false,
    };

    fn is_new(&self) -> bool {
        (
            self.version,
            self.digest,
            self.email,
            self.role_from_webhook,
        ) == (
            Self::NEW.version,
            Self::NEW.digest,
            Self::NEW.email,
            Self::NEW.role_from_webhook,
        )
    }

    fn is(&self, row: &batch::Bookkeeping) -> bool {
        (
            self.version,
            self.digest,
            self.email,
            self.role_from_webhook,
        ) == (
            row.version,
            row.digest.as_str(),
            row.email.as_deref(),
            row.role_from_webhook,
        )
    }
}

/// The guesses for `users` (sorted, as [`batch::lookups`] gives them), in their order.
fn guesses<'a>(batch: &'a [(MessageId, Event)], users: &[String]) -> Vec<Guess<'a>> {
    let mut by_user: HashMap<&str, Guess<'a>> = HashMap::with_capacity(users.len());
    let mut deleted: HashSet<&str> = HashSet::new();
    for (_, event) in batch {
        match event {
            Event::Upsert { change, .. } => {
                let guess = by_user.entry(change.id.as_str()).or_insert(Guess::NEW);
                if (change.version, change.digest.as_str()) > (guess.version, guess.digest) {
                    *guess = Guess {
                        version: change.version,
                        digest: &change.digest,
                        email: change.email.as_ref().map(|e| e.as_str()),
                        role_from_webhook: change.role.is_some(),
                    };
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
        .map(|user| match by_user.remove(user.as_str()) {
            Some(guess) if !deleted.contains(user.as_str()) => guess,
            _ => Guess::NEW,
        })
        .collect()
}

/// The bookkeeping rows to write: the plan's, except rows this batch made that already
/// hold them; and rows it made with a guess the plan did not confirm, back to the
/// placeholder (their users go one by one, or had nothing applied).
fn corrections(
    planned: &[batch::Bookkeeping],
    made: &HashMap<&str, &Guess>,
) -> Vec<batch::Bookkeeping> {
    let mut rows: Vec<batch::Bookkeeping> = planned
        .iter()
        .filter(|row| {
            made.get(row.user_id.as_str())
                .is_none_or(|guess| !guess.is(row))
        })
        .cloned()
        .collect();
    let planned_users: HashSet<&str> = planned.iter().map(|row| row.user_id.as_str()).collect();
    for (user, guess) in made {
        if !planned_users.contains(user) && !guess.is_new() {
            rows.push(batch::Bookkeeping {
                user_id: (*user).to_owned(),
                version: -1,
                digest: String::new(),
                email: None,
                role_from_webhook: false,
            });
        }
    }
    rows
}

/// Writes the bookkeeping rows of the users decided together, each locked for the
/// snapshot. (Defensively: a row the snapshot did not see is never overwritten; the batch
/// fails as transient instead.)
async fn write_bookkeeping(
    conn: &mut AsyncPgConnection,
    rows: &[batch::Bookkeeping],
    known: &[&str],
) -> Result<(), DbError> {
    if rows.is_empty() {
        return Ok(());
    }
    let user_id: Vec<&str> = rows.iter().map(|r| r.user_id.as_str()).collect();
    let version: Vec<i64> = rows.iter().map(|r| r.version).collect();
    let digest: Vec<&str> = rows.iter().map(|r| r.digest.as_str()).collect();
    let email: Vec<Option<&str>> = rows.iter().map(|r| r.email.as_deref()).collect();
    let role: Vec<bool> = rows.iter().map(|r| r.role_from_webhook).collect();
    let written = diesel::sql_query(
        "INSERT INTO clerk_sync.users (user_id, version, digest, email, role_from_webhook)
         SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bool[])
         ON CONFLICT (user_id) DO UPDATE
            SET version = EXCLUDED.version, digest = EXCLUDED.digest, email = EXCLUDED.email,
                role_from_webhook = EXCLUDED.role_from_webhook
          WHERE clerk_sync.users.user_id = ANY($6)",
    )
    .bind::<Array<Text>, _>(user_id)
    .bind::<Array<BigInt>, _>(version)
    .bind::<Array<Text>, _>(digest)
    .bind::<Array<Nullable<Text>>, _>(email)
    .bind::<Array<Bool>, _>(role)
    .bind::<Array<Text>, _>(known)
    .execute(conn)
    .await?;
    if written != rows.len() {
        return Err(DbError::Unavailable(
            "a user of the batch was first seen concurrently; retry".into(),
        ));
    }
    Ok(())
}

/// Upserts the application's rows. A user without a row when its lock was taken has none
/// now (clerk-sync makes rows only under their user's lock), so its row is a plain insert:
/// no speculative insertion, no conflict check on `id`. Should the application itself
/// insert that row meanwhile, the insert fails on the unique id (a transient error): the
/// batch rolls back and its deliveries are applied one by one.
async fn write_rows(
    conn: &mut AsyncPgConnection,
    rows: &[batch::Row<'_>],
    existing: &HashMap<String, String>,
) -> Result<(), DbError> {
    const NEW: &str = "INSERT INTO \"User\" (id, name, mail_address, role, \"createdAt\", \"updatedAt\")
         SELECT id, name, address, role::\"Role\", created, updated
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamp[], $6::timestamp[])
                AS n(id, name, address, role, created, updated)";
    // Existing rows whose role is written, and those whose role is left alone.
    const SET_ROLE: &str = "INSERT INTO \"User\" (id, name, mail_address, role, \"createdAt\", \"updatedAt\")
         SELECT id, name, address, role::\"Role\", created, updated
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamp[], $6::timestamp[])
                AS n(id, name, address, role, created, updated)
         ON CONFLICT (id) DO UPDATE
            SET name = EXCLUDED.name, mail_address = EXCLUDED.mail_address, role = EXCLUDED.role,
                \"createdAt\" = EXCLUDED.\"createdAt\", \"updatedAt\" = EXCLUDED.\"updatedAt\"";
    const KEEP_ROLE: &str = "INSERT INTO \"User\" (id, name, mail_address, role, \"createdAt\", \"updatedAt\")
         SELECT id, name, address, role::\"Role\", created, updated
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamp[], $6::timestamp[])
                AS n(id, name, address, role, created, updated)
         ON CONFLICT (id) DO UPDATE
            SET name = EXCLUDED.name, mail_address = EXCLUDED.mail_address,
                \"createdAt\" = EXCLUDED.\"createdAt\", \"updatedAt\" = EXCLUDED.\"updatedAt\"";
    let is_new = |r: &batch::Row| !existing.contains_key(r.change.id.as_str());
    let parts: [(&str, Vec<&batch::Row>); 3] = [
        (NEW, rows.iter().filter(|r| is_new(r)).collect()),
        (
            SET_ROLE,
            rows.iter()
                .filter(|r| !is_new(r) && r.role.is_some())
                .collect(),
        ),
        (
            KEEP_ROLE,
            rows.iter()
                .filter(|r| !is_new(r) && r.role.is_none())
                .collect(),
        ),
    ];
    for (sql, part) in parts {
        if part.is_empty() {
            continue;
        }
        let id: Vec<&str> = part.iter().map(|r| r.change.id.as_str()).collect();
        let name: Vec<Option<&str>> = part.iter().map(|r| r.change.name.as_deref()).collect();
        let address: Vec<&str> = part.iter().map(|r| r.address.as_str()).collect();
        // A new row without a role named gets USER; an existing one keeps its own.
        let role: Vec<&str> = part
            .iter()
            .map(|r| r.role.unwrap_or(crate::domain::Role::User).as_db())
            .collect();
        let created: Vec<chrono::NaiveDateTime> = part
            .iter()
            .map(|r| r.change.created_at.naive_utc())
            .collect();
        let updated: Vec<chrono::NaiveDateTime> = part
            .iter()
            .map(|r| r.change.updated_at.naive_utc())
            .collect();
        diesel::sql_query(sql)
            .bind::<Array<Text>, _>(id)
            .bind::<Array<Nullable<Text>>, _>(name)
            .bind::<Array<Text>, _>(address)
            .bind::<Array<Text>, _>(role)
            .bind::<Array<Timestamp>, _>(created)
            .bind::<Array<Timestamp>, _>(updated)
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// Records the deliveries decided by the plan. One recorded meanwhile by another
/// transaction (the snapshot did not see it) fails the batch as transient: retried, it is
/// a duplicate.
async fn record(
    conn: &mut AsyncPgConnection,
    batch: &[(MessageId, Event)],
    indices: &[usize],
    outcomes: &[Option<Outcome>],
) -> Result<(), DbError> {
    if indices.is_empty() {
        return Ok(());
    }
    let svix_id: Vec<&str> = indices.iter().map(|&i| batch[i].0.as_str()).collect();
    let event_type: Vec<&str> = indices.iter().map(|&i| batch[i].1.event_type()).collect();
    let user_id: Vec<Option<&str>> = indices
        .iter()
        .map(|&i| batch[i].1.user_id().map(|u| u.as_str()))
        .collect();
    let outcome: Vec<&str> = indices
        .iter()
        .map(|&i| outcomes[i].map_or("pending", Outcome::as_str))
        .collect();
    let inserted = diesel::sql_query(
        "INSERT INTO clerk_sync.deliveries (svix_id, event_type, user_id, outcome)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
         ON CONFLICT (svix_id) DO NOTHING",
    )
    .bind::<Array<Text>, _>(svix_id)
    .bind::<Array<Text>, _>(event_type)
    .bind::<Array<Nullable<Text>>, _>(user_id)
    .bind::<Array<Text>, _>(outcome)
    .execute(conn)
    .await?;
    if inserted != indices.len() {
        return Err(DbError::Unavailable(
            "a delivery of the batch was recorded concurrently; retry".into(),
        ));
    }
    Ok(())
}
