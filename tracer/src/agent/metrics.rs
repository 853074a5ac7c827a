//! The Prometheus metrics of the agent (see deploy/README.md for the list). Counters mirror
//! totals the aggregator and the kernel keep, which only grow, so each update advances a
//! counter to the new total; label sets are bounded by construction.

use std::{
    collections::HashMap,
    sync::atomic::AtomicU64,
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};
use tracer_common::state;

use super::{
    bpf_stats,
    comm_slots::{self, CommSlots},
    exposition::{self, Format},
    self_usage,
};
use crate::{
    aggregate::view::ProcSort,
    anomaly::{Anomaly, Kind, Status},
    clock::Clock,
    close::CloseEnd,
    live::Live,
    loss::LossCause,
};

type FloatCounter = Counter<f64, AtomicU64>;
type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    from: String,
    to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndLabel {
    end: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabel {
    cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommLabel {
    comm: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    addr: String,
    comm: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProgramLabel {
    program: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FeatureLabel {
    feature: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

/// Every metric family, registered once; updates write into them.
pub struct Metrics {
    registry: Registry,
    top: usize,
    slots: CommSlots,
    connections: Family<StateLabel, Gauge>,
    transitions: Family<TransitionLabels, Counter>,
    retransmits: Counter,
    closes: Family<EndLabel, Counter>,
    lost: Family<CauseLabel, Counter>,
    events: Counter,
    late: Counter,
    sent: Family<CommLabel, Counter>,
    received: Family<CommLabel, Counter>,
    listeners: Gauge,
    accept_queue: Family<ListenerLabels, Gauge>,
    backlog: Family<ListenerLabels, Gauge>,
    run_seconds: Family<ProgramLabel, FloatCounter>,
    runs: Family<ProgramLabel, Counter>,
    recursion_misses: Family<ProgramLabel, Counter>,
    bpf_stats: Gauge,
    /// The agent holds a `BPF_ENABLE_STATS` descriptor (`--bpf-stats`).
    stats_held: bool,
    table_sockets: Gauge,
    table_capacity: Gauge,
    table_refused: Counter,
    sock_map_evictions: Counter,
    proc_map_evictions: Counter,
    degraded: Family<FeatureLabel, Gauge>,
    refresh_seconds: FloatGauge,
    refresh_errors: Counter,
    cpu: FloatCounter,
    rss: Gauge,
    vsize: Gauge,
    fds: Gauge,
    start_time: FloatGauge,
    anomalies: Family<KindLabel, Counter>,
    anomalies_active: Family<KindLabel, Gauge>,
}

/// Advances a counter to an absolute total (totals never shrink; a smaller one is ignored).
fn advance(c: &Counter, total: u64) {
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}

fn advance_f64(c: &FloatCounter, total: f64) {
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn state_name(s: u8) -> String {
    state::display(s).to_owned()
}

impl Metrics {
    /// Counts a raised anomaly.
    pub fn observe_anomaly(&self, a: &Anomaly) {
        if a.status == Status::Raised {
            self.anomalies
                .get_or_create(&KindLabel {
                    kind: a.kind.name().to_owned(),
                })
                .inc();
        }
    }

    /// Sets the active-anomaly gauges (kinds absent from `active` have none).
    pub fn set_active_anomalies(&self, active: &std::collections::BTreeMap<Kind, u64>) {
        for k in Kind::ALL {
            self.anomalies_active
                .get_or_create(&KindLabel {
                    kind: k.name().to_owned(),
                })
                .set(gauge(active.get(&k).copied().unwrap_or(0)));
        }
    }

    /// `top` bounds the per-command and per-listener label sets.
    pub fn new(top: usize, stats_held: bool) -> Self {
        let m = Self {
            registry: Registry::default(),
            top,
            slots: CommSlots::new(top),
            connections: Family::default(),
            transitions: Family::default(),
            retransmits: Counter::default(),
            closes: Family::default(),
            lost: Family::default(),
            events: Counter::default(),
            late: Counter::default(),
            sent: Family::default(),
            received: Family::default(),
            listeners: Gauge::default(),
            accept_queue: Family::default(),
            backlog: Family::default(),
            run_seconds: Family::default(),
            runs: Family::default(),
            recursion_misses: Family::default(),
            bpf_stats: Gauge::default(),
            stats_held,
            table_sockets: Gauge::default(),
            table_capacity: Gauge::default(),
            table_refused: Counter::default(),
            sock_map_evictions: Counter::default(),
            proc_map_evictions: Counter::default(),
            degraded: Family::default(),
            refresh_seconds: FloatGauge::default(),
            refresh_errors: Counter::default(),
            cpu: FloatCounter::default(),
            rss: Gauge::default(),
            vsize: Gauge::default(),
            fds: Gauge::default(),
            start_time: FloatGauge::default(),
            anomalies: Family::default(),
            anomalies_active: Family::default(),
        };
        m.register()
    }

    fn register(mut self) -> Self {
        let build: Family<VersionLabel, Gauge> = Family::default();
        build
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        // Every close end and loss cause exists from the start, at 0, so rate() and alerts see
        // a series before the first occurrence.
        for e in CloseEnd::ALL {
            drop(self.closes.get_or_create(&EndLabel {
                end: e.name().to_owned(),
            }));
        }
        for k in Kind::ALL {
            let label = KindLabel {
                kind: k.name().to_owned(),
            };
            drop(self.anomalies.get_or_create(&label));
            drop(self.anomalies_active.get_or_create(&label));
        }
        for c in LossCause::LIVE {
            drop(self.lost.get_or_create(&CauseLabel {
                cause: c.name().to_owned(),
            }));
        }
        let r = &mut self.registry;
        r.register(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            self.cpu.clone(),
        );
        r.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            self.rss.clone(),
        );
        r.register(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            self.vsize.clone(),
        );
        r.register(
            "process_open_fds",
            "Number of open file descriptors",
            self.fds.clone(),
        );
        r.register(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            self.start_time.clone(),
        );
        let t = r.sub_registry_with_prefix("tracer");
        t.register(
            "anomalies",
            "Anomalies raised, by kind",
            self.anomalies.clone(),
        );
        t.register(
            "anomalies_active",
            "Anomalies currently active, by kind",
            self.anomalies_active.clone(),
        );
        t.register(
            "build_info",
            "Version of the tracer agent (always 1)",
            build,
        );
        t.register(
            "connections",
            "TCP sockets by state, as ss -tan counts them (timewait and half-open included)",
            self.connections.clone(),
        );
        t.register(
            "transitions",
            "TCP state transitions seen by the kernel programs",
            self.transitions.clone(),
        );
        t.register(
            "retransmits",
            "TCP segment retransmissions",
            self.retransmits.clone(),
        );
        t.register(
            "closes",
            "Connections closed, by how they ended",
            self.closes.clone(),
        );
        t.register(
            "lost_events",
            "Events lost or degraded, by cause",
            self.lost.clone(),
        );
        t.register(
            "events",
            "Events applied to the aggregates",
            self.events.clone(),
        );
        t.register(
            "events_late",
            format!(
                "Events delivered after later ones: their CPU stalled longer than the reader's \
                 {} ms merge hold while writing them",
                crate::merge::HOLD.as_millis()
            ),
            self.late.clone(),
        );
        t.register_with_unit(
            "process_sent",
            "Application bytes sent, by command name (bounded: see --top)",
            Unit::Bytes,
            self.sent.clone(),
        );
        t.register_with_unit(
            "process_received",
            "Application bytes received, by command name (bounded: see --top)",
            Unit::Bytes,
            self.received.clone(),
        );
        t.register("listeners", "Listening TCP sockets", self.listeners.clone());
        t.register(
            "listener_accept_queue",
            "Connections waiting for accept(), for the listeners with the fullest queues",
            self.accept_queue.clone(),
        );
        t.register(
            "listener_backlog",
            "Accept queue limit, for the listeners with the fullest queues",
            self.backlog.clone(),
        );
        t.register_with_unit(
            "program_run",
            "Kernel run time of each BPF program (counts while bpf_stats_enabled is 1)",
            Unit::Seconds,
            self.run_seconds.clone(),
        );
        t.register(
            "program_runs",
            "Runs of each BPF program (counts while bpf_stats_enabled is 1)",
            self.runs.clone(),
        );
        t.register(
            "program_recursion_misses",
            "Runs of each BPF program the kernel skipped because another BPF program was running",
            self.recursion_misses.clone(),
        );
        t.register(
            "bpf_stats_enabled",
            "Whether the kernel collects BPF run-time statistics (1) or not (0)",
            self.bpf_stats.clone(),
        );
        t.register(
            "table_sockets",
            "Sockets in the connection table",
            self.table_sockets.clone(),
        );
        t.register(
            "table_capacity",
            "Capacity of the connection table (--max-connections)",
            self.table_capacity.clone(),
        );
        t.register(
            "table_refused",
            "Sockets not tracked because the connection table was full",
            self.table_refused.clone(),
        );
        t.register(
            "sock_map_evictions",
            "Transitions of followed sockets whose entry in the kernel's socket table \
             (--max-sockets entries in sets of 7) had been evicted: no time in state, owner \
             unknown until its process acts again",
            self.sock_map_evictions.clone(),
        );
        t.register(
            "proc_map_evictions",
            "Processes evicted from the kernel's per-process byte map (--max-processes entries, \
             least recently active first): bytes they moved before it are no longer counted",
            self.proc_map_evictions.clone(),
        );
        t.register(
            "degraded",
            "Features off on this kernel (1 per feature)",
            self.degraded.clone(),
        );
        t.register_with_unit(
            "refresh_duration",
            "Duration of the last reconciliation with sock_diag and the kernel maps",
            Unit::Seconds,
            self.refresh_seconds.clone(),
        );
        t.register(
            "refresh_errors",
            "Reconciliations that failed",
            self.refresh_errors.clone(),
        );
        self
    }

    /// What changes with every event: state gauges, transition and close counters, losses,
    /// the table, the programs' statistics and the agent's own usage.
    pub fn observe_events(&mut self, live: &Live) {
        let agg = &live.agg;
        for (st, n) in agg.state_counts(Clock::now_mono_ns()) {
            self.connections
                .get_or_create(&StateLabel {
                    state: state_name(st),
                })
                .set(gauge(n));
        }
        for (&(from, to), &n) in &agg.transitions {
            let labels = TransitionLabels {
                from: state_name(from),
                to: state_name(to),
            };
            advance(&self.transitions.get_or_create(&labels), n);
        }
        advance(&self.retransmits, agg.retransmits);
        for (end, &n) in &agg.closes {
            let labels = EndLabel {
                end: end.name().to_owned(),
            };
            advance(&self.closes.get_or_create(&labels), n);
        }
        for c in LossCause::LIVE {
            let labels = CauseLabel {
                cause: c.name().to_owned(),
            };
            advance(&self.lost.get_or_create(&labels), live.losses.total(c));
        }
        advance(&self.events, live.events);
        advance(&self.late, live.probes.late_events());
        let table = agg.table();
        self.table_sockets.set(gauge(table.len() as u64));
        self.table_capacity.set(gauge(table.capacity as u64));
        advance(&self.table_refused, table.refused);
        advance(&self.sock_map_evictions, agg.sock_map_evictions);
        advance(&self.proc_map_evictions, agg.proc_map_evictions);
        for (tp, s) in live.probes.program_stats() {
            let labels = ProgramLabel {
                program: tp.name().to_owned(),
            };
            advance_f64(
                &self.run_seconds.get_or_create(&labels),
                Duration::from_nanos(s.run_time_ns).as_secs_f64(),
            );
            advance(&self.runs.get_or_create(&labels), s.run_cnt);
            advance(
                &self.recursion_misses.get_or_create(&labels),
                s.recursion_misses,
            );
        }
        self.bpf_stats.set(i64::from(
            bpf_stats::enabled(self.stats_held).unwrap_or(false),
        ));
        if let Some(u) = self_usage::read() {
            advance_f64(&self.cpu, u.cpu_seconds);
            self.rss.set(gauge(u.rss_bytes));
            self.vsize.set(gauge(u.virtual_bytes));
            self.fds.set(gauge(u.open_fds));
            self.start_time.set(u.start_time_seconds);
        }
    }

    /// What changes only when the agent reconciles: per-command bytes, listeners, and the
    /// refresh's own duration and outcome (`None` for the start-up state).
    pub fn observe_refresh(&mut self, live: &Live, refresh: Option<(Duration, bool)>) {
        for name in self.slots.observe(live.agg.proc_bytes(), Instant::now()) {
            // The series ends; if the command earns a slot again it restarts from 0, which
            // Prometheus reads as a counter reset.
            let labels = CommLabel { comm: name };
            self.sent.remove(&labels);
            self.received.remove(&labels);
        }
        for (name, t) in self.slots.totals() {
            let labels = CommLabel {
                comm: name.to_owned(),
            };
            advance(&self.sent.get_or_create(&labels), t.sent);
            advance(&self.received.get_or_create(&labels), t.received);
        }

        let mut rows = live.stats(0, ProcSort::Bytes).listeners;
        self.listeners.set(gauge(rows.len() as u64));
        rows.sort_by(|a, b| {
            b.accept_queue
                .cmp(&a.accept_queue)
                .then_with(|| a.local.port().cmp(&b.local.port()))
                .then_with(|| a.local.cmp(&b.local))
        });
        // Gauges of listeners outside the top vanish; reuseport groups share one series.
        let mut shown: HashMap<ListenerLabels, (u32, u32)> = HashMap::new();
        for r in rows.iter().take(self.top) {
            let labels = ListenerLabels {
                addr: r.local.to_string(),
                comm: r
                    .comm
                    .clone()
                    .filter(|c| !c.is_empty())
                    .unwrap_or_else(|| comm_slots::UNKNOWN.to_owned()),
            };
            let e = shown.entry(labels).or_default();
            e.0 += r.accept_queue;
            e.1 += r.backlog;
        }
        self.accept_queue.clear();
        self.backlog.clear();
        for (labels, (queue, backlog)) in shown {
            self.accept_queue
                .get_or_create(&labels)
                .set(i64::from(queue));
            self.backlog.get_or_create(&labels).set(i64::from(backlog));
        }

        for d in &live.probes.degraded {
            self.degraded
                .get_or_create(&FeatureLabel {
                    feature: d.feature.to_owned(),
                })
                .set(1);
        }
        if let Some((took, failed)) = refresh {
            self.refresh_seconds.set(took.as_secs_f64());
            if failed {
                self.refresh_errors.inc();
            }
        }
        self.observe_events(live);
    }

    pub fn encode(&self, format: Format) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        match format {
            Format::OpenMetrics => out,
            Format::Text => exposition::to_text(&out),
        }
    }
}
