//! Reading one user's row back, as the application's Prisma Client would read it (the
//! session sync answers with it).

use diesel::sql_types::{Bool, Nullable, Text};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl as _;

use super::{Database, DbError};
use crate::domain::ClerkUserId;

/// A row of the application's `User` table, dates in Prisma Client's JSON form
/// (`2024-05-01T12:34:56.000Z`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AppUser {
    /// `id`
    pub id: String,
    /// `name`
    pub name: Option<String>,
    /// `mail_address`
    pub mail_address: String,
    /// `role`, by its enum name.
    pub role: String,
    /// `createdAt`
    #[serde(rename = "createdAt")]
    pub created_at: String,
    /// `updatedAt`
    #[serde(rename = "updatedAt")]
    pub updated_at: String,
}

/// What the database holds for one user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserLookup {
    /// The application's row, if there is one.
    pub row: Option<AppUser>,
    /// Whether clerk-sync holds a tombstone for the user (a row may remain while the
    /// application's foreign keys hold it).
    pub deleted: bool,
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Nullable<Text>)]
    name: Option<String>,
    #[diesel(sql_type = Text)]
    mail_address: String,
    #[diesel(sql_type = Text)]
    role: String,
    #[diesel(sql_type = Text)]
    created_at: String,
    #[diesel(sql_type = Text)]
    updated_at: String,
}

#[derive(QueryableByName)]
struct Tombstone {
    #[diesel(sql_type = Bool)]
    deleted: bool,
}

/// Prisma Client's JSON form of a date written on SQLite (`…+00:00` text); text it cannot
/// read is passed on as it is rather than failing the answer.
fn iso_millis(text: String) -> String {
    match chrono::DateTime::parse_from_rfc3339(&text) {
        Ok(at) => at
            .with_timezone(&chrono::Utc)
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string(),
        Err(_) => text,
    }
}

impl From<Row> for AppUser {
    fn from(row: Row) -> Self {
        Self {
            id: row.id,
            name: row.name,
            mail_address: row.mail_address,
            role: row.role,
            created_at: iso_millis(row.created_at),
            updated_at: iso_millis(row.updated_at),
        }
    }
}

impl Database {
    /// The application's row for `id` and whether the user is tombstoned.
    pub async fn read_user(&self, id: &ClerkUserId) -> Result<UserLookup, DbError> {
        self.refuse_mapped("the session sync's read of a user's row")?;
        let id = id.as_str().to_owned();
        match self {
            Database::Postgres(db) => {
                // Through a pooler, both reads in one transaction (see `Pg::with_conn`).
                db.with_conn(async |conn| {
                // Prisma's TIMESTAMP(0) columns hold UTC wall time.
                let rows: Vec<Row> = diesel::sql_query(
                    r#"SELECT id, name, mail_address, role::text AS role,
                              to_char("createdAt", 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS created_at,
                              to_char("updatedAt", 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS updated_at
                         FROM "User" WHERE id = $1"#,
                )
                .bind::<Text, _>(&id)
                .load(conn)
                .await?;
                let tombstones: Vec<Tombstone> = diesel::sql_query(
                    "SELECT deleted_at IS NOT NULL AS deleted FROM clerk_sync.users WHERE user_id = $1",
                )
                .bind::<Text, _>(&id)
                .load(conn)
                .await?;
                Ok(UserLookup {
                    row: rows.into_iter().next().map(AppUser::from),
                    deleted: tombstones.iter().any(|t| t.deleted),
                })
                })
                .await
            }
            Database::Sqlite(db) => {
                db.run(move |conn| {
                    let rows: Vec<Row> = diesel::RunQueryDsl::load(
                        diesel::sql_query(
                        r#"SELECT id, name, mail_address, role,
                                  "createdAt" AS created_at, "updatedAt" AS updated_at
                             FROM "User" WHERE id = ?"#,
                    )
                    .bind::<Text, _>(&id), conn)?;
                    let tombstones: Vec<Tombstone> = diesel::RunQueryDsl::load(
                        diesel::sql_query(
                        "SELECT deleted_at IS NOT NULL AS deleted FROM clerk_sync_users WHERE user_id = ?",
                    )
                    .bind::<Text, _>(&id), conn)?;
                    Ok(UserLookup {
                        row: rows.into_iter().next().map(AppUser::from),
                        deleted: tombstones.iter().any(|t| t.deleted),
                    })
                })
                .await
            }
        }
    }
}
