//! The guest's initramfs: busybox, the tracer and its real-kernel test binaries at the paths
//! they were built for, the tools the tests call with their shared libraries, and a `/init`
//! that runs everything and reports over the serial console. Kernel modules go in a second
//! archive per kernel; the kernel unpacks concatenated archives in order.

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::{PermissionsExt, symlink},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use super::guest;

/// Commands the real-kernel tests run, resolved on the host's PATH.
const TOOLS: &[&str] = &["ip", "ss", "nft", "nsenter", "unshare", "setpriv", "jq"];

/// What the guest runs: the tracer binaries and the test binaries (name, path).
pub struct Payload {
    pub binaries: Vec<PathBuf>,
    pub tests: Vec<(String, PathBuf)>,
}

/// Builds the kernel-independent archive at `out` from a fresh tree in `tree`.
pub fn common(payload: &Payload, tree: &Path, out: &Path, test_timeout: u64) -> Result<()> {
    let _ = fs::remove_dir_all(tree);
    for d in [
        "bin", "sbin", "proc", "sys", "dev", "tmp", "run", "root", "etc", "tests",
    ] {
        fs::create_dir_all(tree.join(d))?;
    }
    // `ip netns` keeps its namespaces under /var/run/netns.
    fs::create_dir_all(tree.join("var"))?;
    symlink("../run", tree.join("var/run"))?;
    install_busybox(tree)?;
    let mut libs = BTreeSet::new();
    for bin in &payload.binaries {
        copy_stripped(bin, &tree.join(relative(bin)))?;
        libs.extend(shared_libs(bin)?);
    }
    for tool in TOOLS {
        let path = which(tool)?;
        copy_stripped(&path, &tree.join(relative(&path)))?;
        libs.extend(shared_libs(&path)?);
    }
    for (name, path) in &payload.tests {
        copy_stripped(path, &tree.join("tests").join(name))?;
        libs.extend(shared_libs(path)?);
    }
    for lib in &libs {
        let dest = tree.join(relative(lib));
        fs::create_dir_all(dest.parent().unwrap_or(tree))?;
        fs::copy(lib, &dest).with_context(|| format!("copying {}", lib.display()))?;
    }
    fs::write(
        tree.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n",
    )?;
    fs::write(tree.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    let names: Vec<&str> = payload.tests.iter().map(|(n, _)| n.as_str()).collect();
    let tracer = payload
        .binaries
        .iter()
        .find(|b| b.file_name().is_some_and(|n| n == "tracer"))
        .context("no tracer binary in the payload")?;
    let init = tree.join("init");
    fs::write(
        &init,
        guest::init_script(&tracer.to_string_lossy(), &names, test_timeout),
    )?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;
    archive(tree, out)
}

/// The archive of one kernel's modules (a tree holding `lib/modules/<release>`).
pub fn modules(tree: &Path, out: &Path) -> Result<()> {
    archive(tree, out)
}

/// `cat`s archives into one initrd.
pub fn concat(parts: &[&Path], out: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    for p in parts {
        bytes.extend(fs::read(p).with_context(|| format!("reading {}", p.display()))?);
    }
    fs::write(out, bytes)?;
    Ok(())
}

fn install_busybox(tree: &Path) -> Result<()> {
    let busybox = which("busybox")?;
    fs::copy(&busybox, tree.join("bin/busybox"))?;
    let out = Command::new(&busybox).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let link = tree.join("bin").join(applet);
        if applet != "busybox" && !link.exists() {
            symlink("busybox", link)?;
        }
    }
    // The kernel's module auto-loading (nft needs nf_tables) calls /sbin/modprobe.
    symlink("../bin/busybox", tree.join("sbin/modprobe"))?;
    Ok(())
}

fn relative(p: &Path) -> &Path {
    p.strip_prefix("/").unwrap_or(p)
}

fn which(tool: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .with_context(|| format!("`{tool}` not found (run `cargo xtask setup`)"))
}

/// Test binaries are large with debug info; the guest unpacks every byte in emulation.
fn copy_stripped(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to.parent().context("no parent")?)?;
    let status = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(to)
        .arg(from)
        .status()
        .context("cannot run strip (binutils)")?;
    if !status.success() {
        bail!("strip {} failed", from.display());
    }
    Ok(())
}

/// The shared libraries (and loader) a dynamically linked binary needs, as `ldd` resolves them.
fn shared_libs(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("cannot run ldd")?;
    // "not a dynamic executable" (busybox-static) is not an error.
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
        .map(PathBuf::from)
        .collect())
}

/// A zstd-compressed newc cpio archive of `tree`.
fn archive(tree: &Path, out: &Path) -> Result<()> {
    let script = format!(
        "cd '{}' && find . | busybox cpio -o -H newc 2>/dev/null | zstd -q -T0 -3 -f -o '{}'",
        tree.display(),
        out.display()
    );
    let status = Command::new("sh").args(["-c", &script]).status()?;
    if !status.success() {
        bail!("building {} failed", out.display());
    }
    Ok(())
}
