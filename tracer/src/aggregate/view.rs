//! A point-in-time view of the aggregates: what `tracer stats` prints, `tracer top` draws and
//! `tracer agent` exports. Built from the incrementally kept tallies; only the top-N selections
//! sort.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
};

use serde::{Deserialize, Serialize};
use tracer_common::state;

use super::Aggregator;
use crate::{close::CloseEnd, loss::LossTotals};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ProcSort {
    /// Bytes sent plus received.
    #[default]
    Bytes,
    Connections,
}

impl ProcSort {
    pub fn name(self) -> &'static str {
        match self {
            Self::Bytes => "bytes",
            Self::Connections => "connections",
        }
    }

    /// The ranking key of a process row: this measure, then the other, then the lower pid.
    pub fn rank(self, r: &ProcessRow) -> ((u64, u64), std::cmp::Reverse<Option<u32>>) {
        let bytes = r.bytes_sent + r.bytes_received;
        let key = match self {
            Self::Bytes => (bytes, r.connections),
            Self::Connections => (r.connections, bytes),
        };
        (key, std::cmp::Reverse(r.pid))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcessRow {
    pub pid: Option<u32>,
    pub comm: String,
    pub connections: u64,
    pub close_wait: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ListenerRow {
    pub local: SocketAddr,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// Connections completed and waiting for accept().
    pub accept_queue: u32,
    /// The accept-queue limit (listen backlog).
    pub backlog: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeerRow {
    pub addr: IpAddr,
    pub connections: u64,
}

/// `ss -s`-style totals.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Totals {
    pub total: u64,
    pub established: u64,
    pub listening: u64,
    pub time_wait: u64,
    pub syn_recv: u64,
    pub closing: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Tracking {
    /// Sockets tracked in the table (full sockets only).
    pub sockets: u64,
    pub capacity: u64,
    /// Sockets not tracked because the table was full.
    pub refused: u64,
    /// Sockets known only from a dump (no transition seen yet).
    pub from_dump: u64,
    pub unknown_sockets: u64,
    pub stale_entries: u64,
    /// See [`super::Aggregator::sock_map_evictions`].
    #[serde(default)]
    pub sock_map_evictions: u64,
    /// See [`super::Aggregator::proc_map_evictions`].
    #[serde(default)]
    pub proc_map_evictions: u64,
    pub other_netns_events: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    /// Per-state counts, netstat names, every state `ss` can show.
    pub states: BTreeMap<String, u64>,
    pub totals: Totals,
    pub processes: Vec<ProcessRow>,
    pub listeners: Vec<ListenerRow>,
    pub peers: Vec<PeerRow>,
    pub retransmits: u64,
    /// Connection closes by how they ended.
    pub closes: BTreeMap<String, u64>,
    pub lost: BTreeMap<String, u64>,
    pub tracking: Tracking,
}

impl Aggregator {
    /// The view at `now_ns` (CLOCK_MONOTONIC), with at most `top` rows per ranking.
    pub fn stats(&self, now_ns: u64, top: usize, sort: ProcSort, losses: &LossTotals) -> Stats {
        let counts = self.state_counts(now_ns);
        let get = |s: u8| counts.get(&s).copied().unwrap_or(0);
        let states: BTreeMap<String, u64> = counts
            .iter()
            .map(|(&s, &n)| (state::display(s).to_owned(), n))
            .collect();
        let totals = Totals {
            total: counts.values().sum(),
            established: get(state::ESTABLISHED),
            listening: get(state::LISTEN),
            time_wait: get(state::TIME_WAIT),
            syn_recv: get(state::SYN_RECV),
            closing: get(state::FIN_WAIT1)
                + get(state::FIN_WAIT2)
                + get(state::CLOSING)
                + get(state::CLOSE_WAIT)
                + get(state::LAST_ACK),
        };
        let table = self.table();
        Stats {
            states,
            totals,
            processes: self.process_rows(top, sort),
            listeners: self.listener_rows(),
            peers: top_n(
                table
                    .peers()
                    .iter()
                    .map(|(&addr, &connections)| PeerRow { addr, connections }),
                top,
                |p| (p.connections, std::cmp::Reverse(p.addr)),
            ),
            retransmits: self.retransmits,
            closes: CloseEnd::ALL
                .iter()
                .map(|e| {
                    (
                        e.name().to_owned(),
                        self.closes.get(e).copied().unwrap_or(0),
                    )
                })
                .collect(),
            lost: crate::loss::LossCause::LIVE
                .iter()
                .map(|&c| (c.name().to_owned(), losses.total(c)))
                .collect(),
            tracking: Tracking {
                sockets: table.len() as u64,
                capacity: table.capacity as u64,
                refused: table.refused,
                from_dump: table.seeds() as u64,
                unknown_sockets: self.unknown_sockets,
                stale_entries: self.stale_entries,
                sock_map_evictions: self.sock_map_evictions,
                proc_map_evictions: self.proc_map_evictions,
                other_netns_events: self.other_netns,
            },
        }
    }

    fn process_rows(&self, top: usize, sort: ProcSort) -> Vec<ProcessRow> {
        let mut rows: HashMap<u32, ProcessRow> = HashMap::new();
        let blank = |pid: u32| ProcessRow {
            pid: (pid != 0).then_some(pid),
            comm: String::new(),
            connections: 0,
            close_wait: 0,
            bytes_sent: 0,
            bytes_received: 0,
        };
        for (&pid, p) in self.table().procs() {
            let r = rows.entry(pid).or_insert_with(|| blank(pid));
            r.comm = p.comm.to_string();
            r.connections = p.connections;
            r.close_wait = p.close_wait;
        }
        for (&pid, b) in self.proc_bytes() {
            let r = rows.entry(pid).or_insert_with(|| blank(pid));
            if r.comm.is_empty() {
                r.comm = b.comm.to_string();
            }
            r.bytes_sent = b.sent;
            r.bytes_received = b.received;
        }
        for (pid, r) in rows.iter_mut() {
            if let Some(name) = self.process_name(*pid) {
                r.comm = name.to_string();
            }
        }
        top_n(rows.into_values(), top, |r| sort.rank(r))
    }

    fn listener_rows(&self) -> Vec<ListenerRow> {
        let mut rows: Vec<ListenerRow> = self
            .listeners()
            .iter()
            .map(|l| {
                let owner = self
                    .table()
                    .listener_owner(&l.local)
                    .or_else(|| self.inode_owner(l.inode));
                ListenerRow {
                    local: l.local,
                    pid: owner.map(|o| o.0),
                    comm: owner.map(|o| o.1.to_string()),
                    accept_queue: l.accept_queue,
                    backlog: l.backlog,
                }
            })
            .collect();
        rows.sort_by_key(|r| (r.local.port(), r.local));
        rows
    }
}

/// The `n` largest items by `key`, largest first.
fn top_n<T, K: Ord>(items: impl Iterator<Item = T>, n: usize, key: impl Fn(&T) -> K) -> Vec<T> {
    let mut v: Vec<T> = items.collect();
    v.sort_by_key(|t| std::cmp::Reverse(key(t)));
    v.truncate(n);
    v
}
