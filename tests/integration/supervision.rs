//! Executor supervision (issue 3, PROTOCOL.md §7–§8): server cancel, timeouts,
//! process groups, shutdown, bounded output and log streaming, against the
//! real `flo-devserver`, the real `flo-runner` and the example executor.
//! Processes are checked through /proc, output on disk and on the server.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use flo_testkit::{
    completed, execution_requests, flow, lines_received, only_result, read_json, state_of,
    wait_for, wait_line, DevServer, Runner, RunnerSetup,
};
use serde_json::{json, Map, Value};

const LIMIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- helpers

fn logs_of(result: &Map<String, Value>) -> String {
    result["state"]["logs"]
        .as_str()
        .expect("state.logs")
        .to_string()
}

/// (state, parent pid, process group) of a process, from /proc.
fn proc_stat(pid: i64) -> Option<(char, i64, i64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgid = fields.next()?.parse().ok()?;
    Some((state, ppid, pgid))
}

/// Whether `pid` is a live (not zombie) member of process group `pgid`: a
/// reused pid in another group is not ours.
fn alive_in_group(pid: i64, pgid: i64) -> bool {
    matches!(proc_stat(pid), Some((state, _, g)) if g == pgid && state != 'Z' && state != 'X')
}

/// The executor's pid and process group (from its argv.json).
fn executor_ids(dir: &Path) -> (i64, i64) {
    let argv = read_json(&dir.join("argv.json"));
    let pid = argv["pid"].as_i64().expect("pid");
    let pgid = argv["pgid"].as_i64().expect("pgid");
    assert_eq!(pid, pgid, "the executor leads its own process group");
    (pid, pgid)
}

fn grandchildren(dir: &Path) -> Vec<i64> {
    fs::read_to_string(dir.join("grandchild.pid"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().parse().expect("grandchild pid"))
        .collect()
}

/// After the result: the executor was reaped by the runner (no zombie child
/// left) and nothing of its process group is alive.
fn assert_all_gone(runner: &Runner, dir: &Path, expected_grandchildren: usize) {
    let (pid, pgid) = executor_ids(dir);
    if let Some((state, ppid, _)) = proc_stat(pid) {
        assert!(
            !(state == 'Z' && ppid == i64::from(runner.pid())),
            "executor {pid} is a zombie the runner did not reap"
        );
    }
    assert!(!alive_in_group(pid, pgid), "executor {pid} still runs");
    let grand = grandchildren(dir);
    assert_eq!(
        grand.len(),
        expected_grandchildren,
        "grandchild.pid: {grand:?}"
    );
    for g in grand {
        assert!(
            !alive_in_group(g, pgid),
            "grandchild {g} of the executor is still alive: {:?}",
            proc_stat(g)
        );
    }
}

fn peak_rss_mib(pid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM")
        / 1024
}

/// The number in a print-node line (`line 000123 xxx`).
fn line_number(line: &str) -> Option<u64> {
    line.strip_prefix("line ")?.get(..6)?.parse().ok()
}

/// The count in a `[flo-runner: N lines dropped]` marker.
fn dropped_count(line: &str) -> Option<u64> {
    line.strip_prefix("[flo-runner: ")?
        .strip_suffix(" lines dropped]")?
        .parse()
        .ok()
}

/// What the server holds of numbered print lines: lines dropped (counted by
/// the markers), lines received, the last line number.
struct Tally {
    dropped: u64,
    received: u64,
    last: u64,
}

/// Tallies numbered print lines and markers, asserting the lines are in order.
fn tally(lines: &[String]) -> Tally {
    let mut t = Tally {
        dropped: 0,
        received: 0,
        last: 0,
    };
    for l in lines {
        if let Some(n) = dropped_count(l) {
            t.dropped += n;
            continue;
        }
        let n = line_number(l).unwrap_or_else(|| panic!("unexpected line {l:?}"));
        assert!(n > t.last, "line {n} after line {}", t.last);
        t.last = n;
        t.received += 1;
    }
    t
}

// ---------------------------------------------------------------- stopping an executor

#[test]
fn a_server_cancel_stops_the_executor_and_its_grandchildren() {
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server).start();
    let id = server.enqueue(
        flow(json!([
            {"type": "spawn", "ms": 60000},
            {"type": "log", "message": "started"},
            {"type": "sleep", "ms": 30000}
        ])),
        json!({"flo_id": "flo-cancel"}),
    );
    wait_line(&server, &runner, &id, "[node #1] started");
    let dir = runner.exec_dir("flo-cancel", &id);
    let (_, pgid) = executor_ids(&dir);
    let grand = grandchildren(&dir);
    assert!(
        grand.iter().all(|g| alive_in_group(*g, pgid)),
        "the grandchild runs"
    );

    let cancelled_at = Instant::now();
    server.post(&format!("/admin/executions/{id}/cancel"), Value::Null);
    let e = completed(&server, &runner, &id, LIMIT);
    let took = cancelled_at.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "the cancel took {took:?} (status every 2 s, then SIGTERM)"
    );
    let result = only_result(&e);
    assert_eq!(result["cancelled"], true, "{result:#?}");
    assert_eq!(result["has_errored"], true, "{result:#?}");
    assert_eq!(logs_of(&result), "[node #1] started");
    assert_all_gone(&runner, &dir, 1);

    // The status was asked about every 2 s, signed over the id.
    let path = format!("/api/v1/execution/{id}/status");
    let checks: Vec<Value> = server
        .requests_on("status")
        .into_iter()
        .filter(|r| r["path"] == path.as_str())
        .collect();
    assert!(!checks.is_empty());
    for pair in checks.windows(2) {
        let gap = pair[1]["at_ms"].as_u64().unwrap() - pair[0]["at_ms"].as_u64().unwrap();
        assert!(gap >= 1500, "status checks {gap} ms apart");
    }
    assert!(checks.iter().all(|r| r["signature_valid"] == true));
}

#[test]
fn an_executor_ignoring_sigterm_is_killed_after_the_grace() {
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server)
        .set("execution", "kill_grace_secs", json!(1))
        .start();
    let id = server.enqueue(
        flow(json!([
            {"type": "ignore_sigterm"},
            {"type": "spawn", "ms": 60000},
            {"type": "log", "message": "ready"},
            {"type": "sleep", "ms": 30000}
        ])),
        json!({"flo_id": "flo-stubborn"}),
    );
    wait_line(&server, &runner, &id, "[node #2] ready");
    let dir = runner.exec_dir("flo-stubborn", &id);
    server.post(&format!("/admin/executions/{id}/cancel"), Value::Null);
    let e = completed(&server, &runner, &id, LIMIT);
    let result = only_result(&e);
    assert_eq!(result["cancelled"], true, "{result:#?}");
    assert_eq!(result["has_errored"], true, "{result:#?}");
    assert!(
        runner.log().contains("SIGKILL"),
        "the executor ignored SIGTERM, so SIGKILL was needed; log:\n{}",
        runner.log_tail()
    );
    assert_all_gone(&runner, &dir, 1);
}

#[test]
fn leftover_grandchildren_do_not_hold_up_the_result() {
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server).start();
    let started = Instant::now();
    let id = server.enqueue(
        flow(json!([
            {"type": "spawn", "ms": 60000},
            {"type": "spawn", "ms": 60000, "stdio": "null"},
            {"type": "log", "message": "done"}
        ])),
        json!({"flo_id": "flo-leftovers"}),
    );
    let e = completed(&server, &runner, &id, LIMIT);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "a grandchild holding the output pipes delayed the result"
    );
    let result = only_result(&e);
    assert_eq!(result["has_errored"], false, "{result:#?}");
    // The two grandchildren are named in the result's last line.
    let logs = logs_of(&result);
    let (first, last) = logs.split_once('\n').expect("two lines");
    assert_eq!(first, "[node #2] done");
    assert!(
        last.starts_with("[flo-runner] stopped 2 leftover process(es) of this execution: pid ")
            && last.matches("(sleep)").count() == 2,
        "{last}"
    );
    assert_all_gone(&runner, &runner.exec_dir("flo-leftovers", &id), 2);
}

#[test]
fn a_timeout_stops_the_executor() {
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server)
        .set("execution", "timeout_secs", json!(1))
        .start();
    let id = server.enqueue(
        flow(json!([
            {"type": "log", "message": "long job"},
            {"type": "sleep", "ms": 30000}
        ])),
        json!({"flo_id": "flo-timeout"}),
    );
    let e = completed(&server, &runner, &id, LIMIT);
    let result = only_result(&e);
    assert_eq!(result["has_errored"], true, "{result:#?}");
    assert_ne!(
        result.get("cancelled"),
        Some(&json!(true)),
        "a timeout is not a cancel"
    );
    let state = state_of(&result);
    assert_eq!(state["error"], "timed out after 1 s", "{state:#?}");
    assert_eq!(state["logs"], "[node #0] long job");
    assert_all_gone(&runner, &runner.exec_dir("flo-timeout", &id), 0);
}

#[test]
fn a_timeout_kills_an_executor_that_ignores_sigterm() {
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server)
        .set("execution", "timeout_secs", json!(1))
        .set("execution", "kill_grace_secs", json!(1))
        .start();
    let started = Instant::now();
    let id = server.enqueue(
        flow(json!([
            {"type": "ignore_sigterm"},
            {"type": "spawn", "ms": 60000},
            {"type": "sleep", "ms": 30000}
        ])),
        json!({"flo_id": "flo-timeout-kill"}),
    );
    let e = completed(&server, &runner, &id, LIMIT);
    assert!(started.elapsed() < Duration::from_secs(15));
    let result = only_result(&e);
    assert_eq!(result["has_errored"], true, "{result:#?}");
    assert_eq!(state_of(&result)["error"], "timed out after 1 s");
    assert_all_gone(&runner, &runner.exec_dir("flo-timeout-kill", &id), 1);
}

// ---------------------------------------------------------------- shutdown

#[test]
fn sigterm_lets_a_running_execution_finish_and_report() {
    let server = DevServer::start();
    let mut runner = RunnerSetup::new(&server)
        .set("execution", "max_concurrent_executors", json!(2))
        .start();
    let id = server.enqueue(
        flow(json!([
            {"type": "log", "message": "begin"},
            {"type": "sleep", "ms": 3000},
            {"type": "log", "message": "end"}
        ])),
        json!({"flo_id": "flo-drain"}),
    );
    wait_line(&server, &runner, &id, "[node #0] begin");
    let polls_at_signal = server.requests_on("poll").len();
    runner.signal("TERM");
    let status = runner.wait_exit(LIMIT);
    assert_eq!(status.code(), Some(0), "log:\n{}", runner.log_tail());
    let e = server.execution(&id);
    assert_eq!(
        e["status"], "completed",
        "the result was delivered before exit"
    );
    let result = only_result(&e);
    assert_eq!(result["has_errored"], false, "{result:#?}");
    assert!(!result.contains_key("cancelled"));
    assert_eq!(logs_of(&result), "[node #0] begin\n[node #2] end");
    // A slot was free all along, but polling stopped at the signal (one
    // poll may have been on its way).
    let polls = server.requests_on("poll").len();
    assert!(
        polls <= polls_at_signal + 1,
        "{} polls after SIGTERM",
        polls - polls_at_signal
    );
    assert!(
        runner.log().contains("waiting for 1 execution"),
        "shutdown progress is logged:\n{}",
        runner.log_tail()
    );
}

#[test]
fn a_poll_held_open_by_the_server_does_not_delay_the_exit() {
    let server = DevServer::start_with(&["--long-poll-secs", "25"]);
    let mut runner = RunnerSetup::new(&server).start();
    wait_for(
        LIMIT,
        &format!("registration; log:\n{}", runner.log_tail()),
        || !server.runners().is_empty(),
    );
    std::thread::sleep(Duration::from_millis(500)); // inside the held poll
    let signalled = Instant::now();
    runner.signal("TERM");
    let status = runner.wait_exit(LIMIT);
    assert_eq!(status.code(), Some(0), "log:\n{}", runner.log_tail());
    let took = signalled.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "exit took {took:?} with a poll held open"
    );
}

#[test]
fn past_the_shutdown_grace_running_executions_are_stopped() {
    let server = DevServer::start();
    let mut runner = RunnerSetup::new(&server)
        .set("runner", "shutdown_grace_secs", json!(1))
        .start();
    let id = server.enqueue(
        flow(json!([
            {"type": "spawn", "ms": 60000},
            {"type": "log", "message": "begin"},
            {"type": "sleep", "ms": 30000}
        ])),
        json!({"flo_id": "flo-grace"}),
    );
    wait_line(&server, &runner, &id, "[node #1] begin");
    let signalled = Instant::now();
    runner.signal("TERM");
    let status = runner.wait_exit(LIMIT);
    assert_eq!(status.code(), Some(0), "log:\n{}", runner.log_tail());
    assert!(signalled.elapsed() < Duration::from_secs(12));
    let e = server.execution(&id);
    assert_eq!(
        e["status"], "completed",
        "the result was delivered before exit"
    );
    let result = only_result(&e);
    assert_eq!(result["cancelled"], true, "{result:#?}");
    assert_eq!(result["has_errored"], true, "{result:#?}");
    let error = state_of(&result)["error"]
        .as_str()
        .expect("error")
        .to_string();
    assert!(error.contains("shutting down"), "{error:?}");
    let dir = runner.exec_dir("flo-grace", &id);
    let (_, pgid) = executor_ids(&dir);
    for g in grandchildren(&dir) {
        assert!(
            !alive_in_group(g, pgid),
            "grandchild {g} outlived the runner"
        );
    }
}

#[test]
fn a_second_signal_skips_the_wait() {
    let server = DevServer::start();
    let mut runner = RunnerSetup::new(&server).start(); // shutdown grace 10 s
    let id = server.enqueue(
        flow(json!([
            {"type": "log", "message": "begin"},
            {"type": "sleep", "ms": 30000}
        ])),
        json!({"flo_id": "flo-twice"}),
    );
    wait_line(&server, &runner, &id, "[node #0] begin");
    runner.signal("TERM");
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        runner.is_running(),
        "after one signal the runner waits for its execution"
    );
    let second = Instant::now();
    runner.signal("INT");
    let status = runner.wait_exit(LIMIT);
    assert_eq!(status.code(), Some(0), "log:\n{}", runner.log_tail());
    let took = second.elapsed();
    assert!(
        took < Duration::from_secs(7),
        "the second signal should skip the 10 s grace; exit took {took:?}"
    );
    // A forced stop delivers the result or keeps it durably: then the next
    // start in the same directory delivers it.
    let mut e = server.execution(&id);
    if e["status"] != "completed" {
        let dir = std::mem::replace(&mut runner.dir, tempfile::tempdir().expect("tempdir"));
        let restarted = RunnerSetup::new(&server).start_in(dir);
        e = completed(&server, &restarted, &id, LIMIT);
    }
    let result = only_result(&e);
    assert_eq!(result["cancelled"], true, "{result:#?}");
    assert_eq!(result["has_errored"], true, "{result:#?}");
}

/// The runner SIGKILLed while an execution runs: its next start finds the
/// execution in the journal, stops the orphaned executor (provably the same
/// process), and reports it errored with the output printed so far. The
/// journal then holds it as done: a further restart sends nothing more.
#[test]
fn a_runner_killed_mid_execution_reports_it_at_its_next_start() {
    let server = DevServer::start();
    let mut runner = RunnerSetup::new(&server).start();
    let id = server.enqueue(
        flow(json!([
            {"type": "log", "message": "begin"},
            {"type": "sleep", "ms": 30000}
        ])),
        json!({"flo_id": "flo-crash"}),
    );
    wait_line(&server, &runner, &id, "[node #0] begin");
    let dir = runner.exec_dir("flo-crash", &id);
    let (pid, pgid) = executor_ids(&dir);
    runner.signal("KILL");
    runner.wait_exit(LIMIT);
    assert!(
        alive_in_group(pid, pgid),
        "the executor outlives the runner"
    );
    assert_ne!(server.execution(&id)["status"], "completed");

    let state = std::mem::replace(&mut runner.dir, tempfile::tempdir().expect("tempdir"));
    let restarted = RunnerSetup::new(&server).start_in(state);
    let e = completed(&server, &restarted, &id, LIMIT);
    let result = only_result(&e);
    assert_eq!(result["has_errored"], true, "{result:#?}");
    assert_eq!(
        result["state"]["error"], "runner stopped while this execution was running",
        "{result:#?}"
    );
    assert!(logs_of(&result).contains("[node #0] begin"), "{result:#?}");
    wait_for(LIMIT, "the orphaned executor to be stopped", || {
        !alive_in_group(pid, pgid)
    });

    let state = restarted.into_dir();
    let again = RunnerSetup::new(&server).start_in(state);
    let polls = server.requests_on("poll").len();
    wait_for(LIMIT, "the third start to poll", || {
        server.requests_on("poll").len() > polls
    });
    // Recovery runs before the first poll: had the journal not recorded the
    // execution as done, a second report would be in the outbox or delivered.
    let queued = fs::read_dir(again.path().join("outbox"))
        .map(|d| d.flatten().filter(|e| e.path().is_file()).count())
        .unwrap_or(0);
    assert_eq!(queued, 0, "nothing queued; log:\n{}", again.log_tail());
    assert_eq!(
        server.execution(&id)["results"].as_array().map(Vec::len),
        Some(1),
        "reported once; log:\n{}",
        again.log_tail()
    );
}

// ---------------------------------------------------------------- output

#[test]
fn huge_output_is_capped_in_the_result_and_in_output_log() {
    const LINES: u64 = 200_000;
    const WIDTH: usize = 100; // 20 MB in all
    const LOG_CAP: usize = 1 << 20;
    const FILE_CAP: u64 = 5_000_000;
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server)
        .set("execution", "max_log_bytes", json!(LOG_CAP))
        .set("execution", "max_output_file_bytes", json!(FILE_CAP))
        .start();
    let id = server.enqueue(
        flow(json!([{"type": "print", "count": LINES, "bytes": WIDTH}])),
        json!({"flo_id": "flo-huge"}),
    );
    let e = completed(&server, &runner, &id, Duration::from_secs(40));
    let result = only_result(&e);
    assert_eq!(result["has_errored"], false);
    let last = format!("{:x<WIDTH$}", format!("line {LINES:06} "));

    // state.logs: the tail, within the cap, after the cut marker.
    let logs = logs_of(&result);
    assert!(logs.len() <= LOG_CAP, "state.logs is {} bytes", logs.len());
    assert!(
        logs.len() > LOG_CAP / 2,
        "state.logs keeps a full tail: {} bytes",
        logs.len()
    );
    assert!(
        logs.starts_with("[flo-runner: output cut"),
        "{}",
        &logs[..100]
    );
    assert!(logs.ends_with(&last), "ends with the last line");
    let kept: Vec<&str> = logs.lines().skip(1).collect();
    let first_kept = line_number(kept[0]).expect("whole lines after the marker");
    for (i, l) in kept.iter().enumerate() {
        assert_eq!(line_number(l), Some(first_kept + i as u64), "{l}");
        assert_eq!(l.len(), WIDTH);
    }

    // output.log: the start of the output, cut at its cap with a marker.
    let file = fs::read_to_string(runner.exec_dir("flo-huge", &id).join("output.log"))
        .expect("output.log");
    assert!(
        file.len() as u64 <= FILE_CAP,
        "output.log is {} bytes, over its cap",
        file.len()
    );
    assert!(file.len() as u64 > FILE_CAP - 200);
    assert!(file.starts_with("line 000001 "));
    let marker = file.lines().last().expect("a last line");
    assert!(
        marker.starts_with("[flo-runner: output.log reached its"),
        "{marker}"
    );

    // The server: lines in order, the oldest dropped (with markers) when
    // the shipper fell behind, and every line accounted for.
    let lines = lines_received(&server, &id);
    let Tally {
        dropped, received, ..
    } = tally(&lines);
    assert_eq!(lines.last(), Some(&last));
    assert_eq!(
        dropped + received,
        LINES,
        "every line is sent or counted as dropped"
    );

    let peak = peak_rss_mib(runner.pid());
    assert!(peak < 40, "runner peak RSS {peak} MiB for 20 MB of output");
}

#[test]
fn a_small_max_log_bytes_is_honoured_too() {
    // "state.logs holds at most execution.max_log_bytes": the cut marker
    // must fit in the cap as well (or the runner refuses a cap that small).
    const CAP: usize = 40;
    let server = DevServer::start();
    let mut runner = RunnerSetup::new(&server)
        .set("execution", "max_log_bytes", json!(CAP))
        .start();
    let id = server.enqueue(
        flow(json!([{"type": "print", "count": 10}])),
        json!({"flo_id": "flo-small-cap"}),
    );
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(status) = runner
            .child
            .as_mut()
            .expect("runner")
            .try_wait()
            .expect("try_wait")
        {
            runner.child = None;
            assert!(
                !status.success() && runner.log().contains("max_log_bytes"),
                "the runner stopped ({status}) without naming max_log_bytes"
            );
            return;
        }
        if server.execution(&id)["status"] == "completed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no result; log:\n{}",
            runner.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let result = only_result(&server.execution(&id));
    let logs = logs_of(&result);
    assert!(
        logs.len() <= CAP,
        "state.logs is {} bytes with max_log_bytes {CAP}: {logs:?}",
        logs.len()
    );
}

#[test]
fn invalid_utf8_is_replaced_and_the_result_delivered() {
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server).start();
    let id = server.enqueue(
        flow(json!([
            {"type": "log", "message": "before"},
            {"type": "binary", "bytes": 16},
            {"type": "binary", "bytes": 8, "stream": "stderr"},
            {"type": "log", "message": "after"}
        ])),
        json!({"flo_id": "flo-binary"}),
    );
    let e = completed(&server, &runner, &id, LIMIT);
    let result = only_result(&e);
    assert_eq!(result["has_errored"], false, "{result:#?}");
    let sixteen = "\u{FFFD}".repeat(16);
    let eight = "\u{FFFD}".repeat(8);
    let logs = logs_of(&result);
    let lines = lines_received(&server, &id);
    assert_eq!(lines.join("\n"), logs);
    // stdout in order; the stderr line may come anywhere among them.
    let stdout: Vec<&str> = lines
        .iter()
        .map(String::as_str)
        .filter(|l| *l != eight)
        .collect();
    assert_eq!(
        stdout,
        vec!["[node #0] before", sixteen.as_str(), "[node #3] after"]
    );
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(lines.contains(&eight), "{lines:?}");
}

#[test]
fn an_endless_line_is_cut_with_a_marker() {
    const BIG: u64 = 10 * 1024 * 1024;
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server).start();
    let id = server.enqueue(
        flow(json!([
            {"type": "longline", "bytes": BIG},
            {"type": "log", "message": "tail"},
            {"type": "longline", "bytes": 100_000, "stream": "stderr"}
        ])),
        json!({"flo_id": "flo-longline"}),
    );
    let e = completed(&server, &runner, &id, LIMIT);
    let result = only_result(&e);
    assert_eq!(result["has_errored"], false, "{result:#?}");
    const KEPT: u64 = 64 * 1024;
    // stdout: 10 MiB of `a` then "[node #1] tail" and a newline, one line.
    let stdout_line = format!(
        "{} [flo-runner: line cut, {} more bytes dropped]",
        "a".repeat(KEPT as usize),
        BIG + "[node #1] tail".len() as u64 - KEPT
    );
    // stderr: 100000 bytes and no newline before the end of the output.
    let stderr_line = format!(
        "{} [flo-runner: line cut, {} more bytes dropped]",
        "a".repeat(KEPT as usize),
        100_000 - KEPT
    );
    let mut lines = lines_received(&server, &id);
    lines.sort();
    let mut expected = vec![stdout_line, stderr_line];
    expected.sort();
    assert!(lines == expected, "the lines the server got differ");
    let mut in_result: Vec<String> = logs_of(&result).lines().map(str::to_string).collect();
    in_result.sort();
    assert!(in_result == expected, "state.logs differs");
}

// ---------------------------------------------------------------- log streaming

#[test]
fn logs_reach_the_server_in_order_through_a_flaky_route() {
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server)
        .set("execution", "log_batch_lines", json!(40))
        .start();
    // 480 distinct lines over ~2.5 s, in small bursts.
    let mut nodes = Vec::new();
    let mut expected = Vec::new();
    for burst in 0..6 {
        for i in 0..80 {
            expected.push(format!("[node #{}] burst {burst} line {i}", nodes.len()));
            nodes.push(json!({"type": "log", "message": format!("burst {burst} line {i}")}));
        }
        nodes.push(json!({"type": "sleep", "ms": 400}));
    }
    server.fault(json!({"route": "logs", "error_rate": 0.5}));
    let id = server.enqueue(flow(json!(nodes)), json!({"flo_id": "flo-flaky"}));
    let dir = runner.exec_dir("flo-flaky", &id);
    wait_for(LIMIT, "the executor to finish", || {
        dir.join("state.json").exists()
    });
    // Let the retries run into the fault a little longer, then heal the
    // route so the test's duration stays bounded.
    std::thread::sleep(Duration::from_millis(500));
    server.delete("/admin/faults");
    let e = completed(&server, &runner, &id, Duration::from_secs(40));
    let result = only_result(&e);
    assert_eq!(result["has_errored"], false, "{result:#?}");
    assert_eq!(logs_of(&result), expected.join("\n"));

    let requests = execution_requests(&server, "logs", &id);
    let failed = requests.iter().filter(|r| r["status"] == 500).count();
    assert!(
        failed > 0,
        "the fault never hit ({} requests)",
        requests.len()
    );
    // Failed batches change nothing on the server, so what it accepted is
    // every line, in order, exactly once.
    let lines = lines_received(&server, &id);
    if lines != expected {
        let extra: Vec<&String> = lines.iter().filter(|l| !expected.contains(l)).collect();
        panic!(
            "lines on the server differ: {} received of {}, {} failed requests; not printed: {extra:?}; first difference at {:?}",
            lines.len(),
            expected.len(),
            failed,
            lines.iter().zip(&expected).position(|(a, b)| a != b)
        );
    }
}

#[test]
fn while_logs_are_down_the_oldest_lines_are_dropped_with_a_marker() {
    const LINES: u64 = 30_000;
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server).start();
    server.fault(json!({"route": "logs", "error_rate": 1.0, "error_status": 503}));
    let id = server.enqueue(
        flow(json!([{"type": "print", "count": LINES, "bytes": 30}])),
        json!({"flo_id": "flo-down"}),
    );
    let dir = runner.exec_dir("flo-down", &id);
    wait_for(LIMIT, "the executor to finish", || {
        dir.join("state.json").exists()
    });
    std::thread::sleep(Duration::from_millis(300));
    server.delete("/admin/faults");
    let e = completed(&server, &runner, &id, Duration::from_secs(40));
    let result = only_result(&e);
    assert_eq!(result["has_errored"], false);
    // The result has every line (31 bytes each: under the 1 MiB cap).
    assert_eq!(logs_of(&result).lines().count() as u64, LINES);

    let lines = lines_received(&server, &id);
    let Tally {
        dropped,
        received,
        last: previous,
    } = tally(&lines);
    assert!(dropped > 0, "nothing was dropped");
    assert!(
        received <= 10_000,
        "{received} lines were kept while the API was down"
    );
    assert_eq!(dropped + received, LINES, "every line sent or counted");
    assert_eq!(previous, LINES, "the newest lines are kept");
    assert!(
        dropped_count(&lines[0]).is_some(),
        "the marker comes first: {}",
        lines[0]
    );
}
