//! `tracer agent` against the real kernel: the agent runs in a private network namespace, so
//! only the sockets of a known workload (and of the test's own scrape connection) count and
//! the exported values can be checked exactly; `promtool` lints the exposition, a real
//! Prometheus server scrapes it, and `tracer stats --agent` reads the JSON view.

mod common;

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use common::{
    Netns, Proc, StderrLines, TRACER, ci, kernel_available, loadgen_at, port, tracer, wait_timeout,
    wait_until,
};
use serde_json::Value;

/// Whether an external program is installed. Missing in CI is a failure, elsewhere a loud skip.
fn tool_available(test: &str, tool: &str, package: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(tool).is_file()));
    if !found {
        assert!(
            !ci(),
            "{test}: CI must have `{tool}` (Debian package {package})"
        );
        eprintln!("\n!!! SKIPPED {test}: `{tool}` is missing (apt-get install {package})\n");
    }
    found
}

/// `nsenter` switches only the network namespace; `ip netns exec` would also remount /sys and
/// hide the host's tracefs mount from the agent.
fn in_ns(ns: &Netns, argv: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{}", ns.name)).arg("--");
    c.args(argv);
    c
}

/// A `tracer agent` inside a namespace, killed if the test fails.
struct Agent {
    child: Child,
    addr: SocketAddr,
    ns: String,
    stderr: StderrLines,
    log: Vec<String>,
}

impl Agent {
    fn start(ns: &Netns, extra: &[&str]) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", port()).parse().unwrap();
        let addr_s = addr.to_string();
        let mut argv = vec![TRACER, "agent", "--metrics-addr", &addr_s, "--refresh", "1"];
        argv.extend_from_slice(extra);
        let mut child = in_ns(ns, &argv)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn agent");
        let mut agent = Self {
            stderr: StderrLines::follow(&mut child),
            child,
            addr,
            ns: ns.name.clone(),
            log: Vec::new(),
        };
        if agent
            .stderr
            .wait_for("serving /metrics", Duration::from_secs(30), &mut agent.log)
            .is_none()
        {
            panic!("agent did not start: {:?}", agent.log);
        }
        agent
    }

    fn connect(&self) -> Http {
        Http::connect(&self.ns, self.addr)
    }

    /// SIGTERM, then the exit status and everything it logged.
    fn stop(mut self) -> (ExitStatus, String) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = wait_timeout(&mut self.child, Duration::from_secs(30)).expect("agent exits");
        self.stderr.drain(&mut self.log);
        (status, self.log.join("\n"))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP connection opened inside a named network namespace (from a thread that enters it).
fn connect_in(ns: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let f = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: setns(2) on this thread only, with a valid namespace descriptor.
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        })
        .join()
        .expect("netns thread")
    })
}

struct Response {
    status: u16,
    content_type: String,
    body: String,
}

/// A keep-alive HTTP/1.1 connection: every request reuses it, so scraping adds no sockets
/// (and no transitions) between two readings.
struct Http {
    reader: BufReader<TcpStream>,
}

impl Http {
    fn connect(ns: &str, addr: SocketAddr) -> Self {
        let stream = connect_in(ns, addr).unwrap_or_else(|e| panic!("connect {addr} in {ns}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        Self {
            reader: BufReader::new(stream),
        }
    }

    fn get(&mut self, path: &str, accept: &str) -> Response {
        let req = format!("GET {path} HTTP/1.1\r\nHost: agent\r\nAccept: {accept}\r\n\r\n");
        self.reader.get_mut().write_all(req.as_bytes()).unwrap();
        let mut status_line = String::new();
        self.reader.read_line(&mut status_line).unwrap();
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let (mut length, mut content_type) = (None, String::new());
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once(':').unwrap();
            match k.to_ascii_lowercase().as_str() {
                "content-length" => length = v.trim().parse::<usize>().ok(),
                "content-type" => content_type = v.trim().to_owned(),
                _ => {}
            }
        }
        let mut body = vec![0; length.expect("content-length")];
        self.reader.read_exact(&mut body).unwrap();
        Response {
            status,
            content_type,
            body: String::from_utf8(body).unwrap(),
        }
    }

    fn metrics(&mut self) -> Samples {
        let r = self.get("/metrics", "*/*");
        assert_eq!(r.status, 200, "{}", r.body);
        Samples::parse(&r.body)
    }
}

/// One scrape: `name{labels}` -> value.
struct Samples {
    text: String,
    values: BTreeMap<String, f64>,
}

impl Samples {
    fn parse(text: &str) -> Self {
        let values = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').unwrap();
                (k.to_owned(), v.parse().unwrap_or(f64::NAN))
            })
            .collect();
        Self {
            text: text.to_owned(),
            values,
        }
    }

    fn get(&self, key: &str) -> f64 {
        *self
            .values
            .get(key)
            .unwrap_or_else(|| panic!("no sample {key} in\n{}", self.text))
    }

    fn sum(&self, prefix: &str) -> f64 {
        self.values
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
            .sum()
    }
}

/// Scrapes until `done` holds (bounded).
fn scrape_until(http: &mut Http, what: &str, done: impl Fn(&Samples) -> bool) -> Samples {
    wait_until(
        Duration::from_secs(15),
        Duration::from_millis(200),
        || {
            let s = http.metrics();
            if done(&s) { Ok(s) } else { Err(s) }
        },
        |s| format!("timed out waiting for {what}:\n{}", s.text),
    )
}

const N: u64 = 20;
const BYTES: u64 = 3000;

#[test]
fn agent_exports_a_known_workload_exactly() {
    if !kernel_available("agent_exports_a_known_workload_exactly") {
        return;
    }
    let ns = Netns::new("agent");
    let agent = Agent::start(&ns, &["--bpf-stats"]);
    let server_port = port();
    let server = Proc::spawn_at(&ns.exec(), "server", "127.0.0.1", server_port, &[]);
    let mut http = agent.connect();
    // The listener's and this connection's own transitions are applied within a drain period.
    let before = scrape_until(&mut http, "the listener and the scrape connection", |s| {
        s.get(r#"tracer_connections{state="LISTEN"}"#) == 2.0
            && s.get(r#"tracer_connections{state="ESTABLISHED"}"#) == 2.0
    });

    let (client_pid, summary) = loadgen_at(
        &ns.exec(),
        "client",
        "127.0.0.1",
        server_port,
        &["--count", &N.to_string(), "--send", &BYTES.to_string()],
    );
    assert_eq!(summary["connected"].as_u64(), Some(N), "{summary}");
    let orderly = r#"tracer_closes_total{end="orderly"}"#;
    let base = before.get(orderly);
    let after = scrape_until(&mut http, "2N orderly closes", |s| {
        s.get(orderly) >= base + (2 * N) as f64
    });
    // Nothing else in the namespace opens or closes sockets: the counts are exact.
    let delta = |key: &str| after.get(key) - before.values.get(key).copied().unwrap_or(0.0);
    assert_eq!(delta(orderly), (2 * N) as f64);
    for (from, to) in [
        ("LISTEN", "SYN_RECV"),
        ("SYN_SENT", "ESTABLISHED"),
        ("FIN_WAIT2", "CLOSE"),
        ("LAST_ACK", "CLOSE"),
    ] {
        let key = format!(r#"tracer_transitions_total{{from="{from}",to="{to}"}}"#);
        assert_eq!(delta(&key), N as f64, "{key}");
    }
    for end in ["reset", "refused", "timeout", "unreachable", "aborted"] {
        assert_eq!(
            delta(&format!(r#"tracer_closes_total{{end="{end}"}}"#)),
            0.0
        );
    }
    assert_eq!(after.get(r#"tracer_connections{state="LISTEN"}"#), 2.0);
    assert_eq!(after.get(r#"tracer_connections{state="ESTABLISHED"}"#), 2.0);
    // Every client closed first, so each left a timewait socket (they live 60 s).
    assert_eq!(
        after.get(r#"tracer_connections{state="TIME_WAIT"}"#),
        N as f64
    );
    for cause in [
        "ringbuf_full",
        "recursion_miss",
        "sock_map_full",
        "sock_table_busy",
        "listener_map_full",
        "proc_map_full",
        "decode_error",
        "kernel_undelivered",
    ] {
        after.get(&format!(r#"tracer_lost_events_total{{cause="{cause}"}}"#));
    }
    // Two CPUs, a few events each, no stall: nothing is delivered out of order.
    assert_eq!(after.get("tracer_events_late_total"), 0.0);
    // A handful of sockets in a map of 262,144: none evicted.
    assert_eq!(after.get("tracer_sock_map_evictions_total"), 0.0);
    // Nor any process from a map of 16,384.
    assert_eq!(after.get("tracer_proc_map_evictions_total"), 0.0);
    assert_eq!(after.get("tracer_bpf_stats_enabled"), 1.0);
    assert!(after.get(r#"tracer_program_runs_total{program="inet_sock_set_state"}"#) > 0.0);
    assert!(after.get("process_resident_memory_bytes") > 0.0);

    // Per-process bytes come from the kernel map at each refresh (every second here).
    let rows = wait_until(
        Duration::from_secs(15),
        Duration::from_millis(200),
        || {
            let r = http.get("/stats?top=10000", "application/json");
            assert_eq!(
                (r.status, r.content_type.as_str()),
                (200, "application/json")
            );
            let stats: Value = serde_json::from_str(&r.body).unwrap();
            let rows = stats["processes"].as_array().unwrap().clone();
            let bytes = |pid: u32, field: &str| {
                rows.iter()
                    .find(|p| p["pid"].as_u64() == Some(u64::from(pid)))
                    .map_or(0, |p| p[field].as_u64().unwrap())
            };
            if bytes(client_pid, "bytes_sent") >= N * BYTES
                && bytes(server.pid(), "bytes_received") >= N * BYTES
            {
                assert_eq!(bytes(client_pid, "bytes_sent"), N * BYTES);
                assert_eq!(bytes(server.pid(), "bytes_received"), N * BYTES);
                return Ok(rows);
            }
            Err(rows)
        },
        |rows| format!("bytes never arrived: {rows:?}"),
    );
    let server_comm = rows
        .iter()
        .find(|p| p["pid"].as_u64() == Some(u64::from(server.pid())))
        .and_then(|p| p["comm"].as_str())
        .unwrap()
        .to_owned();
    let received = format!(r#"tracer_process_received_bytes_total{{comm="{server_comm}"}}"#);
    let s = scrape_until(&mut http, &received, |s| {
        s.values
            .get(&received)
            .is_some_and(|&v| v >= (N * BYTES) as f64)
    });
    assert!(s.sum("tracer_process_sent_bytes_total{") >= (N * BYTES) as f64);
    // Listeners are read at each refresh too; one has passed since the bytes arrived.
    assert_eq!(s.get("tracer_listeners"), 2.0);
    // Every connection was accepted: the server's queue is empty.
    let listener = format!(r#"tracer_listener_accept_queue{{addr="127.0.0.1:{server_port}","#);
    assert_eq!(s.sum(&listener), 0.0);
    assert!(s.text.contains(&listener), "{listener}\n{}", s.text);

    // The classic text format passes promtool's parser and linter without a word.
    let out = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(s.text.as_bytes())?;
            c.wait_with_output()
        });
    if tool_available("agent promtool check", "promtool", "prometheus") {
        let out = out.expect("promtool runs");
        let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && said.trim().is_empty(),
            "promtool: {said}"
        );
    }
    let om = http.get("/metrics", "application/openmetrics-text;version=1.0.0");
    assert!(om.content_type.starts_with("application/openmetrics-text"));
    assert!(om.body.ends_with("# EOF\n"));
    assert!(om.body.contains("# TYPE tracer_closes counter\n"));
    assert_eq!(http.get("/nope", "*/*").status, 404);
    assert_eq!(http.get("/stats?top=0", "*/*").status, 400);
    assert_eq!(http.get("/healthz", "*/*").body, "ok\n");

    // `tracer stats --agent` prints the same view without attaching anything.
    let addr = agent.addr.to_string();
    let out = in_ns(
        &ns,
        &[TRACER, "stats", "--agent", &addr, "--json", "--count", "1"],
    )
    .output()
    .expect("tracer stats --agent");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["type"], "stats");
    assert_eq!(line["states"]["LISTEN"], 2);
    assert_eq!(line["states"]["TIME_WAIT"], N);
    assert_eq!(line["closes"]["orderly"].as_u64(), Some(2 * N), "{line}");

    drop(http);
    drop(server);
    let (status, log) = agent.stop();
    assert!(status.success(), "{status}\n{log}");
    assert!(log.contains("stopped"), "{log}");
}

/// A Prometheus server killed (and its data removed) when the test ends.
struct Prometheus {
    child: Child,
    dir: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One GET on a fresh connection, for Prometheus' API.
fn get_once(ns: &str, addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = connect_in(ns, addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: prometheus\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// The value of an instant query, once Prometheus has one.
fn query(ns: &str, addr: SocketAddr, promql: &str) -> Option<f64> {
    let mut q = String::new();
    for b in promql.bytes() {
        if b.is_ascii_alphanumeric() || b"_-.".contains(&b) {
            q.push(b as char);
        } else {
            q.push_str(&format!("%{b:02X}"));
        }
    }
    // Prometheus answers with chunked encoding only for large bodies; this one is small.
    let body = get_once(ns, addr, &format!("/api/v1/query?query={q}"))?;
    let v: Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[test]
fn prometheus_scrapes_the_agent() {
    if !kernel_available("prometheus_scrapes_the_agent")
        || !tool_available("prometheus_scrapes_the_agent", "prometheus", "prometheus")
    {
        return;
    }
    let ns = Netns::new("agentprom");
    let agent = Agent::start(&ns, &[]);
    let dir = std::env::temp_dir().join(format!("tracer-prometheus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  \
             - job_name: tracer\n    static_configs:\n      - targets: ['{}']\n",
            agent.addr
        ),
    )
    .unwrap();
    let prom_addr: SocketAddr = format!("127.0.0.1:{}", port()).parse().unwrap();
    let log = File::create(dir.join("prometheus.log")).unwrap();
    let (config_arg, data_arg, web_arg) = (
        format!("--config.file={}", config.display()),
        format!("--storage.tsdb.path={}", dir.join("data").display()),
        format!("--web.listen-address={prom_addr}"),
    );
    let prom = Prometheus {
        child: in_ns(&ns, &["prometheus", &config_arg, &data_arg, &web_arg])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus"),
        dir: dir.clone(),
    };
    // Listeners in the namespace: the agent's and Prometheus'. The agent's own reading must
    // reach Prometheus through scrapes.
    let listen = r#"tracer_connections{state="LISTEN"}"#;
    let mut http = agent.connect();
    wait_until(
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            let ours = http.metrics().get(listen);
            let theirs = query(&ns.name, prom_addr, listen);
            let up = query(&ns.name, prom_addr, r#"up{job="tracer"}"#);
            if ours == 2.0 && theirs == Some(ours) && up == Some(1.0) {
                Ok(())
            } else {
                Err((ours, theirs, up))
            }
        },
        |(ours, theirs, up)| {
            format!(
                "Prometheus never saw LISTEN={ours} (it has {theirs:?}, up={up:?}); log:\n{}",
                std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
            )
        },
    );
    // Counters arrive as counters: rate() over them works.
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(500),
        || query(&ns.name, prom_addr, "rate(tracer_events_total[10s])").ok_or(()),
        |()| "no rate() of tracer_events_total".to_owned(),
    );
    drop(prom);
    drop(http);
    let (status, log) = agent.stop();
    assert!(status.success(), "{status}\n{log}");
}

#[test]
fn bad_agent_flags_are_usage_errors() {
    for args in [
        &["--metrics-addr", "localhost"][..],
        &["--refresh", "0"],
        &["--top", "0"],
        &["--log-format", "xml"],
        &["--duration", "-1"],
    ] {
        let out = Command::new(TRACER)
            .arg("agent")
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
}

#[test]
fn stats_from_a_missing_agent_is_a_clear_error() {
    // Port 1 on loopback: nothing listens there.
    let out = tracer(&["stats", "--agent", "127.0.0.1:1", "--count", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot connect to the agent at 127.0.0.1:1"),
        "{err}"
    );
}
