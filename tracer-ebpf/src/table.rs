//! The socket table: socket address -> owner, time of the last transition, bytes. A
//! set-associative array rather than an LRU hash: a lookup is one inlined array access and a
//! scan of one cache line of keys, where the LRU hash took bucket and list locks on every insert
//! and delete (measured: 60-90 ns less per transition, README "Where the kernel time goes").
//! The price is that a full set evicts one of its sockets while other sets have room; the
//! caller counts every eviction of a live socket.
//!
//! There is no lock. A socket's transitions are serialized by the kernel (socket lock or its
//! softirq), so only two sockets of one set racing to insert, or an eviction racing another
//! CPU's write to the evicted entry, can collide; the entry's own `sk` tells a writer that its
//! socket lost the way (see `count_on_entry`).

use aya_ebpf::macros::map;
use aya_ebpf::maps::Array;
use tracer_common::{Counter, SOCK_WAYS, SockInfo, SockSet, sock_set};

use crate::{maps::count, record::load};

/// Sized by userspace at load (`--max-sockets` / `SOCK_WAYS` sets).
#[map]
static SOCK_TABLE: Array<SockSet> = Array::with_max_entries(32_768, 0);

/// Number of sets in `SOCK_TABLE`, set by userspace at load.
#[unsafe(no_mangle)]
static SOCK_SETS: u32 = 32_768;

const WAY_MASK: usize = SOCK_WAYS - 1;

/// A socket's entry: its set and way.
#[derive(Clone, Copy)]
pub struct Entry {
    set: *mut SockSet,
    way: usize,
}

impl Entry {
    /// The entry's value. Raw, because other CPUs may write it too.
    #[inline(always)]
    pub fn info(self) -> *mut SockInfo {
        unsafe { (&raw mut (*self.set).infos as *mut SockInfo).add(self.way & WAY_MASK) }
    }

    #[inline(always)]
    fn key(self) -> *mut u64 {
        unsafe { (&raw mut (*self.set).keys as *mut u64).add(self.way & WAY_MASK) }
    }

    /// Frees the way, unless another socket took it meanwhile.
    #[inline(always)]
    pub fn remove(self, sk: u64) {
        let key = self.key();
        unsafe {
            if core::ptr::read_volatile(key) == sk {
                core::ptr::write_volatile(key, 0);
            }
        }
    }
}

#[inline(always)]
fn set_of(sk: u64) -> Option<*mut SockSet> {
    SOCK_TABLE.get_ptr_mut(sock_set(sk, load(&SOCK_SETS)))
}

/// The entry of socket `sk`, if the table holds one.
#[inline(always)]
pub fn lookup(sk: u64) -> Option<Entry> {
    if sk == 0 {
        return None;
    }
    let set = set_of(sk)?;
    let keys = unsafe { &raw const (*set).keys as *const u64 };
    let mut way = 0;
    while way < SOCK_WAYS {
        if unsafe { core::ptr::read_volatile(keys.add(way)) } == sk {
            return Some(Entry { set, way });
        }
        way += 1;
    }
    None
}

/// Stores `info` as socket `sk`'s entry: in its own way if it has one, else in a free way, else
/// in the way of the set's socket with the oldest last transition. Returns the socket evicted
/// from that way, if any.
#[inline(always)]
pub fn insert(sk: u64, info: &SockInfo) -> Option<u64> {
    if sk == 0 {
        return None;
    }
    let Some(set) = set_of(sk) else {
        count(Counter::SockMapFull);
        return None;
    };
    let keys = unsafe { &raw mut (*set).keys as *mut u64 };
    let mut free = SOCK_WAYS;
    let mut own = SOCK_WAYS;
    let mut way = 0;
    while way < SOCK_WAYS {
        let k = unsafe { core::ptr::read_volatile(keys.add(way)) };
        if k == sk {
            own = way;
            break;
        }
        if k == 0 && free == SOCK_WAYS {
            free = way;
        }
        way += 1;
    }
    let (way, evicted) = if own < SOCK_WAYS {
        (own, None)
    } else if free < SOCK_WAYS {
        (free, None)
    } else {
        let way = oldest(set);
        (
            way,
            Some(unsafe { core::ptr::read_volatile(keys.add(way & WAY_MASK)) }),
        )
    };
    let e = Entry { set, way };
    unsafe {
        // Key last: a lookup of `sk` finds the entry only once it is written.
        core::ptr::write_volatile(e.key(), 0);
        *e.info() = *info;
        core::ptr::write_volatile(e.key(), sk);
    }
    evicted
}

/// The way whose socket made its last transition longest ago (entries with none, filled by
/// send/recv alone, first).
#[inline(always)]
fn oldest(set: *mut SockSet) -> usize {
    let infos = unsafe { &raw const (*set).infos as *const SockInfo };
    let (mut pick, mut ts) = (0, u64::MAX);
    let mut way = 0;
    while way < SOCK_WAYS {
        let t = unsafe { core::ptr::read_volatile(&raw const (*infos.add(way)).last_ts) };
        if t < ts {
            (pick, ts) = (way, t);
        }
        way += 1;
    }
    pick
}
