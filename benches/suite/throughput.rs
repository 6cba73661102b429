//! Throughput with 8 slots (measurement 2), and the machine's limit for the
//! same work: rounds of executions all queued before the runner starts.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use flo_protocol::signing::Signer;
use flo_testkit::{cpu_secs, Runner};
use serde::Serialize;

use crate::dirs::fs_type;
use crate::executor::{first_execution_dir, noop_flow, noop_trigger, ExecFiles};
use crate::limit::{self, Work};
use crate::plan::Plan;
use crate::records::Record;
use crate::runner;
use crate::server::Server;
use crate::stats::{fig, Stats};
use crate::table::{Figure, Reading};
use crate::Res;

const SLOTS: u32 = 8;

#[derive(Serialize)]
pub struct ThroughputResult {
    pub executions_per_round: usize,
    pub work_dir_fs: String,
    pub slots: u32,
    pub runner_per_s: Stats,
    pub rounds: Rounds,
    pub runner_per_s_without_stalled_results: Option<Stats>,
    pub rounds_with_a_stalled_result: usize,
    pub limit_per_s: Option<Stats>,
    pub limit_used_the_runners_files: bool,
    pub ratio_runner_over_limit: Option<Stats>,
    pub window_s: Option<Stats>,
    pub signed_requests_per_execution: Option<Stats>,
    pub requests_per_execution_by_route: HashMap<String, f64>,
    pub runner_cpu_ms_per_execution: Option<Stats>,
    pub devserver_cpu_ms_per_execution: Option<Stats>,
    pub target: Target,
    pub pass: bool,
}

#[derive(Serialize)]
pub struct Target {
    pub per_s: u32,
}

/// Per-round figures, in round order.
#[derive(Default, Serialize)]
pub struct Rounds {
    pub runner_per_s: Vec<f64>,
    pub limit_per_s: Vec<f64>,
    pub window_s: Vec<f64>,
    pub results_per_second: Vec<Vec<u64>>,
    pub longest_gap_between_results_ms: Vec<f64>,
    pub last_execution: Vec<Option<LastExecution>>,
}

/// The execution whose result came last: its requests (route, ms after the
/// first claim, status).
#[derive(Serialize)]
pub struct LastExecution {
    pub id: String,
    pub requests_ms_after_first_claim: Vec<(String, f64, Option<u16>)>,
}

pub fn run(plan: &Plan, signer: &Signer, base: Option<&Path>) -> Res<ThroughputResult> {
    let mut runner = {
        // Create the identity (key generation) on a throwaway server first.
        let warm = Server::start()?;
        let mut runner = runner::start_registered(&warm, SLOTS, base)?;
        runner.stop();
        runner
    };
    let n = plan.throughput_executions;
    let measured = (0..plan.throughput_rounds)
        .map(|_| round_and_limit(&mut runner, signer, n, base))
        .collect::<Res<Vec<Measured>>>()?;
    let all = |f: fn(&Measured) -> f64| measured.iter().map(f).collect::<Vec<f64>>();
    let some =
        |f: fn(&Measured) -> Option<f64>| measured.iter().filter_map(f).collect::<Vec<f64>>();
    let r = Stats::of(&all(|m| m.timeline.rate)).ok_or("no rounds")?;
    Ok(ThroughputResult {
        executions_per_round: n,
        work_dir_fs: fs_type(runner.path()),
        slots: SLOTS,
        runner_per_s: r,
        runner_per_s_without_stalled_results: Stats::of(&all(|m| {
            m.timeline.rate_without_stragglers
        })),
        rounds_with_a_stalled_result: measured
            .iter()
            .filter(|m| m.timeline.stragglers > 0)
            .count(),
        limit_per_s: Stats::of(&all(|m| m.limit)),
        limit_used_the_runners_files: measured.iter().all(|m| m.files_from_runner),
        ratio_runner_over_limit: Stats::of(&all(|m| m.timeline.rate / m.limit)),
        window_s: Stats::of(&all(|m| m.timeline.window_s)),
        signed_requests_per_execution: Stats::of(&all(|m| m.timeline.signed_per_exec)),
        requests_per_execution_by_route: measured
            .last()
            .map(|m| m.timeline.requests_per_exec.clone())
            .unwrap_or_default(),
        runner_cpu_ms_per_execution: Stats::of(&some(|m| m.cpu_ms_per_exec)),
        devserver_cpu_ms_per_execution: Stats::of(&some(|m| m.server_cpu_ms_per_exec)),
        rounds: Rounds::of(measured),
        target: Target { per_s: 200 },
        pass: r.median >= 200.0,
    })
}

/// A round and the machine's limit for the same work.
struct Measured {
    timeline: Timeline,
    cpu_ms_per_exec: Option<f64>,
    server_cpu_ms_per_exec: Option<f64>,
    limit: f64,
    /// Whether the limit loop had the runner's own input files to copy.
    files_from_runner: bool,
}

fn round_and_limit(
    runner: &mut Runner,
    signer: &Signer,
    n: usize,
    base: Option<&Path>,
) -> Res<Measured> {
    let round = round(runner, n)?;
    let files_from_runner = round.files.is_some();
    let files = round.files.unwrap_or_else(ExecFiles::representative);
    let work = Work {
        files: &files,
        executions: n,
        signatures: (round.timeline.signed_per_exec * n as f64).round() as usize,
    };
    let limit = limit::round(signer, &work, base)?;
    Ok(Measured {
        timeline: round.timeline,
        cpu_ms_per_exec: round.cpu_ms_per_exec,
        server_cpu_ms_per_exec: round.server_cpu_ms_per_exec,
        limit,
        files_from_runner,
    })
}

impl Rounds {
    fn of(measured: Vec<Measured>) -> Rounds {
        let mut rounds = Rounds::default();
        for m in measured {
            let t = m.timeline;
            rounds.runner_per_s.push(t.rate);
            rounds.limit_per_s.push(m.limit);
            rounds.window_s.push(t.window_s);
            rounds.results_per_second.push(t.results_per_second);
            rounds.longest_gap_between_results_ms.push(t.longest_gap_ms);
            rounds.last_execution.push(t.last_execution);
        }
        rounds
    }
}

/// One round, as the processes saw it and as the request log tells it.
struct Round {
    timeline: Timeline,
    cpu_ms_per_exec: Option<f64>,
    server_cpu_ms_per_exec: Option<f64>,
    /// The input files of one of the round's executions, for the limit loop.
    files: Option<ExecFiles>,
}

/// One round on a fresh dev server: all `n` executions are queued before the
/// runner starts. (A fresh server each round because a runner stopped while
/// its long-poll is held leaves that poll open at the server, which would
/// hand the next execution queued to a connection nobody reads.)
fn round(runner: &mut Runner, n: usize) -> Res<Round> {
    let server = Server::start()?;
    let seq0 = server.max_seq()?;
    let mut ids = HashSet::new();
    for _ in 0..n {
        ids.insert(server.enqueue(&noop_flow(), &noop_trigger())?.id);
    }
    let server_pid = server.kit.pid();
    let server_cpu0 = cpu_secs(server_pid);
    runner::restart(runner, &server, SLOTS);
    let pid = runner.pid();
    let cpu0 = cpu_secs(pid);
    let deadline = Instant::now() + Duration::from_secs(600);
    let (cpu1, server_cpu1) = loop {
        std::thread::sleep(Duration::from_millis(200));
        let done = server
            .executions()?
            .iter()
            .filter(|e| {
                e["status"] == "completed" && e["id"].as_str().is_some_and(|i| ids.contains(i))
            })
            .count();
        if done == n {
            break (cpu_secs(pid), cpu_secs(server_pid));
        }
        if Instant::now() > deadline {
            return Err(format!("throughput: only {done} of {n} completed in 600 s"));
        }
    };
    let records = server.requests_after(seq0)?;
    runner.stop();
    let mine: Vec<&Record> = records
        .iter()
        .filter(|r| match r.execution() {
            Some(id) => ids.contains(id),
            None => r.route == "poll",
        })
        .collect();
    let per_exec =
        |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| (b - a) * 1000.0 / n as f64);
    Ok(Round {
        timeline: Timeline::of(&mine, n),
        cpu_ms_per_exec: per_exec(cpu0, cpu1),
        server_cpu_ms_per_exec: per_exec(server_cpu0, server_cpu1),
        files: first_execution_dir(runner.path()).and_then(|d| ExecFiles::from_dir(&d)),
    })
}

/// What a round's request log says, on the server's clock: the window from
/// the first claim to the last result, and how results arrived within it.
struct Timeline {
    rate: f64,
    window_s: f64,
    signed_per_exec: f64,
    requests_per_exec: HashMap<String, f64>,
    /// Results acknowledged in each second of the window, and the longest
    /// time without any (stalls show here).
    results_per_second: Vec<u64>,
    longest_gap_ms: f64,
    last_execution: Option<LastExecution>,
    /// The rate when results that came more than 1 s after all the others
    /// (a stalled request) are left out, and how many were.
    rate_without_stragglers: f64,
    stragglers: usize,
}

impl Timeline {
    fn of(mine: &[&Record], n: usize) -> Timeline {
        let on = |route: &'static str| mine.iter().filter(move |r| r.route == route);
        let first = on("state").map(|r| r.at_ms).fold(f64::INFINITY, f64::min);
        let last = on("result")
            .map(|r| r.at_ms)
            .fold(f64::NEG_INFINITY, f64::max);
        let window_ms = (last - first).max(1.0);
        let mut result_times: Vec<f64> = on("result").map(|r| r.at_ms).collect();
        result_times.sort_by(|a, b| a.total_cmp(b));
        let mut kept = result_times.len();
        while kept > 1 && result_times[kept - 1] - result_times[kept - 2] > 1000.0 {
            kept -= 1;
        }
        let kept_end = result_times
            .get(kept.wrapping_sub(1))
            .copied()
            .unwrap_or(last);
        let in_window: Vec<&Record> = mine
            .iter()
            .copied()
            .filter(|r| r.at_ms >= first && r.at_ms <= last)
            .collect();
        let mut per_route: HashMap<String, f64> = HashMap::new();
        for r in &in_window {
            *per_route.entry(r.route.clone()).or_default() += 1.0 / n as f64;
        }
        let signed = in_window.iter().filter(|r| r.signature.is_some()).count();
        Timeline {
            rate: n as f64 / (window_ms / 1000.0),
            window_s: window_ms / 1000.0,
            signed_per_exec: signed as f64 / n as f64,
            requests_per_exec: per_route,
            results_per_second: per_second(&result_times, first, window_ms),
            longest_gap_ms: longest_gap(first, &result_times),
            last_execution: last_execution(mine, first),
            rate_without_stragglers: kept as f64 / ((kept_end - first).max(1.0) / 1000.0),
            stragglers: result_times.len() - kept,
        }
    }
}

/// How many of the (sorted) `times` fell in each second from `first`.
fn per_second(times: &[f64], first: f64, window_ms: f64) -> Vec<u64> {
    let mut counts = vec![0u64; (window_ms / 1000.0) as usize + 1];
    for t in times {
        if let Some(slot) = counts.get_mut(((t - first) / 1000.0) as usize) {
            *slot += 1;
        }
    }
    counts
}

/// The longest time from `first` through the sorted `times` without one.
fn longest_gap(first: f64, times: &[f64]) -> f64 {
    std::iter::once(first)
        .chain(times.iter().copied())
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(0.0, f64::max)
}

fn last_execution(mine: &[&Record], first: f64) -> Option<LastExecution> {
    let id = mine
        .iter()
        .filter(|r| r.route == "result")
        .max_by(|a, b| a.at_ms.total_cmp(&b.at_ms))
        .and_then(|r| r.execution())?;
    let requests = mine
        .iter()
        .filter(|r| r.execution() == Some(id))
        .map(|r| (r.route.clone(), r.at_ms - first, r.status))
        .collect();
    Some(LastExecution {
        id: id.to_string(),
        requests_ms_after_first_claim: requests,
    })
}

/// The Go runner's executions per second (the figure).
const GO_PER_S: f64 = 1.58;

pub const FIGURES: &[Figure<ThroughputResult>] = &[
    Figure {
        name: "2. throughput, 8 slots",
        target: ">= 200/s",
        go: "1.58/s",
        read: |t| {
            let s = t.runner_per_s.rounded();
            Reading::value(format!(
                "{:.0}/s (min {:.0}, max {:.0}, {} rounds of {}){}",
                s.median,
                s.min,
                s.max,
                s.n,
                t.executions_per_round,
                stall_note(t)
            ))
            .pass(t.pass)
            .vs_go(format!("{:.0}x", s.median / GO_PER_S))
        },
    },
    Figure {
        name: "   machine limit (same work)",
        target: "-",
        go: "-",
        read: |t| {
            let ratio = |pick| fig(&t.ratio_runner_over_limit, pick);
            Reading::value(format!(
                "{:.0}/s; runner/limit {:.2} (min {:.2}, max {:.2}); {:.2} signatures/execution",
                fig(&t.limit_per_s, |s| s.median),
                ratio(|s| s.median),
                ratio(|s| s.min),
                ratio(|s| s.max),
                fig(&t.signed_requests_per_execution, |s| s.median)
            ))
        },
    },
    Figure {
        name: "   runner CPU per execution",
        target: "-",
        go: "18.8 ms",
        read: |t| {
            let cpu = fig(&t.runner_cpu_ms_per_execution, |s| s.median);
            Reading::value(format!("{cpu:.2} ms (8 slots)")).vs_go(format!(
                "{:.1}x less",
                crate::overhead::GO_CPU_MS_PER_EXECUTION / cpu
            ))
        },
    },
];

pub const TMPFS_FIGURES: &[Figure<ThroughputResult>] = &[Figure {
    name: "   same, work dirs on tmpfs",
    target: "(supplementary)",
    go: "-",
    read: |t| {
        let s = t.runner_per_s.rounded();
        Reading::value(format!(
            "{:.0}/s (min {:.0}, max {:.0}){}; limit {:.0}/s; ratio {:.2}; runner CPU {:.2} ms/execution",
            s.median,
            s.min,
            s.max,
            stall_note(t),
            fig(&t.limit_per_s, |s| s.median),
            fig(&t.ratio_runner_over_limit, |s| s.median),
            fig(&t.runner_cpu_ms_per_execution, |s| s.median)
        ))
        .pass(t.pass)
    },
}];

/// "; 1 round(s) with a stalled result: 320/s without it" when a round had
/// a result arriving more than 1 s after all the others.
fn stall_note(t: &ThroughputResult) -> String {
    match t.rounds_with_a_stalled_result {
        0 => String::new(),
        n => format!(
            "; {n} round(s) with a stalled result: {:.0}/s without it",
            fig(&t.runner_per_s_without_stalled_results, |s| s.median)
        ),
    }
}
