//! Callback scripts (spec 5.14): `postgresql.callbacks.on_role_change` runs as
//! `<command> on_role_change <role> <scope>` from the agent's working directory when the role
//! PostgreSQL runs in changes; a previous callback still running is killed first, as Patroni
//! does. The other callbacks are not run yet (reported as such at start).

use patrol_dcs::{Dcs, Role};

use super::Ha;
use crate::ha::port::{LocalPostgres, Peers};

impl<D: Dcs, P: LocalPostgres, Q: Peers> Ha<D, P, Q> {
    /// Notes the role PostgreSQL runs in this cycle and runs `on_role_change` when it changed
    /// since the last cycle that knew it.
    pub(super) fn observe_role(&mut self, role: Role) {
        if role == Role::Uninitialized {
            return;
        }
        let before = self.last_role.replace(role.clone());
        if before.is_some_and(|b| b != role) {
            let name = match role {
                Role::Primary => "primary",
                _ => "replica",
            };
            self.run_callback("on_role_change", name);
        }
    }

    fn run_callback(&mut self, action: &str, role: &str) {
        let Some(cmd) = self
            .cfg
            .postgresql
            .callbacks
            .get(action)
            .filter(|c| !c.trim().is_empty())
        else {
            return;
        };
        let Some(mut argv) = shlex::split(cmd).filter(|a| !a.is_empty()) else {
            tracing::error!("callback {action}: cannot split {cmd:?} into arguments");
            return;
        };
        argv.extend([action.to_string(), role.to_string(), self.cfg.scope.clone()]);
        if let Some(mut old) = self.callback.take() {
            if old.try_wait().ok().flatten().is_none() {
                tracing::warn!("killing the previous callback, still running");
                let _ = old.start_kill();
            }
        }
        tracing::info!("calling {action} callback: {}", argv.join(" "));
        match tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(std::process::Stdio::null())
            .spawn()
        {
            Ok(child) => self.callback = Some(child),
            Err(e) => tracing::error!("callback {action} ({}) failed to start: {e}", argv[0]),
        }
    }
}
