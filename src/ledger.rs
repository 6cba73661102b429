//! The ledger: the durable sequence of one execution, over the journal and
//! the outbox. Its order is what makes every crash point safe:
//!
//! 1. [`Ledger::begin`]: the journal's `start` line is durable before the
//!    claim goes out, so an execution the server counts as ours is one the
//!    next start knows about.
//! 2. [`Open::spawned`]: the executor's pid, start time and cgroup (recovery
//!    stops what is left of its processes).
//! 3. [`Open::settle`]: the result is durable in the outbox (file synced
//!    before its rename, the directory after) before the first POST. If the
//!    outbox cannot be written, the result is kept in memory and sent until
//!    acknowledged.
//! 4. On a 2xx (in the outbox): `done` is durable in the journal before the
//!    outbox entry is removed.
//!
//! What a crash leaves, and what the next start does (`recovery.rs`):
//! - `start` without a result in the outbox: the result is rebuilt (the
//!   `result.json` copy if whole, else errored: the runner stopped) and
//!   queued as *uncertain*: before it is sent, the status route is asked
//!   whether the API already has a result, so a delivered result is never
//!   contradicted.
//! - a result in the outbox: sent, after the same question (the previous run
//!   may have sent it and died before its `done`).
//! - `done`: nothing to do; a leftover outbox file is asked about and dropped.

use std::io;
use std::path::Path;

use crate::api::Api;
use crate::fsutil;
use crate::ids::ExecutionId;
use crate::journal::{Journal, Record};
use crate::outbox::{Durability, Outbox};
use crate::protocol::ExecutionResult;
use crate::report::RESULT_FILE;
use crate::statedir::StateDir;
use crate::supervise::Spawned;

#[derive(Clone)]
pub struct Ledger {
    journal: Journal,
    outbox: Outbox,
    state: StateDir,
    log_batch_lines: usize,
}

/// One execution between its durable start and its result.
pub struct Open<'a> {
    ledger: &'a Ledger,
    record: Record,
}

impl Ledger {
    pub fn new(journal: Journal, outbox: Outbox, state: StateDir, log_batch_lines: usize) -> Self {
        Self {
            journal,
            outbox,
            state,
            log_batch_lines,
        }
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn state(&self) -> &StateDir {
        &self.state
    }

    /// Step 1: the journal's `start` line, durable. Only once this returns
    /// `Ok` may the execution be claimed.
    pub fn begin(&self, record: Record) -> io::Result<Open<'_>> {
        // The journal file is open already, so its append may succeed where
        // nothing else would (no permission, no space): check first.
        if !self.state.check() {
            return Err(io::Error::other(
                self.state
                    .problem()
                    .unwrap_or_else(|| "the state directory cannot be written".into()),
            ));
        }
        match self.journal.record(&record) {
            Ok(()) => {
                crate::failpoint::hit("ledger.begun");
                Ok(Open {
                    ledger: self,
                    record,
                })
            }
            Err(e) => {
                self.state.write_failed("journal", &e);
                Err(e)
            }
        }
    }

    /// Reports an execution that was never begun (refused before its claim:
    /// bad ids, an unreadable pending execution).
    pub fn report_unjournaled(&self, api: &Api, id: &ExecutionId, result: &ExecutionResult) {
        self.deliver(api, id, &[], result, None);
    }

    fn deliver(
        &self,
        api: &Api,
        id: &ExecutionId,
        unsent_lines: &[String],
        result: &ExecutionResult,
        dir: Option<&Path>,
    ) {
        let body = match serde_json::to_vec(result) {
            Ok(b) => b,
            Err(e) => {
                log::error!("execution {id}: cannot serialise the result: {e}");
                return;
            }
        };
        let batches = crate::logship::batch_bodies(unsent_lines, self.log_batch_lines);
        let durability = self.outbox.put(id, &batches, &body, false);
        if durability == Durability::Durable {
            crate::failpoint::hit("ledger.result-durable");
        }
        // A copy for operators, never a link: the outbox file must not be
        // reachable (or writable) from the execution directory.
        if let Some(dir) = dir {
            if let Err(e) = fsutil::replace(&dir.join(RESULT_FILE), &body, fsutil::FILE_MODE) {
                log::warn!("execution {id}: cannot keep a copy of the result: {e}");
            }
        }
        self.outbox.flush(api, id);
    }
}

impl Open<'_> {
    pub fn id(&self) -> &str {
        &self.record.execution_id
    }

    /// Step 2: the executor is running: its identity (pid, start time,
    /// cgroup; not synced: a pid means nothing after a reboot, and a runner
    /// crash keeps the page cache).
    pub fn spawned(&mut self, spawned: &Spawned) {
        self.record.pid = Some(spawned.pid);
        self.record.pid_start = spawned.start;
        self.record.cgroup = spawned.cgroup.clone();
        if let Err(e) = self.ledger.journal.update(&self.record) {
            log::warn!(
                "execution {}: cannot record its executor's pid: {e}",
                self.record.execution_id
            );
        }
    }

    /// The claim was refused: it is not ours, nothing will be reported.
    pub fn abandon(self) {
        let Ok(id) = ExecutionId::parse(&self.record.execution_id) else {
            return;
        };
        if let Err(e) = self.ledger.journal.done(&id) {
            self.ledger.state.write_failed("journal", &e);
        }
    }

    /// Steps 3 and 4: the result (and the log lines the shipper could not
    /// send) durable in the outbox, a copy in the execution directory, then
    /// the first delivery attempt on this thread; the outbox sender retries
    /// what does not go through, and finishes the journal entry on the 2xx.
    pub fn settle(
        self,
        api: &Api,
        unsent_lines: &[String],
        result: &ExecutionResult,
        dir: Option<&Path>,
    ) {
        let Ok(id) = ExecutionId::parse(&self.record.execution_id) else {
            return;
        };
        self.ledger.deliver(api, &id, unsent_lines, result, dir);
    }
}
