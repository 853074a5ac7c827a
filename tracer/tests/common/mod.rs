//! Harness for tests that drive the real kernel: a tracer subprocess streaming JSON, workload
//! processes from `tracer-loadgen`, and grouping of events into per-socket lifecycles.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU16, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use serde_json::Value;

pub const TRACER: &str = env!("CARGO_BIN_EXE_tracer");
pub const LOADGEN: &str = env!("CARGO_BIN_EXE_tracer-loadgen");

/// Whether this is a CI run, where a test that cannot run must fail instead of skipping.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|u| u.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Whether a real-kernel test can run. Outside CI without root it is skipped, loudly; in CI it
/// must run, so a missing root is a failure.
pub fn kernel_available(test: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(!ci(), "{test}: CI must run the real-kernel tests as root");
    eprintln!("\n!!! SKIPPED {test}: needs root and a BPF-capable kernel (run as root)\n");
    false
}

/// Held by a test that must not share the machine with the other tests of its binary: one
/// that asserts host-wide counts (recursion misses cannot be attributed to a socket, so a
/// neighbour's heavy traffic shows in them), or one whose timing two cores shared by several
/// tracers would decide.
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A port no other test in this run uses (each test binary gets its own range by pid) and no
/// TCP socket of this network namespace holds on either side. Ranges of two binaries coincide
/// when their pids do modulo 100 (in the kernel-matrix guests pids repeat run after run), and an
/// earlier binary's TIME_WAIT sockets outlive it by 60 s.
pub fn port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    // Below the ephemeral range (32768+), so no client socket can hold it.
    let base = 10_000 + (std::process::id() % 100) as u16 * 200;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < 200, "no free test port in {base}..{}", base + 200);
        if !ports_in_use().contains(&(base + n)) {
            return base + n;
        }
    }
}

/// Local and remote ports of every TCP socket in this network namespace, TIME_WAIT included.
fn ports_in_use() -> std::collections::HashSet<u16> {
    let mut used = std::collections::HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            // `sl local_address rem_address st ...`, addresses as HEXADDR:HEXPORT.
            let mut cols = line.split_whitespace().skip(1);
            for addr in [cols.next(), cols.next()].into_iter().flatten() {
                if let Some(p) = addr
                    .rsplit(':')
                    .next()
                    .and_then(|h| u16::from_str_radix(h, 16).ok())
                {
                    used.insert(p);
                }
            }
        }
    }
    used
}

/// `prefix... program`: a prefix such as [`Netns::exec`] runs the program inside a namespace.
fn command(prefix: &[&str], program: &str) -> Command {
    match prefix.split_first() {
        Some((p, rest)) => {
            let mut c = Command::new(p);
            c.args(rest).arg(program);
            c
        }
        None => Command::new(program),
    }
}

// ---- The tracer ----

/// Runs `tracer ARGS` to completion (commands that end by themselves: errors, replay, export).
pub fn tracer(args: &[&str]) -> Output {
    Command::new(TRACER)
        .args(args)
        .output()
        .expect("run tracer")
}

/// A child's stderr, read line by line on its own thread, so that waiting for a line (a start-up
/// marker, a log message) can time out instead of blocking on the pipe.
pub struct StderrLines(mpsc::Receiver<String>);

impl StderrLines {
    /// Takes over the child's (piped) stderr.
    pub fn follow(child: &mut Child) -> Self {
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().expect("stderr is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self(rx)
    }

    /// Appends lines to `seen` until one contains `marker` and returns that line; `None` if
    /// none came within `limit` or stderr closed first.
    pub fn wait_for(
        &self,
        marker: &str,
        limit: Duration,
        seen: &mut Vec<String>,
    ) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.0.recv_timeout(left).ok()?;
            let found = line.contains(marker);
            seen.push(line);
            if found {
                return seen.last().cloned();
            }
        }
    }

    /// Appends what is still coming to `seen`, until nothing comes for 200 ms (after a stop).
    pub fn drain(&self, seen: &mut Vec<String>) {
        while let Ok(line) = self.0.recv_timeout(Duration::from_millis(200)) {
            seen.push(line);
        }
    }
}

pub struct Tracer {
    child: Child,
    out: PathBuf,
    stderr: StderrLines,
    pub started: Vec<String>,
}

pub struct Run {
    pub events: Vec<Value>,
    pub stdout: String,
    pub stderr: String,
    pub status: ExitStatus,
}

impl Tracer {
    /// Starts `tracer stream --json ARGS` and waits until its programs are attached.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with(&["stream", "--json"], args)
    }

    pub fn start_with(base: &[&str], args: &[&str]) -> Self {
        let all: Vec<&str> = base.iter().chain(args).copied().collect();
        Self::start_in(&[], &all, "streaming")
    }

    /// Starts `prefix... tracer args...` and waits for a stderr line containing `marker`.
    pub fn start_in(prefix: &[&str], args: &[&str], marker: &str) -> Self {
        let out =
            std::env::temp_dir().join(format!("tracer-test-{}-{}.out", std::process::id(), port()));
        let file = std::fs::File::create(&out).unwrap();
        let mut child = command(prefix, TRACER)
            .args(args)
            .stdout(file)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tracer");
        let stderr = StderrLines::follow(&mut child);
        let mut started = Vec::new();
        if stderr
            .wait_for(marker, Duration::from_secs(30), &mut started)
            .is_none()
        {
            let _ = child.kill();
            panic!("tracer did not start: {started:?}");
        }
        Self {
            child,
            out,
            stderr,
            started,
        }
    }

    /// The JSON lines printed so far (a partly written last line is left out).
    pub fn json_lines(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |i| &text[..i]);
        complete
            .lines()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// SIGINT, then collect everything it printed.
    pub fn stop(self) -> Run {
        self.stop_with(None)
    }

    /// Like [`Tracer::stop`], for big runs: keeps only these fields of each record and not the
    /// raw text, so millions of events fit in memory.
    pub fn stop_slim(self, keep: &[&str]) -> Run {
        self.stop_with(Some(keep))
    }

    fn stop_with(mut self, keep: Option<&[&str]>) -> Run {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = wait_timeout(&mut self.child, Duration::from_secs(30)).expect("tracer exits");
        let mut lines = std::mem::take(&mut self.started);
        self.stderr.drain(&mut lines);
        let stderr = lines.join("\n");
        let file = std::fs::File::open(&self.out).unwrap();
        let mut stdout = String::new();
        let mut events = Vec::new();
        for line in BufReader::new(file).lines() {
            let line = line.unwrap();
            if line.starts_with('{') {
                let mut v: Value =
                    serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON {line}: {e}"));
                if let (Some(keep), Some(map)) = (keep, v.as_object_mut()) {
                    map.retain(|k, _| keep.contains(&k.as_str()));
                }
                events.push(v);
            }
            if keep.is_none() {
                stdout.push_str(&line);
                stdout.push('\n');
            }
        }
        let _ = std::fs::remove_file(&self.out);
        Run {
            events,
            stdout,
            stderr,
            status,
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Run {
    pub fn lost_records(&self) -> Vec<&Value> {
        self.events.iter().filter(|e| e["type"] == "lost").collect()
    }

    pub fn of_type(&self, t: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["type"] == t).collect()
    }

    /// The stop summary line.
    pub fn summary(&self) -> &str {
        self.stderr
            .lines()
            .find(|l| is_summary(l))
            .expect("summary line")
    }

    /// Asserts the stop summary reports no lost events at all.
    pub fn assert_no_loss(&self) {
        assert!(
            self.lost_records().is_empty(),
            "lost records: {:?}",
            self.lost_records()
        );
        let summary = self.summary();
        assert!(summary.contains("; lost 0 ("), "{summary}");
    }

    /// [`Run::assert_no_loss`], except `kernel_undelivered`: hits on which the kernel ran no BPF
    /// program at all, which the tracer can only count. On the development VMs they happen in
    /// softirqs run on top of one thread of the VM's init process (README, "Lost events"),
    /// so a test whose transitions run from timers (retransmissions) meets them now and then.
    pub fn assert_no_loss_but_the_kernels(&self) {
        let own: Vec<&Value> = self
            .lost_records()
            .into_iter()
            .filter(|r| r["cause"] != "kernel_undelivered")
            .collect();
        assert!(own.is_empty(), "lost records: {own:?}");
        let summary = self.summary();
        let undelivered = summary_loss(summary, "kernel_undelivered");
        assert_eq!(
            summary_number(summary, "; lost ", ' '),
            undelivered,
            "{summary}"
        );
    }

    /// [`Run::assert_no_loss`] for a tracer with no socket criterion in its filter (`--pid`
    /// only, or none in a private namespace): its `kernel_undelivered` counter and
    /// `recursion_miss` then cover every TCP socket on the host, neighbouring tests' included,
    /// so those two causes are allowed. The exact checks that must follow prove that none of
    /// this test's own transitions went missing.
    pub fn assert_no_loss_but_host_wide(&self) {
        const HOST_WIDE: [&str; 2] = ["kernel_undelivered", "recursion_miss"];
        let own: Vec<&Value> = self
            .lost_records()
            .into_iter()
            .filter(|r| !HOST_WIDE.iter().any(|c| r["cause"] == *c))
            .collect();
        assert!(own.is_empty(), "lost records: {own:?}");
        let summary = self.summary();
        for cause in [
            "ringbuf_full",
            "sock_map_full",
            "sock_table_busy",
            "listener_map_full",
            "proc_map_full",
            "decode_error",
            "output_queue_full",
        ] {
            assert_eq!(summary_loss(summary, cause), 0, "{cause}: {summary}");
        }
    }
}

// ---- Workloads (`tracer-loadgen`) ----

/// `SUB --addr ADDR --port PORT EXTRA...`: how every port-based loadgen subcommand (`server`,
/// `client`, `refused`, `churn`, `hold`) is pointed at its address.
fn at_args<'a>(sub: &'a str, addr: &'a str, port: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![sub, "--addr", addr, "--port", port];
    args.extend_from_slice(extra);
    args
}

/// A background workload process (e.g. `tracer-loadgen server`).
pub struct Proc {
    pub child: Child,
    pub ready: String,
    /// Closing it (see [`Proc::release`]) asks `hold`/`states` to let go of their sockets.
    stdin: Option<std::process::ChildStdin>,
}

impl Proc {
    /// Spawns `prefix... tracer-loadgen args...` and waits for its `READY` line.
    pub fn spawn(prefix: &[&str], args: &[&str]) -> Self {
        let mut child = command(prefix, LOADGEN)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn loadgen");
        let stdin = child.stdin.take();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut ready = String::new();
        out.read_line(&mut ready).unwrap();
        assert!(
            ready.starts_with("READY"),
            "loadgen {args:?} said {ready:?}"
        );
        // Keep draining so the process never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = out.read_to_end(&mut sink);
        });
        Self {
            child,
            ready: ready.trim().to_owned(),
            stdin,
        }
    }

    /// [`Proc::spawn`] of `SUB --addr ADDR --port PORT EXTRA...` (`server`, `hold`).
    pub fn spawn_at(prefix: &[&str], sub: &str, addr: &str, port: u16, extra: &[&str]) -> Self {
        let port = port.to_string();
        Self::spawn(prefix, &at_args(sub, addr, &port, extra))
    }

    /// Closes the process's stdin: `hold` and `states` release their sockets and exit.
    pub fn release(&mut self) {
        self.stdin = None;
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit by itself.
    pub fn wait(mut self) -> ExitStatus {
        wait_timeout(&mut self.child, Duration::from_secs(30)).expect("loadgen exits")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `prefix... tracer-loadgen args...` to completion and returns its JSON summary.
pub fn loadgen(prefix: &[&str], args: &[&str]) -> (u32, Value) {
    let child = command(prefix, LOADGEN)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn loadgen");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "loadgen {args:?}: {}", out.status);
    let text = String::from_utf8(out.stdout).unwrap();
    let last = text.lines().last().unwrap_or_default();
    (
        pid,
        serde_json::from_str(last).unwrap_or_else(|e| panic!("loadgen said {text:?}: {e}")),
    )
}

/// [`loadgen`] of `SUB --addr ADDR --port PORT EXTRA...` (`client`, `refused`, `churn`).
pub fn loadgen_at(
    prefix: &[&str],
    sub: &str,
    addr: &str,
    port: u16,
    extra: &[&str],
) -> (u32, Value) {
    let port = port.to_string();
    loadgen(prefix, &at_args(sub, addr, &port, extra))
}

/// A bounded two-thread `tracer-loadgen churn` against 127.0.0.1:`port` (plus `extra`), run to
/// completion; returns its pid and summary.
pub fn churn_at(port: u16, secs: u64, max_connections: u64, extra: &[&str]) -> (u32, Value) {
    let (secs, max) = (secs.to_string(), max_connections.to_string());
    let args = [
        "--threads",
        "2",
        "--duration-secs",
        &secs,
        "--max-connections",
        &max,
    ];
    loadgen_at(
        &[],
        "churn",
        "127.0.0.1",
        port,
        &[&args[..], extra].concat(),
    )
}

/// The server side of an exchange: a `tracer-loadgen server` on `addr:port` that exits after
/// serving `n` connections, so waiting for it proves every connection was handled. Spawn it
/// before the tracer when the listener must predate it.
pub fn exchange_server(addr: &str, port: u16, n: u64, extra: &[&str]) -> Proc {
    let n = n.to_string();
    let mut args = vec!["--max-conns", n.as_str()];
    args.extend_from_slice(extra);
    Proc::spawn_at(&[], "server", addr, port, &args)
}

/// The client side of an exchange: `n` clients of `server` (each with `extra`), run to
/// completion. Asserts that all `n` connected and that the server then exited cleanly; returns
/// the client process's pid and its summary.
pub fn exchange_clients(
    server: Proc,
    addr: &str,
    port: u16,
    n: u64,
    extra: &[&str],
) -> (u32, Value) {
    exchange_clients_at(&[], server, addr, port, n, extra)
}

/// [`exchange_clients`] run under `prefix` (`taskset`, `ip netns exec`).
pub fn exchange_clients_at(
    prefix: &[&str],
    server: Proc,
    addr: &str,
    port: u16,
    n: u64,
    extra: &[&str],
) -> (u32, Value) {
    let count = n.to_string();
    let mut args = vec!["--count", count.as_str()];
    args.extend_from_slice(extra);
    let (pid, summary) = loadgen_at(prefix, "client", addr, port, &args);
    assert_eq!(summary["connected"], n, "{summary}");
    assert!(server.wait().success());
    (pid, summary)
}

// ---- Socket lifecycles ----

/// One socket's life: the transitions from its start (out of CLOSE, or a listener's child) to
/// CLOSE. Addresses are reused after a socket is freed, so `sk` alone is not an identity.
#[derive(Debug, Clone)]
pub struct Life {
    pub sk: String,
    pub events: Vec<Value>,
}

impl Life {
    pub fn transitions(&self) -> Vec<String> {
        self.events
            .iter()
            .map(|e| {
                format!(
                    "{}->{}",
                    e["old_state"].as_str().unwrap(),
                    e["new_state"].as_str().unwrap()
                )
            })
            .collect()
    }

    pub fn pids(&self) -> Vec<u64> {
        self.events
            .iter()
            .map(|e| e["pid"].as_u64().unwrap_or(0))
            .collect()
    }

    /// The last event's ports: the first event of an active open has no local port yet.
    pub fn local_port(&self) -> u64 {
        self.events.last().unwrap()["sport"].as_u64().unwrap()
    }

    pub fn remote_port(&self) -> u64 {
        self.events.last().unwrap()["dport"].as_u64().unwrap()
    }

    /// The life's transitions with their owners and times, for failure messages.
    pub fn timed(&self) -> String {
        let t: Vec<String> = self
            .transitions()
            .into_iter()
            .zip(&self.events)
            .map(|(t, e)| {
                format!(
                    "{t} pid {} @{}",
                    e["pid"],
                    e["time"].as_str().unwrap_or("?")
                )
            })
            .collect();
        format!(
            "{} {}:{}: {}",
            self.sk,
            self.local_port(),
            self.remote_port(),
            t.join(", ")
        )
    }
}

pub fn starts_life(e: &Value) -> bool {
    let (old, new) = (
        e["old_state"].as_str().unwrap(),
        e["new_state"].as_str().unwrap(),
    );
    old == "CLOSE" || (old == "LISTEN" && new == "SYN_RECV")
}

/// Splits state events into lifecycles, in kernel time order per socket.
pub fn lives(events: &[Value]) -> Vec<Life> {
    let mut by_sk: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for e in events.iter().filter(|e| e["type"] == "state") {
        by_sk
            .entry(e["sk"].as_str().unwrap().to_owned())
            .or_default()
            .push(e.clone());
    }
    let mut out = Vec::new();
    for (sk, evs) in by_sk {
        let mut cur: Option<Life> = None;
        for e in evs {
            if starts_life(&e) {
                out.extend(cur.take());
            }
            cur.get_or_insert_with(|| Life {
                sk: sk.clone(),
                events: Vec::new(),
            })
            .events
            .push(e);
        }
        out.extend(cur);
    }
    out
}

pub const ACTIVE_CLOSE_CLIENT: [&str; 5] = [
    "CLOSE->SYN_SENT",
    "SYN_SENT->ESTABLISHED",
    "ESTABLISHED->FIN_WAIT1",
    "FIN_WAIT1->FIN_WAIT2",
    "FIN_WAIT2->CLOSE",
];
pub const PASSIVE_CLOSE_SERVER: [&str; 5] = [
    "LISTEN->SYN_RECV",
    "SYN_RECV->ESTABLISHED",
    "ESTABLISHED->CLOSE_WAIT",
    "CLOSE_WAIT->LAST_ACK",
    "LAST_ACK->CLOSE",
];

/// The life of a passive child the kernel creates and destroys at once: when two CPUs complete
/// the same handshake (the client's last ACK on one, its next packet on another), the loser's
/// child is closed in SYN_RECV.
pub const DISCARDED_CHILD: [&str; 2] = ["LISTEN->SYN_RECV", "SYN_RECV->CLOSE"];

/// Detector settings under which the tests' leaks (8 CLOSE_WAIT sockets held by one process)
/// raise `close_wait_leak` within seconds, and clear 2 s after the sockets close.
pub const FAST_CLOSE_WAIT_LEAK: [&str; 6] = [
    "--anomaly",
    "close_wait_leak.min_sockets=6",
    "--anomaly",
    "close_wait_leak.min_age_secs=2",
    "--anomaly",
    "clear_after_secs=2",
];

// ---- Network namespaces ----

/// A network namespace for the duration of a test.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = format!("tracer-{tag}-{}", std::process::id());
        // A namespace left by a crashed run of this pid; normally there is none (quietly).
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Self { name }
    }

    /// Command prefix that runs a program inside the namespace.
    pub fn exec(&self) -> Vec<&str> {
        vec!["ip", "netns", "exec", &self.name]
    }

    /// Runs `f` on a thread that has entered the namespace (as `ip netns exec` does), for
    /// in-process sock_diag dumps of just its sockets.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        std::thread::scope(|s| {
            s.spawn(|| {
                use std::os::fd::AsRawFd;
                // SAFETY: setns(2) moves this thread only, which owns no sockets yet.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("netns thread")
        })
    }

    /// Sets a per-namespace sysctl (`path` under /proc/sys, such as `net/ipv4/tcp_tw_reuse`).
    pub fn sysctl(&self, path: &str, value: &str) {
        let script = format!("echo {value} > /proc/sys/{path}");
        sh(&["ip", "netns", "exec", &self.name, "sh", "-c", &script]);
    }

    /// Keeps `connect()` from taking over the port of a timewait socket (loopback allows it by
    /// default, `tcp_tw_reuse=2`). For workloads that hold exact state counts: before Linux
    /// 6.11 (and its stable backports) even an orphan's FIN_WAIT2 timewait socket is taken
    /// over, and the new SYN resets the peer's CLOSE_WAIT socket, so a pair silently vanishes
    /// once the port search wraps around the ephemeral range (Debian 5.10, a few thousand
    /// connects).
    pub fn without_tw_reuse(self) -> Self {
        self.sysctl("net/ipv4/tcp_tw_reuse", "0");
        self
    }

    pub fn nft(&self, ruleset: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("nft");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(ruleset.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "nft rejected {ruleset}");
    }

    /// Drops inbound TCP packets to `port` that also match `matching` (nft syntax, may be
    /// empty), in the namespace's own `tracer_test` table; [`Netns::clear_drops`] removes it.
    /// Dropping on input, not output: a drop on output fails the send locally, which TCP does
    /// not count as a transmission.
    pub fn drop_inbound(&self, port: u16, matching: &str) {
        let rule = format!("tcp dport {port} {matching}");
        self.nft(&format!(
            "table inet tracer_test {{\n chain inbound {{\n type filter hook input priority 0;\n \
             {} drop\n }}\n}}\n",
            rule.trim_end()
        ));
    }

    /// Removes what [`Netns::drop_inbound`] added.
    pub fn clear_drops(&self) {
        self.nft("delete table inet tracer_test");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub fn sh(args: &[&str]) {
    let status = Command::new(args[0])
        .args(&args[1..])
        .status()
        .expect(args[0]);
    assert!(status.success(), "{args:?}: {status}");
}

// ---- Waiting ----

/// Waits for `child` to exit, killing it after `limit` (then `None`).
pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().ok()? {
            return Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `probe` every `every` until it returns `Ok`. A miss after `limit` has passed panics
/// with the message `why` makes of that last miss, so a failure shows what was last seen; the
/// message is only built then.
pub fn wait_until<T, E>(
    limit: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Result<T, E>,
    why: impl FnOnce(E) -> String,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match probe() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => panic!("{}", why(e)),
            Err(_) => std::thread::sleep(every),
        }
    }
}

/// Whether `line` is a tracer's stop summary (`tracer: N events (state N, ...); lost N (...)`),
/// not one of the notes printed beside it, which may also mention events.
pub fn is_summary(line: &str) -> bool {
    line.strip_prefix("tracer: ").is_some_and(|rest| {
        rest.split_once(" events (state ")
            .is_some_and(|(n, _)| n.parse::<u64>().is_ok())
    })
}

/// The number that follows `after` in a summary line, up to `until`.
pub fn summary_number(summary: &str, after: &str, until: char) -> u64 {
    summary
        .split(after)
        .nth(1)
        .and_then(|r| r.split(until).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {after:?} in {summary}"))
}

/// `cause=N` from a tracer's stop summary line.
pub fn summary_loss(summary: &str, cause: &str) -> u64 {
    let key = format!("{cause}=");
    summary
        .split_whitespace()
        .find_map(|w| w.trim_start_matches('(').strip_prefix(&key))
        // The value may be followed by `)`, `);` and a note (events delivered late).
        .and_then(|v| {
            let digits = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
            v[..digits].parse().ok()
        })
        .unwrap_or_else(|| panic!("no {cause} in {summary}"))
}

/// Waits until every socket on `port` has finished closing (nothing left but TIME_WAIT), so
/// the last transitions of a workload (a LAST_ACK socket's `-> CLOSE` when the final ACK is
/// processed) have happened before the tracer is stopped.
pub fn wait_closed(port: u16) {
    let filter = format!("( sport = :{port} or dport = :{port} )");
    wait_until(
        Duration::from_secs(10),
        Duration::from_millis(20),
        || {
            let out = Command::new("ss")
                .args(["-Htan", "exclude", "time-wait", &filter])
                .output()
                .expect("ss");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if text.trim().is_empty() {
                Ok(())
            } else {
                Err(text)
            }
        },
        |left| format!("sockets on port {port} never finished closing:\n{left}"),
    );
}

impl Tracer {
    /// Whether the tracer said at start-up that `feature` is degraded on this kernel.
    pub fn degraded(&self, feature: &str) -> bool {
        let line = format!("tracer: degraded: {feature}:");
        self.started.iter().any(|l| l.starts_with(&line))
    }

    /// Sends `sig` to the tracer (SIGSTOP/SIGCONT stop and resume its reader).
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}
