//! What every live command does first: check privileges, load and attach the kernel programs,
//! report what is degraded, seed listener owners, and start the ring-buffer reader; and last:
//! detach when stopping, then let the reader drain what the programs wrote.

use std::{io, time::Duration};

use tokio::{signal::unix::SignalKind, sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    cli::Wakeup,
    privileges::{self, PrivilegeError},
    probes::{LoadError, ProbeOptions, Probes},
    reader::{self, Batch},
};

/// Reader drain period in batched wakeup mode: bounds delivery latency on a quiet host.
pub const BATCHED_DRAIN: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Privilege(#[from] PrivilegeError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("reading the ring buffer: {0}")]
    Reader(io::Error),
}

pub struct Session {
    pub probes: Probes,
    pub rx: mpsc::Receiver<Batch>,
    /// Fires on SIGINT, SIGTERM, at the end of the duration, or when the command is done.
    pub cancel: CancellationToken,
    reader: JoinHandle<io::Result<()>>,
}

impl Session {
    pub fn start(
        opts: &ProbeOptions,
        wakeup: Wakeup,
        duration: Option<Duration>,
        announce: bool,
    ) -> Result<Self, SessionError> {
        privileges::check()?;
        let mut probes = Probes::load(opts)?;
        if announce && probes.tracefs.mounted_by_us {
            eprintln!(
                "tracer: mounted tracefs on {}",
                probes.tracefs.root().display()
            );
        }
        for d in probes.degraded.iter().filter(|_| announce) {
            eprintln!("tracer: degraded: {}: {}", d.feature, d.reason);
        }
        let rings = probes.take_rings()?;
        let stages = probes.take_stages();
        // After attaching, so a listener opened meanwhile is caught by the kernel side instead.
        let listeners = crate::owners::listening_owners();
        let seeded = probes.seed_listeners(&listeners)?;
        let attributor = probes.attributor(&listeners);
        if announce && seeded > 0 {
            eprintln!("tracer: found the owners of {seeded} existing listening ports");
        }
        let cancel = CancellationToken::new();
        spawn_stopper(cancel.clone(), duration).map_err(SessionError::Reader)?;
        let (tx, rx) = mpsc::channel::<Batch>(256);
        let tick = (wakeup == Wakeup::Batched).then_some(BATCHED_DRAIN);
        let links = probes.take_links();
        let late = probes.late_counter();
        let reader = tokio::spawn(reader::run(
            rings,
            stages,
            attributor,
            links,
            tx,
            cancel.clone(),
            tick,
            late,
        ));
        Ok(Self {
            probes,
            rx,
            cancel,
            reader,
        })
    }

    /// The "attached ..." line every command prints once it is live.
    pub fn attached_line(&self) -> String {
        let mut names: Vec<&str> = self.probes.attached.iter().map(|tp| tp.name()).collect();
        if self.probes.catcher {
            names.push("raw-tracepoint catchers of skipped events");
        }
        format!(
            "tracer: attached {}; owners attributed in {}",
            names.join(", "),
            match self.probes.attribution {
                tracer_common::Attribution::Kernel => "the kernel",
                tracer_common::Attribution::Userspace => "userspace",
            }
        )
    }

    /// Waits for the reader, which drains the ring after cancellation and then closes the
    /// channel. Call after the channel has been consumed to its end (or dropped).
    pub async fn join_reader(reader: JoinHandle<io::Result<()>>) -> Result<(), SessionError> {
        reader
            .await
            .map_err(|e| SessionError::Reader(io::Error::other(e)))?
            .map_err(SessionError::Reader)
    }

    /// Splits off the reader handle, for commands that consume the channel themselves.
    pub fn into_parts(
        self,
    ) -> (
        Probes,
        mpsc::Receiver<Batch>,
        CancellationToken,
        JoinHandle<io::Result<()>>,
    ) {
        (self.probes, self.rx, self.cancel, self.reader)
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
