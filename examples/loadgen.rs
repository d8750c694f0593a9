//! Load generator for clerk-sync's webhook endpoint: signs every delivery freshly (unique
//! `svix-id`, current timestamp, the real Svix scheme), sends realistic `user.updated` bodies
//! for a pool of users at a set concurrency for a set time over keep-alive HTTP/1.1
//! connections, and reports requests/s, status counts and latency percentiles. It exits
//! non-zero on any unexpected answer, and with `--database-url` checks that the table holds,
//! for every user, the newest version it had acknowledged.
//!
//! `cargo run --release --example loadgen -- --url http://127.0.0.1:8080/webhooks/clerk \
//!     --secret whsec_… --concurrency 16 --seconds 10 --users 5000 [--database-url …]`
//! `--trivial` sends unsigned GETs to `--url` instead (to show the generator's own ceiling).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

struct Args {
    url: String,
    secret: String,
    concurrency: usize,
    seconds: u64,
    users: u64,
    database_url: Option<String>,
    trivial: bool,
    /// Distinguishes this run's delivery ids from earlier runs' against the same database.
    run: u128,
}

fn args() -> Args {
    let mut args = Args {
        url: "http://127.0.0.1:8080/webhooks/clerk".into(),
        secret: String::new(),
        concurrency: 16,
        seconds: 10,
        users: 5000,
        database_url: None,
        trivial: false,
        run: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_default();
        match flag.as_str() {
            "--url" => args.url = value(),
            "--secret" => args.secret = value(),
            "--concurrency" => args.concurrency = value().parse().unwrap_or(16),
            "--seconds" => args.seconds = value().parse().unwrap_or(10),
            "--users" => args.users = value().parse().unwrap_or(5000),
            "--database-url" => args.database_url = Some(value()),
            "--trivial" => args.trivial = true,
            other => {
                eprintln!("unknown flag {other}");
                std::process::exit(2);
            }
        }
    }
    args
}

/// A `user.updated` body of about 2.5 KB for `user` at `version`.
fn body(user: u64, version: i64) -> String {
    let id = format!("user_load{user:07}");
    serde_json::json!({
        "type": "user.updated", "object": "event", "timestamp": version, "instance_id": "ins_load",
        "data": {
            "object": "user", "id": id, "created_at": 1_714_564_800_000i64, "updated_at": version,
            "first_name": "Load", "last_name": format!("User v{version}"), "username": null,
            "image_url": "https://img.clerk.com/eyJ0eXBlIjoicHJveHkiLCJzcmMiOiJodHRwczovL2ltYWdlcy5jbGVyay5kZXYifQ",
            "primary_email_address_id": format!("idn_{user}"),
            "email_addresses": [{"id": format!("idn_{user}"), "object": "email_address",
                "email_address": format!("load{user}@example.com"), "reserved": false, "linked_to": [],
                "verification": {"status": "verified", "strategy": "email_code", "attempts": 1, "expire_at": null}}],
            "phone_numbers": [], "web3_wallets": [], "passkeys": [], "saml_accounts": [],
            "external_accounts": [{"object": "google_account", "id": format!("eac_{user}"), "provider": "oauth_google",
                "approved_scopes": "email https://www.googleapis.com/auth/userinfo.email openid profile",
                "email_address": format!("load{user}@example.com"), "first_name": "Load", "last_name": "User",
                "avatar_url": "https://lh3.googleusercontent.com/a/ACg8ocJload-avatar-url-of-realistic-length=s1000-c",
                "image_url": "https://img.clerk.com/eyJ0eXBlIjoicHJveHkiLCJzcmMiOiJodHRwczovL2ltYWdlcy5jbGVyay5kZXYifQ",
                "public_metadata": {}, "label": null,
                "verification": {"status": "verified", "strategy": "oauth_google", "attempts": null, "expire_at": 1_714_565_400_000i64}}],
            "public_metadata": {"plan": "pro"}, "private_metadata": {"crm": "x".repeat(400)},
            "unsafe_metadata": {"onboarding": {"step": 3, "completed": true}},
            "password_enabled": false, "two_factor_enabled": false, "totp_enabled": false,
            "backup_code_enabled": false, "banned": false, "locked": false, "last_sign_in_at": version,
            "last_active_at": version, "create_organization_enabled": true, "delete_self_enabled": true
        }
    })
    .to_string()
}

#[derive(Default)]
struct Tally {
    statuses: BTreeMap<String, u64>,
    latencies_us: Vec<u32>,
    unexpected: u64,
    acked: HashMap<u64, i64>,
}

async fn worker(
    worker: usize,
    args: Arc<Args>,
    signer: Option<Arc<svix::webhooks::Webhook>>,
    clock: Arc<AtomicI64>,
    deadline: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let uri: hyper::Uri = args.url.parse().unwrap_or_else(|_| panic!("bad --url"));
    let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
    let stream = match tokio::net::TcpStream::connect(&authority).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("worker {worker}: cannot connect to {authority}: {e}");
            tally.unexpected += 1;
            return tally;
        }
    };
    let _ = stream.set_nodelay(true);
    let Ok((mut sender, connection)) = http1::handshake(TokioIo::new(stream)).await else {
        tally.unexpected += 1;
        return tally;
    };
    tokio::spawn(connection);
    let mut n: u64 = 0;
    while Instant::now() < deadline {
        n += 1;
        let user = (n * args.concurrency as u64 + worker as u64) % args.users.max(1);
        let request = if let Some(signer) = &signer {
            // A cluster-wide increasing version: a user's newest acknowledged one must win.
            let version = clock.fetch_add(1, Ordering::Relaxed);
            let payload = body(user, version);
            let id = format!("msg_load_{}_{worker}_{n}", args.run);
            let ts = chrono::Utc::now().timestamp();
            let signature = signer.sign(&id, ts, payload.as_bytes()).unwrap_or_default();
            let req = hyper::Request::post(&uri)
                .header("host", &authority)
                .header("content-type", "application/json")
                .header("svix-id", id)
                .header("svix-timestamp", ts.to_string())
                .header("svix-signature", signature)
                .body(Full::new(Bytes::from(payload)));
            (req, Some((user, version)))
        } else {
            let req = hyper::Request::get(&uri)
                .header("host", &authority)
                .body(Full::new(Bytes::new()));
            (req, None)
        };
        let (Ok(req), sent) = request else { break };
        let started = Instant::now();
        let response = match sender.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                *tally.statuses.entry(format!("error: {e}")).or_default() += 1;
                tally.unexpected += 1;
                break;
            }
        };
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        tally
            .latencies_us
            .push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
        let outcome = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("outcome").and_then(|o| o.as_str()).map(str::to_owned));
        let key = match &outcome {
            Some(o) => format!("{} {o}", status.as_u16()),
            None => status.as_u16().to_string(),
        };
        *tally.statuses.entry(key).or_default() += 1;
        match (sent, status.as_u16(), outcome.as_deref()) {
            (None, 200, _) => {}
            (Some((user, version)), 200, Some("applied" | "stale")) => {
                let newest = tally.acked.entry(user).or_insert(version);
                *newest = (*newest).max(version);
            }
            _ => tally.unexpected += 1,
        }
    }
    tally
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[index.min(sorted.len() - 1)]) / 1000.0
}

async fn check_table(database_url: &str, acked: &HashMap<u64, i64>) -> Result<usize, String> {
    use diesel::sql_types::{Nullable, Text};
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        id: String,
        #[diesel(sql_type = Nullable<Text>)]
        name: Option<String>,
    }
    let mut conn = AsyncPgConnection::establish(database_url)
        .await
        .map_err(|e| e.to_string())?;
    let rows: Vec<Row> =
        diesel::sql_query(r#"SELECT id, name FROM "User" WHERE id LIKE 'user_load%'"#)
            .load(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
    let names: HashMap<String, Option<String>> = rows.into_iter().map(|r| (r.id, r.name)).collect();
    for (user, version) in acked {
        let expected = format!("Load User v{version}");
        let id = format!("user_load{user:07}");
        // Another worker may have had a newer version of the same user acknowledged.
        let found = names.get(&id).cloned().flatten().unwrap_or_default();
        let found_version: i64 = found
            .rsplit('v')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1);
        if found_version < *version {
            return Err(format!(
                "{id}: table has {found:?}, but {expected:?} was acknowledged"
            ));
        }
    }
    Ok(acked.len())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args = Arc::new(args());
    let signer = if args.trivial {
        None
    } else {
        match svix::webhooks::Webhook::new(&args.secret) {
            Ok(w) => Some(Arc::new(w)),
            Err(e) => {
                eprintln!("--secret: {e}");
                std::process::exit(2);
            }
        }
    };
    let clock = Arc::new(AtomicI64::new(chrono::Utc::now().timestamp_millis()));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let handles: Vec<_> = (0..args.concurrency)
        .map(|w| {
            tokio::spawn(worker(
                w,
                args.clone(),
                signer.clone(),
                clock.clone(),
                deadline,
            ))
        })
        .collect();
    let mut total = Tally::default();
    for handle in handles {
        let Ok(tally) = handle.await else { continue };
        for (k, v) in tally.statuses {
            *total.statuses.entry(k).or_default() += v;
        }
        total.latencies_us.extend(tally.latencies_us);
        total.unexpected += tally.unexpected;
        for (user, version) in tally.acked {
            let newest = total.acked.entry(user).or_insert(version);
            *newest = (*newest).max(version);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    total.latencies_us.sort_unstable();
    let requests = total.latencies_us.len();
    println!(
        "concurrency {} | {:.0} requests/s | p50 {:.2} ms | p90 {:.2} ms | p99 {:.2} ms | max {:.2} ms | {} requests",
        args.concurrency,
        requests as f64 / elapsed,
        percentile(&total.latencies_us, 0.50),
        percentile(&total.latencies_us, 0.90),
        percentile(&total.latencies_us, 0.99),
        percentile(&total.latencies_us, 1.0),
        requests
    );
    println!("statuses: {:?}", total.statuses);
    if let Some(url) = &args.database_url {
        match check_table(url, &total.acked).await {
            Ok(users) => {
                println!("table check: {users} users hold the newest acknowledged version")
            }
            Err(e) => {
                eprintln!("table check FAILED: {e}");
                std::process::exit(1);
            }
        }
    }
    if total.unexpected > 0 {
        eprintln!("{} unexpected answers", total.unexpected);
        std::process::exit(1);
    }
}
