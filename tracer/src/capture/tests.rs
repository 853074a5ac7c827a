//! Format round trips, damage handling (truncation at every length, bit flips, random bytes),
//! and the size/throughput of the write path.

use std::path::{Path, PathBuf};

use tracer_common::{AF_INET6, EventKind, RawEvent};

use super::{
    bench, header_now, raw,
    reader::{CaptureReader, Chunk},
    records::{Item, Mini, Refresh, SnapListener, SnapProc, SnapSocket, StateSnapshot},
    state,
    writer::{CaptureWriter, Fsync, WriterOptions},
};
use crate::{
    aggregate::Aggregator,
    event::decode,
    loss::{LossCause, LossTotals},
};

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tracer-capture-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn options(path: &Path, level: Option<i32>, block_bytes: usize) -> WriterOptions {
    WriterOptions {
        path: path.to_owned(),
        max_size: None,
        max_files: None,
        fsync: Fsync::Never,
        zstd_level: level,
        block_bytes,
    }
}

fn snapshot() -> StateSnapshot {
    StateSnapshot {
        at_ns: 77,
        sockets: vec![
            SnapSocket {
                state: 1,
                local: "127.0.0.1:8080".parse().unwrap(),
                remote: "127.0.0.1:40000".parse().unwrap(),
                pid: 42,
                comm: "nginx".into(),
            },
            SnapSocket {
                state: 10,
                local: "[::1]:443".parse().unwrap(),
                remote: "[::]:0".parse().unwrap(),
                pid: 0,
                comm: String::new(),
            },
        ],
        mini: Mini {
            time_wait: 3,
            fin_wait2: 1,
            syn_recv: 2,
        },
        listeners: vec![SnapListener {
            local: "[::1]:443".parse().unwrap(),
            accept_queue: 1,
            backlog: 128,
            inode: 9,
        }],
        procs: vec![SnapProc {
            pid: 42,
            comm: "nginx".into(),
            sent: 10,
            received: 20,
        }],
        transitions: vec![(2, 1, 5)],
        retransmits: 4,
        closes: vec![("orderly".into(), 3)],
        unknown_sockets: 1,
        stale_entries: 0,
        sock_map_evictions: 4,
        proc_map_evictions: 5,
        other_netns: 2,
        losses: vec![("ringbuf_full".into(), 6)],
        names: vec![(42, "nginx".into())],
    }
}

/// Every item kind, kernel records of several kinds (one the decoder does not know) included.
fn items() -> Vec<Item> {
    let evs = bench::synthetic_events(30);
    let mut out: Vec<Item> = vec![Item::Snapshot(Box::new(snapshot()))];
    for (i, ev) in evs.iter().enumerate() {
        out.push(Item::Kernel(raw::encode(ev)));
        if i == 7 {
            out.push(Item::Lost {
                ts_ns: ev.ts_ns,
                cause: "ringbuf_full".into(),
                count: 12,
            });
        }
    }
    let mut v6 = raw::encode(&evs[3]);
    v6.family = AF_INET6;
    v6.saddr = [0xfe; 16];
    v6.kind = EventKind::Retransmit as u8;
    v6.err = -110;
    v6._pad = [1, 2];
    out.push(Item::Kernel(v6));
    let mut future = RawEvent::zeroed();
    future.kind = 200;
    future.ts_ns = u64::MAX;
    out.push(Item::Kernel(future));
    out.push(Item::Refresh(Box::new(Refresh {
        started_ns: 5,
        mini: Mini::default(),
        listeners: Vec::new(),
        procs: Vec::new(),
        proc_map_evictions: 3,
        losses: vec![("decode_error".into(), 1)],
        names: vec![(42, "nginx".into())],
    })));
    out.push(Item::Tick(Box::new(super::anomaly_tests::tick())));
    out.push(Item::Printed {
        ts_ns: 9,
        json: r#"{"type":"anomaly","kind":"x"}"#.into(),
        human: "09:00:00 ANOMALY x".into(),
    });
    out
}

fn write(path: &Path, items: &[Item], level: Option<i32>, block_bytes: usize) -> u64 {
    let mut w = CaptureWriter::create(
        options(path, level, block_bytes),
        header_now("record", "--port 80".into(), 1234),
    )
    .unwrap();
    for it in items {
        w.push(it).unwrap();
    }
    w.finish().unwrap();
    w.stats.blocks
}

fn read_bytes(bytes: &[u8]) -> Result<(Vec<Item>, Vec<super::reader::Skip>), super::CaptureError> {
    let mut r = CaptureReader::new(Path::new("mem"), bytes)?;
    let (mut items, mut skips) = (Vec::new(), Vec::new());
    while let Some(c) = r.next_chunk()? {
        match c {
            Chunk::Block { items: i, .. } => items.extend(i),
            Chunk::Skipped(s) => skips.push(s),
        }
    }
    Ok((items, skips))
}

#[test]
fn every_item_round_trips_with_and_without_compression() {
    let items = items();
    for level in [None, Some(3)] {
        let path = tmp(&format!("roundtrip-{level:?}.trc"));
        let blocks = write(&path, &items, level, 2048);
        assert!(blocks > 1, "small blocks: several of them");
        let bytes = std::fs::read(&path).unwrap();
        let r = CaptureReader::new(&path, bytes.as_slice()).unwrap();
        assert_eq!(r.header.clock_offset_ns, 1234);
        assert_eq!(r.header.filter, "--port 80");
        assert!(!r.header_damaged);
        let (back, skips) = read_bytes(&bytes).unwrap();
        assert!(skips.is_empty(), "{skips:?}");
        assert_eq!(back, items);
    }
}

#[test]
fn captures_are_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let path = tmp("mode.trc");
    write(&path, &items(), Some(3), 1 << 16);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn kernel_records_round_trip_through_decode() {
    for ev in bench::synthetic_events(200) {
        let r = raw::encode(&ev);
        assert_eq!(decode(&raw::to_bytes(&r)).unwrap(), ev);
    }
}

#[test]
fn truncation_at_every_length_keeps_the_complete_blocks() {
    let items = items();
    let path = tmp("trunc.trc");
    write(&path, &items, Some(3), 1024);
    let bytes = std::fs::read(&path).unwrap();
    let header_len = {
        let r = CaptureReader::new(&path, bytes.as_slice()).unwrap();
        drop(r);
        super::format::file_header(&header_now("record", "--port 80".into(), 1234)).len()
    };
    let mut last = 0;
    for cut in 0..bytes.len() {
        match read_bytes(&bytes[..cut]) {
            Err(_) => assert!(cut < header_len, "the header is complete at {cut}"),
            Ok((got, skips)) => {
                // What is read is a prefix of what was written, growing with the cut.
                assert_eq!(got[..], items[..got.len()], "cut {cut}");
                assert!(got.len() >= last, "cut {cut}");
                last = got.len();
                let skipped: u64 = skips.iter().map(|s| s.bytes).sum();
                assert!(
                    skips.len() <= 1 && skipped < bytes.len() as u64,
                    "{skips:?}"
                );
            }
        }
    }
    assert_eq!(read_bytes(&bytes).unwrap().0, items);
}

#[test]
fn bit_flips_lose_only_the_damaged_block_and_say_where() {
    let items = items();
    let path = tmp("flips.trc");
    write(&path, &items, Some(3), 1024);
    let clean = std::fs::read(&path).unwrap();
    let header_len =
        super::format::file_header(&header_now("record", "--port 80".into(), 1234)).len();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..3000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let pos = header_len + (x as usize) % (clean.len() - header_len);
        let mut bytes = clean.clone();
        bytes[pos] ^= 1 << (x >> 60 & 7);
        let (got, skips) = read_bytes(&bytes).unwrap();
        assert_eq!(skips.len(), 1, "one flip, one skipped stretch: {skips:?}");
        let s = &skips[0];
        assert!(
            s.offset <= pos as u64 && pos as u64 <= s.offset + s.bytes,
            "{s:?} at {pos}"
        );
        // Everything read was written, in order; only the damaged block is missing.
        let mut it = items.iter();
        for g in &got {
            assert!(it.any(|i| i == g), "item not in the original order");
        }
        assert!(got.len() < items.len());
    }
}

#[test]
fn damaged_header_and_foreign_files_are_clear_errors() {
    let path = tmp("hdr.trc");
    write(&path, &items(), None, 1 << 16);
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(matches!(
        read_bytes(b"hello world, not a capture"),
        Err(super::CaptureError::NotCapture(_))
    ));
    let mut v2 = bytes.clone();
    v2[8] = 9;
    let e = read_bytes(&v2).unwrap_err().to_string();
    assert!(e.contains("version 9"), "{e}");
    // A flipped bit inside the JSON text (the host name) still reads, flagged as damaged.
    let host_at = bytes.windows(6).position(|w| w == b"\"host\"").unwrap() + 9;
    bytes[host_at] ^= 0x01;
    let r = CaptureReader::new(&path, bytes.as_slice()).unwrap();
    assert!(r.header_damaged);
}

#[test]
fn random_input_never_panics() {
    // A bounded stand-in for fuzzing: random bytes behind a valid header, and valid files with
    // random stretches overwritten.
    let path = tmp("fuzz.trc");
    write(&path, &items(), Some(3), 512);
    let clean = std::fs::read(&path).unwrap();
    let header_len =
        super::format::file_header(&header_now("record", "--port 80".into(), 1234)).len();
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..2000 {
        let mut bytes = clean.clone();
        if round % 2 == 0 {
            bytes.truncate(header_len);
            let n = (rnd() % 4096) as usize;
            bytes.extend((0..n).map(|_| rnd() as u8));
            // Sprinkle block magics so the resync path is exercised.
            for _ in 0..(rnd() % 4) {
                let p = header_len + (rnd() as usize) % (n + 1);
                let end = (p + 4).min(bytes.len());
                bytes[p..end].copy_from_slice(&super::format::BLOCK_MAGIC[..end - p]);
            }
        } else {
            let at = header_len + (rnd() as usize) % (clean.len() - header_len);
            let len = ((rnd() % 64) as usize).min(bytes.len() - at);
            for b in &mut bytes[at..at + len] {
                *b = rnd() as u8;
            }
        }
        let _ = read_bytes(&bytes);
    }
}

#[test]
fn payload_decoder_rejects_garbage_without_panicking() {
    let mut x: u32 = 0xdead_beef;
    for n in 0..3000usize {
        let junk: Vec<u8> = (0..n % 300)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let _ = super::records::decode_payload(&junk);
    }
}

#[test]
fn snapshots_restore_the_aggregation() {
    let evs = bench::synthetic_events(50);
    let mut agg = Aggregator::new(1 << 16, None);
    for ev in &evs[..230] {
        agg.apply(ev);
    }
    agg.set_process_names([(evs[0].owner.as_ref().map_or(1, |o| o.pid), "named".into())]);
    let mut losses = LossTotals::default();
    losses.add(LossCause::RingbufFull, 3);
    let snap = state::snapshot(&agg, &losses, agg.now_ns, None);
    let mut restored_losses = LossTotals::default();
    let mut restored = state::restore(&snap, None, None, &mut restored_losses);
    for ev in &evs[230..] {
        agg.apply(ev);
        restored.apply(ev);
    }
    let a = agg.stats(agg.now_ns, 10, Default::default(), &losses);
    let b = restored.stats(agg.now_ns, 10, Default::default(), &restored_losses);
    assert_eq!(a.states, b.states);
    assert_eq!(a.totals, b.totals);
    assert_eq!(a.closes, b.closes);
    assert_eq!(a.lost, b.lost);
    assert_eq!(a.processes, b.processes);
    assert_eq!(a.tracking.sockets, b.tracking.sockets);
    assert_eq!(agg.process_names(), restored.process_names());
}

#[test]
fn rotation_bounds_file_size_and_count() {
    let dir = tmp("rot");
    std::fs::create_dir_all(&dir).unwrap();
    let base = dir.join("cap.trc");
    let max = 1u64 << 20;
    let mut w = CaptureWriter::create(
        WriterOptions {
            max_size: Some(max),
            max_files: Some(3),
            ..options(&base, None, 64 << 10)
        },
        header_now("record", String::new(), 0),
    )
    .unwrap();
    let evs = bench::synthetic_events(12_000);
    for chunk in evs.chunks(crate::reader::BATCH) {
        if w.needs_rotation() {
            w.rotate().unwrap();
        }
        for ev in chunk {
            w.kernel(&raw::encode(ev)).unwrap();
        }
    }
    w.finish().unwrap();
    assert!(w.stats.files > 3, "{:?}", w.stats);
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    assert_eq!(names.len(), 3, "{names:?}");
    for p in &names {
        assert!(std::fs::metadata(p).unwrap().len() <= max, "{p:?}");
        let (items, skips) = read_bytes(&std::fs::read(p).unwrap()).unwrap();
        assert!(skips.is_empty() && !items.is_empty());
    }
    assert!(
        names[2]
            .to_string_lossy()
            .ends_with(&format!(".{:06}", w.stats.files))
    );
}

#[test]
fn write_throughput_and_size_per_record() {
    let evs = bench::synthetic_events(100_000);
    let plain = bench::write(&evs, &tmp("bench-plain.trc"), None);
    let zstd = bench::write(&evs, &tmp("bench-zstd.trc"), Some(3));
    eprintln!(
        "capture write: {:.0} records/s, {:.2} bytes/record uncompressed; {:.0} records/s, \
         {:.2} bytes/record zstd-3 ({} transition records)",
        plain.records_per_sec(),
        plain.bytes_per_record(),
        zstd.records_per_sec(),
        zstd.bytes_per_record(),
        zstd.records
    );
    // The format's size target for transition records, compressed.
    assert!(zstd.bytes_per_record() <= 16.0, "{zstd:?}");
    assert!(
        plain.bytes_per_record() < RawEvent::SIZE as f64 / 2.0,
        "{plain:?}"
    );
}

/// Regenerates the cargo-fuzz seed corpus (`fuzz/corpus/capture_decoder/`): small valid captures
/// holding every item kind, stored and zstd-compressed. Run with
/// `cargo test -p tracer --lib capture::tests::write_fuzz_seeds -- --ignored`.
#[test]
#[ignore = "writes the committed fuzz seeds"]
fn write_fuzz_seeds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/capture_decoder");
    std::fs::create_dir_all(&dir).unwrap();
    let all = items();
    // Every non-kernel item, the last two kernel records (IPv6, unknown kind) and a few others.
    let kernel_at: Vec<usize> = (0..all.len())
        .filter(|&i| matches!(all[i], Item::Kernel(_)))
        .collect();
    let keep = |i: usize| {
        let k = kernel_at.iter().position(|&j| j == i);
        k.is_none_or(|k| k < 10 || k + 2 >= kernel_at.len())
    };
    let every: Vec<Item> = (0..all.len())
        .filter(|&i| keep(i))
        .map(|i| all[i].clone())
        .collect();
    let kernel_only: Vec<Item> = kernel_at[..8].iter().map(|&i| all[i].clone()).collect();
    for (name, items, level, block_bytes) in [
        ("every-item-plain.trc", &every[..], None, 512),
        ("every-item-zstd.trc", &every[..], Some(3), 1024),
        ("kernel-only-plain.trc", &kernel_only[..], None, 1 << 16),
    ] {
        let path = tmp(name);
        write(&path, items, level, block_bytes);
        let bytes = std::fs::read(&path).unwrap();
        assert!(read_bytes(&bytes).unwrap().1.is_empty());
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    // A bare block payload: the fuzz target decodes inputs without the capture magic as one.
    let mut b = super::records::BlockBuilder::default();
    every.iter().for_each(|i| b.push(i));
    let payload = b.finish();
    assert_eq!(super::records::decode_payload(&payload).unwrap(), every);
    std::fs::write(dir.join("every-item.payload"), payload).unwrap();
}
