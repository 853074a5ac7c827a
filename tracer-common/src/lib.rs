//! Types shared by the kernel programs and the userspace agent.
//!
//! Everything here is `#[repr(C)]` with explicit padding so both sides agree on the byte layout;
//! the `const` assertions catch accidental changes. Userspace never transmutes these from ring
//! buffer bytes into enums: it checks lengths and converts integers with `TryFrom`.
#![no_std]

pub mod config;
pub mod event;
pub mod filter;
pub mod layout;
pub mod marks;
pub mod rings;
pub mod sock;
pub mod stage;
pub mod state;

pub use config::{Attribution, Config, Counter, WakeupMode};
pub use event::{EventKind, OwnerSource, RawEvent};
pub use filter::Filter;
pub use layout::{FieldLoc, TpLayout};
pub use marks::MarkTable;
pub use sock::{
    ListenerOwner, ProcTraffic, SOCK_WAYS, SockInfo, SockSet, portpair, sock_set, sock_sets,
};

/// Address families as the tracepoints report them.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u16 = 6;
/// `TASK_COMM_LEN`.
pub const COMM_LEN: usize = 16;
