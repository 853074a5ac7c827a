use std::process::ExitCode;

use clap::Parser;
use tracer::cli::{Cli, Command};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: anyhow::Result<()> = match cli.command {
        Some(Command::Stream(args)) => tracer::stream::run(&args)
            .await
            .map(drop)
            .map_err(Into::into),
        Some(Command::Stats(args)) => tracer::stats::run(&args).await.map_err(Into::into),
        Some(Command::Top(args)) => tracer::top::run(&args).await.map_err(Into::into),
        Some(Command::Agent(args)) => tracer::agent::run(&args).await.map_err(Into::into),
        None => tracer::stream::run(&cli.stream)
            .await
            .map(drop)
            .map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tracer: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
