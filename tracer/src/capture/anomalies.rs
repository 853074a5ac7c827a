//! Anomalies in captures. Recording: each anomaly record is stored as a printed item (its JSON
//! and human lines exactly as the live stream printed them) right after the detection tick that
//! raised or cleared it. Replaying with `--anomalies`: [`Redetect`] feeds the recorded kernel
//! records through the same aggregation and detectors on the capture's timeline, ticking at the
//! recorded ticks with their recorded host inputs, or, for a capture recorded without
//! detection, once a second of capture time without host inputs.

use std::io::Write;

use serde::Deserialize;
use tracer_common::Filter;

use super::{format::FileHeader, records::Item, timeline::Timeline, walk::WalkReport};
use crate::{
    anomaly::{Anomaly, Config, Detector, Gathered},
    clock::Clock,
    output::{Format, Printer, Record},
};

const SEC: u64 = 1_000_000_000;
/// Longest time-based state outside the config: a TIME_WAIT socket's 60 s in the aggregator's
/// recent-timewait count, and the SYN flood detector's 75 s memory of handshakes.
const INTERNAL_HORIZON_SECS: u64 = 75;

/// Ticks after which a stretch without records changes nothing more: every window has rolled
/// empty, every socket that can age past `min_age_secs` has, and every clear has had its
/// `clear_after_secs`. Later ticks of the stretch are collapsed into its last one, so an idle
/// capture (or a damaged timestamp) never spins.
fn idle_ticks(cfg: &Config) -> u64 {
    let windows = [
        cfg.syn_flood.window_secs,
        cfg.retransmit_storm.window_secs,
        cfg.reset_storm.window_secs,
        cfg.connect_failures.window_secs,
    ];
    let longest = windows
        .into_iter()
        .chain([cfg.close_wait_leak.min_age_secs, INTERNAL_HORIZON_SECS])
        .max()
        .unwrap_or(INTERNAL_HORIZON_SECS);
    longest + cfg.clear_after_secs + 2
}

/// An anomaly record as the item a capture stores: the printer's own JSON and human lines.
pub fn printed(a: &Anomaly, clock: Clock) -> Item {
    let line = |format| {
        let mut p = Printer::new(Vec::new(), format, clock);
        // Writing to a Vec cannot fail.
        let _ = p.print(&Record::Anomaly(a.clone()));
        let mut b = p.into_inner();
        if b.last() == Some(&b'\n') {
            b.pop();
        }
        String::from_utf8_lossy(&b).into_owned()
    };
    Item::Printed {
        ts_ns: a.ts_ns,
        json: line(Format::Json),
        human: line(Format::Human),
    }
}

/// Whether a printed item's JSON line is an anomaly record.
pub fn is_anomaly(json: &str) -> bool {
    #[derive(Deserialize)]
    struct Kind<'a> {
        #[serde(rename = "type", borrow)]
        kind: std::borrow::Cow<'a, str>,
    }
    serde_json::from_str::<Kind>(json).is_ok_and(|k| k.kind == "anomaly")
}

/// Prints anomaly records as the live stream does, with the capture's clock.
pub fn print<W: Write>(
    out: &mut W,
    h: &FileHeader,
    format: Format,
    found: Vec<Anomaly>,
) -> std::io::Result<()> {
    let mut p = Printer::new(out, format, Clock::with_offset(h.clock_offset_ns));
    for a in found {
        p.print(&Record::Anomaly(a))?;
    }
    Ok(())
}

/// The timestamp an item carries, if any.
fn item_ns(item: &Item) -> Option<u64> {
    match item {
        Item::Kernel(r) => Some(r.ts_ns),
        Item::Lost { ts_ns, .. } | Item::Printed { ts_ns, .. } => Some(*ts_ns),
        Item::Snapshot(s) => Some(s.at_ns),
        Item::Refresh(r) => Some(r.started_ns),
        Item::Tick(t) => Some(t.at_ns),
        Item::Unknown { .. } => None,
    }
}

/// Offline anomaly detection over a capture.
pub struct Redetect {
    timeline: Timeline,
    detector: Detector,
    /// This file holds the recorder's ticks; otherwise ticks are made every second.
    recorded_ticks: bool,
    next_tick: Option<u64>,
    idle_ticks: u64,
    noted: bool,
}

impl Redetect {
    /// `filter` is the replay's own; the detectors see every kind of record it lets through,
    /// as live detection does.
    pub fn new(cfg: Config, filter: &Filter) -> Self {
        let mut filter = *filter;
        filter.flags &= !Filter::KIND;
        Self {
            timeline: Timeline::new(filter),
            idle_ticks: idle_ticks(&cfg),
            detector: Detector::new(cfg),
            recorded_ticks: false,
            next_tick: None,
            noted: false,
        }
    }

    /// A new file begins. Returns the one-line note, once, when a file holds no ticks.
    pub fn file(&mut self, h: &FileHeader, name: &str) -> Option<String> {
        self.timeline.netns = h.netns;
        self.recorded_ticks = h.anomalies;
        if h.anomalies || self.noted {
            return None;
        }
        self.noted = true;
        Some(format!(
            "tracer: replay: {name} was recorded without anomaly detection: detectors tick every \
             capture second without host inputs (no reset or SYN-ACK records, TcpExt counters, \
             half-open or timewait dumps, tcp_max_tw_buckets), so syn_flood and reset_storm are \
             blind and time_wait_pileup names no ports or peers"
        ))
    }

    pub fn gap(&mut self) {
        self.timeline.gap();
    }

    /// The ticks due before `item` (capture seconds it moves past, when the file holds no
    /// ticks of its own): the anomalies they raised or cleared.
    pub fn due(&mut self, item: &Item) -> Vec<Anomaly> {
        let mut found = Vec::new();
        let Some(ns) = item_ns(item).filter(|_| !self.recorded_ticks) else {
            return found;
        };
        let mut at = *self.next_tick.get_or_insert(ns.saturating_add(SEC));
        let mut made = 0;
        while at <= ns {
            if made == self.idle_ticks {
                // Skip to the last whole second before this item.
                at += (ns - at) / SEC * SEC;
            }
            found.extend(self.tick(at, &Gathered::default()));
            made += 1;
            let Some(next) = at.checked_add(SEC) else {
                break;
            };
            at = next;
        }
        self.next_tick = Some(at);
        found
    }

    /// Applies one item; a recorded tick runs the detectors on its inputs and returns what
    /// they raised or cleared.
    pub fn apply(&mut self, item: &Item) -> Vec<Anomaly> {
        // Unknown and undecodable items are counted once, by the printing side.
        let mut ignored = WalkReport::default();
        if let Some(ev) = self.timeline.apply(item, &mut ignored)
            && self.timeline.agg().in_scope(&ev)
        {
            self.detector.observe(&ev);
        }
        match item {
            Item::Tick(t) if self.recorded_ticks => self.tick(t.at_ns, &t.inputs),
            _ => Vec::new(),
        }
    }

    fn tick(&mut self, at_ns: u64, inputs: &Gathered) -> Vec<Anomaly> {
        let agg = self.timeline.agg();
        self.detector.tick(at_ns, agg, &inputs.inputs())
    }
}
