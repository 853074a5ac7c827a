//! Installing the toolchain pieces and packages the project needs, idempotently.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

use crate::cmd::{self, exists, output};

/// Debian packages the tests and benchmarks use: (command that proves it, package).
const PACKAGES: &[(&str, &str)] = &[
    ("nft", "nftables"),
    ("ip", "iproute2"),
    ("ss", "iproute2"),
    ("unshare", "util-linux"),
    ("setpriv", "util-linux"),
    ("bpftool", "bpftool"),
    ("tcpstates", "libbpf-tools"),
    ("bpftrace", "bpftrace"),
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
    ("tmux", "tmux"),
    // `cargo xtask vm-test`: the kernel matrix boots under QEMU with a busybox initramfs.
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("busybox", "busybox-static"),
    ("zstd", "zstd"),
    ("xz", "xz-utils"),
    ("strip", "binutils"),
    ("depmod", "kmod"),
    ("dpkg-deb", "dpkg"),
    ("apt-get", "apt"),
];

const NIGHTLY: &str = "nightly";

fn home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

fn nightly_sysroot() -> Option<PathBuf> {
    output("rustc", &[&format!("+{NIGHTLY}"), "--print", "sysroot"])
        .map(|s| PathBuf::from(s.trim()))
}

fn has_rust_src(sysroot: &Path) -> bool {
    sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .is_file()
}

fn bpf_linker_works() -> bool {
    output("bpf-linker", &["--version"]).is_some()
}

/// `cargo fuzz` runs the capture decoder's fuzz target in `cargo xtask test`.
fn cargo_fuzz_works() -> bool {
    output("cargo", &["fuzz", "--version"]).is_some()
}

fn missing_packages() -> Vec<&'static str> {
    let mut pkgs: Vec<&str> = PACKAGES
        .iter()
        .filter(|(bin, _)| !exists(bin) && !exists_sbin(bin))
        .map(|(_, p)| *p)
        .collect();
    pkgs.dedup();
    pkgs
}

fn exists_sbin(bin: &str) -> bool {
    ["/usr/sbin", "/sbin"]
        .iter()
        .any(|d| PathBuf::from(d).join(bin).is_file())
}

/// Fails with instructions when something `setup` installs is missing.
pub fn check() -> Result<()> {
    let mut missing = Vec::new();
    match nightly_sysroot() {
        None => missing.push("the nightly toolchain".to_owned()),
        Some(s) if !has_rust_src(&s) => missing.push("rust-src for nightly".to_owned()),
        Some(_) => {}
    }
    if !bpf_linker_works() {
        missing.push("bpf-linker".to_owned());
    }
    if !cargo_fuzz_works() {
        missing.push("cargo-fuzz".to_owned());
    }
    let pkgs = missing_packages();
    if !pkgs.is_empty() {
        missing.push(format!("Debian packages {}", pkgs.join(" ")));
    }
    if !missing.is_empty() {
        bail!("missing: {}; run `cargo xtask setup`", missing.join(", "));
    }
    Ok(())
}

pub fn run() -> Result<()> {
    let sysroot = match nightly_sysroot() {
        Some(s) => s,
        None => {
            cmd::run(
                "rustup",
                &["toolchain", "install", NIGHTLY, "--profile", "minimal"],
                &[],
            )
            .context("the eBPF crate needs a nightly toolchain")?;
            nightly_sysroot().context("nightly installed but `rustc +nightly` does not run")?
        }
    };
    if !has_rust_src(&sysroot) {
        cmd::run(
            "rustup",
            &["component", "add", "rust-src", "--toolchain", NIGHTLY],
            &[],
        )?;
    }
    if !bpf_linker_works() {
        install_bpf_linker(&sysroot)?;
    }
    if !cargo_fuzz_works() {
        // 0.13 builds with the stable toolchain; the fuzz target itself needs nightly.
        cmd::run(
            "cargo",
            &["install", "cargo-fuzz", "--version", "^0.13", "--locked"],
            &[],
        )
        .context("installing cargo-fuzz (the decoder fuzz target in `cargo xtask test`)")?;
    }
    let pkgs = missing_packages();
    if !pkgs.is_empty() {
        if !exists("apt-get") {
            bail!(
                "missing commands from Debian packages {}; install them",
                pkgs.join(" ")
            );
        }
        cmd::run("apt-get", &["update", "-q"], &[])?;
        let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
        args.extend(&pkgs);
        cmd::run("apt-get", &args, &[("DEBIAN_FRONTEND", "noninteractive")])?;
    }
    check()?;
    eprintln!("xtask: setup complete");
    Ok(())
}

/// bpf-linker must link against the LLVM that produced the bitcode: the nightly toolchain's own
/// libLLVM. Its `libLLVM-*.so` is a linker script naming a sibling file, so both go into a
/// prefix that outlives the build (its path is baked into bpf-linker's rpath).
fn install_bpf_linker(sysroot: &Path) -> Result<()> {
    let lib = sysroot.join("lib");
    let mut script = None;
    let mut real = None;
    for entry in fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with("libLLVM-") && name.ends_with(".so") {
            script = Some(name);
        } else if name.starts_with("libLLVM.so.") {
            real = Some(name);
        }
    }
    let (Some(script), Some(real)) = (script, real) else {
        bail!(
            "no libLLVM in {}: cannot build bpf-linker against the toolchain",
            lib.display()
        );
    };
    let major = script
        .trim_start_matches("libLLVM-")
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .filter(|m| !m.is_empty())
        .with_context(|| format!("cannot tell the LLVM version from {script}"))?
        .to_owned();
    let prefix = home().join("tracer-llvm");
    let plib = prefix.join("lib");
    fs::create_dir_all(&plib)?;
    for (link, target) in [("libLLVM.so".to_owned(), &script), (real.clone(), &real)] {
        let path = plib.join(&link);
        let _ = fs::remove_file(&path);
        symlink(lib.join(target), &path).with_context(|| format!("linking {}", path.display()))?;
    }
    let feature = format!("llvm-{major}");
    let prefix = prefix.to_string_lossy().into_owned();
    cmd::run(
        "cargo",
        &[
            "install",
            "bpf-linker",
            "--version",
            "^0.13",
            "--no-default-features",
            "--features",
            &feature,
        ],
        &[("LLVM_PREFIX", &prefix)],
    )
    .with_context(|| format!("building bpf-linker against {prefix} (LLVM {major})"))
}
