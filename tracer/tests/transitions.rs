//! Real kernel, real sockets: exact transition sequences and owners for every socket.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::Value;

const CLIENTS: usize = 20;

/// Runs a server and `CLIENTS` clients on `addr`, traced with `--port`; returns the run, the
/// server pid and the client's summary.
fn traced_exchange(
    addr: &str,
    server_extra: &[&str],
    client_extra: &[&str],
) -> (Run, u32, u32, Value, u16) {
    traced_exchange_with(&[], addr, server_extra, client_extra)
}

/// [`traced_exchange`] with more tracer arguments.
fn traced_exchange_with(
    tracer_extra: &[&str],
    addr: &str,
    server_extra: &[&str],
    client_extra: &[&str],
) -> (Run, u32, u32, Value, u16) {
    let port = port();
    let p = port.to_string();
    let mut args = vec!["--port", &p];
    args.extend_from_slice(tracer_extra);
    let tracer = Tracer::start(&args);
    let server = exchange_server(addr, port, CLIENTS as u64, server_extra);
    let server_pid = server.pid();
    let (client_pid, summary) = exchange_clients(server, addr, port, CLIENTS as u64, client_extra);
    std::thread::sleep(std::time::Duration::from_millis(300));
    (tracer.stop(), server_pid, client_pid, summary, port)
}

fn client_ports(summary: &Value) -> BTreeSet<u64> {
    summary["local_ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect()
}

fn discarded_children(run: &Run) -> usize {
    lives(&run.events)
        .iter()
        .filter(|l| l.transitions() == DISCARDED_CHILD)
        .count()
}

/// Splits lifecycles into (listener, server children, clients) by which side has the port.
/// Discarded children are left out: none of these tests expects a child to close in SYN_RECV,
/// and every connection's real child must still be there.
fn split(run: &Run, port: u16) -> (Vec<Life>, Vec<Life>, Vec<Life>) {
    let port = u64::from(port);
    let all: Vec<Life> = lives(&run.events)
        .into_iter()
        .filter(|l| l.transitions() != DISCARDED_CHILD)
        .collect();
    let listener = all
        .iter()
        .filter(|l| l.events[0]["new_state"] == "LISTEN")
        .cloned()
        .collect();
    let children = all
        .iter()
        .filter(|l| l.events[0]["old_state"] == "LISTEN" && l.local_port() == port)
        .cloned()
        .collect();
    let clients = all
        .iter()
        .filter(|l| l.remote_port() == port)
        .cloned()
        .collect();
    (listener, children, clients)
}

fn assert_lives(lives: &[Life], expected: &[&str], pid: u32, what: &str) {
    assert_eq!(lives.len(), CLIENTS, "{what}: {lives:#?}");
    for life in lives {
        assert_eq!(life.transitions(), expected, "{what} {}", life.sk);
        assert!(
            life.pids().iter().all(|&p| p == u64::from(pid)),
            "{what} owners {:?} != {pid}",
            life.pids()
        );
        for e in &life.events[1..] {
            assert!(
                e["duration_ms"].as_f64().is_some_and(|d| d >= 0.0),
                "{what}: no duration in {e}"
            );
        }
    }
}

fn assert_listener(listener: &[Life], pid: u32, addr: &str) {
    assert_eq!(listener.len(), 1, "{listener:#?}");
    assert_eq!(
        listener[0].transitions(),
        ["CLOSE->LISTEN", "LISTEN->CLOSE"]
    );
    assert!(listener[0].pids().iter().all(|&p| p == u64::from(pid)));
    assert_eq!(listener[0].events[0]["saddr"], addr);
}

fn orderly_client_first(addr: &str, family: u64, tracer_extra: &[&str]) -> Run {
    let (run, server_pid, client_pid, summary, port) = traced_exchange_with(
        tracer_extra,
        addr,
        &[],
        &["--send", "1000", "--close", "normal"],
    );
    run.assert_no_loss();
    let (listener, children, clients) = split(&run, port);
    assert_listener(&listener, server_pid, addr);
    // Passive-side transitions run in softirq, often in the client's context: the owner must
    // still be the server.
    assert_lives(&children, &PASSIVE_CLOSE_SERVER, server_pid, "server child");
    assert_lives(&clients, &ACTIVE_CLOSE_CLIENT, client_pid, "client");
    let ports = client_ports(&summary);
    assert_eq!(ports.len(), CLIENTS);
    assert_eq!(
        clients
            .iter()
            .map(Life::local_port)
            .collect::<BTreeSet<_>>(),
        ports
    );
    assert_eq!(
        children
            .iter()
            .map(Life::remote_port)
            .collect::<BTreeSet<_>>(),
        ports
    );
    for e in run.of_type("state") {
        assert_eq!(e["family"], family);
        assert_eq!(
            e["daddr"],
            if e["new_state"] == "LISTEN" || e["old_state"] == "LISTEN" && e["new_state"] == "CLOSE"
            {
                if family == 4 { "0.0.0.0" } else { "::" }
            } else {
                addr
            }
        );
    }
    assert_eq!(
        run.of_type("state").len(),
        2 + 10 * CLIENTS,
        "exactly ten transitions per connection"
    );
    assert_eq!(
        run.of_type("close").len(),
        2 * CLIENTS,
        "one close record per socket"
    );
    for c in run.of_type("close") {
        let sent = c["bytes_sent"].as_u64().unwrap() + c["bytes_received"].as_u64().unwrap();
        assert_eq!(sent, 1000, "a close record's bytes: {c}");
    }
    run
}

#[test]
fn orderly_close_from_client_ipv4() {
    if kernel_available("orderly_close_from_client_ipv4") {
        orderly_client_first("127.0.0.1", 4, &[]);
    }
}

#[test]
fn orderly_close_from_client_ipv6() {
    if kernel_available("orderly_close_from_client_ipv6") {
        orderly_client_first("::1", 6, &[]);
    }
}

/// The same exchange with the owners worked out by the kernel programs, on every kernel.
#[test]
fn orderly_close_attributed_in_the_kernel() {
    if kernel_available("orderly_close_attributed_in_the_kernel") {
        let run = orderly_client_first("127.0.0.1", 4, &["--attribution", "kernel"]);
        assert!(
            run.stderr.contains("owners attributed in the kernel"),
            "{}",
            run.stderr
        );
    }
}

/// And by userspace, where the kernel has what that needs (send/recv tracepoints, BTF); where
/// it has not, the tracer says why and the kernel programs do it.
#[test]
fn orderly_close_attributed_in_userspace() {
    if kernel_available("orderly_close_attributed_in_userspace") {
        let run = orderly_client_first("127.0.0.1", 4, &["--attribution", "userspace"]);
        assert!(
            run.stderr.contains("owners attributed in userspace")
                || run
                    .stderr
                    .contains("degraded: userspace attribution: needs"),
            "{}",
            run.stderr
        );
    }
}

/// The smallest socket table (128 sets): attribution must not change.
#[test]
fn orderly_close_with_the_smallest_socket_table() {
    if kernel_available("orderly_close_with_the_smallest_socket_table") {
        orderly_client_first("127.0.0.1", 4, &["--max-sockets", "1024"]);
    }
}

#[test]
fn orderly_close_from_server() {
    if !kernel_available("orderly_close_from_server") {
        return;
    }
    let (run, server_pid, client_pid, _, port) = traced_exchange(
        "127.0.0.1",
        &["--close-first", "--read-bytes", "100"],
        &["--send", "100", "--close", "wait-eof"],
    );
    run.assert_no_loss();
    let (listener, children, clients) = split(&run, port);
    assert_listener(&listener, server_pid, "127.0.0.1");
    assert_lives(
        &children,
        &[
            "LISTEN->SYN_RECV",
            "SYN_RECV->ESTABLISHED",
            "ESTABLISHED->FIN_WAIT1",
            "FIN_WAIT1->FIN_WAIT2",
            "FIN_WAIT2->CLOSE",
        ],
        server_pid,
        "server child",
    );
    assert_lives(
        &clients,
        &[
            "CLOSE->SYN_SENT",
            "SYN_SENT->ESTABLISHED",
            "ESTABLISHED->CLOSE_WAIT",
            "CLOSE_WAIT->LAST_ACK",
            "LAST_ACK->CLOSE",
        ],
        client_pid,
        "client",
    );
}

#[test]
fn reset_close_with_linger_zero() {
    if !kernel_available("reset_close_with_linger_zero") {
        return;
    }
    let (run, server_pid, client_pid, _, port) =
        traced_exchange("127.0.0.1", &[], &["--send", "100", "--close", "reset"]);
    run.assert_no_loss();
    let (listener, children, clients) = split(&run, port);
    assert_listener(&listener, server_pid, "127.0.0.1");
    assert_lives(
        &children,
        &[
            "LISTEN->SYN_RECV",
            "SYN_RECV->ESTABLISHED",
            "ESTABLISHED->CLOSE",
        ],
        server_pid,
        "server child",
    );
    assert_lives(
        &clients,
        &[
            "CLOSE->SYN_SENT",
            "SYN_SENT->ESTABLISHED",
            "ESTABLISHED->CLOSE",
        ],
        client_pid,
        "client",
    );
}

#[test]
fn refused_connect() {
    if !kernel_available("refused_connect") {
        return;
    }
    let port = port();
    let p = port.to_string();
    let tracer = Tracer::start(&["--port", &p]);
    let (pid, summary) = loadgen_at(&[], "refused", "127.0.0.1", port, &["--count", "5"]);
    assert_eq!(summary["refused"], 5);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let run = tracer.stop();
    run.assert_no_loss();
    let all = lives(&run.events);
    assert_eq!(all.len(), 5, "{all:#?}");
    for life in &all {
        assert_eq!(life.transitions(), ["CLOSE->SYN_SENT", "SYN_SENT->CLOSE"]);
        assert!(life.pids().iter().all(|&p| p == u64::from(pid)));
        assert_eq!(life.events[0]["dport"], u64::from(port));
    }
}

#[test]
fn kernel_filters_select_exact_events() {
    if !kernel_available("kernel_filters_select_exact_events") {
        return;
    }
    let port = port();
    let p = port.to_string();
    let server = exchange_server("127.0.0.1", port, CLIENTS as u64, &[]);
    let server_pid = server.pid().to_string();
    // Client side only, transitions touching ESTABLISHED: two per connection.
    let by_state = Tracer::start(&["--rport", &p, "--state", "ESTABLISHED"]);
    // Everything the server process owns, on any port.
    let by_pid = Tracer::start(&["--pid", &server_pid, "--type", "state"]);
    // No retransmissions happen: a retransmit-only stream stays empty.
    let retrans = Tracer::start(&["--port", &p, "--type", "retransmit"]);
    exchange_clients(server, "127.0.0.1", port, CLIENTS as u64, &["--send", "10"]);
    std::thread::sleep(std::time::Duration::from_millis(300));

    let run = by_state.stop();
    run.assert_no_loss();
    assert_eq!(run.events.len(), 2 * CLIENTS, "{:#?}", run.events);
    for e in &run.events {
        assert_eq!(e["dport"], u64::from(port));
        assert!(
            e["old_state"] == "ESTABLISHED" || e["new_state"] == "ESTABLISHED",
            "{e}"
        );
    }
    let run = by_pid.stop();
    // Counted exactly below.
    run.assert_no_loss_but_host_wide();
    // The listener predates this tracer: its close, and all five transitions of every accepted
    // connection, including the two before the server first touches the socket (attributed
    // through the listener's owner, found in /proc at start-up).
    assert_eq!(
        run.events.len(),
        1 + 5 * CLIENTS + 2 * discarded_children(&run),
        "{:#?}",
        run.events
    );
    let children = lives(&run.events)
        .into_iter()
        .filter(|l| l.events.len() == 5)
        .count();
    assert_eq!(children, CLIENTS);
    assert_eq!(
        run.events
            .iter()
            .filter(|e| e["old_state"] == "LISTEN" && e["new_state"] == "CLOSE")
            .count(),
        1
    );
    assert!(
        run.events
            .iter()
            .all(|e| e["pid"].as_u64().unwrap().to_string() == server_pid)
    );
    // Retransmit-only: no state record gets through. (A slow guest can really retransmit a FIN
    // when its ACK comes late, so retransmits themselves may appear.)
    let run = retrans.stop();
    run.assert_no_loss();
    for e in &run.events {
        assert_eq!(e["type"], "retransmit", "{e}");
        assert!(
            e["sport"] == u64::from(port) || e["dport"] == u64::from(port),
            "{e}"
        );
    }
}

#[test]
fn retransmissions_of_one_connection() {
    if !kernel_available("retransmissions_of_one_connection") {
        return;
    }
    let ns = Netns::new("rtx");
    let port = port();
    let p = port.to_string();
    let tracer = Tracer::start(&["--port", &p]);
    let server = Proc::spawn_at(
        &ns.exec(),
        "server",
        "127.0.0.1",
        port,
        &["--max-conns", "1"],
    );
    let server_pid = server.pid();
    // Drop data-bearing packets to the port as they arrive; handshake and ACKs pass.
    ns.drop_inbound(port, "ip length > 120");
    let (client_pid, summary) = loadgen_at(
        &ns.exec(),
        "client",
        "127.0.0.1",
        port,
        &["--count", "1", "--send", "2000"],
    );
    let client_port = summary["local_ports"][0].as_u64().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    ns.clear_drops();
    assert!(server.wait().success());
    std::thread::sleep(std::time::Duration::from_millis(300));
    let run = tracer.stop();
    // Seen once in CI (host, 3 of this connection's transitions): the kernel ran no program for
    // a transition in a timer's softirq. The retransmission checks below stay exact.
    run.assert_no_loss_but_the_kernels();
    // The dropped data is retransmitted by the client. A slow guest may also retransmit the
    // server's FIN when the client's ACK comes late: those must name the server's side.
    let (rtx, server_side): (Vec<_>, Vec<_>) = run
        .of_type("retransmit")
        .into_iter()
        .partition(|e| e["sport"].as_u64() == Some(client_port));
    for e in &server_side {
        assert_eq!(
            (
                e["sport"].as_u64(),
                e["dport"].as_u64(),
                e["state"].as_str()
            ),
            (Some(u64::from(port)), Some(client_port), Some("LAST_ACK")),
            "{e}"
        );
        assert_eq!(e["pid"], u64::from(server_pid), "{e}");
    }
    assert!(rtx.len() >= 2, "expected retransmissions, got {rtx:#?}");
    for e in &rtx {
        assert_eq!(
            (
                e["saddr"].as_str(),
                e["sport"].as_u64(),
                e["daddr"].as_str(),
                e["dport"].as_u64()
            ),
            (
                Some("127.0.0.1"),
                Some(client_port),
                Some("127.0.0.1"),
                Some(u64::from(port))
            ),
            "{e}"
        );
        assert_eq!(e["pid"], u64::from(client_pid));
        assert!(
            e["state"] == "ESTABLISHED" || e["state"] == "FIN_WAIT1",
            "{e}"
        );
    }
    // The connection still completes, with exactly its ten transitions (and the listener's
    // two), each printed or counted as undelivered.
    let all = lives(&run.events);
    let undelivered = summary_loss(run.summary(), "kernel_undelivered") as usize;
    assert_eq!(
        all.iter().map(|l| l.events.len()).sum::<usize>() + undelivered,
        12 + 2 * discarded_children(&run),
        "{all:#?}"
    );
}

#[test]
fn human_columns() {
    if !kernel_available("human_columns") {
        return;
    }
    let port = port();
    let p = port.to_string();
    let tracer = Tracer::start_with(&["stream"], &["--port", &p]);
    let (pid, _) = loadgen_at(&[], "refused", "127.0.0.1", port, &["--count", "1"]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let run = tracer.stop();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", run.stdout);
    assert!(lines[0].starts_with("TIME(UTC)"));
    assert!(
        lines[1].contains(&format!(" {pid} ")) && lines[1].contains("CLOSE -> SYN_SENT"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].contains(&format!("127.0.0.1:{port}")) && lines[2].contains("SYN_SENT -> CLOSE"),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].contains(&format!(" {pid} ")) && lines[3].contains("CLOSED refused tx=0 rx=0"),
        "{}",
        lines[3]
    );
}

/// Batched mode (the default) writes up to sixteen events per ring-buffer record, so one
/// connection's eleven transitions leave a partial batch on some CPU. The reader must flush it
/// before each drain: every transition is printed while the tracer still runs, promptly, not
/// only when it stops.
#[test]
fn a_partial_batch_is_printed_while_the_tracer_runs() {
    if !kernel_available("a_partial_batch_is_printed_while_the_tracer_runs") {
        return;
    }
    use std::{
        net::{TcpListener, TcpStream},
        time::{Duration, Instant},
    };
    let port = port();
    let p = port.to_string();
    let tracer = Tracer::start(&["--port", &p, "--type", "state"]);
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (server, _) = listener.accept().unwrap();
    drop(client);
    drop(server);
    // LISTEN, then the connection's ten transitions; the listener stays open.
    let expected = 11;
    let start = Instant::now();
    let mut printed = tracer.json_lines().len();
    while printed < expected && start.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
        printed = tracer.json_lines().len();
    }
    let waited = start.elapsed();
    let run = tracer.stop();
    drop(listener);
    run.assert_no_loss();
    assert_eq!(
        printed,
        expected,
        "printed while running, after {waited:?} (by the stop: {})",
        run.of_type("state").len()
    );
    // Owners are not checked: a process that other tests fork meanwhile holds copies of these
    // sockets until it execs, and may make the last close itself.
    assert_eq!(run.of_type("state").len(), expected);
}
