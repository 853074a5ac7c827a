//! Writing captures to disk: blocks of at most `block_bytes`, size-bounded rotation over at
//! most `max_files` files, an fsync policy, mode 0600 (captures name processes and peers).
//!
//! A failed write (a full disk) drops that block only: the file is cut back to its last
//! complete block, the loss is counted, and the next block is tried again.

use std::{
    collections::VecDeque,
    fs::{File, OpenOptions},
    io::{Seek, SeekFrom, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use tracer_common::RawEvent;

use super::{
    CaptureError,
    format::{self, FileHeader},
    records::{BlockBuilder, Item},
};

/// When written data is forced to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fsync {
    /// After every block: at most one block is lost on power failure.
    Block,
    /// When a file is complete (rotation and exit).
    Rotate,
    /// Never; the kernel writes back when it likes.
    Never,
}

#[derive(Debug, Clone)]
pub struct WriterOptions {
    pub path: PathBuf,
    /// Rotate before a file would grow past this many bytes.
    pub max_size: Option<u64>,
    /// Keep at most this many files of the series (oldest deleted).
    pub max_files: Option<u32>,
    pub fsync: Fsync,
    /// zstd level; `None` stores blocks uncompressed.
    pub zstd_level: Option<i32>,
    /// A block is sealed when its payload reaches this size.
    pub block_bytes: usize,
}

/// Upper bound of the payload one tap call (one reader batch) adds; rotation leaves room for
/// it so a file stays under `max_size`.
pub const BATCH_BOUND: usize = crate::reader::BATCH * (RawEvent::SIZE + 32);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteStats {
    pub items: u64,
    pub blocks: u64,
    pub bytes: u64,
    pub files: u32,
    pub dropped_items: u64,
    pub dropped_blocks: u64,
}

pub struct CaptureWriter {
    opts: WriterOptions,
    header: FileHeader,
    file: File,
    current: PathBuf,
    file_len: u64,
    seq: u32,
    block: BlockBuilder,
    kept: VecDeque<PathBuf>,
    pub stats: WriteStats,
}

/// Name of file `index` of a rotated series.
pub fn series_path(base: &Path, index: u32) -> PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(format!(".{index:06}"));
    PathBuf::from(s)
}

fn open_new(path: &Path, header: &FileHeader) -> Result<(File, u64), CaptureError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| CaptureError::io(path, e))?;
    let bytes = format::file_header(header);
    file.write_all(&bytes)
        .map_err(|e| CaptureError::io(path, e))?;
    Ok((file, bytes.len() as u64))
}

impl CaptureWriter {
    /// Creates the first file; an unwritable path fails here, before anything is recorded.
    pub fn create(opts: WriterOptions, mut header: FileHeader) -> Result<Self, CaptureError> {
        let rotating = opts.max_size.is_some();
        header.file_index = u32::from(rotating);
        let current = if rotating {
            series_path(&opts.path, 1)
        } else {
            opts.path.clone()
        };
        let (file, file_len) = open_new(&current, &header)?;
        Ok(Self {
            opts,
            header,
            file,
            kept: VecDeque::from([current.clone()]),
            current,
            file_len,
            seq: 0,
            block: BlockBuilder::default(),
            stats: WriteStats {
                files: 1,
                ..WriteStats::default()
            },
        })
    }

    pub fn current_path(&self) -> &Path {
        &self.current
    }

    /// Whether the next batch (up to [`BATCH_BOUND`] more payload bytes) must go to a new file.
    pub fn needs_rotation(&self) -> bool {
        let Some(max) = self.opts.max_size else {
            return false;
        };
        let holds_data = self.seq > 0 || !self.block.is_empty();
        holds_data && self.file_len + (self.block.raw_len() + BATCH_BOUND) as u64 > max
    }

    pub fn kernel(&mut self, e: &RawEvent) -> Result<(), CaptureError> {
        self.block.kernel(e);
        self.stats.items += 1;
        self.seal_if_full()
    }

    pub fn push(&mut self, item: &Item) -> Result<(), CaptureError> {
        self.block.push(item);
        self.stats.items += 1;
        self.seal_if_full()
    }

    fn seal_if_full(&mut self) -> Result<(), CaptureError> {
        if self.block.raw_len() >= self.opts.block_bytes {
            self.seal()
        } else {
            Ok(())
        }
    }

    /// Writes the open block (if any) with one write.
    pub fn seal(&mut self) -> Result<(), CaptureError> {
        if self.block.is_empty() {
            return Ok(());
        }
        let items = self.block.items() as u32;
        let raw = self.block.finish();
        let framed = format::frame_block(self.seq, items, &raw, self.opts.zstd_level);
        self.seq += 1;
        let written = self.file.write_all(&framed).and_then(|()| {
            if self.opts.fsync == Fsync::Block {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        match written {
            Ok(()) => {
                self.file_len += framed.len() as u64;
                self.stats.blocks += 1;
                self.stats.bytes += framed.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.stats.dropped_items += u64::from(items);
                self.stats.dropped_blocks += 1;
                // Cut a partly written block off and write the next block in its place, so the
                // file ends at a block boundary and has no hole.
                let _ = self.file.set_len(self.file_len);
                let _ = self.file.seek(SeekFrom::Start(self.file_len));
                Err(CaptureError::Dropped {
                    path: self.current.clone(),
                    items: u64::from(items),
                    source: e,
                })
            }
        }
    }

    /// Closes the current file and starts the next one of the series.
    pub fn rotate(&mut self) -> Result<(), CaptureError> {
        let sealed = self.seal();
        if self.opts.fsync != Fsync::Never {
            let _ = self.file.sync_all();
        }
        self.header.file_index += 1;
        let next = series_path(&self.opts.path, self.header.file_index);
        let (file, len) = open_new(&next, &self.header)?;
        self.file = file;
        self.file_len = len;
        self.seq = 0;
        self.current = next.clone();
        self.kept.push_back(next);
        self.stats.files += 1;
        if let Some(max) = self.opts.max_files {
            while self.kept.len() > max as usize {
                if let Some(old) = self.kept.pop_front() {
                    let _ = std::fs::remove_file(old);
                }
            }
        }
        sealed
    }

    /// Writes what is pending and syncs (unless the policy is `never`).
    pub fn finish(&mut self) -> Result<(), CaptureError> {
        let sealed = self.seal();
        if self.opts.fsync != Fsync::Never {
            self.file
                .sync_all()
                .map_err(|e| CaptureError::io(&self.current, e))?;
        }
        sealed
    }
}
