//! Harness for tests that drive the real kernel: a tracer subprocess streaming JSON, workload
//! processes from `tracer-loadgen`, and grouping of events into per-socket lifecycles.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicU16, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use serde_json::Value;

pub const TRACER: &str = env!("CARGO_BIN_EXE_tracer");
pub const LOADGEN: &str = env!("CARGO_BIN_EXE_tracer-loadgen");

fn ci() -> bool {
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

/// A port no other test in this run uses (each test binary gets its own range by pid).
pub fn port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    // Below the ephemeral range (32768+), so no client socket can hold it.
    let base = 10_000 + (std::process::id() % 100) as u16 * 200;
    base + NEXT.fetch_add(1, Ordering::Relaxed)
}

pub struct Tracer {
    child: Child,
    out: PathBuf,
    stderr: mpsc::Receiver<String>,
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
        let mut cmd = match prefix.split_first() {
            Some((p, rest)) => {
                let mut c = Command::new(p);
                c.args(rest).arg(TRACER);
                c
            }
            None => Command::new(TRACER),
        };
        let mut child = cmd
            .args(args)
            .stdout(file)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tracer");
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut started = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let ready = line.contains(marker);
                    started.push(line);
                    if ready {
                        break;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("tracer did not start: {started:?}");
                }
            }
        }
        Self {
            child,
            out,
            stderr: rx,
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
        let mut stderr = self.started.join("\n");
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_millis(200)) {
            stderr.push('\n');
            stderr.push_str(&line);
        }
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

impl Run {
    pub fn lost_records(&self) -> Vec<&Value> {
        self.events.iter().filter(|e| e["type"] == "lost").collect()
    }

    pub fn of_type(&self, t: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["type"] == t).collect()
    }

    /// Asserts the stop summary reports no lost events at all.
    pub fn assert_no_loss(&self) {
        assert!(
            self.lost_records().is_empty(),
            "lost records: {:?}",
            self.lost_records()
        );
        let summary = self
            .stderr
            .lines()
            .find(|l| l.contains(" events ("))
            .expect("summary line");
        assert!(summary.contains("; lost 0 ("), "{summary}");
    }
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
        let mut cmd = match prefix.split_first() {
            Some((p, rest)) => {
                let mut c = Command::new(p);
                c.args(rest).arg(LOADGEN);
                c
            }
            None => Command::new(LOADGEN),
        };
        let mut child = cmd
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
    let mut cmd = match prefix.split_first() {
        Some((p, rest)) => {
            let mut c = Command::new(p);
            c.args(rest).arg(LOADGEN);
            c
        }
        None => Command::new(LOADGEN),
    };
    let child = cmd
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

/// A network namespace for the duration of a test.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = format!("tracer-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Self { name }
    }

    /// Command prefix that runs a program inside the namespace.
    pub fn exec(&self) -> Vec<&str> {
        vec!["ip", "netns", "exec", &self.name]
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
