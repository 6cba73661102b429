//! What the server received for an execution, with failure messages that
//! carry the runner's log.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::{DevServer, Runner};

/// Waits for the execution's result; the failure message carries the runner log.
pub fn completed(server: &DevServer, runner: &Runner, id: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let e = server.execution(id);
        if e["status"] == "completed" {
            return e;
        }
        if Instant::now() >= deadline {
            panic!(
                "execution {id} not completed within {limit:?}: {}\nrunner log (tail):\n{}",
                e["status"],
                runner.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The one result of a completed execution (asserting there is exactly one).
pub fn only_result(e: &Value) -> Map<String, Value> {
    let results = e["results"].as_array().expect("results array");
    assert_eq!(
        results.len(),
        1,
        "exactly one result expected, got {}: {}",
        results.len(),
        e["id"]
    );
    results[0].as_object().expect("result object").clone()
}

pub fn state_of(result: &Map<String, Value>) -> Map<String, Value> {
    result["state"].as_object().expect("state object").clone()
}

pub fn read_json(path: &Path) -> Value {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// The runner's requests on `route` for execution `id`, in arrival order.
pub fn execution_requests(server: &DevServer, route: &str, id: &str) -> Vec<Value> {
    let path = match route {
        "result" => format!("/api/v1/execution/{id}"),
        other => format!("/api/v1/execution/{id}/{other}"),
    };
    server
        .requests_on(route)
        .into_iter()
        .filter(|r| r["path"] == path.as_str())
        .collect()
}

/// Every line the server accepted on `/logs` for `id`, batches concatenated
/// in arrival order.
pub fn lines_received(server: &DevServer, id: &str) -> Vec<String> {
    execution_requests(server, "logs", id)
        .iter()
        .filter(|r| r["status"] == 200)
        .flat_map(|r| {
            r["body"]["lines"]
                .as_array()
                .expect("lines")
                .iter()
                .map(|l| l.as_str().expect("line").to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The `state.error` of the one result of a completed execution ("" when
/// there is none).
pub fn error_of(e: &Value) -> String {
    only_result(e)["state"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Waits until the server has received `line` for `id` (the executor is
/// past that node); the failure message carries the runner log.
pub fn wait_line(server: &DevServer, runner: &Runner, id: &str, line: &str) {
    crate::wait_for(
        Duration::from_secs(30),
        &format!("line {line:?} on the server; log:\n{}", runner.log_tail()),
        || lines_received(server, id).iter().any(|l| l == line),
    );
}
