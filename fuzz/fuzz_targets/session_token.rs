//! Any bytes as a session token, through the same two steps `POST /api/auth/sync` takes:
//! `token::peek` (the header alone) and `token::verify` (signature, then claims). It must
//! answer, never panic.
//!
//! Two kinds of input, by the first byte:
//! - even: the rest is the token as sent. Nothing here holds the private key, so no such
//!   token may ever verify.
//! - odd: the rest is a payload, signed RS256 with a key made at start, so that the claim
//!   checks behind the signature are reached. When such a token is accepted, what it was
//!   accepted for must hold: `sub` a `user_…` id equal to the one returned, a non-empty
//!   `sid`, `iss` the instance's, integer `exp`/`nbf`/`iat` within the clock skew, `azp` one
//!   of the authorized parties, and no pending session.
#![no_main]

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use clerk_sync::session::token::{self, Policy, CLOCK_SKEW_SECONDS};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use libfuzzer_sys::fuzz_target;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

const ISSUER: &str = "https://sweet-owl-12.clerk.accounts.dev";
const PARTY: &str = "https://app.example.com";
const NOW: i64 = 1_714_564_800;

struct Keys {
    signing: EncodingKey,
    verifying: DecodingKey,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        // 512 bits, not Clerk's 2048: the size changes nothing the target checks, and
        // signing every odd input with a 2048-bit key under AddressSanitizer ran at about 25
        // inputs a second.
        let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 512).expect("key");
        let public = rsa::RsaPublicKey::from(&private);
        let private_pem = private.to_pkcs8_pem(LineEnding::LF).expect("pem");
        let public_pem = public.to_public_key_pem(LineEnding::LF).expect("pem");
        Keys {
            signing: EncodingKey::from_rsa_pem(private_pem.as_bytes()).expect("key"),
            verifying: DecodingKey::from_rsa_pem(public_pem.as_bytes()).expect("key"),
        }
    })
}

fn policy() -> Policy {
    Policy {
        issuer: ISSUER.into(),
        authorized_parties: vec![PARTY.into()],
        allow_pending: false,
    }
}

fn signed(payload: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT","kid":"k","cat":"cl_B7d4PD111AAA"}"#);
    let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(payload));
    let signature = jsonwebtoken::crypto::sign(input.as_bytes(), &keys().signing, Algorithm::RS256)
        .expect("sign");
    format!("{input}.{signature}")
}

fn int(claims: &serde_json::Value, name: &str) -> i64 {
    claims[name].as_i64().expect("an accepted token has integer times")
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let Ok(raw) = std::str::from_utf8(rest) else {
            return;
        };
        if let Ok(header) = token::peek(raw) {
            assert!(!header.kid.is_empty() && header.kid.len() <= 256);
        }
        let verified = token::verify(raw, &keys().verifying, &policy(), NOW);
        assert!(verified.is_err(), "a token nobody signed verified");
        return;
    }
    // The library checks `exp`/`nbf` against the real clock, clerk-sync's own checks
    // against NOW; an accepted token passed both.
    let raw = signed(rest);
    let Ok(claims) = token::verify(&raw, &keys().verifying, &policy(), NOW) else {
        return;
    };
    let payload: serde_json::Value = serde_json::from_slice(rest).expect("accepted JSON");
    assert_eq!(payload["sub"].as_str(), Some(claims.user.as_str()));
    assert!(claims.user.as_str().starts_with("user_"));
    assert_eq!(payload["sid"].as_str(), Some(claims.session.as_str()));
    assert!(!claims.session.is_empty());
    assert_eq!(payload["iss"].as_str(), Some(ISSUER));
    assert_eq!(payload["azp"].as_str(), Some(PARTY));
    assert_ne!(payload["sts"].as_str(), Some("pending"));
    assert!(int(&payload, "exp") > NOW - CLOCK_SKEW_SECONDS);
    assert!(int(&payload, "nbf") <= NOW + CLOCK_SKEW_SECONDS);
    assert!(int(&payload, "iat") <= NOW + CLOCK_SKEW_SECONDS);
});
