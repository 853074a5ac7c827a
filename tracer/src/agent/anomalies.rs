//! Anomalies in the agent: one log line per anomaly raised (warning) or cleared (info), with
//! the evidence as a JSON field, and the `tracer_anomalies_total{kind}` /
//! `tracer_anomalies_active{kind}` metrics.

use std::time::Duration;

use tracing::{info, warn};

use super::metrics::Metrics;
use crate::{
    anomaly::{Anomaly, Status},
    live::{Detection, Live},
};

/// Detectors run once a second.
pub const DETECT_EVERY: Duration = Duration::from_secs(1);

pub fn log_unavailable(live: &Live) {
    if let Some(d) = &live.detector {
        for (kind, why) in &d.unavailable {
            warn!(detector = kind.name(), reason = %why, "degraded");
        }
    }
}

/// One detection round, logged and counted; returned for the flight recorder.
pub async fn detect(live: &mut Live, metrics: &Metrics) -> Option<Detection> {
    // Apply what is queued first, so the detectors see the latest events.
    live.apply_pending();
    let found = live.detect().await;
    for a in found.iter().flat_map(|d| &d.anomalies) {
        metrics.observe_anomaly(a);
        log(a);
    }
    if let Some(d) = &live.detector {
        metrics.set_active_anomalies(&d.active_by_kind());
    }
    found
}

fn log(a: &Anomaly) {
    let evidence = serde_json::Value::Object(a.evidence.clone()).to_string();
    let subject = a.subject.to_string();
    match a.status {
        Status::Raised => warn!(
            kind = a.kind.name(),
            severity = a.severity.name(),
            subject = %subject,
            evidence = %evidence,
            recommendation = a.recommendation(),
            "anomaly raised: {}",
            a.summary
        ),
        Status::Cleared => info!(
            kind = a.kind.name(),
            subject = %subject,
            active_s = a.active_ns.unwrap_or(0) / 1_000_000_000,
            evidence = %evidence,
            "anomaly cleared: {}",
            a.summary
        ),
    }
}
