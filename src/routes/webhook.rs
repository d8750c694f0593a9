//! `POST /webhooks/clerk`.
//!
//! The status code is behaviour: Svix retries every non-2xx answer for about 27 hours and
//! counts only a 2xx within 15 s as success. So a sender's mistake is a 4xx (it will not
//! fix itself, but the log says exactly what was wrong), a passing database failure is a
//! 503 with `Retry-After`, our own failure an opaque 500 with the whole chain logged.
//! Never a 3xx, never a 410 (Standard Webhooks senders disable an endpoint on 410).

use actix_web::http::{header, StatusCode};
use actix_web::web::{Bytes, Data, Payload};
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError};
use serde_json::json;

use crate::db::DbError;
use crate::domain::{Event, EventError, MessageId};
use crate::state::{AppState, BodyTimeout};
use crate::sync;
use crate::sync::dead_letter::{self, Reason};
use crate::verify::{self, SignatureError};

/// Why a delivery was not applied.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The signature check failed.
    #[error("signature rejected: {0}")]
    Signature(#[from] SignatureError),
    /// The verified body is not an event clerk-sync can apply.
    #[error("invalid event: {0}")]
    Event(#[from] EventError),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] DbError),
    /// The client did not send the whole body in time.
    #[error("request body not received within {0} s")]
    BodyTimeout(u64),
}

impl ResponseError for WebhookError {
    fn status_code(&self) -> StatusCode {
        match self {
            WebhookError::Signature(
                SignatureError::MissingHeader(_)
                | SignatureError::InvalidHeader(_)
                | SignatureError::NotUtf8,
            ) => StatusCode::BAD_REQUEST,
            WebhookError::Signature(_) => StatusCode::UNAUTHORIZED,
            WebhookError::Event(_) => StatusCode::BAD_REQUEST,
            WebhookError::Database(DbError::Unavailable(_) | DbError::NotMigrated(_)) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            WebhookError::Database(_) => StatusCode::INTERNAL_SERVER_ERROR,
            WebhookError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let mut response = HttpResponse::build(status);
        let message = match self {
            WebhookError::Database(
                DbError::Internal(_)
                | DbError::Incompatible(_)
                | DbError::Config(_)
                | DbError::Refused(_),
            ) => "internal error".to_owned(),
            WebhookError::Database(_) => "database unavailable, retry later".to_owned(),
            other => other.to_string(),
        };
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.insert_header((header::RETRY_AFTER, "5"));
        }
        response.json(json!({"error": message}))
    }
}

/// Copies actix's headers into the `http` 1.x map the svix crate takes.
fn header_map(request: &HttpRequest) -> http::HeaderMap {
    let mut map = http::HeaderMap::with_capacity(request.headers().len());
    for (name, value) in request.headers() {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_str().as_bytes()),
            http::HeaderValue::from_bytes(value.as_bytes()),
        ) {
            map.append(name, value);
        }
    }
    map
}

impl WebhookError {
    /// The `reason` label of `clerk_sync_rejected_total`.
    fn reason(&self) -> &'static str {
        match self {
            WebhookError::Signature(SignatureError::MissingHeader(_)) => "missing_header",
            WebhookError::Signature(SignatureError::InvalidHeader(_)) => "invalid_header",
            WebhookError::Signature(SignatureError::TooOld | SignatureError::TooNew) => {
                "stale_timestamp"
            }
            WebhookError::Signature(SignatureError::NoMatch) => "no_matching_signature",
            WebhookError::Signature(SignatureError::NotUtf8) => "not_utf8",
            WebhookError::Event(_) => "invalid_event",
            WebhookError::Database(DbError::Unavailable(_) | DbError::NotMigrated(_)) => {
                "database_unavailable"
            }
            WebhookError::Database(_) => "internal_error",
            WebhookError::BodyTimeout(_) => "body_timeout",
        }
    }
}

/// Reads the body within the client timeout; the body limit (413) is the `PayloadConfig`'s,
/// as for any `Bytes` extractor.
async fn read_body(
    request: &HttpRequest,
    payload: Payload,
    state: &AppState,
) -> Result<Bytes, actix_web::Error> {
    let timeout = request
        .app_data::<BodyTimeout>()
        .map_or(std::time::Duration::from_secs(5), |t| t.0);
    let mut payload = payload.into_inner();
    match tokio::time::timeout(timeout, Bytes::from_request(request, &mut payload)).await {
        Ok(body) => body,
        Err(_) => {
            let error = WebhookError::BodyTimeout(timeout.as_secs());
            state.metrics.rejected(error.reason());
            tracing::warn!(error = %error, status = 408, "delivery refused");
            Err(error.into())
        }
    }
}

/// Verifies, parses and applies one delivery.
pub async fn receive(
    request: HttpRequest,
    payload: Payload,
    state: Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let body = read_body(&request, payload, &state).await?;
    let started = std::time::Instant::now();
    let headers = header_map(&request);
    let message_id = verify::message_id(&headers).map(str::to_owned);
    let result = handle(&headers, &body, &state).await;
    state
        .metrics
        .observe_latency(started.elapsed().as_secs_f64());
    match &result {
        Ok((event, outcome)) => state
            .metrics
            .delivered(event.event_type(), outcome.as_str()),
        Err(error) => state.metrics.rejected(error.reason()),
    }
    match &result {
        Ok((event, outcome)) => tracing::info!(
            svix_id = message_id.as_deref().unwrap_or(""),
            event_type = event.event_type(),
            user_id = event.user_id().map(|u| u.as_str()).unwrap_or(""),
            outcome = outcome.as_str(),
            "delivery handled"
        ),
        Err(
            error @ WebhookError::Database(
                DbError::Internal(_)
                | DbError::Incompatible(_)
                | DbError::Config(_)
                | DbError::Refused(_),
            ),
        ) => {
            tracing::error!(svix_id = message_id.as_deref().unwrap_or(""), error = %error, "delivery failed")
        }
        Err(error) => tracing::warn!(
            svix_id = message_id.as_deref().unwrap_or(""),
            error = %error,
            status = error.status_code().as_u16(),
            "delivery refused"
        ),
    }
    let (_, outcome) = result?;
    Ok(HttpResponse::Ok().json(json!({"outcome": outcome})))
}

async fn handle(
    headers: &http::HeaderMap,
    body: &[u8],
    state: &AppState,
) -> Result<(Event, sync::Outcome), WebhookError> {
    state.secrets.current().verify(body, headers, true)?;
    let id = MessageId::parse(verify::message_id(headers).unwrap_or(""))?;
    let started = std::time::Instant::now();
    let result = apply(&id, body, state).await;
    if let Err(error) = &result {
        let reason = match error {
            WebhookError::Event(e) => Some(Reason::of_event_error(e)),
            WebhookError::Database(e) => Reason::of_db_error(e),
            _ => None,
        };
        if let Some(reason) = reason {
            // Within what is left of the deadline; past it the write still completes on its
            // own task, the answer just does not wait for it.
            let left = state.deadline.saturating_sub(started.elapsed());
            keep_dead_letter(&id, headers, body, reason, error, state, left).await;
        }
    }
    result
}

/// Keeps a verified delivery that cannot be applied for good; the answer stays the error's.
async fn keep_dead_letter(
    id: &MessageId,
    headers: &http::HeaderMap,
    body: &[u8],
    reason: Reason,
    error: &WebhookError,
    state: &AppState,
    within: std::time::Duration,
) {
    let detail = error.to_string();
    let kept = tokio::time::timeout(
        within,
        dead_letter::keep(
            &state.db,
            id,
            headers,
            body,
            reason,
            &detail,
            state.dead_letters,
        ),
    )
    .await
    .unwrap_or_else(|_| Err(DbError::Unavailable("request deadline exceeded".into())));
    match kept {
        Ok(Some(kept)) if !kept.kept => {
            state.metrics.dead_lettered(reason.as_str());
            tracing::warn!(
                svix_id = id.as_str(),
                reason = reason.as_str(),
                "not kept as a dead letter: larger alone than CLERK_SYNC_DEAD_LETTER_MAX_BYTES (counted as dropped)"
            );
        }
        Ok(Some(kept)) => {
            state.metrics.dead_lettered(reason.as_str());
            tracing::warn!(
                svix_id = id.as_str(),
                reason = reason.as_str(),
                attempts = kept.attempts,
                dropped = kept.dropped,
                "kept as a dead letter: `clerk-sync replay --dead-letters` applies it once it can be"
            );
        }
        Ok(None) => {}
        // Svix retries a non-2xx answer: the next attempt keeps it.
        Err(error) => {
            tracing::warn!(svix_id = id.as_str(), %error, "could not keep the dead letter")
        }
    }
}

/// Parses and applies a verified delivery within the deadline.
async fn apply(
    id: &MessageId,
    body: &[u8],
    state: &AppState,
) -> Result<(Event, sync::Outcome), WebhookError> {
    let event = Event::parse(body)?;
    // Answer well within Svix's 15 s: past the deadline, 503 and Svix retries. (The database
    // may still commit the abandoned attempt; the retry is then a `duplicate`.)
    let outcome = tokio::time::timeout(
        state.deadline,
        sync::ingest(&state.db, id, &event, state.sync),
    )
    .await
    .map_err(|_| DbError::Unavailable("request deadline exceeded".into()))??;
    Ok((event, outcome))
}

/// Any method but POST on the webhook path.
pub async fn method_not_allowed() -> HttpResponse {
    HttpResponse::MethodNotAllowed()
        .insert_header((header::ALLOW, "POST"))
        .json(json!({"error": "only POST is accepted here"}))
}
