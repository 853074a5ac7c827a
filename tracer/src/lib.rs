//! Userspace agent of the eBPF TCP connection tracer.
//!
//! Kernel programs push transitions into a ring buffer ([`probes`]); the [`reader`] task drains it
//! into owned [`event`]s; commands such as [`stream`] consume them.

pub mod agent;
pub mod aggregate;
pub mod anomaly;
pub mod attribution;
pub mod btf;
pub mod capture;
pub mod cli;
pub mod clock;
pub mod close;
pub mod event;
pub mod format;
pub mod links;
pub mod live;
pub mod loss;
pub mod merge;
pub mod output;
pub mod outqueue;
pub mod owners;
pub mod privileges;
pub mod probes;
pub mod reader;
pub mod recursion;
pub mod rings;
pub mod session;
pub mod snapshot;
pub mod stage;
pub mod stats;
pub mod stream;
pub mod top;
pub mod tracefs;
pub mod undelivered;
