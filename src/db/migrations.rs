//! clerk-sync's own migrations, embedded in the binary.
//!
//! diesel's stock harness keeps its history in `__diesel_schema_migrations` wherever the
//! search path points; clerk-sync keeps it beside its other tables instead
//! (`clerk_sync.schema_migrations`, `clerk_sync_schema_migrations` on SQLite) so that the
//! application's schema, which Prisma manages, holds nothing of clerk-sync's.

use diesel::backend::Backend;
use diesel::migration::MigrationSource;
use diesel::sql_types::Text;
use diesel::{Connection, QueryableByName, RunQueryDsl};
use diesel_migrations::{embed_migrations, EmbeddedMigrations};

/// PostgreSQL migrations (`migrations/postgres`).
pub const POSTGRES: EmbeddedMigrations = embed_migrations!("migrations/postgres");
/// SQLite migrations (`migrations/sqlite`).
pub const SQLITE: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// A row of the history table.
#[derive(QueryableByName)]
pub struct Applied {
    /// The migration's version.
    #[diesel(sql_type = Text)]
    pub version: String,
}

/// Where a backend keeps the history.
pub struct History {
    /// `CREATE TABLE IF NOT EXISTS` statement(s) for the history table.
    pub create: &'static str,
    /// The history table's qualified name.
    pub table: &'static str,
}

/// Versions recorded in the history table (which must exist).
pub fn applied<C>(conn: &mut C, history: &History) -> diesel::QueryResult<Vec<String>>
where
    C: Connection,
    diesel::query_builder::SqlQuery: diesel::query_dsl::LoadQuery<'static, C, Applied>,
{
    let rows: Vec<Applied> = diesel::sql_query(format!(
        "SELECT version FROM {} ORDER BY version",
        history.table
    ))
    .load(conn)?;
    Ok(rows.into_iter().map(|r| r.version).collect())
}

/// Applies every migration of `source` not yet in the history, each in its own transaction.
pub fn run_pending<C, S>(
    conn: &mut C,
    source: &S,
    history: &History,
) -> diesel::QueryResult<Vec<String>>
where
    C: Connection + 'static,
    C::Backend: Backend,
    S: MigrationSource<C::Backend>,
    diesel::query_builder::SqlQuery: diesel::query_dsl::LoadQuery<'static, C, Applied>,
{
    conn.batch_execute(history.create)?;
    let done = applied(conn, history)?;
    let mut ran = Vec::new();
    let migrations = source
        .migrations()
        .map_err(diesel::result::Error::QueryBuilderError)?;
    for migration in migrations {
        let version = migration.name().version().to_string();
        if done.contains(&version) {
            continue;
        }
        // Versions come from our own folder names; refuse anything that is not plain.
        if !version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(diesel::result::Error::QueryBuilderError(
                format!("bad migration version {version:?}").into(),
            ));
        }
        conn.transaction(|conn| {
            migration
                .run(conn)
                .map_err(diesel::result::Error::QueryBuilderError)?;
            conn.batch_execute(&format!(
                "INSERT INTO {} (version) VALUES ('{version}')",
                history.table
            ))
        })?;
        ran.push(version);
    }
    Ok(ran)
}

/// Ready only when every migration of `source` is in `applied`.
pub fn require_current<DB: Backend, S: MigrationSource<DB>>(
    source: &S,
    applied: &[String],
) -> Result<(), super::DbError> {
    match pending_count(source, applied) {
        0 => Ok(()),
        n => Err(super::DbError::NotMigrated(n)),
    }
}

/// How many migrations of `source` are not in `applied`.
pub fn pending_count<DB: Backend, S: MigrationSource<DB>>(source: &S, applied: &[String]) -> usize {
    source
        .migrations()
        .map(|all| {
            all.iter()
                .filter(|m| !applied.contains(&m.name().version().to_string()))
                .count()
        })
        .unwrap_or(usize::MAX)
}
