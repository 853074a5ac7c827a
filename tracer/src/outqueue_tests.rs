use std::sync::{Arc, Mutex};

use tracer_common::state;

use super::*;
use crate::event::{
    decode,
    tests::{encode, raw_v4},
};

/// A writer that blocks its first write until the test opens it, like stdout into a pipe
/// nobody reads yet.
struct Gate {
    open: mpsc::Receiver<()>,
    shut: bool,
    out: Arc<Mutex<Vec<u8>>>,
}

impl Write for Gate {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        if self.shut {
            let _ = self.open.recv();
            self.shut = false;
        }
        self.out.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A writer that shares what it got with the test.
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn gated(capacity: usize) -> (OutputQueue, mpsc::Sender<()>, Arc<Mutex<Vec<u8>>>) {
    let (open, rx) = mpsc::channel();
    let out = Arc::new(Mutex::new(Vec::new()));
    let gate = Gate {
        open: rx,
        shut: true,
        out: out.clone(),
    };
    let q = OutputQueue::spawn(gate, Format::Json, Clock::with_offset(0), capacity).unwrap();
    (q, open, out)
}

/// The `i`-th state event (its local port tells them apart); `close` makes it end a connection.
fn event(i: u16, close: bool) -> Event {
    let mut raw = raw_v4();
    raw.sport = i;
    if close {
        raw.old_state = state::LAST_ACK;
        raw.new_state = state::CLOSE;
    }
    decode(&encode(&raw)).unwrap()
}

const ALL: View = View {
    states: true,
    closes: true,
};

fn lines(out: &Mutex<Vec<u8>>) -> Vec<serde_json::Value> {
    String::from_utf8(out.lock().unwrap().clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Local ports of the state events printed, in order (the tests number events by port).
fn state_ports(got: &[serde_json::Value]) -> Vec<u64> {
    got.iter()
        .filter(|v| v["type"] == "state")
        .map(|v| v["sport"].as_u64().unwrap())
        .collect()
}

#[test]
fn full_queue_drops_the_exact_excess_and_reports_it() {
    let (mut q, open, out) = gated(8);
    for i in 1..=20 {
        q.print_event(event(i, false), ALL).unwrap();
        // Hands the first event to the writer, which then blocks on it.
        q.flush().unwrap();
    }
    let mut losses = LossTotals::default();
    q.report_losses(&mut losses).unwrap();
    open.send(()).unwrap();
    q.finish().unwrap();
    assert_eq!(losses.total(LossCause::OutputQueueFull), 12);
    let got = lines(&out);
    let ports = state_ports(&got);
    assert_eq!(ports, (1..=8).collect::<Vec<_>>());
    let lost = got.last().unwrap();
    assert_eq!(
        (
            lost["type"].as_str(),
            lost["cause"].as_str(),
            lost["count"].as_u64()
        ),
        (Some("lost"), Some("output_queue_full"), Some(12))
    );
}

#[test]
fn an_event_and_its_close_record_are_kept_or_dropped_together() {
    let (mut q, open, out) = gated(1);
    q.print_event(event(1, true), ALL).unwrap();
    q.flush().unwrap();
    q.print_event(event(2, true), ALL).unwrap();
    // Nothing printed for it, so nothing to drop: a state event when only closes are wanted.
    let closes_only = View {
        states: false,
        closes: true,
    };
    q.print_event(event(3, false), closes_only).unwrap();
    let mut losses = LossTotals::default();
    q.report_losses(&mut losses).unwrap();
    open.send(()).unwrap();
    q.finish().unwrap();
    assert_eq!(losses.total(LossCause::OutputQueueFull), 1);
    let kinds: Vec<_> = lines(&out)
        .iter()
        .map(|v| (v["type"].as_str().unwrap().to_owned(), v["sport"].as_u64()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("state".to_owned(), Some(1)),
            ("close".to_owned(), Some(1)),
            ("lost".to_owned(), None)
        ]
    );
}

#[test]
fn every_event_is_printed_in_order_or_counted() {
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut q =
        OutputQueue::spawn(Shared(out.clone()), Format::Json, Clock::with_offset(0), 2).unwrap();
    let mut losses = LossTotals::default();
    for i in 1..=5000 {
        q.print_event(event(i, false), ALL).unwrap();
        if i % 3 == 0 {
            q.flush().unwrap();
        }
        if i % 1000 == 0 {
            q.report_losses(&mut losses).unwrap();
        }
    }
    q.report_losses(&mut losses).unwrap();
    q.finish().unwrap();
    let got = lines(&out);
    let ports = state_ports(&got);
    assert!(ports.windows(2).all(|w| w[0] < w[1]), "out of order");
    let reported: u64 = got
        .iter()
        .filter(|v| v["type"] == "lost")
        .map(|v| v["count"].as_u64().unwrap())
        .sum();
    assert_eq!(reported, losses.total(LossCause::OutputQueueFull));
    assert_eq!(ports.len() as u64 + reported, 5000);
}

#[test]
fn a_failed_writer_fails_the_queue() {
    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut q = OutputQueue::spawn(Broken, Format::Human, Clock::with_offset(0), 16).unwrap();
    q.header().unwrap();
    q.print_event(event(1, false), ALL).unwrap();
    let err = q.finish().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
}
