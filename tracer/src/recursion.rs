//! Counting the transitions lost to the kernel's recursion guards.
//!
//! Each hit of `inet_sock_set_state` (and `tcp_retransmit_skb`) runs the classic program, then
//! the raw-tracepoint catcher. The kernel skips the classic program when any tracing program is
//! active on the CPU, and the catcher when the catcher itself is (a softirq on the exit of an
//! interrupt that hit it). A hit is lost only when both were skipped. From 6.7 the kernel counts
//! the classic program's skips (`recursion_misses`); before, it skips it silently, and only the
//! catcher's skips are counted. So the losses are also found from the catcher's side: every
//! skipped catcher run is a hit the classic program either handled, leaving a mark the catcher
//! never took, or skipped too.

/// What the catchers' side tells about the hits they were skipped for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CatcherSkips {
    /// Catcher runs the kernel skipped (their `recursion_misses`).
    pub skipped: u64,
    /// Marks the classic programs wrote and no catcher took since the catchers were attached:
    /// skipped catcher runs for hits the classic program handled.
    pub untaken: u64,
}

impl CatcherSkips {
    /// From the marks counters now and when the catchers were attached (`baseline`, written
    /// less taken then: hits before the catchers existed).
    pub fn new(skipped: u64, written: u64, taken: u64, baseline: u64) -> Self {
        Self {
            skipped,
            untaken: written.saturating_sub(taken).saturating_sub(baseline),
        }
    }

    /// Hits both programs were skipped for.
    pub fn lost(&self) -> u64 {
        self.skipped.saturating_sub(self.untaken)
    }
}

/// Events lost to recursion. The classic side: every counted skip of an event-producing
/// classic program, less the transitions the catchers recorded instead (each is exactly one
/// skipped classic run). The catchers' side (when attached) covers kernels that do not count
/// the classic skips; both see the same losses, so the larger is taken. Skipped runs of the
/// send/recv programs lose no event, only a chance to learn an owner.
pub fn lost(classic_skips: (u64, u64), caught: (u64, u64), catchers: Option<CatcherSkips>) -> u64 {
    let classic =
        classic_skips.0.saturating_sub(caught.0) + classic_skips.1.saturating_sub(caught.1);
    catchers.map_or(classic, |c| classic.max(c.lost()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_skips_the_catchers_recorded_are_not_lost() {
        assert_eq!(lost((10, 3), (10, 1), None), 2);
        assert_eq!(lost((10, 0), (12, 0), None), 0);
    }

    #[test]
    fn without_classic_skip_counts_a_catcher_skip_with_no_mark_is_a_loss() {
        // Before 6.7: 76 silent classic skips, 74 caught; the catcher was skipped 20 times, 18
        // of them after the classic program had handled the hit.
        let c = CatcherSkips::new(20, 19_926, 19_908, 0);
        assert_eq!(c.untaken, 18);
        assert_eq!(lost((0, 0), (74, 0), Some(c)), 2);
    }

    #[test]
    fn marks_left_before_the_catchers_were_attached_are_not_counted_as_handled() {
        let c = CatcherSkips::new(3, 1_000, 990, 10);
        assert_eq!(c.untaken, 0);
        assert_eq!(c.lost(), 3);
    }

    #[test]
    fn both_sides_agree_where_the_kernel_counts_classic_skips() {
        let c = CatcherSkips::new(5, 100, 98, 0);
        assert_eq!(lost((7, 0), (4, 0), Some(c)), 3);
    }
}
