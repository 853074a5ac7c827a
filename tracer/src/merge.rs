//! Merging the per-CPU event rings back into one stream in timestamp order.
//!
//! Transitions of one socket are serialised by its lock, and each takes its timestamp inside
//! it, so timestamp order is the socket's order even when its transitions ran on different
//! CPUs. A record with timestamp `t` may still be missing from its ring while the program that
//! wrote it is running, so an event is held until the reader has drained every ring `hold`
//! after `t`. Each ring's queue is kept in timestamp order as records arrive (they nearly always
//! arrive in order: see `push`), so this is a k-way merge of the queues. The queues hold records
//! as read (decoding them later writes each event once, straight into its batch).

use std::{collections::VecDeque, time::Duration};

use tracer_common::RawEvent;

/// What the merge orders by.
pub trait Timestamped {
    /// CLOCK_MONOTONIC nanoseconds.
    fn ts_ns(&self) -> u64;
}

/// One ring-buffer record of the expected size, not yet decoded.
#[derive(Debug, Clone, Copy)]
pub struct Record(pub [u8; RawEvent::SIZE]);

impl Timestamped for Record {
    fn ts_ns(&self) -> u64 {
        const AT: usize = std::mem::offset_of!(RawEvent, ts_ns);
        let mut ts = [0; 8];
        ts.copy_from_slice(&self.0[AT..AT + 8]);
        u64::from_ne_bytes(ts)
    }
}

/// How long after its timestamp an event is held for records from other CPUs: far above a
/// program's run time (microseconds), so only a CPU stalled mid-program (a preempted vCPU)
/// can deliver later than this.
pub const HOLD: Duration = Duration::from_millis(10);

/// Passed to [`Merge::horizon`] once no program can write any more: everything is due.
pub const ALL: u64 = u64::MAX;

#[derive(Debug)]
pub struct Merge<T> {
    /// Records of each ring not yet released, in ring order.
    rings: Vec<VecDeque<T>>,
    hold_ns: u64,
    /// Every event at or before this was due at the last release.
    released_ns: u64,
    /// Events that arrived after later ones had been released.
    late: u64,
}

impl<T: Timestamped> Merge<T> {
    pub fn new(rings: usize, hold: Duration) -> Self {
        Self {
            rings: (0..rings.max(1)).map(|_| VecDeque::new()).collect(),
            hold_ns: u64::try_from(hold.as_nanos()).unwrap_or(u64::MAX),
            released_ns: 0,
            late: 0,
        }
    }

    pub fn push(&mut self, ring: usize, ev: T) {
        if ev.ts_ns() < self.released_ns {
            self.late += 1;
        }
        if let Some(q) = self.rings.get_mut(ring) {
            // Nearly always at the back. A program that interrupts one staging events on its
            // CPU writes its event on its own, ahead of the older events of that batch.
            let ts = ev.ts_ns();
            let at = q.iter().rposition(|e| e.ts_ns() <= ts).map_or(0, |i| i + 1);
            q.insert(at, ev);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rings.iter().all(VecDeque::is_empty)
    }

    /// Events that reached the reader after later ones had been delivered; each was delivered
    /// late, out of order.
    pub fn late(&self) -> u64 {
        self.late
    }

    /// The time up to which events are due after a drain of every ring that began at
    /// `drained_ns` (CLOCK_MONOTONIC), or [`ALL`]. A single ring needs no hold: its one CPU
    /// wrote it, and finished writing, before the drain.
    pub fn horizon(&mut self, drained_ns: u64) -> u64 {
        if drained_ns == ALL || self.rings.len() == 1 {
            return ALL;
        }
        let upto = drained_ns.saturating_sub(self.hold_ns);
        self.released_ns = self.released_ns.max(upto);
        upto
    }

    /// The earliest event at or before `upto`, if any. Ties go to the lower ring.
    pub fn pop(&mut self, upto: u64) -> Option<T> {
        let mut best: Option<(usize, u64)> = None;
        for (i, q) in self.rings.iter().enumerate() {
            if let Some(ts) = q.front().map(T::ts_ns)
                && ts <= upto
                && best.is_none_or(|(_, b)| ts < b)
            {
                best = Some((i, ts));
            }
        }
        best.and_then(|(i, _)| self.rings[i].pop_front())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// A record with a timestamp and a tag telling records apart.
    #[derive(Debug, Clone, Copy, PartialEq)]
    struct Rec(u64, u32);

    impl Timestamped for Rec {
        fn ts_ns(&self) -> u64 {
            self.0
        }
    }

    fn test_event(ts_ns: u64) -> Rec {
        Rec(ts_ns, 0)
    }

    fn drain(m: &mut Merge<Rec>, drained_ns: u64) -> Vec<u64> {
        let upto = m.horizon(drained_ns);
        std::iter::from_fn(|| m.pop(upto)).map(|e| e.0).collect()
    }

    #[test]
    fn a_raw_record_is_ordered_by_its_kernel_timestamp() {
        let mut raw = [0u8; RawEvent::SIZE];
        let at = std::mem::offset_of!(RawEvent, ts_ns);
        raw[at..at + 8].copy_from_slice(&123_456_789u64.to_ne_bytes());
        assert_eq!(Record(raw).ts_ns(), 123_456_789);
    }

    #[test]
    fn rings_merge_into_timestamp_order_after_the_hold() {
        let mut m = Merge::new(2, HOLD);
        for t in [1, 4, 30] {
            m.push(0, test_event(t * MS));
        }
        for t in [2, 3, 25] {
            m.push(1, test_event(t * MS));
        }
        assert_eq!(drain(&mut m, 30 * MS), [MS, 2 * MS, 3 * MS, 4 * MS]);
        assert_eq!(drain(&mut m, 35 * MS), [25 * MS]);
        assert!(!m.is_empty());
        assert_eq!(drain(&mut m, ALL), [30 * MS]);
        assert!(m.is_empty());
        assert_eq!(m.late(), 0);
    }

    #[test]
    fn equal_timestamps_go_to_the_lower_ring_first_and_keep_ring_order() {
        let mut m = Merge::new(2, Duration::ZERO);
        for (ring, tag) in [(1, 3), (0, 1), (0, 2)] {
            m.push(ring, Rec(5, tag));
        }
        let upto = m.horizon(5);
        let order: Vec<u32> = std::iter::from_fn(|| m.pop(upto)).map(|e| e.1).collect();
        assert_eq!(order, [1, 2, 3]);
    }

    #[test]
    fn a_single_ring_is_delivered_without_a_hold() {
        let mut m = Merge::new(1, HOLD);
        for t in [7, 3, 9] {
            m.push(0, test_event(t * MS));
        }
        assert_eq!(drain(&mut m, MS), [3 * MS, 7 * MS, 9 * MS]);
        m.push(0, test_event(2 * MS));
        assert_eq!(drain(&mut m, 3 * MS), [2 * MS]);
        assert_eq!(m.late(), 0);
    }

    #[test]
    fn a_record_written_ahead_of_an_older_batch_is_put_back_in_order() {
        let mut m = Merge::new(2, HOLD);
        // CPU 0 staged 1, 2 and 4 ms; a softirq program wrote 5 ms on its own meanwhile.
        for (t, tag) in [(5, 9), (1, 1), (2, 2), (4, 3), (5, 4)] {
            m.push(0, Rec(t * MS, tag));
        }
        m.push(1, Rec(3 * MS, 7));
        let upto = m.horizon(20 * MS);
        let order: Vec<u32> = std::iter::from_fn(|| m.pop(upto)).map(|e| e.1).collect();
        assert_eq!(order, [1, 2, 7, 3, 9, 4]);
        assert_eq!(m.late(), 0);
    }

    #[test]
    fn an_event_older_than_what_was_released_is_counted_late_and_still_delivered() {
        let mut m = Merge::new(2, HOLD);
        m.push(0, test_event(20 * MS));
        assert_eq!(drain(&mut m, 40 * MS), [20 * MS]);
        m.push(1, test_event(29 * MS));
        m.push(0, test_event(31 * MS));
        assert_eq!(m.late(), 1);
        assert_eq!(drain(&mut m, 41 * MS), [29 * MS, 31 * MS]);
    }
}
