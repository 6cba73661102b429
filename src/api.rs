//! The Flomation API client: one method per route, every request but
//! registration signed (PROTOCOL.md §2), every call with a timeout.
//!
//! Two generations of the API are in use (PROTOCOL.md §9), and the client
//! finds out at run time which one it talks to: a POST poll answered 404/405
//! makes it try the older GET form (and back), and it remembers what worked.
//! The older generation has no `/logs` and no `/status`: the first 404 there
//! switches log streaming, or cancel checks, off until the next registration.

use std::io::{BufReader, Read};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use ureq::http::Response;
use ureq::unversioned::transport::DefaultConnector;
use ureq::Body;

// The runner's ureq 3; `ureq` in Cargo.toml is still the ureq 2 of the dev
// server and the tests until they move.

use crate::identity::Identity;
use crate::ids::ExecutionId;
use crate::net::Net;
use crate::protocol::{self, paths, PendingExecution, SIGNATURE_HEADER};
use crate::resolver::CachingResolver;

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
    /// No answer: the connection, TLS, a timeout. The message says what an
    /// operator can do about the common TLS failures.
    #[error("{url}: {source}{}", tls_hint(.source))]
    Transport {
        url: String,
        #[source]
        source: ureq::Error,
    },
    /// The answer's body could not be read to its end.
    #[error("reading the {route} answer: {source}")]
    ReadBody {
        route: &'static str,
        #[source]
        source: ureq::Error,
    },
    #[error("HTTP {code}{}", if .body.is_empty() { String::new() } else { format!(": {}", .body) })]
    Status { code: u16, body: String },
    #[error("unreadable answer: {0}")]
    Decode(String),
    #[error(transparent)]
    Sign(#[from] crate::signing::SignError),
    /// The API has no such route (it answered 404 once; nothing was sent this
    /// time). Not an outcome to retry: no request will ever be taken.
    #[error("the API has no {0} route")]
    RouteMissing(&'static str),
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
            ApiError::Transport { .. } | ApiError::ReadBody { .. } => true,
            ApiError::Status { code, .. } => *code >= 500 || *code == 408 || *code == 429,
            ApiError::Decode(_) | ApiError::Sign(_) | ApiError::RouteMissing(_) => false,
        }
    }

    /// The answer of a router that has no such route, rather than of a
    /// handler that looked at the request: 404/405 with a body that is not
    /// JSON (gin's `404 page not found`, a proxy's HTML page). Any 404/405
    /// counts on the older generation, which is known to lack the route.
    fn is_no_route(&self, generation: Generation) -> bool {
        match self {
            ApiError::Status {
                code: 404 | 405,
                body,
            } => {
                generation == Generation::March2026
                    || (!body.is_empty() && !body.starts_with(['{', '[']))
            }
            _ => false,
        }
    }

    /// A poll answered 404/405: this form of the poll is not this API's.
    fn is_wrong_poll_form(&self) -> bool {
        matches!(self.status(), Some(404 | 405))
    }
}

/// Which generation of the Flomation API the runner talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// No poll answered yet since the last registration.
    Unknown,
    /// `POST` poll, `/logs`, `/status` (PROTOCOL.md §4–§8).
    Current,
    /// The public release of March 2026: `GET` poll signed over the empty
    /// body, no `/logs`, no `/status` (PROTOCOL.md §9).
    March2026,
}

impl Generation {
    pub const ALL: [Generation; 3] = [
        Generation::Unknown,
        Generation::Current,
        Generation::March2026,
    ];

    /// The name in logs, `check` and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Generation::Unknown => "unknown",
            Generation::Current => "current",
            Generation::March2026 => "2026-03",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => Generation::Current,
            2 => Generation::March2026,
            _ => Generation::Unknown,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Generation::Unknown => 0,
            Generation::Current => 1,
            Generation::March2026 => 2,
        }
    }

    /// How this generation's poll is sent, for the log line.
    fn poll_form(self) -> &'static str {
        match self {
            Generation::March2026 => "GET poll signed over the empty body, PROTOCOL.md §9",
            _ => "POST poll",
        }
    }
}

/// What the API was found to have, since the last registration.
#[derive(Default)]
struct Detected {
    generation: AtomicU8,
    logs_missing: AtomicBool,
    status_missing: AtomicBool,
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
    detected: Detected,
}

/// The claim body (PROTOCOL.md §6): the same bytes for every execution.
const CLAIM_BODY: &[u8] = br#"{"state":"running"}"#;

/// The largest response head (status line and headers) the runner reads.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// A connection's input buffer: a little more than the largest head, or a
/// head that fills the buffer exactly is read as the peer hanging up
/// instead of ureq's "response header is too big".
const INPUT_BUFFER_BYTES: usize = MAX_HEAD_BYTES + 1024;
/// A connection's output buffer: the request head must fit; bodies stream.
const OUTPUT_BUFFER_BYTES: usize = 8 * 1024;

fn agent(timeout: Duration, net: &Net) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .timeout_connect(Some(Duration::from_secs(10)))
        .user_agent(format!("flo-runner/{}", env!("CARGO_PKG_VERSION")))
        .max_redirects(0)
        // Every answer comes back as a response (see `finish`), so that a
        // non-2xx one keeps its body's reason.
        .http_status_as_error(false)
        // Keep connections to the API alive for every worker at once (the
        // default keeps three), so a busy runner does not reconnect per call.
        .max_idle_connections(64)
        .max_idle_connections_per_host(64)
        // Per connection, and resident once used: ureq's 128 KiB each way
        // made an idle runner's two connections 0.5 MiB. The API's heads are
        // small; a request body streams through the output buffer, and a
        // response head must fit the input one.
        .input_buffer_size(INPUT_BUFFER_BYTES)
        .output_buffer_size(OUTPUT_BUFFER_BYTES)
        .max_response_header_size(MAX_HEAD_BYTES)
        .tls_config(net.tls.clone())
        // Set even when `None`: ureq would otherwise read the proxy
        // variables itself, by its own precedence (see `net`).
        .proxy(net.proxy.clone())
        .build();
    ureq::Agent::with_parts(
        config,
        DefaultConnector::default(),
        CachingResolver::default(),
    )
}

/// What `check` learns about an API without registering or taking work. Its
/// requests are unsigned: a route that exists refuses them (401/403, or a
/// handler's own 404 for an execution that does not exist), a route that
/// does not is a router's 404/405.
#[derive(Debug)]
pub struct Probe {
    /// The generation whose form of the poll the API has; `None`: neither
    /// form (or an answer that shows neither, see `post` and `get`).
    pub generation: Option<Generation>,
    /// The status the POST poll got, and the GET poll when it was tried.
    pub post: u16,
    pub get: Option<u16>,
    /// Whether `/logs` and `/status` exist (checked with a generation only).
    pub logs: bool,
    pub status: bool,
}

/// The execution id the probes name; no API has it.
const PROBE_EXECUTION: &str = "flo-runner-check";

/// Probes the poll in both forms, then `/logs` and `/status` (for `check`).
/// `identifier` is the runner's own when it has one, so that an API which
/// answers 404 for an unknown runner still shows that the route exists.
pub fn probe(base_url: &str, identifier: &str, net: &Net) -> Result<Probe, ApiError> {
    let base = base_url.trim_end_matches('/');
    let agent = agent(CALL_TIMEOUT, net);
    let mut probe = probe_poll(&agent, &format!("{base}{}", paths::poll(identifier)))?;
    let Some(generation) = probe.generation else {
        return Ok(probe);
    };
    let missing = |a: &ProbeAnswer| a.as_ref().is_err_and(|e| e.is_no_route(generation));
    let logs_url = format!("{base}{}", paths::logs(PROBE_EXECUTION));
    let logs = probe_answer(
        &logs_url,
        agent
            .post(&logs_url)
            .header("Content-Type", "application/json")
            .send(br#"{"lines":["flo-runner check"]}"#),
    )?;
    probe.logs = !missing(&logs);
    let status_url = format!("{base}{}", paths::status(PROBE_EXECUTION));
    let status = probe_answer(&status_url, agent.get(&status_url).call())?;
    probe.status = !missing(&status);
    Ok(probe)
}

/// The poll probed in the current form, then in the older one where the
/// current form is not there: a GET is never sent to a current API. The
/// routes are left unprobed (`false`).
fn probe_poll(agent: &ureq::Agent, poll_url: &str) -> Result<Probe, ApiError> {
    let body = serde_json::to_vec(&protocol::PollRequest {
        requested_at: humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string(),
    })
    .map_err(|e| ApiError::Decode(e.to_string()))?;
    let post = probe_answer(
        poll_url,
        agent
            .post(poll_url)
            .header("Content-Type", "application/json")
            .send(&body[..]),
    )?;
    let mut probe = Probe {
        generation: route_exists(&post).then_some(Generation::Current),
        post: answer_code(&post),
        get: None,
        logs: false,
        status: false,
    };
    if post.as_ref().is_err_and(ApiError::is_wrong_poll_form) {
        let get = probe_answer(poll_url, agent.get(poll_url).call())?;
        probe.get = Some(answer_code(&get));
        if route_exists(&get) {
            probe.generation = Some(Generation::March2026);
        }
    }
    Ok(probe)
}

/// What one probe got: the status of a 2xx, or the status error of another
/// answer.
type ProbeAnswer = Result<u16, ApiError>;

/// The probe's answer; no answer at all is the probe's error.
fn probe_answer(
    url: &str,
    result: Result<Response<Body>, ureq::Error>,
) -> Result<ProbeAnswer, ApiError> {
    match finish(url, result) {
        Ok(resp) => Ok(Ok(drain(resp))),
        Err(e @ ApiError::Status { .. }) => Ok(Err(e)),
        Err(e) => Err(e),
    }
}

fn answer_code(a: &ProbeAnswer) -> u16 {
    match a {
        Ok(c) => *c,
        Err(e) => e.status().unwrap_or(0),
    }
}

/// An answer that shows the route exists: it took, or refused, the
/// unsigned request.
fn route_exists(a: &ProbeAnswer) -> bool {
    matches!(answer_code(a), 200..=299 | 401 | 403)
}

impl Api {
    pub fn new(base_url: &str, identity: Arc<Identity>, net: &Net) -> Self {
        Self {
            base: base_url.trim_end_matches('/').to_string(),
            identity,
            poll_agent: agent(POLL_TIMEOUT, net),
            agent: agent(CALL_TIMEOUT, net),
            claim_signature: std::sync::Mutex::new(None),
            detected: Detected::default(),
        }
    }

    /// The generation the API was found to be (`Unknown` before a poll).
    pub fn generation(&self) -> Generation {
        Generation::from_u8(self.detected.generation.load(Ordering::SeqCst))
    }

    /// Whether log lines are streamed to `/logs` (not known missing).
    pub fn streams_logs(&self) -> bool {
        !self.detected.logs_missing.load(Ordering::SeqCst)
    }

    /// Whether `/status` is asked for cancels (not known missing).
    pub fn can_cancel(&self) -> bool {
        !self.detected.status_missing.load(Ordering::SeqCst)
    }

    /// Forgets what was detected, so the next calls find out again: called
    /// after each registration, which is when an upgraded API shows up.
    pub fn reset_generation(&self) {
        self.detected.generation.store(0, Ordering::SeqCst);
        self.detected.logs_missing.store(false, Ordering::SeqCst);
        self.detected.status_missing.store(false, Ordering::SeqCst);
        self.publish();
    }

    fn set_generation(&self, generation: Generation) {
        let before = self
            .detected
            .generation
            .swap(generation.to_u8(), Ordering::SeqCst);
        if before != generation.to_u8() {
            log::info!(
                "talking to API generation {} at {} ({})",
                generation.as_str(),
                self.base,
                generation.poll_form()
            );
            self.publish();
        }
    }

    /// Turns `e` into [`ApiError::RouteMissing`] when it says `route` does
    /// not exist, switching the feature off (and saying so, once).
    fn note_missing(&self, route: &'static str, e: ApiError) -> ApiError {
        if !e.is_no_route(self.generation()) {
            return e;
        }
        let (flag, first) = match route {
            "logs" => (&self.detected.logs_missing, true),
            _ => (&self.detected.status_missing, false),
        };
        if !flag.swap(true, Ordering::SeqCst) {
            if first {
                log::info!(
                    "the API at {} has no log route ({e} on POST /api/v1/execution/{{id}}/logs): log streaming is off for this session; output still goes to each execution's output.log and to its result's state.logs",
                    self.base
                );
            } else {
                log::warn!(
                    "the API at {} has no status route ({e} on GET /api/v1/execution/{{id}}/status): cancel is unavailable with this API, so an execution cancelled on the server runs to its end (execution.timeout_secs still applies)",
                    self.base
                );
            }
            self.publish();
        }
        ApiError::RouteMissing(route)
    }

    /// Shows what was detected in the metrics.
    fn publish(&self) {
        crate::metrics::global().api_detected(
            self.generation(),
            self.streams_logs(),
            self.can_cancel(),
        );
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `POST /api/v1/runner`, unsigned. Returns the 2xx status.
    pub fn register(&self, body: &protocol::RegistrationRequest) -> Result<u16, ApiError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ApiError::Decode(e.to_string()))?;
        let url = self.url(paths::REGISTER);
        let req = self
            .agent
            .post(&url)
            .header("Content-Type", "application/json");
        let started = Instant::now();
        let resp = timed("register", &url, started, req.send(&bytes[..]))?;
        Ok(drain(resp))
    }

    /// Asks for work in the form of the generation last found: the current
    /// `POST /api/v1/runner/{identifier}/execution`, or the older `GET` of
    /// the same path. A 404/405 makes it try the other form once; an answer
    /// that shows the route exists (2xx, 401, 403) decides the generation.
    /// Neither form found: the first form's error (404/405).
    pub fn poll(&self) -> Result<PollAnswer, ApiError> {
        let resp = self.poll_either_form()?;
        if resp.status() == 204 {
            return Ok(PollAnswer::NoWork);
        }
        read_poll_answer(resp)
    }

    /// The 2xx answer of the form last found (current if none), or of the
    /// other form when that one is answered 404/405.
    fn poll_either_form(&self) -> Result<Response<Body>, ApiError> {
        let (first, other) = match self.generation() {
            Generation::March2026 => (Generation::March2026, Generation::Current),
            _ => (Generation::Current, Generation::March2026),
        };
        match self.poll_detecting(first) {
            Err(e) if e.is_wrong_poll_form() => match self.poll_detecting(other) {
                Err(e2) if e2.is_wrong_poll_form() => Err(e),
                answer => answer,
            },
            answer => answer,
        }
    }

    /// One poll in `generation`'s form, which decides the generation when
    /// the answer shows the route exists (2xx, 401, 403).
    fn poll_detecting(&self, generation: Generation) -> Result<Response<Body>, ApiError> {
        let answer = self.poll_as(generation);
        match &answer {
            Ok(_) => self.set_generation(generation),
            Err(e) if matches!(e.status(), Some(401 | 403)) => self.set_generation(generation),
            Err(_) => {}
        }
        answer
    }

    /// One poll in `generation`'s form.
    fn poll_as(&self, generation: Generation) -> Result<Response<Body>, ApiError> {
        let path = paths::poll(self.identity.identifier.as_str());
        if generation == Generation::March2026 {
            // That generation signs every request over its body: here none.
            let signature = self.identity.signer.sign_hex(b"")?;
            let url = self.url(&path);
            let req = self
                .poll_agent
                .get(&url)
                .header(SIGNATURE_HEADER, &signature);
            return timed("poll", &url, Instant::now(), req.call());
        }
        let body = protocol::PollRequest {
            requested_at: humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string(),
        };
        let bytes = serde_json::to_vec(&body).map_err(|e| ApiError::Decode(e.to_string()))?;
        self.post_signed("poll", &self.poll_agent, &path, &bytes)
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
    /// [`ApiError::RouteMissing`], without a request, once the API is known
    /// to have no such route.
    pub fn send_logs_body(&self, id: &ExecutionId, body: &[u8]) -> Result<(), ApiError> {
        if !self.streams_logs() {
            return Err(ApiError::RouteMissing("logs"));
        }
        let resp = self
            .post_signed("logs", &self.agent, &paths::logs(id.as_str()), body)
            .map_err(|e| self.note_missing("logs", e))?;
        drain(resp);
        Ok(())
    }

    /// `GET /api/v1/execution/{id}/status`, signed over the id (over the
    /// empty body in the older generation, which signs every body).
    /// [`ApiError::RouteMissing`], without a request, once the API is known
    /// to have no such route.
    pub fn status(
        &self,
        id: &ExecutionId,
        timeout: Duration,
    ) -> Result<protocol::StatusResponse, ApiError> {
        if !self.can_cancel() {
            return Err(ApiError::RouteMissing("status"));
        }
        let message: &[u8] = match self.generation() {
            Generation::March2026 => b"",
            _ => id.as_str().as_bytes(),
        };
        let signature = self.identity.signer.sign_hex(message)?;
        let url = self.url(&paths::status(id.as_str()));
        let req = self
            .agent
            .get(&url)
            .config()
            .timeout_global(Some(timeout))
            .build()
            .header(SIGNATURE_HEADER, &signature);
        let started = Instant::now();
        let resp = timed("status", &url, started, req.call())
            .map_err(|e| self.note_missing("status", e))?;
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
    ) -> Result<Response<Body>, ApiError> {
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
    ) -> Result<Response<Body>, ApiError> {
        let url = self.url(path);
        let req = agent
            .post(&url)
            .header("Content-Type", "application/json")
            .header(SIGNATURE_HEADER, signature);
        let started = Instant::now();
        timed(route, &url, started, req.send(body))
    }
}

/// A poll's 2xx answer with a body: read whole (up to the cap) and parsed
/// into the typed answer, whose flow definition and trigger data stay raw
/// bytes: memory is about the answer's size, never a tree of it.
fn read_poll_answer(resp: Response<Body>) -> Result<PollAnswer, ApiError> {
    let read = resp
        .into_body()
        .into_with_config()
        .limit(MAX_POLL_BODY)
        .read_to_vec();
    let body = match read {
        Ok(body) => body,
        // Not read to the end: the connection is dropped, not reused.
        Err(ureq::Error::BodyExceedsLimit(_)) => {
            return Ok(PollAnswer::Malformed {
                execution_id: None,
                why: format!("the answer is over {MAX_POLL_BODY} bytes"),
            })
        }
        Err(source) => {
            return Err(ApiError::ReadBody {
                route: "poll",
                source,
            })
        }
    };
    match serde_json::from_slice::<PendingExecution>(&body) {
        Ok(p) => Ok(PollAnswer::Work(Box::new(p))),
        Err(e) => Ok(PollAnswer::Malformed {
            execution_id: execution_id_of(&body),
            why: format!("not a pending execution: {e}"),
        }),
    }
}

/// The execution id of an answer that is not a whole pending execution,
/// so it can still be reported; the rest of the answer is skipped unparsed.
fn execution_id_of(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: String,
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        execution: Id,
    }
    serde_json::from_slice::<Answer>(body)
        .ok()
        .map(|a| a.execution.id)
}

/// Runs one request, recording its route, status and latency in the metrics.
fn timed(
    route: &'static str,
    url: &str,
    started: Instant,
    result: Result<Response<Body>, ureq::Error>,
) -> Result<Response<Body>, ApiError> {
    let status = result.as_ref().ok().map(|resp| resp.status().as_u16());
    crate::metrics::global().api_request(route, status, started.elapsed());
    finish(url, result)
}

/// Maps ureq's result: non-2xx answers become `ApiError::Status` with a short
/// excerpt of the body (servers put the reason there).
fn finish(
    url: &str,
    result: Result<Response<Body>, ureq::Error>,
) -> Result<Response<Body>, ApiError> {
    match result {
        Ok(resp) if resp.status().is_success() => Ok(resp),
        Ok(resp) => Err(status_error(resp)),
        Err(source) => Err(ApiError::Transport {
            url: url.to_string(),
            source,
        }),
    }
}

/// What an operator can do about the common TLS failures, from the rustls
/// error under `e`; empty for anything else.
fn tls_hint(e: &ureq::Error) -> &'static str {
    use rustls::{AlertDescription as Alert, CertificateError as Cert, Error as Tls};
    let tls = match e {
        ureq::Error::Rustls(tls) => Some(tls),
        // The handshake runs through an io::Error that carries rustls's.
        ureq::Error::Io(io) => io.get_ref().and_then(|inner| inner.downcast_ref::<Tls>()),
        _ => None,
    };
    match tls {
        Some(
            Tls::InvalidCertificate(Cert::UnknownIssuer) | Tls::AlertReceived(Alert::UnknownCA),
        ) => "; the API's certificate is not signed by a trusted CA: add its CA with tls.ca_cert",
        Some(Tls::AlertReceived(Alert::CertificateRequired)) => {
            "; the API requires a client certificate: set tls.enabled, tls.cert and tls.key"
        }
        Some(Tls::InvalidCertificate(
            Cert::NotValidForName | Cert::NotValidForNameContext { .. },
        )) => "; the API's certificate does not name this host: check runner.url",
        Some(Tls::InvalidCertificate(Cert::Expired | Cert::ExpiredContext { .. })) => {
            "; the API's certificate has expired"
        }
        _ => "",
    }
}

fn status_error(resp: Response<Body>) -> ApiError {
    let code = resp.status().as_u16();
    let mut excerpt = Vec::new();
    let _ = resp
        .into_body()
        .into_reader()
        .take(300)
        .read_to_end(&mut excerpt);
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

fn read_json<T: DeserializeOwned>(resp: Response<Body>) -> Result<T, ApiError> {
    let body = resp.into_body().into_with_config().limit(MAX_SMALL_BODY);
    let mut reader = BufReader::new(body.reader());
    let parsed = serde_json::from_reader(&mut reader);
    let _ = std::io::copy(&mut reader, &mut std::io::sink());
    parsed.map_err(|e| ApiError::Decode(e.to_string()))
}

/// Reads and discards a (small) answer we do not need, so that ureq can put
/// the connection back in its pool: a response dropped unread closes the
/// connection, and every call would then pay a new TCP (and TLS) handshake.
fn drain(resp: Response<Body>) -> u16 {
    let status = resp.status().as_u16();
    let body = resp.into_body().into_with_config().limit(MAX_SMALL_BODY);
    let _ = std::io::copy(&mut body.reader(), &mut std::io::sink());
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_routers_404_is_a_missing_route_and_a_handlers_is_not() {
        let e = |code, body: &str| ApiError::Status {
            code,
            body: body.into(),
        };
        let current = Generation::Current;
        assert!(e(404, "404 page not found").is_no_route(current));
        assert!(e(405, "<html><body>Not Found</body></html>").is_no_route(Generation::Unknown));
        // A handler's answer about the execution, or no body: not the route.
        assert!(!e(404, r#"{"error":"execution not found"}"#).is_no_route(current));
        assert!(!e(404, "").is_no_route(current));
        // The older generation has no such routes: any 404 is that.
        assert!(e(404, r#"{"error":"x"}"#).is_no_route(Generation::March2026));
        assert!(!e(403, "404 page not found").is_no_route(Generation::March2026));
        let reset = ApiError::Transport {
            url: "http://api/x".into(),
            source: ureq::Error::ConnectionFailed,
        };
        assert!(!reset.is_no_route(Generation::March2026));
        assert!(reset.outcome_unknown());
        assert!(!ApiError::RouteMissing("logs").outcome_unknown());
        for g in Generation::ALL {
            assert_eq!(Generation::from_u8(g.to_u8()), g);
        }
    }

    #[test]
    fn the_presigned_claim_body_is_the_protocol_body() {
        let body = protocol::StateUpdate {
            state: "running".into(),
        };
        assert_eq!(serde_json::to_vec(&body).unwrap(), CLAIM_BODY);
    }
}
