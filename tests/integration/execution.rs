//! Executions end to end (PROTOCOL.md §4–§8, issue 2): the real
//! `flo-devserver`, the real `flo-runner` binary and the example executor.
//! Every assertion is on what the server received, on what the executor saw
//! (its `argv.json`) or on what is on disk.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use flo_testkit::{
    completed, execution_requests, executor_path, flow, lines_received, mode, only_result,
    peak_rss_kib, read_json, state_of, wait_for, DevServer, Runner, RunnerSetup,
};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(20);
const KEY_FILE: &str = "flomation-runner.pem";

// ---------------------------------------------------------------- helpers

/// The arguments the executor received (from the `argv.json` it wrote).
fn argv(dir: &Path) -> Vec<String> {
    read_json(&dir.join("argv.json"))["argv"]
        .as_array()
        .expect("argv array")
        .iter()
        .map(|a| a.as_str().expect("argv string").to_string())
        .collect()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The absolute key path the runner passes as `--key`.
fn key_path(runner: &Runner) -> String {
    runner
        .path()
        .canonicalize()
        .expect("canonical runner dir")
        .join(KEY_FILE)
        .to_string_lossy()
        .into_owned()
}

/// Waits until the runner has polled at least once (it is registered and
/// its executor discovery is done).
fn wait_polling(server: &DevServer, runner: &Runner) {
    wait_for(
        LIMIT,
        &format!("the runner's first poll; log:\n{}", runner.log_tail()),
        || !server.requests_on("poll").is_empty(),
    );
}

/// Every file and directory under `root` (not following links), relative.
fn tree(root: &Path) -> BTreeSet<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) {
        for entry in fs::read_dir(dir).expect("read_dir").flatten() {
            let path = entry.path();
            out.insert(path.strip_prefix(root).expect("under root").to_path_buf());
            if entry.file_type().expect("file type").is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

// ---------------------------------------------------------------- §5 §7 §8: the happy path

#[test]
fn a_flow_runs_with_the_protocols_files_arguments_context_and_result() {
    let test_started = SystemTime::now();
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server).start();
    let trigger = json!({
        "system_prompt": "prompt from the trigger",
        "agent_id": "agent-1",
        "agent_user_id": "agent-user-2",
        "conversation_id": "conversation-3",
        "trigger_source": "slack",
        "channel_type": "dm",
        "channel_id": "channel-4",
        "thread_id": "thread-5",
        "role": "assistant",
        "payload": {"list": [1, 2, 3], "none": null}
    });
    let the_flow = flow(json!([
        {"id": "before", "type": "log", "message": "before the entry node: not run"},
        {"id": "start", "type": "log", "message": "hello"},
        {"id": "echo", "type": "echo_trigger"},
        {"id": "err", "type": "stderr", "message": "on stderr"},
        {"id": "end", "type": "log", "message": "bye"}
    ]));
    let (flo, id) = ("flo-happy", "exec-happy");
    server.enqueue(
        the_flow.clone(),
        json!({
            "flo_id": flo,
            "execution_id": id,
            "name": "happy",
            "trigger_data": trigger,
            "entry_node_id": "start",
            "environment_id": "env-42",
            "owner_id": "owner-7",
            "organisation_id": "org-8",
            "trigger_type": "webhook",
            "author_email": "author@example.com",
            "triggerer_email": "triggerer@example.com",
            "system_prompt": "prompt from the flo",
            "system_flow": true
        }),
    );
    let e = completed(&server, &runner, id, LIMIT);
    let dir = runner.exec_dir(flo, id);

    // §5: directories 0750, files 0600, contents.
    let execs = runner.path().join("executions");
    for d in [execs.clone(), execs.join(flo), dir.clone()] {
        assert_eq!(mode(&d), 0o750, "mode of {}", d.display());
    }
    for f in [
        "execution.flow",
        "trigger-data.json",
        "context.json",
        "output.log",
    ] {
        assert_eq!(mode(&dir.join(f)), 0o600, "mode of {f}");
    }
    assert_eq!(read_json(&dir.join("execution.flow")), the_flow);
    assert_eq!(read_json(&dir.join("trigger-data.json")), trigger);

    let context = read_json(&dir.join("context.json"));
    let keys: BTreeSet<&str> = context
        .as_object()
        .expect("context object")
        .keys()
        .map(String::as_str)
        .collect();
    let expected_keys: BTreeSet<&str> = [
        "flow_id",
        "execution_id",
        "sequence",
        "author_id",
        "organisation_id",
        "runner_id",
        "start_time",
        "trigger_type",
        "author_email",
        "triggerer_email",
        "api_url",
        "system_prompt",
        "agent_id",
        "agent_user_id",
        "conversation_id",
        "trigger_source",
        "channel_type",
        "channel_id",
        "thread_id",
        "role",
        "system_flow",
    ]
    .into_iter()
    .collect();
    assert_eq!(keys, expected_keys, "context.json keys: {context:#}");
    let expect_str = [
        ("flow_id", flo),
        ("execution_id", id),
        ("author_id", "owner-7"),
        ("organisation_id", "org-8"),
        ("trigger_type", "webhook"),
        ("author_email", "author@example.com"),
        ("triggerer_email", "triggerer@example.com"),
        ("api_url", server.url.as_str()),
        ("system_prompt", "prompt from the trigger"),
        ("agent_id", "agent-1"),
        ("agent_user_id", "agent-user-2"),
        ("conversation_id", "conversation-3"),
        ("trigger_source", "slack"),
        ("channel_type", "dm"),
        ("channel_id", "channel-4"),
        ("thread_id", "thread-5"),
        ("role", "assistant"),
    ];
    for (k, v) in expect_str {
        assert_eq!(context[k], v, "context.json {k}: {context:#}");
    }
    assert_eq!(context["runner_id"], runner.identifier().as_str());
    assert_eq!(context["system_flow"], true);
    assert!(
        context["sequence"].is_u64(),
        "sequence is a number: {context}"
    );
    assert_eq!(context["sequence"], e["sequence"]);
    let start_time = context["start_time"].as_str().expect("start_time string");
    let start = humantime::parse_rfc3339(start_time)
        .unwrap_or_else(|err| panic!("start_time {start_time:?} is not RFC 3339 UTC: {err}"));
    assert!(
        start + Duration::from_secs(2) >= test_started && start <= SystemTime::now(),
        "start_time {start_time} is not the time the execution started"
    );

    // §7: the exact arguments, in order, in the execution directory, in its
    // own process group.
    let key = key_path(&runner);
    assert!(Path::new(&key).is_file(), "--key {key} is the key file");
    #[rustfmt::skip]
    let expected = strings(&[
        "--output", "json", "--path", "execution.flow", "--entry", "start",
        "--id", id, "--flow", flo, "--api", &server.url, "--runner", "test-runner",
        "--environment", "env-42", "--trigger-data", "trigger-data.json",
        "--context", "context.json", "--key", &key,
    ]);
    assert_eq!(argv(&dir), expected);
    let seen = read_json(&dir.join("argv.json"));
    assert_eq!(
        Path::new(seen["cwd"].as_str().expect("cwd")),
        dir.canonicalize().expect("canonical dir")
    );
    assert_eq!(
        seen["pgid"], seen["pid"],
        "the executor leads its own process group"
    );

    // Logs: what reached /logs is what the executor printed, in order.
    let lines = lines_received(&server, id);
    let trigger_line = format!(
        "trigger-data: {}",
        fs::read_to_string(dir.join("trigger-data.json")).expect("trigger-data.json")
    );
    let context_line = format!(
        "context: {}",
        fs::read_to_string(dir.join("context.json")).expect("context.json")
    );
    let stdout: Vec<&str> = lines
        .iter()
        .map(String::as_str)
        .filter(|l| *l != "[node err] on stderr")
        .collect();
    assert_eq!(
        stdout,
        vec![
            "[node start] hello",
            trigger_line.as_str(),
            context_line.as_str(),
            "[node end] bye"
        ],
        "stdout lines on /logs"
    );
    assert_eq!(lines.len(), 5, "one stderr line too: {lines:#?}");
    assert_eq!(
        e["logs"],
        json!(lines),
        "the server's log equals the batches it accepted"
    );

    // §8: the result.
    let result = only_result(&e);
    assert_eq!(result["has_errored"], false, "{result:#?}");
    assert!(
        !result.contains_key("cancelled"),
        "cancelled is omitted when false: {result:#?}"
    );
    let mut state = state_of(&result);
    let logs = state.remove("logs").expect("state.logs");
    assert_eq!(
        logs,
        lines.join("\n"),
        "state.logs is every line joined by \\n"
    );
    assert_eq!(
        Value::Object(state.clone()),
        read_json(&dir.join("state.json")),
        "the state is the executor's state.json"
    );
    assert_eq!(state["status"], 0);
    assert_eq!(state["id"], id);
    assert_eq!(state["flow_id"], flo);
    assert_eq!(
        fs::read_to_string(dir.join("output.log")).expect("output.log"),
        format!("{}\n", lines.join("\n")),
        "output.log holds the whole output"
    );

    // The last batch of logs went out before the result.
    let result_seq = execution_requests(&server, "result", id)[0]["seq"]
        .as_u64()
        .unwrap();
    for r in execution_requests(&server, "logs", id) {
        assert!(
            r["seq"].as_u64().unwrap() < result_seq,
            "logs after the result: {r}"
        );
    }

    // §6: one claim, then the executor ran; every request signed properly.
    let claims = execution_requests(&server, "state", id);
    assert_eq!(claims.len(), 1, "{claims:#?}");
    assert_eq!(claims[0]["body"], json!({"state": "running"}));
    assert_eq!(claims[0]["status"], 200);
    assert_eq!(e["state_posts"], 1);
    for r in server.requests() {
        if r["route"] != "register" {
            assert_eq!(r["signature_valid"], true, "signature of {r}");
        }
    }
}

#[test]
fn arguments_without_optional_parts_follow_the_leading_words_of_executable_name() {
    let server = DevServer::start();
    let exe = executor_path();
    let runner = RunnerSetup::new(&server)
        .set(
            "execution",
            "executable_name",
            json!(format!("{} --leading-flag stray-word", exe.display())),
        )
        .start();
    let id = server.enqueue(
        flow(json!([{"type": "log", "message": "plain"}])),
        json!({"flo_id": "flo-plain", "execution_id": "exec-plain"}),
    );
    let e = completed(&server, &runner, &id, LIMIT);
    let dir = runner.exec_dir("flo-plain", &id);
    let key = key_path(&runner);
    #[rustfmt::skip]
    let expected = strings(&[
        "--leading-flag", "stray-word",
        "--output", "json", "--path", "execution.flow", "--entry", "",
        "--id", "exec-plain", "--flow", "flo-plain", "--api", &server.url,
        "--runner", "test-runner", "--context", "context.json", "--key", &key,
    ]);
    assert_eq!(argv(&dir), expected);
    assert!(!dir.join("trigger-data.json").exists());
    let result = only_result(&e);
    assert_eq!(result["has_errored"], false, "{result:#?}");
    assert_eq!(state_of(&result)["logs"], "[node #0] plain");

    // Absent optional values are empty strings; no trigger data, no prompt.
    let context = read_json(&dir.join("context.json"));
    for k in [
        "author_id",
        "organisation_id",
        "trigger_type",
        "author_email",
        "triggerer_email",
        "system_prompt",
        "agent_id",
        "role",
    ] {
        assert_eq!(context[k], "", "context.json {k}: {context:#}");
    }
    assert_eq!(context["system_flow"], false);

    // The flow's system prompt when the trigger data has none (or a
    // non-string one); trigger fields that are not strings become "".
    let id2 = server.enqueue(
        flow(json!([{"type": "log", "message": "second"}])),
        json!({
            "flo_id": "flo-plain",
            "execution_id": "exec-prompt",
            "system_prompt": "prompt from the flo",
            "trigger_data": {"system_prompt": 5, "agent_id": 7, "role": "user"}
        }),
    );
    let e2 = completed(&server, &runner, &id2, LIMIT);
    assert_eq!(only_result(&e2)["has_errored"], false);
    let context = read_json(&runner.exec_dir("flo-plain", &id2).join("context.json"));
    assert_eq!(context["system_prompt"], "prompt from the flo");
    assert_eq!(context["agent_id"], "");
    assert_eq!(context["role"], "user");
    assert!(context["sequence"].as_u64() > e["sequence"].as_u64());
}

#[test]
fn output_lines_are_streamed_in_order_and_in_batches() {
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server).start();
    let id = server.enqueue(
        flow(json!([{"type": "print", "count": 1000, "bytes": 60}])),
        json!({"flo_id": "flo-batch"}),
    );
    let e = completed(&server, &runner, &id, LIMIT);
    let expected: Vec<String> = (1..=1000)
        .map(|i| format!("{:x<60}", format!("line {i:06} ")))
        .collect();
    let lines = lines_received(&server, &id);
    assert!(lines == expected, "the 1000 lines, in order, exactly once");
    let requests = execution_requests(&server, "logs", &id).len();
    assert!(
        requests < 100,
        "1000 lines took {requests} /logs requests: they should be batched"
    );
    assert_eq!(state_of(&only_result(&e))["logs"], expected.join("\n"));
}

/// Far more lines than the shipper may queue (10,000), printed as fast as
/// the executor can: while the API keeps up, backpressure holds the executor
/// on its pipe instead of dropping lines, so every line arrives, in order,
/// and there is no drop marker.
#[test]
fn a_fast_printer_loses_no_line_while_the_api_keeps_up() {
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server).start();
    let n = 50_000;
    let id = server.enqueue(
        flow(json!([{"type": "print", "count": n, "bytes": 60}])),
        json!({"flo_id": "flo-fast"}),
    );
    completed(&server, &runner, &id, Duration::from_secs(90));
    let lines = lines_received(&server, &id);
    let dropped: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("[flo-runner:"))
        .collect();
    assert!(dropped.is_empty(), "lines were dropped: {dropped:?}");
    assert_eq!(lines.len(), n);
    let in_order = lines
        .iter()
        .enumerate()
        .all(|(i, l)| *l == format!("{:x<60}", format!("line {:06} ", i + 1)));
    assert!(in_order, "every line, in order");
}

/// An execution that prints nothing leaves no `output.log` (the file is
/// created with the first line), and `result.json` holds exactly what the
/// server received.
#[test]
fn a_quiet_execution_has_no_output_log_and_result_json_is_the_report() {
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server).start();
    let id = server.enqueue(flow(json!([])), json!({"flo_id": "flo-quiet"}));
    let e = completed(&server, &runner, &id, LIMIT);
    let dir = runner.exec_dir("flo-quiet", &id);
    assert!(dir.join("state.json").exists());
    assert!(!dir.join("output.log").exists(), "no output, no output.log");
    let result = only_result(&e);
    assert_eq!(result["has_errored"], false, "{result:?}");
    assert_eq!(read_json(&dir.join("result.json")), Value::Object(result));
    assert_eq!(mode(&dir.join("result.json")), 0o600);
}

// ---------------------------------------------------------------- §5: trigger data

#[test]
fn trigger_data_shapes_are_normalised_or_skipped() {
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server)
        .set("execution", "max_concurrent_executors", json!(2))
        .start();
    // (name, trigger data, expected trigger-data.json bytes or None)
    let object = json!({"b": 1, "a": "x", "nested": {"k": [true, null]}});
    let cases: Vec<(&str, Value, Option<String>)> = vec![
        (
            "object",
            object.clone(),
            Some(serde_json::to_string(&object).unwrap()),
        ),
        (
            "object-string",
            json!("{ \"k\" : 1 }"),
            Some("{ \"k\" : 1 }".into()),
        ),
        ("array-string", json!("[1, 2]"), Some("[1,2]".into())),
        ("array", json!([1, "two"]), Some("[1,\"two\"]".into())),
        ("not-json-string", json!("not json"), None),
        ("null", Value::Null, None),
        ("empty-object-string", json!("{}"), None),
        ("empty-object", json!({}), None),
        ("empty-string", json!(""), None),
    ];
    for (name, data, _) in &cases {
        server.enqueue(
            flow(json!([{"type": "echo_trigger"}])),
            json!({
                "flo_id": "flo-shapes",
                "execution_id": format!("shape-{name}"),
                "trigger_data": data
            }),
        );
    }
    for (name, data, expected) in &cases {
        let id = format!("shape-{name}");
        let e = completed(&server, &runner, &id, LIMIT);
        let result = only_result(&e);
        assert_eq!(result["has_errored"], false, "{name}: {result:#?}");
        let dir = runner.exec_dir("flo-shapes", &id);
        let file = dir.join("trigger-data.json");
        let args = argv(&dir);
        let flag = args.iter().position(|a| a == "--trigger-data");
        let lines = lines_received(&server, &id);
        match expected {
            Some(text) => {
                assert_eq!(
                    fs::read_to_string(&file)
                        .unwrap_or_else(|e| panic!("{name} ({data}): no trigger-data.json: {e}")),
                    *text,
                    "{name}: trigger-data.json for {data}"
                );
                let at = flag.unwrap_or_else(|| panic!("{name}: no --trigger-data in {args:?}"));
                assert_eq!(args[at + 1], "trigger-data.json");
                assert_eq!(args[at + 2], "--context", "{name}: order in {args:?}");
                assert_eq!(lines[0], format!("trigger-data: {text}"), "{name}");
            }
            None => {
                assert!(
                    !file.exists(),
                    "{name}: trigger-data.json written for {data}"
                );
                assert_eq!(flag, None, "{name}: --trigger-data passed: {args:?}");
                assert!(
                    lines.iter().all(|l| !l.starts_with("trigger-data:")),
                    "{name}: {lines:?}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------- §8: failures

#[test]
fn every_failure_shape_is_reported_once() {
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server)
        .set("execution", "max_concurrent_executors", json!(3))
        .start();
    let cases = [
        (
            "exit",
            json!([{"type": "log", "message": "about to exit"}, {"type": "exit", "code": 3}]),
        ),
        (
            "no-state",
            json!([{"type": "log", "message": "no state"}, {"type": "no_state"}]),
        ),
        (
            "bad-state",
            json!([{"type": "log", "message": "bad state"}, {"type": "bad_state"}]),
        ),
        ("status-2", json!([{"type": "status", "value": 2}])),
        ("status-negative", json!([{"type": "status", "value": -1}])),
        (
            "status-weird",
            json!([{"type": "status", "value": "weird"}]),
        ),
        (
            "fail",
            json!([{"id": "f", "type": "fail", "message": "boom"}, {"id": "g", "type": "log", "message": "after"}]),
        ),
    ];
    for (name, nodes) in &cases {
        server.enqueue(
            flow(nodes.clone()),
            json!({"flo_id": "flo-fail", "execution_id": name}),
        );
    }
    let mut outcomes = Vec::new();
    for (name, _) in &cases {
        let e = completed(&server, &runner, name, LIMIT);
        outcomes.push((name, only_result(&e)));
    }
    for (name, result) in &outcomes {
        let state = state_of(result);
        let logs = state["logs"].as_str().expect("logs").to_string();
        assert!(
            !result.contains_key("cancelled"),
            "{name}: not cancelled: {result:#?}"
        );
        match **name {
            "exit" | "no-state" | "bad-state" => {
                assert_eq!(result["has_errored"], true, "{name}: {result:#?}");
                let keys: BTreeSet<&str> = state.keys().map(String::as_str).collect();
                assert_eq!(
                    keys,
                    ["error", "logs", "output"].into_iter().collect(),
                    "{name}: {state:#?}"
                );
                let error = state["error"].as_str().expect("error string");
                assert!(error.contains("state.json"), "{name}: error {error:?}");
                if **name == "bad-state" {
                    assert!(error.contains("not valid JSON"), "{name}: error {error:?}");
                }
                assert_eq!(
                    state["output"],
                    logs.as_str(),
                    "{name}: output is the log text"
                );
                assert!(
                    logs.starts_with("[node #0] "),
                    "{name}: the executor's line is in the logs: {logs:?}"
                );
            }
            "status-2" | "status-negative" => {
                assert_eq!(result["has_errored"], true, "{name}: {result:#?}");
                assert_eq!(state["status"], if **name == "status-2" { 2 } else { -1 });
                assert_eq!(state["id"], **name, "the executor's state is kept");
                assert!(state.contains_key("outputs"), "{state:#?}");
                assert!(!state.contains_key("error"), "{state:#?}");
            }
            "status-weird" => {
                assert_eq!(
                    result["has_errored"], false,
                    "a non-numeric status is not an error: {result:#?}"
                );
                assert_eq!(state["status"], "weird");
            }
            "fail" => {
                assert_eq!(result["has_errored"], true, "{name}: {result:#?}");
                assert_eq!(state["status"], 1);
                assert_eq!(state["outputs"]["f"], json!({"ok": false, "error": "boom"}));
                assert!(logs.contains("[node f] failed: boom"), "{logs:?}");
                assert!(logs.contains("[node g] after"), "{logs:?}");
            }
            other => unreachable!("{other}"),
        }
    }
    // No second result turns up later.
    std::thread::sleep(Duration::from_millis(500));
    for (name, _) in &cases {
        assert_eq!(
            server.execution(name)["results"].as_array().map(Vec::len),
            Some(1),
            "{name}"
        );
    }
}

#[test]
fn an_executor_that_cannot_start_is_an_errored_result() {
    let server = DevServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    // A link, not a copy: running a freshly written copy races with other
    // test threads' forks still holding it open for writing (ETXTBSY).
    let copy = dir.path().join("vanishing-executor");
    std::os::unix::fs::symlink(executor_path(), &copy).expect("link the executor");
    let runner = RunnerSetup::new(&server)
        .set(
            "execution",
            "executable_name",
            json!(copy.to_string_lossy()),
        )
        .start_in(dir);
    wait_polling(&server, &runner);
    fs::remove_file(&copy).expect("remove the executor");
    let id = server.enqueue(
        flow(json!([{"type": "log", "message": "x"}])),
        json!({"flo_id": "flo-gone"}),
    );
    let e = completed(&server, &runner, &id, LIMIT);
    let result = only_result(&e);
    assert_eq!(result["has_errored"], true, "{result:#?}");
    let error = state_of(&result)["error"]
        .as_str()
        .expect("error")
        .to_string();
    assert!(error.contains("cannot start"), "{error:?}");
}

#[test]
fn a_result_is_sent_again_only_when_its_outcome_is_unknown() {
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server).start();

    // 503: the outcome is unknown, so the same result is retried until taken.
    server.fault(json!({"route": "result", "error_rate": 1.0, "error_status": 503}));
    let unknown = server.enqueue(
        flow(json!([{"type": "log", "message": "retry me"}])),
        json!({"flo_id": "flo-resend"}),
    );
    wait_for(LIMIT, "two refused result attempts", || {
        execution_requests(&server, "result", &unknown).len() >= 2
    });
    server.delete("/admin/faults");
    let e = completed(&server, &runner, &unknown, LIMIT);
    only_result(&e);
    let attempts = execution_requests(&server, "result", &unknown);
    assert_eq!(attempts.last().unwrap()["status"], 200);
    for a in &attempts {
        assert_eq!(
            a["body"], attempts[0]["body"],
            "every attempt sends the same result"
        );
    }

    // 409: a definite answer, so the result is not sent again.
    server.fault(json!({"route": "result", "error_rate": 1.0, "error_status": 409}));
    let refused = server.enqueue(
        flow(json!([{"type": "log", "message": "refused"}])),
        json!({"flo_id": "flo-resend"}),
    );
    wait_for(LIMIT, "the result attempt", || {
        !execution_requests(&server, "result", &refused).is_empty()
    });
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        execution_requests(&server, "result", &refused).len(),
        1,
        "a result answered 409 was sent again"
    );
    server.delete("/admin/faults");
    let next = server.enqueue(
        flow(json!([{"type": "log", "message": "next"}])),
        json!({"flo_id": "flo-resend"}),
    );
    completed(&server, &runner, &next, LIMIT);
}

// ---------------------------------------------------------------- §4: the pool and polling

#[test]
fn never_more_executors_than_the_bound() {
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server)
        .set("execution", "max_concurrent_executors", json!(2))
        .start();
    let ids: Vec<String> = (0..5)
        .map(|i| {
            server.enqueue(
                flow(json!([{"type": "sleep", "ms": 1500}])),
                json!({"flo_id": "flo-bound", "execution_id": format!("bound-{i}")}),
            )
        })
        .collect();
    for id in &ids {
        let e = completed(&server, &runner, id, Duration::from_secs(30));
        assert_eq!(only_result(&e)["has_errored"], false);
    }
    // Each execution is "running" from the server's receipt of its claim to
    // its receipt of the result (the executor runs strictly inside), and
    // "held" from the poll that allocated it (allocation is FIFO, so the
    // n-th poll answered 200 took the n-th execution) to its result.
    let allocations: Vec<u64> = server
        .requests_on("poll")
        .iter()
        .filter(|r| r["status"] == 200)
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(allocations.len(), 5, "five polls brought work");
    let mut running = Vec::new();
    let mut held = Vec::new();
    let mut pids = BTreeSet::new();
    for (id, allocated) in ids.iter().zip(allocations) {
        let claim = execution_requests(&server, "state", id);
        let result = execution_requests(&server, "result", id);
        assert_eq!((claim.len(), result.len()), (1, 1), "{id}");
        let (start, end) = (
            claim[0]["seq"].as_u64().unwrap(),
            result[0]["seq"].as_u64().unwrap(),
        );
        assert!(allocated < start && start < end, "{id}");
        running.push((start, end));
        held.push((allocated, end));
        let argv = read_json(&runner.exec_dir("flo-bound", id).join("argv.json"));
        pids.insert(argv["pid"].as_u64().expect("pid"));
    }
    assert_eq!(pids.len(), 5, "five executor processes");
    assert_eq!(
        peak_overlap(&running),
        2,
        "executions running at once (the bound is 2, and it is used)"
    );
    assert_eq!(
        peak_overlap(&held),
        2,
        "executions taken from the server and not yet reported"
    );
}

/// The most intervals (request sequence numbers, end exclusive) open at once.
fn peak_overlap(intervals: &[(u64, u64)]) -> i32 {
    let mut events: Vec<(u64, i32)> = intervals
        .iter()
        .flat_map(|&(start, end)| [(start, 1), (end, -1)])
        .collect();
    events.sort();
    let (mut now, mut peak) = (0, 0);
    for (_, delta) in events {
        now += delta;
        peak = peak.max(now);
    }
    peak
}

#[test]
fn no_polls_while_every_slot_is_busy() {
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server).start();
    let id = server.enqueue(
        flow(json!([{"type": "sleep", "ms": 3000}])),
        json!({"flo_id": "flo-full"}),
    );
    completed(&server, &runner, &id, LIMIT);
    let claim = execution_requests(&server, "state", &id)[0]["seq"]
        .as_u64()
        .unwrap();
    let result = execution_requests(&server, "result", &id)[0]["seq"]
        .as_u64()
        .unwrap();
    let polls: Vec<u64> = server
        .requests_on("poll")
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    let during: Vec<&u64> = polls
        .iter()
        .filter(|s| **s > claim && **s < result)
        .collect();
    assert!(
        during.is_empty(),
        "polls {during:?} while the only slot was busy (claim #{claim}, result #{result})"
    );
    // The poll that brought the work came before the claim; polling resumes.
    assert!(polls.iter().any(|s| *s < claim));
    wait_for(LIMIT, "a poll after the result", || {
        server
            .requests_on("poll")
            .iter()
            .any(|r| r["seq"].as_u64() > Some(result))
    });
}

#[test]
fn check_in_pacing_and_prompt_polls_after_work() {
    let server = DevServer::start(); // no long-poll: 204 at once
    let runner = RunnerSetup::new(&server)
        .set("execution", "max_concurrent_executors", json!(2))
        .start(); // checkin_timeout 1
    wait_for(
        LIMIT,
        &format!("five polls; log:\n{}", runner.log_tail()),
        || server.requests_on("poll").len() >= 5,
    );
    let idle = server.requests_on("poll");
    for r in &idle {
        assert_eq!(r["status"], 204, "{r}");
        let at = r["body"]["requested_at"].as_str().expect("requested_at");
        humantime::parse_rfc3339(at)
            .unwrap_or_else(|e| panic!("requested_at {at:?} is not RFC 3339: {e}"));
    }
    for pair in idle.windows(2) {
        let gap = pair[1]["at_ms"].as_u64().unwrap() - pair[0]["at_ms"].as_u64().unwrap();
        assert!(
            (900..5000).contains(&gap),
            "polls answered 204 must be ~checkin_timeout (1 s) apart, got {gap} ms"
        );
    }

    // Work arrives and a slot is still free: the next poll goes out at once.
    let id = server.enqueue(
        flow(json!([{"type": "sleep", "ms": 1500}])),
        json!({"flo_id": "flo-pace"}),
    );
    completed(&server, &runner, &id, LIMIT);
    let polls = server.requests_on("poll");
    let at = polls
        .iter()
        .position(|r| r["status"] == 200)
        .expect("the poll that brought the work");
    let next = polls.get(at + 1).expect("a poll after the work");
    let gap = next["at_ms"].as_u64().unwrap() - polls[at]["at_ms"].as_u64().unwrap();
    assert!(
        gap < 500,
        "with a slot free, the poll after work must not wait out the check-in interval: {gap} ms"
    );
}

// ---------------------------------------------------------------- §5: hostile ids

#[test]
fn hostile_ids_write_nothing_outside_the_execution_directory() {
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server).start();
    let outside = runner.path().parent().expect("tmp").join("escape");
    let outside_existed = outside.exists();
    let long = "e".repeat(200);
    let bad = ["../escape", "../../escape", "..", ".", "a/b", "x\\y", &long];
    // A bad execution id: refused, nothing written, nothing can be reported.
    for (i, bad_id) in bad.iter().enumerate() {
        server.enqueue(
            flow(json!([{"type": "log", "message": "must not run"}])),
            json!({"execution_id": bad_id, "flo_id": format!("flo-ok-{i}")}),
        );
    }
    // A good execution id with a bad flow id: refused and reported as errored.
    let mut reported = Vec::new();
    for (i, bad_flo) in bad.iter().chain(&[""]).enumerate() {
        let id = format!("good-id-{i}");
        server.enqueue(
            flow(json!([{"type": "log", "message": "must not run"}])),
            json!({"execution_id": id, "flo_id": bad_flo}),
        );
        reported.push(id);
    }
    let normal = server.enqueue(
        flow(json!([{"type": "log", "message": "after the hostile ones"}])),
        json!({"flo_id": "flo-normal", "execution_id": "normal"}),
    );
    let e = completed(&server, &runner, &normal, LIMIT);
    assert_eq!(only_result(&e)["has_errored"], false);

    for id in &reported {
        let e = completed(&server, &runner, id, LIMIT);
        let result = only_result(&e);
        assert_eq!(result["has_errored"], true, "{id}: {result:#?}");
        assert!(
            state_of(&result)["error"].as_str().is_some(),
            "{id}: {result:#?}"
        );
        assert_eq!(e["state_posts"], 0, "{id}: not claimed");
        assert_eq!(e["log_batches"], 0, "{id}: no logs");
    }
    // (Listed rather than fetched one by one: an HTTP client normalises
    // `.` and `..` out of a URL path.)
    let listed = server.get("/admin/executions");
    for bad_id in &bad {
        let e = listed
            .as_array()
            .expect("executions")
            .iter()
            .find(|e| e["id"] == *bad_id)
            .unwrap_or_else(|| panic!("{bad_id:?} not listed: {listed:#}"));
        assert_eq!(e["status"], "allocated", "{bad_id:?} was handed out: {e:#}");
    }
    // Only the valid ids ever appeared in a URL.
    for r in server.requests() {
        let path = r["path"].as_str().unwrap_or_default();
        if let Some(rest) = path.strip_prefix("/api/v1/execution/") {
            let id = rest.split('/').next().unwrap_or_default();
            assert!(
                id == "normal" || reported.iter().any(|g| g == id),
                "request for an unexpected execution: {path}"
            );
        }
    }

    // On disk: the execution directory holds the discovery manifest and the
    // normal execution only; nothing a hostile id names exists anywhere.
    let found = tree(runner.path());
    let normal_dir = Path::new("executions/flo-normal/normal");
    let mut expected: BTreeSet<PathBuf> = [
        "executions",
        "executions/manifest.json",
        "executions/flo-normal",
        "executions/flo-normal/normal",
    ]
    .into_iter()
    .map(PathBuf::from)
    .collect();
    for f in fs::read_dir(runner.path().join(normal_dir))
        .expect("normal dir")
        .flatten()
    {
        expected.insert(normal_dir.join(f.file_name()));
    }
    let under_executions: BTreeSet<PathBuf> = found
        .iter()
        .filter(|p| p.starts_with("executions"))
        .cloned()
        .collect();
    assert_eq!(under_executions, expected, "files under executions/");
    for p in &found {
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        assert!(
            !name.contains("escape") && !["a", "b", "x\\y", long.as_str()].contains(&&*name),
            "{} was created: {found:#?}",
            p.display()
        );
    }
    assert!(
        outside_existed || !outside.exists(),
        "{} was created",
        outside.display()
    );
    let argv_files: Vec<&PathBuf> = found.iter().filter(|p| p.ends_with("argv.json")).collect();
    assert_eq!(
        argv_files,
        vec![&normal_dir.join("argv.json")],
        "the executor ran only for the normal execution"
    );
}

/// Percent-decodes a URL path segment (as the server does).
fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let hex = segment
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn ids_that_need_escaping_in_a_url_never_reach_another_executions_routes() {
    // Path-safe on disk, but `?`, `#` and `%` mean something in a URL: used
    // unescaped, the claim for "query?x" goes to the result route of an
    // execution "query". The runner must escape them (or refuse the ids).
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server).start();
    let ids = ["query?x", "hash#x", "pct%41", "space x"];
    for id in ids {
        server.enqueue(
            flow(json!([{"type": "log", "message": "url"}])),
            json!({"flo_id": "flo-url", "execution_id": id}),
        );
    }
    let normal = server.enqueue(
        flow(json!([{"type": "log", "message": "normal"}])),
        json!({"flo_id": "flo-url", "execution_id": "normal"}),
    );
    completed(&server, &runner, &normal, LIMIT);
    let mut wrong = Vec::new();
    for r in server.requests() {
        let path = r["path"].as_str().unwrap_or_default();
        let Some(rest) = path.strip_prefix("/api/v1/execution/") else {
            continue;
        };
        let target = percent_decode(rest.split('/').next().unwrap_or_default());
        if target != "normal" && !ids.contains(&target.as_str()) {
            wrong.push(format!("{} {path} {}", r["route"], r["body"]));
        }
    }
    assert!(
        wrong.is_empty(),
        "requests meant for one execution reached another one's routes:\n{}",
        wrong.join("\n")
    );
}

// ---------------------------------------------------------------- §6: claims

#[test]
fn a_refused_claim_is_not_run_and_a_failing_claim_is_retried() {
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server).start();
    for code in [409, 403, 404] {
        server.enqueue(
            flow(json!([{"type": "log", "message": "must not run"}])),
            json!({
                "flo_id": "flo-claim",
                "execution_id": format!("refused-{code}"),
                "claim_status": code
            }),
        );
    }
    let next = server.enqueue(
        flow(json!([{"type": "log", "message": "runs"}])),
        json!({"flo_id": "flo-claim", "execution_id": "claimed"}),
    );
    let e = completed(&server, &runner, &next, LIMIT);
    assert_eq!(only_result(&e)["has_errored"], false);
    for code in [409, 403, 404] {
        let id = format!("refused-{code}");
        let e = server.execution(&id);
        assert_eq!(e["state_posts"], 1, "{id}: claimed once, not retried");
        assert_eq!(e["results"], json!([]), "{id}: no result");
        assert_eq!(e["log_batches"], 0, "{id}: no logs");
        assert!(
            !runner.exec_dir("flo-claim", &id).exists(),
            "{id}: an execution directory was made"
        );
    }

    // Server errors on the claim: retried with backoff, then run.
    server.fault(json!({"route": "state", "error_rate": 1.0, "error_status": 500}));
    let retried = server.enqueue(
        flow(json!([{"type": "log", "message": "claimed at last"}])),
        json!({"flo_id": "flo-claim", "execution_id": "retried"}),
    );
    wait_for(LIMIT, "two failed claims", || {
        execution_requests(&server, "state", &retried).len() >= 2
    });
    assert!(
        !runner.exec_dir("flo-claim", &retried).exists(),
        "run before the claim was confirmed"
    );
    server.delete("/admin/faults");
    let e = completed(&server, &runner, &retried, LIMIT);
    let result = only_result(&e);
    assert_eq!(result["has_errored"], false, "{result:#?}");
    let claims = execution_requests(&server, "state", &retried);
    let statuses: Vec<&Value> = claims.iter().map(|r| &r["status"]).collect();
    assert!(claims.len() >= 3, "{statuses:?}");
    assert_eq!(claims.last().unwrap()["status"], 200, "{statuses:?}");
    assert!(claims[..claims.len() - 1]
        .iter()
        .all(|r| r["status"] == 500));
    assert_eq!(state_of(&result)["logs"], "[node #0] claimed at last");
}

// ---------------------------------------------------------------- §4: malformed answers

/// Queues one forced poll answer, waits for the runner to take it and then to
/// poll normally again (a 204).
fn feed_poll_answer(server: &DevServer, runner: &Runner, answer: Value) {
    let forced_before = server
        .requests_on("poll")
        .iter()
        .filter(|r| r["status"] == 200)
        .count();
    server.post("/admin/poll-responses", answer.clone());
    let mut forced_seq = 0;
    wait_for(
        LIMIT,
        &format!("the runner to take {answer}; log:\n{}", runner.log_tail()),
        || {
            let forced: Vec<Value> = server
                .requests_on("poll")
                .into_iter()
                .filter(|r| r["status"] == 200)
                .collect();
            match forced.get(forced_before) {
                Some(r) => {
                    forced_seq = r["seq"].as_u64().unwrap();
                    true
                }
                None => false,
            }
        },
    );
    wait_for(
        LIMIT,
        &format!("a normal poll after {answer}; log:\n{}", runner.log_tail()),
        || {
            server
                .requests_on("poll")
                .iter()
                .any(|r| r["seq"].as_u64() > Some(forced_seq) && r["status"] == 204)
        },
    );
}

#[test]
fn malformed_poll_answers_leave_the_runner_polling() {
    let server = DevServer::start();
    let mut runner = RunnerSetup::new(&server).start();
    wait_polling(&server, &runner);
    for body in [
        "{not json",
        "",
        "[]",
        r#"{"flo": {"id": "f"}, "data": {}}"#,
        r#"{"execution": {"id": "named-only"}, "data": {}}"#,
    ] {
        feed_poll_answer(&server, &runner, json!({ "body": body }));
    }
    // The answer that named an execution id got an errored result.
    let named = execution_requests(&server, "result", "named-only");
    assert_eq!(named.len(), 1, "{named:#?}");
    assert_eq!(named[0]["body"]["has_errored"], true, "{named:#?}");

    feed_poll_answer(&server, &runner, json!({ "huge_bytes": 100_000_000u64 }));
    let peak_mib = peak_rss_kib(runner.pid()) / 1024;
    assert!(
        peak_mib < 100,
        "runner peak RSS {peak_mib} MiB after a 100 MB poll answer"
    );

    let id = server.enqueue(
        flow(json!([{"type": "log", "message": "still working"}])),
        json!({"flo_id": "flo-after-malformed"}),
    );
    let e = completed(&server, &runner, &id, LIMIT);
    assert_eq!(only_result(&e)["has_errored"], false);
    assert!(runner.is_running(), "the runner is still alive");
    assert_eq!(runner.stop().code(), Some(0));
}
