//! Project tasks cargo cannot do by itself: toolchain set-up, privileged test runs, benchmarks.

mod bench;
mod cmd;
mod setup;
mod test;
mod vm;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "tracer project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (nightly rust-src, bpf-linker, cargo-fuzz, Debian
    /// packages).
    /// Idempotent: returns at once when everything is there.
    Setup,
    /// Build everything in release mode; the agent lands at target/release/tracer.
    Build,
    /// Formatting, clippy (host and BPF crates) and every test, real-kernel ones included.
    Test(test::TestArgs),
    /// Formatting and clippy only.
    Lint,
    /// Measure overhead, per-event kernel cost and lost events; writes BENCHMARKS.md and JSON.
    Bench(bench::BenchArgs),
    /// The real-kernel tests on Debian 5.10, 6.1 and 6.12 under QEMU and on this machine's
    /// kernel, with a per-kernel table of passed, failed and degraded features.
    VmTest(vm::VmArgs),
}

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent")
        .to_path_buf()
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Build => {
            setup::check()?;
            cmd::cargo(&["build", "--release"])
        }
        Task::Test(args) => test::run(&args),
        Task::Lint => {
            setup::check()?;
            test::lint()
        }
        Task::Bench(args) => bench::run(&args),
        Task::VmTest(args) => vm::run(&args),
    }
}
