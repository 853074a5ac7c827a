//! The ring-buffer reader task: waits for readiness of any ring with `AsyncFd`, drains them all
//! completely (readiness is edge-triggered), merges the rings' records into timestamp order,
//! decodes each into an owned event when it is due, and sends them in batches over a bounded
//! channel. When the consumer falls behind, the channel fills, the kernel's rings fill, and the
//! kernel counts what it drops: back-pressure never hides a loss.

use std::{
    future::poll_fn,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::Poll,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::mpsc};
use tokio_util::sync::CancellationToken;
use tracer_common::{RawEvent, rings::RINGS};

use crate::{
    attribution::Attributor,
    capture::raw::from_bytes,
    clock::Clock,
    event::{DecodeError, Event, decode, decode_raw},
    links::Links,
    merge::{ALL, HOLD, Merge, Record},
    stage::Stages,
};

/// Records per batch: large enough to amortise channel overhead, small enough to stay prompt.
pub const BATCH: usize = 1024;

/// Records taken from one ring per drain, so a drain under a flood holds bounded memory.
const DRAIN_LIMIT: usize = 65_536;

pub type Batch = Vec<Result<Event, DecodeError>>;

type Ring = AsyncFd<RingBuf<MapData>>;

/// Reads until `cancel` fires, then detaches the programs (`links`), drains what is left and
/// returns: after that last drain nothing can be written. `tick` makes the reader also drain on
/// a timer: needed when the kernel suppresses wakeups (batched wakeup mode). `late` follows the
/// count of events delivered out of order (see [`Merge::late`]). `stages`, when the kernel
/// stages events per CPU, are flushed before every drain, the last one included. With userspace
/// attribution, `attributor` completes the events in timestamp order before they are decoded.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    rings: Vec<RingBuf<MapData>>,
    mut stages: Option<Stages>,
    mut attributor: Option<Attributor>,
    links: Links,
    tx: mpsc::Sender<Batch>,
    cancel: CancellationToken,
    tick: Option<Duration>,
    late: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let mut rings = rings
        .into_iter()
        // SAFETY: each ring buffer owns its map fd and keeps it open, unchanged, while it
        // lives inside the AsyncFd.
        .map(|r| {
            unsafe { AsyncFd::register_with_interest(r, tokio::io::Interest::READABLE) }
                .map_err(std::io::Error::from)
        })
        .collect::<std::io::Result<Vec<Ring>>>()?;
    let mut merge = Merge::new(rings.len(), HOLD);
    let mut timer = tick.map(tokio::time::interval);
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            ready = any_readable(&mut rings) => ready?,
            _ = async { timer.as_mut().expect("guarded").tick().await }, if timer.is_some() => {}
            // Held events become due without any new record arriving.
            _ = tokio::time::sleep(HOLD), if !merge.is_empty() => {}
        }
        let open = drain(
            &mut rings,
            stages.as_mut(),
            attributor.as_mut(),
            &mut merge,
            &tx,
            false,
        )
        .await?;
        late.store(merge.late(), Ordering::Relaxed);
        if !open {
            return Ok(());
        }
    }
    drop(links);
    drain(
        &mut rings,
        stages.as_mut(),
        attributor.as_mut(),
        &mut merge,
        &tx,
        true,
    )
    .await?;
    late.store(merge.late(), Ordering::Relaxed);
    Ok(())
}

/// Waits until at least one ring is readable, and clears the readiness of every ring that is:
/// a record committed during the drain that follows re-arms it.
async fn any_readable(rings: &mut [Ring]) -> std::io::Result<()> {
    poll_fn(|cx| {
        let mut any = false;
        for ring in rings.iter_mut() {
            if let Poll::Ready(guard) = ring.poll_read_ready_mut(cx) {
                guard?.clear_ready();
                any = true;
            }
        }
        if any {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await
}

/// Queues the events of `bytes`, a whole number of them, as read from ring `ring`.
fn push_events(merge: &mut Merge<Record>, ring: usize, bytes: &[u8]) {
    for raw in bytes.chunks_exact(RawEvent::SIZE) {
        if let Ok(raw) = <[u8; RawEvent::SIZE]>::try_from(raw) {
            merge.push(ring, Record(raw));
        }
    }
}

/// Flushes the stages, reads every ring and sends what the merge releases (everything when
/// `last`). Returns false when the consumer has gone.
async fn drain(
    rings: &mut [Ring],
    mut stages: Option<&mut Stages>,
    mut attributor: Option<&mut Attributor>,
    merge: &mut Merge<Record>,
    tx: &mpsc::Sender<Batch>,
    last: bool,
) -> std::io::Result<bool> {
    loop {
        // Before flushing and reading: every event older than this (less the hold) is in a ring
        // by now.
        let drained_ns = Clock::now_mono_ns();
        if let Some(stages) = stages.as_deref_mut() {
            // An offline CPU's partial batch, taken from its stage, goes where the CPU's ring
            // would have put it.
            stages
                .flush(|cpu, events| push_events(merge, cpu % RINGS, events))
                .map_err(std::io::Error::other)?;
        }
        let mut batch: Batch = Vec::with_capacity(BATCH);
        let mut more = false;
        for (i, ring) in rings.iter_mut().enumerate() {
            let ring = ring.get_mut();
            let mut n = 0;
            while n < DRAIN_LIMIT {
                let Some(item) = ring.next() else { break };
                // A record holds one event or a batch of them (see `stage`); any other length
                // is one decode error, not events cut from its first bytes.
                if item.is_empty() || item.len() % RawEvent::SIZE != 0 {
                    batch.push(decode(&item));
                } else {
                    push_events(merge, i, &item);
                }
                n += 1;
            }
            more |= n == DRAIN_LIMIT;
        }
        let upto = merge.horizon(if last && !more { ALL } else { drained_ns });
        while let Some(rec) = merge.pop(upto) {
            match attributor.as_deref_mut() {
                None => batch.push(decode(&rec.0)),
                Some(a) => a.feed(from_bytes(&rec.0), &mut |ev| batch.push(decode_raw(&ev))),
            }
            if batch.len() >= BATCH && tx.send(std::mem::take(&mut batch)).await.is_err() {
                return Ok(false);
            }
        }
        if !batch.is_empty() && tx.send(batch).await.is_err() {
            return Ok(false);
        }
        if !more {
            return Ok(true);
        }
    }
}
