//! Crash recovery at start-up: every journal entry a previous run left
//! (started, not done) is an execution that was running, or whose result was
//! not yet acknowledged, when the runner died. What is left of its process
//! group is stopped (members proven to be the same processes by boot id and
//! start time, so a reused pid is never signalled), and its result is queued
//! unless the outbox already holds one, as *uncertain*: the outbox asks the
//! API whether it already has a result before sending (ledger.rs).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::process::{kill_process_group, Signal};

use crate::ids::ExecutionId;
use crate::journal::{self, Record};
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
        stop_leftovers(&record, kill_grace);
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

/// Whether the recorded process group is provably the execution's, and if
/// so, whether anything is left in it.
fn group_left(record: &Record) -> Option<rustix::process::Pid> {
    let (Some(pid), Some(start)) = (record.pid, record.pid_start) else {
        return None;
    };
    if record.boot_id.is_some() && record.boot_id != journal::boot_id() {
        return None;
    }
    let pgid = crate::cancel::pid_of(pid)?;
    match journal::process_start(pid) {
        // The leader itself: the same process, so the group is the same.
        Some(s) if s == start => Some(pgid),
        // The pid now belongs to another process, so the group number
        // (the leader's pid) may too: leave it alone.
        Some(_) => None,
        // The leader is gone. While any member of its group lives the
        // kernel does not reuse its pid, so a member started after the
        // leader is one of the execution's.
        None => group_members(pid, start).then_some(pgid),
    }
}

/// Whether some process is in group `pgid` and started at or after `start`.
fn group_members(pgid: u32, start: u64) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .any(|pid| {
            stat_fields(pid).is_some_and(|(group, started)| group == pgid && started >= start)
        })
}

/// The process group (field 5) and start time (field 22) of `pid`.
fn stat_fields(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    Some((fields.get(2)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

/// SIGTERM to what is left of the execution's process group, SIGKILL after
/// `grace`, whether or not the executor itself is still alive.
fn stop_leftovers(record: &Record, grace: Duration) {
    let Some(pgid) = group_left(record) else {
        return;
    };
    let (Some(pid), Some(start)) = (record.pid, record.pid_start) else {
        return;
    };
    log::warn!(
        "execution {}: its process group (executor pid {pid}) outlived the previous runner; stopping it",
        record.execution_id
    );
    let _ = kill_process_group(pgid, Signal::Term);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && group_members(pid, start) {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Whatever is left in the group (the leader may be gone, members not).
    if group_members(pid, start) {
        let _ = kill_process_group(pgid, Signal::Kill);
    }
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

    #[test]
    fn own_group_fields_are_read() {
        let me = std::process::id();
        let (group, start) = stat_fields(me).unwrap();
        assert_eq!(Some(start), journal::process_start(me));
        assert_eq!(
            group,
            rustix::process::getpgrp().as_raw_nonzero().get() as u32
        );
    }
}
