//! `client` and `refused`: outgoing connections from this process.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::cli::{self, ClientArgs, CloseMode, RefusedArgs};
use crate::{rt, sock};

/// Above this many connections `local_ports` is left empty.
pub const MAX_REPORTED_PORTS: u64 = 10_000;

#[derive(Debug, Serialize)]
pub struct ClientSummary {
    pub connected: u64,
    /// Failed connect attempts (includes `refused`).
    pub failed: u64,
    pub refused: u64,
    /// Send/shutdown/read errors after a successful connect.
    pub io_errors: u64,
    pub elapsed_s: f64,
    pub rate: f64,
    pub pid: u32,
    /// Local port of every successful connection, in connection-index order.
    pub local_ports: Vec<u16>,
}

#[derive(Debug, Serialize)]
pub struct RefusedSummary {
    pub refused: u64,
    pub other_errors: u64,
    pub connected: u64,
    pub pid: u32,
}

#[derive(Default)]
struct Tally {
    connected: u64,
    failed: u64,
    refused: u64,
    io_errors: u64,
    ports: Vec<(u64, u16)>,
}

/// Send `n` bytes, then end the connection as `mode` says. Errors are I/O errors.
pub fn finish(mut stream: TcpStream, n: u64, mode: CloseMode) -> io::Result<()> {
    sock::send_bytes(&mut stream, n)?;
    match mode {
        CloseMode::Normal => {}
        CloseMode::Reset => sock::set_linger_zero(&stream)?,
        CloseMode::ShutdownWait | CloseMode::WaitEof => {
            if mode == CloseMode::ShutdownWait {
                stream.shutdown(Shutdown::Write)?;
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            if !sock::drain(&stream, None, deadline, None).eof {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no EOF from peer"));
            }
        }
    }
    drop(stream);
    Ok(())
}

pub fn run(args: ClientArgs) -> Result<()> {
    cli::check_spread(args.addr, args.dst_spread)?;
    rt::install_signal_handlers()?;
    let args = Arc::new(args);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = args
        .duration_secs
        .map(|s| start + Duration::from_secs_f64(s));

    let mut handles = Vec::new();
    for i in 0..args.threads {
        let (a, next) = (Arc::clone(&args), Arc::clone(&next));
        let h = thread::Builder::new()
            .name(format!("client-{i}"))
            .spawn(move || client_loop(&a, &next, deadline))
            .context("spawning client thread")?;
        handles.push(h);
    }
    let mut total = Tally::default();
    for h in handles {
        let t = h
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))?;
        total.connected += t.connected;
        total.failed += t.failed;
        total.refused += t.refused;
        total.io_errors += t.io_errors;
        total.ports.extend(t.ports);
    }
    let elapsed = rt::elapsed_secs(start);
    total.ports.sort_unstable();
    rt::emit_json(&ClientSummary {
        connected: total.connected,
        failed: total.failed,
        refused: total.refused,
        io_errors: total.io_errors,
        elapsed_s: elapsed,
        rate: total.connected as f64 / elapsed,
        pid: rt::pid(),
        local_ports: total.ports.into_iter().map(|(_, p)| p).collect(),
    })
}

fn client_loop(a: &ClientArgs, next: &AtomicU64, deadline: Option<Instant>) -> Tally {
    let base = SocketAddr::new(a.addr, a.port);
    let timeout = Duration::from_millis(a.connect_timeout_ms);
    let want_ports = a.count <= MAX_REPORTED_PORTS;
    let mut t = Tally::default();
    loop {
        if rt::stop_requested() || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= a.count {
            break;
        }
        match sock::connect(&cli::target_addr(base, a.dst_spread, i), timeout) {
            Ok(stream) => {
                t.connected += 1;
                if want_ports && let Ok(local) = stream.local_addr() {
                    t.ports.push((i, local.port()));
                }
                if finish(stream, a.send, a.close).is_err() {
                    t.io_errors += 1;
                }
            }
            Err(e) => {
                t.failed += 1;
                if e.kind() == io::ErrorKind::ConnectionRefused {
                    t.refused += 1;
                }
            }
        }
        if a.pause_ms > 0 {
            rt::sleep_interruptible(Duration::from_millis(a.pause_ms));
        }
    }
    t
}

pub fn run_refused(args: RefusedArgs) -> Result<()> {
    rt::install_signal_handlers()?;
    let target = SocketAddr::new(args.addr, args.port);
    let timeout = Duration::from_millis(args.connect_timeout_ms);
    let mut s = RefusedSummary {
        refused: 0,
        other_errors: 0,
        connected: 0,
        pid: rt::pid(),
    };
    for _ in 0..args.count {
        if rt::stop_requested() {
            break;
        }
        match sock::connect(&target, timeout) {
            Ok(stream) => {
                s.connected += 1;
                drop(stream);
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => s.refused += 1,
            Err(_) => s.other_errors += 1,
        }
    }
    rt::emit_json(&s)
}
