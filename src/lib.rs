//! flo-runner: a worker agent for the Flomation API.
//!
//! The pipeline, one module per stage (see `main.rs` for the wiring):
//! [`config`] → [`identity`] → [`registration`] → [`poller`] → [`pool`] →
//! [`workspace`] → [`executor`] → [`report`]. Side services: [`logship`]
//! (batches log lines), [`cancel`] (one status poller for every running
//! execution). [`devserver`] is the dev control plane.

pub mod fsutil;
pub mod identity;
pub mod ids;
pub mod protocol;
pub mod signing;
