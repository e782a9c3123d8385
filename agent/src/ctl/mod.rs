//! `patrolctl`: patronictl's commands over the same DCS and REST API. Rendering is pure (this
//! module); the binary in `src/bin/patrolctl.rs` does the IO.

pub mod list;
