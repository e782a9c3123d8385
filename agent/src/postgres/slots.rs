//! Replication slots on the local server (list, create, drop, advance) and the copy of a
//! logical slot's state file from the leader (PostgreSQL before 17 has no failover slots: a
//! standby gets a logical slot only by having the file put in its `pg_replslot` while stopped,
//! as Patroni does).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use patrol_dcs::format_lsn;
use patrol_ha::permanent_slots::ExistingSlot;

use super::query::connect;
use super::{LocalConn, PgClient, PgError};

const SLOTS_SQL: &str = "SELECT slot_name::text, slot_type::text, plugin::text, database::text,
  active, xmin IS NOT NULL,
  (restart_lsn - '0/0'::pg_lsn)::bigint, (confirmed_flush_lsn - '0/0'::pg_lsn)::bigint,
  COALESCE(to_jsonb(s) ->> 'wal_status' = 'lost', false)
FROM pg_replication_slots s WHERE NOT temporary ORDER BY 1";

fn to_u64(v: Option<i64>) -> Option<u64> {
    v.and_then(|n| u64::try_from(n).ok())
}

impl PgClient {
    /// The (non-temporary) replication slots of the server.
    pub async fn replication_slots(&self) -> Result<Vec<ExistingSlot>, PgError> {
        let guard = self.client().await?;
        let c = guard.as_ref().expect("client() fills the slot");
        let rows = c.query(SLOTS_SQL, &[]).await?;
        Ok(rows
            .iter()
            .map(|r| {
                let kind: String = r.get(1);
                ExistingSlot {
                    name: r.get(0),
                    logical: (kind == "logical").then(|| {
                        (
                            r.get::<_, Option<String>>(3).unwrap_or_default(),
                            r.get::<_, Option<String>>(2).unwrap_or_default(),
                        )
                    }),
                    active: r.get(4),
                    has_xmin: r.get(5),
                    restart_lsn: to_u64(r.get(6)),
                    confirmed_flush_lsn: to_u64(r.get(7)),
                    lost: r.get(8),
                }
            })
            .collect())
    }

    /// Drops a slot (of any type) unless something uses it; `false` if it was not dropped.
    pub async fn drop_slot(&self, name: &str) -> Result<bool, PgError> {
        let guard = self.client().await?;
        let c = guard.as_ref().expect("client() fills the slot");
        let rows = c
            .query(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = $1 AND NOT active",
                &[&name],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// `pg_replication_slot_advance` of a physical slot.
    pub async fn advance_physical_slot(&self, name: &str, lsn: u64) -> Result<(), PgError> {
        let guard = self.client().await?;
        let c = guard.as_ref().expect("client() fills the slot");
        c.execute(
            "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)",
            &[&name, &format_lsn(lsn)],
        )
        .await?;
        Ok(())
    }

    /// The same server, database `database` (a logical slot belongs to one database).
    fn in_database(&self, database: &str) -> LocalConn {
        let mut conn = self.conn.clone();
        conn.config.dbname(database);
        conn
    }

    pub async fn create_logical_slot(
        &self,
        database: &str,
        name: &str,
        plugin: &str,
    ) -> Result<(), PgError> {
        let c = connect(&self.in_database(database)).await?;
        c.execute(
            "SELECT pg_create_logical_replication_slot($1, $2) WHERE NOT EXISTS \
             (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
            &[&name, &plugin],
        )
        .await?;
        Ok(())
    }

    /// `pg_replication_slot_advance` of a logical slot (it decodes the WAL in between, which
    /// can take a while: no statement timeout, on a connection of its own).
    pub async fn advance_logical_slot(
        &self,
        database: &str,
        name: &str,
        lsn: u64,
    ) -> Result<(), PgError> {
        let c = connect(&self.in_database(database)).await?;
        c.batch_execute("SET statement_timeout = 0").await?;
        c.execute(
            "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)",
            &[&name, &format_lsn(lsn)],
        )
        .await?;
        Ok(())
    }
}

/// A logical slot as read from the leader: its definition and its state file.
#[derive(Debug, Clone)]
pub struct SlotState {
    pub name: String,
    pub database: String,
    pub plugin: String,
    pub data: Vec<u8>,
}

/// Reads the state files of the logical slots `names` from the primary at `conn`
/// (`pg_read_binary_file`, which the rewind user may call). Nothing from a server in recovery.
pub async fn read_slot_states(
    conn: &LocalConn,
    names: &[String],
) -> Result<Vec<SlotState>, PgError> {
    let c = connect(conn).await?;
    let rows = c
        .query(
            "SELECT slot_name::text, datname::text, plugin::text, \
             pg_read_binary_file('pg_replslot/' || slot_name || '/state') \
             FROM pg_get_replication_slots() JOIN pg_database ON datoid = oid \
             WHERE NOT pg_is_in_recovery() AND slot_type = 'logical' AND slot_name = ANY($1)",
            &[&names],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| SlotState {
            name: r.get(0),
            database: r.get(1),
            plugin: r.get(2),
            data: r.get(3),
        })
        .collect())
}

/// Puts a slot's state file in `data_dir/pg_replslot/<name>/state` (PostgreSQL must be
/// stopped): written and synced in `<name>.tmp`, then renamed over any old one, with the data
/// directory's permissions (group access kept when it has it).
pub fn install_slot_state(data_dir: &Path, name: &str, data: &[u8]) -> std::io::Result<()> {
    let group = std::fs::metadata(data_dir)?.permissions().mode() & 0o070 != 0;
    let (dir_mode, file_mode) = if group {
        (0o750, 0o640)
    } else {
        (0o700, 0o600)
    };
    let replslot = data_dir.join("pg_replslot");
    let dir = replslot.join(name);
    let tmp = replslot.join(format!("{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir(&tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(dir_mode))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(file_mode)
        .open(tmp.join("state"))?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    std::fs::File::open(&tmp)?.sync_all()?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::rename(&tmp, &dir)?;
    std::fs::File::open(&dir)?.sync_all()?;
    std::fs::File::open(&replslot)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_file_replaces_the_old_one() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
        std::fs::create_dir_all(d.path().join("pg_replslot/cdc")).expect("mkdir");
        std::fs::write(d.path().join("pg_replslot/cdc/state"), b"old").expect("write");
        std::fs::create_dir_all(d.path().join("pg_replslot/cdc.tmp")).expect("left over");
        install_slot_state(d.path(), "cdc", b"new").expect("install");
        let state = d.path().join("pg_replslot/cdc/state");
        assert_eq!(std::fs::read(&state).expect("read"), b"new");
        let mode = std::fs::metadata(&state)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!d.path().join("pg_replslot/cdc.tmp").exists());
    }
}
