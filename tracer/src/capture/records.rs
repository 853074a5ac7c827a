//! What a block holds, and the block payload encoding: a tag per item (the order), the kernel
//! records in columns ([`super::columns`]), and every other item behind its length.

use serde::{Deserialize, Serialize};
use tracer_common::RawEvent;

use super::{
    CorruptPayload, columns,
    tick::Tick,
    varint::{self, Cursor},
};

/// One item of a capture, in stream order.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A kernel ring-buffer record, whatever its kind.
    Kernel(RawEvent),
    /// An in-band loss report, as the stream printed it.
    Lost {
        ts_ns: u64,
        cause: String,
        count: u64,
    },
    /// The aggregation state, so replay can start at this point.
    Snapshot(Box<StateSnapshot>),
    /// A periodic reconciliation: what no transition reports.
    Refresh(Box<Refresh>),
    /// A record of a kind this format has no dedicated encoding for, stored as printed.
    Printed {
        ts_ns: u64,
        json: String,
        human: String,
    },
    /// A detection round of the recorder, with the host inputs it read.
    Tick(Box<Tick>),
    /// An item of a newer format version; skipped and counted.
    Unknown { tag: u8 },
}

const TAG_KERNEL: u8 = 0;
const TAG_LOST: u8 = 1;
const TAG_SNAPSHOT: u8 = 2;
const TAG_REFRESH: u8 = 3;
const TAG_PRINTED: u8 = 4;
const TAG_TICK: u8 = 5;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mini {
    pub time_wait: u64,
    pub fin_wait2: u64,
    pub syn_recv: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapListener {
    pub local: std::net::SocketAddr,
    pub accept_queue: u32,
    pub backlog: u32,
    pub inode: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapProc {
    pub pid: u32,
    pub comm: String,
    pub sent: u64,
    pub received: u64,
}

/// A full socket of the aggregation table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapSocket {
    pub state: u8,
    pub local: std::net::SocketAddr,
    pub remote: std::net::SocketAddr,
    pub pid: u32,
    pub comm: String,
}

/// Everything an aggregator needs to continue from this point.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StateSnapshot {
    /// CLOCK_MONOTONIC ns when it was taken.
    pub at_ns: u64,
    pub sockets: Vec<SnapSocket>,
    pub mini: Mini,
    pub listeners: Vec<SnapListener>,
    pub procs: Vec<SnapProc>,
    /// `(old, new, count)` of every transition applied so far.
    pub transitions: Vec<(u8, u8, u64)>,
    pub retransmits: u64,
    pub closes: Vec<(String, u64)>,
    pub unknown_sockets: u64,
    pub stale_entries: u64,
    /// Absent from captures written before it existed.
    #[serde(default)]
    pub sock_map_evictions: u64,
    /// Absent from captures written before it existed.
    #[serde(default)]
    pub proc_map_evictions: u64,
    pub other_netns: u64,
    /// Loss totals by cause name.
    pub losses: Vec<(String, u64)>,
    /// Process names (`/proc/PID/comm`) as the recorder knew them: rows and anomaly subjects
    /// name processes, not the thread an event saw.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<(u32, String)>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Refresh {
    /// CLOCK_MONOTONIC ns when the reconciliation dump began.
    pub started_ns: u64,
    pub mini: Mini,
    pub listeners: Vec<SnapListener>,
    pub procs: Vec<SnapProc>,
    /// See [`StateSnapshot::proc_map_evictions`].
    #[serde(default)]
    pub proc_map_evictions: u64,
    pub losses: Vec<(String, u64)>,
    /// Process names as the recorder knew them (see [`StateSnapshot::names`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<(u32, String)>,
}

/// Collects items into one block payload.
#[derive(Default)]
pub struct BlockBuilder {
    tags: Vec<u8>,
    kernel: columns::ColumnWriter,
    other: Vec<u8>,
    /// Smallest and largest kernel timestamps, for the flight recorder's window.
    pub first_ts: Option<u64>,
    pub last_ts: u64,
}

impl BlockBuilder {
    pub fn items(&self) -> usize {
        self.tags.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    /// Payload bytes so far (an upper bound of what the block stores).
    pub fn raw_len(&self) -> usize {
        self.tags.len() + self.kernel.encoded_len() + self.other.len() + 32
    }

    pub fn kernel(&mut self, e: &RawEvent) {
        self.tags.push(TAG_KERNEL);
        self.kernel.push(e);
        self.first_ts.get_or_insert(e.ts_ns);
        self.last_ts = self.last_ts.max(e.ts_ns);
    }

    pub fn push(&mut self, item: &Item) {
        let mut body = Vec::new();
        let tag = match item {
            Item::Kernel(e) => return self.kernel(e),
            Item::Lost {
                ts_ns,
                cause,
                count,
            } => {
                varint::put(&mut body, *ts_ns);
                varint::put(&mut body, cause.len() as u64);
                body.extend_from_slice(cause.as_bytes());
                varint::put(&mut body, *count);
                TAG_LOST
            }
            Item::Snapshot(s) => {
                encode_snapshot(s, &mut body);
                TAG_SNAPSHOT
            }
            Item::Refresh(r) => {
                body = serde_json::to_vec(r).expect("refresh serializes");
                TAG_REFRESH
            }
            Item::Printed { ts_ns, json, human } => {
                varint::put(&mut body, *ts_ns);
                for s in [json, human] {
                    varint::put(&mut body, s.len() as u64);
                    body.extend_from_slice(s.as_bytes());
                }
                TAG_PRINTED
            }
            Item::Tick(t) => {
                t.encode(&mut body);
                TAG_TICK
            }
            Item::Unknown { .. } => return,
        };
        self.tags.push(tag);
        varint::put(&mut self.other, body.len() as u64);
        self.other.extend_from_slice(&body);
    }

    /// The payload; the builder is empty afterwards.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.raw_len());
        varint::put(&mut out, self.tags.len() as u64);
        out.extend_from_slice(&self.tags);
        varint::put(&mut out, self.kernel.len() as u64);
        self.kernel.finish_into(&mut out);
        out.extend_from_slice(&self.other);
        self.tags.clear();
        self.other.clear();
        self.first_ts = None;
        self.last_ts = 0;
        out
    }
}

fn string(b: &[u8]) -> Result<String, CorruptPayload> {
    String::from_utf8(b.to_vec()).map_err(|_| CorruptPayload("text is not UTF-8"))
}

/// Decodes a block payload into its items, in order.
pub fn decode_payload(raw: &[u8]) -> Result<Vec<Item>, CorruptPayload> {
    let mut c = Cursor::new(raw);
    let n = usize::try_from(c.varint()?).map_err(|_| CorruptPayload("item count"))?;
    let tags = c.bytes(n)?;
    let n_kernel = usize::try_from(c.varint()?).map_err(|_| CorruptPayload("record count"))?;
    if tags.iter().filter(|&&t| t == TAG_KERNEL).count() != n_kernel {
        return Err(CorruptPayload("record count differs from the tags"));
    }
    let mut kernel = columns::decode(&mut c, n_kernel)?.into_iter();
    let mut out = Vec::with_capacity(n);
    for &tag in tags {
        if tag == TAG_KERNEL {
            out.push(Item::Kernel(kernel.next().expect("counted above")));
            continue;
        }
        let body = c.chunk()?;
        let mut b = Cursor::new(body);
        out.push(match tag {
            TAG_LOST => {
                let ts_ns = b.varint()?;
                let cause = string(b.chunk()?)?;
                let count = b.varint()?;
                Item::Lost {
                    ts_ns,
                    cause,
                    count,
                }
            }
            TAG_SNAPSHOT => Item::Snapshot(Box::new(decode_snapshot(&mut b)?)),
            TAG_REFRESH => Item::Refresh(Box::new(
                serde_json::from_slice(body).map_err(|_| CorruptPayload("bad refresh record"))?,
            )),
            TAG_PRINTED => {
                let ts_ns = b.varint()?;
                let json = string(b.chunk()?)?;
                let human = string(b.chunk()?)?;
                Item::Printed { ts_ns, json, human }
            }
            TAG_TICK => Item::Tick(Box::new(Tick::decode(&mut b)?)),
            tag => Item::Unknown { tag },
        });
    }
    if !c.is_empty() {
        return Err(CorruptPayload("trailing bytes after the last item"));
    }
    Ok(out)
}

/// Sockets in a compact binary list (a table can hold millions); the rest as JSON.
fn encode_snapshot(s: &StateSnapshot, out: &mut Vec<u8>) {
    let rest = StateSnapshot {
        sockets: Vec::new(),
        ..s.clone()
    };
    let json = serde_json::to_vec(&rest).expect("snapshot serializes");
    varint::put(out, json.len() as u64);
    out.extend_from_slice(&json);
    varint::put(out, s.sockets.len() as u64);
    for k in &s.sockets {
        out.push(k.state);
        put_sockaddr(out, &k.local);
        put_sockaddr(out, &k.remote);
        varint::put(out, u64::from(k.pid));
        varint::put(out, k.comm.len() as u64);
        out.extend_from_slice(k.comm.as_bytes());
    }
}

pub(super) fn put_sockaddr(out: &mut Vec<u8>, a: &std::net::SocketAddr) {
    match a.ip() {
        std::net::IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        std::net::IpAddr::V6(ip) => {
            out.push(16);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&a.port().to_le_bytes());
}

pub(super) fn get_sockaddr(c: &mut Cursor<'_>) -> Result<std::net::SocketAddr, CorruptPayload> {
    let ip: std::net::IpAddr = match c.u8()? {
        4 => <[u8; 4]>::try_from(c.bytes(4)?).expect("4 bytes").into(),
        16 => <[u8; 16]>::try_from(c.bytes(16)?).expect("16 bytes").into(),
        _ => return Err(CorruptPayload("bad socket address")),
    };
    let port = u16::from_le_bytes(c.bytes(2)?.try_into().expect("2 bytes"));
    Ok(std::net::SocketAddr::new(ip, port))
}

fn decode_snapshot(c: &mut Cursor<'_>) -> Result<StateSnapshot, CorruptPayload> {
    let mut s: StateSnapshot =
        serde_json::from_slice(c.chunk()?).map_err(|_| CorruptPayload("bad snapshot record"))?;
    let n = usize::try_from(c.varint()?).map_err(|_| CorruptPayload("socket count"))?;
    // Each socket takes at least 14 bytes: bounds the allocation by what is there.
    if n > c.remaining() / 14 {
        return Err(CorruptPayload("more sockets than the snapshot holds"));
    }
    s.sockets.reserve(n);
    for _ in 0..n {
        let state = c.u8()?;
        let local = get_sockaddr(c)?;
        let remote = get_sockaddr(c)?;
        let pid = u32::try_from(c.varint()?).map_err(|_| CorruptPayload("pid out of range"))?;
        let comm = string(c.chunk()?)?;
        s.sockets.push(SnapSocket {
            state,
            local,
            remote,
            pid,
            comm,
        });
    }
    if !c.is_empty() {
        return Err(CorruptPayload("trailing bytes after the snapshot"));
    }
    Ok(s)
}
