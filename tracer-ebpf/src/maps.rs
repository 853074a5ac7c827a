//! Maps shared with userspace. Sizes here are defaults: userspace sets the real ones at load.

use aya_ebpf::{
    helpers::bpf_get_smp_processor_id,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use tracer_common::{Counter, ListenerOwner, ProcTraffic, rings::RINGS};

/// The event rings, one per CPU (see `tracer_common::rings`). Userspace sizes them at load;
/// rings no CPU writes get the minimum.
macro_rules! rings {
    ($($n:literal => $name:ident),*) => {
        $(
            #[map]
            pub static $name: RingBuf = RingBuf::with_byte_size(1 << 20, 0);
        )*
        /// The ring this CPU writes. Lists the maps in `tracer_common::rings::RING_MAPS` order.
        #[inline(always)]
        pub fn ring() -> &'static RingBuf {
            let cpu = unsafe { bpf_get_smp_processor_id() } as usize;
            match cpu % RINGS {
                $($n => &$name,)*
                _ => &EVENTS_0,
            }
        }
    };
}
rings!(
    0 => EVENTS_0, 1 => EVENTS_1, 2 => EVENTS_2, 3 => EVENTS_3, 4 => EVENTS_4, 5 => EVENTS_5,
    6 => EVENTS_6, 7 => EVENTS_7, 8 => EVENTS_8, 9 => EVENTS_9, 10 => EVENTS_10,
    11 => EVENTS_11, 12 => EVENTS_12, 13 => EVENTS_13, 14 => EVENTS_14, 15 => EVENTS_15
);

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
    count_n(c, 1);
}

/// Adds `n` to a counter (the events of a batch record that did not fit).
#[inline(always)]
pub fn count_n(c: Counter, n: u64) {
    if let Some(v) = COUNTERS.get_ptr_mut(c as u32) {
        unsafe { *v += n };
    }
}
