//! A small client of Clerk's Backend API: the users list, its count, one user.
//!
//! Retry policy: a 429 waits for its `Retry-After` (whole seconds; capped at a minute); a
//! 5xx, a timeout or a connection error waits with exponential backoff. Both are bounded
//! (`retries`, at least ten for 429s): past the bound the request fails as
//! [`ApiError::Unavailable`] and the walk stops, its checkpoint kept. A 401/403 or another
//! 4xx is never retried: it is the caller's to fix, and Clerk's own message says how.
//! Requests are spaced to stay under `max_requests_per_10s` (0: no limit).

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::domain::{ApiUser, Event};

/// Clerk's secret key (`sk_test_…`, `sk_live_…`). Never printed: `Debug` redacts it.
#[derive(Clone)]
pub struct SecretKey(String);

impl SecretKey {
    /// Accepts a non-empty key of visible ASCII characters (it travels in a header).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the Clerk secret key is empty or holds characters a key never has".into());
        }
        Ok(Self(raw.to_owned()))
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey([redacted])")
    }
}

impl std::str::FromStr for SecretKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Why a request to Clerk's API failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401/403: the key is wrong, revoked, or for another instance.
    #[error("Clerk refused the secret key ({status}): {message}")]
    Unauthorized {
        /// The HTTP status.
        status: u16,
        /// Clerk's explanation.
        message: String,
    },
    /// Another 4xx: the request itself was refused.
    #[error("Clerk refused {what} ({status}): {message}")]
    Refused {
        /// What was asked.
        what: String,
        /// The HTTP status.
        status: u16,
        /// Clerk's explanation.
        message: String,
    },
    /// Still failing (5xx, 429, timeouts, connection errors) after every retry.
    #[error("Clerk's API did not answer {what} after {attempts} attempts: {last}")]
    Unavailable {
        /// What was asked.
        what: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// A 2xx whose body is not what Clerk sends.
    #[error("Clerk's answer to {what} is not what its API documents: {reason}")]
    Malformed {
        /// What was asked.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// How the client talks to the API.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// The API's base URL, `/v1` included.
    pub base_url: String,
    /// The secret key.
    pub secret_key: SecretKey,
    /// Most requests per 10 seconds (0: no limit).
    pub max_requests_per_10s: u32,
    /// Retries of a request that failed transiently.
    pub retries: u32,
    /// Longest wait for one answer.
    pub timeout: Duration,
    /// The first backoff delay; it doubles with each retry, up to 30 s.
    pub backoff: Duration,
}

/// The base URL of Clerk's Backend API from a configured address: `https://api.clerk.com`
/// and `https://api.clerk.com/v1` both mean `https://api.clerk.com/v1`.
pub fn base_url(configured: &str) -> Result<String, String> {
    let trimmed = configured.trim().trim_end_matches('/');
    let url = reqwest::Url::parse(trimmed)
        .map_err(|e| format!("--api-url {configured:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("--api-url {configured:?} is not an http(s) URL"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "--api-url {configured:?} must not carry a query or fragment"
        ));
    }
    Ok(if trimmed.ends_with("/v1") {
        trimmed.to_owned()
    } else {
        format!("{trimmed}/v1")
    })
}

/// Spaces requests evenly: at most `n` per 10 seconds.
struct Pacer {
    interval: Option<Duration>,
    next: tokio::sync::Mutex<Instant>,
}

impl Pacer {
    fn new(max_per_10s: u32) -> Self {
        Self {
            interval: (max_per_10s > 0).then(|| Duration::from_secs(10) / max_per_10s),
            next: tokio::sync::Mutex::new(Instant::now()),
        }
    }

    async fn wait_turn(&self) {
        let Some(interval) = self.interval else {
            return;
        };
        let wait = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            let slot = (*next).max(now);
            *next = slot + interval;
            slot - now
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Clerk's error body: `{"errors":[{"message","long_message","code"}], …}`.
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorItem>,
}

#[derive(Deserialize)]
struct ErrorItem {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    long_message: Option<String>,
}

fn clerk_message(body: &[u8]) -> String {
    let Ok(parsed) = serde_json::from_slice::<ErrorBody>(body) else {
        return "no explanation in the answer".into();
    };
    let parts: Vec<String> = parsed
        .errors
        .iter()
        .map(|e| {
            let text = e
                .long_message
                .as_deref()
                .or(e.message.as_deref())
                .unwrap_or("");
            match e.code.as_deref() {
                Some(code) => format!("{code}: {text}"),
                None => text.to_owned(),
            }
        })
        .collect();
    if parts.is_empty() {
        "no explanation in the answer".into()
    } else {
        // Bounded: it goes to logs and terminals.
        parts.join("; ").chars().take(500).collect()
    }
}

/// A client of Clerk's Backend API.
pub struct Client {
    http: reqwest::Client,
    settings: ClientSettings,
    pacer: Pacer,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.settings.base_url)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TotalCount {
    total_count: u64,
}

impl Client {
    /// A client with these settings.
    pub fn new(settings: ClientSettings) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("clerk-sync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            pacer: Pacer::new(settings.max_requests_per_10s),
            http,
            settings,
        })
    }

    /// The base URL, `/v1` included.
    pub fn base_url(&self) -> &str {
        &self.settings.base_url
    }

    /// One page of users in creation order, after the user `after` (from the start when none).
    /// Each element is a user object as [`Event::from_api_user_or_id`] reads it.
    pub async fn list_users(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ApiUser>, ApiError> {
        // Clerk answers 10 users, not an error, to a limit above 500.
        let limit = limit.clamp(1, 500).to_string();
        let mut query = vec![("limit", limit.as_str()), ("order_by", "created_at")];
        if let Some(after) = after {
            query.push(("starting_after", after));
        }
        let what = match after {
            Some(after) => format!("the users after {after}"),
            None => "the first users".to_owned(),
        };
        let body = self.get("/users", &query, &what).await?;
        // One pass over the page, when every user in it parses; else user by user, so that
        // one user that does not parse fails alone.
        if let Some(users) = Event::from_api_users(&body) {
            return Ok(users);
        }
        let users: Vec<Box<RawValue>> =
            serde_json::from_slice(&body).map_err(|e| ApiError::Malformed {
                what,
                reason: format!("expected a JSON array of users: {e}"),
            })?;
        Ok(users
            .iter()
            .map(|raw| Event::from_api_user_or_id(raw.get()))
            .collect())
    }

    /// How many users the instance has now (for progress only: it moves during a walk).
    pub async fn count_users(&self) -> Result<u64, ApiError> {
        let what = "the user count".to_owned();
        let body = self.get("/users/count", &[], &what).await?;
        let count: TotalCount = serde_json::from_slice(&body).map_err(|e| ApiError::Malformed {
            what,
            reason: e.to_string(),
        })?;
        Ok(count.total_count)
    }

    /// Whether the user exists now.
    pub async fn user_exists(&self, id: &str) -> Result<bool, ApiError> {
        // Ids are `user_` + [A-Za-z0-9_-]: safe in a path as they are.
        let path = format!("/users/{id}");
        let what = format!("user {id}");
        match self.get(&path, &[], &what).await {
            Ok(_) => Ok(true),
            Err(ApiError::Refused { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One user object exactly as Clerk sent it, or `None` when Clerk has no such user (404:
    /// deleted, or never existed in this instance).
    pub async fn get_user(&self, id: &str) -> Result<Option<Vec<u8>>, ApiError> {
        // Ids are `user_` + [A-Za-z0-9_-]: safe in a path as they are.
        let path = format!("/users/{id}");
        let what = format!("user {id}");
        match self.get(&path, &[], &what).await {
            Ok(body) => Ok(Some(body)),
            Err(ApiError::Refused { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The instance's JSON Web Key Set (`GET /v1/jwks`), the public keys its session tokens
    /// are signed with, as Clerk sent it.
    pub async fn jwks(&self) -> Result<Vec<u8>, ApiError> {
        self.get("/jwks", &[], "the JSON Web Key Set").await
    }

    async fn get(
        &self,
        path: &str,
        query: &[(&str, &str)],
        what: &str,
    ) -> Result<Vec<u8>, ApiError> {
        let url = format!("{}{path}", self.settings.base_url);
        let retries = self.settings.retries;
        let throttle_limit = retries.max(10);
        let (mut failures, mut throttles, mut attempts) = (0u32, 0u32, 0u32);
        loop {
            self.pacer.wait_turn().await;
            attempts += 1;
            let sent = self
                .http
                .get(&url)
                .query(query)
                .bearer_auth(self.settings.secret_key.expose())
                .send()
                .await;
            let (wait, last) = match sent {
                Err(e) => {
                    failures += 1;
                    // Without the URL: it says nothing the caller does not know.
                    let reason = if e.is_timeout() {
                        format!("no answer within {} s", self.settings.timeout.as_secs())
                    } else if e.is_connect() {
                        format!("cannot connect to {}", self.settings.base_url)
                    } else {
                        format!("request failed: {}", e.without_url())
                    };
                    if failures > retries {
                        return Err(self.unavailable(what, attempts, reason));
                    }
                    (self.backoff(failures), reason)
                }
                Ok(response) => {
                    let status = response.status();
                    let retry_after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok());
                    let body = match response.bytes().await {
                        Ok(body) => body.to_vec(),
                        Err(e) => {
                            failures += 1;
                            let reason = format!("answer cut short: {}", e.without_url());
                            if failures > retries {
                                return Err(self.unavailable(what, attempts, reason));
                            }
                            tokio::time::sleep(self.backoff(failures)).await;
                            continue;
                        }
                    };
                    let code = status.as_u16();
                    if status.is_success() {
                        return Ok(body);
                    }
                    match code {
                        429 => {
                            throttles += 1;
                            let reason = format!("429 {}", clerk_message(&body));
                            if throttles > throttle_limit {
                                return Err(self.unavailable(what, attempts, reason));
                            }
                            let wait = retry_after
                                .map(|s| Duration::from_secs(s.min(60)))
                                .unwrap_or_else(|| self.backoff(throttles));
                            tracing::warn!(
                                wait_seconds = wait.as_secs_f64(),
                                "Clerk's API is rate limiting: waiting as told"
                            );
                            (wait, reason)
                        }
                        401 | 403 => {
                            return Err(ApiError::Unauthorized {
                                status: code,
                                message: clerk_message(&body),
                            })
                        }
                        500..=599 => {
                            failures += 1;
                            let reason = format!("{code} {}", clerk_message(&body));
                            if failures > retries {
                                return Err(self.unavailable(what, attempts, reason));
                            }
                            (self.backoff(failures), reason)
                        }
                        _ => {
                            return Err(ApiError::Refused {
                                what: what.to_owned(),
                                status: code,
                                message: clerk_message(&body),
                            })
                        }
                    }
                }
            };
            tracing::info!(
                request = what,
                attempt = attempts,
                wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                reason = %last,
                "retrying a request to Clerk's API"
            );
            tokio::time::sleep(wait).await;
        }
    }

    fn backoff(&self, nth: u32) -> Duration {
        let factor = 2u32.saturating_pow(nth.saturating_sub(1).min(16));
        (self.settings.backoff.saturating_mul(factor)).min(Duration::from_secs(30))
    }

    fn unavailable(&self, what: &str, attempts: u32, last: String) -> ApiError {
        ApiError::Unavailable {
            what: what.to_owned(),
            attempts,
            last,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_v1_prefix_is_added_once() {
        assert_eq!(
            base_url("https://api.clerk.com").as_deref(),
            Ok("https://api.clerk.com/v1")
        );
        assert_eq!(
            base_url("https://api.clerk.com/v1/").as_deref(),
            Ok("https://api.clerk.com/v1")
        );
        assert_eq!(
            base_url("http://127.0.0.1:9000").as_deref(),
            Ok("http://127.0.0.1:9000/v1")
        );
        assert!(base_url("ftp://example.com").is_err());
        assert!(base_url("not a url").is_err());
    }

    #[test]
    fn the_secret_key_never_shows_in_debug() {
        let key = SecretKey::parse("sk_test_abcdef").expect("key");
        assert!(!format!("{key:?}").contains("abcdef"));
        assert!(SecretKey::parse(" ").is_err());
        assert!(SecretKey::parse("sk test").is_err());
    }

    #[test]
    fn clerk_errors_are_read_from_their_documented_shape() {
        let body = br#"{"errors":[{"message":"Too many requests","long_message":"Slow down","code":"too_many_requests"}],"clerk_trace_id":"x"}"#;
        assert_eq!(clerk_message(body), "too_many_requests: Slow down");
        assert_eq!(clerk_message(b"<html>"), "no explanation in the answer");
    }
}
