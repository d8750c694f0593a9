//! A request id on every request: taken from `X-Request-Id` when the caller sent a usable one,
//! made up otherwise, carried by the request's log span and echoed in the response.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use tracing::Instrument;

const HEADER: &str = "x-request-id";

fn usable(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic())
}

/// The middleware (`middleware::from_fn(request_id::attach)`).
pub async fn attach(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = request
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| usable(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let state = request
        .app_data::<actix_web::web::Data<crate::state::AppState>>()
        .cloned();
    let span = tracing::info_span!("request", request_id = %id, method = %request.method(), path = %request.path());
    let mut response = next.call(request).instrument(span).await?;
    // The body limit is enforced before any handler runs: count its refusals here.
    if response.status() == actix_web::http::StatusCode::PAYLOAD_TOO_LARGE {
        if let Some(state) = state {
            state.metrics.rejected("body_too_large");
        }
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(HEADER), value);
    }
    Ok(response)
}
