//! Callback scripts (spec 5.14): `postgresql.callbacks.<action>` runs as
//! `<command> <action> <role> <scope>` (split with shlex) from the agent's working directory,
//! without waiting for it; a previous callback still running is killed first, as Patroni does.
//! `on_start` after PostgreSQL started, `on_stop` after the agent stopped it, `on_restart`
//! after a restart (instead of those two), `on_reload` after a configuration reload,
//! `on_role_change` when the role changed. `before_stop` runs before a planned stop (shutdown,
//! restart, switchover, rewind) and is waited for; an immediate stop (fencing a primary that
//! lost its key) does not wait for any script. `pre_promote` (row PP-1) runs right before a
//! promotion, is waited for without a time limit (as Patroni), and is killed when the promotion
//! is aborted; dangerous: a script that fails (or cannot be started) stops the promotion.
//! Scripts inherit the agent's environment, stdout and stderr (their output is in its log).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::config::Config;

/// Clonable handle (tasks fire callbacks too); one callback runs at a time.
#[derive(Clone, Default)]
pub struct Callbacks {
    commands: BTreeMap<String, String>,
    before_stop: Option<String>,
    pre_promote: Option<String>,
    scope: String,
    running: Arc<Mutex<Option<tokio::process::Child>>>,
}

impl Callbacks {
    pub fn new(cfg: &Config) -> Callbacks {
        Callbacks {
            commands: cfg.postgresql.callbacks.clone(),
            before_stop: cfg.postgresql.before_stop.clone(),
            pre_promote: cfg.postgresql.pre_promote.clone(),
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
        let Some(cmd) = self.commands.get(action) else {
            return;
        };
        let Some(mut command) = command(action, cmd) else {
            return;
        };
        command.args([action, role, self.scope.as_str()]);
        let mut slot = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = slot.as_mut() {
            if old.try_wait().ok().flatten().is_none() {
                tracing::warn!("killing the previous callback, still running");
                let _ = old.start_kill();
            }
        }
        tracing::info!(
            "calling {action} callback: {cmd} {action} {role} {}",
            self.scope
        );
        match command.spawn() {
            Ok(child) => *slot = Some(child),
            Err(e) => tracing::error!("callback {action} ({cmd}) failed to start: {e}"),
        }
    }

    /// Runs `before_stop` and waits for it (its exit status is logged, never fatal).
    pub async fn before_stop(&self) {
        let Some(cmd) = self.before_stop.as_deref() else {
            return;
        };
        let Some(mut command) = command("before_stop", cmd) else {
            return;
        };
        tracing::info!("running before_stop: {cmd}");
        match command.status().await {
            Ok(s) if s.success() => {}
            Ok(s) => tracing::info!("before_stop script `{cmd}` exited with {s}"),
            Err(e) => tracing::error!("Exception when calling `{cmd}`: {e}"),
        }
    }

    /// Row PP-1: runs `pre_promote` (its own arguments only, as Patroni) and waits for it.
    /// `Ok` when there is none or it exited with 0; otherwise why the promotion must not
    /// happen (its exit status, or why it could not be run). Dropping the future (an aborted
    /// promotion) kills the script.
    pub async fn pre_promote(&self) -> Result<(), String> {
        let Some(cmd) = self.pre_promote.as_deref().filter(|c| !c.trim().is_empty()) else {
            return Ok(());
        };
        let Some(mut command) = command("pre_promote", cmd) else {
            return Err(format!("cannot split {cmd:?} into arguments"));
        };
        tracing::info!("running pre_promote: {cmd}");
        match command.kill_on_drop(true).status().await {
            Ok(s) => {
                tracing::info!("pre_promote script `{cmd}` exited with {s}");
                if s.success() {
                    Ok(())
                } else {
                    Err(s.to_string())
                }
            }
            Err(e) => Err(format!("could not run `{cmd}`: {e}")),
        }
    }
}

/// The command of a script setting, split with shlex, from the agent's working directory and
/// with stdin closed; `None` (logged) when the setting is empty or cannot be split.
fn command(what: &str, cmd: &str) -> Option<tokio::process::Command> {
    if cmd.trim().is_empty() {
        return None;
    }
    let Some(argv) = shlex::split(cmd).filter(|a| !a.is_empty()) else {
        tracing::error!("{what}: cannot split {cmd:?} into arguments");
        return None;
    };
    let mut command = tokio::process::Command::new(&argv[0]);
    command.args(&argv[1..]).stdin(std::process::Stdio::null());
    Some(command)
}
