//! The record the kernel programs write into the ring buffer.

use crate::COMM_LEN;

/// What a [`RawEvent`] describes. Stored as a `u8` in the record; userspace converts it with
/// `TryFrom` and rejects unknown values.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// `sock:inet_sock_set_state` for a TCP socket.
    State = 1,
    /// `tcp:tcp_retransmit_skb`.
    Retransmit = 2,
    /// `tcp:tcp_send_reset`: this host sent a RST. `sk` is 0 when no socket matched the segment
    /// (a port scan's probe); `new_state` is the socket's state, 0 when unknown.
    ResetSent = 3,
    /// `tcp:tcp_receive_reset`: a RST arrived on a socket.
    ResetReceived = 4,
    /// `tcp:tcp_retransmit_synack`: a listener (`sk`) retransmitted a SYN-ACK, so the handshake
    /// has not completed. `sport` is the listening port, `daddr` the client.
    SynackRetransmit = 5,
    /// With [`crate::Attribution::Userspace`] only: a send or receive by a process other than
    /// the one the socket table has for the socket (or the first one seen). `pid` and `comm`
    /// are the new owner. Userspace attribution consumes it; it is never output.
    Owner = 6,
}

impl TryFrom<u8> for EventKind {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        match v {
            1 => Ok(Self::State),
            2 => Ok(Self::Retransmit),
            3 => Ok(Self::ResetSent),
            4 => Ok(Self::ResetReceived),
            5 => Ok(Self::SynackRetransmit),
            6 => Ok(Self::Owner),
            other => Err(other),
        }
    }
}

/// How the kernel learnt who owns a socket.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerSource {
    /// Never seen in process context (the socket predates the tracer, or its entry was evicted).
    Unknown = 0,
    /// Observed in process context on this socket: connect, listen, close, send or receive.
    Process = 1,
    /// A passively opened socket not yet touched by its process: the owner of the listener on
    /// its local port.
    Listener = 2,
    /// Seeded by userspace from `/proc` at start-up.
    Snapshot = 3,
}

impl TryFrom<u8> for OwnerSource {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        match v {
            0 => Ok(Self::Unknown),
            1 => Ok(Self::Process),
            2 => Ok(Self::Listener),
            3 => Ok(Self::Snapshot),
            other => Err(other),
        }
    }
}

/// One ring-buffer record. Addresses are in network byte order; an IPv4 address occupies the
/// first four bytes. Ports are in host byte order, `sport` is always the local side.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawEvent {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// Kernel address of the socket (`skaddr`).
    pub sk: u64,
    /// Nanoseconds spent in `old_state`; 0 when the previous transition was not seen.
    pub duration_ns: u64,
    /// Transitions into CLOSE only: application bytes sent and received on the socket (from
    /// `sock_send_length` / `sock_recv_length`), and nanoseconds since the connection started
    /// (0 when its start was not seen).
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub lifespan_ns: u64,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Owner's command name, NUL padded.
    pub comm: [u8; COMM_LEN],
    /// Owner's process id (tgid); 0 when unknown.
    pub pid: u32,
    /// Inode number of the socket's network namespace; 0 when unknown.
    pub netns: u32,
    pub sport: u16,
    pub dport: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// An [`EventKind`].
    pub kind: u8,
    /// For retransmits both states hold the socket's state.
    pub old_state: u8,
    pub new_state: u8,
    /// An [`OwnerSource`].
    pub owner_src: u8,
    pub _pad: [u8; 2],
    /// Retransmits: `err` of `tcp_retransmit_skb` where the kernel reports it, else 0.
    /// Transitions into CLOSE: the socket's pending error (`sk_err`, an errno), which tells a
    /// refused or timed-out connection from an orderly close.
    pub err: i32,
    /// Transitions into CLOSE: retransmissions seen on the socket.
    pub retransmits: u32,
}

impl RawEvent {
    pub const SIZE: usize = core::mem::size_of::<Self>();
}

const _: () = assert!(RawEvent::SIZE == 128);
const _: () = assert!(core::mem::align_of::<RawEvent>() == 8);
// The kernel side copies command names as two words (see its `comm` module).
const _: () = assert!(core::mem::offset_of!(RawEvent, comm).is_multiple_of(8));

#[cfg(feature = "user")]
unsafe impl aya::Pod for RawEvent {}

impl RawEvent {
    pub const fn zeroed() -> Self {
        Self {
            ts_ns: 0,
            sk: 0,
            duration_ns: 0,
            bytes_sent: 0,
            bytes_received: 0,
            lifespan_ns: 0,
            saddr: [0; 16],
            daddr: [0; 16],
            comm: [0; COMM_LEN],
            pid: 0,
            netns: 0,
            sport: 0,
            dport: 0,
            family: 0,
            kind: 0,
            old_state: 0,
            new_state: 0,
            owner_src: 0,
            _pad: [0; 2],
            err: 0,
            retransmits: 0,
        }
    }
}
