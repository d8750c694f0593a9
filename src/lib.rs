//! clerk-sync keeps an application's `User` table in step with Clerk: it verifies each
//! Svix-signed `user.*` webhook and applies it idempotently, in any arrival order, to
//! PostgreSQL or SQLite.

pub mod backfill;
pub mod cli;
pub mod commands;
pub mod db;
pub mod domain;
pub mod mapping;
pub mod metrics;
pub mod probe;
pub mod replay;
pub mod routes;
pub mod secrets;
pub mod session;
pub mod startup;
pub mod state;
pub mod sync;
pub mod telemetry;
pub mod verify;
