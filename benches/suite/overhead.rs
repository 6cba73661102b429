//! Overhead per execution (measurement 1): enqueue → result on one runner
//! with one slot, minus the executor run alone, interleaved.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use flo_testkit::cpu_secs;
use serde::Serialize;

use crate::clock::Calibration;
use crate::dirs::{fs_type, temp_dir};
use crate::executor::{self, noop_flow, noop_trigger, ExecFiles};
use crate::plan::Plan;
use crate::records::Record;
use crate::runner;
use crate::server::{Enqueued, Server};
use crate::stats::{fig, Stats};
use crate::table::{Figure, Reading};
use crate::Res;

#[derive(Serialize)]
pub struct OverheadResult {
    pub overhead_ms: Stats,
    pub enqueue_to_result_ms: Option<Stats>,
    pub enqueue_to_claim_ms: Option<Stats>,
    pub claim_to_result_minus_executor_ms: Option<Stats>,
    pub executor_alone_ms: Option<Stats>,
    pub enqueue_round_trip_ms: Option<Stats>,
    pub poll_already_waiting: usize,
    pub runner_cpu_ms_per_execution: Option<f64>,
    pub clock: Clock,
    pub executions: usize,
    pub work_dir_fs: String,
    pub target: Target,
    pub pass: bool,
}

#[derive(Serialize)]
pub struct Clock {
    pub calibration: Calibration,
    pub drift_between_calibrations_ms: f64,
}

#[derive(Serialize)]
pub struct Target {
    pub median_ms: u32,
    pub p95_ms: u32,
}

/// What the bench saw of one execution; the server's records give the rest.
struct Sample {
    enqueued: Enqueued,
    executor_alone: f64,
}

pub fn run(plan: &Plan, base: Option<&Path>) -> Res<OverheadResult> {
    let mut server = Server::start()?;
    let mut runner = runner::start_registered(&server, 1, base)?;
    std::thread::sleep(Duration::from_millis(300));
    let direct_root = temp_dir(base)?;
    let files = ExecFiles::representative();
    let mut samples = Vec::new();
    let mut cpu0 = None;
    for i in 0..plan.overhead_warmup + plan.overhead_runs {
        if i == plan.overhead_warmup {
            cpu0 = cpu_secs(runner.pid());
        }
        // The executor alone, while the runner is idle with its poll held:
        // same machine state, interleaved with the runner's executions.
        let executor_alone = executor::run_directly(&direct_root, i, &files)?;
        // A gap, so the runner's next poll is waiting at the server (checked
        // below from the request log), as it is when work arrives at random.
        std::thread::sleep(Duration::from_millis(15 + (i % 7) as u64));
        let enqueued = server.enqueue(&noop_flow(), &noop_trigger())?;
        server.wait_completed(
            &enqueued.id,
            Duration::from_secs(30),
            Duration::from_millis(2),
        )?;
        if i >= plan.overhead_warmup {
            samples.push(Sample {
                enqueued,
                executor_alone,
            });
        }
    }
    let cpu = cpu_secs(runner.pid())
        .zip(cpu0)
        .map(|(b, a)| (b - a) * 1000.0 / plan.overhead_runs as f64);
    let drift = recalibrate(&mut server)?;
    let records = server.requests_after(0)?;
    runner.stop();
    let mut result = analyse(&server, &samples, &records)?;
    result.runner_cpu_ms_per_execution = cpu;
    result.clock.drift_between_calibrations_ms = drift;
    result.work_dir_fs = fs_type(runner.path());
    Ok(result)
}

/// Calibrates again and keeps the tighter of the two (both bound the same
/// offset: the clocks do not drift); returns how far the second moved.
fn recalibrate(server: &mut Server) -> Res<f64> {
    let before = server.clock;
    let after = server.calibrate()?;
    if after.uncertainty_ms <= before.uncertainty_ms {
        server.clock = after;
    }
    Ok(after.offset_ms - before.offset_ms)
}

/// Each sample's claim and result arrivals, on the bench clock.
fn analyse(server: &Server, samples: &[Sample], records: &[Record]) -> Res<OverheadResult> {
    let direct: Vec<f64> = samples.iter().map(|s| s.executor_alone).collect();
    let exec_median = Stats::of(&direct).map_or(0.0, |s| s.median);
    let by_id = claims_and_results(records);
    let polls: Vec<&Record> = records.iter().filter(|r| r.route == "poll").collect();
    let (mut total_ms, mut overhead, mut to_claim, mut after_claim) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut poll_waiting, mut enqueue_rtt) = (0, Vec::new());
    for s in samples {
        let e = &s.enqueued;
        let Some((Some(claim), Some(result))) = by_id.get(e.id.as_str()).copied() else {
            return Err(format!("no claim or result recorded for {}", e.id));
        };
        let claim_at = server.to_bench(claim.at_ms);
        let result_at = server.to_bench(result.at_ms);
        total_ms.push(result_at - e.sent);
        overhead.push(result_at - e.sent - exec_median);
        to_claim.push(claim_at - e.sent);
        after_claim.push(result_at - claim_at - exec_median);
        enqueue_rtt.push(e.answered - e.sent);
        // The poll that brought it: the last one to arrive before the claim.
        let poll = polls
            .iter()
            .filter(|p| p.seq < claim.seq)
            .max_by_key(|p| p.seq);
        if poll.is_some_and(|p| server.to_bench(p.at_ms) <= e.sent) {
            poll_waiting += 1;
        }
    }
    let o = Stats::of(&overhead).ok_or("no samples")?;
    Ok(OverheadResult {
        overhead_ms: o,
        enqueue_to_result_ms: Stats::of(&total_ms),
        enqueue_to_claim_ms: Stats::of(&to_claim),
        claim_to_result_minus_executor_ms: Stats::of(&after_claim),
        executor_alone_ms: Stats::of(&direct),
        enqueue_round_trip_ms: Stats::of(&enqueue_rtt),
        poll_already_waiting: poll_waiting,
        runner_cpu_ms_per_execution: None,
        clock: Clock {
            calibration: server.clock,
            drift_between_calibrations_ms: 0.0,
        },
        executions: samples.len(),
        work_dir_fs: String::new(),
        target: Target {
            median_ms: 5,
            p95_ms: 20,
        },
        pass: o.median <= 5.0 && o.p95 <= 20.0,
    })
}

/// Each execution's first claim (`/state`) and first result.
fn claims_and_results(records: &[Record]) -> HashMap<&str, (Option<&Record>, Option<&Record>)> {
    let mut by_id: HashMap<&str, (Option<&Record>, Option<&Record>)> = HashMap::new();
    for r in records {
        if let Some(id) = r.execution() {
            let e = by_id.entry(id).or_default();
            match r.route.as_str() {
                "state" if e.0.is_none() => e.0 = Some(r),
                "result" if e.1.is_none() => e.1 = Some(r),
                _ => {}
            }
        }
    }
    by_id
}

/// The Go runner's enqueue → result and CPU per execution (the figures).
const GO_ENQUEUE_TO_RESULT_MS: f64 = 5060.0;
pub const GO_CPU_MS_PER_EXECUTION: f64 = 18.8;

pub const FIGURES: &[Figure<OverheadResult>] = &[
    Figure {
        name: "1. overhead per execution",
        target: "median <= 5 ms, p95 <= 20 ms",
        go: "5.06 s enqueue->result",
        read: |o| {
            let s = o.overhead_ms.rounded();
            let total = fig(&o.enqueue_to_result_ms, |s| s.median);
            Reading::value(format!(
                "median {:.2} ms, p5 {:.2}, p95 {:.2} (n={})",
                s.median, s.p5, s.p95, s.n
            ))
            .pass(o.pass)
            .vs_go(format!(
                "enqueue->result {total:.1} ms: {:.0}x faster",
                GO_ENQUEUE_TO_RESULT_MS / total
            ))
        },
    },
    Figure {
        name: "   runner CPU per execution",
        target: "-",
        go: "18.8 ms",
        read: |o| {
            let cpu = o.runner_cpu_ms_per_execution.unwrap_or(f64::NAN);
            Reading::value(format!("{cpu:.2} ms (max_concurrent 1)"))
                .vs_go(format!("{:.1}x less", GO_CPU_MS_PER_EXECUTION / cpu))
        },
    },
];

pub const TMPFS_FIGURES: &[Figure<OverheadResult>] = &[Figure {
    name: "   same, work dirs on tmpfs",
    target: "(supplementary)",
    go: "-",
    read: |o| {
        let s = o.overhead_ms.rounded();
        Reading::value(format!(
            "median {:.2} ms, p95 {:.2}; runner CPU {:.2} ms/execution",
            s.median,
            s.p95,
            o.runner_cpu_ms_per_execution.unwrap_or(f64::NAN)
        ))
        .pass(o.pass)
    },
}];
