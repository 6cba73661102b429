//! The execution journal: which executions are running, so that a runner that
//! dies mid-execution can report them at its next start. It is one
//! append-only file, `{state_directory}/journal/journal.log`, of JSON lines:
//!
//! - `{"start": {record}}` when work arrives, durable (fdatasync) before the
//!   claim is sent;
//! - `{"pid": {...}}` once the executor is spawned: its pid, start time and
//!   cgroup, the identity `supervise` needs to stop what is left of it (no
//!   fsync: a pid means nothing after a reboot, and a runner crash keeps the
//!   page cache);
//! - `{"done": "id"}` once the API has acknowledged the result, durable
//!   before the outbox entry is removed.
//!
//! The order of these writes against the claim and the result is the
//! ledger's (`ledger.rs`); this module makes each line durable when asked.
//! Syncs are group commits: a worker whose line was written while another
//! worker's fdatasync was in flight waits for the next one, and one
//! fdatasync covers every line written before it started.
//!
//! One file rather than one per execution: creating and removing two inodes
//! per execution cost more than everything else the runner does on a busy
//! ext4 (see BENCHMARKS.md), and an append plus fdatasync to a file that
//! already exists is the cheapest durable write there is. The file is
//! rewritten with only the live entries at open and whenever it grows past
//! [`COMPACT_AT`].
//!
//! At open, entries started and not done are what the previous run left: its
//! executor is stopped (if it is provably the same process) and the execution
//! reported. Entries of the older layout (one `{id}.json` file each) are read
//! too, so a state directory from an earlier flo-runner keeps working.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::fsutil::{self, move_aside, CORRUPT_DIR};
use crate::groupsync::GroupSync;
use crate::ids::ExecutionId;

pub const JOURNAL_DIR: &str = "journal";
pub const JOURNAL_FILE: &str = "journal.log";
/// Rewrite the log once it is this long (about 400 executions).
const COMPACT_AT: u64 = 256 * 1024;

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
    /// The execution's cgroup, when it had one (`supervise`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
}

/// The executor of a running execution, once spawned.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Spawned {
    execution_id: String,
    pid: u32,
    #[serde(default)]
    pid_start: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cgroup: Option<PathBuf>,
}

/// One line of the log.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Line {
    Start(Record),
    Pid(Spawned),
    Done(String),
}

struct Inner {
    file: Arc<File>,
    /// Bytes in the file, to know when to compact.
    len: u64,
    live: HashMap<String, Record>,
}

#[derive(Clone)]
pub struct Journal {
    dir: PathBuf,
    inner: Arc<Mutex<Inner>>,
    /// fdatasyncs shared by concurrent writers.
    group: Arc<GroupSync>,
    /// What the previous run left, found at open.
    leftovers: Arc<Vec<Record>>,
}

impl Journal {
    /// Opens (creating) `{state_dir}/journal/`, reads what a previous run
    /// left, and starts a fresh log holding only those entries.
    pub fn open(state_dir: &Path) -> io::Result<Self> {
        let dir = state_dir.join(JOURNAL_DIR);
        fsutil::create_dir_all(&dir)?;
        let mut live = HashMap::new();
        let log_path = dir.join(JOURNAL_FILE);
        match fs::read(&log_path) {
            Ok(bytes) => replay(&log_path, &bytes, &mut live),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{}: {e}", log_path.display()),
                ))
            }
        }
        let legacy = read_legacy(&dir, &mut live)?;
        let mut leftovers: Vec<Record> = live.values().cloned().collect();
        leftovers.sort_by(|a, b| a.started_at.cmp(&b.started_at));
        let (file, len) = rewrite(&dir, &live)?;
        // Only once their entries are safely in the log.
        for path in legacy {
            let _ = fs::remove_file(path);
        }
        Ok(Self {
            dir,
            inner: Arc::new(Mutex::new(Inner { file, len, live })),
            group: Arc::new(GroupSync::default()),
            leftovers: Arc::new(leftovers),
        })
    }

    /// Records that `record`'s execution is running, durably: when this
    /// returns `Ok`, a crash of the host cannot lose the entry.
    /// An execution that is live already (running here, or its result not
    /// yet acknowledged: the same id handed out twice) is refused with
    /// `AlreadyExists`, under the same lock as the insert, so two workers
    /// can never both begin it.
    pub fn record(&self, record: &Record) -> io::Result<()> {
        let mut inner = self.lock();
        if inner.live.contains_key(&record.execution_id) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("execution {} is already live here", record.execution_id),
            ));
        }
        inner
            .live
            .insert(record.execution_id.clone(), record.clone());
        write_line(&mut inner, &Line::Start(record.clone()))?;
        drop(inner);
        self.sync()
    }

    /// Records the executor's pid (and start time) after spawn, without
    /// fsync: it only matters if the runner dies while the host stays up.
    pub fn update(&self, record: &Record) -> io::Result<()> {
        let Some(pid) = record.pid else {
            return Ok(());
        };
        let line = Line::Pid(Spawned {
            execution_id: record.execution_id.clone(),
            pid,
            pid_start: record.pid_start,
            cgroup: record.cgroup.clone(),
        });
        let mut inner = self.lock();
        inner
            .live
            .insert(record.execution_id.clone(), record.clone());
        write_line(&mut inner, &line)
    }

    /// Records, durably, that `id` is finished: its result was acknowledged
    /// (or it was never ours). Nothing to do if it is not live.
    pub fn done(&self, id: &ExecutionId) -> io::Result<()> {
        let mut inner = self.lock();
        if inner.live.remove(id.as_str()).is_none() {
            return Ok(());
        }
        if inner.len >= COMPACT_AT {
            // The rewrite is durable (write, fsync, rename, directory fsync)
            // and holds every live entry: all lines so far are covered.
            let (file, len) = rewrite(&self.dir, &inner.live)?;
            inner.file = file;
            inner.len = len;
            return Ok(());
        }
        write_line(&mut inner, &Line::Done(id.to_string()))?;
        drop(inner);
        self.sync()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        crate::sync::lock(&self.inner)
    }

    /// Makes every line written so far durable, sharing the fdatasync with
    /// concurrent writers. The file is taken when the sync runs: lines in
    /// a file a compaction replaced are in the (durable) rewrite.
    fn sync(&self) -> io::Result<()> {
        let ticket = self.group.ticket();
        self.group
            .wait(ticket, || self.lock().file.clone().sync_data())
    }

    /// Entries the previous run left (read at open) and not yet finished.
    pub fn leftovers(&self) -> Vec<Record> {
        let inner = crate::sync::lock(&self.inner);
        self.leftovers
            .iter()
            .filter(|r| inner.live.contains_key(&r.execution_id))
            .cloned()
            .collect()
    }

    /// Whether execution `id` is running (or was, when the previous run died
    /// and recovery has not reported it yet).
    pub fn is_live(&self, id: &str) -> bool {
        crate::sync::lock(&self.inner).live.contains_key(id)
    }
}

fn write_line(inner: &mut Inner, line: &Line) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(line).map_err(io::Error::other)?;
    bytes.push(b'\n');
    // One write per line on an O_APPEND file: lines never interleave.
    (&*inner.file).write_all(&bytes)?;
    inner.len += bytes.len() as u64;
    Ok(())
}

/// Applies the lines of a log. A line that does not parse (torn by a host
/// crash in mid-write) is skipped with a warning: the lines around it are
/// whole, and each names its execution.
fn replay(path: &Path, bytes: &[u8], live: &mut HashMap<String, Record>) {
    let mut bad = 0;
    for raw in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<Line>(raw) {
            Ok(Line::Start(r)) if ExecutionId::parse(&r.execution_id).is_ok() => {
                live.insert(r.execution_id.clone(), r);
            }
            Ok(Line::Pid(s)) => {
                if let Some(r) = live.get_mut(&s.execution_id) {
                    r.pid = Some(s.pid);
                    r.pid_start = s.pid_start;
                    r.cgroup = s.cgroup;
                }
            }
            Ok(Line::Done(id)) => {
                live.remove(&id);
            }
            Ok(Line::Start(_)) | Err(_) => bad += 1,
        }
    }
    if bad > 0 {
        log::warn!(
            "{}: skipped {bad} unreadable line(s) (a write torn by a crash)",
            path.display()
        );
    }
}

/// Entries in the one-file-per-execution layout of earlier versions. Returns
/// their paths, to remove once the new log holds them; unreadable ones are
/// moved aside.
fn read_legacy(dir: &Path, live: &mut HashMap<String, Record>) -> io::Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for item in fs::read_dir(dir)? {
        let item = item?;
        if !item.file_type()?.is_file() {
            continue;
        }
        let path = item.path();
        let name = item.file_name().to_string_lossy().into_owned();
        if fsutil::is_temp(&name) {
            let _ = fs::remove_file(&path);
            continue;
        }
        if !name.ends_with(".json") {
            continue;
        }
        let record = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
            .filter(|r| ExecutionId::parse(&r.execution_id).is_ok());
        match record {
            Some(r) => {
                live.insert(r.execution_id.clone(), r);
                paths.push(path);
            }
            None => move_aside(&dir.join(CORRUPT_DIR), &path, "not a journal entry"),
        }
    }
    Ok(paths)
}

/// Replaces the log with one `start` line per live entry (durably), and
/// opens it for appending.
fn rewrite(dir: &Path, live: &HashMap<String, Record>) -> io::Result<(Arc<File>, u64)> {
    let mut body = Vec::new();
    for r in live.values() {
        serde_json::to_writer(&mut body, &Line::Start(r.clone())).map_err(io::Error::other)?;
        body.push(b'\n');
    }
    let path = dir.join(JOURNAL_FILE);
    fsutil::write_atomic(&path, &body, fsutil::FILE_MODE)?;
    let file = OpenOptions::new().append(true).open(&path)?;
    Ok((Arc::new(file), body.len() as u64))
}

/// A journal entry for tests: execution `id` of flow `f`, in `dir`, not
/// spawned yet.
#[cfg(test)]
pub(crate) fn test_record(id: &str, dir: &Path) -> Record {
    Record {
        execution_id: id.into(),
        flo_id: "f".into(),
        dir: dir.to_path_buf(),
        started_at: format!("now-{id}"),
        pid: None,
        pid_start: None,
        boot_id: None,
        cgroup: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_entries_survive_a_reopen_with_their_pid_and_finished_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let mut a = test_record("a", dir.path());
        let b = test_record("b", dir.path());
        j.record(&a).unwrap();
        j.record(&b).unwrap();
        a.pid = Some(42);
        a.pid_start = Some(7);
        a.cgroup = Some(PathBuf::from("/sys/fs/cgroup/flo-exec-1-0-a"));
        j.update(&a).unwrap();
        j.done(&ExecutionId::parse("b").unwrap()).unwrap();
        assert!(j.is_live("a") && !j.is_live("b"));
        drop(j);
        let again = Journal::open(dir.path()).unwrap();
        assert_eq!(again.leftovers(), vec![a.clone()]);
        // The reopened log holds only the live entry.
        let text = fs::read_to_string(dir.path().join(JOURNAL_DIR).join(JOURNAL_FILE)).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        again.done(&ExecutionId::parse("a").unwrap()).unwrap();
        assert!(Journal::open(dir.path()).unwrap().leftovers().is_empty());
    }

    #[test]
    fn concurrent_records_are_all_durable_and_share_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        std::thread::scope(|s| {
            for t in 0..8 {
                let j = j.clone();
                let dir = dir.path();
                s.spawn(move || {
                    for i in 0..20 {
                        j.record(&test_record(&format!("t{t}-{i}"), dir)).unwrap();
                    }
                });
            }
        });
        drop(j);
        assert_eq!(Journal::open(dir.path()).unwrap().leftovers().len(), 160);
    }

    #[test]
    fn a_live_execution_cannot_begin_twice() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let r = test_record("a", dir.path());
        j.record(&r).unwrap();
        let e = j.record(&r).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        j.done(&ExecutionId::parse("a").unwrap()).unwrap();
        j.record(&r).unwrap();
    }

    #[test]
    fn a_torn_line_is_skipped_and_the_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        j.record(&test_record("a", dir.path())).unwrap();
        drop(j);
        let log = dir.path().join(JOURNAL_DIR).join(JOURNAL_FILE);
        let mut f = OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b"{\"start\":{\"execution_id\":\"b\",\"fl")
            .unwrap();
        drop(f);
        let again = Journal::open(dir.path()).unwrap();
        let ids: Vec<_> = again
            .leftovers()
            .into_iter()
            .map(|r| r.execution_id)
            .collect();
        assert_eq!(ids, vec!["a"]);
    }

    #[test]
    fn compacts_once_long_and_keeps_what_is_live() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let keep = test_record("keep", dir.path());
        j.record(&keep).unwrap();
        for i in 0..2000 {
            let r = test_record(&format!("e{i}"), dir.path());
            j.record(&r).unwrap();
            j.done(&ExecutionId::parse(&r.execution_id).unwrap())
                .unwrap();
        }
        let log = dir.path().join(JOURNAL_DIR).join(JOURNAL_FILE);
        let len = fs::metadata(&log).unwrap().len();
        assert!(len < COMPACT_AT + 4096, "log is {len} bytes");
        drop(j);
        let again = Journal::open(dir.path()).unwrap();
        assert_eq!(again.leftovers(), vec![keep]);
    }

    #[test]
    fn entries_of_the_older_layout_are_read_and_corrupt_ones_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let jdir = dir.path().join(JOURNAL_DIR);
        fs::create_dir_all(&jdir).unwrap();
        let r = test_record("e1", dir.path());
        fs::write(jdir.join("e1.json"), serde_json::to_vec_pretty(&r).unwrap()).unwrap();
        fs::write(jdir.join("e2.json"), b"").unwrap();
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.leftovers(), vec![r]);
        assert!(j.is_live("e1"));
        assert!(!jdir.join("e1.json").exists(), "migrated into the log");
        assert!(jdir.join(CORRUPT_DIR).join("e2.json").exists());
        j.done(&ExecutionId::parse("e1").unwrap()).unwrap();
        assert!(Journal::open(dir.path()).unwrap().leftovers().is_empty());
    }
}
