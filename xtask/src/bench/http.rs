//! Just enough HTTP/1.1 to talk to `tracer agent` without a client dependency.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// Largest response read; /metrics and /stats?top=1 are a few KiB.
const MAX_BODY: u64 = 16 << 20;

/// Causes that drop events, as in the tracer's `lost N` summary; the map causes only degrade
/// attribution and are left out, so the agent's number compares with the stream configs'.
const DROPPING: [&str; 4] = [
    "ringbuf_full",
    "recursion_miss",
    "decode_error",
    UNDELIVERED,
];

/// Events a tracer lost: all dropping causes, and of them the hits on which the kernel ran no
/// BPF program at all (none of ours, none of any other tracer's).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Lost {
    pub total: f64,
    pub undelivered: f64,
}

impl std::ops::AddAssign for Lost {
    fn add_assign(&mut self, other: Self) {
        self.total += other.total;
        self.undelivered += other.undelivered;
    }
}

/// The cause of hits the kernel handed to no BPF program.
pub const UNDELIVERED: &str = "kernel_undelivered";

/// `GET path`; returns the status code and body.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.take(MAX_BODY).read_to_string(&mut buf)?;
    let (head, body) = buf
        .split_once("\r\n\r\n")
        .context("no end of HTTP headers")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    Ok((status, body.to_owned()))
}

/// Polls `/healthz` until it answers 200. The agent binds its port before attaching and taking
/// the snapshot, so a request made early waits for it instead of failing.
pub fn wait_healthy(addr: SocketAddr, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Ok((200, _)) = get(addr, "/healthz", left.max(Duration::from_millis(1))) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("agent at {addr} not healthy within {limit:?}")
}

/// Events the agent lost, from its Prometheus text.
pub fn lost_from_metrics(text: &str) -> Lost {
    let causes: Vec<(&str, f64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("tracer_lost_events_total{cause=\""))
        .filter_map(|rest| rest.split_once("\"}"))
        .filter(|(cause, _)| DROPPING.contains(cause))
        .filter_map(|(cause, n)| Some((cause, n.trim().parse::<f64>().ok()?)))
        .collect();
    Lost {
        total: causes.iter().map(|(_, n)| n).sum(),
        undelivered: causes
            .iter()
            .filter(|(cause, _)| *cause == UNDELIVERED)
            .map(|(_, n)| n)
            .sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_dropping_causes_only() {
        let text = "# HELP tracer_lost_events_total x\n\
                    tracer_lost_events_total{cause=\"sock_map_full\"} 7\n\
                    tracer_lost_events_total{cause=\"ringbuf_full\"} 3\n\
                    tracer_lost_events_total{cause=\"kernel_undelivered\"} 2\n\
                    tracer_events_total 100\n";
        let lost = lost_from_metrics(text);
        assert_eq!((lost.total, lost.undelivered), (5.0, 2.0));
        assert_eq!(lost_from_metrics(""), Lost::default());
    }
}
