//! Delivery latency: how long an event takes from the kernel to the tracer's stdout.

use std::{
    io::{BufRead, BufReader},
    net::TcpStream,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::procs::stderr_lines;

/// Milliseconds from a connect() on an idle host to its first event line on the tracer's stdout,
/// for `samples` connects 200 ms apart. Returns the sorted latencies.
pub fn delivery_latency(tracer: &str, flags: &[&str], samples: usize) -> Result<Vec<f64>> {
    let port = 39_999u16;
    let p = port.to_string();
    let mut child = Command::new(tracer)
        .args(["stream", "--json", "--port", &p])
        .args(flags)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = stderr_lines(&mut child);
    while !stderr
        .recv_timeout(Duration::from_secs(30))
        .context("tracer did not start")?
        .contains("streaming")
    {}
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send((Instant::now(), line));
        }
    });
    let mut lat = Vec::new();
    for _ in 0..samples {
        std::thread::sleep(Duration::from_millis(200));
        while rx.try_recv().is_ok() {}
        let t0 = Instant::now();
        let _ = TcpStream::connect(("127.0.0.1", port));
        let (at, _) = rx
            .recv_timeout(Duration::from_secs(5))
            .context("event never delivered")?;
        lat.push(at.duration_since(t0).as_secs_f64() * 1000.0);
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let _ = child.wait();
    lat.sort_by(f64::total_cmp);
    Ok(lat)
}
