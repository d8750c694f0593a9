//! Bad deliveries: each gets its specific status and changes nothing in the database.

mod common;

use common::{now, spawn_app, spawn_app_with, AppOptions, Backend, ClerkUser, TestApp, TestDb};

/// Sends `headers` + `body`, asserts the status, and that the database is unchanged.
async fn refused(
    app: &TestApp,
    headers: Vec<(&str, String)>,
    body: Vec<u8>,
    status: u16,
) -> serde_json::Value {
    let before = app.db.snapshot().await;
    let response = app.post(&headers, body).await;
    assert_eq!(response.status().as_u16(), status);
    let json = response.json().await.unwrap_or(serde_json::Value::Null);
    assert_eq!(app.db.snapshot().await, before, "the database changed");
    json
}

/// Headers that sign `body` correctly, with `id` and timestamp `ts`.
fn signed(app: &TestApp, id: &str, ts: i64, body: &[u8]) -> Vec<(&'static str, String)> {
    vec![
        ("svix-id", id.to_owned()),
        ("svix-timestamp", ts.to_string()),
        ("svix-signature", app.sign(id, ts, body)),
    ]
}

fn a_user() -> Vec<u8> {
    ClerkUser::new("user_bad", 1_000, "bad@example.com")
        .created()
        .into_bytes()
}

async fn each_missing_header_is_a_400_naming_it(backend: Backend) {
    let app = spawn_app(backend).await;
    let body = a_user();
    for missing in ["svix-id", "svix-timestamp", "svix-signature"] {
        let headers: Vec<_> = signed(&app, "msg_1", now(), &body)
            .into_iter()
            .filter(|(n, _)| *n != missing)
            .collect();
        let json = refused(&app, headers, body.clone(), 400).await;
        let error = json["error"].as_str().unwrap_or("");
        assert!(error.contains(missing), "{missing}: {error}");
    }
}

async fn a_signature_from_another_secret_is_a_401(backend: Backend) {
    let app = spawn_app(backend).await;
    let body = a_user();
    let ts = now();
    let other = svix::webhooks::Webhook::new(&common::new_secret()).expect("secret");
    let signature = other.sign("msg_1", ts, &body).expect("sign");
    let headers = vec![
        ("svix-id", "msg_1".into()),
        ("svix-timestamp", ts.to_string()),
        ("svix-signature", signature),
    ];
    let json = refused(&app, headers, body, 401).await;
    assert_eq!(json["error"], "signature rejected: no matching signature");
}

async fn a_tampered_body_is_a_401(backend: Backend) {
    let app = spawn_app(backend).await;
    let body = a_user();
    let headers = signed(&app, "msg_1", now(), &body);
    let tampered = String::from_utf8(body)
        .expect("utf8")
        .replace("bad@example.com", "evil@example.com");
    refused(&app, headers, tampered.into_bytes(), 401).await;
}

async fn a_timestamp_ten_minutes_off_is_a_401(backend: Backend) {
    let app = spawn_app(backend).await;
    let body = a_user();
    for (offset, reason) in [(-600, "too old"), (600, "future")] {
        let headers = signed(&app, "msg_1", now() + offset, &body);
        let json = refused(&app, headers, body.clone(), 401).await;
        assert!(
            json["error"].as_str().unwrap_or("").contains(reason),
            "{json}"
        );
    }
}

async fn a_body_that_is_not_utf8_is_a_400(backend: Backend) {
    let app = spawn_app(backend).await;
    let body = b"{\"type\":\"user.created\",\"data\":{\"first_name\":\"\xff\xfe\"}}".to_vec();
    let ts = now();
    // Svix cannot sign a non-UTF-8 body; any signature will do.
    let headers = vec![
        ("svix-id", "msg_1".to_owned()),
        ("svix-timestamp", ts.to_string()),
        ("svix-signature", app.sign("msg_1", ts, b"{}")),
    ];
    let json = refused(&app, headers, body, 400).await;
    assert_eq!(json["error"], "signature rejected: body is not valid UTF-8");
}

async fn signed_but_unusable_bodies_are_400s(backend: Backend) {
    let app = spawn_app(backend).await;
    let cases: Vec<(&str, String, &str)> = vec![
        ("malformed JSON", "{\"type\": \"user.created\", ".into(), "not a valid event"),
        ("no type", r#"{"data": {"id": "user_1"}}"#.into(), "type is missing"),
        ("user event without data.id", r#"{"type": "user.created", "data": {"created_at": 1, "updated_at": 2}}"#.into(), "data.id is missing"),
        ("user.deleted without data.id", r#"{"type": "user.deleted", "data": {"deleted": true}}"#.into(), "data.id is missing"),
        ("no updated_at", r#"{"type": "user.updated", "data": {"id": "user_1", "created_at": 1}}"#.into(), "data.updated_at is missing"),
        ("id not a user id", r#"{"type": "user.created", "data": {"id": "org_1", "created_at": 1, "updated_at": 2}}"#.into(), "not a Clerk user id"),
        ("empty body", String::new(), "not a valid event"),
        ("time out of range", r#"{"type": "user.created", "data": {"id": "user_1", "created_at": 1, "updated_at": -5}}"#.into(), "out of range"),
    ];
    for (n, (case, body, reason)) in cases.into_iter().enumerate() {
        let headers = signed(&app, &format!("msg_{n}"), now(), body.as_bytes());
        let json = refused(&app, headers, body.into_bytes(), 400).await;
        let error = json["error"].as_str().unwrap_or("");
        assert!(error.contains(reason), "{case}: {error}");
    }
}

async fn a_body_over_the_limit_is_a_413(backend: Backend) {
    let options = AppOptions {
        body_limit: 4096,
        ..AppOptions::default()
    };
    let app = spawn_app_with(TestDb::with_prisma_tables(backend).await, options).await;
    let mut user = ClerkUser::new("user_big", 1_000, "big@example.com");
    user.public_metadata = serde_json::json!({"padding": "x".repeat(5000)});
    let body = user.created().into_bytes();
    let headers = signed(&app, "msg_big", now(), &body);
    refused(&app, headers, body, 413).await;
}

async fn wrong_method_and_wrong_path_are_refused_without_redirects(backend: Backend) {
    let app = spawn_app(backend).await;
    let get = app.get("/webhooks/clerk").await;
    assert_eq!(get.status().as_u16(), 405);
    assert_eq!(
        get.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("POST")
    );
    let body = a_user();
    let wrong_path = app
        .client
        .post(format!("{}/webhooks/clerk/", app.address))
        .body(body.clone())
        .send()
        .await
        .expect("request");
    assert_eq!(wrong_path.status().as_u16(), 404);
    let before = app.db.snapshot().await;
    let other = app
        .client
        .post(format!("{}/webhook", app.address))
        .body(body)
        .send()
        .await
        .expect("request");
    assert_eq!(other.status().as_u16(), 404);
    assert_eq!(app.db.snapshot().await, before);
}

on_both_backends!(
    each_missing_header_is_a_400_naming_it,
    a_signature_from_another_secret_is_a_401,
    a_tampered_body_is_a_401,
    a_timestamp_ten_minutes_off_is_a_401,
    a_body_that_is_not_utf8_is_a_400,
    signed_but_unusable_bodies_are_400s,
    a_body_over_the_limit_is_a_413,
    wrong_method_and_wrong_path_are_refused_without_redirects,
);
