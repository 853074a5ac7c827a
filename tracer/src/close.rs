//! How a connection ended, from the state it closed in and the socket's pending error.
//!
//! The kernel sets `sk_err` before it moves a socket to CLOSE when a connection fails: a RST
//! received in SYN_SENT is `ECONNREFUSED`, one received later `ECONNRESET` (or `EPIPE` after
//! the peer's FIN), an expired retransmission timer `ETIMEDOUT` (or the ICMP error that preceded
//! it). An application abort (unread data at close, `SO_LINGER` 0) sends its RST only after the
//! transition, so it shows as a close from a synchronized state with no error.

use crate::event::TcpState;
use tracer_common::state;

const EPIPE: i32 = 32;
const ENETUNREACH: i32 = 101;
const ECONNABORTED: i32 = 103;
const ECONNRESET: i32 = 104;
const ETIMEDOUT: i32 = 110;
const ECONNREFUSED: i32 = 111;
const EHOSTUNREACH: i32 = 113;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CloseEnd {
    /// FIN exchange completed (or the socket entered TIME_WAIT).
    Orderly,
    /// A RST ended it, sent or received.
    Reset,
    /// The peer answered the SYN with a RST.
    Refused,
    /// Retransmissions (of the SYN or of data) went unanswered.
    Timeout,
    /// ICMP said the peer cannot be reached.
    Unreachable,
    /// The application gave up on a connect that had not completed.
    Aborted,
}

impl CloseEnd {
    pub const ALL: [CloseEnd; 6] = [
        Self::Orderly,
        Self::Reset,
        Self::Refused,
        Self::Timeout,
        Self::Unreachable,
        Self::Aborted,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Orderly => "orderly",
            Self::Reset => "reset",
            Self::Refused => "refused",
            Self::Timeout => "timeout",
            Self::Unreachable => "unreachable",
            Self::Aborted => "aborted",
        }
    }

    /// The end whose [`CloseEnd::name`] this is (captures store closes by name).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.name() == name)
    }

    /// Classifies a transition `from -> CLOSE` with the socket's pending error `err`.
    pub fn classify(from: TcpState, err: i32) -> Self {
        match err {
            ECONNREFUSED => return Self::Refused,
            ETIMEDOUT => return Self::Timeout,
            ECONNRESET | EPIPE | ECONNABORTED => return Self::Reset,
            EHOSTUNREACH | ENETUNREACH => return Self::Unreachable,
            _ => {}
        }
        match from.number() {
            state::LAST_ACK | state::FIN_WAIT2 | state::CLOSING | state::TIME_WAIT => Self::Orderly,
            state::SYN_SENT => Self::Aborted,
            _ => Self::Reset,
        }
    }
}

/// Symbolic name of the errnos a closing socket carries.
pub fn errno_name(err: i32) -> Option<&'static str> {
    Some(match err {
        EPIPE => "EPIPE",
        ENETUNREACH => "ENETUNREACH",
        ECONNABORTED => "ECONNABORTED",
        ECONNRESET => "ECONNRESET",
        ETIMEDOUT => "ETIMEDOUT",
        ECONNREFUSED => "ECONNREFUSED",
        EHOSTUNREACH => "EHOSTUNREACH",
        _ => return None,
    })
}

/// What a connection's close record carries, beyond the event's identity and owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseInfo {
    /// The state the socket closed from.
    pub from: TcpState,
    pub end: CloseEnd,
    /// The socket's pending error (an errno), 0 when none.
    pub err: i32,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub retransmits: u32,
    /// From the first transition of the connection; `None` when it started before the tracer.
    pub lifespan_ns: Option<u64>,
}

/// Whether `from -> CLOSE` ends a connection (rather than a listener, or nothing).
pub fn ends_connection(from: TcpState) -> bool {
    !matches!(from.number(), state::LISTEN | state::CLOSE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(n: u8) -> TcpState {
        TcpState::try_from(n).unwrap()
    }

    #[test]
    fn classifies_every_way_a_connection_ends() {
        let c = |from, err| CloseEnd::classify(st(from), err);
        assert_eq!(c(state::LAST_ACK, 0), CloseEnd::Orderly);
        assert_eq!(c(state::FIN_WAIT2, 0), CloseEnd::Orderly);
        assert_eq!(c(state::CLOSING, 0), CloseEnd::Orderly);
        assert_eq!(c(state::SYN_SENT, ECONNREFUSED), CloseEnd::Refused);
        assert_eq!(c(state::SYN_SENT, ETIMEDOUT), CloseEnd::Timeout);
        assert_eq!(c(state::SYN_SENT, EHOSTUNREACH), CloseEnd::Unreachable);
        assert_eq!(c(state::SYN_SENT, 0), CloseEnd::Aborted);
        assert_eq!(c(state::ESTABLISHED, ECONNRESET), CloseEnd::Reset);
        assert_eq!(c(state::CLOSE_WAIT, EPIPE), CloseEnd::Reset);
        assert_eq!(c(state::ESTABLISHED, 0), CloseEnd::Reset);
        assert_eq!(c(state::ESTABLISHED, ETIMEDOUT), CloseEnd::Timeout);
        assert_eq!(c(state::LAST_ACK, ETIMEDOUT), CloseEnd::Timeout);
    }

    #[test]
    fn listeners_do_not_end_connections() {
        assert!(!ends_connection(st(state::LISTEN)));
        assert!(ends_connection(st(state::SYN_SENT)));
        assert!(ends_connection(st(state::FIN_WAIT2)));
    }
}
