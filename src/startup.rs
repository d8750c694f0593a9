//! Building and running the server: bind first (port 0 in tests), report the real address.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{middleware, web, App, HttpServer};

use crate::db::Database;
use crate::metrics::Metrics;
use crate::sync::SyncOptions;
use crate::verify::Verifier;

/// What every handler shares; passed in `web::Data`, never global.
#[derive(Debug)]
pub struct AppState {
    /// The database pool.
    pub db: Database,
    /// The signing secrets.
    pub verifier: Verifier,
    /// How deliveries are applied.
    pub sync: SyncOptions,
    /// Longest a delivery may take before it is answered 503.
    pub deadline: Duration,
    /// The app's metrics.
    pub metrics: Metrics,
    /// The on-demand session sync (`POST /api/auth/sync`), when a secret key is configured.
    pub session: Option<crate::session::SessionSync>,
}

/// How the server is run.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Largest body accepted; larger is 413.
    pub body_limit: usize,
    /// Worker threads (0: one per core).
    pub workers: usize,
    /// How often deferred deletes are retried.
    pub pending_delete_interval: Duration,
    /// How long in-flight requests may finish after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    /// Longest a client may take to send a request's headers, then its body, and longest an
    /// idle keep-alive connection stays open; past it the connection is cut (408).
    pub client_timeout: Duration,
}

/// How long a request's body may take to arrive (see [`ServerSettings::client_timeout`]).
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeout(pub Duration);

/// A bound, not yet running server.
pub struct Application {
    address: SocketAddr,
    server: Server,
}

impl Application {
    /// Binds `listener` and prepares the server; the database must already be migrated.
    pub fn build(
        listener: TcpListener,
        state: AppState,
        settings: &ServerSettings,
    ) -> std::io::Result<Self> {
        let address = listener.local_addr()?;
        let state = web::Data::new(state);
        spawn_pending_delete_retries(state.clone(), settings.pending_delete_interval);
        let body_limit = settings.body_limit;
        let body_timeout = BodyTimeout(settings.client_timeout);
        let mut server = HttpServer::new(move || {
            App::new()
                .wrap(middleware::from_fn(crate::routes::request_id::attach))
                .app_data(state.clone())
                .app_data(web::PayloadConfig::new(body_limit))
                .app_data(body_timeout)
                .configure(crate::routes::configure)
        })
        // A client trickling its headers is cut off here, one trickling its body by the
        // handler (BodyTimeout), an idle keep-alive connection by the keep-alive timeout.
        .client_request_timeout(settings.client_timeout)
        .keep_alive(settings.client_timeout)
        .client_disconnect_timeout(Duration::from_secs(1))
        .shutdown_timeout(settings.shutdown_grace.as_secs());
        if settings.workers > 0 {
            server = server.workers(settings.workers);
        }
        let server = server.listen(listener)?.run();
        Ok(Self { address, server })
    }

    /// The address actually bound.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Serves until stopped (SIGINT/SIGTERM stop it gracefully).
    pub async fn run(self) -> std::io::Result<()> {
        self.server.await
    }
}

/// Retries deletes the application's foreign keys refused, until they succeed.
fn spawn_pending_delete_retries(state: web::Data<AppState>, every: Duration) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match state.db.retry_pending_deletes().await {
                Ok(report) if report.completed > 0 || report.still_pending > 0 => tracing::info!(
                    completed = report.completed,
                    still_pending = report.still_pending,
                    "retried deferred deletes"
                ),
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "could not retry deferred deletes"),
            }
        }
    });
}
