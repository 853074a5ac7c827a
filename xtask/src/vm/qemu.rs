//! Booting a guest under QEMU and collecting its serial console, with deadlines.

use std::{
    fs::File,
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use std::os::unix::process::CommandExt;

use anyhow::{Context, Result};

use super::guest::{Parser, Report};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// KVM when a guest boots with it, TCG otherwise.
    Auto,
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Auto => "auto",
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG",
        }
    }
}

/// How a boot ended.
pub enum Ended {
    /// The guest powered off (or the host run finished).
    Exited,
    /// Nothing from `/init` within the boot deadline (a KVM guest stuck in firmware).
    NoBoot,
    /// The whole-run deadline passed.
    TimedOut,
}

pub struct Boot<'a> {
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    pub accel: Accel,
    pub boot_limit: Duration,
    pub limit: Duration,
    pub log: &'a Path,
}

impl Boot<'_> {
    pub fn run(&self) -> Result<(Report, Ended)> {
        // One host thread for all vCPUs under TCG: with a thread each (MTTCG), a guest kernel
        // patching its own text (static branches flip when nftables or BPF hooks come and go)
        // has crashed on a stale `int3` on both vCPUs at once (Debian 6.12, `__ip_local_out`).
        let (cpu, accel) = match self.accel {
            Accel::Kvm => ("host", "kvm"),
            _ => ("max", "tcg,thread=single"),
        };
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-accel", accel, "-cpu", cpu, "-smp", "2", "-m", "2048"])
            .args(["-nographic", "-no-reboot", "-kernel"])
            .arg(self.vmlinuz)
            .arg("-initrd")
            .arg(self.initrd)
            .args(["-append", "console=ttyS0 quiet panic=-1 rdinit=/init"]);
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run qemu-system-x86_64 (run `cargo xtask setup`)")?;
        collect(child, self.log, Some(self.boot_limit), self.limit)
    }
}

/// Kills a child spawned as a process group leader, with everything it started (a test
/// binary's own children hold the output pipe open).
fn kill_group(child: &Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: plain syscall; a stale group is harmless (ESRCH).
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
}

/// Reads the output of a child spawned as a process group leader into a report until it exits or
/// a deadline passes; the raw output goes to `log`. The boot deadline applies until the first
/// report line.
pub fn collect(
    mut child: Child,
    log: &Path,
    boot_limit: Option<Duration>,
    limit: Duration,
) -> Result<(Report, Ended)> {
    let mut file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let (tx, rx) = mpsc::channel();
    let mut readers = Vec::new();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            let mut r = BufReader::new(stream);
            let mut buf = Vec::new();
            while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
                buf.clear();
            }
        }));
    }
    drop(tx);
    let start = Instant::now();
    let mut parser = Parser::new();
    let ended = loop {
        let limit = match boot_limit {
            Some(b) if !parser.report.booted => b.min(limit),
            _ => limit,
        };
        let Some(left) = limit.checked_sub(start.elapsed()) else {
            kill_group(&child);
            break if parser.report.booted {
                Ended::TimedOut
            } else {
                Ended::NoBoot
            };
        };
        match rx.recv_timeout(left) {
            Ok(line) => {
                let _ = file.write_all(line.as_bytes());
                parser.line(line.trim_end_matches('\n'));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break Ended::Exited,
        }
    };
    let _ = child.wait();
    // The readers end once the child's pipes close (kill closes them too).
    for r in readers {
        let _ = r.join();
    }
    Ok((parser.report, ended))
}
