//! `POST /api/auth/sync` through the real app over HTTP, on both backends: session tokens
//! signed with RSA keys generated here, the JWKS and the users served by the stand-in of
//! Clerk's Backend API. Every refusal is checked for its status and reason, an unchanged
//! table, and no call to Clerk's user API.

#[path = "common/clerk_api.rs"]
mod clerk_api;
mod common;

use std::sync::OnceLock;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use clerk_api::{clerk_user, stored, Faults, StandIn};
use clerk_sync::backfill::client::SecretKey;
use clerk_sync::session::Config;
use common::{spawn_app_with, AppOptions, Backend, TestApp, TestDb};
use jsonwebtoken::{Algorithm, EncodingKey};
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};

const KEY: &str = "sk_test_StandInSecretKey0123456789";
/// base64("sweet-owl-12.clerk.accounts.dev$")
const PUBLISHABLE: &str = "pk_test_c3dlZXQtb3dsLTEyLmNsZXJrLmFjY291bnRzLmRldiQ";
const ISSUER: &str = "https://sweet-owl-12.clerk.accounts.dev";
const APP: &str = "https://app.example.com";
const SESSION_CAT: &str = "cl_B7d4PD111AAA";

/// An RSA key pair made by the test, never stored.
struct TestKey {
    kid: String,
    private_pem: String,
    public_pem: String,
    jwk: Value,
}

fn generate(kid: &str) -> TestKey {
    let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("rsa key");
    let public = rsa::RsaPublicKey::from(&private);
    TestKey {
        kid: kid.to_owned(),
        private_pem: private
            .to_pkcs8_pem(LineEnding::LF)
            .expect("private pem")
            .to_string(),
        public_pem: public
            .to_public_key_pem(LineEnding::LF)
            .expect("public pem"),
        jwk: json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        }),
    }
}

/// The instance's key, a key it rotated to, and a key it never had (made once per run).
fn keys() -> &'static [TestKey; 3] {
    static KEYS: OnceLock<[TestKey; 3]> = OnceLock::new();
    KEYS.get_or_init(|| {
        [
            generate("ins_key_1"),
            generate("ins_key_2"),
            generate("ins_key_unknown"),
        ]
    })
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// A compact JWS of `header` and `claims` signed RS256 with `key`.
fn sign(header: &Value, claims: &Value, key: &TestKey) -> String {
    let input = format!("{}.{}", b64(header), b64(claims));
    let encoding = EncodingKey::from_rsa_pem(key.private_pem.as_bytes()).expect("encoding key");
    let signature =
        jsonwebtoken::crypto::sign(input.as_bytes(), &encoding, Algorithm::RS256).expect("sign");
    format!("{input}.{signature}")
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn header(key: &TestKey) -> Value {
    json!({"alg": "RS256", "typ": "JWT", "kid": key.kid, "cat": SESSION_CAT})
}

/// The claims of a live session token of `user`, as Clerk issues them.
fn claims(user: &str) -> Value {
    let t = now();
    json!({
        "azp": APP, "exp": t + 60, "fva": [0, -1], "iat": t - 1, "iss": ISSUER,
        "nbf": t - 11, "sid": "sess_2abcdef", "sub": user, "v": 2
    })
}

fn session_token(user: &str) -> String {
    sign(&header(&keys()[0]), &claims(user), &keys()[0])
}

/// A stand-in serving the instance's first key, and the app configured against it.
struct Setup {
    api: StandIn,
    app: TestApp,
}

fn config(api: &StandIn) -> Config {
    Config {
        secret_key: Some(SecretKey::parse(KEY).expect("key")),
        api_url: api.url.clone(),
        publishable_key: Some(PUBLISHABLE.to_owned()),
        frontend_api_url: None,
        jwt_key: None,
        authorized_parties: vec![APP.to_owned()],
        allow_pending: false,
        deadline: Duration::from_secs(5),
    }
}

async fn setup_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Setup {
    setup_with_options(backend, tweak, AppOptions::default()).await
}

async fn setup_with_options(
    backend: Backend,
    tweak: impl FnOnce(&mut Config),
    options: AppOptions,
) -> Setup {
    let api = StandIn::start(Vec::new(), KEY, 0).expect("stand-in");
    api.set_jwks(json!({"keys": [keys()[0].jwk]}));
    let mut session = config(&api);
    tweak(&mut session);
    let app = spawn_app_with(
        TestDb::with_prisma_tables(backend).await,
        AppOptions {
            session: Some(session),
            ..options
        },
    )
    .await;
    Setup { api, app }
}

async fn setup(backend: Backend) -> Setup {
    setup_with(backend, |_| {}).await
}

/// A Clerk user object updated `version_ms` after T0.
fn user_object(id: &str, version_ms: i64, email: &str) -> Value {
    clerk_user(id, common::T0, common::T0 + version_ms, Some(email))
}

impl Setup {
    async fn post(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    fn request(&self) -> reqwest::RequestBuilder {
        self.app
            .client
            .post(format!("{}/api/auth/sync", self.app.address))
    }

    /// Syncs with `token` as a Bearer token.
    async fn sync(&self, token: &str) -> (u16, Value) {
        self.post(self.request().bearer_auth(token)).await
    }

    /// Calls to the user API the stand-in saw.
    fn user_calls(&self) -> usize {
        self.api
            .log()
            .iter()
            .filter(|s| s.path.starts_with("/v1/users"))
            .count()
    }

    fn jwks_calls(&self) -> usize {
        self.api
            .log()
            .iter()
            .filter(|s| s.path == "/v1/jwks")
            .count()
    }

    async fn metrics(&self) -> String {
        self.app
            .get("/metrics")
            .await
            .text()
            .await
            .expect("metrics")
    }

    /// Asserts that `token` is refused with `reason`, nothing is written, and Clerk's user
    /// API is not called.
    async fn assert_refused(&self, token: &str, reason: &str) {
        let before = self.app.db.snapshot().await;
        let calls = self.user_calls();
        let (status, body) = self.sync(token).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["reason"], reason, "{body}");
        assert_eq!(self.app.db.snapshot().await, before, "the table changed");
        assert_eq!(self.user_calls(), calls, "Clerk's user API was called");
        let metrics = self.metrics().await;
        assert!(
            metrics.contains(&format!(
                "clerk_sync_session_refusals_total{{reason=\"{reason}\"}} 1"
            )),
            "{metrics}"
        );
    }
}

// ---------------------------------------------------------------- accepted

async fn a_new_user_is_created_before_any_webhook_and_a_late_webhook_is_stale(backend: Backend) {
    let s = setup(backend).await;
    let id = "user_2newcomer";
    s.api
        .put(stored(user_object(id, 5_000, "newcomer@example.com")));

    let (status, body) = s.sync(&session_token(id)).await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcome"], "applied");
    assert_eq!(body["user"]["id"], id);
    assert_eq!(body["user"]["mail_address"], "newcomer@example.com");
    assert_eq!(body["user"]["name"], "Grace Hopper omer");
    assert_eq!(body["user"]["role"], "USER");
    assert_eq!(body["user"]["createdAt"], "2024-05-01T12:00:00.000Z");
    assert_eq!(body["user"]["updatedAt"], "2024-05-01T12:00:05.000Z");
    let row = s.app.db.user(id).await.expect("row written");
    assert_eq!(row.mail_address, "newcomer@example.com");
    assert_eq!(s.user_calls(), 1);

    // The webhook for the same version lands later: it changes nothing.
    let mut webhook = common::ClerkUser::new(id, 5_000, "newcomer@example.com");
    webhook.first_name = Some("Grace".into());
    webhook.last_name = Some("Hopper omer".into());
    s.app
        .expect_outcome("msg_late_created", &webhook.body("user.created"), "stale")
        .await;
    // An older one neither.
    let older = common::ClerkUser::new(id, 1_000, "old@example.com");
    s.app
        .expect_outcome("msg_older", &older.body("user.updated"), "stale")
        .await;
    assert_eq!(s.app.db.user(id).await, Some(row));
}

async fn a_user_whose_webhook_landed_is_answered_without_a_write(backend: Backend) {
    let s = setup(backend).await;
    let id = "user_2webhooked";
    let webhook = common::ClerkUser::new(id, 9_000, "hooked@example.com");
    s.app
        .expect_outcome("msg_created", &webhook.body("user.created"), "applied")
        .await;
    // Clerk still serves an older version than the webhook carried.
    s.api
        .put(stored(user_object(id, 2_000, "stale@example.com")));
    let before = s.app.db.users().await;

    let (status, body) = s.sync(&session_token(id)).await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcome"], "cached");
    assert_eq!(body["user"]["mail_address"], "hooked@example.com");
    assert_eq!(body["user"]["name"], "Ada Lovelace");
    assert_eq!(s.app.db.users().await, before);
    // The table answered: Clerk's rate limit is not spent on a user the table holds.
    assert_eq!(s.user_calls(), 0);
}

async fn a_token_in_the_session_cookie_from_an_authorized_origin_is_accepted(backend: Backend) {
    let s = setup(backend).await;
    let id = "user_2cookie";
    s.api
        .put(stored(user_object(id, 1_000, "cookie@example.com")));
    let token = session_token(id);

    let (status, body) = s
        .post(
            s.request()
                .header("origin", APP)
                .header("cookie", format!("__client_uat=1; __session={token}")),
        )
        .await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcome"], "applied");
    assert!(s.app.db.user(id).await.is_some());
}

async fn the_instances_suffixed_session_cookie_is_read_first(backend: Backend) {
    let s = setup(backend).await;
    let id = "user_2suffixed";
    s.api
        .put(stored(user_object(id, 1_000, "suffixed@example.com")));
    let suffix = clerk_sync::session::cookie_suffix(PUBLISHABLE);

    // Another app's token sits in the plain cookie; the instance's own in the suffixed one.
    let response = s
        .request()
        .header("origin", APP)
        .header(
            "cookie",
            format!(
                "__session=not.a.token; __session_{suffix}={}",
                session_token(id)
            ),
        )
        .send()
        .await
        .expect("request");

    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response
            .headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some(APP)
    );
    assert_eq!(
        response
            .headers()
            .get("access-control-allow-credentials")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
}

async fn a_rotated_key_is_fetched_by_its_new_kid(backend: Backend) {
    let s = setup(backend).await;
    let first = "user_2beforerotation";
    let second = "user_2afterrotation";
    s.api
        .put(stored(user_object(first, 1_000, "before@example.com")));
    s.api
        .put(stored(user_object(second, 1_000, "after@example.com")));
    assert_eq!(s.sync(&session_token(first)).await.0, 200);
    assert_eq!(s.jwks_calls(), 1);

    // Clerk rotates: the set now holds the new key, and tokens name it.
    s.api
        .set_jwks(json!({"keys": [keys()[1].jwk, keys()[0].jwk]}));
    let rotated = sign(&header(&keys()[1]), &claims(second), &keys()[1]);
    // Within the refetch interval of the last fetch, the new kid is not asked for yet...
    let (status, body) = s.sync(&rotated).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (401, Some("unknown_kid"))
    );
    assert_eq!(s.jwks_calls(), 1);
    // ...past it, one fetch finds it.
    tokio::time::sleep(
        clerk_sync::session::keys::MIN_REFETCH_INTERVAL + Duration::from_millis(100),
    )
    .await;
    let (status, body) = s.sync(&rotated).await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcome"], "applied");
    assert_eq!(s.jwks_calls(), 2);
    // The old key is still cached: no further fetch.
    assert_eq!(s.sync(&session_token(first)).await.0, 200);
    assert_eq!(s.jwks_calls(), 2);
}

async fn a_networkless_jwt_key_verifies_without_fetching_keys(backend: Backend) {
    // As pasted into an environment file: one line, `\n` escapes.
    let pem = keys()[0].public_pem.replace('\n', "\\n");
    let s = setup_with(backend, |c| c.jwt_key = Some(pem)).await;
    let id = "user_2networkless";
    s.api.put(stored(user_object(id, 1_000, "pem@example.com")));

    let (status, body) = s.sync(&session_token(id)).await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(s.jwks_calls(), 0);
    // A token signed with another key does not pass the static key.
    let forged = sign(&header(&keys()[2]), &claims(id), &keys()[2]);
    let (status, body) = s.sync(&forged).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (401, Some("bad_signature"))
    );
}

async fn a_configured_frontend_api_url_is_the_issuer_checked(backend: Backend) {
    // A production instance behind its own domain (or a proxy): the flag names the issuer.
    let s = setup_with(backend, |c| {
        c.frontend_api_url = Some("https://clerk.example.com/".into())
    })
    .await;
    let id = "user_2ownedomain";
    s.api
        .put(stored(user_object(id, 1_000, "domain@example.com")));
    let mut c = claims(id);
    c["iss"] = json!("https://clerk.example.com");
    let (status, body) = s.sync(&sign(&header(&keys()[0]), &c, &keys()[0])).await;
    assert_eq!(status, 200, "{body}");
    // The publishable key's issuer no longer passes.
    s.assert_refused(&session_token(id), "wrong_issuer").await;
}

async fn the_body_may_name_the_tokens_own_user(backend: Backend) {
    let s = setup(backend).await;
    let id = "user_2named";
    s.api
        .put(stored(user_object(id, 1_000, "named@example.com")));

    let (status, body) = s
        .post(
            s.request()
                .bearer_auth(session_token(id))
                .json(&json!({"userId": id})),
        )
        .await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["id"], id);
}

async fn session_syncs_never_pass_for_webhook_deliveries_in_the_last_delivery_age(
    backend: Backend,
) {
    let s = setup(backend).await;
    let id = "user_2quiet";
    s.api
        .put(stored(user_object(id, 1_000, "quiet@example.com")));
    assert_eq!(s.sync(&session_token(id)).await.0, 200);
    let url = clerk_sync::db::DatabaseUrl::parse(&s.app.db.url).expect("url");
    let db =
        clerk_sync::db::Database::open(&url, clerk_sync::db::PoolOptions::default()).expect("open");

    // Only a session sync so far: the webhook endpoint has received nothing.
    assert_eq!(
        db.gauges().await.expect("gauges").last_delivery_age_seconds,
        None
    );
    let status = db
        .status(chrono::Utc::now() - chrono::Duration::hours(1))
        .await
        .expect("status");
    assert_eq!(status.last_delivery_at, None);
    assert_eq!(status.known_users, 1);

    let other = common::ClerkUser::new("user_2hooked", 1_000, "hooked@example.com");
    s.app
        .expect_outcome("msg_hook", &other.body("user.created"), "applied")
        .await;
    assert!(db
        .gauges()
        .await
        .expect("gauges")
        .last_delivery_age_seconds
        .is_some());
}

async fn a_user_synced_moments_ago_is_answered_from_the_table(backend: Backend) {
    let s = setup(backend).await;
    let id = "user_2twice";
    s.api
        .put(stored(user_object(id, 1_000, "twice@example.com")));
    assert_eq!(s.sync(&session_token(id)).await.1["outcome"], "applied");

    let (status, body) = s.sync(&session_token(id)).await;

    assert_eq!(status, 200);
    assert_eq!(body["outcome"], "cached");
    assert_eq!(body["user"]["mail_address"], "twice@example.com");
    assert_eq!(s.user_calls(), 1);
}

async fn fifty_concurrent_requests_for_a_new_user_cost_one_api_call(backend: Backend) {
    let s = setup(backend).await;
    let id = "user_2crowd";
    s.api
        .put(stored(user_object(id, 1_000, "crowd@example.com")));
    // Slow answers, so the requests truly overlap.
    s.api.set_faults(clerk_api::Faults {
        delay: Duration::from_millis(300),
        ..clerk_api::Faults::default()
    });
    let token = session_token(id);

    let answers = futures_util::future::join_all((0..50).map(|_| s.sync(&token))).await;

    assert!(
        answers.iter().all(|(status, _)| *status == 200),
        "{answers:?}"
    );
    assert!(answers
        .iter()
        .all(|(_, body)| body["user"]["mail_address"] == "crowd@example.com"));
    let applied = answers
        .iter()
        .filter(|(_, body)| body["outcome"] == "applied")
        .count();
    assert_eq!(applied, 1, "{answers:?}");
    assert_eq!(s.user_calls(), 1);
    assert_eq!(s.jwks_calls(), 1);
    assert_eq!(s.app.db.users().await.len(), 1);
    let metrics = s.metrics().await;
    for series in [
        r#"clerk_sync_backend_api_requests_total{endpoint="users",result="ok"} 1"#,
        r#"clerk_sync_backend_api_requests_total{endpoint="jwks",result="ok"} 1"#,
        r#"clerk_sync_backend_api_duration_seconds_count{endpoint="users"} 1"#,
        r#"clerk_sync_session_syncs_total{outcome="applied"} 1"#,
        r#"clerk_sync_session_syncs_total{outcome="cached"} 49"#,
    ] {
        assert!(metrics.contains(series), "{series} missing from\n{metrics}");
    }
}

// ---------------------------------------------------------------- Clerk's answers

async fn a_user_deleted_in_clerk_is_answered_404_and_nothing_is_written(backend: Backend) {
    let s = setup(backend).await;
    let id = "user_2gone";
    let before = s.app.db.snapshot().await;

    let (status, body) = s.sync(&session_token(id)).await;

    assert_eq!(status, 404, "{body}");
    assert_eq!(body["reason"], "user_not_found");
    assert_eq!(s.app.db.snapshot().await, before);
    assert_eq!(s.user_calls(), 1);
}

async fn a_tombstoned_user_is_never_recreated(backend: Backend) {
    let s = setup(backend).await;
    let id = "user_2tombstoned";
    let user = common::ClerkUser::new(id, 1_000, "dead@example.com");
    s.app
        .expect_outcome("msg_c", &user.body("user.created"), "applied")
        .await;
    s.app
        .expect_outcome(
            "msg_d",
            &json!({"type": "user.deleted", "object": "event",
                    "data": {"id": id, "object": "user", "deleted": true}})
            .to_string(),
            "applied",
        )
        .await;
    // Clerk (a key of the wrong instance, say) still answers with a newer version.
    s.api
        .put(stored(user_object(id, 99_000, "dead@example.com")));

    let (status, body) = s.sync(&session_token(id)).await;

    assert_eq!(status, 404, "{body}");
    assert_eq!(s.app.db.user(id).await, None);
}

async fn clerk_rate_limiting_is_waited_out_within_the_deadline(backend: Backend) {
    let s = setup(backend).await;
    let id = "user_2throttled";
    s.api
        .put(stored(user_object(id, 1_000, "throttled@example.com")));
    s.api.fail_user_requests(&[429, 500]);

    let (status, body) = s.sync(&session_token(id)).await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcome"], "applied");
    let statuses: Vec<u16> = s
        .api
        .log()
        .iter()
        .filter(|l| l.path.starts_with("/v1/users"))
        .map(|l| l.status)
        .collect();
    assert_eq!(statuses, [429, 500, 200]);
}

async fn clerk_failing_past_the_deadline_is_a_503_with_retry_after(backend: Backend) {
    let s = setup_with(backend, |c| c.deadline = Duration::from_secs(2)).await;
    let id = "user_2outage";
    s.api
        .put(stored(user_object(id, 1_000, "outage@example.com")));
    s.api.fail_user_requests(&[500; 50]);
    let before = s.app.db.snapshot().await;

    let started = std::time::Instant::now();
    let response = s
        .request()
        .bearer_auth(session_token(id))
        .send()
        .await
        .expect("request");

    assert_eq!(response.status().as_u16(), 503);
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(response.headers().get("retry-after").is_some());
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["reason"], "clerk_unavailable");
    assert_eq!(s.app.db.snapshot().await, before);
    // An error is not remembered: once Clerk recovers, the next request syncs.
    s.api.fail_user_requests(&[]);
    assert_eq!(s.sync(&session_token(id)).await.0, 200);
}

async fn a_busy_database_is_a_503_and_the_sync_lands_once_it_frees(backend: Backend) {
    let api = StandIn::start(Vec::new(), KEY, 0).expect("stand-in");
    api.set_jwks(json!({"keys": [keys()[0].jwk]}));
    let app = spawn_app_with(
        TestDb::with_prisma_tables(backend).await,
        AppOptions {
            deadline: Duration::from_secs(1),
            session: Some(config(&api)),
            ..AppOptions::default()
        },
    )
    .await;
    let s = Setup { api, app };
    let id = "user_2waiting";
    s.api
        .put(stored(user_object(id, 1_000, "waiting@example.com")));
    // Another transaction holds the bookkeeping table (PostgreSQL) or the write lock (SQLite).
    let held = match backend {
        Backend::Postgres | Backend::Pooled => {
            s.app
                .db
                .hold("BEGIN; LOCK TABLE clerk_sync.users IN EXCLUSIVE MODE")
                .await
        }
        Backend::Sqlite => s.app.db.hold("BEGIN IMMEDIATE").await,
    };

    let response = s
        .request()
        .bearer_auth(session_token(id))
        .send()
        .await
        .expect("request");

    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().get("retry-after").is_some());
    let body: Value = response.json().await.expect("json");
    assert!(
        body["reason"] == "deadline_exceeded" || body["reason"] == "database_unavailable",
        "{body}"
    );
    assert_eq!(s.app.db.user(id).await, None);
    held.rollback().await;
    // The caller retries as told: the user is there.
    let landed = common::eventually(Duration::from_secs(10), || async {
        s.sync(&session_token(id)).await.0 == 200
    })
    .await;
    assert!(landed);
    assert!(s.app.db.user(id).await.is_some());
}

// ---------------------------------------------------------------- refused

async fn an_expired_token_is_refused(backend: Backend) {
    let s = setup(backend).await;
    let mut c = claims("user_2someone");
    c["exp"] = json!(now() - 10);
    s.assert_refused(&sign(&header(&keys()[0]), &c, &keys()[0]), "expired")
        .await;
}

async fn a_token_not_yet_valid_is_refused(backend: Backend) {
    let s = setup(backend).await;
    let mut c = claims("user_2someone");
    c["nbf"] = json!(now() + 30);
    s.assert_refused(&sign(&header(&keys()[0]), &c, &keys()[0]), "not_yet_valid")
        .await;
}

async fn a_token_issued_in_the_future_is_refused(backend: Backend) {
    let s = setup(backend).await;
    let mut c = claims("user_2someone");
    c["iat"] = json!(now() + 30);
    s.assert_refused(
        &sign(&header(&keys()[0]), &c, &keys()[0]),
        "issued_in_future",
    )
    .await;
}

async fn a_token_of_another_issuer_is_refused(backend: Backend) {
    let s = setup(backend).await;
    let mut c = claims("user_2someone");
    c["iss"] = json!("https://other-instance.clerk.accounts.dev");
    s.assert_refused(&sign(&header(&keys()[0]), &c, &keys()[0]), "wrong_issuer")
        .await;
}

async fn a_skipped_user_without_email_is_ignored_again_within_the_freshness_window(
    backend: Backend,
) {
    let options = AppOptions {
        sync: clerk_sync::sync::SyncOptions {
            skip_users_without_email: true,
            ..clerk_sync::sync::SyncOptions::default()
        },
        ..AppOptions::default()
    };
    let s = setup_with_options(backend, |_| {}, options).await;
    let id = "user_2phoneonly";
    s.api
        .put(stored(clerk_user(id, common::T0, common::T0 + 1_000, None)));
    for _ in 0..2 {
        let (status, body) = s.sync(&session_token(id)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["outcome"], "ignored");
        assert_eq!(body["user"], Value::Null);
    }
    assert_eq!(
        s.user_calls(),
        1,
        "the second answer came from the freshness window"
    );
    assert!(s.app.db.user(id).await.is_none());
}

async fn while_clerk_cannot_serve_the_key_set_a_token_is_503_not_401(backend: Backend) {
    let s = setup(backend).await;
    s.api.set_faults(Faults {
        every_nth_5xx: Some(1),
        ..Faults::default()
    });
    // The second request comes within the refetch interval: the key is not known to be
    // unknown, so the answer is still "retry", never "signed out".
    for _ in 0..2 {
        let (status, body) = s.sync(&session_token("user_2outage")).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["reason"], "keys_unavailable", "{body}");
    }
    assert_eq!(s.user_calls(), 0);
    assert!(s.app.db.user("user_2outage").await.is_none());
}

async fn an_issuer_hidden_in_an_array_is_refused(backend: Backend) {
    let s = setup(backend).await;
    let mut c = claims("user_2someone");
    let issuer = c["iss"].clone();
    c["iss"] = json!([issuer, "https://other-instance.clerk.accounts.dev"]);
    s.assert_refused(&sign(&header(&keys()[0]), &c, &keys()[0]), "wrong_issuer")
        .await;
}

async fn a_token_for_another_authorized_party_is_refused(backend: Backend) {
    let s = setup(backend).await;
    let mut c = claims("user_2someone");
    c["azp"] = json!("https://evil.example.com");
    s.assert_refused(&sign(&header(&keys()[0]), &c, &keys()[0]), "wrong_azp")
        .await;
}

async fn a_token_without_a_session_id_is_refused(backend: Backend) {
    let s = setup(backend).await;
    let mut c = claims("user_2someone");
    c.as_object_mut().expect("object").remove("sid");
    s.assert_refused(&sign(&header(&keys()[0]), &c, &keys()[0]), "missing_sid")
        .await;
}

async fn a_jwt_template_token_is_refused(backend: Backend) {
    let s = setup(backend).await;
    let mut h = header(&keys()[0]);
    h["cat"] = json!("cl_B7d4PD222AAA");
    s.assert_refused(
        &sign(&h, &claims("user_2someone"), &keys()[0]),
        "not_a_session_token",
    )
    .await;
    // Refused by its header: not even the keys were fetched.
    assert_eq!(s.jwks_calls(), 0);
}

async fn an_unsigned_token_is_refused(backend: Backend) {
    let s = setup(backend).await;
    let token = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT", "kid": keys()[0].kid})),
        b64(&claims("user_2someone"))
    );
    s.assert_refused(&token, "alg_not_allowed").await;
    assert_eq!(s.jwks_calls(), 0);
}

async fn an_hs256_token_keyed_with_the_public_key_is_refused(backend: Backend) {
    let s = setup(backend).await;
    let h = json!({"alg": "HS256", "typ": "JWT", "kid": keys()[0].kid, "cat": SESSION_CAT});
    let input = format!("{}.{}", b64(&h), b64(&claims("user_2someone")));
    // Algorithm confusion: the public key, which anyone has, as the HMAC secret.
    let secret = EncodingKey::from_secret(keys()[0].public_pem.as_bytes());
    let signature =
        jsonwebtoken::crypto::sign(input.as_bytes(), &secret, Algorithm::HS256).expect("sign");
    s.assert_refused(&format!("{input}.{signature}"), "alg_not_allowed")
        .await;
    assert_eq!(s.jwks_calls(), 0);
}

async fn a_tampered_payload_is_refused(backend: Backend) {
    let s = setup(backend).await;
    let token = session_token("user_2honest");
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[1] = b64(&claims("user_2victim"));
    s.assert_refused(&parts.join("."), "bad_signature").await;
}

async fn an_unknown_kid_is_refused_and_refetched_at_most_once(backend: Backend) {
    let s = setup(backend).await;
    let unknown = &keys()[2];
    let token = sign(&header(unknown), &claims("user_2someone"), unknown);

    s.assert_refused(&token, "unknown_kid").await;
    assert_eq!(s.jwks_calls(), 1);

    // A flood of random kids right after: no further key set request.
    for n in 0..20 {
        let mut h = header(unknown);
        h["kid"] = json!(format!("ins_random_{n}"));
        let (status, body) = s.sync(&sign(&h, &claims("user_2someone"), unknown)).await;
        assert_eq!(
            (status, body["reason"].as_str()),
            (401, Some("unknown_kid"))
        );
    }
    assert_eq!(s.jwks_calls(), 1);
    assert_eq!(s.user_calls(), 0);
}

async fn a_malformed_token_is_refused(backend: Backend) {
    let s = setup(backend).await;
    s.assert_refused("not-a-jwt", "malformed_token").await;
    let before = s.app.db.snapshot().await;
    for token in ["a.b", "a.b.c.d", "%%%.e30.c2ln", "bm90IGpzb24.e30.c2ln"] {
        let (status, body) = s.sync(token).await;
        assert_eq!(
            (status, body["reason"].as_str()),
            (401, Some("malformed_token")),
            "{token}"
        );
    }
    assert_eq!(s.app.db.snapshot().await, before);
    assert_eq!(s.jwks_calls() + s.user_calls(), 0);
}

async fn a_body_naming_another_user_is_forbidden(backend: Backend) {
    let s = setup(backend).await;
    let me = "user_2me";
    s.api.put(stored(user_object(
        "user_2victim",
        1_000,
        "victim@example.com",
    )));
    let before = s.app.db.snapshot().await;

    let (status, body) = s
        .post(
            s.request()
                .bearer_auth(session_token(me))
                .json(&json!({"userId": "user_2victim"})),
        )
        .await;

    assert_eq!(status, 403, "{body}");
    assert_eq!(body["reason"], "user_id_mismatch");
    assert_eq!(s.app.db.snapshot().await, before);
    assert_eq!(s.user_calls(), 0);
}

async fn a_pending_session_is_refused_unless_allowed(backend: Backend) {
    let s = setup(backend).await;
    let mut c = claims("user_2pending");
    c["sts"] = json!("pending");
    let token = sign(&header(&keys()[0]), &c, &keys()[0]);
    s.assert_refused(&token, "session_pending").await;

    let allowed = setup_with(backend, |c| c.allow_pending = true).await;
    allowed.api.put(stored(user_object(
        "user_2pending",
        1_000,
        "pending@example.com",
    )));
    assert_eq!(allowed.sync(&token).await.0, 200);
}

async fn a_cookie_from_an_unlisted_origin_is_refused(backend: Backend) {
    let s = setup(backend).await;
    let token = session_token("user_2someone");
    let before = s.app.db.snapshot().await;
    for origin in [Some("https://evil.example.com"), None] {
        let mut request = s.request().header("cookie", format!("__session={token}"));
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        let response = request.send().await.expect("request");
        assert_eq!(response.status().as_u16(), 401);
        assert!(response
            .headers()
            .get("access-control-allow-origin")
            .is_none());
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["reason"], "cookie_origin_not_allowed");
    }
    assert_eq!(s.app.db.snapshot().await, before);
    assert_eq!(s.jwks_calls() + s.user_calls(), 0);
}

async fn no_token_is_refused(backend: Backend) {
    let s = setup(backend).await;
    let (status, body) = s.post(s.request()).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (401, Some("missing_token"))
    );
    let (status, body) = s
        .post(s.request().header("authorization", "Basic dXNlcjpwYXNz"))
        .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (401, Some("malformed_token"))
    );
}

// ---------------------------------------------------------------- CORS and configuration

async fn cors_preflight_is_answered_for_authorized_origins_only(backend: Backend) {
    let s = setup(backend).await;
    let url = format!("{}/api/auth/sync", s.app.address);
    let preflight = |origin: &'static str| {
        s.app
            .client
            .request(reqwest::Method::OPTIONS, &url)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };

    let ok = preflight(APP).await.expect("preflight");
    assert_eq!(ok.status().as_u16(), 204);
    let h = ok.headers();
    assert_eq!(
        h.get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some(APP)
    );
    assert_eq!(
        h.get("access-control-allow-credentials")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    assert!(h
        .get("access-control-allow-headers")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("authorization")));

    let refused = preflight("https://evil.example.com")
        .await
        .expect("preflight");
    assert_eq!(refused.status().as_u16(), 403);
    assert!(refused
        .headers()
        .get("access-control-allow-origin")
        .is_none());
}

async fn without_a_secret_key_the_endpoint_is_off(backend: Backend) {
    let app = common::spawn_app(backend).await;
    let response = app
        .client
        .post(format!("{}/api/auth/sync", app.address))
        .bearer_auth(session_token("user_2someone"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 404);
}

on_both_backends!(
    a_new_user_is_created_before_any_webhook_and_a_late_webhook_is_stale,
    a_user_whose_webhook_landed_is_answered_without_a_write,
    an_issuer_hidden_in_an_array_is_refused,
    while_clerk_cannot_serve_the_key_set_a_token_is_503_not_401,
    a_skipped_user_without_email_is_ignored_again_within_the_freshness_window,
    a_token_in_the_session_cookie_from_an_authorized_origin_is_accepted,
    the_instances_suffixed_session_cookie_is_read_first,
    a_rotated_key_is_fetched_by_its_new_kid,
    a_networkless_jwt_key_verifies_without_fetching_keys,
    a_configured_frontend_api_url_is_the_issuer_checked,
    the_body_may_name_the_tokens_own_user,
    a_user_synced_moments_ago_is_answered_from_the_table,
    session_syncs_never_pass_for_webhook_deliveries_in_the_last_delivery_age,
    fifty_concurrent_requests_for_a_new_user_cost_one_api_call,
    a_user_deleted_in_clerk_is_answered_404_and_nothing_is_written,
    a_tombstoned_user_is_never_recreated,
    clerk_rate_limiting_is_waited_out_within_the_deadline,
    clerk_failing_past_the_deadline_is_a_503_with_retry_after,
    a_busy_database_is_a_503_and_the_sync_lands_once_it_frees,
    an_expired_token_is_refused,
    a_token_not_yet_valid_is_refused,
    a_token_issued_in_the_future_is_refused,
    a_token_of_another_issuer_is_refused,
    a_token_for_another_authorized_party_is_refused,
    a_token_without_a_session_id_is_refused,
    a_jwt_template_token_is_refused,
    an_unsigned_token_is_refused,
    an_hs256_token_keyed_with_the_public_key_is_refused,
    a_tampered_payload_is_refused,
    an_unknown_kid_is_refused_and_refetched_at_most_once,
    a_malformed_token_is_refused,
    a_body_naming_another_user_is_forbidden,
    a_pending_session_is_refused_unless_allowed,
    a_cookie_from_an_unlisted_origin_is_refused,
    no_token_is_refused,
    cors_preflight_is_answered_for_authorized_origins_only,
    without_a_secret_key_the_endpoint_is_off,
);

// ---------------------------------------------------------------- the real binary

const BIN: &str = env!("CARGO_BIN_EXE_clerk-sync");

/// `clerk-sync serve` with a clean environment, the session sync pointed at `api`.
fn serve_command(dir: &std::path::Path, api: &StandIn, port: u16) -> std::process::Command {
    let mut command = std::process::Command::new(BIN);
    command
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("CLERK_WEBHOOK_SIGNING_SECRET", common::new_secret())
        .env("CLERK_SECRET_KEY", KEY)
        .env("CLERK_API_URL", &api.url)
        .env(
            "CLERK_AUTHORIZED_PARTIES",
            format!("{APP}, https://admin.example.com"),
        )
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")]);
    command
}

#[test]
fn a_secret_key_without_an_issuer_stops_serve_with_a_clear_message() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let _guard = rt.enter();
    let api = StandIn::start(Vec::new(), KEY, 0).expect("stand-in");
    let dir = tempfile::tempdir().expect("temp dir");
    let output = serve_command(dir.path(), &api, common::free_port())
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("CLERK_PUBLISHABLE_KEY"), "{stderr}");
    assert!(!stderr.contains(&KEY[8..]), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_syncs_a_user_and_even_trace_logs_never_show_the_token_or_the_key() {
    let api = StandIn::start(Vec::new(), KEY, 0).expect("stand-in");
    api.set_jwks(json!({"keys": [keys()[0].jwk]}));
    let id = "user_2binary";
    api.put(stored(user_object(id, 1_000, "binary.person@example.com")));
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("trace.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let port = common::free_port();
    let mut child = serve_command(dir.path(), &api, port)
        .env("NEXT_PUBLIC_CLERK_PUBLISHABLE_KEY", PUBLISHABLE)
        .env("RUST_LOG", "trace")
        .stderr(log.try_clone().expect("log file"))
        .stdout(log)
        .spawn()
        .expect("spawn");
    let base = format!("http://127.0.0.1:{port}");
    let ready = common::eventually(Duration::from_secs(20), || {
        let url = format!("{base}/readyz");
        async move { matches!(reqwest::get(&url).await, Ok(r) if r.status() == 200) }
    })
    .await;
    assert!(ready, "the daemon did not become ready");

    let token = session_token(id);
    let client = reqwest::Client::new();
    let ok = client
        .post(format!("{base}/api/auth/sync"))
        .header("origin", "https://admin.example.com")
        .header("cookie", format!("__session={token}"))
        .send()
        .await
        .expect("request");
    assert_eq!(ok.status().as_u16(), 200);
    let mut tampered = token.clone();
    tampered.push('x');
    let refused = client
        .post(format!("{base}/api/auth/sync"))
        .bearer_auth(&tampered)
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status().as_u16(), 401);
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();

    let logs = std::fs::read_to_string(&log_path).expect("logs");
    assert!(
        logs.contains("session sync"),
        "the syncs are not in the logs"
    );
    assert!(logs.lines().count() > 20, "trace logging was not on");
    let signature = token.rsplit('.').next().unwrap_or_default();
    for secret in [&KEY[8..], signature, &token[..40]] {
        assert!(
            !logs.contains(secret),
            "trace logs contain a token or the secret key"
        );
    }
    assert!(
        !logs.contains("binary.person"),
        "trace logs contain the address"
    );
}
