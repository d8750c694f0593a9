//! `POST /api/auth/sync`: a signed-in user's own session token in, their row out.
//!
//! Status policy: a token that does not prove who the caller is answers 401 with the
//! `reason` that refused it; a body `userId` naming anyone but the token's user 403; a user
//! Clerk no longer has 404 (nothing written); Clerk's API or the database unavailable 503
//! with `Retry-After`. The session cookie is read only for a request whose `Origin` is one of
//! the authorized parties (a cookie rides along with cross-site requests; a Bearer header
//! does not), and CORS answers name only those origins, never a wildcard.
//!
//! Neither the token nor the secret key is ever logged or answered.

use actix_web::http::{header, StatusCode};
use actix_web::web::{Data, Payload};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder};
use futures_util::StreamExt as _;
use serde_json::json;

use crate::db::{AppUser, DbError};
use crate::domain::ClerkUserId;
use crate::session::{SessionOutcome, SessionSync, SyncError, TokenError};
use crate::state::{AppState, BodyTimeout};

/// Largest body accepted: `{"userId": "user_…"}` needs a few dozen bytes.
const BODY_LIMIT: usize = 4 * 1024;

/// Why a session sync was not answered 200.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("session sync is not enabled: configure CLERK_SECRET_KEY")]
    Disabled,
    #[error("{0}")]
    Token(TokenError),
    #[error("the body's userId is not the signed-in user")]
    OtherUser,
    #[error("the body must be empty or a JSON object with a string userId")]
    Body,
    #[error("the body is larger than {BODY_LIMIT} bytes")]
    BodyTooLarge,
    #[error("request body not received in time")]
    BodyTimeout,
    #[error("no answer within the request deadline ({0} s)")]
    Deadline(u64),
    #[error(transparent)]
    Sync(#[from] SyncError),
}

impl SessionError {
    fn status(&self) -> StatusCode {
        match self {
            SessionError::Disabled => StatusCode::NOT_FOUND,
            SessionError::Token(TokenError::KeysUnavailable) => StatusCode::SERVICE_UNAVAILABLE,
            SessionError::Token(_) => StatusCode::UNAUTHORIZED,
            SessionError::OtherUser => StatusCode::FORBIDDEN,
            SessionError::Body => StatusCode::BAD_REQUEST,
            SessionError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            SessionError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            SessionError::Deadline(_) => StatusCode::SERVICE_UNAVAILABLE,
            SessionError::Sync(SyncError::NotFound) => StatusCode::NOT_FOUND,
            SessionError::Sync(SyncError::ClerkUnavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            SessionError::Sync(SyncError::Clerk(_)) => StatusCode::BAD_GATEWAY,
            SessionError::Sync(SyncError::Database(
                DbError::Unavailable(_) | DbError::NotMigrated(_),
            )) => StatusCode::SERVICE_UNAVAILABLE,
            SessionError::Sync(SyncError::Database(_)) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The answer's `reason`; also the label of the refusals metric for 401s and 403s.
    fn reason(&self) -> &'static str {
        match self {
            SessionError::Disabled => "disabled",
            SessionError::Token(error) => error.reason(),
            SessionError::OtherUser => "user_id_mismatch",
            SessionError::Body => "invalid_body",
            SessionError::BodyTooLarge => "body_too_large",
            SessionError::BodyTimeout => "body_timeout",
            SessionError::Deadline(_) => "deadline_exceeded",
            SessionError::Sync(SyncError::NotFound) => "user_not_found",
            SessionError::Sync(SyncError::ClerkUnavailable(_)) => "clerk_unavailable",
            SessionError::Sync(SyncError::Clerk(_)) => "clerk_error",
            SessionError::Sync(SyncError::Database(
                DbError::Unavailable(_) | DbError::NotMigrated(_),
            )) => "database_unavailable",
            SessionError::Sync(SyncError::Database(_)) => "internal_error",
        }
    }

    /// The label of `clerk_sync_session_syncs_total`.
    fn outcome(&self) -> &'static str {
        match self.status() {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => "refused",
            StatusCode::NOT_FOUND if matches!(self, SessionError::Sync(_)) => "not_found",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            StatusCode::INTERNAL_SERVER_ERROR | StatusCode::BAD_GATEWAY => "error",
            _ => "bad_request",
        }
    }

    fn message(&self) -> String {
        match self {
            // Clerk's and the database's own words stay in the log.
            SessionError::Sync(SyncError::Clerk(_)) => {
                "Clerk's API answered unexpectedly".to_owned()
            }
            SessionError::Sync(SyncError::Database(
                DbError::Internal(_) | DbError::Incompatible(_),
            )) => "internal error".to_owned(),
            SessionError::Sync(SyncError::Database(_)) => {
                "database unavailable, retry later".to_owned()
            }
            SessionError::Sync(SyncError::ClerkUnavailable(_)) => {
                "Clerk's API is unavailable, retry later".to_owned()
            }
            other => other.to_string(),
        }
    }
}

/// The request's `Origin` when it is one of the authorized parties.
fn allowed_origin<'a>(request: &'a HttpRequest, session: Option<&SessionSync>) -> Option<&'a str> {
    let origin = request.headers().get(header::ORIGIN)?.to_str().ok()?;
    let session = session?;
    session
        .authorized_parties()
        .iter()
        .any(|p| p == origin)
        .then_some(origin)
}

/// CORS headers for an authorized origin; `Vary: Origin` always, as the answer depends on it.
fn with_cors(mut response: HttpResponseBuilder, origin: Option<&str>) -> HttpResponseBuilder {
    response.insert_header((header::VARY, "Origin"));
    if let Some(origin) = origin {
        response.insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.to_owned()));
        response.insert_header((header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true"));
    }
    response
}

/// The value of cookie `name` among the request's `Cookie` headers.
fn cookie<'a>(request: &'a HttpRequest, name: &str) -> Option<&'a str> {
    request
        .headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value.trim().trim_matches('"'))
}

/// The session token: the Bearer header, else Clerk's session cookie (the instance's suffixed
/// name first, as Clerk's SDKs prefer it), accepted only from an authorized origin.
fn session_token<'a>(
    request: &'a HttpRequest,
    session: &SessionSync,
) -> Result<&'a str, TokenError> {
    if let Some(value) = request.headers().get(header::AUTHORIZATION) {
        let value = value
            .to_str()
            .map_err(|_| TokenError::Malformed("the Authorization header is not text"))?;
        let (scheme, token) = value.trim().split_once(' ').ok_or(TokenError::Malformed(
            "the Authorization header is not `Bearer <token>`",
        ))?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(TokenError::Malformed(
                "the Authorization header is not `Bearer <token>`",
            ));
        }
        let token = token.trim();
        return if token.is_empty() {
            Err(TokenError::Missing)
        } else {
            Ok(token)
        };
    }
    let suffixed = session.cookie_suffix().map(|s| format!("__session_{s}"));
    let from_cookie = suffixed
        .as_deref()
        .and_then(|name| cookie(request, name))
        .or_else(|| cookie(request, "__session"))
        .filter(|t| !t.is_empty());
    match from_cookie {
        None => Err(TokenError::Missing),
        Some(token) => {
            if allowed_origin(request, Some(session)).is_none() {
                return Err(TokenError::CookieOrigin);
            }
            Ok(token)
        }
    }
}

/// Reads a small body within the client timeout.
async fn read_body(request: &HttpRequest, mut payload: Payload) -> Result<Vec<u8>, SessionError> {
    let timeout = request
        .app_data::<BodyTimeout>()
        .map_or(std::time::Duration::from_secs(5), |t| t.0);
    let read = async {
        let mut body = Vec::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|_| SessionError::Body)?;
            if body.len() + chunk.len() > BODY_LIMIT {
                return Err(SessionError::BodyTooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(SessionError::BodyTimeout))
}

/// The optional `{"userId": …}`.
fn requested_user(body: &[u8]) -> Result<Option<String>, SessionError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(rename = "userId", default)]
        user_id: Option<String>,
    }
    let parsed: Body = serde_json::from_slice(body).map_err(|_| SessionError::Body)?;
    Ok(parsed.user_id)
}

async fn handle(
    request: &HttpRequest,
    payload: Payload,
    state: &AppState,
) -> Result<(ClerkUserId, SessionOutcome, Option<AppUser>), SessionError> {
    let session = state.session.as_ref().ok_or(SessionError::Disabled)?;
    let body = read_body(request, payload).await?;
    let raw = session_token(request, session).map_err(SessionError::Token)?;
    // One bound for the whole answer (key fetch, Clerk's retries, the write): past it, 503.
    // A write already under way finishes on its own task; a retry then finds it done.
    let work = async {
        let claims = session
            .verify(raw, &state.metrics)
            .await
            .map_err(SessionError::Token)?;
        // Only once the token holds: the body can name nobody but the token's own user.
        if let Some(asked) = requested_user(&body)? {
            if asked != claims.user.as_str() {
                return Err(SessionError::OtherUser);
            }
        }
        let (outcome, row) = session
            .sync(&claims.user, &state.db, state.sync, &state.metrics)
            .await?;
        Ok((claims.user, outcome, row))
    };
    tokio::time::timeout(state.deadline, work)
        .await
        .unwrap_or(Err(SessionError::Deadline(state.deadline.as_secs())))
}

/// Verifies the caller's session token and syncs their user.
pub async fn sync(request: HttpRequest, payload: Payload, state: Data<AppState>) -> HttpResponse {
    let origin = allowed_origin(&request, state.session.as_ref()).map(str::to_owned);
    let result = handle(&request, payload, &state).await;
    match result {
        Ok((user, outcome, row)) => {
            state.metrics.session_sync(outcome.as_str());
            tracing::info!(user_id = %user, outcome = outcome.as_str(), "session sync");
            with_cors(HttpResponse::Ok(), origin.as_deref())
                .json(json!({"outcome": outcome.as_str(), "user": row}))
        }
        Err(error) => {
            let status = error.status();
            state.metrics.session_sync(error.outcome());
            if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
                state.metrics.session_refused(error.reason());
            }
            if status.is_server_error() {
                tracing::error!(reason = error.reason(), error = %error, status = status.as_u16(), "session sync failed");
            } else {
                tracing::warn!(reason = error.reason(), error = %error, status = status.as_u16(), "session sync refused");
            }
            let mut response = with_cors(HttpResponse::build(status), origin.as_deref());
            if status == StatusCode::SERVICE_UNAVAILABLE {
                response.insert_header((header::RETRY_AFTER, "5"));
            }
            response.json(json!({"error": error.message(), "reason": error.reason()}))
        }
    }
}

/// The CORS preflight: answered for authorized origins only.
pub async fn preflight(request: HttpRequest, state: Data<AppState>) -> HttpResponse {
    match allowed_origin(&request, state.session.as_ref()) {
        Some(origin) => with_cors(HttpResponse::NoContent(), Some(origin))
            .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "POST"))
            .insert_header((
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                "authorization, content-type",
            ))
            .insert_header((header::ACCESS_CONTROL_MAX_AGE, "600"))
            .finish(),
        None => with_cors(HttpResponse::Forbidden(), None)
            .json(json!({"error": "this origin is not in CLERK_AUTHORIZED_PARTIES", "reason": "origin_not_allowed"})),
    }
}

/// Any other method on the path.
pub async fn method_not_allowed() -> HttpResponse {
    HttpResponse::MethodNotAllowed()
        .insert_header((header::ALLOW, "POST, OPTIONS"))
        .json(json!({"error": "only POST (and the CORS preflight) is accepted here"}))
}
