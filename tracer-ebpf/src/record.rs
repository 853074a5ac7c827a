//! Per-CPU scratch slots: a copy of the record being decoded, and the flag the nested-event
//! catcher reads.

use aya_ebpf::{helpers::bpf_probe_read_kernel_buf, macros::map, maps::PerCpuArray};
use tracer_common::{AF_INET, AF_INET6, Counter, FieldLoc, RawEvent, TpLayout, layout::MAX_RECORD};

use crate::maps::count;

/// Transitions the classic program handled and the catcher has not yet seen, per CPU. Normally
/// at most one or two are pending (one per interrupt nesting level); entries left by a catcher
/// run the kernel skipped are reclaimed oldest first.
pub const MARKS: usize = 8;
/// Marks older than this many later marks are stale (their catcher run was skipped): a pending
/// mark is consumed within one softirq burst.
const MARK_TTL: u64 = 1024;

#[repr(C, align(8))]
pub struct Slot {
    /// Identities of handled transitions awaiting the catcher; 0 is free.
    marks: [u64; MARKS],
    /// When each mark was written (`next_seq` at the time): oldest is reclaimed first.
    seqs: [u64; MARKS],
    next_seq: u64,
    /// Records emitted from this slot: paces the (costly) pending-bytes check.
    pub emitted: u64,
    /// When this slot last forced a wakeup (ns): paces the (costly) self-interrupt it raises.
    pub woke_ns: u64,
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
    /// Records that the classic program handled a transition. Takes a free or expired entry;
    /// when none is left, the newest one. Marks pending for the catcher are older than marks
    /// left by nested transitions whose catcher run the kernel skipped, so they survive a
    /// long softirq burst.
    #[inline(always)]
    pub fn mark(&mut self, mark: u64) {
        let now = self.next_seq;
        let mut victim = 0;
        let mut best = 0u64;
        let mut i = 0;
        while i < MARKS {
            let score = if self.marks[i] == 0 || now.wrapping_sub(self.seqs[i]) > MARK_TTL {
                u64::MAX
            } else {
                self.seqs[i]
            };
            if score >= best {
                best = score;
                victim = i;
            }
            i += 1;
        }
        self.marks[victim] = mark;
        self.seqs[victim] = now;
        self.next_seq = now.wrapping_add(1);
        count(Counter::MarksWritten);
    }

    /// Whether the classic program handled this transition; consumes the newest identical
    /// mark. Older identical ones are left by catcher runs the kernel skipped (a socket address
    /// is soon reused for the same transition): they are cleared too, so that they cannot pass
    /// a later skipped transition off as handled, but not counted as taken, so that they still
    /// count as handled hits whose catcher was skipped (written less taken).
    #[inline(always)]
    pub fn take_mark(&mut self, mark: u64) -> bool {
        let now = self.next_seq;
        let mut found = MARKS;
        let mut newest = 0u64;
        let mut i = 0;
        while i < MARKS {
            let age = now.wrapping_sub(self.seqs[i]);
            if self.marks[i] == mark {
                if age <= MARK_TTL && (found == MARKS || age < newest) {
                    found = i;
                    newest = age;
                }
                self.marks[i] = 0;
            }
            i += 1;
        }
        if found < MARKS {
            count(Counter::MarksTaken);
            true
        } else {
            false
        }
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
