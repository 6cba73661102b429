//! Both generations of the Flomation API (PROTOCOL.md §4–§9, issue 12): the
//! real `flo-devserver` playing the current API and, with `--generation
//! 2026-03`, the older one; the real `flo-runner` finds out which it talks to
//! and uses what that API has. Also `check` and `health` telling the truth
//! about an API that refuses every poll, or is not a Flomation API at all.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use base64::Engine as _;
use flo_testkit::*;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(30);
const OLDER: &[&str] = &["--generation", "2026-03"];

/// `flo-runner SUBCOMMAND` in `dir` (which holds config.json).
fn subcommand(dir: &Path, sub: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flo-runner"))
        .arg(sub)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap_or_else(|e| panic!("run flo-runner {sub}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A flow that logs `n` lines and then runs for `ms` (long enough for the
/// runner's 2 s status checks to come round).
fn chatty_flow(n: u64, ms: u64) -> Value {
    flow(json!([
        {"id": "hello", "type": "log", "message": "hello"},
        {"id": "lines", "type": "print", "count": n, "bytes": 20},
        {"id": "echo", "type": "echo_trigger"},
        {"id": "wait", "type": "sleep", "ms": ms},
        {"id": "bye", "type": "log", "message": "bye"}
    ]))
}

fn dead_letters(runner: &Runner) -> Vec<String> {
    match std::fs::read_dir(runner.path().join("outbox").join("dead")) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn occurrences(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

// ---------------------------------------------------------------- the older generation

#[test]
fn the_older_generation_runs_executions_end_to_end_without_its_missing_routes() {
    let server = DevServer::start_with(OLDER);
    let port = free_port();
    let runner = RunnerSetup::new(&server)
        .set(
            "runner",
            "metrics_listen",
            json!(format!("127.0.0.1:{port}")),
        )
        .start();
    let trigger = json!({"customer": "c-1", "items": [1, 2]});
    let mut ids = Vec::new();
    for n in 0..2 {
        let id = format!("older-{n}");
        server.enqueue(
            chatty_flow(5, 2500),
            json!({"flo_id": "flo-older", "execution_id": id, "trigger_data": trigger}),
        );
        ids.push(id);
    }
    for id in &ids {
        let e = completed(&server, &runner, id, LIMIT);
        let result = only_result(&e);
        assert_eq!(result["has_errored"], false, "{e:#}");
        let state = state_of(&result);
        let logs = state["logs"].as_str().expect("state.logs");
        for line in ["[node hello] hello", "line 000005 ", "[node bye] bye"] {
            assert!(logs.contains(line), "{line:?} not in state.logs: {logs}");
        }
        // The base64 trigger data was written as the JSON it encodes.
        let dir = runner.exec_dir("flo-older", id);
        assert_eq!(read_json(&dir.join("trigger-data.json")), trigger);
        assert!(
            logs.contains(r#"trigger-data: {"customer":"c-1","items":[1,2]}"#),
            "{logs}"
        );
        let output = std::fs::read_to_string(dir.join("output.log")).expect("output.log");
        assert!(output.contains("line 000005 "), "{output}");
    }

    // The runner polled by GET, signed over the empty body, after at most a
    // POST or two that found no route.
    let polls = server.requests_on("poll");
    let posts = polls.iter().filter(|r| r["method"] == "POST").count();
    assert!(posts <= 2, "{posts} POST polls to the older generation");
    assert!(
        polls
            .iter()
            .any(|r| r["method"] == "GET" && r["status"] == 200 && r["signature_valid"] == true),
        "no accepted GET poll: {polls:#?}"
    );
    // A handful of requests to the missing routes over the whole run.
    let logs = server.requests_on("logs").len();
    let status = server.requests_on("status").len();
    assert!(
        (1..=2).contains(&logs),
        "{logs} requests to /logs\n{}",
        runner.log_tail()
    );
    assert!(
        (1..=2).contains(&status),
        "{status} requests to /status\n{}",
        runner.log_tail()
    );
    // Nothing accumulates as dead letters, and the outbox drains.
    assert_eq!(dead_letters(&runner), Vec::<String>::new());
    let log = runner.log();
    assert_eq!(
        occurrences(&log, "log streaming is off"),
        1,
        "one line says log streaming is off:\n{log}"
    );
    assert_eq!(
        occurrences(&log, "cancel is unavailable with this API"),
        1,
        "one warning says cancel is unavailable:\n{log}"
    );
    assert!(
        log.contains("API generation 2026-03"),
        "the generation is logged:\n{log}"
    );

    let metrics = http_get(&format!("http://127.0.0.1:{port}/metrics")).1;
    for line in [
        "flo_runner_api_generation{generation=\"2026-03\"} 1",
        "flo_runner_api_feature{feature=\"log_streaming\"} 0",
        "flo_runner_api_feature{feature=\"cancel\"} 0",
        "flo_runner_healthy 1",
    ] {
        assert!(
            metrics.contains(line),
            "{line:?} not in /metrics:\n{metrics}"
        );
    }
}

#[test]
fn last_lines_sent_through_the_outbox_to_the_older_generation_are_dropped_not_dead_letters() {
    let server = DevServer::start_with(OLDER);
    // A flush interval longer than the execution: every line is still queued
    // when it ends, so they all go through the outbox (a 404 there used to
    // become a dead letter per execution).
    let runner = RunnerSetup::new(&server)
        .set("execution", "log_flush_ms", json!(60_000))
        .start();
    for n in 0..2 {
        let id = server.enqueue(
            flow(json!([{"id": "a", "type": "print", "count": 3}])),
            json!({"execution_id": format!("quick-{n}")}),
        );
        let e = completed(&server, &runner, &id, LIMIT);
        let state = state_of(&only_result(&e));
        assert!(
            state["logs"]
                .as_str()
                .is_some_and(|l| l.contains("line 000003 ")),
            "{e:#}"
        );
    }
    wait_for(LIMIT, "the outbox to drain", || {
        std::fs::read_dir(runner.path().join("outbox"))
            .map(|d| d.flatten().all(|e| e.path().is_dir()))
            .unwrap_or(true)
    });
    assert_eq!(dead_letters(&runner), Vec::<String>::new());
    let logs = server.requests_on("logs").len();
    assert_eq!(logs, 1, "requests to /logs\n{}", runner.log_tail());
}

#[test]
fn check_reports_the_older_generations_missing_features_and_passes() {
    let server = DevServer::start_with(OLDER);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_vec(&RunnerSetup::new(&server).config).expect("config"),
    )
    .expect("write config");
    let out = subcommand(dir.path(), "check");
    let all = text(&out);
    assert!(out.status.success(), "check fails:\n{all}");
    let line = |what: &str| {
        all.lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what:?} line:\n{all}"))
            .to_string()
    };
    let api = line("] API");
    assert!(
        api.starts_with("[ ok ]") && api.contains("2026-03"),
        "{all}"
    );
    let logs = line("log streaming");
    assert!(
        logs.starts_with("[warn]") && logs.contains("unavailable"),
        "{all}"
    );
    let cancel = line("cancel");
    assert!(
        cancel.starts_with("[warn]") && cancel.contains("unavailable"),
        "{all}"
    );
    // A probe takes no work and registers nothing.
    assert!(server.runners().is_empty());
}

// ---------------------------------------------------------------- the current generation

#[test]
fn the_current_generation_is_never_polled_by_get_and_keeps_streaming_and_cancel() {
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server).start();
    // A string that is not JSON but whose base64 decoding is.
    let trigger = json!({"k": "v"});
    let encoded = base64::engine::general_purpose::STANDARD.encode(trigger.to_string());
    let id = server.enqueue(
        chatty_flow(3, 2500),
        json!({"flo_id": "flo-current", "execution_id": "current-1", "trigger_data": encoded}),
    );
    let e = completed(&server, &runner, &id, LIMIT);
    assert_eq!(only_result(&e)["has_errored"], false, "{e:#}");
    assert_eq!(
        read_json(
            &runner
                .exec_dir("flo-current", &id)
                .join("trigger-data.json")
        ),
        trigger
    );
    let lines = lines_received(&server, &id);
    assert!(lines.iter().any(|l| l == "[node bye] bye"), "{lines:?}");
    assert!(
        !execution_requests(&server, "status", &id).is_empty(),
        "the runner stopped asking /status"
    );
    let polls = server.requests_on("poll");
    assert!(!polls.is_empty());
    assert!(
        polls.iter().all(|r| r["method"] == "POST"),
        "a GET poll reached the current generation: {polls:#?}"
    );
    let log = runner.log();
    assert!(
        log.contains("API generation current"),
        "the generation is logged:\n{log}"
    );
    assert!(!log.contains("log streaming is off"), "{log}");

    // A cancel still works.
    let id = server.enqueue(
        flow(json!([{"id": "long", "type": "sleep", "ms": 30000}])),
        json!({}),
    );
    wait_for(LIMIT, "the long execution to run", || {
        server.execution(&id)["status"] == "running"
    });
    server.post(&format!("/admin/executions/{id}/cancel"), json!({}));
    let e = completed(&server, &runner, &id, LIMIT);
    assert_eq!(only_result(&e)["cancelled"], true, "{e:#}");
}

#[test]
fn check_passes_against_the_current_generation_with_every_feature() {
    let server = DevServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_vec(&RunnerSetup::new(&server).config).expect("config"),
    )
    .expect("write config");
    let out = subcommand(dir.path(), "check");
    let all = text(&out);
    assert!(out.status.success(), "check fails:\n{all}");
    for what in ["] API", "log streaming", "cancel"] {
        let line = all.lines().find(|l| l.contains(what)).unwrap_or("");
        assert!(line.starts_with("[ ok ]"), "{what}: {all}");
    }
    assert!(
        server
            .requests_on("poll")
            .iter()
            .all(|r| r["method"] == "POST"),
        "check sent a GET poll to the current generation"
    );
}

// ---------------------------------------------------------------- not a Flomation API

/// A server that answers every request `404 page not found`, like any web
/// server that is not the Flomation API (or its base URL with a wrong path).
fn plain_404_server() -> String {
    answering_server(
        "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n\
         Content-Length: 18\r\n\r\n404 page not found"
            .to_string(),
    )
}

/// A server that gives every request `answer` (a whole HTTP response).
fn answering_server(answer: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                loop {
                    // Read the request head and body, so closing the
                    // connection cannot reset the answer away.
                    let mut length = 0usize;
                    let mut line = String::new();
                    let mut got = false;
                    while reader.read_line(&mut line).unwrap_or(0) > 0 {
                        got = true;
                        let l = line.trim().to_ascii_lowercase();
                        if l.is_empty() {
                            break;
                        }
                        if let Some(v) = l.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        line.clear();
                    }
                    if !got {
                        return;
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    if reader.get_mut().write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

/// The runner reads response heads of up to 16 KiB (README "TLS and
/// proxies"): a bigger one is one clear line, and no crash.
#[test]
fn a_response_head_over_16_kib_is_one_clear_error() {
    let padding = "x".repeat(20 * 1024);
    let url = answering_server(format!(
        "HTTP/1.1 200 OK\r\nX-Padding: {padding}\r\nContent-Length: 2\r\n\r\n{{}}"
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    let config = json!({
        "runner": {"url": url, "registration_code": CODE,
                   "registration_retry": {"strategy": "none"}},
        "execution": {"executable_name": executor_path().to_string_lossy()}
    });
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_vec(&config).expect("config"),
    )
    .expect("write config");
    let out = Command::new(runner_bin())
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .expect("run flo-runner");
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let errors: Vec<&str> = all.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "one error line:\n{all}");
    assert!(
        errors[0].contains("response header is too big") && errors[0].contains("16384"),
        "{all}"
    );
    assert!(!all.contains("panicked"), "{all}");
}

#[test]
fn check_fails_against_a_server_that_is_not_a_flomation_api() {
    let url = plain_404_server();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = json!({
        "runner": {"url": url, "registration_code": CODE},
        "execution": {"executable_name": executor_path().to_string_lossy()}
    });
    config["runner"]["registration_retry"] = json!({"strategy": "none"});
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_vec(&config).expect("config"),
    )
    .expect("write config");
    let out = subcommand(dir.path(), "check");
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "check passes:\n{all}");
    let api = all
        .lines()
        .find(|l| l.contains("] API"))
        .unwrap_or_else(|| panic!("no API line:\n{all}"));
    assert!(api.starts_with("[FAIL]"), "{all}");
    for word in ["poll", "404", "runner.url"] {
        assert!(api.contains(word), "the API line names {word:?}: {api}");
    }
    // Everything else on the list passed: the API is the one failure.
    let failures = all.lines().filter(|l| l.starts_with("[FAIL]")).count();
    assert_eq!(failures, 1, "{all}");
}

// ---------------------------------------------------------------- health

/// A runner whose every poll gets `fault`, with a refusal window of 3 s.
fn runner_under_poll_fault(server: &DevServer, fault: Value, port: u16) -> Runner {
    let runner = RunnerSetup::new(server)
        .set("runner", "unhealthy_after_refused_secs", json!(3))
        .set(
            "runner",
            "metrics_listen",
            json!(format!("127.0.0.1:{port}")),
        )
        .start();
    wait_for(LIMIT, "the runner healthy", || {
        subcommand(runner.path(), "health").status.success()
    });
    server.fault(fault);
    runner
}

#[test]
fn health_turns_unhealthy_when_every_poll_is_refused() {
    let server = DevServer::start();
    let port = free_port();
    let runner = runner_under_poll_fault(
        &server,
        json!({"route": "poll", "error_rate": 1.0, "error_status": 403}),
        port,
    );
    let mut last = String::new();
    wait_for(Duration::from_secs(20), "health to say unhealthy", || {
        let out = subcommand(runner.path(), "health");
        last = text(&out);
        !out.status.success()
    });
    assert!(
        last.contains("refused") && last.contains("403"),
        "the reason names the refusal: {last}"
    );
    let (code, body) = http_get(&format!("http://127.0.0.1:{port}/healthz"));
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("refused"), "{body}");
    let metrics = http_get(&format!("http://127.0.0.1:{port}/metrics")).1;
    assert!(metrics.contains("flo_runner_healthy 0"), "{metrics}");

    // Accepted again: healthy again.
    server.delete("/admin/faults");
    wait_for(Duration::from_secs(90), "health to recover", || {
        subcommand(runner.path(), "health").status.success()
    });
}

#[test]
fn health_stays_healthy_through_an_outage() {
    let server = DevServer::start();
    let port = free_port();
    // Half the polls answered 503, the other half cut without an answer.
    let runner = runner_under_poll_fault(
        &server,
        json!({"route": "poll", "error_rate": 0.5, "error_status": 503, "drop_rate": 1.0}),
        port,
    );
    wait_for(LIMIT, "several failed polls", || {
        server
            .requests_on("poll")
            .iter()
            .filter(|r| !r["fault"].is_null())
            .count()
            >= 4
    });
    std::thread::sleep(Duration::from_secs(4));
    let out = subcommand(runner.path(), "health");
    assert!(
        out.status.success(),
        "unhealthy in an outage: {}",
        text(&out)
    );
    assert_eq!(http_get(&format!("http://127.0.0.1:{port}/healthz")).0, 200);
}
