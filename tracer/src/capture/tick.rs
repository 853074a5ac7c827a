//! A detection tick in a capture: when the recorder's detectors ran and what they read from the
//! host (TcpExt counters, `tcp_max_tw_buckets`, request and timewait dumps), so `replay
//! --anomalies` runs them at the same moments on the same inputs instead of reading this host.

use std::{collections::BTreeMap, net::SocketAddr};

use serde::{Deserialize, Serialize};
use tracer_common::state;

use super::{
    CorruptPayload,
    records::{get_sockaddr, put_sockaddr},
    varint::{self, Cursor},
};
use crate::{
    anomaly::{Gathered, netstat},
    snapshot::{DiagSocket, SockKind},
};

/// One detection round of the recorder.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tick {
    /// CLOCK_MONOTONIC ns the detectors ran at.
    pub at_ns: u64,
    pub inputs: Gathered,
}

/// The scalar inputs; the dumps follow in binary (they can hold many sockets).
#[derive(Serialize, Deserialize)]
struct Head {
    at_ns: u64,
    /// TcpExt counters by name; absent when `/proc/net/netstat` could not be read.
    netstat: Option<BTreeMap<String, u64>>,
    max_tw_buckets: Option<u64>,
}

impl Tick {
    pub fn encode(&self, out: &mut Vec<u8>) {
        let g = &self.inputs;
        let head = Head {
            at_ns: self.at_ns,
            netstat: g.netstat.map(|t| {
                netstat::NAMES
                    .iter()
                    .zip(t.0)
                    .map(|(n, v)| ((*n).to_owned(), v))
                    .collect()
            }),
            max_tw_buckets: g.max_tw_buckets,
        };
        let json = serde_json::to_vec(&head).expect("tick serializes");
        varint::put(out, json.len() as u64);
        out.extend_from_slice(&json);
        // Only TIME_WAIT timewait sockets matter to the detectors (not FIN_WAIT2 substates).
        let tw = g.time_wait.as_ref().map(|v| {
            v.iter()
                .filter(|s| s.state == state::TIME_WAIT)
                .collect::<Vec<_>>()
        });
        put_list(out, g.requests.as_ref().map(|v| v.iter().collect()));
        put_list(out, tw);
    }

    pub fn decode(c: &mut Cursor<'_>) -> Result<Self, CorruptPayload> {
        let head: Head =
            serde_json::from_slice(c.chunk()?).map_err(|_| CorruptPayload("bad tick record"))?;
        let netstat = head.netstat.map(|m| {
            let mut t = netstat::TcpExt::default();
            for (i, n) in netstat::NAMES.iter().enumerate() {
                t.0[i] = m.get(*n).copied().unwrap_or(0);
            }
            t
        });
        let requests = get_list(c, SockKind::Request, state::SYN_RECV)?;
        let time_wait = get_list(c, SockKind::TimeWait, state::TIME_WAIT)?;
        if !c.is_empty() {
            return Err(CorruptPayload("trailing bytes after the tick"));
        }
        Ok(Self {
            at_ns: head.at_ns,
            inputs: Gathered {
                netstat,
                requests,
                time_wait,
                max_tw_buckets: head.max_tw_buckets,
            },
        })
    }
}

/// `0` (not dumped) or `1 n (local remote)*`.
fn put_list(out: &mut Vec<u8>, list: Option<Vec<&DiagSocket>>) {
    let Some(list) = list else {
        out.push(0);
        return;
    };
    out.push(1);
    varint::put(out, list.len() as u64);
    for s in list {
        put_sockaddr(out, &s.local);
        put_sockaddr(out, &s.remote);
    }
}

fn get_list(
    c: &mut Cursor<'_>,
    kind: SockKind,
    st: u8,
) -> Result<Option<Vec<DiagSocket>>, CorruptPayload> {
    match c.u8()? {
        0 => return Ok(None),
        1 => {}
        _ => return Err(CorruptPayload("bad tick socket list")),
    }
    let n = usize::try_from(c.varint()?).map_err(|_| CorruptPayload("socket count"))?;
    // Each socket takes at least 14 bytes: bounds the allocation by what is there.
    if n > c.remaining() / 14 {
        return Err(CorruptPayload("more sockets than the tick holds"));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let local: SocketAddr = get_sockaddr(c)?;
        let remote = get_sockaddr(c)?;
        out.push(DiagSocket {
            kind,
            state: st,
            local,
            remote,
            inode: 0,
            uid: 0,
            cookie: 0,
            rqueue: 0,
            wqueue: 0,
        });
    }
    Ok(Some(out))
}
