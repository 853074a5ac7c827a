//! A private network namespace for the 100k-socket measurements: nothing else on the host adds
//! sockets to it, so the tracer's counts and `ss`'s can be compared exactly.

use std::{
    fs::File,
    os::{fd::AsRawFd, unix::process::CommandExt},
    process::Command,
};

use anyhow::{Context, Result, bail};

pub struct Netns {
    name: String,
    file: File,
}

fn ip(args: &[&str]) -> Result<()> {
    let status = Command::new("ip")
        .args(args)
        .status()
        .context("running ip")?;
    if !status.success() {
        bail!("`ip {}` failed: {status}", args.join(" "));
    }
    Ok(())
}

fn enter(fd: i32) -> std::io::Result<()> {
    // SAFETY: setns(2) on a namespace fd we hold open; affects only the calling thread.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Netns {
    /// Creates the namespace with loopback up.
    pub fn create(name: &str) -> Result<Self> {
        ip(&["netns", "add", name])?;
        let file = match File::open(format!("/run/netns/{name}")) {
            Ok(f) => f,
            Err(e) => {
                let _ = ip(&["netns", "del", name]);
                return Err(e).context("opening the namespace");
            }
        };
        // From here on, dropping `ns` deletes the namespace.
        let ns = Self {
            name: name.to_owned(),
            file,
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A command that runs inside the namespace (entered between fork and exec, so no
    /// `ip netns exec` process sits in the timings).
    pub fn command(&self, program: &str) -> Command {
        let fd = self.file.as_raw_fd();
        let mut c = Command::new(program);
        // SAFETY: the hook only makes one async-signal-safe system call.
        unsafe { c.pre_exec(move || enter(fd)) };
        c
    }

    /// Runs `f` on a thread inside the namespace (for our own sockets: HTTP to the agent).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        let fd = self.file.as_raw_fd();
        std::thread::scope(|s| {
            s.spawn(move || {
                enter(fd).context("entering the namespace")?;
                f()
            })
            .join()
            .unwrap_or_else(|_| bail!("namespace thread panicked"))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}
