//! Bad input and a hostile environment: clear errors, the right exit codes, no panics.

mod common;

use std::process::Command;

use common::*;

#[test]
fn invalid_flags_exit_2_with_a_clear_error() {
    for (args, needle) in [
        (&["--port", "0"][..], "--port"),
        (&["--lport", "http"], "--lport"),
        (&["--state", "ESTAB"], "unknown TCP state `ESTAB`"),
        (&["--comm", "a-very-long-command-name"], "at most 15 bytes"),
        (&["--addr", "10.0.0.300"], "--addr"),
        (&["--ring-size", "1000"], "power of two"),
        (&["--duration=-3"], "--duration"),
        (&["stream", "--type", "bogus"], "--type"),
        (&["--no-such-flag"], "--no-such-flag"),
    ] {
        let out = tracer(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn without_privileges_one_clear_line() {
    if !kernel_available("without_privileges_one_clear_line") {
        return;
    }
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(TRACER)
        .args(["--duration", "1"])
        .output()
        .expect("setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("needs root, or CAP_BPF and CAP_PERFMON"),
        "{stderr}"
    );
    assert!(stderr.contains("missing: CAP_BPF, CAP_PERFMON"), "{stderr}");
}

#[test]
fn mounts_tracefs_when_it_is_not_mounted() {
    if !kernel_available("mounts_tracefs_when_it_is_not_mounted") {
        return;
    }
    // A private mount namespace: the host's mounts stay untouched.
    let script = format!(
        "umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing 2>/dev/null; \
         umount /sys/kernel/debug 2>/dev/null; \
         test -e /sys/kernel/tracing/events && {{ echo still mounted; exit 9; }}; \
         exec {TRACER} --duration 0.5"
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("mounted tracefs on /sys/kernel/tracing"),
        "{stderr}"
    );
    assert!(stderr.contains("attached inet_sock_set_state"), "{stderr}");
}

#[test]
fn duration_stops_with_a_summary() {
    if !kernel_available("duration_stops_with_a_summary") {
        return;
    }
    let start = std::time::Instant::now();
    let out = tracer(&["--json", "--duration", "0.5", "--port", "9"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
    let summary = stderr.lines().last().unwrap();
    assert!(
        summary.starts_with(
            "tracer: 0 events (state 0, retransmit 0, connections closed 0); lost 0 ("
        ),
        "{summary}"
    );
    assert!(
        summary.contains("ringbuf_full=0 recursion_miss=0"),
        "{summary}"
    );
}
