//! Reading a capture: the header, then blocks one at a time. A damaged region is skipped and
//! reported (offset, bytes, records when the block header survived): the reader scans forward
//! for the next block magic whose header checksum holds, so one bad block costs only itself.

use std::{
    fs::File,
    io::{self, Read},
    path::{Path, PathBuf},
};

use super::{
    CaptureError,
    format::{
        self, BLOCK_HEADER_LEN, BLOCK_MAGIC, BlockHeader, FILE_MAGIC, FILE_PREFIX_LEN, FileHeader,
        MAX_HEADER_LEN,
    },
    records::{self, Item},
};

/// How much is read from the file at a time.
const READ_CHUNK: usize = 1 << 20;

/// A stretch of the file that could not be replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    pub offset: u64,
    pub bytes: u64,
    /// Items lost, when the block header was intact.
    pub items: Option<u32>,
    pub reason: &'static str,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "skipped {} bytes at offset {}", self.bytes, self.offset)?;
        if let Some(n) = self.items {
            write!(f, " ({n} records)")?;
        }
        write!(f, ": {}", self.reason)
    }
}

#[derive(Debug)]
pub enum Chunk {
    Block {
        offset: u64,
        seq: u32,
        items: Vec<Item>,
    },
    Skipped(Skip),
}

pub struct CaptureReader<R> {
    path: PathBuf,
    src: R,
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    start: usize,
    /// File offset of `buf[start]`.
    offset: u64,
    eof: bool,
    pub header: FileHeader,
    /// The header's checksum did not match, but it parsed.
    pub header_damaged: bool,
}

impl CaptureReader<File> {
    pub fn open(path: &Path) -> Result<Self, CaptureError> {
        let file = File::open(path).map_err(|e| CaptureError::io(path, e))?;
        Self::new(path, file)
    }
}

impl<R: Read> CaptureReader<R> {
    pub fn new(path: &Path, src: R) -> Result<Self, CaptureError> {
        let mut r = Self {
            path: path.to_owned(),
            src,
            buf: Vec::new(),
            start: 0,
            offset: 0,
            eof: false,
            header: FileHeader::placeholder(),
            header_damaged: false,
        };
        let bad = |why: &str| CaptureError::Header {
            path: path.to_owned(),
            why: why.to_owned(),
        };
        if !r.fill(FILE_PREFIX_LEN)? {
            return Err(bad("file is shorter than a capture header"));
        }
        let prefix = &r.buf[r.start..r.start + FILE_PREFIX_LEN];
        if prefix[..8] != FILE_MAGIC {
            return Err(CaptureError::NotCapture(path.to_owned()));
        }
        let version = u16::from_le_bytes([prefix[8], prefix[9]]);
        if version != format::FORMAT_VERSION {
            return Err(CaptureError::Version {
                path: path.to_owned(),
                found: version,
            });
        }
        let len = u32::from_le_bytes(prefix[12..16].try_into().expect("4 bytes")) as usize;
        if len > MAX_HEADER_LEN {
            return Err(bad("header length is implausible"));
        }
        let total = FILE_PREFIX_LEN + len + 4;
        if !r.fill(total)? {
            return Err(bad("file ends inside the header"));
        }
        let h = &r.buf[r.start..r.start + total];
        let crc = u32::from_le_bytes(h[total - 4..].try_into().expect("4 bytes"));
        r.header_damaged = crc32fast::hash(&h[..total - 4]) != crc;
        r.header = serde_json::from_slice(&h[FILE_PREFIX_LEN..total - 4])
            .map_err(|e| bad(&format!("header is not readable: {e}")))?;
        r.consume(total);
        Ok(r)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn available(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Makes at least `need` unconsumed bytes available; false at end of file.
    fn fill(&mut self, need: usize) -> Result<bool, CaptureError> {
        while self.available() < need && !self.eof {
            if self.start > 0 && self.start >= self.buf.len() / 2 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let old = self.buf.len();
            self.buf
                .resize(old + READ_CHUNK.max(need - self.available()), 0);
            let n = loop {
                match self.src.read(&mut self.buf[old..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.buf.truncate(old);
                        return Err(CaptureError::io(&self.path, e));
                    }
                }
            };
            self.buf.truncate(old + n);
            self.eof = n == 0;
        }
        Ok(self.available() >= need)
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        self.offset += n as u64;
    }

    /// The next block, or the next skipped stretch; `None` at the end of the file.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk>, CaptureError> {
        if !self.fill(BLOCK_HEADER_LEN)? {
            let rest = self.available();
            if rest == 0 {
                return Ok(None);
            }
            let skip = Skip {
                offset: self.offset,
                bytes: rest as u64,
                items: None,
                reason: "file ends inside a block header (an interrupted write)",
            };
            self.consume(rest);
            return Ok(Some(Chunk::Skipped(skip)));
        }
        let head: [u8; BLOCK_HEADER_LEN] = self.buf[self.start..self.start + BLOCK_HEADER_LEN]
            .try_into()
            .expect("header length");
        let h = match BlockHeader::parse(&head) {
            Ok(h) => h,
            Err(e) => return self.resync(e.0).map(Some),
        };
        let total = BLOCK_HEADER_LEN + h.stored_len as usize;
        if !self.fill(total)? {
            let rest = self.available();
            let skip = Skip {
                offset: self.offset,
                bytes: rest as u64,
                items: Some(h.items),
                reason: "file ends inside a block (an interrupted write)",
            };
            self.consume(rest);
            return Ok(Some(Chunk::Skipped(skip)));
        }
        let offset = self.offset;
        let stored = &self.buf[self.start + BLOCK_HEADER_LEN..self.start + total];
        let decoded = format::unpack(&h, stored).and_then(|raw| records::decode_payload(&raw));
        self.consume(total);
        Ok(Some(match decoded {
            Ok(items) => Chunk::Block {
                offset,
                seq: h.seq,
                items,
            },
            Err(e) => Chunk::Skipped(Skip {
                offset,
                bytes: total as u64,
                items: Some(h.items),
                reason: e.0,
            }),
        }))
    }

    /// Skips to the next position that starts with a block header whose checksum holds.
    fn resync(&mut self, reason: &'static str) -> Result<Chunk, CaptureError> {
        let offset = self.offset;
        self.consume(1);
        loop {
            let hay = &self.buf[self.start..];
            match hay.windows(4).position(|w| w == BLOCK_MAGIC) {
                Some(i) => {
                    self.consume(i);
                    if !self.fill(BLOCK_HEADER_LEN)? {
                        let rest = self.available();
                        self.consume(rest);
                        break;
                    }
                    let head: [u8; BLOCK_HEADER_LEN] = self.buf
                        [self.start..self.start + BLOCK_HEADER_LEN]
                        .try_into()
                        .expect("header length");
                    if BlockHeader::parse(&head).is_ok() {
                        break;
                    }
                    self.consume(1);
                }
                None => {
                    // Keep the last 3 bytes: a magic may straddle the end of what is buffered.
                    let keep = hay.len().min(3);
                    self.consume(hay.len() - keep);
                    if !self.fill(keep + 1)? {
                        let rest = self.available();
                        self.consume(rest);
                        break;
                    }
                }
            }
        }
        Ok(Chunk::Skipped(Skip {
            offset,
            bytes: self.offset - offset,
            items: None,
            reason,
        }))
    }
}
