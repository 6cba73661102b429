//! The execution journal: one small file per running execution in
//! `{state_directory}/journal/`, written when the execution is claimed and
//! removed once its result is in the outbox. A file left at start-up means the
//! runner died while that execution ran: its executor is stopped (if it is
//! provably the same process) and the execution is reported as errored.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::ids::ExecutionId;
use crate::outbox::{move_aside, CORRUPT_DIR};

pub const JOURNAL_DIR: &str = "journal";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub execution_id: String,
    pub flo_id: String,
    /// The execution directory.
    pub dir: PathBuf,
    pub started_at: String,
    /// Set once the executor is spawned.
    #[serde(default)]
    pub pid: Option<u32>,
    /// The executor's start time (field 22 of /proc/PID/stat) and the kernel's
    /// boot id: together they tell a live executor from a reused pid.
    #[serde(default)]
    pub pid_start: Option<u64>,
    #[serde(default)]
    pub boot_id: Option<String>,
}

#[derive(Clone)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    pub fn open(state_dir: &Path) -> io::Result<Self> {
        let dir = state_dir.join(JOURNAL_DIR);
        fsutil::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    pub fn record(&self, record: &Record) -> io::Result<()> {
        let body = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
        fsutil::write_atomic(&self.path(&record.execution_id), &body, fsutil::FILE_MODE)
    }

    /// Rewrites an entry without fsync: used for the pid update after spawn,
    /// which only matters if the runner dies while the host stays up (the
    /// page cache survives that); after a reboot the pid means nothing.
    pub fn update(&self, record: &Record) -> io::Result<()> {
        let body = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
        fsutil::replace(&self.path(&record.execution_id), &body, fsutil::FILE_MODE)
    }

    pub fn remove(&self, id: &ExecutionId) {
        match fs::remove_file(self.path(id.as_str())) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("journal: cannot remove the entry of {id}: {e}"),
        }
    }

    /// Entries a previous run left. Unreadable ones are moved aside.
    pub fn leftovers(&self) -> io::Result<Vec<Record>> {
        let mut out = Vec::new();
        for item in fs::read_dir(&self.dir)? {
            let item = item?;
            if !item.file_type()?.is_file() {
                continue;
            }
            let path = item.path();
            let name = item.file_name().to_string_lossy().into_owned();
            if name.starts_with(".flo-tmp-") {
                let _ = fs::remove_file(&path);
                continue;
            }
            let record = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
                .filter(|r| ExecutionId::parse(&r.execution_id).is_ok());
            match record {
                Some(r) => out.push(r),
                None => move_aside(&self.dir.join(CORRUPT_DIR), &path, "not a journal entry"),
            }
        }
        Ok(out)
    }
}

/// Start time of `pid` in clock ticks since boot, from /proc.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: skip past the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // Fields after the name start at field 3; starttime is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

pub fn boot_id() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
}

/// Whether the process recorded in `record` is still the same, live process.
pub fn still_running(record: &Record) -> bool {
    let (Some(pid), Some(start)) = (record.pid, record.pid_start) else {
        return false;
    };
    if record.boot_id.is_some() && record.boot_id != boot_id() {
        return false;
    }
    process_start(pid) == Some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_is_readable_and_stable() {
        let me = std::process::id();
        let a = process_start(me).unwrap();
        assert_eq!(process_start(me), Some(a));
        let r = Record {
            execution_id: "e".into(),
            flo_id: "f".into(),
            dir: PathBuf::from("/tmp"),
            started_at: String::new(),
            pid: Some(me),
            pid_start: Some(a),
            boot_id: boot_id(),
        };
        assert!(still_running(&r));
        assert!(!still_running(&Record {
            pid_start: Some(a + 1),
            ..r.clone()
        }));
    }

    #[test]
    fn leftovers_round_trip_and_corrupt_entries_move_aside() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let r = Record {
            execution_id: "e1".into(),
            flo_id: "f".into(),
            dir: dir.path().to_path_buf(),
            started_at: "now".into(),
            pid: None,
            pid_start: None,
            boot_id: None,
        };
        j.record(&r).unwrap();
        fs::write(dir.path().join(JOURNAL_DIR).join("e2.json"), b"").unwrap();
        let left = j.leftovers().unwrap();
        assert_eq!(left, vec![r]);
        assert!(dir
            .path()
            .join(JOURNAL_DIR)
            .join(CORRUPT_DIR)
            .join("e2.json")
            .exists());
        j.remove(&ExecutionId::parse("e1").unwrap());
        assert!(j.leftovers().unwrap().is_empty());
    }
}
