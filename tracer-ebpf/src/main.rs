//! Kernel programs of the TCP connection tracer.
//!
//! Each `#[tracepoint]` is a thin wrapper over a `try_*` function. Field offsets are never
//! hard-coded: userspace reads them from the tracefs format files and sets the `*_LAYOUT` globals
//! before loading.
#![no_std]
#![no_main]

mod maps;
mod record;

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use tracer_common::{
    AF_INET, AF_INET6, Config, Counter, EventKind, IPPROTO_TCP, ListenerOwner, OwnerSource,
    RawEvent, SockInfo, TpLayout, WakeupMode, state,
};

use crate::{
    maps::{EVENTS, LISTENERS, SOCKS, count},
    record::{Record, load},
};

#[unsafe(no_mangle)]
static CONFIG: Config = Config::DEFAULT;
#[unsafe(no_mangle)]
static SET_STATE_LAYOUT: TpLayout = TpLayout::EMPTY;
#[unsafe(no_mangle)]
static RETRANSMIT_LAYOUT: TpLayout = TpLayout::EMPTY;
#[unsafe(no_mangle)]
static SEND_LAYOUT: TpLayout = TpLayout::EMPTY;
#[unsafe(no_mangle)]
static RECV_LAYOUT: TpLayout = TpLayout::EMPTY;


#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = try_set_state(&ctx);
    0
}

#[tracepoint]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    let _ = try_retransmit(&ctx);
    0
}

#[tracepoint]
pub fn sock_send_length(ctx: TracePointContext) -> u32 {
    let _ = try_learn_owner(&ctx, &SEND_LAYOUT);
    0
}

#[tracepoint]
pub fn sock_recv_length(ctx: TracePointContext) -> u32 {
    let _ = try_learn_owner(&ctx, &RECV_LAYOUT);
    0
}

/// The current task as an owner: only meaningful in process context.
#[inline(always)]
fn current_owner() -> (u32, [u8; 16]) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    (tgid, bpf_get_current_comm().unwrap_or([0; 16]))
}

/// Transitions that only ever run in the context of the process that owns the socket:
/// connect(), listen(), close() of a listener, and close()/shutdown() of an established or
/// half-closed socket. Anything else may run in softirq, where the current task is whoever was
/// interrupted.
#[inline(always)]
fn in_owner_context(old: u8, new: u8) -> bool {
    new == state::SYN_SENT
        || new == state::LISTEN
        || (old == state::LISTEN && new == state::CLOSE)
        || (old == state::ESTABLISHED && new == state::FIN_WAIT1)
        || (old == state::CLOSE_WAIT && new == state::LAST_ACK)
}

#[inline(always)]
fn fill_addrs(rec: &Record, l: &'static TpLayout, family: u16, ev: &mut RawEvent) {
    if family == AF_INET6 {
        rec.bytes(&l.saddr_v6, &mut ev.saddr);
        rec.bytes(&l.daddr_v6, &mut ev.daddr);
    } else {
        rec.bytes(&l.saddr, &mut ev.saddr);
        rec.bytes(&l.daddr, &mut ev.daddr);
    }
}

fn try_set_state(ctx: &TracePointContext) -> Result<(), i64> {
    let l = &SET_STATE_LAYOUT;
    let rec = Record::copy(ctx, l)?;
    if rec.uint(&l.protocol) != u64::from(IPPROTO_TCP) {
        return Ok(());
    }
    let family = rec.uint(&l.family) as u16;
    if family != AF_INET && family != AF_INET6 {
        return Ok(());
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let mut ev = RawEvent::zeroed();
    ev.kind = EventKind::State as u8;
    ev.ts_ns = now;
    ev.sk = rec.uint(&l.skaddr);
    ev.old_state = rec.uint(&l.oldstate) as u8;
    ev.new_state = rec.uint(&l.newstate) as u8;
    ev.sport = rec.uint(&l.sport) as u16;
    ev.dport = rec.uint(&l.dport) as u16;
    ev.family = family;
    fill_addrs(rec, l, family, &mut ev);

    track_owner(&mut ev, now);
    emit(&ev)
}

/// Resolves the owner and the time spent in the old state, and keeps the socket and listener
/// maps up to date. Runs for every transition, filtered or not, so the maps stay right.
#[inline(always)]
fn track_owner(ev: &mut RawEvent, now: u64) {
    let (old, new, sk) = (ev.old_state, ev.new_state, ev.sk);
    // A transition out of CLOSE, or a listener's new child, starts a new connection at an
    // address that may have been used before: nothing recorded for it applies.
    let starts_connection = old == state::CLOSE || (old == state::LISTEN && new == state::SYN_RECV);
    let entry = if starts_connection { None } else { SOCKS.get_ptr_mut(&sk) };

    let (pid, comm, src) = if in_owner_context(old, new) {
        let (pid, comm) = current_owner();
        (pid, comm, OwnerSource::Process)
    } else if let Some(e) = entry {
        let e = unsafe { &*e };
        (e.pid, e.comm, OwnerSource::try_from(e.owner_src).unwrap_or(OwnerSource::Unknown))
    } else if starts_connection && old == state::LISTEN {
        match unsafe { LISTENERS.get(&ev.sport) } {
            Some(o) => (o.pid, o.comm, OwnerSource::Listener),
            None => (0, [0; 16], OwnerSource::Unknown),
        }
    } else {
        (0, [0; 16], OwnerSource::Unknown)
    };
    ev.pid = pid;
    ev.comm = comm;
    ev.owner_src = src as u8;

    match entry {
        Some(e) => {
            let e = unsafe { &mut *e };
            if e.last_ts != 0 {
                ev.duration_ns = now.saturating_sub(e.last_ts);
            }
            e.last_ts = now;
            if src == OwnerSource::Process {
                e.pid = pid;
                e.comm = comm;
                e.owner_src = src as u8;
            }
        }
        None if new != state::CLOSE => {
            let info = SockInfo { last_ts: now, comm, pid, owner_src: src as u8, _pad: [0; 3] };
            if SOCKS.insert(&sk, &info, 0).is_err() {
                count(Counter::SockMapFull);
            }
        }
        None => {}
    }

    if new == state::LISTEN {
        let owner = ListenerOwner { comm, pid, _pad: 0 };
        if LISTENERS.insert(&ev.sport, &owner, 0).is_err() {
            count(Counter::ListenerMapFull);
        }
    } else if old == state::LISTEN && new == state::CLOSE {
        // With SO_REUSEPORT another process may still listen on the port: only forget our own.
        if let Some(o) = unsafe { LISTENERS.get(&ev.sport) } {
            if o.pid == pid {
                let _ = LISTENERS.remove(&ev.sport);
            }
        }
    }
    if new == state::CLOSE && entry.is_some() {
        let _ = SOCKS.remove(&sk);
    }
}

fn try_retransmit(ctx: &TracePointContext) -> Result<(), i64> {
    let l = &RETRANSMIT_LAYOUT;
    let rec = Record::copy(ctx, l)?;
    let family = rec.uint(&l.family) as u16;
    if family != AF_INET && family != AF_INET6 {
        return Ok(());
    }
    let mut ev = RawEvent::zeroed();
    ev.kind = EventKind::Retransmit as u8;
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev.sk = rec.uint(&l.skaddr);
    let st = rec.uint(&l.state) as u8;
    ev.old_state = st;
    ev.new_state = st;
    ev.sport = rec.uint(&l.sport) as u16;
    ev.dport = rec.uint(&l.dport) as u16;
    ev.family = family;
    ev.err = rec.uint(&l.err) as u32 as i32;
    fill_addrs(rec, l, family, &mut ev);
    if let Some(e) = unsafe { SOCKS.get(&ev.sk) } {
        ev.pid = e.pid;
        ev.comm = e.comm;
        ev.owner_src = e.owner_src;
    }
    emit(&ev)
}

/// `sock_send_length` / `sock_recv_length` run in the context of the process moving the bytes:
/// the most reliable owner signal there is, and the one that corrects inherited owners.
fn try_learn_owner(ctx: &TracePointContext, layout: &'static TpLayout) -> Result<(), i64> {
    let l = layout;
    let rec = Record::copy(ctx, l)?;
    if rec.uint(&l.protocol) != u64::from(IPPROTO_TCP) || (rec.uint(&l.ret) as u32 as i32) <= 0 {
        return Ok(());
    }
    let sk = rec.uint(&l.skaddr);
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    match SOCKS.get_ptr_mut(&sk) {
        Some(e) => {
            let e = unsafe { &mut *e };
            if e.pid != tgid || e.owner_src != OwnerSource::Process as u8 {
                e.pid = tgid;
                e.comm = bpf_get_current_comm().unwrap_or([0; 16]);
                e.owner_src = OwnerSource::Process as u8;
            }
        }
        None => {
            let info = SockInfo {
                last_ts: 0,
                comm: bpf_get_current_comm().unwrap_or([0; 16]),
                pid: tgid,
                owner_src: OwnerSource::Process as u8,
                _pad: [0; 3],
            };
            if SOCKS.insert(&sk, &info, 0).is_err() {
                count(Counter::SockMapFull);
            }
        }
    }
    Ok(())
}

/// Applies the filter and writes the event to the ring buffer, counting every failure.
#[inline(always)]
fn emit(ev: &RawEvent) -> Result<(), i64> {
    if load(&CONFIG.filter.flags) != 0 && !load(&CONFIG.filter).matches(ev) {
        return Ok(());
    }
    if ev.pid == 0 {
        count(Counter::OwnerUnknown);
    }
    let flags = if load(&CONFIG.wakeup_mode) == WakeupMode::Batched as u32 {
        let pending = EVENTS.query(BPF_RB_AVAIL_DATA.into());
        if pending >= u64::from(load(&CONFIG.wakeup_bytes)) {
            BPF_RB_FORCE_WAKEUP
        } else {
            BPF_RB_NO_WAKEUP
        }
    } else {
        0
    };
    match EVENTS.output::<RawEvent>(ev, flags.into()) {
        Ok(()) => {
            count(Counter::Submitted);
            Ok(())
        }
        Err(e) => {
            count(Counter::RingbufFull);
            Err(e.into())
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
