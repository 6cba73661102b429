//! flo-runner: a worker agent for the Flomation API.
//!
//! The pipeline starts in [`Runner::start`] (`runner/mod.rs`), one module
//! per stage: `config` → `identity` → `registration` → `poller` → `pool` →
//! `job` (claim, `workspace`, `executor`, `report` through the `ledger`).
//! Beside it: `logship` (batches log lines), `cancel` (one status poller and
//! the stop timers for every running execution), `disklimit`, `outbox` (the
//! reports not yet delivered), `health` and `metrics`, and `supervise` (every
//! process an execution starts, from spawn to reap, escaped or not);
//! `sandbox` decides what an executor may see and do. `shutdown` is the one
//! stop signal they all wait on.
//!
//! The public surface is what `main.rs` needs: [`Runner`], [`config`],
//! [`logging`], [`check`] and [`health`]. The wire types, ids and signing
//! come from `flo_protocol`, shared with the dev server.

// Inside the runner they read as its own modules (`crate::protocol::…`).
use flo_protocol::{ids, protocol, signing};

mod api;
mod backoff;
mod cancel;
mod check;
pub mod config;
mod dirwalk;
mod disklimit;
mod executor;
mod failpoint;
mod flowdir;
mod fsutil;
mod groupsync;
mod health;
mod identity;
mod job;
mod journal;
mod ledger;
pub mod logging;
mod logship;
mod metrics;
mod net;
mod outbox;
mod output;
mod poller;
mod pool;
mod recovery;
mod registration;
mod report;
mod resolver;
mod retention;
mod runner;
mod sandbox;
mod shutdown;
mod statedir;
mod supervise;
mod sync;
mod workspace;

/// `flo-runner check`: checks the configuration, key, directories, executor
/// and API, printing a checklist to `out`; `true` when everything passed.
pub use check::run as check;
/// `flo-runner health`: reads the heartbeat of the runner using a state
/// directory; `Ok` says it is healthy, `Err` why not.
pub use health::{check as health, Healthy, Unhealthy};
pub use runner::{RunError, Runner, SpawnError};
/// Call first in `main`: flows of the runner's user must not read its memory.
pub use sandbox::make_non_dumpable;
