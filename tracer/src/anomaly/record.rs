//! The anomaly record: what is wrong, who causes it, the evidence, and what to do.

use std::net::IpAddr;

use serde::Serialize;

use super::Finding;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    CloseWaitLeak,
    SynFlood,
    TimeWaitPileup,
    RetransmitStorm,
    ResetStorm,
    PeerFlood,
    ConnectFailures,
    ExposedListener,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Self::CloseWaitLeak,
        Self::SynFlood,
        Self::TimeWaitPileup,
        Self::RetransmitStorm,
        Self::ResetStorm,
        Self::PeerFlood,
        Self::ConnectFailures,
        Self::ExposedListener,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::CloseWaitLeak => "close_wait_leak",
            Self::SynFlood => "syn_flood",
            Self::TimeWaitPileup => "time_wait_pileup",
            Self::RetransmitStorm => "retransmit_storm",
            Self::ResetStorm => "reset_storm",
            Self::PeerFlood => "peer_flood",
            Self::ConnectFailures => "connect_failures",
            Self::ExposedListener => "exposed_listener",
        }
    }

    /// What to do about it, in one line.
    pub fn recommendation(self) -> &'static str {
        match self {
            Self::CloseWaitLeak => {
                "the peer closed but the application never called close(): fix the code path \
                 that abandons the socket (check error paths and connection pools); restarting \
                 the process frees them"
            }
            Self::SynFlood => {
                "handshakes on this port never complete: check the top sources, keep \
                 net.ipv4.tcp_syncookies=1, raise the listen backlog / tcp_max_syn_backlog, and \
                 rate-limit or block the sources upstream"
            }
            Self::TimeWaitPileup => {
                "many short connections closed by this host: reuse connections (keep-alive, \
                 pooling) toward the listed peers, or let the peer close first; \
                 net.ipv4.tcp_tw_reuse=1 helps outgoing connections"
            }
            Self::RetransmitStorm => {
                "segments to this peer are being lost: check the path (interface errors, \
                 congestion, MTU, firewall drops) and the peer's health"
            }
            Self::ResetStorm => {
                "many resets with this peer: connections to closed ports (a port scan or a \
                 misconfigured client) or a peer aborting connections; check the listed ports and \
                 block the source if unwanted"
            }
            Self::PeerFlood => {
                "one remote address holds very many connections: check whether it is a \
                 legitimate client (connection pooling gone wrong) or abuse, and apply \
                 per-source limits"
            }
            Self::ConnectFailures => {
                "connects to this destination keep failing: check that the service is up and \
                 listening there, and the route and firewall between"
            }
            Self::ExposedListener => {
                "a sensitive service listens on all interfaces: bind it to loopback or a private \
                 address, or firewall the port, unless exposure is intended"
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    /// Critical at five times the threshold.
    pub fn of(measure: f64, threshold: f64) -> Self {
        if measure >= 5.0 * threshold {
            Self::Critical
        } else {
            Self::Warning
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Raised,
    Cleared,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Self::Raised => "raised",
            Self::Cleared => "cleared",
        }
    }
}

/// Who the anomaly is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Subject {
    Process {
        pid: u32,
        comm: String,
    },
    /// A listening socket; `addr` is `ip:port`. Owner where known.
    Listener {
        addr: String,
        port: u16,
        pid: Option<u32>,
        comm: Option<String>,
    },
    Peer {
        addr: IpAddr,
    },
    /// A destination `ip:port` this host connects to.
    Destination {
        addr: String,
    },
    /// The host (network namespace) as a whole.
    Host,
}

impl Subject {
    /// Identifies the subject among anomalies of one kind.
    pub fn key(&self) -> String {
        match self {
            Self::Process { pid, .. } => format!("pid {pid}"),
            Self::Listener { addr, .. } => format!("listener {addr}"),
            Self::Peer { addr } => format!("peer {addr}"),
            Self::Destination { addr } => format!("destination {addr}"),
            Self::Host => "host".to_owned(),
        }
    }
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Process { pid, comm } => write!(f, "process {pid} ({comm})"),
            Self::Listener {
                addr, pid, comm, ..
            } => match (pid, comm) {
                (Some(p), Some(c)) => write!(f, "listener {addr} ({p} {c})"),
                _ => write!(f, "listener {addr}"),
            },
            Self::Peer { addr } => write!(f, "peer {addr}"),
            Self::Destination { addr } => write!(f, "destination {addr}"),
            Self::Host => f.write_str("host"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Anomaly {
    /// CLOCK_MONOTONIC nanoseconds of the tick that raised or cleared it.
    pub ts_ns: u64,
    pub kind: Kind,
    pub status: Status,
    pub severity: Severity,
    pub subject: Subject,
    pub summary: String,
    pub evidence: serde_json::Map<String, serde_json::Value>,
    /// Cleared records: how long it was active.
    pub active_ns: Option<u64>,
}

impl Anomaly {
    pub fn new(ts_ns: u64, kind: Kind, status: Status, f: Finding) -> Self {
        Self {
            ts_ns,
            kind,
            status,
            severity: Severity::Warning,
            subject: f.subject,
            summary: f.summary,
            evidence: f.evidence,
            active_ns: None,
        }
    }

    pub fn with_severity(mut self, s: Severity) -> Self {
        self.severity = s;
        self
    }

    pub fn with_active(mut self, ns: u64) -> Self {
        self.active_ns = Some(ns);
        self
    }

    pub fn recommendation(&self) -> &'static str {
        self.kind.recommendation()
    }

    /// The JSON object of the record, `time` given by the caller (wall clock).
    pub fn to_json(&self, time: String) -> serde_json::Value {
        #[derive(Serialize)]
        struct Json<'a> {
            #[serde(rename = "type")]
            ty: &'static str,
            time: String,
            kind: Kind,
            status: Status,
            severity: Severity,
            subject: &'a Subject,
            summary: &'a str,
            evidence: &'a serde_json::Map<String, serde_json::Value>,
            recommendation: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            active_s: Option<f64>,
        }
        serde_json::to_value(Json {
            ty: "anomaly",
            time,
            kind: self.kind,
            status: self.status,
            severity: self.severity,
            subject: &self.subject,
            summary: &self.summary,
            evidence: &self.evidence,
            recommendation: self.recommendation(),
            active_s: self.active_ns.map(|n| (n / 1_000_000) as f64 / 1000.0),
        })
        .unwrap_or(serde_json::Value::Null)
    }

    /// The human line, after the time of day.
    pub fn human(&self) -> String {
        match self.status {
            Status::Raised => format!(
                "ANOMALY {} {} {}: {} | {}",
                self.severity.name().to_uppercase(),
                self.kind.name(),
                self.subject,
                self.summary,
                self.recommendation()
            ),
            Status::Cleared => format!(
                "ANOMALY CLEARED {} {} after {:.0} s: {}",
                self.kind.name(),
                self.subject,
                self.active_ns.unwrap_or(0) as f64 / 1e9,
                self.summary
            ),
        }
    }
}
