//! `tracer stream` with anomaly detection: the events are applied to a live aggregator (seeded
//! by the start-up dump, reconciled every few seconds) and to the detectors, printed as usual,
//! and anomaly records are printed as the detectors raise or clear them. Output goes through
//! the stream's [`OutputQueue`], so a slow stdout never holds up the ring-buffer drain.

use std::{io, time::Duration};

use tokio::time::Instant;

use super::Config;
use crate::{
    cli::{EventType, StreamArgs},
    clock::Clock,
    event::Detail,
    live::{Live, LiveOptions, Next},
    output::{Format, Record},
    outqueue::OutputQueue,
    probes::ProbeOptions,
    stream::{StreamError, Summary},
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
            attribution: args.attribution,
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
    live.print_detection_gaps();
    let format = Format::json_if(args.json);
    let mut out = OutputQueue::stdout(format, Clock::new(), args.output_queue as usize)
        .map_err(StreamError::Output)?;
    eprintln!("tracer: detecting anomalies; streaming (Ctrl-C to stop)");
    let f = &args.filter;
    let view = (
        f.shows(EventType::State),
        f.shows(EventType::Retransmit),
        f.shows(EventType::Close),
        f.shows(EventType::Anomaly),
    );
    let mut summary = Summary::default();
    let result = pump(&mut live, &mut out, &mut summary, view).await;
    let _ = live.probes.observe_losses(&mut live.losses);
    let tail = out.report_losses(&mut live.losses);
    summary.losses = live.losses.clone();
    // Everything queued is written before the summary.
    let written = out.finish_async().await;
    let stopped = live.stop().await;
    eprintln!("{}", summary.line());
    match result.and(tail).and(written) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => return Err(StreamError::Output(e)),
        _ => {}
    }
    stopped?;
    Ok(summary)
}

/// Hands events and anomalies to the output queue until the session closes (or output fails),
/// reporting losses at every deadline. Never waits for stdout.
async fn pump(
    live: &mut Live,
    out: &mut OutputQueue,
    summary: &mut Summary,
    (states, retransmits, closes, anomalies): (bool, bool, bool, bool),
) -> io::Result<()> {
    out.header()?;
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
                    let close = closes && ev.close.is_some();
                    if !print && !close {
                        continue;
                    }
                    // The event and its close record are queued, or dropped, together.
                    out.event(|p| {
                        if print {
                            p.print(&Record::Event(ev.clone()))?;
                        }
                        if close {
                            p.print(&Record::Close(ev.clone()))?;
                        }
                        Ok(())
                    })?;
                }
                out.flush()?;
            }
            Next::Deadline => {
                let now = Instant::now();
                if now >= next_refresh {
                    // A failed reconciliation keeps the previous counts.
                    let _ = live.refresh().await;
                    next_refresh = now + REFRESH_EVERY;
                }
                if now >= next_detect {
                    for a in live.detect().await.map(|d| d.anomalies).unwrap_or_default() {
                        if anomalies {
                            out.record(&Record::Anomaly(a))?;
                        }
                    }
                    next_detect = now + DETECT_EVERY;
                }
                out.report_losses(&mut live.losses)?;
                out.flush()?;
            }
            Next::Closed => return Ok(()),
        }
    }
}
