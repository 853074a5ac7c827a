//! What runs inside a guest (and, for the host row, on this machine), and the parsing of what it
//! reports. Every report line starts with `@@vm `, so test output cannot be mistaken for one.

use std::collections::BTreeMap;

/// The tracepoints whose format files the guest prints, to become unit-test fixtures.
pub const FORMATS: &[&str] = &[
    "sock/inet_sock_set_state",
    "sock/sock_send_length",
    "sock/sock_recv_length",
    "tcp/tcp_retransmit_skb",
    "tcp/tcp_retransmit_synack",
    "tcp/tcp_send_reset",
    "tcp/tcp_receive_reset",
    "tcp/tcp_destroy_sock",
];

const MARK: &str = "@@vm ";

/// The shell that probes degradations, runs each test binary (`name path` pairs) with a time
/// limit and prints the format files.
pub fn body(tracer: &str, tests: &[(String, String)], timeout: u64) -> String {
    let mut s = String::from("say() { echo \"@@vm $*\"; }\nsay release \"$(uname -r)\"\n");
    // Every optional feature requested, so every degradation is named.
    s += &format!(
        "{tracer} stream --anomalies --duration 1 --port 1 2>&1 >/dev/null | \
         while IFS= read -r l; do say probe \"$l\"; done\n"
    );
    // After a failure, the kernel's last messages: `quiet` hides the info-level ones that
    // explain a socket the kernel dropped (too many orphans, TCP memory pressure).
    for (name, path) in tests {
        s += &format!(
            "say test-begin {name}\ntimeout {timeout} {path} --test-threads=2 2>&1\nrc=$?\n\
             [ $rc -eq 0 ] || dmesg | tail -n 40 | while IFS= read -r l; do say kernel \"$l\"; \
             done\nsay test-end {name} $rc\n"
        );
    }
    for f in FORMATS {
        s += &format!(
            "p=/sys/kernel/tracing/events/{f}/format\nif [ -f $p ]; then say format-begin {f}; \
             cat $p; say format-end {f}; else say format-missing {f}; fi\n"
        );
    }
    s + "say done\n"
}

/// `/init`: mounts, loopback up, the body, power off (QEMU runs with `-no-reboot`). Nothing is
/// mounted over /tmp or /run: the binaries sit at their build paths, which may be under them
/// (a CI clone in /tmp), and the initramfs root is writable anyway.
pub fn init_script(tracer: &str, tests: &[&str], timeout: u64) -> String {
    let tests: Vec<(String, String)> = tests
        .iter()
        .map(|n| (n.to_string(), format!("/tests/{n}")))
        .collect();
    format!(
        "#!/bin/sh\n\
         export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root CI=true RUST_BACKTRACE=1\n\
         mount -t proc proc /proc\nmount -t sysfs sysfs /sys\nmount -t devtmpfs devtmpfs /dev\n\
         mkdir -p /dev/pts && mount -t devpts devpts /dev/pts\n\
         chmod 1777 /tmp\n\
         [ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd\n\
         ip link set lo up\necho \"{MARK}boot\"\n{}\npoweroff -f\n",
        body(tracer, &tests, timeout)
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed,
    Ignored,
}

/// One test binary's results.
#[derive(Debug, Default)]
pub struct Binary {
    pub cases: BTreeMap<String, Outcome>,
    /// The binary's exit status; `None` when the guest never reported its end.
    pub exit: Option<i32>,
}

/// Everything one guest (or the host run) reported.
#[derive(Debug, Default)]
pub struct Report {
    pub booted: bool,
    pub release: String,
    /// The tracer's start-up lines (`tracer: degraded: ...` among them).
    pub probe: Vec<String>,
    pub binaries: BTreeMap<String, Binary>,
    pub formats: BTreeMap<String, String>,
    pub missing_formats: Vec<String>,
    pub done: bool,
}

impl Report {
    pub fn degraded(&self) -> Vec<&str> {
        self.probe
            .iter()
            .filter_map(|l| l.strip_prefix("tracer: degraded: "))
            .collect()
    }

    pub fn count(&self, outcome: Outcome) -> usize {
        self.binaries
            .values()
            .flat_map(|b| b.cases.values())
            .filter(|&&o| o == outcome)
            .count()
    }

    /// Binaries that failed without a failing case to show for it (crash, time limit).
    pub fn broken_binaries(&self) -> Vec<String> {
        self.binaries
            .iter()
            .filter(|(_, b)| b.exit != Some(0) && !b.cases.values().any(|&o| o == Outcome::Failed))
            .map(|(n, b)| match b.exit {
                Some(124) => format!("{n} (time limit)"),
                Some(c) => format!("{n} (exit {c})"),
                None => format!("{n} (never finished)"),
            })
            .collect()
    }

    /// Whether the start-up probe ran the tracer to its summary line.
    pub fn probed(&self) -> bool {
        self.probe
            .iter()
            .any(|l| l.starts_with("tracer: ") && l.contains(" events ("))
    }

    pub fn ok(&self) -> bool {
        self.done
            && self.probed()
            && self.count(Outcome::Failed) == 0
            && self.broken_binaries().is_empty()
            && self.count(Outcome::Passed) > 0
    }
}

/// Feeds one line of guest output to a report.
pub struct Parser {
    pub report: Report,
    current: Option<String>,
    format: Option<(String, String)>,
}

impl Parser {
    pub fn new() -> Self {
        Self {
            report: Report::default(),
            current: None,
            format: None,
        }
    }

    pub fn line(&mut self, line: &str) {
        let line = line.trim_end_matches('\r');
        if let Some((name, text)) = &mut self.format {
            if line == format!("{MARK}format-end {name}") {
                let (name, text) = self.format.take().unwrap_or_default();
                self.report.formats.insert(name, text);
            } else {
                text.push_str(line);
                text.push('\n');
            }
            return;
        }
        let Some(rest) = line.find(MARK).map(|i| &line[i + MARK.len()..]) else {
            self.test_line(line);
            return;
        };
        let (word, arg) = rest.split_once(' ').unwrap_or((rest, ""));
        let r = &mut self.report;
        match word {
            "boot" => r.booted = true,
            "release" => r.release = arg.trim_matches('"').to_string(),
            "probe" => r.probe.push(arg.to_string()),
            "test-begin" => {
                r.binaries.entry(arg.to_string()).or_default();
                self.current = Some(arg.to_string());
            }
            "test-end" => {
                if let Some((name, code)) = arg.split_once(' ') {
                    r.binaries.entry(name.to_string()).or_default().exit = code.parse().ok();
                }
                self.current = None;
            }
            "format-begin" => self.format = Some((arg.to_string(), String::new())),
            "format-missing" => r.missing_formats.push(arg.to_string()),
            "done" => r.done = true,
            _ => {}
        }
    }

    /// libtest's `test NAME ... ok|FAILED|ignored` lines.
    fn test_line(&mut self, line: &str) {
        let Some(current) = &self.current else { return };
        let Some(rest) = line.strip_prefix("test ") else {
            return;
        };
        let Some((name, result)) = rest.split_once(" ... ") else {
            return;
        };
        let outcome = match result.split_whitespace().next() {
            Some("ok") => Outcome::Passed,
            Some("FAILED") => Outcome::Failed,
            Some("ignored") => Outcome::Ignored,
            _ => return,
        };
        self.report
            .binaries
            .entry(current.clone())
            .or_default()
            .cases
            .insert(name.to_string(), outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_guest_session() {
        let mut p = Parser::new();
        for l in [
            "SeaBIOS junk",
            "@@vm boot",
            "@@vm release \"6.1.0-56-cloud-amd64\"\r",
            "@@vm probe tracer: degraded: owner learning from send/recv: missing",
            "@@vm test-begin transitions",
            "running 2 tests",
            "test a ... ok",
            "test b ... FAILED",
            "@@vm kernel [ 12.3] TCP: too many orphaned sockets",
            "@@vm test-end transitions 101",
            "@@vm test-begin closes",
            "test c ... ok",
            "@@vm format-begin sock/inet_sock_set_state",
            "name: inet_sock_set_state",
            "@@vm format-end sock/inet_sock_set_state",
            "@@vm format-missing sock/sock_send_length",
        ] {
            p.line(l);
        }
        let r = p.report;
        assert!(r.booted && !r.done && !r.ok());
        assert_eq!(r.release, "6.1.0-56-cloud-amd64");
        assert_eq!(r.degraded(), ["owner learning from send/recv: missing"]);
        assert_eq!(r.count(Outcome::Passed), 2);
        assert_eq!(r.count(Outcome::Failed), 1);
        assert_eq!(r.broken_binaries(), ["closes (never finished)"]);
        assert_eq!(
            r.formats["sock/inet_sock_set_state"],
            "name: inet_sock_set_state\n"
        );
        assert_eq!(r.missing_formats, ["sock/sock_send_length"]);
    }
}
