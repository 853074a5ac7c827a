//! `tracer record -o FILE`: the stream's records (after the same kernel filter), in-band loss
//! reports and periodic aggregation snapshots, written to a capture. With `--print` it also
//! prints the stream, from the very records it writes, so the two can be compared exactly.
//! Printing goes through the stream's [`OutputQueue`]: a slow stdout drops printed events
//! (counted as `output_queue_full` in the printed stream and the summary), never recorded ones.
//! With `--anomalies` it detects as `tracer stream --anomalies` does and also stores each
//! detection tick (with the host inputs it read) and the anomaly records.

use std::{
    io,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use tokio::time::Instant as TokioInstant;

use super::{
    CaptureError, anomalies, header_now, raw,
    records::Item,
    state,
    tick::Tick,
    writer::{CaptureWriter, WriteStats, WriterOptions},
};
use crate::{
    aggregate::Aggregator,
    anomaly::Config,
    cli::{EventType, FilterArgs, RecordArgs},
    clock::Clock,
    event::Detail,
    live::{Detection, Live, LiveError},
    loss::{LossCause, LossTotals},
    output::{Format, Record},
    outqueue::OutputQueue,
    reader::Batch,
    stream::{Summary, View},
};

/// How often kernel loss counters are read (as the stream does).
const LOSS_CHECK: Duration = Duration::from_millis(250);
/// Payload size at which a block is sealed: large enough for zstd to find the repeats.
pub const BLOCK_BYTES: usize = 256 << 10;
/// At most one line per this interval about failing writes.
const ERROR_REPORT_EVERY: Duration = Duration::from_secs(10);
/// While detecting: detectors run once a second and the reconciliation every 5 s, as in
/// `tracer stream --anomalies`.
const DETECT_EVERY: Duration = Duration::from_secs(1);
const DETECT_REFRESH_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Live(#[from] LiveError),
    #[error(
        "{items} records in {blocks} blocks could not be written (first error: {first}); the \
         capture holds the rest"
    )]
    Dropped {
        items: u64,
        blocks: u64,
        first: String,
    },
}

/// The recorder's side of the tap: everything the reader hands over goes to the writer (and
/// to the printer with `--print`).
struct Recorder {
    writer: CaptureWriter,
    /// With `--print`, until printing fails.
    printer: Option<OutputQueue>,
    /// Losses of the printed stream alone (`output_queue_full`): the capture has those events,
    /// so they are printed and summed up but never stored.
    print_losses: LossTotals,
    view: View,
    /// Retransmit and anomaly records are printed (and anomalies stored).
    retransmits: bool,
    anomalies: bool,
    clock: Clock,
    filter: tracer_common::Filter,
    summary: Summary,
    /// Loss totals as last read, for snapshots taken inside the tap.
    losses: LossTotals,
    first_error: Option<String>,
    last_report: Option<Instant>,
}

impl Recorder {
    fn failed(&mut self, e: CaptureError) {
        let text = e.to_string();
        if self
            .last_report
            .is_none_or(|t| t.elapsed() >= ERROR_REPORT_EVERY)
        {
            eprintln!("tracer: capture: {text}; recording continues");
            self.last_report = Some(Instant::now());
        }
        self.first_error.get_or_insert(text);
    }

    fn checked(&mut self, r: Result<(), CaptureError>) {
        if let Err(e) = r {
            self.failed(e);
        }
    }

    fn print(&mut self, f: impl FnOnce(&mut OutputQueue) -> io::Result<()>) {
        if let Some(q) = &mut self.printer {
            let r = f(q);
            self.printed(r);
        }
    }

    /// A failed print (the writer thread's error, once it stopped) ends printing.
    fn printed(&mut self, r: io::Result<()>) {
        if let Err(e) = r {
            // A closed pipe ends printing, never the recording.
            if e.kind() != io::ErrorKind::BrokenPipe {
                eprintln!("tracer: --print: {e}; printing stops, recording continues");
            }
            self.printer = None;
        }
    }

    fn snapshot(&mut self, agg: &Aggregator) {
        let snap = state::snapshot(agg, &self.losses, Clock::now_mono_ns(), Some(&self.filter));
        let r = self.writer.push(&Item::Snapshot(Box::new(snap)));
        self.checked(r);
    }

    fn tap(&mut self, batch: &Batch, agg: &Aggregator) {
        if self.writer.needs_rotation() {
            let r = self.writer.rotate();
            match r {
                Ok(()) => {}
                Err(e @ CaptureError::Io { .. }) => {
                    // The next file could not be created: keep writing to the current one.
                    self.failed(e);
                }
                Err(e) => self.failed(e),
            }
            // Every file starts with the state, so it replays on its own.
            self.snapshot(agg);
        }
        let view = self.view;
        for ev in batch.iter().flatten() {
            self.summary.count(ev);
            let r = self.writer.kernel(&raw::encode(ev));
            self.checked(r);
            // Signals feed the detectors only, and a detecting recorder stores retransmits
            // its `--type` hides (as `stream --anomalies` reads but does not print them).
            let hidden = match ev.detail {
                Detail::Signal { .. } => true,
                Detail::Retransmit { .. } => !self.retransmits,
                Detail::State { .. } => false,
            };
            if self.printer.is_some() && !hidden {
                let ev = ev.clone();
                self.print(|q| q.print_event(ev, view));
            }
        }
        self.print(OutputQueue::flush);
    }

    /// A detection round: its tick, then the anomaly records it produced.
    fn detected(&mut self, d: Detection) {
        let tick = Tick {
            at_ns: d.at_ns,
            inputs: d.inputs,
        };
        let r = self.writer.push(&Item::Tick(Box::new(tick)));
        self.checked(r);
        if !self.anomalies {
            return;
        }
        for a in d.anomalies {
            let r = self.writer.push(&anomalies::printed(&a, self.clock));
            self.checked(r);
            self.print(|q| q.record(&Record::Anomaly(a)));
        }
        self.print(OutputQueue::flush);
    }

    /// Stores and prints a loss record for each cause that grew, then prints one for the
    /// printed events the output queue dropped since the last call (those are not stored).
    fn lost(&mut self, losses: &mut LossTotals) {
        self.losses = losses.clone();
        let now = Clock::now_mono_ns();
        for (cause, count) in losses.take_new() {
            let item = Item::Lost {
                ts_ns: now,
                cause: cause.name().to_owned(),
                count,
            };
            let r = self.writer.push(&item);
            self.checked(r);
            self.print(|q| {
                q.record(&Record::Lost {
                    ts_ns: now,
                    cause,
                    count,
                })
            });
        }
        if let Some(q) = &mut self.printer {
            let r = q.report_losses(&mut self.print_losses);
            self.printed(r);
        }
        self.print(OutputQueue::flush);
    }
}

/// The filter flags, as `stream` would take them: the header says what was kept.
fn describe_filter(f: &FilterArgs) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut flag = |name: &str, v: Option<String>| {
        if let Some(v) = v {
            out.push(format!("--{name} {v}"));
        }
    };
    flag("pid", f.pid.map(|p| p.to_string()));
    flag(
        "comm",
        f.comm.map(|c| crate::event::Comm::new(&c).to_string()),
    );
    flag("port", f.port.map(|p| p.to_string()));
    flag("lport", f.lport.map(|p| p.to_string()));
    flag("rport", f.rport.map(|p| p.to_string()));
    flag("addr", f.addr.map(|a| a.to_string()));
    let states: Vec<&str> = f
        .state
        .iter()
        .filter_map(|&s| tracer_common::state::name(s))
        .collect();
    flag("state", (!states.is_empty()).then(|| states.join(",")));
    let types: Vec<String> = f
        .types
        .iter()
        .map(|t| format!("{t:?}").to_lowercase())
        .collect();
    flag("type", (!types.is_empty()).then(|| types.join(",")));
    if f.ipv4 {
        out.push("-4".into());
    }
    if f.ipv6 {
        out.push("-6".into());
    }
    out.join(" ")
}

pub async fn run(args: &RecordArgs, detection: Option<Config>) -> Result<WriteStats, RecordError> {
    // The recorder prints and stores with the same offset, so replayed times are identical.
    let clock = Clock::new();
    let f = &args.filter;
    let detecting = detection.is_some();
    let view = View {
        states: f.shows(EventType::State),
        closes: f.shows(EventType::Close),
    };
    let mut header = header_now("record", describe_filter(&args.filter), clock.offset_ns());
    header.print_states = view.states;
    header.print_closes = view.closes;
    header.print_retransmits = f.shows(EventType::Retransmit);
    header.anomalies = detecting;
    // Before attaching: an unwritable path fails here and leaves the kernel untouched.
    let header_retransmits = header.print_retransmits;
    let writer = CaptureWriter::create(
        WriterOptions {
            path: args.output.clone(),
            max_size: args.max_size,
            max_files: args.max_files,
            fsync: args.fsync,
            zstd_level: args.file.level(),
            block_bytes: BLOCK_BYTES,
        },
        header,
    )?;
    let mut opts = args
        .live
        .options(args.duration, crate::cli::live::RECORDING_RING);
    opts.probes.config.filter = args.filter.to_filter();
    // Close records count retransmissions too.
    opts.probes.retransmits =
        args.filter.wants(EventType::Retransmit) || args.filter.wants(EventType::Close);
    if detecting {
        // The detectors need every kind of event; `--type` only selects what is printed.
        opts.probes.config.filter.flags &= !tracer_common::Filter::KIND;
        opts.probes.retransmits = true;
        opts.probes.signals = true;
    }
    let mut live = Live::start(&opts).await?;
    if let Some(cfg) = detection {
        live.enable_detection(cfg);
    }
    live.print_detection_gaps();
    let format = Format::json_if(args.json);
    let printer = if args.print {
        let q =
            OutputQueue::stdout(format, clock, args.output_queue as usize).map_err(|source| {
                CaptureError::Io {
                    path: "stdout".into(),
                    source,
                }
            })?;
        Some(q)
    } else {
        None
    };
    let rec = Arc::new(Mutex::new(Recorder {
        writer,
        printer,
        print_losses: LossTotals::default(),
        view,
        retransmits: header_retransmits,
        anomalies: detecting && f.shows(EventType::Anomaly),
        clock,
        filter: args.filter.to_filter(),
        summary: Summary::default(),
        losses: LossTotals::default(),
        first_error: None,
        last_report: None,
    }));
    {
        let mut r = rec.lock().unwrap_or_else(PoisonError::into_inner);
        r.print(OutputQueue::header);
        // The start-up dump: the state the first records apply to.
        r.snapshot(&live.agg);
        eprintln!(
            "tracer: recording to {} (Ctrl-C to stop)",
            r.writer.current_path().display()
        );
    }
    let tap_rec = Arc::clone(&rec);
    live.set_tap(Box::new(move |batch, agg| {
        tap_rec
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .tap(batch, agg);
    }));

    // Without detection the reconciliation runs only for the snapshots.
    let refresh_every = if detecting {
        DETECT_REFRESH_EVERY.min(args.snapshot_interval)
    } else {
        args.snapshot_interval
    };
    let now = TokioInstant::now();
    let (mut next_loss, mut next_flush, mut next_snapshot, mut next_refresh) = (
        now + LOSS_CHECK,
        now + args.flush_interval,
        now + args.snapshot_interval,
        now + refresh_every,
    );
    let mut next_detect = detecting.then(|| now + DETECT_EVERY);
    loop {
        let deadline = next_loss
            .min(next_flush)
            .min(next_snapshot)
            .min(next_refresh);
        let running = live
            .run_until(next_detect.map_or(deadline, |d| deadline.min(d)))
            .await;
        let now = TokioInstant::now();
        let snapshot_due = now >= next_snapshot;
        // Taken right after the reconciliation, before anything else is applied: replay
        // applies it at this point of the record order.
        let refresh = if snapshot_due || now >= next_refresh {
            if let Err(e) = live.refresh().await {
                eprintln!("tracer: refresh failed; the snapshot keeps the previous counts: {e}");
            }
            next_refresh = now + refresh_every;
            Some(state::refresh(
                &live.agg,
                &live.losses,
                Clock::now_mono_ns(),
            ))
        } else {
            None
        };
        let detection = match next_detect {
            Some(t) if now >= t => {
                next_detect = Some(now + DETECT_EVERY);
                live.detect().await
            }
            _ => None,
        };
        let _ = live.probes.observe_losses(&mut live.losses);
        let mut r = rec.lock().unwrap_or_else(PoisonError::into_inner);
        r.lost(&mut live.losses);
        if let Some(refresh) = refresh {
            let w = r.writer.push(&Item::Refresh(Box::new(refresh)));
            r.checked(w);
        }
        if let Some(d) = detection {
            r.detected(d);
        }
        if snapshot_due {
            r.snapshot(&live.agg);
            next_snapshot = now + args.snapshot_interval;
        }
        if now >= next_flush {
            let w = r.writer.seal();
            r.checked(w);
            next_flush = now + args.flush_interval;
        }
        next_loss = now + LOSS_CHECK;
        if !running {
            break;
        }
    }
    let _ = live.probes.observe_losses(&mut live.losses);
    let mut losses = live.losses.clone();
    // Stopping drains the ring through the tap.
    live.stop().await?;
    let printer = {
        let mut r = rec.lock().unwrap_or_else(PoisonError::into_inner);
        r.lost(&mut losses);
        let w = r.writer.finish();
        r.checked(w);
        r.printer.take()
    };
    // Everything queued is printed before the summary.
    if let Some(q) = printer
        && let Err(e) = q.finish_async().await
        && e.kind() != io::ErrorKind::BrokenPipe
    {
        eprintln!("tracer: --print: {e}");
    }
    let mut r = rec.lock().unwrap_or_else(PoisonError::into_inner);
    let dropped = r.print_losses.total(LossCause::OutputQueueFull);
    if dropped > 0 {
        losses.add(LossCause::OutputQueueFull, dropped);
    }
    r.summary.losses = losses;
    eprintln!("{}", r.summary.line());
    let s = r.writer.stats.clone();
    eprintln!(
        "tracer: recorded {} records in {} blocks, {} bytes in {} file(s), last {}",
        s.items,
        s.blocks,
        s.bytes,
        s.files,
        r.writer.current_path().display()
    );
    if s.dropped_items > 0 || s.dropped_blocks > 0 {
        return Err(RecordError::Dropped {
            items: s.dropped_items,
            blocks: s.dropped_blocks,
            first: r.first_error.clone().unwrap_or_default(),
        });
    }
    Ok(s)
}
