use std::process::ExitCode;

use clap::Parser;
use tracer::{
    anomaly::{Config, config::DEFAULT_TOML},
    cli::{AnomalyArgs, Cli, Command, ConfigArgs, StreamArgs},
};

/// Bad configuration is a usage error, like a bad flag.
const USAGE: u8 = 2;

fn load_config(a: &AnomalyArgs) -> Result<Config, ExitCode> {
    a.load().map_err(|e| {
        eprintln!("tracer: error: {e}");
        ExitCode::from(USAGE)
    })
}

/// The detection config when `on`.
fn detection(on: bool, a: &AnomalyArgs) -> Result<Option<Config>, ExitCode> {
    on.then(|| load_config(a)).transpose()
}

async fn stream(args: &StreamArgs) -> Result<anyhow::Result<()>, ExitCode> {
    Ok(if args.detects() {
        let cfg = load_config(&args.anomaly)?;
        tracer::anomaly::stream::run(args, cfg)
            .await
            .map(drop)
            .map_err(Into::into)
    } else {
        tracer::stream::run(args)
            .await
            .map(drop)
            .map_err(Into::into)
    })
}

fn config(args: &ConfigArgs) -> ExitCode {
    if args.print_default {
        print!("{DEFAULT_TOML}");
        return ExitCode::SUCCESS;
    }
    let a = AnomalyArgs {
        config: args.check.clone(),
        overrides: args.overrides.clone(),
    };
    match load_config(&a) {
        Ok(_) => {
            println!(
                "{}: ok",
                args.check.as_deref().unwrap_or("".as_ref()).display()
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: anyhow::Result<()> = match cli.command {
        Some(Command::Stream(args)) => match stream(&args).await {
            Ok(r) => r,
            Err(code) => return code,
        },
        Some(Command::Stats(args)) => tracer::stats::run(&args).await.map_err(Into::into),
        Some(Command::Top(args)) => tracer::top::run(&args).await.map_err(Into::into),
        Some(Command::Agent(args)) => match load_config(&args.anomaly) {
            Ok(cfg) => tracer::agent::run(&args, cfg).await.map_err(Into::into),
            Err(code) => return code,
        },
        Some(Command::Config(args)) => return config(&args),
        Some(Command::Record(args)) => {
            let cfg = match detection(args.detects(), &args.anomaly) {
                Ok(cfg) => cfg,
                Err(code) => return code,
            };
            tracer::capture::record::run(&args, cfg)
                .await
                .map(drop)
                .map_err(Into::into)
        }
        Some(Command::Replay(args)) => {
            let cfg = match detection(args.detects(), &args.anomaly) {
                Ok(cfg) => cfg,
                Err(code) => return code,
            };
            tracer::capture::replay::run(&args, cfg)
                .map(drop)
                .map_err(Into::into)
        }
        Some(Command::Export(args)) => tracer::capture::export::run(&args)
            .map(drop)
            .map_err(Into::into),
        None => match stream(&cli.stream).await {
            Ok(r) => r,
            Err(code) => return code,
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tracer: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
