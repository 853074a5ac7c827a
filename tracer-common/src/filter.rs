//! Event filter shared by both sides: the kernel applies it before reserving ring-buffer space,
//! and the same code is unit-tested on the host.

use crate::{AF_INET, AF_INET6, COMM_LEN, RawEvent, state};

/// A filter. Each active criterion (bit in `flags`) must match.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Filter {
    pub flags: u32,
    /// Owner process id.
    pub pid: u32,
    /// States (see [`state::bit`]): matches a transition into or out of any of them.
    pub state_mask: u32,
    /// Either side.
    pub port: u16,
    pub lport: u16,
    pub rport: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// Family of `addr`.
    pub addr_family: u16,
    pub _pad: u16,
    /// Either side; IPv4 in the first four bytes. An IPv4 address also matches its IPv4-mapped
    /// form on IPv6 sockets.
    pub addr: [u8; 16],
    /// Owner command name, NUL padded (exact match, as the kernel truncates it to 15 bytes).
    pub comm: [u8; COMM_LEN],
    /// Event kinds: bit `1 << kind` for each [`crate::EventKind`] wanted.
    pub kinds: u32,
}

impl Filter {
    pub const PID: u32 = 1 << 0;
    pub const COMM: u32 = 1 << 1;
    pub const PORT: u32 = 1 << 2;
    pub const LPORT: u32 = 1 << 3;
    pub const RPORT: u32 = 1 << 4;
    pub const ADDR: u32 = 1 << 5;
    pub const FAMILY: u32 = 1 << 6;
    pub const STATE: u32 = 1 << 7;
    pub const KIND: u32 = 1 << 8;
    /// An unset local port (0) passes `PORT` and `LPORT`: `CLOSE -> SYN_SENT` runs before
    /// connect() picks the local port. Set only in [`Filter::socket_prefilter`].
    pub const UNSET_LPORT: u32 = 1 << 9;
    /// Criteria that hold for every event of one socket.
    const SOCKET_WIDE: u32 = Self::PORT | Self::LPORT | Self::RPORT | Self::ADDR | Self::FAMILY;

    pub const ANY: Self = Self {
        flags: 0,
        pid: 0,
        state_mask: 0,
        port: 0,
        lport: 0,
        rport: 0,
        family: 0,
        addr_family: 0,
        _pad: 0,
        addr: [0; 16],
        comm: [0; COMM_LEN],
        kinds: 0,
    };

    /// What the kernel applies when userspace attributes events: only the criteria that hold
    /// for every event of a socket, so that it drops whole sockets and userspace still sees
    /// every transition of a socket that may match (owners and times in state come from the
    /// ones before). Userspace applies the whole filter after attribution. Event kinds are
    /// left to userspace too: a close record counts the socket's retransmissions.
    pub const fn socket_prefilter(&self) -> Self {
        let mut f = *self;
        f.flags &= Self::SOCKET_WIDE;
        if f.flags & (Self::PORT | Self::LPORT) != 0 {
            f.flags |= Self::UNSET_LPORT;
        }
        f
    }

    /// Whether the criteria that do not depend on the owner match. The kernel checks these before
    /// looking the owner up.
    #[inline(always)]
    pub fn matches_socket(&self, ev: &RawEvent) -> bool {
        let f = self.flags;
        if f & Self::KIND != 0 && self.kinds & (1u32 << (ev.kind & 31)) == 0 {
            return false;
        }
        if f & Self::FAMILY != 0 && ev.family != self.family {
            return false;
        }
        let unset_lport = f & Self::UNSET_LPORT != 0 && ev.sport == 0;
        if f & Self::PORT != 0 && ev.sport != self.port && ev.dport != self.port && !unset_lport {
            return false;
        }
        if f & Self::LPORT != 0 && ev.sport != self.lport && !unset_lport {
            return false;
        }
        if f & Self::RPORT != 0 && ev.dport != self.rport {
            return false;
        }
        if f & Self::STATE != 0
            && self.state_mask & (state::bit(ev.old_state) | state::bit(ev.new_state)) == 0
        {
            return false;
        }
        if f & Self::ADDR != 0
            && !self.addr_matches(ev.family, &ev.saddr)
            && !self.addr_matches(ev.family, &ev.daddr)
        {
            return false;
        }
        true
    }

    /// Whether the owner criteria match (`pid` and `comm` of the event must be filled in).
    #[inline(always)]
    pub fn matches_owner(&self, ev: &RawEvent) -> bool {
        let f = self.flags;
        if f & Self::PID != 0 && ev.pid != self.pid {
            return false;
        }
        if f & Self::COMM != 0 && !bytes_eq(&ev.comm, &self.comm) {
            return false;
        }
        true
    }

    #[inline(always)]
    pub fn matches(&self, ev: &RawEvent) -> bool {
        self.matches_socket(ev) && self.matches_owner(ev)
    }

    #[inline(always)]
    fn addr_matches(&self, family: u16, addr: &[u8; 16]) -> bool {
        if family == self.addr_family {
            return bytes_eq(addr, &self.addr);
        }
        if self.addr_family == AF_INET && family == AF_INET6 {
            // ::ffff:a.b.c.d
            let mut mapped = [0u8; 16];
            mapped[10] = 0xff;
            mapped[11] = 0xff;
            mapped[12] = self.addr[0];
            mapped[13] = self.addr[1];
            mapped[14] = self.addr[2];
            mapped[15] = self.addr[3];
            return bytes_eq(addr, &mapped);
        }
        false
    }
}

#[inline(always)]
fn bytes_eq<const N: usize>(a: &[u8; N], b: &[u8; N]) -> bool {
    let mut diff = 0u8;
    let mut i = 0;
    while i < N {
        diff |= a[i] ^ b[i];
        i += 1;
    }
    diff == 0
}

const _: () = assert!(core::mem::size_of::<Filter>() == 60);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventKind, state::*};

    fn ev() -> RawEvent {
        let mut comm = [0u8; COMM_LEN];
        comm[..4].copy_from_slice(b"curl");
        let mut saddr = [0u8; 16];
        saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let mut daddr = [0u8; 16];
        daddr[..4].copy_from_slice(&[10, 1, 2, 3]);
        RawEvent {
            ts_ns: 1,
            sk: 0xffff_0000_1234,
            duration_ns: 0,
            saddr,
            daddr,
            comm,
            pid: 42,
            sport: 50000,
            dport: 443,
            family: AF_INET,
            kind: EventKind::State as u8,
            old_state: SYN_SENT,
            new_state: ESTABLISHED,
            owner_src: 1,
            _pad: [0; 2],
            err: 0,
            retransmits: 0,
            bytes_sent: 0,
            bytes_received: 0,
            lifespan_ns: 0,
            netns: 0,
        }
    }

    fn with(f: impl FnOnce(&mut Filter)) -> Filter {
        let mut filter = Filter::ANY;
        f(&mut filter);
        filter
    }

    #[test]
    fn empty_filter_matches_everything() {
        assert!(Filter::ANY.matches(&ev()));
    }

    #[test]
    fn ports() {
        let e = ev();
        assert!(
            with(|f| {
                f.flags = Filter::PORT;
                f.port = 443
            })
            .matches(&e)
        );
        assert!(
            with(|f| {
                f.flags = Filter::PORT;
                f.port = 50000
            })
            .matches(&e)
        );
        assert!(
            !with(|f| {
                f.flags = Filter::PORT;
                f.port = 80
            })
            .matches(&e)
        );
        assert!(
            with(|f| {
                f.flags = Filter::LPORT;
                f.lport = 50000
            })
            .matches(&e)
        );
        assert!(
            !with(|f| {
                f.flags = Filter::LPORT;
                f.lport = 443
            })
            .matches(&e)
        );
        assert!(
            with(|f| {
                f.flags = Filter::RPORT;
                f.rport = 443
            })
            .matches(&e)
        );
        assert!(
            !with(|f| {
                f.flags = Filter::RPORT;
                f.rport = 50000
            })
            .matches(&e)
        );
    }

    #[test]
    fn states_match_into_or_out_of() {
        let e = ev();
        assert!(
            with(|f| {
                f.flags = Filter::STATE;
                f.state_mask = bit(SYN_SENT)
            })
            .matches(&e)
        );
        assert!(
            with(|f| {
                f.flags = Filter::STATE;
                f.state_mask = bit(ESTABLISHED)
            })
            .matches(&e)
        );
        assert!(
            !with(|f| {
                f.flags = Filter::STATE;
                f.state_mask = bit(CLOSE_WAIT) | bit(LISTEN)
            })
            .matches(&e)
        );
    }

    #[test]
    fn family_pid_comm() {
        let e = ev();
        assert!(
            with(|f| {
                f.flags = Filter::FAMILY;
                f.family = AF_INET
            })
            .matches(&e)
        );
        assert!(
            !with(|f| {
                f.flags = Filter::FAMILY;
                f.family = AF_INET6
            })
            .matches(&e)
        );
        assert!(
            with(|f| {
                f.flags = Filter::PID;
                f.pid = 42
            })
            .matches(&e)
        );
        assert!(
            !with(|f| {
                f.flags = Filter::PID;
                f.pid = 43
            })
            .matches(&e)
        );
        let mut comm = [0u8; COMM_LEN];
        comm[..4].copy_from_slice(b"curl");
        assert!(
            with(|f| {
                f.flags = Filter::COMM;
                f.comm = comm
            })
            .matches(&e)
        );
        comm[..4].copy_from_slice(b"cur\0");
        assert!(
            !with(|f| {
                f.flags = Filter::COMM;
                f.comm = comm
            })
            .matches(&e)
        );
        // Owner criteria are separate from socket criteria.
        assert!(
            with(|f| {
                f.flags = Filter::PID;
                f.pid = 7
            })
            .matches_socket(&e)
        );
    }

    #[test]
    fn addresses_either_side_and_v4_mapped() {
        let mut e = ev();
        let v4 = |a: [u8; 4]| {
            with(|f| {
                f.flags = Filter::ADDR;
                f.addr_family = AF_INET;
                f.addr[..4].copy_from_slice(&a);
            })
        };
        assert!(v4([10, 1, 2, 3]).matches(&e));
        assert!(v4([127, 0, 0, 1]).matches(&e));
        assert!(!v4([10, 1, 2, 4]).matches(&e));
        e.family = AF_INET6;
        e.daddr = [0; 16];
        e.daddr[10] = 0xff;
        e.daddr[11] = 0xff;
        e.daddr[12..].copy_from_slice(&[10, 1, 2, 3]);
        assert!(v4([10, 1, 2, 3]).matches(&e));
        assert!(!v4([10, 1, 2, 9]).matches(&e));
    }

    #[test]
    fn kinds() {
        let e = ev();
        let retransmits = 1 << EventKind::Retransmit as u32;
        assert!(
            !with(|f| {
                f.flags = Filter::KIND;
                f.kinds = retransmits
            })
            .matches(&e)
        );
        let states = 1 << EventKind::State as u32;
        assert!(
            with(|f| {
                f.flags = Filter::KIND;
                f.kinds = states | retransmits
            })
            .matches(&e)
        );
    }

    #[test]
    fn socket_prefilter_keeps_socket_criteria_and_passes_an_unset_local_port() {
        let full = with(|f| {
            f.flags = Filter::LPORT | Filter::PID | Filter::STATE | Filter::KIND | Filter::FAMILY;
            f.lport = 50000;
            f.pid = 7;
            f.state_mask = bit(CLOSE_WAIT);
            f.kinds = 1 << EventKind::Retransmit as u32;
            f.family = AF_INET;
        });
        let pre = full.socket_prefilter();
        assert_eq!(
            pre.flags,
            Filter::LPORT | Filter::FAMILY | Filter::UNSET_LPORT
        );
        let mut e = ev();
        // Another owner, another state, another kind: the socket matches, so it passes.
        assert!(!full.matches(&e));
        assert!(pre.matches(&e));
        // connect() has not picked the local port yet.
        e.sport = 0;
        assert!(pre.matches(&e));
        assert!(
            !with(|f| {
                f.flags = Filter::LPORT;
                f.lport = 50000
            })
            .matches(&e)
        );
        // Another socket: a local port that is set and differs.
        e.sport = 50001;
        assert!(!pre.matches(&e));
        e.family = AF_INET6;
        e.sport = 50000;
        assert!(!pre.matches(&e));
        // `--port` alike, and only the local side may be unset.
        let port = with(|f| {
            f.flags = Filter::PORT;
            f.port = 8080
        })
        .socket_prefilter();
        let mut e = ev();
        e.sport = 0;
        assert!(port.matches(&e));
        e.dport = 8080;
        e.sport = 1234;
        assert!(port.matches(&e));
        e.dport = 9090;
        assert!(!port.matches(&e));
    }

    #[test]
    fn all_criteria_must_match() {
        let e = ev();
        let f = with(|f| {
            f.flags = Filter::PORT | Filter::PID;
            f.port = 443;
            f.pid = 41;
        });
        assert!(!f.matches(&e));
    }
}
