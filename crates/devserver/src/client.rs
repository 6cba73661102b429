//! The one client of the admin API: the CLI subcommands use it, and so does
//! `flo-testkit` (the integration tests and the benchmarks).

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::http::percent_encode_segment;

/// Admin answers bigger than this are refused rather than read into memory.
const MAX_ANSWER_BYTES: u64 = 256 * 1024 * 1024;

/// Generous: an execution's record can carry tens of MB of logs, and the
/// machine may be busy.
const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the dev server at {url}: {reason}")]
    Transport { url: String, reason: String },
    #[error("{method} {url} answered {status}: {message}")]
    Status {
        method: String,
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url} answered something that is not the expected JSON: {reason}")]
    BadAnswer { url: String, reason: String },
}

pub struct Client {
    base: String,
    agent: ureq2::Agent,
}

impl Client {
    /// `base` is the server URL, e.g. `http://127.0.0.1:8080`.
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            agent: ureq2::AgentBuilder::new().timeout(TIMEOUT).build(),
        }
    }

    /// For an `https://` server: `tls` says which CAs to trust and which
    /// client certificate to present (see [`super::tls::client_config`]).
    pub fn with_tls(base: &str, tls: Arc<rustls::ClientConfig>) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            agent: ureq2::AgentBuilder::new()
                .timeout(TIMEOUT)
                .tls_config(tls)
                .build(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Any admin request: `path` starts with `/admin/`. An empty answer
    /// (204, or a 2xx without a body) is `Value::Null`.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let request = self.agent.request(method, &url);
        let answer = match body {
            Some(b) => request
                .set("Content-Type", "application/json")
                .send_string(&b.to_string()),
            None => request.call(),
        };
        let response = match answer {
            Ok(r) => r,
            Err(ureq2::Error::Status(status, response)) => {
                let text = response.into_string().unwrap_or_default();
                // The server's errors are `{"error": "..."}`; show just the why.
                let message = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
                    .unwrap_or(text);
                return Err(ClientError::Status {
                    method: method.to_string(),
                    url,
                    status,
                    message,
                });
            }
            Err(ureq2::Error::Transport(t)) => {
                // ureq puts the URL in front; it is already in our message.
                let full = t.to_string();
                let reason = full
                    .strip_prefix(&format!("{url}: "))
                    .unwrap_or(&full)
                    .to_string();
                return Err(ClientError::Transport { url, reason });
            }
        };
        let mut text = Vec::new();
        response
            .into_reader()
            .take(MAX_ANSWER_BYTES)
            .read_to_end(&mut text)
            .map_err(|e| ClientError::Transport {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        if text.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&text).map_err(|e| ClientError::BadAnswer {
            url,
            reason: e.to_string(),
        })
    }

    pub fn execution_path(id: &str) -> String {
        format!("/admin/executions/{}", percent_encode_segment(id))
    }

    /// `POST /admin/executions`; returns the new execution id.
    pub fn enqueue(&self, body: &Value) -> Result<String, ClientError> {
        let answer = self.call("POST", "/admin/executions", Some(body))?;
        match answer.get("id").and_then(Value::as_str) {
            Some(id) => Ok(id.to_string()),
            None => Err(ClientError::BadAnswer {
                url: format!("{}/admin/executions", self.base),
                reason: "no \"id\" in the answer".to_string(),
            }),
        }
    }

    pub fn list(&self) -> Result<Value, ClientError> {
        self.call("GET", "/admin/executions", None)
    }

    pub fn show(&self, id: &str) -> Result<Value, ClientError> {
        self.call("GET", &Self::execution_path(id), None)
    }

    pub fn cancel(&self, id: &str) -> Result<Value, ClientError> {
        self.call(
            "POST",
            &format!("{}/cancel", Self::execution_path(id)),
            None,
        )
    }

    /// `GET /admin/requests`: every request the runner routes received.
    pub fn requests(&self) -> Result<Vec<Value>, ClientError> {
        self.array("/admin/requests")
    }

    /// `GET /admin/runners`: the registered runners.
    pub fn runners(&self) -> Result<Vec<Value>, ClientError> {
        self.array("/admin/runners")
    }

    /// `POST /admin/faults`: sets the injected faults.
    pub fn set_faults(&self, faults: &Value) -> Result<Value, ClientError> {
        self.call("POST", "/admin/faults", Some(faults))
    }

    fn array(&self, path: &str) -> Result<Vec<Value>, ClientError> {
        match self.call("GET", path, None)? {
            Value::Array(items) => Ok(items),
            other => Err(ClientError::BadAnswer {
                url: format!("{}{path}", self.base),
                reason: format!("expected an array, got {other}"),
            }),
        }
    }
}
