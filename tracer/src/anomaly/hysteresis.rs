//! Raise/clear with hysteresis: an anomaly is raised the first time its measure reaches the
//! threshold, and cleared only after the measure has stayed below a lower level (threshold x
//! `clear_ratio`) for `clear_after`. A measure hovering around the threshold therefore raises
//! once and does not flap.

use std::collections::{HashMap, HashSet};

/// How an active anomaly clears.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gate {
    /// Clear level as a fraction of the raise threshold (0 < ratio <= 1).
    pub clear_ratio: f64,
    /// How long the measure must stay below the clear level.
    pub clear_after_ns: u64,
}

/// One observation of a subject at a tick.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation<T> {
    pub measure: f64,
    pub threshold: f64,
    /// Whatever describes the subject (kept from the last observation for the cleared record).
    pub detail: T,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Edge<T> {
    Raised {
        detail: T,
        measure: f64,
        threshold: f64,
    },
    Cleared {
        /// The last observation made while it was active.
        detail: T,
        active_ns: u64,
        peak: f64,
    },
}

#[derive(Debug)]
struct Track<T> {
    raised_ns: u64,
    below_since: Option<u64>,
    peak: f64,
    threshold: f64,
    detail: T,
}

/// Active anomalies by key. Only active subjects are stored, so memory is bounded by what is
/// actually wrong, not by what was observed.
#[derive(Debug)]
pub struct Tracker<K, T> {
    active: HashMap<K, Track<T>>,
}

impl<K: std::hash::Hash + Eq + Clone, T: Clone> Default for Tracker<K, T> {
    fn default() -> Self {
        Self {
            active: HashMap::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone, T: Clone> Tracker<K, T> {
    pub fn active(&self) -> usize {
        self.active.len()
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.active.keys()
    }

    pub fn is_active(&self, k: &K) -> bool {
        self.active.contains_key(k)
    }

    /// Feeds one tick of observations; active subjects missing from them measure 0.
    pub fn step(
        &mut self,
        now_ns: u64,
        gate: Gate,
        observations: impl IntoIterator<Item = (K, Observation<T>)>,
    ) -> Vec<(K, Edge<T>)> {
        let mut edges = Vec::new();
        let mut seen: HashSet<K> = HashSet::new();
        for (k, o) in observations {
            match self.active.get_mut(&k) {
                Some(t) => {
                    seen.insert(k.clone());
                    t.peak = t.peak.max(o.measure);
                    t.detail = o.detail;
                    if o.measure < t.threshold * gate.clear_ratio {
                        let since = *t.below_since.get_or_insert(now_ns);
                        if now_ns.saturating_sub(since) >= gate.clear_after_ns {
                            let t = self.active.remove(&k).expect("present");
                            edges.push((k, cleared(t, now_ns)));
                        }
                    } else {
                        t.below_since = None;
                    }
                }
                None if o.measure >= o.threshold => {
                    seen.insert(k.clone());
                    self.active.insert(
                        k.clone(),
                        Track {
                            raised_ns: now_ns,
                            below_since: None,
                            peak: o.measure,
                            threshold: o.threshold,
                            detail: o.detail.clone(),
                        },
                    );
                    edges.push((
                        k,
                        Edge::Raised {
                            detail: o.detail,
                            measure: o.measure,
                            threshold: o.threshold,
                        },
                    ));
                }
                None => {}
            }
        }
        let missing: Vec<K> = self
            .active
            .keys()
            .filter(|k| !seen.contains(k))
            .cloned()
            .collect();
        for k in missing {
            let t = self.active.get_mut(&k).expect("present");
            let since = *t.below_since.get_or_insert(now_ns);
            if now_ns.saturating_sub(since) >= gate.clear_after_ns {
                let t = self.active.remove(&k).expect("present");
                edges.push((k, cleared(t, now_ns)));
            }
        }
        edges
    }
}

fn cleared<T>(t: Track<T>, now_ns: u64) -> Edge<T> {
    Edge::Cleared {
        detail: t.detail,
        active_ns: now_ns.saturating_sub(t.raised_ns),
        peak: t.peak,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const GATE: Gate = Gate {
        clear_ratio: 0.5,
        clear_after_ns: 3 * S,
    };

    fn obs(m: f64) -> Observation<&'static str> {
        Observation {
            measure: m,
            threshold: 10.0,
            detail: "d",
        }
    }

    fn kinds(edges: &[(u8, Edge<&str>)]) -> Vec<&'static str> {
        edges
            .iter()
            .map(|(_, e)| match e {
                Edge::Raised { .. } => "raised",
                Edge::Cleared { .. } => "cleared",
            })
            .collect()
    }

    #[test]
    fn raises_once_and_does_not_flap_around_the_threshold() {
        let mut t = Tracker::<u8, &str>::default();
        assert!(t.step(0, GATE, [(1, obs(9.9))]).is_empty());
        assert_eq!(kinds(&t.step(S, GATE, [(1, obs(10.0))])), ["raised"]);
        // Oscillating between 6 and 12 (above the clear level 5) never clears or re-raises.
        for i in 2..30 {
            let m = if i % 2 == 0 { 6.0 } else { 12.0 };
            assert!(t.step(i * S, GATE, [(1, obs(m))]).is_empty(), "tick {i}");
        }
        assert_eq!(t.active(), 1);
    }

    #[test]
    fn clears_only_after_staying_low_long_enough() {
        let mut t = Tracker::<u8, &str>::default();
        t.step(0, GATE, [(1, obs(50.0))]);
        assert!(t.step(S, GATE, [(1, obs(1.0))]).is_empty());
        assert!(t.step(2 * S, GATE, [(1, obs(1.0))]).is_empty());
        // Back up: the low streak restarts.
        assert!(t.step(3 * S, GATE, [(1, obs(8.0))]).is_empty());
        assert!(t.step(4 * S, GATE, []).is_empty());
        assert!(t.step(6 * S, GATE, []).is_empty());
        let edges = t.step(7 * S, GATE, []);
        assert_eq!(kinds(&edges), ["cleared"]);
        match &edges[0].1 {
            Edge::Cleared {
                active_ns, peak, ..
            } => assert_eq!((*active_ns, *peak), (7 * S, 50.0)),
            e => panic!("{e:?}"),
        }
        assert_eq!(t.active(), 0);
        // A new episode raises again.
        assert_eq!(kinds(&t.step(8 * S, GATE, [(1, obs(11.0))])), ["raised"]);
    }

    #[test]
    fn subjects_are_independent() {
        let mut t = Tracker::<u8, &str>::default();
        let e = t.step(0, GATE, [(1, obs(20.0)), (2, obs(3.0)), (3, obs(10.0))]);
        assert_eq!(e.iter().map(|(k, _)| *k).collect::<Vec<_>>(), vec![1, 3]);
        assert!(t.is_active(&1) && !t.is_active(&2));
    }
}
