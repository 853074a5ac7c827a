//! The ring-buffer reader task: waits for readiness with `AsyncFd`, drains the buffer completely
//! (readiness is edge-triggered), decodes records into owned events, and sends them in batches
//! over a bounded channel. When the consumer falls behind, the channel fills, the kernel's ring
//! fills, and the kernel counts what it drops: back-pressure never hides a loss.

use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::mpsc};
use tokio_util::sync::CancellationToken;

use crate::{
    event::{DecodeError, Event, decode},
    links::Links,
};

/// Records per batch: large enough to amortise channel overhead, small enough to stay prompt.
pub const BATCH: usize = 1024;

pub type Batch = Vec<Result<Event, DecodeError>>;

/// Reads until `cancel` fires, then detaches the programs (`links`), drains what is left and
/// returns: after that last drain nothing can be written. `tick` makes the reader also drain on
/// a timer: needed when the kernel suppresses wakeups (batched wakeup mode).
pub async fn run(
    ring: RingBuf<MapData>,
    links: Links,
    tx: mpsc::Sender<Batch>,
    cancel: CancellationToken,
    tick: Option<Duration>,
) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged, while it lives
    // inside the AsyncFd.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE)? };
    let mut timer = tick.map(tokio::time::interval);
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                // Clear before draining: a record committed during the drain re-arms readiness.
                guard.clear_ready();
                if !drain(guard.get_inner_mut(), &tx).await {
                    return Ok(());
                }
            }
            _ = async { timer.as_mut().expect("guarded").tick().await }, if timer.is_some() => {
                if !drain(fd.get_mut(), &tx).await {
                    return Ok(());
                }
            }
        }
    }
    drop(links);
    drain(fd.get_mut(), &tx).await;
    Ok(())
}

/// Sends every record currently in the ring. Returns false when the consumer has gone.
async fn drain(ring: &mut RingBuf<MapData>, tx: &mpsc::Sender<Batch>) -> bool {
    loop {
        let mut batch = Vec::with_capacity(BATCH);
        while batch.len() < BATCH {
            match ring.next() {
                Some(item) => batch.push(decode(&item)),
                None => break,
            }
        }
        let full = batch.len() == BATCH;
        if !batch.is_empty() && tx.send(batch).await.is_err() {
            return false;
        }
        if !full {
            return true;
        }
    }
}
