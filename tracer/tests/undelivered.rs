//! The counter of transitions the kernel did not deliver counts only those the tracer would
//! have reported: TCP, and the socket criteria of its filter.
//!
//! With no BPF program on the tracepoint, every hit reaches the counter, so its count is exactly
//! what its filter lets through. That is why this test has its own binary: a tracer started by a
//! test running beside it would suppress the hits.

mod common;

use common::*;
use tracer::{
    format::{self, Tracepoint},
    tracefs::Tracefs,
    undelivered::{Undelivered, open_scoped},
};
use tracer_common::{AF_INET, AF_INET6, EventKind, Filter, state};

/// Connections to the traced port: ten transitions each.
const CONNECTIONS: u64 = 30;
/// Connections to another port, which no scoped counter may count.
const OTHERS: u64 = 20;

fn counter(filter: &Filter) -> Option<Undelivered> {
    let tracefs = Tracefs::ensure().expect("tracefs");
    let tp = Tracepoint::InetSockSetState;
    let text = tracefs
        .format(tp.category(), tp.name())
        .expect("format")
        .expect("format file");
    let format = format::parse(&text).expect("parse format");
    open_scoped(&format, filter).unwrap_or_else(|e| panic!("open the counter: {e}"))
}

fn filter(flags: u32, set: impl FnOnce(&mut Filter)) -> Filter {
    let mut f = Filter::ANY;
    f.flags = flags;
    set(&mut f);
    f
}

#[test]
fn the_undelivered_counter_counts_what_the_filter_lets_through() {
    if !kernel_available("the_undelivered_counter_counts_what_the_filter_lets_through") {
        return;
    }
    let (port, other) = (port(), port());
    let either = counter(&filter(Filter::PORT, |f| f.port = port)).unwrap();
    let local = counter(&filter(Filter::LPORT, |f| f.lport = port)).unwrap();
    let remote = counter(&filter(Filter::RPORT, |f| f.rport = port)).unwrap();
    let close_wait = counter(&filter(Filter::PORT | Filter::STATE, |f| {
        f.port = port;
        f.state_mask = state::bit(state::CLOSE_WAIT);
    }))
    .unwrap();
    let v4 = counter(&filter(Filter::PORT | Filter::FAMILY, |f| {
        f.port = port;
        f.family = AF_INET;
    }))
    .unwrap();
    let v6 = counter(&filter(Filter::PORT | Filter::FAMILY, |f| {
        f.port = port;
        f.family = AF_INET6;
    }))
    .unwrap();
    let everything = counter(&Filter::ANY).unwrap();
    let retransmits_only = filter(Filter::KIND, |f| {
        f.kinds = 1 << EventKind::Retransmit as u32;
    });
    assert!(counter(&retransmits_only).is_none());

    for (p, n) in [(port, CONNECTIONS), (other, OTHERS)] {
        let server = exchange_server("127.0.0.1", p, n, &[]);
        exchange_clients(server, "127.0.0.1", p, n, &["--close", "normal"]);
        wait_closed(p);
    }

    // Per connection: the client's CLOSE -> SYN_SENT -> ESTABLISHED -> FIN_WAIT1 -> FIN_WAIT2
    // -> CLOSE (remote port P), the server child's LISTEN -> SYN_RECV -> ESTABLISHED ->
    // CLOSE_WAIT -> LAST_ACK -> CLOSE (local port P); and the listener's CLOSE -> LISTEN ->
    // CLOSE.
    assert_eq!(either.count(), 10 * CONNECTIONS + 2);
    assert_eq!(local.count(), 5 * CONNECTIONS + 2);
    assert_eq!(remote.count(), 5 * CONNECTIONS);
    assert_eq!(close_wait.count(), 2 * CONNECTIONS);
    assert_eq!(v4.count(), 10 * CONNECTIONS + 2);
    assert_eq!(v6.count(), 0);
    // The host may have traffic of its own.
    let all = everything.count();
    assert!(all >= 10 * (CONNECTIONS + OTHERS) + 4, "{all}");
}
