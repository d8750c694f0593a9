//! Signature verification: Svix's published vectors, both header families, rotation.

mod common;

use clerk_sync::verify::{SecretError, SignatureError, Verifier};
use common::{now, spawn_app_with, AppOptions, Backend, ClerkUser, TestDb};

fn headers(prefix: &str, id: &str, ts: &str, signature: &str) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (name, value) in [("id", id), ("timestamp", ts), ("signature", signature)] {
        let name =
            http::HeaderName::from_bytes(format!("{prefix}-{name}").as_bytes()).expect("name");
        map.insert(name, http::HeaderValue::from_str(value).expect("value"));
    }
    map
}

/// (secret, id, timestamp, body, signature header) as published by Svix: the Standard
/// Webhooks example used across Svix's libraries, the same with an extra non-matching
/// signature beside it (senders may list several), and the Rust library's own vector.
const VECTORS: [(&str, &str, &str, &str, &str); 3] = [
    (
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "1614265330",
        r#"{"test": 2432232314}"#,
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    ),
    (
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "1614265330",
        r#"{"test": 2432232314}"#,
        "v1,bm9wZQ== v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    ),
    (
        "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
        "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
        "1649367553",
        r#"{"email":"test@example.com","username":"test_user"}"#,
        "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
    ),
];

#[test]
fn the_published_vectors_verify_when_the_clock_is_not_checked() {
    for (secret, id, ts, body, signature) in VECTORS {
        let verifier = Verifier::parse(secret).expect("secret");
        for prefix in ["svix", "webhook"] {
            assert_eq!(
                verifier.verify(body.as_bytes(), &headers(prefix, id, ts, signature), false),
                Ok(()),
                "{prefix} {id}"
            );
        }
    }
}

#[test]
fn the_published_vectors_are_stale_when_the_clock_is_checked() {
    for (secret, id, ts, body, signature) in VECTORS {
        let verifier = Verifier::parse(secret).expect("secret");
        assert_eq!(
            verifier.verify(body.as_bytes(), &headers("svix", id, ts, signature), true),
            Err(SignatureError::TooOld)
        );
    }
}

#[test]
fn a_changed_byte_breaks_a_published_vector() {
    let (secret, id, ts, body, signature) = VECTORS[0];
    let verifier = Verifier::parse(secret).expect("secret");
    let tampered = body.replace('4', "5");
    assert_eq!(
        verifier.verify(
            tampered.as_bytes(),
            &headers("svix", id, ts, signature),
            false
        ),
        Err(SignatureError::NoMatch)
    );
}

#[test]
fn malformed_secrets_are_refused_without_echoing_them() {
    let cases = [
        ("", SecretError::Missing),
        ("  ", SecretError::Missing),
        (
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            SecretError::Malformed {
                position: 1,
                reason: "it does not start with whsec_",
            },
        ),
        (
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw whsec_not*base64!",
            SecretError::Malformed {
                position: 2,
                reason: "the part after whsec_ is not base64",
            },
        ),
        (
            "whsec_",
            SecretError::Malformed {
                position: 1,
                reason: "it is empty after whsec_",
            },
        ),
    ];
    for (raw, expected) in cases {
        let error = Verifier::parse(raw).expect_err("accepted");
        assert!(
            !error.to_string().contains("MfKQ9r8"),
            "secret echoed: {error}"
        );
        assert_eq!(error, expected);
    }
    let verifier = Verifier::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret");
    assert!(!format!("{verifier:?}").contains("MfKQ9r8"));
}

async fn a_rotated_secret_and_the_webhook_headers_are_accepted(backend: Backend) {
    let old = common::new_secret();
    let new = common::new_secret();
    // Configured: the old secret first, the new one beside it; Svix signs with the new.
    let options = AppOptions {
        secrets: vec![new.clone(), old.clone()],
        ..AppOptions::default()
    };
    let app = spawn_app_with(TestDb::with_prisma_tables(backend).await, options).await;
    let body = ClerkUser::new("user_rot", 1_000, "rot@example.com").created();
    let ts = now();
    let with_old = svix::webhooks::Webhook::new(&old)
        .expect("old")
        .sign("msg_r1", ts, body.as_bytes())
        .expect("sign");

    let response = app
        .post(
            &[
                ("webhook-id", "msg_r1".into()),
                ("webhook-timestamp", ts.to_string()),
                ("webhook-signature", with_old),
            ],
            body.clone(),
        )
        .await;

    assert_eq!(response.status().as_u16(), 200);
    assert!(app.db.user("user_rot").await.is_some());
    app.expect_outcome("msg_r1", &body, "duplicate").await;
}

on_both_backends!(a_rotated_secret_and_the_webhook_headers_are_accepted);
