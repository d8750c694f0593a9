//! What every handler shares: the application's state, in a module of its own so that the
//! routes need nothing of `startup`, which builds the server from them.

use std::time::Duration;

use crate::db::{Database, DeadLetterLimits};
use crate::metrics::Metrics;
use crate::secrets::SigningSecrets;
use crate::sync::SyncOptions;

/// What every handler shares; passed in `web::Data`, never global.
#[derive(Debug)]
pub struct AppState {
    /// The database pool.
    pub db: Database,
    /// The signing secrets in force (re-read from their file, if they come from one).
    pub secrets: SigningSecrets,
    /// How deliveries are applied.
    pub sync: SyncOptions,
    /// Longest a delivery may take before it is answered 503.
    pub deadline: Duration,
    /// The app's metrics.
    pub metrics: Metrics,
    /// How many dead letters are kept at most.
    pub dead_letters: DeadLetterLimits,
    /// The on-demand session sync (`POST /api/auth/sync`), when a secret key is configured.
    pub session: Option<crate::session::SessionSync>,
}

/// How long a request's body may take to arrive (see `crate::startup::ServerSettings::client_timeout`).
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeout(pub Duration);
