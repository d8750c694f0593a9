//! Malformed and hostile deliveries, table-driven: each gets a 4xx with a reason, none changes
//! the database, none takes the daemon down.

mod common;

use common::{now, spawn_app, Backend, ClerkUser, TestApp};
use serde_json::{json, Value};

/// How a case's headers differ from a correct signature.
enum Headers {
    /// Signed correctly with this message id.
    Signed(&'static str),
    /// Signed correctly over the body, then one header replaced (or removed, with None).
    Replace(&'static str, Option<String>),
    /// Signed correctly with a long message id.
    LongId,
}

fn user_body(mutate: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut value: Value = serde_json::from_str(
        &ClerkUser::new("user_hostile", 1_000, "hostile@example.com").created(),
    )
    .expect("json");
    mutate(&mut value);
    value.to_string().into_bytes()
}

fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

fn cases() -> Vec<(&'static str, Headers, Vec<u8>, u16)> {
    use Headers::*;
    let ok = || user_body(|_| {});
    vec![
        ("no svix-id", Replace("svix-id", None), ok(), 400),
        ("no svix-timestamp", Replace("svix-timestamp", None), ok(), 400),
        ("no svix-signature", Replace("svix-signature", None), ok(), 400),
        ("timestamp not a number", Replace("svix-timestamp", Some("soon".into())), ok(), 400),
        ("timestamp negative", Replace("svix-timestamp", Some("-5".into())), ok(), 400),
        ("timestamp beyond i64", Replace("svix-timestamp", Some("99999999999999999999".into())), ok(), 400),
        ("signature garbage", Replace("svix-signature", Some("nonsense".into())), ok(), 401),
        ("signature empty v1", Replace("svix-signature", Some("v1,".into())), ok(), 401),
        ("signature of another scheme", Replace("svix-signature", Some("v2,AAAA".into())), ok(), 401),
        ("message id with a space", Signed("msg with space"), ok(), 400),
        ("message id of 300 characters", LongId, ok(), 400),
        ("body null", Signed("m"), b"null".to_vec(), 400),
        ("body an array", Signed("m"), b"[]".to_vec(), 400),
        ("body a string", Signed("m"), b"\"user.created\"".to_vec(), 400),
        ("type null", Signed("m"), br#"{"type": null, "data": {}}"#.to_vec(), 400),
        ("type empty", Signed("m"), br#"{"type": "", "data": {}}"#.to_vec(), 400),
        ("type of 10,000 characters", Signed("m"), json!({"type": "x".repeat(10_000)}).to_string().into_bytes(), 400),
        ("data null", Signed("m"), br#"{"type": "user.created", "data": null}"#.to_vec(), 400),
        ("data a string", Signed("m"), br#"{"type": "user.created", "data": "user_1"}"#.to_vec(), 400),
        ("data.id a number", Signed("m"), user_body(|v| v["data"]["id"] = json!(42)), 400),
        ("data.id not a user id", Signed("m"), user_body(|v| v["data"]["id"] = json!("org_2abc")), 400),
        ("data.id of 500 characters", Signed("m"), user_body(|v| v["data"]["id"] = json!(format!("user_{}", "a".repeat(500)))), 400),
        ("data.id with a quote", Signed("m"), user_body(|v| v["data"]["id"] = json!("user_x'; DROP TABLE \"User\"; --")), 400),
        ("updated_at a string", Signed("m"), user_body(|v| v["data"]["updated_at"] = json!("yesterday")), 400),
        ("updated_at a float beyond i64", Signed("m"), user_body(|v| v["data"]["updated_at"] = json!(1e20)), 400),
        ("updated_at negative", Signed("m"), user_body(|v| v["data"]["updated_at"] = json!(-1)), 400),
        ("updated_at beyond year 9999", Signed("m"), user_body(|v| v["data"]["updated_at"] = json!(i64::MAX)), 400),
        ("created_at missing", Signed("m"), user_body(|v| { v["data"].as_object_mut().map(|d| d.remove("created_at")); }), 400),
        ("email_addresses an object", Signed("m"), user_body(|v| v["data"]["email_addresses"] = json!({"id": "idn_primary"})), 400),
        ("primary address of 300 characters", Signed("m"), user_body(|v| v["data"]["email_addresses"][0]["email_address"] = json!(format!("{}@example.com", "a".repeat(300)))), 400),
        ("primary address with a newline", Signed("m"), user_body(|v| v["data"]["email_addresses"][0]["email_address"] = json!("a@example.com\nBcc: x@example.com")), 400),
        ("first_name a number", Signed("m"), user_body(|v| v["data"]["first_name"] = json!(7)), 400),
        ("metadata nested 10,000 deep", Signed("m"), format!(r#"{{"type": "user.created", "data": {{"id": "user_1", "created_at": 1, "updated_at": 2, "public_metadata": {}}}}}"#, nested(10_000)).into_bytes(), 400),
        ("user.deleted without data.id", Signed("m"), br#"{"type": "user.deleted", "data": {"deleted": true}}"#.to_vec(), 400),
        ("truncated JSON", Signed("m"), b"{\"type\": \"user.created\", \"data\": {\"id\": \"user_1\"".to_vec(), 400),
        ("trailing garbage after the object", Signed("m"), [ok(), b" {}".to_vec()].concat(), 400),
    ]
}

async fn send(app: &TestApp, headers: &Headers, body: Vec<u8>) -> reqwest::Response {
    let ts = now();
    let id = match headers {
        Headers::Signed(id) => (*id).to_owned(),
        Headers::LongId => "m".repeat(300),
        Headers::Replace(..) => "msg_hostile".to_owned(),
    };
    let mut list = vec![
        ("svix-id", id.clone()),
        ("svix-timestamp", ts.to_string()),
        ("svix-signature", app.sign(&id, ts, &body)),
    ];
    if let Headers::Replace(name, value) = headers {
        list.retain(|(n, _)| n != name);
        if let Some(value) = value {
            list.push((name, value.clone()));
        }
    }
    app.post(&list, body).await
}

async fn every_hostile_delivery_is_refused_with_a_reason_and_changes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let cases = cases();
    assert!(cases.len() >= 30);
    let before = app.db.snapshot().await;

    for (name, headers, body, status) in &cases {
        let response = send(&app, headers, body.clone()).await;

        assert_eq!(response.status().as_u16(), *status, "{name}");
        let json: Value = response.json().await.unwrap_or(Value::Null);
        let reason = json["error"].as_str().unwrap_or("");
        assert!(!reason.is_empty(), "{name}: no reason given");
        assert_eq!(
            app.db.snapshot().await,
            before,
            "{name} changed the database"
        );
    }

    // Still serving, and still applying good deliveries.
    assert_eq!(app.get("/healthz").await.status().as_u16(), 200);
    app.expect_outcome(
        "m_good",
        &ClerkUser::new("user_fine", 1, "fine@example.com").created(),
        "applied",
    )
    .await;
}

on_both_backends!(every_hostile_delivery_is_refused_with_a_reason_and_changes_nothing);
