//! `cargo xtask test`: lint, then every test, real-kernel ones included.

use std::{collections::BTreeSet, fs, path::PathBuf};

use anyhow::{Result, bail};
use clap::Args;

use crate::{cmd, root, setup};

/// The cargo-fuzz target (in `fuzz/`) run after the tests.
const FUZZ_TARGET: &str = "capture_decoder";

#[derive(Args)]
pub struct TestArgs {
    /// Skip formatting and clippy.
    #[arg(long)]
    no_lint: bool,
    /// Seconds to fuzz the capture decoder after the tests (0 skips it).
    #[arg(long, default_value_t = 30)]
    fuzz_secs: u32,
    /// Skip the kernel matrix (`cargo xtask vm-test`) that runs after the tests.
    #[arg(long)]
    no_vm: bool,
    /// Extra arguments for `cargo test` (e.g. a test name filter).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    cargo_args: Vec<String>,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

pub fn run(args: &TestArgs) -> Result<()> {
    setup::check()?;
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "0" && v != "false");
    if !is_root() {
        if ci {
            bail!("CI=true but not running as root: the real-kernel tests must run in CI");
        }
        eprintln!(
            "\n!!! xtask: NOT ROOT: the real-kernel tests will be SKIPPED. Run as root for the \
             full suite.\n"
        );
    }
    if !args.no_lint {
        lint()?;
    }
    let mut test = vec![
        "test",
        "--release",
        "--workspace",
        "--exclude",
        "tracer-ebpf",
    ];
    if !args.cargo_args.is_empty() {
        test.push("--");
        test.extend(args.cargo_args.iter().map(String::as_str));
    }
    cmd::cargo(&test)?;
    if args.fuzz_secs > 0 {
        fuzz(args.fuzz_secs)?;
    }
    if args.no_vm {
        eprintln!("xtask: --no-vm: the kernel matrix was NOT run");
    } else if !is_root() {
        eprintln!("\n!!! xtask: NOT ROOT: the kernel matrix (cargo xtask vm-test) is SKIPPED\n");
    } else {
        crate::vm::run(&crate::vm::VmArgs::default())?;
    }
    Ok(())
}

fn files_in(dir: &PathBuf) -> BTreeSet<PathBuf> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect()
}

/// Fuzzes the capture decoder for a bounded time. New corpus entries go to a scratch directory
/// under `target/` (kept between runs); the committed seeds in `fuzz/corpus/` are only read. A
/// crash, leak, timeout or out-of-memory input fails the run, naming the saved input.
pub fn fuzz(secs: u32) -> Result<()> {
    let root = root();
    let scratch = root.join("target/fuzz-corpus").join(FUZZ_TARGET);
    fs::create_dir_all(&scratch)?;
    let artifacts = root.join("fuzz/artifacts").join(FUZZ_TARGET);
    let before = files_in(&artifacts);
    let scratch = scratch.to_string_lossy();
    let seeds = format!("fuzz/corpus/{FUZZ_TARGET}");
    let time = format!("-max_total_time={secs}");
    // Release with overflow checks, no sanitizer (the decoder is safe Rust; ASan would add a
    // minute of build), 16 codegen units: about 2.5 minutes to build from scratch on 2 cores.
    // AYA_BUILD_SKIP: the decoder does not need the kernel programs.
    let run = cmd::run(
        "cargo",
        &[
            "+nightly",
            "fuzz",
            "run",
            "--fuzz-dir",
            "fuzz",
            "--release",
            "--debug-assertions",
            "--sanitizer",
            "none",
            "--codegen-units",
            "16",
            FUZZ_TARGET,
            &scratch,
            &seeds,
            "--",
            &time,
            "-timeout=10",
            "-rss_limit_mb=2048",
        ],
        &[("AYA_BUILD_SKIP", "1")],
    );
    if let Err(e) = run {
        let found: Vec<String> = files_in(&artifacts)
            .difference(&before)
            .map(|p| p.display().to_string())
            .collect();
        if found.is_empty() {
            return Err(e.context("fuzzing the capture decoder failed"));
        }
        bail!(
            "the capture decoder fuzzer found a failing input: {}; reproduce with `cargo +nightly \
             fuzz run --fuzz-dir fuzz -O -a -s none {FUZZ_TARGET} <file>`, fix the decoder and add \
             a regression unit test",
            found.join(", ")
        );
    }
    Ok(())
}

pub fn lint() -> Result<()> {
    cmd::cargo(&["fmt", "--all", "--check"])?;
    cmd::cargo(&[
        "clippy",
        "--workspace",
        "--exclude",
        "tracer-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // The kernel crate only builds for the BPF target, with nightly and build-std.
    let rustflags = [
        "--cfg=bpf_target_arch=\"x86_64\"",
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
    ]
    .join("\x1f");
    cmd::run(
        "rustup",
        &[
            "run",
            "nightly",
            "cargo",
            "clippy",
            "--package",
            "tracer-ebpf",
            "--bins",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--target-dir",
            "target/bpf-clippy",
            "--",
            "-D",
            "warnings",
        ],
        &[("CARGO_ENCODED_RUSTFLAGS", &rustflags)],
    )
}
