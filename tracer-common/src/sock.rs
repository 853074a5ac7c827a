//! Per-socket and per-listener state kept in kernel maps.

use crate::COMM_LEN;

/// Value of the socket map, keyed by the socket's kernel address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockInfo {
    /// Time of the last state transition (CLOCK_MONOTONIC ns); 0 when none was seen.
    pub last_ts: u64,
    pub comm: [u8; COMM_LEN],
    pub pid: u32,
    /// An [`crate::OwnerSource`].
    pub owner_src: u8,
    pub _pad: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<SockInfo>() == 32);

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
