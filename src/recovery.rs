//! Crash recovery at start-up: every journal entry a previous run left is an
//! execution that was running when the runner died. Its executor is stopped if
//! it is provably still the same process (pid plus start time plus boot id, so
//! a reused pid is never signalled), and the execution is reported errored
//! through the outbox, so nothing stays "running" forever.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::process::{kill_process_group, Signal};

use crate::ids::ExecutionId;
use crate::job::OUTPUT_FILE;
use crate::journal::{self, Journal, Record};
use crate::outbox::{Kind, Outbox};
use crate::protocol::ExecutionResult;

pub const RECOVERED_ERROR: &str = "runner stopped while this execution was running";

/// Handles every leftover journal entry. Returns how many were recovered.
pub fn recover(
    journal: &Journal,
    outbox: &Outbox,
    kill_grace: Duration,
    max_log_bytes: usize,
) -> usize {
    let mut recovered = 0;
    for record in journal.leftovers() {
        let Ok(id) = ExecutionId::parse(&record.execution_id) else {
            continue;
        };
        if journal::still_running(&record) {
            stop(&record, kill_grace);
        }
        if outbox.has_pending(&id) {
            // The result was already in the outbox when the runner died.
            journal.remove(&id);
            continue;
        }
        // A result was produced (and perhaps delivered) just before the
        // runner died: send that same result again (harmless: same bytes),
        // never a different one.
        if let Some(body) = produced_result(&record.dir) {
            match outbox.put(Kind::Result, &id, &body) {
                Ok(_) => {
                    log::info!("execution {id}: re-sending the result it produced before the runner stopped");
                    journal.remove(&id);
                    recovered += 1;
                }
                Err(e) => log::error!(
                    "execution {id}: cannot queue its result: {e}; will retry at the next start"
                ),
            }
            continue;
        }
        let tail = read_tail(&record.dir.join(OUTPUT_FILE), max_log_bytes);
        let result = crate::report::errored(RECOVERED_ERROR, &tail);
        let body = match serde_json::to_vec(&result) {
            Ok(b) => b,
            Err(e) => {
                log::error!("execution {id}: cannot serialise its recovery result: {e}");
                continue;
            }
        };
        match outbox.put(Kind::Result, &id, &body) {
            Ok(_) => {
                log::warn!("execution {id}: the runner stopped while it was running; reporting it errored");
                journal.remove(&id);
                recovered += 1;
            }
            Err(e) => log::error!("execution {id}: cannot queue its recovery result: {e}; will retry at the next start"),
        }
    }
    recovered
}

/// The `result.json` copy, when it holds a whole result.
fn produced_result(dir: &Path) -> Option<Vec<u8>> {
    let body = std::fs::read(dir.join(crate::report::RESULT_FILE)).ok()?;
    serde_json::from_slice::<ExecutionResult>(&body).ok()?;
    Some(body)
}

/// SIGTERM to the orphaned executor's group, SIGKILL after `grace`.
fn stop(record: &Record, grace: Duration) {
    let (Some(pid), Some(start)) = (record.pid, record.pid_start) else {
        return;
    };
    let Some(pgid) = crate::cancel::pid_of(pid) else {
        return;
    };
    log::warn!(
        "execution {}: its executor (pid {pid}) outlived the previous runner; stopping it",
        record.execution_id
    );
    let _ = kill_process_group(pgid, Signal::Term);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if journal::process_start(pid) != Some(start) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Whatever is left in the group (the leader may be gone, children not).
    let _ = kill_process_group(pgid, Signal::Kill);
}

/// The last `cap` bytes of a file, from a line start, as text.
fn read_tail(path: &Path, cap: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let skip = len.saturating_sub(cap as u64);
    if file.seek(SeekFrom::Start(skip)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = file.take(cap as u64).read_to_end(&mut buf);
    let mut text = String::from_utf8_lossy(&buf).into_owned();
    if skip > 0 {
        if let Some(nl) = text.find('\n') {
            text.drain(..=nl);
        }
    }
    text.trim_end_matches('\n').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_starts_at_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("o.log");
        std::fs::write(&p, "first line\nsecond\nthird\n").unwrap();
        assert_eq!(read_tail(&p, 1000), "first line\nsecond\nthird");
        assert_eq!(read_tail(&p, 10), "third");
        assert_eq!(read_tail(&dir.path().join("none"), 10), "");
    }

    #[test]
    fn leftover_becomes_an_errored_result_once() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        let exec_dir = dir.path().join("x");
        std::fs::create_dir_all(&exec_dir).unwrap();
        std::fs::write(exec_dir.join(OUTPUT_FILE), "a\nb\n").unwrap();
        journal
            .record(&crate::journal::test_record("e1", &exec_dir))
            .unwrap();
        // The runner dies; the next one opens the journal.
        let journal = Journal::open(dir.path()).unwrap();
        assert_eq!(recover(&journal, &outbox, Duration::from_secs(1), 1000), 1);
        assert_eq!(outbox.depth(), 1);
        assert!(journal.leftovers().is_empty());
        assert_eq!(recover(&journal, &outbox, Duration::from_secs(1), 1000), 0);
    }

    #[test]
    fn a_produced_result_is_resent_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        let exec_dir = dir.path().join("x");
        std::fs::create_dir_all(&exec_dir).unwrap();
        let produced = br#"{"has_errored":false,"state":{"status":0,"logs":""}}"#;
        std::fs::write(exec_dir.join(crate::report::RESULT_FILE), produced).unwrap();
        journal
            .record(&crate::journal::test_record("e2", &exec_dir))
            .unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        assert_eq!(recover(&journal, &outbox, Duration::from_secs(1), 1000), 1);
        let out = dir.path().join(crate::outbox::OUTBOX_DIR);
        let files: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_file())
            .collect();
        assert_eq!(files.len(), 1);
        assert_eq!(std::fs::read(files[0].path()).unwrap(), produced);
    }
}
