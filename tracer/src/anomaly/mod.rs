//! Anomaly detection over the live aggregation: CLOSE_WAIT leaks, SYN floods, TIME_WAIT
//! pile-ups, retransmit and reset storms, peer floods, failed connects and exposed listeners.
//!
//! Pure code, driven by the caller: [`Detector::observe`] takes each decoded event (a few hash
//! map updates, only for the events that matter), and [`Detector::tick`], called once a second,
//! reads the aggregator and whatever sock_diag dumps and counters the caller gathered (see
//! [`Detector::needs`]), evaluates every detector and returns the anomalies raised or cleared.
//! Unit tests feed it synthetic events and timestamps.

mod close_wait;
pub mod config;
pub mod hysteresis;
mod inventory;
pub mod netstat;
mod rates;
pub mod record;
pub mod stream;
mod syn_flood;
pub mod window;

use std::collections::BTreeMap;

use crate::{
    aggregate::Aggregator,
    event::{Detail, Event},
    snapshot::DiagSocket,
};
pub use config::{Config, ConfigError};
use hysteresis::{Edge, Gate, Observation, Tracker};
use netstat::TcpExt;
pub use record::{Anomaly, Kind, Severity, Status, Subject};

const SEC: u64 = 1_000_000_000;

/// What a detector found about one subject at one tick.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub subject: Subject,
    /// One line: what is wrong, with the numbers.
    pub summary: String,
    pub evidence: serde_json::Map<String, serde_json::Value>,
}

/// Signals the caller gathers for a tick when [`Detector::needs`] asks for them.
#[derive(Debug, Default)]
pub struct Inputs<'a> {
    /// `/proc/net/netstat` TcpExt, read every tick.
    pub netstat: Option<TcpExt>,
    /// Request (half-open) sockets from sock_diag.
    pub requests: Option<&'a [DiagSocket]>,
    /// Timewait sockets from sock_diag.
    pub time_wait: Option<&'a [DiagSocket]>,
    /// `net.ipv4.tcp_max_tw_buckets`, when readable.
    pub max_tw_buckets: Option<u64>,
}

/// [`Inputs`] owned: what a tick gathered from the host, so a capture can store it and
/// replay can tick with the very same inputs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gathered {
    pub netstat: Option<TcpExt>,
    pub requests: Option<Vec<DiagSocket>>,
    pub time_wait: Option<Vec<DiagSocket>>,
    pub max_tw_buckets: Option<u64>,
}

impl Gathered {
    pub fn inputs(&self) -> Inputs<'_> {
        Inputs {
            netstat: self.netstat,
            requests: self.requests.as_deref(),
            time_wait: self.time_wait.as_deref(),
            max_tw_buckets: self.max_tw_buckets,
        }
    }
}

/// Which costly inputs the next tick wants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    pub requests: bool,
    pub time_wait: bool,
}

type Key = (Kind, String);

/// Adds a detector's observation of `subject` for this tick.
fn push(
    out: &mut Vec<(Key, Observation<Finding>)>,
    kind: Kind,
    subject: Subject,
    measure: f64,
    threshold: f64,
    summary: String,
    evidence: serde_json::Value,
) {
    out.push((
        (kind, subject.key()),
        Observation {
            measure,
            threshold,
            detail: Finding {
                subject,
                summary,
                evidence: match evidence {
                    serde_json::Value::Object(m) => m,
                    _ => serde_json::Map::new(),
                },
            },
        },
    ));
}

pub struct Detector {
    cfg: Config,
    gate: Gate,
    /// First tick: the age floor of CLOSE_WAIT sockets that predate the tracer.
    start_ns: Option<u64>,
    tracker: Tracker<Key, Finding>,
    syn: syn_flood::SynFlood,
    rates: rates::Rates,
    inventory: inventory::Inventory,
    netstat_prev: Option<TcpExt>,
    /// Anomalies raised so far, by kind.
    pub raised: BTreeMap<Kind, u64>,
    /// Detectors that cannot work on this kernel, with the reason (reported once at start).
    pub unavailable: Vec<(Kind, String)>,
}

impl Detector {
    pub fn new(cfg: Config) -> Self {
        let gate = Gate {
            clear_ratio: cfg.clear_ratio,
            clear_after_ns: cfg.clear_after_secs * SEC,
        };
        Self {
            syn: syn_flood::SynFlood::new(&cfg.syn_flood),
            rates: rates::Rates::new(&cfg),
            inventory: inventory::Inventory::new(&cfg.exposed_listener),
            cfg,
            gate,
            start_ns: None,
            tracker: Tracker::default(),
            netstat_prev: None,
            raised: BTreeMap::new(),
            unavailable: Vec::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Records a detector that lacks its kernel signal (a missing optional tracepoint).
    pub fn mark_unavailable(&mut self, kind: Kind, why: String) {
        self.unavailable.push((kind, why));
    }

    /// Anomalies currently active.
    pub fn active(&self) -> usize {
        self.tracker.active()
    }

    /// Active anomalies by kind.
    pub fn active_by_kind(&self) -> BTreeMap<Kind, u64> {
        let mut out = BTreeMap::new();
        for (kind, _) in self.tracker.keys() {
            *out.entry(*kind).or_default() += 1;
        }
        out
    }

    /// One decoded event. Cheap: only retransmits, resets, SYN-ACK retransmits, failed
    /// connects and listener changes are looked at.
    pub fn observe(&mut self, ev: &Event) {
        if !self.cfg.enabled {
            return;
        }
        match &ev.detail {
            Detail::Retransmit { .. } => self.rates.retransmit(ev),
            Detail::Signal { kind, .. } => match kind {
                crate::event::SignalKind::SynackRetransmit => {
                    if self.cfg.syn_flood.enabled {
                        self.syn.synack(ev)
                    }
                }
                k => self.rates.reset(ev, *k),
            },
            Detail::State { .. } => {
                if ev.close.is_some() {
                    self.rates.close(ev);
                }
                self.inventory.state(ev);
            }
        }
    }

    /// What the next [`Detector::tick`] would like in its [`Inputs`].
    pub fn needs(&self, agg: &Aggregator, now_ns: u64) -> Needs {
        if !self.cfg.enabled {
            return Needs::default();
        }
        Needs {
            requests: self.cfg.syn_flood.enabled && self.syn.suspicious(),
            time_wait: self.cfg.time_wait_pileup.enabled
                && self.inventory.wants_time_wait(agg, now_ns, &self.cfg),
        }
    }

    /// Evaluates every detector at `now_ns` (CLOCK_MONOTONIC). Call about once a second.
    pub fn tick(&mut self, now_ns: u64, agg: &Aggregator, inputs: &Inputs) -> Vec<Anomaly> {
        if !self.cfg.enabled {
            return Vec::new();
        }
        let start_ns = *self.start_ns.get_or_insert(now_ns);
        let delta = match (inputs.netstat, self.netstat_prev) {
            (Some(now), Some(prev)) => now.delta(&prev),
            _ => TcpExt::default(),
        };
        if inputs.netstat.is_some() {
            self.netstat_prev = inputs.netstat;
        }
        let cfg = &self.cfg;
        let mut obs: Vec<(Key, Observation<Finding>)> = Vec::new();
        if cfg.close_wait_leak.enabled {
            close_wait::observe(agg, now_ns, start_ns, cfg, &mut obs);
        }
        if cfg.syn_flood.enabled {
            self.syn
                .tick(agg, now_ns, &delta, inputs.requests, cfg, &mut obs);
        }
        self.rates.tick(cfg, &mut obs);
        self.inventory
            .tick(agg, now_ns, &delta, inputs, cfg, &mut obs);

        let edges = self.tracker.step(now_ns, self.gate, obs);
        let mut out = Vec::with_capacity(edges.len());
        for ((kind, _), edge) in edges {
            let a = match edge {
                Edge::Raised {
                    detail,
                    measure,
                    threshold,
                } => {
                    *self.raised.entry(kind).or_default() += 1;
                    Anomaly::new(now_ns, kind, Status::Raised, detail)
                        .with_severity(Severity::of(measure, threshold))
                }
                Edge::Cleared {
                    detail, active_ns, ..
                } => Anomaly::new(now_ns, kind, Status::Cleared, detail).with_active(active_ns),
            };
            out.push(a);
        }
        out
    }
}

#[cfg(test)]
mod tests;
