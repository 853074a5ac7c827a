//! `tracer top` in a real 80x24 terminal (tmux), against real kernel traffic from
//! `tracer-loadgen`: what the screen shows, the keys, and a clean exit.

mod common;

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use common::{Proc, TRACER, kernel_available, loadgen_at, port, wait_until};

/// A `tracer top` running in its own detached tmux server of 80x24, killed on drop.
struct Screen {
    socket: String,
    status_file: PathBuf,
}

impl Screen {
    fn start(tag: &str) -> Self {
        let socket = format!("tracer-top-{tag}-{}", std::process::id());
        let status_file = std::env::temp_dir().join(format!("{socket}.status"));
        let _ = std::fs::remove_file(&status_file);
        // The wrapper records the exit status: tmux itself does not report it.
        let cmd = format!(
            "{TRACER} top --interval 0.5; echo $? > {}",
            status_file.display()
        );
        let screen = Self {
            socket,
            status_file,
        };
        let ok = screen
            .tmux(&[
                "new-session",
                "-d",
                "-s",
                "top",
                "-x",
                "80",
                "-y",
                "24",
                &cmd,
            ])
            .status
            .success();
        assert!(ok, "tmux new-session failed");
        screen
    }

    fn tmux(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run tmux")
    }

    fn capture(&self) -> String {
        String::from_utf8_lossy(&self.tmux(&["capture-pane", "-p", "-t", "top"]).stdout)
            .into_owned()
    }

    fn keys(&self, keys: &str) {
        assert!(
            self.tmux(&["send-keys", "-t", "top", keys])
                .status
                .success()
        );
    }

    /// Polls the screen until `done` holds; panics with the last screen after `limit`.
    fn wait_for(&self, what: &str, limit: Duration, done: impl Fn(&str) -> bool) -> String {
        wait_until(
            limit,
            Duration::from_millis(200),
            || {
                let screen = self.capture();
                if done(&screen) {
                    Ok(screen)
                } else {
                    Err(screen)
                }
            },
            |screen| format!("timed out waiting for {what}; screen:\n{screen}"),
        )
    }

    /// The exit status the wrapper recorded, once the tracer has exited.
    fn exit_status(&self, limit: Duration) -> String {
        wait_until(
            limit,
            Duration::from_millis(100),
            || match std::fs::read_to_string(&self.status_file) {
                Ok(s) if s.ends_with('\n') => Ok(s.trim().to_owned()),
                _ => Err(()),
            },
            |()| format!("tracer top did not exit; screen:\n{}", self.capture()),
        )
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        // Ends the tracer too (SIGHUP), so no test leaves programs attached.
        let _ = self.tmux(&["kill-server"]);
        let _ = std::fs::remove_file(&self.status_file);
    }
}

/// The process table row of `pid`, split into columns.
fn process_row(screen: &str, pid: u32) -> Option<Vec<String>> {
    let pid = pid.to_string();
    screen.lines().find_map(|l| {
        let cols: Vec<String> = l
            .trim_matches(|c: char| c == '│' || c.is_whitespace())
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        (cols.first() == Some(&pid)).then_some(cols)
    })
}

/// The count next to a state name in the state grid.
fn state_count(screen: &str, state: &str) -> Option<u64> {
    screen.lines().find_map(|l| {
        let mut words = l.split(|c: char| c == '│' || c.is_whitespace());
        words.position(|w| w == state)?;
        words.find(|w| !w.is_empty())?.parse().ok()
    })
}

/// First data row of the process table (the line after its header).
fn first_process_row(screen: &str) -> &str {
    let mut lines = screen
        .lines()
        .skip_while(|l| !(l.contains("PID") && l.contains("COMM")));
    lines.next();
    lines.next().unwrap_or_default()
}

#[test]
fn dashboard_shows_real_traffic_and_obeys_keys() {
    if !kernel_available("dashboard_shows_real_traffic_and_obeys_keys") {
        return;
    }
    const HELD: u64 = 20;
    let screen = Screen::start("traffic");
    let limit = Duration::from_secs(30);
    screen.wait_for("the dashboard", limit, |s| {
        s.contains("sort: bytes") && s.contains("Processes by bytes")
    });

    let hold_port = port();
    let hold = Proc::spawn_at(
        &[],
        "hold",
        "127.0.0.1",
        hold_port,
        &["--count", &HELD.to_string()],
    );
    let listener = format!("127.0.0.1:{hold_port}");
    let shown = screen.wait_for("the held connections", limit, |s| {
        s.contains(&listener)
            && state_count(s, "ESTABLISHED").is_some_and(|n| n >= 2 * HELD)
            && process_row(s, hold.pid()).is_some_and(|r| {
                // Both ends of every connection, and the listener.
                r.get(1).is_some_and(|c| c == "tracer-loadgen")
                    && r.get(2).is_some_and(|c| c == &(2 * HELD + 1).to_string())
            })
    });
    let owner_line = shown.lines().find(|l| l.contains(&listener)).unwrap();
    assert!(
        owner_line.contains(&hold.pid().to_string()),
        "listener owner: {owner_line}"
    );

    // Bytes: 20 connections of 100000 bytes, 1.9 MiB each way.
    let server_port = port();
    let server = Proc::spawn_at(&[], "server", "127.0.0.1", server_port, &[]);
    let (client, _) = loadgen_at(
        &[],
        "client",
        "127.0.0.1",
        server_port,
        &["--count", "20", "--send", "100000"],
    );
    let shown = screen.wait_for("the client's and server's bytes", limit, |s| {
        let has =
            |pid, bytes: &str| process_row(s, pid).is_some_and(|r| r.join(" ").contains(bytes));
        has(client, "1.9 MiB 0 B") && has(server.pid(), "0 B 1.9 MiB")
    });
    let first = first_process_row(&shown);
    assert!(
        first.contains(&client.to_string()) || first.contains(&server.pid().to_string()),
        "sorted by bytes, the traffic comes first: {first}\n{shown}"
    );

    screen.keys("s");
    let shown = screen.wait_for("the connection sort", limit, |s| {
        s.contains("sort: connections") && s.contains("Processes by connections")
    });
    let first = first_process_row(&shown);
    assert!(
        first.contains(&hold.pid().to_string()),
        "sorted by connections, the holder comes first: {first}\n{shown}"
    );
    screen.keys("s");
    screen.wait_for("the byte sort again", limit, |s| s.contains("sort: bytes"));

    screen.keys("p");
    screen.wait_for("the pause marker", limit, |s| s.contains("PAUSED"));
    screen.keys("p");
    screen.wait_for("the pause to end", limit, |s| !s.contains("PAUSED"));

    screen.keys("q");
    assert_eq!(screen.exit_status(limit), "0", "exit status of tracer top");
    drop(server);
    drop(hold);
}

#[test]
fn ctrl_c_quits_cleanly() {
    if !kernel_available("ctrl_c_quits_cleanly") {
        return;
    }
    let screen = Screen::start("ctrl-c");
    let limit = Duration::from_secs(30);
    screen.wait_for("the dashboard", limit, |s| s.contains("Processes by bytes"));
    // In raw mode Ctrl-C is a key, not SIGINT: the dashboard must handle it itself.
    screen.keys("C-c");
    assert_eq!(screen.exit_status(limit), "0");
}

#[test]
fn refuses_to_run_without_a_terminal() {
    // Fails before touching the kernel, so it needs no root.
    let out = Command::new(TRACER)
        .arg("top")
        .stdin(Stdio::null())
        .output()
        .expect("run tracer");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("needs a terminal") && err.contains("tracer stats"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}
