//! Command-line definition (clap derive) and cross-flag validation.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "tracer-loadgen",
    version,
    about = "Loopback TCP workload generator for tracer tests and benchmarks"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Listen, print `READY <port>`, accept and drain connections.
    Server(ServerArgs),
    /// Open `--count` connections, send bytes, close them.
    Client(ClientArgs),
    /// Connect attempts against a port without listener.
    Refused(RefusedArgs),
    /// In-process listener + clients: connect/send/close as fast as possible.
    Churn(ChurnArgs),
    /// Open N loopback connections (2N sockets) and keep them until told to stop.
    Hold(HoldArgs),
    /// Long-lived connections streaming data for a bounded time.
    Bulk(BulkArgs),
    /// Build a known mix of states (ESTABLISHED, CLOSE_WAIT, FIN_WAIT2, TIME_WAIT, pending
    /// accepts) and hold it until stdin has a line or closes.
    States(StatesArgs),
}

#[derive(Debug, Clone, Args)]
pub struct BulkArgs {
    #[arg(long)]
    pub addr: IpAddr,
    /// 0 = ephemeral.
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Connections, each with one sending and one receiving thread.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub connections: u64,
    #[arg(long, value_parser = parse_secs)]
    pub duration_secs: f64,
}

#[derive(Debug, Clone, Args)]
pub struct StatesArgs {
    #[arg(long)]
    pub addr: IpAddr,
    /// 0 = ephemeral.
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Connections of each kind.
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub count: u64,
    /// Connections left in the listen queue, never accepted.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub pending: u64,
    /// Bytes sent each way on every ESTABLISHED pair.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=(64 << 20)))]
    pub send: u64,
    /// Safety bound: release everything after this many seconds.
    #[arg(long, default_value_t = 600.0, value_parser = parse_secs)]
    pub timeout_secs: f64,
}

/// How the client ends each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CloseMode {
    /// Plain close() right after sending (client sends the first FIN).
    Normal,
    /// SO_LINGER {1, 0} then close(): sends RST.
    Reset,
    /// shutdown(SHUT_WR), read until EOF, then close().
    ShutdownWait,
    /// Read until the peer's EOF, then close(): the peer closes first.
    WaitEof,
}

/// Positive, finite number of seconds (fractions allowed).
pub fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 86_400.0 => Ok(v),
        Ok(_) => Err("must be a number of seconds in (0, 86400]".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    #[arg(long)]
    pub addr: IpAddr,
    /// 0 = ephemeral (the real port is printed in the READY line).
    #[arg(long)]
    pub port: u16,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub threads: u32,
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(i32).range(1..=65535))]
    pub backlog: i32,
    /// Stop after this many connections were fully handled.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_conns: Option<u64>,
    /// Server closes first: read `--read-bytes` bytes, then close.
    #[arg(long)]
    pub close_first: bool,
    #[arg(long, default_value_t = 0, requires = "close_first")]
    pub read_bytes: u64,
    /// Sleep this long after accept before reading.
    #[arg(long, default_value_t = 0)]
    pub idle_ms: u64,
    /// Give up on one connection (close it) after this long.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub conn_timeout_ms: u64,
    /// Safety bound: exit after this many seconds even without a signal.
    #[arg(long, default_value_t = 3600.0, value_parser = parse_secs)]
    pub timeout_secs: f64,
}

#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    #[arg(long)]
    pub addr: IpAddr,
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: u32,
    /// Bytes written on every connection before closing.
    #[arg(long, default_value_t = 0)]
    pub send: u64,
    #[arg(long, value_enum, default_value_t = CloseMode::Normal)]
    pub close: CloseMode,
    /// IPv4 only: connection i goes to 127.0.0.(1 + i % K).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=250))]
    pub dst_spread: u8,
    /// Stop early once this many seconds elapsed.
    #[arg(long, value_parser = parse_secs)]
    pub duration_secs: Option<f64>,
    /// Sleep between connections (per thread).
    #[arg(long, default_value_t = 0)]
    pub pause_ms: u64,
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub connect_timeout_ms: u64,
}

#[derive(Debug, Clone, Args)]
pub struct RefusedArgs {
    #[arg(long)]
    pub addr: IpAddr,
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub connect_timeout_ms: u64,
}

#[derive(Debug, Clone, Args)]
pub struct ChurnArgs {
    #[arg(long)]
    pub addr: IpAddr,
    /// 0 = ephemeral.
    #[arg(long)]
    pub port: u16,
    /// Client threads; max(threads/2, 1) acceptor threads.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=512))]
    pub threads: u32,
    #[arg(long, value_parser = parse_secs)]
    pub duration_secs: f64,
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: Option<u64>,
    /// IPv4 only: connection i goes to 127.0.0.(1 + i % K); listener binds 0.0.0.0.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=250))]
    pub dst_spread: u8,
    #[arg(long, default_value_t = 0)]
    pub send: u64,
    /// Offered load in connections per second over all client threads (default: as fast as
    /// possible). Connection i starts no earlier than i / RATE seconds after the start.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
}

pub fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        Ok(_) => Err("must be a positive number of connections per second".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Debug, Clone, Args)]
pub struct HoldArgs {
    #[arg(long)]
    pub addr: IpAddr,
    /// 0 = ephemeral.
    #[arg(long)]
    pub port: u16,
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub count: u64,
    /// IPv4 only; default 1, or ceil(count / 20000) when count > 20000 (IPv4).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=250))]
    pub dst_spread: Option<u8>,
    /// Do not treat stdin EOF as a stop request (use when stdin is /dev/null).
    #[arg(long)]
    pub ignore_stdin: bool,
    /// Safety bound: release everything after this many seconds.
    #[arg(long, default_value_t = 3600.0, value_parser = parse_secs)]
    pub timeout_secs: f64,
}

/// `--dst-spread` > 1 rewrites destinations to 127.0.0.x, so it needs IPv4.
pub fn check_spread(addr: IpAddr, spread: u8) -> Result<()> {
    if spread > 1 && !addr.is_ipv4() {
        bail!("--dst-spread {spread} needs an IPv4 --addr (got {addr})");
    }
    Ok(())
}

/// Destination of connection `index`: `base`, or 127.0.0.(1 + index % spread).
pub fn target_addr(base: SocketAddr, spread: u8, index: u64) -> SocketAddr {
    if spread <= 1 {
        return base;
    }
    let last = 1 + (index % u64::from(spread)) as u8;
    SocketAddr::from(([127, 0, 0, last], base.port()))
}

/// Bind address of an in-process listener: 0.0.0.0 when spreading destinations.
pub fn listen_addr(addr: IpAddr, port: u16, spread: u8) -> SocketAddr {
    if spread > 1 {
        SocketAddr::from(([0, 0, 0, 0], port))
    } else {
        SocketAddr::new(addr, port)
    }
}

impl HoldArgs {
    /// Effective spread: explicit, else automatic above 20000 connections.
    pub fn spread(&self) -> u8 {
        match self.dst_spread {
            Some(k) => k,
            None if self.count > 20_000 && self.addr.is_ipv4() => {
                self.count.div_ceil(20_000).min(250) as u8
            }
            None => 1,
        }
    }
}
