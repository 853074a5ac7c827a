//! The kernel record behind a decoded [`Event`]. The ring-buffer reader hands out decoded
//! events; the capture stores them in the kernel's own [`RawEvent`] layout so that replay runs
//! them through the same [`decode`](crate::event::decode) as the live stream, and the kernel
//! filter's own `matches` applies to them unchanged.

use std::net::IpAddr;

use tracer_common::{AF_INET, AF_INET6, EventKind, OwnerSource, RawEvent};

use crate::event::{Detail, Event, SignalKind};

/// Rebuilds the record `ev` was decoded from. Fields the decoder ignores for this kind of
/// event are left zero, so `decode(encode(ev)) == ev`.
pub fn encode(ev: &Event) -> RawEvent {
    let mut r = RawEvent::zeroed();
    r.ts_ns = ev.ts_ns;
    r.sk = ev.sk;
    let (family, saddr, daddr) = match (ev.saddr, ev.daddr) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
            a[..4].copy_from_slice(&s.octets());
            b[..4].copy_from_slice(&d.octets());
            (AF_INET, a, b)
        }
        (s, d) => (AF_INET6, v6(s), v6(d)),
    };
    r.family = family;
    r.saddr = saddr;
    r.daddr = daddr;
    r.sport = ev.sport;
    r.dport = ev.dport;
    r.netns = ev.netns;
    match &ev.owner {
        Some(o) => {
            r.pid = o.pid;
            let c = o.comm.as_str().as_bytes();
            r.comm[..c.len()].copy_from_slice(c);
            r.owner_src = o.source as u8;
        }
        None => r.owner_src = OwnerSource::Unknown as u8,
    }
    match &ev.detail {
        Detail::State {
            old,
            new,
            duration_ns,
        } => {
            r.kind = EventKind::State as u8;
            r.old_state = old.number();
            r.new_state = new.number();
            r.duration_ns = duration_ns.unwrap_or(0);
        }
        Detail::Retransmit { state, err } => {
            r.kind = EventKind::Retransmit as u8;
            r.old_state = state.number();
            r.new_state = state.number();
            r.err = err.unwrap_or(0);
        }
        Detail::Signal { kind, state } => {
            r.kind = match kind {
                SignalKind::ResetSent => EventKind::ResetSent,
                SignalKind::ResetReceived => EventKind::ResetReceived,
                SignalKind::SynackRetransmit => EventKind::SynackRetransmit,
            } as u8;
            let st = state.map_or(0, |s| s.number());
            r.old_state = st;
            r.new_state = st;
        }
    }
    if let Some(c) = &ev.close {
        r.err = c.err;
        r.bytes_sent = c.bytes_sent;
        r.bytes_received = c.bytes_received;
        r.retransmits = c.retransmits;
        r.lifespan_ns = c.lifespan_ns.unwrap_or(0);
    }
    r
}

fn v6(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
    }
}

/// The record's bytes, as the kernel lays them out (tail padding zero).
pub fn to_bytes(r: &RawEvent) -> [u8; RawEvent::SIZE] {
    use std::mem::offset_of;
    let mut b = [0u8; RawEvent::SIZE];
    let mut put = |off: usize, bytes: &[u8]| b[off..off + bytes.len()].copy_from_slice(bytes);
    put(offset_of!(RawEvent, ts_ns), &r.ts_ns.to_ne_bytes());
    put(offset_of!(RawEvent, sk), &r.sk.to_ne_bytes());
    put(
        offset_of!(RawEvent, duration_ns),
        &r.duration_ns.to_ne_bytes(),
    );
    put(
        offset_of!(RawEvent, bytes_sent),
        &r.bytes_sent.to_ne_bytes(),
    );
    put(
        offset_of!(RawEvent, bytes_received),
        &r.bytes_received.to_ne_bytes(),
    );
    put(
        offset_of!(RawEvent, lifespan_ns),
        &r.lifespan_ns.to_ne_bytes(),
    );
    put(offset_of!(RawEvent, saddr), &r.saddr);
    put(offset_of!(RawEvent, daddr), &r.daddr);
    put(offset_of!(RawEvent, comm), &r.comm);
    put(offset_of!(RawEvent, pid), &r.pid.to_ne_bytes());
    put(offset_of!(RawEvent, netns), &r.netns.to_ne_bytes());
    put(offset_of!(RawEvent, sport), &r.sport.to_ne_bytes());
    put(offset_of!(RawEvent, dport), &r.dport.to_ne_bytes());
    put(offset_of!(RawEvent, family), &r.family.to_ne_bytes());
    put(offset_of!(RawEvent, kind), &[r.kind]);
    put(offset_of!(RawEvent, old_state), &[r.old_state]);
    put(offset_of!(RawEvent, new_state), &[r.new_state]);
    put(offset_of!(RawEvent, owner_src), &[r.owner_src]);
    put(offset_of!(RawEvent, _pad), &r._pad);
    put(offset_of!(RawEvent, err), &r.err.to_ne_bytes());
    put(
        offset_of!(RawEvent, retransmits),
        &r.retransmits.to_ne_bytes(),
    );
    b
}

/// The record in `b`, field by field (the inverse of [`to_bytes`]). Every field is an integer
/// or a byte array, so any bytes make a record; `decode` validates its values.
pub fn from_bytes(b: &[u8; RawEvent::SIZE]) -> RawEvent {
    use std::mem::offset_of;
    fn at<const N: usize>(b: &[u8; RawEvent::SIZE], off: usize) -> [u8; N] {
        b[off..off + N].try_into().expect("within the record")
    }
    RawEvent {
        ts_ns: u64::from_ne_bytes(at(b, offset_of!(RawEvent, ts_ns))),
        sk: u64::from_ne_bytes(at(b, offset_of!(RawEvent, sk))),
        duration_ns: u64::from_ne_bytes(at(b, offset_of!(RawEvent, duration_ns))),
        bytes_sent: u64::from_ne_bytes(at(b, offset_of!(RawEvent, bytes_sent))),
        bytes_received: u64::from_ne_bytes(at(b, offset_of!(RawEvent, bytes_received))),
        lifespan_ns: u64::from_ne_bytes(at(b, offset_of!(RawEvent, lifespan_ns))),
        saddr: at(b, offset_of!(RawEvent, saddr)),
        daddr: at(b, offset_of!(RawEvent, daddr)),
        comm: at(b, offset_of!(RawEvent, comm)),
        pid: u32::from_ne_bytes(at(b, offset_of!(RawEvent, pid))),
        netns: u32::from_ne_bytes(at(b, offset_of!(RawEvent, netns))),
        sport: u16::from_ne_bytes(at(b, offset_of!(RawEvent, sport))),
        dport: u16::from_ne_bytes(at(b, offset_of!(RawEvent, dport))),
        family: u16::from_ne_bytes(at(b, offset_of!(RawEvent, family))),
        kind: b[offset_of!(RawEvent, kind)],
        old_state: b[offset_of!(RawEvent, old_state)],
        new_state: b[offset_of!(RawEvent, new_state)],
        owner_src: b[offset_of!(RawEvent, owner_src)],
        _pad: at(b, offset_of!(RawEvent, _pad)),
        err: i32::from_ne_bytes(at(b, offset_of!(RawEvent, err))),
        retransmits: u32::from_ne_bytes(at(b, offset_of!(RawEvent, retransmits))),
    }
}
