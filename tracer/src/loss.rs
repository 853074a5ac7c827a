//! Accounting for every event that did not reach the output.

use std::collections::BTreeMap;

/// Why events were lost or degraded. Names are stable: they appear in JSON and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LossCause {
    /// The kernel could not reserve ring-buffer space: the reader fell behind.
    RingbufFull,
    /// A program run was skipped because another BPF program was running on that CPU.
    RecursionMiss,
    /// The socket table evicted a live socket (or userspace attribution's table refused one):
    /// its owner and times were not recorded.
    SockMapFull,
    /// A new socket was left out of the kernel's socket table because another CPU held its
    /// set throughout (contention, not size): its owner and times were not recorded.
    SockTableBusy,
    /// The listener map refused an update: a listener's owner was not recorded.
    ListenerMapFull,
    /// The per-process traffic map refused an update: bytes of a process were not counted.
    ProcMapFull,
    /// With userspace attribution: an owner record did not fit in the ring buffer. No event
    /// is lost; a socket's owner may stay the one recorded before.
    OwnerRingbufFull,
    /// A record could not be decoded (version mismatch or corruption).
    Decode,
    /// The kernel fired the tracepoint without running the programs attached to it.
    KernelUndelivered,
    /// The output queue was full: stdout did not keep up (`tracer stream`, `record --print`).
    OutputQueueFull,
}

impl LossCause {
    pub const ALL: [LossCause; 10] = [
        Self::RingbufFull,
        Self::RecursionMiss,
        Self::SockMapFull,
        Self::SockTableBusy,
        Self::ListenerMapFull,
        Self::ProcMapFull,
        Self::OwnerRingbufFull,
        Self::Decode,
        Self::KernelUndelivered,
        Self::OutputQueueFull,
    ];

    /// The causes a live aggregation can have (`stats` JSON, agent metrics): all but the
    /// output queue, which only the printing commands (`stream`, `record --print`) have.
    pub const LIVE: [LossCause; 9] = [
        Self::RingbufFull,
        Self::RecursionMiss,
        Self::SockMapFull,
        Self::SockTableBusy,
        Self::ListenerMapFull,
        Self::ProcMapFull,
        Self::OwnerRingbufFull,
        Self::Decode,
        Self::KernelUndelivered,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::RingbufFull => "ringbuf_full",
            Self::RecursionMiss => "recursion_miss",
            Self::SockMapFull => "sock_map_full",
            Self::SockTableBusy => "sock_table_busy",
            Self::ListenerMapFull => "listener_map_full",
            Self::ProcMapFull => "proc_map_full",
            Self::OwnerRingbufFull => "owner_ringbuf_full",
            Self::Decode => "decode_error",
            Self::KernelUndelivered => "kernel_undelivered",
            Self::OutputQueueFull => "output_queue_full",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::RingbufFull => "ring buffer full: raise --ring-size or reduce output work",
            Self::RecursionMiss => "program skipped while another BPF program ran on the CPU",
            Self::SockMapFull => {
                "socket table full: a live socket evicted from a full set; owners/durations missing"
            }
            Self::SockTableBusy => {
                "socket table busy: a new socket left out while another CPU held its set; \
                 owners/durations missing for it"
            }
            Self::ListenerMapFull => "listener map full: passive owners missing",
            Self::ProcMapFull => "process traffic map full: some bytes not counted",
            Self::OwnerRingbufFull => {
                "ring buffer full for an owner record (userspace attribution): a socket's owner \
                 may stay the one recorded before"
            }
            Self::Decode => "undecodable ring buffer record",
            Self::KernelUndelivered => "the kernel skipped the tracer's programs for a transition",
            Self::OutputQueueFull => {
                "output queue full: stdout did not keep up; raise --output-queue or read faster"
            }
        }
    }

    /// The cause whose [`LossCause::name`] this is (captures store losses by name).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Whether the cause drops events (as opposed to degrading what they carry).
    pub fn drops_events(self) -> bool {
        matches!(
            self,
            Self::RingbufFull
                | Self::RecursionMiss
                | Self::Decode
                | Self::KernelUndelivered
                | Self::OutputQueueFull
        )
    }
}

/// Running totals per cause, and the deltas since the last report.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LossTotals {
    totals: BTreeMap<LossCause, u64>,
    reported: BTreeMap<LossCause, u64>,
}

impl LossTotals {
    /// Records the latest absolute value of a monotonically increasing kernel counter.
    pub fn observe(&mut self, cause: LossCause, absolute: u64) {
        let t = self.totals.entry(cause).or_default();
        *t = (*t).max(absolute);
    }

    pub fn add(&mut self, cause: LossCause, n: u64) {
        *self.totals.entry(cause).or_default() += n;
    }

    pub fn total(&self, cause: LossCause) -> u64 {
        self.totals.get(&cause).copied().unwrap_or(0)
    }

    /// Events dropped, over all causes that drop events.
    pub fn dropped(&self) -> u64 {
        LossCause::ALL
            .iter()
            .filter(|c| c.drops_events())
            .map(|&c| self.total(c))
            .sum()
    }

    /// Causes whose total grew since the previous call, with the growth.
    pub fn take_new(&mut self) -> Vec<(LossCause, u64)> {
        let mut out = Vec::new();
        for (&cause, &total) in &self.totals {
            let seen = self.reported.entry(cause).or_default();
            if total > *seen {
                out.push((cause, total - *seen));
                *seen = total;
            }
        }
        out
    }

    pub fn summary(&self) -> String {
        LossCause::ALL
            .iter()
            .map(|&c| format!("{}={}", c.name(), self.total(c)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_growth_once() {
        let mut t = LossTotals::default();
        assert!(t.take_new().is_empty());
        t.observe(LossCause::RingbufFull, 5);
        t.add(LossCause::Decode, 1);
        assert_eq!(
            t.take_new(),
            vec![(LossCause::RingbufFull, 5), (LossCause::Decode, 1)]
        );
        assert!(t.take_new().is_empty());
        t.observe(LossCause::RingbufFull, 3); // never goes backwards
        t.observe(LossCause::RingbufFull, 8);
        t.observe(LossCause::SockMapFull, 2);
        assert_eq!(
            t.take_new(),
            vec![(LossCause::RingbufFull, 3), (LossCause::SockMapFull, 2)]
        );
        assert_eq!(t.dropped(), 9);
        assert_eq!(
            t.summary(),
            "ringbuf_full=8 recursion_miss=0 sock_map_full=2 sock_table_busy=0 \
             listener_map_full=0 proc_map_full=0 owner_ringbuf_full=0 decode_error=1 \
             kernel_undelivered=0 output_queue_full=0"
        );
        t.add(LossCause::OutputQueueFull, 4);
        assert_eq!(t.take_new(), vec![(LossCause::OutputQueueFull, 4)]);
        assert_eq!(t.dropped(), 13);
    }
}
