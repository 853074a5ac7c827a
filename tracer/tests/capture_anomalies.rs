//! Anomalies in captures against the real kernel: a CLOSE_WAIT leak is induced in a network
//! namespace while `tracer record --anomalies` runs there; replay must print the anomaly lines
//! the recorder printed, exactly, and `replay --anomalies` must detect the same anomalies anew
//! from the capture alone (here: the very same lines). The agent's flight recorder stores the anomaly that triggered its
//! dump. (Kept apart from capture.rs, which is at its size limit.)

mod common;

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use common::*;
use serde_json::Value;

fn workdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tracer-capanom-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn anomaly_lines(s: &str) -> Vec<&str> {
    lines_of(s, &["anomaly"])
}

/// The lines of the given record types, in order.
fn lines_of<'a>(s: &'a str, types: &[&str]) -> Vec<&'a str> {
    s.lines()
        .filter(|l| {
            types
                .iter()
                .any(|t| l.contains(&format!(r#""type":"{t}""#)))
        })
        .collect()
}

/// (kind, status, subject) of each anomaly line: what re-detection must reproduce.
fn outline(lines: &[&str]) -> Vec<(String, String, String)> {
    lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["kind"].to_string(),
                v["status"].to_string(),
                v["subject"].to_string(),
            )
        })
        .collect()
}

/// Holds 8 CLOSE_WAIT sockets in `ns` until the recorder reports the leak raised, then releases
/// them and waits for the clear.
fn leak_and_fix(ns: &Netns, rec: &Tracer) {
    let mut holder = Proc::spawn(
        &ns.exec(),
        &["states", "--addr", "127.0.0.1", "--count", "8"],
    );
    let pid = u64::from(holder.pid());
    let seen = |status: &'static str| {
        move |v: &Value| {
            v["type"] == "anomaly"
                && v["kind"] == "close_wait_leak"
                && v["status"] == status
                && v["subject"]["pid"] == pid
        }
    };
    let wait = |status: &'static str| {
        wait_until(
            Duration::from_secs(20),
            Duration::from_millis(250),
            || {
                let lines = rec.json_lines();
                lines.iter().any(seen(status)).then_some(()).ok_or(lines)
            },
            |got| format!("no {status} close_wait_leak; got {got:#?}"),
        );
    };
    wait("raised");
    holder.release();
    let _ = holder.wait();
    wait("cleared");
}

#[test]
fn recorded_anomalies_replay_exactly_and_are_detected_again_offline() {
    if !kernel_available("recorded_anomalies_replay_exactly_and_are_detected_again_offline") {
        return;
    }
    // Recursion misses are counted host-wide: the other test's traffic must not add any.
    let _serial = serial();
    let ns = Netns::new("capanom");
    let dir = workdir("rec");
    let file = dir.join("cap.trc");
    let f = file.to_str().unwrap();
    let mut args = vec!["record", "-o", f, "--anomalies", "--print", "--json"];
    args.extend_from_slice(&FAST_CLOSE_WAIT_LEAK);
    let rec = Tracer::start_in(&ns.exec(), &args, "recording to");
    leak_and_fix(&ns, &rec);
    let recorded = rec.stop();
    assert!(recorded.status.success(), "{}", recorded.stderr);
    let live = anomaly_lines(&recorded.stdout);
    assert_eq!(live.len(), 2, "{}", recorded.stdout);

    // Replay prints exactly what the recorder printed: records and anomaly lines, in order.
    let replay = tracer(&["replay", f, "--json", "--strict"]);
    assert!(replay.status.success(), "{}", text(&replay.stderr));
    let replayed = text(&replay.stdout);
    assert_eq!(
        replayed.lines().collect::<Vec<_>>(),
        recorded.stdout.lines().collect::<Vec<_>>()
    );
    // `--type` selects events; loss records print whatever it is, live and replayed alike,
    // and the recorder counts losses host-wide (other traffic of the host may add some).
    let only = tracer(&["replay", f, "--json", "--type", "anomaly"]);
    let only = text(&only.stdout);
    assert_eq!(anomaly_lines(&only), live);
    let recorded_lost = lines_of(&recorded.stdout, &["lost"]);
    assert_eq!(
        only.lines().collect::<Vec<_>>(),
        lines_of(&recorded.stdout, &["anomaly", "lost"])
    );
    // Columns: the anomaly lines too.
    let human = text(&tracer(&["replay", f]).stdout);
    assert!(
        human
            .lines()
            .any(|l| l.contains("ANOMALY") && l.contains("close_wait_leak")),
        "{human}"
    );

    // Detected anew from the capture (its ticks, inputs and records): the same anomalies, and
    // the recorded lines are not printed as well.
    let mut args = vec!["replay", f, "--json", "--type", "anomaly", "--anomalies"];
    args.extend_from_slice(&FAST_CLOSE_WAIT_LEAK);
    let again = tracer(&args);
    assert!(again.status.success(), "{}", text(&again.stderr));
    let again = text(&again.stdout);
    let found = anomaly_lines(&again);
    assert_eq!(outline(&found), outline(&live), "{again}");
    // In this private namespace the restored state is the live one: identical lines, times
    // and evidence included.
    assert_eq!(found, live);
    // With the default thresholds (60 s minimum age) the short leak is no anomaly.
    let defaults = tracer(&["replay", f, "--json", "--type", "anomaly", "--anomalies"]);
    assert!(defaults.status.success(), "{}", text(&defaults.stderr));
    assert_eq!(
        text(&defaults.stdout).lines().collect::<Vec<_>>(),
        recorded_lost
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_flight_recorder_dump_holds_the_anomaly_that_triggered_it() {
    if !kernel_available("the_flight_recorder_dump_holds_the_anomaly_that_triggered_it") {
        return;
    }
    // Recursion misses are counted host-wide: the other test's traffic must not add any.
    let _serial = serial();
    let ns = Netns::new("flanom");
    let dir = workdir("flight");
    let addr = format!("127.0.0.1:{}", port());
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name, TRACER])
        .args(["agent", "--metrics-addr", &addr, "--flight-dir"])
        .arg(&dir)
        .args(FAST_CLOSE_WAIT_LEAK)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let log = StderrLines::follow(&mut child);
    let mut seen = Vec::new();
    let ok = log
        .wait_for("serving /metrics", Duration::from_secs(30), &mut seen)
        .is_some();
    assert!(ok, "agent did not start: {seen:?}");
    let mut holder = Proc::spawn(
        &ns.exec(),
        &["states", "--addr", "127.0.0.1", "--count", "8"],
    );
    let dumped = log.wait_for("flight recorder dumped", Duration::from_secs(20), &mut seen);
    holder.release();
    let _ = holder.wait();
    let _ = child.kill();
    let _ = child.wait();
    assert!(dumped.is_some(), "no dump: {seen:?}");
    let dump = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("anomaly"))
        .expect("an anomaly dump");
    let d = dump.to_str().unwrap();
    let out = tracer(&["replay", d, "--json", "--type", "anomaly", "--strict"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let recorded = anomaly_lines(&stdout);
    assert_eq!(recorded.len(), 1, "{stdout}");
    assert!(
        recorded[0].contains(r#""kind":"close_wait_leak""#),
        "{stdout}"
    );
    assert!(recorded[0].contains(r#""status":"raised""#), "{stdout}");
    // The dump's ticks re-detect it.
    let mut args = vec!["replay", d, "--json", "--type", "anomaly", "--anomalies"];
    args.extend_from_slice(&FAST_CLOSE_WAIT_LEAK);
    let again = tracer(&args);
    let again = text(&again.stdout);
    assert_eq!(
        outline(&anomaly_lines(&again)),
        outline(&recorded),
        "{again}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
