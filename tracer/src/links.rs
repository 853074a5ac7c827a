//! The attachments of the kernel programs, handed to the reader task so that stopping detaches
//! them before the reader's last drain: a transition committed after that drain would be lost
//! without being counted anywhere.

use std::os::fd::OwnedFd;

use aya::programs::{raw_trace_point::RawTracePointLink, trace_point::TracePointLink};

#[derive(Default)]
pub struct Links {
    pub(crate) classic: Vec<TracePointLink>,
    pub(crate) raw: Vec<RawTracePointLink>,
    /// The perf counters of hits our programs did not get. They count every hit once nothing is
    /// attached, so they are stopped first.
    pub(crate) counters: Vec<OwnedFd>,
}

/// Dropping stops the counters, then detaches the classic programs and the catchers, in that
/// order: a catcher without its classic program records every hit, while a classic program
/// without its catcher would leave marks no catcher takes, which count as catcher skips of
/// handled hits and would hide real losses (see `recursion`).
impl Drop for Links {
    fn drop(&mut self) {
        crate::undelivered::disable(&self.counters);
        self.classic.clear();
        self.raw.clear();
    }
}
