//! The kernel data paths: the kernel relay of established sessions (`splice`), the connect-time
//! routing of local clients (`redirect`, which lists and destroys sockets through `sock_diag`),
//! and the BPF programs both assemble and load (`bpf`).
//!
//! Dangerous: these talk to the kernel directly. Every system call that `nix` does not wrap,
//! and every `unsafe` block of the crate, is in `sys`, behind safe functions over plain data;
//! the rest of the crate denies `unsafe_code`. Nothing here knows the routing table: callers
//! pass routes and a rule for which sessions to keep.

mod bpf;
pub mod redirect;
pub mod sock_diag;
pub mod splice;
mod sys;
