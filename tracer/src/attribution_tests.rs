use super::*;
use crate::capture::raw::{from_bytes, to_bytes};
use tracer_common::{AF_INET, state::*};

const CLIENT: u64 = 0xffff_8881_0000_1000;
const CHILD: u64 = 0xffff_8881_0000_2000;
const LISTENER: u64 = 0xffff_8881_0000_3000;
const NETNS: u32 = 4_026_531_840;

fn comm(name: &str) -> [u8; COMM_LEN] {
    let mut c = [0u8; COMM_LEN];
    c[..name.len()].copy_from_slice(name.as_bytes());
    c
}

/// A listener found at start-up.
fn listener(port: u16, pid: u32, comm: &str) -> ListenerOwner {
    ListenerOwner {
        port,
        pid,
        comm: comm.to_owned(),
    }
}

/// A transition as the kernel reports it with userspace attribution: the owner only where the
/// current task is the owner (`by`), the namespace always.
fn tr(ts: u64, sk: u64, old: u8, new: u8, by: Option<(u32, &str)>) -> RawEvent {
    let mut ev = RawEvent::zeroed();
    ev.kind = EventKind::State as u8;
    ev.ts_ns = ts;
    ev.sk = sk;
    ev.old_state = old;
    ev.new_state = new;
    ev.family = AF_INET;
    ev.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    ev.daddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    (ev.sport, ev.dport) = if sk == CLIENT {
        (40000, 8080)
    } else if sk == LISTENER {
        (8080, 0)
    } else {
        (8080, 40000)
    };
    ev.netns = NETNS;
    if let Some((pid, name)) = by {
        ev.pid = pid;
        ev.comm = comm(name);
        ev.owner_src = OwnerSource::Process as u8;
    }
    ev
}

fn owner_record(ts: u64, sk: u64, pid: u32, name: &str) -> RawEvent {
    let mut ev = tr(ts, sk, 0, 0, Some((pid, name)));
    ev.kind = EventKind::Owner as u8;
    ev
}

fn attributor(filter: Filter) -> (Attributor, Arc<Refusals>) {
    let refusals = Arc::new(Refusals::default());
    (
        Attributor::new(1024, 64, filter, Arc::clone(&refusals)),
        refusals,
    )
}

fn feed_all(a: &mut Attributor, evs: impl IntoIterator<Item = RawEvent>) -> Vec<RawEvent> {
    let mut out = Vec::new();
    for ev in evs {
        a.feed(ev, &mut |e| out.push(e));
    }
    out
}

fn owners(out: &[RawEvent]) -> Vec<(u32, String, u8)> {
    out.iter()
        .map(|e| {
            let n = e.comm.iter().position(|&c| c == 0).unwrap_or(COMM_LEN);
            (
                e.pid,
                String::from_utf8_lossy(&e.comm[..n]).into_owned(),
                e.owner_src,
            )
        })
        .collect()
}

const P: u8 = OwnerSource::Process as u8;
const L: u8 = OwnerSource::Listener as u8;
const U: u8 = OwnerSource::Unknown as u8;

#[test]
fn an_active_socket_is_owned_by_its_connect_from_start_to_close() {
    let (mut a, _) = attributor(Filter::ANY);
    let out = feed_all(
        &mut a,
        [
            tr(1_000, CLIENT, CLOSE, SYN_SENT, Some((10, "curl"))),
            // Softirq: the interrupted task is not reported.
            tr(1_400, CLIENT, SYN_SENT, ESTABLISHED, None),
            tr(2_000, CLIENT, ESTABLISHED, FIN_WAIT1, Some((10, "curl"))),
            tr(2_500, CLIENT, FIN_WAIT1, FIN_WAIT2, None),
            tr(2_600, CLIENT, FIN_WAIT2, CLOSE, None),
        ],
    );
    assert_eq!(owners(&out), vec![(10, "curl".into(), P); 5]);
    let durations: Vec<u64> = out.iter().map(|e| e.duration_ns).collect();
    assert_eq!(durations, [0, 400, 600, 500, 100]);
    assert_eq!(out[4].lifespan_ns, 1_600);
    assert!(out.iter().all(|e| e.netns == NETNS));
    assert_eq!(a.sockets(), 0, "the entry goes at CLOSE");
}

#[test]
fn a_passive_child_inherits_the_listener_until_its_process_touches_it() {
    let (mut a, _) = attributor(Filter::ANY);
    let out = feed_all(
        &mut a,
        [
            tr(100, LISTENER, CLOSE, LISTEN, Some((20, "nginx"))),
            tr(1_000, CHILD, LISTEN, SYN_RECV, None),
            tr(1_100, CHILD, SYN_RECV, ESTABLISHED, None),
            // A worker thread of the same process accepts and reads.
            owner_record(1_200, CHILD, 20, "worker"),
            tr(1_300, CHILD, ESTABLISHED, CLOSE_WAIT, None),
            // close() by the main thread: the name recorded for the process stays.
            tr(1_500, CHILD, CLOSE_WAIT, LAST_ACK, Some((20, "nginx"))),
            tr(1_600, CHILD, LAST_ACK, CLOSE, None),
        ],
    );
    assert_eq!(
        owners(&out),
        vec![
            (20, "nginx".into(), P),
            (20, "nginx".into(), L),
            (20, "nginx".into(), L),
            (20, "worker".into(), P),
            (20, "worker".into(), P),
            (20, "worker".into(), P),
        ]
    );
    assert_eq!(out.len(), 6, "the owner record is never output");
    assert_eq!(out[5].lifespan_ns, 600);
}

#[test]
fn another_process_takes_a_socket_over_by_sending_on_it() {
    let (mut a, _) = attributor(Filter::ANY);
    let out = feed_all(
        &mut a,
        [
            tr(1, CLIENT, CLOSE, SYN_SENT, Some((10, "parent"))),
            tr(2, CLIENT, SYN_SENT, ESTABLISHED, None),
            owner_record(3, CLIENT, 11, "child"),
            tr(4, CLIENT, ESTABLISHED, CLOSE_WAIT, None),
        ],
    );
    assert_eq!(out.len(), 3, "the owner record is never output");
    assert_eq!(owners(&out)[2], (11, "child".into(), P));
}

#[test]
fn a_listener_is_forgotten_only_by_its_own_process() {
    let (mut a, _) = attributor(Filter::ANY);
    let reuse = LISTENER + 0x100;
    let mut other = tr(2, reuse, CLOSE, LISTEN, Some((21, "sibling")));
    other.sport = 8080;
    let mut other_close = tr(3, reuse, LISTEN, CLOSE, Some((21, "sibling")));
    other_close.sport = 8080;
    let out = feed_all(
        &mut a,
        [
            tr(1, LISTENER, CLOSE, LISTEN, Some((20, "nginx"))),
            // SO_REUSEPORT: a second process listens on the port, then closes.
            other,
            other_close,
            tr(4, CHILD, LISTEN, SYN_RECV, None),
        ],
    );
    // The port's entry was the second listener's; it went with its close.
    assert_eq!(owners(&out)[3], (0, String::new(), U));

    let (mut a, _) = attributor(Filter::ANY);
    let out = feed_all(
        &mut a,
        [
            tr(1, LISTENER, CLOSE, LISTEN, Some((20, "nginx"))),
            tr(2, LISTENER, LISTEN, CLOSE, Some((22, "other"))),
            tr(3, CHILD, LISTEN, SYN_RECV, None),
        ],
    );
    assert_eq!(owners(&out)[2], (20, "nginx".into(), L));
}

#[test]
fn seeded_listeners_give_children_their_owner() {
    let (mut a, _) = attributor(Filter::ANY);
    a.seed_listener(&listener(8080, 30, "redis-server"));
    a.seed_listener(&listener(8080, 31, "late"));
    let out = feed_all(&mut a, [tr(1, CHILD, LISTEN, SYN_RECV, None)]);
    assert_eq!(owners(&out), vec![(30, "redis-server".into(), L)]);
}

#[test]
fn a_deferred_open_goes_out_before_the_next_transition_with_its_peer() {
    let (mut a, _) = attributor(Filter::ANY);
    let mut open = tr(1_000, CHILD, LISTEN, SYN_RECV, None);
    open.dport = 0;
    open.daddr = [0; 16];
    let out = feed_all(
        &mut a,
        [
            tr(10, LISTENER, CLOSE, LISTEN, Some((20, "nginx"))),
            open,
            tr(1_050, CHILD, SYN_RECV, ESTABLISHED, None),
        ],
    );
    assert_eq!(out.len(), 3);
    let (o, next) = (&out[1], &out[2]);
    assert_eq!((o.old_state, o.new_state), (LISTEN, SYN_RECV));
    assert_eq!((o.ts_ns, o.dport, o.daddr), (1_000, 40000, next.daddr));
    assert_eq!(owners(&out[1..]), vec![(20, "nginx".into(), L); 2]);
    assert_eq!(next.duration_ns, 50);
}

#[test]
fn a_new_connection_at_a_reused_address_starts_afresh() {
    let (mut a, _) = attributor(Filter::ANY);
    let out = feed_all(
        &mut a,
        [
            tr(1, CLIENT, CLOSE, SYN_SENT, Some((10, "old"))),
            tr(2, CLIENT, SYN_SENT, ESTABLISHED, None),
            // Its `-> CLOSE` never came (the kernel ran no program for it); the address is
            // reused by a passive child.
            tr(100, CLIENT, LISTEN, SYN_RECV, None),
            tr(150, CLIENT, SYN_RECV, ESTABLISHED, None),
        ],
    );
    assert_eq!(
        owners(&out)[2..],
        [(0, String::new(), U), (0, String::new(), U)]
    );
    assert_eq!((out[2].duration_ns, out[3].duration_ns), (0, 50));
}

#[test]
fn retransmits_take_the_owner_and_count_into_the_close_record() {
    let (mut a, _) = attributor(Filter::ANY);
    let mut rtx = tr(3, CLIENT, ESTABLISHED, ESTABLISHED, None);
    rtx.kind = EventKind::Retransmit as u8;
    rtx.netns = 0;
    let mut reset = tr(4, CLIENT, ESTABLISHED, ESTABLISHED, None);
    reset.kind = EventKind::ResetReceived as u8;
    let out = feed_all(
        &mut a,
        [
            tr(1, CLIENT, CLOSE, SYN_SENT, Some((10, "curl"))),
            tr(2, CLIENT, SYN_SENT, ESTABLISHED, None),
            rtx,
            rtx,
            reset,
            tr(5, CLIENT, ESTABLISHED, CLOSE, None),
        ],
    );
    assert_eq!(owners(&out), vec![(10, "curl".into(), P); 6]);
    assert_eq!(out[2].netns, NETNS);
    assert_eq!(out[5].retransmits, 2);
}

#[test]
fn sockets_beyond_capacity_are_counted_and_still_reported() {
    let refusals = Arc::new(Refusals::default());
    let mut a = Attributor::new(1, 64, Filter::ANY, Arc::clone(&refusals));
    let out = feed_all(
        &mut a,
        [
            tr(1, CLIENT, CLOSE, SYN_SENT, Some((10, "curl"))),
            tr(2, CHILD, CLOSE, SYN_SENT, Some((11, "wget"))),
            tr(3, CHILD, SYN_SENT, ESTABLISHED, None),
        ],
    );
    assert_eq!(out.len(), 3);
    assert_eq!(owners(&out)[2], (0, String::new(), U));
    // Like the kernel's table, each transition that found no room counts.
    assert_eq!(refusals.sockets.load(Ordering::Relaxed), 2);
}

#[test]
fn the_whole_filter_applies_after_attribution() {
    let mut f = Filter::ANY;
    f.flags = Filter::PID | Filter::STATE;
    f.pid = 20;
    f.state_mask = tracer_common::state::bit(CLOSE_WAIT);
    let (mut a, _) = attributor(f);
    let out = feed_all(
        &mut a,
        [
            tr(1, LISTENER, CLOSE, LISTEN, Some((20, "nginx"))),
            tr(2, CLIENT, CLOSE, SYN_SENT, Some((10, "curl"))),
            tr(3, CLIENT, SYN_SENT, ESTABLISHED, None),
            tr(4, CHILD, LISTEN, SYN_RECV, None),
            tr(5, CHILD, SYN_RECV, ESTABLISHED, None),
            // Runs in softirq: only attribution tells that it is pid 20's.
            tr(6, CHILD, ESTABLISHED, CLOSE_WAIT, None),
            tr(7, CLIENT, ESTABLISHED, CLOSE_WAIT, None),
        ],
    );
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].sk, out[0].pid, out[0].duration_ns), (CHILD, 20, 1));
}

#[test]
fn records_survive_the_byte_round_trip() {
    let mut ev = tr(123, CHILD, SYN_RECV, ESTABLISHED, Some((7, "x")));
    ev.err = -104;
    ev.bytes_sent = 9;
    ev.retransmits = 3;
    ev._pad = [1, 2];
    assert_eq!(from_bytes(&to_bytes(&ev)), ev);
}
