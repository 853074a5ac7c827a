//! Loading the kernel programs, handing them their configuration, attaching them, and reading
//! their counters.

use std::{
    os::fd::{AsFd, AsRawFd},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{TracePoint, raw_trace_point::RawTracePointLink},
};
use tracer_common::{
    Attribution, Config, Counter, Filter, ListenerOwner, ProcTraffic, TpLayout, WakeupMode,
    rings::{RING_MAPS, RINGS},
    sock_sets,
    stage::{FLUSH_PROGRAM, STAGE_MAP},
};

use crate::{
    attribution::Refusals,
    cli::AttributionMode,
    format::{self, Tracepoint},
    links::Links,
    loss::{LossCause, LossTotals},
    recursion::CatcherSkips,
    stage::Stages,
    tracefs::{Tracefs, TracefsError},
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("this binary was built without its kernel programs (AYA_BUILD_SKIP); rebuild it")]
    NoObject,
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    #[error(
        "this kernel has no tracepoint {category}:{name} ({reason}); the tracer needs it to \
         follow TCP state changes (Linux 4.16 or later)"
    )]
    RequiredTracepoint {
        category: &'static str,
        name: &'static str,
        reason: String,
    },
    #[error("loading the BPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("duplicating the undelivered-hits counters: {0}")]
    Counter(std::io::Error),
    #[error("map {0} is missing from the BPF object")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
}

/// A feature that is off on this kernel, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Degraded {
    pub feature: &'static str,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct ProbeOptions {
    pub config: Config,
    /// Total bytes of the event rings (a power of two, at least one page).
    pub ring_bytes: u32,
    /// Capacity of the socket owner map.
    pub max_sockets: u32,
    /// Capacity of the listener map.
    pub max_listeners: u32,
    /// Capacity of the per-process traffic map.
    pub max_processes: u32,
    /// Attach `tcp_retransmit_skb`.
    pub retransmits: bool,
    /// Attach the anomaly signals: `tcp_send_reset`, `tcp_receive_reset`,
    /// `tcp_retransmit_synack`.
    pub signals: bool,
    /// Where owners and times in state are worked out.
    pub attribution: AttributionMode,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            config: Config::DEFAULT,
            ring_bytes: 16 << 20,
            max_sockets: 262_144,
            max_listeners: 8192,
            max_processes: 16_384,
            retransmits: true,
            signals: false,
            attribution: AttributionMode::Kernel,
        }
    }
}

/// Kernel run-time statistics of one program.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgStats {
    pub run_time_ns: u64,
    pub run_cnt: u64,
    pub recursion_misses: u64,
}

pub struct Probes {
    ebpf: Ebpf,
    pub tracefs: Tracefs,
    pub attached: Vec<Tracepoint>,
    pub degraded: Vec<Degraded>,
    /// Whether the raw-tracepoint catcher of nested transitions is attached.
    pub catcher: bool,
    /// Marks written and not taken when the catchers were attached (see `recursion`).
    marks_baseline: u64,
    /// Counter of transitions the kernel did not hand to our programs.
    undelivered: Option<crate::undelivered::Undelivered>,
    /// Until the reader task takes them; dropped with the probes otherwise.
    links: Option<Links>,
    /// How many event rings the CPUs write.
    rings: usize,
    /// Sets of the kernel's socket table (`SOCK_WAYS` sockets each).
    pub socket_sets: u32,
    /// Events the reader delivered after later ones (see `merge`); the reader writes it.
    late: Arc<AtomicU64>,
    /// The per-CPU event stages when batched mode stages events, until the reader takes them.
    stages: Option<Stages>,
    /// Where owners and times in state are worked out.
    pub attribution: Attribution,
    /// The whole filter. With userspace attribution the kernel applies only its per-socket
    /// part, and userspace the rest.
    pub filter: Filter,
    /// Capacities for userspace attribution's tables, as the kernel's would be.
    pub max_sockets: u32,
    pub max_listeners: u32,
    /// What userspace attribution could not take in (see `observe_losses`).
    refusals: Arc<Refusals>,
}

/// The attribution that runs. Userspace attribution needs the send/recv tracepoints (owner
/// records) and socket offsets from BTF; `Err` says what is missing.
pub fn choose_attribution(
    mode: AttributionMode,
    send_recv: bool,
    socket_btf: bool,
) -> Result<Attribution, String> {
    match mode {
        AttributionMode::Kernel => Ok(Attribution::Kernel),
        AttributionMode::Userspace if !send_recv => {
            Err("needs sock:sock_send_length and sock:sock_recv_length (Linux 6.4)".to_owned())
        }
        AttributionMode::Userspace if !socket_btf => {
            Err("needs socket offsets from BTF (skc_portpair, net.ns.inum)".to_owned())
        }
        AttributionMode::Userspace => Ok(Attribution::Userspace),
    }
}

/// Raw-tracepoint programs that record what the classic ones were forced to skip.
const CATCHER: &str = "inet_sock_set_state_nested";
const RETRANSMIT_CATCHER: &str = "tcp_retransmit_skb_nested";
/// The feature the catchers provide, as named in `degraded` lines.
const RECOVERY: &str = "recovery of transitions skipped by recursion";
/// The feature the event stages provide.
const STAGING: &str = "batched records";

fn feature_of(tp: Tracepoint) -> &'static str {
    match tp {
        Tracepoint::InetSockSetState => "state transitions",
        Tracepoint::TcpRetransmitSkb => "retransmits",
        Tracepoint::SockSendLength | Tracepoint::SockRecvLength => "owner learning from send/recv",
        Tracepoint::TcpSendReset => "reset_storm detection of resets sent",
        Tracepoint::TcpReceiveReset => "reset_storm detection of resets received",
        Tracepoint::TcpRetransmitSynack => "syn_flood detection from SYN-ACK retransmits",
    }
}

/// Kernels without the send/recv tracepoints (before 6.4): per-connection bytes are read from
/// each socket when it closes, when the kernel's BTF has the counters.
fn bytes_at_close(
    layouts: &[(Tracepoint, TpLayout)],
    sock: Option<&crate::btf::SockLayout>,
    degraded: &mut Vec<Degraded>,
) -> Option<crate::btf::CloseBytes> {
    let has = |tp| layouts.iter().any(|(t, _)| *t == tp);
    if has(Tracepoint::SockSendLength) || has(Tracepoint::SockRecvLength) {
        return None;
    }
    let found = sock.map_or_else(
        || Err("no socket layout from BTF".to_owned()),
        |s| s.close_bytes.clone(),
    );
    match found {
        Ok(b) => {
            degraded.push(Degraded {
                feature: "live byte counts",
                reason: "bytes are read from each socket when it closes (tcp_sock counters): \
                         close records are exact, process totals grow as connections close"
                    .into(),
            });
            Some(b)
        }
        Err(e) => {
            degraded.push(Degraded {
                feature: "byte counts",
                reason: format!("no send/recv tracepoints and no socket byte counters: {e}"),
            });
            None
        }
    }
}

impl Probes {
    /// Reads the layouts of the running kernel, loads the object with them, and attaches every
    /// program whose tracepoint exists. Optional tracepoints that are missing become
    /// [`Degraded`] entries; a missing `inet_sock_set_state` is an error.
    pub fn load(opts: &ProbeOptions) -> Result<Self, LoadError> {
        if OBJECT.is_empty() {
            return Err(LoadError::NoObject);
        }
        raise_memlock_rlimit();
        let tracefs = Tracefs::ensure()?;
        let mut layouts: Vec<(Tracepoint, TpLayout)> = Vec::new();
        let mut degraded = Vec::new();
        // Kept for the undelivered-hits counter, which filters on its fields.
        let mut set_state_format = None;
        for tp in Tracepoint::ALL {
            if (tp == Tracepoint::TcpRetransmitSkb && !opts.retransmits)
                || (tp.is_signal() && !opts.signals)
            {
                continue;
            }
            let layout = match tracefs.format(tp.category(), tp.name())? {
                None => Err("not present in this kernel".to_owned()),
                Some(text) => format::parse(&text)
                    .and_then(|f| {
                        let layout = format::layout(tp, &f)?;
                        if tp == Tracepoint::InetSockSetState {
                            set_state_format = Some(f);
                        }
                        Ok(layout)
                    })
                    .map_err(|e| format!("unusable format: {e}")),
            };
            match layout {
                Ok(l) => {
                    if tp == Tracepoint::TcpSendReset && !format::send_reset_without_socket(&l) {
                        degraded.push(Degraded {
                            feature: "reset_storm detection of resets sent without a socket",
                            reason:
                                "tcp:tcp_send_reset fires only for resets from a socket before \
                                     Linux 6.10; resets answering segments to closed ports (port \
                                     scans, refused connects) are not seen"
                                    .into(),
                        });
                    }
                    layouts.push((tp, l));
                }
                Err(reason) if tp == Tracepoint::InetSockSetState => {
                    return Err(LoadError::RequiredTracepoint {
                        category: tp.category(),
                        name: tp.name(),
                        reason,
                    });
                }
                Err(reason) => degraded.push(Degraded {
                    feature: feature_of(tp),
                    reason: format!("{}:{} {reason}", tp.category(), tp.name()),
                }),
            }
        }
        // One line per feature, even when both send and recv tracepoints are missing.
        degraded.dedup_by_key(|d| d.feature);

        // The catchers read the socket itself, so they need struct offsets from the kernel's BTF.
        let sock_layout = crate::btf::Btf::from_sys_fs()
            .map_err(|e| e.to_string())
            .and_then(|btf| crate::btf::sock_layout(&btf))
            .map_err(|reason| {
                degraded.push(Degraded {
                    feature: RECOVERY,
                    reason: format!("{reason}; such transitions are counted as lost"),
                })
            })
            .ok();

        let has = |tp| layouts.iter().any(|(t, _)| *t == tp);
        let socket_btf = sock_layout
            .as_ref()
            .is_some_and(|l| l.portpair.size == 4 && l.net_inum.size == 4);
        let attribution = choose_attribution(
            opts.attribution,
            has(Tracepoint::SockSendLength) && has(Tracepoint::SockRecvLength),
            socket_btf,
        )
        .unwrap_or_else(|why| {
            degraded.push(Degraded {
                feature: "userspace attribution",
                reason: format!("{why}; the kernel programs attribute events instead"),
            });
            Attribution::Kernel
        });
        let mut config = opts.config;
        config.attribution = attribution as u32;
        if attribution == Attribution::Userspace {
            config.filter = opts.config.filter.socket_prefilter();
        }

        let cpus = aya::util::nr_cpus().ok();
        let rings = crate::rings::active(cpus.unwrap_or(RINGS));
        let page = u32::try_from(procfs::page_size()).unwrap_or(4096);
        let ring_bytes = crate::rings::ring_bytes(opts.ring_bytes, rings, page);
        let mut loader = EbpfLoader::new();
        for (i, name) in RING_MAPS.iter().enumerate() {
            loader.map_max_entries(name, if i < rings { ring_bytes } else { page });
        }
        loader
            .override_global("CONFIG", &config, true)
            .map_max_entries("LISTENERS", opts.max_listeners)
            .map_max_entries("PROCS", opts.max_processes);
        for (tp, layout) in &layouts {
            loader.override_global(tp.layout_global(), layout, true);
        }
        if let Some(sock) = &sock_layout {
            loader.override_global("SOCK_LAYOUT", &sock.layout, true);
            loader.override_global("SOCK_STATE", &sock.state, true);
            loader.override_global("SOCK_PROTOCOL", &sock.protocol, true);
            loader.override_global("INET_SPORT", &sock.inet_sport, true);
            loader.override_global("INET_SADDR", &sock.inet_saddr, true);
            loader.override_global("SOCK_ERR", &sock.sk_err, true);
            loader.override_global("SOCK_NET", &sock.net, true);
            loader.override_global("NET_INUM", &sock.net_inum, true);
            loader.override_global("SKB_DEV", &sock.skb_dev, true);
            loader.override_global("DEV_NET", &sock.dev_net, true);
            loader.override_global("SOCK_PORTPAIR", &sock.portpair, true);
            loader.override_global("TCP_DATA_SEGS_IN", &sock.data_segs_in, true);
            loader.override_global("TCP_DATA_SEGS_OUT", &sock.data_segs_out, true);
        }
        let socket_sets = sock_sets(opts.max_sockets);
        loader
            .override_global("SOCK_SETS", &socket_sets, true)
            .map_max_entries("SOCK_TABLE", socket_sets);
        let bytes_at_close = bytes_at_close(&layouts, sock_layout.as_ref(), &mut degraded);
        if let Some(b) = &bytes_at_close {
            loader.override_global("BYTES_AT_CLOSE", &1u32, true);
            loader.override_global("TCP_BYTES_SENT", &b.bytes_sent, true);
            loader.override_global("TCP_BYTES_RETRANS", &b.bytes_retrans, true);
            loader.override_global("TCP_BYTES_RECEIVED", &b.bytes_received, true);
            loader.override_global("SK_FLAGS", &b.sk_flags, true);
            loader.override_global("SOCK_DONE_BIT", &b.sock_done_bit, true);
        }
        // Without a CPU count only CPU 0 stages; the others write a record per event.
        let stage_cpus = cpus.unwrap_or(1);
        loader.map_max_entries(STAGE_MAP, u32::try_from(stage_cpus).unwrap_or(1));
        let mut ebpf = loader.load(OBJECT)?;
        let stages = (opts.config.wakeup_mode == WakeupMode::Batched as u32)
            .then(|| enable_stages(&mut ebpf, stage_cpus))
            .and_then(|r| {
                r.map_err(|why| {
                    degraded.push(Degraded {
                        feature: STAGING,
                        reason: format!("{why}; every event is a ring-buffer record of its own"),
                    })
                })
                .ok()
            });

        let mut attached = Vec::new();
        let mut links = Links::default();
        for (tp, _) in &layouts {
            let name = tp.name();
            let prog: &mut TracePoint = ebpf
                .program_mut(name)
                .ok_or(LoadError::Program {
                    name,
                    source: aya::programs::ProgramError::NotLoaded,
                })?
                .try_into()
                .map_err(|source| LoadError::Program { name, source })?;
            prog.load()
                .map_err(|source| LoadError::Program { name, source })?;
            let link = prog
                .attach(tp.category(), name)
                .and_then(|id| prog.take_link(id))
                .map_err(|source| LoadError::Program { name, source })?;
            links.classic.push(link);
            attached.push(*tp);
        }
        let mut catcher = false;
        let mut marks_baseline = 0;
        if sock_layout.is_some() {
            let catchers = attached.iter().map(|&tp| match tp {
                Tracepoint::InetSockSetState => Some((CATCHER, tp)),
                Tracepoint::TcpRetransmitSkb => Some((RETRANSMIT_CATCHER, tp)),
                _ => None,
            });
            match catchers
                .flatten()
                .map(|(prog, tp)| attach_catcher(&mut ebpf, prog, tp))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(raw) => {
                    links.raw = raw;
                    catcher = true;
                    let c = sum_counters(&ebpf)?;
                    marks_baseline = c[Counter::MarksWritten as usize]
                        .saturating_sub(c[Counter::MarksTaken as usize]);
                }
                Err(e) => degraded.push(Degraded {
                    feature: RECOVERY,
                    reason: format!(
                        "raw tracepoint unavailable ({e}); such transitions are counted as lost"
                    ),
                }),
            }
        }
        let undelivered = set_state_format
            .as_ref()
            .ok_or_else(|| "no format of inet_sock_set_state".to_owned())
            .and_then(|f| crate::undelivered::open_scoped(f, &opts.config.filter))
            .map_err(|why| {
                degraded.push(Degraded {
                    feature: "counting transitions the kernel did not deliver",
                    reason: format!("perf counter unavailable: {why}"),
                })
            })
            .ok()
            .flatten();
        if let Some(u) = &undelivered {
            links.counters = u.handles().map_err(LoadError::Counter)?;
        }
        Ok(Self {
            ebpf,
            tracefs,
            attached,
            degraded,
            catcher,
            marks_baseline,
            undelivered,
            links: Some(links),
            rings,
            socket_sets,
            late: Arc::default(),
            stages,
            attribution,
            filter: opts.config.filter,
            max_sockets: opts.max_sockets,
            max_listeners: opts.max_listeners,
            refusals: Arc::default(),
        })
    }

    /// The per-CPU event stages, for the reader task to flush before each drain; `None` when
    /// every event goes to the ring as a record of its own.
    pub fn take_stages(&mut self) -> Option<Stages> {
        self.stages.take()
    }

    /// The programs' attachments, for the reader task to drop before its last drain.
    pub fn take_links(&mut self) -> Links {
        self.links.take().unwrap_or_default()
    }

    /// The counter the reader keeps of events it delivered late, out of timestamp order.
    pub fn late_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.late)
    }

    /// Events delivered late so far: each reached the reader more than the merge's hold after
    /// its time, when later events had already gone out.
    pub fn late_events(&self) -> u64 {
        self.late.load(Ordering::Relaxed)
    }

    /// Takes out the rings this host's CPUs write, for the reader task.
    pub fn take_rings(&mut self) -> Result<Vec<RingBuf<MapData>>, LoadError> {
        RING_MAPS[..self.rings]
            .iter()
            .map(|&name| {
                let map = self
                    .ebpf
                    .take_map(name)
                    .ok_or(LoadError::MissingMap(name))?;
                RingBuf::try_from(map).map_err(|source| LoadError::Map { name, source })
            })
            .collect()
    }

    /// Records the owners of listeners that predate the tracer, so their new connections are
    /// attributed from the first transition. Entries the kernel side already made win.
    /// Returns how many were added.
    pub fn seed_listeners(
        &mut self,
        owners: &[crate::owners::ListenerOwner],
    ) -> Result<usize, LoadError> {
        const BPF_NOEXIST: u64 = 1;
        let map = self
            .ebpf
            .map_mut("LISTENERS")
            .ok_or(LoadError::MissingMap("LISTENERS"))?;
        let mut map = BpfHashMap::<_, u16, ListenerOwner>::try_from(map).map_err(|source| {
            LoadError::Map {
                name: "LISTENERS",
                source,
            }
        })?;
        let mut added = 0;
        for o in owners {
            let value = ListenerOwner {
                comm: o.comm_bytes(),
                pid: o.pid,
                _pad: 0,
            };
            if map.insert(o.port, value, BPF_NOEXIST).is_ok() {
                added += 1;
            }
        }
        Ok(added)
    }

    /// Sums of the per-CPU counters.
    pub fn counters(&self) -> Result<[u64; Counter::COUNT as usize], LoadError> {
        sum_counters(&self.ebpf)
    }

    /// Processes entered in the per-process traffic map since the programs were attached.
    pub fn proc_inserts(&self) -> Result<u64, LoadError> {
        Ok(self.counters()?[Counter::ProcInserts as usize])
    }

    /// Application bytes per process (tgid) since the programs were attached.
    pub fn proc_bytes(
        &self,
    ) -> Result<std::collections::HashMap<u32, crate::aggregate::ProcBytes>, LoadError> {
        let map = self
            .ebpf
            .map("PROCS")
            .ok_or(LoadError::MissingMap("PROCS"))?;
        let procs =
            BpfHashMap::<_, u32, ProcTraffic>::try_from(map).map_err(|source| LoadError::Map {
                name: "PROCS",
                source,
            })?;
        // Entries of processes that exit while we iterate vanish; skip them.
        Ok(procs
            .iter()
            .filter_map(Result::ok)
            .map(|(pid, t)| {
                let b = crate::aggregate::ProcBytes {
                    sent: t.bytes_sent,
                    received: t.bytes_received,
                    comm: crate::event::Comm::new(&t.comm),
                };
                (pid, b)
            })
            .collect())
    }

    /// Runs of the attached catchers the kernel skipped; `None` without catchers.
    fn catchers_skipped(&self) -> Option<u64> {
        self.catcher.then(|| {
            [CATCHER, RETRANSMIT_CATCHER]
                .iter()
                .filter_map(|name| self.stats_of(name))
                .map(|s| s.recursion_misses)
                .sum()
        })
    }

    /// Run-time statistics of each attached program (run time needs `kernel.bpf_stats_enabled`).
    pub fn program_stats(&self) -> Vec<(Tracepoint, ProgStats)> {
        self.attached
            .iter()
            .filter_map(|&tp| self.stats_of(tp.name()).map(|s| (tp, s)))
            .collect()
    }

    /// Run-time statistics of the loaded program `name`.
    fn stats_of(&self, name: &str) -> Option<ProgStats> {
        let fd = self.ebpf.program(name)?.fd().ok()?;
        prog_stats(fd.as_fd().as_raw_fd())
    }

    /// Where owners are worked out: `kernel` or `userspace`.
    pub fn attribution_name(&self) -> &'static str {
        match self.attribution {
            Attribution::Kernel => "kernel",
            Attribution::Userspace => "userspace",
        }
    }

    /// Userspace attribution for the reader task, seeded with the owners of listeners that
    /// predate the tracer; `None` when the kernel attributes.
    pub fn attributor(
        &self,
        listeners: &[crate::owners::ListenerOwner],
    ) -> Option<crate::attribution::Attributor> {
        (self.attribution == Attribution::Userspace).then(|| {
            let mut a = crate::attribution::Attributor::new(
                self.max_sockets as usize,
                self.max_listeners as usize,
                self.filter,
                Arc::clone(&self.refusals),
            );
            for l in listeners {
                a.seed_listener(l);
            }
            a
        })
    }

    /// Folds the kernel's loss counters into `totals`.
    pub fn observe_losses(&self, totals: &mut LossTotals) -> Result<(), LoadError> {
        // Skips are read before what makes up for them (the catchers' records, the marks): a
        // hit between the reads then shows as made up for, never as lost, and the totals only
        // ever grow.
        let stats = self.program_stats();
        let catchers_skipped = self.catchers_skipped();
        let c = self.counters()?;
        totals.observe(LossCause::RingbufFull, c[Counter::RingbufFull as usize]);
        // With userspace attribution its tables' refusals are the same losses.
        let refused = |n: &AtomicU64| n.load(Ordering::Relaxed);
        totals.observe(
            LossCause::SockMapFull,
            c[Counter::SockMapFull as usize] + refused(&self.refusals.sockets),
        );
        totals.observe(
            LossCause::ListenerMapFull,
            c[Counter::ListenerMapFull as usize] + refused(&self.refusals.listeners),
        );
        totals.observe(LossCause::SockTableBusy, c[Counter::SockTableBusy as usize]);
        totals.observe(LossCause::ProcMapFull, c[Counter::ProcMapFull as usize]);
        totals.observe(
            LossCause::OwnerRingbufFull,
            c[Counter::OwnerRecordsLost as usize],
        );
        if let Some(u) = &self.undelivered {
            totals.observe(LossCause::KernelUndelivered, u.count());
        }
        let misses = |tp| {
            stats
                .iter()
                .filter(|(t, _)| *t == tp)
                .map(|(_, s)| s.recursion_misses)
                .sum::<u64>()
        };
        let catchers = catchers_skipped.map(|skipped| {
            CatcherSkips::new(
                skipped,
                c[Counter::MarksWritten as usize],
                c[Counter::MarksTaken as usize],
                self.marks_baseline,
            )
        });
        totals.observe(
            LossCause::RecursionMiss,
            crate::recursion::lost(
                (
                    misses(Tracepoint::InetSockSetState),
                    misses(Tracepoint::TcpRetransmitSkb),
                ),
                (
                    c[Counter::Nested as usize],
                    c[Counter::NestedRetransmit as usize],
                ),
                catchers,
            ),
        );
        Ok(())
    }
}

/// Sums of the per-CPU counters of a loaded object.
fn sum_counters(ebpf: &Ebpf) -> Result<[u64; Counter::COUNT as usize], LoadError> {
    let map = ebpf
        .map("COUNTERS")
        .ok_or(LoadError::MissingMap("COUNTERS"))?;
    let arr = PerCpuArray::<_, u64>::try_from(map).map_err(|source| LoadError::Map {
        name: "COUNTERS",
        source,
    })?;
    let mut out = [0u64; Counter::COUNT as usize];
    // In index order, which puts taken marks before written ones (see `Counter`).
    for c in Counter::ALL {
        let values = arr.get(&(c as u32), 0).map_err(|source| LoadError::Map {
            name: "COUNTERS",
            source,
        })?;
        out[c as usize] = values.iter().sum();
    }
    Ok(out)
}

/// Loads the flush program, maps the stage array and turns staging on (see `stage`).
fn enable_stages(ebpf: &mut Ebpf, cpus: usize) -> Result<Stages, String> {
    let prog: &mut aya::programs::RawTracePoint = ebpf
        .program_mut(FLUSH_PROGRAM)
        .ok_or("the flush program is missing from the BPF object")?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())?;
    prog.load()
        .map_err(|e| format!("loading the flush program: {e}"))?;
    let flush = prog
        .fd()
        .and_then(|fd| fd.try_clone().map_err(aya::programs::ProgramError::from))
        .map_err(|e| e.to_string())?;
    let map = match ebpf.take_map(STAGE_MAP) {
        Some(aya::maps::Map::Array(data)) => data,
        _ => return Err(format!("map {STAGE_MAP} is missing from the BPF object")),
    };
    Stages::enable(map, flush, cpus).map_err(|e| e.to_string())
}

fn attach_catcher(
    ebpf: &mut Ebpf,
    name: &str,
    tp: Tracepoint,
) -> Result<RawTracePointLink, aya::programs::ProgramError> {
    let prog: &mut aya::programs::RawTracePoint = ebpf
        .program_mut(name)
        .ok_or(aya::programs::ProgramError::NotLoaded)?
        .try_into()?;
    prog.load()?;
    let id = prog.attach(tp.name())?;
    prog.take_link(id)
}

/// The prefix of `struct bpf_attr` used by `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
struct InfoByFdAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `bpf_prog_info` through `recursion_misses` (the kernel fills what it has and what fits).
fn prog_stats(fd: i32) -> Option<ProgStats> {
    use aya_obj::generated::{bpf_cmd, bpf_prog_info};
    // SAFETY: bpf_prog_info is plain old data; all-zero is a valid value.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoByFdAttr {
        bpf_fd: u32::try_from(fd).ok()?,
        info_len: std::mem::size_of::<bpf_prog_info>() as u32,
        info: &mut info as *mut bpf_prog_info as u64,
    };
    // SAFETY: attr points to a valid, correctly sized attribute block and info buffer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_int,
            &mut attr as *mut InfoByFdAttr,
            std::mem::size_of::<InfoByFdAttr>() as libc::c_uint,
        )
    };
    (rc == 0).then_some(ProgStats {
        run_time_ns: info.run_time_ns,
        run_cnt: info.run_cnt,
        recursion_misses: info.recursion_misses,
    })
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones ignore it.
fn raise_memlock_rlimit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid pointer to an rlimit.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userspace_attribution_runs_where_the_kernel_has_what_it_needs() {
        use AttributionMode::{Kernel, Userspace};
        assert_eq!(
            choose_attribution(Kernel, true, true),
            Ok(Attribution::Kernel)
        );
        assert_eq!(
            choose_attribution(Userspace, true, true),
            Ok(Attribution::Userspace)
        );
        let why = choose_attribution(Userspace, false, true).unwrap_err();
        assert!(why.contains("sock:sock_send_length"), "{why}");
        let why = choose_attribution(Userspace, true, false).unwrap_err();
        assert!(why.contains("BTF"), "{why}");
    }
}
