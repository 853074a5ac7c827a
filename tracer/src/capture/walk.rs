//! Going through a series of capture files item by item, reporting every skipped stretch:
//! what `replay` and `export` share.

use std::{io, path::PathBuf};

use super::{
    CaptureError,
    format::FileHeader,
    reader::{CaptureReader, Chunk, Skip},
    records::Item,
};

#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error("writing output: {0}")]
    Output(io::Error),
    #[error(
        "--strict: the capture is incomplete: {skipped_bytes} bytes skipped in {skips} places, \
         {unknown} records not understood, {damaged_headers} damaged headers"
    )]
    Incomplete {
        skipped_bytes: u64,
        skips: usize,
        unknown: u64,
        damaged_headers: usize,
    },
}

/// What a walk read and what it had to leave out.
#[derive(Debug, Default, Clone)]
pub struct WalkReport {
    pub files: usize,
    pub blocks: u64,
    pub items: u64,
    pub skips: Vec<(PathBuf, Skip)>,
    /// Blocks missing by sequence number (covers damaged block headers).
    pub missing_blocks: u64,
    /// Items of kinds this tracer does not know, or that did not decode.
    pub unknown: u64,
    pub damaged_headers: Vec<PathBuf>,
}

impl WalkReport {
    pub fn complete(&self) -> bool {
        self.skips.is_empty()
            && self.unknown == 0
            && self.damaged_headers.is_empty()
            && self.missing_blocks == 0
    }

    pub fn skipped_bytes(&self) -> u64 {
        self.skips.iter().map(|(_, s)| s.bytes).sum()
    }

    pub fn summary(&self) -> String {
        let mut s = format!(
            "tracer: read {} records from {} blocks in {} file(s)",
            self.items, self.blocks, self.files
        );
        if !self.complete() {
            let known: u64 = self
                .skips
                .iter()
                .filter_map(|(_, k)| k.items)
                .map(u64::from)
                .sum();
            s.push_str(&format!(
                "; skipped {} bytes in {} places ({} records known lost, {} blocks missing), {} \
                 records not understood",
                self.skipped_bytes(),
                self.skips.len(),
                known,
                self.missing_blocks,
                self.unknown
            ));
        }
        s
    }

    /// `Err` under `--strict` when anything was left out.
    pub fn check(&self, strict: bool) -> Result<(), WalkError> {
        if strict && !self.complete() {
            return Err(WalkError::Incomplete {
                skipped_bytes: self.skipped_bytes(),
                skips: self.skips.len(),
                unknown: self.unknown,
                damaged_headers: self.damaged_headers.len(),
            });
        }
        Ok(())
    }
}

/// What the walk hands to its visitor.
pub enum Visit<'a> {
    /// A new file begins.
    File(&'a FileHeader),
    Item(&'a FileHeader, Item),
    /// Something was skipped just now: state built so far may be missing records.
    Gap,
}

/// Reads every file in order; skipped stretches go to stderr as they are found.
pub fn walk(
    files: &[PathBuf],
    mut visit: impl FnMut(Visit<'_>, &mut WalkReport) -> io::Result<()>,
) -> Result<WalkReport, WalkError> {
    let mut report = WalkReport::default();
    for path in files {
        let mut r = CaptureReader::open(path)?;
        report.files += 1;
        if r.header_damaged {
            eprintln!(
                "tracer: {}: the header checksum does not match; using it as it reads",
                path.display()
            );
            report.damaged_headers.push(path.clone());
        }
        let header = r.header.clone();
        visit(Visit::File(&header), &mut report).map_err(WalkError::Output)?;
        let mut next_seq = 0u32;
        while let Some(chunk) = r.next_chunk()? {
            match chunk {
                Chunk::Block { seq, items, .. } => {
                    if seq > next_seq {
                        report.missing_blocks += u64::from(seq - next_seq);
                    }
                    next_seq = seq.saturating_add(1);
                    report.blocks += 1;
                    for item in items {
                        report.items += 1;
                        visit(Visit::Item(&header, item), &mut report)
                            .map_err(WalkError::Output)?;
                    }
                }
                Chunk::Skipped(skip) => {
                    eprintln!("tracer: {}: {skip}", path.display());
                    report.skips.push((path.clone(), skip));
                    visit(Visit::Gap, &mut report).map_err(WalkError::Output)?;
                }
            }
        }
    }
    Ok(report)
}
