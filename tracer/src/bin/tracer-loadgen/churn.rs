//! `churn`: in-process listener plus client threads cycling short connections.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::cli::{self, ChurnArgs, CloseMode};
use crate::{client, rt, sock};

/// Bound on waiting for the server side to close everything after the clients stop.
const SETTLE: Duration = Duration::from_secs(5);
/// Clients pause while this many connections wait for the server side, so the
/// accept queue never overflows (a dropped SYN stalls a client for 1 s).
const MAX_IN_FLIGHT: u64 = 1024;
/// With --rate, a client sleeps only once it is this far ahead of the schedule: shorter sleeps
/// cost more than the connections they space out.
const PACE_SLACK: Duration = Duration::from_millis(1);

#[derive(Debug, Serialize)]
pub struct ChurnSummary {
    /// Connections the clients completed (connect + send + close).
    pub connections: u64,
    /// Accepted connections the server side has closed.
    pub server_closed: u64,
    /// Failed connects plus client I/O errors.
    pub failed: u64,
    pub elapsed_s: f64,
    /// connections / elapsed_s (client phase only).
    pub rate: f64,
    pub pid: u32,
}

struct Server {
    listener: TcpListener,
    stop: AtomicBool,
    closed: AtomicU64,
}

struct Clients {
    base: SocketAddr,
    spread: u8,
    send: u64,
    max: Option<u64>,
    start: Instant,
    /// Seconds between connection starts, with --rate.
    interval: Option<f64>,
    deadline: Instant,
    next: AtomicU64,
    connected: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
}

pub fn run(args: ChurnArgs) -> Result<()> {
    cli::check_spread(args.addr, args.dst_spread)?;
    rt::install_signal_handlers()?;
    let listener = sock::listen(
        cli::listen_addr(args.addr, args.port, args.dst_spread),
        4096,
    )?;
    let port = listener.local_addr().context("getsockname")?.port();
    let server = Arc::new(Server {
        listener,
        stop: AtomicBool::new(false),
        closed: AtomicU64::new(0),
    });

    let mut acceptors = Vec::new();
    for i in 0..(args.threads / 2).max(1) {
        let s = Arc::clone(&server);
        let h = thread::Builder::new()
            .name(format!("churn-accept-{i}"))
            .spawn(move || accept_loop(&s))
            .context("spawning acceptor")?;
        acceptors.push(h);
    }

    let start = Instant::now();
    let clients = Arc::new(Clients {
        base: SocketAddr::new(args.addr, port),
        spread: args.dst_spread,
        send: args.send,
        max: args.max_connections,
        start,
        interval: args.rate.map(|r| 1.0 / r),
        deadline: start + Duration::from_secs_f64(args.duration_secs),
        next: AtomicU64::new(0),
        connected: AtomicU64::new(0),
        completed: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let mut workers = Vec::new();
    let mut spawn_err = None;
    for i in 0..args.threads {
        let (c, s) = (Arc::clone(&clients), Arc::clone(&server));
        match thread::Builder::new()
            .name(format!("churn-client-{i}"))
            .spawn(move || client_loop(&c, &s))
        {
            Ok(h) => workers.push(h),
            Err(e) => {
                spawn_err = Some(e);
                break;
            }
        }
    }
    let mut panicked = workers.into_iter().map(|h| h.join()).any(|r| r.is_err());
    let elapsed = rt::elapsed_secs(start);

    // Let the server side finish closing so every transition has happened.
    let connected = clients.connected.load(Ordering::SeqCst);
    let settle_end = Instant::now() + SETTLE;
    while server.closed.load(Ordering::SeqCst) < connected
        && Instant::now() < settle_end
        && !rt::stop_requested()
    {
        thread::sleep(Duration::from_millis(2));
    }
    server.stop.store(true, Ordering::SeqCst);
    panicked |= acceptors.into_iter().map(|h| h.join()).any(|r| r.is_err());

    if let Some(e) = spawn_err {
        return Err(e).context("spawning client thread");
    }
    if panicked {
        anyhow::bail!("churn thread panicked");
    }
    let connections = clients.completed.load(Ordering::SeqCst);
    rt::emit_json(&ChurnSummary {
        connections,
        server_closed: server.closed.load(Ordering::SeqCst),
        failed: clients.failed.load(Ordering::SeqCst),
        elapsed_s: elapsed,
        rate: connections as f64 / elapsed,
        pid: rt::pid(),
    })
}

fn accept_loop(s: &Server) {
    while !s.stop.load(Ordering::Relaxed) && !rt::stop_requested() {
        match sock::accept_timeout(&s.listener, 100) {
            Ok(Some(stream)) => {
                let deadline = Instant::now() + Duration::from_secs(5);
                sock::drain(&stream, None, deadline, Some(&s.stop));
                drop(stream);
                s.closed.fetch_add(1, Ordering::SeqCst);
            }
            Ok(None) => {}
            Err(e) => {
                eprintln!("churn: accept failed: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn client_loop(c: &Clients, s: &Server) {
    let timeout = Duration::from_secs(5);
    while Instant::now() < c.deadline && !rt::stop_requested() {
        let backlog = c
            .connected
            .load(Ordering::Relaxed)
            .saturating_sub(s.closed.load(Ordering::Relaxed));
        if backlog >= MAX_IN_FLIGHT {
            thread::sleep(Duration::from_micros(200));
            continue;
        }
        let i = c.next.fetch_add(1, Ordering::Relaxed);
        if c.max.is_some_and(|m| i >= m) {
            break;
        }
        if let Some(interval) = c.interval {
            let due = c.start + Duration::from_secs_f64(i as f64 * interval);
            if due >= c.deadline {
                break;
            }
            let ahead = due.saturating_duration_since(Instant::now());
            if ahead > PACE_SLACK {
                thread::sleep(ahead);
            }
        }
        match sock::connect(&cli::target_addr(c.base, c.spread, i), timeout) {
            Ok(stream) => {
                c.connected.fetch_add(1, Ordering::Relaxed);
                match client::finish(stream, c.send, CloseMode::Normal) {
                    Ok(()) => c.completed.fetch_add(1, Ordering::Relaxed),
                    Err(_) => c.failed.fetch_add(1, Ordering::Relaxed),
                };
            }
            Err(_) => {
                c.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
