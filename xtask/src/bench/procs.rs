//! Processes under measurement: our tracer, the peers, and what the kernel says about them.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::http::Lost;

/// Turns `kernel.bpf_stats_enabled` on for the run and restores it afterwards.
pub struct BpfStats {
    previous: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub fn enable() -> Result<Self> {
        let previous =
            std::fs::read_to_string(BPF_STATS).context("reading bpf_stats_enabled (root?)")?;
        std::fs::write(BPF_STATS, "1").context("enabling bpf_stats_enabled (root?)")?;
        Ok(Self { previous })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, self.previous.trim());
    }
}

/// Which tool a [`Traced`] is, and so how it reports its losses.
enum Kind {
    /// `tracer stream`: a `lost N` summary on stderr at exit.
    Stream,
    /// `tracer agent`: `tracer_lost_events_total` on its metrics endpoint.
    Agent(SocketAddr),
    /// libbpf-tools: `lost N events on CPU #C` lines on stderr.
    Peer,
}

/// The agent's default `--refresh`: its loss counters are read from the kernel that often.
const AGENT_REFRESH: Duration = Duration::from_secs(5);

/// How long every tracing process runs before the workload starts.
const SETTLE: Duration = Duration::from_secs(3);

/// A tracing process running while the workload runs.
pub struct Traced {
    child: Child,
    kind: Kind,
    stderr: mpsc::Receiver<String>,
    /// Ids of the BPF programs it loaded (those that appeared after it started).
    progs: Vec<u64>,
}

fn prog_list() -> Result<Vec<Value>> {
    let out =
        crate::cmd::output("bpftool", &["prog", "show", "--json"]).context("bpftool prog show")?;
    Ok(serde_json::from_str::<Value>(&out)?
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// Programs loaded since `before` was taken: those of the process started in between.
fn new_progs(before: &[u64]) -> Result<Vec<u64>> {
    Ok(prog_ids()?
        .into_iter()
        .filter(|id| !before.contains(id))
        .collect())
}

fn prog_ids() -> Result<Vec<u64>> {
    Ok(prog_list()?
        .iter()
        .filter_map(|p| p["id"].as_u64())
        .collect())
}

pub fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().expect("piped stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

impl Traced {
    /// `tracer stream ARGS`, stdout to `out` or /dev/null.
    pub fn stream(tracer: &str, args: &[&str], out: Option<&Path>) -> Result<Self> {
        let stdout = match out {
            Some(p) => Stdio::from(std::fs::File::create(p)?),
            None => Stdio::null(),
        };
        let mut cmd = Command::new(tracer);
        cmd.arg("stream").args(args).stdout(stdout);
        Self::ours(cmd, "streaming", Kind::Stream)
    }

    /// `tracer record -o FILE ARGS`: its exit summary has the same `lost N` as the stream's.
    pub fn record(tracer: &str, file: &Path, args: &[&str]) -> Result<Self> {
        let mut cmd = Command::new(tracer);
        cmd.arg("record")
            .arg("-o")
            .arg(file)
            .args(args)
            .stdout(Stdio::null());
        Self::ours(cmd, "recording to", Kind::Stream)
    }

    /// `tracer agent ARGS` (its defaults when empty), serving on `addr`.
    pub fn agent(tracer: &str, addr: SocketAddr, args: &[&str]) -> Result<Self> {
        let mut cmd = Command::new(tracer);
        cmd.args(["agent", "--metrics-addr", &addr.to_string()])
            .args(args)
            .stdout(Stdio::null());
        Self::ours(cmd, "serving", Kind::Agent(addr))
    }

    /// Starts one of our commands and waits for the stderr line that says it is tracing.
    fn ours(mut cmd: Command, ready: &str, kind: Kind) -> Result<Self> {
        let before = prog_ids()?;
        let mut child = cmd.stderr(Stdio::piped()).spawn()?;
        let stderr = stderr_lines(&mut child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let line = stderr
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .context("tracer did not start")?;
            if line.contains(ready) {
                break;
            }
            if line.contains("error") {
                bail!("tracer: {line}");
            }
        }
        let progs = new_progs(&before)?;
        // Like the peers below: measure the steady state, not the first seconds of a fresh
        // process (cold maps and ring, its first refresh), which cost up to ~80% more per event.
        std::thread::sleep(SETTLE);
        Ok(Self {
            child,
            kind,
            stderr,
            progs,
        })
    }

    pub fn peer(program: &str, args: &[&str]) -> Result<Self> {
        let before = prog_ids()?;
        let mut child = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("{program} (Debian package libbpf-tools)"))?;
        let stderr = stderr_lines(&mut child);
        // libbpf-tools print nothing when attached; give them time to load, attach and settle.
        std::thread::sleep(SETTLE);
        if let Some(status) = child.try_wait()? {
            bail!("{program} exited at start: {status}");
        }
        let progs = new_progs(&before)?;
        Ok(Self {
            child,
            kind: Kind::Peer,
            stderr,
            progs,
        })
    }

    /// `bpftrace -e PROGRAM`, its maps as large as the agent's socket map.
    pub fn bpftrace(program: &str) -> Result<Self> {
        Self::peer(
            "env",
            &["BPFTRACE_MAP_KEYS_MAX=262144", "bpftrace", "-e", program],
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it (SIGINT) and returns the events it says it lost.
    pub fn stop(mut self) -> Result<Lost> {
        let mut lost = Lost::default();
        if let Kind::Agent(addr) = self.kind {
            // Let one refresh read the kernel's counters for the last events, then scrape.
            std::thread::sleep(AGENT_REFRESH + Duration::from_millis(300));
            let (status, text) = super::http::get(addr, "/metrics", Duration::from_secs(10))
                .context("scraping the agent's /metrics")?;
            if status != 200 {
                bail!("agent /metrics answered {status}: {}", text.trim());
            }
            lost = super::http::lost_from_metrics(&text);
        }
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("tracing process did not stop");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_millis(300)) {
            match self.kind {
                Kind::Stream => lost += ours_lost(&line),
                Kind::Agent(_) => {}
                Kind::Peer => lost.total += peer_lost(&line),
            }
        }
        Ok(lost)
    }
}

/// `tracer: N events (...); lost L (cause=N ...)`.
fn ours_lost(line: &str) -> Lost {
    let Some((_, rest)) = line.split_once("; lost ") else {
        return Lost::default();
    };
    let cause = |name: &str| {
        rest.split([' ', '(', ')'])
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0.0)
    };
    Lost {
        total: rest
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0),
        undelivered: cause(super::http::UNDELIVERED),
    }
}

/// libbpf-tools: `lost N events on CPU #C`.
fn peer_lost(line: &str) -> f64 {
    line.strip_prefix("lost ")
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Run time and run count of each program (by id) that handles `inet_sock_set_state`.
#[derive(Debug, Default, Clone)]
struct ProgTotals(BTreeMap<u64, (f64, f64)>);

impl ProgTotals {
    /// Several programs on the same tracepoint (ours: the classic one and its raw-tracepoint
    /// catcher) each run once per event: per event, their run times add up, the event count is
    /// the largest run count. Also returns the costliest single program's ns per run.
    fn since(&self, before: &Self) -> (f64, f64, Option<f64>) {
        let deltas: Vec<(f64, f64)> = self
            .0
            .iter()
            .map(|(id, &(t, c))| {
                let (t0, c0) = before.0.get(id).copied().unwrap_or_default();
                (t - t0, c - c0)
            })
            .collect();
        let time: f64 = deltas.iter().map(|(t, _)| t).sum();
        let runs = deltas.iter().map(|(_, c)| *c).fold(0.0, f64::max);
        let costliest = deltas
            .iter()
            .filter(|(_, c)| *c > 0.0)
            .map(|(t, c)| t / c)
            .reduce(f64::max);
        (time, runs, costliest)
    }
}

fn state_prog_totals(ids: &[u64]) -> Result<ProgTotals> {
    let mut t = ProgTotals::default();
    for p in prog_list()? {
        let id = p["id"].as_u64().filter(|id| ids.contains(id));
        let name = p["name"].as_str().unwrap_or_default();
        if let Some(id) = id
            && (name.contains("set_s") || name.contains("inet_sock"))
        {
            let time = p["run_time_ns"].as_f64().unwrap_or(0.0);
            t.0.insert(id, (time, p["run_cnt"].as_f64().unwrap_or(0.0)));
        }
    }
    Ok(t)
}

fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_comm = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, i.e. 12 and 13 after the comm.
    let ticks: f64 = fields
        .get(11..13)
        .into_iter()
        .flatten()
        .filter_map(|f| f.parse::<f64>().ok())
        .sum();
    Ok(ticks / clock_ticks_per_second())
}

/// The unit of /proc's CPU times.
fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// CPU seconds every CPU of the machine has spent busy (user, system, interrupts), from
/// /proc/stat. Steal time is left out: the vCPU was not running then.
pub fn machine_busy_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    machine_busy_from(&stat).context("no cpu line in /proc/stat")
}

fn machine_busy_from(stat: &str) -> Option<f64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy = [0, 1, 2, 5, 6]
        .iter()
        .filter_map(|&i| f.get(i))
        .sum::<f64>();
    Some(busy / clock_ticks_per_second())
}

fn peak_rss_kib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmHWM")
}

pub struct Usage {
    pub ns_per_event: Option<f64>,
    /// The costliest single program's ns per run (the per-event target applies to each).
    pub costliest_ns: Option<f64>,
    pub events: f64,
    pub cpu_s: f64,
    pub peak_rss_kib: f64,
}

/// Kernel program totals and CPU time at the start of a measurement.
pub struct Sampler {
    progs: ProgTotals,
    cpu_s: f64,
}

impl Sampler {
    pub fn start(t: &Traced) -> Result<Self> {
        Ok(Self {
            progs: state_prog_totals(&t.progs)?,
            cpu_s: cpu_seconds(t.pid())?,
        })
    }

    pub fn finish(self, t: &Traced) -> Result<Usage> {
        let (time, runs, costliest_ns) = state_prog_totals(&t.progs)?.since(&self.progs);
        Ok(Usage {
            ns_per_event: (runs > 0.0).then(|| time / runs),
            costliest_ns,
            events: runs,
            cpu_s: cpu_seconds(t.pid())? - self.cpu_s,
            peak_rss_kib: peak_rss_kib(t.pid())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_costs_add_per_event_and_the_costliest_is_kept() {
        let before = ProgTotals(BTreeMap::from([(1, (1_000.0, 10.0)), (2, (50.0, 10.0))]));
        let now = ProgTotals(BTreeMap::from([
            (1, (31_000.0, 110.0)),
            (2, (4_050.0, 110.0)),
            (3, (0.0, 0.0)),
        ]));
        let (time, runs, costliest) = now.since(&before);
        assert_eq!((time, runs, costliest), (34_000.0, 100.0, Some(300.0)));
        assert_eq!(ProgTotals::default().since(&before), (0.0, 0.0, None));
    }

    #[test]
    fn machine_busy_counts_user_system_and_interrupts() {
        let hz = clock_ticks_per_second();
        let stat = "cpu  100 1 50 9000 7 3 20 400 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(machine_busy_from(stat), Some(174.0 / hz));
        assert_eq!(machine_busy_from("intr 1\n"), None);
    }

    #[test]
    fn parses_loss_reports() {
        assert_eq!(
            ours_lost(
                "tracer: 10 events (state 10, retransmit 0); lost 3 (ringbuf_full=1 \
                 kernel_undelivered=2 output_queue_full=0)"
            ),
            Lost {
                total: 3.0,
                undelivered: 2.0
            }
        );
        assert_eq!(ours_lost("tracer: attached x"), Lost::default());
        assert_eq!(peer_lost("lost 459 events on CPU #1"), 459.0);
        assert_eq!(peer_lost("something else"), 0.0);
    }
}
