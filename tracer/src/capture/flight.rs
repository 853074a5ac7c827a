//! The agent's flight recorder: the last `seconds` (at most `max_bytes`, compressed) of records
//! in memory, in segments that each begin with an aggregation snapshot, so every dump replays
//! on its own, `--stats` included. Dumps go to `dir` as ordinary captures (mode 0600); only the
//! newest `keep` dumps are kept.
//!
//! A dump that cannot be written (full disk, unwritable directory) is reported with what it
//! dropped; the history stays in memory and the agent keeps running.

use std::{
    collections::VecDeque,
    fs::OpenOptions,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use super::{
    CaptureError, anomalies,
    format::{self, BlockHeader, FileHeader},
    header_now, raw,
    records::{BlockBuilder, Item},
    state,
    tick::Tick,
};
use crate::{
    aggregate::Aggregator,
    anomaly::{Anomaly, Gathered},
    clock::Clock,
    loss::LossTotals,
    reader::Batch,
};

/// Payload size at which an in-memory block is sealed.
const BLOCK_BYTES: usize = 128 << 10;

#[derive(Debug, Clone)]
pub struct FlightOptions {
    pub dir: PathBuf,
    pub seconds: Duration,
    pub max_bytes: u64,
    pub keep: u32,
    pub zstd_level: Option<i32>,
}

struct Segment {
    /// CLOCK_MONOTONIC ns when it began.
    start_ns: u64,
    /// Sealed blocks: header (its `seq` is rewritten at dump time) and stored payload.
    blocks: Vec<(BlockHeader, Vec<u8>)>,
    bytes: u64,
    items: u64,
}

/// What a dump wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dump {
    pub path: PathBuf,
    pub items: u64,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("flight recorder dump of {items} records ({bytes} bytes) dropped: {source}")]
pub struct DumpError {
    pub items: u64,
    pub bytes: u64,
    pub source: CaptureError,
}

pub struct FlightRecorder {
    opts: FlightOptions,
    header: FileHeader,
    segments: VecDeque<Segment>,
    open: BlockBuilder,
    open_items: u64,
    losses: LossTotals,
    /// Segments evicted so far (bounded history).
    pub evicted_segments: u64,
}

impl FlightRecorder {
    pub fn new(opts: FlightOptions, clock_offset_ns: u64) -> Self {
        let mut header = header_now("flight", String::new(), clock_offset_ns);
        header.file_index = 0;
        Self {
            opts,
            header,
            segments: VecDeque::new(),
            open: BlockBuilder::default(),
            open_items: 0,
            losses: LossTotals::default(),
            evicted_segments: 0,
        }
    }

    /// Segment length: a quarter of the window, so at most a quarter more than asked is kept.
    fn segment_ns(&self) -> u64 {
        (self.opts.seconds.as_nanos() as u64 / 4).max(1_000_000_000)
    }

    pub fn held_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum::<u64>() + self.open.raw_len() as u64
    }

    pub fn held_items(&self) -> u64 {
        self.segments.iter().map(|s| s.items).sum::<u64>() + self.open_items
    }

    fn seal(&mut self) {
        if self.open.is_empty() {
            return;
        }
        let items = self.open.items() as u32;
        let payload = self.open.finish();
        let framed = format::frame_block(0, items, &payload, self.opts.zstd_level);
        let head: [u8; format::BLOCK_HEADER_LEN] = framed[..format::BLOCK_HEADER_LEN]
            .try_into()
            .expect("framed block has a header");
        let h = BlockHeader::parse(&head).expect("a block we framed parses");
        let seg = self.segments.back_mut().expect("a segment is open");
        seg.bytes += framed.len() as u64;
        seg.items += u64::from(items);
        seg.blocks
            .push((h, framed[format::BLOCK_HEADER_LEN..].to_vec()));
        self.open_items = 0;
    }

    fn start_segment(&mut self, agg: &Aggregator, now_ns: u64) {
        self.seal();
        self.segments.push_back(Segment {
            start_ns: now_ns,
            blocks: Vec::new(),
            bytes: 0,
            items: 0,
        });
        let snap = state::snapshot(agg, &self.losses, now_ns, None);
        self.open.push(&Item::Snapshot(Box::new(snap)));
        self.open_items += 1;
    }

    fn evict(&mut self, now_ns: u64) {
        let window = self.opts.seconds.as_nanos() as u64;
        while self.segments.len() > 1 {
            let too_big = self.held_bytes() > self.opts.max_bytes;
            // The second segment alone still covers the window: the first is not needed.
            let too_old = self.segments[1].start_ns <= now_ns.saturating_sub(window);
            if !(too_big || too_old) {
                break;
            }
            self.segments.pop_front();
            self.evicted_segments += 1;
        }
    }

    /// The tap: records every event of the batch.
    pub fn tap(&mut self, batch: &Batch, agg: &Aggregator) {
        let now = Clock::now_mono_ns();
        let seg_full = self.segments.back().is_none_or(|s| {
            now.saturating_sub(s.start_ns) >= self.segment_ns()
                || s.bytes >= self.opts.max_bytes / 4
        });
        if seg_full {
            self.start_segment(agg, now);
            self.evict(now);
        }
        for ev in batch.iter().flatten() {
            self.open.kernel(&raw::encode(ev));
            self.open_items += 1;
        }
        if self.open.raw_len() >= BLOCK_BYTES {
            self.seal();
        }
    }

    /// In-band loss reports, as the stream would print them.
    pub fn lost(&mut self, losses: &LossTotals, new: &[(crate::loss::LossCause, u64)]) {
        self.losses = losses.clone();
        if self.segments.is_empty() {
            return;
        }
        let now = Clock::now_mono_ns();
        for &(cause, count) in new {
            self.push(&Item::Lost {
                ts_ns: now,
                cause: cause.name().to_owned(),
                count,
            });
        }
    }

    /// Whether the agent detects anomalies: its dumps then hold the detection ticks.
    pub fn detecting(&mut self, on: bool) {
        self.header.anomalies = on;
    }

    fn push(&mut self, item: &Item) {
        // Before the first segment there is no snapshot for the item to apply to.
        if !self.segments.is_empty() {
            self.open.push(item);
            self.open_items += 1;
        }
    }

    /// A reconciliation just ran: what it read, for replay to apply at this point.
    pub fn refreshed(&mut self, agg: &Aggregator, losses: &LossTotals) {
        let r = state::refresh(agg, losses, Clock::now_mono_ns());
        self.push(&Item::Refresh(Box::new(r)));
    }

    /// A detection round: its tick, then its anomaly records as the stream prints them.
    pub fn detected(&mut self, at_ns: u64, inputs: Gathered, found: &[Anomaly]) {
        self.push(&Item::Tick(Box::new(Tick { at_ns, inputs })));
        let clock = Clock::with_offset(self.header.clock_offset_ns);
        for a in found {
            self.push(&anomalies::printed(a, clock));
        }
    }

    /// Writes the history to a new capture in the dump directory, then applies retention.
    pub fn dump(&mut self, reason: &str) -> Result<Dump, DumpError> {
        self.seal();
        let items = self.held_items();
        let stamp = humantime::format_rfc3339_micros(SystemTime::now())
            .to_string()
            .replace([':', '.'], "");
        let reason: String = reason
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let path = self.opts.dir.join(format!("flight-{stamp}-{reason}.trc"));
        let mut header = self.header.clone();
        header.started = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
        let mut bytes = format::file_header(&header);
        let mut seq = 0u32;
        for seg in &self.segments {
            for (h, stored) in &seg.blocks {
                let h = BlockHeader { seq, ..*h };
                bytes.extend_from_slice(&h.to_bytes());
                bytes.extend_from_slice(stored);
                seq += 1;
            }
        }
        let len = bytes.len() as u64;
        let fail = |source| DumpError {
            items,
            bytes: len,
            source,
        };
        write_new(&path, &bytes).map_err(fail)?;
        self.retain();
        Ok(Dump {
            path,
            items,
            bytes: len,
        })
    }

    /// Deletes the oldest dumps beyond `keep`.
    fn retain(&self) {
        let Ok(dir) = std::fs::read_dir(&self.opts.dir) else {
            return;
        };
        let mut dumps: Vec<PathBuf> = dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("flight-") && n.ends_with(".trc"))
            })
            .collect();
        dumps.sort();
        let excess = dumps.len().saturating_sub(self.opts.keep as usize);
        for old in &dumps[..excess] {
            let _ = std::fs::remove_file(old);
        }
    }
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<(), CaptureError> {
    let io = |e| CaptureError::io(path, e);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    let written = f.write_all(bytes).and_then(|()| f.sync_all());
    if let Err(e) = written {
        // A partial dump would look like a damaged capture: remove it.
        drop(f);
        let _ = std::fs::remove_file(path);
        return Err(io(e));
    }
    Ok(())
}
