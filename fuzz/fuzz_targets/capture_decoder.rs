//! Arbitrary bytes through the capture decoder and everything `tracer replay` and `tracer export`
//! do with what it yields: the reader (header, block framing, resync), the payload and column
//! decoders, kernel-record decoding, the stream printer in both formats, CSV rows, the stats
//! aggregation restored from snapshots, and offline anomaly detection (`replay --anomalies`).
//! Errors are fine; a panic is a bug.
//!
//! Checksums would stop most mutations at the block framing, so each capture-shaped input is
//! also read a second time with its block checksums recomputed, and an input without the capture
//! magic is decoded as one block payload.

#![no_main]

use std::{io::Cursor, path::Path};

use libfuzzer_sys::fuzz_target;
use tracer::{
    aggregate::view::ProcSort,
    anomaly::Config,
    capture::{
        anomalies::{self, Redetect},
        export::csv_row,
        format::{BLOCK_HEADER_LEN, BLOCK_MAGIC, FILE_MAGIC, FILE_PREFIX_LEN, FileHeader},
        reader::{CaptureReader, Chunk},
        records::{Item, decode_payload},
        replay::{Shown, print_item},
        timeline::Timeline,
        walk::WalkReport,
    },
    clock::Clock,
    output::Format,
    stats,
    stream::View,
};
use tracer_common::Filter;

fn u32_at(b: &[u8], at: usize) -> usize {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes")) as usize
}

/// The input with every block's header and payload checksums made to hold, walking the blocks
/// by their (possibly mutated) lengths as the writer lays them out.
fn reseal(data: &[u8]) -> Vec<u8> {
    let mut b = data.to_vec();
    if b.len() < FILE_PREFIX_LEN {
        return b;
    }
    let mut at = FILE_PREFIX_LEN
        .saturating_add(u32_at(&b, 12))
        .saturating_add(4);
    while at.saturating_add(BLOCK_HEADER_LEN) <= b.len() && b[at..at + 4] == BLOCK_MAGIC {
        let payload = at + BLOCK_HEADER_LEN;
        let end = payload.saturating_add(u32_at(&b, at + 20));
        let crc = crc32fast::hash(&b[payload..end.min(b.len())]);
        b[at + 24..at + 28].copy_from_slice(&crc.to_le_bytes());
        let crc = crc32fast::hash(&b[at..at + 28]);
        b[at + 28..at + 32].copy_from_slice(&crc.to_le_bytes());
        at = end;
    }
    b
}

/// Everything replay and export do with the items of one file.
struct Replay {
    header: FileHeader,
    report: WalkReport,
    stats: Timeline,
    detect: Redetect,
    out: Vec<u8>,
}

impl Replay {
    fn new(header: FileHeader) -> Self {
        let mut stats = Timeline::new(Filter::ANY);
        stats.netns = header.netns;
        let mut detect = Redetect::new(Config::default(), &Filter::ANY);
        let _ = detect.file(&header, "fuzz");
        Self {
            header,
            report: WalkReport::default(),
            stats,
            detect,
            out: Vec::new(),
        }
    }

    fn item(&mut self, item: Item) {
        let shown = Shown {
            view: View {
                states: true,
                closes: true,
            },
            recorded_anomalies: true,
        };
        self.stats.apply(&item, &mut WalkReport::default());
        let mut found = self.detect.due(&item);
        found.extend(self.detect.apply(&item));
        for format in [Format::Human, Format::Json] {
            self.out.clear();
            let _ = print_item(
                &mut self.out,
                &self.header,
                format,
                &Filter::ANY,
                shown,
                item.clone(),
                &mut self.report,
            );
            let _ = anomalies::print(&mut self.out, &self.header, format, found.clone());
            if format == Format::Json {
                // `tracer export --format csv`.
                for line in self.out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    if let Ok(rec) = serde_json::from_slice(line) {
                        let _ = csv_row(&rec);
                    }
                }
            }
        }
    }

    fn finish(&mut self) {
        let losses = self.stats.losses.clone();
        let agg = self.stats.agg();
        let s = agg.stats(agg.now_ns, 10, ProcSort::default(), &losses);
        let at = Clock::with_offset(self.header.clock_offset_ns).wall(agg.now_ns);
        let _ = stats::json_line(&s, at);
        let _ = stats::render_human(&s, at, ProcSort::default());
    }
}

fn read_capture(data: &[u8]) {
    let Ok(mut reader) = CaptureReader::new(Path::new("fuzz"), Cursor::new(data)) else {
        return;
    };
    let mut replay = Replay::new(reader.header.clone());
    loop {
        match reader.next_chunk() {
            Ok(None) | Err(_) => break,
            Ok(Some(Chunk::Skipped(_))) => {
                replay.stats.gap();
                replay.detect.gap();
            }
            Ok(Some(Chunk::Block { items, .. })) => items.into_iter().for_each(|i| replay.item(i)),
        }
    }
    replay.finish();
}

fuzz_target!(|data: &[u8]| {
    if data.starts_with(&FILE_MAGIC) {
        read_capture(data);
        let sealed = reseal(data);
        if sealed != data {
            read_capture(&sealed);
        }
    } else if let Ok(items) = decode_payload(data) {
        let mut replay = Replay::new(FileHeader::placeholder());
        items.into_iter().for_each(|i| replay.item(i));
        replay.finish();
    }
});
