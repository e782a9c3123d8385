//! The unprivileged user agents (and so PostgreSQL) run as when the tests run as root.
//!
//! Dangerous: creates a system user with `useradd` on the machine if it is missing.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use anyhow::{bail, Context};
use nix::unistd::{geteuid, Gid, Uid, User};

/// Name, uid and gid of the user agents run as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentUser {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
}

/// The user agents must run as: `None` when the tests do not run as root (agents then run as
/// the current user); otherwise `$PATROL_TEST_USER` (default `patrol`), created with
/// `useradd --system --user-group --no-create-home --shell /usr/sbin/nologin` if missing.
/// Looked up (and created) once per process.
pub fn ensure_user() -> anyhow::Result<Option<AgentUser>> {
    static USER: OnceLock<AgentUser> = OnceLock::new();
    static CREATE: Mutex<()> = Mutex::new(());
    if !geteuid().is_root() {
        return Ok(None);
    }
    if let Some(u) = USER.get() {
        return Ok(Some(u.clone()));
    }
    let _guard = CREATE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(u) = USER.get() {
        return Ok(Some(u.clone()));
    }
    let name = std::env::var("PATROL_TEST_USER").unwrap_or_else(|_| "patrol".to_owned());
    let user = match lookup(&name)? {
        Some(u) => u,
        None => {
            create(&name)?;
            lookup(&name)?.with_context(|| format!("user {name} missing right after useradd"))?
        }
    };
    if user.uid.is_root() {
        bail!("PATROL_TEST_USER={name} is root; PostgreSQL refuses to run as root");
    }
    let user = AgentUser {
        name,
        uid: user.uid,
        gid: user.gid,
    };
    Ok(Some(USER.get_or_init(|| user).clone()))
}

fn lookup(name: &str) -> anyhow::Result<Option<User>> {
    User::from_name(name).with_context(|| format!("looking up user {name}"))
}

fn create(name: &str) -> anyhow::Result<()> {
    let useradd = ["/usr/sbin/useradd", "/sbin/useradd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("useradd");
    let out = Command::new(useradd)
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ])
        .output()
        .with_context(|| format!("running {useradd}"))?;
    // Another test process may have created it meanwhile (useradd exits 9 then).
    if !out.status.success() && lookup(name)?.is_none() {
        bail!(
            "useradd {name} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// For a test that needs root (the router's kernel data paths: BPF programs, destroying
/// sockets): `true` when the tests run as root. Otherwise the test fails with `why`, unless
/// `PATROL_SKIP_ROOT_TESTS=1` asks to skip the root-only tests: then this says so on stderr and
/// returns `false`, and the test returns. So a root-only test never passes without running
/// unless someone asked for it (CI runs as root).
///
/// # Panics
/// When not root and `PATROL_SKIP_ROOT_TESTS` is not `1`.
pub fn root_or_skip(why: &str) -> bool {
    if geteuid().is_root() {
        return true;
    }
    if std::env::var_os("PATROL_SKIP_ROOT_TESTS").is_some_and(|v| v == "1") {
        eprintln!("SKIPPED (PATROL_SKIP_ROOT_TESTS=1): {why}");
        return false;
    }
    panic!(
        "this test needs root: {why}; run the tests as root (CI does), or set \
         PATROL_SKIP_ROOT_TESTS=1 to skip the root-only tests"
    );
}

/// Makes `cmd` run as the agent user (no-op when not root). Also sets the working directory to
/// `/` if none is set, because the caller's may not be enterable by that user.
pub fn as_agent_user(cmd: &mut Command) -> anyhow::Result<()> {
    if let Some(u) = ensure_user()? {
        // std drops supplementary groups (setgroups(0)) when it changes the uid as root.
        cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw());
        if cmd.get_current_dir().is_none() {
            cmd.current_dir("/");
        }
    }
    Ok(())
}

/// Gives `path` to the agent user (no-op when not root).
pub fn chown_to_agent(path: &Path) -> anyhow::Result<()> {
    if let Some(u) = ensure_user()? {
        std::os::unix::fs::chown(path, Some(u.uid.as_raw()), Some(u.gid.as_raw()))
            .with_context(|| format!("chown {} to {}", path.display(), u.name))?;
    }
    Ok(())
}

/// Creates `path` (and missing parents) with mode 0700 and gives it to the agent user.
pub fn make_agent_dir(path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("mkdir {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod 0700 {}", path.display()))?;
    chown_to_agent(path)
}
