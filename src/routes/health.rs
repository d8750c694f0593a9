//! Probes: `/healthz` (the process answers) and `/readyz` (the database is reachable and migrated).

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::state::AppState;

/// Liveness: the process is up and serving.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Longest the readiness check waits for the database: a probe must answer even when the
/// database hangs (a pooler in front waits for a server for minutes before it gives up).
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1500);

/// Readiness: 200 when the database is reachable and migrated, else 503 with the reason.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let checked = tokio::time::timeout(READY_TIMEOUT, state.db.check_ready())
        .await
        .unwrap_or_else(|_| {
            Err(crate::db::DbError::Unavailable(format!(
                "the database did not answer within {} ms",
                READY_TIMEOUT.as_millis()
            )))
        });
    match checked {
        Ok(()) => {
            let connection = state.db.connection();
            HttpResponse::Ok().json(json!({
                "status": "ready",
                "backend": state.db.backend(),
                "tls": connection.tls,
                "pooler_safe": connection.pooler,
            }))
        }
        Err(error) => {
            tracing::warn!(%error, "not ready");
            HttpResponse::ServiceUnavailable()
                .insert_header(("Retry-After", "5"))
                .json(json!({"status": "unavailable", "reason": error.to_string()}))
        }
    }
}
