//! Svix signature verification over the raw body, before anything is parsed.
//!
//! Every configured secret is tried, so a secret can be rotated without dropping
//! deliveries: configure the new one beside the old, then remove the old.

use svix::webhooks::{Webhook, WebhookError};

/// One or more signing secrets (`whsec_…`). `Debug` never shows them.
pub struct Verifier {
    secrets: Vec<Webhook>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Verifier {{ secrets: {} [redacted] }}",
            self.secrets.len()
        )
    }
}

/// Why configured secrets were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    /// None given.
    #[error("no webhook signing secret configured: set CLERK_WEBHOOK_SIGNING_SECRET (or CLERK_WEBHOOK_SECRET, or CLERK_WEBHOOK_SIGNING_SECRET_FILE) to the whsec_… value from the Clerk dashboard")]
    Missing,
    /// One entry is not a Svix secret; the secret itself is never echoed.
    #[error("webhook signing secret #{position} is not a valid whsec_… secret ({reason})")]
    Malformed {
        /// 1-based position in the list.
        position: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Why a delivery's signature was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    /// A required header is absent.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// A header is present but unusable.
    #[error("invalid header {0}")]
    InvalidHeader(&'static str),
    /// The timestamp is more than 5 minutes old.
    #[error("timestamp too old (more than 5 minutes)")]
    TooOld,
    /// The timestamp is more than 5 minutes ahead.
    #[error("timestamp too far in the future (more than 5 minutes)")]
    TooNew,
    /// No configured secret produced a matching signature.
    #[error("no matching signature")]
    NoMatch,
    /// The body is not UTF-8, so it cannot have been signed by Svix.
    #[error("body is not valid UTF-8")]
    NotUtf8,
}

impl Verifier {
    /// Parses secrets separated by whitespace or commas.
    pub fn parse(raw: &str) -> Result<Self, SecretError> {
        let mut secrets = Vec::new();
        for (index, entry) in raw
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|s| !s.is_empty())
            .enumerate()
        {
            let position = index + 1;
            let body = entry.strip_prefix("whsec_").ok_or(SecretError::Malformed {
                position,
                reason: "it does not start with whsec_",
            })?;
            let webhook = Webhook::new(body).map_err(|e| SecretError::Malformed {
                position,
                reason: match e {
                    WebhookError::EmptySecret => "it is empty after whsec_",
                    _ => "the part after whsec_ is not base64",
                },
            })?;
            secrets.push(webhook);
        }
        if secrets.is_empty() {
            return Err(SecretError::Missing);
        }
        Ok(Self { secrets })
    }

    /// How many secrets are configured.
    pub fn count(&self) -> usize {
        self.secrets.len()
    }

    /// Verifies `body` against the `svix-*` (or `webhook-*`) headers with every secret.
    /// With `check_time` false the 5-minute tolerance is not applied (replay of recorded deliveries).
    pub fn verify(
        &self,
        body: &[u8],
        headers: &http::HeaderMap,
        check_time: bool,
    ) -> Result<(), SignatureError> {
        if std::str::from_utf8(body).is_err() {
            return Err(SignatureError::NotUtf8);
        }
        let mut last = SignatureError::NoMatch;
        for secret in &self.secrets {
            let result = if check_time {
                secret.verify(body, headers)
            } else {
                secret.verify_ignoring_timestamp(body, headers)
            };
            match result {
                Ok(()) => return Ok(()),
                Err(WebhookError::InvalidSignature) => last = SignatureError::NoMatch,
                Err(other) => return Err(map(other)),
            }
        }
        Err(last)
    }
}

fn map(error: WebhookError) -> SignatureError {
    match error {
        WebhookError::MissingHeader(name) => SignatureError::MissingHeader(header(name)),
        WebhookError::InvalidHeader(name) => SignatureError::InvalidHeader(header(name)),
        WebhookError::InvalidTimestamp => SignatureError::InvalidHeader("svix-timestamp"),
        WebhookError::TimestampTooOldError => SignatureError::TooOld,
        WebhookError::FutureTimestampError => SignatureError::TooNew,
        WebhookError::InvalidPayload => SignatureError::NotUtf8,
        _ => SignatureError::NoMatch,
    }
}

fn header(name: &str) -> &'static str {
    match name {
        "id" => "svix-id",
        "timestamp" => "svix-timestamp",
        _ => "svix-signature",
    }
}

impl Verifier {
    /// Signs `body` as Svix would, with the first configured secret (`v1,<base64>`).
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> Result<String, SignatureError> {
        let first = self.secrets.first().ok_or(SignatureError::NoMatch)?;
        first.sign(id, timestamp, body).map_err(map)
    }
}

/// The message id header, `svix-id` or `webhook-id`.
pub fn message_id(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get("svix-id")
        .or_else(|| headers.get("webhook-id"))
        .and_then(|v| v.to_str().ok())
}
