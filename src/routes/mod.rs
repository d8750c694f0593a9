//! HTTP in and out, nothing else: each handler turns a request into a call on the core
//! and the result into a status code.

mod health;
mod metrics;
pub mod request_id;
mod session;
mod webhook;

use actix_web::web;

pub use webhook::WebhookError;

/// Registers every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
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
    )
    .route("/healthz", web::get().to(health::healthz))
    .route("/readyz", web::get().to(health::readyz))
    .route("/metrics", web::get().to(metrics::metrics));
}
