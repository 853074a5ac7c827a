//! The bounded output queue of `tracer stream` (with or without `--anomalies`) and of
//! `tracer record --print`. The task that drains the ring buffer formats each event's
//! records and hands them to a writer thread, so a stalled stdout (a pipe nobody reads, a file
//! on a disk in writeback) stalls only that thread, never the drain. The queue holds at most
//! `capacity` events; an event that finds it full is dropped whole and counted as
//! `output_queue_full`, so the loss is reported as what it is instead of filling the kernel ring
//! (`ringbuf_full`). Loss records, anomaly records and the header are never dropped: at most a
//! few per second.

use std::{
    io::{self, BufWriter, Write},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
        mpsc::{self, TryRecvError},
    },
    thread::JoinHandle,
};

use crate::{
    clock::Clock,
    event::Event,
    loss::{LossCause, LossTotals},
    output::{Format, Printer, Record},
    stream::{View, print_event},
};

/// Default capacity, in events (`--output-queue`): about 0.1 s of full-rate loopback churn.
pub const DEFAULT_CAPACITY: u32 = 65_536;

/// Formatted bytes handed to the writer at once (it also gets what there is at every flush).
const CHUNK_BYTES: usize = 64 << 10;

/// Formatted records and how many queued events they hold.
struct Chunk {
    bytes: Vec<u8>,
    events: usize,
}

pub struct OutputQueue {
    /// Formats into the open chunk.
    printer: Printer<Vec<u8>>,
    /// Events in the open chunk.
    events: usize,
    /// Events formatted and not yet written by the writer (the open chunk's included).
    queued: Arc<AtomicUsize>,
    capacity: usize,
    /// Events dropped since the last [`OutputQueue::report_losses`].
    dropped: u64,
    tx: Option<mpsc::Sender<Chunk>>,
    writer: Option<JoinHandle<io::Result<()>>>,
}

impl OutputQueue {
    /// A queue in front of buffered stdout.
    pub fn stdout(format: Format, clock: Clock, capacity: usize) -> io::Result<Self> {
        Self::spawn(
            BufWriter::with_capacity(1 << 16, io::stdout()),
            format,
            clock,
            capacity,
        )
    }

    /// A queue in front of `out`, written by a thread of its own.
    pub fn spawn<W: Write + Send + 'static>(
        out: W,
        format: Format,
        clock: Clock,
        capacity: usize,
    ) -> io::Result<Self> {
        // The channel is unbounded in chunks; `queued` bounds it in events, as chunks vary.
        let (tx, rx) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let done = queued.clone();
        let writer = std::thread::Builder::new()
            .name("tracer-output".into())
            .spawn(move || write_chunks(out, &rx, &done))?;
        Ok(Self {
            printer: Printer::new(Vec::with_capacity(CHUNK_BYTES), format, clock),
            events: 0,
            queued,
            capacity: capacity.max(1),
            dropped: 0,
            tx: Some(tx),
            writer: Some(writer),
        })
    }

    pub fn header(&mut self) -> io::Result<()> {
        self.printer.header()
    }

    /// Queues one event's records, printed by `print` (none, or the event and its close
    /// record), or drops them all when the queue is full.
    pub fn event(
        &mut self,
        print: impl FnOnce(&mut Printer<Vec<u8>>) -> io::Result<()>,
    ) -> io::Result<()> {
        let mark = self.printer.get_mut().len();
        let before = self.printer.printed();
        let printed = print(&mut self.printer);
        if printed.is_err() || self.printer.printed() == before {
            self.printer.get_mut().truncate(mark);
            return printed;
        }
        if self.full() {
            self.printer.get_mut().truncate(mark);
            return self.drop_event();
        }
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.events += 1;
        if self.printer.get_mut().len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(())
    }

    /// [`OutputQueue::event`] of the stream's records of `ev` (see [`print_event`]). An event
    /// that finds the queue full is not even formatted: a stall must not slow the drain.
    pub fn print_event(&mut self, ev: Event, view: View) -> io::Result<()> {
        if !view.prints(&ev) {
            return Ok(());
        }
        if self.full() {
            return self.drop_event();
        }
        self.event(|p| print_event(p, ev, view))
    }

    /// Only this task adds to `queued`, so a check that finds room cannot be overtaken.
    fn full(&self) -> bool {
        self.queued.load(Ordering::Acquire) >= self.capacity
    }

    fn drop_event(&mut self) -> io::Result<()> {
        self.dropped += 1;
        // Whatever is formatted goes to the writer, so it is never idle while events drop.
        self.send()
    }

    /// Queues a record that is never dropped (loss reports, anomalies).
    pub fn record(&mut self, rec: &Record) -> io::Result<()> {
        self.printer.print(rec)
    }

    /// Adds the events dropped here to `losses` as `output_queue_full`, then queues a `lost`
    /// record for every cause that grew since the last report.
    pub fn report_losses(&mut self, losses: &mut LossTotals) -> io::Result<()> {
        let dropped = std::mem::take(&mut self.dropped);
        if dropped > 0 {
            losses.add(LossCause::OutputQueueFull, dropped);
        }
        let now = Clock::now_mono_ns();
        for (cause, count) in losses.take_new() {
            self.record(&Record::Lost {
                ts_ns: now,
                cause,
                count,
            })?;
        }
        Ok(())
    }

    /// Hands what is formatted to the writer; never waits for it.
    pub fn flush(&mut self) -> io::Result<()> {
        self.send()
    }

    /// Hands over the rest and waits until the writer has written and flushed everything.
    pub fn finish(mut self) -> io::Result<()> {
        self.send()?;
        self.tx = None;
        self.join()
    }

    /// [`OutputQueue::finish`] without blocking the async runtime.
    pub async fn finish_async(self) -> io::Result<()> {
        tokio::task::spawn_blocking(move || self.finish())
            .await
            .map_err(io::Error::other)?
    }

    fn send(&mut self) -> io::Result<()> {
        if self.printer.get_mut().is_empty() {
            return Ok(());
        }
        let bytes = std::mem::replace(self.printer.get_mut(), Vec::with_capacity(CHUNK_BYTES));
        let chunk = Chunk {
            bytes,
            events: std::mem::take(&mut self.events),
        };
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(chunk).is_ok());
        if sent {
            return Ok(());
        }
        // The writer stopped: its error is the answer.
        self.tx = None;
        self.join()
            .and(Err(io::Error::other("the output writer stopped")))
    }

    fn join(&mut self) -> io::Result<()> {
        match self.writer.take() {
            Some(w) => w
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the output writer panicked"))),
            None => Err(io::Error::other("the output writer stopped")),
        }
    }
}

/// The writer thread: writes chunks in order, flushing whenever it has caught up.
fn write_chunks<W: Write>(
    mut out: W,
    rx: &mpsc::Receiver<Chunk>,
    queued: &AtomicUsize,
) -> io::Result<()> {
    loop {
        let chunk = match rx.try_recv() {
            Ok(c) => c,
            Err(TryRecvError::Empty) => {
                out.flush()?;
                match rx.recv() {
                    Ok(c) => c,
                    Err(_) => break,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        out.write_all(&chunk.bytes)?;
        queued.fetch_sub(chunk.events, Ordering::AcqRel);
    }
    out.flush()
}

#[cfg(test)]
#[path = "outqueue_tests.rs"]
mod tests;
