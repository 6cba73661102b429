//! Extra: claim → first log line, for an executor that prints one line and
//! then sleeps (from bench/output_rss.sh).

use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

use crate::runner;
use crate::server::Server;
use crate::stats::{fig, Stats};
use crate::table::{Figure, Reading};
use crate::Res;

#[derive(Serialize)]
pub struct FirstLineResult {
    pub claim_to_first_line_ms: Option<Stats>,
    pub note: &'static str,
    pub target_ms: &'static str,
}

pub fn run() -> Res<FirstLineResult> {
    let server = Server::start()?;
    let mut runner = runner::start_settled(&server, 1)?;
    let mut lat = Vec::new();
    for _ in 0..3 {
        let seq0 = server.max_seq()?;
        let flow = json!({"print_lines": 1, "line_bytes": 20, "sleep_ms": 1500});
        let id = server.enqueue(&flow, &Value::Null)?.id;
        server.wait_completed(&id, Duration::from_secs(30), Duration::from_millis(10))?;
        let records = server.requests_after(seq0)?;
        let when = |want: &str| records.iter().find(|r| r.is(want, &id)).map(|r| r.at_ms);
        if let (Some(claim), Some(logs)) = (when("state"), when("logs")) {
            lat.push(logs - claim);
        }
    }
    runner.stop();
    Ok(FirstLineResult {
        claim_to_first_line_ms: Stats::of(&lat),
        note: "the executor prints one line, then sleeps 1.5 s: the partial batch goes out after log_flush_ms (500 by default)",
        target_ms: "log_flush_ms (500) + one request",
    })
}

pub const FIGURES: &[Figure<FirstLineResult>] = &[Figure {
    name: "   extra: claim to first log line",
    target: "~ log_flush_ms 500 + 1 request",
    go: "-",
    read: |x| {
        Reading::value(format!(
            "median {:.0} ms",
            fig(&x.claim_to_first_line_ms, |s| s.median)
        ))
    },
}];
