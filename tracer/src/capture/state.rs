//! Aggregation state in and out of a capture: a [`StateSnapshot`] of a live [`Aggregator`], and
//! a new aggregator restored from one through the same `seed` path the start-up dump takes.
//!
//! Timewait and request sockets are stored as the counts the aggregator reported at that
//! moment (its recent-timewait queue folded in), so a restored aggregator reports the same
//! counts; it then expires those recent timewait sockets only at the next reconciliation.

use std::{collections::HashMap, net::SocketAddr};

use tracer_common::{AF_INET, AF_INET6, EventKind, Filter, OwnerSource, RawEvent, state};

use super::records::{Mini, Refresh, SnapListener, SnapProc, SnapSocket, StateSnapshot};
use crate::{
    aggregate::{Aggregator, Listener, MiniCounts, ProcBytes},
    close::CloseEnd,
    event::Comm,
    loss::{LossCause, LossTotals},
    snapshot::{DiagSocket, SockKind},
};

/// Synthetic inodes of restored sockets: far above real inode numbers, so they never collide
/// with a listener's inode.
const SYNTHETIC_INODE: u64 = 1 << 62;

fn mini_of(agg: &Aggregator, at_ns: u64) -> Mini {
    let counts = agg.state_counts(at_ns);
    let extra = |st: u8| {
        counts
            .get(&st)
            .copied()
            .unwrap_or(0)
            .saturating_sub(agg.table().count(st))
    };
    Mini {
        time_wait: extra(state::TIME_WAIT),
        fin_wait2: extra(state::FIN_WAIT2),
        syn_recv: extra(state::SYN_RECV),
    }
}

fn listeners_of(agg: &Aggregator) -> Vec<SnapListener> {
    agg.listeners()
        .iter()
        .map(|l| SnapListener {
            local: l.local,
            accept_queue: l.accept_queue,
            backlog: l.backlog,
            inode: l.inode,
        })
        .collect()
}

fn procs_of(agg: &Aggregator) -> Vec<SnapProc> {
    let mut v: Vec<SnapProc> = agg
        .proc_bytes()
        .iter()
        .map(|(&pid, b)| SnapProc {
            pid,
            comm: b.comm.to_string(),
            sent: b.sent,
            received: b.received,
        })
        .collect();
    v.sort_by_key(|p| p.pid);
    v
}

fn names_of(agg: &Aggregator) -> Vec<(u32, String)> {
    agg.process_names()
        .into_iter()
        .map(|(pid, c)| (pid, c.to_string()))
        .collect()
}

fn set_names(agg: &mut Aggregator, names: &[(u32, String)]) {
    agg.set_process_names(names.iter().map(|(p, c)| (*p, Comm::from(c.as_str()))));
}

fn losses_of(losses: &LossTotals) -> Vec<(String, u64)> {
    LossCause::ALL
        .iter()
        .map(|&c| (c.name().to_owned(), losses.total(c)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// The aggregation state now; with `filter`, only the table sockets it matches (a filtered
/// recording stores the sockets its records are about).
pub fn snapshot(
    agg: &Aggregator,
    losses: &LossTotals,
    at_ns: u64,
    filter: Option<&Filter>,
) -> StateSnapshot {
    let sockets = agg
        .table()
        .iter()
        .map(|(_, c)| SnapSocket {
            state: c.state,
            local: c.tuple.local,
            remote: c.tuple.remote,
            pid: c.pid,
            comm: c.comm.to_string(),
        })
        .filter(|k| filter.is_none_or(|f| f.matches(&as_record(k))))
        .collect();
    StateSnapshot {
        at_ns,
        sockets,
        mini: mini_of(agg, at_ns),
        listeners: listeners_of(agg),
        procs: procs_of(agg),
        transitions: agg
            .transitions
            .iter()
            .map(|(&(o, n), &c)| (o, n, c))
            .collect(),
        retransmits: agg.retransmits,
        closes: agg
            .closes
            .iter()
            .map(|(e, &n)| (e.name().to_owned(), n))
            .collect(),
        unknown_sockets: agg.unknown_sockets,
        stale_entries: agg.stale_entries,
        sock_map_evictions: agg.sock_map_evictions,
        proc_map_evictions: agg.proc_map_evictions,
        other_netns: agg.other_netns,
        losses: losses_of(losses),
        names: names_of(agg),
    }
}

/// What a reconciliation just read, for replay to apply at the same point.
pub fn refresh(agg: &Aggregator, losses: &LossTotals, at_ns: u64) -> Refresh {
    Refresh {
        started_ns: at_ns,
        mini: mini_of(agg, at_ns),
        listeners: listeners_of(agg),
        procs: procs_of(agg),
        proc_map_evictions: agg.proc_map_evictions,
        losses: losses_of(losses),
        names: names_of(agg),
    }
}

/// A kernel-like record of a table socket, so the stream's filter can judge it.
fn as_record(s: &SnapSocket) -> RawEvent {
    let mut r = RawEvent::zeroed();
    r.kind = EventKind::State as u8;
    r.old_state = s.state;
    r.new_state = s.state;
    r.pid = s.pid;
    r.owner_src = OwnerSource::Snapshot as u8;
    let c = s.comm.as_bytes();
    let n = c.len().min(r.comm.len() - 1);
    r.comm[..n].copy_from_slice(&c[..n]);
    let put = |a: &SocketAddr, out: &mut [u8; 16]| match a.ip() {
        std::net::IpAddr::V4(ip) => out[..4].copy_from_slice(&ip.octets()),
        std::net::IpAddr::V6(ip) => *out = ip.octets(),
    };
    r.family = if s.local.is_ipv4() { AF_INET } else { AF_INET6 };
    put(&s.local, &mut r.saddr);
    put(&s.remote, &mut r.daddr);
    r.sport = s.local.port();
    r.dport = s.remote.port();
    r
}

fn observe_losses(totals: &mut LossTotals, losses: &[(String, u64)]) {
    for (name, n) in losses {
        if let Some(c) = LossCause::from_name(name) {
            totals.observe(c, *n);
        }
    }
}

fn apply_parts(agg: &mut Aggregator, mini: Mini, at_ns: u64, listeners: &[SnapListener]) {
    agg.reconcile(
        MiniCounts {
            time_wait: mini.time_wait,
            fin_wait2: mini.fin_wait2,
            syn_recv: mini.syn_recv,
        },
        at_ns.saturating_add(1),
    );
    agg.set_listeners(
        listeners
            .iter()
            .map(|l| Listener {
                local: l.local,
                accept_queue: l.accept_queue,
                backlog: l.backlog,
                inode: l.inode,
            })
            .collect(),
    );
}

fn proc_bytes(procs: &[SnapProc]) -> HashMap<u32, ProcBytes> {
    procs
        .iter()
        .map(|p| {
            (
                p.pid,
                ProcBytes {
                    sent: p.sent,
                    received: p.received,
                    comm: Comm::from(p.comm.as_str()),
                },
            )
        })
        .collect()
}

/// A new aggregator in the snapshot's state. With `filter`, only the sockets it matches.
pub fn restore(
    s: &StateSnapshot,
    netns: Option<u32>,
    filter: Option<&Filter>,
    losses: &mut LossTotals,
) -> Aggregator {
    let capacity = (s.sockets.len() * 2).max(1 << 20);
    let mut agg = Aggregator::new(capacity, netns);
    let mut socks = Vec::with_capacity(s.sockets.len());
    let mut owners = HashMap::new();
    for (i, k) in s.sockets.iter().enumerate() {
        if filter.is_some_and(|f| !f.matches(&as_record(k))) {
            continue;
        }
        let inode = SYNTHETIC_INODE + i as u64;
        if k.pid != 0 {
            owners.insert(inode, (k.pid, k.comm.clone()));
        }
        socks.push(DiagSocket {
            kind: SockKind::Full,
            state: k.state,
            local: k.local,
            remote: k.remote,
            inode,
            uid: 0,
            cookie: inode,
            rqueue: 0,
            wqueue: 0,
        });
    }
    agg.seed(&socks, &owners);
    apply_parts(&mut agg, s.mini, s.at_ns, &s.listeners);
    agg.set_proc_bytes(proc_bytes(&s.procs));
    set_names(&mut agg, &s.names);
    agg.transitions = s.transitions.iter().map(|&(o, n, c)| ((o, n), c)).collect();
    agg.retransmits = s.retransmits;
    agg.closes = s
        .closes
        .iter()
        .filter_map(|(name, n)| Some((CloseEnd::from_name(name)?, *n)))
        .collect();
    agg.unknown_sockets = s.unknown_sockets;
    agg.stale_entries = s.stale_entries;
    agg.sock_map_evictions = s.sock_map_evictions;
    agg.proc_map_evictions = s.proc_map_evictions;
    agg.other_netns = s.other_netns;
    agg.now_ns = agg.now_ns.max(s.at_ns);
    observe_losses(losses, &s.losses);
    agg
}

pub fn apply_refresh(agg: &mut Aggregator, losses: &mut LossTotals, r: &Refresh) {
    apply_parts(agg, r.mini, r.started_ns, &r.listeners);
    agg.set_proc_bytes(proc_bytes(&r.procs));
    agg.proc_map_evictions = agg.proc_map_evictions.max(r.proc_map_evictions);
    set_names(agg, &r.names);
    observe_losses(losses, &r.losses);
}
