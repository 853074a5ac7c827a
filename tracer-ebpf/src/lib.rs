//! Empty library target: it lets `tracer/build.rs` declare a build-dependency on this crate so
//! cargo rebuilds the agent when the kernel programs change. The programs are in `main.rs`.
#![no_std]
