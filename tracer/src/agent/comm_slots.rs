//! Bounded labels for per-process byte counters.
//!
//! The kernel keeps application bytes per process id. Labelling metrics by pid would grow
//! without bound as processes come and go, and ranking by the current top N would move bytes
//! between series, breaking their monotonicity. Instead the bytes are counted per command name
//! in at most `capacity` slots: a command gets a slot when it moves bytes while one is free
//! (the busiest of the interval first), keeps it while it stays active, and loses it after
//! [`IDLE_AFTER`] without traffic. Everything else goes to one [`OTHER`] slot. Each byte is
//! counted in exactly one slot, from the moment the slot exists, so every slot's totals only
//! grow, and their sum is every byte moved since the agent started.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use crate::aggregate::ProcBytes;

/// How long a command keeps its slot without moving a byte.
pub const IDLE_AFTER: Duration = Duration::from_secs(600);
/// The slot of every command that has none of its own.
pub const OTHER: &str = "[other]";
/// The name used when the kernel recorded no command name.
pub const UNKNOWN: &str = "[unknown]";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub sent: u64,
    pub received: u64,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    totals: Totals,
    active: Instant,
}

#[derive(Debug)]
pub struct CommSlots {
    capacity: usize,
    /// The kernel's per-process totals at the last observation.
    last: HashMap<u32, (u64, u64)>,
    slots: HashMap<String, Slot>,
    other: Totals,
}

impl CommSlots {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            last: HashMap::new(),
            slots: HashMap::new(),
            other: Totals::default(),
        }
    }

    /// Folds in the kernel's per-process totals read at `now`. Returns the commands whose slot
    /// was freed because they went idle.
    pub fn observe(&mut self, procs: &HashMap<u32, ProcBytes>, now: Instant) -> Vec<String> {
        let mut moved: HashMap<String, Totals> = HashMap::new();
        for (&pid, b) in procs {
            // A total below the last one is a new process with a reused pid, or an entry the
            // LRU map evicted and started again: all of it is new.
            let (sent, received) = match self.last.get(&pid) {
                Some(&(s, r)) if b.sent >= s && b.received >= r => (b.sent - s, b.received - r),
                _ => (b.sent, b.received),
            };
            if sent == 0 && received == 0 {
                continue;
            }
            let name = match b.comm.as_str() {
                "" => UNKNOWN.to_owned(),
                c => c.to_owned(),
            };
            let t = moved.entry(name).or_default();
            t.sent += sent;
            t.received += received;
        }
        self.last = procs
            .iter()
            .map(|(&pid, b)| (pid, (b.sent, b.received)))
            .collect();

        let mut freed: Vec<String> = self
            .slots
            .iter()
            .filter(|(name, s)| {
                !moved.contains_key(*name) && now.saturating_duration_since(s.active) >= IDLE_AFTER
            })
            .map(|(name, _)| name.clone())
            .collect();
        freed.sort();
        for name in &freed {
            self.slots.remove(name);
        }

        let mut newcomers: Vec<(String, Totals)> = Vec::new();
        for (name, t) in moved {
            match self.slots.get_mut(&name) {
                Some(slot) => {
                    slot.totals.sent += t.sent;
                    slot.totals.received += t.received;
                    slot.active = now;
                }
                None => newcomers.push((name, t)),
            }
        }
        newcomers.sort_by(|a, b| {
            (b.1.sent + b.1.received)
                .cmp(&(a.1.sent + a.1.received))
                .then_with(|| a.0.cmp(&b.0))
        });
        for (name, t) in newcomers {
            if self.slots.len() < self.capacity && name != OTHER {
                self.slots.insert(
                    name,
                    Slot {
                        totals: t,
                        active: now,
                    },
                );
            } else {
                self.other.sent += t.sent;
                self.other.received += t.received;
            }
        }
        freed
    }

    /// Every slot with its totals, [`OTHER`] included, by name.
    pub fn totals(&self) -> BTreeMap<&str, Totals> {
        self.slots
            .iter()
            .map(|(name, s)| (name.as_str(), s.totals))
            .chain(std::iter::once((OTHER, self.other)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Comm;

    fn procs(rows: &[(u32, &str, u64, u64)]) -> HashMap<u32, ProcBytes> {
        rows.iter()
            .map(|&(pid, comm, sent, received)| {
                (
                    pid,
                    ProcBytes {
                        sent,
                        received,
                        comm: Comm::from(comm),
                    },
                )
            })
            .collect()
    }

    fn get(s: &CommSlots, name: &str) -> Option<(u64, u64)> {
        s.totals().get(name).map(|t| (t.sent, t.received))
    }

    #[test]
    fn busiest_commands_get_slots_and_the_rest_goes_to_other() {
        let t0 = Instant::now();
        let mut s = CommSlots::new(2);
        s.observe(
            &procs(&[
                (1, "nginx", 500, 10),
                (2, "curl", 5, 1),
                (3, "redis", 100, 100),
            ]),
            t0,
        );
        assert_eq!(get(&s, "nginx"), Some((500, 10)));
        assert_eq!(get(&s, "redis"), Some((100, 100)));
        assert_eq!(get(&s, "curl"), None);
        assert_eq!(get(&s, OTHER), Some((5, 1)));
        // Deltas, summed over pids of one command; a pid whose total fell is a new process.
        s.observe(
            &procs(&[
                (1, "nginx", 600, 10),
                (4, "nginx", 7, 0),
                (2, "curl", 9, 1),
                (3, "redis", 50, 0),
            ]),
            t0 + Duration::from_secs(5),
        );
        assert_eq!(get(&s, "nginx"), Some((607, 10)));
        assert_eq!(get(&s, "redis"), Some((150, 100)));
        assert_eq!(get(&s, OTHER), Some((9, 1)));
    }

    #[test]
    fn every_slot_only_grows_and_idle_slots_are_freed() {
        let t0 = Instant::now();
        let mut s = CommSlots::new(1);
        s.observe(&procs(&[(1, "a", 10, 0)]), t0);
        assert!(
            s.observe(&procs(&[(1, "a", 10, 0), (2, "b", 99, 0)]), t0)
                .is_empty()
        );
        assert_eq!(get(&s, "b"), None);
        assert_eq!(get(&s, OTHER), Some((99, 0)));
        // `a` idles out; `b` moves bytes in the same round and takes the freed slot, starting
        // from that round's bytes only (its earlier bytes stay in OTHER).
        let later = t0 + IDLE_AFTER;
        let freed = s.observe(&procs(&[(1, "a", 10, 0), (2, "b", 120, 0)]), later);
        assert_eq!(freed, vec!["a".to_owned()]);
        assert_eq!(get(&s, "a"), None);
        assert_eq!(get(&s, "b"), Some((21, 0)));
        assert_eq!(get(&s, OTHER), Some((99, 0)));
    }

    #[test]
    fn unnamed_processes_and_a_command_called_other_are_kept_apart() {
        let mut s = CommSlots::new(4);
        s.observe(&procs(&[(1, "", 3, 4), (2, OTHER, 1, 1)]), Instant::now());
        assert_eq!(get(&s, UNKNOWN), Some((3, 4)));
        assert_eq!(get(&s, OTHER), Some((1, 1)));
    }
}
