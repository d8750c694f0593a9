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
    if let Command::Mapping(args) = &cli.command {
        let checked = actix_web::rt::System::new().block_on(commands::mapping(args));
        return match checked {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(error) => {
                eprintln!("clerk-sync: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    let result = match cli.command {
        // The bulk commands parse, plan and write at once: a thread per core, so that
        // parsing the next pages never holds up a transaction that waits for its plan.
        Command::Replay(args) => bulk_runtime().and_then(|rt| rt.block_on(commands::replay(args))),
        Command::Backfill(args) => {
            bulk_runtime().and_then(|rt| rt.block_on(commands::backfill(args)))
        }
        command => actix_web::rt::System::new().block_on(async move {
            match command {
                Command::Serve(args) => commands::serve(*args).await.map(|()| true),
                Command::Migrate(args) => commands::migrate(args).await.map(|()| true),
                Command::Status(args) => commands::status(args).await.map(|()| true),
                Command::Replay(_)
                | Command::Backfill(_)
                | Command::Check(_)
                | Command::Mapping(_) => Ok(false),
            }
        }),
    };
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

fn bulk_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
