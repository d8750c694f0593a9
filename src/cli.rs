//! The command line: flags with environment fallbacks, 12-factor style.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::db::{DatabaseUrl, PoolOptions, DEFAULT_SQLITE_FILE};

/// Keeps an application's User table in step with Clerk, from verified webhooks.
#[derive(Debug, Parser)]
#[command(
    name = "clerk-sync",
    version,
    about,
    long_about = None,
    after_help = "Log level: RUST_LOG (default info), e.g. RUST_LOG=clerk_sync=debug."
)]
pub struct Cli {
    /// Log format: `text` or `json`. The level comes from RUST_LOG (default `info`).
    #[arg(long, env = "LOG_FORMAT", default_value = "text", global = true, value_parser = ["text", "json"])]
    pub log_format: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server: POST /webhooks/clerk, POST /api/auth/sync (with a secret key),
    /// GET /healthz, GET /readyz, GET /metrics.
    Serve(ServeArgs),
    /// Apply clerk-sync's migrations (and create the User table where absent), then exit.
    Migrate(DatabaseArgs),
    /// Replay stored webhooks (files, folders, JSON lines, `-` for stdin) into the database,
    /// or with --to, sign them and POST them to a running daemon.
    Replay(ReplayArgs),
    /// Probe a running daemon's /readyz: exit 0 when ready, 1 otherwise (needs no secret or database).
    Check(CheckArgs),
    /// Show what the database says: deliveries by outcome, the last delivery, pending deletes.
    Status(StatusArgs),
    /// Import every user from Clerk's Backend API through the webhook rules (resumable);
    /// with --prune, then delete the users Clerk no longer has.
    Backfill(BackfillArgs),
}

/// The webhook signing secret(s).
#[derive(Debug, Args)]
pub struct SecretArgs {
    /// Webhook signing secret(s) from the Clerk dashboard (whsec_…); several, separated by spaces
    /// or commas, during a rotation. CLERK_WEBHOOK_SECRET is read when this is unset.
    #[arg(long, env = "CLERK_WEBHOOK_SIGNING_SECRET", hide_env_values = true)]
    pub signing_secret: Option<String>,
}

impl SecretArgs {
    /// The configured secrets: the flag or CLERK_WEBHOOK_SIGNING_SECRET, else CLERK_WEBHOOK_SECRET.
    pub fn secrets(&self) -> Option<String> {
        self.signing_secret
            .clone()
            .filter(|s| !s.trim().is_empty())
            .or_else(|| {
                std::env::var("CLERK_WEBHOOK_SECRET")
                    .ok()
                    .filter(|s| !s.trim().is_empty())
            })
    }
}

/// Settings of `replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Files, folders (walked in name order; `*.expected.json` skipped), JSON-lines files
    /// (.jsonl/.ndjson) and `-` for standard input. Each item is a bare event body or a
    /// recorded delivery `{"headers": {...}, "body": "..."}`.
    #[arg(required = true)]
    pub paths: Vec<std::path::PathBuf>,
    /// Database settings (direct replay).
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Signing secret(s): checks recorded deliveries, and signs what --to sends.
    #[command(flatten)]
    pub secret: SecretArgs,
    /// POST each delivery, signed, to this webhook URL (e.g. http://127.0.0.1:8080/webhooks/clerk)
    /// instead of writing the database.
    #[arg(long)]
    pub to: Option<String>,
    /// Validate everything, write and send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Deliveries per transaction when writing the database directly [default: 2000 on
    /// PostgreSQL, 10000 on SQLite].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=50_000))]
    pub batch_size: Option<u64>,
    /// Batches applied at once when writing the database directly, each its own transaction.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub transactions: u64,
    /// Deliveries in flight at once with --to.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub concurrency: u64,
    /// Skip users with no email address instead of writing a placeholder.
    #[arg(long, env = "CLERK_SYNC_SKIP_USERS_WITHOUT_EMAIL")]
    pub skip_users_without_email: bool,
    /// Do not apply migrations before replaying.
    #[arg(long, env = "CLERK_SYNC_NO_MIGRATE")]
    pub no_migrate: bool,
}

/// Settings of `check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The daemon's address, as given to `serve --bind` (a wildcard host is probed on loopback),
    /// or a base URL.
    #[arg(long, env = "CLERK_SYNC_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub timeout: u64,
}

/// Settings of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Database settings.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Hours of deliveries to count by outcome.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u64).range(1..=24 * 365))]
    pub hours: u64,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

/// Where the database is.
#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// postgres://… or postgresql://… for PostgreSQL; sqlite://PATH, sqlite:PATH or a file path for SQLite.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_SQLITE_FILE, hide_env_values = true)]
    pub database_url: String,
    /// Most database connections open at once (PostgreSQL; SQLite uses one).
    #[arg(long, env = "CLERK_SYNC_POOL_SIZE", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub pool_size: u16,
    /// Seconds to wait for a database connection, a lock or a statement before answering 503.
    #[arg(long, env = "CLERK_SYNC_DB_TIMEOUT", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub db_timeout: u64,
    /// Group commit on PostgreSQL: N committers apply the deliveries waiting for them together,
    /// one transaction each (0: off, every delivery in its own transaction). SQLite always
    /// commits what waits for its one writer together.
    #[arg(long, env = "CLERK_SYNC_COMMITTERS", default_value_t = 2, value_parser = clap::value_parser!(u16).range(0..=1000))]
    pub committers: u16,
}

impl DatabaseArgs {
    /// The parsed URL.
    pub fn url(&self) -> Result<DatabaseUrl, crate::db::UrlError> {
        DatabaseUrl::parse(&self.database_url)
    }

    /// Pool settings from the flags.
    pub fn pool(&self) -> PoolOptions {
        PoolOptions {
            max_connections: usize::from(self.pool_size),
            acquire_timeout: Duration::from_secs(self.db_timeout),
            statement_timeout: Duration::from_secs(self.db_timeout),
            committers: usize::from(self.committers),
            bulk: false,
        }
    }
}

/// Settings of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Database settings.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Address to listen on.
    #[arg(long, env = "CLERK_SYNC_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,
    /// Signing secret(s).
    #[command(flatten)]
    pub secret: SecretArgs,
    /// Largest request body accepted, in bytes; larger bodies get 413.
    #[arg(long, env = "CLERK_SYNC_BODY_LIMIT", default_value_t = 1024 * 1024)]
    pub body_limit: usize,
    /// Do not apply migrations at start (run `clerk-sync migrate` separately).
    #[arg(long, env = "CLERK_SYNC_NO_MIGRATE")]
    pub no_migrate: bool,
    /// Skip users with no email address instead of writing an `@no-email.invalid` placeholder.
    #[arg(long, env = "CLERK_SYNC_SKIP_USERS_WITHOUT_EMAIL")]
    pub skip_users_without_email: bool,
    /// Seconds between retries of deletes the application's foreign keys refused.
    #[arg(long, env = "CLERK_SYNC_PENDING_DELETE_INTERVAL", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub pending_delete_interval: u64,
    /// Seconds a delivery may take before it is answered 503 (Svix gives up after 15).
    #[arg(long, env = "CLERK_SYNC_REQUEST_DEADLINE", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=14))]
    pub request_deadline: u64,
    /// Seconds in-flight requests may take to finish after SIGTERM/SIGINT.
    #[arg(long, env = "CLERK_SYNC_SHUTDOWN_GRACE", default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=300))]
    pub shutdown_grace: u64,
    /// Seconds a client may take to send a request's headers, then its body; also how long an
    /// idle keep-alive connection stays open. Slower clients are cut off (408).
    #[arg(long, env = "CLERK_SYNC_CLIENT_TIMEOUT", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub client_timeout: u64,
    /// HTTP worker threads (0: one per core).
    #[arg(long, env = "CLERK_SYNC_WORKERS", default_value_t = 0)]
    pub workers: usize,
    /// The on-demand session sync.
    #[command(flatten)]
    pub session: SessionArgs,
}

/// Settings of `backfill`.
#[derive(Debug, Args)]
pub struct BackfillArgs {
    /// Database settings.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Clerk's secret key (sk_live_… or sk_test_…), from the Clerk dashboard's API keys.
    #[arg(long, env = "CLERK_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<crate::backfill::client::SecretKey>,
    /// Clerk's Backend API; `/v1` is added unless the address ends with it.
    #[arg(long, env = "CLERK_API_URL", default_value = "https://api.clerk.com")]
    pub api_url: String,
    /// Users per page (Clerk answers at most 500).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=500))]
    pub page_size: u32,
    /// Most requests to Clerk per 10 seconds; the default stays under a development
    /// instance's limit (100), production allows 1,000. 0: no limit.
    #[arg(
        long = "max-requests-per-10s",
        env = "CLERK_SYNC_BACKFILL_RATE",
        default_value_t = 90
    )]
    pub max_requests_per_10s: u32,
    /// Pages applied to the database at once, each in its own transaction (SQLite takes
    /// them one after the other).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=16))]
    pub concurrency: u64,
    /// Retries of a request that fails with a 5xx, a timeout or a connection error (with
    /// exponential backoff from 0.5 s); 429s wait for their Retry-After.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub retries: u32,
    /// Seconds to wait for one answer from Clerk.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub request_timeout: u64,
    /// Abandon an unfinished backfill and walk from the first user again.
    #[arg(long)]
    pub restart: bool,
    /// After a complete walk, delete (like user.deleted) the users Clerk no longer has,
    /// except any created, updated or delivered since shortly before the walk began.
    #[arg(long)]
    pub prune: bool,
    /// Read Clerk and the database, write nothing, and report what would change.
    #[arg(long)]
    pub dry_run: bool,
    /// Skip users with no email address instead of writing an `@no-email.invalid` placeholder.
    #[arg(long, env = "CLERK_SYNC_SKIP_USERS_WITHOUT_EMAIL")]
    pub skip_users_without_email: bool,
    /// Do not apply migrations first.
    #[arg(long, env = "CLERK_SYNC_NO_MIGRATE")]
    pub no_migrate: bool,
}

/// Settings of the on-demand session sync, `POST /api/auth/sync` (enabled by a secret key).
#[derive(Debug, Args)]
pub struct SessionArgs {
    /// Clerk's secret key (sk_live_… or sk_test_…): enables POST /api/auth/sync, which fetches
    /// the signed-in user (and, without --jwt-key, the instance's signing keys) from Clerk's
    /// Backend API.
    #[arg(long, env = "CLERK_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<crate::backfill::client::SecretKey>,
    /// Clerk's Backend API; `/v1` is added unless the address ends with it.
    #[arg(long, env = "CLERK_API_URL", default_value = "https://api.clerk.com")]
    pub api_url: String,
    /// The instance's publishable key (pk_…): it encodes the Frontend API URL that session
    /// tokens must be issued by (iss), and names the session cookie.
    /// NEXT_PUBLIC_CLERK_PUBLISHABLE_KEY is read when this is unset.
    #[arg(long, env = "CLERK_PUBLISHABLE_KEY")]
    pub publishable_key: Option<String>,
    /// The Frontend API URL session tokens must be issued by (iss), e.g.
    /// https://clerk.example.com; overrides the one the publishable key encodes.
    #[arg(long, env = "CLERK_FRONTEND_API_URL")]
    pub frontend_api_url: Option<String>,
    /// The instance's PEM public key (dashboard, API keys, "JWT public key"): tokens are
    /// verified without fetching the instance's keys.
    #[arg(long, env = "CLERK_JWT_KEY", hide_env_values = true)]
    pub jwt_key: Option<String>,
    /// Origins of the application's frontend, comma-separated (e.g.
    /// https://app.example.com): a token's azp must be one of them, only they may send the
    /// session cookie, and only they get CORS answers. Unset: azp is not checked and only
    /// Bearer tokens are read.
    #[arg(long, env = "CLERK_AUTHORIZED_PARTIES", value_delimiter = ',')]
    pub authorized_parties: Vec<String>,
    /// Accept tokens of pending sessions (sts: pending, e.g. an organization still to choose).
    #[arg(long, env = "CLERK_SYNC_ALLOW_PENDING_SESSIONS")]
    pub allow_pending_sessions: bool,
}

impl SessionArgs {
    /// The session sync's configuration; `deadline` bounds each sync.
    pub fn config(&self, deadline: Duration) -> crate::session::Config {
        crate::session::Config {
            secret_key: self.secret_key.clone(),
            api_url: self.api_url.clone(),
            publishable_key: self.publishable_key.clone().or_else(|| {
                std::env::var("NEXT_PUBLIC_CLERK_PUBLISHABLE_KEY")
                    .ok()
                    .filter(|k| !k.trim().is_empty())
            }),
            frontend_api_url: self.frontend_api_url.clone(),
            jwt_key: self.jwt_key.clone(),
            authorized_parties: self.authorized_parties.clone(),
            allow_pending: self.allow_pending_sessions,
            deadline,
        }
    }
}
