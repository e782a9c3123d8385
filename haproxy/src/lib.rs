//! HAProxy integration: `render` turns the cluster view into an `haproxy.cfg` (pure),
//! `replace_servers` rewrites only its server lines when members join or leave, and
//! `RuntimeApi`/`MasterCli` flip server states and reload a running HAProxy, so HAProxy follows
//! a leader change within milliseconds instead of `inter x fall` seconds, with its own health
//! checks left in place as the safety net.
#![forbid(unsafe_code)]

pub mod examples;
mod render;
mod runtime;

pub use render::{
    render, replace_servers, server_name, servers_in, Options, Server, PRIMARY, REPLICAS,
};
pub use runtime::{
    parse_servers_state, parse_show_proc, reload_by_signal, set_health, shutdown_sessions,
    MasterCli, RuntimeApi, RuntimeError, ServerState, Workers,
};
