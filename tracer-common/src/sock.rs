//! Per-socket and per-listener state kept in kernel maps.

use crate::COMM_LEN;

/// Value of the socket map, keyed by the socket's kernel address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockInfo {
    /// The key again. The send/recv programs write through a looked-up pointer outside the
    /// socket lock; if a reset deletes the key meanwhile, the map hands the element to the
    /// next socket at once (preallocated maps recycle without an RCU grace period), and only
    /// this field tells them the element is no longer theirs.
    pub sk: u64,
    /// Time of the last state transition (CLOCK_MONOTONIC ns); 0 when none was seen.
    pub last_ts: u64,
    /// When the connection started (CLOSE -> SYN_SENT, or LISTEN -> SYN_RECV); 0 when unseen.
    pub start_ts: u64,
    /// Application bytes moved through the socket.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub comm: [u8; COMM_LEN],
    pub pid: u32,
    /// Inode of the socket's network namespace; 0 when not read yet.
    pub netns: u32,
    pub retransmits: u32,
    /// An [`crate::OwnerSource`].
    pub owner_src: u8,
    /// 1 while this passive child's `LISTEN -> SYN_RECV` waits to be emitted: kernels before
    /// 6.x set the state before copying the peer's address into the new socket, so the
    /// tracepoint reports no peer; the kernel program emits it with the next transition.
    pub open_pending: u8,
    pub _pad: [u8; 2],
}

impl SockInfo {
    pub const fn new(sk: u64, pid: u32, comm: [u8; COMM_LEN], owner_src: u8) -> Self {
        Self {
            sk,
            last_ts: 0,
            start_ts: 0,
            bytes_sent: 0,
            bytes_received: 0,
            comm,
            pid,
            netns: 0,
            retransmits: 0,
            owner_src,
            open_pending: 0,
            _pad: [0; 2],
        }
    }
}

const _: () = assert!(core::mem::size_of::<SockInfo>() == 72);

/// Value of the per-process traffic map, keyed by tgid: application bytes the process moved
/// over TCP, whichever socket it used. Updated in process context on every send/recv.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcTraffic {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub comm: [u8; COMM_LEN],
}

const _: () = assert!(core::mem::size_of::<ProcTraffic>() == 32);

/// Value of the listener map, keyed by local port: who listens there, so that passively opened
/// sockets (created in softirq) can be attributed before their process touches them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerOwner {
    pub comm: [u8; COMM_LEN],
    pub pid: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<ListenerOwner>() == 24);

#[cfg(feature = "user")]
unsafe impl aya::Pod for SockInfo {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for ListenerOwner {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for ProcTraffic {}
