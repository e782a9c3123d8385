//! Locating the workspace's binaries (`patrol`, `patrolctl`, `patrol-router`) and copying them
//! to a world-readable dir, since the checkout (e.g. under /root) may not be enterable by the
//! unprivileged agent user.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};
use std::time::SystemTime;

use anyhow::Context;

use crate::util::random_u64;

/// The workspace root (the parent of this crate's dir).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives inside the workspace")
        .to_path_buf()
}

/// Path to a runnable copy of the workspace binary `name`, taken from `$PATROL_BIN_DIR` or
/// `<workspace>/target/debug/`. The copy lives in `<tmp>/patrol-bin-<euid>/<name>-<key>/<name>`
/// (mode 0755), is keyed by source path, size and mtime (so a rebuild gets a new copy and parallel test
/// processes share one), and is made once per process.
///
/// # Panics
/// If the binary is missing ("build first: cargo build --workspace") or cannot be copied.
pub fn bin(name: &str) -> PathBuf {
    static CACHE: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    let cache = cache.get_or_insert_with(HashMap::new);
    if let Some(p) = cache.get(name) {
        return p.clone();
    }
    let explicit = std::env::var_os("PATROL_BIN_DIR").map(PathBuf::from);
    let dir = explicit
        .clone()
        .unwrap_or_else(|| workspace_dir().join("target").join("debug"));
    let src = dir.join(name);
    if !src.is_file() {
        panic!(
            "binary {} not found; build first: cargo build --workspace",
            src.display()
        );
    }
    if explicit.is_none() {
        warn_if_stale(&src);
    }
    let copy = install_copy(name, &src)
        .unwrap_or_else(|e| panic!("cannot copy {} for the tests: {e:#}", src.display()));
    cache.insert(name.to_owned(), copy.clone());
    copy
}

fn install_copy(name: &str, src: &Path) -> anyhow::Result<PathBuf> {
    let meta = std::fs::metadata(src)?;
    let dest_dir = std::env::temp_dir().join(format!("patrol-bin-{}", nix::unistd::geteuid()));
    std::fs::create_dir_all(&dest_dir).with_context(|| format!("mkdir {}", dest_dir.display()))?;
    std::fs::set_permissions(&dest_dir, std::fs::Permissions::from_mode(0o755))?;

    let mut h = DefaultHasher::new();
    src.hash(&mut h);
    let src_key = h.finish() as u32;
    (meta.len(), meta.mtime(), meta.mtime_nsec()).hash(&mut h);
    let version_key = h.finish() as u32;
    // One dir per source and version, so the copy keeps its own name (argv[0], clap usage).
    let prefix = format!("{name}-{src_key:08x}-");
    let version_dir = dest_dir.join(format!("{prefix}{version_key:08x}"));
    let dest = version_dir.join(name);
    if dest.is_file() {
        return Ok(dest);
    }
    std::fs::create_dir_all(&version_dir)
        .with_context(|| format!("mkdir {}", version_dir.display()))?;
    std::fs::set_permissions(&version_dir, std::fs::Permissions::from_mode(0o755))?;
    // Copy under a unique name, then rename: other processes see all of the file or none.
    let tmp = version_dir.join(format!(".{name}.{:016x}.tmp", random_u64()));
    std::fs::copy(src, &tmp).with_context(|| format!("copy to {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, &dest).with_context(|| format!("rename to {}", dest.display()))?;
    // Remove older copies of this same source; running processes keep their inode.
    if let Ok(entries) = std::fs::read_dir(&dest_dir) {
        for e in entries.flatten() {
            let file_name = e.file_name();
            if file_name.to_string_lossy().starts_with(&prefix) && e.path() != version_dir {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(dest)
}

/// Warns once on stderr if any workspace source file is newer than the binary: `cargo test`
/// does not rebuild other packages' binaries, and a stale agent makes for baffling failures.
fn warn_if_stale(bin: &Path) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Ok(bin_time) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
            return;
        };
        let ws = workspace_dir();
        let newest = newest_source(&ws, &ws.join("target"));
        if let Some((t, path)) = newest {
            if t > bin_time {
                eprintln!(
                    "WARNING: {} is newer than {}; run `cargo build --workspace` first",
                    path.display(),
                    bin.display()
                );
            }
        }
    });
}

fn newest_source(dir: &Path, skip: &Path) -> Option<(SystemTime, PathBuf)> {
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    let entries = std::fs::read_dir(dir).ok()?;
    for e in entries.flatten() {
        let path = e.path();
        let Ok(ft) = e.file_type() else { continue };
        let name = e.file_name();
        if ft.is_dir() {
            if path == skip || name.to_string_lossy().starts_with('.') || name == "tests" {
                continue;
            }
            if let Some(cand) = newest_source(&path, skip) {
                if Some(cand.0) > newest.as_ref().map(|(t, _)| *t) {
                    newest = Some(cand);
                }
            }
        } else if path.extension().is_some_and(|x| x == "rs") || name == "Cargo.toml" {
            if let Ok(t) = e.metadata().and_then(|m| m.modified()) {
                if Some(t) > newest.as_ref().map(|(n, _)| *n) {
                    newest = Some((t, path));
                }
            }
        }
    }
    newest
}
