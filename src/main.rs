//! The `clerk-sync` binary: parses the command line and dispatches to [`clerk_sync::commands`].

use std::process::ExitCode;

use clap::Parser;

use clerk_sync::cli::{Cli, Command};
use clerk_sync::commands;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `check` is a probe: no logging set-up, no configuration beyond its address.
    if let Command::Check(args) = cli.command {
        let ready = actix_web::rt::System::new().block_on(commands::check(args));
        return if ready {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    clerk_sync::telemetry::init(cli.log_format == "json");
    let result = actix_web::rt::System::new().block_on(async move {
        match cli.command {
            Command::Serve(args) => commands::serve(args).await.map(|()| true),
            Command::Migrate(args) => commands::migrate(args).await.map(|()| true),
            Command::Replay(args) => commands::replay(args).await,
            Command::Status(args) => commands::status(args).await.map(|()| true),
            Command::Backfill(args) => commands::backfill(args).await,
            Command::Check(_) => Ok(false),
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("clerk-sync: {error:#}");
            ExitCode::FAILURE
        }
    }
}
