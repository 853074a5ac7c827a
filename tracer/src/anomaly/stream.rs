//! `tracer stream` with anomaly detection: the events are applied to a live aggregator (seeded
//! by the start-up dump, reconciled every few seconds) and to the detectors, printed as usual,
//! and anomaly records are printed as the detectors raise or clear them.

use std::{
    io::{self, Write},
    time::Duration,
};

use tokio::time::Instant;

use super::Config;
use crate::{
    cli::{EventType, StreamArgs},
    event::Detail,
    live::{Live, LiveOptions, Next},
    output::{Printer, Record},
    probes::ProbeOptions,
    stream::{StreamError, Summary, report_losses, stdout_printer},
};

/// Detectors run once a second.
const DETECT_EVERY: Duration = Duration::from_secs(1);
/// Timewait and request counts, listeners and loss counters are reconciled this often.
const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// The userspace connection table's capacity.
const MAX_CONNECTIONS: usize = 1 << 20;

pub async fn run(args: &StreamArgs, cfg: Config) -> Result<Summary, StreamError> {
    let mut config = args.config();
    // The detectors need every kind of event; `--type` only selects what is printed.
    config.filter.flags &= !tracer_common::Filter::KIND;
    let opts = LiveOptions {
        probes: ProbeOptions {
            config,
            ring_bytes: args.ring_size,
            max_sockets: args.max_sockets,
            retransmits: true,
            signals: true,
            ..ProbeOptions::default()
        },
        wakeup: args.wakeup,
        duration: args.duration,
        max_connections: MAX_CONNECTIONS,
        announce: true,
    };
    let mut live = Live::start(&opts).await?;
    live.enable_detection(cfg);
    if let Some(d) = &live.detector {
        for (kind, why) in &d.unavailable {
            eprintln!("tracer: degraded: {}: {why}", kind.name());
        }
    }
    eprintln!("tracer: detecting anomalies; streaming (Ctrl-C to stop)");
    let mut printer = stdout_printer(args.json);
    let f = &args.filter;
    // With only `--type anomaly`, nothing else is printed.
    let show = |t| f.wants(t) && !(f.types.len() == 1 && f.types[0] == EventType::Anomaly);
    let view = (
        show(EventType::State),
        show(EventType::Retransmit),
        show(EventType::Close),
        f.wants(EventType::Anomaly),
    );
    let mut summary = Summary::default();
    let result = pump(&mut live, &mut printer, &mut summary, view).await;
    let _ = live.probes.observe_losses(&mut live.losses);
    summary.losses = live.losses.clone();
    let tail = report_losses(&mut printer, &mut summary.losses).and_then(|()| printer.flush());
    let stopped = live.stop().await;
    eprintln!("{}", summary.line());
    match result.and(tail) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => return Err(StreamError::Output(e)),
        _ => {}
    }
    stopped?;
    Ok(summary)
}

async fn pump<W: Write>(
    live: &mut Live,
    printer: &mut Printer<W>,
    summary: &mut Summary,
    (states, retransmits, closes, anomalies): (bool, bool, bool, bool),
) -> io::Result<()> {
    printer.header()?;
    let mut next_detect = Instant::now() + DETECT_EVERY;
    let mut next_refresh = Instant::now() + REFRESH_EVERY;
    loop {
        match live.next(next_detect.min(next_refresh)).await {
            Next::Batch(batch) => {
                for item in &batch {
                    let Ok(ev) = item else {
                        continue;
                    };
                    summary.count(ev);
                    let print = match ev.detail {
                        Detail::State { .. } => states,
                        Detail::Retransmit { .. } => retransmits,
                        Detail::Signal { .. } => false,
                    };
                    if print {
                        printer.print(&Record::Event(ev.clone()))?;
                    }
                    if closes && ev.close.is_some() {
                        printer.print(&Record::Close(ev.clone()))?;
                    }
                }
                printer.flush()?;
            }
            Next::Deadline => {
                let now = Instant::now();
                if now >= next_refresh {
                    // A failed reconciliation keeps the previous counts.
                    let _ = live.refresh().await;
                    next_refresh = now + REFRESH_EVERY;
                }
                if now >= next_detect {
                    for a in live.detect().await {
                        if anomalies {
                            printer.print(&Record::Anomaly(a))?;
                        }
                    }
                    next_detect = now + DETECT_EVERY;
                }
                report_losses(printer, &mut live.losses)?;
                printer.flush()?;
            }
            Next::Closed => return Ok(()),
        }
    }
}
