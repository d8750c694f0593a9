//! HTTP in and out, nothing else: each handler turns a request into a call on the core
//! and the result into a status code.
//!
//! Routes come in two sets. The public set is what a sender on the internet calls; the
//! internal set (probes, metrics) is for orchestrators and Prometheus. Without
//! `--internal-bind` one listener serves both; with it, each listener serves its own set and
//! answers 404 to anything else.

mod health;
mod metrics;
pub mod request_id;
mod session;
mod webhook;

use actix_web::web;

pub use webhook::WebhookError;

/// Registers every route, for a single listener (no `--internal-bind`).
pub fn configure(cfg: &mut web::ServiceConfig) {
    configure_public(cfg);
    configure_internal(cfg);
}

/// The routes a sender outside calls. Every public route is registered here and nowhere
/// else, so that `--internal-bind` keeps everything else off the public port.
pub fn configure_public(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/webhooks/clerk")
            .route(web::post().to(webhook::receive))
            .default_service(web::route().to(webhook::method_not_allowed)),
    )
    .service(
        web::resource("/api/auth/sync")
            .route(web::post().to(session::sync))
            .route(web::method(actix_web::http::Method::OPTIONS).to(session::preflight))
            .default_service(web::route().to(session::method_not_allowed)),
    );
}

/// Probes and metrics, for orchestrators and Prometheus.
pub fn configure_internal(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/metrics", web::get().to(metrics::metrics));
}
