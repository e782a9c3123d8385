//! Patroni's cache of the dynamic configuration, `patroni.dynamic.json` in the data directory:
//! written whenever the configuration in effect changes (once the data directory exists), and
//! read at start-up in place of `bootstrap.dcs`. A cluster whose `config` key is gone (a wiped
//! or new etcd) then gets back its last configuration, not the bootstrap one, as with Patroni;
//! deleting the file makes `bootstrap.dcs` count again.

use std::path::{Path, PathBuf};

use patrol_dcs::{ClusterConfig, Dcs};

use super::Ha;
use crate::ha::port::{LocalPostgres, Peers};

const CACHE_FILE: &str = "patroni.dynamic.json";

fn cache_path(data_dir: &Path) -> PathBuf {
    data_dir.join(CACHE_FILE)
}

/// The cached dynamic configuration of `data_dir`, when it is there and valid (a bad one is
/// left out with a warning that names it).
pub(super) fn load(data_dir: &Path) -> Option<ClusterConfig> {
    let path = cache_path(data_dir);
    let text = std::fs::read_to_string(&path).ok()?;
    match ClusterConfig::parse(&text).map(|c| c.check().map(|()| c)) {
        Some(Ok(c)) => {
            tracing::info!(
                "using the dynamic configuration cached in {} until the DCS has one",
                path.display()
            );
            Some(c)
        }
        Some(Err(e)) => {
            tracing::warn!("ignoring {}: {e}", path.display());
            None
        }
        None => {
            tracing::warn!("ignoring {}: not a JSON object", path.display());
            None
        }
    }
}

impl<D: Dcs, P: LocalPostgres, Q: Peers> Ha<D, P, Q> {
    /// Writes the configuration in effect to the cache when it changed since the last write
    /// and the data directory is initialized (a file in an empty one would stop initdb or a
    /// clone). Written to a temporary file and renamed, so a reader never sees half of it.
    pub(super) fn save_dynamic_cache(&mut self) {
        if self.cached_dynamic.as_ref() == Some(&self.dynamic) {
            return;
        }
        if !matches!(
            self.pg.data_dir_state(),
            crate::postgres::DataDir::Initialized(_)
        ) {
            return;
        }
        let path = cache_path(&self.cfg.postgresql.data_dir);
        let tmp = path.with_extension("json.tmp");
        let written = std::fs::write(&tmp, self.dynamic.to_json())
            .and_then(|()| std::fs::rename(&tmp, &path));
        match written {
            Ok(()) => self.cached_dynamic = Some(self.dynamic.clone()),
            Err(e) => {
                tracing::warn!("could not write {}: {e}", path.display());
                // Not again every cycle: the next change tries again.
                self.cached_dynamic = Some(self.dynamic.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_cache_is_read_and_a_bad_one_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load(dir.path()), None);
        std::fs::write(cache_path(dir.path()), r#"{"ttl":40,"loop_wait":5}"#).expect("write");
        assert_eq!(
            load(dir.path()).map(|c| c.timing().ttl),
            Some(40),
            "the cached ttl"
        );
        std::fs::write(cache_path(dir.path()), r#"{"ttl":"lots"}"#).expect("write");
        assert_eq!(load(dir.path()), None);
        std::fs::write(cache_path(dir.path()), "[1]").expect("write");
        assert_eq!(load(dir.path()), None);
    }
}
