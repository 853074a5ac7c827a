//! The sock_diag snapshot against real loopback sockets of known kinds and states, checked
//! against `ss -tan` and against the process scan of /proc.

mod common;

use std::{
    collections::{BTreeMap, HashSet},
    io::Read,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    process::Command,
    time::Duration,
};

use common::{kernel_available, port, wait_until};
use tracer::{
    owners::socket_owners,
    snapshot::{self, Counts, DiagSocket, Kinds, SockKind},
};

const ESTABLISHED: u8 = 1;
const SYN_RECV: u8 = 3;
const FIN_WAIT2: u8 = 5;
const TIME_WAIT: u8 = 6;
const CLOSE_WAIT: u8 = 8;
const LISTEN: u8 = 10;

/// What one dumped socket must look like; `owned` means a process of this test holds it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Want {
    local: SocketAddr,
    remote: SocketAddr,
    kind: Kind,
    state: u8,
    owned: bool,
}

/// SockKind with an order, for sorted diffs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Full,
    TimeWait,
    Request,
}

impl From<SockKind> for Kind {
    fn from(k: SockKind) -> Self {
        match k {
            SockKind::Full => Kind::Full,
            SockKind::TimeWait => Kind::TimeWait,
            SockKind::Request => Kind::Request,
        }
    }
}

fn want(s: &DiagSocket) -> Want {
    Want {
        local: s.local,
        remote: s.remote,
        kind: s.kind.into(),
        state: s.state,
        owned: s.inode != 0,
    }
}

/// Sockets of every kind and several states on one loopback address, kept alive while it lives.
struct Scenario {
    ports: HashSet<u16>,
    expected: Vec<Want>,
    /// The client that closed first while its peer stays open: (its address, the peer's).
    orphan: (SocketAddr, SocketAddr),
    _keep: Vec<Box<dyn Send>>,
}

fn unspecified(ip: IpAddr) -> SocketAddr {
    match ip {
        IpAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        IpAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    }
}

fn set_defer_accept(l: &TcpListener, secs: i32) {
    // SAFETY: setsockopt on a socket we own, with an int option value.
    let rc = unsafe {
        libc::setsockopt(
            l.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&secs as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "TCP_DEFER_ACCEPT: {}",
        std::io::Error::last_os_error()
    );
}

/// Reads until the peer's FIN, so that the caller's close comes after it.
fn read_to_eof(s: &mut TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut sink = Vec::new();
    s.read_to_end(&mut sink).unwrap();
}

impl Scenario {
    fn build(ip: IpAddr) -> Self {
        let mut keep: Vec<Box<dyn Send>> = Vec::new();
        let mut expected = Vec::new();
        let mut ports = HashSet::new();
        let any = unspecified(ip);
        let mut listener = || {
            let l = TcpListener::bind((ip, port())).unwrap();
            let addr = l.local_addr().unwrap();
            ports.insert(addr.port());
            expected.push(Want {
                local: addr,
                remote: any,
                kind: Kind::Full,
                state: LISTEN,
                owned: true,
            });
            (l, addr)
        };
        let (backlog, a) = listener();
        let (deferring, b) = listener();
        set_defer_accept(&deferring, 30);
        let (estab, c) = listener();
        let (half, d) = listener();
        let (orphan, e) = listener();
        let (timewait, f) = listener();
        let mut add = |local, remote, kind, state, owned| {
            expected.push(Want {
                local,
                remote,
                kind,
                state,
                owned,
            })
        };

        // Two connections waiting in the accept queue: full ESTABLISHED children no process
        // holds yet.
        for _ in 0..2 {
            let cl = TcpStream::connect(a).unwrap();
            let me = cl.local_addr().unwrap();
            add(me, a, Kind::Full, ESTABLISHED, true);
            add(a, me, Kind::Full, ESTABLISHED, false);
            keep.push(Box::new(cl));
        }
        keep.push(Box::new(backlog));

        // TCP_DEFER_ACCEPT drops the bare final ACK: the server side stays a request socket.
        let cl = TcpStream::connect(b).unwrap();
        let me = cl.local_addr().unwrap();
        add(me, b, Kind::Full, ESTABLISHED, true);
        add(b, me, Kind::Request, SYN_RECV, false);
        keep.extend([Box::new(cl) as Box<dyn Send>, Box::new(deferring)]);

        // An accepted, established pair.
        let cl = TcpStream::connect(c).unwrap();
        let (sv, _) = estab.accept().unwrap();
        let me = cl.local_addr().unwrap();
        add(me, c, Kind::Full, ESTABLISHED, true);
        add(c, me, Kind::Full, ESTABLISHED, true);
        keep.extend([Box::new(cl) as Box<dyn Send>, Box::new(sv), Box::new(estab)]);

        // Client half-closes: a full FIN_WAIT2 socket it still holds, server in CLOSE_WAIT.
        let cl = TcpStream::connect(d).unwrap();
        let (mut sv, _) = half.accept().unwrap();
        let me = cl.local_addr().unwrap();
        cl.shutdown(Shutdown::Write).unwrap();
        read_to_eof(&mut sv);
        add(me, d, Kind::Full, FIN_WAIT2, true);
        add(d, me, Kind::Full, CLOSE_WAIT, true);
        keep.extend([Box::new(cl) as Box<dyn Send>, Box::new(sv), Box::new(half)]);

        // Client closes: the orphaned FIN_WAIT2 socket becomes a timewait socket with substate
        // FIN_WAIT2; server in CLOSE_WAIT.
        let cl = TcpStream::connect(e).unwrap();
        let (mut sv, _) = orphan.accept().unwrap();
        let me = cl.local_addr().unwrap();
        drop(cl);
        read_to_eof(&mut sv);
        add(me, e, Kind::TimeWait, FIN_WAIT2, false);
        let orphan_pair = (me, e);
        add(e, me, Kind::Full, CLOSE_WAIT, true);
        keep.extend([Box::new(sv) as Box<dyn Send>, Box::new(orphan)]);

        // Client closes first, then the server: TIME_WAIT on the client side, nothing on the
        // server side once its LAST_ACK is acknowledged.
        let cl = TcpStream::connect(f).unwrap();
        let (mut sv, _) = timewait.accept().unwrap();
        let me = cl.local_addr().unwrap();
        drop(cl);
        read_to_eof(&mut sv);
        drop(sv);
        add(me, f, Kind::TimeWait, TIME_WAIT, false);
        keep.push(Box::new(timewait));

        expected.sort();
        Self {
            ports,
            expected,
            orphan: orphan_pair,
            _keep: keep,
        }
    }

    /// A socket's shape as the expectation states it. When the peer's ACK of the FIN reaches
    /// the orphan while close() still holds it (seen under emulation, where softirqs run on
    /// another CPU), the kernel keeps it a full FIN_WAIT2 socket on a `tcp_fin_timeout` timer
    /// instead of swapping in a timewait socket: the same connection state, either kind.
    fn shape(&self, s: &DiagSocket) -> Want {
        let w = want(s);
        if (w.local, w.remote) == self.orphan && w.kind == Kind::Full && w.state == FIN_WAIT2 {
            return Want {
                kind: Kind::TimeWait,
                ..w
            };
        }
        w
    }

    /// How many of `sockets` are this scenario's closed client kept full (see [`Self::shape`]).
    fn kept_full(&self, sockets: &[DiagSocket]) -> u32 {
        let n = sockets
            .iter()
            .filter(|s| self.shape(s).kind != Kind::from(s.kind))
            .count();
        u32::try_from(n).unwrap()
    }

    fn mine(&self, s: &DiagSocket) -> bool {
        self.ports.contains(&s.local.port()) || self.ports.contains(&s.remote.port())
    }

    fn dumped(&self, kinds: Kinds) -> Vec<DiagSocket> {
        let mut v: Vec<_> = snapshot::dump(kinds)
            .expect("dump")
            .into_iter()
            .filter(|s| self.mine(s))
            .collect();
        v.sort_by_key(want);
        v
    }

    /// Waits until the dump shows exactly the expected sockets (the last FIN/ACK exchanges run
    /// asynchronously), then returns them.
    fn settled(&self) -> Vec<DiagSocket> {
        wait_until(
            Duration::from_secs(5),
            Duration::from_millis(20),
            || {
                let got = self.dumped(Kinds::ALL);
                let mut shapes: Vec<_> = got.iter().map(|s| self.shape(s)).collect();
                shapes.sort();
                if shapes == self.expected {
                    Ok(got)
                } else {
                    Err(shapes)
                }
            },
            |shapes| {
                format!(
                    "dump differs from expectation\n got: {shapes:#?}\nwant: {:#?}",
                    self.expected
                )
            },
        )
    }
}

fn check_scenario(ip: IpAddr) {
    let sc = Scenario::build(ip);
    let got = sc.settled();

    // Owners: every socket with an inode belongs to this process; the others have none.
    let owners = socket_owners();
    let me = std::process::id();
    for s in &got {
        if s.inode != 0 {
            let owner = owners.get(&s.inode);
            assert_eq!(owner.map(|o| o.0), Some(me), "owner of {s:?}: {owner:?}");
        }
    }
    // Un-accepted children are the only full sockets without an inode (besides a closed
    // client kept full, see `Scenario::shape`).
    let kept_full = sc.kept_full(&got);
    let orphans: Vec<_> = got
        .iter()
        .filter(|s| sc.shape(s).kind == Kind::Full && s.inode == 0)
        .collect();
    assert_eq!(orphans.len(), 2, "{orphans:?}");

    // Every socket carries a cookie, and cookies are unique.
    let cookies: HashSet<_> = got.iter().map(|s| s.cookie).collect();
    assert!(!cookies.contains(&0), "{got:?}");
    assert_eq!(cookies.len(), got.len(), "{got:?}");

    // The listener with two queued connections reports them as its accept queue.
    let queued = got
        .iter()
        .find(|s| s.state == LISTEN && s.rqueue > 0)
        .expect("listener with a queue");
    assert_eq!(queued.rqueue, 2, "{queued:?}");
    assert!(queued.wqueue >= 2, "backlog {queued:?}");
    assert!(
        got.iter()
            .filter(|s| s.kind != SockKind::Full)
            .all(|s| s.uid == 0 && s.rqueue == 0 && s.wqueue == 0)
    );

    // Kind selection returns exactly the matching subsets.
    let mini = sc.dumped(Kinds::MINI);
    let want_mini: Vec<_> = got
        .iter()
        .filter(|s| s.kind != SockKind::Full)
        .cloned()
        .collect();
    assert_eq!(mini, want_mini);
    let full = sc.dumped(Kinds::FULL);
    let want_full: Vec<_> = got
        .iter()
        .filter(|s| s.kind == SockKind::Full)
        .cloned()
        .collect();
    assert_eq!(full, want_full);
    let tw = sc.dumped(Kinds {
        full: false,
        time_wait: true,
        request: false,
    });
    assert_eq!(tw.len(), 2 - kept_full as usize, "{tw:?}");
    assert!(tw.iter().all(|s| s.kind == SockKind::TimeWait));
    let req = sc.dumped(Kinds {
        full: false,
        time_wait: false,
        request: true,
    });
    assert_eq!(req.len(), 1, "{req:?}");
    assert_eq!((req[0].kind, req[0].state), (SockKind::Request, SYN_RECV));

    // The listener-only dump sees the same listeners and queues.
    let mut listeners: Vec<_> = snapshot::dump_listeners()
        .expect("dump listeners")
        .into_iter()
        .filter(|s| sc.mine(s))
        .collect();
    listeners.sort_by_key(want);
    let want_listeners: Vec<_> = got.iter().filter(|s| s.state == LISTEN).cloned().collect();
    assert_eq!(listeners, want_listeners);

    // `ss -tan` (the same kernel interface, decoded by iproute2) agrees per state.
    let ours: BTreeMap<&str, usize> = got.iter().fold(BTreeMap::new(), |mut m, s| {
        *m.entry(ss_name(s.state)).or_default() += 1;
        m
    });
    assert_eq!(ss_states(&sc.ports, ip.is_ipv6()), ours);
}

/// State names as `ss` prints them.
fn ss_name(state: u8) -> &'static str {
    match state {
        1 => "ESTAB",
        2 => "SYN-SENT",
        3 => "SYN-RECV",
        4 => "FIN-WAIT-1",
        5 => "FIN-WAIT-2",
        6 => "TIME-WAIT",
        7 => "UNCONN",
        8 => "CLOSE-WAIT",
        9 => "LAST-ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        _ => "?",
    }
}

/// Per-state counts of `ss -tan` lines whose local or peer port is one of `ports`.
fn ss_states(ports: &HashSet<u16>, v6: bool) -> BTreeMap<&'static str, usize> {
    let out = Command::new("ss")
        .args(["-tanH", if v6 { "-6" } else { "-4" }])
        .output()
        .expect("run ss (iproute2)");
    assert!(out.status.success(), "ss: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let port = |addr: &str| addr.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<_> = line.split_whitespace().collect();
        let [state, _, _, local, peer, ..] = f[..] else {
            continue;
        };
        let hit = [local, peer]
            .iter()
            .any(|a| port(a).is_some_and(|p| ports.contains(&p)));
        if hit {
            let name = (1..=11)
                .map(ss_name)
                .find(|n| *n == state)
                .unwrap_or_else(|| panic!("unknown ss state in {line}"));
            *m.entry(name).or_default() += 1;
        }
    }
    m
}

#[test]
fn ipv4_sockets_of_every_kind() {
    if !kernel_available("ipv4_sockets_of_every_kind") {
        return;
    }
    in_private_netns(|| check_scenario(IpAddr::V4(Ipv4Addr::LOCALHOST)));
}

#[test]
fn ipv6_sockets_of_every_kind() {
    if !kernel_available("ipv6_sockets_of_every_kind") {
        return;
    }
    in_private_netns(|| check_scenario(IpAddr::V6(Ipv6Addr::LOCALHOST)));
}

/// Runs `f` on a thread moved into a fresh network namespace with loopback up: nothing else
/// creates sockets there, so whole-namespace counts are exact. Its timewait sockets are its
/// own too: a full-rate churn (churn.rs) leaves the default namespace at `tcp_max_tw_buckets`
/// for a minute, and the kernel then closes a socket outright instead of keeping a timewait
/// one (a dump without this scenario's TIME_WAIT sockets failed CI once).
fn in_private_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare(2) on this thread only; it owns no sockets yet.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
            // Children inherit the calling thread's namespace.
            common::sh(&["ip", "link", "set", "lo", "up"]);
            f()
        })
        .join()
        .expect("netns thread")
    })
}

fn tally(sockets: &[DiagSocket]) -> Counts {
    let mut c = Counts::default();
    for s in sockets {
        c.add(s.kind, s.state);
    }
    c
}

#[test]
fn count_matches_dump_in_a_quiet_namespace() {
    if !kernel_available("count_matches_dump_in_a_quiet_namespace") {
        return;
    }
    in_private_netns(|| {
        let v4 = Scenario::build(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let v6 = Scenario::build(IpAddr::V6(Ipv6Addr::LOCALHOST));
        v4.settled();
        v6.settled();
        let all = snapshot::dump(Kinds::ALL).unwrap();
        // Only this test's sockets live in the namespace.
        assert_eq!(all.len(), v4.expected.len() + v6.expected.len());
        let kept_full = v4.kept_full(&all) + v6.kept_full(&all);
        let counts = snapshot::count(Kinds::ALL).unwrap();
        assert_eq!(counts, tally(&all));
        assert_eq!(counts.get(SockKind::Request, SYN_RECV), 2);
        assert_eq!(counts.get(SockKind::TimeWait, TIME_WAIT), 2);
        assert_eq!(counts.get(SockKind::TimeWait, FIN_WAIT2), 2 - kept_full);
        assert_eq!(counts.get(SockKind::Full, FIN_WAIT2), 2 + kept_full);
        assert_eq!(counts.get(SockKind::Full, LISTEN), 12);
        assert_eq!(counts.other, 0);
        let mini = snapshot::count(Kinds::MINI).unwrap();
        assert_eq!(mini.of_kind(SockKind::Full), 0);
        assert_eq!(mini.total(), 6 - kept_full);
        let none = Kinds {
            full: false,
            time_wait: false,
            request: false,
        };
        assert!(snapshot::dump(none).unwrap().is_empty());
    });
}

/// A fast-open child is a full socket in SYN_RECV from the SYN on; with the client's final ACK
/// dropped it stays there, and must still be tagged Full, not Request.
#[test]
fn fast_open_child_in_syn_recv_is_full() {
    if !kernel_available("fast_open_child_in_syn_recv_is_full") {
        return;
    }
    in_private_netns(|| {
        // Client and server fast open, no cookies, no per-listener opt-in needed.
        std::fs::write("/proc/sys/net/ipv4/tcp_fastopen", "1543").unwrap();
        let l = TcpListener::bind("127.0.0.1:7000").unwrap();
        let ruleset = "table inet snapshot_test { chain out { type filter hook output priority 0; \
                       tcp dport 7000 tcp flags & (syn | ack) == ack drop; }; }";
        let mut nft = Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("nft");
        std::io::Write::write_all(&mut nft.stdin.take().unwrap(), ruleset.as_bytes()).unwrap();
        assert!(nft.wait().unwrap().success(), "nft rejected {ruleset}");

        // SAFETY: plain socket calls on a socket this test owns and closes.
        let client = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        assert!(client >= 0);
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 7000u16.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: addr is a valid sockaddr_in for the given length.
        let sent = unsafe {
            libc::sendto(
                client,
                b"hi".as_ptr().cast(),
                2,
                libc::MSG_FASTOPEN,
                (&addr as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        assert_eq!(sent, 2, "sendto: {}", std::io::Error::last_os_error());

        let child = |inode_wanted: bool| {
            wait_until(
                Duration::from_secs(5),
                Duration::from_millis(20),
                || {
                    let got: Vec<_> = snapshot::dump(Kinds::ALL)
                        .unwrap()
                        .into_iter()
                        .filter(|s| s.local.port() == 7000 && s.state != LISTEN)
                        .collect();
                    if got.len() == 1 && (got[0].inode != 0) == inode_wanted {
                        Ok(got[0].clone())
                    } else {
                        Err(got)
                    }
                },
                |got| format!("{got:?}"),
            )
        };
        let queued = child(false);
        assert_eq!((queued.kind, queued.state), (SockKind::Full, SYN_RECV));
        // Fast open lets the server accept before the handshake completes.
        let (accepted, _) = l.accept().unwrap();
        let held = child(true);
        assert_eq!((held.kind, held.state), (SockKind::Full, SYN_RECV));
        assert_eq!(held.cookie, queued.cookie);
        let requests = snapshot::dump(Kinds::MINI).unwrap();
        assert!(requests.is_empty(), "{requests:?}");
        drop(accepted);
        // SAFETY: closing the fd opened above.
        unsafe { libc::close(client) };
    });
}
