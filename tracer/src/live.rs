//! Live aggregation: the kernel programs feed an [`Aggregator`], seeded by a sock_diag dump
//! taken after they attached, and refreshed periodically (timewait and request socket counts,
//! listeners' accept queues, per-process bytes, loss counters). `stats`, `top` and `agent` are
//! views over this.

use std::{
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
}

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
        let session = Session::start(&opts.probes, opts.wakeup, opts.duration)?;
        eprintln!("{}", session.attached_line());
        let (probes, rx, cancel, reader) = session.into_parts();
        let began = Instant::now();
        let (socks, owner_map) =
            blocking(|| (snapshot::dump(Kinds::ALL), owners::socket_owners())).await?;
        let socks = socks?;
        let mut agg = Aggregator::new(opts.max_connections, own_netns());
        agg.seed(&socks, &owner_map);
        agg.set_listeners(listeners_of(&socks));
        let count = |k| socks.iter().filter(|s| s.kind == k).count();
        let snapshot = SnapshotSummary {
            full: count(SockKind::Full),
            time_wait: count(SockKind::TimeWait),
            request: count(SockKind::Request),
            owners: owner_map.len(),
            elapsed: began.elapsed(),
        };
        eprintln!(
            "tracer: snapshot: {} sockets, {} timewait, {} half-open in {} ms",
            snapshot.full,
            snapshot.time_wait,
            snapshot.request,
            snapshot.elapsed.as_millis()
        );
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
                    Some(batch) => self.apply(batch),
                    None => self.closed = true,
                },
                _ = tokio::time::sleep_until(deadline) => return true,
                // Keep applying: the reader drains the ring and then closes the channel.
                _ = self.cancel.cancelled(), if !self.cancel.is_cancelled() => {}
            }
        }
    }

    fn apply(&mut self, batch: Batch) {
        for item in batch {
            match item {
                Ok(ev) => {
                    self.events += 1;
                    self.agg.apply(&ev);
                }
                Err(_) => self.losses.add(LossCause::Decode, 1),
            }
        }
    }

    /// Applies everything queued now, without waiting.
    pub fn apply_pending(&mut self) {
        while let Ok(batch) = self.rx.try_recv() {
            self.apply(batch);
        }
    }

    /// Kernel-side reads: per-process bytes and loss counters. Cheap (map lookups).
    fn refresh_kernel(&mut self) {
        if let Ok(bytes) = self.probes.proc_bytes() {
            self.agg.set_proc_bytes(bytes);
        }
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
            self.apply(batch);
        }
        if let Some(reader) = self.reader.take() {
            Session::join_reader(reader).await?;
        }
        Ok(())
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
