//! The execution directory and the files the executor reads (PROTOCOL.md §5).
//! Ids are validated newtypes by the time they get here; the directory is
//! created and held through a directory descriptor ([`FlowDir`]), so no
//! link a flow left can send a write outside the execution root.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use crate::config::Config;
use crate::flowdir::FlowDir;
use crate::ids::{ExecutionId, FloId, RunnerIdentifier};
use crate::protocol::PendingExecution;

/// Trigger data larger than this is written as received, never parsed into
/// a tree (a tree costs tens of times the text); its fields then do not
/// reach `context.json`.
const TRIGGER_TREE_LIMIT: usize = 1 << 20;

pub const FLOW_FILE: &str = "execution.flow";
pub const TRIGGER_FILE: &str = "trigger-data.json";
pub const CONTEXT_FILE: &str = "context.json";
pub const STATE_FILE: &str = "state.json";

/// A pending execution whose ids passed validation.
pub struct Job {
    pub execution_id: ExecutionId,
    pub flo_id: FloId,
    pub pending: PendingExecution,
}

/// A prepared execution directory.
pub struct Workspace {
    pub dir: PathBuf,
    /// The same directory, held open: every later file operation of the
    /// runner in it goes through this.
    pub fd: Arc<FlowDir>,
    pub trigger_data: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("cannot create {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub fn execution_dir(root: &Path, flo: &FloId, execution: &ExecutionId) -> PathBuf {
    root.join(flo).join(execution)
}

pub fn prepare(
    config: &Config,
    runner_id: &RunnerIdentifier,
    job: &Job,
) -> Result<Workspace, WorkspaceError> {
    let root = &config.execution.execution_directory;
    let dir = execution_dir(root, &job.flo_id, &job.execution_id);
    let fd = FlowDir::create(root, job.flo_id.as_str(), job.execution_id.as_str()).map_err(
        |source| WorkspaceError::Create {
            path: dir.clone(),
            source,
        },
    )?;
    let write = |name: &str, bytes: &[u8]| {
        fd.write(name, bytes)
            .map_err(|source| WorkspaceError::Write {
                path: dir.join(name),
                source,
            })
    };

    let pending = &job.pending;
    write(FLOW_FILE, pending.data.get().as_bytes())?;

    let trigger_data = match normalise_trigger_raw(&pending.execution.data) {
        Some(bytes) if bytes.len() > 2 => {
            write(TRIGGER_FILE, &bytes)?;
            true
        }
        _ => false,
    };

    let context = serde_json::to_vec(&context(config, runner_id, job)).map_err(|e| {
        WorkspaceError::Write {
            path: dir.join(CONTEXT_FILE),
            source: io::Error::other(e),
        }
    })?;
    write(CONTEXT_FILE, &context)?;

    Ok(Workspace {
        dir,
        fd: Arc::new(fd),
        trigger_data,
    })
}

/// [`normalise_trigger_data`] on the raw trigger data, parsing it into a
/// tree only when it is small. Large data is written as received (a string
/// as its content), after a check that it is JSON; so a flow's trigger data
/// costs about its size in memory, not tens of times it.
pub fn normalise_trigger_raw(raw: &RawValue) -> Option<Vec<u8>> {
    let text = raw.get();
    if text.len() <= TRIGGER_TREE_LIMIT {
        return serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|v| normalise_trigger_data(&v));
    }
    match text.trim_start().as_bytes().first() {
        Some(b'n') => None,
        Some(b'"') => {
            let s: String = serde_json::from_str(text).ok()?;
            let is_json = |t: &str| serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok();
            if s.starts_with('{') || is_json(&s) {
                return Some(s.into_bytes());
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .ok()?;
            let decoded = String::from_utf8(bytes).ok()?;
            is_json(&decoded).then(|| decoded.into_bytes())
        }
        _ => Some(text.as_bytes().to_vec()),
    }
}

/// The trigger data as a tree, when it is small enough to parse.
fn trigger_value(raw: &RawValue) -> Value {
    if raw.get().len() > TRIGGER_TREE_LIMIT {
        return Value::Null;
    }
    serde_json::from_str(raw.get()).unwrap_or(Value::Null)
}

/// Trigger data as the Go runner normalises it: a string starting with `{`
/// as is; another string parsed as JSON and re-serialised; null is nothing;
/// any other value serialised. flo-runner goes further: a string that is not
/// JSON but is the base64 of JSON (what the March 2026 API sends, PROTOCOL.md
/// §9) is written as that JSON, by the same rules. Every string that was
/// JSON before keeps its meaning; only strings the Go runner dropped change.
pub fn normalise_trigger_data(data: &Value) -> Option<Vec<u8>> {
    match data {
        Value::Null => None,
        Value::String(s) => string_json(s).map(|(text, value)| {
            if text.len() > 2 && text.starts_with('{') {
                text.into_bytes()
            } else {
                serde_json::to_vec(&value).unwrap_or_else(|_| text.into_bytes())
            }
        }),
        other => serde_json::to_vec(other).ok(),
    }
}

/// The JSON a trigger-data string holds, with its text: the string itself
/// when it is JSON, else its base64 decoding when that is JSON. A string that
/// starts with `{` counts as JSON even when it does not parse (the Go
/// runner's rule), so it is never decoded either.
fn string_json(s: &str) -> Option<(String, Value)> {
    if let Ok(value) = serde_json::from_str::<Value>(s) {
        return Some((s.to_string(), value));
    }
    if s.len() > 2 && s.starts_with('{') {
        return Some((s.to_string(), Value::Null));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let value = serde_json::from_str::<Value>(&text).ok()?;
    Some((text, value))
}

/// The trigger data as an object, when it is one (directly or as a string).
fn trigger_object(data: &Value) -> Option<Map<String, Value>> {
    match data {
        Value::Object(m) => Some(m.clone()),
        Value::String(s) => match string_json(s) {
            Some((_, Value::Object(m))) => Some(m),
            _ => None,
        },
        _ => None,
    }
}

fn context(config: &Config, runner_id: &RunnerIdentifier, job: &Job) -> Value {
    let p = &job.pending;
    let e = &p.execution;
    let or_empty = |s: &Option<String>| s.clone().unwrap_or_default();
    let trigger = trigger_object(&trigger_value(&e.data)).unwrap_or_default();
    let from_trigger = |key: &str| {
        trigger
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let system_prompt = trigger
        .get("system_prompt")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| p.flo.system_prompt.clone())
        .unwrap_or_default();
    let sequence = match &e.sequence {
        Some(Value::Number(n)) => Value::Number(n.clone()),
        _ => json!(0),
    };
    let mut ctx = json!({
        "flow_id": job.flo_id.as_str(),
        "execution_id": job.execution_id.as_str(),
        "sequence": sequence,
        "author_id": or_empty(&e.owner_id),
        "organisation_id": or_empty(&p.flo.organisation_id),
        "runner_id": runner_id.as_str(),
        "start_time": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "trigger_type": or_empty(&e.trigger_type),
        "author_email": or_empty(&e.author_email),
        "triggerer_email": or_empty(&e.triggerer_email),
        "api_url": config.executor_api_url(),
        "system_prompt": system_prompt,
        "agent_id": from_trigger("agent_id"),
        "agent_user_id": from_trigger("agent_user_id"),
        "conversation_id": from_trigger("conversation_id"),
        "trigger_source": from_trigger("trigger_source"),
        "channel_type": from_trigger("channel_type"),
        "channel_id": from_trigger("channel_id"),
        "thread_id": from_trigger("thread_id"),
        "role": from_trigger("role"),
        "system_flow": p.flo.system_flow,
    });
    if config.tls.enabled {
        if let Value::Object(m) = &mut ctx {
            // Strings, "" when unset (PROTOCOL.md, context.json).
            let text = |p: &Option<PathBuf>| {
                p.as_deref()
                    .map_or(String::new(), |p| p.display().to_string())
            };
            m.insert("tls_ca_cert".into(), json!(text(&config.tls.ca_cert)));
            m.insert("tls_cert".into(), json!(text(&config.tls.cert)));
            m.insert("tls_key".into(), json!(text(&config.tls.key)));
        }
    }
    ctx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_data_shapes() {
        let n = |v: Value| normalise_trigger_data(&v).map(|b| String::from_utf8(b).unwrap());
        assert_eq!(n(json!(null)), None);
        assert_eq!(n(json!({"b":1,"a":2})).as_deref(), Some(r#"{"a":2,"b":1}"#));
        assert_eq!(n(json!("{ \"x\": 1 }")).as_deref(), Some("{ \"x\": 1 }"));
        assert_eq!(n(json!("[1, 2]")).as_deref(), Some("[1,2]"));
        assert_eq!(n(json!("not json")), None);
        assert_eq!(n(json!("{}")).as_deref(), Some("{}"));
        assert_eq!(n(json!("")), None);
        assert_eq!(n(json!(5)).as_deref(), Some("5"));
    }

    #[test]
    fn base64_trigger_data_is_written_as_the_json_it_encodes() {
        let n = |v: Value| normalise_trigger_data(&v).map(|b| String::from_utf8(b).unwrap());
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        // PostgreSQL's jsonb text, kept as is like any string holding an object.
        let object = b64(r#"{"k": "v", "n": [1, 2]}"#);
        assert_eq!(
            n(json!(object)).as_deref(),
            Some(r#"{"k": "v", "n": [1, 2]}"#)
        );
        assert_eq!(n(json!(b64("[1, 2]"))).as_deref(), Some("[1,2]"));
        assert_eq!(
            trigger_object(&json!(object)).and_then(|m| m.get("k").cloned()),
            Some(json!("v"))
        );
        // Strings that are JSON themselves never become base64: "1234" and
        // "true" decode as base64 too, and keep meaning what they meant.
        assert_eq!(n(json!("1234")).as_deref(), Some("1234"));
        assert_eq!(n(json!("true")).as_deref(), Some("true"));
        // Base64 of something that is not JSON, or not base64 at all: nothing.
        assert_eq!(n(json!(b64("not json"))), None);
        assert_eq!(n(json!("abcd")), None);
        assert_eq!(n(json!("{not json")).as_deref(), Some("{not json"));
    }
}
