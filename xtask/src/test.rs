//! `cargo xtask test`: lint, then every test, real-kernel ones included.

use anyhow::{Result, bail};
use clap::Args;

use crate::{cmd, setup};

#[derive(Args)]
pub struct TestArgs {
    /// Skip formatting and clippy.
    #[arg(long)]
    no_lint: bool,
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
    cmd::cargo(&test)
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
