//! `tracer stats`: the netstat-style per-state table and an `ss -s` style summary every
//! interval, with the top processes, listeners and peers.

use std::{
    fmt::Write as _,
    io::{self, Write},
    time::SystemTime,
};

use serde::Serialize;

use crate::{
    aggregate::view::{ProcSort, Stats},
    cli::StatsArgs,
    live::{Live, LiveError},
};

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error(transparent)]
    Live(#[from] LiveError),
    #[error("writing output: {0}")]
    Output(io::Error),
    #[error(transparent)]
    Agent(#[from] crate::agent::client::ClientError),
}

#[derive(Serialize)]
struct JsonStats<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    #[serde(flatten)]
    stats: &'a Stats,
}

pub fn json_line(stats: &Stats, at: SystemTime) -> String {
    let rec = JsonStats {
        kind: "stats",
        time: humantime::format_rfc3339_micros(at).to_string(),
        stats,
    };
    serde_json::to_string(&rec).unwrap_or_default()
}

/// Byte counts as `ss`/`nethogs` users read them.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn render_human(s: &Stats, at: SystemTime, sort: ProcSort) -> String {
    let mut o = String::new();
    let t = &s.totals;
    let _ = writeln!(
        o,
        "{}  TCP: {} (estab {}, listen {}, timewait {}, synrecv {}, closing {})",
        humantime::format_rfc3339_seconds(at),
        t.total,
        t.established,
        t.listening,
        t.time_wait,
        t.syn_recv,
        t.closing
    );
    for (name, n) in s.states.iter().filter(|(_, n)| **n > 0) {
        let _ = writeln!(o, "  {name:<12} {n:>9}");
    }
    let _ = writeln!(o, "Processes (by {}):", sort.name());
    let _ = writeln!(
        o,
        "  {:<8} {:<16} {:>7} {:>10} {:>12} {:>12}",
        "PID", "COMM", "CONNS", "CLOSE_WAIT", "SENT", "RECEIVED"
    );
    for p in &s.processes {
        let pid = p.pid.map_or_else(|| "-".to_owned(), |p| p.to_string());
        let _ = writeln!(
            o,
            "  {:<8} {:<16} {:>7} {:>10} {:>12} {:>12}",
            pid,
            if p.comm.is_empty() { "-" } else { &p.comm },
            p.connections,
            p.close_wait,
            human_bytes(p.bytes_sent),
            human_bytes(p.bytes_received)
        );
    }
    let _ = writeln!(o, "Listeners:");
    for l in &s.listeners {
        let _ = writeln!(
            o,
            "  {:<28} {:<8} {:<16} accept queue {}/{}",
            l.local.to_string(),
            l.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
            l.comm.as_deref().unwrap_or("-"),
            l.accept_queue,
            l.backlog
        );
    }
    let _ = writeln!(o, "Peers:");
    for p in &s.peers {
        let _ = writeln!(o, "  {:<40} {:>7}", p.addr.to_string(), p.connections);
    }
    let closes: Vec<String> = s
        .closes
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    let lost: u64 = s.lost.values().sum();
    let _ = writeln!(
        o,
        "Retransmits {}; closes: {}; lost events {}",
        s.retransmits,
        if closes.is_empty() {
            "none".to_owned()
        } else {
            closes.join(", ")
        },
        lost
    );
    o
}

/// Prints one report stamped now. `Ok(false)` when stdout is a closed pipe: the command ends.
fn print_report(out: &mut impl Write, stats: &Stats, args: &StatsArgs) -> Result<bool, StatsError> {
    let now = SystemTime::now();
    let text = if args.json {
        json_line(stats, now) + "\n"
    } else {
        render_human(stats, now, args.sort) + "\n"
    };
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(StatsError::Output(e)),
        Ok(()) => Ok(true),
    }
}

pub async fn run(args: &StatsArgs) -> Result<(), StatsError> {
    if let Some(addr) = args.agent {
        return run_remote(addr, args).await;
    }
    let mut live =
        Live::start(&args.live.options(None, crate::cli::live::AGGREGATING_RING)).await?;
    let mut out = io::stdout();
    let top = usize::try_from(args.top).unwrap_or(usize::MAX);
    let mut next = tokio::time::Instant::now() + args.interval;
    let mut printed = 0u64;
    loop {
        let running = live.run_until(next).await;
        next += args.interval;
        live.refresh().await?;
        if !print_report(&mut out, &live.stats(top, args.sort), args)? {
            break;
        }
        printed += 1;
        if !running || args.count.is_some_and(|c| printed >= c) {
            break;
        }
    }
    live.stop().await?;
    Ok(())
}

/// `--agent ADDR`: the same reports, from a running agent's /stats, until --count or Ctrl-C.
async fn run_remote(addr: std::net::SocketAddr, args: &StatsArgs) -> Result<(), StatsError> {
    let mut out = io::stdout();
    let top = usize::try_from(args.top).unwrap_or(usize::MAX);
    let mut next = tokio::time::Instant::now();
    let mut printed = 0u64;
    loop {
        let stats = crate::agent::client::stats(addr, top, args.sort).await?;
        if !print_report(&mut out, &stats, args)? {
            return Ok(());
        }
        printed += 1;
        if args.count.is_some_and(|c| printed >= c) {
            return Ok(());
        }
        next += args.interval;
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
