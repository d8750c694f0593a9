//! The port on PostgreSQL for a mapped table (see [`crate::domain::table::WriteShape`]): the
//! same unit of work as [`super::pg_port`], its statements built from the shape.

use std::sync::Arc;

use super::port::{Deleted, Request, Snapshot, Writes};
use super::postgres::Pg;
use super::DbError;
use crate::domain::table::WriteShape;

impl Pg {
    /// One unit of work on a mapped table: lock and read `request`, plan, write, commit.
    pub(super) async fn transact_mapped<T, F>(
        &self,
        shape: Arc<WriteShape>,
        request: Request,
        plan: F,
    ) -> Result<(T, Deleted), DbError>
    where
        F: FnOnce(&Snapshot) -> Result<(Writes, T), DbError>,
    {
        let _ = (shape, request, plan);
        Err(DbError::Internal(
            "the mapped writer is not built yet".into(),
        ))
    }
}
