//! Sizing the per-CPU event rings (see `tracer_common::rings`): the rings the host's CPUs write
//! share the configured total; rings no CPU writes get one page.

use tracer_common::rings::RINGS;

/// How many rings this host's CPUs write: CPU ids run from 0 to `possible_cpus - 1`, and CPU
/// `n` writes ring `n % RINGS`.
pub fn active(possible_cpus: usize) -> usize {
    possible_cpus.clamp(1, RINGS)
}

/// Bytes of each active ring, so that together they hold at most `total`: a power of two and
/// at least one page, as the kernel requires.
pub fn ring_bytes(total: u32, active: usize, page: u32) -> u32 {
    let share = total / u32::try_from(active.max(1)).unwrap_or(u32::MAX);
    let pow2 = if share == 0 {
        0
    } else {
        1 << (31 - share.leading_zeros())
    };
    pow2.max(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_rings_follow_the_cpu_count() {
        assert_eq!(active(0), 1);
        assert_eq!(active(1), 1);
        assert_eq!(active(2), 2);
        assert_eq!(active(RINGS), RINGS);
        assert_eq!(active(256), RINGS);
    }

    #[test]
    fn active_rings_share_the_total() {
        assert_eq!(ring_bytes(4 << 20, 1, 4096), 4 << 20);
        assert_eq!(ring_bytes(4 << 20, 2, 4096), 2 << 20);
        // Three rings of 1M fit in 4M; three of 2M would not.
        assert_eq!(ring_bytes(4 << 20, 3, 4096), 1 << 20);
        assert_eq!(ring_bytes(16 << 20, 16, 4096), 1 << 20);
    }

    #[test]
    fn a_ring_never_gets_less_than_a_page() {
        assert_eq!(ring_bytes(4096, 2, 4096), 4096);
        assert_eq!(ring_bytes(64 << 10, 16, 65536), 65536);
    }
}
