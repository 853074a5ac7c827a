//! Flushing the kernel's per-CPU event stages (batched wakeup mode; see
//! `tracer_common::stage`). Each CPU writes its events to its ring a batch at a time, so a CPU
//! that goes quiet holds a partial batch until something flushes it. Before every drain the
//! reader calls [`Stages::flush`]: it reads each CPU's staged count through a memory mapping of
//! the stage array (no system call) and runs the flush program on the CPUs that hold events,
//! so idle CPUs are never interrupted.
//!
//! A CPU taken offline cannot run the flush program. Its partial batch is then taken from the
//! mapping (see [`Stages::flush`]), so its events are neither held back until the CPU returns
//! nor lost if it never does.

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
};

use aya::{maps::MapData, programs::ProgramFd};
use memmap2::{MmapOptions, MmapRaw};
use tracer_common::{
    RawEvent,
    stage::{FLUSH_BUSY, STAGE_EVENTS, Stage},
};

/// Runs of the flush program on one CPU before giving up on it for this drain: each run that
/// finds the stage busy (it interrupted a program appending there, a window of nanoseconds)
/// is followed by another.
const FLUSH_ATTEMPTS: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("mapping the event stages into memory: {0}")]
    Map(io::Error),
    #[error(
        "running the flush program on CPU {cpu} (BPF_PROG_TEST_RUN on a CPU needs Linux 5.10): \
         {source}"
    )]
    Flush { cpu: usize, source: io::Error },
}

/// The kernel's stage array, mapped, and the program that flushes one CPU's stage.
pub struct Stages {
    mem: MmapRaw,
    cpus: usize,
    flush: ProgramFd,
    /// CPUs whose stage this side holds (`busy` set) since it took their events offline.
    held: Vec<bool>,
    /// Keeps the map alive for as long as it is mapped.
    _map: MapData,
}

impl Stages {
    /// Maps the `cpus` stages of `map`, checks that `flush` runs on this kernel (on the calling
    /// CPU), and turns staging on. Call before the programs are attached: nothing is staged
    /// until then.
    pub fn enable(map: MapData, flush: ProgramFd, cpus: usize) -> Result<Self, StageError> {
        let len = cpus.max(1) * Stage::SIZE;
        let mem = MmapOptions::new()
            .len(len)
            .map_raw(&map.fd().as_fd())
            .map_err(StageError::Map)?;
        let stages = Self {
            mem,
            cpus: cpus.max(1),
            flush,
            held: vec![false; cpus.max(1)],
            _map: map,
        };
        let here = current_cpu().unwrap_or(0);
        stages.run_flush(here)?;
        for cpu in 0..stages.cpus {
            // SAFETY: the field lies inside the mapping (cpu < cpus); the kernel reads it with
            // a plain load, and a torn write of an aligned u32 cannot happen.
            unsafe { std::ptr::write_volatile(stages.field(cpu, ON_AT), 1) };
        }
        Ok(stages)
    }

    /// Writes every CPU's partial batch to its ring. The partial batch of a CPU that went
    /// offline goes to `offline` instead (the CPU and its events, whole), once. A stage found
    /// busy on every attempt is left for the next drain, which follows within the reader's tick.
    pub fn flush(&mut self, mut offline: impl FnMut(usize, &[u8])) -> Result<(), StageError> {
        for cpu in 0..self.cpus {
            if self.held[cpu] {
                self.release_if_online(cpu)?;
                continue;
            }
            if self.staged(cpu) == 0 {
                continue;
            }
            for _ in 0..FLUSH_ATTEMPTS {
                match self.run_flush(cpu) {
                    Ok(FLUSH_BUSY) => continue,
                    Ok(_) => break,
                    Err(e) if e.is_offline() => {
                        self.take_offline(cpu, &mut offline)?;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Takes the partial batch of `cpu`, found offline, and holds its stage: when the CPU comes
    /// back, its programs find the stage busy and write each event as a record of its own,
    /// until a later flush sees it online and lets go.
    fn take_offline(
        &mut self,
        cpu: usize,
        offline: &mut impl FnMut(usize, &[u8]),
    ) -> Result<(), StageError> {
        // SAFETY (here and below): fields of cpu's stage, inside the mapping.
        unsafe { std::ptr::write_volatile(self.field(cpu, BUSY_AT), 1) };
        // Offline still, now that the stage is held, so no program was writing it meanwhile: a
        // CPU comes online and goes offline again in milliseconds, not between two system calls.
        match self.run_flush(cpu) {
            Err(e) if e.is_offline() => {}
            Err(e) => return Err(e),
            // Back already (it found our `busy`): its events go out by the next flush.
            Ok(_) => {
                unsafe { std::ptr::write_volatile(self.field(cpu, BUSY_AT), 0) };
                return Ok(());
            }
        }
        self.held[cpu] = true;
        let n = (self.staged(cpu) as usize).min(STAGE_EVENTS);
        if n > 0 {
            let at = cpu * Stage::SIZE + EVENTS_AT;
            // SAFETY: n events of cpu's stage, inside the mapping; nothing writes them while
            // the CPU is offline and its stage held.
            let events = unsafe {
                std::slice::from_raw_parts(self.mem.as_ptr().add(at), n * RawEvent::SIZE)
            };
            offline(cpu, events);
        }
        unsafe { std::ptr::write_volatile(self.field(cpu, COUNT_AT), 0) };
        Ok(())
    }

    /// Lets go of the stage of `cpu`, taken offline, once it is back: the flush program then
    /// runs there and finds the stage busy, held by this side.
    fn release_if_online(&mut self, cpu: usize) -> Result<(), StageError> {
        match self.run_flush(cpu) {
            Err(e) if e.is_offline() => Ok(()),
            Err(e) => Err(e),
            Ok(_) => {
                self.held[cpu] = false;
                // SAFETY: a field of cpu's stage, inside the mapping.
                unsafe { std::ptr::write_volatile(self.field(cpu, BUSY_AT), 0) };
                Ok(())
            }
        }
    }

    /// Events staged on `cpu` right now.
    pub fn staged(&self, cpu: usize) -> u32 {
        if cpu >= self.cpus {
            return 0;
        }
        // SAFETY: inside the mapping; the kernel writes it concurrently, hence volatile.
        unsafe { std::ptr::read_volatile(self.field(cpu, COUNT_AT)) }
    }

    /// A `u32` field of `cpu`'s stage in the mapping.
    fn field(&self, cpu: usize, at: usize) -> *mut u32 {
        // SAFETY (for the callers' accesses): cpu < cpus, so the stage lies inside the
        // mapping, which is page aligned; `at` is a 4-aligned field offset.
        unsafe { self.mem.as_mut_ptr().add(cpu * Stage::SIZE + at) as *mut u32 }
    }

    /// Runs the flush program on `cpu`; returns what it returned.
    fn run_flush(&self, cpu: usize) -> Result<u32, StageError> {
        let err = |source| StageError::Flush { cpu, source };
        let mut attr = TestRunAttr {
            prog_fd: u32::try_from(self.flush.as_fd().as_raw_fd())
                .map_err(|_| err(io::Error::from(io::ErrorKind::InvalidInput)))?,
            flags: aya_obj::generated::BPF_F_TEST_RUN_ON_CPU,
            cpu: u32::try_from(cpu)
                .map_err(|_| err(io::Error::from(io::ErrorKind::InvalidInput)))?,
            ..TestRunAttr::default()
        };
        // SAFETY: attr is a valid, correctly sized prefix of `union bpf_attr` for this command;
        // it points to no buffers.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                aya_obj::generated::bpf_cmd::BPF_PROG_TEST_RUN as libc::c_int,
                &mut attr as *mut TestRunAttr,
                std::mem::size_of::<TestRunAttr>() as libc::c_uint,
            )
        };
        if rc < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        Ok(attr.retval)
    }
}

const COUNT_AT: usize = std::mem::offset_of!(Stage, count);
const ON_AT: usize = std::mem::offset_of!(Stage, on);
const BUSY_AT: usize = std::mem::offset_of!(Stage, busy);
const EVENTS_AT: usize = std::mem::offset_of!(Stage, events);

impl StageError {
    /// The CPU is offline: the kernel cannot run a program there.
    fn is_offline(&self) -> bool {
        matches!(self, Self::Flush { source, .. } if source.raw_os_error() == Some(libc::ENXIO))
    }
}

/// The `BPF_PROG_TEST_RUN` part of `union bpf_attr`, through `cpu` (Linux 5.10).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
}

const _: () = assert!(std::mem::size_of::<TestRunAttr>() == 72);

fn current_cpu() -> Option<usize> {
    // SAFETY: no arguments; returns the CPU or -1.
    usize::try_from(unsafe { libc::sched_getcpu() }).ok()
}
