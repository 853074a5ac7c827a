//! Per-socket and per-listener state kept in kernel maps.

use crate::COMM_LEN;

/// One socket's entry in the socket table, found by the socket's kernel address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockInfo {
    /// The key again. The send/recv programs write through a looked-up pointer outside the
    /// socket lock; if a reset deletes the key meanwhile, or another socket takes the way, the
    /// entry belongs to another socket at once, and only this field tells them it is no longer
    /// theirs.
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
    /// With userspace attribution: the socket's `skc_portpair` when the entry was made. Nothing
    /// clears a closed socket's entry when a new connection starts at its address (the
    /// transition programs do not touch the table), so an entry whose ports differ belongs to
    /// an earlier connection.
    pub ports: u32,
    pub _pad2: u32,
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
            ports: 0,
            _pad2: 0,
        }
    }
}

const _: () = assert!(core::mem::size_of::<SockInfo>() == 80);
// The kernel side copies command names as two words (see its `comm` module).
const _: () = assert!(core::mem::offset_of!(SockInfo, comm).is_multiple_of(8));
const _: () = assert!(core::mem::align_of::<SockInfo>() == 8);

/// The `skc_portpair` of a socket whose transitions report these ports (host order, local
/// first): `skc_dport` (network order) in the low half, `skc_num` in the high half, as x86_64
/// reads the union.
pub const fn portpair(sport: u16, dport: u16) -> u32 {
    ((sport as u32) << 16) | (dport.to_be() as u32)
}

/// Entries per set of the socket table: with the set's claim word, their keys fill one cache
/// line.
pub const SOCK_WAYS: usize = 7;

/// One set of the kernel's socket table, a set-associative array: a socket lives in one of the
/// `SOCK_WAYS` ways of the set its address hashes to. The claim word and the keys come first,
/// on one cache line (the map is memory-mappable, which makes the kernel page-align its
/// values), so a lookup reads that line and then the one entry it finds, and taking the claim
/// costs no miss of its own. 0 marks a free way.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SockSet {
    /// Held by a CPU taking or freeing a way (see the kernel side's `Claim`).
    pub claim: u64,
    pub keys: [u64; SOCK_WAYS],
    pub infos: [SockInfo; SOCK_WAYS],
    /// To a whole number of cache lines, so every set's first line is its own.
    pub _pad: [u64; 2],
}

const _: () = assert!(core::mem::size_of::<SockSet>() == 64 + 80 * SOCK_WAYS + 16);
const _: () = assert!(core::mem::size_of::<SockSet>().is_multiple_of(64));
const _: () = assert!(core::mem::offset_of!(SockSet, infos) == 64);

/// Sets needed to hold `max_sockets` entries.
pub const fn sock_sets(max_sockets: u32) -> u32 {
    max_sockets.div_ceil(SOCK_WAYS as u32)
}

/// The set of socket `sk` among `sets`. Socket addresses are slab objects: their low bits
/// repeat, so the address is mixed (Fibonacci hashing) and its top 32 bits scaled to `sets`,
/// which need not be a power of two.
#[inline(always)]
pub const fn sock_set(sk: u64, sets: u32) -> u32 {
    let h = sk.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    ((h * sets as u64) >> 32) as u32
}

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
const _: () = assert!(core::mem::offset_of!(ListenerOwner, comm) == 0);

#[cfg(feature = "user")]
unsafe impl aya::Pod for SockInfo {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for ListenerOwner {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for ProcTraffic {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set loads of `n` socket addresses laid out as the slab allocator lays out TCP sockets:
    /// objects of `size` bytes packed into 32 KiB slabs at scattered kernel addresses.
    fn loads(n: usize, size: u64, sets: u32) -> [u32; 64] {
        let mut per_set = [0u8; 1 << 16];
        let mut page = 0xffff_8880_0000_0000u64;
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut placed = 0;
        while placed < n {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            page = page.wrapping_add((rng % 4096 + 1) << 15);
            let mut off = 0;
            while off + size <= 32 << 10 && placed < n {
                let s = sock_set(page + off, sets) as usize;
                per_set[s] = per_set[s].saturating_add(1);
                off += size;
                placed += 1;
            }
        }
        let mut hist = [0u32; 64];
        for &c in &per_set[..sets as usize] {
            hist[usize::from(c).min(63)] += 1;
        }
        hist
    }

    #[test]
    fn sets_cover_the_capacity() {
        assert_eq!(sock_sets(262_144), 37_450);
        assert_eq!(sock_sets(1022), 146);
        assert_eq!(sock_sets(1023), 147);
        assert!(sock_set(u64::MAX, 129) < 129);
        assert!(sock_set(0xffff_8880_1234_5000, 1) == 0);
    }

    #[test]
    fn slab_addresses_spread_over_the_sets_as_random_ones_would() {
        // 100k sockets in the default 37,450 sets (2.67 a set): random placement overflows
        // 233 sets (the Poisson tail beyond 7) and leaves 2,593 empty; slab strides must not
        // do much worse.
        for size in [2048u64, 2304, 2432, 4096] {
            let hist = loads(100_000, size, 37_450);
            let overflowing: u32 = hist[SOCK_WAYS + 1..].iter().sum();
            assert!(
                overflowing < 500,
                "size {size}: {overflowing} sets overflow: {hist:?}"
            );
            let empty = hist[0];
            assert!(
                (2100..3100).contains(&empty),
                "size {size}: {empty} empty sets"
            );
        }
    }
}
