//! Framing of a capture file: a versioned header, then self-contained blocks, each behind a
//! checksummed block header (docs/capture-format.md). A block is written with one `write` and
//! checked as a whole, so a file cut short by `kill -9` or a full disk loses at most its last,
//! incomplete block, and a damaged block is skipped by scanning for the next block magic.

use serde::{Deserialize, Serialize};

use super::CorruptPayload;

/// The first 8 bytes of a capture. The high-bit first byte and the CR LF catch transfers that
/// mangle binary files, as in PNG.
pub const FILE_MAGIC: [u8; 8] = *b"\x89TRCAP\r\n";
pub const FORMAT_VERSION: u16 = 1;
/// Magic, version, reserved, header length.
pub const FILE_PREFIX_LEN: usize = 16;
/// Header JSON larger than this is corruption, not a header.
pub const MAX_HEADER_LEN: usize = 1 << 20;

pub const BLOCK_MAGIC: [u8; 4] = *b"TBK1";
pub const BLOCK_HEADER_LEN: usize = 32;
/// Larger declared sizes are corruption: the reader never allocates more than this per block.
pub const MAX_BLOCK_LEN: usize = 256 << 20;

/// What the header says about the recording. JSON, so fields can be added without a version
/// bump; readers ignore fields they do not know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileHeader {
    pub tracer_version: String,
    pub host: String,
    pub kernel: String,
    /// Wall-clock start of the recording, RFC 3339.
    pub started: String,
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC at start, in ns: kernel timestamps in the blocks
    /// are monotonic, and replay maps them to wall time with this offset, exactly as the live
    /// stream did.
    pub clock_offset_ns: u64,
    /// Network namespace inode of the recorder (the aggregation counts only its sockets).
    pub netns: Option<u32>,
    /// What wrote the file: `record` or `flight`.
    pub source: String,
    /// The recorder's filter flags, as given on its command line.
    pub filter: String,
    /// Position of this file in a rotated series, from 1 (0: not rotated).
    pub file_index: u32,
    /// Which records of state events the recorder's stream showed (its `--type`): replay
    /// shows the same unless its own flags narrow it further.
    #[serde(default = "yes")]
    pub print_states: bool,
    #[serde(default = "yes")]
    pub print_closes: bool,
    /// Whether the recorder's stream showed retransmit records. A recorder that detects
    /// anomalies stores them even when its `--type` hid them: the detectors need them.
    #[serde(default = "yes")]
    pub print_retransmits: bool,
    /// The recorder ran anomaly detection: the file holds its detection ticks, anomaly records
    /// and every kind of kernel record the detectors read.
    #[serde(default)]
    pub anomalies: bool,
}

impl FileHeader {
    /// Stands in until a file's real header is read (or where there is none, as for a bare
    /// block payload): empty identity, every record type printed.
    pub fn placeholder() -> Self {
        Self {
            tracer_version: String::new(),
            host: String::new(),
            kernel: String::new(),
            started: String::new(),
            clock_offset_ns: 0,
            netns: None,
            source: String::new(),
            filter: String::new(),
            file_index: 0,
            print_states: true,
            print_closes: true,
            print_retransmits: true,
            anomalies: false,
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    None = 0,
    Zstd = 1,
}

impl TryFrom<u8> for Codec {
    type Error = CorruptPayload;
    fn try_from(v: u8) -> Result<Self, CorruptPayload> {
        match v {
            0 => Ok(Self::None),
            1 => Ok(Self::Zstd),
            _ => Err(CorruptPayload("unknown codec")),
        }
    }
}

pub fn file_header(h: &FileHeader) -> Vec<u8> {
    let json = serde_json::to_vec(h).expect("header serializes");
    let mut out = Vec::with_capacity(FILE_PREFIX_LEN + json.len() + 4);
    out.extend_from_slice(&FILE_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The fixed-size part of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockHeader {
    pub codec: Codec,
    /// Position of the block in its file, from 0: a gap shows how many blocks were skipped.
    pub seq: u32,
    pub items: u32,
    pub raw_len: u32,
    pub stored_len: u32,
    pub payload_crc: u32,
}

impl BlockHeader {
    pub fn to_bytes(&self) -> [u8; BLOCK_HEADER_LEN] {
        let mut b = [0u8; BLOCK_HEADER_LEN];
        b[..4].copy_from_slice(&BLOCK_MAGIC);
        b[4] = self.codec as u8;
        b[8..12].copy_from_slice(&self.seq.to_le_bytes());
        b[12..16].copy_from_slice(&self.items.to_le_bytes());
        b[16..20].copy_from_slice(&self.raw_len.to_le_bytes());
        b[20..24].copy_from_slice(&self.stored_len.to_le_bytes());
        b[24..28].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = crc32fast::hash(&b[..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses and checks a block header. Its own checksum guards the lengths, so a damaged
    /// length never makes the reader swallow the blocks after it.
    pub fn parse(b: &[u8; BLOCK_HEADER_LEN]) -> Result<Self, CorruptPayload> {
        if b[..4] != BLOCK_MAGIC {
            return Err(CorruptPayload("no block magic"));
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        if crc32fast::hash(&b[..28]) != u32_at(28) {
            return Err(CorruptPayload("block header checksum mismatch"));
        }
        if b[5..8] != [0, 0, 0] {
            return Err(CorruptPayload("reserved block header bytes set"));
        }
        let h = Self {
            codec: Codec::try_from(b[4])?,
            seq: u32_at(8),
            items: u32_at(12),
            raw_len: u32_at(16),
            stored_len: u32_at(20),
            payload_crc: u32_at(24),
        };
        if h.raw_len as usize > MAX_BLOCK_LEN || h.stored_len as usize > MAX_BLOCK_LEN {
            return Err(CorruptPayload("block larger than the format allows"));
        }
        if h.codec == Codec::None && h.raw_len != h.stored_len {
            return Err(CorruptPayload("uncompressed block with two lengths"));
        }
        Ok(h)
    }
}

/// Frames `raw` as a block, compressed with zstd at `level` when that makes it smaller.
pub fn frame_block(seq: u32, items: u32, raw: &[u8], zstd_level: Option<i32>) -> Vec<u8> {
    let compressed = zstd_level
        .and_then(|l| zstd::bulk::compress(raw, l).ok())
        .filter(|c| c.len() < raw.len());
    let (codec, stored) = match &compressed {
        Some(c) => (Codec::Zstd, c.as_slice()),
        None => (Codec::None, raw),
    };
    let h = BlockHeader {
        codec,
        seq,
        items,
        raw_len: raw.len() as u32,
        stored_len: stored.len() as u32,
        payload_crc: crc32fast::hash(stored),
    };
    let mut out = Vec::with_capacity(BLOCK_HEADER_LEN + stored.len());
    out.extend_from_slice(&h.to_bytes());
    out.extend_from_slice(stored);
    out
}

/// Checks and decompresses a block's stored payload.
pub fn unpack(h: &BlockHeader, stored: &[u8]) -> Result<Vec<u8>, CorruptPayload> {
    if crc32fast::hash(stored) != h.payload_crc {
        return Err(CorruptPayload("block payload checksum mismatch"));
    }
    match h.codec {
        Codec::None => Ok(stored.to_vec()),
        Codec::Zstd => {
            let raw = zstd::bulk::decompress(stored, h.raw_len as usize)
                .map_err(|_| CorruptPayload("zstd payload does not decompress"))?;
            if raw.len() != h.raw_len as usize {
                return Err(CorruptPayload(
                    "decompressed length differs from the header",
                ));
            }
            Ok(raw)
        }
    }
}
