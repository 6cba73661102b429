//! Crash recovery at start-up: every journal entry a previous run left
//! (started, not done) is an execution that was running, or whose result was
//! not yet acknowledged, when the runner died. What is left of its processes
//! is stopped by `supervise::stop_remains` (its cgroup, its process group,
//! its marked descendants; each proven to be the execution's by boot id and
//! start time, so a reused pid is never signalled), and its result is queued
//! unless the outbox already holds one, as *uncertain*: the outbox asks the
//! API whether it already has a result before sending (ledger.rs).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

use crate::ids::ExecutionId;
use crate::ledger::Ledger;
use crate::output::OUTPUT_FILE;
use crate::protocol::ExecutionResult;

pub const RECOVERED_ERROR: &str = "runner stopped while this execution was running";

/// Handles every leftover journal entry. Returns how many results it queued.
pub fn recover(ledger: &Ledger, kill_grace: Duration, max_log_bytes: usize) -> usize {
    let outbox = ledger.outbox();
    let mut recovered = 0;
    for record in ledger.journal().leftovers() {
        let Ok(id) = ExecutionId::parse(&record.execution_id) else {
            continue;
        };
        // Every remaining process of it, the leader alive or not.
        crate::supervise::stop_remains(&record, kill_grace);
        if outbox.has_pending_result(&id) {
            // The result was in the outbox when the runner died: the outbox
            // delivers it (asking first) and then finishes the entry.
            continue;
        }
        // A result was produced (and perhaps delivered) just before the
        // runner died: that same result, never a different one; else an
        // errored one. Either way the API is asked before it is sent.
        let body = match produced_result(&record.dir) {
            Some(body) => {
                log::info!(
                    "execution {id}: queueing the result it produced before the runner stopped"
                );
                body
            }
            None => {
                let tail = read_tail(&record.dir.join(OUTPUT_FILE), max_log_bytes);
                let result = crate::report::errored(RECOVERED_ERROR, &tail);
                match serde_json::to_vec(&result) {
                    Ok(b) => {
                        log::warn!("execution {id}: the runner stopped while it was running; reporting it errored unless the API already has its result");
                        b
                    }
                    Err(e) => {
                        log::error!("execution {id}: cannot serialise its recovery result: {e}");
                        continue;
                    }
                }
            }
        };
        outbox.put(&id, &[], &body, true, None);
        recovered += 1;
    }
    recovered
}

/// The `result.json` copy, when it holds a whole result.
fn produced_result(dir: &Path) -> Option<Vec<u8>> {
    let body = std::fs::read(dir.join(crate::report::RESULT_FILE)).ok()?;
    serde_json::from_slice::<ExecutionResult>(&body).ok()?;
    Some(body)
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

    fn ledger(dir: &Path) -> Ledger {
        let state = crate::statedir::StateDir::lock(dir).unwrap();
        let journal = crate::journal::Journal::open(dir).unwrap();
        let outbox = crate::outbox::Outbox::open(&state, journal.clone()).unwrap();
        Ledger::new(journal, outbox, state, 1000)
    }

    #[test]
    fn leftover_becomes_an_errored_result_once() {
        let dir = tempfile::tempdir().unwrap();
        let exec_dir = dir.path().join("x");
        std::fs::create_dir_all(&exec_dir).unwrap();
        std::fs::write(exec_dir.join(OUTPUT_FILE), "a\nb\n").unwrap();
        let l = ledger(dir.path());
        l.journal()
            .record(&crate::journal::test_record("e1", &exec_dir))
            .unwrap();
        drop(l);
        // The runner dies; the next one opens the journal.
        let l = ledger(dir.path());
        assert_eq!(recover(&l, Duration::from_secs(1), 1000), 1);
        assert_eq!(l.outbox().depth(), 1);
        // Still live until the API acknowledges it; a second recovery in
        // the same run queues nothing more.
        assert_eq!(l.journal().leftovers().len(), 1);
        assert_eq!(recover(&l, Duration::from_secs(1), 1000), 0);
    }

    #[test]
    fn a_produced_result_is_resent_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let exec_dir = dir.path().join("x");
        std::fs::create_dir_all(&exec_dir).unwrap();
        let produced = br#"{"has_errored":false,"state":{"status":0,"logs":""}}"#;
        std::fs::write(exec_dir.join(crate::report::RESULT_FILE), produced).unwrap();
        let l = ledger(dir.path());
        l.journal()
            .record(&crate::journal::test_record("e2", &exec_dir))
            .unwrap();
        drop(l);
        let l = ledger(dir.path());
        assert_eq!(recover(&l, Duration::from_secs(1), 1000), 1);
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
