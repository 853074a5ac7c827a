//! `cargo xtask vm-test`: the real-kernel tests on the kernels production hosts run. Each Debian
//! kernel boots under QEMU with an initramfs holding the tracer and the test binaries; the host
//! row runs the same binaries on this machine's kernel.

mod guest;
mod initramfs;
mod kernels;
mod qemu;
mod report;

use std::{
    fs,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::{cmd, root, setup};
use qemu::{Accel, Ended};
use report::Row;

/// The test binaries (tracer/tests/*.rs) run on every kernel: the core (transitions,
/// retransmits, owners, close records, lost-event accounting), bad input, aggregation, capture
/// with anomalies, the output queue, the scope of the undelivered-transition counter, and a CPU
/// taken offline with staged events.
/// `anomaly` asks for a full-rate churn no emulated guest reaches, `capture`'s full-disk test
/// needs that rate to fill its disk early, and `agent` and `top` need Prometheus and tmux: they
/// run on the host only.
const DEFAULT_TESTS: &[&str] = &[
    "transitions",
    "closes",
    "losses",
    "environment",
    "stats",
    "snapshot",
    "capture_anomalies",
    "output_queue",
    "undelivered",
    "cpu_offline",
];

#[derive(Args)]
pub struct VmArgs {
    /// Kernels: Debian series (5.10, 6.1, 6.12) and `host` (this machine's kernel, natively).
    #[arg(long = "kernel", value_delimiter = ',', default_values = ["5.10", "6.1", "6.12", "host"])]
    kernels: Vec<String>,
    /// Test binaries (names of tracer/tests/*.rs) to run on each kernel.
    #[arg(long = "tests", value_delimiter = ',', default_values = DEFAULT_TESTS)]
    tests: Vec<String>,
    /// Download the kernels again even when they are cached.
    #[arg(long)]
    refresh: bool,
    #[arg(long, value_enum, default_value = "auto")]
    accel: Accel,
    /// Seconds one kernel's whole run may take.
    #[arg(long, default_value_t = 480)]
    vm_timeout: u64,
    /// Seconds one test binary may take inside a guest.
    #[arg(long, default_value_t = 300)]
    test_timeout: u64,
    /// Write the table into README.md and the format files into the unit-test fixtures.
    #[arg(long)]
    update: bool,
}

impl Default for VmArgs {
    /// The command line defaults, for `cargo xtask test`.
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: VmArgs,
        }
        <Wrapper as clap::Parser>::parse_from(["vm-test"]).args
    }
}

/// How long a KVM guest gets to reach `/init` before TCG takes over.
const KVM_BOOT_LIMIT: Duration = Duration::from_secs(20);

pub fn run(args: &VmArgs) -> Result<()> {
    setup::check()?;
    for k in &args.kernels {
        if k != "host" {
            kernels::series(k)?;
        }
    }
    let dir = root().join("target/vm");
    fs::create_dir_all(&dir)?;
    // Read before `--update` rewrites the table, which is then what records the change.
    let recorded = if args.update {
        Default::default()
    } else {
        report::recorded_degradations(&fs::read_to_string(root().join("README.md"))?)
    };
    let payload = payload(&args.tests)?;
    let common = dir.join("common.cpio.zst");
    initramfs::common(&payload, &dir.join("guest"), &common, args.test_timeout)
        .context("building the guest initramfs")?;
    let mut accel = args.accel;
    let mut rows = Vec::new();
    for k in &args.kernels {
        let started = Instant::now();
        let row = if k == "host" {
            host(&payload, args, &dir)?
        } else {
            let kernel = kernels::get(kernels::series(k)?, args.refresh)?;
            let modules = dir.join(format!("modules-{k}.cpio.zst"));
            initramfs::modules(&kernel.modules, &modules)?;
            let initrd = dir.join(format!("initrd-{k}.img"));
            initramfs::concat(&[&common, &modules], &initrd)?;
            let log = dir.join(format!("{k}.log"));
            let limit = Duration::from_secs(args.vm_timeout);
            let boot = |accel| qemu::Boot {
                vmlinuz: &kernel.vmlinuz,
                initrd: &initrd,
                accel,
                boot_limit: KVM_BOOT_LIMIT,
                limit,
                log: &log,
            };
            eprintln!(
                "xtask: vm: booting {} ({}) with {}",
                kernel.release,
                kernel.version,
                accel.name()
            );
            let (mut report, mut ended) = boot(if accel == Accel::Auto {
                Accel::Kvm
            } else {
                accel
            })
            .run()?;
            if accel == Accel::Auto {
                // Stuck in firmware, or qemu refused the host's CPU under KVM (an L1 hypervisor
                // that rejects an MSR qemu sets has aborted it before the kernel started).
                let failed = match ended {
                    Ended::NoBoot => Some(format!(
                        "did not reach /init in {} s",
                        KVM_BOOT_LIMIT.as_secs()
                    )),
                    Ended::Exited if !report.booted => Some(format!(
                        "exited before /init ({})",
                        first_line(&log).unwrap_or_else(|| "no output".into())
                    )),
                    _ => None,
                };
                if let Some(why) = failed {
                    eprintln!("xtask: vm: a KVM guest {why}; using TCG from here on");
                    accel = Accel::Tcg;
                    (report, ended) = boot(accel).run()?;
                } else {
                    accel = Accel::Kvm;
                }
            }
            Row {
                kernel: format!("Debian {k}"),
                release: kernel.release.clone(),
                package: Some(kernel.version.clone()),
                // `Auto` was settled above, to KVM or TCG.
                accel: accel.name().to_string(),
                seconds: started.elapsed().as_secs(),
                ended,
                report,
                log,
            }
        };
        eprintln!("xtask: vm: {}", row.summary());
        rows.push(row);
    }
    report::write(&rows, &dir, args.update)?;
    for r in &rows {
        let new = r.new_degradations(&recorded);
        if !new.is_empty() {
            eprintln!(
                "xtask: vm: {}: degraded, unlike README's table says: {}; fix that, or record it \
                 with `cargo xtask vm-test --update`",
                r.kernel,
                new.join("; ")
            );
        }
    }
    let failed: Vec<String> = rows
        .iter()
        .filter(|r| !r.ok() || !r.new_degradations(&recorded).is_empty())
        .map(|r| r.kernel.clone())
        .collect();
    if !failed.is_empty() {
        bail!("the kernel matrix failed on {}", failed.join(", "));
    }
    Ok(())
}

/// Builds the tracer binaries and the selected test binaries (the release profile `cargo xtask
/// test` already built) and finds their paths.
fn payload(tests: &[String]) -> Result<initramfs::Payload> {
    cmd::cargo(&["build", "--release", "-p", "tracer", "--bins"])?;
    let out = Command::new("cargo")
        .args([
            "test",
            "--release",
            "-p",
            "tracer",
            "--no-run",
            "--message-format=json",
        ])
        .current_dir(root())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo")?;
    if !out.status.success() {
        bail!("building the test binaries failed");
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(name), Some(exe)) = (v["target"]["name"].as_str(), v["executable"].as_str())
        else {
            continue;
        };
        if v["target"]["kind"][0] == "test" && tests.iter().any(|t| t == name) {
            found.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    for t in tests {
        if !found.iter().any(|(n, _)| n == t) {
            bail!("no test binary `{t}` in the tracer crate (tracer/tests/{t}.rs)");
        }
    }
    found.sort_by_key(|(n, _)| tests.iter().position(|t| t == n));
    let release = root().join("target/release");
    Ok(initramfs::Payload {
        binaries: vec![release.join("tracer"), release.join("tracer-loadgen")],
        tests: found,
    })
}

/// The same body on this machine's kernel.
fn host(payload: &initramfs::Payload, args: &VmArgs, dir: &Path) -> Result<Row> {
    let started = Instant::now();
    let tracer = payload.binaries[0].to_string_lossy().into_owned();
    let tests: Vec<(String, String)> = payload
        .tests
        .iter()
        .map(|(n, p)| (n.clone(), p.to_string_lossy().into_owned()))
        .collect();
    let script = guest::body(&tracer, &tests, args.test_timeout);
    let log = dir.join("host.log");
    eprintln!("xtask: vm: running the same tests on this machine's kernel");
    let child = Command::new("sh")
        .args(["-c", &script])
        .env("CI", "true")
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let (report, ended) = qemu::collect(child, &log, None, Duration::from_secs(args.vm_timeout))?;
    Ok(Row {
        kernel: "host".into(),
        release: report.release.clone(),
        package: None,
        accel: "native".into(),
        seconds: started.elapsed().as_secs(),
        ended,
        report,
        log,
    })
}

/// The first line qemu or the guest wrote, to say why a boot failed.
fn first_line(log: &Path) -> Option<String> {
    let text = fs::read_to_string(log).ok()?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned)
}
