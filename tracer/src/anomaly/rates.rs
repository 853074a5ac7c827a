//! The rate detectors: `retransmit_storm` and `reset_storm` per peer, `connect_failures` per
//! destination. Each event adds to a one-second bucket; a tick compares window averages with
//! the thresholds.

use std::net::{IpAddr, SocketAddr};

use serde_json::json;
use tracer_common::state;

use super::{
    Finding, Key, Kind, Subject,
    config::{Config, RateDetector},
    hysteresis::Observation,
    push,
    window::{Tally, TopCounts, Window},
};
use crate::{
    close::CloseEnd,
    event::{Comm, Event, SignalKind},
};

#[derive(Debug, Clone, Default)]
pub(super) struct RetxTally {
    count: u64,
    /// (local, remote) of the connections retransmitting.
    conns: TopCounts<(SocketAddr, SocketAddr)>,
    owners: TopCounts<(u32, Comm)>,
}

impl Tally for RetxTally {
    fn merge(&mut self, o: &Self) {
        self.count += o.count;
        self.conns.merge(&o.conns);
        self.owners.merge(&o.owners);
    }
}

#[derive(Debug, Clone, Default)]
pub(super) struct ResetTally {
    sent: u64,
    received: u64,
    /// Local ports involved: many distinct ones is the port-scan signature.
    ports: TopCounts<u16>,
}

impl Tally for ResetTally {
    fn merge(&mut self, o: &Self) {
        self.sent += o.sent;
        self.received += o.received;
        self.ports.merge(&o.ports);
    }
}

#[derive(Debug, Clone, Default)]
pub(super) struct FailTally {
    refused: u64,
    timeout: u64,
    unreachable: u64,
    owners: TopCounts<(u32, Comm)>,
}

impl Tally for FailTally {
    fn merge(&mut self, o: &Self) {
        self.refused += o.refused;
        self.timeout += o.timeout;
        self.unreachable += o.unreachable;
        self.owners.merge(&o.owners);
    }
}

pub(super) struct Rates {
    retx: Option<Window<IpAddr, RetxTally>>,
    resets: Option<Window<IpAddr, ResetTally>>,
    fails: Option<Window<SocketAddr, FailTally>>,
}

fn window<K: std::hash::Hash + Eq + Clone, V: Tally>(d: &RateDetector) -> Option<Window<K, V>> {
    d.enabled.then(|| Window::new(d.window_secs as usize))
}

fn owner_of(ev: &Event) -> Option<(u32, Comm)> {
    ev.owner.as_ref().map(|o| (o.pid, o.comm))
}

fn owners_json(t: &TopCounts<(u32, Comm)>) -> Vec<serde_json::Value> {
    t.top(3)
        .into_iter()
        .map(|((pid, comm), n)| json!({"pid": pid, "comm": comm.as_str(), "count": n}))
        .collect()
}

impl Rates {
    pub fn new(cfg: &Config) -> Self {
        Self {
            retx: window(&cfg.retransmit_storm),
            resets: window(&cfg.reset_storm),
            fails: window(&cfg.connect_failures),
        }
    }

    pub fn retransmit(&mut self, ev: &Event) {
        if let Some(t) = self.retx.as_mut().and_then(|w| w.entry(ev.daddr)) {
            t.count += 1;
            t.conns.add(
                (
                    SocketAddr::new(ev.saddr, ev.sport),
                    SocketAddr::new(ev.daddr, ev.dport),
                ),
                1,
            );
            if let Some(o) = owner_of(ev) {
                t.owners.add(o, 1);
            }
        }
    }

    pub fn reset(&mut self, ev: &Event, kind: SignalKind) {
        if let Some(t) = self.resets.as_mut().and_then(|w| w.entry(ev.daddr)) {
            match kind {
                SignalKind::ResetReceived => t.received += 1,
                _ => t.sent += 1,
            }
            t.ports.add(ev.sport, 1);
        }
    }

    /// A close record: failed connects count toward their destination.
    pub fn close(&mut self, ev: &Event) {
        let Some(c) = &ev.close else { return };
        if c.from.number() != state::SYN_SENT {
            return;
        }
        let dest = SocketAddr::new(ev.daddr, ev.dport);
        let Some(t) = self.fails.as_mut().and_then(|w| w.entry(dest)) else {
            return;
        };
        match c.end {
            CloseEnd::Refused => t.refused += 1,
            CloseEnd::Timeout => t.timeout += 1,
            CloseEnd::Unreachable => t.unreachable += 1,
            _ => return,
        }
        if let Some(o) = owner_of(ev) {
            t.owners.add(o, 1);
        }
    }

    pub fn tick(&mut self, cfg: &Config, out: &mut Vec<(Key, Observation<Finding>)>) {
        if let Some(w) = &mut self.retx {
            w.roll();
            let c = &cfg.retransmit_storm;
            for (peer, t) in w.sums() {
                let rate = t.count as f64 / w.secs() as f64;
                let conns: Vec<serde_json::Value> = t
                    .conns
                    .top(5)
                    .into_iter()
                    .map(|((l, r), n)| json!({"local": l, "remote": r, "retransmits": n}))
                    .collect();
                let summary = format!(
                    "{rate:.1} retransmits/s to {peer} over {} s ({} segments, {} connections)",
                    c.window_secs,
                    t.count,
                    t.conns.distinct()
                );
                let evidence = json!({
                    "retransmits_per_s": (rate * 10.0).round() / 10.0,
                    "retransmits": t.count,
                    "window_s": c.window_secs,
                    "connections": t.conns.distinct(),
                    "top_connections": conns,
                    "top_processes": owners_json(&t.owners),
                });
                push(
                    out,
                    Kind::RetransmitStorm,
                    Subject::Peer { addr: peer },
                    rate,
                    c.min_rate,
                    summary,
                    evidence,
                );
            }
        }
        if let Some(w) = &mut self.resets {
            w.roll();
            let c = &cfg.reset_storm;
            for (peer, t) in w.sums() {
                let rate = (t.sent + t.received) as f64 / w.secs() as f64;
                let ports: Vec<u16> = t.ports.top(10).into_iter().map(|(p, _)| p).collect();
                let summary = format!(
                    "{rate:.1} resets/s with {peer} over {} s ({} sent, {} received) on {} local \
                     ports, e.g. {:?}",
                    c.window_secs,
                    t.sent,
                    t.received,
                    t.ports.distinct(),
                    ports
                );
                let evidence = json!({
                    "resets_per_s": (rate * 10.0).round() / 10.0,
                    "sent": t.sent,
                    "received": t.received,
                    "window_s": c.window_secs,
                    "distinct_local_ports": t.ports.distinct(),
                    "top_local_ports": ports,
                });
                push(
                    out,
                    Kind::ResetStorm,
                    Subject::Peer { addr: peer },
                    rate,
                    c.min_rate,
                    summary,
                    evidence,
                );
            }
        }
        if let Some(w) = &mut self.fails {
            w.roll();
            let c = &cfg.connect_failures;
            for (dest, t) in w.sums() {
                let n = t.refused + t.timeout + t.unreachable;
                let rate = n as f64 / w.secs() as f64;
                let summary = format!(
                    "{rate:.1} failed connects/s to {dest} over {} s ({} refused, {} timed out, {} \
                     unreachable)",
                    c.window_secs, t.refused, t.timeout, t.unreachable
                );
                let evidence = json!({
                    "failures_per_s": (rate * 10.0).round() / 10.0,
                    "refused": t.refused,
                    "timeout": t.timeout,
                    "unreachable": t.unreachable,
                    "window_s": c.window_secs,
                    "top_processes": owners_json(&t.owners),
                });
                let subject = Subject::Destination {
                    addr: dest.to_string(),
                };
                push(
                    out,
                    Kind::ConnectFailures,
                    subject,
                    rate,
                    c.min_rate,
                    summary,
                    evidence,
                );
            }
        }
    }
}
