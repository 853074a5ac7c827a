//! `tracer stream`: print every transition and retransmission until stopped.

use std::{
    io::{self, Write},
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
    outqueue::OutputQueue,
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
    /// Events delivered after later ones (see README, "Event order").
    pub late: u64,
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
        ) + &late_note(self.late).map_or(String::new(), |n| format!("; {n}"))
    }
}

/// How the stop summaries mention events delivered late: not at all when there were none.
pub fn late_note(late: u64) -> Option<String> {
    (late > 0).then(|| {
        format!(
            "{late} delivered late, after later events (their CPU stalled more than {} ms \
             while writing them)",
            crate::merge::HOLD.as_millis()
        )
    })
}

pub async fn run(args: &StreamArgs) -> Result<Summary, StreamError> {
    let opts = ProbeOptions {
        config: args.config(),
        ring_bytes: args.ring_size,
        max_sockets: args.max_sockets,
        attribution: args.attribution,
        // Close records count retransmissions too.
        retransmits: args.filter.wants(EventType::Retransmit)
            || args.filter.wants(EventType::Close),
        ..ProbeOptions::default()
    };
    let session = Session::start(&opts, args.wakeup, args.duration, true)?;
    let format = Format::json_if(args.json);
    let mut out = OutputQueue::stdout(format, Clock::new(), args.output_queue as usize)
        .map_err(StreamError::Output)?;
    eprintln!("{}; streaming (Ctrl-C to stop)", session.attached_line());
    let (probes, mut rx, cancel, reader) = session.into_parts();

    let mut summary = Summary::default();
    out.header().map_err(StreamError::Output)?;
    let view = View::of(&args.filter);
    let result = pump(&probes, &mut out, &mut rx, &mut summary, view, &cancel).await;
    cancel.cancel();
    // The reader drains what is left after cancellation; keep consuming until it is done.
    let drained = match result {
        Ok(()) => {
            pump(
                &probes,
                &mut out,
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
    summary.late = probes.late_events();
    let _ = probes.observe_losses(&mut summary.losses);
    let tail = out.report_losses(&mut summary.losses);
    // Everything queued is written before the summary.
    let written = out.finish_async().await;
    eprintln!("{}", summary.line());
    drop(probes); // detaches the programs
    match drained.and(tail).and(written) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => return Err(StreamError::Output(e)),
        _ => {}
    }
    read?;
    Ok(summary)
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

    /// Whether [`print_event`] prints any record of `ev`.
    pub fn prints(self, ev: &Event) -> bool {
        !matches!(ev.detail, Detail::State { .. })
            || self.states
            || (self.closes && ev.close.is_some())
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

/// Hands batches to the output queue until the channel closes (or output fails), reporting
/// losses as they grow. Never waits for stdout.
async fn pump(
    probes: &Probes,
    out: &mut OutputQueue,
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
                            out.print_event(ev, view)?;
                        }
                        Err(_) => summary.losses.add(LossCause::Decode, 1),
                    }
                }
                if rx.is_empty() {
                    out.flush()?;
                }
            }
            _ = loss_check.tick() => {
                let _ = probes.observe_losses(&mut summary.losses);
                out.report_losses(&mut summary.losses)?;
                out.flush()?;
            }
            _ = cancel.cancelled() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_late_events_only_when_there_were_some() {
        let mut s = Summary::default();
        assert!(s.line().ends_with("output_queue_full=0)"), "{}", s.line());
        s.late = 3;
        assert!(
            s.line()
                .ends_with("; 3 delivered late, after later events (their CPU stalled more than 10 ms while writing them)"),
            "{}",
            s.line()
        );
    }
}
