//! `close_wait_leak`: per owning process, sockets that stay in CLOSE_WAIT longer than a
//! threshold. The table's per-process tally says which processes hold enough CLOSE_WAIT sockets
//! to matter; only then is the table scanned for their ages and ports.

use std::collections::HashMap;

use serde_json::json;
use tracer_common::state;

use super::{
    Finding, Key, Kind, SEC, Subject, config::Config, hysteresis::Observation, push,
    window::TopCounts,
};
use crate::{aggregate::Aggregator, event::Comm};

#[derive(Default)]
struct Held {
    comm: Comm,
    total: u64,
    old: u64,
    oldest_ns: u64,
    ports: TopCounts<u16>,
    peers: TopCounts<std::net::IpAddr>,
}

/// Sockets that predate the tracer (seeded from the dump, no transition seen) count from
/// `start_ns`: their age is at least that.
pub(super) fn observe(
    agg: &Aggregator,
    now_ns: u64,
    start_ns: u64,
    cfg: &Config,
    out: &mut Vec<(Key, Observation<Finding>)>,
) {
    let c = &cfg.close_wait_leak;
    let level = ((c.min_sockets as f64 * cfg.clear_ratio).ceil() as u64).max(1);
    let mut held: HashMap<u32, Held> = agg
        .table()
        .procs()
        .iter()
        .filter(|(pid, p)| **pid != 0 && p.close_wait >= level)
        .map(|(pid, p)| {
            let h = Held {
                comm: agg.process_name(*pid).unwrap_or(p.comm),
                ..Held::default()
            };
            (*pid, h)
        })
        .collect();
    if held.is_empty() {
        return;
    }
    let min_age = c.min_age_secs * SEC;
    for (_, conn) in agg.table().iter() {
        if conn.state != state::CLOSE_WAIT {
            continue;
        }
        let Some(h) = held.get_mut(&conn.pid) else {
            continue;
        };
        let since = if conn.state_since_ns == 0 {
            start_ns
        } else {
            conn.state_since_ns
        };
        let age = now_ns.saturating_sub(since);
        h.total += 1;
        h.oldest_ns = h.oldest_ns.max(age);
        if age >= min_age {
            h.old += 1;
        }
        h.ports.add(conn.tuple.local.port(), 1);
        h.peers.add(conn.tuple.remote.ip(), 1);
    }
    for (pid, h) in held {
        let subject = Subject::Process {
            pid,
            comm: h.comm.to_string(),
        };
        let ports: Vec<u16> = h.ports.top(10).into_iter().map(|(p, _)| p).collect();
        let oldest_s = h.oldest_ns / SEC;
        let summary = format!(
            "{} sockets in CLOSE_WAIT for over {} s ({} in all, oldest {} s) on local ports {:?}",
            h.old, c.min_age_secs, h.total, oldest_s, ports
        );
        let evidence = json!({
            "close_wait": h.total,
            "older_than_threshold": h.old,
            "min_age_s": c.min_age_secs,
            "oldest_age_s": oldest_s,
            "local_ports": ports,
            "top_peers": h.peers.top(5).into_iter()
                .map(|(a, n)| json!({"addr": a, "sockets": n})).collect::<Vec<_>>(),
        });
        push(
            out,
            Kind::CloseWaitLeak,
            subject,
            h.old as f64,
            c.min_sockets as f64,
            summary,
            evidence,
        );
    }
}
