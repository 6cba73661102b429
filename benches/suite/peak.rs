//! Peak RSS while the executor prints 1 GiB (measurement 4).

use std::fs;
use std::time::{Duration, Instant};

use flo_testkit::{cpu_secs, status_kib};
use serde::Serialize;
use serde_json::Value;

use crate::executor::first_execution_dir;
use crate::logs::{check_lines, printing, LINE_BYTES};
use crate::plan::Plan;
use crate::runner;
use crate::server::Server;
use crate::table::{Figure, Reading};
use crate::Res;

/// Up to this many lines the execution's record is fetched and checked.
const CHECKED_LINES: u64 = 1_000_000;

#[derive(Serialize)]
pub struct PeakResult {
    pub bytes_printed: u64,
    pub lines_printed: u64,
    pub peak_rss_mib: f64,
    pub rss_before_mib: f64,
    pub wall_s: f64,
    pub runner_cpu_s: f64,
    pub delivery: Delivery,
    pub output_log_bytes: u64,
    pub target: Target,
    pub pass: bool,
}

#[derive(Serialize)]
pub struct Target {
    pub peak_rss_mib: u32,
}

#[derive(Serialize)]
#[serde(untagged)]
pub enum Delivery {
    Checked {
        lines_delivered: u64,
        lines_dropped_by_runner: u64,
        lines_missing_unexplained: u64,
        in_order: bool,
        log_requests: Value,
    },
    NotChecked(&'static str),
}

pub fn run(plan: &Plan) -> Res<PeakResult> {
    let server = Server::start()?;
    let mut runner = runner::start_settled(&server, 1)?;
    let pid = runner.pid();
    let before = status_kib(pid, "VmHWM").unwrap_or(0);
    let lines = plan.peak_bytes / (LINE_BYTES as u64 + 1);
    let c0 = cpu_secs(pid).unwrap_or(0.0);
    let t0 = Instant::now();
    let id = server.enqueue(&printing(lines), &Value::Null)?.id;
    server.wait_listed_completed(&id, Duration::from_secs(900), Duration::from_millis(100))?;
    let wall = t0.elapsed().as_secs_f64();
    let hwm = status_kib(pid, "VmHWM").ok_or("no VmHWM")?;
    let c1 = cpu_secs(pid).unwrap_or(0.0);
    let delivery = delivery(&server, &id, lines)?;
    runner.stop();
    let output_log = first_execution_dir(runner.path())
        .and_then(|d| fs::metadata(d.join("output.log")).ok())
        .map_or(0, |m| m.len());
    let peak = hwm as f64 / 1024.0;
    Ok(PeakResult {
        bytes_printed: lines * 101,
        lines_printed: lines,
        peak_rss_mib: peak,
        rss_before_mib: before as f64 / 1024.0,
        wall_s: wall,
        runner_cpu_s: c1 - c0,
        delivery,
        output_log_bytes: output_log,
        target: Target { peak_rss_mib: 32 },
        pass: peak <= 32.0,
    })
}

/// The execution's record holds every line delivered: fine to fetch for a
/// small run, gigabytes of JSON for the full one (delivery is measurement
/// 3's business).
fn delivery(server: &Server, id: &str, lines: u64) -> Res<Delivery> {
    if lines > CHECKED_LINES {
        return Ok(Delivery::NotChecked("not checked for this size (see logs)"));
    }
    let e = server.execution(id)?;
    let got = e["logs"].as_array().cloned().unwrap_or_default();
    let d = check_lines(&got, lines, LINE_BYTES);
    Ok(Delivery::Checked {
        lines_delivered: d.delivered,
        lines_dropped_by_runner: d.dropped,
        lines_missing_unexplained: d.unexplained,
        in_order: d.in_order,
        log_requests: e["log_batches"].clone(),
    })
}

pub const FIGURES: &[Figure<PeakResult>] = &[Figure {
    name: "4. peak RSS, executor prints 1 GiB",
    target: "<= 32 MiB",
    go: "18.6 MiB for 20,000 lines",
    read: |p| {
        Reading::value(format!(
            "{:.2} MiB ({:.0} MiB printed in {:.1} s)",
            p.peak_rss_mib,
            p.bytes_printed as f64 / 1048576.0,
            p.wall_s
        ))
        .pass(p.pass)
        .vs_go("Go keeps all output in memory".into())
    },
}];
