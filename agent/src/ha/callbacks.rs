//! Callback scripts (spec 5.14): `postgresql.callbacks.<action>` runs as
//! `<command> <action> <role> <scope>` (split with shlex) from the agent's working directory,
//! without waiting for it; a previous callback still running is killed first, as Patroni does.
//! `on_start` after PostgreSQL started, `on_stop` after the agent stopped it, `on_restart`
//! after a restart (instead of those two), `on_reload` after a configuration reload,
//! `on_role_change` when the role changed. `before_stop` runs before a planned stop (shutdown,
//! restart, switchover, rewind) and is waited for; an immediate stop (fencing a primary that
//! lost its key) does not wait for any script.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::config::Config;

/// Clonable handle (tasks fire callbacks too); one callback runs at a time.
#[derive(Clone, Default)]
pub struct Callbacks {
    commands: BTreeMap<String, String>,
    before_stop: Option<String>,
    scope: String,
    running: Arc<Mutex<Option<tokio::process::Child>>>,
}

impl Callbacks {
    pub fn new(cfg: &Config) -> Callbacks {
        Callbacks {
            commands: cfg.postgresql.callbacks.clone(),
            before_stop: cfg.postgresql.before_stop.clone(),
            scope: cfg.scope.clone(),
            running: Arc::default(),
        }
    }

    /// The same handle (the running callback kept) under a reloaded configuration.
    pub fn reconfigured(&self, cfg: &Config) -> Callbacks {
        Callbacks {
            running: self.running.clone(),
            ..Callbacks::new(cfg)
        }
    }

    /// The role a callback is told: `primary` or `replica`.
    pub fn role(primary: bool) -> &'static str {
        if primary {
            "primary"
        } else {
            "replica"
        }
    }

    /// Starts `<command> <action> <role> <scope>` if the action has a command.
    pub fn fire(&self, action: &str, role: &str) {
        let Some(cmd) = self.commands.get(action).filter(|c| !c.trim().is_empty()) else {
            return;
        };
        let Some(mut argv) = shlex::split(cmd).filter(|a| !a.is_empty()) else {
            tracing::error!("callback {action}: cannot split {cmd:?} into arguments");
            return;
        };
        argv.extend([action.to_string(), role.to_string(), self.scope.clone()]);
        let mut slot = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = slot.as_mut() {
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
            Ok(child) => *slot = Some(child),
            Err(e) => tracing::error!("callback {action} ({}) failed to start: {e}", argv[0]),
        }
    }

    /// Runs `before_stop` and waits for it (its exit status is logged, never fatal).
    pub async fn before_stop(&self) {
        let Some(cmd) = self.before_stop.as_deref().filter(|c| !c.trim().is_empty()) else {
            return;
        };
        let Some(argv) = shlex::split(cmd).filter(|a| !a.is_empty()) else {
            tracing::error!("before_stop: cannot split {cmd:?} into arguments");
            return;
        };
        tracing::info!("running before_stop: {cmd}");
        match tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(std::process::Stdio::null())
            .status()
            .await
        {
            Ok(s) if s.success() => {}
            Ok(s) => tracing::info!("before_stop script `{cmd}` exited with {s}"),
            Err(e) => tracing::error!("Exception when calling `{cmd}`: {e}"),
        }
    }
}
