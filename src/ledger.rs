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

use crate::api::Api;
use crate::flowdir::FlowDir;
use crate::ids::ExecutionId;
use crate::journal::{Journal, Record};
use crate::outbox::{Durability, Outbox, Reservation};
use crate::protocol::ExecutionResult;
use crate::report::RESULT_FILE;
use crate::statedir::StateDir;
use crate::supervise::Spawned;

/// Why an execution cannot begin.
#[derive(Debug, thiserror::Error)]
pub enum BeginError {
    /// The same execution is running here (or its result is not yet
    /// acknowledged): the API handed it out twice. Never run twice.
    #[error(
        "it is already running on this runner (the API handed it out twice); not running it again"
    )]
    AlreadyLive,
    #[error("its journal entry cannot be written: {0}")]
    Unwritable(#[source] io::Error),
}

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
    /// The result's outbox file, made while the executor runs.
    reservation: Option<Reservation>,
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
    pub fn begin(&self, record: Record) -> Result<Open<'_>, BeginError> {
        if self.journal.is_live(&record.execution_id) {
            return Err(BeginError::AlreadyLive);
        }
        // The journal file is open already, so its append may succeed where
        // nothing else would (no permission, no space): check first.
        if !self.state.check() {
            return Err(BeginError::Unwritable(io::Error::other(
                self.state
                    .problem()
                    .unwrap_or_else(|| "the state directory cannot be written".into()),
            )));
        }
        match self.journal.record(&record) {
            Ok(()) => {
                crate::failpoint::hit("ledger.begun");
                Ok(Open {
                    ledger: self,
                    record,
                    reservation: None,
                })
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(BeginError::AlreadyLive),
            Err(e) => {
                self.state.write_failed("journal", &e);
                Err(BeginError::Unwritable(e))
            }
        }
    }

    /// Reports an execution that was never begun (refused before its claim:
    /// bad ids, an unreadable pending execution).
    pub fn report_unjournaled(&self, api: &Api, id: &ExecutionId, result: &ExecutionResult) {
        self.deliver(api, id, &[], result, None, None);
    }

    fn deliver(
        &self,
        api: &Api,
        id: &ExecutionId,
        unsent_lines: &[String],
        result: &ExecutionResult,
        dir: Option<&FlowDir>,
        reservation: Option<Reservation>,
    ) {
        let body = match serde_json::to_vec(result) {
            Ok(b) => b,
            Err(e) => {
                log::error!("execution {id}: cannot serialise the result: {e}");
                return;
            }
        };
        let batches = crate::logship::batch_bodies(unsent_lines, self.log_batch_lines);
        let durability = self.outbox.put(id, &batches, &body, false, reservation);
        if durability == Durability::Durable {
            crate::failpoint::hit("ledger.result-durable");
        }
        // A copy for operators, never a link: the outbox file must not be
        // reachable (or writable) from the execution directory.
        if let Some(dir) = dir {
            if let Err(e) = dir.replace(RESULT_FILE, &body) {
                log::warn!("execution {id}: cannot keep a copy of the result: {e}");
            }
        }
        self.outbox.flush(api, id);
    }
}

impl Open<'_> {
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
        // While the executor runs: its result's file and the directory
        // sync for its name, so the result itself needs one fdatasync.
        if let Ok(id) = ExecutionId::parse(&self.record.execution_id) {
            self.reservation = self.ledger.outbox.reserve(&id);
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
        dir: Option<&FlowDir>,
    ) {
        let Ok(id) = ExecutionId::parse(&self.record.execution_id) else {
            return;
        };
        self.ledger
            .deliver(api, &id, unsent_lines, result, dir, self.reservation);
    }
}
