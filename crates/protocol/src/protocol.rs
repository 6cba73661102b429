//! Every JSON body that crosses the wire, and nothing else (PROTOCOL.md §3–§8).
//!
//! Incoming structs are lenient: unknown fields are ignored and every optional
//! field may be absent or null, because the newest API leaves nulls out and
//! adds fields the Go runner never knew.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

/// Request header that carries the hex RSA-PSS signature.
pub const SIGNATURE_HEADER: &str = "X-Flomation-Runner-Signature";

/// `POST /api/v1/runner` body (registration, not signed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegistrationRequest {
    #[serde(default)]
    pub id: String,
    pub identifier: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub registration_code: String,
    #[serde(default = "zero_time")]
    pub enrolled_at: String,
    #[serde(default)]
    pub last_contact_at: Option<String>,
    #[serde(default)]
    pub ip_address: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub executor_version: Option<String>,
    #[serde(default)]
    pub manifest: Value,
    #[serde(default)]
    pub public_key: Option<String>,
}

/// Go's zero `time.Time`, which the Go runner always sends as `enrolled_at`.
pub fn zero_time() -> String {
    "0001-01-01T00:00:00Z".to_string()
}

/// `POST /api/v1/runner/{identifier}/execution` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PollRequest {
    pub requested_at: String,
}

/// A `200` answer to a poll.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingExecution {
    #[serde(default)]
    pub flo: Flo,
    pub execution: Execution,
    /// The flow definition: any JSON value, written to `execution.flow`.
    /// Kept as the bytes received (validated, not parsed into a tree): it is
    /// written out, never looked into, and a tree of a large answer costs
    /// tens of times its size.
    #[serde(default = "raw_null")]
    pub data: Box<RawValue>,
}

/// A JSON `null`, for absent raw values.
pub fn raw_null() -> Box<RawValue> {
    RawValue::from_string("null".to_string()).unwrap_or_else(|_| unreachable!("null is JSON"))
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Flo {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub organisation_id: Option<String>,
    #[serde(default)]
    pub author_id: Option<String>,
    #[serde(default)]
    pub environment_id: Option<String>,
    #[serde(default)]
    pub system_prompt: Option<String>,
    #[serde(default, deserialize_with = "null_as_false")]
    pub system_flow: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Execution {
    /// Validated into an `ExecutionId` before it is used; kept raw here so a
    /// hostile value can still be named in the log.
    pub id: String,
    pub flo_id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub owner_id: Option<String>,
    #[serde(default)]
    pub sequence: Option<Value>,
    /// Trigger data: an object, a string holding JSON, or null. Raw, like
    /// the flow definition; parsed only when small (workspace.rs).
    #[serde(default = "raw_null")]
    pub data: Box<RawValue>,
    #[serde(default)]
    pub trigger_type: Option<String>,
    #[serde(default)]
    pub author_email: Option<String>,
    #[serde(default)]
    pub triggerer_email: Option<String>,
    #[serde(default)]
    pub entry_node_id: Option<String>,
    #[serde(default)]
    pub execution_status: Option<String>,
    #[serde(default)]
    pub completion_status: Option<String>,
}

fn null_as_false<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

/// `POST /api/v1/execution/{id}/state` body (the claim).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateUpdate {
    pub state: String,
}

/// `POST /api/v1/execution/{id}/logs` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogBatch {
    pub lines: Vec<String>,
}

/// A `/logs` body to send, borrowing its lines (no copy into a JSON value).
#[derive(Debug, Serialize)]
pub struct LogBatchRef<'a> {
    pub lines: &'a [String],
}

/// `GET /api/v1/execution/{id}/status` answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StatusResponse {
    #[serde(default)]
    pub completion_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_status: Option<String>,
}

/// `completion_status` values of an execution whose result the API has.
const COMPLETE: [&str; 6] = [
    "success",
    "succeeded",
    "failed",
    "failure",
    "error",
    "cancelled",
];

impl StatusResponse {
    /// Whether the API already holds a result for the execution. Anything
    /// unknown counts as not complete: sending a result twice is better than
    /// never sending it.
    pub fn is_complete(&self) -> bool {
        let completion = self.completion_status.as_deref().unwrap_or("");
        COMPLETE.iter().any(|c| completion.eq_ignore_ascii_case(c))
            || self
                .execution_status
                .as_deref()
                .is_some_and(|s| s.eq_ignore_ascii_case("completed"))
    }
}

/// The value of `completion_status` that asks the runner to stop.
pub const COMPLETION_CANCEL: &str = "cancel";

/// `POST /api/v1/execution/{id}` body: the result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecutionResult {
    pub has_errored: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancelled: bool,
    pub state: serde_json::Map<String, Value>,
}

/// API paths, relative to the base URL. Ids are validated path components by
/// the time they get here, but a valid directory name may still hold `?`, `#`
/// or `%`, so every id is percent-encoded as one path segment.
pub mod paths {
    pub const REGISTER: &str = "/api/v1/runner";

    /// Percent-encodes everything but RFC 3986 unreserved characters.
    pub fn segment(id: &str) -> String {
        let mut out = String::with_capacity(id.len());
        for b in id.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }

    pub fn poll(identifier: &str) -> String {
        format!("/api/v1/runner/{}/execution", segment(identifier))
    }
    pub fn state(execution_id: &str) -> String {
        format!("/api/v1/execution/{}/state", segment(execution_id))
    }
    pub fn logs(execution_id: &str) -> String {
        format!("/api/v1/execution/{}/logs", segment(execution_id))
    }
    pub fn status(execution_id: &str) -> String {
        format!("/api/v1/execution/{}/status", segment(execution_id))
    }
    pub fn result(execution_id: &str) -> String {
        format!("/api/v1/execution/{}", segment(execution_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_execution_tolerates_missing_and_extra_fields() {
        let body = r#"{"execution":{"id":"e","flo_id":"f","completed_at":"x","result":1},
                       "data":{"nodes":[]},"checkpoint":null}"#;
        let p: PendingExecution = serde_json::from_str(body).unwrap();
        assert_eq!(p.execution.id, "e");
        assert!(p.flo.id.is_none());
        assert!(!p.flo.system_flow);
    }

    #[test]
    fn pending_execution_requires_ids() {
        assert!(serde_json::from_str::<PendingExecution>(r#"{"execution":{"id":"e"}}"#).is_err());
    }

    #[test]
    fn ids_are_escaped_in_paths() {
        assert_eq!(
            paths::state("7e25-59.x_~"),
            "/api/v1/execution/7e25-59.x_~/state"
        );
        assert_eq!(
            paths::result("a?b#c%d e"),
            "/api/v1/execution/a%3Fb%23c%25d%20e"
        );
    }

    #[test]
    fn cancelled_is_omitted_when_false() {
        let r = ExecutionResult {
            has_errored: false,
            cancelled: false,
            state: Default::default(),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"has_errored":false,"state":{}}"#
        );
    }
}
