//! `cargo xtask bench`: overhead, per-event kernel cost, lost events and resource use of every
//! tracing configuration, measured interleaved in one run so machine drift cancels out.

mod http;
mod latency;
mod netns;
mod procs;
mod report;
mod scale;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::Args;
use serde_json::Value;

use crate::{cmd, root, setup};
use procs::{Sampler, Traced};

#[derive(Args)]
pub struct BenchArgs {
    /// Rounds of every configuration (results are median, min and max over rounds).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds of churn per measurement.
    #[arg(long, default_value_t = 5)]
    pub secs: u64,
    /// Skip the peers (libbpf-tools tcpstates and tcplife) and the bpftrace reference programs.
    #[arg(long)]
    pub no_peers: bool,
    /// ESTABLISHED sockets held for the start-up and query measurements (0 skips them).
    #[arg(long, default_value_t = 100_000)]
    pub sockets: u64,
    /// Where to write the markdown report.
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub out: PathBuf,
}

/// One way of running the churn workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Config {
    Baseline,
    Agent,
    /// The agent with owners worked out in the reader: less kernel time per transition, more
    /// agent CPU per event.
    AgentUserspace,
    Record,
    StreamJsonNull,
    StreamJsonNullAdaptive,
    StreamJsonFile,
    Tcpstates,
    Tcplife,
    /// References for what any design on these tracepoints must pay: empty programs on the
    /// tracepoints the agent uses, and a program that only keeps one hash entry per socket
    /// (updated on every transition, deleted at CLOSE), the least that owner attribution and
    /// time-in-state need.
    FloorEmpty,
    FloorSockMap,
    /// One client thread: a connect/close loop that leaves the second core some room, as a
    /// production host's own work does.
    BaselineOneLoop,
    AgentOneLoop,
    /// One loop offered the handbook's rate (22k connections/s): both runs keep up, and the
    /// cost of tracing shows in the machine's CPU instead.
    BaselinePaced,
    AgentPaced,
    /// The same paced loop with owners worked out in the reader.
    AgentUserspacePaced,
}

impl Config {
    pub fn name(self) -> &'static str {
        match self {
            Self::Baseline => "untraced (baseline)",
            Self::Agent => "tracer agent (defaults)",
            Self::AgentUserspace => "tracer agent --attribution userspace",
            Self::BaselineOneLoop => "one loop: untraced (its baseline)",
            Self::AgentOneLoop => "one loop: tracer agent (defaults)",
            Self::BaselinePaced => "one loop at 22k/s: untraced (its baseline)",
            Self::AgentPaced => "one loop at 22k/s: tracer agent (defaults)",
            Self::AgentUserspacePaced => "one loop at 22k/s: tracer agent --attribution userspace",
            Self::Record => "tracer record -o file (zstd, defaults)",
            Self::StreamJsonNull => "tracer stream --json > /dev/null (batched wakeup, default)",
            Self::StreamJsonNullAdaptive => "tracer stream --json --wakeup adaptive > /dev/null",
            Self::StreamJsonFile => "tracer stream --json > file",
            Self::Tcpstates => "libbpf-tools tcpstates > /dev/null",
            Self::Tcplife => "libbpf-tools tcplife > /dev/null",
            Self::FloorEmpty => "reference: empty programs on the agent's tracepoints (bpftrace)",
            Self::FloorSockMap => "reference: one hash entry per socket, nothing else (bpftrace)",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::Agent => "agent",
            Self::AgentUserspace => "agent_userspace",
            Self::BaselineOneLoop => "baseline_one_loop",
            Self::AgentOneLoop => "agent_one_loop",
            Self::BaselinePaced => "baseline_paced",
            Self::AgentPaced => "agent_paced",
            Self::AgentUserspacePaced => "agent_userspace_paced",
            Self::Record => "record",
            Self::StreamJsonNull => "stream_json_null",
            Self::StreamJsonNullAdaptive => "stream_json_null_adaptive",
            Self::StreamJsonFile => "stream_json_file",
            Self::Tcpstates => "tcpstates",
            Self::Tcplife => "tcplife",
            Self::FloorEmpty => "floor_empty",
            Self::FloorSockMap => "floor_sock_map",
        }
    }

    /// Client threads of the churn: 2 saturate both cores; 1 is one connect/close loop.
    pub fn threads(self) -> u32 {
        match self {
            Self::BaselineOneLoop
            | Self::AgentOneLoop
            | Self::BaselinePaced
            | Self::AgentPaced
            | Self::AgentUserspacePaced => 1,
            _ => 2,
        }
    }

    /// Offered connections per second (`None`: as fast as the loop goes).
    pub fn rate(self) -> Option<f64> {
        matches!(
            self,
            Self::BaselinePaced | Self::AgentPaced | Self::AgentUserspacePaced
        )
        .then_some(PACED_RATE)
    }

    /// The untraced run of the same workload.
    pub fn baseline(self) -> Self {
        match (self.threads(), self.rate()) {
            (_, Some(_)) => Self::BaselinePaced,
            (1, None) => Self::BaselineOneLoop,
            _ => Self::Baseline,
        }
    }

    pub fn is_baseline(self) -> bool {
        self == self.baseline()
    }
}

/// Empty programs on the three tracepoints the agent's per-event programs use.
const FLOOR_EMPTY: &str = "tracepoint:sock:inet_sock_set_state {} \
     tracepoint:sock:sock_send_length {} tracepoint:sock:sock_recv_length {}";

/// One hash entry per socket, written on every transition and deleted when the socket reaches
/// CLOSE (7), as the agent's socket map is; no ring buffer, no owner, no filter.
const FLOOR_SOCK_MAP: &str = "tracepoint:sock:inet_sock_set_state { \
     if (args->newstate == 7) { delete(@sk[args->skaddr]); } \
     else { @sk[args->skaddr] = nsecs; } } END { clear(@sk); }";

/// The handbook's measured connect/close loop rate on these machines.
const PACED_RATE: f64 = 22_000.0;

/// What one measurement produced.
#[derive(Debug, Default, Clone)]
pub struct Sample {
    /// Connections per second with run-time statistics off, as deployed.
    pub rate: f64,
    /// `rate` over the baseline's in the same round.
    pub ratio: Option<f64>,
    /// Connections per second of the second run, with `kernel.bpf_stats_enabled=1`.
    pub rate_with_stats: Option<f64>,
    pub connections: f64,
    /// CPU time of the whole machine (every process, kernel and interrupts) per connection, µs.
    pub cpu_us_per_connection: Option<f64>,
    /// Kernel ns per state change, summed over the tool's programs on that tracepoint.
    pub ns_per_event: Option<f64>,
    /// Kernel ns per run of the costliest single program on that tracepoint.
    pub costliest_ns: Option<f64>,
    pub events: Option<f64>,
    pub lost: Option<f64>,
    /// Of `lost`, the hits on which the kernel ran no BPF program at all.
    pub undelivered: Option<f64>,
    pub cpu_s_per_mevent: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    /// `tracer record`: capture bytes on disk per kernel event.
    pub capture_bytes_per_event: Option<f64>,
}

pub fn bin(name: &str) -> String {
    root()
        .join("target/release")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn churn(threads: u32, secs: u64, port: u16, rate: Option<f64>) -> Result<Value> {
    let (port, threads, secs) = (port.to_string(), threads.to_string(), secs.to_string());
    let rate = rate.map(|r| r.to_string());
    let mut args = vec![
        "churn",
        "--addr",
        "127.0.0.1",
        "--port",
        &port,
        "--threads",
        &threads,
        "--duration-secs",
        &secs,
        "--dst-spread",
        "16",
    ];
    if let Some(r) = &rate {
        args.extend(["--rate", r]);
    }
    let out = cmd::output(&bin("tracer-loadgen"), &args).context("tracer-loadgen churn failed")?;
    serde_json::from_str(out.lines().last().unwrap_or_default()).context("churn output")
}

/// One run of `config` under the churn. With `stats`, the kernel's run-time statistics are on
/// and the costs are read; without, only the rate counts (the statistics themselves slow every
/// program down, the peers' as much as ours).
fn measure(config: Config, secs: u64, port: u16, scratch: &Path, stats: bool) -> Result<Sample> {
    let p = port.to_string();
    let tracer = bin("tracer");
    let file = scratch.join("stream.jsonl");
    let traced = match config {
        Config::Baseline | Config::BaselineOneLoop | Config::BaselinePaced => None,
        // Metrics port below the churn's ports and the ephemeral range (32768..), so no
        // connection holds it; the agent traces everything, as deployed.
        Config::Agent | Config::AgentOneLoop | Config::AgentPaced => Some(Traced::agent(
            &tracer,
            ([127, 0, 0, 1], port - 1_000).into(),
            &[],
        )?),
        Config::AgentUserspace | Config::AgentUserspacePaced => Some(Traced::agent(
            &tracer,
            ([127, 0, 0, 1], port - 1_000).into(),
            &["--attribution", "userspace"],
        )?),
        Config::StreamJsonNull => Some(Traced::stream(&tracer, &["--json", "--port", &p], None)?),
        Config::StreamJsonNullAdaptive => Some(Traced::stream(
            &tracer,
            &["--json", "--port", &p, "--wakeup", "adaptive"],
            None,
        )?),
        Config::StreamJsonFile => Some(Traced::stream(
            &tracer,
            &["--json", "--port", &p],
            Some(&file),
        )?),
        Config::Record => Some(Traced::record(
            &tracer,
            &scratch.join("capture.trc"),
            &["--port", &p],
        )?),
        Config::Tcpstates => Some(Traced::peer("tcpstates", &[])?),
        Config::Tcplife => Some(Traced::peer("tcplife", &[])?),
        Config::FloorEmpty => Some(Traced::bpftrace(FLOOR_EMPTY)?),
        Config::FloorSockMap => Some(Traced::bpftrace(FLOOR_SOCK_MAP)?),
    };
    let _stats = stats.then(procs::BpfStats::enable).transpose()?;
    let sampler = traced.as_ref().map(Sampler::start).transpose()?;
    let busy = procs::machine_busy_seconds()?;
    let result = churn(config.threads(), secs, port, config.rate())?;
    let busy = procs::machine_busy_seconds()? - busy;
    let connections = result["connections"].as_f64().unwrap_or(0.0);
    let mut sample = Sample {
        rate: result["rate"].as_f64().unwrap_or(0.0),
        connections,
        cpu_us_per_connection: (connections > 0.0).then(|| busy / connections * 1e6),
        ..Sample::default()
    };
    if let (Some(traced), Some(sampler)) = (traced, sampler) {
        let usage = sampler.finish(&traced)?;
        let lost = traced.stop()?;
        sample.ns_per_event = usage.ns_per_event;
        sample.costliest_ns = usage.costliest_ns;
        sample.events = Some(usage.events);
        sample.lost = Some(lost.total);
        sample.undelivered = Some(lost.undelivered);
        sample.peak_rss_mib = Some(usage.peak_rss_kib / 1024.0);
        if usage.events > 0.0 {
            sample.cpu_s_per_mevent = Some(usage.cpu_s / usage.events * 1e6);
            if config == Config::Record {
                let bytes = std::fs::metadata(scratch.join("capture.trc"))?.len();
                sample.capture_bytes_per_event = Some(bytes as f64 / usage.events);
            }
        }
    }
    let _ = std::fs::remove_file(scratch.join("capture.trc"));
    let _ = std::fs::remove_file(&file);
    Ok(sample)
}

pub fn run(args: &BenchArgs) -> Result<()> {
    setup::check()?;
    cmd::cargo(&["build", "--release"])?;
    let started = Instant::now();
    let scratch = std::env::temp_dir().join(format!("tracer-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;

    // Before the churn, whose TIME_WAIT sockets would linger in the timings (they run in their
    // own namespace, but share the host's CPUs and socket hash tables).
    let scale = if args.sockets > 0 {
        Some(scale::run(args.sockets, args.rounds)?)
    } else {
        None
    };

    let mut configs = vec![
        Config::Baseline,
        Config::Agent,
        Config::AgentUserspace,
        Config::Record,
        Config::StreamJsonNull,
        Config::StreamJsonNullAdaptive,
        Config::StreamJsonFile,
    ];
    if !args.no_peers {
        configs.extend([
            Config::Tcpstates,
            Config::Tcplife,
            Config::FloorEmpty,
            Config::FloorSockMap,
        ]);
    }
    configs.extend([
        Config::BaselineOneLoop,
        Config::AgentOneLoop,
        Config::BaselinePaced,
        Config::AgentPaced,
        Config::AgentUserspacePaced,
    ]);
    let mut samples: BTreeMap<Config, Vec<Sample>> = BTreeMap::new();
    let mut port = 31_000u16;
    for round in 0..args.rounds {
        let mut baselines = BTreeMap::new();
        for &config in &configs {
            port += 1;
            eprintln!(
                "xtask bench: round {}/{}: {}",
                round + 1,
                args.rounds,
                config.name()
            );
            let mut s = measure(config, args.secs, port, &scratch, false)
                .with_context(|| format!("measuring {}", config.name()))?;
            if config.is_baseline() {
                baselines.insert(config, s.rate);
            } else {
                // The costs come from a second run with the statistics on.
                std::thread::sleep(Duration::from_millis(500));
                port += 1;
                let deployed = s;
                s = measure(config, args.secs, port, &scratch, true)
                    .with_context(|| format!("measuring {} (costs)", config.name()))?;
                s.rate_with_stats = Some(s.rate);
                s.rate = deployed.rate;
                s.cpu_us_per_connection = deployed.cpu_us_per_connection;
            }
            let baseline = baselines.get(&config.baseline()).copied();
            s.ratio = baseline.filter(|&b| b > 0.0).map(|b| s.rate / b);
            eprintln!(
                "  {:.0} conn/s, kernel {:?} ns/event, lost {:?}",
                s.rate, s.ns_per_event, s.lost
            );
            samples.entry(config).or_default().push(s);
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let latency = [
        ("adaptive", &["--wakeup", "adaptive"][..]),
        ("batched", &["--wakeup", "batched"]),
    ]
    .iter()
    .map(|(name, flags)| Ok((*name, latency::delivery_latency(&bin("tracer"), flags, 20)?)))
    .collect::<Result<Vec<_>>>()?;
    let _ = std::fs::remove_dir_all(&scratch);

    let report = report::Report {
        args,
        samples: &samples,
        latency: &latency,
        scale: scale.as_ref(),
        elapsed: started.elapsed(),
    };
    let md = report.markdown();
    std::fs::write(root().join(&args.out), &md)?;
    let json_path = root().join(args.out.with_extension("json"));
    std::fs::write(&json_path, serde_json::to_string_pretty(&report.json())?)?;
    println!("{md}");
    eprintln!(
        "xtask bench: wrote {} and {} in {:.0?}",
        args.out.display(),
        json_path.display(),
        started.elapsed()
    );
    Ok(())
}
