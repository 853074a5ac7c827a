//! `/proc/net/netstat` TcpExt counters the SYN flood detector reads (of the reader's network
//! namespace). The file is pairs of lines: `TcpExt: Name1 Name2 ...` then `TcpExt: v1 v2 ...`.

use std::collections::HashMap;

/// The counters used, in the order they are reported as evidence.
pub const NAMES: [&str; 7] = [
    "ListenOverflows",
    "ListenDrops",
    "TCPReqQFullDrop",
    "TCPReqQFullDoCookies",
    "SyncookiesSent",
    "SyncookiesRecv",
    "TCPTimeWaitOverflow",
];

/// Absolute values of [`NAMES`]; a counter the kernel lacks reads 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpExt(pub [u64; NAMES.len()]);

impl TcpExt {
    pub fn get(&self, name: &str) -> u64 {
        NAMES
            .iter()
            .position(|n| *n == name)
            .map_or(0, |i| self.0[i])
    }

    /// Growth since `prev` (a counter that went backwards, e.g. after a namespace change,
    /// counts as 0).
    pub fn delta(&self, prev: &TcpExt) -> TcpExt {
        let mut d = TcpExt::default();
        for i in 0..NAMES.len() {
            d.0[i] = self.0[i].saturating_sub(prev.0[i]);
        }
        d
    }

    pub fn parse(text: &str) -> Option<TcpExt> {
        let mut lines = text.lines();
        while let Some(header) = lines.next() {
            let values = lines.next()?;
            let (Some(h), Some(v)) = (
                header.strip_prefix("TcpExt:"),
                values.strip_prefix("TcpExt:"),
            ) else {
                continue;
            };
            let map: HashMap<&str, u64> = h
                .split_whitespace()
                .zip(v.split_whitespace().map(|x| x.parse().unwrap_or(0)))
                .collect();
            let mut out = TcpExt::default();
            for (i, n) in NAMES.iter().enumerate() {
                out.0[i] = map.get(n).copied().unwrap_or(0);
            }
            return Some(out);
        }
        None
    }

    pub fn read() -> Option<TcpExt> {
        Self::parse(&std::fs::read_to_string("/proc/net/netstat").ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcpext_and_ignores_other_sections() {
        let text = "TcpExt: SyncookiesSent SyncookiesRecv ListenDrops Other\n\
                    TcpExt: 471 3 12 9\n\
                    IpExt: InNoRoutes\nIpExt: 0\n";
        let t = TcpExt::parse(text).unwrap();
        assert_eq!(t.get("SyncookiesSent"), 471);
        assert_eq!(t.get("ListenDrops"), 12);
        assert_eq!(t.get("TCPReqQFullDrop"), 0);
        let later = TcpExt::parse(&text.replace("471 3 12", "500 3 10")).unwrap();
        let d = later.delta(&t);
        assert_eq!((d.get("SyncookiesSent"), d.get("ListenDrops")), (29, 0));
        assert_eq!(TcpExt::parse("garbage"), None);
    }

    #[test]
    fn reads_this_host() {
        assert!(TcpExt::read().is_some());
    }
}
