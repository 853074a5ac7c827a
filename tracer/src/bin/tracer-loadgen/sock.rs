//! Socket, signal and process helpers (the few things std does not offer).

use std::io::{self, Read, Write};
use std::mem;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
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

fn cvt(rc: libc::c_int, what: &str) -> Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error()).with_context(|| what.to_string())
    } else {
        Ok(rc)
    }
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    val: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int with its exact size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&val as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Encode a std socket address as a C sockaddr.
pub fn to_sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage / sockaddr_in / sockaddr_in6.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let mut sin: libc::sockaddr_in = unsafe { mem::zeroed() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let mut sin6: libc::sockaddr_in6 = unsafe { mem::zeroed() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_scope_id = a.scope_id();
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// socket + SO_REUSEADDR (+ IPV6_V6ONLY=1) + bind + listen(backlog); the
/// returned listener is non-blocking (use [`accept_timeout`]).
pub fn listen(addr: SocketAddr, backlog: i32) -> Result<TcpListener> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscall; the fd is owned right away.
    let raw = cvt(
        unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) },
        "socket",
    )?;
    // SAFETY: `raw` is a fresh fd that nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1).context("SO_REUSEADDR")?;
    if addr.is_ipv6() {
        setsockopt_int(raw, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1).context("IPV6_V6ONLY")?;
    }
    let (sa, len) = to_sockaddr(&addr);
    // SAFETY: `sa` is a valid sockaddr of length `len`.
    cvt(
        unsafe { libc::bind(raw, (&sa as *const libc::sockaddr_storage).cast(), len) },
        &format!("bind {addr}"),
    )?;
    cvt(unsafe { libc::listen(raw, backlog) }, "listen")?;
    let listener = TcpListener::from(fd);
    listener
        .set_nonblocking(true)
        .context("O_NONBLOCK on listener")?;
    Ok(listener)
}

/// Wait up to `timeout_ms` for `fd` to be readable. EINTR counts as "not ready".
pub fn wait_readable(fd: RawFd, timeout_ms: i32) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(rc > 0)
}

/// Accept one connection from a non-blocking listener, waiting at most
/// `timeout_ms`. The returned stream is blocking.
pub fn accept_timeout(listener: &TcpListener, timeout_ms: i32) -> io::Result<Option<TcpStream>> {
    if !wait_readable(listener.as_raw_fd(), timeout_ms)? {
        return Ok(None);
    }
    match listener.accept() {
        Ok((stream, _)) => {
            stream.set_nonblocking(false)?;
            Ok(Some(stream))
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock
                    | io::ErrorKind::Interrupted
                    | io::ErrorKind::ConnectionAborted
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// SO_LINGER {l_onoff = 1, l_linger = 0}: the next close() sends RST.
pub fn set_linger_zero(stream: &TcpStream) -> io::Result<()> {
    let lg = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: pointer to a live linger struct with its exact size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&lg as *const libc::linger).cast(),
            mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Result of draining a socket.
#[derive(Debug, Default, Clone, Copy)]
pub struct Drain {
    pub bytes: u64,
    /// Saw EOF (as opposed to error, timeout, stop request or limit).
    pub eof: bool,
}

/// Read until EOF or `limit` bytes, giving up at `deadline`, on [`STOP`] or on
/// `extra_stop`. Uses a 100 ms receive timeout to stay responsive.
pub fn drain(
    stream: &mut TcpStream,
    limit: Option<u64>,
    deadline: Instant,
    extra_stop: Option<&AtomicBool>,
) -> Drain {
    let mut out = Drain::default();
    if stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .is_err()
    {
        return out;
    }
    let mut buf = [0u8; 64 * 1024];
    loop {
        let want = match limit {
            Some(l) if out.bytes >= l => return out,
            Some(l) => (l - out.bytes).min(buf.len() as u64) as usize,
            None => buf.len(),
        };
        match stream.read(&mut buf[..want]) {
            Ok(0) => {
                out.eof = true;
                return out;
            }
            Ok(n) => out.bytes += n as u64,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return out,
        }
        let stopped = stop_requested() || extra_stop.is_some_and(|s| s.load(Ordering::Relaxed));
        if stopped || Instant::now() >= deadline {
            return out;
        }
    }
}

/// Write `n` bytes of filler.
pub fn send_bytes(stream: &mut TcpStream, n: u64) -> io::Result<()> {
    const CHUNK: [u8; 16 * 1024] = [b'x'; 16 * 1024];
    let mut left = n;
    while left > 0 {
        let k = left.min(CHUNK.len() as u64) as usize;
        stream.write_all(&CHUNK[..k])?;
        left -= k as u64;
    }
    Ok(())
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

/// Raise RLIMIT_NOFILE soft limit to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> Result<u64> {
    // SAFETY: getrlimit/setrlimit on a live struct.
    let mut rl: libc::rlimit = unsafe { mem::zeroed() };
    cvt(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) },
        "getrlimit(RLIMIT_NOFILE)",
    )?;
    if rl.rlim_cur < rl.rlim_max {
        rl.rlim_cur = rl.rlim_max;
        cvt(
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) },
            "setrlimit(RLIMIT_NOFILE)",
        )?;
    }
    Ok(rl.rlim_cur as u64)
}

/// Seconds since `start`, never zero (keeps rates finite).
pub fn elapsed_secs(start: Instant) -> f64 {
    start.elapsed().as_secs_f64().max(1e-9)
}
