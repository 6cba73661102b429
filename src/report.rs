//! The result of an execution (PROTOCOL.md §8): built once from the
//! executor's exit, its `state.json` and its output. Delivery is the outbox's.

use serde_json::{json, Map, Value};
use std::process::ExitStatus;

use crate::cancel::StopReason;
use crate::executor::RunError;
use crate::flowdir::FlowDir;
use crate::protocol::ExecutionResult;
use crate::workspace::STATE_FILE;

/// Copy of the result kept in the execution directory.
pub const RESULT_FILE: &str = "result.json";

/// Builds the result. `status` is `Err` when the executor never started.
/// `state.json` is read through the directory descriptor, only if it is a
/// regular file of at most `max_state_bytes`; anything else is an errored
/// result that says why.
pub fn build(
    dir: &FlowDir,
    status: &Result<ExitStatus, RunError>,
    stopped: Option<StopReason>,
    logs: String,
    max_state_bytes: u64,
) -> ExecutionResult {
    let mut has_errored = false;
    let mut cancelled = false;
    let state_read = match status {
        Err(why) => Err(why.to_string()),
        Ok(_) => read_state(dir, max_state_bytes),
    };
    let mut state = match state_read {
        Ok(state) => {
            if let Some(n) = state.get("status").and_then(Value::as_f64) {
                if n != 0.0 {
                    has_errored = true;
                }
            }
            state
        }
        Err(why) => {
            has_errored = true;
            error_state(&why, &logs)
        }
    };
    if let Ok(status) = status {
        if !status.success() {
            has_errored = true;
        }
    }
    match stopped {
        None => {}
        Some(StopReason::Cancelled) => {
            cancelled = true;
            has_errored = true;
        }
        Some(StopReason::TimedOut(limit)) => {
            has_errored = true;
            state.insert(
                "error".into(),
                json!(format!("timed out after {} s", limit.as_secs())),
            );
        }
        Some(StopReason::DiskLimit(over)) => {
            has_errored = true;
            state.insert("error".into(), json!(over.to_string()));
        }
        Some(StopReason::Shutdown) => {
            cancelled = true;
            has_errored = true;
            state.insert(
                "error".into(),
                json!("stopped because the runner was shutting down"),
            );
        }
    }
    state.insert("logs".into(), json!(logs));
    ExecutionResult {
        has_errored,
        cancelled,
        state,
    }
}

/// An errored result with no `state.json` behind it: an execution never run
/// (bad ids, workspace failure: `output` is empty) or cut short by the
/// runner's own death (`output` is the tail of `output.log`).
pub fn errored(why: &str, output: &str) -> ExecutionResult {
    let mut state = error_state(why, output);
    state.insert("logs".into(), json!(output));
    ExecutionResult {
        has_errored: true,
        cancelled: false,
        state,
    }
}

/// The `state` of a result with no usable `state.json` (PROTOCOL.md §8).
fn error_state(why: &str, output: &str) -> Map<String, Value> {
    let mut state = Map::new();
    state.insert("error".into(), json!(why));
    state.insert("output".into(), json!(output));
    state
}

fn read_state(dir: &FlowDir, cap: u64) -> Result<Map<String, Value>, String> {
    let bytes = dir
        .read_capped(STATE_FILE, cap)
        .map_err(|e| e.to_string())?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(format!("{STATE_FILE} is not a JSON object")),
        Err(e) => Err(format!("{STATE_FILE} is not valid JSON: {e}")),
    }
}
