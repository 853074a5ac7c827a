//! Turning on the kernel's BPF run-time statistics (`run_time_ns`, `run_cnt`) for as long as
//! the agent runs. `BPF_ENABLE_STATS` returns a file descriptor and the kernel keeps the
//! statistics on while any such descriptor is open, so they switch off by themselves when the
//! agent exits, even if it crashes; writing the `kernel.bpf_stats_enabled` sysctl would leave
//! them on (and turn them off under anyone else who needed them).

use std::{
    io,
    os::fd::{FromRawFd, OwnedFd},
};

use aya_obj::generated::{bpf_cmd, bpf_stats_type};

/// The `enable_stats` member of `union bpf_attr`.
#[repr(C)]
struct EnableStatsAttr {
    kind: u32,
}

/// Enables run-time statistics until the returned descriptor is dropped (Linux 5.8+,
/// CAP_SYS_ADMIN).
pub fn enable() -> io::Result<OwnedFd> {
    let attr = EnableStatsAttr {
        kind: bpf_stats_type::BPF_STATS_RUN_TIME as u32,
    };
    // SAFETY: attr is a valid attribute block of the size passed; the kernel zero-fills the rest.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_ENABLE_STATS as libc::c_int,
            &attr as *const EnableStatsAttr,
            std::mem::size_of::<EnableStatsAttr>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: the kernel returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether the kernel is collecting run-time statistics now: `held` (we hold a descriptor
/// from [`enable`]) or the sysctl is on. The sysctl shows only its own setting, never the
/// descriptors, so another process's descriptor goes unseen.
pub fn enabled(held: bool) -> Option<bool> {
    if held {
        return Some(true);
    }
    let v = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").ok()?;
    Some(v.trim() != "0")
}
