//! `GET /metrics`: Prometheus text format.

use actix_web::{web, HttpResponse};

use crate::state::AppState;

/// The exposition.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let body = state.metrics.render(&state.db).await;
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(body)
}
