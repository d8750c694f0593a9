//! The instance's token signing keys: networkless from `CLERK_JWT_KEY`, or by `kid` from the
//! Backend API's `GET /v1/jwks`.
//!
//! Cache policy: keys fetched are kept for [`KEY_TTL`] and then fetched again when next
//! needed (a key Clerk rotated out stops being accepted within that time). A `kid` the cache
//! does not know triggers a fetch, but at most one every [`MIN_REFETCH_INTERVAL`], and one at
//! a time: a flood of tokens with random `kid`s costs at most one JWKS request per interval,
//! never one per token. Each instance of the daemon has its own cache, and each cache serves
//! one Clerk instance (its own secret key): keys of one instance never verify another's tokens.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::DecodingKey;

use super::token::TokenError;
use crate::backfill::client::{ApiError, Client};
use crate::metrics::Metrics;

/// How long fetched keys are trusted before they are fetched again (as Clerk's SDKs do).
pub const KEY_TTL: Duration = Duration::from_secs(300);

/// Fewest seconds between two JWKS requests made for a `kid` the cache does not know.
pub const MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(5);

/// Why `CLERK_JWT_KEY` is not usable.
#[derive(Debug, thiserror::Error)]
#[error("CLERK_JWT_KEY is not an RSA public key in PEM form: {0}")]
pub struct PemError(String);

/// Reads the dashboard's PEM public key. Accepted as pasted: with real line breaks, with
/// `\n` escapes (as environment files often carry it), or on one line without breaks.
pub fn parse_pem(raw: &str) -> Result<DecodingKey, PemError> {
    let text = raw.trim().replace("\\n", "\n");
    let body: String = text
        .replace("-----BEGIN PUBLIC KEY-----", "")
        .replace("-----END PUBLIC KEY-----", "")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    if body.is_empty() {
        return Err(PemError("it is empty".into()));
    }
    // Rebuilt in the canonical shape: 64 characters a line between the markers.
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    let bytes = body.as_bytes();
    for chunk in bytes.chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| PemError(e.to_string()))
}

/// Where keys come from.
pub enum KeySource {
    /// `CLERK_JWT_KEY`: one key for every `kid`, no request ever made.
    Static(DecodingKey),
    /// `GET /v1/jwks`, cached.
    Jwks(Jwks),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeySource::Static(_) => "KeySource::Static",
            KeySource::Jwks(_) => "KeySource::Jwks",
        })
    }
}

impl KeySource {
    /// The key for `kid`.
    pub async fn key(&self, kid: &str, metrics: &Metrics) -> Result<DecodingKey, TokenError> {
        match self {
            KeySource::Static(key) => Ok(key.clone()),
            KeySource::Jwks(jwks) => jwks.key(kid, metrics).await,
        }
    }
}

#[derive(Default)]
struct Cache {
    keys: HashMap<String, DecodingKey>,
    fetched: Option<Instant>,
    last_attempt: Option<Instant>,
    /// Whether the last fetch failed: a `kid` it could not look up is then not known to be
    /// unknown.
    last_failed: bool,
}

/// Keys fetched from the Backend API.
pub struct Jwks {
    client: Arc<Client>,
    cache: Mutex<Cache>,
    // Held while a fetch runs, so that concurrent misses wait for one fetch.
    fetching: tokio::sync::Mutex<()>,
    timeout: Duration,
}

impl Jwks {
    /// Keys from `client`'s instance; a fetch gives up after `timeout`.
    pub fn new(client: Arc<Client>, timeout: Duration) -> Self {
        Self {
            client,
            cache: Mutex::new(Cache::default()),
            fetching: tokio::sync::Mutex::new(()),
            timeout,
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A cached key: only a fresh one unless `stale_ok`.
    fn cached(&self, kid: &str, stale_ok: bool) -> Option<DecodingKey> {
        let cache = self.cache();
        let fresh = cache.fetched.is_some_and(|t| t.elapsed() < KEY_TTL);
        (fresh || stale_ok)
            .then(|| cache.keys.get(kid).cloned())
            .flatten()
    }

    async fn key(&self, kid: &str, metrics: &Metrics) -> Result<DecodingKey, TokenError> {
        if let Some(key) = self.cached(kid, false) {
            return Ok(key);
        }
        // A key fetched before and past its time still verifies while another request
        // refreshes the set: nobody waits behind a slow fetch for a key already known.
        let stale = self.cached(kid, true);
        let _one_at_a_time = match (&stale, self.fetching.try_lock()) {
            (_, Ok(guard)) => guard,
            (Some(key), Err(_)) => return Ok(key.clone()),
            (None, Err(_)) => self.fetching.lock().await,
        };
        // Whoever held the lock before may have fetched the key just now.
        if let Some(key) = self.cached(kid, false) {
            return Ok(key);
        }
        let may_fetch = self
            .cache()
            .last_attempt
            .is_none_or(|t| t.elapsed() >= MIN_REFETCH_INTERVAL);
        if may_fetch {
            self.cache().last_attempt = Some(Instant::now());
            match self.fetch(metrics).await {
                Ok(keys) => {
                    tracing::info!(keys = keys.len(), "fetched the instance's signing keys");
                    let mut cache = self.cache();
                    cache.keys = keys;
                    cache.fetched = Some(Instant::now());
                    cache.last_failed = false;
                }
                Err(error) => {
                    tracing::warn!(%error, "could not fetch the instance's signing keys");
                    self.cache().last_failed = true;
                    // Keys fetched before still verify (a passing outage of the API must not
                    // sign everybody out); without any, nothing can be verified.
                    return self.cached(kid, true).ok_or(TokenError::KeysUnavailable);
                }
            }
        }
        match self.cached(kid, true) {
            Some(key) => Ok(key),
            // The set could not be fetched lately: the key may well exist (503, retried),
            // and a 401 would tell the frontend its user signed out.
            None if self.cache().last_failed => Err(TokenError::KeysUnavailable),
            None => Err(TokenError::UnknownKid),
        }
    }

    async fn fetch(&self, metrics: &Metrics) -> Result<HashMap<String, DecodingKey>, ApiError> {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, self.client.jwks()).await {
            Ok(result) => result,
            Err(_) => Err(ApiError::Unavailable {
                what: "the JSON Web Key Set".into(),
                attempts: 0,
                last: format!("no answer within {} s", self.timeout.as_secs()),
            }),
        };
        metrics.backend_api(
            "jwks",
            if result.is_ok() { "ok" } else { "error" },
            started.elapsed().as_secs_f64(),
        );
        let body = result?;
        parse_jwks(&body).map_err(|reason| ApiError::Malformed {
            what: "the JSON Web Key Set".into(),
            reason,
        })
    }
}

/// The RS256 signing keys of a JWKS document, by `kid`. Keys of other types or uses are
/// skipped (a set may hold keys clerk-sync never accepts), as is any entry it cannot read.
pub fn parse_jwks(body: &[u8]) -> Result<HashMap<String, DecodingKey>, String> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(body).map_err(|e| format!("not a key set: {e}"))?;
    let mut keys = HashMap::new();
    for entry in set.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(entry) else {
            continue;
        };
        let (Some(kid), AlgorithmParameters::RSA(_)) = (&jwk.common.key_id, &jwk.algorithm) else {
            continue;
        };
        let rs256 = matches!(jwk.common.key_algorithm, None | Some(KeyAlgorithm::RS256));
        let signing = matches!(
            jwk.common.public_key_use,
            None | Some(PublicKeyUse::Signature)
        );
        if !(rs256 && signing) {
            continue;
        }
        if let Ok(key) = DecodingKey::from_jwk(&jwk) {
            keys.insert(kid.clone(), key);
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use rsa::pkcs8::{EncodePublicKey, LineEnding};
    use rsa::traits::PublicKeyParts;

    fn public_key() -> rsa::RsaPublicKey {
        let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("key");
        rsa::RsaPublicKey::from(&private)
    }

    #[test]
    fn the_pem_key_is_read_however_it_was_pasted() {
        let pem = public_key().to_public_key_pem(LineEnding::LF).expect("pem");
        let escaped = pem.replace('\n', "\\n");
        let one_line: String = pem.lines().collect();
        let spaced = pem.replace('\n', " ");
        for form in [&pem, &escaped, &one_line, &spaced] {
            assert!(parse_pem(form).is_ok(), "{form}");
        }
        assert!(parse_pem("").is_err());
        assert!(
            parse_pem("-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----")
                .is_err()
        );
    }

    #[test]
    fn only_rs256_signing_keys_with_a_kid_are_kept() {
        let key = public_key();
        let (n, e) = (
            URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()),
            URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()),
        );
        let set = serde_json::json!({"keys": [
            {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": "good", "n": n, "e": e},
            {"kty": "RSA", "alg": "RS256", "n": n, "e": e},
            {"kty": "RSA", "use": "enc", "kid": "encryption", "n": n, "e": e},
            {"kty": "RSA", "alg": "RS512", "kid": "other-alg", "n": n, "e": e},
            {"kty": "EC", "crv": "P-256", "kid": "ec", "x": "AA", "y": "AA"},
            {"kty": "unheard-of", "kid": "odd"},
            "not even an object"
        ]});
        let keys = parse_jwks(set.to_string().as_bytes()).expect("set");
        assert_eq!(keys.keys().collect::<Vec<_>>(), ["good"]);
        assert!(parse_jwks(b"[]").is_err());
        assert!(parse_jwks(b"{\"keys\": 5}").is_err());
    }
}
