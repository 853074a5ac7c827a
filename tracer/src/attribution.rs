//! Userspace attribution ([`Attribution::Userspace`]): the kernel programs report a transition
//! without keeping any per-socket state, and this follows each socket through the reader's
//! time-ordered stream to fill in what the kernel side fills in otherwise: the owner of
//! transitions that run in softirq, the time spent in the old state, a close record's lifespan
//! and retransmit count, and a passive child's deferred `LISTEN -> SYN_RECV`. Its rules are the
//! kernel side's (`track_owner`), applied to the same transitions in the same order: a socket's
//! transitions are serialised by its lock and take their timestamps inside it, and the reader
//! delivers every event in timestamp order.
//!
//! Why: a socket's transitions alternate between CPUs (each side of a loopback connection
//! runs its softirq on the sender's CPU), so its entry in a kernel table is a cache line the
//! other CPU last wrote, a miss on nearly every transition; here the table lives on the
//! reader's core. (README, "Where the kernel time goes".)

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use std::collections::hash_map::Entry;

use foldhash::HashMap;

use crate::owners::ListenerOwner;
use tracer_common::{COMM_LEN, EventKind, Filter, OwnerSource, RawEvent, state};

#[cfg(doc)]
use tracer_common::Attribution;

/// What attribution had to leave out, for the loss counters: sockets (owner and times then
/// unknown) and listeners (their children's owner unknown) beyond the tables' capacities.
#[derive(Debug, Default)]
pub struct Refusals {
    pub sockets: AtomicU64,
    pub listeners: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Owner {
    pid: u32,
    comm: [u8; COMM_LEN],
    /// An [`OwnerSource`].
    src: u8,
}

impl Owner {
    const UNKNOWN: Self = Self {
        pid: 0,
        comm: [0; COMM_LEN],
        src: OwnerSource::Unknown as u8,
    };

    fn of(ev: &RawEvent) -> Self {
        Self {
            pid: ev.pid,
            comm: ev.comm,
            src: ev.owner_src,
        }
    }

    fn write(&self, ev: &mut RawEvent) {
        ev.pid = self.pid;
        ev.comm = self.comm;
        ev.owner_src = self.src;
    }
}

#[derive(Debug)]
struct Sock {
    owner: Owner,
    /// Time of the last transition; 0 when none was seen (an entry an owner record made).
    last_ts: u64,
    /// When the connection started; 0 when that was not seen.
    start_ts: u64,
    netns: u32,
    retransmits: u32,
    /// A passive child's `LISTEN -> SYN_RECV` came without its peer (kernels that set the
    /// state before copying the peer into the socket): it goes out, at `start_ts`, just before
    /// the socket's next transition, with that transition's addresses.
    open_pending: bool,
}

pub struct Attributor {
    socks: HashMap<u64, Sock>,
    /// Owners of listening ports, as the kernel's listener map keeps them.
    listeners: HashMap<u16, Owner>,
    max_sockets: usize,
    max_listeners: usize,
    /// The whole filter: the kernel applied only its per-socket part.
    filter: Filter,
    refusals: Arc<Refusals>,
}

impl Attributor {
    pub fn new(
        max_sockets: usize,
        max_listeners: usize,
        filter: Filter,
        refusals: Arc<Refusals>,
    ) -> Self {
        Self {
            socks: HashMap::default(),
            listeners: HashMap::default(),
            max_sockets,
            max_listeners,
            filter,
            refusals,
        }
    }

    /// The owner of a listening port that predates the tracer; one already known wins.
    pub fn seed_listener(&mut self, l: &ListenerOwner) {
        let owner = Owner {
            pid: l.pid,
            comm: l.comm_bytes(),
            src: OwnerSource::Process as u8,
        };
        if self.listeners.len() < self.max_listeners {
            self.listeners.entry(l.port).or_insert(owner);
        }
    }

    /// Sockets followed at the moment.
    pub fn sockets(&self) -> usize {
        self.socks.len()
    }

    /// Attributes one kernel record and passes on what the filter keeps: nothing for an owner
    /// record, two events when a deferred `LISTEN -> SYN_RECV` goes out first.
    pub fn feed(&mut self, mut ev: RawEvent, out: &mut impl FnMut(RawEvent)) {
        match EventKind::try_from(ev.kind) {
            Ok(EventKind::Owner) => return self.learn(&ev),
            Ok(EventKind::State) => return self.transition(ev, out),
            Ok(EventKind::Retransmit) => {
                if let Some(s) = self.socks.get_mut(&ev.sk) {
                    s.retransmits = s.retransmits.wrapping_add(1);
                    s.owner.write(&mut ev);
                    ev.netns = s.netns;
                }
            }
            Ok(EventKind::ResetSent | EventKind::ResetReceived) => {
                if let Some(s) = self.socks.get(&ev.sk) {
                    s.owner.write(&mut ev);
                }
            }
            // The kernel filled a SYN-ACK retransmission from its listener map; anything else
            // goes on for `decode` to reject.
            Ok(EventKind::SynackRetransmit) | Err(_) => {}
        }
        self.pass(ev, out);
    }

    fn pass(&self, ev: RawEvent, out: &mut impl FnMut(RawEvent)) {
        if self.filter.flags == 0 || self.filter.matches(&ev) {
            out(ev);
        }
    }

    /// A send or receive by a process other than the socket's recorded owner.
    fn learn(&mut self, ev: &RawEvent) {
        let owner = Owner {
            src: OwnerSource::Process as u8,
            ..Owner::of(ev)
        };
        match self.socks.get_mut(&ev.sk) {
            Some(s) => s.owner = owner,
            None => {
                self.insert(
                    ev.sk,
                    Sock {
                        owner,
                        last_ts: 0,
                        start_ts: 0,
                        netns: ev.netns,
                        retransmits: 0,
                        open_pending: false,
                    },
                );
            }
        }
    }

    /// Enters `sk`, replacing what an earlier connection at its address left; false when the
    /// table is full (counted).
    fn insert(&mut self, sk: u64, sock: Sock) -> bool {
        let full = self.socks.len() >= self.max_sockets;
        match self.socks.entry(sk) {
            Entry::Occupied(mut o) => {
                o.insert(sock);
                true
            }
            Entry::Vacant(_) if full => {
                self.refusals.sockets.fetch_add(1, Ordering::Relaxed);
                false
            }
            Entry::Vacant(v) => {
                v.insert(sock);
                true
            }
        }
    }

    /// One hash lookup for most transitions: the socket's entry is found once and updated in
    /// place; only a connection's start (an insert) and its close (a removal) take a second.
    fn transition(&mut self, mut ev: RawEvent, out: &mut impl FnMut(RawEvent)) {
        let (sk, old, new, ts) = (ev.sk, ev.old_state, ev.new_state, ev.ts_ns);
        // A transition out of CLOSE, or a listener's new child, starts a new connection at an
        // address that may have been used before: nothing recorded for it applies (the insert
        // below replaces it).
        let starts = old == state::CLOSE || (old == state::LISTEN && new == state::SYN_RECV);
        // The kernel reports the current task on the transitions only the owner makes.
        let reported = (ev.owner_src == OwnerSource::Process as u8).then(|| Owner::of(&ev));
        let mut open = None;
        let owner = match self.socks.get_mut(&sk).filter(|_| !starts) {
            Some(s) => {
                if old == state::SYN_RECV && s.open_pending {
                    s.open_pending = false;
                    open = Some(deferred_open(s, &ev));
                }
                let owner = match reported {
                    Some(mut o) => {
                        // Like the kernel side, keep the name recorded for the same process.
                        if s.owner.pid == o.pid && s.owner.comm[0] != 0 {
                            o.comm = s.owner.comm;
                        }
                        s.owner = o;
                        o
                    }
                    None => s.owner,
                };
                if s.last_ts != 0 {
                    ev.duration_ns = ts.saturating_sub(s.last_ts);
                }
                s.last_ts = ts;
                if s.netns == 0 {
                    s.netns = ev.netns;
                }
                ev.netns = s.netns;
                if new == state::CLOSE {
                    ev.retransmits = s.retransmits;
                    if s.start_ts != 0 {
                        ev.lifespan_ns = ts.saturating_sub(s.start_ts);
                    }
                    self.socks.remove(&sk);
                }
                owner
            }
            None => {
                let owner = reported.unwrap_or_else(|| {
                    if starts && old == state::LISTEN {
                        self.listeners
                            .get(&ev.sport)
                            .map_or(Owner::UNKNOWN, |l| Owner {
                                src: OwnerSource::Listener as u8,
                                ..*l
                            })
                    } else {
                        Owner::UNKNOWN
                    }
                });
                if new == state::CLOSE {
                    // A stale entry at this address (a start that closes at once) goes too.
                    if starts {
                        self.socks.remove(&sk);
                    }
                } else {
                    let deferred = starts && old == state::LISTEN && ev.dport == 0;
                    let stored = self.insert(
                        sk,
                        Sock {
                            owner,
                            last_ts: ts,
                            start_ts: if starts { ts } else { 0 },
                            netns: ev.netns,
                            retransmits: 0,
                            open_pending: deferred,
                        },
                    );
                    // Without an entry (table full) it goes out now, peer unknown, rather
                    // than never.
                    if deferred && stored {
                        return;
                    }
                }
                owner
            }
        };
        owner.write(&mut ev);

        if new == state::LISTEN {
            if self.listeners.len() < self.max_listeners || self.listeners.contains_key(&ev.sport) {
                self.listeners.insert(ev.sport, owner);
            } else {
                self.refusals.listeners.fetch_add(1, Ordering::Relaxed);
            }
        } else if old == state::LISTEN && new == state::CLOSE {
            // With SO_REUSEPORT another process may still listen on the port: only forget our
            // own.
            if self
                .listeners
                .get(&ev.sport)
                .is_some_and(|l| l.pid == owner.pid)
            {
                self.listeners.remove(&ev.sport);
            }
        }
        if let Some(open) = open {
            self.pass(open, out);
        }
        self.pass(ev, out);
    }
}

/// A socket's deferred `LISTEN -> SYN_RECV`, with the addresses of `next` (the peer is known by
/// then), at its own time and with the owner known now.
fn deferred_open(s: &Sock, next: &RawEvent) -> RawEvent {
    let mut open = RawEvent::zeroed();
    open.kind = EventKind::State as u8;
    open.ts_ns = s.start_ts;
    open.sk = next.sk;
    open.family = next.family;
    open.saddr = next.saddr;
    open.daddr = next.daddr;
    open.sport = next.sport;
    open.dport = next.dport;
    open.old_state = state::LISTEN;
    open.new_state = state::SYN_RECV;
    open.netns = s.netns;
    s.owner.write(&mut open);
    open
}

#[cfg(test)]
#[path = "attribution_tests.rs"]
mod tests;
