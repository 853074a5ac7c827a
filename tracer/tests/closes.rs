//! Close records against the real kernel: how each connection ended, exact application bytes
//! each way, retransmissions, lifespan and owner.

mod common;

use common::*;
use serde_json::Value;

const CLIENTS: u64 = 4;
const BYTES: u64 = 7_777;

fn closes_of(run: &Run) -> Vec<&Value> {
    run.of_type("close")
}

fn by_pid(closes: &[&Value], pid: u32) -> Vec<Value> {
    closes
        .iter()
        .filter(|c| c["pid"].as_u64() == Some(u64::from(pid)))
        .map(|c| (*c).clone())
        .collect()
}

/// Runs a server and `CLIENTS` clients sending `BYTES` each, traced with `--type close`.
fn exchange(client_extra: &[&str]) -> (Run, u32, u32) {
    exchange_traced(&[], client_extra)
}

/// [`exchange`] with more tracer arguments.
fn exchange_traced(tracer_extra: &[&str], client_extra: &[&str]) -> (Run, u32, u32) {
    let port = port();
    let p = port.to_string();
    let tracer = Tracer::start(&[&["--type", "close", "--port", &p], tracer_extra].concat());
    let server = exchange_server("127.0.0.1", port, CLIENTS, &[]);
    let server_pid = server.pid();
    let bytes = BYTES.to_string();
    let mut args = vec!["--send", bytes.as_str()];
    args.extend_from_slice(client_extra);
    let (client_pid, _) = exchange_clients(server, "127.0.0.1", port, CLIENTS, &args);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let run = tracer.stop();
    run.assert_no_loss();
    (run, server_pid, client_pid)
}

#[test]
fn orderly_closes_carry_exact_bytes_and_owners() {
    if kernel_available("orderly_closes_carry_exact_bytes_and_owners") {
        orderly_closes(&[]);
    }
}

/// The same with userspace attribution, where the kernel has what it needs (bytes then come
/// from entries the send/recv programs made, found by their port pair at close).
#[test]
fn orderly_closes_attributed_in_userspace_carry_exact_bytes_and_owners() {
    if kernel_available("orderly_closes_attributed_in_userspace_carry_exact_bytes_and_owners") {
        orderly_closes(&["--attribution", "userspace"]);
    }
}

fn orderly_closes(tracer_extra: &[&str]) {
    let (run, server_pid, client_pid) = exchange_traced(tracer_extra, &[]);
    let closes = closes_of(&run);
    assert!(
        run.events.iter().all(|e| e["type"] == "close"),
        "--type close prints only close records"
    );
    let clients = by_pid(&closes, client_pid);
    let servers = by_pid(&closes, server_pid);
    assert_eq!(clients.len() as u64, CLIENTS, "{closes:#?}");
    assert_eq!(servers.len() as u64, CLIENTS, "{closes:#?}");
    for c in &clients {
        assert_eq!(c["end"], "orderly", "{c}");
        assert_eq!(c["state"], "FIN_WAIT2", "{c}");
        assert_eq!(
            (c["bytes_sent"].as_u64(), c["bytes_received"].as_u64()),
            (Some(BYTES), Some(0)),
            "{c}"
        );
        assert_eq!(c["retransmits"], 0);
        assert!(c["lifespan_ms"].as_f64().is_some_and(|l| l > 0.0), "{c}");
        assert_eq!(c["error"], Value::Null);
    }
    for s in &servers {
        assert_eq!(s["end"], "orderly", "{s}");
        assert_eq!(s["state"], "LAST_ACK", "{s}");
        assert_eq!(
            (s["bytes_sent"].as_u64(), s["bytes_received"].as_u64()),
            (Some(0), Some(BYTES)),
            "{s}"
        );
    }
}

#[test]
fn resets_name_who_reset() {
    if !kernel_available("resets_name_who_reset") {
        return;
    }
    let (run, server_pid, client_pid) = exchange(&["--close", "reset"]);
    let closes = closes_of(&run);
    for c in by_pid(&closes, client_pid) {
        // The client aborted: it sent the RST, nothing was pending on its socket.
        assert_eq!(
            (c["end"].as_str(), c["error"].as_str()),
            (Some("reset"), None),
            "{c}"
        );
        assert_eq!(c["bytes_sent"], BYTES);
    }
    let servers = by_pid(&closes, server_pid);
    assert_eq!(servers.len() as u64, CLIENTS, "{closes:#?}");
    for s in servers {
        assert_eq!(
            (s["end"].as_str(), s["error"].as_str()),
            (Some("reset"), Some("ECONNRESET")),
            "{s}"
        );
    }
}

#[test]
fn refused_and_timed_out_connects() {
    if !kernel_available("refused_and_timed_out_connects") {
        return;
    }
    let ns = Netns::new("cls");
    // One SYN retransmission, then ETIMEDOUT after about 3 s instead of two minutes.
    sh(&[
        "ip",
        "netns",
        "exec",
        &ns.name,
        "sysctl",
        "-qw",
        "net.ipv4.tcp_syn_retries=1",
    ]);
    let refused = port();
    let blackhole = port();
    ns.drop_inbound(blackhole, "");
    let tracer = Tracer::start_in(
        &ns.exec(),
        &["stream", "--json", "--type", "close,retransmit"],
        "streaming",
    );
    let (refused_pid, s) = loadgen_at(
        &ns.exec(),
        "refused",
        "127.0.0.1",
        refused,
        &["--count", "3"],
    );
    assert_eq!(s["refused"], 3, "{s}");
    let (timeout_pid, s) = loadgen_at(
        &ns.exec(),
        "client",
        "127.0.0.1",
        blackhole,
        &["--count", "1"],
    );
    assert_eq!(s["connected"], 0, "{s}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let run = tracer.stop();
    // No port filter (two ports): the checks below are exact for this test's sockets.
    run.assert_no_loss_but_host_wide();
    let closes = closes_of(&run);
    let refused_closes = by_pid(&closes, refused_pid);
    assert_eq!(refused_closes.len(), 3, "{closes:#?}");
    for c in &refused_closes {
        assert_eq!(c["state"], "SYN_SENT");
        assert_eq!(
            (c["end"].as_str(), c["error"].as_str()),
            (Some("refused"), Some("ECONNREFUSED")),
            "{c}"
        );
        assert_eq!(c["dport"].as_u64(), Some(u64::from(refused)));
    }
    let timed_out = by_pid(&closes, timeout_pid);
    assert_eq!(timed_out.len(), 1, "{closes:#?}");
    let t = &timed_out[0];
    assert_eq!(
        (t["end"].as_str(), t["error"].as_str()),
        (Some("timeout"), Some("ETIMEDOUT")),
        "{t}"
    );
    // The close record counts exactly the SYN retransmissions the stream reported.
    let rtx = run
        .of_type("retransmit")
        .iter()
        .filter(|r| r["sk"] == t["sk"])
        .count() as u64;
    assert!(rtx >= 1, "{:#?}", run.events);
    assert_eq!(t["retransmits"], rtx, "{t}");
    assert!(t["lifespan_ms"].as_f64().is_some_and(|l| l > 2500.0), "{t}");
}
