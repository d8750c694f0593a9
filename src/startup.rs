//! Building and running the server: bind first (port 0 in tests), report the real address.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{middleware, web, App, HttpServer};

use crate::secrets::Reload;
pub use crate::state::{AppState, BodyTimeout};

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

/// A bound, not yet running server: the public listener and, with `--internal-bind`, the
/// internal one.
pub struct Application {
    address: SocketAddr,
    server: Server,
    internal: Option<(SocketAddr, Server)>,
}

impl Application {
    /// Binds `listener` to every route and prepares the server; the database must already be
    /// migrated.
    pub fn build(
        listener: TcpListener,
        state: AppState,
        settings: &ServerSettings,
    ) -> std::io::Result<Self> {
        Self::build_split(listener, None, state, settings)
    }

    /// Like [`Self::build`]; with `internal`, probes and metrics are served only there and
    /// `listener` serves only the public routes (404 for anything else).
    pub fn build_split(
        listener: TcpListener,
        internal: Option<TcpListener>,
        state: AppState,
        settings: &ServerSettings,
    ) -> std::io::Result<Self> {
        let address = listener.local_addr()?;
        let state = web::Data::new(state);
        spawn_pending_delete_retries(state.clone(), settings.pending_delete_interval);
        spawn_secret_reloads(state.clone());
        let (server, internal) = match internal {
            None => (
                http_server(listener, &state, settings, crate::routes::configure)?,
                None,
            ),
            Some(internal) => {
                let internal_address = internal.local_addr()?;
                // Probes and scrapes are few and small: one worker is plenty.
                let internal_settings = ServerSettings {
                    workers: 1,
                    ..settings.clone()
                };
                (
                    http_server(listener, &state, settings, crate::routes::configure_public)?,
                    Some((
                        internal_address,
                        http_server(
                            internal,
                            &state,
                            &internal_settings,
                            crate::routes::configure_internal,
                        )?,
                    )),
                )
            }
        };
        Ok(Self {
            address,
            server,
            internal,
        })
    }

    /// The public address actually bound.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The internal address actually bound, with `--internal-bind`.
    pub fn internal_address(&self) -> Option<SocketAddr> {
        self.internal.as_ref().map(|(address, _)| *address)
    }

    /// Serves until stopped (SIGINT/SIGTERM stop both listeners gracefully).
    pub async fn run(self) -> std::io::Result<()> {
        match self.internal {
            None => self.server.await,
            Some((_, internal)) => {
                futures_util::future::try_join(self.server, internal).await?;
                Ok(())
            }
        }
    }
}

/// One listener serving the routes `routes` registers.
fn http_server(
    listener: TcpListener,
    state: &web::Data<AppState>,
    settings: &ServerSettings,
    routes: fn(&mut web::ServiceConfig),
) -> std::io::Result<Server> {
    let state = state.clone();
    let body_limit = settings.body_limit;
    let body_timeout = BodyTimeout(settings.client_timeout);
    let mut server = HttpServer::new(move || {
        App::new()
            .wrap(middleware::from_fn(crate::routes::request_id::attach))
            .app_data(state.clone())
            .app_data(web::PayloadConfig::new(body_limit))
            .app_data(body_timeout)
            .configure(routes)
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
    Ok(server.listen(listener)?.run())
}

/// Re-reads the signing secrets on SIGHUP and, when they come from a file, whenever its
/// contents change (polled every second: see [`crate::secrets`]). A failed read keeps the
/// secrets in force and says so in the log and in `clerk_sync_secrets_reload_failing`.
fn spawn_secret_reloads(state: web::Data<AppState>) {
    state
        .metrics
        .signing_secrets(state.secrets.current().count());
    tokio::spawn(async move {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(signal) => Some(signal),
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGHUP: secrets are re-read only when their file changes");
                None
            }
        };
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The error last reported, so that a file that stays broken is logged once, not every
        // second.
        let mut failing: Option<String> = None;
        loop {
            let forced = tokio::select! {
                _ = ticker.tick(), if state.secrets.file().is_some() => false,
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => None } } => true,
                else => break,
            };
            if forced && state.secrets.file().is_none() {
                tracing::info!("SIGHUP: the signing secrets come from the environment, not a file: nothing to re-read");
                continue;
            }
            match state.secrets.reload(forced) {
                Ok(Reload::Unchanged) => {
                    if forced {
                        tracing::info!("SIGHUP: the signing secrets file is unchanged");
                    }
                }
                Ok(Reload::Applied(count)) => {
                    failing = None;
                    state.metrics.secrets_reloaded(count);
                    tracing::info!(secrets = count, "signing secrets reloaded from their file");
                }
                Err(error) => {
                    let text = error.to_string();
                    if forced || failing.as_deref() != Some(text.as_str()) {
                        state.metrics.secrets_reload_failed();
                        tracing::error!(
                            error = %text,
                            secrets_in_force = state.secrets.current().count(),
                            "cannot reload the signing secrets: the secrets in force stay"
                        );
                    }
                    failing = Some(text);
                }
            }
        }
    });
}

/// Retries deletes the application's foreign keys refused, until they succeed.
fn spawn_pending_delete_retries(state: web::Data<AppState>, every: Duration) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match crate::sync::retry_pending_deletes(&state.db).await {
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
