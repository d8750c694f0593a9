//! The two reads of a mapped table (an application's own Prisma user model, not the seed's
//! `User`): the session sync's answer (`POST /api/auth/sync`), keyed by the model's Prisma
//! fields in Prisma Client's JSON forms, and `backfill --prune` through the real binary. Each
//! shape's table is made from the DDL Prisma generated for it; deliveries go through the HTTP
//! endpoint signed by the real `svix` signer; session tokens are signed with an RSA key made
//! here; Clerk's Backend API is the stand-in of `common/clerk_api.rs`.

#[path = "common/clerk_api.rs"]
mod clerk_api;
mod common;

use common::shape_db;
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use clerk_api::{clerk_user, stored, StandIn};
use clerk_sync::backfill::client::SecretKey;
use clerk_sync::mapping::Mapping;
use common::{deleted, spawn_app_with, AppOptions, Backend, ClerkUser, TestApp, TestDb, T0};
use jsonwebtoken::{Algorithm, EncodingKey};
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_clerk-sync");
const KEY: &str = "sk_test_StandInSecretKey0123456789";
/// base64("sweet-owl-12.clerk.accounts.dev$")
const PUBLISHABLE: &str = "pk_test_c3dlZXQtb3dsLTEyLmNsZXJrLmFjY291bnRzLmRldiQ";
const ISSUER: &str = "https://sweet-owl-12.clerk.accounts.dev";
const APP: &str = "https://app.example.com";
const KID: &str = "ins_key_1";

const CUID: &str = "cuid-clerkid";
const UUID: &str = "uuid-soft-delete";

// ---------------------------------------------------------------- set-up

/// The instance's signing key, made once per run: its private PEM and its JWK.
fn signing_key() -> &'static (String, Value) {
    static KEY_PAIR: OnceLock<(String, Value)> = OnceLock::new();
    KEY_PAIR.get_or_init(|| {
        let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("rsa key");
        let public = rsa::RsaPublicKey::from(&private);
        let pem = private
            .to_pkcs8_pem(LineEnding::LF)
            .expect("private pem")
            .to_string();
        let jwk = json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": KID,
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        });
        (pem, jwk)
    })
}

/// A live session token of `user`, as Clerk issues it, signed RS256.
fn session_token(user: &str) -> String {
    let t = chrono::Utc::now().timestamp();
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": KID});
    let claims = json!({
        "azp": APP, "exp": t + 60, "iat": t - 1, "iss": ISSUER, "nbf": t - 11,
        "sid": "sess_2abcdef", "sub": user, "v": 2
    });
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let input = format!("{}.{}", b64(&header), b64(&claims));
    let encoding = EncodingKey::from_rsa_pem(signing_key().0.as_bytes()).expect("encoding key");
    let signature =
        jsonwebtoken::crypto::sign(input.as_bytes(), &encoding, Algorithm::RS256).expect("sign");
    format!("{input}.{signature}")
}

/// The app on the shape's table, its session sync asking the stand-in.
struct Setup {
    api: StandIn,
    app: TestApp,
}

async fn setup(shape: &str, backend: Backend) -> Setup {
    let api = StandIn::start(Vec::new(), KEY, 0).expect("stand-in");
    api.set_jwks(json!({"keys": [signing_key().1]}));
    let mapping = Mapping::from_text(
        &common::prisma_fixture_text(&format!("{shape}.prisma")),
        None,
    )
    .expect("the mapping");
    let session = clerk_sync::session::Config {
        secret_key: Some(SecretKey::parse(KEY).expect("key")),
        api_url: api.url.clone(),
        publishable_key: Some(PUBLISHABLE.to_owned()),
        frontend_api_url: None,
        jwt_key: None,
        authorized_parties: vec![APP.to_owned()],
        allow_pending: false,
        deadline: Duration::from_secs(5),
    };
    let app = spawn_app_with(
        shape_db(shape, backend).await,
        AppOptions {
            mapping: Some(mapping),
            session: Some(session),
            ..AppOptions::default()
        },
    )
    .await;
    Setup { api, app }
}

impl Setup {
    /// `POST /api/auth/sync` as `user`: the status and the answer.
    async fn sync(&self, user: &str) -> (u16, Value) {
        let response = self
            .app
            .client
            .post(format!("{}/api/auth/sync", self.app.address))
            .bearer_auth(session_token(user))
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

/// Ada, created at T0 and updated 1.789 s after, as a webhook carries her.
fn ada(id: &str) -> ClerkUser {
    let mut user = ClerkUser::new(id, 1_789, "ada@example.com");
    user.first_name = Some("Ada".into());
    user.last_name = Some("Lovelace".into());
    user
}

/// The answer's `user`, its field names sorted.
fn fields(user: &Value) -> Vec<&str> {
    let mut names: Vec<&str> = user
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    names.sort_unstable();
    names
}

fn is_cuid(key: &Value) -> bool {
    key.as_str().is_some_and(|k| {
        k.len() == 25
            && k.starts_with('c')
            && k.chars()
                .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
    })
}

fn is_uuid_v4(key: &Value) -> bool {
    key.as_str().is_some_and(|k| {
        uuid::Uuid::parse_str(k).is_ok_and(|u| u.get_version_num() == 4) && k == k.to_lowercase()
    })
}

// ---------------------------------------------------------------- read_user

async fn the_cuid_shape_answers_its_row_by_prisma_field(backend: Backend) {
    let s = setup(CUID, backend).await;
    let mut user = ada("user_2adacuid");
    user.username = Some("ada".into());
    s.app
        .expect_outcome("msg_ada", &user.created(), "applied")
        .await;
    // A user no webhook brought yet: the sync fetches her from Clerk and writes her row.
    let grace = "user_2gracecuid";
    s.api.put(stored(clerk_user(
        grace,
        T0 + 60_000,
        T0 + 61_250,
        Some("grace@example.com"),
    )));

    let (status, body) = s.sync("user_2adacuid").await;
    let (fetched_status, fetched) = s.sync(grace).await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcome"], "cached", "the webhook's row is answered");
    let row = &body["user"];
    assert_eq!(
        fields(row),
        [
            "clerkId",
            "createdAt",
            "email",
            "firstName",
            "id",
            "imageUrl",
            "lastName",
            "updatedAt"
        ],
        "{row}"
    );
    assert!(is_cuid(&row["id"]), "{row}");
    assert_eq!(row["clerkId"], "user_2adacuid");
    assert_eq!(row["email"], "ada@example.com");
    assert_eq!(row["firstName"], "Ada");
    assert_eq!(row["lastName"], "Lovelace");
    assert_eq!(row["imageUrl"], "https://img.clerk.com/x");
    assert_eq!(row["createdAt"], "2024-05-01T12:00:00.000Z");
    assert_eq!(row["updatedAt"], "2024-05-01T12:00:01.789Z");

    assert_eq!(fetched_status, 200, "{fetched}");
    assert_eq!(fetched["outcome"], "applied", "{fetched}");
    let row = &fetched["user"];
    assert!(is_cuid(&row["id"]), "{row}");
    assert_ne!(row["id"], body["user"]["id"]);
    assert_eq!(row["clerkId"], grace);
    assert_eq!(row["email"], "grace@example.com");
    assert_eq!(row["firstName"], "Grace");
    assert_eq!(row["lastName"], "Hopper cuid");
    assert_eq!(row["imageUrl"], "https://img.clerk.com/xxxxxx");
    assert_eq!(row["createdAt"], "2024-05-01T12:01:00.000Z");
    assert_eq!(row["updatedAt"], "2024-05-01T12:01:01.250Z");
    s.api.stop().await;
}

async fn the_uuid_shape_answers_its_enum_and_boolean_and_a_soft_deleted_user_is_gone(
    backend: Backend,
) {
    let s = setup(UUID, backend).await;
    let user = ada("user_2adauuid");
    s.app
        .expect_outcome("msg_ada", &user.created(), "applied")
        .await;

    let (status, body) = s.sync("user_2adauuid").await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcome"], "cached");
    let row = &body["user"];
    assert_eq!(
        fields(row),
        [
            "clerk_id",
            "createdAt",
            "deleted",
            "deletedAt",
            "email",
            "firstName",
            "id",
            "lastName",
            "role",
            "updatedAt"
        ],
        "{row}"
    );
    assert!(is_uuid_v4(&row["id"]), "{row}");
    assert_eq!(row["clerk_id"], "user_2adauuid");
    assert_eq!(row["email"], "ada@example.com");
    assert_eq!(row["firstName"], "Ada");
    assert_eq!(row["lastName"], "Lovelace");
    assert_eq!(row["role"], "MEMBER");
    assert_eq!(row["deleted"], json!(false));
    assert_eq!(row["deletedAt"], Value::Null);
    assert_eq!(row["createdAt"], "2024-05-01T12:00:00.000Z");
    assert_eq!(row["updatedAt"], "2024-05-01T12:00:01.789Z");

    // Deleted in Clerk: the row stays, soft-deleted, and the sync no longer answers it.
    s.app
        .expect_outcome("msg_ada_gone", &deleted("user_2adauuid"), "applied")
        .await;
    // Within the first sync's freshness window: the table is read again, its tombstone found.
    let (status, body) = s.sync("user_2adauuid").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["reason"], "user_not_found", "{body}");
    let flag = s
        .app
        .db
        .text(
            r#"SELECT CAST("deleted" AS TEXT) AS v FROM "User" WHERE "clerk_id" = 'user_2adauuid'"#,
        )
        .await;
    assert!(matches!(flag.as_deref(), Some("true" | "1")), "{flag:?}");
    s.api.stop().await;
}

on_every_backend!(
    the_cuid_shape_answers_its_row_by_prisma_field,
    the_uuid_shape_answers_its_enum_and_boolean_and_a_soft_deleted_user_is_gone,
);

// ---------------------------------------------------------------- backfill --prune

/// `clerk-sync backfill --prune` through the binary, on the shape's schema.
async fn prune(db: &TestDb, api: &StandIn, shape: &str) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(["backfill", "--prune", "--retries", "3"])
        .args(["--api-url", &api.url, "--max-requests-per-10s", "0"])
        .arg("--prisma-schema")
        .arg(common::prisma_fixture(&format!("{shape}.prisma")))
        .env("DATABASE_URL", &db.url)
        .env("DIRECT_URL", db.direct.as_deref().unwrap_or(""))
        .env("CLERK_SECRET_KEY", KEY)
        .env_remove("CLERK_API_URL")
        .env_remove("CLERK_SYNC_PRISMA_SCHEMA")
        .env_remove("CLERK_SYNC_CONFIG")
        .env("RUST_LOG", "info");
    tokio::task::spawn_blocking(move || command.output().expect("run clerk-sync"))
        .await
        .expect("join")
}

use common::{output_text as text, summary_count as count};

/// Delivers two users through the webhook, then prunes with a Clerk that still has only
/// the first: what `check` finds of each user's row afterwards.
async fn prune_one_of_two(shape: &str, backend: Backend) -> (Setup, Output) {
    let s = setup(shape, backend).await;
    let kept = ada("user_2keptone");
    let mut lost = ClerkUser::new("user_2lostone", 1_000, "lost@example.com");
    lost.first_name = Some("Lost".into());
    lost.last_name = Some("One".into());
    s.app
        .expect_outcome("msg_kept", &kept.created(), "applied")
        .await;
    s.app
        .expect_outcome("msg_lost", &lost.created(), "applied")
        .await;
    // Clerk lists the first user as the webhook brought her; the second is gone.
    s.api.put(stored(clerk_user(
        "user_2keptone",
        T0,
        T0 + 1_789,
        Some("ada@example.com"),
    )));

    let output = prune(&s.app.db, &s.api, shape).await;

    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(count(&output, "pruned"), 1, "{}", text(&output));
    (s, output)
}

async fn prune_deletes_the_cuid_row_clerk_lost_and_keeps_the_other(backend: Backend) {
    let (s, _) = prune_one_of_two(CUID, backend).await;

    let rows = |id: &'static str| {
        let db = &s.app.db;
        async move {
            db.number(&format!(
                r#"SELECT count(*) AS n FROM "User" WHERE "clerkId" = '{id}'"#
            ))
            .await
        }
    };
    assert_eq!(
        rows("user_2lostone").await,
        0,
        "the lost user's row is deleted"
    );
    assert_eq!(
        rows("user_2keptone").await,
        1,
        "the listed user's row is kept"
    );
    let (status, body) = s.sync("user_2lostone").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = s.sync("user_2keptone").await;
    assert_eq!(
        (status, &body["user"]["email"]),
        (200, &json!("ada@example.com"))
    );
    s.api.stop().await;
}

async fn prune_soft_deletes_the_uuid_row_clerk_lost_and_keeps_the_other(backend: Backend) {
    let (s, _) = prune_one_of_two(UUID, backend).await;

    let state = |id: &'static str| {
        let db = &s.app.db;
        async move {
            db.text(&format!(
                r#"SELECT CAST("deleted" AS TEXT) || ' ' || CAST("deletedAt" IS NOT NULL AS TEXT) AS v
                     FROM "User" WHERE "clerk_id" = '{id}'"#
            ))
            .await
        }
    };
    let lost = state("user_2lostone").await;
    assert!(
        matches!(lost.as_deref(), Some("true true" | "1 1")),
        "the lost user's row is soft-deleted: {lost:?}"
    );
    let kept = state("user_2keptone").await;
    assert!(
        matches!(kept.as_deref(), Some("false false" | "0 0")),
        "the listed user's row is kept as it was: {kept:?}"
    );
    let (status, body) = s.sync("user_2lostone").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = s.sync("user_2keptone").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["deleted"], json!(false));
    s.api.stop().await;
}

on_both_backends!(
    prune_deletes_the_cuid_row_clerk_lost_and_keeps_the_other,
    prune_soft_deletes_the_uuid_row_clerk_lost_and_keeps_the_other,
);
