//! The benchmark suite (`make bench`, or `cargo bench --bench suite` after
//! `cargo build --workspace --release --bins --examples`). See
//! BENCHMARKS.md for the method behind every figure.
//!
//! It drives the release `flo-devserver` (long-poll 25 s) and `flo-runner`
//! binaries on loopback through flo-testkit, with `examples/noop-executor.rs`
//! as the executor, prints a table and writes every figure to
//! `bench/results.json`. Benchmarks are not tests: a missed target is
//! reported, not fatal. The exit status is 1 only when a measurement could
//! not be made at all.
//!
//! One module per measurement ([`fs`], [`signing`], [`overhead`],
//! [`throughput`] with [`limit`], [`logs`], [`idle`], [`peak`],
//! [`startup`], [`first_line`]), each with its typed results and the table
//! rows that read them; around them the plan ([`plan`]), statistics
//! ([`stats`]), the clock ([`clock`]), the processes ([`server`],
//! [`runner`], [`executor`]), and the report ([`table`], [`report`],
//! [`machine`]).
//!
//! Environment:
//! * `FLO_BENCH_ONLY=overhead,throughput,...` runs only those measurements
//!   (names: fs, signing, overhead, overhead_tmpfs, throughput,
//!   throughput_tmpfs, logs, idle, peak, startup, first_line);
//! * `FLO_BENCH_QUICK=1` shrinks every count (a smoke run, figures not
//!   comparable); quick or partial runs write `bench/results-partial.json`
//!   instead of `bench/results.json`;
//! * `FLO_BENCH_KEEP=1` keeps the `flo-bench-*` directories (runner logs,
//!   execution directories) instead of removing them at the end;
//! * `FLO_BENCH_RUNNER=/path/to/flo-runner` measures another build of the
//!   runner with the same dev server and executor;
//! * `TMPDIR` chooses where the runners' directories go.

mod clock;
mod dirs;
mod executor;
mod first_line;
mod fs;
mod idle;
mod limit;
mod logs;
mod machine;
mod overhead;
mod peak;
mod plan;
mod records;
mod report;
mod runner;
mod server;
mod signing;
mod startup;
mod stats;
mod table;
mod throughput;

use std::panic::{self, AssertUnwindSafe};
use std::time::Instant;

use flo_protocol::signing::Signer;
use rsa::RsaPrivateKey;

use machine::{read_trimmed, Machine};
use plan::{Plan, Switches};
use report::{Outcome, Report, Results};

/// A measurement's failure: what could not be done, and why.
type Res<T> = Result<T, String>;

fn main() {
    // `cargo bench` passes `--bench`. `cargo test --all-targets` (that is,
    // `make test`) runs this binary without it: benchmarks are not tests, so
    // it does nothing then (it would otherwise take minutes, in a debug
    // build, and overwrite bench/results.json with meaningless figures).
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("bench: not run (use `make bench` or `cargo bench --bench suite`)");
        return;
    }
    // FLO_BENCH_RUNNER measures another build of flo-runner (say, an older
    // commit's) against the same dev server and executor; flo-testkit
    // calls it FLO_TEST_RUNNER. Set before any thread starts.
    if let Some(runner) = std::env::var_os("FLO_BENCH_RUNNER") {
        std::env::set_var("FLO_TEST_RUNNER", runner);
    }
    let switches = Switches::from_env();
    let plan = Plan::new(switches.quick);
    clock::now_ms();
    let started = Instant::now();
    let load_at_start = read_trimmed("/proc/loadavg");
    eprintln!("bench: generating an RSA-2048 key");
    let key = match RsaPrivateKey::new(&mut rand::thread_rng(), 2048) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("bench: key generation failed: {e}");
            std::process::exit(1);
        }
    };
    let results = run_all(&switches, &plan, &key);
    dirs::finish(switches.keep);
    let rows = table::rows(&results);
    table::print(&rows);
    Report {
        machine: Machine::describe(),
        loadavg_at_start: load_at_start,
        quick: plan.quick,
        only: switches.only.map(|o| o.into_iter().collect()),
        suite_seconds: started.elapsed().as_secs_f64(),
        table: &rows,
        results: &results,
    }
    .write();
    eprintln!(
        "bench: suite finished in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    if !results.errors().is_empty() {
        std::process::exit(1);
    }
}

/// Every measurement `switches` wants, in the suite's order.
fn run_all(switches: &Switches, plan: &Plan, key: &RsaPrivateKey) -> Results {
    let signer = Signer::new(key);
    let shm = dirs::tmpfs_dir();
    let shm = shm.as_deref();
    let run = |name| Measure { switches, name };
    Results {
        fs: run("fs").of(|| fs::run(shm)),
        signing: run("signing").of(|| signing::run(plan, key)),
        overhead: run("overhead").of(|| overhead::run(plan, None)),
        overhead_tmpfs: shm.and_then(|s| run("overhead_tmpfs").of(|| overhead::run(plan, Some(s)))),
        throughput: run("throughput").of(|| throughput::run(plan, &signer, None)),
        throughput_tmpfs: shm
            .and_then(|s| run("throughput_tmpfs").of(|| throughput::run(plan, &signer, Some(s)))),
        logs: run("logs").of(|| logs::run(plan)),
        startup: run("startup").of(|| startup::run(plan)),
        first_line: run("first_line").of(first_line::run),
        idle: run("idle").of(|| idle::run(plan)),
        peak: run("peak").of(|| peak::run(plan)),
    }
}

/// One measurement by name, if wanted.
struct Measure<'a> {
    switches: &'a Switches,
    name: &'static str,
}

impl Measure<'_> {
    /// Runs `f`, timed; a panic (a kit helper's failed expectation) is a
    /// failed measurement like an error, and the suite goes on.
    fn of<T>(&self, f: impl FnOnce() -> Res<T>) -> Option<Outcome<T>> {
        let name = self.name;
        if !self.switches.wanted(name) {
            return None;
        }
        eprintln!("bench: {name} ...");
        let t0 = Instant::now();
        let result = panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
            Err(p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panicked".into()))
        });
        let outcome = match result {
            Ok(result) => Outcome::Done {
                result,
                bench_seconds: t0.elapsed().as_secs_f64(),
            },
            Err(error) => {
                eprintln!("bench: {name} FAILED: {error}");
                Outcome::Failed { error }
            }
        };
        eprintln!("bench: {name} done in {:.1} s", t0.elapsed().as_secs_f64());
        Some(outcome)
    }
}
