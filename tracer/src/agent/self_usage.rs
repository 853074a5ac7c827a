//! The agent's own CPU time, memory and descriptors, from /proc/self: the standard `process_*`
//! metrics every Prometheus client library exports.

/// A reading of /proc/self.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    /// Unix time the process started, in seconds.
    pub start_time_seconds: f64,
}

pub fn read() -> Option<Usage> {
    let me = procfs::process::Process::myself().ok()?;
    let stat = me.stat().ok()?;
    let tps = procfs::ticks_per_second() as f64;
    let boot = procfs::boot_time_secs().ok()? as f64;
    Some(Usage {
        cpu_seconds: (stat.utime + stat.stime) as f64 / tps,
        rss_bytes: stat.rss * procfs::page_size(),
        virtual_bytes: stat.vsize,
        open_fds: me.fd_count().map_or(0, |n| n as u64),
        start_time_seconds: boot + stat.starttime as f64 / tps,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_own_usage() {
        let u = super::read().expect("/proc/self is readable");
        assert!(u.rss_bytes > 0 && u.virtual_bytes >= u.rss_bytes);
        assert!(
            u.open_fds >= 3,
            "stdin, stdout, stderr at least: {}",
            u.open_fds
        );
        assert!(u.start_time_seconds > 1.0e9);
    }
}
