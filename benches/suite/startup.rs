//! Start-up (measurement 7): exec to the first poll (and to the
//! registration), with an existing identity.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use crate::clock::{ms_at, Calibration};
use crate::plan::Plan;
use crate::runner;
use crate::server::Server;
use crate::stats::Stats;
use crate::table::{Figure, Reading};
use crate::Res;

#[derive(Serialize)]
pub struct StartupResult {
    pub exec_to_first_poll_ms: Stats,
    pub exec_to_registration_ms: Option<Stats>,
    pub clock: Calibration,
    pub note: &'static str,
}

pub fn run(plan: &Plan) -> Res<StartupResult> {
    let server = Server::start()?;
    let mut runner = runner::start_registered(&server, 1, None)?;
    runner.stop();
    let (mut to_poll, mut to_register) = (Vec::new(), Vec::new());
    for _ in 0..plan.startup_runs {
        // The next poll is answered at once (204), so it is in the request
        // log straight away; its at_ms is its arrival.
        server.post("/admin/poll-responses", &json!({"status": 204, "body": ""}))?;
        std::thread::sleep(Duration::from_millis(100));
        let spawned = ms_at(runner::restart(&mut runner, &server, 1));
        let (poll, registration) = first_requests(&server, spawned - 1.0)
            .map_err(|e| format!("{e}: {}", runner.last_log_lines(5).join(" | ")))?;
        to_poll.push(poll - spawned);
        to_register.extend(registration.map(|r| r - spawned));
        runner.stop();
    }
    Ok(StartupResult {
        exec_to_first_poll_ms: Stats::of(&to_poll).ok_or("no starts")?,
        exec_to_registration_ms: Stats::of(&to_register),
        clock: server.clock,
        note: "includes executor discovery (two runs of the executor) and re-registration",
    })
}

/// The bench times of the first poll (waited for) and the first
/// registration (if any) to arrive at or after `since`.
fn first_requests(server: &Server, since: f64) -> Res<(f64, Option<f64>)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let records = server.requests_after(0)?;
        let first = |want: &str| {
            records
                .iter()
                .filter(|r| r.route == want)
                .map(|r| server.to_bench(r.at_ms))
                .filter(|&t| t >= since)
                .reduce(f64::min)
        };
        if let Some(poll) = first("poll") {
            return Ok((poll, first("register")));
        }
        if Instant::now() > deadline {
            return Err("no poll within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub const FIGURES: &[Figure<StartupResult>] = &[Figure {
    name: "7. start-up, exec to first poll",
    target: "report",
    go: "-",
    read: |r| {
        let s = r.exec_to_first_poll_ms.rounded();
        Reading::value(format!(
            "median {:.1} ms (min {:.1}, max {:.1}, n={})",
            s.median, s.min, s.max, s.n
        ))
    },
}];
