//! The event ring buffers: one per CPU, up to [`RINGS`], each CPU writing the ring of its id
//! modulo [`RINGS`].
//!
//! A single ring shared by all CPUs makes every record take the ring's lock and advance its
//! producer position, two cache lines that then bounce between the producing CPUs: measured on
//! 2 CPUs under saturating churn, that is ~75 ns of the costliest program's ~460 ns per event.
//! Userspace merges the rings back into timestamp order.

/// How many rings the kernel side declares; hosts with more CPUs share them.
pub const RINGS: usize = 16;

/// The rings' map names, indexed by CPU id modulo [`RINGS`].
pub const RING_MAPS: [&str; RINGS] = [
    "EVENTS_0",
    "EVENTS_1",
    "EVENTS_2",
    "EVENTS_3",
    "EVENTS_4",
    "EVENTS_5",
    "EVENTS_6",
    "EVENTS_7",
    "EVENTS_8",
    "EVENTS_9",
    "EVENTS_10",
    "EVENTS_11",
    "EVENTS_12",
    "EVENTS_13",
    "EVENTS_14",
    "EVENTS_15",
];
