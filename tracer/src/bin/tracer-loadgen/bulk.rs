//! `bulk`: long-lived connections streaming data for a bounded time: the data path (send/recv
//! tracepoints, per-socket and per-process byte counting) under load, with few transitions.

use std::{
    io::{Read, Write},
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::{cli::BulkArgs, rt, sock};

/// Bytes per write/read call.
const CHUNK: usize = 64 << 10;

#[derive(Debug, Serialize)]
struct BulkSummary {
    connections: u64,
    /// Application bytes the senders wrote and the receivers read (equal on success).
    bytes_sent: u64,
    bytes_received: u64,
    elapsed_s: f64,
    /// Received bytes per second over all connections.
    throughput_bps: f64,
    pid: u32,
}

pub fn run(args: BulkArgs) -> Result<()> {
    rt::install_signal_handlers()?;
    let listener = sock::listen(SocketAddr::new(args.addr, args.port), 1024)?;
    let addr = listener.local_addr().context("getsockname")?;
    let n = usize::try_from(args.connections).context("--connections too large")?;
    let mut pairs = Vec::with_capacity(n);
    for i in 0..n {
        let c = sock::connect(&addr, Duration::from_secs(5))
            .with_context(|| format!("connection {i}"))?;
        let s = match sock::accept_timeout(&listener, 5000).context("accept")? {
            Some(s) => s,
            None => bail!("connection {i}: accept did not complete"),
        };
        pairs.push((c, s));
    }
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration_secs);
    let (sent, received) = (AtomicU64::new(0), AtomicU64::new(0));
    let started = Instant::now();
    thread::scope(|scope| {
        for (mut c, mut s) in pairs {
            let (sent, received) = (&sent, &received);
            scope.spawn(move || {
                let buf = vec![0xa5u8; CHUNK];
                while Instant::now() < deadline && !rt::stop_requested() {
                    match c.write(&buf) {
                        Ok(n) => sent.fetch_add(n as u64, Ordering::Relaxed),
                        Err(_) => break,
                    };
                }
                // Closing the write side ends the reader's loop once it has read everything.
                let _ = c.shutdown(std::net::Shutdown::Write);
            });
            scope.spawn(move || {
                let mut buf = vec![0u8; CHUNK];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => received.fetch_add(n as u64, Ordering::Relaxed),
                    };
                }
            });
        }
    });
    let elapsed = rt::elapsed_secs(started);
    let (sent, received) = (sent.into_inner(), received.into_inner());
    rt::emit_json(&BulkSummary {
        connections: args.connections,
        bytes_sent: sent,
        bytes_received: received,
        elapsed_s: elapsed,
        throughput_bps: received as f64 / elapsed.max(1e-9),
        pid: rt::pid(),
    })?;
    if sent != received {
        bail!("sent {sent} bytes but received {received}");
    }
    Ok(())
}
