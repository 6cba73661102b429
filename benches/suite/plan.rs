//! What to run and how much of it: the counts (shrunk by `FLO_BENCH_QUICK`)
//! and the switches read from the environment.

use std::collections::HashSet;
use std::time::Duration;

/// Counts, shrunk by `FLO_BENCH_QUICK`.
pub struct Plan {
    pub quick: bool,
    pub overhead_runs: usize,
    pub overhead_warmup: usize,
    pub throughput_executions: usize,
    pub throughput_rounds: usize,
    pub log_lines: u64,
    pub log_rounds: usize,
    pub idle_secs: u64,
    pub idle_runners: usize,
    pub peak_bytes: u64,
    pub startup_runs: usize,
    pub signing_rounds: usize,
    pub signing_round_time: Duration,
}

impl Plan {
    pub fn new(quick: bool) -> Self {
        if quick {
            Plan {
                quick,
                overhead_runs: 30,
                overhead_warmup: 3,
                throughput_executions: 200,
                throughput_rounds: 1,
                log_lines: 20_000,
                log_rounds: 1,
                idle_secs: 10,
                idle_runners: 1,
                peak_bytes: 64 << 20,
                startup_runs: 3,
                signing_rounds: 2,
                signing_round_time: Duration::from_millis(200),
            }
        } else {
            Plan {
                quick,
                overhead_runs: 200,
                overhead_warmup: 10,
                throughput_executions: 2000,
                throughput_rounds: 3,
                log_lines: 200_000,
                log_rounds: 3,
                idle_secs: 60,
                idle_runners: 3,
                peak_bytes: 1 << 30,
                startup_runs: 10,
                signing_rounds: 5,
                signing_round_time: Duration::from_millis(600),
            }
        }
    }
}

/// The environment's choices: `FLO_BENCH_QUICK`, `FLO_BENCH_ONLY`,
/// `FLO_BENCH_KEEP`.
pub struct Switches {
    pub quick: bool,
    /// The measurements to run; `None` runs them all.
    pub only: Option<HashSet<String>>,
    pub keep: bool,
}

impl Switches {
    pub fn from_env() -> Self {
        let only = std::env::var("FLO_BENCH_ONLY")
            .ok()
            .filter(|v| !v.is_empty())
            .map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
        Switches {
            quick: flag("FLO_BENCH_QUICK"),
            only,
            keep: flag("FLO_BENCH_KEEP"),
        }
    }

    pub fn wanted(&self, name: &str) -> bool {
        self.only.as_ref().is_none_or(|o| o.contains(name))
    }
}

/// Set, and neither empty nor `0`.
fn flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}
