//! The per-CPU table in which the classic tracepoint programs leave marks for the raw-tracepoint
//! catchers. Each hit runs the classic program, then the catcher; the catcher records the hit
//! itself unless it finds the classic program's mark. Kept here, apart from the BPF maps, so
//! that host tests drive it.

/// Entries: at most one per context level (task, softirq, hardirq, NMI), so one is always free.
pub const MARKS: usize = 4;

/// Marks awaiting their catcher, each with the context level that wrote it. The kernel hands a
/// classic program a per-CPU record buffer per context level, so that buffer's address is the
/// level's identity.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MarkTable {
    /// Identities of handled hits; 0 is free.
    marks: [u64; MARKS],
    levels: [u64; MARKS],
}

const _: () = assert!(core::mem::size_of::<MarkTable>() == 16 * MARKS);

impl MarkTable {
    /// Records that the classic program handled the hit `mark` at context level `level`. A mark
    /// left at the same level is stale: within one context the catcher runs right after the
    /// classic program, so that mark's catcher run either took it or was skipped by the kernel.
    /// It is replaced, so a stale mark never outlives the next hit at its level, and a pending
    /// one (at a lower level, interrupted between its two programs) is never touched, however
    /// long the burst that delays its catcher.
    #[inline(always)]
    pub fn put(&mut self, mark: u64, level: u64) {
        let mut victim = MARKS;
        let mut i = 0;
        while i < MARKS {
            if self.levels[i] == level || (victim == MARKS && self.marks[i] == 0) {
                victim = i;
            }
            i += 1;
        }
        // Four levels leave a free entry; if a kernel ever used more record buffers than
        // levels, the first entry goes (a possible duplicate, never a silent loss).
        if victim == MARKS {
            victim = 0;
        }
        self.marks[victim] = mark;
        self.levels[victim] = level;
    }

    /// Whether the classic program handled the hit `mark`; consumes its mark. A stale identical
    /// one at another level (a socket address is soon reused for the same transition) goes
    /// with it.
    #[inline(always)]
    pub fn take(&mut self, mark: u64) -> bool {
        // 0 marks a free entry, never a hit.
        if mark == 0 {
            return false;
        }
        let mut found = false;
        let mut i = 0;
        while i < MARKS {
            if self.marks[i] == mark {
                self.marks[i] = 0;
                self.levels[i] = 0;
                found = true;
            }
            i += 1;
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TASK: u64 = 0xffff_8880_0001_0000;
    const SOFTIRQ: u64 = 0xffff_8880_0002_0000;
    const HARDIRQ: u64 = 0xffff_8880_0003_0000;

    #[test]
    fn a_pending_mark_survives_any_burst_above_it() {
        let mut t = MarkTable::default();
        t.put(1, TASK);
        // A softirq between the task's two programs: every hit handled whole, then hits whose
        // catcher the kernel skipped (their marks stay), far more than the table holds.
        for m in 100..100_000 {
            t.put(m, SOFTIRQ);
            if m % 3 != 0 {
                assert!(t.take(m));
            }
        }
        assert!(t.take(1));
        assert!(!t.take(1));
    }

    #[test]
    fn a_stale_mark_is_replaced_by_the_next_at_its_level() {
        let mut t = MarkTable::default();
        t.put(7, SOFTIRQ);
        t.put(8, SOFTIRQ);
        assert!(!t.take(7));
        assert!(t.take(8));
    }

    #[test]
    fn every_nesting_level_keeps_its_own_pending_mark() {
        let mut t = MarkTable::default();
        t.put(1, TASK);
        t.put(2, SOFTIRQ);
        t.put(3, HARDIRQ);
        t.put(4, 0xffff_8880_0004_0000);
        assert!([4, 3, 2, 1].iter().all(|&m| t.take(m)));
        assert_eq!(t, MarkTable::default());
    }

    #[test]
    fn a_stale_identical_mark_goes_with_the_taken_one() {
        let mut t = MarkTable::default();
        // Left at softirq level by a skipped catcher run; the same socket address then makes
        // the same transition in a task.
        t.put(5, SOFTIRQ);
        t.put(5, TASK);
        assert!(t.take(5));
        assert!(!t.take(5));
    }

    #[test]
    fn a_free_entry_is_no_mark() {
        let mut t = MarkTable::default();
        assert!(!t.take(0));
        t.put(9, TASK);
        assert!(!t.take(0));
        assert!(t.take(9));
    }
}
