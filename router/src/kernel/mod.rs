//! The kernel data paths: the BPF programs the router assembles and loads (`bpf`), the kernel
//! relay of established sessions (`splice`) and the connect-time routing of local clients
//! (`redirect`, which lists and destroys sockets through `sock_diag`).

mod bpf;
pub mod redirect;
pub mod sock_diag;
pub mod splice;
mod sys;
