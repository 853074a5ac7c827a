//! Converting kernel timestamps (CLOCK_MONOTONIC) to wall-clock time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn clock_ns(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(id, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Offset between the two clocks, taken once: wall-clock steps after start-up do not reorder
/// events.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall_minus_mono_ns: u64,
}

impl Clock {
    pub fn new() -> Self {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let wall = clock_ns(libc::CLOCK_REALTIME);
        Self {
            wall_minus_mono_ns: wall.saturating_sub(mono),
        }
    }

    /// A clock whose wall time equals the monotonic time plus `offset_ns` (a capture's stored
    /// offset, or a test's).
    pub fn with_offset(offset_ns: u64) -> Self {
        Self {
            wall_minus_mono_ns: offset_ns,
        }
    }

    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, as taken: what a capture stores.
    pub fn offset_ns(&self) -> u64 {
        self.wall_minus_mono_ns
    }

    pub fn now_mono_ns() -> u64 {
        clock_ns(libc::CLOCK_MONOTONIC)
    }

    pub fn wall(&self, mono_ns: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(mono_ns.saturating_add(self.wall_minus_mono_ns))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
