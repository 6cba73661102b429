//! What a buggy or hostile flow leaves behind cannot break the runner
//! (issue 11): odd `state.json` files, a swapped execution or flow
//! directory, a result the API refuses, the same execution handed out
//! twice, a huge poll answer. The executors are shell scripts written by
//! each test, so the attack is in plain sight.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flo_testkit::*;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(30);

fn runner_with(server: &DevServer, body: &str) -> (Runner, tempfile::TempDir) {
    let scripts = tempfile::tempdir().expect("tempdir");
    let exe = script_executor(scripts.path(), body);
    let runner = RunnerSetup::new(server)
        .set("execution", "executable_name", json!(exe))
        .start();
    (runner, scripts)
}

fn empty(dir: &Path) -> bool {
    fs::read_dir(dir)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
}

#[test]
fn a_state_json_that_links_to_dev_zero_is_refused_not_read() {
    let server = DevServer::start();
    let (runner, _s) = runner_with(&server, "ln -s /dev/zero state.json");
    let id = server.enqueue(flow(json!([])), json!({}));
    let e = completed(&server, &runner, &id, LIMIT);
    let why = error_of(&e);
    assert!(why.contains("state.json is a symbolic link"), "{why}");
    let peak = peak_rss_kib(runner.pid());
    assert!(peak < 64 * 1024, "runner peak RSS {peak} KiB");
}

#[test]
fn a_state_json_fifo_does_not_block_the_worker() {
    let server = DevServer::start();
    let (runner, _s) = runner_with(&server, "mkfifo state.json");
    let id = server.enqueue(flow(json!([])), json!({}));
    let e = completed(&server, &runner, &id, LIMIT);
    let why = error_of(&e);
    assert!(
        why.contains("state.json is not a regular file (a FIFO)"),
        "{why}"
    );
    // The slot is free again: the next execution runs.
    let next = server.enqueue(flow(json!([])), json!({}));
    completed(&server, &runner, &next, LIMIT);
}

#[test]
fn a_state_json_over_the_cap_is_an_errored_result_that_says_why() {
    let server = DevServer::start();
    let scripts = tempfile::tempdir().expect("tempdir");
    let exe = script_executor(
        scripts.path(),
        "printf '{\"status\":0,\"pad\":\"%s\"}' \"$(head -c 5000 /dev/zero | tr '\\0' x)\" > state.json",
    );
    let runner = RunnerSetup::new(&server)
        .set("execution", "executable_name", json!(exe))
        .set("execution", "max_state_bytes", json!(1024))
        .start();
    let id = server.enqueue(flow(json!([])), json!({}));
    let e = completed(&server, &runner, &id, LIMIT);
    let why = error_of(&e);
    assert!(
        why.contains("state.json is larger than 1024 bytes (execution.max_state_bytes)"),
        "{why}"
    );
    assert_eq!(only_result(&e)["has_errored"], true);
}

#[test]
fn an_execution_directory_swapped_for_a_link_gets_no_runner_file_outside() {
    let server = DevServer::start();
    let outside = tempfile::tempdir().expect("tempdir");
    let scripts = tempfile::tempdir().expect("tempdir");
    let exe = script_executor(
        scripts.path(),
        "d=$(pwd); mv \"$d\" \"$d.moved\"; ln -s \"$HOSTILE_OUTSIDE\" \"$d\"; echo after the swap; printf '{\"status\":0}' > state.json",
    );
    let runner = RunnerSetup::new(&server)
        .set("execution", "executable_name", json!(exe))
        // Landlock would stop the swap itself (the flow cannot write its
        // flow directory); this checks the layer under it, the runner's own
        // directory descriptor.
        .set("execution", "sandbox", json!("off"))
        .env("HOSTILE_OUTSIDE", &outside.path().to_string_lossy())
        .start();
    let id = server.enqueue(flow(json!([])), json!({}));
    let e = completed(&server, &runner, &id, LIMIT);
    assert_eq!(only_result(&e)["has_errored"], false, "{e:#}");
    assert!(
        empty(outside.path()),
        "the runner wrote outside: {:?}",
        fs::read_dir(outside.path())
            .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
    // Its files went to the directory it opened, wherever that is now.
    let flo = e["flo_id"].as_str().unwrap_or_default().to_string();
    let moved = PathBuf::from(format!("{}.moved", runner.exec_dir(&flo, &id).display()));
    assert!(moved.join("result.json").exists());
    assert_eq!(
        fs::read_to_string(moved.join("output.log")).unwrap_or_default(),
        "after the swap\n"
    );
}

#[test]
fn a_flow_directory_replaced_with_a_link_is_refused_before_anything_is_written() {
    let server = DevServer::start();
    let outside = tempfile::tempdir().expect("tempdir");
    let scripts = tempfile::tempdir().expect("tempdir");
    let exe = script_executor(
        scripts.path(),
        "cd ..; f=$(pwd); cd /; mv \"$f\" \"$f.x\"; ln -s \"$HOSTILE_OUTSIDE\" \"$f\"; printf '{\"status\":0}' > \"$f.x/$(ls \"$f.x\" | head -n1)/state.json\"",
    );
    let runner = RunnerSetup::new(&server)
        .set("execution", "executable_name", json!(exe))
        // As above: without Landlock, to test the directory descriptor.
        .set("execution", "sandbox", json!("off"))
        .env("HOSTILE_OUTSIDE", &outside.path().to_string_lossy())
        .start();
    let first = server.enqueue(flow(json!([])), json!({"flo_id": "shared-flow"}));
    completed(&server, &runner, &first, LIMIT);
    let second = server.enqueue(flow(json!([])), json!({"flo_id": "shared-flow"}));
    let e = completed(&server, &runner, &second, LIMIT);
    let why = error_of(&e);
    assert!(why.contains("is not a directory"), "{why}");
    assert!(empty(outside.path()), "the runner wrote outside");
}

#[test]
fn a_result_the_api_refuses_for_good_becomes_a_small_errored_result() {
    let server = DevServer::start();
    server.fault(json!({"route": "result", "max_body_bytes": 4000}));
    let (runner, _s) = runner_with(
        &server,
        "i=0; while [ $i -lt 100 ]; do echo \"line $i $(head -c 80 /dev/zero | tr '\\0' y)\"; i=$((i+1)); done; printf '{\"status\":0}' > state.json",
    );
    let id = server.enqueue(flow(json!([])), json!({}));
    let e = completed(&server, &runner, &id, LIMIT);
    let why = error_of(&e);
    assert!(
        why.contains("the API refused this execution's result (HTTP 413"),
        "{why}"
    );
    assert_eq!(only_result(&e)["has_errored"], true);
    let dead = runner.path().join("outbox").join("dead");
    assert!(!empty(&dead), "the original is kept for the operator");
    wait_for(LIMIT, "an empty outbox", || {
        fs::read_dir(runner.path().join("outbox"))
            .map(|d| d.flatten().all(|e| !e.path().is_file()))
            .unwrap_or(true)
    });
}

#[test]
fn the_same_execution_handed_out_twice_while_it_runs_is_run_once() {
    let server = DevServer::start();
    let scripts = tempfile::tempdir().expect("tempdir");
    let exe = script_executor(
        scripts.path(),
        "sleep 3; printf '{\"status\":0}' > state.json",
    );
    let runner = RunnerSetup::new(&server)
        .set("execution", "executable_name", json!(exe))
        .set("execution", "max_concurrent_executors", json!(2))
        .start();
    let id = server.enqueue(flow(json!([])), json!({"flo_id": "f1"}));
    wait_for(LIMIT, "the claim", || {
        !execution_requests(&server, "state", &id).is_empty()
    });
    // The API (say, one with non-atomic allocation) hands it out again.
    let again = json!({
        "flo": {"id": "f1", "name": "dup"},
        "execution": {"id": id, "flo_id": "f1"},
        "data": {"nodes": [], "edges": []}
    });
    server.post(
        "/admin/poll-responses",
        json!({"status": 200, "body": again.to_string()}),
    );
    let e = completed(&server, &runner, &id, LIMIT);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        execution_requests(&server, "state", &id).len(),
        1,
        "claimed twice; runner log:\n{}",
        runner.log_tail()
    );
    only_result(&server.execution(&id));
    assert_eq!(only_result(&e)["has_errored"], false);
    assert!(runner.log().contains("already running on this runner"));
}

#[test]
fn a_huge_poll_answer_costs_about_its_size_in_memory() {
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server).start();
    let warm = server.enqueue(flow(json!([])), json!({}));
    completed(&server, &runner, &warm, LIMIT);
    let before = peak_rss_kib(runner.pid());
    // 30 MB of `0,` as the flow definition of an execution the API does not
    // have (its claim is refused, so nothing runs).
    let mut body = String::with_capacity(30 << 20);
    body.push_str(r#"{"flo":{"id":"f"},"execution":{"id":"huge","flo_id":"f"},"data":["#);
    for _ in 0..(15 << 20) {
        body.push_str("0,");
    }
    body.push_str("0]}");
    server.post(
        "/admin/poll-responses",
        json!({"status": 200, "body": body}),
    );
    wait_for(LIMIT, "the huge answer to be taken", || {
        server.get("/admin/poll-responses")["queued"] == 0
    });
    let next = server.enqueue(flow(json!([])), json!({}));
    completed(&server, &runner, &next, LIMIT);
    let peak = peak_rss_kib(runner.pid());
    assert!(
        peak < before + 160 * 1024,
        "a 30 MB answer raised the runner's peak RSS from {before} KiB to {peak} KiB"
    );
}

/// A server that answers every request 400 with the request's body, as an
/// API that echoes what it refused.
fn echoing_server() -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = vec![0u8; 65536];
            let mut got = Vec::new();
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got);
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if got.len() >= end + 4 + len {
                        break;
                    }
                }
            }
            let text = String::from_utf8_lossy(&got).into_owned();
            let body = text
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or_default();
            let _ = write!(
                stream,
                "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

#[test]
fn the_registration_code_and_url_passwords_never_reach_the_log() {
    let server = DevServer::start();
    let echo = echoing_server();
    let with_password = echo.replacen("http://", "http://alice:pa55-w0rd-x@", 1);
    let mut runner = RunnerSetup::new(&server)
        .set("runner", "url", json!(with_password))
        .set("runner", "registration_code", json!("the-secret-code-42"))
        .start();
    runner.wait_exit(LIMIT);
    let log = runner.log();
    assert!(log.contains("HTTP 400"), "the refusal is logged: {log}");
    assert!(
        !log.contains("the-secret-code-42"),
        "the code leaked: {log}"
    );
    assert!(
        !log.contains("pa55-w0rd-x"),
        "the URL password leaked: {log}"
    );
}

#[test]
fn an_execution_id_with_a_newline_cannot_forge_a_log_line() {
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server).start();
    let warm = server.enqueue(flow(json!([])), json!({}));
    completed(&server, &runner, &warm, LIMIT);
    let forged = "x\n[2020-01-01T00:00:00Z ERROR] forged by a flow";
    let body = json!({
        "flo": {"id": "f"},
        "execution": {"id": forged, "flo_id": "f"},
        "data": {}
    });
    server.post(
        "/admin/poll-responses",
        json!({"status": 200, "body": body.to_string()}),
    );
    wait_for(LIMIT, "the answer to be taken", || {
        server.get("/admin/poll-responses")["queued"] == 0
    });
    let next = server.enqueue(flow(json!([])), json!({}));
    completed(&server, &runner, &next, LIMIT);
    let log = runner.log();
    assert!(log.contains("forged by a flow"), "the id is logged: {log}");
    // env_logger indents what follows a newline; still a line of its own.
    assert!(
        !log.lines()
            .any(|l| l.trim_start().starts_with("[2020-01-01T00:00:00Z ERROR]")),
        "a forged line: {log}"
    );
}
