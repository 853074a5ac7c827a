//! Counting tracepoint hits the kernel never handed to our programs.
//!
//! Under heavy softirq load the kernel occasionally fires `sock:inet_sock_set_state` without
//! running the BPF programs attached to it, and without counting a recursion miss (measured on
//! 6.18: 0 to ~0.02% of hits at full loopback churn). A perf counting event on the same
//! tracepoint sees exactly those: our programs return 0, which suppresses the perf delivery of
//! every hit they do get, so the counter only grows for hits that bypassed them.
//!
//! The counter sees every hit on the host, so a tracefs filter ([`scope`]) limits it to the
//! transitions the programs would have reported: TCP, and the socket criteria of the user's
//! filter. Without it, `tracer stream --port P` would count other ports' misses as its own.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use tracer_common::{EventKind, Filter, state};

use crate::format::Format;

/// `PERF_TYPE_TRACEPOINT`.
const PERF_TYPE_TRACEPOINT: u32 = 2;
/// `PERF_FLAG_FD_CLOEXEC`.
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
/// `PERF_EVENT_IOC_DISABLE`, `_IO('$', 1)`.
const PERF_EVENT_IOC_DISABLE: libc::c_ulong = 0x2401;
/// `PERF_EVENT_IOC_ENABLE`, `_IO('$', 0)`.
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
/// `PERF_EVENT_IOC_SET_FILTER`, `_IOW('$', 6, char *)`.
const PERF_EVENT_IOC_SET_FILTER: libc::c_ulong = 0x4008_2406;
/// Offset of the flags word of `perf_event_attr`, whose bit 0 is `disabled`.
const ATTR_FLAGS: usize = 40;
/// `IPPROTO_TCP`: the tracepoint also fires for other protocols (SCTP, MPTCP).
const IPPROTO_TCP: u8 = 6;
/// Size of the attribute block passed (`PERF_ATTR_SIZE_VER5`); zeros beyond what we set.
const ATTR_SIZE: usize = 112;

pub struct Undelivered {
    fds: Vec<OwnedFd>,
}

impl Undelivered {
    /// Opens one counter per online CPU for the tracepoint with this tracefs id, counting only
    /// the hits that match the tracefs `filter` (see [`scope`]).
    pub fn open(tracepoint_id: u64, filter: &str) -> io::Result<Self> {
        let filter = CString::new(filter).map_err(io::Error::other)?;
        let cpus = aya::util::online_cpus().map_err(|(_, e)| e)?;
        let mut attr = [0u8; ATTR_SIZE];
        attr[0..4].copy_from_slice(&PERF_TYPE_TRACEPOINT.to_ne_bytes());
        attr[4..8].copy_from_slice(&(ATTR_SIZE as u32).to_ne_bytes());
        attr[8..16].copy_from_slice(&tracepoint_id.to_ne_bytes());
        // Opened disabled, so that no hit counts before the filter is in place.
        attr[ATTR_FLAGS] = 1;
        let mut fds = Vec::with_capacity(cpus.len());
        for cpu in cpus {
            // SAFETY: attr is a valid, zero-padded perf_event_attr of the size it declares.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_perf_event_open,
                    attr.as_ptr(),
                    -1 as libc::pid_t,
                    cpu as libc::c_int,
                    -1 as libc::c_int,
                    PERF_FLAG_FD_CLOEXEC,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: a new descriptor we own.
            let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
            // SAFETY: the argument is a NUL-terminated string that outlives the call.
            if unsafe { libc::ioctl(fd.as_raw_fd(), PERF_EVENT_IOC_SET_FILTER, filter.as_ptr()) }
                < 0
            {
                return Err(io::Error::last_os_error());
            }
            fds.push(fd);
        }
        for fd in &fds {
            // SAFETY: an ioctl without argument on a perf event descriptor we own.
            if unsafe { libc::ioctl(fd.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(Self { fds })
    }

    /// Descriptors of the same counters, for [`disable`].
    pub fn handles(&self) -> io::Result<Vec<OwnedFd>> {
        self.fds.iter().map(|fd| fd.try_clone()).collect()
    }

    /// Hits so far, over all CPUs.
    pub fn count(&self) -> u64 {
        self.fds
            .iter()
            .map(|fd| {
                let mut v = 0u64;
                // SAFETY: reading one u64 into a u64.
                let n = unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
                if n == 8 { v } else { 0 }
            })
            .sum()
    }
}

/// Stops counting: once our programs are detached, every hit would count as one they missed.
/// A stopped counter keeps its value.
pub fn disable(counters: &[OwnedFd]) {
    for fd in counters {
        // SAFETY: an ioctl without argument on a perf event descriptor we own.
        unsafe { libc::ioctl(fd.as_raw_fd(), PERF_EVENT_IOC_DISABLE, 0) };
    }
}

/// The counter of `sock:inet_sock_set_state` hits (whose `format` is given) that bypassed the
/// attached programs and match `filter` (see [`scope`]); `None` when the filter wants no state
/// event.
pub fn open_scoped(format: &Format, filter: &Filter) -> Result<Option<Undelivered>, String> {
    let id = format.id.ok_or("no tracepoint id in its format file")?;
    let Some(filter) = scope(filter, format)? else {
        return Ok(None);
    };
    Undelivered::open(u64::from(id), &filter)
        .map(Some)
        .map_err(|e| format!("{e} (filter `{filter}`)"))
}

/// The tracefs filter for the counter of `sock:inet_sock_set_state` (whose `format` is given):
/// TCP, and the criteria of `filter` that are fields of the tracepoint (family, ports, states),
/// matched as the programs match them. Owners and addresses are not such fields, so with
/// `--pid`, `--comm` or `--addr` the counter covers every owner and address. `None` when no state
/// event is wanted, as then no transition the kernel skips is one the tracer would report.
pub fn scope(filter: &Filter, format: &Format) -> Result<Option<String>, String> {
    let f = filter.flags;
    if f & Filter::KIND != 0 && filter.kinds & (1u32 << EventKind::State as u32) == 0 {
        return Ok(None);
    }
    let mut terms = vec![format!("protocol == {IPPROTO_TCP}")];
    let mut fields = vec!["protocol"];
    if f & Filter::FAMILY != 0 {
        terms.push(format!("family == {}", filter.family));
        fields.push("family");
    }
    if f & Filter::PORT != 0 {
        terms.push(format!("(sport == {p} || dport == {p})", p = filter.port));
        fields.extend(["sport", "dport"]);
    }
    if f & Filter::LPORT != 0 {
        terms.push(format!("sport == {}", filter.lport));
        fields.push("sport");
    }
    if f & Filter::RPORT != 0 {
        terms.push(format!("dport == {}", filter.rport));
        fields.push("dport");
    }
    if f & Filter::STATE != 0 {
        let states: Vec<String> = (1..=state::MAX_STATE)
            .filter(|&s| filter.state_mask & state::bit(s) != 0)
            .map(|s| format!("oldstate == {s} || newstate == {s}"))
            .collect();
        // An empty mask matches nothing, as in the programs.
        if states.is_empty() {
            return Ok(None);
        }
        terms.push(format!("({})", states.join(" || ")));
        fields.extend(["oldstate", "newstate"]);
    }
    if let Some(name) = fields.iter().find(|&&name| format.field(name).is_none()) {
        return Err(format!("the tracepoint has no field `{name}`"));
    }
    let text = terms.join(" && ");
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use tracer_common::{AF_INET6, Filter};

    use super::*;

    fn format() -> Format {
        let text = include_str!("../tests/fixtures/formats/6.18/inet_sock_set_state.format");
        crate::format::parse(text).unwrap()
    }

    #[test]
    fn no_filter_counts_every_tcp_transition() {
        assert_eq!(
            scope(&Filter::ANY, &format()).unwrap().as_deref(),
            Some("protocol == 6")
        );
    }

    #[test]
    fn socket_criteria_become_tracepoint_fields() {
        let mut f = Filter::ANY;
        f.flags = Filter::FAMILY | Filter::PORT | Filter::LPORT | Filter::RPORT | Filter::STATE;
        f.family = AF_INET6;
        (f.port, f.lport, f.rport) = (8080, 80, 443);
        f.state_mask = state::bit(state::CLOSE_WAIT) | state::bit(state::SYN_SENT);
        assert_eq!(
            scope(&f, &format()).unwrap().unwrap(),
            "protocol == 6 && family == 10 && (sport == 8080 || dport == 8080) && sport == 80 \
             && dport == 443 && (oldstate == 2 || newstate == 2 || oldstate == 8 || newstate == 8)"
        );
    }

    #[test]
    fn owner_and_address_criteria_do_not_narrow_it() {
        let mut f = Filter::ANY;
        f.flags = Filter::PID | Filter::COMM | Filter::ADDR;
        f.pid = 42;
        assert_eq!(scope(&f, &format()).unwrap().unwrap(), "protocol == 6");
    }

    #[test]
    fn no_state_events_wanted_means_no_counter() {
        let mut f = Filter::ANY;
        f.flags = Filter::KIND;
        f.kinds = 1 << EventKind::Retransmit as u32;
        assert_eq!(scope(&f, &format()).unwrap(), None);
        f.kinds |= 1 << EventKind::State as u32;
        assert!(scope(&f, &format()).unwrap().is_some());
    }

    #[test]
    fn a_missing_field_is_named() {
        let mut fmt = format();
        fmt.fields.retain(|f| f.name != "dport");
        let mut f = Filter::ANY;
        f.flags = Filter::PORT;
        f.port = 1;
        assert_eq!(
            scope(&f, &fmt).unwrap_err(),
            "the tracepoint has no field `dport`"
        );
        // A filter that does not need the field still works.
        assert!(scope(&Filter::ANY, &fmt).unwrap().is_some());
    }
}
