//! Process-level helpers: stop flag + signal handlers, stdout output, rlimits.

use std::io::{self, Write};
use std::mem;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

/// Set by SIGTERM/SIGINT (and by `hold` on stdin EOF).
pub static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

pub fn stop_requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Install SIGTERM/SIGINT handlers that only set [`STOP`] (no SA_RESTART, so
/// blocking calls on the receiving thread return EINTR).
pub fn install_signal_handlers() -> Result<()> {
    let handler = on_signal as extern "C" fn(libc::c_int);
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: zeroed sigaction is a valid starting point; the handler only
        // touches an atomic, which is async-signal-safe.
        let rc = unsafe {
            let mut sa: libc::sigaction = mem::zeroed();
            sa.sa_sigaction = handler as libc::sighandler_t;
            sa.sa_flags = 0;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error()).context("sigaction");
        }
    }
    Ok(())
}

/// Print one line to stdout and flush.
pub fn emit_line(line: &str) -> Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}").context("writing stdout")?;
    out.flush().context("flushing stdout")
}

pub fn emit_json<T: Serialize>(value: &T) -> Result<()> {
    emit_line(&serde_json::to_string(value)?)
}

pub fn pid() -> u32 {
    std::process::id()
}

/// Sleep `d`, waking early on [`STOP`].
pub fn sleep_interruptible(d: Duration) {
    let end = Instant::now() + d;
    while !stop_requested() {
        let now = Instant::now();
        if now >= end {
            return;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// Raise the RLIMIT_NOFILE soft limit to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> Result<u64> {
    // SAFETY: getrlimit/setrlimit on a live, correctly typed struct.
    let mut rl: libc::rlimit = unsafe { mem::zeroed() };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return Err(io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    if rl.rlim_cur < rl.rlim_max {
        rl.rlim_cur = rl.rlim_max;
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } != 0 {
            return Err(io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
        }
    }
    Ok(rl.rlim_cur)
}

/// Seconds since `start`, never zero (keeps rates finite).
pub fn elapsed_secs(start: Instant) -> f64 {
    start.elapsed().as_secs_f64().max(1e-9)
}
