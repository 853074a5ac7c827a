//! Anomalies in captures, offline: detection ticks round trip, recorded anomaly records replay
//! as stored, and `replay --anomalies` re-detects on the capture's own timeline (its recorded
//! ticks and host inputs, or one tick per capture second), with exact expected output.

use std::path::{Path, PathBuf};

use clap::Parser;
use tracer_common::{OwnerSource, state};

use super::{
    anomalies::{is_anomaly, printed},
    header_now, raw,
    records::{BlockBuilder, Item, Mini, StateSnapshot, decode_payload},
    replay,
    tick::Tick,
    walk::WalkError,
    writer::{CaptureWriter, Fsync, WriterOptions},
};
use crate::{
    anomaly::{Config, Gathered, netstat::TcpExt},
    cli::{Cli, Command},
    event::{Comm, Detail, Event, Owner, TcpState},
    snapshot::{DiagSocket, SockKind},
};

const S: u64 = 1_000_000_000;
/// Wall minus monotonic: 2023-11-14T22:13:20Z at monotonic 0.
const OFFSET: u64 = 1_700_000_000 * S;

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tracer-capture-anom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn write(path: &Path, detecting: bool, items: &[Item]) {
    let mut h = header_now("record", String::new(), OFFSET);
    h.netns = None;
    h.anomalies = detecting;
    let opts = WriterOptions {
        path: path.to_owned(),
        max_size: None,
        max_files: None,
        fsync: Fsync::Never,
        zstd_level: None,
        block_bytes: 1 << 16,
    };
    let mut w = CaptureWriter::create(opts, h).unwrap();
    for it in items {
        w.push(it).unwrap();
    }
    w.finish().unwrap();
}

/// `tracer replay ARGS`, its stdout.
fn replay(args: &[&str]) -> Result<String, WalkError> {
    let cli = Cli::try_parse_from(["tracer", "replay"].iter().chain(args)).unwrap();
    let Some(Command::Replay(a)) = cli.command else {
        panic!("not replay")
    };
    let cfg = a
        .detects()
        .then(|| Config::load(a.anomaly.config.as_deref(), &a.anomaly.overrides).unwrap());
    let mut out = Vec::new();
    replay::records(&a, &a.filter.to_filter(), cfg, &mut out)?;
    Ok(String::from_utf8(out).unwrap())
}

fn transition(ts: u64, old: u8, new: u8, local: &str, remote: &str, pid: u32) -> Item {
    let (l, r): (std::net::SocketAddr, std::net::SocketAddr) =
        (local.parse().unwrap(), remote.parse().unwrap());
    let ev = Event {
        ts_ns: ts,
        sk: 0xffff_0000_0000_0000 | u64::from(r.port()),
        saddr: l.ip(),
        sport: l.port(),
        daddr: r.ip(),
        dport: r.port(),
        owner: Some(Owner {
            pid,
            comm: Comm::from("srv"),
            source: OwnerSource::Process,
        }),
        netns: 0,
        detail: Detail::State {
            old: TcpState::try_from(old).unwrap(),
            new: TcpState::try_from(new).unwrap(),
            duration_ns: None,
        },
        close: None,
    };
    Item::Kernel(raw::encode(&ev))
}

fn snapshot(at_ns: u64, time_wait: u64) -> Item {
    Item::Snapshot(Box::new(StateSnapshot {
        at_ns,
        mini: Mini {
            time_wait,
            ..Mini::default()
        },
        names: vec![(77, "leaky-server".into())],
        ..StateSnapshot::default()
    }))
}

/// Four connections to 10.0.0.1:8080 of pid 77 reach CLOSE_WAIT at 2 s and close at 8 s;
/// another process's connects at 6 s and 12 s move the capture's time on.
fn close_wait_items() -> Vec<Item> {
    let mut items = vec![snapshot(S, 0)];
    let peer = |i: u16| format!("10.0.0.9:{}", 40000 + i);
    for i in 0..4 {
        items.push(transition(
            S,
            state::LISTEN,
            state::SYN_RECV,
            "10.0.0.1:8080",
            &peer(i),
            77,
        ));
        items.push(transition(
            S,
            state::SYN_RECV,
            state::ESTABLISHED,
            "10.0.0.1:8080",
            &peer(i),
            77,
        ));
    }
    for i in 0..4 {
        items.push(transition(
            2 * S,
            state::ESTABLISHED,
            state::CLOSE_WAIT,
            "10.0.0.1:8080",
            &peer(i),
            77,
        ));
    }
    let connect = |ts, port| {
        transition(
            ts,
            state::CLOSE,
            state::SYN_SENT,
            &format!("10.0.0.1:{port}"),
            "10.0.0.2:80",
            5,
        )
    };
    items.push(connect(6 * S, 30000));
    for i in 0..4 {
        items.push(transition(
            8 * S,
            state::CLOSE_WAIT,
            state::LAST_ACK,
            "10.0.0.1:8080",
            &peer(i),
            77,
        ));
    }
    items.push(connect(12 * S, 30001));
    items
}

const CW: [&str; 6] = [
    "--anomaly",
    "close_wait_leak.min_sockets=3",
    "--anomaly",
    "close_wait_leak.min_age_secs=2",
    "--anomaly",
    "clear_after_secs=2",
];

#[test]
fn replay_redetects_a_close_wait_leak_on_the_capture_timeline() {
    let path = tmp("cw.trc");
    write(&path, false, &close_wait_items());
    let p = path.to_str().unwrap();
    let mut args = vec![p, "--json", "--type", "anomaly", "--anomalies"];
    args.extend_from_slice(&CW);
    let out = replay(&args).unwrap();
    // Ticks every capture second from 2 s: four sockets in CLOSE_WAIT since 2 s are 2 s old at
    // 4 s; they close at 8 s and the anomaly clears after 2 s below the threshold.
    let recommend = crate::anomaly::Kind::CloseWaitLeak.recommendation();
    let evidence = |oldest| {
        format!(
            r#""evidence":{{"close_wait":4,"local_ports":[8080],"min_age_s":2,"older_than_threshold":4,"oldest_age_s":{oldest},"top_peers":[{{"addr":"10.0.0.9","sockets":4}}]}},"kind":"close_wait_leak","recommendation":"{recommend}""#
        )
    };
    let subject = r#""subject":{"comm":"leaky-server","pid":77,"type":"process"}"#;
    let summary = |oldest| {
        format!(
            r#""summary":"4 sockets in CLOSE_WAIT for over 2 s (4 in all, oldest {oldest} s) on local ports [8080]""#
        )
    };
    let want = [
        format!(
            r#"{{{},"severity":"warning","status":"raised",{subject},{},"time":"2023-11-14T22:13:24.000000Z","type":"anomaly"}}"#,
            evidence(2),
            summary(2)
        ),
        format!(
            r#"{{"active_s":7.0,{},"severity":"warning","status":"cleared",{subject},{},"time":"2023-11-14T22:13:31.000000Z","type":"anomaly"}}"#,
            evidence(6),
            summary(6)
        ),
    ];
    assert_eq!(out.lines().collect::<Vec<_>>(), want, "{out}");
    // A day without records before the last one: the same anomalies, without a tick per
    // second of it.
    let mut items = close_wait_items();
    if let Some(Item::Kernel(last)) = items.last_mut() {
        last.ts_ns = 86_400 * S;
    }
    let idle = tmp("cw-idle.trc");
    write(&idle, false, &items);
    let mut args = vec![idle.to_str().unwrap(), "--json", "--type", "anomaly"];
    args.push("--anomalies");
    args.extend_from_slice(&CW);
    let started = std::time::Instant::now();
    assert_eq!(replay(&args).unwrap().lines().collect::<Vec<_>>(), want);
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    let _ = std::fs::remove_file(&idle);
    // The same detection in columns, among the transitions.
    let mut args = vec![p, "--anomalies"];
    args.extend_from_slice(&CW);
    let human = replay(&args).unwrap();
    let at = |prefix: &str| {
        human
            .lines()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {human}"))
    };
    // Printed at its tick: after the records before 4 s, before the one at 6 s.
    let raised = at("22:13:24.000000 ANOMALY WARNING close_wait_leak process 77 (leaky-server)");
    assert_eq!(raised, at("22:13:26.000000") - 1, "{human}");
    assert!(at("22:13:31.000000 ANOMALY CLEARED close_wait_leak") < at("22:13:32.000000"));
    assert_eq!(
        human
            .lines()
            .filter(|l| l.contains("LISTEN -> SYN_RECV"))
            .count(),
        4
    );
    let _ = std::fs::remove_file(&path);
}

fn diag(kind: SockKind, st: u8, local: &str, remote: &str) -> DiagSocket {
    DiagSocket {
        kind,
        state: st,
        local: local.parse().unwrap(),
        remote: remote.parse().unwrap(),
        inode: 0,
        uid: 0,
        cookie: 0,
        rqueue: 0,
        wqueue: 0,
    }
}

/// A tick whose inputs could not come from this host: five TIME_WAIT sockets of port 80 with
/// 10.0.0.7, one half-open request, a TcpExt reading and a small `tcp_max_tw_buckets`.
pub(super) fn tick_at(at_ns: u64, overflows: u64) -> Tick {
    let mut netstat = TcpExt::default();
    netstat.0[6] = overflows;
    netstat.0[4] = 7;
    Tick {
        at_ns,
        inputs: Gathered {
            netstat: Some(netstat),
            requests: Some(vec![diag(
                SockKind::Request,
                state::SYN_RECV,
                "10.0.0.1:443",
                "10.0.0.8:5555",
            )]),
            time_wait: Some(
                (0..5)
                    .map(|i| {
                        diag(
                            SockKind::TimeWait,
                            state::TIME_WAIT,
                            "10.0.0.1:80",
                            &format!("10.0.0.7:{}", 50000 + i),
                        )
                    })
                    .collect(),
            ),
            max_tw_buckets: Some(4096),
        },
    }
}

pub(super) fn tick() -> Tick {
    tick_at(5 * S, 3)
}

#[test]
fn ticks_round_trip_and_drop_fin_wait2_timewait_sockets() {
    let t = tick();
    let mut with_fw2 = t.clone();
    if let Some(tw) = &mut with_fw2.inputs.time_wait {
        tw.push(diag(
            SockKind::TimeWait,
            state::FIN_WAIT2,
            "10.0.0.1:80",
            "10.0.0.7:1",
        ));
    }
    let empty = Tick {
        at_ns: 9,
        inputs: Gathered::default(),
    };
    let mut b = BlockBuilder::default();
    b.push(&Item::Tick(Box::new(with_fw2)));
    b.push(&Item::Tick(Box::new(empty.clone())));
    let items = decode_payload(&b.finish()).unwrap();
    assert_eq!(
        items,
        [Item::Tick(Box::new(t)), Item::Tick(Box::new(empty))]
    );
}

#[test]
fn anomaly_items_hold_the_printers_own_lines() {
    use crate::{
        anomaly::{Anomaly, Kind, Status, Subject},
        clock::Clock,
        output::{Format, Printer, Record},
    };
    let a = Anomaly::new(
        3 * S,
        Kind::ExposedListener,
        Status::Raised,
        crate::anomaly::Finding {
            subject: Subject::Host,
            summary: "s".into(),
            evidence: serde_json::Map::new(),
        },
    );
    let clock = Clock::with_offset(OFFSET);
    let Item::Printed { ts_ns, json, human } = printed(&a, clock) else {
        panic!("not a printed item")
    };
    let line = |f| {
        let mut p = Printer::new(Vec::new(), f, clock);
        p.print(&Record::Anomaly(a.clone())).unwrap();
        String::from_utf8(p.into_inner()).unwrap()
    };
    assert_eq!(ts_ns, 3 * S);
    assert_eq!(json + "\n", line(Format::Json));
    assert_eq!(human + "\n", line(Format::Human));
    assert!(is_anomaly(r#"{"type":"anomaly","kind":"x"}"#));
    assert!(!is_anomaly(r#"{"type":"state"}"#));
    assert!(!is_anomaly("not json"));
}

/// A detecting recorder's capture: 5 TIME_WAIT sockets at the start, its ticks at 2 s and 3 s
/// with their host inputs, the anomaly record it printed, and one transition.
fn time_wait_items() -> Vec<Item> {
    vec![
        snapshot(S, 5),
        Item::Tick(Box::new(tick_at(2 * S, 0))),
        Item::Printed {
            ts_ns: 2 * S,
            json: r#"{"type":"anomaly","kind":"time_wait_pileup","summary":"as recorded"}"#.into(),
            human: "22:13:22.000000 ANOMALY as recorded".into(),
        },
        Item::Tick(Box::new(tick_at(3 * S, 3))),
        transition(
            3 * S + 500_000_000,
            state::CLOSE,
            state::SYN_SENT,
            "10.0.0.1:30000",
            "10.0.0.2:80",
            5,
        ),
    ]
}

#[test]
fn recorded_ticks_replay_with_their_host_inputs_and_replace_recorded_anomalies() {
    let path = tmp("tw.trc");
    write(&path, true, &time_wait_items());
    let p = path.to_str().unwrap();
    let syn_sent = r#""old_state":"CLOSE","new_state":"SYN_SENT""#;

    // Without --anomalies: the records as the recorder printed them, its anomaly included.
    let out = replay(&[p, "--json"]).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(
        lines[0],
        r#"{"type":"anomaly","kind":"time_wait_pileup","summary":"as recorded"}"#
    );
    assert!(lines[1].contains(syn_sent), "{out}");
    let human = replay(&[p]).unwrap();
    assert!(
        human.contains("\n22:13:22.000000 ANOMALY as recorded\n"),
        "{human}"
    );
    let only = replay(&[p, "--json", "--type", "state"]).unwrap();
    assert_eq!(only.lines().count(), 1, "{only}");

    // With it: detected anew at the recorded tick, from the recorded timewait dump and
    // tcp_max_tw_buckets (not this host's), and the recorded record is not printed as well.
    let out = replay(&[
        p,
        "--json",
        "--anomalies",
        "--anomaly",
        "time_wait_pileup.min_sockets=4",
    ])
    .unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(!out.contains("as recorded"), "{out}");
    assert!(lines[1].contains(syn_sent), "{out}");
    let peers: Vec<String> = (0..5)
        .map(|i| format!(r#"{{"addr":"10.0.0.7:{}","sockets":1}}"#, 50000 + i))
        .collect();
    let want = format!(
        r#"{{"evidence":{{"tcp_max_tw_buckets":4096,"time_wait":5,"time_wait_overflows":0,"top_local_ports":[{{"port":80,"sockets":5}}],"top_peers":[{}]}},"kind":"time_wait_pileup","recommendation":"{}","severity":"warning","status":"raised","subject":{{"type":"host"}},"summary":"5 sockets in TIME_WAIT (threshold 4); top local ports [80], top peers {}","time":"2023-11-14T22:13:22.000000Z","type":"anomaly"}}"#,
        peers.join(","),
        crate::anomaly::Kind::TimeWaitPileup.recommendation(),
        "10.0.0.7:50000 (1), 10.0.0.7:50001 (1), 10.0.0.7:50002 (1)",
    );
    assert_eq!(lines[0], want);
    let _ = std::fs::remove_file(&path);
}
