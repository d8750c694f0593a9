//! The port on SQLite for a mapped table (see [`crate::domain::table::WriteShape`]): the same
//! unit of work as [`super::sqlite_port`], its statements built from the shape.

use std::sync::Arc;

use super::port::{Deleted, Request, Snapshot, Writes};
use super::sqlite::Lite;
use super::DbError;
use crate::domain::table::WriteShape;

impl Lite {
    /// One unit of work on a mapped table in one `BEGIN IMMEDIATE` transaction.
    pub(super) async fn transact_mapped<T, F>(
        &self,
        shape: Arc<WriteShape>,
        request: Request,
        plan: F,
    ) -> Result<(T, Deleted), DbError>
    where
        F: FnOnce(&Snapshot) -> Result<(Writes, T), DbError> + Send + 'static,
        T: Send + 'static,
    {
        let _ = (shape, request, plan);
        Err(DbError::Internal(
            "the mapped writer is not built yet".into(),
        ))
    }
}
