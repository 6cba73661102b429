//! flo-runner: a worker agent for the Flomation API.
//!
//! The pipeline, one module per stage (see `main.rs` for the wiring):
//! [`config`] → [`identity`] → [`registration`] → [`poller`] → [`pool`] →
//! [`workspace`] → [`executor`] → [`report`]. Side services: [`logship`]
//! (batches log lines), [`cancel`] (one status poller for every running
//! execution), [`supervise`] (every process an execution starts, from spawn
//! to reap, escaped or not). [`sandbox`] decides what an executor may see
//! and do. The wire types, ids and signing come from `flo_protocol`, shared
//! with the dev server.

// Inside the runner they read as its own modules (`crate::protocol::…`).
pub use flo_protocol::{ids, protocol, signing};

pub mod api;
pub mod backoff;
pub mod cancel;
pub mod check;
pub mod config;
pub mod dirwalk;
pub mod disklimit;
pub mod executor;
pub mod failpoint;
pub mod flowdir;
pub mod fsutil;
pub mod groupsync;
pub mod health;
pub mod identity;
pub mod job;
pub mod journal;
pub mod ledger;
pub mod logging;
pub mod logship;
pub mod metrics;
pub mod net;
pub mod outbox;
pub mod output;
pub mod poller;
pub mod pool;
pub mod recovery;
pub mod registration;
pub mod report;
pub mod retention;
pub mod sandbox;
pub mod shutdown;
pub mod statedir;
pub mod supervise;
pub mod sync;
pub mod workspace;
