//! `tracer stream`: print every transition and retransmission until stopped.

use std::{
    io::{self, BufWriter, Write},
    time::Duration,
};

use tokio::{signal::unix::SignalKind, sync::mpsc};
use tokio_util::sync::CancellationToken;

use crate::{
    cli::{EventType, StreamArgs, Wakeup},
    clock::Clock,
    event::{Detail, Event},
    loss::{LossCause, LossTotals},
    output::{Format, Printer, Record},
    privileges::{self, PrivilegeError},
    probes::{LoadError, ProbeOptions, Probes},
    reader::{self, Batch},
};

/// How often kernel loss counters are checked, so losses are reported in-band promptly.
const LOSS_CHECK: Duration = Duration::from_millis(250);
/// Reader drain period in batched wakeup mode: bounds delivery latency on a quiet host.
const BATCHED_DRAIN: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Privilege(#[from] PrivilegeError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("writing output: {0}")]
    Output(io::Error),
    #[error("reading the ring buffer: {0}")]
    Reader(io::Error),
}

#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub state_events: u64,
    pub retransmit_events: u64,
    pub losses: LossTotals,
}

impl Summary {
    fn count(&mut self, ev: &Event) {
        match ev.detail {
            Detail::State { .. } => self.state_events += 1,
            Detail::Retransmit { .. } => self.retransmit_events += 1,
        }
    }

    pub fn line(&self) -> String {
        format!(
            "tracer: {} events (state {}, retransmit {}); lost {} ({})",
            self.state_events + self.retransmit_events,
            self.state_events,
            self.retransmit_events,
            self.losses.dropped(),
            self.losses.summary()
        )
    }
}

/// Cancels `cancel` on SIGINT, SIGTERM or when `duration` has passed.
fn spawn_stopper(cancel: CancellationToken, duration: Option<Duration>) -> io::Result<()> {
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let limit = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = limit => {}
            _ = cancel.cancelled() => {}
        }
        cancel.cancel();
    });
    Ok(())
}

pub async fn run(args: &StreamArgs) -> Result<Summary, StreamError> {
    privileges::check()?;
    let opts = ProbeOptions {
        config: args.config(),
        ring_bytes: args.ring_size,
        max_sockets: args.max_sockets,
        retransmits: args.filter.wants(EventType::Retransmit),
        ..ProbeOptions::default()
    };
    let mut probes = Probes::load(&opts)?;
    if probes.tracefs.mounted_by_us {
        eprintln!(
            "tracer: mounted tracefs on {}",
            probes.tracefs.root().display()
        );
    }
    for d in &probes.degraded {
        eprintln!("tracer: degraded: {}: {}", d.feature, d.reason);
    }
    let ring = probes.take_ring()?;
    // After attaching, so a listener opened meanwhile is caught by the kernel side instead.
    let seeded = probes.seed_listeners(&crate::owners::listening_owners())?;
    if seeded > 0 {
        eprintln!("tracer: found the owners of {seeded} existing listening ports");
    }

    let cancel = CancellationToken::new();
    spawn_stopper(cancel.clone(), args.duration).map_err(StreamError::Reader)?;
    let (tx, mut rx) = mpsc::channel::<Batch>(256);
    let tick = (args.wakeup == Wakeup::Batched).then_some(BATCHED_DRAIN);
    let reader = tokio::spawn(reader::run(ring, tx, cancel.clone(), tick));

    let mut names: Vec<&str> = probes.attached.iter().map(|tp| tp.name()).collect();
    if probes.catcher {
        names.push("raw-tracepoint catchers of skipped events");
    }
    eprintln!(
        "tracer: attached {}; streaming (Ctrl-C to stop)",
        names.join(", ")
    );

    let format = if args.json {
        Format::Json
    } else {
        Format::Human
    };
    let mut printer = Printer::new(
        BufWriter::with_capacity(1 << 16, io::stdout()),
        format,
        Clock::new(),
    );
    let mut summary = Summary::default();
    printer.header().map_err(StreamError::Output)?;
    let result = pump(&probes, &mut printer, &mut rx, &mut summary, &cancel).await;
    cancel.cancel();
    // The reader drains what is left after cancellation; keep consuming until it is done.
    let drained = match result {
        Ok(()) => {
            pump(
                &probes,
                &mut printer,
                &mut rx,
                &mut summary,
                &CancellationToken::new(),
            )
            .await
        }
        Err(e) => Err(e),
    };
    drop(rx);
    let read = reader
        .await
        .map_err(|e| StreamError::Reader(io::Error::other(e)))?;
    let _ = probes.observe_losses(&mut summary.losses);
    let tail = report_losses(&mut printer, &mut summary.losses).and_then(|()| printer.flush());
    eprintln!("{}", summary.line());
    drop(probes); // detaches the programs
    match drained.and(tail) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => return Err(StreamError::Output(e)),
        _ => {}
    }
    read.map_err(StreamError::Reader)?;
    Ok(summary)
}

/// Prints batches until the channel closes (or output fails), reporting losses as they grow.
async fn pump<W: Write>(
    probes: &Probes,
    printer: &mut Printer<W>,
    rx: &mut mpsc::Receiver<Batch>,
    summary: &mut Summary,
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
                            printer.print(&Record::Event(ev))?;
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

fn report_losses<W: Write>(printer: &mut Printer<W>, losses: &mut LossTotals) -> io::Result<()> {
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
