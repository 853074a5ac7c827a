//! A CPU taken offline while it holds a partial batch of staged events (batched mode, the
//! default). The flush program cannot run there any more, so the reader takes the batch from
//! the stage's memory mapping: the events must be printed while the CPU is still offline, and
//! staging must work again on that CPU once it is back. Its own test binary: with one of two
//! CPUs offline, other tests would run on half the machine.

mod common;

use std::{
    net::{TcpListener, TcpStream},
    time::{Duration, Instant},
};

use common::*;

/// A CPU other than 0 that can be taken offline (x86 cannot take CPU 0 offline), if any.
fn hotpluggable_cpu() -> Option<usize> {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").ok()?;
    let last = online.trim().rsplit([',', '-']).next()?.parse().ok()?;
    (1..=last).rev().find(|cpu| {
        std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu{cpu}/online"))
            .is_ok_and(|s| s.trim() == "1")
    })
}

/// Brings the CPU back online when dropped, whatever the test did.
struct Offline(usize);

impl Offline {
    fn take(cpu: usize) -> Self {
        set_online(cpu, false);
        Self(cpu)
    }
}

impl Drop for Offline {
    fn drop(&mut self) {
        set_online(self.0, true);
    }
}

fn set_online(cpu: usize, online: bool) {
    let path = format!("/sys/devices/system/cpu/cpu{cpu}/online");
    std::fs::write(&path, if online { "1" } else { "0" })
        .unwrap_or_else(|e| panic!("writing {path}: {e}"));
}

/// Runs the calling thread on `cpus` only (None: on every CPU).
fn pin(cpus: Option<usize>) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET stays inside it for any CPU below
    // CPU_SETSIZE, and sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        match cpus {
            Some(cpu) => libc::CPU_SET(cpu, &mut set),
            None => (0..libc::CPU_SETSIZE as usize).for_each(|c| libc::CPU_SET(c, &mut set)),
        }
        let rc = libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set);
        assert_eq!(
            rc,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// A listener, one connection and both closes, all on `cpu` (loopback packets are processed on
/// the sender's CPU): twelve transitions, all left staged (a batch holds sixteen).
fn connection_on(cpu: usize, port: u16) {
    pin(Some(cpu));
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (server, _) = listener.accept().unwrap();
    drop(client);
    drop(server);
    drop(listener);
    pin(None);
}

const PER_CONNECTION: usize = 12;

/// Waits up to 2 s until the tracer has printed `n` lines; returns how many it printed.
fn printed_within(tracer: &Tracer, n: usize) -> usize {
    let start = Instant::now();
    loop {
        let printed = tracer.json_lines().len();
        if printed >= n || start.elapsed() > Duration::from_secs(2) {
            return printed;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_partial_batch_on_a_cpu_taken_offline_is_printed() {
    let test = "a_partial_batch_on_a_cpu_taken_offline_is_printed";
    if !kernel_available(test) {
        return;
    }
    let Some(cpu) = hotpluggable_cpu() else {
        assert!(
            !ci(),
            "{test}: CI needs a second CPU that can be taken offline"
        );
        eprintln!("\n!!! SKIPPED {test}: no CPU here can be taken offline\n");
        return;
    };
    let port = port();
    let p = port.to_string();
    let tracer = Tracer::start(&["--port", &p, "--type", "state"]);
    // Stopped, the tracer cannot flush the CPU before it goes offline.
    tracer.signal(libc::SIGSTOP);
    connection_on(cpu, port);
    let offline = Offline::take(cpu);
    tracer.signal(libc::SIGCONT);
    let while_offline = printed_within(&tracer, PER_CONNECTION);

    drop(offline);
    // Back online: the stage is let go, and staging and flushing work there as before.
    connection_on(cpu, port);
    let after = printed_within(&tracer, 2 * PER_CONNECTION);
    let run = tracer.stop();
    run.assert_no_loss();
    assert_eq!(
        while_offline, PER_CONNECTION,
        "printed while CPU {cpu} was offline"
    );
    assert_eq!(after, 2 * PER_CONNECTION, "printed once CPU {cpu} was back");
    let states = run.of_type("state");
    assert_eq!(states.len(), 2 * PER_CONNECTION);
    // In order: each socket's life is a legal one, complete.
    let legal: [&[&str]; 3] = [
        &ACTIVE_CLOSE_CLIENT,
        &PASSIVE_CLOSE_SERVER,
        &["CLOSE->LISTEN", "LISTEN->CLOSE"],
    ];
    for life in lives(&run.events) {
        let t = life.transitions();
        let t: Vec<&str> = t.iter().map(String::as_str).collect();
        assert!(legal.contains(&&t[..]), "{:#?}", life.timed());
    }
}
