use std::net::{IpAddr, SocketAddr};

use tracer_common::{OwnerSource, state};

use super::*;
use crate::{
    close::{CloseEnd, CloseInfo},
    event::{Comm, Owner, SignalKind, TcpState},
};

const S: u64 = 1_000_000_000;

fn ev(detail: Detail, ts: u64, local: &str, remote: &str, pid: u32) -> Event {
    let l: SocketAddr = local.parse().unwrap();
    let r: SocketAddr = remote.parse().unwrap();
    Event {
        ts_ns: ts,
        sk: ts ^ 0xffff_0000_0000_0000 ^ u64::from(l.port()) << 16 ^ u64::from(r.port()),
        saddr: l.ip(),
        sport: l.port(),
        daddr: r.ip(),
        dport: r.port(),
        owner: (pid != 0).then(|| Owner {
            pid,
            comm: Comm::from("srv"),
            source: OwnerSource::Process,
        }),
        netns: 0,
        detail,
        close: None,
    }
}

fn st(old: u8, new: u8) -> Detail {
    Detail::State {
        old: TcpState::try_from(old).unwrap(),
        new: TcpState::try_from(new).unwrap(),
        duration_ns: None,
    }
}

fn cfg(f: impl FnOnce(&mut Config)) -> Config {
    let mut c = Config {
        clear_after_secs: 2,
        ..Config::default()
    };
    f(&mut c);
    c.validate().unwrap();
    c
}

fn kinds(v: &[Anomaly]) -> Vec<(Kind, Status)> {
    v.iter().map(|a| (a.kind, a.status)).collect()
}

/// Runs ticks from `from` to `to` seconds, returning everything raised or cleared.
fn run(d: &mut Detector, agg: &Aggregator, from: u64, to: u64) -> Vec<Anomaly> {
    (from..=to)
        .flat_map(|s| d.tick(s * S, agg, &Inputs::default()))
        .collect()
}

#[test]
fn close_wait_leak_raises_after_the_age_and_clears_when_closed() {
    let mut agg = Aggregator::new(1 << 16, None);
    let mut d = Detector::new(cfg(|c| {
        c.close_wait_leak.min_sockets = 5;
        c.close_wait_leak.min_age_secs = 10;
    }));
    let mut socks = Vec::new();
    for i in 0..6u16 {
        let remote = format!("10.0.0.9:{}", 40000 + i);
        let mut e = ev(
            st(state::LISTEN, state::SYN_RECV),
            S,
            "10.0.0.1:8080",
            &remote,
            77,
        );
        agg.apply(&e);
        e.detail = st(state::SYN_RECV, state::ESTABLISHED);
        agg.apply(&e);
        e.detail = st(state::ESTABLISHED, state::CLOSE_WAIT);
        e.ts_ns = 2 * S;
        agg.apply(&e);
        socks.push(e);
    }
    assert!(run(&mut d, &agg, 2, 11).is_empty(), "too young");
    let raised = run(&mut d, &agg, 12, 12);
    assert_eq!(kinds(&raised), [(Kind::CloseWaitLeak, Status::Raised)]);
    let a = &raised[0];
    assert_eq!(
        a.subject,
        Subject::Process {
            pid: 77,
            comm: "srv".into()
        }
    );
    assert_eq!(a.evidence["close_wait"], 6);
    assert_eq!(a.evidence["local_ports"], serde_json::json!([8080]));
    assert_eq!(a.evidence["oldest_age_s"], 10);
    // Still held: nothing new.
    assert!(run(&mut d, &agg, 13, 20).is_empty());
    for mut e in socks {
        e.detail = st(state::CLOSE_WAIT, state::LAST_ACK);
        agg.apply(&e);
    }
    assert!(run(&mut d, &agg, 21, 22).is_empty(), "hysteresis");
    assert_eq!(
        kinds(&run(&mut d, &agg, 23, 23)),
        [(Kind::CloseWaitLeak, Status::Cleared)]
    );
    assert_eq!(d.raised[&Kind::CloseWaitLeak], 1);
    assert_eq!(d.active(), 0);
}

fn synack(ts: u64, port: u16, client: &str) -> Event {
    ev(
        Detail::Signal {
            kind: SignalKind::SynackRetransmit,
            state: None,
        },
        ts,
        &format!("0.0.0.0:{port}"),
        client,
        0,
    )
}

#[test]
fn syn_flood_counts_each_handshake_once_and_names_sources() {
    let agg = Aggregator::new(1024, None);
    let mut d = Detector::new(cfg(|c| c.syn_flood.min_rate = 50.0));
    let mut out = Vec::new();
    for sec in 1..=8u64 {
        // 60 new handshakes a second from two sources, each retransmitted three times.
        for i in 0..60u64 {
            let src = if i % 3 == 0 { "10.1.1.1" } else { "10.2.2.2" };
            let client = format!("{src}:{}", 1000 + sec * 100 + i);
            for r in 0..3 {
                d.observe(&synack(sec * S + r, 9000, &client));
            }
        }
        out.extend(d.tick(sec * S + S / 2, &agg, &Inputs::default()));
    }
    assert_eq!(kinds(&out), [(Kind::SynFlood, Status::Raised)]);
    let a = &out[0];
    assert!(matches!(a.subject, Subject::Listener { port: 9000, .. }));
    assert_eq!(a.evidence["handshakes_per_s"], 60.0);
    assert_eq!(a.evidence["top_sources"][0]["addr"], "10.2.2.2");
    assert_eq!(a.evidence["top_sources"][1]["addr"], "10.1.1.1");
    // The same handshakes retransmitted again are not new.
    let mut d = Detector::new(cfg(|c| c.syn_flood.min_rate = 50.0));
    for sec in 1..=8u64 {
        for i in 0..60u64 {
            d.observe(&synack(sec * S, 9000, &format!("10.1.1.1:{}", 2000 + i)));
        }
        assert!(d.tick(sec * S + 1, &agg, &Inputs::default()).is_empty());
    }
}

#[test]
fn syn_cookies_are_attributed_to_the_listener_with_half_open_sockets() {
    use crate::snapshot::{DiagSocket, SockKind};
    let agg = Aggregator::new(1024, None);
    let mut d = Detector::new(cfg(|c| c.syn_flood.min_rate = 100.0));
    let req = |port: u16, src: &str| DiagSocket {
        kind: SockKind::Request,
        state: state::SYN_RECV,
        local: SocketAddr::new("10.0.0.1".parse().unwrap(), port),
        remote: src.parse().unwrap(),
        inode: 0,
        uid: 0,
        cookie: 1,
        rqueue: 0,
        wqueue: 0,
    };
    let reqs = vec![
        req(443, "10.3.3.3:1"),
        req(443, "10.3.3.3:2"),
        req(22, "10.4.4.4:5"),
    ];
    let mut out = Vec::new();
    for sec in 0..=6u64 {
        let mut counters = netstat::TcpExt::default();
        counters.0[4] = sec * 1000; // SyncookiesSent
        let inputs = Inputs {
            netstat: Some(counters),
            requests: Some(&reqs),
            ..Inputs::default()
        };
        out.extend(d.tick(sec * S, &agg, &inputs));
    }
    assert_eq!(kinds(&out), [(Kind::SynFlood, Status::Raised)]);
    assert!(matches!(
        out[0].subject,
        Subject::Listener { port: 443, .. }
    ));
    assert_eq!(out[0].evidence["half_open"], 2);
    assert_eq!(out[0].evidence["SyncookiesSent"], 1000);
}

#[test]
fn resets_retransmits_and_failed_connects_are_rated_per_peer() {
    let agg = Aggregator::new(1024, None);
    let mut d = Detector::new(cfg(|c| {
        c.reset_storm.min_rate = 20.0;
        c.reset_storm.window_secs = 2;
        c.retransmit_storm.min_rate = 20.0;
        c.retransmit_storm.window_secs = 2;
        c.connect_failures.min_rate = 5.0;
        c.connect_failures.window_secs = 2;
    }));
    let mut out = Vec::new();
    for sec in 1..=3u64 {
        for port in 1..=30u16 {
            let sent = Detail::Signal {
                kind: SignalKind::ResetSent,
                state: None,
            };
            d.observe(&ev(
                sent,
                sec * S,
                &format!("10.0.0.1:{port}"),
                "10.9.9.9:5555",
                0,
            ));
            let retx = Detail::Retransmit {
                state: TcpState::try_from(state::ESTABLISHED).unwrap(),
                err: None,
            };
            d.observe(&ev(retx, sec * S, "10.0.0.1:5000", "10.8.8.8:80", 5));
        }
        for i in 0..10u16 {
            let mut e = ev(
                st(state::SYN_SENT, state::CLOSE),
                sec * S,
                &format!("10.0.0.1:{}", 30000 + i),
                "10.7.7.7:5432",
                42,
            );
            e.close = Some(CloseInfo {
                from: TcpState::try_from(state::SYN_SENT).unwrap(),
                end: CloseEnd::Refused,
                err: 111,
                bytes_sent: 0,
                bytes_received: 0,
                retransmits: 0,
                lifespan_ns: None,
            });
            d.observe(&e);
        }
        out.extend(d.tick(sec * S + 1, &agg, &Inputs::default()));
    }
    let mut got = kinds(&out);
    got.sort_by_key(|k| k.0);
    assert_eq!(
        got,
        [
            (Kind::RetransmitStorm, Status::Raised),
            (Kind::ResetStorm, Status::Raised),
            (Kind::ConnectFailures, Status::Raised),
        ]
    );
    let reset = out.iter().find(|a| a.kind == Kind::ResetStorm).unwrap();
    assert_eq!(
        reset.subject,
        Subject::Peer {
            addr: "10.9.9.9".parse::<IpAddr>().unwrap()
        }
    );
    assert_eq!(reset.evidence["distinct_local_ports"], 30);
    let fail = out
        .iter()
        .find(|a| a.kind == Kind::ConnectFailures)
        .unwrap();
    assert_eq!(fail.evidence["refused"], 10);
    assert_eq!(fail.evidence["top_processes"][0]["pid"], 42);
    // Quiet again: each clears after the window drains and the clear delay passes.
    let cleared = run(&mut d, &agg, 4, 10);
    assert_eq!(cleared.len(), 3);
    assert!(cleared.iter().all(|a| a.status == Status::Cleared));
}

#[test]
fn exposed_listener_and_peer_flood() {
    let mut agg = Aggregator::new(1 << 16, None);
    let mut d = Detector::new(cfg(|c| c.peer_flood.min_connections = 10));
    let listen = ev(
        st(state::CLOSE, state::LISTEN),
        S,
        "0.0.0.0:6379",
        "0.0.0.0:0",
        9,
    );
    let private = ev(
        st(state::CLOSE, state::LISTEN),
        S,
        "127.0.0.1:3306",
        "0.0.0.0:0",
        9,
    );
    let other = ev(
        st(state::CLOSE, state::LISTEN),
        S,
        "0.0.0.0:8080",
        "0.0.0.0:0",
        9,
    );
    for e in [&listen, &private, &other] {
        agg.apply(e);
        d.observe(e);
    }
    for i in 0..12u16 {
        let e = ev(
            st(state::CLOSE, state::SYN_SENT),
            S,
            &format!("10.0.0.1:{}", 20000 + i),
            "10.6.6.6:443",
            3,
        );
        agg.apply(&e);
        d.observe(&e);
    }
    let mut out = d.tick(2 * S, &agg, &Inputs::default());
    out.sort_by_key(|a| a.kind);
    assert_eq!(
        kinds(&out),
        [
            (Kind::PeerFlood, Status::Raised),
            (Kind::ExposedListener, Status::Raised)
        ]
    );
    assert_eq!(out[0].evidence["connections"], 12);
    assert!(matches!(
        &out[1].subject,
        Subject::Listener {
            port: 6379,
            pid: Some(9),
            ..
        }
    ));
    let mut close = listen.clone();
    close.detail = st(state::LISTEN, state::CLOSE);
    d.observe(&close);
    let cleared = run(&mut d, &agg, 3, 6);
    assert_eq!(kinds(&cleared), [(Kind::ExposedListener, Status::Cleared)]);
}

#[test]
fn healthy_churn_raises_nothing() {
    let mut agg = Aggregator::new(1 << 20, None);
    let mut d = Detector::new(Config::default());
    let mut out = Vec::new();
    // 20k orderly connections a second for 10 s, all through one listener.
    for sec in 1..=10u64 {
        for i in 0..20_000u64 {
            let ts = sec * S + i * 50_000;
            let port = 20000 + (i % 40000) as u16;
            let client = format!("127.0.0.1:{port}");
            for (o, n) in [
                (state::CLOSE, state::SYN_SENT),
                (state::SYN_SENT, state::ESTABLISHED),
                (state::ESTABLISHED, state::FIN_WAIT1),
                (state::FIN_WAIT1, state::FIN_WAIT2),
                (state::FIN_WAIT2, state::CLOSE),
            ] {
                let e = ev(st(o, n), ts, &client, "127.0.0.1:8080", 5);
                agg.apply(&e);
                d.observe(&e);
            }
        }
        out.extend(d.tick(sec * S + S - 1, &agg, &Inputs::default()));
    }
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn records_render_as_json_and_a_human_line() {
    let a = Anomaly::new(
        5,
        Kind::SynFlood,
        Status::Raised,
        Finding {
            subject: Subject::Listener {
                addr: "0.0.0.0:80".into(),
                port: 80,
                pid: Some(1),
                comm: Some("nginx".into()),
            },
            summary: "120 never-completing handshakes/s".into(),
            evidence: serde_json::json!({"port": 80})
                .as_object()
                .cloned()
                .unwrap(),
        },
    );
    let v = a.to_json("2026-01-01T00:00:00Z".into());
    assert_eq!(v["type"], "anomaly");
    assert_eq!(v["kind"], "syn_flood");
    assert_eq!(v["status"], "raised");
    assert_eq!(v["severity"], "warning");
    assert_eq!(v["subject"]["type"], "listener");
    assert_eq!(v["subject"]["port"], 80);
    assert_eq!(v["evidence"]["port"], 80);
    assert!(v["recommendation"].as_str().unwrap().contains("syncookies"));
    let h = a.human();
    assert!(
        h.starts_with("ANOMALY WARNING syn_flood listener 0.0.0.0:80 (1 nginx)"),
        "{h}"
    );
}
