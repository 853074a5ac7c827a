//! Which LRU lists the kernel's socket map keeps (see `SOCKS` in `tracer-ebpf`).
//!
//! Every connection inserts one entry and deletes it when it closes. With the kernel's common
//! LRU list both take a lock every CPU shares; under churn on two CPUs that lock cost the
//! costliest program ~20 ns of ~330 per run. Per-CPU lists (`BPF_F_NO_COMMON_LRU`) take no
//! shared lock, but split the capacity: each CPU holds at most its share of `--max-sockets`,
//! and a CPU that sets up more connections than that evicts its own oldest entries while other
//! CPUs have room. Sockets are inserted where they are set up (the connecting process's CPU,
//! or the CPU whose softirq received the SYN), so a host whose connections arrive on a few
//! NIC queues fills those CPUs' shares first.

/// Per-CPU lists only when every CPU's share holds at least this many sockets.
pub const PER_CPU_MIN_SHARE: u32 = 16_384;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SockLists {
    /// One LRU list for all CPUs: the whole capacity serves any CPU.
    Shared,
    /// One LRU list per CPU, each with `max_sockets / possible CPUs` entries.
    PerCpu,
}

impl SockLists {
    /// Per-CPU lists when each of `possible_cpus` gets at least [`PER_CPU_MIN_SHARE`] of
    /// `max_sockets` (at the default 262,144: hosts with up to 16 CPUs); raising
    /// `--max-sockets` extends that to larger hosts.
    pub fn choose(max_sockets: u32, possible_cpus: usize) -> Self {
        let cpus = u32::try_from(possible_cpus.max(1)).unwrap_or(u32::MAX);
        if max_sockets / cpus >= PER_CPU_MIN_SHARE {
            Self::PerCpu
        } else {
            Self::Shared
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Shared => "shared",
            Self::PerCpu => "per-cpu",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_cpu_lists_only_when_every_cpu_gets_a_large_share() {
        assert_eq!(SockLists::choose(262_144, 2), SockLists::PerCpu);
        assert_eq!(SockLists::choose(262_144, 16), SockLists::PerCpu);
        assert_eq!(SockLists::choose(262_144, 17), SockLists::Shared);
        assert_eq!(SockLists::choose(262_144, 64), SockLists::Shared);
        assert_eq!(SockLists::choose(1 << 20, 64), SockLists::PerCpu);
        assert_eq!(SockLists::choose(1024, 1), SockLists::Shared);
        // An unknown CPU count (0) counts as one CPU.
        assert_eq!(SockLists::choose(16_384, 0), SockLists::PerCpu);
    }
}
