use std::{collections::HashMap, net::IpAddr};

use tracer_common::{OwnerSource, state};

use super::*;
use crate::{
    close::CloseInfo,
    event::{Owner, TcpState},
    loss::LossTotals,
    snapshot::DiagSocket,
};

const NS: u32 = 4026531840;

fn st(n: u8) -> TcpState {
    TcpState::try_from(n).unwrap()
}

fn ev(sk: u64, old: u8, new: u8, local: &str, remote: &str, pid: u32) -> Event {
    let (l, r): (SocketAddr, SocketAddr) = (local.parse().unwrap(), remote.parse().unwrap());
    let close =
        (new == state::CLOSE && crate::close::ends_connection(st(old))).then(|| CloseInfo {
            from: st(old),
            end: CloseEnd::classify(st(old), 0),
            err: 0,
            bytes_sent: 0,
            bytes_received: 0,
            retransmits: 0,
            lifespan_ns: None,
        });
    Event {
        ts_ns: sk * 10,
        sk,
        saddr: l.ip(),
        sport: l.port(),
        daddr: r.ip(),
        dport: r.port(),
        owner: (pid != 0).then(|| Owner {
            pid,
            comm: Comm::from("app"),
            source: OwnerSource::Process,
        }),
        netns: NS,
        detail: Detail::State {
            old: st(old),
            new: st(new),
            duration_ns: None,
        },
        close,
    }
}

/// A client's and a server's full lifecycle on loopback, client closing first.
fn lifecycle(a: &mut Aggregator, csk: u64, ssk: u64, cport: u16) {
    let c = format!("127.0.0.1:{cport}");
    let s = "127.0.0.1:80";
    use state::*;
    for (sk, old, new, l, r) in [
        (csk, CLOSE, SYN_SENT, "127.0.0.1:0", s),
        (csk, SYN_SENT, ESTABLISHED, c.as_str(), s),
        (ssk, LISTEN, SYN_RECV, s, c.as_str()),
        (ssk, SYN_RECV, ESTABLISHED, s, c.as_str()),
        (csk, ESTABLISHED, FIN_WAIT1, c.as_str(), s),
        (ssk, ESTABLISHED, CLOSE_WAIT, s, c.as_str()),
        (csk, FIN_WAIT1, FIN_WAIT2, c.as_str(), s),
        (ssk, CLOSE_WAIT, LAST_ACK, s, c.as_str()),
        (csk, FIN_WAIT2, CLOSE, c.as_str(), s),
        (ssk, LAST_ACK, CLOSE, s, c.as_str()),
    ] {
        a.apply(&ev(sk, old, new, l, r, 7));
    }
}

fn counts(a: &Aggregator) -> HashMap<&'static str, u64> {
    a.state_counts(a.now_ns)
        .into_iter()
        .filter(|&(_, n)| n > 0)
        .map(|(s, n)| (state::display(s), n))
        .collect()
}

#[test]
fn a_full_lifecycle_leaves_one_time_wait() {
    let mut a = Aggregator::new(1000, Some(NS));
    a.apply(&ev(
        1,
        state::CLOSE,
        state::LISTEN,
        "127.0.0.1:80",
        "0.0.0.0:0",
        5,
    ));
    lifecycle(&mut a, 10, 11, 40000);
    assert_eq!(counts(&a), HashMap::from([("LISTEN", 1), ("TIME_WAIT", 1)]));
    assert_eq!(a.closes[&CloseEnd::Orderly], 2);
    // The timewait socket expires silently.
    assert_eq!(
        a.state_counts(a.now_ns + TIME_WAIT_LEN_NS + 1)[&state::TIME_WAIT],
        0
    );
}

#[test]
fn middle_of_a_lifecycle_is_exact() {
    let mut a = Aggregator::new(1000, Some(NS));
    use state::*;
    a.apply(&ev(1, CLOSE, SYN_SENT, "127.0.0.1:0", "127.0.0.1:80", 3));
    a.apply(&ev(
        1,
        SYN_SENT,
        ESTABLISHED,
        "127.0.0.1:5000",
        "127.0.0.1:80",
        0,
    ));
    a.apply(&ev(
        2,
        LISTEN,
        SYN_RECV,
        "127.0.0.1:80",
        "127.0.0.1:5000",
        4,
    ));
    a.apply(&ev(
        2,
        SYN_RECV,
        ESTABLISHED,
        "127.0.0.1:80",
        "127.0.0.1:5000",
        0,
    ));
    a.apply(&ev(
        2,
        ESTABLISHED,
        CLOSE_WAIT,
        "127.0.0.1:80",
        "127.0.0.1:5000",
        0,
    ));
    assert_eq!(
        counts(&a),
        HashMap::from([("ESTABLISHED", 1), ("CLOSE_WAIT", 1)])
    );
    // The owner survives transitions that carry none.
    let procs = a.table().procs();
    assert_eq!((procs[&3].connections, procs[&4].close_wait), (1, 1));
    let s = a.stats(
        a.now_ns,
        10,
        view::ProcSort::Connections,
        &LossTotals::default(),
    );
    assert_eq!(s.totals.total, 2);
    assert_eq!(s.peers[0].addr, "127.0.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(s.peers[0].connections, 2);
}

#[test]
fn other_namespaces_are_ignored() {
    let mut a = Aggregator::new(1000, Some(NS));
    let mut e = ev(1, state::CLOSE, state::LISTEN, "0.0.0.0:80", "0.0.0.0:0", 1);
    e.netns = NS + 1;
    a.apply(&e);
    assert_eq!((a.table().len(), a.other_netns), (0, 1));
}

fn diag(kind: SockKind, st: u8, local: &str, remote: &str, cookie: u64) -> DiagSocket {
    DiagSocket {
        kind,
        state: st,
        local: local.parse().unwrap(),
        remote: remote.parse().unwrap(),
        inode: cookie,
        uid: 0,
        cookie,
        rqueue: 0,
        wqueue: 0,
    }
}

#[test]
fn dumped_sockets_are_adopted_by_their_transitions() {
    let mut a = Aggregator::new(1000, Some(NS));
    use state::*;
    let dump = [
        diag(SockKind::Full, LISTEN, "0.0.0.0:80", "0.0.0.0:0", 1),
        diag(
            SockKind::Full,
            ESTABLISHED,
            "127.0.0.1:80",
            "127.0.0.1:6000",
            2,
        ),
        diag(
            SockKind::Full,
            ESTABLISHED,
            "127.0.0.1:6000",
            "127.0.0.1:80",
            3,
        ),
        diag(
            SockKind::TimeWait,
            TIME_WAIT,
            "127.0.0.1:6001",
            "127.0.0.1:80",
            4,
        ),
        diag(
            SockKind::TimeWait,
            FIN_WAIT2,
            "127.0.0.1:6002",
            "127.0.0.1:80",
            5,
        ),
        diag(
            SockKind::Request,
            SYN_RECV,
            "127.0.0.1:80",
            "127.0.0.1:6003",
            6,
        ),
    ];
    let owners = HashMap::from([(1, (9, "nginx".to_owned()))]);
    a.seed(&dump, &owners);
    assert_eq!(
        counts(&a),
        HashMap::from([
            ("LISTEN", 1),
            ("ESTABLISHED", 2),
            ("TIME_WAIT", 1),
            ("FIN_WAIT2", 1),
            ("SYN_RECV", 1)
        ])
    );
    assert_eq!(a.table().procs()[&9].connections, 1);
    // The pair closes: the dumped entries are adopted, not duplicated.
    a.apply(&ev(
        20,
        ESTABLISHED,
        FIN_WAIT1,
        "127.0.0.1:6000",
        "127.0.0.1:80",
        0,
    ));
    a.apply(&ev(
        21,
        ESTABLISHED,
        CLOSE_WAIT,
        "127.0.0.1:80",
        "127.0.0.1:6000",
        0,
    ));
    assert!(!counts(&a).contains_key("ESTABLISHED"));
    assert_eq!((counts(&a)["FIN_WAIT1"], counts(&a)["CLOSE_WAIT"]), (1, 1));
    assert_eq!(a.unknown_sockets, 0);
    // A reconciliation replaces the timewait and request counts.
    a.reconcile(MiniCounts::default(), a.now_ns + 1);
    assert!(!counts(&a).contains_key("TIME_WAIT"));
}

#[test]
fn a_dump_never_duplicates_tracked_sockets() {
    let mut a = Aggregator::new(1000, Some(NS));
    a.apply(&ev(
        1,
        state::CLOSE,
        state::LISTEN,
        "0.0.0.0:80",
        "0.0.0.0:0",
        5,
    ));
    a.seed(
        &[diag(
            SockKind::Full,
            state::LISTEN,
            "0.0.0.0:80",
            "0.0.0.0:0",
            1,
        )],
        &HashMap::new(),
    );
    assert_eq!(counts(&a), HashMap::from([("LISTEN", 1)]));
}

#[test]
fn a_new_connection_at_a_reused_address_replaces_a_stale_entry() {
    let mut a = Aggregator::new(1000, Some(NS));
    use state::*;
    a.apply(&ev(1, CLOSE, SYN_SENT, "127.0.0.1:0", "127.0.0.1:80", 3));
    // Its close was lost; the address now starts another connection.
    a.apply(&ev(1, CLOSE, SYN_SENT, "127.0.0.1:0", "127.0.0.1:81", 3));
    assert_eq!((counts(&a)["SYN_SENT"], a.stale_entries), (1, 1));
}

fn timed(mut e: Event, duration_ns: Option<u64>) -> Event {
    if let Detail::State { duration_ns: d, .. } = &mut e.detail {
        *d = duration_ns;
    }
    e
}

#[test]
fn a_followed_socket_without_time_in_state_lost_its_kernel_entry() {
    use state::*;
    let mut a = Aggregator::new(16, Some(NS));
    let (c, s) = ("127.0.0.1:5000", "127.0.0.1:80");
    // A start never has a time in state; the next transitions have one while the entry lives.
    a.apply(&timed(ev(1, CLOSE, SYN_SENT, "127.0.0.1:0", s, 7), None));
    a.apply(&timed(ev(1, SYN_SENT, ESTABLISHED, c, s, 7), Some(5)));
    assert_eq!(a.sock_map_evictions, 0);
    // Evicted: the kernel reports the next ones without one (and re-creates the entry).
    a.apply(&timed(ev(1, ESTABLISHED, FIN_WAIT1, c, s, 7), None));
    a.apply(&timed(ev(1, FIN_WAIT1, FIN_WAIT2, c, s, 0), Some(3)));
    assert_eq!(a.sock_map_evictions, 1);
    // Sockets the tracer never followed are unknown, not evicted: one from before the
    // tracer, and a passive child whose first transition is a start.
    a.apply(&timed(ev(2, ESTABLISHED, CLOSE_WAIT, s, c, 0), None));
    a.apply(&timed(
        ev(3, LISTEN, SYN_RECV, s, "127.0.0.1:5001", 7),
        None,
    ));
    assert_eq!(a.sock_map_evictions, 1);
    assert_eq!(a.unknown_sockets, 1);
    // Nor is a new connection at the address of a closed one.
    a.apply(&timed(ev(1, FIN_WAIT2, CLOSE, c, s, 0), Some(1)));
    a.apply(&timed(ev(1, CLOSE, SYN_SENT, "127.0.0.1:0", s, 7), None));
    assert_eq!(a.sock_map_evictions, 1);
    assert_eq!(
        a.stats(a.now_ns, 10, view::ProcSort::Bytes, &LossTotals::default())
            .tracking
            .sock_map_evictions,
        1
    );
}

#[test]
fn process_map_evictions_are_entries_inserted_less_entries_present() {
    let bytes = |pids: &[u32]| {
        pids.iter()
            .map(|&p| {
                let b = ProcBytes {
                    sent: 1,
                    received: 0,
                    comm: Comm::new(b"p"),
                };
                (p, b)
            })
            .collect::<StdHashMap<_, _>>()
    };
    let mut a = Aggregator::new(16, Some(NS));
    a.set_proc_bytes(bytes(&[1, 2, 3]));
    a.observe_proc_inserts(3);
    assert_eq!(a.proc_map_evictions, 0);
    // Six entered, four present: two evicted.
    a.set_proc_bytes(bytes(&[3, 4, 5, 6]));
    a.observe_proc_inserts(6);
    assert_eq!(a.proc_map_evictions, 2);
    // The count was read before two more came in: the difference drops, the count stays.
    a.set_proc_bytes(bytes(&[3, 4, 5, 6, 7, 8]));
    a.observe_proc_inserts(6);
    assert_eq!(a.proc_map_evictions, 2);
    a.observe_proc_inserts(9);
    assert_eq!(a.proc_map_evictions, 3);
    let stats = a.stats(a.now_ns, 10, view::ProcSort::Bytes, &LossTotals::default());
    assert_eq!(stats.tracking.proc_map_evictions, 3);
}
