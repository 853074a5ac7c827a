//! Post-incident capture: a compact, block-framed, checksummed file of everything the stream
//! prints (kernel records, losses, anomaly records) plus periodic aggregation snapshots and the
//! detectors' ticks, written by `tracer record` and the agent's flight recorder, and read back by
//! `tracer replay` and `tracer export`. The format is documented in docs/capture-format.md.

pub mod anomalies;
pub mod bench;
pub mod columns;
pub mod export;
pub mod flight;
pub mod format;
pub mod raw;
pub mod reader;
pub mod record;
pub mod records;
pub mod replay;
pub mod state;
pub mod tick;
pub mod timeline;
pub mod varint;
pub mod walk;
pub mod writer;

#[cfg(test)]
mod anomaly_tests;
#[cfg(test)]
mod tests;

use std::{
    io,
    path::{Path, PathBuf},
    time::SystemTime,
};

use format::FileHeader;

/// Why a block payload (or header) could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CorruptPayload(pub &'static str);

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{path}: {source}", path = path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not a tracer capture (no capture magic at the start)", path = .0.display())]
    NotCapture(PathBuf),
    #[error(
        "{path}: capture format version {found}; this tracer reads version {}",
        format::FORMAT_VERSION,
        path = path.display()
    )]
    Version { path: PathBuf, found: u16 },
    #[error("{path}: damaged capture header: {why}", path = path.display())]
    Header { path: PathBuf, why: String },
    #[error("{path}: writing a block failed, {items} records dropped: {source}", path = path.display())]
    Dropped {
        path: PathBuf,
        items: u64,
        source: io::Error,
    },
}

impl CaptureError {
    pub fn io(path: &Path, source: io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The header of a capture started now by `source` (`record` or `flight`).
pub fn header_now(source: &str, filter: String, clock_offset_ns: u64) -> FileHeader {
    FileHeader {
        tracer_version: env!("CARGO_PKG_VERSION").to_owned(),
        host: read_trimmed("/proc/sys/kernel/hostname"),
        kernel: read_trimmed("/proc/sys/kernel/osrelease"),
        started: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
        clock_offset_ns,
        netns: crate::live::own_netns(),
        source: source.to_owned(),
        filter,
        file_index: 0,
        print_states: true,
        print_closes: true,
        print_retransmits: true,
        anomalies: false,
    }
}
