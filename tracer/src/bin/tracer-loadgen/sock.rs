//! Socket primitives on top of libc: listen with options, connect with a
//! timeout, accept with a timeout, SO_LINGER, bounded draining.

use std::io::{self, Write};
use std::mem;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::rt;

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, val: &T) -> io::Result<()> {
    // SAFETY: passes a pointer to a live `T` with its exact size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (val as *const T).cast(),
            mem::size_of::<T>() as libc::socklen_t,
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

fn new_socket(addr: &SocketAddr) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscall.
    let raw = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// socket + SO_REUSEADDR (+ IPV6_V6ONLY=1) + bind + listen(backlog); the
/// returned listener is non-blocking (use [`accept_timeout`]).
pub fn listen(addr: SocketAddr, backlog: i32) -> Result<TcpListener> {
    let fd = new_socket(&addr).context("socket")?;
    let raw = fd.as_raw_fd();
    setsockopt(
        raw,
        libc::SOL_SOCKET,
        libc::SO_REUSEADDR,
        &1 as &libc::c_int,
    )
    .context("SO_REUSEADDR")?;
    if addr.is_ipv6() {
        setsockopt(
            raw,
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            &1 as &libc::c_int,
        )
        .context("IPV6_V6ONLY")?;
    }
    let (sa, len) = to_sockaddr(&addr);
    // SAFETY: `sa` is a valid sockaddr of length `len`.
    if unsafe { libc::bind(raw, (&sa as *const libc::sockaddr_storage).cast(), len) } < 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("bind {addr}"));
    }
    // SAFETY: plain syscall on an fd we own.
    if unsafe { libc::listen(raw, backlog) } < 0 {
        return Err(io::Error::last_os_error()).context("listen");
    }
    let listener = TcpListener::from(fd);
    listener
        .set_nonblocking(true)
        .context("O_NONBLOCK on listener")?;
    Ok(listener)
}

/// Blocking connect bounded by SO_SNDTIMEO (which then also bounds writes).
/// Fewer syscalls than `TcpStream::connect_timeout`, which matters for churn.
pub fn connect(addr: &SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let fd = new_socket(addr)?;
    // A zero timeval would mean "no timeout": use at least 1 us.
    let timeout = timeout.max(Duration::from_micros(1));
    let tv = libc::timeval {
        tv_sec: timeout.as_secs().min(86_400) as libc::time_t,
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
    };
    setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDTIMEO, &tv)?;
    let (sa, len) = to_sockaddr(addr);
    // SAFETY: `sa` is a valid sockaddr of length `len`.
    if unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_storage).cast(),
            len,
        )
    } < 0
    {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINPROGRESS) {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
        }
        return Err(e);
    }
    Ok(TcpStream::from(fd))
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
/// `timeout_ms`. On Linux the accepted socket is blocking (accept4 does not
/// inherit O_NONBLOCK).
pub fn accept_timeout(listener: &TcpListener, timeout_ms: i32) -> io::Result<Option<TcpStream>> {
    for attempt in 0..2 {
        match listener.accept() {
            Ok((stream, _)) => return Ok(Some(stream)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if attempt == 0 && wait_readable(listener.as_raw_fd(), timeout_ms)? {
                    continue;
                }
                return Ok(None);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// SO_LINGER {l_onoff = 1, l_linger = 0}: the next close() sends RST.
pub fn set_linger_zero(stream: &TcpStream) -> io::Result<()> {
    let lg = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(stream.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, &lg)
}

/// Result of draining a socket.
#[derive(Debug, Default, Clone, Copy)]
pub struct Drain {
    pub bytes: u64,
    /// Saw EOF (as opposed to error, timeout, stop request or limit).
    pub eof: bool,
}

/// Read until EOF or `limit` bytes, giving up at `deadline`, on [`rt::STOP`]
/// or on `extra_stop`. Non-blocking reads + 100 ms polls keep it responsive.
pub fn drain(
    stream: &TcpStream,
    limit: Option<u64>,
    deadline: Instant,
    extra_stop: Option<&AtomicBool>,
) -> Drain {
    let fd = stream.as_raw_fd();
    let mut out = Drain::default();
    let mut buf = [0u8; 64 * 1024];
    loop {
        let want = match limit {
            Some(l) if out.bytes >= l => return out,
            Some(l) => (l - out.bytes).min(buf.len() as u64) as usize,
            None => buf.len(),
        };
        // SAFETY: `buf` is valid for `want` <= buf.len() bytes.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), want, libc::MSG_DONTWAIT) };
        if n == 0 {
            out.eof = true;
            return out;
        }
        let would_block = if n > 0 {
            out.bytes += n as u64;
            false
        } else {
            match io::Error::last_os_error().kind() {
                io::ErrorKind::WouldBlock => true,
                io::ErrorKind::Interrupted => false,
                _ => return out,
            }
        };
        let stopped = rt::stop_requested() || extra_stop.is_some_and(|s| s.load(Ordering::Relaxed));
        if stopped || Instant::now() >= deadline {
            return out;
        }
        if would_block && wait_readable(fd, 100).is_err() {
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
