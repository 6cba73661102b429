//! Watching a runner: /metrics and /healthz on runner.metrics_listen, and
//! JSON log lines, against the real dev server and runner.

use std::time::Duration;

use flo_testkit::*;
use serde_json::{json, Value};

#[test]
fn metrics_and_healthz_report_a_run_and_logs_can_be_json() {
    let server = DevServer::start();
    let port = free_port();
    let mut runner = RunnerSetup::new(&server)
        .set(
            "runner",
            "metrics_listen",
            json!(format!("127.0.0.1:{port}")),
        )
        .env("FLO_LOG_FORMAT", "json")
        .start();
    let base = format!("http://127.0.0.1:{port}");
    wait_for(Duration::from_secs(20), "/healthz 200", || {
        http_get(&format!("{base}/healthz")).0 == 200
    });

    let id = server.enqueue(
        flow(json!([{"id": "a", "type": "log", "message": "hello"}])),
        json!({}),
    );
    server.wait_completed(&id, Duration::from_secs(20));
    let mut body = String::new();
    // The run is counted when it finishes, before its result is sent and
    // acknowledged: wait for the acknowledgement too.
    wait_for(Duration::from_secs(10), "the run in /metrics", || {
        body = http_get(&format!("{base}/metrics")).1;
        body.contains("flo_runner_executions_finished_total{outcome=\"success\"} 1")
            && body.contains("flo_runner_api_requests_total{route=\"result\",status=\"200\"} 1")
            && body.contains("flo_runner_outbox_depth 0")
    });
    for line in [
        "flo_runner_registered 1",
        "flo_runner_executions_started_total 1",
        "flo_runner_api_requests_total{route=\"register\",status=\"200\"} 1",
        "flo_runner_api_requests_total{route=\"result\",status=\"200\"} 1",
        "# TYPE flo_runner_api_request_duration_seconds histogram",
        "flo_runner_outbox_depth 0",
        "flo_runner_build_info{version=",
    ] {
        assert!(body.contains(line), "missing {line:?} in:\n{body}");
    }
    assert_eq!(http_get(&format!("{base}/nope")).0, 404);

    let status = runner.stop();
    assert!(status.success());
    let log = runner.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(
            v["ts"].is_string() && v["level"].is_string() && v["msg"].is_string(),
            "{l}"
        );
    }
    assert!(
        !log.contains(CODE),
        "the registration code leaked into the log"
    );
}

#[test]
fn healthz_is_503_with_a_reason_before_registration() {
    let server = DevServer::start();
    // Registration is refused (wrong code) and retried: never registered.
    let port = free_port();
    let _runner = RunnerSetup::new(&server)
        .set("runner", "registration_code", json!("wrong-code"))
        .set(
            "runner",
            "registration_retry",
            json!({"strategy": "interval", "interval_secs": 1}),
        )
        .set(
            "runner",
            "metrics_listen",
            json!(format!("127.0.0.1:{port}")),
        )
        .start();
    let url = format!("http://127.0.0.1:{port}/healthz");
    let mut answer = (0, String::new());
    wait_for(Duration::from_secs(20), "/healthz to answer", || {
        answer = http_get(&url);
        answer.0 != 0
    });
    assert_eq!(answer.0, 503, "{answer:?}");
    assert!(answer.1.contains("not registered"), "{answer:?}");
}

/// Sets the modification time of `path` to `hours` ago (not following links).
fn age(path: &std::path::Path, hours: u64) {
    let status = std::process::Command::new("touch")
        .arg("-h")
        .arg("-d")
        .arg(format!("{hours} hours ago"))
        .arg(path)
        .status()
        .expect("touch");
    assert!(status.success());
}

/// An execution directory with one file of `bytes`, all `hours` old.
fn old_execution(root: &std::path::Path, flo: &str, id: &str, bytes: usize, hours: u64) {
    let dir = root.join(flo).join(id);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("output.log"), vec![b'x'; bytes]).unwrap();
    age(&dir.join("output.log"), hours);
    age(&dir, hours);
}

/// Retention at start-up, on the real binary: finished execution directories
/// older than `retention_hours` go, then the oldest while the rest exceed
/// `retention_max_bytes`; a link inside a removed directory is removed, not
/// followed, and nothing outside the execution directory is touched.
#[test]
fn retention_removes_old_and_excess_execution_directories_and_nothing_else() {
    let server = DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("executions");
    let outside = dir.path().join("precious.txt");
    std::fs::write(&outside, b"keep me").unwrap();
    old_execution(&root, "flow-a", "ancient", 10, 100);
    std::os::unix::fs::symlink(&outside, root.join("flow-a/ancient/link")).unwrap();
    age(&root.join("flow-a/ancient/link"), 100);
    age(&root.join("flow-a/ancient"), 100);
    old_execution(&root, "flow-b", "older", 700 * 1024, 3);
    old_execution(&root, "flow-b", "newer", 700 * 1024, 2);
    let runner = RunnerSetup::new(&server)
        .set("execution", "retention_hours", json!(72))
        .set("execution", "retention_max_bytes", json!(1024 * 1024))
        .start_in(dir);
    let swept = |r: &Runner| {
        r.log()
            .contains("retention: removed 2 finished execution directories")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !swept(&runner) {
        assert!(
            std::time::Instant::now() < deadline,
            "no retention sweep; runner log:\n{}",
            runner.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !root.join("flow-a").exists(),
        "too old, and its flow dir emptied"
    );
    assert!(
        !root.join("flow-b/older").exists(),
        "oldest over the size cap"
    );
    assert!(
        root.join("flow-b/newer/output.log").exists(),
        "within both limits"
    );
    assert_eq!(std::fs::read(&outside).unwrap(), b"keep me");
}
