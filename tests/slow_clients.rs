//! Slow and idle clients cannot hold the daemon: a client trickling its headers or its body
//! is cut off within the client timeout, and hundreds of idle connections do not stop a
//! delivery from being served. Through real TCP sockets.

mod common;

use std::time::{Duration, Instant};

use common::{spawn_app_with, AppOptions, Backend, ClerkUser, TestApp, TestDb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TIMEOUT: Duration = Duration::from_secs(2);

async fn app_with(client_timeout: Duration) -> TestApp {
    let options = AppOptions {
        client_timeout,
        ..AppOptions::default()
    };
    spawn_app_with(TestDb::with_prisma_tables(Backend::Sqlite).await, options).await
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .expect("connect")
}

/// Writes `bytes` one at a time, `every` apart, until the server closes the connection or
/// `limit` passes; then reads what the server answered. Returns (seconds until the server
/// cut the connection, the answer), or None if it never did.
async fn trickle(
    stream: &mut TcpStream,
    bytes: &[u8],
    every: Duration,
    limit: Duration,
) -> Option<(Duration, String)> {
    let started = Instant::now();
    let mut answer = Vec::new();
    for byte in bytes.iter().cycle() {
        if started.elapsed() > limit {
            return None;
        }
        if stream.write_all(&[*byte]).await.is_err() {
            break;
        }
        // A closed connection shows as a readable EOF (or an answer) before the next byte.
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(every, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                answer.extend_from_slice(&buf[..n]);
                // Read to the end: the server closes after its answer.
                let rest = tokio::time::timeout(limit, stream.read_to_end(&mut answer)).await;
                if rest.is_err() {
                    return None;
                }
                break;
            }
            Err(_) => {}
        }
    }
    Some((
        started.elapsed(),
        String::from_utf8_lossy(&answer).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trickling_its_headers_is_cut_off_within_the_timeout() {
    let app = app_with(TIMEOUT).await;
    let mut stream = connect(&app).await;
    stream
        .write_all(b"POST /webhooks/clerk HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .expect("write");

    let cut = trickle(
        &mut stream,
        b"X-Slow: a",
        Duration::from_millis(200),
        Duration::from_secs(15),
    )
    .await;

    let (after, answer) = cut.expect("the connection was never cut");
    assert!(
        after < TIMEOUT + Duration::from_secs(3),
        "cut after {after:?}"
    );
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trickling_its_body_is_cut_off_with_a_408_and_nothing_changes() {
    let app = app_with(TIMEOUT).await;
    let user = ClerkUser::new("user_slow", 1_000, "slow@example.com");
    let body = user.created();
    let ts = common::now();
    let signature = app.sign("msg_slow", ts, body.as_bytes());
    let mut stream = connect(&app).await;
    let head = format!(
        "POST /webhooks/clerk HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nsvix-id: msg_slow\r\nsvix-timestamp: {ts}\r\nsvix-signature: {signature}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("write");

    // One byte every 200 ms: the whole body would take minutes.
    let cut = trickle(
        &mut stream,
        body.as_bytes(),
        Duration::from_millis(200),
        Duration::from_secs(15),
    )
    .await;

    let (after, answer) = cut.expect("the connection was never cut");
    assert!(
        after < TIMEOUT + Duration::from_secs(3),
        "cut after {after:?}"
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body not received"), "{answer}");
    assert!(app.db.users().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_idle_connections_do_not_stop_a_delivery_and_are_closed() {
    // A timeout long enough that the delivery cannot merely be waiting for the idle
    // connections to be cut.
    let timeout = Duration::from_secs(10);
    let app = app_with(timeout).await;
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(connect(&app).await);
    }
    // Half of them have started a request and stopped sending.
    for stream in idle.iter_mut().step_by(2) {
        stream
            .write_all(b"POST /webhooks/clerk HTTP/1.1\r\n")
            .await
            .expect("write");
    }

    let user = ClerkUser::new("user_served", 1_000, "served@example.com");
    let started = Instant::now();
    let (status, outcome) = app.deliver_outcome("msg_served", &user.created()).await;
    let took = started.elapsed();

    assert_eq!((status, outcome.as_str()), (200, "applied"));
    assert!(took < timeout / 2, "served after {took:?}");
    assert!(app.db.user("user_served").await.is_some());
    // And the idle connections are let go once the timeout passes.
    for stream in &mut idle {
        let mut buf = Vec::new();
        let closed = tokio::time::timeout(
            timeout + Duration::from_secs(5),
            stream.read_to_end(&mut buf),
        )
        .await;
        assert!(closed.is_ok(), "an idle connection was kept open");
    }
}
