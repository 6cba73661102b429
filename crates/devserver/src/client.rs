//! The one client of the admin API: the CLI subcommands use it, and so does
//! `flo-testkit` (the integration tests and the benchmarks).

use std::time::Duration;

use serde_json::Value;
use ureq::http::{self, Response};
use ureq::tls::TlsConfig;
use ureq::{Agent, Body};

use super::http::percent_encode_segment;

/// Admin answers bigger than this are refused rather than read into memory.
const MAX_ANSWER_BYTES: u64 = 256 * 1024 * 1024;

/// Generous: an execution's record can carry tens of MB of logs, and the
/// machine may be busy.
const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the dev server at {url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: ureq::Error,
    },
    #[error("{method} {url} answered {status}: {message}")]
    Status {
        method: String,
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url} answered something that is not the expected JSON: {reason}")]
    BadAnswer {
        url: String,
        #[source]
        reason: BadAnswer,
    },
}

/// What is wrong with an answer that arrived.
#[derive(Debug, thiserror::Error)]
pub enum BadAnswer {
    #[error("{0}")]
    NotJson(#[source] serde_json::Error),
    #[error("no \"id\" in the answer")]
    NoId,
    #[error("expected an array, got {0}")]
    NotAnArray(Value),
}

pub struct Client {
    base: String,
    agent: Agent,
}

impl Client {
    /// `base` is the server URL, e.g. `http://127.0.0.1:8080`.
    pub fn new(base: &str) -> Self {
        Self::with_tls(base, TlsConfig::default())
    }

    /// For an `https://` server: `tls` says which CAs to trust and which
    /// client certificate to present (see [`super::tls::client_config`]).
    pub fn with_tls(base: &str, tls: TlsConfig) -> Self {
        let config = Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            // 4xx and 5xx carry the server's `{"error": "..."}`, read below.
            .http_status_as_error(false)
            // The dev server is local, and this client never went through
            // the proxy variables (ureq 3 reads them by default).
            .proxy(None)
            .tls_config(tls)
            .build();
        Self {
            base: base.trim_end_matches('/').to_string(),
            agent: config.new_agent(),
        }
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
        let transport = |source| ClientError::Transport {
            url: url.clone(),
            source,
        };
        let mut response = self.send(method, &url, body).map_err(transport)?;
        let status = response.status();
        if status.is_client_error() || status.is_server_error() {
            return Err(ClientError::Status {
                method: method.to_string(),
                url: url.clone(),
                status: status.as_u16(),
                message: error_message(response.body_mut()),
            });
        }
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_vec()
            .map_err(transport)?;
        if text.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&text).map_err(|e| ClientError::BadAnswer {
            url,
            reason: BadAnswer::NotJson(e),
        })
    }

    fn send(
        &self,
        method: &str,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Response<Body>, ureq::Error> {
        let request = http::Request::builder().method(method).uri(url);
        match body {
            Some(b) => self.agent.run(
                request
                    .header("Content-Type", "application/json")
                    .body(b.to_string())?,
            ),
            None => self.agent.run(request.body(())?),
        }
    }

    fn execution_path(id: &str) -> String {
        format!("/admin/executions/{}", percent_encode_segment(id))
    }

    /// `POST /admin/executions`; returns the new execution id.
    pub fn enqueue(&self, body: &Value) -> Result<String, ClientError> {
        let answer = self.call("POST", "/admin/executions", Some(body))?;
        match answer.get("id").and_then(Value::as_str) {
            Some(id) => Ok(id.to_string()),
            None => Err(ClientError::BadAnswer {
                url: format!("{}/admin/executions", self.base),
                reason: BadAnswer::NoId,
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
                reason: BadAnswer::NotAnArray(other),
            }),
        }
    }
}

/// The why of an error answer: the server's errors are `{"error": "..."}`;
/// anything else is shown as it is.
fn error_message(body: &mut Body) -> String {
    let text = body.read_to_string().unwrap_or_default();
    serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
        .unwrap_or(text)
}
