//! A stack copy of a tracepoint record and typed reads from it at run-time offsets.

use aya_ebpf::{
    EbpfContext, helpers::bpf_probe_read_kernel_buf, macros::map, maps::PerCpuArray,
    programs::TracePointContext,
};
use tracer_common::{FieldLoc, TpLayout, layout::MAX_RECORD};

#[repr(C, align(8))]
pub struct Record([u8; MAX_RECORD]);

/// One slot per CPU: these programs never nest on a CPU (the kernel skips a program that would
/// run while another one is active there and counts a recursion miss), so it cannot be clobbered.
/// The BPF stack is too small to hold it beside the event being built.
#[map]
static SCRATCH: PerCpuArray<Record> = PerCpuArray::with_max_entries(1, 0);

impl Record {
    /// Copies the record with one helper call; later reads are plain loads at offsets the
    /// verifier knows. Direct context loads would need the offsets as instruction immediates.
    #[inline(always)]
    pub fn copy(ctx: &TracePointContext, l: &'static TpLayout) -> Result<&'static Self, i64> {
        let len = usize::from(load(&l.copy_len));
        if len == 0 || len > MAX_RECORD {
            return Err(-1);
        }
        let rec = unsafe { &mut *SCRATCH.get_ptr_mut(0).ok_or(-1i64)? };
        unsafe { bpf_probe_read_kernel_buf(ctx.as_ptr() as *const u8, &mut rec.0[..len]) }?;
        Ok(rec)
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
