//! What the dashboard shows and how the keys change it: the displayed snapshot, the sort order,
//! pause and scroll state, and per-process byte rates between refreshes.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use crate::aggregate::view::{ProcSort, ProcessRow, Stats};

/// Rows scrolled by PageUp/PageDown.
const PAGE: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Quit,
    ToggleSort,
    TogglePause,
    Up,
    Down,
    PageUp,
    PageDown,
    Top,
    Bottom,
}

pub struct App {
    pub sort: ProcSort,
    pub paused: bool,
    /// Index of the highlighted process row; the list scrolls to keep it visible.
    pub cursor: usize,
    pub interval: Duration,
    /// The snapshot on screen; `None` until the first refresh.
    pub stats: Option<Stats>,
    /// Events applied by the aggregator when the snapshot was taken.
    pub events: u64,
    /// Bytes (sent + received) per second per pid, over the last refresh interval.
    pub rates: HashMap<u32, f64>,
    /// Length of the process ranking asked of the aggregator.
    pub rows: usize,
    last: Option<Sample>,
}

/// Per-process byte counts at one refresh.
struct Sample {
    at: Instant,
    bytes: HashMap<u32, u64>,
    /// Whether every process was in the ranking, so that a pid missing from it had no bytes.
    complete: bool,
}

impl App {
    pub fn new(sort: ProcSort, interval: Duration, rows: usize) -> Self {
        Self {
            sort,
            paused: false,
            cursor: 0,
            interval,
            stats: None,
            events: 0,
            rates: HashMap::new(),
            rows,
            last: None,
        }
    }

    /// A refresh: shows `stats` and derives rates from the bytes seen at the previous refresh.
    pub fn update(&mut self, stats: Stats, events: u64, now: Instant) {
        let sample = Sample {
            at: now,
            bytes: stats
                .processes
                .iter()
                .filter_map(|p| Some((p.pid?, p.bytes_sent + p.bytes_received)))
                .collect(),
            complete: stats.processes.len() < self.rows,
        };
        self.rates.clear();
        if let Some(prev) = &self.last {
            let secs = now.saturating_duration_since(prev.at).as_secs_f64();
            for (&pid, &bytes) in sample.bytes.iter().filter(|_| secs > 0.0) {
                // A pid missing last time is new if the ranking held everyone; otherwise it may
                // just have been ranked lower, and its rate is unknown for this interval.
                let before = match prev.bytes.get(&pid) {
                    Some(&b) => b,
                    None if prev.complete => 0,
                    None => continue,
                };
                // A count that went down (map entry evicted and re-created) restarts from zero.
                self.rates
                    .insert(pid, bytes.saturating_sub(before) as f64 / secs);
            }
        }
        self.last = Some(sample);
        self.show(stats, events);
    }

    /// Replaces the snapshot without a new rate sample (a re-ranking between refreshes).
    pub fn show(&mut self, stats: Stats, events: u64) {
        self.stats = Some(stats);
        self.events = events;
        self.clamp_cursor();
    }

    pub fn rate(&self, p: &ProcessRow) -> Option<f64> {
        self.rates.get(&p.pid?).copied()
    }

    /// Applies a key's action. Returns false for `Quit`.
    pub fn handle(&mut self, action: Action) -> bool {
        match action {
            Action::Quit => return false,
            Action::ToggleSort => {
                self.sort = match self.sort {
                    ProcSort::Bytes => ProcSort::Connections,
                    ProcSort::Connections => ProcSort::Bytes,
                };
                // Re-rank what is on screen now, so the key has an effect even while paused.
                let sort = self.sort;
                if let Some(s) = &mut self.stats {
                    s.processes.sort_by_key(|p| std::cmp::Reverse(sort.rank(p)));
                }
                self.cursor = 0;
            }
            Action::TogglePause => self.paused = !self.paused,
            Action::Up => self.cursor = self.cursor.saturating_sub(1),
            Action::Down => self.cursor = self.cursor.saturating_add(1),
            Action::PageUp => self.cursor = self.cursor.saturating_sub(PAGE),
            Action::PageDown => self.cursor = self.cursor.saturating_add(PAGE),
            Action::Top => self.cursor = 0,
            Action::Bottom => self.cursor = usize::MAX,
        }
        self.clamp_cursor();
        true
    }

    fn clamp_cursor(&mut self) {
        let rows = self.stats.as_ref().map_or(0, |s| s.processes.len());
        self.cursor = self.cursor.min(rows.saturating_sub(1));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::aggregate::view::{Totals, Tracking};

    pub(crate) fn proc_row(pid: u32, comm: &str, conns: u64, bytes: u64) -> ProcessRow {
        ProcessRow {
            pid: Some(pid),
            comm: comm.to_owned(),
            connections: conns,
            close_wait: 0,
            bytes_sent: bytes,
            bytes_received: 0,
        }
    }

    pub(crate) fn stats(processes: Vec<ProcessRow>) -> Stats {
        Stats {
            states: BTreeMap::new(),
            totals: Totals {
                total: 0,
                established: 0,
                listening: 0,
                time_wait: 0,
                syn_recv: 0,
                closing: 0,
            },
            processes,
            listeners: Vec::new(),
            peers: Vec::new(),
            retransmits: 0,
            closes: BTreeMap::new(),
            lost: BTreeMap::new(),
            tracking: Tracking {
                sockets: 0,
                capacity: 0,
                refused: 0,
                from_dump: 0,
                unknown_sockets: 0,
                stale_entries: 0,
                sock_map_evictions: 0,
                proc_map_evictions: 0,
                other_netns_events: 0,
            },
        }
    }

    #[test]
    fn rates_are_byte_deltas_over_the_refresh_interval() {
        let mut app = App::new(ProcSort::Bytes, Duration::from_secs(1), 10);
        let t0 = Instant::now();
        app.update(stats(vec![proc_row(1, "a", 1, 1000)]), 0, t0);
        assert!(app.rates.is_empty(), "no rate before a second sample");
        app.update(
            stats(vec![proc_row(1, "a", 1, 3000), proc_row(2, "b", 1, 50)]),
            0,
            t0 + Duration::from_millis(500),
        );
        assert_eq!(app.rates.get(&1), Some(&4000.0));
        assert_eq!(
            app.rates.get(&2),
            Some(&100.0),
            "a new process starts from zero"
        );
        // A counter that went backwards is a restart, not a negative rate.
        app.update(
            stats(vec![proc_row(1, "a", 1, 10)]),
            0,
            t0 + Duration::from_millis(1500),
        );
        assert_eq!(app.rates.get(&1), Some(&0.0));
        // When the ranking was cut off, a newcomer may have been there all along, unranked.
        let mut app = App::new(ProcSort::Bytes, Duration::from_secs(1), 1);
        app.update(stats(vec![proc_row(1, "a", 1, 1000)]), 0, t0);
        app.update(
            stats(vec![proc_row(2, "b", 1, 5000)]),
            0,
            t0 + Duration::from_secs(1),
        );
        assert_eq!(app.rates.get(&2), None);
    }

    #[test]
    fn sort_toggle_reranks_the_shown_rows() {
        let mut app = App::new(ProcSort::Bytes, Duration::from_secs(1), 10);
        app.show(
            stats(vec![
                proc_row(1, "big", 1, 9000),
                proc_row(2, "many", 50, 10),
            ]),
            0,
        );
        app.cursor = 1;
        assert!(app.handle(Action::ToggleSort));
        assert_eq!(app.sort, ProcSort::Connections);
        assert_eq!(app.cursor, 0);
        let comms: Vec<_> = app
            .stats
            .as_ref()
            .unwrap()
            .processes
            .iter()
            .map(|p| p.comm.as_str())
            .collect();
        assert_eq!(comms, ["many", "big"]);
        assert!(app.handle(Action::ToggleSort));
        assert_eq!(app.sort, ProcSort::Bytes);
        assert_eq!(app.stats.as_ref().unwrap().processes[0].comm, "big");
    }

    #[test]
    fn cursor_stays_within_the_rows() {
        let mut app = App::new(ProcSort::Bytes, Duration::from_secs(1), 10);
        app.show(stats((1..=5).map(|i| proc_row(i, "p", 1, 0)).collect()), 0);
        app.handle(Action::Up);
        assert_eq!(app.cursor, 0);
        app.handle(Action::PageDown);
        assert_eq!(app.cursor, 4);
        app.handle(Action::Up);
        assert_eq!(app.cursor, 3);
        app.handle(Action::Top);
        assert_eq!(app.cursor, 0);
        app.handle(Action::Bottom);
        assert_eq!(app.cursor, 4);
        app.show(stats(vec![proc_row(1, "p", 1, 0)]), 0);
        assert_eq!(app.cursor, 0, "a shorter list pulls the cursor back");
        app.handle(Action::TogglePause);
        assert!(app.paused);
        assert!(!app.handle(Action::Quit));
    }
}
