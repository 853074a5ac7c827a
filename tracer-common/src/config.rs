//! Run-time configuration handed to the kernel programs as a read-only global.

use crate::Filter;

/// When the kernel wakes the userspace reader.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WakeupMode {
    /// The ring buffer's own policy: wake when the reader has caught up.
    Adaptive = 0,
    /// Never wake for a single record; force a wakeup once `wakeup_bytes` are pending. The reader
    /// also drains on a short timer so that a quiet tail is never stranded.
    Batched = 1,
}

/// Where the owner, time in state and lifespan of each event are worked out.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attribution {
    /// The kernel programs keep a socket table and fill every event in before it is written,
    /// so that owner filters run in the kernel and a lost event loses nothing else.
    Kernel = 0,
    /// The transition programs keep no per-socket state: they report the current task on the
    /// transitions only a socket's owner makes, and userspace follows each socket through the
    /// time-ordered stream. The socket table holds bytes only, and the send/recv programs
    /// report an owner record when a socket's owner changes.
    Userspace = 1,
}

/// Per-CPU counters (index into the `COUNTERS` per-CPU array).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A record could not be reserved: the ring buffer was full. The event is lost.
    RingbufFull = 0,
    /// The socket table evicted a live socket from a full set (its owner and times are lost).
    SockMapFull = 1,
    /// The listener map refused an update (a listener's owner could not be recorded).
    ListenerMapFull = 2,
    /// Events emitted with no known owner.
    OwnerUnknown = 3,
    /// Transitions the classic program had to skip (a softirq interrupted one of our programs
    /// on that CPU) and the raw-tracepoint catcher recorded instead.
    Nested = 4,
    /// Likewise for retransmissions.
    NestedRetransmit = 5,
    /// The per-process traffic map refused an update: bytes of that process were not counted.
    ProcMapFull = 6,
    /// Marks the catchers found: handled hits the catcher also ran for. Written less taken is
    /// the hits whose catcher run the kernel skipped although the classic program ran. Read
    /// before `MarksWritten` (index order), so a hit between the reads never makes it negative.
    MarksTaken = 7,
    /// Transitions and retransmissions the classic programs handled (each leaves a mark for
    /// the catcher).
    MarksWritten = 8,
    /// Processes entered in the per-process traffic map. Nothing deletes its entries, so
    /// entries inserted less entries present is what its LRU evicted.
    ProcInserts = 9,
    /// With userspace attribution: owner records the ring buffer could not take. No event is
    /// lost, but the socket's owner may stay the one recorded before.
    OwnerRecordsLost = 10,
    /// A new socket left out of the socket table because its set stayed claimed by another
    /// CPU throughout the attempts (the holder interrupted or its vCPU descheduled). No event
    /// is lost; the socket's owner and times are missing until its next transition enters it.
    SockTableBusy = 11,
}

impl Counter {
    pub const COUNT: u32 = 12;
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Self::RingbufFull,
        Self::SockMapFull,
        Self::ListenerMapFull,
        Self::OwnerUnknown,
        Self::Nested,
        Self::NestedRetransmit,
        Self::ProcMapFull,
        Self::MarksTaken,
        Self::MarksWritten,
        Self::ProcInserts,
        Self::OwnerRecordsLost,
        Self::SockTableBusy,
    ];
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub filter: Filter,
    /// A [`WakeupMode`] as `u32`.
    pub wakeup_mode: u32,
    /// With [`WakeupMode::Batched`]: pending bytes that force a wakeup.
    pub wakeup_bytes: u32,
    /// An [`Attribution`] as `u32`.
    pub attribution: u32,
}

impl Config {
    pub const DEFAULT: Self = Self {
        filter: Filter::ANY,
        wakeup_mode: WakeupMode::Adaptive as u32,
        wakeup_bytes: 0,
        attribution: Attribution::Kernel as u32,
    };
}

const _: () = assert!(core::mem::size_of::<Config>() == 72);

#[cfg(feature = "user")]
unsafe impl aya::Pod for Config {}
