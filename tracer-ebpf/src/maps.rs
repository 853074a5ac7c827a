//! Maps shared with userspace. Sizes here are defaults: userspace sets the real ones at load.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use tracer_common::{Counter, ListenerOwner, ProcTraffic, SockInfo};

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(16 << 20, 0);

/// Socket address -> owner and time of the last transition.
#[map]
pub static SOCKS: LruHashMap<u64, SockInfo> = LruHashMap::with_max_entries(131_072, 0);

/// Process (tgid) -> application bytes it moved over TCP.
#[map]
pub static PROCS: LruHashMap<u32, ProcTraffic> = LruHashMap::with_max_entries(16_384, 0);

/// Local port -> owner of the listener there.
#[map]
pub static LISTENERS: HashMap<u16, ListenerOwner> = HashMap::with_max_entries(8192, 0);

/// Entry 0 becomes 1 once this kernel has reported a passive child's `LISTEN -> SYN_RECV`
/// without its peer (6.1 and older). Until then no transition looks for a deferred one, so newer
/// kernels pay nothing for it.
#[map]
pub static DEFERRED_OPENS: Array<u32> = Array::with_max_entries(1, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

#[inline(always)]
pub fn count(c: Counter) {
    if let Some(v) = COUNTERS.get_ptr_mut(c as u32) {
        unsafe { *v += 1 };
    }
}
