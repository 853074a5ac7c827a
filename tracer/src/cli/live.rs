//! Options of the aggregating commands: `stats`, `top` and `agent`.

use std::{net::SocketAddr, time::Duration};

use clap::Args;
use tracer_common::{Config, WakeupMode};

use super::{AttributionMode, Wakeup, parse_ring_size, parse_size};
use crate::{aggregate::view::ProcSort, live::LiveOptions, probes::ProbeOptions};

/// Kernel and table sizing shared by the aggregating commands.
#[derive(Debug, Clone, Args)]
pub struct LiveArgs {
    /// Ring buffer size, shared by the per-CPU rings: a power of two of at least 4K, with an
    /// optional K/M/G suffix.
    /// [default: 4M for stats, top and agent, which drain it in-process; 16M for record, whose
    /// drain waits on the disk]
    #[arg(long, value_name = "BYTES", value_parser = parse_ring_size)]
    pub ring_size: Option<u32>,
    /// Capacity of the kernel's socket table (owners, bytes, retransmits), in sets of 7.
    #[arg(long, default_value_t = 262_144, value_parser = clap::value_parser!(u32).range(1024..=16_777_216))]
    pub max_sockets: u32,
    /// Capacity of the kernel's per-process byte map.
    #[arg(long, default_value_t = 16_384, value_parser = clap::value_parser!(u32).range(64..=1_048_576))]
    pub max_processes: u32,
    /// Capacity of the connection table (full sockets tracked at once).
    #[arg(long, default_value_t = 1_048_576, value_parser = clap::value_parser!(u64).range(1024..=67_108_864))]
    pub max_connections: u64,
    /// When the kernel wakes the reader.
    #[arg(long, value_enum, default_value_t = Wakeup::Batched)]
    pub wakeup: Wakeup,
    /// Where owners and times in state are worked out (see README, "Owner attribution").
    #[arg(long, value_enum, default_value_t)]
    pub attribution: AttributionMode,
    /// With --wakeup batched: pending bytes that force a wakeup.
    #[arg(long, value_name = "BYTES", default_value = "256K", value_parser = parse_size)]
    pub wakeup_bytes: u32,
}

/// Ring buffer of the commands that aggregate in-process. The reader is woken every
/// `--wakeup-bytes` (256K) and drains into memory, so 4M holds about 50 ms of full loopback
/// churn (~600k records/s, ~80 MB/s) even if the reader gets no CPU meanwhile, and costs
/// 8 MiB of resident memory (the ring is mapped twice) instead of 32.
pub const AGGREGATING_RING: u32 = 4 << 20;
/// Ring buffer of `record`, whose drain also compresses and writes to disk.
pub const RECORDING_RING: u32 = 16 << 20;

impl LiveArgs {
    /// `default_ring` applies when `--ring-size` is not given.
    pub fn options(&self, duration: Option<Duration>, default_ring: u32) -> LiveOptions {
        LiveOptions {
            probes: ProbeOptions {
                config: Config {
                    wakeup_mode: match self.wakeup {
                        Wakeup::Adaptive => WakeupMode::Adaptive as u32,
                        Wakeup::Batched => WakeupMode::Batched as u32,
                    },
                    wakeup_bytes: self.wakeup_bytes,
                    ..Config::DEFAULT
                },
                ring_bytes: self.ring_size.unwrap_or(default_ring),
                max_sockets: self.max_sockets,
                max_processes: self.max_processes,
                attribution: self.attribution,
                ..ProbeOptions::default()
            },
            wakeup: self.wakeup,
            duration,
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            announce: true,
        }
    }
}

/// Seconds, at least 0.1 and at most a day.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(secs.is_finite() && (0.1..=86_400.0).contains(&secs)) {
        return Err(format!("`{s}` must be between 0.1 and 86400 seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[derive(Debug, Clone, Args)]
pub struct StatsArgs {
    /// Seconds between reports.
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = parse_interval)]
    pub interval: Duration,
    /// Stop after this many reports.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// One JSON object per report.
    #[arg(long)]
    pub json: bool,
    /// Rows per ranking (processes, peers).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub top: u64,
    /// How processes are ranked.
    #[arg(long, value_enum, default_value_t = ProcSort::Bytes)]
    pub sort: ProcSort,
    /// Ask a running `tracer agent` at this address (e.g. 127.0.0.1:9464) instead of attaching:
    /// no programs are loaded and the kernel sizing options are ignored.
    #[arg(long, value_name = "ADDR")]
    pub agent: Option<SocketAddr>,
    #[command(flatten)]
    pub live: LiveArgs,
}

#[derive(Debug, Clone, Args)]
pub struct TopArgs {
    /// Seconds between screen refreshes.
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = parse_interval)]
    pub interval: Duration,
    /// How processes are ranked at start (the `s` key toggles).
    #[arg(long, value_enum, default_value_t = ProcSort::Bytes)]
    pub sort: ProcSort,
    #[command(flatten)]
    pub live: LiveArgs,
}

/// How the agent writes its log lines (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// Where to serve /metrics (Prometheus) and /stats (JSON). Loopback by default: exposing it
    /// beyond the host is a deliberate choice.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,
    /// Seconds between reconciliations (timewait and request counts, listeners, per-process
    /// bytes, loss counters).
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_interval)]
    pub refresh: Duration,
    /// Bound of the per-process and per-listener label sets, and the default rows of /stats.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub top: u64,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Turn on the kernel's BPF run-time statistics while the agent runs (tracer_program_*
    /// metrics). Costs about 20 ns per program run; needs CAP_SYS_ADMIN.
    #[arg(long)]
    pub bpf_stats: bool,
    /// Stop after this many seconds (fractions allowed).
    #[arg(long, value_name = "SECS", value_parser = super::parse_duration)]
    pub duration: Option<Duration>,
    #[command(flatten)]
    pub anomaly: super::AnomalyArgs,
    #[command(flatten)]
    pub flight: super::capture::FlightArgs,
    #[command(flatten)]
    pub live: LiveArgs,
}
