//! `tracer-loadgen`: a self-contained TCP workload generator for the tracer's
//! tests and benchmarks.
//!
//! Every role runs in its own process so tests can check the tracer's
//! owner-pid attribution (client and server pids are this binary's children).
//! Only loopback or command-line-given addresses are used, and every loop is
//! bounded in count and time.
//!
//! Subcommands (machine-readable stdout, errors on stderr, non-zero exit on
//! failure):
//! - `server`  – print `READY <port>`, accept/drain, then a JSON summary.
//! - `client`  – N connections with a chosen close style (normal/reset/shutdown-wait).
//! - `refused` – connect attempts against a closed port.
//! - `churn`   – in-process listener + clients, maximum connection rate.
//! - `hold`    – keep N established connections open until SIGTERM/stdin EOF.
//! - `bulk`    – long-lived connections streaming data for a bounded time.
//! - `states`  – a known mix of states, held until stdin has a line or closes.

#[path = "tracer-loadgen/bulk.rs"]
mod bulk;
#[path = "tracer-loadgen/churn.rs"]
mod churn;
#[path = "tracer-loadgen/cli.rs"]
mod cli;
#[path = "tracer-loadgen/client.rs"]
mod client;
#[path = "tracer-loadgen/hold.rs"]
mod hold;
#[path = "tracer-loadgen/rt.rs"]
mod rt;
#[path = "tracer-loadgen/server.rs"]
mod server;
#[path = "tracer-loadgen/sock.rs"]
mod sock;
#[path = "tracer-loadgen/states.rs"]
mod states;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Command::Server(a) => server::run(a),
        Command::Client(a) => client::run(a),
        Command::Refused(a) => client::run_refused(a),
        Command::Churn(a) => churn::run(a),
        Command::Hold(a) => hold::run(a),
        Command::Bulk(a) => bulk::run(a),
        Command::States(a) => states::run(a),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tracer-loadgen: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
#[path = "tracer-loadgen/tests.rs"]
mod tests;
