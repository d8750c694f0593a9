//! A Clerk session token, checked as Clerk's SDKs check it and stricter where they are lax.
//!
//! Order matters: [`peek`] reads the JOSE header alone and refuses every algorithm but RS256
//! (`none`, HS256 and the rest) before any key is looked up or any signature computed, so an
//! algorithm-confusion token (HS256 "signed" with the public key as the HMAC secret) never
//! reaches a verifier. [`verify`] then checks the signature with the key the header's `kid`
//! named, and only a token whose signature holds has its claims read: `exp` and `nbf` required,
//! `iat` required and not in the future, 5 s of clock skew either way, `iss` the instance's
//! Frontend API, `sub` a Clerk user id, `sid` present (a session token, not a JWT template or a
//! machine token), `azp` among the authorized parties when any are configured, and `sts:
//! pending` refused unless allowed. Each refusal names one [`TokenError`], whose
//! [`TokenError::reason`] is both the answer's `reason` and the metric label.
//!
//! Nothing here logs or returns the token itself.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::domain::ClerkUserId;

/// Clock skew allowed on `exp`, `nbf` and `iat`, as Clerk's SDKs allow by default.
pub const CLOCK_SKEW_SECONDS: i64 = 5;

/// Longest token accepted. Clerk's session tokens ride in a cookie (about 4 KiB at most);
/// anything far larger is not one, and is refused before it is decoded.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The JOSE `cat` Clerk stamps on session tokens.
pub const CATEGORY_SESSION: &str = "cl_B7d4PD111AAA";
/// The `cat` of instances that stamp one category on every kind of token: it says nothing.
pub const CATEGORY_IGNORE: &str = "cl_I7d4PD111III";

/// Why a token was refused (401, or 503 for [`TokenError::KeysUnavailable`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token in the `Authorization` header or a session cookie.
    #[error(
        "no session token: send it as `Authorization: Bearer <token>` or the __session cookie"
    )]
    Missing,
    /// The session cookie came from an origin not listed in the authorized parties.
    #[error("a session cookie is accepted only from an origin listed in CLERK_AUTHORIZED_PARTIES")]
    CookieOrigin,
    /// Not three base64url parts holding JSON, or too long.
    #[error("the token is not a well-formed JWT: {0}")]
    Malformed(&'static str),
    /// An algorithm other than RS256 (`none` and HS256 included).
    #[error("the token's algorithm is not RS256")]
    AlgorithmNotAllowed,
    /// The header names no key.
    #[error("the token's header names no key (kid)")]
    MissingKid,
    /// Neither the cached keys nor a fresh key set know the token's `kid`.
    #[error("the token's key (kid) is not one of the instance's keys")]
    UnknownKid,
    /// The instance's keys could not be fetched (a 503, not the caller's fault).
    #[error("the instance's signing keys could not be fetched")]
    KeysUnavailable,
    /// The signature does not verify with the instance's key.
    #[error("the token's signature does not verify")]
    BadSignature,
    /// `exp` is past.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    /// `iat` is in the future.
    #[error("the token was issued in the future (iat)")]
    IssuedInFuture,
    /// A claim every session token carries is absent or of the wrong type.
    #[error("the token lacks a required claim ({0})")]
    MissingClaim(&'static str),
    /// `iss` is not this instance's Frontend API.
    #[error("the token was not issued by this instance (iss)")]
    WrongIssuer,
    /// `azp` is absent or not among the authorized parties.
    #[error("the token's authorized party (azp) is not in CLERK_AUTHORIZED_PARTIES")]
    WrongAuthorizedParty,
    /// No `sid`: a JWT template or a machine token, not a session token.
    #[error("the token carries no session id (sid): not a session token")]
    MissingSid,
    /// A `cat` (or `typ`) header of another kind of token.
    #[error("the token's header marks it as another kind of token than a session token")]
    NotASessionToken,
    /// `sub` is not a Clerk user id.
    #[error("the token's subject (sub) is not a Clerk user id")]
    InvalidSubject,
    /// `sts: pending`: the session still has a task to finish (e.g. choose an organization).
    #[error("the session is pending (sts): it is not fully signed in yet")]
    SessionPending,
}

impl TokenError {
    /// The reason in the answer's body and the `reason` label of the refusals metric.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Missing => "missing_token",
            TokenError::CookieOrigin => "cookie_origin_not_allowed",
            TokenError::Malformed(_) => "malformed_token",
            TokenError::AlgorithmNotAllowed => "alg_not_allowed",
            TokenError::MissingKid => "missing_kid",
            TokenError::UnknownKid => "unknown_kid",
            TokenError::KeysUnavailable => "keys_unavailable",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::IssuedInFuture => "issued_in_future",
            TokenError::MissingClaim(_) => "missing_claim",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::WrongAuthorizedParty => "wrong_azp",
            TokenError::MissingSid => "missing_sid",
            TokenError::NotASessionToken => "not_a_session_token",
            TokenError::InvalidSubject => "invalid_subject",
            TokenError::SessionPending => "session_pending",
        }
    }
}

/// What the header says, once it passed [`peek`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The key the token says it was signed with.
    pub kid: String,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: Option<serde_json::Value>,
    kid: Option<serde_json::Value>,
    typ: Option<serde_json::Value>,
    cat: Option<serde_json::Value>,
    crit: Option<serde_json::Value>,
}

/// The three parts of a compact JWS, each checked to be base64url (no padding).
fn split(token: &str) -> Result<[&str; 3], TokenError> {
    if token.is_empty() {
        return Err(TokenError::Missing);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed("longer than any session token"));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed("not three dot-separated parts"));
    };
    let base64url = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    // An empty signature is `alg: none`'s shape; it is refused by its header below, so only
    // the header and payload must be non-empty here.
    if !base64url(header) || !base64url(payload) || !(signature.is_empty() || base64url(signature))
    {
        return Err(TokenError::Malformed("a part is not base64url"));
    }
    Ok([header, payload, signature])
}

fn decode_json<T: serde::de::DeserializeOwned>(
    part: &str,
    what: &'static str,
) -> Result<T, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed(what))?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed(what))
}

/// Reads the JOSE header without verifying anything, and refuses every token that is not an
/// RS256 session token by its header alone: no key is looked up, no signature computed.
pub fn peek(token: &str) -> Result<Header, TokenError> {
    let [header, _, signature] = split(token)?;
    let raw: RawHeader = decode_json(header, "the header is not a JSON object")?;
    match raw.alg.as_ref().and_then(serde_json::Value::as_str) {
        Some("RS256") => {}
        _ => return Err(TokenError::AlgorithmNotAllowed),
    }
    if signature.is_empty() {
        return Err(TokenError::Malformed("the signature is empty"));
    }
    // RFC 7515 4.1.11: extensions a verifier does not understand must make it refuse; Clerk's
    // session tokens name none.
    if raw.crit.is_some() {
        return Err(TokenError::Malformed(
            "the header names critical extensions (crit)",
        ));
    }
    match raw.typ.as_ref() {
        None => {}
        Some(serde_json::Value::String(typ)) if typ.eq_ignore_ascii_case("JWT") => {}
        Some(_) => return Err(TokenError::NotASessionToken),
    }
    // Absent on tokens minted before Clerk added categories (as Clerk's SDKs accept them).
    match raw.cat.as_ref() {
        None => {}
        Some(serde_json::Value::String(cat))
            if cat == CATEGORY_SESSION || cat == CATEGORY_IGNORE => {}
        Some(_) => return Err(TokenError::NotASessionToken),
    }
    let kid = match raw.kid {
        None => return Err(TokenError::MissingKid),
        Some(serde_json::Value::String(kid)) if !kid.is_empty() && kid.len() <= 256 => kid,
        Some(_) => return Err(TokenError::Malformed("kid is not a short string")),
    };
    Ok(Header { kid })
}

/// What must hold for a token to be accepted.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The instance's Frontend API URL, exactly as `iss` carries it.
    pub issuer: String,
    /// The origins `azp` must be among; empty: `azp` is not checked.
    pub authorized_parties: Vec<String>,
    /// Accept `sts: pending` sessions.
    pub allow_pending: bool,
}

/// The claims of a verified session token that clerk-sync uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionClaims {
    /// The signed-in user.
    pub user: ClerkUserId,
    /// The session id.
    pub session: String,
}

/// Typed loosely on purpose: a claim of the wrong type is its own refusal, never a panic or a
/// silently skipped check.
#[derive(Deserialize)]
struct RawClaims {
    iss: Option<serde_json::Value>,
    sub: Option<serde_json::Value>,
    exp: Option<serde_json::Value>,
    nbf: Option<serde_json::Value>,
    iat: Option<serde_json::Value>,
    sid: Option<serde_json::Value>,
    azp: Option<serde_json::Value>,
    sts: Option<serde_json::Value>,
}

fn seconds(value: Option<&serde_json::Value>, name: &'static str) -> Result<i64, TokenError> {
    value
        .and_then(serde_json::Value::as_i64)
        .ok_or(TokenError::MissingClaim(name))
}

fn from_library(error: &jsonwebtoken::errors::Error) -> TokenError {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::MissingRequiredClaim(claim) => TokenError::MissingClaim(match claim.as_str() {
            "exp" => "exp",
            "nbf" => "nbf",
            "iss" => "iss",
            "sub" => "sub",
            _ => "a registered claim",
        }),
        ErrorKind::InvalidClaimFormat(claim) => TokenError::MissingClaim(match claim.as_str() {
            "exp" => "exp",
            "nbf" => "nbf",
            _ => "a registered claim",
        }),
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            TokenError::AlgorithmNotAllowed
        }
        _ => TokenError::Malformed("the token cannot be decoded"),
    }
}

/// Verifies `token` (already [`peek`]ed) with `key` and checks its claims at `now` (seconds
/// since the epoch).
pub fn verify(
    token: &str,
    key: &DecodingKey,
    policy: &Policy,
    now: i64,
) -> Result<SessionClaims, TokenError> {
    // The header is checked again: `verify` must be safe even for a caller that skipped it.
    peek(token)?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.leeway = CLOCK_SKEW_SECONDS.unsigned_abs();
    validation.validate_exp = true;
    // Off by default in jsonwebtoken; a session token always carries `nbf`.
    validation.validate_nbf = true;
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp", "nbf", "iss", "sub"]);
    validation.set_issuer(&[policy.issuer.as_str()]);
    let data =
        jsonwebtoken::decode::<RawClaims>(token, key, &validation).map_err(|e| from_library(&e))?;
    check_claims(&data.claims, policy, now)
}

/// The checks jsonwebtoken leaves to its caller, and its own time checks again at `now`.
fn check_claims(
    claims: &RawClaims,
    policy: &Policy,
    now: i64,
) -> Result<SessionClaims, TokenError> {
    // jsonwebtoken also takes an array holding the issuer; Clerk's `iss` is one string.
    if claims.iss.as_ref().and_then(serde_json::Value::as_str) != Some(policy.issuer.as_str()) {
        return Err(TokenError::WrongIssuer);
    }
    let exp = seconds(claims.exp.as_ref(), "exp")?;
    let nbf = seconds(claims.nbf.as_ref(), "nbf")?;
    let iat = seconds(claims.iat.as_ref(), "iat")?;
    if exp <= now.saturating_sub(CLOCK_SKEW_SECONDS) {
        return Err(TokenError::Expired);
    }
    if nbf > now.saturating_add(CLOCK_SKEW_SECONDS) {
        return Err(TokenError::NotYetValid);
    }
    if iat > now.saturating_add(CLOCK_SKEW_SECONDS) {
        return Err(TokenError::IssuedInFuture);
    }
    let user = match claims.sub.as_ref() {
        Some(serde_json::Value::String(sub)) => {
            ClerkUserId::parse(sub).map_err(|_| TokenError::InvalidSubject)?
        }
        _ => return Err(TokenError::MissingClaim("sub")),
    };
    let session = match claims.sid.as_ref() {
        Some(serde_json::Value::String(sid)) if !sid.is_empty() => sid.clone(),
        _ => return Err(TokenError::MissingSid),
    };
    if !policy.authorized_parties.is_empty() {
        // Configured parties make `azp` mandatory: a token could otherwise pass the check by
        // leaving the claim out.
        let azp = claims.azp.as_ref().and_then(serde_json::Value::as_str);
        if !azp.is_some_and(|azp| policy.authorized_parties.iter().any(|p| p == azp)) {
            return Err(TokenError::WrongAuthorizedParty);
        }
    }
    if claims.sts.as_ref().and_then(serde_json::Value::as_str) == Some("pending")
        && !policy.allow_pending
    {
        return Err(TokenError::SessionPending);
    }
    Ok(SessionClaims { user, session })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }

    fn token(header: &str) -> String {
        format!("{}.{}.c2ln", part(header), part(r#"{"sub":"user_1"}"#))
    }

    #[test]
    fn only_rs256_passes_the_header() {
        for alg in [
            r#""none""#,
            r#""HS256""#,
            r#""RS512""#,
            r#""ES256""#,
            r#""rs256""#,
            "null",
            "256",
        ] {
            let t = token(&format!(r#"{{"alg":{alg},"kid":"k"}}"#));
            assert_eq!(peek(&t), Err(TokenError::AlgorithmNotAllowed), "{alg}");
        }
        assert_eq!(
            peek(&token(
                r#"{"alg":"RS256","kid":"k","cat":"cl_B7d4PD111AAA"}"#
            )),
            Ok(Header { kid: "k".into() })
        );
    }

    #[test]
    fn a_header_naming_critical_extensions_is_refused() {
        let t = token(r#"{"alg":"RS256","kid":"k","crit":["b64"],"b64":false}"#);
        assert!(matches!(peek(&t), Err(TokenError::Malformed(_))));
    }

    #[test]
    fn an_unsigned_token_is_refused_by_its_algorithm() {
        let t = format!(
            "{}.{}.",
            part(r#"{"alg":"none"}"#),
            part(r#"{"sub":"user_1"}"#)
        );
        assert_eq!(peek(&t), Err(TokenError::AlgorithmNotAllowed));
    }

    #[test]
    fn other_token_categories_are_refused() {
        for cat in [r#""cl_B7d4PD222AAA""#, r#""cl_B7d4PD333AAA""#, "7"] {
            let t = token(&format!(r#"{{"alg":"RS256","kid":"k","cat":{cat}}}"#));
            assert_eq!(peek(&t), Err(TokenError::NotASessionToken), "{cat}");
        }
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for t in [
            "a",
            "a.b",
            "a.b.c.d",
            "!!.b.c",
            "bm90IGpzb24.e30.c2ln",
            "....",
        ] {
            assert!(matches!(peek(t), Err(TokenError::Malformed(_))), "{t}");
        }
        assert_eq!(peek(""), Err(TokenError::Missing));
        // `{}`: a header without `alg` is refused like any algorithm but RS256.
        assert_eq!(peek("e30.e30.c2ln"), Err(TokenError::AlgorithmNotAllowed));
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        assert!(matches!(peek(&long), Err(TokenError::Malformed(_))));
    }

    /// `json`'s claims, issued by `policy()`'s issuer unless they name one.
    fn claims(json: &str) -> RawClaims {
        let mut value: serde_json::Value = serde_json::from_str(json).expect("claims");
        if value.get("iss").is_none() {
            value["iss"] = serde_json::json!("https://x.clerk.accounts.dev");
        }
        serde_json::from_value(value).expect("claims")
    }

    #[test]
    fn the_issuer_is_one_string_equal_to_the_instances() {
        let now = 1_000_000;
        for iss in [
            r#"["https://x.clerk.accounts.dev"]"#,
            r#""https://x.clerk.accounts.dev/""#,
            "null",
        ] {
            let json = format!(
                r#"{{"iss":{iss},"sub":"user_1","sid":"s","exp":1000060,"nbf":999990,"iat":999990,"azp":"https://app.example"}}"#
            );
            assert_eq!(
                check_claims(&claims(&json), &policy(), now),
                Err(TokenError::WrongIssuer),
                "{iss}"
            );
        }
    }

    fn policy() -> Policy {
        Policy {
            issuer: "https://x.clerk.accounts.dev".into(),
            authorized_parties: vec!["https://app.example".into()],
            allow_pending: false,
        }
    }

    #[test]
    fn claim_checks_name_their_reason() {
        let now = 1_000_000;
        let ok = r#"{"sub":"user_1","sid":"sess_1","exp":1000060,"nbf":999990,"iat":999990,"azp":"https://app.example"}"#;
        assert!(check_claims(&claims(ok), &policy(), now).is_ok());
        let cases = [
            (
                r#"{"sub":"user_1","sid":"s","exp":999995,"nbf":1,"iat":1,"azp":"https://app.example"}"#,
                TokenError::Expired,
            ),
            (
                r#"{"sub":"user_1","sid":"s","exp":1000060,"nbf":1000006,"iat":1,"azp":"https://app.example"}"#,
                TokenError::NotYetValid,
            ),
            (
                r#"{"sub":"user_1","sid":"s","exp":1000060,"nbf":1,"iat":1000006,"azp":"https://app.example"}"#,
                TokenError::IssuedInFuture,
            ),
            (
                r#"{"sub":"user_1","sid":"s","exp":1000060,"nbf":1,"azp":"https://app.example"}"#,
                TokenError::MissingClaim("iat"),
            ),
            (
                r#"{"sub":"user_1","sid":"s","exp":"1000060","nbf":1,"iat":1,"azp":"https://app.example"}"#,
                TokenError::MissingClaim("exp"),
            ),
            (
                r#"{"sub":"org_1","sid":"s","exp":1000060,"nbf":1,"iat":1,"azp":"https://app.example"}"#,
                TokenError::InvalidSubject,
            ),
            (
                r#"{"sub":"user_1","exp":1000060,"nbf":1,"iat":1,"azp":"https://app.example"}"#,
                TokenError::MissingSid,
            ),
            (
                r#"{"sub":"user_1","sid":"s","exp":1000060,"nbf":1,"iat":1}"#,
                TokenError::WrongAuthorizedParty,
            ),
            (
                r#"{"sub":"user_1","sid":"s","exp":1000060,"nbf":1,"iat":1,"azp":"https://evil.example"}"#,
                TokenError::WrongAuthorizedParty,
            ),
            (
                r#"{"sub":"user_1","sid":"s","exp":1000060,"nbf":1,"iat":1,"azp":"https://app.example","sts":"pending"}"#,
                TokenError::SessionPending,
            ),
        ];
        for (json, expected) in cases {
            assert_eq!(
                check_claims(&claims(json), &policy(), now),
                Err(expected),
                "{json}"
            );
        }
    }

    #[test]
    fn pending_sessions_pass_when_allowed_and_azp_is_free_without_parties() {
        let policy = Policy {
            authorized_parties: Vec::new(),
            allow_pending: true,
            ..policy()
        };
        let json = r#"{"sub":"user_1","sid":"s","exp":1000060,"nbf":1,"iat":1,"sts":"pending"}"#;
        assert!(check_claims(&claims(json), &policy, 1_000_000).is_ok());
    }
}
