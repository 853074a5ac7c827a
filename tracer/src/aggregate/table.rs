//! The live connection table: one entry per full socket of the traced network namespace, with
//! per-state, per-process and per-peer tallies kept up to date on every insert and removal, so
//! queries never scan the table.

use std::net::{IpAddr, SocketAddr};

// Keys are kernel addresses and peers' addresses: foldhash is several times cheaper per event
// than SipHash and still seeded per process, so remote peers cannot aim at one bucket.
use foldhash::HashMap;

use tracer_common::state;

use crate::event::Comm;

/// Sockets learnt from transitions are keyed by kernel address; sockets learnt from a sock_diag
/// dump (no kernel address there) by their socket cookie until a transition adopts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    Sk(u64),
    Seed(u64),
}

/// A connection's 4-tuple, local side first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conn {
    pub state: u8,
    pub tuple: Tuple,
    /// Owner's tgid, 0 when unknown.
    pub pid: u32,
    pub comm: Comm,
    /// CLOCK_MONOTONIC ns of the first transition seen (0 for dumped sockets).
    pub since_ns: u64,
    /// CLOCK_MONOTONIC ns of the last transition seen (0 for dumped sockets).
    pub state_since_ns: u64,
}

/// Per-process connection tally.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcConns {
    pub comm: Comm,
    pub connections: u64,
    /// Of which in CLOSE_WAIT (the application has not closed after the peer did).
    pub close_wait: u64,
}

#[derive(Debug, Default)]
pub struct Table {
    conns: HashMap<Key, Conn>,
    /// Tuples of dumped sockets not yet adopted by a transition, to their cookie. A tuple is
    /// unique except for SO_REUSEPORT listeners, whose other cookies wait in `seed_dups`; one
    /// entry per socket keeps a 100k-socket snapshot small.
    seeds: HashMap<Tuple, u64>,
    seed_dups: HashMap<Tuple, Vec<u64>>,
    by_state: [u64; state::MAX_STATE as usize + 1],
    procs: HashMap<u32, ProcConns>,
    peers: HashMap<IpAddr, u64>,
    /// Owners of listening sockets by local address.
    listeners: HashMap<SocketAddr, (u32, Comm)>,
    /// Entries refused because the table was full.
    pub refused: u64,
    pub capacity: usize,
}

/// Whether the connection has a remote peer worth tallying (not a listener).
fn has_peer(c: &Conn) -> bool {
    c.state != state::LISTEN && !c.tuple.remote.ip().is_unspecified()
}

impl Table {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity,
            ..Self::default()
        }
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    pub fn count(&self, st: u8) -> u64 {
        self.by_state.get(usize::from(st)).copied().unwrap_or(0)
    }

    pub fn procs(&self) -> &HashMap<u32, ProcConns> {
        &self.procs
    }

    pub fn peers(&self) -> &HashMap<IpAddr, u64> {
        &self.peers
    }

    pub fn listener_owner(&self, local: &SocketAddr) -> Option<(u32, Comm)> {
        self.listeners.get(local).copied().filter(|o| o.0 != 0)
    }

    pub fn get(&self, key: &Key) -> Option<&Conn> {
        self.conns.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Conn)> {
        self.conns.iter()
    }

    pub fn seeds(&self) -> usize {
        self.seeds.len() + self.seed_dups.values().map(Vec::len).sum::<usize>()
    }

    fn tally(&mut self, c: &Conn, up: bool) {
        let step = |v: &mut u64| {
            if up {
                *v += 1
            } else {
                *v = v.saturating_sub(1)
            }
        };
        if let Some(v) = self.by_state.get_mut(usize::from(c.state)) {
            step(v);
        }
        let p = self.procs.entry(c.pid).or_default();
        if up {
            p.comm = c.comm;
        }
        step(&mut p.connections);
        if c.state == state::CLOSE_WAIT {
            step(&mut p.close_wait);
        }
        if p.connections == 0 {
            self.procs.remove(&c.pid);
        }
        if c.state == state::LISTEN {
            if up {
                self.listeners.insert(c.tuple.local, (c.pid, c.comm));
            } else if self.listeners.get(&c.tuple.local).map(|o| o.0) == Some(c.pid) {
                self.listeners.remove(&c.tuple.local);
            }
        }
        if has_peer(c) {
            let n = self.peers.entry(c.tuple.remote.ip()).or_default();
            step(n);
            if *n == 0 {
                self.peers.remove(&c.tuple.remote.ip());
            }
        }
    }

    /// Inserts or replaces an entry. Returns false when the table is full.
    pub fn put(&mut self, key: Key, conn: Conn) -> bool {
        if let Some(old) = self.conns.remove(&key) {
            self.tally(&old, false);
        } else if self.conns.len() >= self.capacity {
            self.refused += 1;
            return false;
        }
        self.tally(&conn, true);
        if let Key::Seed(cookie) = key {
            if let Some(&first) = self.seeds.get(&conn.tuple) {
                if first != cookie {
                    self.seed_dups.entry(conn.tuple).or_default().push(cookie);
                }
            } else {
                self.seeds.insert(conn.tuple, cookie);
            }
        }
        self.conns.insert(key, conn);
        true
    }

    /// Moves a tracked socket to state `st` in place, when that is all that changes: same tuple
    /// and owner (`owner`, if the event names one), and neither state LISTEN. Only the per-state
    /// and CLOSE_WAIT tallies move, where `put` would take the entry out of every tally and put
    /// it back. Returns false, changing nothing, when that does not apply.
    pub fn restate(
        &mut self,
        key: &Key,
        tuple: &Tuple,
        owner: Option<(u32, Comm)>,
        st: u8,
        ts_ns: u64,
    ) -> bool {
        let Some(c) = self.conns.get_mut(key) else {
            return false;
        };
        if c.tuple != *tuple
            || owner.is_some_and(|(pid, comm)| pid != c.pid || comm != c.comm)
            || c.state == state::LISTEN
            || st == state::LISTEN
        {
            return false;
        }
        let old = std::mem::replace(&mut c.state, st);
        c.state_since_ns = ts_ns;
        let pid = c.pid;
        if let Some(v) = self.by_state.get_mut(usize::from(old)) {
            *v = v.saturating_sub(1);
        }
        if let Some(v) = self.by_state.get_mut(usize::from(st)) {
            *v += 1;
        }
        if (old == state::CLOSE_WAIT) != (st == state::CLOSE_WAIT)
            && let Some(p) = self.procs.get_mut(&pid)
        {
            if st == state::CLOSE_WAIT {
                p.close_wait += 1;
            } else {
                p.close_wait = p.close_wait.saturating_sub(1);
            }
        }
        true
    }

    pub fn remove(&mut self, key: &Key) -> Option<Conn> {
        let old = self.conns.remove(key)?;
        self.tally(&old, false);
        if let Key::Seed(cookie) = *key {
            self.unindex_seed(&old.tuple, cookie);
        }
        Some(old)
    }

    fn unindex_seed(&mut self, tuple: &Tuple, cookie: u64) {
        let dups = self.seed_dups.get_mut(tuple);
        if self.seeds.get(tuple) == Some(&cookie) {
            // Promote a duplicate, if any, to the main index.
            match dups.and_then(Vec::pop) {
                Some(next) => {
                    self.seeds.insert(*tuple, next);
                }
                None => {
                    self.seeds.remove(tuple);
                }
            }
        } else if let Some(v) = dups {
            v.retain(|&c| c != cookie);
        }
        if self.seed_dups.get(tuple).is_some_and(Vec::is_empty) {
            self.seed_dups.remove(tuple);
        }
        if self.seeds.is_empty() && self.seeds.capacity() > 1024 {
            // Every dumped socket was adopted: give the snapshot's index back.
            self.seeds.shrink_to_fit();
        }
    }

    /// Removes one dumped socket with this tuple, if any: a transition now tracks it.
    pub fn adopt_seed(&mut self, tuple: &Tuple) -> Option<Conn> {
        if self.seeds.is_empty() {
            return None;
        }
        let cookie = *self.seeds.get(tuple)?;
        self.remove(&Key::Seed(cookie))
    }

    /// Drops every dumped socket (before a fresh dump replaces them).
    pub fn clear_seeds(&mut self) {
        let keys: Vec<u64> = self
            .seeds
            .values()
            .chain(self.seed_dups.values().flatten())
            .copied()
            .collect();
        for cookie in keys {
            self.remove(&Key::Seed(cookie));
        }
        self.seeds.shrink_to_fit();
        self.seed_dups.shrink_to_fit();
    }

    /// Whether a transition-tracked socket has this tuple.
    pub fn tracks_tuple(&self, tuple: &Tuple) -> bool {
        self.conns
            .iter()
            .any(|(k, c)| matches!(k, Key::Sk(_)) && c.tuple == *tuple)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(st: u8, pid: u32, remote: &str) -> Conn {
        Conn {
            state: st,
            tuple: Tuple {
                local: "10.0.0.1:80".parse().unwrap(),
                remote: remote.parse().unwrap(),
            },
            pid,
            comm: Comm::from("srv"),
            since_ns: 0,
            state_since_ns: 0,
        }
    }

    #[test]
    fn tallies_follow_inserts_replacements_and_removals() {
        let mut t = Table::with_capacity(10);
        assert!(t.put(Key::Sk(1), conn(state::ESTABLISHED, 7, "10.0.0.2:5000")));
        assert!(t.put(Key::Sk(2), conn(state::CLOSE_WAIT, 7, "10.0.0.2:5001")));
        assert!(t.put(Key::Sk(3), conn(state::LISTEN, 8, "0.0.0.0:0")));
        assert_eq!(t.count(state::ESTABLISHED), 1);
        assert_eq!(t.procs()[&7].connections, 2);
        assert_eq!(t.procs()[&7].close_wait, 1);
        assert_eq!(t.peers().len(), 1);
        assert_eq!(t.peers()[&"10.0.0.2".parse::<IpAddr>().unwrap()], 2);
        assert!(t.put(Key::Sk(2), conn(state::LAST_ACK, 7, "10.0.0.2:5001")));
        assert_eq!(t.count(state::CLOSE_WAIT), 0);
        assert_eq!(t.procs()[&7].close_wait, 0);
        t.remove(&Key::Sk(1));
        t.remove(&Key::Sk(2));
        assert!(!t.procs().contains_key(&7));
        assert!(t.peers().is_empty());
        assert_eq!(t.count(state::LISTEN), 1);
    }

    #[test]
    fn restate_moves_the_same_tallies_as_a_replacement() {
        let mut fast = Table::with_capacity(10);
        let mut full = Table::with_capacity(10);
        for t in [&mut fast, &mut full] {
            t.put(Key::Sk(1), conn(state::ESTABLISHED, 7, "10.0.0.2:5000"));
            t.put(Key::Sk(2), conn(state::ESTABLISHED, 7, "10.0.0.2:5001"));
        }
        let c = conn(state::CLOSE_WAIT, 7, "10.0.0.2:5000");
        let owner = Some((7, c.comm));
        assert!(fast.restate(&Key::Sk(1), &c.tuple, owner, state::CLOSE_WAIT, 5));
        full.put(
            Key::Sk(1),
            Conn {
                state_since_ns: 5,
                ..c.clone()
            },
        );
        for t in [&fast, &full] {
            assert_eq!(t.count(state::ESTABLISHED), 1);
            assert_eq!(t.count(state::CLOSE_WAIT), 1);
            assert_eq!(t.procs()[&7].close_wait, 1);
            assert_eq!(t.procs()[&7].connections, 2);
            assert_eq!(t.peers()[&"10.0.0.2".parse::<IpAddr>().unwrap()], 2);
        }
        assert_eq!(fast.get(&Key::Sk(1)), full.get(&Key::Sk(1)));
        assert!(fast.restate(&Key::Sk(1), &c.tuple, None, state::LAST_ACK, 6));
        assert_eq!(fast.procs()[&7].close_wait, 0);
        assert_eq!(
            fast.get(&Key::Sk(1)).map(|c| c.state),
            Some(state::LAST_ACK)
        );

        // Anything beyond the state is left to `put`.
        let before = (fast.count(state::LAST_ACK), fast.count(state::CLOSING));
        assert!(!fast.restate(&Key::Sk(1), &c.tuple, Some((8, c.comm)), state::CLOSING, 7));
        let other = conn(state::CLOSING, 7, "10.0.0.3:5000");
        assert!(!fast.restate(&Key::Sk(1), &other.tuple, None, state::CLOSING, 7));
        assert!(!fast.restate(&Key::Sk(9), &c.tuple, None, state::CLOSING, 7));
        assert_eq!(
            (fast.count(state::LAST_ACK), fast.count(state::CLOSING)),
            before
        );
        fast.put(Key::Sk(3), conn(state::LISTEN, 7, "0.0.0.0:0"));
        let l = conn(state::LISTEN, 7, "0.0.0.0:0");
        assert!(!fast.restate(&Key::Sk(3), &l.tuple, None, state::SYN_RECV, 7));
    }

    #[test]
    fn full_table_refuses_and_counts() {
        let mut t = Table::with_capacity(1);
        assert!(t.put(Key::Sk(1), conn(state::ESTABLISHED, 1, "10.0.0.2:1")));
        assert!(!t.put(Key::Sk(2), conn(state::ESTABLISHED, 1, "10.0.0.2:2")));
        assert_eq!((t.len(), t.refused), (1, 1));
        // Replacing an existing entry is always possible.
        assert!(t.put(Key::Sk(1), conn(state::FIN_WAIT1, 1, "10.0.0.2:1")));
    }

    #[test]
    fn seeds_are_adopted_once_per_socket() {
        let mut t = Table::with_capacity(10);
        let c = conn(state::LISTEN, 1, "0.0.0.0:0");
        t.put(Key::Seed(100), c.clone());
        t.put(Key::Seed(101), c.clone());
        assert_eq!(t.count(state::LISTEN), 2);
        assert!(t.adopt_seed(&c.tuple).is_some());
        assert_eq!((t.count(state::LISTEN), t.seeds()), (1, 1));
        t.clear_seeds();
        assert_eq!((t.len(), t.seeds()), (0, 0));
    }
}
