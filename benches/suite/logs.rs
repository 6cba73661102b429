//! Log streaming (measurement 3): executions printing many lines as fast
//! as they can; lines per request, every line delivered in order, the
//! runner's CPU.

use std::time::Duration;

use flo_testkit::cpu_secs;
use serde::Serialize;
use serde_json::{json, Value};

use crate::plan::Plan;
use crate::runner;
use crate::server::Server;
use crate::stats::{fig, Stats};
use crate::table::{Figure, Reading};
use crate::Res;

pub const LINE_BYTES: usize = 100;

#[derive(Serialize)]
pub struct LogsResult {
    pub lines_printed_per_round: u64,
    pub line_bytes: usize,
    pub rounds: usize,
    pub lines_per_request: Stats,
    pub lines_delivered: Option<Stats>,
    pub lines_dropped_by_runner_total: u64,
    pub lines_missing_unexplained_total: u64,
    pub in_order: bool,
    pub log_requests_total: u64,
    pub runner_cpu_ms_per_100k_lines: Option<Stats>,
    pub enqueue_to_result_s: Option<Stats>,
    pub target: Target,
    pub pass: bool,
}

#[derive(Serialize)]
pub struct Target {
    pub lines_per_request: u32,
    pub every_line_in_order: bool,
}

/// The lines a server received, checked against `0..expected`.
pub struct Delivery {
    pub delivered: u64,
    /// Accounted for by the runner's `[flo-runner: N lines dropped]` markers.
    pub dropped: u64,
    pub in_order: bool,
    /// Missing without a marker, or malformed.
    pub unexplained: u64,
}

/// Checks the lines the server got against `0..expected` (line `i` starts
/// with `i` in 10 digits), allowing the runner's dropped-lines markers.
pub fn check_lines(lines: &[Value], expected: u64, line_bytes: usize) -> Delivery {
    let (mut delivered, mut dropped, mut in_order) = (0u64, 0u64, true);
    let mut next = 0u64;
    let mut bad = 0u64;
    for l in lines {
        let s = l.as_str().unwrap_or("");
        if let Some(n) = s
            .strip_prefix("[flo-runner: ")
            .and_then(|r| r.strip_suffix(" lines dropped]"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            dropped += n;
            continue;
        }
        let Some(num) = s.get(..10).and_then(|d| d.parse::<u64>().ok()) else {
            bad += 1;
            continue;
        };
        if s.len() != line_bytes.max(11) {
            bad += 1;
        }
        if num < next {
            in_order = false;
        }
        next = num + 1;
        delivered += 1;
    }
    let missing = expected.saturating_sub(delivered);
    Delivery {
        delivered,
        dropped,
        in_order,
        unexplained: missing.saturating_sub(dropped) + bad,
    }
}

/// The flow that makes the noop executor print `lines` numbered lines.
pub fn printing(lines: u64) -> Value {
    json!({"print_lines": lines, "line_bytes": LINE_BYTES})
}

pub fn run(plan: &Plan) -> Res<LogsResult> {
    let server = Server::start()?;
    let mut runner = runner::start_settled(&server, 1)?;
    let lines = plan.log_lines;
    let rounds = (0..plan.log_rounds)
        .map(|_| round(&server, runner.pid(), lines))
        .collect::<Res<Vec<Round>>>()?;
    runner.stop();
    let all = |f: fn(&Round) -> f64| rounds.iter().map(f).collect::<Vec<f64>>();
    let total = |f: fn(&Round) -> u64| rounds.iter().map(f).sum::<u64>();
    let in_order = rounds.iter().all(|r| r.delivery.in_order);
    let dropped = total(|r| r.delivery.dropped);
    let unexplained = total(|r| r.delivery.unexplained);
    let p = Stats::of(&all(|r| r.per_request)).ok_or("no rounds")?;
    Ok(LogsResult {
        lines_printed_per_round: lines,
        line_bytes: LINE_BYTES,
        rounds: plan.log_rounds,
        lines_per_request: p,
        lines_delivered: Stats::of(&all(|r| r.delivery.delivered as f64)),
        lines_dropped_by_runner_total: dropped,
        lines_missing_unexplained_total: unexplained,
        in_order,
        log_requests_total: total(|r| r.log_requests),
        runner_cpu_ms_per_100k_lines: Stats::of(&all(|r| r.cpu_ms_per_100k)),
        enqueue_to_result_s: Stats::of(&all(|r| r.enqueue_to_result_s)),
        target: Target {
            lines_per_request: 100,
            every_line_in_order: true,
        },
        pass: p.median >= 100.0 && in_order && dropped == 0 && unexplained == 0,
    })
}

/// One execution printing `lines` lines, as the runner with `pid` ran it.
struct Round {
    per_request: f64,
    cpu_ms_per_100k: f64,
    enqueue_to_result_s: f64,
    delivery: Delivery,
    log_requests: u64,
}

fn round(server: &Server, pid: i32, lines: u64) -> Res<Round> {
    let seq0 = server.max_seq()?;
    let c0 = cpu_secs(pid).ok_or("no /proc stat")?;
    let enqueued = server.enqueue(&printing(lines), &Value::Null)?;
    let id = enqueued.id.as_str();
    server.wait_listed_completed(id, Duration::from_secs(300), Duration::from_millis(20))?;
    let c1 = cpu_secs(pid).ok_or("no /proc stat")?;
    let e = server.execution(id)?;
    let records = server.requests_after(seq0)?;
    let result_at = records
        .iter()
        .filter(|r| r.is("result", id))
        .map(|r| server.to_bench(r.at_ms))
        .fold(f64::NEG_INFINITY, f64::max);
    let got = e["logs"].as_array().cloned().unwrap_or_default();
    let batches = e["log_batches"].as_u64().unwrap_or(0).max(1);
    Ok(Round {
        per_request: (got.len() as f64) / batches as f64,
        cpu_ms_per_100k: (c1 - c0) * 1000.0 * 100_000.0 / lines as f64,
        enqueue_to_result_s: (result_at - enqueued.sent) / 1000.0,
        delivery: check_lines(&got, lines, LINE_BYTES),
        log_requests: records.iter().filter(|r| r.is("logs", id)).count() as u64,
    })
}

pub const FIGURES: &[Figure<LogsResult>] = &[
    Figure {
        name: "3. log lines per request",
        target: ">= 100",
        go: "1",
        read: |l| {
            let s = l.lines_per_request.rounded();
            Reading::value(format!("{:.1} (min {:.1})", s.median, s.min))
                .pass(s.median >= 100.0)
                .vs_go(format!("{:.0}x fewer requests", s.median))
        },
    },
    Figure {
        name: "   every line, in order",
        target: "all, in order",
        go: "all held in memory",
        read: |l| {
            let (dropped, unexplained) = (
                l.lines_dropped_by_runner_total,
                l.lines_missing_unexplained_total,
            );
            Reading::value(format!(
                "in order: {}; delivered median {:.0} of {}; dropped (marked) {dropped}; unexplained {unexplained}",
                if l.in_order { "yes" } else { "NO" },
                fig(&l.lines_delivered, |s| s.median),
                l.lines_printed_per_round
            ))
            .pass(l.in_order && dropped == 0 && unexplained == 0)
        },
    },
    Figure {
        name: "   runner CPU per 100k lines",
        target: "report",
        go: "-",
        read: |l| {
            let cpu = |pick| fig(&l.runner_cpu_ms_per_100k_lines, pick);
            Reading::value(format!(
                "{:.0} ms (min {:.0}, max {:.0})",
                cpu(|s| s.median),
                cpu(|s| s.min),
                cpu(|s| s.max)
            ))
        },
    },
];
