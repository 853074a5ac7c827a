//! Start-up snapshot of the TCP sockets that already exist, read from the kernel with
//! NETLINK_SOCK_DIAG (what `ss -tan` uses).
//!
//! The tracer's tracepoints only see transitions that happen after it attaches; this module
//! tells it what was there before. One dump request per address family walks the kernel's
//! socket hash tables; dumps are not atomic, so sockets that change state during the walk may be
//! reported in either state, or (rarely) missed or seen twice.
//!
//! The kernel keeps three kinds of TCP object in its hash tables and this module tags each
//! dumped socket with its kind (see [`SockKind`]): state masks alone cannot separate them,
//! because the kernel adds request sockets to any request that asks for SYN_RECV, and timewait
//! sockets match the state bit of their substate (FIN_WAIT2 or TIME_WAIT).

mod decode;
mod netlink;

use std::net::SocketAddr;

pub use decode::Counts;

/// What kind of kernel object a dumped socket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SockKind {
    /// A full socket (`struct tcp_sock`): listeners and every connection a process can hold.
    Full,
    /// A timewait mini-socket: what remains of a connection after its full socket closed in
    /// FIN_WAIT2 or TIME_WAIT. No process owns it (inode 0).
    TimeWait,
    /// A request socket: a half-open passive connection (SYN received, SYN-ACK sent). No process
    /// owns it (inode 0).
    Request,
}

impl SockKind {
    /// Every kind, in the order [`Counts`] indexes them.
    pub const ALL: [SockKind; 3] = [SockKind::Full, SockKind::TimeWait, SockKind::Request];

    /// Position in [`SockKind::ALL`].
    pub const fn index(self) -> usize {
        match self {
            SockKind::Full => 0,
            SockKind::TimeWait => 1,
            SockKind::Request => 2,
        }
    }
}

/// One socket as sock_diag reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagSocket {
    pub kind: SockKind,
    /// Kernel TCP state number (1 = ESTABLISHED ... 10 = LISTEN, 11 = CLOSING). For TimeWait
    /// sockets the timewait substate inet_diag reports (TIME_WAIT=6 or FIN_WAIT2=5); for Request
    /// sockets SYN_RECV (3).
    pub state: u8,
    /// V4 for AF_INET sockets, V6 for AF_INET6 ones (v4-mapped addresses stay V6). Link-local
    /// V6 addresses carry the socket's bound interface as scope id; others have scope 0.
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Socket inode, as in /proc/<pid>/fd; 0 for sockets no process holds.
    pub inode: u64,
    pub uid: u32,
    /// The kernel's socket cookie (`SO_COOKIE`), stable for the socket's lifetime.
    pub cookie: u64,
    /// idiag_rqueue / idiag_wqueue: for listeners the accept-queue length and its limit
    /// (backlog); for connections unread and unacknowledged bytes.
    pub rqueue: u32,
    pub wqueue: u32,
}

/// Which kinds of socket to dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kinds {
    pub full: bool,
    pub time_wait: bool,
    pub request: bool,
}

impl Kinds {
    pub const ALL: Kinds = Kinds {
        full: true,
        time_wait: true,
        request: true,
    };
    /// The mini sockets that no tracepoint reports: timewait and request sockets.
    pub const MINI: Kinds = Kinds {
        full: false,
        time_wait: true,
        request: true,
    };
    pub const FULL: Kinds = Kinds {
        full: true,
        time_wait: false,
        request: false,
    };

    pub const fn includes(self, kind: SockKind) -> bool {
        match kind {
            SockKind::Full => self.full,
            SockKind::TimeWait => self.time_wait,
            SockKind::Request => self.request,
        }
    }

    /// The idiag_states mask that makes the kernel walk only what these kinds need. It may
    /// select sockets of other kinds too (see the module docs); those are dropped on decode.
    pub const fn state_mask(self) -> u32 {
        let mut mask = 0;
        if self.full {
            // ESTABLISHED (1) ..= CLOSING (11). Not CLOSE-and-bound (13, BOUND_INACTIVE): those
            // are not connections and `ss -ta` does not show them either.
            mask |= 0xffe;
        }
        if self.time_wait {
            mask |= 1 << decode::TCP_FIN_WAIT2 | 1 << decode::TCP_TIME_WAIT;
        }
        if self.request {
            mask |= 1 << decode::TCP_NEW_SYN_RECV;
        }
        mask
    }
}

/// Why a snapshot could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot open a NETLINK_SOCK_DIAG socket: {0}")]
    Open(std::io::Error),
    #[error("cannot send the {family} sock_diag dump request: {error}")]
    Send {
        family: &'static str,
        error: std::io::Error,
    },
    #[error("cannot receive the {family} sock_diag dump: {error}")]
    Receive {
        family: &'static str,
        error: std::io::Error,
    },
    #[error("the kernel failed the {family} sock_diag dump: {error} (errno {errno})")]
    Kernel {
        family: &'static str,
        errno: i32,
        error: std::io::Error,
    },
    #[error("malformed {family} sock_diag reply: {reason}")]
    Decode {
        family: &'static str,
        reason: String,
    },
}

/// Dumps TCP sockets of the caller's network namespace, IPv4 and IPv6, of the selected kinds.
pub fn dump(kinds: Kinds) -> Result<Vec<DiagSocket>, SnapshotError> {
    let mut out = Vec::new();
    netlink::for_each_socket(kinds.state_mask(), kinds, |msg| {
        out.push(msg.to_socket());
    })?;
    Ok(out)
}

/// Dumps only the listening sockets (full sockets in LISTEN), with their accept queues in
/// `rqueue` / `wqueue`. Cheap at any connection count: with LISTEN alone in the mask the kernel
/// walks only its listener table, never the connection hash.
pub fn dump_listeners() -> Result<Vec<DiagSocket>, SnapshotError> {
    let mut out = Vec::new();
    netlink::for_each_socket(1 << decode::TCP_LISTEN, Kinds::FULL, |msg| {
        out.push(msg.to_socket());
    })?;
    Ok(out)
}

/// Counts the sockets [`dump`] would return, per kind and state, without building them: one
/// receive buffer per call and no allocation per socket, so it is cheap enough to call every
/// second with 100k timewait sockets.
pub fn count(kinds: Kinds) -> Result<Counts, SnapshotError> {
    let mut counts = Counts::default();
    netlink::for_each_socket(kinds.state_mask(), kinds, |msg| {
        counts.add(msg.kind, msg.state())
    })?;
    Ok(counts)
}
