//! Python's text forms, shared with the agent's log formatter: see [`patrol_config::pyfmt`].

pub use patrol_config::pyfmt::*;
