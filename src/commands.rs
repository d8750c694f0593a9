//! What each command does, wired from the library's parts; `main` only dispatches.

use std::io::IsTerminal;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use crate::backfill::{self, client};
use crate::cli::{
    BackfillArgs, CheckArgs, DatabaseArgs, MappingArgs, MappingCommandArgs, MigrateArgs,
    ReplayArgs, ServeArgs, StatusArgs,
};
use crate::db::{Database, DeadLetterLimits, PoolOptions};
use crate::domain::table::LiveTable;
use crate::mapping::{live, Config, Mapping, MappingError, Schema, TableError};
use crate::probe::{self, Readiness};
use crate::replay::{self, Reporter, Summary};
use crate::startup::{AppState, Application, ServerSettings};
use crate::sync::dead_letter::{self, Replayed};
use crate::sync::SyncOptions;
use crate::verify::Verifier;

async fn open(args: &DatabaseArgs) -> anyhow::Result<Database> {
    let url = args.url()?;
    let options = args.pool(&url);
    open_with(&url, options)
}

/// For bulk writes (replay, backfill): a larger SQLite page cache.
async fn open_bulk(args: &DatabaseArgs) -> anyhow::Result<Database> {
    let url = args.url()?;
    let options = PoolOptions {
        bulk: true,
        ..args.pool(&url)
    };
    open_with(&url, options)
}

fn open_with(url: &crate::db::DatabaseUrl, options: PoolOptions) -> anyhow::Result<Database> {
    if let Some(pg) = url.postgres() {
        // Prisma drops parameters it does not know; so does clerk-sync, but it says so.
        for name in &pg.ignored {
            tracing::warn!(parameter = %name, "DATABASE_URL parameter not used by clerk-sync: ignored");
        }
        if let Some(direct) = &pg.direct {
            for name in &direct.ignored {
                tracing::warn!(parameter = %name, "DIRECT_URL parameter not used by clerk-sync: ignored");
            }
        }
        tracing::info!(
            database = %url,
            sslmode = pg.tls.mode.as_str(),
            pooler_safe = pg.pooler.reason(),
            direct_url = pg.direct.as_ref().map(|d| d.redacted()),
            pool_size = options.max_connections,
            "opening database"
        );
    } else {
        tracing::info!(database = %url, "opening database");
    }
    Ok(Database::open(url, options)?)
}

/// Logs how the database was reached, once a connection was made.
fn log_connection(db: &Database) {
    let info = db.connection();
    tracing::info!(backend = db.backend(), tls = %info.tls, pooler_safe = %info.pooler, "database connected");
}

async fn run_migrations(db: &Database) -> anyhow::Result<()> {
    let report = db.migrate().await.context("migrating the database")?;
    for version in &report.applied {
        tracing::info!(version, "applied migration");
    }
    if report.created_user_table {
        tracing::info!("the application's \"User\" table was absent: created it with Prisma's DDL");
    }
    Ok(())
}

/// clerk-sync's own tables only: a mapped table is the application's, never created or
/// altered here.
async fn run_own_migrations(db: &Database) -> anyhow::Result<()> {
    let report = db.migrate_own().await.context("migrating the database")?;
    for version in &report.applied {
        tracing::info!(version, "applied migration");
    }
    Ok(())
}

/// Deliveries are written into the mapped table from now on; `migrate`: its executor is made
/// where absent (see [`Database::prepare_mapped`]).
async fn use_mapping(db: &Database, mapping: &Mapping, migrate: bool) -> anyhow::Result<()> {
    crate::sync::use_mapping(db, mapping.clone()).context("using the mapping")?;
    let executor = match db.prepare_mapped(migrate).await {
        Ok(executor) => executor,
        Err(error) if migrate => {
            return Err(error).context("making the mapped table's executor");
        }
        // Without migrating, the statements do the same work: no reason not to start.
        Err(error) => {
            tracing::warn!(%error, "the mapped table's executor could not be looked up; using statements");
            false
        }
    };
    tracing::info!(
        model = %mapping.model,
        table = %mapping.table,
        executor,
        "writing the application's own user model"
    );
    Ok(())
}

/// `clerk-sync migrate`.
pub async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let start = start_mapping(&args.mapping)?;
    let db = open(&args.database).await?;
    match &start {
        StartMapping::Seed => run_migrations(&db).await?,
        // The seed table is created where absent, then checked against the schema.
        StartMapping::SeedChecked(schema, mapping) => {
            run_migrations(&db).await?;
            check_live(&db, schema, mapping).await?;
        }
        // The application's table is never created or altered: checked, then only
        // clerk-sync's own tables are migrated.
        StartMapping::Mapped(schema, mapping) => {
            check_live(&db, schema, mapping).await?;
            run_own_migrations(&db).await?;
            crate::sync::use_mapping(&db, mapping.clone()).context("using the mapping")?;
            db.prepare_mapped(true)
                .await
                .context("making the mapped table's executor")?;
        }
    }
    log_connection(&db);
    println!("clerk-sync: {} database migrated", db.backend());
    Ok(())
}

/// `clerk-sync serve`.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let secrets = match args.secret.load()? {
        Some(secrets) => secrets,
        // The error that names every way to configure a secret.
        None => Verifier::parse("")?.into(),
    };
    if let Some(file) = secrets.file() {
        tracing::info!(
            file = %file.display(),
            secrets = secrets.current().count(),
            "signing secrets read from their file (re-read when it changes and on SIGHUP)"
        );
    }
    let internal_bind = args
        .internal_bind
        .as_deref()
        .map(str::trim)
        .filter(|b| !b.is_empty());
    if internal_bind == Some(args.bind.trim()) {
        anyhow::bail!("--internal-bind must differ from --bind ({})", args.bind);
    }
    let start = start_mapping(&args.mapping)?;
    let db = open(&args.database).await?;
    match &start {
        StartMapping::Seed => {
            if !args.no_migrate {
                run_migrations(&db).await?;
            }
        }
        StartMapping::SeedChecked(schema, mapping) => {
            if !args.no_migrate {
                run_migrations(&db).await?;
                check_live(&db, schema, mapping).await?;
            } else if let Err(error) = check_live(&db, schema, mapping).await {
                // Without migrating, an absent table or an unreachable database is what
                // /readyz reports, as before; a table that disagrees is refused.
                if error
                    .downcast_ref::<TableError>()
                    .is_some_and(|e| matches!(e, TableError::Mismatch { .. }))
                {
                    return Err(error);
                }
                tracing::warn!("{error:#}");
            }
        }
        StartMapping::Mapped(schema, mapping) => {
            check_live(&db, schema, mapping).await?;
            if !args.no_migrate {
                run_own_migrations(&db).await?;
            }
            use_mapping(&db, mapping, !args.no_migrate).await?;
        }
    }
    if db.check_ready().await.is_ok() {
        log_connection(&db);
    }
    let deadline = Duration::from_secs(args.request_deadline);
    let session = crate::session::build(&args.session.config(deadline)?)
        .map_err(anyhow::Error::msg)
        .context("configuring POST /api/auth/sync")?;
    match &session {
        Some(session) => tracing::info!(?session, "session sync enabled: POST /api/auth/sync"),
        None => tracing::info!("session sync off (no CLERK_SECRET_KEY)"),
    }
    let listener =
        TcpListener::bind(&args.bind).with_context(|| format!("binding {}", args.bind))?;
    let internal = internal_bind
        .map(|bind| TcpListener::bind(bind).with_context(|| format!("binding {bind}")))
        .transpose()?;
    let state = AppState {
        db,
        secrets,
        sync: SyncOptions {
            skip_users_without_email: args.skip_users_without_email,
            ..SyncOptions::default()
        },
        deadline,
        metrics: crate::metrics::Metrics::new(),
        dead_letters: DeadLetterLimits {
            max_count: args.dead_letter_max_count,
            max_bytes: args.dead_letter_max_bytes,
        },
        session,
    };
    let settings = ServerSettings {
        body_limit: args.body_limit,
        workers: args.workers,
        pending_delete_interval: Duration::from_secs(args.pending_delete_interval),
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        client_timeout: Duration::from_secs(args.client_timeout),
    };
    let app = Application::build_split(listener, internal, state, &settings)?;
    match app.internal_address() {
        Some(internal) => tracing::info!(
            address = %app.address(),
            internal = %internal,
            "listening (webhooks on address; probes and metrics on internal)"
        ),
        None => tracing::info!(address = %app.address(), "listening"),
    }
    app.run().await?;
    tracing::info!("stopped");
    Ok(())
}

/// Progress on a terminal as a bar, elsewhere as a plain line every 10,000 deliveries.
struct Progress {
    bar: Option<ProgressBar>,
    done: AtomicU64,
}

/// A progress bar drawn with `template` when standard error is a terminal; none otherwise.
fn terminal_bar(template: &str) -> Option<ProgressBar> {
    std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    })
}

/// Clears a finished bar.
fn clear(bar: Option<&ProgressBar>) {
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
}

impl Progress {
    fn new() -> Self {
        Self {
            bar: terminal_bar("{spinner} {pos} deliveries replayed ({per_sec}) {elapsed}"),
            done: AtomicU64::new(0),
        }
    }

    fn finish(&self) {
        clear(self.bar.as_ref());
    }
}

impl Reporter for Progress {
    fn advance(&self) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        match &self.bar {
            Some(bar) => bar.inc(1),
            None if done % 10_000 == 0 => eprintln!("clerk-sync: {done} deliveries replayed"),
            None => {}
        }
    }

    fn problem(&self, location: &str, kind: &str, reason: &str) {
        let line = format!("{location}: {kind}: {reason}");
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }
}

fn print_summary(summary: &Summary, elapsed: Duration, dry_run: bool) {
    let seconds = elapsed.as_secs_f64().max(1e-9);
    println!(
        "{} {} deliveries in {:.2} s ({:.0} per second)",
        if dry_run { "checked" } else { "replayed" },
        summary.total(),
        seconds,
        summary.total() as f64 / seconds
    );
    for (name, count) in summary.rows() {
        if count > 0 || !matches!(name, "valid" | "failed" | "rejected") {
            println!("  {name:<10} {count}");
        }
    }
}

/// `clerk-sync replay`.
pub async fn replay(args: ReplayArgs) -> anyhow::Result<bool> {
    if args.dead_letters {
        return replay_dead_letters(args).await;
    }
    let verifier = args.secret.load()?.map(|secrets| secrets.current());
    let mut options = replay::Options {
        dry_run: args.dry_run,
        batch_size: 1,
        transactions: usize::try_from(args.transactions).unwrap_or(2),
        concurrency: usize::try_from(args.concurrency).unwrap_or(16),
        sync: SyncOptions {
            skip_users_without_email: args.skip_users_without_email,
            ..SyncOptions::default()
        },
    };
    let progress = Progress::new();
    let started = Instant::now();
    let items = replay::read(&args.paths);
    let summary = match &args.to {
        Some(url) => {
            let verifier = verifier
                .clone()
                .context("--to signs every delivery: set CLERK_WEBHOOK_SIGNING_SECRET to the daemon's secret")?;
            replay::to_daemon(url, items, verifier, options, &progress).await
        }
        None => {
            let db = open_bulk(&args.database).await?;
            if !args.dry_run {
                migrate_and_check(&args.mapping, &db, !args.no_migrate).await?;
            }
            options.batch_size = args
                .batch_size
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(db.preferred_batch().await);
            replay::into_database(&db, items, verifier, options, &progress).await
        }
    };
    progress.finish();
    print_summary(&summary, started.elapsed(), args.dry_run);
    Ok(summary.succeeded())
}

/// `clerk-sync replay --dead-letters`: one line per dead letter, then a summary; fails while
/// any is still kept.
async fn replay_dead_letters(args: ReplayArgs) -> anyhow::Result<bool> {
    let db = open(&args.database).await?;
    if !args.dry_run {
        migrate_and_check(&args.mapping, &db, !args.no_migrate).await?;
    }
    let options = SyncOptions {
        skip_users_without_email: args.skip_users_without_email,
        ..SyncOptions::default()
    };
    let letters = db
        .dead_letters()
        .await
        .context("reading the dead letters")?;
    let (mut applied, mut failing) = (0usize, 0usize);
    for letter in &letters {
        let result = dead_letter::replay_one(&db, letter, options, args.dry_run)
            .await
            .with_context(|| format!("replaying dead letter {}", letter.svix_id))?;
        let line = match result {
            Replayed::Applied(outcome) => {
                applied += 1;
                format!("applied ({}), removed", outcome.as_str())
            }
            Replayed::WouldApply { event_type } => {
                applied += 1;
                format!("would be applied ({event_type}; the database may still refuse it)")
            }
            Replayed::StillFails { reason, detail } => {
                failing += 1;
                format!("still fails, kept: {}: {detail}", reason.as_str())
            }
        };
        println!(
            "{}  first seen {}, {} attempt(s): {line}",
            letter.svix_id, letter.first_seen, letter.attempts
        );
    }
    if args.dry_run {
        println!(
            "dry run: {} dead letters, {applied} would be applied, {failing} still fail (nothing written)",
            letters.len()
        );
    } else {
        println!(
            "{} dead letters: {applied} applied and removed, {failing} still fail and are kept",
            letters.len()
        );
    }
    Ok(failing == 0)
}

/// The schema and config `args` name, read and parsed; `None` without a schema file.
fn read_mapping_files(
    args: &MappingArgs,
) -> anyhow::Result<(Option<(std::path::PathBuf, Schema)>, Config)> {
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))
    };
    let schema = match args.schema_path() {
        Some(path) => {
            let schema = Schema::parse(&read(&path)?)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            Some((path, schema))
        }
        None => None,
    };
    let config = match args.config_path() {
        Some(path) => {
            Config::parse(&read(&path)?).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => Config::default(),
    };
    Ok((schema, config))
}

/// The table the mapping names, as the catalog describes it; an error when it is absent.
async fn live_table(db: &Database, mapping: &Mapping) -> anyhow::Result<LiveTable> {
    db.describe_table(mapping.table.schema.as_deref(), &mapping.table.name)
        .await
        .with_context(|| format!("reading the table {} from the catalog", mapping.table))?
        .ok_or_else(|| {
            TableError::Absent {
                model: mapping.model.clone(),
                table: mapping.table.to_string(),
            }
            .into()
        })
}

/// `clerk-sync mapping`: the report, from the schema file or, without one, from the table in
/// the database; with both, the schema checked against the table. `Ok(false)` when the
/// mapping cannot fill a required column or the schema and the table disagree.
pub async fn mapping(args: &MappingCommandArgs) -> anyhow::Result<bool> {
    let (schema, config) = read_mapping_files(&args.mapping)?;
    let model_flag = args.mapping.model.as_deref();
    let url = args.url()?;
    let db = match &url {
        Some(url) => Some(open_with(
            url,
            PoolOptions {
                max_connections: 1,
                committers: 0,
                ..PoolOptions::default()
            },
        )?),
        None => None,
    };
    let (source, schema, table) = match (schema, &db) {
        (None, None) => anyhow::bail!(
            "no Prisma schema: pass --prisma-schema (CLERK_SYNC_PRISMA_SCHEMA), or run where \
             prisma/schema.prisma is, or pass --database-url (DATABASE_URL) to make the mapping \
             from the table"
        ),
        (Some((path, schema)), None) => (format!("schema: {}", path.display()), schema, None),
        (Some((path, schema)), Some(db)) => {
            (format!("schema: {}", path.display()), schema, Some(db))
        }
        (None, Some(db)) => {
            let name = live::table_without_schema(&config, model_flag);
            let Some(table) = db
                .describe_table(None, &name)
                .await
                .with_context(|| format!("reading the table \"{name}\" from the catalog"))?
            else {
                anyhow::bail!(
                    "no table \"{name}\" in the database: name the table with --model or \
                     `table = \"...\"` under [user] in clerk-sync.toml, or pass --prisma-schema"
                );
            };
            let model = model_flag
                .map(str::to_owned)
                .or_else(|| config.user.model.as_ref().map(|m| m.value.clone()))
                .unwrap_or_else(|| name.clone());
            let schema = live::schema_from_table(&table, &model);
            let source = format!(
                "table: {} in the {} database (no schema file: the model is made from its columns)",
                table.qualified_name(),
                db.backend()
            );
            (source, schema, None)
        }
    };
    let mapping = match Mapping::resolve_model(&schema, &config, model_flag) {
        Ok(mapping) => mapping,
        Err(unfilled @ MappingError::Unfilled { .. }) => {
            eprintln!("clerk-sync: {source}: {unfilled}");
            return Ok(false);
        }
        Err(other) => anyhow::bail!("{source}: {other}"),
    };
    if let Some(db) = table {
        let live = live_table(db, &mapping).await?;
        if let Err(mismatch) = live::check_table(&mapping, &schema, &live) {
            eprintln!("clerk-sync: {source}: {mismatch}");
            return Ok(false);
        }
        println!("{source}");
        println!(
            "checked against the table {} in the {} database: they agree",
            live.qualified_name(),
            db.backend()
        );
    } else {
        println!("{source}");
    }
    print!("{}", mapping.report());
    Ok(true)
}

/// What `serve` and `migrate` do about the user model at start.
enum StartMapping {
    /// No schema file: the seed table, checked as it always was.
    Seed,
    /// A schema file whose user model is the seed shape: checked against the table too.
    SeedChecked(Schema, Mapping),
    /// A schema file with another shape: checked, then written as the mapping says.
    Mapped(Schema, Mapping),
}

/// Loads the mapping when there is a schema file; an error when it cannot fill a required
/// column.
fn start_mapping(args: &MappingArgs) -> anyhow::Result<StartMapping> {
    let (schema, config) = read_mapping_files(args)?;
    let Some((path, schema)) = schema else {
        if args.config_path().is_some() {
            tracing::warn!("clerk-sync.toml is used with a Prisma schema only: ignored");
        }
        return Ok(StartMapping::Seed);
    };
    let mapping = Mapping::resolve_model(&schema, &config, args.model.as_deref())
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    tracing::info!(
        schema = %path.display(),
        model = %mapping.model,
        table = %mapping.table,
        "user model read from the Prisma schema"
    );
    Ok(if mapping.is_seed_shape() {
        StartMapping::SeedChecked(schema, mapping)
    } else {
        StartMapping::Mapped(schema, mapping)
    })
}

/// The schema checked against the live table; the error names each field and column.
async fn check_live(db: &Database, schema: &Schema, mapping: &Mapping) -> anyhow::Result<()> {
    let live = live_table(db, mapping).await?;
    live::check_table(mapping, schema, &live)?;
    tracing::info!(table = %mapping.table, model = %mapping.model, "the table agrees with the Prisma schema");
    Ok(())
}

/// For the commands that write the table besides `serve` (replay, backfill), as `serve`
/// does: migrates when `migrate`, and checks the schema file, when there is one, against the
/// table; a user model other than the seed's is checked before clerk-sync's own tables are
/// migrated, and written as the mapping says.
async fn migrate_and_check(args: &MappingArgs, db: &Database, migrate: bool) -> anyhow::Result<()> {
    let start = start_mapping(args)?;
    if let StartMapping::Mapped(schema, mapping) = &start {
        check_live(db, schema, mapping).await?;
        if migrate {
            run_own_migrations(db).await?;
        }
        return use_mapping(db, mapping, migrate).await;
    }
    if migrate {
        run_migrations(db).await?;
    }
    if let StartMapping::SeedChecked(schema, mapping) = &start {
        check_live(db, schema, mapping).await?;
    }
    Ok(())
}

/// `clerk-sync check`.
pub async fn check(args: CheckArgs) -> bool {
    let bind = args
        .internal_bind
        .as_deref()
        .filter(|b| !b.trim().is_empty())
        .unwrap_or(&args.bind);
    let url = probe::readyz_url(bind);
    match probe::check(&url, Duration::from_secs(args.timeout)).await {
        Readiness::Ready => {
            println!("ready");
            true
        }
        Readiness::NotReady(reason) => {
            println!("not ready: {reason}");
            false
        }
        Readiness::Unreachable(reason) => {
            println!("unreachable: {reason}");
            false
        }
    }
}

/// `clerk-sync status`.
pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let db = open(&args.database).await?;
    db.check_ready().await.context("reading the database")?;
    let hours = i64::try_from(args.hours).unwrap_or(24);
    let since = chrono::Utc::now() - chrono::Duration::hours(hours);
    let status = db.status(since).await?;
    let walk = db.backfill_last_walk().await?;
    let dead = db.dead_letter_stats().await?;
    if args.json {
        let mut json = serde_json::to_value(&status)?;
        json["window_hours"] = serde_json::json!(hours);
        json["backend"] = serde_json::json!(db.backend());
        json["connection"] = serde_json::to_value(db.connection())?;
        json["backfill"] = walk.as_ref().map_or(serde_json::Value::Null, walk_json);
        json["dead_letters"] = serde_json::to_value(&dead)?;
        println!("{json}");
        return Ok(());
    }
    let connection = db.connection();
    println!("backend:          {}", db.backend());
    println!("encryption:       {}", connection.tls);
    println!("pooler-safe mode: {}", connection.pooler);
    println!("deliveries in the last {hours} h:");
    if status.deliveries_by_outcome.is_empty() {
        println!("  none");
    }
    for (outcome, count) in &status.deliveries_by_outcome {
        println!("  {outcome:<10} {count}");
    }
    println!(
        "last delivery:    {}",
        status.last_delivery_at.as_deref().unwrap_or("never")
    );
    println!("pending deletes:  {}", status.pending_deletes);
    println!("tombstones:       {}", status.tombstones);
    println!("known users:      {}", status.known_users);
    println!(
        "dead letters:     {} kept ({} bytes{}), {} dropped past the cap{}",
        dead.kept,
        dead.bytes,
        dead.oldest_first_seen
            .as_deref()
            .map(|t| format!("; oldest first seen {t}"))
            .unwrap_or_default(),
        dead.dropped,
        if dead.kept > 0 {
            "; `clerk-sync replay --dead-letters` applies them"
        } else {
            ""
        }
    );
    match &walk {
        None => println!("backfill:         never run"),
        Some(last) => {
            let w = &last.walk;
            let state = match last.completed_ms {
                Some(ms) => format!("completed {}", rfc3339(ms)),
                None => "incomplete: `clerk-sync backfill` resumes it".to_owned(),
            };
            println!(
                "backfill:         {state}; started {}, {} users seen on {} pages \
                 (applied {}, stale {}, unchanged {}, errors {})",
                rfc3339(w.started_ms),
                w.seen,
                w.pages,
                w.counts.applied,
                w.counts.stale,
                w.counts.unchanged,
                w.counts.errors
            );
        }
    }
    Ok(())
}

/// ms since the epoch as RFC 3339 (UTC), or the number itself if out of range.
fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

/// The newest backfill walk, for `status --json`.
fn walk_json(last: &crate::db::LastWalk) -> serde_json::Value {
    let w = &last.walk;
    serde_json::json!({
        "state": if last.completed_ms.is_some() { "completed" } else { "incomplete" },
        "started_at": rfc3339(w.started_ms),
        "completed_at": last.completed_ms.map(rfc3339),
        "pages": w.pages,
        "seen": w.seen,
        "applied": w.counts.applied,
        "stale": w.counts.stale,
        "unchanged": w.counts.unchanged,
        "ignored": w.counts.ignored,
        "errors": w.counts.errors,
    })
}

/// Backfill progress: a bar with the count on a terminal, elsewhere a plain line every
/// 10,000 users.
struct BackfillProgress {
    bar: Option<ProgressBar>,
    done: AtomicU64,
}

impl BackfillProgress {
    fn new() -> Self {
        Self {
            bar: terminal_bar("{spinner} {pos}/{len} users ({per_sec}, {elapsed}) {wide_bar}"),
            done: AtomicU64::new(0),
        }
    }

    fn finish(&self) {
        clear(self.bar.as_ref());
    }
}

impl backfill::Progress for BackfillProgress {
    fn total(&self, users: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(users.max(bar.position()));
        }
    }

    fn resumed_at(&self, users: u64) {
        self.done.store(users, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.set_position(users);
            bar.reset_eta();
        }
    }

    fn advance(&self, users: u64) {
        let before = self.done.fetch_add(users, Ordering::Relaxed);
        let done = before + users;
        match &self.bar {
            Some(bar) => {
                bar.inc(users);
                if bar.length().is_some_and(|len| len < done) {
                    bar.set_length(done);
                }
            }
            None if before / 10_000 != done / 10_000 => {
                eprintln!("clerk-sync: {done} users backfilled")
            }
            None => {}
        }
    }

    fn note(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }
}

fn print_backfill_summary(summary: &backfill::Summary, elapsed: Duration, dry_run: bool) {
    let seconds = elapsed.as_secs_f64().max(1e-9);
    let state = match (dry_run, summary.complete) {
        (true, true) => "dry run complete (nothing written)",
        (true, false) => "dry run incomplete (nothing written)",
        (false, true) => "backfill complete",
        (false, false) => "backfill incomplete",
    };
    println!(
        "{state}: {} users walked in {:.2} s ({:.0} per second){}",
        summary.walked,
        seconds,
        summary.walked as f64 / seconds,
        if summary.resumed {
            ", resuming an earlier walk"
        } else {
            ""
        }
    );
    for (name, count) in summary.rows() {
        println!("  {name:<10} {count}");
    }
    if let Some(reason) = &summary.stopped {
        println!("stopped: {reason}");
        if !dry_run {
            println!("the checkpoint is kept: run the same command again to continue");
        }
    }
    if let Some(reason) = &summary.prune_skipped {
        println!("prune: {reason}");
    }
}

/// `clerk-sync backfill`.
pub async fn backfill(args: BackfillArgs) -> anyhow::Result<bool> {
    let secret_key = args.key()?.context(
        "backfill reads Clerk's Backend API: set CLERK_SECRET_KEY (or --secret-key, or CLERK_SECRET_KEY_FILE) to the instance's secret key (sk_…)",
    )?;
    let base_url = client::base_url(&args.api_url).map_err(anyhow::Error::msg)?;
    let client = client::Client::new(client::ClientSettings {
        base_url,
        secret_key,
        max_requests_per_10s: args.max_requests_per_10s,
        retries: args.retries,
        timeout: Duration::from_secs(args.request_timeout),
        backoff: Duration::from_millis(500),
    })
    .map_err(anyhow::Error::msg)?;
    let db = open_bulk(&args.database).await?;
    if args.dry_run || args.no_migrate {
        migrate_and_check(&args.mapping, &db, false).await?;
        db.check_ready().await.context(
            "reading the database (--dry-run and --no-migrate need a migrated database: run `clerk-sync migrate`)",
        )?;
    } else {
        migrate_and_check(&args.mapping, &db, true).await?;
    }
    let options = backfill::Options {
        page_size: args.page_size,
        concurrency: usize::try_from(args.concurrency).unwrap_or(2),
        dry_run: args.dry_run,
        prune: args.prune,
        restart: args.restart,
        sync: SyncOptions {
            skip_users_without_email: args.skip_users_without_email,
            ..SyncOptions::default()
        },
    };
    let progress = BackfillProgress::new();
    let started = Instant::now();
    let result = backfill::run(&db, std::sync::Arc::new(client), &options, &progress).await;
    progress.finish();
    let summary = result?;
    print_backfill_summary(&summary, started.elapsed(), args.dry_run);
    if let Some(reason) = &summary.stopped {
        tracing::error!(reason = %reason, "backfill stopped before the last user");
    }
    Ok(summary.succeeded())
}
