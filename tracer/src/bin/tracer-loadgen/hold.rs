//! `hold`: keep N established loopback connections (both ends) open.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::cli::{self, HoldArgs};
use crate::{rt, sock};

#[derive(Debug, Serialize)]
pub struct HoldSummary {
    pub held: u64,
    pub pid: u32,
}

pub fn run(args: HoldArgs) -> Result<()> {
    let spread = args.spread();
    cli::check_spread(args.addr, spread)?;
    rt::install_signal_handlers()?;
    let limit = rt::raise_nofile()?;
    let need = args.count.saturating_mul(2).saturating_add(16);
    if need > limit {
        bail!(
            "hold --count {} needs {need} file descriptors but RLIMIT_NOFILE is only {limit}",
            args.count
        );
    }
    let listener = sock::listen(cli::listen_addr(args.addr, args.port, spread), 4096)?;
    let port = listener.local_addr().context("getsockname")?.port();
    let base = SocketAddr::new(args.addr, port);

    let n = usize::try_from(args.count).context("--count too large")?;
    let mut clients = Vec::with_capacity(n);
    let mut servers = Vec::with_capacity(n);
    for i in 0..args.count {
        if rt::stop_requested() {
            bail!("interrupted after {i} of {} connections", args.count);
        }
        let dst = cli::target_addr(base, spread, i);
        let c = sock::connect(&dst, Duration::from_secs(5))
            .with_context(|| format!("connection {i} to {dst}"))?;
        clients.push(c);
        // Accept right away so the accept queue never overflows.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(s) = sock::accept_timeout(&listener, 100).context("accept")? {
                servers.push(s);
                break;
            }
            if rt::stop_requested() || Instant::now() >= deadline {
                bail!("connection {i}: accept did not complete");
            }
        }
    }
    rt::emit_line(&format!("READY {}", args.count))?;

    if !args.ignore_stdin {
        // Stdin EOF (e.g. the parent dropped its pipe) is a stop request too.
        thread::Builder::new()
            .name("stdin-watch".into())
            .spawn(|| {
                let mut buf = [0u8; 1024];
                let mut stdin = std::io::stdin().lock();
                while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
                rt::STOP.store(true, Ordering::SeqCst);
            })
            .context("spawning stdin watcher")?;
    }
    let deadline = Instant::now() + Duration::from_secs_f64(args.timeout_secs);
    while !rt::stop_requested() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    drop(clients);
    drop(servers);
    drop(listener);
    rt::emit_json(&HoldSummary {
        held: args.count,
        pid: rt::pid(),
    })
}
