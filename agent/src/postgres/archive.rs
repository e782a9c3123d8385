//! Archiving the WAL segment of a stopped primary's shutdown checkpoint (row SC-2), so that a
//! standby that restores from the archive and is promoted later has that checkpoint: the old
//! primary can then follow it without a rewind.

use std::time::Duration;

use tokio::process::Command;

use super::{DataDir, PgError, Postgres};

/// How long the archive command may run.
const ARCHIVE_LIMIT: Duration = Duration::from_secs(300);

/// `archive_command` with PostgreSQL's placeholders filled in for `wal_file`: `%p` its path
/// relative to the data directory (where the command runs), `%f` its name, `%r` the oldest
/// segment (as Patroni, the first one), `%%` a percent sign.
pub fn archive_command_for(template: &str, wal_file: &str) -> String {
    let mut out = String::new();
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('p') => out.push_str(&format!("pg_wal/{wal_file}")),
            Some('f') => out.push_str(wal_file),
            Some('r') => out.push_str("000000010000000000000001"),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

impl Postgres {
    /// Runs `archive_command` for the segment that holds the latest checkpoint's redo record
    /// of the stopped data directory (pg_control's `Latest checkpoint's REDO WAL file`).
    pub async fn archive_shutdown_checkpoint_wal(
        &self,
        archive_command: &str,
    ) -> Result<String, PgError> {
        let DataDir::Initialized(cd) = self.data_dir_state() else {
            return Err(PgError::Failed {
                what: "archiving the shutdown checkpoint".into(),
                detail: "the data directory is not initialized".into(),
            });
        };
        let Some(wal_file) = cd
            .fields
            .get("Latest checkpoint's REDO WAL file")
            .filter(|f| f.len() == 24 && f.chars().all(|c| c.is_ascii_hexdigit()))
        else {
            return Err(PgError::Failed {
                what: "archiving the shutdown checkpoint".into(),
                detail: "pg_controldata names no latest checkpoint's REDO WAL file".into(),
            });
        };
        let command = archive_command_for(archive_command, wal_file);
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(&command).current_dir(&self.data_dir);
        self.run("archive_command", &mut cmd, ARCHIVE_LIMIT).await?;
        Ok(wal_file.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::archive_command_for;

    #[test]
    fn placeholders_are_filled_as_postgresql_does() {
        let f = "000000010000000000000003";
        assert_eq!(
            archive_command_for("cp %p /arch/%f && echo 100%% %r %x", f),
            format!("cp pg_wal/{f} /arch/{f} && echo 100% 000000010000000000000001 %x")
        );
        assert_eq!(archive_command_for("end %", f), "end %");
    }
}
