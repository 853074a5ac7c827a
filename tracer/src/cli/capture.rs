//! Options of the capture commands: `record`, `replay` and `export`, and the agent's flight
//! recorder.

use std::{path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};

use super::{
    AnomalyArgs, EventType, FilterArgs, LiveArgs, live::parse_interval, output_queue_parser,
    parse_duration, size_parts,
};
use crate::{aggregate::view::ProcSort, capture::writer::Fsync};

/// `1M`..`1T` style sizes (powers of 1024), 64-bit.
pub fn parse_capture_size(s: &str) -> Result<u64, String> {
    let (n, mult) = size_parts(s, b"KMGT")?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// A file size bound: at least 1M, so a file holds more than its header and one batch.
fn parse_file_size(s: &str) -> Result<u64, String> {
    let n = parse_capture_size(s)?;
    if n < 1 << 20 {
        return Err(format!("`{s}` is below the minimum of 1M"));
    }
    Ok(n)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Compression {
    Zstd,
    None,
}

#[derive(Debug, Clone, Args)]
pub struct CaptureFileArgs {
    /// Block compression.
    #[arg(long, value_enum, default_value_t = Compression::Zstd)]
    pub compress: Compression,
    /// zstd level (1 fastest .. 19 smallest).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub zstd_level: i32,
}

impl CaptureFileArgs {
    pub fn level(&self) -> Option<i32> {
        (self.compress == Compression::Zstd).then_some(self.zstd_level)
    }
}

#[derive(Debug, Clone, Args)]
pub struct RecordArgs {
    /// Capture file. With --max-size, the files are FILE.000001, FILE.000002, ...
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Stop after this many seconds (fractions allowed).
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Start a new file before one would grow past this size (at least 1M; K/M/G/T suffix).
    #[arg(long, value_name = "BYTES", value_parser = parse_file_size)]
    pub max_size: Option<u64>,
    /// With --max-size: keep only this many files, deleting the oldest.
    #[arg(long, value_name = "N", requires = "max_size", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_files: Option<u32>,
    /// When data is forced to disk: after every block, when a file is complete, or never.
    #[arg(long, value_enum, default_value_t = Fsync::Rotate)]
    pub fsync: Fsync,
    /// Write the open block at least this often: the most a kill -9 can lose.
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = parse_interval)]
    pub flush_interval: Duration,
    /// Seconds between aggregation snapshots (replay --stats can start at any of them).
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_interval)]
    pub snapshot_interval: Duration,
    /// Also print the stream to stdout, exactly as `tracer stream` would.
    #[arg(long)]
    pub print: bool,
    /// With --print: JSON lines instead of columns.
    #[arg(long, requires = "print")]
    pub json: bool,
    /// With --print: events waiting for stdout at most; beyond that they are not printed
    /// (still recorded) and are counted as `output_queue_full`, so a slow reader never stalls
    /// the ring-buffer drain.
    #[arg(long, value_name = "EVENTS", requires = "print",
          default_value_t = crate::outqueue::DEFAULT_CAPACITY, value_parser = output_queue_parser())]
    pub output_queue: u32,
    /// Detect anomalies as `tracer stream --anomalies` does, and store the anomaly records and
    /// the detectors' inputs in the capture (see docs/capture-format.md).
    #[arg(long)]
    pub anomalies: bool,
    #[command(flatten)]
    pub anomaly: AnomalyArgs,
    #[command(flatten)]
    pub file: CaptureFileArgs,
    #[command(flatten)]
    pub live: LiveArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// Capture files, in order (e.g. a rotated series FILE.*).
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// JSON lines instead of columns (and JSON stats reports).
    #[arg(long)]
    pub json: bool,
    /// Print `tracer stats` reports instead of the stream: one at the end, or one per
    /// --interval of capture time.
    #[arg(long)]
    pub stats: bool,
    /// With --stats: capture seconds between reports.
    #[arg(long, value_name = "SECS", requires = "stats", value_parser = parse_interval)]
    pub interval: Option<Duration>,
    /// With --stats: rows per ranking.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub top: u64,
    /// With --stats: how processes are ranked.
    #[arg(long, value_enum, default_value_t = ProcSort::Bytes)]
    pub sort: ProcSort,
    /// Exit 1 when anything was skipped (damaged or truncated blocks, unknown records).
    #[arg(long)]
    pub strict: bool,
    /// Detect anomalies anew, offline, on the capture's own timeline, and print those instead
    /// of the anomaly records the recorder stored.
    #[arg(long, conflicts_with = "stats")]
    pub anomalies: bool,
    #[command(flatten)]
    pub anomaly: AnomalyArgs,
}

impl RecordArgs {
    /// Whether the recorder detects anomalies (as `stream` decides it).
    pub fn detects(&self) -> bool {
        self.anomalies || self.anomaly.given() || self.filter.types.contains(&EventType::Anomaly)
    }
}

impl ReplayArgs {
    /// Whether replay detects anomalies itself. `--type anomaly` alone does not: it shows the
    /// recorded ones.
    pub fn detects(&self) -> bool {
        self.anomalies || self.anomaly.given()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Jsonl,
    Csv,
}

#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// Capture files, in order.
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Write here instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Exit 1 when anything was skipped.
    #[arg(long)]
    pub strict: bool,
}

/// The agent's flight recorder: the last records in memory, written out on demand.
#[derive(Debug, Clone, Args)]
pub struct FlightArgs {
    /// Keep recent records in memory and write them to captures in this directory on SIGUSR1,
    /// on `POST /flight/dump`, or when an anomaly is raised. Off without it.
    #[arg(long, value_name = "DIR")]
    pub flight_dir: Option<PathBuf>,
    /// Seconds of history to keep.
    #[arg(long, value_name = "SECS", default_value = "300", value_parser = parse_interval)]
    pub flight_seconds: Duration,
    /// Memory bound of the history (compressed), K/M/G suffix.
    #[arg(long, value_name = "BYTES", default_value = "64M", value_parser = parse_capture_size)]
    pub flight_size: u64,
    /// Dumps kept in --flight-dir; older ones are deleted.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub flight_keep: u32,
}

#[cfg(test)]
mod tests {
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("tracer").chain(args.iter().copied()))
    }

    #[test]
    fn record_flags() {
        let Cli {
            command: Some(Command::Record(r)),
            ..
        } = parse(&[
            "record",
            "-o",
            "x.trc",
            "--port",
            "80",
            "--max-size",
            "8M",
            "--max-files",
            "3",
            "--print",
            "--json",
            "--output-queue",
            "16",
        ])
        .unwrap()
        else {
            panic!("not record")
        };
        assert_eq!(r.max_size, Some(8 << 20));
        assert_eq!(r.max_files, Some(3));
        assert_eq!(r.filter.port, Some(80));
        assert_eq!(r.file.level(), Some(3));
        assert_eq!(r.output_queue, 16);
    }

    #[test]
    fn bad_capture_flags_are_usage_errors() {
        for args in [
            &["record"][..],
            &["record", "-o", "x", "--max-files", "3"],
            &["record", "-o", "x", "--max-size", "100K"],
            &["record", "-o", "x", "--max-size", "12Q"],
            &["record", "-o", "x", "--json"],
            &["record", "-o", "x", "--output-queue", "16"],
            &["record", "-o", "x", "--print", "--output-queue", "0"],
            &["record", "-o", "x", "--zstd-level", "30"],
            &["replay"],
            &["replay", "f", "--interval", "5"],
            &["export", "f"],
            &["export", "f", "--format", "xml"],
            &["agent", "--flight-size", "lots"],
        ] {
            let err = parse(args).expect_err(&format!("{args:?} should fail"));
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }
}
