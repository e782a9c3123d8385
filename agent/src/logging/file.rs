//! `<log.dir>/patroni.log`, rotated by size as Python's `RotatingFileHandler` does it for
//! Patroni: before a line would take the file to `file_size` bytes, `patroni.log.<N-1>` becomes
//! `patroni.log.<N>` ... `patroni.log` becomes `patroni.log.1` (the oldest beyond `file_num`
//! is removed), and a new `patroni.log` is opened. Each file opened gets `mode` (or `0666`
//! less the umask), as Patroni chmods it.
//!
//! Written here rather than taken from a crate: `file-rotate` panics on ordinary filesystem
//! conditions (a removed log directory or file) and cuts lines across files; `rolling-file`
//! rotates only after a file went past its size and sets no permissions; `tracing-appender`
//! rotates by time only. The writes come from `tracing-appender`'s worker thread, never from
//! the HA loop.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use patrol_config::log::{Log, FILE_NAME};

/// The rotation settings of a [`RotatingFile`] (can change on reload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rotation {
    /// 0: never rotate.
    pub max_bytes: u64,
    /// 0: never rotate.
    pub backups: u32,
    /// `None`: `0666` less the umask.
    pub mode: Option<u32>,
}

impl Rotation {
    pub(crate) fn of(log: &Log) -> Rotation {
        Rotation {
            max_bytes: log.file_size,
            backups: log.file_num,
            mode: log.mode,
        }
    }
}

/// The open log file and its rotation.
pub(crate) struct RotatingFile {
    path: PathBuf,
    file: Option<File>,
    /// Bytes in the open file.
    size: u64,
    rotation: Rotation,
    /// A write failed, and stderr was told; cleared by the next success.
    failing: bool,
}

impl RotatingFile {
    /// Opens (or creates) `<dir>/patroni.log` for appending. The directory must exist, as for
    /// Patroni.
    pub(crate) fn open(dir: &Path, rotation: Rotation) -> io::Result<RotatingFile> {
        let mut f = RotatingFile {
            path: dir.join(FILE_NAME),
            file: None,
            size: 0,
            rotation,
            failing: false,
        };
        f.reopen()?;
        Ok(f)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// New settings; a new mode is applied to the open file at once.
    pub(crate) fn set_rotation(&mut self, rotation: Rotation) -> io::Result<()> {
        let mode_changed = rotation.mode != self.rotation.mode;
        self.rotation = rotation;
        if mode_changed && self.file.is_some() {
            self.chmod()?;
        }
        Ok(())
    }

    fn reopen(&mut self) -> io::Result<()> {
        self.file = None;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = file.metadata()?.len();
        self.file = Some(file);
        self.chmod()
    }

    fn chmod(&self) -> io::Result<()> {
        let Some(mode) = self.rotation.mode.or_else(|| umask().map(|u| 0o666 & !u)) else {
            return Ok(());
        };
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(mode))
    }

    /// Python's `shouldRollover`: a non-empty regular file that `len` more bytes would take
    /// to `max_bytes`.
    fn should_rotate(&self, len: usize) -> bool {
        let r = self.rotation;
        r.max_bytes > 0
            && r.backups > 0
            && self.size > 0
            && self.size.saturating_add(len as u64) >= r.max_bytes
            && std::fs::metadata(&self.path).map_or(true, |m| m.is_file())
    }

    /// Python's `doRollover`: shift the numbered files up, the current one to `.1`, reopen.
    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", self.path.display()));
        let mut result = Ok(());
        for n in (1..self.rotation.backups).rev() {
            let (from, to) = (numbered(n), numbered(n + 1));
            if from.exists() {
                result = result
                    .and(remove_if_exists(&to))
                    .and(std::fs::rename(&from, &to));
            }
        }
        let first = numbered(1);
        result = result.and(remove_if_exists(&first));
        if self.path.exists() {
            result = result.and(std::fs::rename(&self.path, &first));
        }
        // Written on even if a rename failed (Python reports and goes on too).
        self.reopen().and(result)
    }

    fn report(&mut self, what: &str, e: &io::Error) {
        if !self.failing {
            self.failing = true;
            eprintln!("patrol: {what} {}: {e}", self.path.display());
        }
    }
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The process umask, read from `/proc/self/status` (setting it to read it would race with
/// other threads).
fn umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.should_rotate(buf.len()) {
            if let Err(e) = self.rotate() {
                self.report("cannot rotate the log file", &e);
            }
        }
        if self.file.is_none() {
            if let Err(e) = self.reopen() {
                self.report("cannot open the log file", &e);
                return Err(e);
            }
        }
        let file = self.file.as_mut().expect("opened above");
        match file.write_all(buf) {
            Ok(()) => {
                self.size = self.size.saturating_add(buf.len() as u64);
                self.failing = false;
                Ok(buf.len())
            }
            Err(e) => {
                self.report("cannot write the log file", &e);
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

/// A [`RotatingFile`] shared between the writer thread and the reload (which changes its
/// rotation in place).
#[derive(Clone)]
pub(crate) struct SharedFile(pub Arc<Mutex<RotatingFile>>);

impl Write for SharedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.0.lock() {
            Ok(mut f) => f.write(buf),
            Err(poisoned) => poisoned.into_inner().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.0.lock() {
            Ok(mut f) => f.flush(),
            Err(poisoned) => poisoned.into_inner().flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = std::fs::read_dir(dir)
            .expect("dir")
            .map(|e| {
                let e = e.expect("entry");
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().expect("metadata").len(),
                )
            })
            .collect();
        out.sort();
        out
    }

    fn line(n: usize) -> String {
        format!("line {n:04} {}\n", "x".repeat(20))
    }

    #[test]
    fn rotates_before_a_line_would_reach_the_size_and_keeps_file_num_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rotation = Rotation {
            max_bytes: 100,
            backups: 2,
            mode: Some(0o640),
        };
        let mut f = RotatingFile::open(dir.path(), rotation).expect("open");
        // 31-byte lines: three fit below 100 bytes (93), the fourth goes to a new file.
        for n in 0..10 {
            f.write_all(line(n).as_bytes()).expect("write");
        }
        let got = files(dir.path());
        assert_eq!(
            got,
            vec![
                ("patroni.log".to_string(), 31),
                ("patroni.log.1".to_string(), 93),
                ("patroni.log.2".to_string(), 93),
            ]
        );
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).expect("read");
        assert_eq!(read("patroni.log"), line(9));
        assert_eq!(
            read("patroni.log.1"),
            format!("{}{}{}", line(6), line(7), line(8))
        );
        assert_eq!(
            read("patroni.log.2"),
            format!("{}{}{}", line(3), line(4), line(5))
        );
        for (name, _) in got {
            let mode = std::fs::metadata(dir.path().join(&name))
                .expect("metadata")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o640, "{name}");
        }
    }

    #[test]
    fn zero_size_or_count_never_rotates_and_a_long_line_goes_to_an_empty_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut f = RotatingFile::open(
            dir.path(),
            Rotation {
                max_bytes: 10,
                backups: 0,
                mode: None,
            },
        )
        .expect("open");
        for n in 0..3 {
            f.write_all(line(n).as_bytes()).expect("write");
        }
        assert_eq!(files(dir.path()), vec![("patroni.log".to_string(), 93)]);

        f.set_rotation(Rotation {
            max_bytes: 10,
            backups: 3,
            mode: None,
        })
        .expect("set");
        f.write_all(line(3).as_bytes()).expect("write");
        f.write_all(line(4).as_bytes()).expect("write");
        assert_eq!(
            files(dir.path()),
            vec![
                ("patroni.log".to_string(), 31),
                ("patroni.log.1".to_string(), 31),
                ("patroni.log.2".to_string(), 93),
            ]
        );
    }

    #[test]
    fn appends_to_an_existing_file_counting_its_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("patroni.log"), "x".repeat(90)).expect("write");
        let mut f = RotatingFile::open(
            dir.path(),
            Rotation {
                max_bytes: 100,
                backups: 1,
                mode: None,
            },
        )
        .expect("open");
        f.write_all(line(0).as_bytes()).expect("write");
        assert_eq!(
            files(dir.path()),
            vec![
                ("patroni.log".to_string(), 31),
                ("patroni.log.1".to_string(), 90)
            ]
        );
    }

    #[test]
    fn a_removed_file_or_directory_is_reported_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let logs = dir.path().join("logs");
        std::fs::create_dir(&logs).expect("mkdir");
        let mut f = RotatingFile::open(
            &logs,
            Rotation {
                max_bytes: 40,
                backups: 2,
                mode: None,
            },
        )
        .expect("open");
        f.write_all(line(0).as_bytes()).expect("write");
        std::fs::remove_file(logs.join("patroni.log")).expect("rm");
        // The rotation finds no file to move, and opens a new one.
        f.write_all(line(1).as_bytes()).expect("write");
        assert_eq!(files(&logs), vec![("patroni.log".to_string(), 31)]);
        std::fs::remove_dir_all(&logs).expect("rm -r");
        assert!(f.write_all(line(2).as_bytes()).is_err());
        assert!(RotatingFile::open(&logs, f.rotation).is_err());
    }
}
