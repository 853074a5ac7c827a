//! Detectors over what exists rather than what happens: `time_wait_pileup` (the aggregator's
//! TIME_WAIT gauge, with a timewait dump for the ports and peers), `peer_flood` (the table's
//! per-peer tally) and `exposed_listener` (listeners opened on a wildcard address).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use serde_json::json;
use tracer_common::state;

use super::{
    Finding, Inputs, Key, Kind, SEC, Subject,
    config::{Config, Exposed},
    hysteresis::Observation,
    netstat::TcpExt,
    push,
    window::TopCounts,
};
use crate::{
    aggregate::Aggregator,
    event::{Comm, Detail, Event},
};

/// Timewait dumps at most this often: the ports and peers change slowly.
const TW_DUMP_EVERY_NS: u64 = 10 * SEC;

pub(super) struct Inventory {
    ports: Vec<u16>,
    /// Sensitive wildcard listeners opened since the start, with their owner.
    exposed: HashMap<SocketAddr, (Option<u32>, Option<String>)>,
    tw_last_dump_ns: Option<u64>,
    tw_ports: Vec<(u16, u64)>,
    tw_peers: Vec<(SocketAddr, u64)>,
    tw_overflows: u64,
}

impl Inventory {
    pub fn new(cfg: &Exposed) -> Self {
        Self {
            ports: if cfg.enabled {
                cfg.ports.clone()
            } else {
                Vec::new()
            },
            exposed: HashMap::new(),
            tw_last_dump_ns: None,
            tw_ports: Vec::new(),
            tw_peers: Vec::new(),
            tw_overflows: 0,
        }
    }

    pub fn state(&mut self, ev: &Event) {
        let Detail::State { old, new, .. } = ev.detail else {
            return;
        };
        let (old, new) = (old.number(), new.number());
        if new == state::LISTEN && ev.saddr.is_unspecified() && self.ports.contains(&ev.sport) {
            let owner = ev.owner.as_ref();
            self.exposed.insert(
                SocketAddr::new(ev.saddr, ev.sport),
                (owner.map(|o| o.pid), owner.map(|o| o.comm.to_string())),
            );
        } else if old == state::LISTEN && new == state::CLOSE {
            self.exposed.remove(&SocketAddr::new(ev.saddr, ev.sport));
        }
    }

    fn time_wait(agg: &Aggregator, now_ns: u64) -> u64 {
        agg.state_counts(now_ns)
            .get(&state::TIME_WAIT)
            .copied()
            .unwrap_or(0)
    }

    pub fn wants_time_wait(&self, agg: &Aggregator, now_ns: u64, cfg: &Config) -> bool {
        let level = cfg.time_wait_pileup.min_sockets as f64 * cfg.clear_ratio;
        self.tw_last_dump_ns
            .is_none_or(|t| now_ns.saturating_sub(t) >= TW_DUMP_EVERY_NS)
            && Self::time_wait(agg, now_ns) as f64 >= level
    }

    pub fn tick(
        &mut self,
        agg: &Aggregator,
        now_ns: u64,
        delta: &TcpExt,
        inputs: &Inputs,
        cfg: &Config,
        out: &mut Vec<(Key, Observation<Finding>)>,
    ) {
        if cfg.time_wait_pileup.enabled {
            self.time_wait_pileup(agg, now_ns, delta, inputs, cfg, out);
        }
        if cfg.peer_flood.enabled {
            peer_flood(agg, cfg, out);
        }
        for (addr, (pid, comm)) in &self.exposed {
            let subject = Subject::Listener {
                addr: addr.to_string(),
                port: addr.port(),
                pid: *pid,
                comm: comm.clone(),
            };
            let summary = format!(
                "new listener on all interfaces ({addr}) on sensitive port {}",
                addr.port()
            );
            let evidence = json!({"addr": addr, "port": addr.port(), "pid": pid, "comm": comm});
            push(
                out,
                Kind::ExposedListener,
                subject,
                1.0,
                1.0,
                summary,
                evidence,
            );
        }
    }

    fn time_wait_pileup(
        &mut self,
        agg: &Aggregator,
        now_ns: u64,
        delta: &TcpExt,
        inputs: &Inputs,
        cfg: &Config,
        out: &mut Vec<(Key, Observation<Finding>)>,
    ) {
        self.tw_overflows += delta.get("TCPTimeWaitOverflow");
        if let Some(tw) = inputs.time_wait {
            self.tw_last_dump_ns = Some(now_ns);
            let mut ports = TopCounts::default();
            let mut peers = TopCounts::default();
            for s in tw.iter().filter(|s| s.state == state::TIME_WAIT) {
                ports.add(s.local.port(), 1);
                peers.add(SocketAddr::new(s.remote.ip(), s.remote.port()), 1);
            }
            self.tw_ports = ports.top(10);
            self.tw_peers = peers.top(10);
        }
        let n = Self::time_wait(agg, now_ns);
        let level = cfg.time_wait_pileup.min_sockets as f64 * cfg.clear_ratio;
        if (n as f64) < level {
            return;
        }
        let summary = format!(
            "{n} sockets in TIME_WAIT (threshold {}); top local ports {:?}, top peers {}",
            cfg.time_wait_pileup.min_sockets,
            self.tw_ports.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            self.tw_peers
                .iter()
                .take(3)
                .map(|(a, c)| format!("{a} ({c})"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let evidence = json!({
            "time_wait": n,
            "tcp_max_tw_buckets": inputs.max_tw_buckets,
            "time_wait_overflows": self.tw_overflows,
            "top_local_ports": self.tw_ports.iter()
                .map(|(p, c)| json!({"port": p, "sockets": c})).collect::<Vec<_>>(),
            "top_peers": self.tw_peers.iter()
                .map(|(a, c)| json!({"addr": a, "sockets": c})).collect::<Vec<_>>(),
        });
        push(
            out,
            Kind::TimeWaitPileup,
            Subject::Host,
            n as f64,
            cfg.time_wait_pileup.min_sockets as f64,
            summary,
            evidence,
        );
    }
}

/// Connections with one peer, by local port and by owning process.
type PeerTally = (u64, TopCounts<u16>, TopCounts<(u32, Comm)>);

fn peer_flood(agg: &Aggregator, cfg: &Config, out: &mut Vec<(Key, Observation<Finding>)>) {
    let c = &cfg.peer_flood;
    let level = ((c.min_connections as f64 * cfg.clear_ratio).ceil() as u64).max(1);
    let mut hot: HashMap<IpAddr, PeerTally> = agg
        .table()
        .peers()
        .iter()
        .filter(|(_, n)| **n >= level)
        .map(|(a, n)| (*a, (*n, TopCounts::default(), TopCounts::default())))
        .collect();
    if hot.is_empty() {
        return;
    }
    for (_, conn) in agg.table().iter() {
        if let Some(h) = hot.get_mut(&conn.tuple.remote.ip()) {
            h.1.add(conn.tuple.local.port(), 1);
            if conn.pid != 0 {
                h.2.add((conn.pid, conn.comm), 1);
            }
        }
    }
    for (addr, (n, ports, owners)) in hot {
        let top_ports = ports.top(5);
        let summary = format!(
            "{n} connections with {addr} (threshold {}); top local ports {:?}",
            c.min_connections,
            top_ports.iter().map(|(p, _)| *p).collect::<Vec<_>>()
        );
        let evidence = json!({
            "connections": n,
            "top_local_ports": top_ports.iter()
                .map(|(p, c)| json!({"port": p, "connections": c})).collect::<Vec<_>>(),
            "top_processes": owners.top(3).into_iter()
                .map(|((pid, comm), c)| json!({"pid": pid, "comm": comm.as_str(), "connections": c}))
                .collect::<Vec<_>>(),
        });
        push(
            out,
            Kind::PeerFlood,
            Subject::Peer { addr },
            n as f64,
            c.min_connections as f64,
            summary,
            evidence,
        );
    }
}
