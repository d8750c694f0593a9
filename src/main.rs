//! The `clerk-sync` binary: parses the command line and wires the library together.

use std::net::TcpListener;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use clerk_sync::cli::{Cli, Command, DatabaseArgs, ServeArgs};
use clerk_sync::db::Database;
use clerk_sync::startup::{AppState, Application, ServerSettings};
use clerk_sync::sync::SyncOptions;
use clerk_sync::verify::Verifier;

fn main() -> ExitCode {
    let cli = Cli::parse();
    clerk_sync::telemetry::init(cli.log_format == "json");
    let result = actix_web::rt::System::new().block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Migrate(args) => migrate(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("clerk-sync: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn open(args: &DatabaseArgs) -> anyhow::Result<Database> {
    let url = args.url()?;
    tracing::info!(database = %url, "opening database");
    Ok(Database::open(&url, args.pool())?)
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

async fn migrate(args: DatabaseArgs) -> anyhow::Result<()> {
    let db = open(&args).await?;
    run_migrations(&db).await?;
    println!("clerk-sync: {} database migrated", db.backend());
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let secrets = args.secrets().unwrap_or_default();
    let verifier = Verifier::parse(&secrets)?;
    let db = open(&args.database).await?;
    if !args.no_migrate {
        run_migrations(&db).await?;
    }
    let listener =
        TcpListener::bind(&args.bind).with_context(|| format!("binding {}", args.bind))?;
    let state = AppState {
        db,
        verifier,
        sync: SyncOptions {
            skip_users_without_email: args.skip_users_without_email,
        },
    };
    let settings = ServerSettings {
        body_limit: args.body_limit,
        workers: args.workers,
        pending_delete_interval: Duration::from_secs(args.pending_delete_interval),
    };
    let app = Application::build(listener, state, &settings)?;
    tracing::info!(address = %app.address(), "listening");
    app.run().await?;
    tracing::info!("stopped");
    Ok(())
}
