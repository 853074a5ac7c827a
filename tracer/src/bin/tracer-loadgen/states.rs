//! `states`: build a known mix of TCP states on loopback and hold it until told to stop, so
//! tests can compare the tracer's per-state counts with `ss`.
//!
//! Per `--count N`: N ESTABLISHED pairs; N connections the client closed and the server did
//! not (server CLOSE_WAIT, client FIN_WAIT2: an orphan, so a timewait socket with substate
//! FIN_WAIT2); N connections both closed, client first (client TIME_WAIT); and `--pending N`
//! connections left unaccepted in the listen queue. Exactly N bytes of `--send` go each way
//! of every ESTABLISHED pair.
//!
//! For exact counts run it with `net.ipv4.tcp_tw_reuse=0` (in a namespace of its own): once
//! the ephemeral port search wraps, a connect may take over a timewait socket's port, which
//! removes a TIME_WAIT and, before Linux 6.11, even a FIN_WAIT2 orphan with its CLOSE_WAIT peer.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::atomic::Ordering,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::{cli::StatesArgs, rt, sock};

#[derive(Debug, Serialize)]
struct Ready {
    port: u16,
    pid: u32,
    established_pairs: u64,
    close_wait: u64,
    time_wait: u64,
    pending: u64,
    bytes_each_way: u64,
}

fn accept(listener: &std::net::TcpListener) -> Result<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(s) = sock::accept_timeout(listener, 100).context("accept")? {
            return Ok(s);
        }
        if rt::stop_requested() || Instant::now() >= deadline {
            bail!("accept did not complete");
        }
    }
}

/// Reads until EOF (the peer's FIN), bounded in time.
fn read_to_eof(s: &mut TcpStream) -> Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = [0u8; 4096];
    while s.read(&mut buf).context("waiting for the peer's FIN")? > 0 {}
    Ok(())
}

fn exchange(c: &mut TcpStream, s: &mut TcpStream, n: u64) -> Result<()> {
    let data = vec![0x5au8; usize::try_from(n)?];
    c.write_all(&data)?;
    let mut got = vec![0u8; data.len()];
    s.read_exact(&mut got)?;
    s.write_all(&data)?;
    c.read_exact(&mut got)?;
    Ok(())
}

pub fn run(args: StatesArgs) -> Result<()> {
    rt::install_signal_handlers()?;
    rt::raise_nofile()?;
    let listener = sock::listen(SocketAddr::new(args.addr, args.port), 4096)?;
    let addr = listener.local_addr().context("getsockname")?;
    let timeout = Duration::from_secs(5);
    let mut keep = Vec::new();
    for _ in 0..args.count {
        let mut c = sock::connect(&addr, timeout)?;
        let mut s = accept(&listener)?;
        exchange(&mut c, &mut s, args.send)?;
        keep.push(c);
        keep.push(s);
    }
    for _ in 0..args.count {
        // Client closes; the server never does: CLOSE_WAIT on its side.
        let c = sock::connect(&addr, timeout)?;
        let mut s = accept(&listener)?;
        drop(c);
        read_to_eof(&mut s)?;
        keep.push(s);
    }
    for _ in 0..args.count {
        // Client closes first, then the server: TIME_WAIT on the client side.
        let mut c = sock::connect(&addr, timeout)?;
        let mut s = accept(&listener)?;
        c.shutdown(std::net::Shutdown::Write)?;
        read_to_eof(&mut s)?;
        drop(s);
        read_to_eof(&mut c)?;
        drop(c);
    }
    for _ in 0..args.pending {
        keep.push(sock::connect(&addr, timeout)?);
    }
    let ready = Ready {
        port: addr.port(),
        pid: rt::pid(),
        established_pairs: args.count,
        close_wait: args.count,
        time_wait: args.count,
        pending: args.pending,
        bytes_each_way: args.send,
    };
    rt::emit_line(&format!("READY {}", serde_json::to_string(&ready)?))?;
    // Stdin EOF or a line on stdin is a stop request.
    thread::Builder::new()
        .name("stdin-watch".into())
        .spawn(|| {
            let mut buf = [0u8; 1];
            let _ = std::io::stdin().lock().read(&mut buf);
            rt::STOP.store(true, Ordering::SeqCst);
        })
        .context("spawning stdin watcher")?;
    let deadline = Instant::now() + Duration::from_secs_f64(args.timeout_secs);
    while !rt::stop_requested() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    drop(keep);
    drop(listener);
    Ok(())
}
