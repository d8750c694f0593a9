//! The on-demand sync of one signed-in user (`POST /api/auth/sync`): a user's first request
//! can come before Clerk's `user.created` webhook, so the user's own Clerk session token
//! proves who they are, and clerk-sync fetches that user from Clerk's Backend API and applies
//! the object through the webhook rules ([`crate::sync`]).
//!
//! Policy:
//! - A token is verified entirely ([`token`], [`keys`]) before anything else happens: a
//!   refused token costs no call to Clerk's user API and writes nothing.
//! - The fetched user object is applied as `user.updated` with the delivery id
//!   `session:<user id>:<updated_at>`: the same version of a user fetched again is a
//!   `duplicate` by id (one bookkeeping row per version, however often the user syncs),
//!   while a webhook carrying that version under its own `svix-id` is `stale` by
//!   last-write-wins. Either way the rules decide, never this module: a newer webhook's row is
//!   never overwritten, a tombstone never undone.
//! - Clerk's 404 writes nothing: only `user.deleted` and `backfill --prune` delete, so a secret
//!   key of the wrong instance can never delete anybody.
//! - Concurrent requests for one user share one Backend API call (single flight), and a user
//!   synced less than [`FRESH_FOR`] ago is answered from the table without calling Clerk:
//!   a page that fires ten requests at once costs one call of the instance's rate limit. This
//!   is a cache of process memory, which is fine: it only saves calls; correctness lives in
//!   the database.

pub mod keys;
pub mod token;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use sha1::{Digest, Sha1};

use crate::backfill::client::{ApiError, Client};
use crate::db::{AppUser, Database, DbError};
use crate::domain::{ClerkUserId, Event, EventError, MessageId};
use crate::metrics::Metrics;
use crate::sync::{self, Outcome, SyncOptions};

pub use keys::KeySource;
pub use token::{Policy, SessionClaims, TokenError};

/// How long a user synced from Clerk is answered from the table without asking Clerk again.
pub const FRESH_FOR: Duration = Duration::from_secs(10);

/// Most users remembered at once; past it, those no longer fresh and not waited on are
/// forgotten (the map stays bounded whatever the traffic).
const MAX_REMEMBERED: usize = 10_000;

/// The Frontend API URL a publishable key encodes: `pk_test_`/`pk_live_` and then base64 of
/// `<frontend api host>$`.
pub fn frontend_api_from_publishable_key(key: &str) -> Result<String, String> {
    let key = key.trim();
    let encoded = key
        .strip_prefix("pk_test_")
        .or_else(|| key.strip_prefix("pk_live_"))
        .ok_or("CLERK_PUBLISHABLE_KEY does not start with pk_test_ or pk_live_")?;
    // Clerk's keys are standard base64, with or without padding.
    let decoded = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(encoded.trim_end_matches('='))
        .map_err(|_| "CLERK_PUBLISHABLE_KEY is not base64 after its prefix")?;
    let text =
        String::from_utf8(decoded).map_err(|_| "CLERK_PUBLISHABLE_KEY does not decode to text")?;
    let host = text
        .strip_suffix('$')
        .filter(|h| h.contains('.') && !h.is_empty())
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b':')
        })
        .ok_or("CLERK_PUBLISHABLE_KEY does not encode a Frontend API host")?;
    Ok(format!("https://{host}"))
}

/// The suffix of Clerk's per-instance cookie names (`__session_<suffix>`): the first eight
/// characters of the URL-safe base64 of the publishable key's SHA-1, as Clerk computes it.
pub fn cookie_suffix(publishable_key: &str) -> String {
    let digest = Sha1::digest(publishable_key.trim().as_bytes());
    let encoded = base64::engine::general_purpose::URL_SAFE.encode(digest);
    encoded.chars().take(8).collect()
}

/// The session sync's configuration as given (flags and environment).
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Clerk's secret key: without it the session sync is off.
    pub secret_key: Option<crate::backfill::client::SecretKey>,
    /// Clerk's Backend API, as `backfill` takes it.
    pub api_url: String,
    /// The instance's publishable key (`pk_…`).
    pub publishable_key: Option<String>,
    /// The Frontend API URL tokens must be issued by; overrides the publishable key's.
    pub frontend_api_url: Option<String>,
    /// The PEM public key (`CLERK_JWT_KEY`): tokens verified without fetching keys.
    pub jwt_key: Option<String>,
    /// Origins allowed as `azp`, to send the session cookie, and by CORS.
    pub authorized_parties: Vec<String>,
    /// Accept `sts: pending` sessions.
    pub allow_pending: bool,
    /// Longest a sync may take.
    pub deadline: Duration,
}

/// An origin as browsers send it: `scheme://host[:port]`, no path.
fn parse_origin(raw: &str) -> Result<String, String> {
    let trimmed = raw.trim().trim_end_matches('/');
    let url = reqwest::Url::parse(trimmed)
        .map_err(|e| format!("authorized party {raw:?} is not an origin: {e}"))?;
    let is_origin = matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none()
        && url.username().is_empty();
    if !is_origin || trimmed.contains('*') {
        return Err(format!(
            "authorized party {raw:?} is not an origin like https://app.example.com (no path, no wildcard)"
        ));
    }
    // As browsers send it: host lowercased, a default port left out.
    Ok(url.origin().ascii_serialization())
}

/// The session sync `config` asks for: `None` without a secret key; an error when it is
/// enabled but cannot check tokens safely (no issuer to check `iss` against, an unreadable
/// key or origin).
pub fn build(config: &Config) -> Result<Option<SessionSync>, String> {
    let Some(secret_key) = config.secret_key.clone() else {
        return Ok(None);
    };
    let publishable = config
        .publishable_key
        .as_deref()
        .map(str::trim)
        .filter(|k| !k.is_empty());
    let issuer = match (config.frontend_api_url.as_deref().map(str::trim), publishable) {
        (Some(url), _) if !url.is_empty() => {
            let url = url.trim_end_matches('/');
            reqwest::Url::parse(url)
                .ok()
                .filter(|u| u.scheme() == "https" || u.scheme() == "http")
                .ok_or_else(|| format!("--frontend-api-url {url:?} is not an http(s) URL"))?;
            url.to_owned()
        }
        (_, Some(key)) => frontend_api_from_publishable_key(key)?,
        _ => {
            return Err("POST /api/auth/sync is enabled by CLERK_SECRET_KEY and must check who issued each token: \
                 set CLERK_PUBLISHABLE_KEY to the instance's pk_… key (or --frontend-api-url to its Frontend API URL)"
                .into())
        }
    };
    let authorized_parties = config
        .authorized_parties
        .iter()
        .filter(|p| !p.trim().is_empty())
        .map(|p| parse_origin(p))
        .collect::<Result<Vec<_>, _>>()?;
    let base_url = crate::backfill::client::base_url(&config.api_url)?;
    let client = Arc::new(Client::new(crate::backfill::client::ClientSettings {
        base_url,
        secret_key,
        // Single flight and the freshness window already spare the rate limit; pacing here
        // would only delay a signed-in user's first request.
        max_requests_per_10s: 0,
        retries: 3,
        timeout: config.deadline,
        backoff: Duration::from_millis(250),
    })?);
    let keys = match config
        .jwt_key
        .as_deref()
        .map(str::trim)
        .filter(|k| !k.is_empty())
    {
        Some(pem) => KeySource::Static(keys::parse_pem(pem).map_err(|e| e.to_string())?),
        None => KeySource::Jwks(keys::Jwks::new(client.clone(), config.deadline)),
    };
    Ok(Some(SessionSync::new(SessionSettings {
        policy: Policy {
            issuer,
            authorized_parties,
            allow_pending: config.allow_pending,
        },
        keys,
        client,
        cookie_suffix: publishable.map(cookie_suffix),
        deadline: config.deadline,
    })))
}

/// How the session sync is configured.
#[derive(Debug)]
pub struct SessionSettings {
    /// What a token must satisfy.
    pub policy: Policy,
    /// Where the signing keys come from.
    pub keys: KeySource,
    /// The Backend API client (the one `backfill` uses).
    pub client: Arc<Client>,
    /// The suffix of the instance's `__session_<suffix>` cookie, when the publishable key is
    /// known.
    pub cookie_suffix: Option<String>,
    /// Longest a sync may take (Clerk's retries included) before it is answered 503.
    pub deadline: Duration,
}

/// What a sync did; the answer's `outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionOutcome {
    /// Clerk's version of the user was written now.
    Applied,
    /// The table already held this version or a newer one: nothing was written.
    Unchanged,
    /// The user was synced moments ago: answered from the table, Clerk not asked.
    Cached,
    /// The user has no email address and the daemon skips such users: no row.
    Ignored,
}

impl SessionOutcome {
    /// The name answered and counted.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionOutcome::Applied => "applied",
            SessionOutcome::Unchanged => "unchanged",
            SessionOutcome::Cached => "cached",
            SessionOutcome::Ignored => "ignored",
        }
    }
}

/// Why a verified user could not be synced.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Clerk has no such user (deleted), or clerk-sync holds the user's tombstone.
    #[error("the user does not exist in Clerk (deleted)")]
    NotFound,
    /// Clerk's API failed or did not answer in time (503).
    #[error("Clerk's API is unavailable: {0}")]
    ClerkUnavailable(String),
    /// Clerk refused the secret key, or answered something its API does not document.
    #[error("Clerk's API answered unexpectedly: {0}")]
    Clerk(String),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] DbError),
}

/// A user synced recently: when, whether Clerk knew them, and whether they were skipped
/// (no email, `--skip-users-without-email`).
#[derive(Debug, Clone, Copy)]
struct Recent {
    at: Instant,
    found: bool,
    ignored: bool,
}

type Slot = Arc<tokio::sync::Mutex<Option<Recent>>>;

/// The session sync of one daemon.
pub struct SessionSync {
    settings: SessionSettings,
    slots: Mutex<HashMap<ClerkUserId, Slot>>,
}

impl std::fmt::Debug for SessionSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionSync")
            .field("issuer", &self.settings.policy.issuer)
            .finish_non_exhaustive()
    }
}

impl SessionSync {
    /// A session sync with these settings.
    pub fn new(settings: SessionSettings) -> Self {
        Self {
            settings,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The origins allowed to send the session cookie and to read answers (CORS).
    pub fn authorized_parties(&self) -> &[String] {
        &self.settings.policy.authorized_parties
    }

    /// The instance's suffixed session cookie name, if known.
    pub fn cookie_suffix(&self) -> Option<&str> {
        self.settings.cookie_suffix.as_deref()
    }

    /// Verifies a session token: the header, then the key by `kid`, then the signature and
    /// the claims.
    pub async fn verify(&self, raw: &str, metrics: &Metrics) -> Result<SessionClaims, TokenError> {
        let header = token::peek(raw)?;
        let key = self.settings.keys.key(&header.kid, metrics).await?;
        token::verify(
            raw,
            &key,
            &self.settings.policy,
            chrono::Utc::now().timestamp(),
        )
    }

    fn slot(&self, user: &ClerkUserId) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if slots.len() >= MAX_REMEMBERED && !slots.contains_key(user) {
            // Forget users nobody waits on (only this map holds their slot) and whose sync
            // is no longer fresh; a slot in use is never dropped, so single flight holds.
            slots.retain(|_, slot| {
                Arc::strong_count(slot) > 1
                    || slot
                        .try_lock()
                        .map(|recent| recent.is_some_and(|r| r.at.elapsed() < FRESH_FOR))
                        .unwrap_or(true)
            });
        }
        slots.entry(user.clone()).or_default().clone()
    }

    /// Syncs the verified user `user` and answers with their row.
    pub async fn sync(
        &self,
        user: &ClerkUserId,
        db: &Database,
        options: SyncOptions,
        metrics: &Metrics,
    ) -> Result<(SessionOutcome, Option<AppUser>), SyncError> {
        let slot = self.slot(user);
        // Single flight: whoever comes second waits here for the first to finish, then finds
        // its fresh result and answers from the table.
        let mut recent = slot.lock().await;
        if let Some(r) = recent.filter(|r| r.at.elapsed() < FRESH_FOR) {
            if !r.found {
                return Err(SyncError::NotFound);
            }
            if r.ignored {
                return Ok((SessionOutcome::Ignored, None));
            }
            return match current(db, user).await? {
                Some(row) => Ok((SessionOutcome::Cached, Some(row))),
                None => Err(SyncError::NotFound),
            };
        }
        // The table first: a user it already holds (the webhook landed, or an earlier sync)
        // is answered from it, and one it holds a tombstone for is gone. Clerk is asked only
        // for a user the table does not know, so signed-in users cannot spend the instance's
        // rate limit by calling again and again; changes reach the row through webhooks.
        let lookup = db.read_user(user).await?;
        if lookup.deleted {
            return Err(SyncError::NotFound);
        }
        if let Some(row) = lookup.row {
            *recent = Some(Recent {
                at: Instant::now(),
                found: true,
                ignored: false,
            });
            return Ok((SessionOutcome::Cached, Some(row)));
        }
        let fetched = self.fetch(user, metrics).await?;
        let Some(body) = fetched else {
            *recent = Some(Recent {
                at: Instant::now(),
                found: false,
                ignored: false,
            });
            return Err(SyncError::NotFound);
        };
        let event = Event::from_api_user(&String::from_utf8_lossy(&body))
            .map_err(|e| SyncError::Clerk(format!("the user object cannot be applied: {e}")))?;
        let Event::Upsert { change, .. } = &event else {
            return Err(SyncError::Clerk("the user object is not a user".into()));
        };
        if &change.id != user {
            return Err(SyncError::Clerk(format!(
                "asked for {user}, Clerk answered with another user"
            )));
        }
        let id = delivery_id(user, change.version)
            .map_err(|e| SyncError::Clerk(format!("cannot name the delivery: {e}")))?;
        let outcome = sync::ingest(db, &id, &event, options).await?;
        *recent = Some(Recent {
            at: Instant::now(),
            found: true,
            ignored: outcome == Outcome::Ignored,
        });
        let row = current(db, user).await?;
        match (outcome, row) {
            (Outcome::Ignored, _) => Ok((SessionOutcome::Ignored, None)),
            (_, None) => Err(SyncError::NotFound),
            (Outcome::Applied, Some(row)) => Ok((SessionOutcome::Applied, Some(row))),
            (_, Some(row)) => Ok((SessionOutcome::Unchanged, Some(row))),
        }
    }

    async fn fetch(
        &self,
        user: &ClerkUserId,
        metrics: &Metrics,
    ) -> Result<Option<Vec<u8>>, SyncError> {
        let started = Instant::now();
        let answer = tokio::time::timeout(
            self.settings.deadline,
            self.settings.client.get_user(user.as_str()),
        )
        .await;
        let seconds = started.elapsed().as_secs_f64();
        let (label, result) = match answer {
            Err(_) => (
                "unavailable",
                Err(SyncError::ClerkUnavailable(format!(
                    "no answer within {} s",
                    self.settings.deadline.as_secs()
                ))),
            ),
            Ok(Ok(Some(body))) => ("ok", Ok(Some(body))),
            Ok(Ok(None)) => ("not_found", Ok(None)),
            Ok(Err(error @ ApiError::Unavailable { .. })) => (
                "unavailable",
                Err(SyncError::ClerkUnavailable(error.to_string())),
            ),
            Ok(Err(error)) => ("error", Err(SyncError::Clerk(error.to_string()))),
        };
        metrics.backend_api("users", label, seconds);
        result
    }
}

/// The user's live row: none when absent or tombstoned (a row the application's foreign
/// keys still hold belongs to a deleted user).
async fn current(db: &Database, user: &ClerkUserId) -> Result<Option<AppUser>, DbError> {
    let lookup = db.read_user(user).await?;
    Ok(if lookup.deleted { None } else { lookup.row })
}

/// `session:<user id>:<updated_at>`: one id per version of a user (see the module docs).
/// Never a Svix id (those start `msg_`).
pub fn delivery_id(user: &ClerkUserId, version: i64) -> Result<MessageId, EventError> {
    MessageId::parse(&format!("session:{user}:{version}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_publishable_key_names_the_frontend_api() {
        // base64("clerk.example.com$") and base64("sweet-owl-12.clerk.accounts.dev$").
        assert_eq!(
            frontend_api_from_publishable_key("pk_live_Y2xlcmsuZXhhbXBsZS5jb20k").as_deref(),
            Ok("https://clerk.example.com")
        );
        assert_eq!(
            frontend_api_from_publishable_key(
                "pk_test_c3dlZXQtb3dsLTEyLmNsZXJrLmFjY291bnRzLmRldiQ"
            )
            .as_deref(),
            Ok("https://sweet-owl-12.clerk.accounts.dev")
        );
        for bad in [
            "sk_test_Y2xlcmsuZXhhbXBsZS5jb20k",
            "pk_test_!!",
            "pk_test_Y2xlcmsuZXhhbXBsZS5jb20", // no `$`
            "pk_test_",
        ] {
            assert!(frontend_api_from_publishable_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn authorized_parties_are_origins_as_browsers_send_them() {
        assert_eq!(
            parse_origin(" https://App.Example.com/ ").as_deref(),
            Ok("https://app.example.com")
        );
        assert_eq!(
            parse_origin("https://app.example.com:443").as_deref(),
            Ok("https://app.example.com")
        );
        assert_eq!(
            parse_origin("http://localhost:3000").as_deref(),
            Ok("http://localhost:3000")
        );
        for bad in [
            "*",
            "https://*.example.com",
            "app.example.com",
            "https://app.example.com/path",
            "https://app.example.com?x=1",
            "ftp://app.example.com",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_cookie_suffix_is_clerks() {
        // The values Clerk's own tests pin.
        assert_eq!(cookie_suffix("pk_live_Y2xlcmsuY2xlcmsuZGV2JA"), "1Z8AzTQD");
        assert_eq!(cookie_suffix("pk_test_Y2xlcmsuY2xlcmsuZGV2JA"), "QvfNY2dr");
    }

    #[test]
    fn delivery_ids_are_one_per_version_and_never_svix_ids() {
        let user = ClerkUserId::parse("user_2abc").expect("id");
        let a = delivery_id(&user, 1_714_564_800_000).expect("id");
        assert_eq!(a.as_str(), "session:user_2abc:1714564800000");
        assert_eq!(a, delivery_id(&user, 1_714_564_800_000).expect("id"));
        assert_ne!(a, delivery_id(&user, 1_714_564_800_001).expect("id"));
        let longest = ClerkUserId::parse(&format!("user_{}", "a".repeat(123))).expect("id");
        assert!(delivery_id(&longest, i64::MIN).is_ok());
    }
}
