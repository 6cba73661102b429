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
    let state_read = match status {
        Err(why) => Err(why.to_string()),
        Ok(_) => read_state(dir, max_state_bytes),
    };
    let (mut state, state_errored) = match state_read {
        // A `status` other than 0 is the flow's own word that it failed.
        Ok(state) => {
            let failed = state
                .get("status")
                .and_then(Value::as_f64)
                .is_some_and(|n| n != 0.0);
            (state, failed)
        }
        Err(why) => (error_state(&why, &logs), true),
    };
    let exit_failed = matches!(status, Ok(status) if !status.success());
    let cancelled = apply_stop(stopped, &mut state);
    state.insert("logs".into(), json!(logs));
    ExecutionResult {
        has_errored: state_errored || exit_failed || stopped.is_some(),
        cancelled,
        state,
    }
}

/// What a stop by the runner adds to the result. Every stop makes it
/// errored (the caller's part); a cancel or a shutdown also makes it
/// `cancelled`, returned here; a timeout, a disk limit or a shutdown puts
/// why in `error`, over what `state.json` said.
fn apply_stop(stopped: Option<StopReason>, state: &mut Map<String, Value>) -> bool {
    let (cancelled, error) = match stopped {
        None => return false,
        Some(StopReason::Cancelled) => (true, None),
        Some(StopReason::TimedOut(limit)) => (
            false,
            Some(format!("timed out after {} s", limit.as_secs())),
        ),
        Some(StopReason::DiskLimit(over)) => (false, Some(over.to_string())),
        Some(StopReason::Shutdown) => (
            true,
            Some("stopped because the runner was shutting down".to_string()),
        ),
    };
    if let Some(error) = error {
        state.insert("error".into(), json!(error));
    }
    cancelled
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
