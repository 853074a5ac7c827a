//! Command-line interface. Every value is validated by its parser, so a bad flag is a clap error
//! (exit code 2) naming the flag and the problem.

use std::{net::IpAddr, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

pub mod anomaly;
pub mod capture;
pub mod live;
pub use anomaly::{AnomalyArgs, ConfigArgs};
pub use capture::{ExportArgs, RecordArgs, ReplayArgs};
pub use live::{AgentArgs, LiveArgs, LogFormat, StatsArgs, TopArgs};
use tracer_common::{AF_INET, AF_INET6, COMM_LEN, Config, EventKind, Filter, WakeupMode, state};

#[derive(Debug, Parser)]
#[command(
    name = "tracer",
    version,
    about = "Real-time TCP connection tracer (eBPF): every state transition and retransmission, \
             with the owning process",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of the default subcommand, `stream`.
    #[command(flatten)]
    pub stream: StreamArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream TCP state transitions, retransmissions and connection closes to stdout (the
    /// default).
    Stream(StreamArgs),
    /// Per-state connection counts (netstat/ss -s style), top processes, listeners and peers,
    /// every --interval.
    Stats(StatsArgs),
    /// Live terminal dashboard
    Top(TopArgs),
    /// Long-running agent: Prometheus metrics on /metrics and the stats view on /stats.
    Agent(AgentArgs),
    /// Record everything the stream would print (plus state snapshots) to a capture file.
    Record(RecordArgs),
    /// Print a capture as the live commands would: the stream (columns or --json) or --stats.
    Replay(ReplayArgs),
    /// Convert a capture to JSON lines or CSV for other tools.
    Export(ExportArgs),
    /// Anomaly detection configuration: print the defaults or check a file.
    Config(ConfigArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EventType {
    State,
    Retransmit,
    /// Close records of connections (built from transitions into CLOSE).
    Close,
    /// Anomaly records (turns detection on).
    Anomaly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Wakeup {
    /// One ring-buffer record per event; wake the reader whenever it has caught up (the ring
    /// buffer's own policy).
    Adaptive,
    /// Write events 16 to a ring-buffer record per CPU; never wake the reader for one record:
    /// wake it when --wakeup-bytes are pending (checked every 64 events per CPU, forced at most
    /// every 2 ms per CPU) and drain every 50 ms, flushing partial batches first.
    Batched,
}

/// Where each event's owner, time in state and lifespan are worked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum AttributionMode {
    /// In the kernel programs: owner and state filters run before any ring-buffer space is
    /// taken, a lost event loses nothing else, and the agent does the least work per event.
    #[default]
    Kernel,
    /// In the reader, from the time-ordered stream: the transition programs keep no
    /// per-socket state and cost the traced connections about 15-25% less in the kernel, and
    /// the agent 35-60% more CPU per event (needs `sock:sock_send_length`, 6.4 and later).
    Userspace,
}

#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    /// Only sockets owned by this process id.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub pid: Option<u32>,
    /// Only sockets owned by a process with this command name (exact, at most 15 bytes).
    #[arg(long, value_parser = parse_comm)]
    pub comm: Option<[u8; COMM_LEN]>,
    /// Only connections with this port on either side.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// Only connections with this local port.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub lport: Option<u16>,
    /// Only connections with this remote port.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub rport: Option<u16>,
    /// Only connections with this address on either side (an IPv4 address also matches its
    /// IPv4-mapped form on IPv6 sockets).
    #[arg(long)]
    pub addr: Option<IpAddr>,
    /// Only IPv4 sockets.
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// Only IPv6 sockets.
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,
    /// Only transitions into or out of these states (netstat or ss names, comma separated or
    /// repeated), e.g. `--state CLOSE_WAIT,LAST-ACK`.
    #[arg(long, value_delimiter = ',', value_parser = parse_state)]
    pub state: Vec<u8>,
    /// Only these event types (comma separated or repeated).
    #[arg(long = "type", value_delimiter = ',', value_enum)]
    pub types: Vec<EventType>,
}

#[derive(Debug, Clone, Args)]
pub struct StreamArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// One JSON object per line instead of columns.
    #[arg(long)]
    pub json: bool,
    /// Detect anomalies (CLOSE_WAIT leaks, SYN floods, ...) and print them as `anomaly`
    /// records among the events. Aggregates every connection, as `stats` does.
    #[arg(long)]
    pub anomalies: bool,
    #[command(flatten)]
    pub anomaly: AnomalyArgs,
    /// Stop after this many seconds (fractions allowed).
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Ring buffer size, shared by the per-CPU rings: a power of two of at least 4K, with an
    /// optional K/M/G suffix.
    #[arg(long, value_name = "BYTES", default_value = "16M", value_parser = parse_ring_size)]
    pub ring_size: u32,
    /// Capacity of the kernel's socket table (sockets tracked at once), in sets of 7.
    #[arg(long, default_value_t = 262_144, value_parser = clap::value_parser!(u32).range(1024..=16_777_216))]
    pub max_sockets: u32,
    /// When the kernel wakes the reader (batched is cheaper per event; see BENCHMARKS.md).
    #[arg(long, value_enum, default_value_t = Wakeup::Batched)]
    pub wakeup: Wakeup,
    /// Where owners and times in state are worked out (see README, "Owner attribution").
    #[arg(long, value_enum, default_value_t)]
    pub attribution: AttributionMode,
    /// With --wakeup batched: pending bytes that force a wakeup.
    #[arg(long, value_name = "BYTES", default_value = "256K", value_parser = parse_size)]
    pub wakeup_bytes: u32,
    /// Events waiting for stdout at most; beyond that they are dropped and counted as
    /// `output_queue_full`, so a slow reader never stalls the ring-buffer drain.
    #[arg(long, value_name = "EVENTS", default_value_t = crate::outqueue::DEFAULT_CAPACITY,
          value_parser = output_queue_parser())]
    pub output_queue: u32,
}

/// `--output-queue` (`stream`, `record --print`): 1 to 16M events.
pub(crate) fn output_queue_parser() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..=16_777_216)
}

fn parse_comm(s: &str) -> Result<[u8; COMM_LEN], String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() >= COMM_LEN {
        return Err(format!(
            "`{s}` is {} bytes; the kernel keeps at most {} bytes of a command name",
            s.len(),
            COMM_LEN - 1
        ));
    }
    if s.bytes().any(|b| b == 0) {
        return Err("must not contain NUL".into());
    }
    let mut out = [0u8; COMM_LEN];
    out[..s.len()].copy_from_slice(s.as_bytes());
    Ok(out)
}

fn parse_state(s: &str) -> Result<u8, String> {
    state::from_name(s.trim()).ok_or_else(|| {
        format!(
            "unknown TCP state `{s}`; expected one of ESTABLISHED, SYN_SENT, SYN_RECV, FIN_WAIT1, \
             FIN_WAIT2, TIME_WAIT, CLOSE, CLOSE_WAIT, LAST_ACK, LISTEN, CLOSING, NEW_SYN_RECV"
        )
    })
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(secs.is_finite() && secs > 0.0 && secs <= 1e9) {
        return Err(format!("`{s}` must be a positive number of seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A size with an optional power-of-1024 suffix, one of `suffixes` (`b"KMG"`: K is 1024):
/// the number and its multiplier, for the caller to combine within its own bound.
pub(crate) fn size_parts(s: &str, suffixes: &[u8]) -> Result<(u64, u64), String> {
    let t = s.trim();
    let (digits, mult) = match t.bytes().last() {
        Some(c) if c.is_ascii_alphabetic() => {
            let Some(i) = suffixes.iter().position(|&u| u == c.to_ascii_uppercase()) else {
                let (last, rest) = suffixes.split_last().expect("at least one suffix");
                let rest: Vec<String> = rest.iter().map(|&u| char::from(u).to_string()).collect();
                return Err(format!(
                    "`{s}`: unknown size suffix `{}` (use {} or {})",
                    char::from(c),
                    rest.join(", "),
                    char::from(*last)
                ));
            };
            (&t[..t.len() - 1], 1u64 << (10 * (i + 1)))
        }
        _ => (t, 1),
    };
    let n: u64 = digits.parse().map_err(|_| format!("`{s}` is not a size"))?;
    Ok((n, mult))
}

/// `4096`, `64K`, `16M`, `1G` (powers of 1024).
pub fn parse_size(s: &str) -> Result<u32, String> {
    let (n, mult) = size_parts(s, b"KMG")?;
    u32::try_from(n.saturating_mul(mult)).map_err(|_| format!("`{s}` is larger than 2G"))
}

pub(crate) fn parse_ring_size(s: &str) -> Result<u32, String> {
    let n = parse_size(s)?;
    if n < 4096 || !n.is_power_of_two() {
        return Err(format!(
            "`{s}` must be a power of two of at least 4K (e.g. 16M)"
        ));
    }
    Ok(n)
}

impl FilterArgs {
    /// The kernel filter these flags describe.
    pub fn to_filter(&self) -> Filter {
        let mut f = Filter::ANY;
        if let Some(pid) = self.pid {
            f.flags |= Filter::PID;
            f.pid = pid;
        }
        if let Some(comm) = self.comm {
            f.flags |= Filter::COMM;
            f.comm = comm;
        }
        if let Some(p) = self.port {
            f.flags |= Filter::PORT;
            f.port = p;
        }
        if let Some(p) = self.lport {
            f.flags |= Filter::LPORT;
            f.lport = p;
        }
        if let Some(p) = self.rport {
            f.flags |= Filter::RPORT;
            f.rport = p;
        }
        if let Some(addr) = self.addr {
            f.flags |= Filter::ADDR;
            match addr {
                IpAddr::V4(a) => {
                    f.addr_family = AF_INET;
                    f.addr[..4].copy_from_slice(&a.octets());
                }
                IpAddr::V6(a) => {
                    f.addr_family = AF_INET6;
                    f.addr = a.octets();
                }
            }
        }
        if self.ipv4 || self.ipv6 {
            f.flags |= Filter::FAMILY;
            f.family = if self.ipv4 { AF_INET } else { AF_INET6 };
        }
        if !self.state.is_empty() {
            f.flags |= Filter::STATE;
            f.state_mask = self.state.iter().fold(0, |m, &s| m | state::bit(s));
        }
        if !self.types.is_empty() {
            f.flags |= Filter::KIND;
            for t in &self.types {
                let kind = match t {
                    EventType::State | EventType::Close => EventKind::State,
                    EventType::Retransmit => EventKind::Retransmit,
                    // Detection clears the kind filter: it needs every kind.
                    EventType::Anomaly => continue,
                };
                f.kinds |= 1 << kind as u32;
            }
        }
        f
    }

    pub fn wants(&self, t: EventType) -> bool {
        self.types.is_empty() || self.types.contains(&t)
    }

    /// Whether records of type `t` are printed while detecting anomalies: as [`Self::wants`],
    /// except that with only `--type anomaly` nothing else is.
    pub fn shows(&self, t: EventType) -> bool {
        self.wants(t) && (t == EventType::Anomaly || self.types != [EventType::Anomaly])
    }
}

impl StreamArgs {
    /// Whether anomaly detection runs.
    pub fn detects(&self) -> bool {
        self.anomalies || self.anomaly.given() || self.filter.types.contains(&EventType::Anomaly)
    }

    pub fn config(&self) -> Config {
        Config {
            filter: self.filter.to_filter(),
            wakeup_mode: match self.wakeup {
                Wakeup::Adaptive => WakeupMode::Adaptive as u32,
                Wakeup::Batched => WakeupMode::Batched as u32,
            },
            wakeup_bytes: self.wakeup_bytes,
            ..Config::DEFAULT
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("tracer").chain(args.iter().copied()))
    }

    fn stream(args: &[&str]) -> StreamArgs {
        match parse(args).unwrap() {
            Cli {
                command: Some(Command::Stream(s)),
                ..
            } => s,
            Cli {
                command: None,
                stream,
            } => stream,
            Cli {
                command: Some(other),
                ..
            } => panic!("expected stream, got {other:?}"),
        }
    }

    #[test]
    fn stream_is_the_default_subcommand() {
        let a = stream(&["--json", "--port", "80"]);
        assert!(a.json);
        let b = stream(&["stream", "--json", "--port", "80"]);
        assert_eq!(a.config(), b.config());
        assert_eq!(a.ring_size, 16 << 20);
    }

    /// The ring size `tracer agent ARGS` asks for when its command's default is `default`.
    fn agent_ring(args: &[&str], default: u32) -> u32 {
        match parse(&[&["agent"], args].concat()).unwrap() {
            Cli {
                command: Some(Command::Agent(a)),
                ..
            } => a.live.options(None, default).probes.ring_bytes,
            other => panic!("expected agent, got {other:?}"),
        }
    }

    #[test]
    fn aggregating_commands_default_to_a_smaller_ring() {
        assert_eq!(agent_ring(&[], live::AGGREGATING_RING), 4 << 20);
        assert_eq!(agent_ring(&[], live::RECORDING_RING), 16 << 20);
        assert_eq!(
            agent_ring(&["--ring-size", "1M"], live::AGGREGATING_RING),
            1 << 20
        );
    }

    #[test]
    fn filters_translate_to_the_kernel_filter() {
        let f = stream(&[
            "--pid",
            "42",
            "--comm",
            "nginx",
            "--lport",
            "443",
            "--rport",
            "5000",
            "--addr",
            "10.0.0.1",
            "-4",
            "--state",
            "CLOSE_WAIT,time-wait",
            "--state",
            "LISTEN",
            "--type",
            "retransmit",
        ])
        .config()
        .filter;
        assert_eq!(
            f.flags,
            Filter::PID
                | Filter::COMM
                | Filter::LPORT
                | Filter::RPORT
                | Filter::ADDR
                | Filter::FAMILY
                | Filter::STATE
                | Filter::KIND
        );
        assert_eq!(
            (f.pid, f.lport, f.rport, f.family),
            (42, 443, 5000, AF_INET)
        );
        assert_eq!(&f.comm[..6], b"nginx\0");
        assert_eq!(f.addr_family, AF_INET);
        assert_eq!(&f.addr[..4], &[10, 0, 0, 1]);
        assert_eq!(
            f.state_mask,
            state::bit(state::CLOSE_WAIT)
                | state::bit(state::TIME_WAIT)
                | state::bit(state::LISTEN)
        );
        assert_eq!(f.kinds, 1 << EventKind::Retransmit as u32);
        let v6 = stream(&["-6", "--addr", "::1"]).config().filter;
        assert_eq!(
            (v6.family, v6.addr_family, v6.addr[15]),
            (AF_INET6, AF_INET6, 1)
        );
        assert_eq!(stream(&[]).config().filter, Filter::ANY);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for args in [
            &["--port", "0"][..],
            &["--port", "70000"],
            &["--lport", "http"],
            &["--pid", "0"],
            &["--pid", "-1"],
            &["--comm", "a-very-long-command-name"],
            &["--comm", ""],
            &["--addr", "999.1.1.1"],
            &["--state", "ESTAB"],
            &["--type", "lifetime"],
            &["-4", "-6"],
            &["--duration", "0"],
            &["--duration", "soon"],
            &["--ring-size", "3000"],
            &["--ring-size", "16X"],
            &["--max-sockets", "10"],
            &["--bogus"],
        ] {
            let err = parse(args).expect_err(&format!("{args:?} should fail"));
            assert_ne!(err.kind(), ErrorKind::DisplayHelp, "{args:?}");
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64k"), Ok(65536));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("8G").is_err());
        assert_eq!(parse_ring_size("256M"), Ok(256 << 20));
    }
}
