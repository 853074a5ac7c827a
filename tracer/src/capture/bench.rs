//! Write throughput and size per record of the capture path, on synthetic loopback traffic
//! shaped like `tracer-loadgen churn` (ten transitions per connection from two processes, slab
//! socket addresses, ephemeral ports). Called by the tests; prints nothing itself.

use std::{net::Ipv4Addr, path::Path, time::Instant};

use tracer_common::{AF_INET, EventKind, OwnerSource, RawEvent, state};

use super::{
    format::FileHeader,
    header_now, raw,
    writer::{CaptureWriter, Fsync, WriterOptions},
};
use crate::event::{Event, decode};

#[derive(Debug, Clone, Copy)]
pub struct BenchResult {
    pub records: u64,
    pub seconds: f64,
    pub bytes: u64,
}

impl BenchResult {
    pub fn records_per_sec(&self) -> f64 {
        self.records as f64 / self.seconds
    }

    pub fn bytes_per_record(&self) -> f64 {
        self.bytes as f64 / self.records as f64
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn comm(s: &str) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[..s.len()].copy_from_slice(s.as_bytes());
    c
}

/// `connections` loopback connections' worth of transition records (ten each), as decoded
/// events, interleaved as a few concurrent clients would produce them.
pub fn synthetic_events(connections: usize) -> Vec<Event> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut out = Vec::with_capacity(connections * 10);
    let mut ts = 1_000_000_000_000u64;
    let lo: [u8; 4] = Ipv4Addr::LOCALHOST.octets();
    let mut port = 32768u16;
    // Four connections in flight at a time: their records interleave.
    let mut pending: Vec<Vec<RawEvent>> = Vec::new();
    let mut made = 0;
    while made < connections || !pending.is_empty() {
        while pending.len() < 4 && made < connections {
            made += 1;
            port = if port == 60999 { 32768 } else { port + 1 };
            let client_sk = 0xffff_8881_0000_0000 | ((rng.next() % (1 << 16)) << 11);
            let server_sk = 0xffff_8881_0000_0000 | ((rng.next() % (1 << 16)) << 11);
            let mut evs = Vec::new();
            let mut mk = |sk: u64, local: u16, remote: u16, old, new, pid, name: &str, src| {
                let mut r = RawEvent::zeroed();
                r.sk = sk;
                r.family = AF_INET;
                r.saddr[..4].copy_from_slice(&lo);
                r.daddr[..4].copy_from_slice(&lo);
                r.sport = local;
                r.dport = remote;
                r.kind = EventKind::State as u8;
                r.old_state = old;
                r.new_state = new;
                r.pid = pid;
                r.comm = comm(name);
                r.owner_src = src as u8;
                r.netns = 4_026_531_840;
                evs.push(r);
            };
            use state::*;
            let (p, c, s) = (OwnerSource::Process, 4242, 4200);
            mk(client_sk, 0, 8080, CLOSE, SYN_SENT, c, "client-0", p);
            mk(
                client_sk,
                port,
                8080,
                SYN_SENT,
                ESTABLISHED,
                c,
                "client-0",
                p,
            );
            mk(
                server_sk,
                8080,
                port,
                LISTEN,
                SYN_RECV,
                s,
                "tracer-loadgen",
                OwnerSource::Listener,
            );
            mk(
                server_sk,
                8080,
                port,
                SYN_RECV,
                ESTABLISHED,
                s,
                "tracer-loadgen",
                OwnerSource::Listener,
            );
            mk(
                client_sk,
                port,
                8080,
                ESTABLISHED,
                FIN_WAIT1,
                c,
                "client-0",
                p,
            );
            mk(
                server_sk,
                8080,
                port,
                ESTABLISHED,
                CLOSE_WAIT,
                s,
                "accept-0",
                p,
            );
            mk(
                server_sk, 8080, port, CLOSE_WAIT, LAST_ACK, s, "accept-0", p,
            );
            mk(
                client_sk, port, 8080, FIN_WAIT1, FIN_WAIT2, c, "client-0", p,
            );
            mk(client_sk, port, 8080, FIN_WAIT2, CLOSE, c, "client-0", p);
            mk(server_sk, 8080, port, LAST_ACK, CLOSE, s, "accept-0", p);
            pending.push(evs);
        }
        let i = (rng.next() % pending.len() as u64) as usize;
        let mut r = pending[i].remove(0);
        ts += 800 + rng.next() % 2400;
        r.ts_ns = ts;
        if r.old_state != state::CLOSE && r.old_state != state::LISTEN {
            r.duration_ns = 2_000 + rng.next() % 200_000;
        }
        if r.new_state == state::CLOSE {
            r.bytes_sent = 100;
            r.bytes_received = 100;
            r.lifespan_ns = 50_000 + rng.next() % 500_000;
        }
        out.push(decode(&raw::to_bytes(&r)).expect("synthetic records decode"));
        if pending[i].is_empty() {
            pending.swap_remove(i);
        }
    }
    out
}

fn bench_header() -> FileHeader {
    header_now("bench", String::new(), 0)
}

/// Writes `events` through the recorder's path (re-encoding, columns, compression, framing,
/// file writes) to `path` and measures it.
pub fn write(events: &[Event], path: &Path, zstd_level: Option<i32>) -> BenchResult {
    let mut w = CaptureWriter::create(
        WriterOptions {
            path: path.to_owned(),
            max_size: None,
            max_files: None,
            fsync: Fsync::Never,
            zstd_level,
            block_bytes: super::record::BLOCK_BYTES,
        },
        bench_header(),
    )
    .expect("bench file");
    let start = Instant::now();
    for ev in events {
        w.kernel(&raw::encode(ev)).expect("bench write");
    }
    w.finish().expect("bench finish");
    let seconds = start.elapsed().as_secs_f64();
    let header_len = super::format::file_header(&bench_header()).len() as u64;
    let bytes = std::fs::metadata(path).map_or(0, |m| m.len()) - header_len;
    BenchResult {
        records: events.len() as u64,
        seconds,
        bytes,
    }
}
