//! Live aggregation: the kernel programs feed an [`Aggregator`], seeded by a sock_diag dump
//! taken after they attached, and refreshed periodically (timewait and request socket counts,
//! listeners' accept queues, per-process bytes, loss counters). `stats`, `top` and `agent` are
//! views over this.

use std::{
    collections::VecDeque,
    io,
    time::{Duration, Instant},
};

use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    aggregate::{
        Aggregator, Listener, MiniCounts,
        view::{ProcSort, Stats},
    },
    anomaly::{Anomaly, Detector, Gathered, Needs, netstat::TcpExt},
    cli::Wakeup,
    clock::Clock,
    loss::{LossCause, LossTotals},
    owners,
    probes::{LoadError, ProbeOptions, Probes},
    reader::Batch,
    session::{Session, SessionError},
    snapshot::{self, Kinds, SnapshotError, SockKind},
};

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("start-up snapshot of existing sockets: {0}")]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{0}")]
    Join(String),
}

#[derive(Debug, Clone)]
pub struct LiveOptions {
    pub probes: ProbeOptions,
    pub wakeup: Wakeup,
    pub duration: Option<Duration>,
    /// Capacity of the userspace connection table.
    pub max_connections: usize,
    /// Print start-up status lines on stderr (the agent logs them through `tracing` instead).
    pub announce: bool,
}

/// What the start-up dump found.
#[derive(Debug, Clone, Copy, Default)]
pub struct SnapshotSummary {
    pub full: usize,
    pub time_wait: usize,
    pub request: usize,
    pub owners: usize,
    pub elapsed: Duration,
}

pub struct Live {
    pub probes: Probes,
    rx: mpsc::Receiver<Batch>,
    pub cancel: CancellationToken,
    reader: Option<JoinHandle<io::Result<()>>>,
    pub agg: Aggregator,
    pub losses: LossTotals,
    /// Events applied.
    pub events: u64,
    pub snapshot: SnapshotSummary,
    closed: bool,
    /// Set by the first [`Live::next`]: from then on batches applied elsewhere (a refresh
    /// applies what queued during its dump) wait in `unseen` until `next` hands them back.
    hands_back: bool,
    unseen: VecDeque<Batch>,
    tap: Option<Tap>,
    /// Anomaly detection, fed every applied event (see [`Live::enable_detection`]).
    pub detector: Option<Detector>,
    /// Status lines go to stderr (false: the agent logs them).
    announce: bool,
}

/// One detection round: when it ran, what it read from the host, what it found.
#[derive(Debug)]
pub struct Detection {
    pub at_ns: u64,
    pub inputs: Gathered,
    pub anomalies: Vec<Anomaly>,
}

/// Reads the host-side detector inputs: TcpExt and `tcp_max_tw_buckets` every time, the
/// request and timewait dumps only when the detectors asked.
fn gather(needs: Needs) -> Gathered {
    let dump = |want: bool, k: Kinds| want.then(|| snapshot::dump(k).ok()).flatten();
    let requests = Kinds {
        full: false,
        time_wait: false,
        request: true,
    };
    let time_wait = Kinds {
        full: false,
        time_wait: true,
        request: false,
    };
    Gathered {
        netstat: TcpExt::read(),
        requests: dump(needs.requests, requests),
        time_wait: dump(needs.time_wait, time_wait),
        max_tw_buckets: std::fs::read_to_string("/proc/sys/net/ipv4/tcp_max_tw_buckets")
            .ok()
            .and_then(|s| s.trim().parse().ok()),
    }
}

/// What [`Live::next`] returns.
pub enum Next {
    /// A batch, already applied to the aggregator (and the detector).
    Batch(Batch),
    Deadline,
    /// The session is over and everything queued has been applied.
    Closed,
}

/// Sees every batch before the aggregator applies it, with the aggregator as it stands (so a
/// state snapshot taken there matches the events that follow): `tracer record` and the
/// agent's flight recorder.
pub type Tap = Box<dyn FnMut(&Batch, &Aggregator) + Send>;

/// Inode of the caller's network namespace (`/proc/self/ns/net` -> `net:[4026531840]`).
pub fn own_netns() -> Option<u32> {
    let link = std::fs::read_link("/proc/self/ns/net").ok()?;
    let s = link.to_str()?;
    s.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, LiveError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| LiveError::Join(e.to_string()))
}

impl Live {
    /// Attaches the programs, then dumps the sockets that already exist. Transitions that
    /// happen during the dump queue in the channel and are applied after it.
    pub async fn start(opts: &LiveOptions) -> Result<Self, LiveError> {
        let session = Session::start(&opts.probes, opts.wakeup, opts.duration, opts.announce)?;
        if opts.announce {
            eprintln!("{}", session.attached_line());
        }
        let (probes, rx, cancel, reader) = session.into_parts();
        let began = Instant::now();
        let (socks, owner_map) =
            blocking(|| (snapshot::dump(Kinds::ALL), owners::socket_owners())).await?;
        let socks = socks?;
        let mut agg = Aggregator::new(opts.max_connections, own_netns());
        agg.seed(&socks, &owner_map);
        agg.set_listeners(listeners_of(&socks));
        let (full, time_wait, request) = (
            socks.iter().filter(|s| s.kind == SockKind::Full).count(),
            socks
                .iter()
                .filter(|s| s.kind == SockKind::TimeWait)
                .count(),
            socks.iter().filter(|s| s.kind == SockKind::Request).count(),
        );
        let owners = owner_map.len();
        drop((socks, owner_map));
        release_freed_memory();
        let snapshot = SnapshotSummary {
            full,
            time_wait,
            request,
            owners,
            elapsed: began.elapsed(),
        };
        if opts.announce {
            eprintln!(
                "tracer: snapshot: {} sockets, {} timewait, {} half-open in {} ms",
                snapshot.full,
                snapshot.time_wait,
                snapshot.request,
                snapshot.elapsed.as_millis()
            );
        }
        let mut live = Self {
            probes,
            rx,
            cancel,
            reader: Some(reader),
            agg,
            losses: LossTotals::default(),
            events: 0,
            snapshot,
            closed: false,
            hands_back: false,
            unseen: VecDeque::new(),
            tap: None,
            detector: None,
            announce: opts.announce,
        };
        live.refresh_kernel();
        Ok(live)
    }

    /// Applies events until `deadline`. Returns false once the session is over (signal,
    /// duration, or the reader stopped) and everything queued has been applied.
    pub async fn run_until(&mut self, deadline: tokio::time::Instant) -> bool {
        loop {
            if self.closed {
                return false;
            }
            tokio::select! {
                batch = self.rx.recv() => match batch {
                    Some(batch) => self.apply(&batch),
                    None => self.closed = true,
                },
                _ = tokio::time::sleep_until(deadline) => return true,
                // Keep applying: the reader drains the ring and then closes the channel.
                _ = self.cancel.cancelled(), if !self.cancel.is_cancelled() => {}
            }
        }
    }

    pub fn set_tap(&mut self, tap: Tap) {
        self.tap = Some(tap);
    }

    fn apply(&mut self, batch: &Batch) {
        if let Some(tap) = &mut self.tap {
            tap(batch, &self.agg);
        }
        for item in batch {
            match item {
                Ok(ev) => {
                    self.events += 1;
                    self.agg.apply(ev);
                    if let Some(d) = &mut self.detector
                        && self.agg.in_scope(ev)
                    {
                        d.observe(ev);
                    }
                }
                Err(_) => self.losses.add(LossCause::Decode, 1),
            }
        }
    }

    /// Like [`Live::run_until`], but hands each applied batch back, exactly once and in order,
    /// including those a [`Live::refresh`] applied since the last call (for commands that also
    /// print the events).
    pub async fn next(&mut self, deadline: tokio::time::Instant) -> Next {
        self.hands_back = true;
        if let Some(batch) = self.unseen.pop_front() {
            return Next::Batch(batch);
        }
        loop {
            if self.closed {
                return Next::Closed;
            }
            tokio::select! {
                batch = self.rx.recv() => match batch {
                    Some(batch) => {
                        self.apply(&batch);
                        return Next::Batch(batch);
                    }
                    None => self.closed = true,
                },
                _ = tokio::time::sleep_until(deadline) => return Next::Deadline,
                _ = self.cancel.cancelled(), if !self.cancel.is_cancelled() => {}
            }
        }
    }

    /// Turns anomaly detection on; detectors whose kernel signal is missing are noted.
    pub fn enable_detection(&mut self, cfg: crate::anomaly::Config) {
        use crate::{anomaly::Kind, format::Tracepoint};
        let mut d = Detector::new(cfg);
        for (tp, kind) in [
            (Tracepoint::TcpRetransmitSynack, Kind::SynFlood),
            (Tracepoint::TcpSendReset, Kind::ResetStorm),
            (Tracepoint::TcpReceiveReset, Kind::ResetStorm),
            (Tracepoint::TcpRetransmitSkb, Kind::RetransmitStorm),
        ] {
            if !self.probes.attached.contains(&tp) {
                d.mark_unavailable(
                    kind,
                    format!(
                        "runs without {}:{} (not attached)",
                        tp.category(),
                        tp.name()
                    ),
                );
            }
        }
        self.detector = Some(d);
    }

    /// One `degraded` line on stderr per detector input this kernel lacks (the CLI commands;
    /// the agent logs them instead).
    pub fn print_detection_gaps(&self) {
        if let Some(d) = &self.detector {
            for (kind, why) in &d.unavailable {
                eprintln!("tracer: degraded: {}: {why}", kind.name());
            }
        }
    }

    /// Runs the detectors once (call about every second): gathers what they need (TcpExt
    /// counters; request or timewait dumps only when asked for) and returns the anomalies
    /// raised or cleared, with the time and inputs of the round (what a capture stores).
    /// `None` without detection.
    pub async fn detect(&mut self) -> Option<Detection> {
        let d = self.detector.as_ref()?;
        let at_ns = Clock::now_mono_ns();
        let needs = d.needs(&self.agg, at_ns);
        let inputs = blocking(move || gather(needs)).await.ok()?;
        let anomalies = self
            .detector
            .as_mut()?
            .tick(at_ns, &self.agg, &inputs.inputs());
        Some(Detection {
            at_ns,
            inputs,
            anomalies,
        })
    }

    /// Applies everything queued now, without waiting (kept for [`Live::next`] once it is
    /// in use).
    pub fn apply_pending(&mut self) {
        while let Ok(batch) = self.rx.try_recv() {
            self.apply(&batch);
            if self.hands_back {
                self.unseen.push_back(batch);
            }
        }
    }

    /// Kernel-side reads: per-process bytes and loss counters. Cheap (map lookups).
    fn refresh_kernel(&mut self) {
        // The insert count first: see `Aggregator::observe_proc_inserts`.
        let inserted = self.probes.proc_inserts();
        if let Ok(bytes) = self.probes.proc_bytes() {
            self.agg.set_proc_bytes(bytes);
            if let Ok(inserted) = inserted {
                self.agg.observe_proc_inserts(inserted);
            }
        }
        // Events carry the comm of the thread that was observed (`accept-0`); rows name the
        // process. Read once per process; a process that has exited keeps its thread's comm.
        let names = self.agg.unnamed_pids().into_iter().filter_map(|pid| {
            let comm = std::fs::read(format!("/proc/{pid}/comm")).ok()?;
            let comm = comm.strip_suffix(b"\n").unwrap_or(&comm);
            Some((pid, crate::event::Comm::new(comm)))
        });
        let names: Vec<_> = names.collect();
        self.agg.set_process_names(names);
        let _ = self.probes.observe_losses(&mut self.losses);
    }

    /// Reconciles what no transition reports: counts of timewait and request sockets and the
    /// listeners' accept queues, from a dump of just those; then the kernel-side reads.
    pub async fn refresh(&mut self) -> Result<(), LiveError> {
        let started = Clock::now_mono_ns();
        let (mini, listeners) =
            blocking(|| (snapshot::count(Kinds::MINI), snapshot::dump_listeners())).await?;
        // Transitions that happened while the dump ran are queued: apply them first, so the
        // timewait sockets they created are on the books before the reconciliation drops the
        // ones the dump already counted.
        self.apply_pending();
        self.agg.reconcile(MiniCounts::from_counts(&mini?), started);
        self.agg.set_listeners(listeners_of(&listeners?));
        self.refresh_kernel();
        Ok(())
    }

    pub fn stats(&self, top: usize, sort: ProcSort) -> Stats {
        self.agg
            .stats(Clock::now_mono_ns(), top, sort, &self.losses)
    }

    /// Stops the reader and detaches the programs.
    pub async fn stop(mut self) -> Result<(), LiveError> {
        self.cancel.cancel();
        // Consume what the reader drains so it can finish.
        while let Some(batch) = self.rx.recv().await {
            self.apply(&batch);
        }
        if let Some(reader) = self.reader.take() {
            Session::join_reader(reader).await?;
        }
        let late = self.probes.late_events();
        if let Some(note) = crate::stream::late_note(late) {
            // The agent's warnings go through `tracing`; the terminal commands print.
            if self.announce {
                eprintln!("tracer: {note}");
            } else {
                tracing::warn!(
                    late_events = late,
                    "events delivered out of timestamp order"
                );
            }
        }
        Ok(())
    }
}

/// The start-up dump of a busy host allocates tens of MiB that are freed at once; glibc keeps
/// freed heap mapped unless asked, which would count against a long-running agent's RSS.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn listeners_of(socks: &[snapshot::DiagSocket]) -> Vec<Listener> {
    socks
        .iter()
        .filter(|s| s.kind == SockKind::Full && s.state == tracer_common::state::LISTEN)
        .map(|s| Listener {
            local: std::net::SocketAddr::new(s.local.ip(), s.local.port()),
            accept_queue: s.rqueue,
            backlog: s.wqueue,
            inode: s.inode,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_netns_is_readable() {
        assert!(super::own_netns().is_some_and(|n| n > 0));
    }
}
