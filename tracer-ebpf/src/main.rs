//! Kernel programs of the TCP connection tracer.
//!
//! Each `#[tracepoint]` is a thin wrapper over a `try_*` function. Field offsets are never
//! hard-coded: userspace reads them from the tracefs format files and sets the `*_LAYOUT` globals
//! before loading.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod comm;
mod maps;
mod record;
mod stage;
mod table;

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use tracer_common::{
    AF_INET, AF_INET6, Attribution, Config, Counter, EventKind, FieldLoc, IPPROTO_TCP,
    ListenerOwner, OwnerSource, ProcTraffic, RawEvent, SockInfo, TpLayout, WakeupMode, portpair,
    stage::{FLUSH_BUSY, STAGE_EVENTS, Stage},
    state,
};

use crate::{
    comm::Comm,
    maps::{DEFERRED_OPENS, LISTENERS, PROCS, count, count_n, ring},
    record::{CLASSIC, NESTED, Record, Slot, load, mark_of, slot},
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
#[unsafe(no_mangle)]
static SEND_RESET_LAYOUT: TpLayout = TpLayout::EMPTY;
#[unsafe(no_mangle)]
static RECEIVE_RESET_LAYOUT: TpLayout = TpLayout::EMPTY;
#[unsafe(no_mangle)]
static SYNACK_LAYOUT: TpLayout = TpLayout::EMPTY;
/// Offsets in `struct sock` (from the kernel's BTF) for the nested-event catcher: family,
/// sport (`skc_num`), dport (`skc_dport`, network order) and the addresses.
#[unsafe(no_mangle)]
static SOCK_LAYOUT: TpLayout = TpLayout::EMPTY;
/// Offset of `sk_protocol` in `struct sock` (beyond the copied prefix).
#[unsafe(no_mangle)]
static SOCK_PROTOCOL: FieldLoc = FieldLoc::ABSENT;
/// Offset of `skc_state` in `struct sock`, inside the copied prefix.
#[unsafe(no_mangle)]
static SOCK_STATE: FieldLoc = FieldLoc::ABSENT;
/// `inet_sock.inet_sport` (network order) and `inet_sock.inet_saddr`: what the tracepoints
/// report as the local side (`skc_num` is already cleared when a socket closes).
#[unsafe(no_mangle)]
static INET_SPORT: FieldLoc = FieldLoc::ABSENT;
#[unsafe(no_mangle)]
static INET_SADDR: FieldLoc = FieldLoc::ABSENT;
/// `sock.sk_err`: why a connection closed (refused, timed out, reset by the peer).
#[unsafe(no_mangle)]
static SOCK_ERR: FieldLoc = FieldLoc::ABSENT;
/// `sock_common.skc_net` (a `struct net *`) and `net.ns.inum`: the socket's network namespace.
#[unsafe(no_mangle)]
static SOCK_NET: FieldLoc = FieldLoc::ABSENT;
#[unsafe(no_mangle)]
static NET_INUM: FieldLoc = FieldLoc::ABSENT;
/// `sk_buff.dev` and `net_device.nd_net.net`: the namespace of a packet that has no socket.
#[unsafe(no_mangle)]
static SKB_DEV: FieldLoc = FieldLoc::ABSENT;
#[unsafe(no_mangle)]
static DEV_NET: FieldLoc = FieldLoc::ABSENT;

/// Kernels without `sock_send_length`: bytes are read from the socket when it closes
/// (`tcp_sock.bytes_sent - bytes_retrans`, `bytes_received` less the peer's FIN, which
/// `SOCK_DONE` in `sk_flags` marks). 1 turns this on.
#[unsafe(no_mangle)]
static BYTES_AT_CLOSE: u32 = 0;
#[unsafe(no_mangle)]
static TCP_BYTES_SENT: FieldLoc = FieldLoc::ABSENT;
#[unsafe(no_mangle)]
static TCP_BYTES_RETRANS: FieldLoc = FieldLoc::ABSENT;
#[unsafe(no_mangle)]
static TCP_BYTES_RECEIVED: FieldLoc = FieldLoc::ABSENT;
#[unsafe(no_mangle)]
static SK_FLAGS: FieldLoc = FieldLoc::ABSENT;
#[unsafe(no_mangle)]
static SOCK_DONE_BIT: u32 = 0;

/// `sock_common.skc_portpair`: with userspace attribution, tells a socket's byte entry from one
/// an earlier connection at the same address left behind.
#[unsafe(no_mangle)]
static SOCK_PORTPAIR: FieldLoc = FieldLoc::ABSENT;
/// `tcp_sock.data_segs_in` / `data_segs_out`: with userspace attribution, a closing socket that
/// carried no data has no byte entry to look up (a miss on a cold line of the socket table).
#[unsafe(no_mangle)]
static TCP_DATA_SEGS_IN: FieldLoc = FieldLoc::ABSENT;
#[unsafe(no_mangle)]
static TCP_DATA_SEGS_OUT: FieldLoc = FieldLoc::ABSENT;

/// Whether userspace works out owners and times (see [`Attribution`]). `CONFIG` is read-only,
/// so the verifier knows the answer and walks only one path.
#[inline(always)]
fn userspace_attribution() -> bool {
    load(&CONFIG.attribution) == Attribution::Userspace as u32
}

/// Reads a small field of the socket beyond the copied prefix.
#[inline(always)]
fn sock_read<T: Copy>(sk: u64, f: &'static FieldLoc) -> Result<T, i64> {
    let f = load(f);
    if usize::from(f.size) != core::mem::size_of::<T>() {
        return Err(-1);
    }
    unsafe { bpf_probe_read_kernel((sk + u64::from(f.offset)) as *const T) }.map_err(i64::from)
}

/// Inode of the network namespace at `net` (a `struct net`), or 0 when the kernel's BTF did
/// not give the offsets.
#[inline(always)]
fn net_inum(net: u64) -> u32 {
    let inum = load(&NET_INUM);
    if net == 0 || inum.size != 4 {
        return 0;
    }
    unsafe { bpf_probe_read_kernel((net + u64::from(inum.offset)) as *const u32) }.unwrap_or(0)
}

/// Inode of the socket's network namespace, or 0 when unknown.
#[inline(always)]
fn sock_netns(sk: u64) -> u32 {
    net_inum(sock_read::<u64>(sk, &SOCK_NET).unwrap_or(0))
}

/// Namespaces read on this CPU are taken again after this long, so that a `struct net` freed
/// and reused for a new namespace is not reported as the old one for longer.
const NETNS_CACHE_NS: u64 = 100_000_000;

/// Inode of the socket's network namespace through a per-CPU cache of the last one read.
/// `net.ns.inum` shares its cache line with the namespace's reference count, which every
/// socket created or freed in it writes: read on every transition, that line cost 25-115 ns
/// under churn, as it bounced between the CPUs.
#[inline(always)]
fn netns_cached(s: &mut Slot, sk: u64, now: u64) -> u32 {
    let net = sock_read::<u64>(sk, &SOCK_NET).unwrap_or(0);
    if net == 0 {
        return 0;
    }
    if net != s.net_ptr || now.wrapping_sub(s.net_read_ns) > NETNS_CACHE_NS {
        (s.net_ptr, s.net_inum, s.net_read_ns) = (net, u64::from(net_inum(net)), now);
    }
    s.net_inum as u32
}

/// Inode of the network namespace of a packet's device, or 0 when unknown.
#[inline(always)]
fn skb_netns(skb: u64) -> u32 {
    if skb == 0 {
        return 0;
    }
    let dev = match sock_read::<u64>(skb, &SKB_DEV) {
        Ok(d) if d != 0 => d,
        _ => return 0,
    };
    net_inum(sock_read::<u64>(dev, &DEV_NET).unwrap_or(0))
}

/// Fills the identity of a socket the catcher reads directly.
#[inline(always)]
fn fill_from_sock(sk: u64, rec: &mut Record, ev: &mut RawEvent) -> Result<bool, i64> {
    let l = &SOCK_LAYOUT;
    rec.copy(sk as *const u8, l)?;
    let family = rec.uint(&l.family) as u16;
    if family != AF_INET && family != AF_INET6 {
        return Ok(false);
    }
    ev.sk = sk;
    ev.family = family;
    ev.sport = u16::from_be(sock_read::<u16>(sk, &INET_SPORT)?);
    ev.dport = u16::from_be(rec.uint(&l.dport) as u16);
    fill_addrs(rec, l, family, ev);
    if family == AF_INET {
        let saddr: u32 = sock_read(sk, &INET_SADDR)?;
        ev.saddr[..4].copy_from_slice(&saddr.to_ne_bytes());
    }
    Ok(true)
}

/// Zeroes the event in place with word stores. A plain `*ev = RawEvent::zeroed()` becomes a
/// call to a byte-wise `memset` subprogram that showed up as ~9% of the program's time in
/// `perf`; volatile stores keep LLVM from merging them back into that call.
#[inline(always)]
fn clear(ev: &mut RawEvent) {
    const WORDS: usize = RawEvent::SIZE / 8;
    let p = ev as *mut RawEvent as *mut u64;
    let mut i = 0;
    while i < WORDS {
        // SAFETY: RawEvent is 8-byte aligned plain data of WORDS words.
        unsafe { core::ptr::write_volatile(p.add(i), 0) };
        i += 1;
    }
}

/// Clears the event and sets what every record has: its kind, time and socket.
#[inline(always)]
fn begin(ev: &mut RawEvent, kind: EventKind, ts_ns: u64, sk: u64) {
    clear(ev);
    ev.kind = kind as u8;
    ev.ts_ns = ts_ns;
    ev.sk = sk;
}

/// Runs a classic tracepoint program body with this CPU's scratch slot.
#[inline(always)]
fn classic(f: impl FnOnce(&mut Slot) -> Result<(), i64>) {
    if let Some(s) = slot(CLASSIC) {
        s.classic_enters();
        let _ = f(s);
        s.classic_leaves();
    }
}

/// Runs a catcher: `record` gets the catcher's slot unless the classic program handled the hit,
/// which it did not if one of ours was running below it (the kernel skipped it), nor if it
/// left no mark (skipped for another program).
#[inline(always)]
fn catch(mark: u64, record: impl FnOnce(&mut Slot)) {
    let Some(classic) = slot(CLASSIC) else {
        return;
    };
    if (classic.classic_interrupted() || !classic.take_mark(mark))
        && let Some(s) = slot(NESTED)
    {
        record(s);
    }
}

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    classic(|s| try_set_state(&ctx, s));
    0
}

/// The same tracepoint as a raw tracepoint, whose recursion guard is per program rather than
/// per CPU, attached after the classic program so it runs after it for every transition. When
/// any BPF tracing program is active on the CPU (a softirq on the exit of an interrupt that hit
/// it), the kernel skips the classic program; the transition is then missing from the classic
/// program's marks, and this program records it. Otherwise it returns at once.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state_nested(ctx: RawTracePointContext) -> i32 {
    let (sk, old, new): (u64, i32, i32) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    let (old, new) = (old as u8, new as u8);
    catch(mark_of(sk, old, new), |s| {
        let _ = try_set_state_nested(sk, old, new, s);
    });
    0
}

#[tracepoint]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    classic(|s| try_retransmit(&ctx, s));
    0
}

/// The retransmission counterpart of `inet_sock_set_state_nested`.
#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb_nested(ctx: RawTracePointContext) -> i32 {
    let (sk, skb): (u64, u64) = (ctx.arg(0), ctx.arg(1));
    catch(retransmit_mark(sk, skb), |s| {
        let _ = try_retransmit_nested(sk, s);
    });
    0
}

/// Identity of one retransmission: the socket and the packet.
#[inline(always)]
fn retransmit_mark(sk: u64, skb: u64) -> u64 {
    sk ^ skb.rotate_left(17)
}

#[tracepoint]
pub fn sock_send_length(ctx: TracePointContext) -> u32 {
    classic(|s| try_count_bytes(&ctx, s, &SEND_LAYOUT, Direction::Sent));
    0
}

#[tracepoint]
pub fn sock_recv_length(ctx: TracePointContext) -> u32 {
    classic(|s| try_count_bytes(&ctx, s, &RECV_LAYOUT, Direction::Received));
    0
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

fn try_set_state(ctx: &TracePointContext, s: &mut Slot) -> Result<(), i64> {
    let l = &SET_STATE_LAYOUT;
    let rec = &mut s.rec;
    rec.copy(ctx.as_ptr() as *const u8, l)?;
    let (sk, old, new) = (
        rec.uint(&l.skaddr),
        rec.uint(&l.oldstate) as u8,
        rec.uint(&l.newstate) as u8,
    );
    // First, so the catcher knows this transition is handled, whatever happens next.
    s.mark(mark_of(sk, old, new), ctx.as_ptr() as u64);
    let rec = &s.rec;
    if rec.uint(&l.protocol) != u64::from(IPPROTO_TCP) {
        return Ok(());
    }
    let family = rec.uint(&l.family) as u16;
    if family != AF_INET && family != AF_INET6 {
        return Ok(());
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let ev = &mut s.ev;
    begin(ev, EventKind::State, now, sk);
    ev.old_state = old;
    ev.new_state = new;
    ev.sport = rec.uint(&l.sport) as u16;
    ev.dport = rec.uint(&l.dport) as u16;
    ev.family = family;
    fill_addrs(rec, l, family, ev);

    if old == state::LISTEN && new == state::SYN_RECV && ev.dport == 0 && !userspace_attribution() {
        // The peer is not in the new socket yet (older kernels): emitted with the next one.
        // (With userspace attribution, userspace holds it back instead.)
        // Without a map entry (map full) it goes out now, peer unknown, rather than never.
        track_owner(s, now);
        if let Some(e) = table::lookup(sk) {
            unsafe { (*e.info()).open_pending = 1 };
            if let Some(seen) = DEFERRED_OPENS.get_ptr_mut(0) {
                unsafe { *seen = 1 };
            }
            return Ok(());
        }
        return emit(s);
    }
    emit_pending_open(s, now);
    track_owner(s, now);
    emit(s)
}

#[inline(always)]
fn deferred_opens_seen() -> bool {
    DEFERRED_OPENS.get(0).is_some_and(|&seen| seen != 0)
}

/// Before a transition out of SYN_RECV, emits the socket's deferred `LISTEN -> SYN_RECV` from
/// its map entry, with the addresses of the transition being handled (the peer is known by
/// then), at its own time and owner. Looks only once this kernel has deferred one. A failed
/// output is counted in `emit`; the current transition goes on regardless.
#[inline(always)]
fn emit_pending_open(s: &mut Slot, now: u64) {
    // With userspace attribution, userspace holds a deferred open back.
    if userspace_attribution() || s.ev.old_state != state::SYN_RECV || !deferred_opens_seen() {
        return;
    }
    let Some(e) = table::lookup(s.ev.sk) else {
        return;
    };
    let e = unsafe { &mut *e.info() };
    if e.open_pending == 0 {
        return;
    }
    e.open_pending = 0;
    let ev = &mut s.ev;
    let (old, new) = (ev.old_state, ev.new_state);
    ev.old_state = state::LISTEN;
    ev.new_state = state::SYN_RECV;
    ev.ts_ns = e.start_ts;
    ev.pid = e.pid;
    Comm::read(&e.comm).write(&mut ev.comm);
    ev.owner_src = e.owner_src;
    ev.netns = e.netns;
    let _ = emit(s);
    // `track_owner` sets the owner fields again.
    let ev = &mut s.ev;
    (ev.old_state, ev.new_state, ev.ts_ns) = (old, new, now);
}

/// A transition the classic program did not handle, read from the socket itself.
fn try_set_state_nested(sk: u64, old: u8, new: u8, s: &mut Slot) -> Result<(), i64> {
    count(Counter::Nested);
    if sk == 0 || sock_read::<u16>(sk, &SOCK_PROTOCOL)? != IPPROTO_TCP {
        return Ok(());
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let ev = &mut s.ev;
    clear(ev);
    if !fill_from_sock(sk, &mut s.rec, ev)? {
        return Ok(());
    }
    ev.kind = EventKind::State as u8;
    ev.ts_ns = now;
    ev.old_state = old;
    ev.new_state = new;
    // The owner-context transitions only ever run in the owner's process, also when the classic
    // program was skipped there (a preempted task holding the per-CPU guard in a map syscall).
    emit_pending_open(s, now);
    track_owner(s, now);
    emit(s)
}

/// Resolves the owner and the time spent in the old state, and keeps the socket and listener
/// maps up to date. Runs for every transition, filtered or not, so the maps stay right.
#[inline(always)]
fn track_owner(s: &mut Slot, now: u64) {
    if userspace_attribution() {
        report_for_userspace(s, now);
        return;
    }
    let (old, new, sk) = (s.ev.old_state, s.ev.new_state, s.ev.sk);
    // A transition out of CLOSE, or a listener's new child, starts a new connection at an
    // address that may have been used before: nothing recorded for it applies.
    let starts_connection = old == state::CLOSE || (old == state::LISTEN && new == state::SYN_RECV);
    // Not an `Option<Entry>`: its unset payload on the `None` path became a stack slot LLVM
    // reloads on a later path, which 5.10's verifier rejects as a read of uninitialized stack.
    let entry = if starts_connection {
        table::Entry::NONE
    } else {
        table::find(sk)
    };
    let info = entry.found().then(|| entry.info());
    let ev = &mut s.ev;

    let (pid, comm, src) = if in_owner_context(old, new) {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        // The comm helper is the costly part: reuse the recorded one when the owner is unchanged.
        let known = info
            .map(|e| unsafe { &*e })
            .filter(|e| e.pid == tgid)
            .map(|e| Comm::read(&e.comm))
            .filter(|c| !c.is_empty());
        (
            tgid,
            known.unwrap_or_else(Comm::current),
            OwnerSource::Process,
        )
    } else if let Some(e) = info {
        let e = unsafe { &*e };
        (
            e.pid,
            Comm::read(&e.comm),
            OwnerSource::try_from(e.owner_src).unwrap_or(OwnerSource::Unknown),
        )
    } else if starts_connection && old == state::LISTEN {
        match unsafe { LISTENERS.get(ev.sport) } {
            Some(o) => (o.pid, Comm::read(&o.comm), OwnerSource::Listener),
            None => (0, Comm::NONE, OwnerSource::Unknown),
        }
    } else {
        (0, Comm::NONE, OwnerSource::Unknown)
    };
    ev.pid = pid;
    comm.write(&mut ev.comm);
    ev.owner_src = src as u8;

    match info {
        Some(e) => {
            let e = unsafe { &mut *e };
            if e.last_ts != 0 {
                ev.duration_ns = now.saturating_sub(e.last_ts);
            }
            e.last_ts = now;
            if src == OwnerSource::Process {
                e.pid = pid;
                comm.write(&mut e.comm);
                e.owner_src = src as u8;
            }
            if e.netns == 0 {
                e.netns = sock_netns(sk);
            }
            ev.netns = e.netns;
            if new == state::CLOSE {
                ev.bytes_sent = e.bytes_sent;
                ev.bytes_received = e.bytes_received;
                ev.retransmits = e.retransmits;
                if e.start_ts != 0 {
                    ev.lifespan_ns = now.saturating_sub(e.start_ts);
                }
            }
        }
        None => {
            ev.netns = sock_netns(sk);
            if new != state::CLOSE {
                let mut info = SockInfo::new(sk, pid, [0; 16], src as u8);
                comm.write(&mut info.comm);
                info.last_ts = now;
                info.netns = ev.netns;
                if starts_connection {
                    info.start_ts = now;
                }
                remember(sk, &info);
            }
        }
    }
    if new == state::CLOSE {
        ev.err = sock_read::<i32>(sk, &SOCK_ERR).unwrap_or(0);
        if load(&BYTES_AT_CLOSE) != 0 {
            bytes_at_close(ev);
        }
    }

    track_listener(ev.sport, old, new, pid, comm);
    if new == state::CLOSE && entry.found() {
        entry.remove(sk);
    }
}

/// Keeps the listener map: the owner of each listening port, for the passive children and
/// SYN-ACK retransmissions of that port.
#[inline(always)]
fn track_listener(port: u16, old: u8, new: u8, pid: u32, comm: Comm) {
    if new == state::LISTEN {
        let mut owner = ListenerOwner {
            comm: [0; 16],
            pid,
            _pad: 0,
        };
        comm.write(&mut owner.comm);
        if LISTENERS.insert(port, owner, 0).is_err() {
            count(Counter::ListenerMapFull);
        }
    } else if old == state::LISTEN && new == state::CLOSE {
        // With SO_REUSEPORT another process may still listen on the port: only forget our own.
        if let Some(o) = unsafe { LISTENERS.get(port) }
            && o.pid == pid
        {
            let _ = LISTENERS.remove(port);
        }
    }
}

/// With userspace attribution: what only the kernel can tell, read without touching the
/// socket table (the socket's line is warm here, the table's line belongs to whichever CPU
/// last ran the socket). The owner on the transitions only the owner makes, the namespace,
/// and at `-> CLOSE` the socket's error and bytes. Userspace follows each socket for the rest.
#[inline(always)]
fn report_for_userspace(s: &mut Slot, now: u64) {
    let (old, new, sk) = (s.ev.old_state, s.ev.new_state, s.ev.sk);
    let mut owner = (0, Comm::NONE);
    if in_owner_context(old, new) {
        owner = ((bpf_get_current_pid_tgid() >> 32) as u32, Comm::current());
        let ev = &mut s.ev;
        ev.pid = owner.0;
        owner.1.write(&mut ev.comm);
        ev.owner_src = OwnerSource::Process as u8;
    }
    s.ev.netns = netns_cached(s, sk, now);
    let ev = &mut s.ev;
    if new == state::CLOSE {
        ev.err = sock_read::<i32>(sk, &SOCK_ERR).unwrap_or(0);
        if load(&BYTES_AT_CLOSE) != 0 {
            bytes_at_close(ev);
        } else if carried_data(sk) {
            bytes_from_table(ev);
        }
    }
    track_listener(ev.sport, old, new, owner.0, owner.1);
}

/// Whether the socket sent or received any data segment; true when BTF did not tell where
/// the counters are.
#[inline(always)]
fn carried_data(sk: u64) -> bool {
    match (
        sock_read::<u32>(sk, &TCP_DATA_SEGS_IN),
        sock_read::<u32>(sk, &TCP_DATA_SEGS_OUT),
    ) {
        (Ok(i), Ok(o)) => i != 0 || o != 0,
        _ => true,
    }
}

/// The closing socket's application bytes from its entry, which the send/recv programs made;
/// the entry goes. An entry with other ports was an earlier connection's at this address.
#[inline(always)]
fn bytes_from_table(ev: &mut RawEvent) {
    let Some(e) = table::lookup(ev.sk) else {
        return;
    };
    let info = e.info();
    unsafe {
        if core::ptr::read_volatile(&raw const (*info).ports) == portpair(ev.sport, ev.dport) {
            ev.bytes_sent = core::ptr::read_volatile(&raw const (*info).bytes_sent);
            ev.bytes_received = core::ptr::read_volatile(&raw const (*info).bytes_received);
        }
    }
    e.remove(ev.sk);
}

/// Enters a socket in the socket table. Evicting a live socket is counted: it loses its owner
/// and time in state. An entry whose socket is closed (it missed its `-> CLOSE`, which the
/// kernel sometimes runs no program for) is not: freeing it is what should happen. A freed
/// socket's memory keeps `TCP_CLOSE`; a new socket at the same address replaced the entry at
/// its first transition. A socket the table could not take (its set claimed by another CPU
/// throughout) is counted apart: that is contention, not a table too small.
#[inline(always)]
fn remember(sk: u64, info: &SockInfo) {
    match table::insert(sk, info) {
        table::STORED => {}
        table::FAILED => count(Counter::SockTableBusy),
        victim => {
            if sock_read::<u8>(victim, &SOCK_STATE) != Ok(state::CLOSE) {
                count(Counter::SockMapFull);
            }
        }
    }
}

fn try_retransmit(ctx: &TracePointContext, s: &mut Slot) -> Result<(), i64> {
    let l = &RETRANSMIT_LAYOUT;
    s.rec.copy(ctx.as_ptr() as *const u8, l)?;
    let sk = s.rec.uint(&l.skaddr);
    s.mark(
        retransmit_mark(sk, s.rec.uint(&l.skbaddr)),
        ctx.as_ptr() as u64,
    );
    let rec = &s.rec;
    let family = rec.family(l);
    if family != AF_INET && family != AF_INET6 {
        return Ok(());
    }
    let ev = &mut s.ev;
    begin(ev, EventKind::Retransmit, unsafe { bpf_ktime_get_ns() }, sk);
    let st = rec.uint(&l.state) as u8;
    ev.old_state = st;
    ev.new_state = st;
    ev.sport = rec.uint(&l.sport) as u16;
    ev.dport = rec.uint(&l.dport) as u16;
    ev.family = family;
    ev.err = rec.uint(&l.err) as u32 as i32;
    fill_addrs(rec, l, family, ev);
    if !userspace_attribution() {
        owner_from_map(ev);
    }
    emit(s)
}

/// Fills the owner recorded for the event's socket, if any, and counts the retransmission
/// there for the socket's close record.
#[inline(always)]
fn owner_from_map(ev: &mut RawEvent) {
    if let Some(e) = table::lookup(ev.sk) {
        let e = unsafe { &mut *e.info() };
        e.retransmits = e.retransmits.wrapping_add(1);
        ev.pid = e.pid;
        Comm::read(&e.comm).write(&mut ev.comm);
        ev.owner_src = e.owner_src;
        ev.netns = e.netns;
    }
}

/// A retransmission the classic program did not handle, read from the socket itself.
fn try_retransmit_nested(sk: u64, s: &mut Slot) -> Result<(), i64> {
    count(Counter::NestedRetransmit);
    if sk == 0 {
        return Err(-1);
    }
    let ev = &mut s.ev;
    clear(ev);
    if !fill_from_sock(sk, &mut s.rec, ev)? {
        return Ok(());
    }
    ev.kind = EventKind::Retransmit as u8;
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    let st = s.rec.uint(&SOCK_STATE) as u8;
    ev.old_state = st;
    ev.new_state = st;
    if !userspace_attribution() {
        owner_from_map(ev);
    }
    emit(s)
}

// Anomaly signals. These fire only on resets and SYN-ACK retransmissions, never per transition.

#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    classic(|s| try_signal(&ctx, s, &SEND_RESET_LAYOUT, EventKind::ResetSent));
    0
}

#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    classic(|s| try_signal(&ctx, s, &RECEIVE_RESET_LAYOUT, EventKind::ResetReceived));
    0
}

#[tracepoint]
pub fn tcp_retransmit_synack(ctx: TracePointContext) -> u32 {
    classic(|s| try_signal(&ctx, s, &SYNACK_LAYOUT, EventKind::SynackRetransmit));
    0
}

/// `sockaddr_in` / `sockaddr_in6` as newer `tcp_send_reset` stores its endpoints: family at +0,
/// port (network order) at +2, IPv4 address at +4, IPv6 address at +8.
const SOCKADDR_LEN: u16 = 28;

/// One reset or SYN-ACK retransmission: its 4-tuple (local side first) and the socket's owner
/// from the maps. Nothing is counted in the kernel; the detectors rate these in userspace.
fn try_signal(
    ctx: &TracePointContext,
    s: &mut Slot,
    l: &'static TpLayout,
    kind: EventKind,
) -> Result<(), i64> {
    s.rec.copy(ctx.as_ptr() as *const u8, l)?;
    let rec = &s.rec;
    let ev = &mut s.ev;
    clear(ev);
    let saddr = load(&l.saddr);
    if saddr.size == SOCKADDR_LEN {
        let daddr = load(&l.daddr);
        let (so, d) = (usize::from(saddr.offset), usize::from(daddr.offset));
        let family = rec.u16_at(so);
        ev.family = family;
        ev.sport = u16::from_be(rec.u16_at(so + 2));
        ev.dport = u16::from_be(rec.u16_at(d + 2));
        if family == AF_INET6 {
            rec.bytes_at::<16>(so + 8, &mut ev.saddr);
            rec.bytes_at::<16>(d + 8, &mut ev.daddr);
        } else {
            rec.bytes_at::<4>(so + 4, &mut ev.saddr);
            rec.bytes_at::<4>(d + 4, &mut ev.daddr);
        }
    } else {
        ev.family = rec.family(l);
        ev.sport = rec.uint(&l.sport) as u16;
        ev.dport = rec.uint(&l.dport) as u16;
        fill_addrs(rec, l, ev.family, ev);
    }
    if ev.family != AF_INET && ev.family != AF_INET6 {
        return Ok(());
    }
    ev.kind = kind as u8;
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev.sk = rec.uint(&l.skaddr);
    let st = rec.uint(&l.state) as u8;
    ev.old_state = st;
    ev.new_state = st;
    if kind == EventKind::SynackRetransmit {
        // `sk` is the listener: its owner is recorded by port.
        if let Some(o) = unsafe { LISTENERS.get(ev.sport) } {
            ev.pid = o.pid;
            Comm::read(&o.comm).write(&mut ev.comm);
            ev.owner_src = OwnerSource::Listener as u8;
        }
    } else if !userspace_attribution()
        && let Some(e) = table::lookup(ev.sk)
    {
        let e = unsafe { &*e.info() };
        ev.pid = e.pid;
        Comm::read(&e.comm).write(&mut ev.comm);
        ev.owner_src = e.owner_src;
        ev.netns = e.netns;
    }
    // `sock_common` is shared by full, request and timewait sockets.
    if ev.netns == 0 && ev.sk != 0 {
        ev.netns = sock_netns(ev.sk);
    }
    if ev.netns == 0 {
        ev.netns = skb_netns(s.rec.uint(&l.skbaddr));
    }
    emit(s)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Sent,
    Received,
}

/// `MSG_PEEK`: a peek moves no bytes.
const MSG_PEEK: u64 = 2;

/// `sock_send_length` / `sock_recv_length` run in the context of the process moving the bytes:
/// the most reliable owner signal there is, and the one that corrects inherited owners. Bytes
/// accumulate per socket (for close records) and per process; nothing goes to the ring buffer.
fn try_count_bytes(
    ctx: &TracePointContext,
    s: &mut Slot,
    layout: &'static TpLayout,
    dir: Direction,
) -> Result<(), i64> {
    let l = layout;
    let rec = &mut s.rec;
    rec.copy(ctx.as_ptr() as *const u8, l)?;
    let ret = rec.uint(&l.ret) as u32 as i32;
    if rec.uint(&l.protocol) != u64::from(IPPROTO_TCP) || ret <= 0 {
        return Ok(());
    }
    if dir == Direction::Received && rec.uint(&l.flags) & MSG_PEEK != 0 {
        return Ok(());
    }
    let bytes = ret as u64;
    let sk = rec.uint(&l.skaddr);
    let family = rec.uint(&l.family) as u16;
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let mut comm = None;
    // With userspace attribution nothing replaces an entry when a new connection starts at its
    // address: its ports tell whether it is this connection's.
    let ports = if userspace_attribution() {
        sock_read::<u32>(sk, &SOCK_PORTPAIR).unwrap_or(0)
    } else {
        0
    };
    let mut new_owner = false;
    let counted = table::lookup(sk).is_some_and(|e| {
        let theirs = unsafe { core::ptr::read_volatile(&raw const (*e.info()).ports) } == ports;
        theirs && count_on_entry(e.info(), sk, tgid, &mut comm, &mut new_owner, dir, bytes)
    });
    if !counted {
        // No entry, an earlier connection's, or it went with a reset in the meantime (the
        // close record is out): a fresh one, which the socket's next connection replaces.
        let c = *comm.get_or_insert_with(|| bpf_get_current_comm().unwrap_or([0; 16]));
        let mut info = SockInfo::new(sk, tgid, c, OwnerSource::Process as u8);
        info.netns = sock_netns(sk);
        info.ports = ports;
        add_bytes(&mut info.bytes_sent, &mut info.bytes_received, dir, bytes);
        remember(sk, &info);
        new_owner = true;
    }
    if new_owner && userspace_attribution() {
        emit_owner(s, sk, family, tgid, comm.unwrap_or([0; 16]));
    }
    proc_add(
        tgid,
        || comm.unwrap_or_else(|| bpf_get_current_comm().unwrap_or([0; 16])),
        dir,
        bytes,
    );
    Ok(())
}

/// Tells userspace attribution that `tgid` now owns `sk` (a record, never output). Rare: once
/// per socket and process that moves data on it.
#[inline(always)]
fn emit_owner(s: &mut Slot, sk: u64, family: u16, tgid: u32, comm: [u8; 16]) {
    let now = unsafe { bpf_ktime_get_ns() };
    let netns = netns_cached(s, sk, now);
    let ev = &mut s.ev;
    begin(ev, EventKind::Owner, now, sk);
    ev.family = family;
    ev.pid = tgid;
    Comm::read(&comm).write(&mut ev.comm);
    ev.owner_src = OwnerSource::Process as u8;
    ev.netns = netns;
    // A record of its own rather than staged with events, so that a full ring's loss of it is
    // counted apart from events (it is none). The reader keeps each ring in timestamp order.
    let flags = wakeup_flags(s, 1);
    if ring().output::<RawEvent>(&s.ev, flags).is_err() {
        count(Counter::OwnerRecordsLost);
    }
}

/// Owner and bytes into the entry `e` that the lookup of `sk` returned. This runs outside the
/// socket lock, so a reset handled on another CPU may free the way meanwhile and another socket
/// take it at once: the stored key is checked just before the owner is written and again after
/// the bytes are added, and an add that landed on another socket's entry is taken back. False
/// when the entry is no longer `sk`'s (the owner's window is a few instructions, not closed).
#[inline(always)]
fn count_on_entry(
    e: *mut SockInfo,
    sk: u64,
    tgid: u32,
    comm: &mut Option<[u8; 16]>,
    new_owner: &mut bool,
    dir: Direction,
    bytes: u64,
) -> bool {
    // Raw accesses only, no references: another CPU may write this element at any time. The
    // volatile reads stay where they are (the BPF target has no fence to select).
    let is_sks = move || unsafe { core::ptr::read_volatile(&raw const (*e).sk) } == sk;
    unsafe {
        if (*e).pid != tgid || (*e).owner_src != OwnerSource::Process as u8 {
            let c = *comm.get_or_insert_with(|| bpf_get_current_comm().unwrap_or([0; 16]));
            if !is_sks() {
                return false;
            }
            (*e).pid = tgid;
            (*e).comm = c;
            (*e).owner_src = OwnerSource::Process as u8;
            *new_owner = true;
        }
        if !is_sks() {
            return false;
        }
        let (sent, received) = (&raw mut (*e).bytes_sent, &raw mut (*e).bytes_received);
        add_bytes(sent, received, dir, bytes);
        if is_sks() {
            return true;
        }
        add_bytes(sent, received, dir, bytes.wrapping_neg());
    }
    false
}

/// The closing socket's own byte counters, into the close record and the owner's totals.
#[inline(always)]
fn bytes_at_close(ev: &mut RawEvent) {
    let sk = ev.sk;
    let sent = sock_read::<u64>(sk, &TCP_BYTES_SENT).unwrap_or(0);
    let retrans = sock_read::<u64>(sk, &TCP_BYTES_RETRANS).unwrap_or(0);
    let mut received = sock_read::<u64>(sk, &TCP_BYTES_RECEIVED).unwrap_or(0);
    let flags = sock_read::<u64>(sk, &SK_FLAGS).unwrap_or(0);
    if (flags >> (load(&SOCK_DONE_BIT) & 63)) & 1 == 1 {
        received = received.saturating_sub(1);
    }
    ev.bytes_sent = sent.saturating_sub(retrans);
    ev.bytes_received = received;
    if ev.pid == 0 {
        return;
    }
    let comm = ev.comm;
    if ev.bytes_sent != 0 {
        proc_add(ev.pid, || comm, Direction::Sent, ev.bytes_sent);
    }
    if ev.bytes_received != 0 {
        proc_add(ev.pid, || comm, Direction::Received, ev.bytes_received);
    }
}

/// Adds to a process's totals. Two CPUs can both find no entry: only one insert wins
/// (`BPF_NOEXIST`), and the other adds to the winner's entry instead of overwriting it.
#[inline(always)]
fn proc_add(tgid: u32, comm: impl FnOnce() -> [u8; 16], dir: Direction, n: u64) {
    if let Some(p) = PROCS.get_ptr_mut(tgid) {
        let p = unsafe { &mut *p };
        add_bytes(&mut p.bytes_sent, &mut p.bytes_received, dir, n);
        return;
    }
    let mut p = ProcTraffic {
        bytes_sent: 0,
        bytes_received: 0,
        comm: comm(),
    };
    match dir {
        Direction::Sent => p.bytes_sent = n,
        Direction::Received => p.bytes_received = n,
    }
    if PROCS.insert(tgid, p, BPF_NOEXIST.into()).is_ok() {
        count(Counter::ProcInserts);
        return;
    }
    match PROCS.get_ptr_mut(tgid) {
        Some(p) => {
            let p = unsafe { &mut *p };
            add_bytes(&mut p.bytes_sent, &mut p.bytes_received, dir, n);
        }
        None => count(Counter::ProcMapFull),
    }
}

/// Atomic adds: threads of one process send concurrently on other CPUs (and the tracepoints
/// fire outside the socket lock), and a process that sends N bytes must be reported with N.
/// Raw pointers, so that an element other CPUs write at the same time is never referenced.
#[inline(always)]
fn add_bytes(sent: *mut u64, received: *mut u64, dir: Direction, n: u64) {
    let field = match dir {
        Direction::Sent => sent,
        Direction::Received => received,
    };
    // The BPF target has no compare-and-swap, so `AtomicU64::fetch_add` is unavailable; the
    // intrinsic lowers to the BPF atomic add instruction.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(field, n) };
}

/// How often (in events per CPU) batched mode checks whether to force a wakeup. Reading the
/// pending byte count touches the consumer's cache line, which costs more than the rest of the
/// output path; the reader also drains on a timer, so nothing waits long.
const WAKEUP_CHECK_EVERY: u64 = 64;

/// The least time between two wakeups one CPU forces. A forced wakeup raises a self-interrupt
/// (an `irq_work`), which costs microseconds in a VM; while the reader drains, more records
/// keep the pending bytes above the threshold, and without this gap every check would raise
/// another one.
const WAKEUP_GAP_NS: u64 = 2_000_000;

/// Applies the filter and outputs the event.
#[inline(always)]
fn emit(slot: &mut Slot) -> Result<(), i64> {
    let ev = &slot.ev;
    if load(&CONFIG.filter.flags) != 0 && !load(&CONFIG.filter).matches(ev) {
        return Ok(());
    }
    // With userspace attribution most owners are filled in there.
    if !userspace_attribution() && ev.pid == 0 {
        count(Counter::OwnerUnknown);
    }
    output(slot)
}

/// Stages the event, or writes it to the ring buffer when staging is off or a program this one
/// interrupted is staging on this CPU. Counts every failure.
#[inline(always)]
fn output(slot: &mut Slot) -> Result<(), i64> {
    let Some(st) = stage::this_cpu().filter(|st| stage::on(st) && !stage::busy(st)) else {
        let flags = wakeup_flags(slot, 1);
        return write(core::array::from_ref(&slot.ev), flags);
    };
    stage::claim(st);
    let mut result = Ok(());
    if stage::full(st) {
        // Never left full (see below); kept for a stage some bug left so.
        result = write(&st.events, BPF_RB_NO_WAKEUP.into());
        st.count = 0;
    }
    stage::append(st, &slot.ev);
    if stage::full(st) {
        let flags = wakeup_flags(slot, STAGE_EVENTS as u64);
        result = write(&st.events, flags);
        st.count = 0;
    }
    stage::release(st);
    result
}

/// The wakeup flags of a record of `n` events written from `slot`'s program.
#[inline(always)]
fn wakeup_flags(slot: &mut Slot, n: u64) -> u64 {
    if load(&CONFIG.wakeup_mode) != WakeupMode::Batched as u32 {
        return 0;
    }
    let before = slot.emitted;
    slot.emitted = before.wrapping_add(n);
    let ts = slot.ev.ts_ns;
    if before / WAKEUP_CHECK_EVERY != slot.emitted / WAKEUP_CHECK_EVERY
        && ts.wrapping_sub(slot.woke_ns) >= WAKEUP_GAP_NS
        && ring().query(BPF_RB_AVAIL_DATA.into()) >= u64::from(load(&CONFIG.wakeup_bytes))
    {
        slot.woke_ns = ts;
        BPF_RB_FORCE_WAKEUP.into()
    } else {
        BPF_RB_NO_WAKEUP.into()
    }
}

/// Writes one record of `N` events to this CPU's ring; every event of a record that does not fit
/// is counted lost. `N` is a constant: a size computed from the staged count lost its bounds on
/// the way to the helper call in 6.1's verifier.
#[inline(always)]
fn write<const N: usize>(events: &[RawEvent; N], flags: u64) -> Result<(), i64> {
    match ring().output::<[RawEvent; N]>(events, flags) {
        Ok(()) => Ok(()),
        Err(e) => {
            count_n(Counter::RingbufFull, N as u64);
            Err(e.into())
        }
    }
}

/// Writes the first `N` staged events as one record.
#[inline(always)]
fn write_staged<const N: usize>(st: &Stage) {
    const { assert!(N >= 1 && N <= STAGE_EVENTS) };
    // SAFETY: the first N of the stage's STAGE_EVENTS events.
    let events = unsafe { &*(st.events.as_ptr() as *const [RawEvent; N]) };
    // The reader drains right after a flush: no wakeup.
    let _ = write(events, BPF_RB_NO_WAKEUP.into());
}

/// Writes this CPU's partial batch to its ring. Never attached: userspace runs it on each CPU
/// with staged events before it drains (`BPF_PROG_TEST_RUN` on that CPU). Returns
/// `FLUSH_BUSY` when it interrupted a program that was staging; userspace then runs it again.
#[raw_tracepoint]
pub fn flush_stage(_ctx: RawTracePointContext) -> i32 {
    let Some(st) = stage::this_cpu() else {
        return 0;
    };
    if stage::busy(st) {
        return FLUSH_BUSY as i32;
    }
    stage::claim(st);
    match st.count {
        1 => write_staged::<1>(st),
        2 => write_staged::<2>(st),
        3 => write_staged::<3>(st),
        4 => write_staged::<4>(st),
        5 => write_staged::<5>(st),
        6 => write_staged::<6>(st),
        7 => write_staged::<7>(st),
        8 => write_staged::<8>(st),
        9 => write_staged::<9>(st),
        10 => write_staged::<10>(st),
        11 => write_staged::<11>(st),
        12 => write_staged::<12>(st),
        13 => write_staged::<13>(st),
        14 => write_staged::<14>(st),
        15 => write_staged::<15>(st),
        16 => write_staged::<16>(st),
        _ => {}
    }
    st.count = 0;
    stage::release(st);
    0
}

const _: () = assert!(
    STAGE_EVENTS == 16,
    "flush_stage's arms cover 1 to STAGE_EVENTS events"
);

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
