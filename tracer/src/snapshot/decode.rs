//! One sock_diag reply message -> kind, state and addresses. Pure, so it is tested without a
//! kernel.

use std::net::{IpAddr, SocketAddr, SocketAddrV6};

use netlink_packet_core::{NlasIterator, Parseable};
use netlink_packet_sock_diag::{
    constants::INET_DIAG_SHUTDOWN,
    inet::{InetResponseHeader, Timer},
};

use super::{DiagSocket, SockKind};

pub(super) use netlink_packet_sock_diag::constants::{
    TCP_FIN_WAIT2, TCP_LISTEN, TCP_SYN_RECV, TCP_TIME_WAIT,
};

/// The kernel's state of a request socket (not in the uapi state list the crate mirrors). Only
/// used in request masks: replies report request sockets as SYN_RECV.
pub(super) const TCP_NEW_SYN_RECV: u8 = 12;

/// Number of state columns in [`Counts`]; kernel TCP states are below 16.
pub const STATES: usize = 16;

/// A decoded reply: the fixed inet_diag_msg header plus the kind it belongs to.
pub(super) struct Message {
    pub kind: SockKind,
    header: InetResponseHeader,
}

impl Message {
    pub fn state(&self) -> u8 {
        self.header.state
    }

    pub fn to_socket(&self) -> DiagSocket {
        let h = &self.header;
        let id = &h.socket_id;
        DiagSocket {
            kind: self.kind,
            state: h.state,
            local: socket_addr(id.source_address, id.source_port, id.interface_id),
            remote: socket_addr(id.destination_address, id.destination_port, id.interface_id),
            inode: u64::from(h.inode),
            uid: h.uid,
            cookie: cookie(id.cookie),
            rqueue: h.recv_queue,
            wqueue: h.send_queue,
        }
    }
}

/// Decodes the payload of one SOCK_DIAG_BY_FAMILY reply.
pub(super) fn decode(payload: &[u8]) -> Result<Message, String> {
    let header = InetResponseHeader::parse(payload).map_err(|e| e.to_string())?;
    // The attributes follow the fixed inet_diag_msg header (72 bytes, already 4-aligned).
    let attrs = payload.get(INET_DIAG_MSG_LEN..).unwrap_or_default();
    let mut has_shutdown = false;
    for nla in NlasIterator::new(attrs) {
        if nla.map_err(|e| e.to_string())?.kind() == INET_DIAG_SHUTDOWN {
            has_shutdown = true;
            break;
        }
    }
    let timewait_timer = header.timer == Some(Timer::TimeWait);
    let kind = classify(header.state, timewait_timer, has_shutdown);
    Ok(Message { kind, header })
}

/// sizeof(struct inet_diag_msg).
const INET_DIAG_MSG_LEN: usize = 72;

/// Which filler produced a reply. tcp_twsk_diag_fill() is the only one that sets timer 3;
/// tcp_req_diag_fill() reports SYN_RECV without attributes, while inet_sk_diag_fill() (full
/// sockets, including a fast-open child in SYN_RECV) always adds INET_DIAG_SHUTDOWN.
fn classify(state: u8, timewait_timer: bool, has_shutdown: bool) -> SockKind {
    if timewait_timer && !has_shutdown {
        SockKind::TimeWait
    } else if state == TCP_SYN_RECV && !has_shutdown {
        SockKind::Request
    } else {
        SockKind::Full
    }
}

/// idiag_cookie is two host-order u32 halves, low half first.
fn cookie(raw: [u8; 8]) -> u64 {
    let lo = u32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let hi = u32::from_ne_bytes([raw[4], raw[5], raw[6], raw[7]]);
    u64::from(hi) << 32 | u64::from(lo)
}

/// A link-local IPv6 address means nothing without its interface, so it gets the socket's
/// bound interface as scope; other addresses stay plain, comparable with parsed ones.
fn socket_addr(ip: IpAddr, port: u16, ifindex: u32) -> SocketAddr {
    match ip {
        IpAddr::V4(v4) => SocketAddr::from((v4, port)),
        IpAddr::V6(v6) => {
            let scope = if v6.is_unicast_link_local() {
                ifindex
            } else {
                0
            };
            SocketAddr::V6(SocketAddrV6::new(v6, port, 0, scope))
        }
    }
}

/// Socket counts per kind and state: `by_kind[kind.index()][state]`, states being kernel TCP
/// state numbers as in [`DiagSocket::state`](super::DiagSocket::state). Plain arrays, so a count
/// costs nothing to copy or compare.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub by_kind: [[u32; STATES]; 3],
    /// Sockets whose state number did not fit the table (none on any known kernel).
    pub other: u32,
}

impl Counts {
    pub fn add(&mut self, kind: SockKind, state: u8) {
        match self.by_kind[kind.index()].get_mut(usize::from(state)) {
            Some(n) => *n = n.saturating_add(1),
            None => self.other = self.other.saturating_add(1),
        }
    }

    pub fn get(&self, kind: SockKind, state: u8) -> u32 {
        self.by_kind[kind.index()]
            .get(usize::from(state))
            .copied()
            .unwrap_or(0)
    }

    /// All sockets of one kind.
    pub fn of_kind(&self, kind: SockKind) -> u32 {
        self.by_kind[kind.index()].iter().sum()
    }

    /// All sockets counted.
    pub fn total(&self) -> u32 {
        SockKind::ALL.iter().map(|&k| self.of_kind(k)).sum::<u32>() + self.other
    }

    /// The non-zero entries as (kind, state, count).
    pub fn iter(&self) -> impl Iterator<Item = (SockKind, u8, u32)> + '_ {
        SockKind::ALL.into_iter().flat_map(move |kind| {
            (0..STATES as u8)
                .map(move |state| (kind, state, self.get(kind, state)))
                .filter(|&(_, _, n)| n > 0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An inet_diag_msg as the kernel lays it out, with optional attributes.
    fn reply(family: u8, state: u8, timer: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut b = vec![family, state, timer, 0];
        b.extend_from_slice(&8080u16.to_be_bytes()); // sport
        b.extend_from_slice(&443u16.to_be_bytes()); // dport
        let (src, dst): ([u8; 16], [u8; 16]) = if family == 2 {
            let mut s = [0; 16];
            s[..4].copy_from_slice(&[127, 0, 0, 1]);
            let mut d = [0; 16];
            d[..4].copy_from_slice(&[10, 1, 2, 3]);
            (s, d)
        } else {
            let mut s = [0; 16];
            s[15] = 1;
            let mut d = [0; 16];
            d[0] = 0xfe;
            d[1] = 0x80;
            d[15] = 7;
            (s, d)
        };
        b.extend_from_slice(&src);
        b.extend_from_slice(&dst);
        b.extend_from_slice(&3u32.to_ne_bytes()); // if
        b.extend_from_slice(&0x1122_3344u32.to_ne_bytes()); // cookie low
        b.extend_from_slice(&0x55u32.to_ne_bytes()); // cookie high
        b.extend_from_slice(&0u32.to_ne_bytes()); // expires
        b.extend_from_slice(&5u32.to_ne_bytes()); // rqueue
        b.extend_from_slice(&128u32.to_ne_bytes()); // wqueue
        b.extend_from_slice(&1000u32.to_ne_bytes()); // uid
        b.extend_from_slice(&424242u32.to_ne_bytes()); // inode
        assert_eq!(b.len(), INET_DIAG_MSG_LEN);
        for (kind, data) in attrs {
            let len = 4 + data.len();
            b.extend_from_slice(&(len as u16).to_ne_bytes());
            b.extend_from_slice(&kind.to_ne_bytes());
            b.extend_from_slice(data);
            b.resize(b.len().next_multiple_of(4), 0);
        }
        b
    }

    const MARK: u16 = 15;
    const SOCKOPT: u16 = 29;

    #[test]
    fn full_socket_maps_every_field() {
        let m = decode(&reply(
            2,
            10,
            0,
            &[(INET_DIAG_SHUTDOWN, &[0]), (SOCKOPT, &[2, 0])],
        ))
        .unwrap();
        assert_eq!(
            m.to_socket(),
            DiagSocket {
                kind: SockKind::Full,
                state: 10,
                local: "127.0.0.1:8080".parse().unwrap(),
                remote: "10.1.2.3:443".parse().unwrap(),
                inode: 424242,
                uid: 1000,
                cookie: 0x55_1122_3344,
                rqueue: 5,
                wqueue: 128,
            }
        );
    }

    #[test]
    fn ipv6_link_local_gets_the_interface_as_scope() {
        let s = decode(&reply(10, 1, 2, &[(INET_DIAG_SHUTDOWN, &[0])]))
            .unwrap()
            .to_socket();
        assert_eq!(s.local, "[::1]:8080".parse().unwrap());
        assert_eq!(s.remote, "[fe80::7%3]:443".parse().unwrap());
    }

    #[test]
    fn timewait_in_either_substate() {
        for sub in [TCP_TIME_WAIT, TCP_FIN_WAIT2] {
            let m = decode(&reply(2, sub, 3, &[(MARK, &[0; 4])])).unwrap();
            assert_eq!((m.kind, m.state()), (SockKind::TimeWait, sub));
        }
        // A full FIN_WAIT2 socket matches the same state bit but is not a timewait socket.
        let full = decode(&reply(2, TCP_FIN_WAIT2, 0, &[(INET_DIAG_SHUTDOWN, &[3])])).unwrap();
        assert_eq!(full.kind, SockKind::Full);
    }

    #[test]
    fn request_socket_versus_full_syn_recv() {
        let req = decode(&reply(2, TCP_SYN_RECV, 1, &[(MARK, &[0; 4])])).unwrap();
        assert_eq!(req.kind, SockKind::Request);
        let bare = decode(&reply(2, TCP_SYN_RECV, 1, &[])).unwrap();
        assert_eq!(bare.kind, SockKind::Request);
        // A fast-open child is a full socket in SYN_RECV.
        let tfo = decode(&reply(2, TCP_SYN_RECV, 1, &[(INET_DIAG_SHUTDOWN, &[0])])).unwrap();
        assert_eq!(tfo.kind, SockKind::Full);
    }

    #[test]
    fn malformed_replies_are_errors() {
        assert!(decode(&[2, 1, 0]).is_err());
        let mut bad_family = reply(2, 1, 0, &[]);
        bad_family[0] = 1;
        assert!(decode(&bad_family).is_err());
        let mut bad_attr = reply(2, 1, 0, &[(INET_DIAG_SHUTDOWN, &[0])]);
        bad_attr[INET_DIAG_MSG_LEN] = 200; // attribute longer than the message
        assert!(decode(&bad_attr).is_err());
    }

    #[test]
    fn cookie_halves_are_host_order() {
        let mut raw = [0u8; 8];
        raw[..4].copy_from_slice(&0xdead_beefu32.to_ne_bytes());
        raw[4..].copy_from_slice(&0x1u32.to_ne_bytes());
        assert_eq!(cookie(raw), 0x1_dead_beef);
    }

    #[test]
    fn counts_tally_and_iterate() {
        let mut c = Counts::default();
        c.add(SockKind::TimeWait, TCP_TIME_WAIT);
        c.add(SockKind::TimeWait, TCP_TIME_WAIT);
        c.add(SockKind::Full, 1);
        c.add(SockKind::Request, 200);
        assert_eq!(c.get(SockKind::TimeWait, TCP_TIME_WAIT), 2);
        assert_eq!(c.get(SockKind::Full, 99), 0);
        assert_eq!(c.of_kind(SockKind::TimeWait), 2);
        assert_eq!(c.other, 1);
        assert_eq!(c.total(), 4);
        assert_eq!(
            c.iter().collect::<Vec<_>>(),
            vec![(SockKind::Full, 1, 1), (SockKind::TimeWait, 6, 2)]
        );
    }
}
