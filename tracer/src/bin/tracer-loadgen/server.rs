//! `server`: listen, announce `READY <port>`, drain or close accepted connections.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::cli::ServerArgs;
use crate::{rt, sock};

#[derive(Debug, Serialize)]
pub struct ServerSummary {
    pub accepted: u64,
    pub bytes_received: u64,
    pub pid: u32,
}

struct Shared {
    args: ServerArgs,
    listener: TcpListener,
    deadline: Instant,
    /// Accept slots taken (bounded by --max-conns).
    reserved: AtomicU64,
    accepted: AtomicU64,
    bytes: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    fn stopping(&self) -> bool {
        rt::stop_requested() || self.stop.load(Ordering::Relaxed) || Instant::now() >= self.deadline
    }

    /// Take one accept slot; false when `--max-conns` slots are all taken.
    fn reserve(&self) -> bool {
        let Some(max) = self.args.max_conns else {
            return true;
        };
        self.reserved
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| {
                (r < max).then_some(r + 1)
            })
            .is_ok()
    }

    fn release(&self) {
        if self.args.max_conns.is_some() {
            self.reserved.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

pub fn run(args: ServerArgs) -> Result<()> {
    rt::install_signal_handlers()?;
    let listener = sock::listen(SocketAddr::new(args.addr, args.port), args.backlog)?;
    let port = listener.local_addr().context("getsockname")?.port();
    let threads = args.threads;
    let shared = Arc::new(Shared {
        deadline: Instant::now() + Duration::from_secs_f64(args.timeout_secs),
        args,
        listener,
        reserved: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    rt::emit_line(&format!("READY {port}"))?;

    let mut handles = Vec::new();
    for i in 0..threads {
        let sh = Arc::clone(&shared);
        let h = thread::Builder::new()
            .name(format!("accept-{i}"))
            .spawn(move || accept_loop(&sh))
            .context("spawning accept thread")?;
        handles.push(h);
    }
    let mut err = None;
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => err = Some(e),
            Err(_) => err = Some(anyhow::anyhow!("accept thread panicked")),
        }
    }
    rt::emit_json(&ServerSummary {
        accepted: shared.accepted.load(Ordering::SeqCst),
        bytes_received: shared.bytes.load(Ordering::SeqCst),
        pid: rt::pid(),
    })?;
    match err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn accept_loop(sh: &Shared) -> Result<()> {
    while !sh.stopping() {
        if !sh.reserve() {
            return Ok(()); // every remaining connection is someone else's
        }
        let stream = match sock::accept_timeout(&sh.listener, 100) {
            Ok(Some(s)) => s,
            Ok(None) => {
                sh.release();
                continue;
            }
            Err(e) => {
                sh.release();
                sh.stop.store(true, Ordering::SeqCst);
                return Err(e).context("accept");
            }
        };
        sh.accepted.fetch_add(1, Ordering::SeqCst);
        handle(sh, stream);
    }
    Ok(())
}

fn handle(sh: &Shared, stream: TcpStream) {
    let a = &sh.args;
    if a.idle_ms > 0 {
        rt::sleep_interruptible(Duration::from_millis(a.idle_ms));
    }
    let deadline = Instant::now() + Duration::from_millis(a.conn_timeout_ms);
    let limit = a.close_first.then_some(a.read_bytes);
    let got = sock::drain(&stream, limit, deadline, Some(&sh.stop));
    sh.bytes.fetch_add(got.bytes, Ordering::SeqCst);
    drop(stream); // close(): FIN (or RST if unread data is left)
}
