//! The command line: flags with environment fallbacks, 12-factor style.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::db::{DatabaseUrl, PoolOptions, DEFAULT_SQLITE_FILE};
use crate::secrets::{read_secret_file, SecretFileError, SigningSecrets};
use crate::verify::Verifier;

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
    Serve(Box<ServeArgs>),
    /// Apply clerk-sync's migrations (and create the User table where absent), then exit.
    /// With a Prisma schema, the user model's table is checked against it.
    Migrate(MigrateArgs),
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
    /// Print how Clerk's user maps onto the application's user model (from its Prisma
    /// schema and clerk-sync.toml, or without a schema from the table in --database-url):
    /// each column, what fills it and why. Exits 1, naming the field and the clerk-sync.toml
    /// line that would fill it, when a required column cannot be filled, and naming field
    /// and column when the schema and the live table disagree.
    Mapping(MappingCommandArgs),
}

/// Settings of `migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Database settings.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The application's user model.
    #[command(flatten)]
    pub mapping: MappingArgs,
}

/// Settings of the `mapping` command.
#[derive(Debug, Args)]
pub struct MappingCommandArgs {
    /// The schema, model and configuration.
    #[command(flatten)]
    pub mapping: MappingArgs,
    /// The application's database, as for `serve` (DATABASE_URL): without a schema the
    /// mapping is made from its table's columns; with one, the schema is checked against
    /// the table. Unset: the schema alone.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// A file holding the database URL (instead of DATABASE_URL).
    #[arg(long, env = "DATABASE_URL_FILE")]
    pub database_url_file: Option<PathBuf>,
}

impl MappingCommandArgs {
    /// The database URL, from DATABASE_URL_FILE when that is set; none when neither is set.
    pub fn url(&self) -> anyhow::Result<Option<DatabaseUrl>> {
        let file = self
            .database_url_file
            .as_deref()
            .filter(|p| !p.as_os_str().is_empty());
        let given = self
            .database_url
            .as_deref()
            .filter(|u| !u.trim().is_empty());
        match (file, given) {
            (Some(_), Some(_)) => Err(SecretFileError::Both {
                name: "DATABASE_URL",
            }
            .into()),
            (Some(path), None) => Ok(Some(DatabaseUrl::parse(&read_secret_file(path)?)?)),
            (None, Some(url)) => Ok(Some(DatabaseUrl::parse(url)?)),
            (None, None) => Ok(None),
        }
    }
}

/// Which Prisma schema, model and clerk-sync.toml make the mapping (`mapping`, `serve`,
/// `migrate`).
#[derive(Debug, Args)]
pub struct MappingArgs {
    /// The application's Prisma schema (default: prisma/schema.prisma, when it exists).
    #[arg(long, env = "CLERK_SYNC_PRISMA_SCHEMA")]
    pub prisma_schema: Option<PathBuf>,
    /// The user model (default: the model named User, or the one model with a Clerk-id field);
    /// without a schema file, the table to read (default: User).
    #[arg(long, env = "CLERK_SYNC_MODEL")]
    pub model: Option<String>,
    /// clerk-sync's mapping configuration (default: clerk-sync.toml, when it exists).
    #[arg(long, env = "CLERK_SYNC_CONFIG")]
    pub config: Option<PathBuf>,
}

impl MappingArgs {
    /// The schema file: the flag, else `prisma/schema.prisma` where it exists.
    pub fn schema_path(&self) -> Option<PathBuf> {
        self.prisma_schema
            .clone()
            .filter(|p| !p.as_os_str().is_empty())
            .or_else(|| {
                let default = PathBuf::from("prisma/schema.prisma");
                default.exists().then_some(default)
            })
    }

    /// The config file: the flag, else `clerk-sync.toml` where it exists.
    pub fn config_path(&self) -> Option<PathBuf> {
        self.config
            .clone()
            .filter(|p| !p.as_os_str().is_empty())
            .or_else(|| {
                let default = PathBuf::from("clerk-sync.toml");
                default.exists().then_some(default)
            })
    }
}

/// The webhook signing secret(s).
#[derive(Debug, Args)]
pub struct SecretArgs {
    /// Webhook signing secret(s) from the Clerk dashboard (whsec_…); several, separated by spaces
    /// or commas, during a rotation. CLERK_WEBHOOK_SECRET is read when this is unset.
    #[arg(long, env = "CLERK_WEBHOOK_SIGNING_SECRET", hide_env_values = true)]
    pub signing_secret: Option<String>,
    /// A file holding the signing secret(s), as Kubernetes and Docker mount secrets (instead
    /// of CLERK_WEBHOOK_SIGNING_SECRET). `serve` reads it again on SIGHUP and whenever its
    /// contents change; a file that becomes unreadable or invalid keeps the secrets in force.
    #[arg(long, env = "CLERK_WEBHOOK_SIGNING_SECRET_FILE")]
    pub signing_secret_file: Option<PathBuf>,
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

    /// The secrets file, unless unset or empty.
    pub fn file(&self) -> Option<&Path> {
        self.signing_secret_file
            .as_deref()
            .filter(|p| !p.as_os_str().is_empty())
    }

    /// The signing secrets, from the file or the environment (setting both is an error).
    /// None when neither is set.
    pub fn load(&self) -> Result<Option<SigningSecrets>, anyhow::Error> {
        match (self.file(), self.secrets()) {
            (Some(_), Some(_)) => Err(SecretFileError::Both {
                name: "CLERK_WEBHOOK_SIGNING_SECRET",
            }
            .into()),
            (Some(path), None) => Ok(Some(SigningSecrets::from_file(path)?)),
            (None, Some(raw)) => Ok(Some(Verifier::parse(&raw)?.into())),
            (None, None) => Ok(None),
        }
    }
}

/// Settings of `replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Files, folders (walked in name order; `*.expected.json` skipped), JSON-lines files
    /// (.jsonl/.ndjson) and `-` for standard input. Each item is a bare event body or a
    /// recorded delivery `{"headers": {...}, "body": "..."}`.
    #[arg(required_unless_present = "dead_letters")]
    pub paths: Vec<std::path::PathBuf>,
    /// Apply the dead letters kept in the database again (and remove those applied), instead
    /// of reading PATHs; with --dry-run, show what would happen.
    #[arg(long, conflicts_with_all = ["paths", "to", "batch_size"])]
    pub dead_letters: bool,
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
    /// The application's user model (checked before writing, as `serve` does).
    #[command(flatten)]
    pub mapping: MappingArgs,
}

/// Settings of `check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The daemon's address, as given to `serve --bind` (a wildcard host is probed on loopback),
    /// or a base URL.
    #[arg(long, env = "CLERK_SYNC_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,
    /// The daemon's internal address, as given to `serve --internal-bind`: when set, it is
    /// probed instead of --bind (the public port does not serve /readyz then).
    #[arg(long, env = "CLERK_SYNC_INTERNAL_BIND")]
    pub internal_bind: Option<String>,
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
    /// The application's own URL, as Prisma reads it. PostgreSQL: postgres://… or
    /// postgresql://… with libpq's and Prisma's parameters: sslmode (disable, allow, prefer —
    /// the default —, require, verify-ca, verify-full), sslrootcert (PATH or system), sslcert +
    /// sslkey, sslidentity + sslpassword, sslaccept (strict, accept_invalid_certs),
    /// channel_binding, schema, connection_limit, pool_timeout, connect_timeout,
    /// socket_timeout, pgbouncer, statement_cache_size, application_name, options, host (a
    /// Unix-socket directory); other parameters are named in a warning and left out. Relative
    /// certificate paths are relative to prisma/ when prisma/schema.prisma is here, else to the
    /// working directory. SQLite: sqlite://PATH, sqlite:PATH or a file path.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_SQLITE_FILE, hide_env_values = true)]
    pub database_url: String,
    /// A file holding the database URL (instead of DATABASE_URL), as Kubernetes and Docker
    /// mount secrets.
    #[arg(long, env = "DATABASE_URL_FILE")]
    pub database_url_file: Option<PathBuf>,
    /// Prisma's directUrl: a direct (unpooled) PostgreSQL URL for migrations and their lock,
    /// when DATABASE_URL goes through a pooler.
    #[arg(long, env = "DIRECT_URL", hide_env_values = true)]
    pub direct_url: Option<String>,
    /// Most database connections open at once (PostgreSQL; SQLite uses one). Default: the
    /// URL's connection_limit, else 16.
    #[arg(long, env = "CLERK_SYNC_POOL_SIZE", value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub pool_size: Option<u16>,
    /// Seconds to wait for a database connection, a lock or a statement before answering 503.
    /// Default 3; the URL's pool_timeout and socket_timeout apply where this is not given.
    #[arg(long, env = "CLERK_SYNC_DB_TIMEOUT", value_parser = clap::value_parser!(u64).range(1..=60))]
    pub db_timeout: Option<u64>,
    /// Group commit on PostgreSQL: N committers apply the deliveries waiting for them together,
    /// one transaction each (0: off, every delivery in its own transaction). SQLite always
    /// commits what waits for its one writer together.
    #[arg(long, env = "CLERK_SYNC_COMMITTERS", default_value_t = 2, value_parser = clap::value_parser!(u16).range(0..=1000))]
    pub committers: u16,
}

/// The timeout when neither `--db-timeout` nor the URL gives one, in seconds.
const DEFAULT_DB_TIMEOUT: u64 = 3;

impl DatabaseArgs {
    /// The parsed URL, from DATABASE_URL_FILE when that is set, with `DIRECT_URL` attached.
    pub fn url(&self) -> anyhow::Result<DatabaseUrl> {
        let url = match self
            .database_url_file
            .as_deref()
            .filter(|p| !p.as_os_str().is_empty())
        {
            // The flag's default cannot be told from a value given: any other value is.
            Some(_) if self.database_url != DEFAULT_SQLITE_FILE => {
                return Err(SecretFileError::Both {
                    name: "DATABASE_URL",
                }
                .into())
            }
            Some(path) => DatabaseUrl::parse(&read_secret_file(path)?)?,
            None => DatabaseUrl::parse(&self.database_url)?,
        };
        match self.direct_url.as_deref().filter(|d| !d.trim().is_empty()) {
            Some(direct) => Ok(url.with_direct(DatabaseUrl::parse(direct).map_err(|e| {
                crate::db::UrlError::InDirectUrl(
                    e.to_string().replace("DATABASE_URL", "DIRECT_URL"),
                )
            })?)?),
            None => Ok(url),
        }
    }

    /// Pool settings from the flags, and where they are not given, from the URL (Prisma's
    /// `connection_limit`, `pool_timeout`, `socket_timeout`).
    pub fn pool(&self, url: &DatabaseUrl) -> PoolOptions {
        let pg = url.postgres();
        let flag_timeout = self.db_timeout.map(Duration::from_secs);
        let default_timeout = Duration::from_secs(DEFAULT_DB_TIMEOUT);
        PoolOptions {
            max_connections: self
                .pool_size
                .map(usize::from)
                .or_else(|| pg.and_then(|p| p.connection_limit))
                .unwrap_or(16),
            acquire_timeout: flag_timeout
                .or_else(|| pg.and_then(|p| p.pool_timeout))
                .unwrap_or(default_timeout),
            statement_timeout: flag_timeout
                .or_else(|| pg.and_then(|p| p.socket_timeout))
                .unwrap_or(default_timeout),
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
    /// A second address, for /healthz, /readyz and /metrics only: when set, the --bind
    /// address serves only POST /webhooks/clerk (404 for anything else).
    #[arg(long, env = "CLERK_SYNC_INTERNAL_BIND")]
    pub internal_bind: Option<String>,
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
    /// Most dead letters kept (verified deliveries that cannot be applied for good); past it
    /// the oldest are dropped. 0: keep none.
    #[arg(
        long,
        env = "CLERK_SYNC_DEAD_LETTER_MAX_COUNT",
        default_value_t = 10_000
    )]
    pub dead_letter_max_count: u64,
    /// Most bytes (headers and bodies) of dead letters kept; past it the oldest are dropped.
    #[arg(long, env = "CLERK_SYNC_DEAD_LETTER_MAX_BYTES", default_value_t = 100 * 1024 * 1024)]
    pub dead_letter_max_bytes: u64,
    /// The on-demand session sync.
    #[command(flatten)]
    pub session: SessionArgs,
    /// The application's user model: with a schema file, checked against the table at start.
    #[command(flatten)]
    pub mapping: MappingArgs,
}

/// Settings of `backfill`.
#[derive(Debug, Args)]
pub struct BackfillArgs {
    /// Database settings.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The application's user model (checked before writing, as `serve` does).
    #[command(flatten)]
    pub mapping: MappingArgs,
    /// Clerk's secret key (sk_live_… or sk_test_…), from the Clerk dashboard's API keys.
    #[arg(long, env = "CLERK_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<crate::backfill::client::SecretKey>,
    /// A file holding Clerk's secret key (instead of CLERK_SECRET_KEY).
    #[arg(long, env = "CLERK_SECRET_KEY_FILE")]
    pub secret_key_file: Option<PathBuf>,
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

impl BackfillArgs {
    /// Clerk's secret key, from CLERK_SECRET_KEY_FILE when that is set (setting both is an
    /// error); none when neither is set.
    pub fn key(&self) -> anyhow::Result<Option<crate::backfill::client::SecretKey>> {
        secret_key(self.secret_key_file.as_deref(), self.secret_key.as_ref())
    }
}

/// Clerk's secret key from `file` (CLERK_SECRET_KEY_FILE) or `key` (CLERK_SECRET_KEY); both
/// set is an error, neither is none.
fn secret_key(
    file: Option<&std::path::Path>,
    key: Option<&crate::backfill::client::SecretKey>,
) -> anyhow::Result<Option<crate::backfill::client::SecretKey>> {
    match (file.filter(|p| !p.as_os_str().is_empty()), key) {
        (Some(_), Some(_)) => Err(SecretFileError::Both {
            name: "CLERK_SECRET_KEY",
        }
        .into()),
        (Some(path), None) => {
            let raw = read_secret_file(path)?;
            let key = crate::backfill::client::SecretKey::parse(&raw)
                .map_err(|reason| anyhow::anyhow!("{}: {reason}", path.display()))?;
            Ok(Some(key))
        }
        (None, key) => Ok(key.cloned()),
    }
}

/// Settings of the on-demand session sync, `POST /api/auth/sync` (enabled by a secret key).
#[derive(Debug, Args)]
pub struct SessionArgs {
    /// Clerk's secret key (sk_live_… or sk_test_…): enables POST /api/auth/sync, which fetches
    /// the signed-in user (and, without --jwt-key, the instance's signing keys) from Clerk's
    /// Backend API.
    #[arg(long, env = "CLERK_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<crate::backfill::client::SecretKey>,
    /// A file holding Clerk's secret key (instead of CLERK_SECRET_KEY).
    #[arg(long, env = "CLERK_SECRET_KEY_FILE")]
    pub secret_key_file: Option<PathBuf>,
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
    pub fn config(&self, deadline: Duration) -> anyhow::Result<crate::session::Config> {
        Ok(crate::session::Config {
            secret_key: secret_key(self.secret_key_file.as_deref(), self.secret_key.as_ref())?,
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
        })
    }
}
