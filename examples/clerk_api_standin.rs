//! A stand-in for Clerk's Backend API serving generated users (the same stand-in the
//! backfill tests own), for benchmarks and trying `clerk-sync backfill` without a Clerk
//! instance. It prints its base URL, then serves until interrupted.
//!
//! `cargo run --release --example clerk_api_standin -- --users 100000 --key sk_test_bench [--port 0]`

#[path = "../tests/common/clerk_api.rs"]
mod clerk_api;

use std::io::Write;

fn value(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let users: usize = value(&args, "--users")
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let port: u16 = value(&args, "--port")
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let Some(key) = value(&args, "--key") else {
        eprintln!("usage: clerk_api_standin --key SECRET_KEY [--users N] [--port P]");
        std::process::exit(2);
    };
    let api = clerk_api::StandIn::start(
        (0..users).map(clerk_api::generated_user).collect(),
        &key,
        port,
    )?;
    println!("{}", api.url);
    std::io::stdout().flush()?;
    tokio::signal::ctrl_c().await?;
    api.stop().await;
    Ok(())
}
