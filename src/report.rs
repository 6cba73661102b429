//! The result of an execution (PROTOCOL.md §8): built from the executor's
//! exit, its `state.json` and its output, then delivered with retries only
//! while the outcome of the previous attempt is unknown.

use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::api::Api;
use crate::backoff::Backoff;
use crate::cancel::StopReason;
use crate::fsutil;
use crate::ids::ExecutionId;
use crate::protocol::ExecutionResult;
use crate::shutdown::Shutdown;
use crate::workspace::STATE_FILE;

/// Copy of the result kept in the execution directory.
pub const RESULT_FILE: &str = "result.json";
/// How long a result is retried before it is given up (it stays on disk).
pub const DELIVERY_LIMIT: Duration = Duration::from_secs(600);

/// Builds the result. `status` is `Err` when the executor never started.
pub fn build(
    dir: Option<&Path>,
    status: &Result<ExitStatus, String>,
    stopped: Option<StopReason>,
    logs: String,
) -> ExecutionResult {
    let mut has_errored = false;
    let mut cancelled = false;
    let state_read = match (status, dir) {
        (Err(why), _) => Err(why.clone()),
        (Ok(_), Some(dir)) => read_state(&dir.join(STATE_FILE)),
        (Ok(_), None) => Err("no execution directory".to_string()),
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
            let mut m = Map::new();
            m.insert("error".into(), json!(why));
            m.insert("output".into(), json!(logs));
            m
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

/// A result for an execution that was never run (bad ids, workspace failure).
pub fn errored(why: &str) -> ExecutionResult {
    let mut state = Map::new();
    state.insert("error".into(), json!(why));
    state.insert("output".into(), json!(""));
    state.insert("logs".into(), json!(""));
    ExecutionResult {
        has_errored: true,
        cancelled: false,
        state,
    }
}

fn read_state(path: &Path) -> Result<Map<String, Value>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {STATE_FILE}: {e}"))?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(format!("{STATE_FILE} is not a JSON object")),
        Err(e) => Err(format!("{STATE_FILE} is not valid JSON: {e}")),
    }
}

/// Sends the result. Retries only while the outcome is unknown (transport
/// error, 5xx, 408, 429): never after a 2xx, and never with different bytes.
/// Returns whether the API accepted it.
pub fn deliver(
    api: &Api,
    id: &ExecutionId,
    result: &ExecutionResult,
    dir: Option<&Path>,
    shutdown: &Shutdown,
) -> bool {
    let body = match serde_json::to_vec(result) {
        Ok(b) => b,
        Err(e) => {
            log::error!("execution {id}: cannot serialise the result: {e}");
            return false;
        }
    };
    if let Some(dir) = dir {
        if let Err(e) = fsutil::write_atomic(&dir.join(RESULT_FILE), &body, fsutil::FILE_MODE) {
            log::warn!("execution {id}: cannot keep a copy of the result: {e}");
        }
    }
    let started = Instant::now();
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        match api.send_result(id, &body) {
            Ok(_) => {
                log::info!(
                    "execution {id}: result delivered (errored: {}, cancelled: {})",
                    result.has_errored,
                    result.cancelled
                );
                return true;
            }
            Err(e) if e.outcome_unknown() => {
                if started.elapsed() >= DELIVERY_LIMIT || shutdown.is_forced() {
                    log::error!("execution {id}: giving up delivering the result ({e}); a copy is in {RESULT_FILE}");
                    return false;
                }
                let delay = backoff.next_delay().max(Duration::from_millis(200));
                log::warn!(
                    "execution {id}: result not delivered ({e}); retrying in {} ms",
                    delay.as_millis()
                );
                // Interrupted only by a forced shutdown: a graceful one still
                // delivers results.
                shutdown.sleep_until(Instant::now() + delay, true);
            }
            Err(e) => {
                log::error!("execution {id}: the API refused the result: {e}");
                return false;
            }
        }
    }
}
