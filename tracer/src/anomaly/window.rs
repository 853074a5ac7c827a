//! Per-key tallies over a sliding window of one-second buckets: the rate detectors add to the
//! current bucket on each event (one hash-map update) and read window sums once per tick.

use std::{collections::VecDeque, hash::Hash};

use foldhash::{HashMap, HashMapExt};

/// Keys one bucket holds at most: beyond it events still count, under `overflow`, so a scan
/// from millions of addresses cannot grow memory without bound.
pub const MAX_KEYS: usize = 65_536;

/// Something that can be summed across buckets.
pub trait Tally: Default + Clone {
    fn merge(&mut self, other: &Self);
}

impl Tally for u64 {
    fn merge(&mut self, other: &Self) {
        *self += other;
    }
}

/// A bounded top-N counter for evidence (sources, ports, connections).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopCounts<K: Hash + Eq> {
    counts: HashMap<K, u64>,
}

impl<K: Hash + Eq> Default for TopCounts<K> {
    fn default() -> Self {
        Self {
            counts: HashMap::new(),
        }
    }
}

/// Distinct values a [`TopCounts`] keeps.
const TOP_KEEP: usize = 256;

impl<K: Hash + Eq + Clone + Ord> TopCounts<K> {
    pub fn add(&mut self, k: K, n: u64) {
        if let Some(v) = self.counts.get_mut(&k) {
            *v += n;
        } else if self.counts.len() < TOP_KEEP {
            self.counts.insert(k, n);
        }
    }

    pub fn distinct(&self) -> usize {
        self.counts.len()
    }

    /// The `n` largest, largest first (ties by key, for stable output).
    pub fn top(&self, n: usize) -> Vec<(K, u64)> {
        let mut v: Vec<(K, u64)> = self.counts.iter().map(|(k, c)| (k.clone(), *c)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }

    pub fn merge(&mut self, other: &Self) {
        for (k, n) in &other.counts {
            self.add(k.clone(), *n);
        }
    }
}

#[derive(Debug)]
pub struct Window<K, V> {
    buckets: VecDeque<HashMap<K, V>>,
    current: HashMap<K, V>,
    len: usize,
    pub overflow: u64,
}

impl<K: Hash + Eq + Clone, V: Tally> Window<K, V> {
    /// A window of `secs` one-second buckets (at least one).
    pub fn new(secs: usize) -> Self {
        Self {
            buckets: VecDeque::new(),
            current: HashMap::new(),
            len: secs.max(1),
            overflow: 0,
        }
    }

    pub fn secs(&self) -> usize {
        self.len
    }

    /// The current bucket's tally for `k`, or `None` when the bucket is full of other keys.
    pub fn entry(&mut self, k: K) -> Option<&mut V> {
        if !self.current.contains_key(&k) && self.current.len() >= MAX_KEYS {
            self.overflow += 1;
            return None;
        }
        Some(self.current.entry(k).or_default())
    }

    /// Closes the current bucket (call once per second); the oldest drops out.
    pub fn roll(&mut self) {
        self.buckets.push_back(std::mem::take(&mut self.current));
        while self.buckets.len() > self.len {
            self.buckets.pop_front();
        }
    }

    /// Sums over the closed buckets.
    pub fn sums(&self) -> HashMap<K, V> {
        let mut out: HashMap<K, V> = HashMap::new();
        for b in &self.buckets {
            for (k, v) in b {
                out.entry(k.clone()).or_default().merge(v);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_slide_over_the_window() {
        let mut w = Window::<u8, u64>::new(2);
        *w.entry(1).unwrap() += 5;
        w.roll();
        *w.entry(1).unwrap() += 3;
        *w.entry(2).unwrap() += 1;
        w.roll();
        assert_eq!(w.sums()[&1], 8);
        w.roll();
        assert_eq!(w.sums()[&1], 3);
        w.roll();
        assert!(w.sums().is_empty());
    }

    #[test]
    fn top_counts_are_bounded_and_sorted() {
        let mut t = TopCounts::default();
        for i in 0..1000u32 {
            t.add(i, u64::from(i % 7));
        }
        assert_eq!(t.distinct(), TOP_KEEP);
        let top = t.top(3);
        assert_eq!(top.len(), 3);
        assert!(top[0].1 >= top[1].1 && top[1].1 >= top[2].1);
    }
}
