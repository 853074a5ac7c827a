//! The 100k-socket measurements: agent start-up time and memory while it tracks them, and the
//! answer time of `tracer stats` (standalone and against the agent) next to `ss -tan | awk`.
//! Everything runs in a private network namespace, so every count there can be checked exactly.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{bin, http, netns::Netns, procs};

/// Connections per `hold` process: 2 fds each, well under the 20,000-fd hard limit here.
const CONNS_PER_HOLDER: u64 = 5_000;
/// Runs of each quick query per round (their median, min and max are over all runs).
const QUERY_RUNS: usize = 5;
/// The agent's metrics address inside the namespace (nothing else listens there).
const AGENT_ADDR: &str = "127.0.0.1:9464";
/// Bound on every wait for a process in this section.
const PATIENCE: Duration = Duration::from_secs(120);

/// ESTABLISHED sockets each tool counted in one round.
#[derive(Debug, Clone, Copy)]
pub struct Counts {
    /// From the agent's `/stats`: includes the 2 sockets of that HTTP query's own connection.
    pub agent: u64,
    pub stats: u64,
    pub ss: u64,
}

#[derive(Debug, Default)]
pub struct Scale {
    /// ESTABLISHED sockets held (both ends of every connection).
    pub sockets: u64,
    pub holders: u64,
    pub setup_s: f64,
    /// Agent process start until /healthz answers (it answers only after the snapshot).
    pub startup_s: Vec<f64>,
    /// The snapshot's own duration, from the agent's start-up log line.
    pub snapshot_ms: Vec<f64>,
    pub rss_mib: Vec<f64>,
    /// Anonymous part of `rss_mib`: the agent's own heap. The rest is file-backed, mostly the
    /// ring buffer's mapping (its data pages are mapped twice) and the binary.
    pub anon_rss_mib: Vec<f64>,
    /// Proportional set size: memory counted once. RSS counts the ring buffer's data pages
    /// twice (the kernel maps them twice so records never wrap), PSS does not.
    pub pss_mib: Vec<f64>,
    pub peak_rss_mib: Vec<f64>,
    pub stats_standalone_s: Vec<f64>,
    pub stats_agent_s: Vec<f64>,
    pub ss_s: Vec<f64>,
    pub counts: Vec<Counts>,
}

/// The `hold` processes; dropping them closes their stdin, which makes them let go.
struct Holders(Vec<Child>);

impl Drop for Holders {
    fn drop(&mut self) {
        for c in &mut self.0 {
            drop(c.stdin.take());
        }
        for c in &mut self.0 {
            if !wait_bounded(c, Duration::from_secs(20)) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Waits up to `limit` for `c` to exit; false if it is still running.
fn wait_bounded(c: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if !matches!(c.try_wait(), Ok(None)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn hold(ns: &Netns, sockets: u64) -> Result<Holders> {
    let conns = sockets / 2;
    let n = conns.div_ceil(CONNS_PER_HOLDER);
    let mut holders = Holders(Vec::new());
    let (tx, rx) = mpsc::channel();
    for i in 0..n {
        let count = CONNS_PER_HOLDER.min(conns - i * CONNS_PER_HOLDER);
        let mut child = ns
            .command(&bin("tracer-loadgen"))
            .args(["hold", "--addr", "127.0.0.1", "--port", "0"])
            .args(["--count", &count.to_string(), "--timeout-secs", "1800"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting tracer-loadgen hold")?;
        let out = child.stdout.take().expect("piped stdout");
        holders.0.push(child);
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut out = BufReader::new(out);
            let mut line = String::new();
            let _ = out.read_line(&mut line);
            let _ = tx.send(line);
            // Keep reading, so its summary line at exit does not hit a closed pipe.
            let _ = std::io::copy(&mut out, &mut std::io::sink());
        });
    }
    for _ in 0..n {
        let line = rx.recv_timeout(PATIENCE).context("hold never got ready")?;
        if !line.starts_with("READY") {
            bail!("tracer-loadgen hold failed (said {line:?})");
        }
    }
    Ok(holders)
}

/// Wall time and stdout of a command that must succeed.
fn timed(mut cmd: Command) -> Result<(f64, String)> {
    let t0 = Instant::now();
    let out = cmd.stderr(Stdio::null()).output()?;
    let secs = t0.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", out.status);
    }
    Ok((secs, String::from_utf8_lossy(&out.stdout).into_owned()))
}

fn established(stats_json: &str) -> Result<u64> {
    let v: Value = serde_json::from_str(stats_json.lines().last().unwrap_or_default())
        .context("stats JSON")?;
    v["states"]["ESTABLISHED"]
        .as_u64()
        .context("no states.ESTABLISHED")
}

/// `N ESTAB` from `uniq -c` output.
fn ss_established(out: &str) -> u64 {
    out.lines()
        .filter_map(|l| l.trim().split_once(' '))
        .find(|(_, state)| state.trim() == "ESTAB")
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(0)
}

fn vm_kib(pid: u32, field: &str) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| {
            v.trim_start_matches(':')
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .with_context(|| format!("no {field}"))
}

/// `Pss` of /proc/PID/smaps_rollup, in KiB.
fn pss_kib(pid: u32) -> Result<f64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no Pss in smaps_rollup")
}

/// `ms=N` of the agent's `start-up snapshot` log line, if it has come.
fn snapshot_ms(lines: &mpsc::Receiver<String>) -> Option<f64> {
    lines
        .try_iter()
        .find(|l| l.contains("start-up snapshot"))?
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ms="))?
        .parse()
        .ok()
}

impl Scale {
    fn round(&mut self, ns: &Netns) -> Result<()> {
        let tracer = bin("tracer");
        let mut cmd = ns.command(&tracer);
        cmd.args(["stats", "--json", "--count", "1", "--interval", "0.1"]);
        let (secs, out) = timed(cmd)?;
        self.stats_standalone_s.push(secs);
        let stats = established(&out)?;

        let mut ss = 0;
        for _ in 0..QUERY_RUNS {
            let mut cmd = ns.command("sh");
            cmd.args(["-c", "ss -tan | awk '{print $1}' | sort | uniq -c"]);
            let (secs, out) = timed(cmd)?;
            self.ss_s.push(secs);
            ss = ss_established(&out);
        }

        let addr: SocketAddr = AGENT_ADDR.parse()?;
        let t0 = Instant::now();
        let mut agent = ns
            .command(&tracer)
            .args(["agent", "--metrics-addr", AGENT_ADDR])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let log = procs::stderr_lines(&mut agent);
        let measured = (|| {
            ns.run(|| http::wait_healthy(addr, PATIENCE))?;
            self.startup_s.push(t0.elapsed().as_secs_f64());
            self.snapshot_ms.extend(snapshot_ms(&log));
            let (_, body) = ns.run(|| http::get(addr, "/stats?top=1", PATIENCE))?;
            let agent_count = established(&body)?;
            for _ in 0..QUERY_RUNS {
                let mut cmd = ns.command(&tracer);
                cmd.args(["stats", "--agent", AGENT_ADDR, "--json", "--count", "1"]);
                self.stats_agent_s.push(timed(cmd)?.0);
            }
            self.rss_mib.push(vm_kib(agent.id(), "VmRSS")? / 1024.0);
            self.anon_rss_mib
                .push(vm_kib(agent.id(), "RssAnon")? / 1024.0);
            self.pss_mib.push(pss_kib(agent.id())? / 1024.0);
            self.peak_rss_mib
                .push(vm_kib(agent.id(), "VmHWM")? / 1024.0);
            self.counts.push(Counts {
                agent: agent_count,
                stats,
                ss,
            });
            anyhow::Ok(())
        })();
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(agent.id() as i32, libc::SIGINT) };
        if !wait_bounded(&mut agent, Duration::from_secs(30)) {
            let _ = agent.kill();
            let _ = agent.wait();
        }
        measured
    }
}

/// Holds `sockets` ESTABLISHED sockets in a fresh namespace and measures `rounds` times.
pub fn run(sockets: u64, rounds: usize) -> Result<Scale> {
    let ns = Netns::create(&format!("tracer-bench-{}", std::process::id()))?;
    let t0 = Instant::now();
    let holders = hold(&ns, sockets)?;
    let mut scale = Scale {
        sockets: sockets / 2 * 2,
        holders: holders.0.len() as u64,
        setup_s: t0.elapsed().as_secs_f64(),
        ..Scale::default()
    };
    eprintln!(
        "xtask bench: {} sockets held by {} processes in {:.1} s",
        scale.sockets, scale.holders, scale.setup_s
    );
    for round in 0..rounds {
        eprintln!("xtask bench: round {}/{rounds}: 100k sockets", round + 1);
        scale.round(&ns)?;
        eprintln!("  {:?}", scale.counts.last());
    }
    drop(holders);
    Ok(scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_uniq_counts() {
        let out = "      1 LISTEN\n 100000 ESTAB\n      1 State\n";
        assert_eq!(ss_established(out), 100_000);
        assert_eq!(ss_established("      1 State\n"), 0);
    }
}
