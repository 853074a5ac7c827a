//! `tracer stream`: print every transition and retransmission until stopped.

use std::{
    io::{self, BufWriter, Write},
    time::Duration,
};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    cli::{EventType, FilterArgs, StreamArgs},
    clock::Clock,
    event::{Detail, Event},
    loss::{LossCause, LossTotals},
    output::{Format, Printer, Record},
    probes::{ProbeOptions, Probes},
    reader::Batch,
    session::{Session, SessionError},
};

/// How often kernel loss counters are checked, so losses are reported in-band promptly.
const LOSS_CHECK: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("writing output: {0}")]
    Output(io::Error),
    #[error(transparent)]
    Live(#[from] crate::live::LiveError),
}

#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub state_events: u64,
    pub retransmit_events: u64,
    pub closed_connections: u64,
    pub losses: LossTotals,
}

impl Summary {
    pub fn count(&mut self, ev: &Event) {
        match ev.detail {
            Detail::State { .. } => self.state_events += 1,
            Detail::Retransmit { .. } => self.retransmit_events += 1,
            Detail::Signal { .. } => {}
        }
        self.closed_connections += u64::from(ev.close.is_some());
    }

    pub fn line(&self) -> String {
        format!(
            "tracer: {} events (state {}, retransmit {}, connections closed {}); lost {} ({})",
            self.state_events + self.retransmit_events,
            self.state_events,
            self.retransmit_events,
            self.closed_connections,
            self.losses.dropped(),
            self.losses.summary()
        )
    }
}

pub async fn run(args: &StreamArgs) -> Result<Summary, StreamError> {
    let opts = ProbeOptions {
        config: args.config(),
        ring_bytes: args.ring_size,
        max_sockets: args.max_sockets,
        // Close records count retransmissions too.
        retransmits: args.filter.wants(EventType::Retransmit)
            || args.filter.wants(EventType::Close),
        ..ProbeOptions::default()
    };
    let session = Session::start(&opts, args.wakeup, args.duration, true)?;
    eprintln!("{}; streaming (Ctrl-C to stop)", session.attached_line());
    let (probes, mut rx, cancel, reader) = session.into_parts();

    let mut printer = stdout_printer(args.json);
    let mut summary = Summary::default();
    printer.header().map_err(StreamError::Output)?;
    let view = View::of(&args.filter);
    let result = pump(&probes, &mut printer, &mut rx, &mut summary, view, &cancel).await;
    cancel.cancel();
    // The reader drains what is left after cancellation; keep consuming until it is done.
    let drained = match result {
        Ok(()) => {
            pump(
                &probes,
                &mut printer,
                &mut rx,
                &mut summary,
                view,
                &CancellationToken::new(),
            )
            .await
        }
        Err(e) => Err(e),
    };
    drop(rx);
    let read = Session::join_reader(reader).await;
    let _ = probes.observe_losses(&mut summary.losses);
    let tail = report_losses(&mut printer, &mut summary.losses).and_then(|()| printer.flush());
    eprintln!("{}", summary.line());
    drop(probes); // detaches the programs
    match drained.and(tail) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => return Err(StreamError::Output(e)),
        _ => {}
    }
    read?;
    Ok(summary)
}

/// The stream's printer: buffered stdout, columns or JSON lines, wall time from now on.
pub fn stdout_printer(json: bool) -> Printer<BufWriter<io::Stdout>> {
    let format = if json { Format::Json } else { Format::Human };
    Printer::new(
        BufWriter::with_capacity(1 << 16, io::stdout()),
        format,
        Clock::new(),
    )
}

/// Which records of state events the user asked for.
#[derive(Debug, Clone, Copy)]
pub struct View {
    pub states: bool,
    pub closes: bool,
}

impl View {
    pub fn of(filter: &FilterArgs) -> Self {
        Self {
            states: filter.wants(EventType::State),
            closes: filter.wants(EventType::Close),
        }
    }
}

/// Prints one event as the stream does (also `tracer record --print` and `tracer replay`):
/// the event unless only closes were asked for, then its close record.
pub fn print_event<W: Write>(printer: &mut Printer<W>, ev: Event, view: View) -> io::Result<()> {
    let is_state = matches!(ev.detail, Detail::State { .. });
    let rec = Record::Event(ev);
    if !is_state || view.states {
        printer.print(&rec)?;
    }
    if let Record::Event(ev) = rec
        && view.closes
        && ev.close.is_some()
    {
        printer.print(&Record::Close(ev))?;
    }
    Ok(())
}

/// Prints batches until the channel closes (or output fails), reporting losses as they grow.
async fn pump<W: Write>(
    probes: &Probes,
    printer: &mut Printer<W>,
    rx: &mut mpsc::Receiver<Batch>,
    summary: &mut Summary,
    view: View,
    cancel: &CancellationToken,
) -> io::Result<()> {
    let mut loss_check = tokio::time::interval(LOSS_CHECK);
    loop {
        tokio::select! {
            batch = rx.recv() => {
                let Some(batch) = batch else { return Ok(()) };
                for item in batch {
                    match item {
                        Ok(ev) => {
                            summary.count(&ev);
                            print_event(printer, ev, view)?;
                        }
                        Err(_) => summary.losses.add(LossCause::Decode, 1),
                    }
                }
                if rx.is_empty() {
                    printer.flush()?;
                }
            }
            _ = loss_check.tick() => {
                let _ = probes.observe_losses(&mut summary.losses);
                report_losses(printer, &mut summary.losses)?;
                printer.flush()?;
            }
            _ = cancel.cancelled() => return Ok(()),
        }
    }
}

pub(crate) fn report_losses<W: Write>(
    printer: &mut Printer<W>,
    losses: &mut LossTotals,
) -> io::Result<()> {
    let now = Clock::now_mono_ns();
    for (cause, count) in losses.take_new() {
        printer.print(&Record::Lost {
            ts_ns: now,
            cause,
            count,
        })?;
    }
    Ok(())
}
