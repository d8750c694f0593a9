//! SQLite, the embedded default: `SyncConnectionWrapper<SqliteConnection>` in a pool.
//!
//! SQLite has no stored functions, so the steps of `clerk_sync.apply_delivery` (see
//! `migrations/postgres`) are written here, run on the blocking connection inside one
//! `BEGIN IMMEDIATE` transaction. SQLite serialises writers, so no further locks are
//! needed. Both backends run the same test suite.
//!
//! Dates are written exactly as Prisma Client writes them on SQLite
//! (`2024-05-01T12:34:56.789+00:00`), so the application's range queries see them.

use std::path::Path;

use chrono::{DateTime, Utc};
use diesel::connection::SimpleConnection;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{BigInt, Bool, Nullable, Text};
use diesel::{
    Connection, OptionalExtension, QueryResult, QueryableByName, RunQueryDsl, SqliteConnection,
};
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::AsyncConnection;

use super::app_table::{self, Column};
use super::migrations::{self, History};
use super::{DbError, MigrationReport, OutcomeCount, PendingDeletes, PoolOptions, Status, Totals};
use crate::domain::{ClerkUserId, Event, MessageId, Role, UserChange};
use crate::sync::{Outcome, SyncOptions};

type Conn = SyncConnectionWrapper<SqliteConnection>;

const HISTORY: History = History {
    create: "CREATE TABLE IF NOT EXISTS clerk_sync_schema_migrations (
                 version VARCHAR(50) PRIMARY KEY NOT NULL,
                 run_on TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
             );",
    table: "clerk_sync_schema_migrations",
};

/// An SQLite pool.
#[derive(Clone)]
pub struct Lite {
    pool: Pool<Conn>,
}

/// Prisma's SQLite date format.
pub fn prisma_date(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.3f+00:00").to_string()
}

fn pragmas(busy_ms: u128) -> String {
    // WAL lets readers (probes, status) run beside the writer; synchronous=FULL keeps every
    // acknowledged delivery across a power loss; foreign keys as Prisma enables them.
    format!(
        "PRAGMA busy_timeout = {busy_ms}; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;"
    )
}

impl Lite {
    pub(super) fn open(path: &Path, options: PoolOptions) -> Result<Self, DbError> {
        let setup = pragmas(options.statement_timeout.as_millis());
        let path_text = path.to_string_lossy().into_owned();
        let mut config = ManagerConfig::<Conn>::default();
        config.custom_setup = Box::new(move |url| {
            let (url, setup) = (url.to_owned(), setup.clone());
            Box::pin(async move {
                let mut conn = Conn::establish(&url).await?;
                conn.spawn_blocking(move |c| c.batch_execute(&setup))
                    .await
                    .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?;
                Ok(conn)
            })
        });
        let manager = AsyncDieselConnectionManager::new_with_config(path_text, config);
        let pool = Pool::builder(manager)
            .max_size(options.max_connections.clamp(1, 4))
            .wait_timeout(Some(options.acquire_timeout))
            .create_timeout(Some(options.acquire_timeout))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| DbError::Internal(e.to_string()))?;
        Ok(Self { pool })
    }

    /// Runs `task` on a pooled connection's blocking thread.
    async fn run<R: Send + 'static>(
        &self,
        task: impl FnOnce(&mut SqliteConnection) -> Result<R, DbError> + Send + 'static,
    ) -> Result<R, DbError> {
        let mut conn = self.pool.get().await?;
        conn.spawn_blocking(move |c| Ok(task(c)))
            .await
            .map_err(DbError::from)?
    }

    pub(super) async fn migrate(&self) -> Result<MigrationReport, DbError> {
        self.run(|conn| {
            let applied = migrations::run_pending(conn, &migrations::SQLITE, &HISTORY)?;
            let created_user_table = conn.immediate_transaction(|conn| {
                if !columns(conn)?.is_empty() {
                    return Ok::<_, DieselError>(false);
                }
                conn.batch_execute(app_table::SQLITE_USER_DDL)?;
                Ok(true)
            })?;
            app_table::check(&columns(conn)?, false)?;
            Ok(MigrationReport {
                applied,
                created_user_table,
            })
        })
        .await
    }

    pub(super) async fn check_ready(&self) -> Result<(), DbError> {
        self.run(|conn| {
            let present: Count = diesel::sql_query(
                "SELECT count(*) AS n FROM sqlite_master WHERE type = 'table' AND name = 'clerk_sync_schema_migrations'",
            )
            .get_result(conn)?;
            let applied = if present.n > 0 { migrations::applied(conn, &HISTORY)? } else { Vec::new() };
            match migrations::pending_count::<diesel::sqlite::Sqlite, _>(&migrations::SQLITE, &applied) {
                0 => Ok(()),
                n => Err(DbError::NotMigrated(n)),
            }
        })
        .await
    }

    pub(super) async fn apply(
        &self,
        id: &MessageId,
        event: &Event,
        options: SyncOptions,
    ) -> Result<Outcome, DbError> {
        let (id, event) = (id.clone(), event.clone());
        self.run(move |conn| Ok(conn.immediate_transaction(|c| apply(c, &id, &event, options))?))
            .await
    }

    pub(super) async fn apply_batch(
        &self,
        batch: Vec<(MessageId, Event)>,
        options: SyncOptions,
    ) -> Result<Vec<Outcome>, DbError> {
        self.run(move |conn| {
            Ok(conn.immediate_transaction(|c| {
                batch
                    .iter()
                    .map(|(id, event)| apply(c, id, event, options))
                    .collect::<QueryResult<Vec<_>>>()
            })?)
        })
        .await
    }

    pub(super) async fn status(&self, since: DateTime<Utc>) -> Result<Status, DbError> {
        self.run(move |conn| {
            let by_outcome: Vec<OutcomeCount> = diesel::sql_query(
                "SELECT outcome, count(*) AS n FROM clerk_sync_deliveries WHERE received_at >= ? GROUP BY outcome",
            )
            .bind::<Text, _>(prisma_date(since))
            .load(conn)?;
            let totals: Totals = diesel::sql_query(
                "SELECT (SELECT replace(max(received_at), '+00:00', 'Z') FROM clerk_sync_deliveries) AS last_delivery_at,
                        (SELECT count(*) FROM clerk_sync_users WHERE delete_pending) AS pending_deletes,
                        (SELECT count(*) FROM clerk_sync_users WHERE deleted_at IS NOT NULL) AS tombstones,
                        (SELECT count(*) FROM clerk_sync_users WHERE version >= 0 OR deleted_at IS NOT NULL) AS known_users",
            )
            .get_result(conn)?;
            Ok(totals.into_status(by_outcome))
        })
        .await
    }

    pub(super) async fn retry_pending_deletes(&self) -> Result<PendingDeletes, DbError> {
        self.run(|conn| {
            // The longest-waiting first, so that deletes refused for good never starve the rest.
            let pending: Vec<UserIdRow> = diesel::sql_query(
                "SELECT user_id FROM clerk_sync_users WHERE delete_pending
                  ORDER BY delete_attempted_at NULLS FIRST, user_id LIMIT 100",
            )
            .load(conn)?;
            let mut report = PendingDeletes::default();
            for row in pending {
                let done = conn.immediate_transaction(|c| {
                    diesel::sql_query(
                        "UPDATE clerk_sync_users SET delete_attempted_at = ? WHERE user_id = ?",
                    )
                    .bind::<Text, _>(prisma_date(Utc::now()))
                    .bind::<Text, _>(&row.user_id)
                    .execute(c)?;
                    finish_delete(c, &row.user_id)
                })?;
                if done {
                    report.completed += 1;
                } else {
                    report.still_pending += 1;
                }
            }
            Ok(report)
        })
        .await
    }
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct UserIdRow {
    #[diesel(sql_type = Text)]
    user_id: String,
}

#[derive(QueryableByName)]
struct State {
    #[diesel(sql_type = BigInt)]
    version: i64,
    #[diesel(sql_type = Text)]
    digest: String,
    #[diesel(sql_type = Nullable<Text>)]
    email: Option<String>,
    #[diesel(sql_type = Bool)]
    deleted: bool,
    #[diesel(sql_type = Bool)]
    delete_pending: bool,
    #[diesel(sql_type = Bool)]
    role_from_webhook: bool,
}

#[derive(QueryableByName)]
struct Holder {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = BigInt)]
    version: i64,
    #[diesel(sql_type = Bool)]
    dead: bool,
    #[diesel(sql_type = Nullable<Text>)]
    claim: Option<String>,
    #[diesel(sql_type = Bool)]
    known: bool,
}

#[derive(QueryableByName)]
struct Address {
    #[diesel(sql_type = Text)]
    mail_address: String,
}

#[derive(QueryableByName)]
struct PragmaColumn {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    data_type: String,
    #[diesel(sql_type = Bool)]
    is_notnull: bool,
    #[diesel(sql_type = Bool)]
    has_default: bool,
}

fn columns(conn: &mut SqliteConnection) -> QueryResult<Vec<Column>> {
    let rows: Vec<PragmaColumn> = diesel::sql_query(
        "SELECT name, lower(type) AS data_type, \"notnull\" AS is_notnull, dflt_value IS NOT NULL AS has_default
           FROM pragma_table_info('User')",
    )
    .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|c| Column {
            name: c.name,
            data_type: c.data_type,
            max_length: None,
            nullable: !c.is_notnull,
            has_default: c.has_default,
        })
        .collect())
}

fn apply(
    conn: &mut SqliteConnection,
    id: &MessageId,
    event: &Event,
    options: SyncOptions,
) -> QueryResult<Outcome> {
    let inserted = diesel::sql_query(
        "INSERT INTO clerk_sync_deliveries (svix_id, event_type, user_id, outcome, received_at)
         VALUES (?, ?, ?, 'pending', ?) ON CONFLICT (svix_id) DO NOTHING",
    )
    .bind::<Text, _>(id.as_str())
    .bind::<Text, _>(event.event_type())
    .bind::<Nullable<Text>, _>(event.user_id().map(ClerkUserId::as_str))
    .bind::<Text, _>(prisma_date(Utc::now()))
    .execute(conn)?;
    if inserted == 0 {
        return Ok(Outcome::Duplicate);
    }
    let outcome = match event {
        Event::Ignored { .. } => Outcome::Ignored,
        Event::Upsert { change, .. } => upsert(conn, change, options)?,
        Event::Delete { id: user } => delete(conn, user)?,
    };
    diesel::sql_query("UPDATE clerk_sync_deliveries SET outcome = ? WHERE svix_id = ?")
        .bind::<Text, _>(outcome.as_str())
        .bind::<Text, _>(id.as_str())
        .execute(conn)?;
    Ok(outcome)
}

fn state(conn: &mut SqliteConnection, user: &str) -> QueryResult<State> {
    diesel::sql_query("INSERT INTO clerk_sync_users (user_id, version, digest) VALUES (?, -1, '') ON CONFLICT (user_id) DO NOTHING")
        .bind::<Text, _>(user)
        .execute(conn)?;
    diesel::sql_query(
        "SELECT version, digest, email, deleted_at IS NOT NULL AS deleted, delete_pending, role_from_webhook
           FROM clerk_sync_users WHERE user_id = ?",
    )
    .bind::<Text, _>(user)
    .get_result(conn)
}

fn set_address(conn: &mut SqliteConnection, user: &str, address: &str) -> QueryResult<usize> {
    diesel::sql_query("UPDATE \"User\" SET mail_address = ? WHERE id = ?")
        .bind::<Text, _>(address)
        .bind::<Text, _>(user)
        .execute(conn)
}

fn displaced(user: &str) -> String {
    format!("{user}@displaced.invalid")
}

/// Moves `holder` off `address` to its placeholder, if it still holds it.
fn displace(conn: &mut SqliteConnection, holder: &str, address: &str) -> QueryResult<usize> {
    diesel::sql_query("UPDATE \"User\" SET mail_address = ? WHERE id = ? AND mail_address = ?")
        .bind::<Text, _>(displaced(holder))
        .bind::<Text, _>(holder)
        .bind::<Text, _>(address)
        .execute(conn)
}

/// The address the user's row holds now, if it has a row.
fn row_address(conn: &mut SqliteConnection, user: &str) -> QueryResult<Option<String>> {
    let row: Option<Address> = diesel::sql_query("SELECT mail_address FROM \"User\" WHERE id = ?")
        .bind::<Text, _>(user)
        .get_result(conn)
        .optional()?;
    Ok(row.map(|r| r.mail_address))
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
    diesel::sql_query(
        "UPDATE clerk_sync_users SET version = ?, digest = ?, email = ?, role_from_webhook = ? WHERE user_id = ?",
    )
    .bind::<BigInt, _>(change.version)
    .bind::<Text, _>(&change.digest)
    .bind::<Nullable<Text>, _>(email)
    .bind::<Bool, _>(change.role.is_some())
    .bind::<Text, _>(user)
    .execute(conn)?;

    let address = match email {
        None => format!("{user}@no-email.invalid"),
        Some(email) => {
            let holder: Option<Holder> = diesel::sql_query(
                "SELECT u.id AS id,
                        CASE WHEN s.version >= 0 THEN s.version
                             ELSE COALESCE(CAST(unixepoch(u.\"updatedAt\") AS INTEGER) * 1000, 0) END AS version,
                        COALESCE(s.deleted_at IS NOT NULL, 0) AS dead, s.email AS claim,
                        COALESCE(s.version >= 0, 0) AS known
                   FROM \"User\" u LEFT JOIN clerk_sync_users s ON s.user_id = u.id
                  WHERE u.mail_address = ? AND u.id <> ?",
            )
            .bind::<Text, _>(email)
            .bind::<Text, _>(user)
            .get_result(conn)
            .optional()?;
            match holder {
                None => email.to_owned(),
                Some(h) => {
                    let holder_loses = h.dead
                        || (h.known && h.claim.as_deref() != Some(email))
                        || (h.version, h.id.as_str()) < (change.version, user);
                    if holder_loses {
                        displace(conn, &h.id, email)?;
                        email.to_owned()
                    } else {
                        displaced(user)
                    }
                }
            }
        }
    };

    diesel::sql_query(
        "INSERT INTO \"User\" (id, name, mail_address, role, \"createdAt\", \"updatedAt\")
         VALUES (?, ?, ?, COALESCE(?, 'USER'), ?, ?)
         ON CONFLICT (id) DO UPDATE SET
             name = excluded.name,
             mail_address = excluded.mail_address,
             role = COALESCE(?, \"User\".role),
             \"createdAt\" = excluded.\"createdAt\",
             \"updatedAt\" = excluded.\"updatedAt\"",
    )
    .bind::<Text, _>(user)
    .bind::<Nullable<Text>, _>(change.name.as_deref())
    .bind::<Text, _>(&address)
    .bind::<Nullable<Text>, _>(role)
    .bind::<Text, _>(prisma_date(change.created_at))
    .bind::<Text, _>(prisma_date(change.updated_at))
    .bind::<Nullable<Text>, _>(role)
    .execute(conn)?;

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

fn delete(conn: &mut SqliteConnection, user: &ClerkUserId) -> QueryResult<Outcome> {
    let current = state(conn, user.as_str())?;
    if current.deleted && !current.delete_pending {
        return Ok(Outcome::Stale);
    }
    diesel::sql_query(
        "UPDATE clerk_sync_users SET deleted_at = COALESCE(deleted_at, ?) WHERE user_id = ?",
    )
    .bind::<Text, _>(prisma_date(Utc::now()))
    .bind::<Text, _>(user.as_str())
    .execute(conn)?;
    Ok(if finish_delete(conn, user.as_str())? {
        Outcome::Applied
    } else {
        Outcome::Deferred
    })
}

/// Deletes a tombstoned user's row; false when the application's foreign keys refuse.
fn finish_delete(conn: &mut SqliteConnection, user: &str) -> QueryResult<bool> {
    let address = row_address(conn, user)?;
    // A savepoint, so that a refused delete leaves the rest of the transaction intact.
    let deleted = conn.transaction(|c| {
        diesel::sql_query("DELETE FROM \"User\" WHERE id = ?")
            .bind::<Text, _>(user)
            .execute(c)
    });
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
    diesel::sql_query("UPDATE clerk_sync_users SET delete_pending = ? WHERE user_id = ?")
        .bind::<Bool, _>(!done)
        .bind::<Text, _>(user)
        .execute(conn)?;
    if let Some(address) = address {
        settle_address(conn, &address)?;
    }
    Ok(done)
}

/// Hands `address` to its newest live claimant once nobody live holds it.
fn settle_address(conn: &mut SqliteConnection, address: &str) -> QueryResult<()> {
    let best: Option<UserIdRow> = diesel::sql_query(
        "SELECT s.user_id AS user_id FROM clerk_sync_users s JOIN \"User\" u ON u.id = s.user_id
          WHERE s.email = ? AND s.deleted_at IS NULL AND s.version >= 0 AND u.mail_address <> ?
          ORDER BY s.version DESC, s.user_id DESC LIMIT 1",
    )
    .bind::<Text, _>(address)
    .bind::<Text, _>(address)
    .get_result(conn)
    .optional()?;
    let Some(best) = best else { return Ok(()) };
    let holder: Option<Holder> = diesel::sql_query(
        "SELECT u.id AS id, 0 AS version, COALESCE(s.deleted_at IS NOT NULL, 0) AS dead, s.email AS claim,
                COALESCE(s.version >= 0, 0) AS known
           FROM \"User\" u LEFT JOIN clerk_sync_users s ON s.user_id = u.id WHERE u.mail_address = ?",
    )
    .bind::<Text, _>(address)
    .get_result(conn)
    .optional()?;
    if let Some(holder) = holder {
        if !holder.dead {
            return Ok(());
        }
        displace(conn, &holder.id, address)?;
    }
    set_address(conn, &best.user_id, address)?;
    Ok(())
}
