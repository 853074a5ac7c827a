//! `syn_flood`: per listener, handshakes that never complete. Half-open request sockets never
//! pass through `inet_sock_set_state`, so the signals are: the first SYN-ACK retransmission of
//! each handshake (`tcp:tcp_retransmit_synack`: the client did not answer within a second), SYN
//! cookies sent and not answered and SYNs dropped for a full request queue (TcpExt counters,
//! host-wide: attributed to the listener with the most half-open sockets), and a sock_diag dump
//! of the request sockets for the half-open counts and the top sources.

use std::{
    collections::VecDeque,
    net::{IpAddr, SocketAddr},
};

use foldhash::{HashMap, HashMapExt};
use serde_json::json;

use super::{
    Finding, Key, Kind, Subject,
    config::{Config, RateDetector},
    hysteresis::Observation,
    netstat::TcpExt,
    push,
    window::{Tally, TopCounts, Window},
};
use crate::{aggregate::Aggregator, event::Event, snapshot::DiagSocket};

/// A handshake's SYN-ACKs are retransmitted for about 63 s (5 retries); remember it a bit longer
/// so each one counts once.
const SEEN_FOR_NS: u64 = 75_000_000_000;
/// Handshakes remembered at most; beyond, every retransmission counts as a new handshake
/// (a flood that large is unmistakable anyway).
const SEEN_MAX: usize = 262_144;

#[derive(Debug, Clone, Default)]
pub(super) struct SynTally {
    new_handshakes: u64,
    retransmits: u64,
    sources: TopCounts<IpAddr>,
}

impl Tally for SynTally {
    fn merge(&mut self, o: &Self) {
        self.new_handshakes += o.new_handshakes;
        self.retransmits += o.retransmits;
        self.sources.merge(&o.sources);
    }
}

pub(super) struct SynFlood {
    window: Window<u16, SynTally>,
    /// Per-second TcpExt growth over the same window.
    netstat: VecDeque<TcpExt>,
    seen: HashMap<(u16, SocketAddr), u64>,
    seen_order: VecDeque<((u16, SocketAddr), u64)>,
}

impl SynFlood {
    pub fn new(cfg: &RateDetector) -> Self {
        Self {
            window: Window::new(cfg.window_secs as usize),
            netstat: VecDeque::new(),
            seen: HashMap::new(),
            seen_order: VecDeque::new(),
        }
    }

    pub fn synack(&mut self, ev: &Event) {
        let client = SocketAddr::new(ev.daddr, ev.dport);
        let key = (ev.sport, client);
        let new = if self.seen.len() >= SEEN_MAX {
            true
        } else {
            let fresh = self.seen.insert(key, ev.ts_ns).is_none();
            if fresh {
                self.seen_order.push_back((key, ev.ts_ns));
            }
            fresh
        };
        if let Some(t) = self.window.entry(ev.sport) {
            t.retransmits += 1;
            if new {
                t.new_handshakes += 1;
                t.sources.add(ev.daddr, 1);
            }
        }
    }

    /// Whether a request-socket dump is worth taking: SYN-ACKs are being retransmitted or the
    /// kernel is sending cookies or dropping SYNs.
    pub fn suspicious(&self) -> bool {
        !self.seen.is_empty() || self.netstat.iter().any(|d| unanswered(d) > 0)
    }

    pub fn tick(
        &mut self,
        agg: &Aggregator,
        now_ns: u64,
        delta: &TcpExt,
        requests: Option<&[DiagSocket]>,
        cfg: &Config,
        out: &mut Vec<(Key, Observation<Finding>)>,
    ) {
        let c = &cfg.syn_flood;
        self.window.roll();
        self.netstat.push_back(*delta);
        while self.netstat.len() > self.window.secs() {
            self.netstat.pop_front();
        }
        let cutoff = now_ns.saturating_sub(SEEN_FOR_NS);
        while let Some((k, t)) = self.seen_order.front().copied() {
            if t >= cutoff {
                break;
            }
            self.seen_order.pop_front();
            if self.seen.get(&k) == Some(&t) {
                self.seen.remove(&k);
            }
        }

        let mut ports = self.window.sums();
        let mut half_open: HashMap<u16, (u64, TopCounts<IpAddr>)> = HashMap::new();
        for r in requests.unwrap_or_default() {
            let e = half_open.entry(r.local.port()).or_default();
            e.0 += 1;
            e.1.add(r.remote.ip(), 1);
        }
        let mut net = TcpExt::default();
        for d in &self.netstat {
            for i in 0..net.0.len() {
                net.0[i] += d.0[i];
            }
        }
        let extra = unanswered(&net);
        // Host-wide counters go to the listener with the most half-open sockets, else the one
        // with the most new unanswered handshakes.
        let target = half_open
            .iter()
            .max_by_key(|(p, (n, _))| (*n, std::cmp::Reverse(**p)))
            .map(|(p, _)| *p)
            .or_else(|| {
                ports
                    .iter()
                    .max_by_key(|(p, t)| (t.new_handshakes, std::cmp::Reverse(**p)))
                    .map(|(p, _)| *p)
            });
        if let Some(p) = target {
            ports.entry(p).or_default();
        }
        for p in half_open.keys() {
            ports.entry(*p).or_default();
        }
        let secs = self.window.secs() as f64;
        for (port, t) in ports {
            let attributed = if Some(port) == target { extra } else { 0 };
            let rate = (t.new_handshakes + attributed) as f64 / secs;
            let (half, half_sources) = half_open.remove(&port).unwrap_or_default();
            if rate == 0.0 && half == 0 {
                continue;
            }
            let mut sources = t.sources.clone();
            sources.merge(&half_sources);
            let top: Vec<serde_json::Value> = sources
                .top(5)
                .into_iter()
                .map(|(a, n)| json!({"addr": a, "handshakes": n}))
                .collect();
            let subject = listener(agg, port);
            let summary = format!(
                "{rate:.0} never-completing handshakes/s on port {port} over {} s ({} half-open, \
                 {} SYN-ACK retransmits, {} SYN cookies unanswered); top sources {}",
                c.window_secs,
                half,
                t.retransmits,
                attributed,
                sources
                    .top(3)
                    .iter()
                    .map(|(a, n)| format!("{a} ({n})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let mut evidence = json!({
                "port": port,
                "handshakes_per_s": (rate * 10.0).round() / 10.0,
                "window_s": c.window_secs,
                "new_unanswered_handshakes": t.new_handshakes,
                "synack_retransmits": t.retransmits,
                "half_open": half,
                "top_sources": top,
            });
            if Some(port) == target
                && let Some(obj) = evidence.as_object_mut()
            {
                for (i, name) in super::netstat::NAMES.iter().enumerate() {
                    if *name != "TCPTimeWaitOverflow" {
                        obj.insert((*name).to_owned(), json!(net.0[i]));
                    }
                }
            }
            push(
                out,
                Kind::SynFlood,
                subject,
                rate,
                c.min_rate,
                summary,
                evidence,
            );
        }
    }
}

/// Handshakes the kernel gave up tracking: cookies nobody answered and SYNs dropped.
fn unanswered(d: &TcpExt) -> u64 {
    d.get("SyncookiesSent")
        .saturating_sub(d.get("SyncookiesRecv"))
        + d.get("TCPReqQFullDrop")
}

/// The listener on `port`, with its owner where the table or the last dump knows it.
pub(super) fn listener(agg: &Aggregator, port: u16) -> Subject {
    let l = agg.listeners().iter().find(|l| l.local.port() == port);
    let addr = l.map_or_else(|| format!("*:{port}"), |l| l.local.to_string());
    let owner = l.and_then(|l| {
        agg.table()
            .listener_owner(&l.local)
            .or_else(|| agg.inode_owner(l.inode))
    });
    Subject::Listener {
        addr,
        port,
        pid: owner.map(|o| o.0),
        comm: owner.map(|o| o.1.to_string()),
    }
}
