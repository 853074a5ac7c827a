//! `tracer agent`: the long-running mode for production hosts. One task owns the [`Live`]
//! session and answers the HTTP server's queries between batches of events, so every scrape
//! sees the events applied up to that moment without locks around the aggregator.

pub mod anomalies;
pub mod bpf_stats;
pub mod client;
pub mod comm_slots;
pub mod exposition;
pub mod flight;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod self_usage;

use std::{io, net::SocketAddr, time::Duration};

use tokio::{net::TcpListener, sync::mpsc, time::Instant};
use tracing::{info, warn};

use crate::{
    cli::AgentArgs,
    live::{Live, LiveError},
};
use http::Query;
use metrics::Metrics;

/// How often the agent logs a one-line summary.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot listen on {addr} for metrics: {error}")]
    Bind { addr: SocketAddr, error: io::Error },
    #[error("cannot enable BPF run-time statistics (--bpf-stats needs CAP_SYS_ADMIN): {0}")]
    BpfStats(io::Error),
    #[error("cannot start logging: {0}")]
    Logging(String),
    #[error(transparent)]
    Live(#[from] LiveError),
}

pub async fn run(args: &AgentArgs, detection: crate::anomaly::Config) -> Result<(), AgentError> {
    logging::init(args.log_format)?;
    // Before attaching anything, so a taken port fails fast and leaves the kernel untouched.
    let listener = TcpListener::bind(args.metrics_addr)
        .await
        .map_err(|error| AgentError::Bind {
            addr: args.metrics_addr,
            error,
        })?;
    let addr = listener.local_addr().unwrap_or(args.metrics_addr);
    // Held for the agent's lifetime: the kernel turns the statistics off when it is closed.
    let stats_fd = if args.bpf_stats {
        Some(bpf_stats::enable().map_err(AgentError::BpfStats)?)
    } else {
        None
    };
    let mut opts = args
        .live
        .options(args.duration, crate::cli::live::AGGREGATING_RING);
    opts.probes.signals = detection.enabled;
    opts.announce = false;
    let mut live = Live::start(&opts).await?;
    log_start(&live);
    if detection.enabled {
        live.enable_detection(detection);
        anomalies::log_unavailable(&live);
    }
    let mut flight = flight::AgentFlight::start(&args.flight, &mut live);
    let top = usize::try_from(args.top).unwrap_or(usize::MAX);
    let mut metrics = Metrics::new(top, stats_fd.is_some());
    metrics.observe_refresh(&live, None);
    let (tx, mut queries) = mpsc::channel::<Query>(64);
    let server = tokio::spawn(http::serve(listener, tx, live.cancel.clone(), top));
    info!(%addr, "serving /metrics and /stats");

    let mut next_refresh = Instant::now() + args.refresh;
    let mut next_summary = Instant::now() + SUMMARY_EVERY;
    let mut next_detect = Instant::now() + anomalies::DETECT_EVERY;
    loop {
        let deadline = next_refresh.min(next_summary).min(next_detect);
        // Dropping `run_until` when a query wins is safe: it only awaits the channel and a timer.
        let step = tokio::select! {
            running = live.run_until(deadline) => Step::Tick(running),
            Some(q) = queries.recv() => Step::Query(q),
            () = async {
                match &mut flight {
                    Some(f) => f.signalled().await,
                    None => std::future::pending().await,
                }
            } => Step::Dump("sigusr1"),
        };
        match step {
            Step::Query(q) => {
                live.apply_pending();
                answer(q, &live, &mut metrics, flight.as_ref());
            }
            Step::Dump(reason) => {
                live.apply_pending();
                if let Some(f) = &flight {
                    let _ = f.dump(reason);
                }
            }
            Step::Tick(false) => break,
            Step::Tick(true) => {
                let now = Instant::now();
                if now >= next_refresh {
                    let began = std::time::Instant::now();
                    let failed = match live.refresh().await {
                        Ok(()) => false,
                        Err(e) => {
                            warn!(error = %e, "refresh failed; keeping the previous counts");
                            true
                        }
                    };
                    metrics.observe_refresh(&live, Some((began.elapsed(), failed)));
                    let new = warn_new_losses(&mut live);
                    if let Some(f) = &flight {
                        f.lost(&live, &new);
                        f.refreshed(&live);
                    }
                    next_refresh = now + args.refresh;
                }
                if now >= next_detect {
                    let active = |l: &Live| l.detector.as_ref().map_or(0, |d| d.active());
                    let before = active(&live);
                    let found = anomalies::detect(&mut live, &metrics).await;
                    if let Some(f) = &flight {
                        // Stored before the dump, so the dump holds what triggered it.
                        if let Some(found) = found {
                            f.detected(found);
                        }
                        if active(&live) > before {
                            let _ = f.dump("anomaly");
                        }
                    }
                    next_detect = now + anomalies::DETECT_EVERY;
                }
                if now >= next_summary {
                    log_summary(&live);
                    next_summary = now + SUMMARY_EVERY;
                }
            }
        }
    }
    info!("stopping: detaching the programs");
    server.abort();
    live.stop().await?;
    info!("stopped");
    Ok(())
}

enum Step {
    Tick(bool),
    Query(Query),
    /// Write the flight recorder out, for this reason.
    Dump(&'static str),
}

fn answer(q: Query, live: &Live, metrics: &mut Metrics, flight: Option<&flight::AgentFlight>) {
    // A dropped receiver means the client went away; nothing to do.
    match q {
        Query::Metrics { format, reply } => {
            metrics.observe_events(live);
            let _ = reply.send(metrics.encode(format));
        }
        Query::Stats { top, sort, reply } => {
            let _ = reply.send(live.stats(top, sort));
        }
        Query::Health { reply } => {
            let _ = reply.send(());
        }
        Query::FlightDump { reply } => {
            let _ = reply.send(match flight {
                Some(f) => f.dump("request"),
                None => Err("the flight recorder is off; start the agent with --flight-dir".into()),
            });
        }
    }
}

fn log_start(live: &Live) {
    if live.probes.tracefs.mounted_by_us {
        info!(path = %live.probes.tracefs.root().display(), "mounted tracefs");
    }
    let programs: Vec<&str> = live.probes.attached.iter().map(|tp| tp.name()).collect();
    info!(
        programs = %programs.join(","),
        recovery = live.probes.catcher,
        socket_table_sets = live.probes.socket_sets,
        attribution = live.probes.attribution_name(),
        "attached"
    );
    for d in &live.probes.degraded {
        warn!(feature = d.feature, reason = %d.reason, "degraded");
    }
    let s = &live.snapshot;
    info!(
        sockets = s.full,
        time_wait = s.time_wait,
        half_open = s.request,
        owners = s.owners,
        ms = s.elapsed.as_millis() as u64,
        "start-up snapshot"
    );
}

fn warn_new_losses(live: &mut Live) -> Vec<(crate::loss::LossCause, u64)> {
    let new = live.losses.take_new();
    for &(cause, n) in &new {
        warn!(
            cause = cause.name(),
            new = n,
            total = live.losses.total(cause),
            "lost events: {}",
            cause.describe()
        );
    }
    new
}

fn log_summary(live: &Live) {
    let s = live.stats(0, Default::default());
    let t = &s.totals;
    let closes: u64 = s.closes.values().sum();
    let lost: u64 = s.lost.values().sum();
    let rss = self_usage::read().map_or(0, |u| u.rss_bytes);
    info!(
        events = live.events,
        connections = t.total,
        established = t.established,
        listening = t.listening,
        time_wait = t.time_wait,
        retransmits = s.retransmits,
        closes,
        lost,
        tracked = s.tracking.sockets,
        rss_bytes = rss,
        "summary"
    );
}
