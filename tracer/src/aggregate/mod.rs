//! Live aggregation of transitions into exact per-state gauges, per-process and per-peer
//! tallies, listeners and close statistics. Pure code: the commands feed it decoded events,
//! sock_diag dumps and kernel map reads; unit tests drive it without a kernel.
//!
//! Full sockets are tracked one by one from their transitions, seeded at start-up by a dump.
//! Two kinds of kernel objects never pass through `inet_sock_set_state`: timewait sockets
//! (FIN_WAIT2/CLOSING -> CLOSE hands the connection to one, which expires silently ~60 s later)
//! and request sockets (half-open handshakes). They are counted from periodic dumps of just
//! those two kinds, plus the timewait sockets transitions created since the last dump.

pub mod table;
pub mod view;

use std::{
    collections::{BTreeMap, HashMap as StdHashMap, HashSet, VecDeque},
    net::SocketAddr,
};

use foldhash::{HashMap, HashMapExt};
use tracer_common::state;

use crate::{
    close::CloseEnd,
    event::{Comm, Detail, Event},
    snapshot::{Counts, DiagSocket, SockKind},
};
pub use table::{Conn, Key, Table, Tuple};

/// How long a timewait socket lives (`TCP_TIMEWAIT_LEN`).
pub const TIME_WAIT_LEN_NS: u64 = 60_000_000_000;

/// Application bytes a process moved, read from the kernel's per-process map.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcBytes {
    pub sent: u64,
    pub received: u64,
    pub comm: Comm,
}

/// Counts of timewait and request sockets from the last reconciliation dump.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MiniCounts {
    pub time_wait: u64,
    /// Timewait sockets whose substate is FIN_WAIT2 (an orphaned active close waiting for the
    /// peer's FIN): `ss` shows them as FIN-WAIT-2.
    pub fin_wait2: u64,
    /// Half-open request sockets: `ss` shows them as SYN-RECV.
    pub syn_recv: u64,
}

impl MiniCounts {
    pub fn from_dump(socks: &[DiagSocket]) -> Self {
        let mut m = Self::default();
        for s in socks {
            match (s.kind, s.state) {
                (SockKind::TimeWait, state::FIN_WAIT2) => m.fin_wait2 += 1,
                (SockKind::TimeWait, _) => m.time_wait += 1,
                (SockKind::Request, _) => m.syn_recv += 1,
                (SockKind::Full, _) => {}
            }
        }
        m
    }

    pub fn from_counts(c: &Counts) -> Self {
        let tw = |st| u64::from(c.get(SockKind::TimeWait, st));
        Self {
            time_wait: u64::from(c.of_kind(SockKind::TimeWait)) - tw(state::FIN_WAIT2),
            fin_wait2: tw(state::FIN_WAIT2),
            syn_recv: u64::from(c.of_kind(SockKind::Request)),
        }
    }
}

/// A listening socket with its accept queue, from the last listener dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub local: SocketAddr,
    pub accept_queue: u32,
    pub backlog: u32,
    pub inode: u64,
}

#[derive(Debug)]
pub struct Aggregator {
    table: Table,
    /// Only events of this network namespace count (sock_diag sees only its own).
    netns: Option<u32>,
    mini: MiniCounts,
    /// Monotonic times of timewait sockets created since the last reconciliation began.
    tw_since: VecDeque<u64>,
    listeners: Vec<Listener>,
    proc_bytes: StdHashMap<u32, ProcBytes>,
    /// Process names (the main thread's comm), which the per-thread comms of events are not.
    names: HashMap<u32, Comm>,
    inode_owners: HashMap<u64, (u32, Comm)>,
    pub transitions: BTreeMap<(u8, u8), u64>,
    pub retransmits: u64,
    pub closes: BTreeMap<CloseEnd, u64>,
    /// Transitions out of a synchronized state for sockets the table did not know.
    pub unknown_sockets: u64,
    /// Entries found under an address at which a new connection started: their close was lost.
    pub stale_entries: u64,
    /// Transitions of sockets followed since an earlier transition whose entry in the kernel's
    /// socket table had gone (evicted from a full set): they come without a time in state, and
    /// their owner is known again only once its process acts on the socket.
    pub sock_map_evictions: u64,
    /// Processes the kernel's per-process traffic map evicted (least recently active first):
    /// their bytes from before the eviction are gone from the kernel's totals.
    pub proc_map_evictions: u64,
    pub other_netns: u64,
    /// The newest event timestamp applied.
    pub now_ns: u64,
}

fn tuple_of(ev: &Event) -> Tuple {
    Tuple {
        local: SocketAddr::new(ev.saddr, ev.sport),
        remote: SocketAddr::new(ev.daddr, ev.dport),
    }
}

impl Aggregator {
    pub fn new(capacity: usize, netns: Option<u32>) -> Self {
        Self {
            table: Table::with_capacity(capacity),
            netns,
            mini: MiniCounts::default(),
            tw_since: VecDeque::new(),
            listeners: Vec::new(),
            proc_bytes: StdHashMap::new(),
            names: HashMap::new(),
            inode_owners: HashMap::new(),
            transitions: BTreeMap::new(),
            retransmits: 0,
            closes: BTreeMap::new(),
            unknown_sockets: 0,
            stale_entries: 0,
            sock_map_evictions: 0,
            proc_map_evictions: 0,
            other_netns: 0,
            now_ns: 0,
        }
    }

    pub fn table(&self) -> &Table {
        &self.table
    }

    /// Whether the event belongs to the traced network namespace (or its namespace is unknown).
    pub fn in_scope(&self, ev: &Event) -> bool {
        self.netns.is_none_or(|ns| ev.netns == 0 || ev.netns == ns)
    }

    pub fn apply(&mut self, ev: &Event) {
        if !self.in_scope(ev) {
            self.other_netns += 1;
            return;
        }
        self.now_ns = self.now_ns.max(ev.ts_ns);
        let (old, new, duration_ns) = match ev.detail {
            Detail::Retransmit { .. } => {
                self.retransmits += 1;
                return;
            }
            Detail::Signal { .. } => return,
            Detail::State {
                old,
                new,
                duration_ns,
            } => (old.number(), new.number(), duration_ns),
        };
        let key = Key::Sk(ev.sk);
        let starts = old == state::CLOSE || (old == state::LISTEN && new == state::SYN_RECV);
        // The kernel keeps an entry from a socket's first transition it handles until CLOSE,
        // and times every later one from it: a known socket's transition without a time in
        // state found no entry.
        if !starts && duration_ns.is_none() && self.table.get(&key).is_some() {
            self.sock_map_evictions += 1;
        }
        *self.transitions.entry((old, new)).or_default() += 1;
        let tuple = tuple_of(ev);
        // Most transitions only move a known socket to its next state.
        if !starts && new != state::CLOSE {
            let owner = ev.owner.as_ref().map(|o| (o.pid, o.comm));
            if self.table.restate(&key, &tuple, owner, new, ev.ts_ns) {
                // As below: a dumped copy of this socket, if one is left, is this socket.
                self.table.adopt_seed(&tuple);
                return;
            }
        }
        let mut existing = self.table.remove(&key);
        if starts && existing.take().is_some() {
            self.stale_entries += 1;
        }
        // A dumped socket with this tuple is this one (or an older copy of it).
        let adopted = self.table.adopt_seed(&tuple);
        if existing.is_none() && !starts && adopted.is_none() && new != state::CLOSE {
            self.unknown_sockets += 1;
        }
        let prior = existing.or(adopted);

        if new == state::CLOSE {
            if let Some(c) = &ev.close {
                *self.closes.entry(c.end).or_default() += 1;
            }
            if matches!(old, state::FIN_WAIT2 | state::CLOSING)
                && ev.close.is_some_and(|c| c.end == CloseEnd::Orderly)
            {
                self.tw_since.push_back(ev.ts_ns);
            }
            return;
        }
        let (pid, comm) = match (&ev.owner, &prior) {
            (Some(o), _) => (o.pid, o.comm),
            (None, Some(p)) => (p.pid, p.comm),
            (None, None) => (0, Comm::default()),
        };
        let since_ns = match &prior {
            Some(p) if p.since_ns != 0 => p.since_ns,
            _ if starts => ev.ts_ns,
            _ => 0,
        };
        self.table.put(
            key,
            Conn {
                state: new,
                tuple,
                pid,
                comm,
                since_ns,
                state_since_ns: ev.ts_ns,
            },
        );
    }

    /// Merges a start-up (or resynchronizing) dump of all sockets. Call it before applying the
    /// events queued meanwhile: a transition adopts the dumped entry with its tuple, so the
    /// order of the dump and the queued transitions does not matter.
    pub fn seed(&mut self, socks: &[DiagSocket], owners: &StdHashMap<u64, (u32, String)>) {
        self.inode_owners = owners
            .iter()
            .map(|(&ino, (pid, comm))| (ino, (*pid, Comm::from(comm.as_str()))))
            .collect();
        self.table.clear_seeds();
        let tracked: HashSet<Tuple> = self
            .table
            .iter()
            .filter(|(k, _)| matches!(k, Key::Sk(_)))
            .map(|(_, c)| c.tuple)
            .collect();
        // Connections not yet accepted have no inode: like the kernel side, attribute them to
        // the owner of the listener on their local port.
        let listener_owners: HashMap<u16, (u32, Comm)> = socks
            .iter()
            .filter(|s| s.kind == SockKind::Full && s.state == state::LISTEN)
            .filter_map(|s| Some((s.local.port(), *self.inode_owners.get(&s.inode)?)))
            .collect();
        for s in socks.iter().filter(|s| s.kind == SockKind::Full) {
            // Transitions carry no IPv6 scope id.
            let tuple = Tuple {
                local: SocketAddr::new(s.local.ip(), s.local.port()),
                remote: SocketAddr::new(s.remote.ip(), s.remote.port()),
            };
            if tracked.contains(&tuple) {
                continue;
            }
            let (pid, comm) = self
                .inode_owners
                .get(&s.inode)
                .or_else(|| {
                    (s.inode == 0)
                        .then(|| listener_owners.get(&s.local.port()))
                        .flatten()
                })
                .copied()
                .unwrap_or_default();
            self.table.put(
                Key::Seed(s.cookie),
                Conn {
                    state: s.state,
                    tuple,
                    pid,
                    comm,
                    since_ns: 0,
                    state_since_ns: 0,
                },
            );
        }
        // Only listeners' owners are looked up later (their rows); the rest was for seeding.
        let listening: HashSet<u64> = socks
            .iter()
            .filter(|s| s.kind == SockKind::Full && s.state == state::LISTEN)
            .map(|s| s.inode)
            .collect();
        self.inode_owners.retain(|ino, _| listening.contains(ino));
        self.inode_owners.shrink_to_fit();
        self.mini = MiniCounts::from_dump(socks);
        self.tw_since.clear();
    }

    /// Replaces the timewait and request socket counts with a dump that began at `started_ns`
    /// (CLOCK_MONOTONIC). Timewait sockets created after it began are kept on top.
    pub fn reconcile(&mut self, mini: MiniCounts, started_ns: u64) {
        self.mini = mini;
        while self.tw_since.front().is_some_and(|&t| t < started_ns) {
            self.tw_since.pop_front();
        }
    }

    pub fn set_listeners(&mut self, listeners: Vec<Listener>) {
        self.listeners = listeners;
    }

    pub fn set_proc_bytes(&mut self, bytes: StdHashMap<u32, ProcBytes>) {
        self.proc_bytes = bytes;
        self.name_proc_bytes();
    }

    /// Takes the kernel's count of processes ever entered in its traffic map, read before the
    /// entries now in [`Self::proc_bytes`]. Nothing deletes entries, so the difference is what
    /// the map's LRU evicted. A process entered between the two reads lowers the difference;
    /// the count never goes back.
    pub fn observe_proc_inserts(&mut self, inserted: u64) {
        let evicted = inserted.saturating_sub(self.proc_bytes.len() as u64);
        self.proc_map_evictions = self.proc_map_evictions.max(evicted);
    }

    /// The kernel records the comm of the first thread that moved bytes; show the process's.
    fn name_proc_bytes(&mut self) {
        for (pid, b) in self.proc_bytes.iter_mut() {
            if let Some(name) = self.names.get(pid) {
                b.comm = *name;
            }
        }
    }

    /// Processes with connections or bytes whose name is not known yet.
    pub fn unnamed_pids(&self) -> Vec<u32> {
        let active = self.table.procs().keys().chain(self.proc_bytes.keys());
        active
            .filter(|&&pid| pid != 0 && !self.names.contains_key(&pid))
            .copied()
            .collect()
    }

    /// Records process names, and forgets those of processes no longer active.
    pub fn set_process_names(&mut self, found: impl IntoIterator<Item = (u32, Comm)>) {
        self.names.extend(found);
        self.name_proc_bytes();
        if self.names.len() > 2 * (self.table.procs().len() + self.proc_bytes.len()) + 64 {
            let (procs, bytes) = (self.table.procs(), &self.proc_bytes);
            self.names
                .retain(|pid, _| procs.contains_key(pid) || bytes.contains_key(pid));
        }
    }

    pub fn process_name(&self, pid: u32) -> Option<Comm> {
        self.names.get(&pid).copied()
    }

    /// Every known process name, by pid (what a capture stores).
    pub fn process_names(&self) -> Vec<(u32, Comm)> {
        let mut v: Vec<(u32, Comm)> = self.names.iter().map(|(p, c)| (*p, *c)).collect();
        v.sort_unstable_by_key(|(p, _)| *p);
        v
    }

    pub fn proc_bytes(&self) -> &StdHashMap<u32, ProcBytes> {
        &self.proc_bytes
    }

    pub fn listeners(&self) -> &[Listener] {
        &self.listeners
    }

    /// Timewait sockets created since the last dump that have not expired by `now_ns`.
    fn tw_recent(&self, now_ns: u64) -> u64 {
        let cutoff = now_ns.saturating_sub(TIME_WAIT_LEN_NS);
        self.tw_since.iter().filter(|&&t| t >= cutoff).count() as u64
    }

    /// Per-state counts as `ss -tan` reports them (timewait and request sockets included).
    pub fn state_counts(&self, now_ns: u64) -> BTreeMap<u8, u64> {
        let mut out = BTreeMap::new();
        for st in 1..=state::MAX_STATE {
            if st == state::CLOSE || st == state::NEW_SYN_RECV {
                continue;
            }
            let mut n = self.table.count(st);
            match st {
                state::TIME_WAIT => n += self.mini.time_wait + self.tw_recent(now_ns),
                state::FIN_WAIT2 => n += self.mini.fin_wait2,
                state::SYN_RECV => n += self.mini.syn_recv,
                _ => {}
            }
            out.insert(st, n);
        }
        out
    }

    /// Owner of a socket inode found in /proc at the last dump.
    pub fn inode_owner(&self, inode: u64) -> Option<(u32, Comm)> {
        self.inode_owners.get(&inode).copied()
    }
}

#[cfg(test)]
mod tests;
