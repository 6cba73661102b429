//! What the integration tests and the benchmarks drive flo-runner with: the
//! binaries this build made ([`bins`]), the real `flo-devserver` on a
//! loopback port with its admin client ([`DevServer`]), the real `flo-runner`
//! in a directory of its own ([`RunnerSetup`], [`Runner`]), and the checks
//! tests make on what the server received ([`results`]) and on processes
//! ([`process`]).
//!
//! Nothing here builds anything: `make test` (or `cargo build --workspace
//! --bins --examples`) builds the binaries first, and a missing one is a
//! panic that says so.

mod bins;
mod http;
mod process;
mod results;
mod runner;
mod server;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub use bins::{devserver_bin, executor_path, noop_executor_path, runner_bin};
pub use http::{free_port, http_get};
pub use process::{alive, cpu_secs, mode, peak_rss_kib, sched_ns, script_executor, status_kib};
pub use results::{
    completed, error_of, execution_requests, lines_received, only_result, read_json, state_of,
    wait_line,
};
pub use runner::{Runner, RunnerSetup};
pub use server::{spawn_devserver_with, DevServer};

/// The registration code every test server accepts.
pub const CODE: &str = "test-code";

/// Waits for `cond` for at most `limit`.
pub fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A flow for the example executor.
pub fn flow(nodes: Value) -> Value {
    json!({ "nodes": nodes, "edges": [] })
}
