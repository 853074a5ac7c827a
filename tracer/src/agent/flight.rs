//! The flight recorder in the agent: fed by the live tap, dumped on SIGUSR1, on
//! `POST /flight/dump`, and when an anomaly is raised. A failed dump is logged with what it
//! dropped; the agent keeps running and the history stays in memory for the next attempt.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::{info, warn};

use crate::{
    capture::flight::{FlightOptions, FlightRecorder},
    cli::capture::FlightArgs,
    clock::Clock,
    live::{Detection, Live},
    loss::LossCause,
};

pub struct AgentFlight {
    rec: Arc<Mutex<FlightRecorder>>,
    usr1: Option<Signal>,
}

impl AgentFlight {
    /// Installs the recorder as the live tap; `None` without `--flight-dir`.
    pub fn start(args: &FlightArgs, live: &mut Live) -> Option<Self> {
        let dir = args.flight_dir.clone()?;
        if let Err(e) = std::fs::create_dir_all(&dir) {
            // Not fatal: the history is kept, and each dump says why it could not be written.
            warn!(dir = %dir.display(), error = %e, "flight recorder directory is not usable");
        }
        let mut rec = FlightRecorder::new(
            FlightOptions {
                dir: dir.clone(),
                seconds: args.flight_seconds,
                max_bytes: args.flight_size,
                keep: args.flight_keep,
                zstd_level: Some(3),
            },
            Clock::new().offset_ns(),
        );
        rec.detecting(live.detector.is_some());
        let rec = Arc::new(Mutex::new(rec));
        let tap = Arc::clone(&rec);
        live.set_tap(Box::new(move |batch, agg| {
            tap.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .tap(batch, agg);
        }));
        let usr1 = match signal(SignalKind::user_defined1()) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, "cannot handle SIGUSR1; dumps only on request");
                None
            }
        };
        info!(
            dir = %dir.display(),
            seconds = args.flight_seconds.as_secs_f64(),
            max_bytes = args.flight_size,
            "flight recorder on (SIGUSR1 or POST /flight/dump writes it out)"
        );
        Some(Self { rec, usr1 })
    }

    /// Resolves on SIGUSR1 (never, when the signal could not be hooked).
    pub async fn signalled(&mut self) {
        match &mut self.usr1 {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    }

    /// Records the losses the agent just learnt of, as the stream would report them in-band.
    pub fn lost(&self, live: &Live, new: &[(LossCause, u64)]) {
        self.rec
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .lost(&live.losses, new);
    }

    /// Records a reconciliation, for replay to apply at the same point.
    pub fn refreshed(&self, live: &Live) {
        self.rec
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .refreshed(&live.agg, &live.losses);
    }

    /// Records a detection round: its tick and the anomalies it raised or cleared.
    pub fn detected(&self, d: Detection) {
        self.rec
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .detected(d.at_ns, d.inputs, &d.anomalies);
    }

    /// Writes the history out; the answer is one line for the log and the HTTP reply.
    pub fn dump(&self, reason: &str) -> Result<String, String> {
        let mut rec = self.rec.lock().unwrap_or_else(PoisonError::into_inner);
        match rec.dump(reason) {
            Ok(d) => {
                info!(
                    reason,
                    path = %d.path.display(),
                    records = d.items,
                    bytes = d.bytes,
                    "flight recorder dumped"
                );
                Ok(format!(
                    "dumped {} records ({} bytes) to {}",
                    d.items,
                    d.bytes,
                    d.path.display()
                ))
            }
            Err(e) => {
                warn!(reason, records = e.items, bytes = e.bytes, error = %e.source, "{e}; the agent keeps running");
                Err(e.to_string())
            }
        }
    }
}
