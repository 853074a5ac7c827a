//! TCP states, numbered as in `include/net/tcp_states.h`, named as netstat names them.

/// Number of the highest TCP state (`TCP_NEW_SYN_RECV`).
pub const MAX_STATE: u8 = 12;

pub const ESTABLISHED: u8 = 1;
pub const SYN_SENT: u8 = 2;
pub const SYN_RECV: u8 = 3;
pub const FIN_WAIT1: u8 = 4;
pub const FIN_WAIT2: u8 = 5;
pub const TIME_WAIT: u8 = 6;
pub const CLOSE: u8 = 7;
pub const CLOSE_WAIT: u8 = 8;
pub const LAST_ACK: u8 = 9;
pub const LISTEN: u8 = 10;
pub const CLOSING: u8 = 11;
pub const NEW_SYN_RECV: u8 = 12;

const NAMES: [&str; MAX_STATE as usize] = [
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
    "NEW_SYN_RECV",
];

/// The netstat name of a state, or `None` for a number the kernel does not define.
pub fn name(state: u8) -> Option<&'static str> {
    match state {
        1..=MAX_STATE => Some(NAMES[usize::from(state - 1)]),
        _ => None,
    }
}

/// The netstat name of a state for display: `UNKNOWN` for a number the kernel does not define,
/// so one odd record never stops a report.
pub fn display(state: u8) -> &'static str {
    name(state).unwrap_or("UNKNOWN")
}

/// Parses a netstat state name (case-insensitive; `-` and `_` are interchangeable, as `ss`
/// prints `FIN-WAIT-1` where netstat prints `FIN_WAIT1`).
pub fn from_name(text: &str) -> Option<u8> {
    let mut canon = [0u8; 16];
    let mut len = 0;
    for b in text.bytes() {
        if b == b'-' || b == b'_' {
            continue;
        }
        if len == canon.len() {
            return None;
        }
        canon[len] = b.to_ascii_uppercase();
        len += 1;
    }
    let canon = &canon[..len];
    (1..=MAX_STATE).find(|&s| {
        NAMES[usize::from(s - 1)]
            .bytes()
            .filter(|&b| b != b'_')
            .eq(canon.iter().copied())
    })
}

/// Bit for a state in a state mask.
pub const fn bit(state: u8) -> u32 {
    if state == 0 || state > MAX_STATE {
        0
    } else {
        1 << state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in 1..=MAX_STATE {
            assert_eq!(from_name(name(s).unwrap()), Some(s));
        }
        assert_eq!(name(0), None);
        assert_eq!(name(13), None);
        assert_eq!(display(LISTEN), "LISTEN");
        assert_eq!(display(0), "UNKNOWN");
        assert_eq!(display(13), "UNKNOWN");
    }

    #[test]
    fn parses_ss_and_netstat_spellings() {
        assert_eq!(from_name("FIN-WAIT-1"), Some(FIN_WAIT1));
        assert_eq!(from_name("time_wait"), Some(TIME_WAIT));
        assert_eq!(from_name("synrecv"), Some(SYN_RECV));
        assert_eq!(from_name("ESTAB"), None);
        assert_eq!(from_name("a-very-long-name-indeed"), None);
    }
}
