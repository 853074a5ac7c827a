//! Per-CPU staging of events (batched wakeup mode). A ring-buffer record costs about the same
//! whatever its size (~190 ns on the development VM), so each CPU collects up to
//! [`STAGE_EVENTS`] events and writes them as one record. A CPU that goes quiet is left with a
//! partial batch: before each drain, userspace reads every CPU's `count` through the map's
//! memory mapping and runs the flush program on each CPU that has one (`BPF_PROG_TEST_RUN`
//! with `BPF_F_TEST_RUN_ON_CPU`).

use crate::RawEvent;

/// Events per batch record.
pub const STAGE_EVENTS: usize = 16;

/// The staging map's name: an array, one [`Stage`] per possible CPU, memory-mappable.
pub const STAGE_MAP: &str = "STAGE";

/// The flush program's name (a raw tracepoint program that is never attached).
pub const FLUSH_PROGRAM: &str = "flush_stage";

/// What the flush program returns when it found the stage in use by a program it interrupted
/// on that CPU: userspace runs it again.
pub const FLUSH_BUSY: u32 = 1;

/// One CPU's stage. Only programs on that CPU write it; they can interrupt each other (a
/// softirq over a task, the flush's interrupt over either), so `busy` marks a writer: one that
/// finds it set writes its event as a record of its own instead.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Stage {
    /// Events staged, read by userspace to know which CPUs to flush.
    pub count: u32,
    /// 1 when staging is on; 0 writes every event straight to the ring. Userspace sets it
    /// before attaching, once it knows it can flush.
    pub on: u32,
    /// A program on this CPU is writing the stage.
    pub busy: u32,
    pub _pad: [u32; 13],
    pub events: [RawEvent; STAGE_EVENTS],
}

impl Stage {
    pub const SIZE: usize = core::mem::size_of::<Self>();
}

// Whole cache lines, so CPUs never write each other's.
const _: () = assert!(Stage::SIZE == 64 + STAGE_EVENTS * RawEvent::SIZE);
const _: () = assert!(Stage::SIZE.is_multiple_of(64));
const _: () = assert!(core::mem::offset_of!(Stage, events) == 64);
