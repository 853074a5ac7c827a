//! Owned events decoded from ring-buffer records.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tracer_common::{AF_INET, AF_INET6, COMM_LEN, EventKind, OwnerSource, RawEvent, state};

use crate::close::{CloseEnd, CloseInfo, ends_connection};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes, expected {expected}", expected = RawEvent::SIZE)]
    Length(usize),
    #[error("unknown event kind {0}")]
    Kind(u8),
    #[error("unknown address family {0}")]
    Family(u16),
    #[error("unknown TCP state {0}")]
    State(u8),
    #[error("unknown owner source {0}")]
    OwnerSource(u8),
    #[error("an owner record, which only userspace attribution reads")]
    OwnerRecord,
}

/// A TCP state as the kernel numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TcpState(u8);

impl TcpState {
    pub fn name(self) -> &'static str {
        state::display(self.0)
    }
    pub fn number(self) -> u8 {
        self.0
    }
}

impl TryFrom<u8> for TcpState {
    type Error = DecodeError;
    fn try_from(v: u8) -> Result<Self, DecodeError> {
        state::name(v).map(|_| Self(v)).ok_or(DecodeError::State(v))
    }
}

impl std::fmt::Display for TcpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A command name, stored inline (decoding allocates nothing per event). Ordered as its text:
/// the bytes past `len` are zero and those before it never are.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Comm {
    bytes: [u8; COMM_LEN],
    len: u8,
}

impl Comm {
    pub fn new(raw: &[u8]) -> Self {
        let raw = &raw[..raw.len().min(COMM_LEN)];
        let len = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
        // Keep the longest valid UTF-8 prefix: the kernel copies bytes, not characters.
        let len = match std::str::from_utf8(&raw[..len]) {
            Ok(_) => len,
            Err(e) => e.valid_up_to(),
        };
        let mut bytes = [0u8; COMM_LEN];
        bytes[..len].copy_from_slice(&raw[..len]);
        Self {
            bytes,
            len: len as u8,
        }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl From<&str> for Comm {
    fn from(s: &str) -> Self {
        Self::new(s.as_bytes())
    }
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl std::fmt::Display for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub comm: Comm,
    pub source: OwnerSource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detail {
    State {
        old: TcpState,
        new: TcpState,
        duration_ns: Option<u64>,
    },
    Retransmit {
        state: TcpState,
        err: Option<i32>,
    },
    /// A reset or a SYN-ACK retransmission: input for the anomaly detectors only.
    Signal {
        kind: SignalKind,
        /// The socket's state where the tracepoint reports it.
        state: Option<TcpState>,
    },
}

/// The anomaly signals the kernel reports besides transitions and retransmissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignalKind {
    ResetSent,
    ResetReceived,
    /// `sport` is the listening port, `daddr` the client that has not completed the handshake.
    SynackRetransmit,
}

/// One decoded kernel event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    pub sk: u64,
    /// Local side.
    pub saddr: IpAddr,
    pub sport: u16,
    /// Remote side.
    pub daddr: IpAddr,
    pub dport: u16,
    pub owner: Option<Owner>,
    /// Inode of the socket's network namespace; 0 when unknown.
    pub netns: u32,
    pub detail: Detail,
    /// Transitions that end a connection carry its close record.
    pub close: Option<CloseInfo>,
}

impl Event {
    pub fn family(&self) -> u8 {
        if self.saddr.is_ipv4() { 4 } else { 6 }
    }
}

fn addr(family: u16, raw: [u8; 16]) -> IpAddr {
    if family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(raw))
    }
}

/// Decodes one ring-buffer record. The length is checked first; every enumerated value is
/// validated, so garbage yields an error rather than a nonsense event.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let b: &[u8; RawEvent::SIZE] = bytes
        .try_into()
        .map_err(|_| DecodeError::Length(bytes.len()))?;
    decode_raw(&crate::capture::raw::from_bytes(b))
}

/// Decodes a record already taken apart into its fields (see [`decode`]).
pub fn decode_raw(r: &RawEvent) -> Result<Event, DecodeError> {
    let kind = EventKind::try_from(r.kind).map_err(DecodeError::Kind)?;
    if kind == EventKind::Owner {
        return Err(DecodeError::OwnerRecord);
    }
    let family = r.family;
    if family != AF_INET && family != AF_INET6 {
        return Err(DecodeError::Family(family));
    }
    let is_signal = !matches!(kind, EventKind::State | EventKind::Retransmit);
    // Signals carry a state only where the tracepoint has one (0 otherwise).
    let raw_new = r.new_state;
    let (old, new) = if is_signal && raw_new == 0 {
        (TcpState(state::CLOSE), TcpState(state::CLOSE))
    } else {
        (
            TcpState::try_from(r.old_state)?,
            TcpState::try_from(raw_new)?,
        )
    };
    let source = OwnerSource::try_from(r.owner_src).map_err(DecodeError::OwnerSource)?;
    let owner = (r.pid != 0 && source != OwnerSource::Unknown).then(|| Owner {
        pid: r.pid,
        comm: Comm::new(&r.comm),
        source,
    });
    let err = r.err;
    let signal_detail = |kind| Detail::Signal {
        kind,
        state: (raw_new != 0).then_some(new),
    };
    let mut close = None;
    let detail = match kind {
        EventKind::State => {
            if new.number() == state::CLOSE && ends_connection(old) {
                let life = r.lifespan_ns;
                close = Some(CloseInfo {
                    from: old,
                    end: CloseEnd::classify(old, err),
                    err,
                    bytes_sent: r.bytes_sent,
                    bytes_received: r.bytes_received,
                    retransmits: r.retransmits,
                    lifespan_ns: (life != 0).then_some(life),
                });
            }
            Detail::State {
                old,
                new,
                duration_ns: (r.duration_ns != 0).then_some(r.duration_ns),
            }
        }
        EventKind::Retransmit => Detail::Retransmit {
            state: new,
            err: (err != 0).then_some(err),
        },
        EventKind::ResetSent => signal_detail(SignalKind::ResetSent),
        EventKind::ResetReceived => signal_detail(SignalKind::ResetReceived),
        EventKind::SynackRetransmit => signal_detail(SignalKind::SynackRetransmit),
        EventKind::Owner => return Err(DecodeError::OwnerRecord),
    };
    Ok(Event {
        ts_ns: r.ts_ns,
        sk: r.sk,
        saddr: addr(family, r.saddr),
        sport: r.sport,
        daddr: addr(family, r.daddr),
        dport: r.dport,
        owner,
        netns: r.netns,
        detail,
        close,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The bytes the kernel would write for `ev`.
    pub fn encode(ev: &RawEvent) -> Vec<u8> {
        crate::capture::raw::to_bytes(ev).to_vec()
    }

    pub fn raw_v4() -> RawEvent {
        let mut ev = RawEvent::zeroed();
        ev.ts_ns = 123_456_789;
        ev.sk = 0xffff_8881_0000_1000;
        ev.duration_ns = 1_500_000;
        ev.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        ev.daddr[..4].copy_from_slice(&[127, 0, 0, 2]);
        ev.comm[..5].copy_from_slice(b"nginx");
        ev.pid = 4242;
        ev.sport = 40000;
        ev.dport = 8080;
        ev.family = AF_INET;
        ev.kind = EventKind::State as u8;
        ev.old_state = state::SYN_SENT;
        ev.new_state = state::ESTABLISHED;
        ev.owner_src = OwnerSource::Process as u8;
        ev
    }

    #[test]
    fn decodes_a_state_event() {
        let ev = decode(&encode(&raw_v4())).unwrap();
        assert_eq!(ev.saddr, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(ev.daddr, "127.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(
            (ev.sport, ev.dport, ev.sk),
            (40000, 8080, 0xffff_8881_0000_1000)
        );
        assert_eq!(
            ev.owner,
            Some(Owner {
                pid: 4242,
                comm: Comm::from("nginx"),
                source: OwnerSource::Process
            })
        );
        assert_eq!(
            ev.detail,
            Detail::State {
                old: TcpState(state::SYN_SENT),
                new: TcpState(state::ESTABLISHED),
                duration_ns: Some(1_500_000)
            }
        );
    }

    #[test]
    fn decodes_ipv6_retransmit_with_err_and_unknown_owner() {
        let mut raw = raw_v4();
        raw.family = AF_INET6;
        raw.saddr = Ipv6Addr::LOCALHOST.octets();
        raw.daddr = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
        raw.kind = EventKind::Retransmit as u8;
        raw.old_state = state::ESTABLISHED;
        raw.new_state = state::ESTABLISHED;
        raw.err = -105;
        raw.pid = 0;
        raw.owner_src = OwnerSource::Unknown as u8;
        let ev = decode(&encode(&raw)).unwrap();
        assert_eq!(ev.saddr, IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(ev.family(), 6);
        assert_eq!(ev.owner, None);
        assert_eq!(
            ev.detail,
            Detail::Retransmit {
                state: TcpState(state::ESTABLISHED),
                err: Some(-105)
            }
        );
    }

    #[test]
    fn a_close_carries_its_record() {
        let mut raw = raw_v4();
        raw.old_state = state::SYN_SENT;
        raw.new_state = state::CLOSE;
        raw.err = 111;
        raw.bytes_sent = 7;
        raw.retransmits = 2;
        raw.netns = 4026531840;
        let ev = decode(&encode(&raw)).unwrap();
        assert_eq!(ev.netns, 4026531840);
        let c = ev.close.unwrap();
        assert_eq!(
            (
                c.end,
                c.bytes_sent,
                c.bytes_received,
                c.retransmits,
                c.lifespan_ns
            ),
            (CloseEnd::Refused, 7, 0, 2, None)
        );
        raw.old_state = state::LISTEN;
        assert_eq!(decode(&encode(&raw)).unwrap().close, None);
    }

    #[test]
    fn decodes_signals_with_and_without_state() {
        let mut raw = raw_v4();
        raw.kind = EventKind::ResetSent as u8;
        raw.old_state = 0;
        raw.new_state = 0;
        raw.sk = 0;
        let ev = decode(&encode(&raw)).unwrap();
        assert_eq!(
            ev.detail,
            Detail::Signal {
                kind: SignalKind::ResetSent,
                state: None
            }
        );
        raw.kind = EventKind::SynackRetransmit as u8;
        raw.old_state = state::LISTEN;
        raw.new_state = state::LISTEN;
        assert_eq!(
            decode(&encode(&raw)).unwrap().detail,
            Detail::Signal {
                kind: SignalKind::SynackRetransmit,
                state: Some(TcpState(state::LISTEN))
            }
        );
        raw.new_state = 99;
        assert_eq!(decode(&encode(&raw)), Err(DecodeError::State(99)));
    }

    #[test]
    fn comm_keeps_valid_utf8_only() {
        assert_eq!(Comm::new(b"nginx\0\0\0").as_str(), "nginx");
        assert_eq!(
            Comm::new(b"0123456789abcdefXYZ").as_str(),
            "0123456789abcdef"
        );
        assert_eq!(Comm::new(&[b'a', 0xc3]).as_str(), "a");
        assert_eq!(Comm::new(&[]).as_str(), "");
    }

    #[test]
    fn short_and_long_records_are_rejected() {
        let bytes = encode(&raw_v4());
        assert_eq!(decode(&bytes[..127]), Err(DecodeError::Length(127)));
        assert_eq!(decode(&[]), Err(DecodeError::Length(0)));
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(decode(&long), Err(DecodeError::Length(129)));
    }

    #[test]
    fn garbage_values_are_errors() {
        let mut raw = raw_v4();
        raw.kind = 9;
        assert_eq!(decode(&encode(&raw)), Err(DecodeError::Kind(9)));
        let mut raw = raw_v4();
        raw.family = 7;
        assert_eq!(decode(&encode(&raw)), Err(DecodeError::Family(7)));
        let mut raw = raw_v4();
        raw.new_state = 13;
        assert_eq!(decode(&encode(&raw)), Err(DecodeError::State(13)));
        let mut raw = raw_v4();
        raw.owner_src = 200;
        assert_eq!(decode(&encode(&raw)), Err(DecodeError::OwnerSource(200)));
        // Arbitrary bytes never panic.
        let mut x: u32 = 0x1234_5678;
        for _ in 0..2000 {
            let junk: Vec<u8> = (0..RawEvent::SIZE)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = decode(&junk);
        }
    }
}
