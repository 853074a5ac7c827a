//! The socket table: socket address -> owner, time of the last transition, bytes. A
//! set-associative array rather than an LRU hash: a lookup is one inlined array access and a
//! scan of one cache line of keys, where the LRU hash took bucket and list locks on every insert
//! and delete (measured: 60-90 ns less per transition, README "Where the kernel time goes").
//! The price is that a full set evicts one of its sockets while other sets have room; the
//! caller counts every eviction of a live socket.
//!
//! A socket's own transitions are serialized by the kernel (socket lock or its softirq), so
//! reading and updating a socket's entry needs no lock. Taking a way (free or evicted) and
//! freeing one do: two CPUs entering sockets of one set would otherwise both pick the same free
//! way and one socket would vanish uncounted (CI's full-rate churn test caught exactly that).
//! Those go through a per-set claim word (see `Claim`), twice per socket, not per
//! transition. The claim word shares the keys' cache line: as a map of its own it cost a cold
//! miss of its own at every claim (perf: a fifth of the transition program's samples, with
//! the map's values 16 bytes off cache-line alignment besides). An eviction can still race another CPU's send/recv write to the evicted entry;
//! the entry's own `sk` tells that writer its socket lost the way (see `count_on_entry`).
//!
//! The verifier walks this code once per distinct state of its callers, so its cost is kept
//! low: the claim's attempts are one out-of-line function, and no loop has a count the verifier
//! must track (a claim with a spin loop and an unclaimed fallback scan took 6.1's verifier past
//! its million instructions, and 5.10's rejected it).

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{bindings::BPF_F_MMAPABLE, macros::map, maps::Array};
use tracer_common::{SOCK_WAYS, SockInfo, SockSet, sock_set};

use crate::record::load;

/// Sized by userspace at load (`--max-sockets` / `SOCK_WAYS` sets). Memory-mappable only so
/// that the kernel page-aligns its values, which puts each set's claim and keys on one line.
#[map]
static SOCK_TABLE: Array<SockSet> = Array::with_max_entries(32_768, BPF_F_MMAPABLE);

/// Number of sets in `SOCK_TABLE`, set by userspace at load.
#[unsafe(no_mangle)]
static SOCK_SETS: u32 = 32_768;

/// A way index the verifier can see is in bounds.
#[inline(always)]
fn bounded(way: usize) -> usize {
    if way < SOCK_WAYS { way } else { SOCK_WAYS - 1 }
}

/// Attempts at a busy claim word before giving up. The holder's section is a scan of one cache
/// line and an 80-byte copy, which these attempts outlast many times over, unless the holder
/// was interrupted (on this CPU: then it cannot finish first) or its vCPU descheduled. Giving up
/// leaves the socket out of the table, counted as `sock_table_busy` (the caller's `FAILED`).
const CLAIM_ATTEMPTS: u32 = 16;

/// Reads of the claim word between two attempts: a pause without hammering the line with locked
/// adds, unrolled, so the verifier has no loop count to track.
const CLAIM_PAUSE: u32 = 8;

/// A try-lock built from the atomic add every BPF kernel has (compare-and-swap needs 5.12 and
/// BPF ISA v3): add 1, read back, and hold the set only if the word is 1. Of two CPUs whose
/// adds overlap, the later add's read includes the earlier add (per-location coherence), so at
/// most one sees 1; both may see 2, and both back off. x86's locked add is a full barrier, so
/// the holder's writes are visible to the next holder.
struct Claim(*mut u64);

impl Claim {
    #[inline(always)]
    fn take(set: *mut SockSet) -> Option<Self> {
        let word = unsafe { &raw mut (*set).claim };
        (try_claim(word) != 0).then_some(Self(word))
    }

    #[inline(always)]
    fn release(self) {
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(self.0, u64::MAX) };
    }
}

/// `Claim::take`'s attempts (1 when claimed), out of line: inlined at each insert and free,
/// they doubled the transition program.
#[inline(never)]
fn try_claim(word: *mut u64) -> u32 {
    let mut attempt = 0;
    while attempt < CLAIM_ATTEMPTS {
        unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(word, 1);
            if core::ptr::read_volatile(word) == 1 {
                return 1;
            }
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(word, u64::MAX);
        }
        attempt += 1;
        let mut read = 0;
        while read < CLAIM_PAUSE {
            unsafe { core::ptr::read_volatile(word) };
            read += 1;
        }
    }
    0
}

/// A socket's entry: its set and way, or no entry (a null set).
#[derive(Clone, Copy)]
pub struct Entry {
    set: *mut SockSet,
    way: usize,
}

impl Entry {
    pub const NONE: Self = Self {
        set: core::ptr::null_mut(),
        way: 0,
    };

    #[inline(always)]
    pub fn found(self) -> bool {
        !self.set.is_null()
    }

    /// The entry's value. Raw, because other CPUs may write it too.
    #[inline(always)]
    pub fn info(self) -> *mut SockInfo {
        unsafe { (&raw mut (*self.set).infos as *mut SockInfo).add(bounded(self.way)) }
    }

    #[inline(always)]
    fn key(self) -> *mut u64 {
        unsafe { (&raw mut (*self.set).keys as *mut u64).add(bounded(self.way)) }
    }

    /// Frees the way, unless another socket took it meanwhile (an eviction). If the set stays
    /// claimed the entry stays too: the next socket at this address reuses it, and an eviction
    /// takes it as a closed socket's, uncounted.
    #[inline(always)]
    pub fn remove(self, sk: u64) {
        let key = self.key();
        if unsafe { core::ptr::read_volatile(key) } != sk {
            return;
        }
        if let Some(claim) = Claim::take(self.set) {
            unsafe {
                if core::ptr::read_volatile(key) == sk {
                    core::ptr::write_volatile(key, 0);
                }
            }
            claim.release();
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
    let e = find(sk);
    e.found().then_some(e)
}

/// The entry of socket `sk`, or [`Entry::NONE`].
#[inline(always)]
pub fn find(sk: u64) -> Entry {
    if sk == 0 {
        return Entry::NONE;
    }
    let Some(set) = set_of(sk) else {
        return Entry::NONE;
    };
    let keys = unsafe { &raw const (*set).keys as *const u64 };
    let mut way = 0;
    while way < SOCK_WAYS {
        if unsafe { core::ptr::read_volatile(keys.add(way)) } == sk {
            return Entry { set, way };
        }
        way += 1;
    }
    Entry::NONE
}

/// `insert` stored the entry (in the socket's own way or a free one). Any other result but
/// `FAILED` is the address of the socket evicted for it (never 0 or 1). An integer rather than
/// an enum with a payload, whose unset payload LLVM may spill and reload on the other paths:
/// 5.10's verifier rejects reading a stack slot that was never written.
pub const STORED: u64 = 0;
/// `insert` found no set for the socket, or its set stayed claimed: the socket has no entry.
pub const FAILED: u64 = 1;

/// Stores `info` as socket `sk`'s entry: in its own way if it has one, else in a free way, else
/// in the way of the set's socket with the oldest last transition. Under the set's claim, after
/// a rescan (a send/recv on another CPU may have entered the socket meanwhile). Inline: out of
/// line it cost the verifier more (each caller state walks it again anyway) and its frame took
/// 6.1's combined stack past 512 bytes.
#[inline(always)]
pub fn insert(sk: u64, info: &SockInfo) -> u64 {
    if sk == 0 {
        return STORED;
    }
    let Some(set) = set_of(sk) else {
        return FAILED;
    };
    let Some(claim) = Claim::take(set) else {
        return FAILED;
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
    let (way, result) = if own < SOCK_WAYS {
        (own, STORED)
    } else if free < SOCK_WAYS {
        (free, STORED)
    } else {
        let way = oldest(set);
        (way, unsafe {
            core::ptr::read_volatile(keys.add(bounded(way)))
        })
    };
    let e = Entry { set, way };
    unsafe {
        if own < SOCK_WAYS {
            // The key stays: clearing it would hide the entry from a send/recv's lookup.
            *e.info() = *info;
        } else {
            // Key last: a lookup of `sk` finds the entry only once it is written, and a lookup
            // of an evicted socket finds nothing rather than this socket's entry.
            core::ptr::write_volatile(e.key(), 0);
            *e.info() = *info;
            core::ptr::write_volatile(e.key(), sk);
        }
    }
    claim.release();
    result
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
