//! The integration tests, one binary (ripgrep's layout): each module drives
//! the real `flo-runner`, the real `flo-devserver` and real executor
//! subprocesses through `flo-testkit`, and asserts on what the server
//! received and what is on disk. `make test` builds the binaries first.
//!
//! Run one area with `cargo test --test integration ledger::`.

mod chaos;
mod config_cli;
mod containment;
mod deploy;
mod disk;
mod execution;
mod generations;
mod hostile;
mod identity_registration;
mod ledger;
mod operations;
mod sandbox;
mod supervision;
mod tls;
