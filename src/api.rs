//! The Flomation API client: one method per route, every request but
//! registration signed (PROTOCOL.md §2), every call with a timeout.

use std::io::{BufReader, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::identity::Identity;
use crate::ids::ExecutionId;
use crate::net::Net;
use crate::protocol::{self, paths, PendingExecution, SIGNATURE_HEADER};

/// Longer than the API's 25 s long-poll (the Go runner uses 35 s too).
pub const POLL_TIMEOUT: Duration = Duration::from_secs(35);
/// Every other call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// A pending execution larger than this is refused rather than buffered.
pub const MAX_POLL_BODY: u64 = 32 * 1024 * 1024;
/// Other answers are small; anything past this is not read.
const MAX_SMALL_BODY: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Transport(String),
    #[error("HTTP {code}{}", if .body.is_empty() { String::new() } else { format!(": {}", .body) })]
    Status { code: u16, body: String },
    #[error("unreadable answer: {0}")]
    Decode(String),
    #[error(transparent)]
    Sign(#[from] crate::signing::SignError),
}

impl ApiError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The request may or may not have taken effect on the server: a
    /// transport error, a timeout, a 5xx, 408 or 429. Only these are retried
    /// for calls with side effects.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            ApiError::Transport(_) => true,
            ApiError::Status { code, .. } => *code >= 500 || *code == 408 || *code == 429,
            ApiError::Decode(_) | ApiError::Sign(_) => false,
        }
    }
}

/// What a poll brought back.
pub enum PollAnswer {
    NoWork,
    Work(Box<PendingExecution>),
    /// A 200 whose body is not a usable pending execution. `execution_id` is
    /// set when the body at least named one, so it can be reported as errored.
    Malformed {
        execution_id: Option<String>,
        why: String,
    },
}

pub struct Api {
    base: String,
    identity: Arc<Identity>,
    poll_agent: ureq::Agent,
    agent: ureq::Agent,
    /// A fresh signature over the claim body, made ahead of need (see
    /// [`Api::presign_claim`]). Each is used once.
    claim_signature: std::sync::Mutex<Option<String>>,
}

/// The claim body (PROTOCOL.md §6): the same bytes for every execution.
const CLAIM_BODY: &[u8] = br#"{"state":"running"}"#;

fn agent(timeout: Duration, net: &Net) -> ureq::Agent {
    let mut builder = ureq::AgentBuilder::new()
        .timeout(timeout)
        .timeout_connect(Duration::from_secs(10))
        .user_agent(&format!("flo-runner/{}", env!("CARGO_PKG_VERSION")))
        .redirects(0)
        // Keep connections to the API alive for every worker at once (the
        // default keeps one), so a busy runner does not reconnect per call.
        .max_idle_connections_per_host(64)
        .tls_config(net.tls.clone());
    if let Some(proxy) = &net.proxy {
        builder = builder.proxy(proxy.clone());
    }
    builder.build()
}

/// Whether the API answers at all (any HTTP status counts): an unsigned GET
/// of the status route of an execution that does not exist. For `check`.
pub fn probe(base_url: &str, net: &Net) -> Result<u16, ApiError> {
    let url = format!(
        "{}{}",
        base_url.trim_end_matches('/'),
        paths::status("flo-runner-check")
    );
    match finish(agent(CALL_TIMEOUT, net).get(&url).call()) {
        Ok(resp) => Ok(resp.status()),
        Err(ApiError::Status { code, .. }) => Ok(code),
        Err(e) => Err(e),
    }
}

impl Api {
    pub fn new(base_url: &str, identity: Arc<Identity>, net: &Net) -> Self {
        Self {
            base: base_url.trim_end_matches('/').to_string(),
            identity,
            poll_agent: agent(POLL_TIMEOUT, net),
            agent: agent(CALL_TIMEOUT, net),
            claim_signature: std::sync::Mutex::new(None),
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `POST /api/v1/runner`, unsigned. Returns the 2xx status.
    pub fn register(&self, body: &protocol::RegistrationRequest) -> Result<u16, ApiError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ApiError::Decode(e.to_string()))?;
        let req = self
            .agent
            .post(&self.url(paths::REGISTER))
            .set("Content-Type", "application/json");
        let started = Instant::now();
        let resp = timed("register", started, req.send_bytes(&bytes))?;
        Ok(drain(resp))
    }

    /// `POST /api/v1/runner/{identifier}/execution`.
    pub fn poll(&self) -> Result<PollAnswer, ApiError> {
        let body = protocol::PollRequest {
            requested_at: humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string(),
        };
        let bytes = serde_json::to_vec(&body).map_err(|e| ApiError::Decode(e.to_string()))?;
        let path = paths::poll(self.identity.identifier.as_str());
        let resp = self.post_signed("poll", &self.poll_agent, &path, &bytes)?;
        if resp.status() == 204 {
            return Ok(PollAnswer::NoWork);
        }
        // Streamed: invalid JSON fails at its first bad byte, and a body past
        // the cap is cut off, so a hostile answer cannot balloon memory.
        let reader = BufReader::new(resp.into_reader().take(MAX_POLL_BODY));
        let mut reader = reader;
        let parsed = serde_json::from_reader(&mut reader);
        // Read to the end so the connection goes back to the pool.
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
        let value: Value = match parsed {
            Ok(v) => v,
            Err(e) => {
                return Ok(PollAnswer::Malformed {
                    execution_id: None,
                    why: format!("not JSON (or over {MAX_POLL_BODY} bytes): {e}"),
                })
            }
        };
        let execution_id = value
            .get("execution")
            .and_then(|e| e.get("id"))
            .and_then(Value::as_str)
            .map(str::to_string);
        match serde_json::from_value::<PendingExecution>(value) {
            Ok(p) => Ok(PollAnswer::Work(Box::new(p))),
            Err(e) => Ok(PollAnswer::Malformed {
                execution_id,
                why: format!("not a pending execution: {e}"),
            }),
        }
    }

    /// Signs the next claim now, while nothing waits for it (the poller
    /// calls this before a poll when no execution runs), so that the claim, which the time from
    /// "work available" to "executor started" waits on, needs no RSA
    /// operation. The claim body never changes, so the signature can be made
    /// before the execution is known; each one is used for one claim only.
    pub fn presign_claim(&self) {
        if crate::sync::lock(&self.claim_signature).is_some() {
            return;
        }
        match self.identity.signer.sign_hex(CLAIM_BODY) {
            Ok(sig) => *crate::sync::lock(&self.claim_signature) = Some(sig),
            // The claim will sign (and report the error) itself.
            Err(e) => log::debug!("cannot sign a claim ahead: {e}"),
        }
    }

    /// `POST /api/v1/execution/{id}/state` with `{"state":"running"}`.
    pub fn claim(&self, id: &ExecutionId) -> Result<u16, ApiError> {
        let ready = crate::sync::lock(&self.claim_signature).take();
        let signature = match ready {
            Some(sig) => sig,
            None => self.identity.signer.sign_hex(CLAIM_BODY)?,
        };
        let path = paths::state(id.as_str());
        let resp = self.post("state", &self.agent, &path, CLAIM_BODY, &signature)?;
        Ok(drain(resp))
    }

    /// `POST /api/v1/execution/{id}/logs`.
    pub fn send_logs(&self, id: &ExecutionId, lines: &[String]) -> Result<(), ApiError> {
        let bytes = serde_json::to_vec(&protocol::LogBatchRef { lines })
            .map_err(|e| ApiError::Decode(e.to_string()))?;
        self.send_logs_body(id, &bytes)
    }

    /// `POST /api/v1/execution/{id}/logs` with an already-serialised body.
    pub fn send_logs_body(&self, id: &ExecutionId, body: &[u8]) -> Result<(), ApiError> {
        drain(self.post_signed("logs", &self.agent, &paths::logs(id.as_str()), body)?);
        Ok(())
    }

    /// `GET /api/v1/execution/{id}/status`, signed over the id.
    pub fn status(
        &self,
        id: &ExecutionId,
        timeout: Duration,
    ) -> Result<protocol::StatusResponse, ApiError> {
        let signature = self.identity.signer.sign_hex(id.as_str().as_bytes())?;
        let req = self
            .agent
            .get(&self.url(&paths::status(id.as_str())))
            .timeout(timeout)
            .set(SIGNATURE_HEADER, &signature);
        let started = Instant::now();
        let resp = timed("status", started, req.call())?;
        read_json(resp)
    }

    /// `POST /api/v1/execution/{id}` with the already-serialised result, so
    /// that a retry sends exactly the same bytes.
    pub fn send_result(&self, id: &ExecutionId, body: &[u8]) -> Result<u16, ApiError> {
        let resp = self.post_signed("result", &self.agent, &paths::result(id.as_str()), body)?;
        Ok(drain(resp))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn post_signed(
        &self,
        route: &'static str,
        agent: &ureq::Agent,
        path: &str,
        body: &[u8],
    ) -> Result<ureq::Response, ApiError> {
        let signature = self.identity.signer.sign_hex(body)?;
        self.post(route, agent, path, body, &signature)
    }

    fn post(
        &self,
        route: &'static str,
        agent: &ureq::Agent,
        path: &str,
        body: &[u8],
        signature: &str,
    ) -> Result<ureq::Response, ApiError> {
        let req = agent
            .post(&self.url(path))
            .set("Content-Type", "application/json")
            .set(SIGNATURE_HEADER, signature);
        let started = Instant::now();
        timed(route, started, req.send_bytes(body))
    }
}

/// Runs one request, recording its route, status and latency in the metrics.
fn timed(
    route: &'static str,
    started: Instant,
    result: Result<ureq::Response, ureq::Error>,
) -> Result<ureq::Response, ApiError> {
    let result = finish(result);
    let status = match &result {
        Ok(resp) => Some(resp.status()),
        Err(e) => e.status(),
    };
    crate::metrics::global().api_request(route, status, started.elapsed());
    result
}

/// Maps ureq's result: non-2xx answers become `ApiError::Status` with a short
/// excerpt of the body (servers put the reason there).
fn finish(result: Result<ureq::Response, ureq::Error>) -> Result<ureq::Response, ApiError> {
    match result {
        Ok(resp) if (200..300).contains(&resp.status()) => Ok(resp),
        Ok(resp) => Err(status_error(resp)),
        Err(ureq::Error::Status(_, resp)) => Err(status_error(resp)),
        Err(ureq::Error::Transport(t)) => Err(ApiError::Transport(with_hint(t.to_string()))),
    }
}

/// Adds what an operator can do about the common TLS failures.
fn with_hint(message: String) -> String {
    let hint = if message.contains("UnknownIssuer") || message.contains("UnknownCA") {
        "; the API's certificate is not signed by a trusted CA: add its CA with tls.ca_cert"
    } else if message.contains("CertificateRequired") {
        "; the API requires a client certificate: set tls.enabled, tls.cert and tls.key"
    } else if message.contains("NotValidForName") {
        "; the API's certificate does not name this host: check runner.url"
    } else if message.contains("certificate") && message.contains("Expired") {
        "; the API's certificate has expired"
    } else {
        ""
    };
    format!("{message}{hint}")
}

fn status_error(resp: ureq::Response) -> ApiError {
    let code = resp.status();
    let mut excerpt = Vec::new();
    let _ = resp.into_reader().take(300).read_to_end(&mut excerpt);
    let body = String::from_utf8_lossy(&excerpt)
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect::<String>();
    ApiError::Status {
        code,
        body: body.trim().to_string(),
    }
}

fn read_json<T: DeserializeOwned>(resp: ureq::Response) -> Result<T, ApiError> {
    let mut reader = BufReader::new(resp.into_reader().take(MAX_SMALL_BODY));
    let parsed = serde_json::from_reader(&mut reader);
    let _ = std::io::copy(&mut reader, &mut std::io::sink());
    parsed.map_err(|e| ApiError::Decode(e.to_string()))
}

/// Reads and discards a (small) answer we do not need, so that ureq can put
/// the connection back in its pool: a response dropped unread closes the
/// connection, and every call would then pay a new TCP (and TLS) handshake.
fn drain(resp: ureq::Response) -> u16 {
    let status = resp.status();
    let _ = std::io::copy(
        &mut resp.into_reader().take(MAX_SMALL_BODY),
        &mut std::io::sink(),
    );
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_presigned_claim_body_is_the_protocol_body() {
        let body = protocol::StateUpdate {
            state: "running".into(),
        };
        assert_eq!(serde_json::to_vec(&body).unwrap(), CLAIM_BODY);
    }
}
