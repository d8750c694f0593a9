//! A stand-in for Clerk's Backend API, owned by a test (and by `examples/clerk_api_standin.rs`).
//!
//! It answers as Clerk documents: `GET /v1/users` (a bare JSON array; `limit` defaults to 10,
//! and a `limit` above 500 is answered with 10 users, not refused; `offset`; `order_by`
//! `created_at` or `-created_at`, the default; `starting_after` a user id), `GET
//! /v1/users/count`, `GET /v1/users/{id}`, Bearer authentication with Clerk's `errors` body on
//! a wrong key. A cursor naming a user that no longer exists is answered with an empty page,
//! the answer that would end a careless walk early. `GET /v1/jwks` serves the key set a test
//! sets (the keys a session token is verified with). Faults can be injected: 429 with
//! `Retry-After`, 5xx, slow answers, a list that fails for ever after some page, a pause
//! after some page (until released), and users added or deleted after some page.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};

/// 2024-05-01T12:00:00Z in ms.
pub const BASE_MS: i64 = 1_714_564_800_000;

/// One user as the stand-in holds it.
#[derive(Debug, Clone)]
pub struct StoredUser {
    pub id: String,
    pub created_at: i64,
    pub json: String,
}

/// A user object in Clerk's shape (see `fixtures/clerk-events/user.created.openapi-example.json`).
pub fn clerk_user(id: &str, created_at: i64, updated_at: i64, email: Option<&str>) -> Value {
    let (emails, primary) = match email {
        Some(address) => (
            json!([{"id": format!("idn_{id}"), "object": "email_address", "email_address": address,
                    "reserved": false, "verification": {"status": "verified", "strategy": "email_code"},
                    "linked_to": []}]),
            json!(format!("idn_{id}")),
        ),
        None => (json!([]), Value::Null),
    };
    json!({
        "object": "user",
        "id": id,
        "external_id": null,
        "primary_email_address_id": primary,
        "primary_phone_number_id": null,
        "primary_web3_wallet_id": null,
        "username": null,
        "first_name": "Grace",
        "last_name": format!("Hopper {}", &id[id.len().saturating_sub(4)..]),
        "image_url": "https://img.clerk.com/xxxxxx",
        "has_image": false,
        "public_metadata": {},
        "private_metadata": null,
        "unsafe_metadata": {},
        "email_addresses": emails,
        "phone_numbers": [],
        "web3_wallets": [],
        "passkeys": [],
        "password_enabled": true,
        "two_factor_enabled": false,
        "external_accounts": [],
        "saml_accounts": [],
        "last_sign_in_at": null,
        "banned": false,
        "locked": false,
        "updated_at": updated_at,
        "created_at": created_at,
        "last_active_at": null
    })
}

/// The id of the n-th generated user (sorts like its creation order).
pub fn user_id(n: usize) -> String {
    format!("user_2bf{n:09}")
}

/// The n-th generated user: created n seconds after [`BASE_MS`], updated a minute later.
pub fn generated_user(n: usize) -> StoredUser {
    let id = user_id(n);
    let created = BASE_MS + (n as i64) * 1_000;
    stored(clerk_user(
        &id,
        created,
        created + 60_000,
        Some(&format!("person{n}@example.com")),
    ))
}

/// Wraps a user object for the stand-in.
pub fn stored(user: Value) -> StoredUser {
    StoredUser {
        id: user["id"].as_str().unwrap_or_default().to_owned(),
        created_at: user["created_at"].as_i64().unwrap_or_default(),
        json: user.to_string(),
    }
}

/// A change made to the users once a given number of list pages were served.
#[derive(Debug, Clone)]
pub enum Mutation {
    Add(StoredUser),
    Delete(String),
}

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub query: HashMap<String, String>,
    pub status: u16,
}

/// What the stand-in does wrong, on purpose.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Every n-th request is answered 429 with `Retry-After: 1`.
    pub every_nth_429: Option<usize>,
    /// Every n-th request is answered 503.
    pub every_nth_5xx: Option<usize>,
    /// Each answer waits this long.
    pub delay: Duration,
    /// Once this many list pages were served, every list request is answered 500.
    pub fail_list_after_pages: Option<usize>,
    /// Once this many list pages were served, the next list request waits for [`StandIn::release`].
    pub pause_after_pages: Option<usize>,
}

#[derive(Default)]
struct State {
    users: Vec<StoredUser>,
    key: String,
    log: Vec<Seen>,
    requests: usize,
    pages_served: usize,
    faults: Faults,
    mutations: HashMap<usize, Vec<Mutation>>,
    paused: bool,
    released: bool,
    jwks: Option<Value>,
    user_statuses: std::collections::VecDeque<u16>,
}

/// The running stand-in.
pub struct StandIn {
    /// Its address, without `/v1` (as Clerk's SDKs are configured).
    pub url: String,
    state: Arc<Mutex<State>>,
    gate: Arc<tokio::sync::Notify>,
    handle: actix_web::dev::ServerHandle,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn clerk_error(status: u16, code: &str, message: &str, long: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap_or_default())
        .content_type("application/json")
        .body(
            json!({"errors": [{"message": message, "long_message": long, "code": code}],
                   "clerk_trace_id": "trace_standin"})
            .to_string(),
        )
}

type Shared = (Arc<Mutex<State>>, Arc<tokio::sync::Notify>);

/// Checks auth and injects faults; `None` lets the request through.
fn gatekeep(state: &Mutex<State>, request: &HttpRequest) -> Option<HttpResponse> {
    let mut s = lock(state);
    s.requests += 1;
    let n = s.requests;
    let expected = format!("Bearer {}", s.key);
    let auth = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth != expected {
        return Some(clerk_error(
            401,
            "authentication_invalid",
            "Invalid authentication",
            "The provided Clerk Secret Key is invalid. Make sure that your Clerk Secret Key is correct.",
        ));
    }
    if s.faults.every_nth_429.is_some_and(|k| n % k == 0) {
        let mut response = clerk_error(
            429,
            "too_many_requests",
            "Too many requests",
            "Too many requests, retry later",
        );
        response.headers_mut().insert(
            actix_web::http::header::RETRY_AFTER,
            actix_web::http::header::HeaderValue::from_static("1"),
        );
        return Some(response);
    }
    if s.faults.every_nth_5xx.is_some_and(|k| n % k == 0) {
        return Some(clerk_error(
            503,
            "service_unavailable",
            "Service unavailable",
            "Try again",
        ));
    }
    None
}

fn record(state: &Mutex<State>, request: &HttpRequest, status: u16) {
    let query: HashMap<String, String> =
        web::Query::<HashMap<String, String>>::from_query(request.query_string())
            .map(|q| q.into_inner())
            .unwrap_or_default();
    lock(state).log.push(Seen {
        path: request.path().to_owned(),
        query,
        status,
    });
}

async fn delay(state: &Mutex<State>) {
    let wait = lock(state).faults.delay;
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
}

async fn list(request: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let (state, gate) = (&shared.0, &shared.1);
    delay(state).await;
    if let Some(refused) = gatekeep(state, &request) {
        record(state, &request, refused.status().as_u16());
        return refused;
    }
    let must_pause = {
        let mut s = lock(state);
        let pause = s.faults.pause_after_pages == Some(s.pages_served) && !s.released;
        if pause {
            s.paused = true;
        }
        pause
    };
    if must_pause {
        gate.notified().await;
    }
    let query: HashMap<String, String> =
        web::Query::<HashMap<String, String>>::from_query(request.query_string())
            .map(|q| q.into_inner())
            .unwrap_or_default();
    let mut s = lock(state);
    if s.faults
        .fail_list_after_pages
        .is_some_and(|k| s.pages_served >= k)
    {
        drop(s);
        record(state, &request, 500);
        return clerk_error(
            500,
            "internal_error",
            "Internal error",
            "Something went wrong",
        );
    }
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None => 10,
        Some(Ok(l)) if (1..=500).contains(&l) => l,
        // Like Clerk: a limit above 500 is not refused, it is answered with 10 users.
        Some(Ok(_)) => 10,
        Some(Err(_)) => {
            drop(s);
            record(state, &request, 422);
            return clerk_error(
                422,
                "form_param_format_invalid",
                "is invalid",
                "limit is invalid",
            );
        }
    };
    let offset = query
        .get("offset")
        .and_then(|o| o.parse::<usize>().ok())
        .unwrap_or(0);
    let mut order: Vec<&StoredUser> = s.users.iter().collect();
    match query.get("order_by").map(String::as_str) {
        Some("created_at") | Some("+created_at") => {}
        _ => order.reverse(),
    }
    let start = match query.get("starting_after") {
        None => 0,
        Some(after) => match order.iter().position(|u| &u.id == after) {
            Some(i) => i + 1,
            None => order.len(),
        },
    };
    let page: Vec<&str> = order
        .iter()
        .skip(start + offset)
        .take(limit)
        .map(|u| u.json.as_str())
        .collect();
    let body = format!("[{}]", page.join(","));
    let served = page.len();
    drop(order);
    if served > 0 {
        s.pages_served += 1;
        let k = s.pages_served;
        if let Some(changes) = s.mutations.remove(&k) {
            for change in changes {
                match change {
                    Mutation::Add(user) => insert_sorted(&mut s.users, user),
                    Mutation::Delete(id) => s.users.retain(|u| u.id != id),
                }
            }
        }
    }
    drop(s);
    record(state, &request, 200);
    HttpResponse::Ok()
        .content_type("application/json")
        .body(body)
}

fn insert_sorted(users: &mut Vec<StoredUser>, user: StoredUser) {
    users.retain(|u| u.id != user.id);
    let at = users
        .partition_point(|u| (u.created_at, u.id.as_str()) < (user.created_at, user.id.as_str()));
    users.insert(at, user);
}

async fn count(request: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let state = &shared.0;
    delay(state).await;
    if let Some(refused) = gatekeep(state, &request) {
        record(state, &request, refused.status().as_u16());
        return refused;
    }
    let n = lock(state).users.len();
    record(state, &request, 200);
    HttpResponse::Ok()
        .content_type("application/json")
        .body(json!({"object": "total_count", "total_count": n}).to_string())
}

async fn one(
    request: HttpRequest,
    id: web::Path<String>,
    shared: web::Data<Shared>,
) -> HttpResponse {
    let state = &shared.0;
    delay(state).await;
    if let Some(refused) = gatekeep(state, &request) {
        record(state, &request, refused.status().as_u16());
        return refused;
    }
    let scripted = lock(state).user_statuses.pop_front();
    match scripted {
        Some(429) => {
            record(state, &request, 429);
            let mut response = clerk_error(
                429,
                "too_many_requests",
                "Too many requests",
                "Too many requests, retry later",
            );
            response.headers_mut().insert(
                actix_web::http::header::RETRY_AFTER,
                actix_web::http::header::HeaderValue::from_static("1"),
            );
            return response;
        }
        Some(status) => {
            record(state, &request, status);
            return clerk_error(
                status,
                "internal_error",
                "Internal error",
                "Something went wrong",
            );
        }
        None => {}
    }
    let found = lock(state)
        .users
        .iter()
        .find(|u| u.id == *id)
        .map(|u| u.json.clone());
    match found {
        Some(json) => {
            record(state, &request, 200);
            HttpResponse::Ok()
                .content_type("application/json")
                .body(json)
        }
        None => {
            record(state, &request, 404);
            clerk_error(404, "resource_not_found", "not found", "User not found")
        }
    }
}

async fn jwks(request: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let state = &shared.0;
    delay(state).await;
    if let Some(refused) = gatekeep(state, &request) {
        record(state, &request, refused.status().as_u16());
        return refused;
    }
    let set = lock(state)
        .jwks
        .clone()
        .unwrap_or_else(|| json!({"keys": []}));
    record(state, &request, 200);
    HttpResponse::Ok()
        .content_type("application/json")
        .body(set.to_string())
}

impl StandIn {
    /// Serves `users` on 127.0.0.1 (port 0 unless given), accepting `key` as the secret key.
    pub fn start(users: Vec<StoredUser>, key: &str, port: u16) -> std::io::Result<Self> {
        let mut state = State {
            key: key.to_owned(),
            ..State::default()
        };
        for user in users {
            state.users.push(user);
        }
        state
            .users
            .sort_by(|a, b| (a.created_at, a.id.as_str()).cmp(&(b.created_at, b.id.as_str())));
        let state = Arc::new(Mutex::new(state));
        let gate = Arc::new(tokio::sync::Notify::new());
        let shared = web::Data::new((state.clone(), gate.clone()));
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let address = listener.local_addr()?;
        let server = HttpServer::new(move || {
            App::new()
                .app_data(shared.clone())
                .route("/v1/users", web::get().to(list))
                .route("/v1/users/count", web::get().to(count))
                .route("/v1/users/{id}", web::get().to(one))
                .route("/v1/jwks", web::get().to(jwks))
        })
        .workers(2)
        .disable_signals()
        .listen(listener)?
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Ok(Self {
            url: format!("http://{address}"),
            state,
            gate,
            handle,
        })
    }

    /// Sets the faults.
    pub fn set_faults(&self, faults: Faults) {
        let mut s = lock(&self.state);
        s.faults = faults;
        s.released = false;
        s.paused = false;
    }

    /// Makes `change` once `pages` list pages were served.
    pub fn after_page(&self, pages: usize, change: Mutation) {
        lock(&self.state)
            .mutations
            .entry(pages)
            .or_default()
            .push(change);
    }

    /// Adds or replaces a user now.
    pub fn put(&self, user: StoredUser) {
        insert_sorted(&mut lock(&self.state).users, user);
    }

    /// Serves `set` as the instance's JSON Web Key Set from now on.
    pub fn set_jwks(&self, set: Value) {
        lock(&self.state).jwks = Some(set);
    }

    /// Answers the next requests for one user with these statuses, in order (429 with
    /// `Retry-After: 1`, anything else with Clerk's error body), then as usual.
    pub fn fail_user_requests(&self, statuses: &[u16]) {
        lock(&self.state).user_statuses = statuses.iter().copied().collect();
    }

    /// Deletes a user now.
    pub fn delete(&self, id: &str) {
        lock(&self.state).users.retain(|u| u.id != id);
    }

    /// Whether a list request is waiting at the pause.
    pub fn is_paused(&self) -> bool {
        lock(&self.state).paused
    }

    /// Lets the paused request (and every later one) through.
    pub fn release(&self) {
        lock(&self.state).released = true;
        self.gate.notify_waiters();
        self.gate.notify_one();
    }

    /// Every request so far.
    pub fn log(&self) -> Vec<Seen> {
        lock(&self.state).log.clone()
    }

    /// Forgets the requests so far (and restarts the page count).
    pub fn clear_log(&self) {
        let mut s = lock(&self.state);
        s.log.clear();
        s.pages_served = 0;
        s.requests = 0;
    }

    /// The ids Clerk has now, in creation order.
    pub fn ids(&self) -> Vec<String> {
        lock(&self.state)
            .users
            .iter()
            .map(|u| u.id.clone())
            .collect()
    }

    /// Stops serving.
    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}
