//! Per-CPU staging of events: up to a batch of them per ring-buffer record (see
//! `tracer_common::stage`).

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE, helpers::bpf_get_smp_processor_id, macros::map, maps::Array,
};
use tracer_common::{
    RawEvent,
    stage::{STAGE_EVENTS, Stage},
};

/// One entry per possible CPU (userspace sizes it at load, maps it, and turns staging on).
#[map]
static STAGE: Array<Stage> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// This CPU's stage.
#[inline(always)]
pub fn this_cpu() -> Option<&'static mut Stage> {
    let cpu = unsafe { bpf_get_smp_processor_id() };
    STAGE.get_ptr_mut(cpu).map(|p| unsafe { &mut *p })
}

/// Whether a program below this one on the CPU is writing the stage. Volatile accesses here
/// and in [`claim`] / [`release`], so the compiler keeps them where they are.
#[inline(always)]
pub fn busy(st: &Stage) -> bool {
    unsafe { core::ptr::read_volatile(&st.busy) != 0 }
}

/// Whether userspace turned staging on (it can flush this CPU).
#[inline(always)]
pub fn on(st: &Stage) -> bool {
    unsafe { core::ptr::read_volatile(&st.on) != 0 }
}

/// Whether the stage holds a whole batch.
#[inline(always)]
pub fn full(st: &Stage) -> bool {
    st.count as usize >= STAGE_EVENTS
}

/// Marks the stage in use. A plain store is enough: only programs on this CPU touch it, and one
/// that interrupts this one between the check and the store finishes before this one resumes.
#[inline(always)]
pub fn claim(st: &mut Stage) {
    unsafe { core::ptr::write_volatile(&mut st.busy, 1) };
}

#[inline(always)]
pub fn release(st: &mut Stage) {
    unsafe { core::ptr::write_volatile(&mut st.busy, 0) };
}

/// Appends a copy of `ev` (word by word: a struct copy becomes a byte-wise `memcpy`
/// subprogram). The caller writes a full stage out first.
#[inline(always)]
pub fn append(st: &mut Stage, ev: &RawEvent) {
    const WORDS: usize = RawEvent::SIZE / 8;
    let n = st.count as usize;
    if n >= STAGE_EVENTS {
        return;
    }
    // SAFETY: n < STAGE_EVENTS; both are 8-byte aligned plain data of WORDS words.
    let dst = unsafe { st.events.as_mut_ptr().add(n) } as *mut u64;
    let src = ev as *const RawEvent as *const u64;
    let mut i = 0;
    while i < WORDS {
        unsafe { core::ptr::write_volatile(dst.add(i), core::ptr::read_volatile(src.add(i))) };
        i += 1;
    }
    st.count = (n + 1) as u32;
}
