//! Per-CPU scratch slots: a copy of the record being decoded, and the marks the nested-event
//! catcher reads.

use aya_ebpf::{helpers::bpf_probe_read_kernel_buf, macros::map, maps::PerCpuArray};
use tracer_common::{
    AF_INET, AF_INET6, Counter, FieldLoc, MarkTable, RawEvent, TpLayout, layout::MAX_RECORD,
};

use crate::maps::count;

#[repr(C, align(8))]
pub struct Slot {
    /// Hits the classic programs handled, awaiting their catcher.
    marks: MarkTable,
    /// One of our classic programs is running on this CPU (see `classic_interrupted`).
    classic_running: u64,
    /// Records emitted from this slot: paces the (costly) pending-bytes check.
    pub emitted: u64,
    /// When this slot last forced a wakeup (ns): paces the (costly) self-interrupt it raises.
    pub woke_ns: u64,
    /// The last socket namespace read on this CPU: its `struct net` address, inode number and
    /// when it was read (see `netns_cached`).
    pub net_ptr: u64,
    pub net_inum: u64,
    pub net_read_ns: u64,
    pub rec: Record,
    /// The event being built: too large for the 512-byte BPF stack beside everything else.
    pub ev: RawEvent,
}

/// A copy of the tracepoint record (or socket prefix) being decoded.
#[repr(C, align(8))]
pub struct Record([u8; MAX_RECORD]);

/// One transition's identity: socket address and both states. Kernel addresses share their top
/// 16 bits, so folding the states into them keeps distinct transitions distinct.
#[inline(always)]
pub fn mark_of(sk: u64, old: u8, new: u8) -> u64 {
    sk ^ (u64::from(old) << 48) ^ (u64::from(new) << 56)
}

/// Slot used by the classic tracepoint programs.
pub const CLASSIC: u32 = 0;
/// Slot used by the raw-tracepoint catcher.
pub const NESTED: u32 = 1;

/// Classic programs never nest on a CPU (the kernel skips one that would, and counts a
/// recursion miss). The catcher only does work for a transition the classic program skipped,
/// which happens in a softirq that interrupted it, and softirqs do not nest. So each slot has
/// one user at a time. The BPF stack is too small to hold the copy beside the event.
#[map]
static SCRATCH: PerCpuArray<Slot> = PerCpuArray::with_max_entries(2, 0);

#[inline(always)]
pub fn slot(which: u32) -> Option<&'static mut Slot> {
    SCRATCH.get_ptr_mut(which).map(|p| unsafe { &mut *p })
}

impl Slot {
    /// Brackets a classic program run. Volatile, so that the compiler neither drops nor moves
    /// the stores around the run.
    #[inline(always)]
    pub fn classic_enters(&mut self) {
        unsafe { core::ptr::write_volatile(&raw mut self.classic_running, 1) };
    }

    #[inline(always)]
    pub fn classic_leaves(&mut self) {
        unsafe { core::ptr::write_volatile(&raw mut self.classic_running, 0) };
    }

    /// Whether one of our classic programs is running below this hit: the kernel then skipped
    /// every classic program for it, whatever marks are left.
    #[inline(always)]
    pub fn classic_interrupted(&self) -> bool {
        unsafe { core::ptr::read_volatile(&raw const self.classic_running) != 0 }
    }

    /// Records that the classic program handled a hit at the context level `level` identifies
    /// (the address of the record buffer the kernel handed it); see [`MarkTable::put`].
    #[inline(always)]
    pub fn mark(&mut self, mark: u64, level: u64) {
        count(Counter::MarksWritten);
        self.marks.put(mark, level);
    }

    /// Whether the classic program handled this hit; consumes its mark.
    #[inline(always)]
    pub fn take_mark(&mut self, mark: u64) -> bool {
        let found = self.marks.take(mark);
        if found {
            count(Counter::MarksTaken);
        }
        found
    }
}

impl Record {
    /// Copies the first `copy_len` bytes at `src` with one helper call; later reads are plain
    /// loads at offsets the verifier knows (direct context loads would need the offsets as
    /// instruction immediates).
    #[inline(always)]
    pub fn copy(&mut self, src: *const u8, l: &'static TpLayout) -> Result<(), i64> {
        let len = usize::from(load(&l.copy_len));
        if len == 0 || len > MAX_RECORD {
            return Err(-1);
        }
        unsafe { bpf_probe_read_kernel_buf(src, &mut self.0[..len]) }?;
        Ok(())
    }

    /// An unsigned integer field (1, 2, 4 or 8 bytes; userspace checked size and alignment).
    /// Absent fields read as 0.
    #[inline(always)]
    pub fn uint(&self, f: &'static FieldLoc) -> u64 {
        let f = load(f);
        let off = usize::from(f.offset);
        if off + usize::from(f.size) > MAX_RECORD {
            return 0;
        }
        let p = unsafe { self.0.as_ptr().add(off) };
        unsafe {
            match f.size {
                1 => u64::from(*p),
                2 => u64::from(core::ptr::read(p as *const u16)),
                4 => u64::from(core::ptr::read(p as *const u32)),
                8 => core::ptr::read(p as *const u64),
                _ => 0,
            }
        }
    }

    /// The address family of a tracepoint with both address forms. Kernels before 5.13 have no
    /// `family` field in the tcp tracepoints; they store IPv4 endpoints as v4-mapped IPv6 ones.
    #[inline(always)]
    pub fn family(&self, l: &'static TpLayout) -> u16 {
        if load(&l.family).is_present() {
            return self.uint(&l.family) as u16;
        }
        let mut v6 = [0u8; 16];
        self.bytes(&l.saddr_v6, &mut v6);
        let mapped = v6[..10].iter().all(|&b| b == 0) && v6[10] == 0xff && v6[11] == 0xff;
        if mapped { AF_INET } else { AF_INET6 }
    }

    /// A native-order `u16` at a byte offset (inside a larger field such as a sockaddr).
    #[inline(always)]
    pub fn u16_at(&self, off: usize) -> u16 {
        if off + 2 > MAX_RECORD {
            return 0;
        }
        u16::from_ne_bytes([self.0[off], self.0[off + 1]])
    }

    /// Copies `N` bytes at a byte offset into the start of `out`.
    #[inline(always)]
    pub fn bytes_at<const N: usize>(&self, off: usize, out: &mut [u8; 16]) {
        if N <= 16 && off + N <= MAX_RECORD {
            out[..N].copy_from_slice(&self.0[off..off + N]);
        }
    }

    /// Copies a byte-array field (4 or 16 bytes) into the start of `out`.
    #[inline(always)]
    pub fn bytes(&self, f: &'static FieldLoc, out: &mut [u8; 16]) {
        let f = load(f);
        let off = usize::from(f.offset);
        match f.size {
            4 if off + 4 <= MAX_RECORD => out[..4].copy_from_slice(&self.0[off..off + 4]),
            16 if off + 16 <= MAX_RECORD => out.copy_from_slice(&self.0[off..off + 16]),
            _ => {}
        }
    }
}

/// Reads a global through a volatile load so the compiler cannot fold in the placeholder value
/// compiled into the object; the verifier sees the frozen value userspace set as a constant.
#[inline(always)]
pub fn load<T: Copy>(g: &'static T) -> T {
    unsafe { core::ptr::read_volatile(g) }
}
