//! The runner routes (PROTOCOL.md §3–§8), server side, with the real API's
//! semantics. Every request that reaches them is kept in the request log.
//!
//! Choices where the protocol is silent:
//! - a poll from an unknown runner is 403 (no key to verify with);
//! - a signed request on an execution allocated to another registered
//!   runner is 409, a signature no registered key verifies is 403;
//! - logs are accepted after completion (batches may arrive late);
//! - a second result from the assignee is stored and answered 200, so a test
//!   can see that a runner sent two (`results` in the admin view).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::app::App;
use super::auth::{parse_public_key, verify_hex};
use super::faults::Action;
use super::http::{error, Incoming, Reply};
use super::state::{now_rfc3339, RequestRecord, Signer, State, Status};
use crate::protocol::{ExecutionResult, LogBatch, RegistrationRequest, StateUpdate};

/// Request-log bodies that are not JSON are kept as text up to this size.
const MAX_LOGGED_TEXT: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunnerRoute {
    Register,
    Poll,
    State,
    Logs,
    Status,
    Result,
}

impl RunnerRoute {
    pub fn as_str(self) -> &'static str {
        match self {
            RunnerRoute::Register => "register",
            RunnerRoute::Poll => "poll",
            RunnerRoute::State => "state",
            RunnerRoute::Logs => "logs",
            RunnerRoute::Status => "status",
            RunnerRoute::Result => "result",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        [
            RunnerRoute::Register,
            RunnerRoute::Poll,
            RunnerRoute::State,
            RunnerRoute::Logs,
            RunnerRoute::Status,
            RunnerRoute::Result,
        ]
        .into_iter()
        .find(|r| r.as_str() == name)
    }

    fn method(self) -> &'static str {
        match self {
            RunnerRoute::Status => "GET",
            _ => "POST",
        }
    }

    /// The route a path names, and its target (runner identifier or
    /// execution id, decoded), whatever the method.
    pub fn recognise(segments: &[String]) -> Option<(Self, String)> {
        let s: Vec<&str> = segments.iter().map(String::as_str).collect();
        let (route, target) = match s.as_slice() {
            ["api", "v1", "runner"] => (RunnerRoute::Register, ""),
            ["api", "v1", "runner", id, "execution"] => (RunnerRoute::Poll, *id),
            ["api", "v1", "execution", id, "state"] => (RunnerRoute::State, *id),
            ["api", "v1", "execution", id, "logs"] => (RunnerRoute::Logs, *id),
            ["api", "v1", "execution", id, "status"] => (RunnerRoute::Status, *id),
            ["api", "v1", "execution", id] => (RunnerRoute::Result, *id),
            _ => return None,
        };
        Some((route, target.to_string()))
    }
}

/// What one runner-route request came to.
struct Outcome {
    reply: Reply,
    signature_valid: Option<bool>,
    fault: Option<&'static str>,
}

impl Outcome {
    fn new(reply: Reply, signature_valid: Option<bool>) -> Self {
        Self {
            reply,
            signature_valid,
            fault: None,
        }
    }
}

/// Handles a request outside `/admin` and records it in the request log.
pub fn handle(app: &App, inc: &Incoming) -> Reply {
    let seq = app.lock().next_request_seq();
    let at_ms = app.elapsed_ms();
    let recognised = RunnerRoute::recognise(&inc.segments());
    let (route_name, outcome) = match recognised {
        None => (
            "unknown",
            Outcome::new(error(404, format!("no route for {}", inc.path)), None),
        ),
        Some((route, _)) if route.method() != inc.method => (
            route.as_str(),
            Outcome::new(
                error(405, format!("{} wants {}", inc.path, route.method())),
                None,
            ),
        ),
        Some((route, target)) => (route.as_str(), handle_route(app, inc, route, &target)),
    };
    let record = RequestRecord {
        seq,
        at_ms,
        method: inc.method.clone(),
        path: inc.path.clone(),
        route: route_name,
        status: outcome.reply.status(),
        signature: inc.signature.clone(),
        signature_valid: outcome.signature_valid,
        body: logged_body(inc),
        fault: outcome.fault,
    };
    app.lock().record_request(record);
    outcome.reply
}

fn logged_body(inc: &Incoming) -> Value {
    if inc.too_large {
        return Value::String("<body over the size limit, not read>".to_string());
    }
    if inc.body.is_empty() {
        return Value::Null;
    }
    if let Ok(v) = serde_json::from_slice(&inc.body) {
        return v;
    }
    let text = String::from_utf8_lossy(&inc.body);
    let mut end = text.len().min(MAX_LOGGED_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Value::String(text[..end].to_string())
}

fn handle_route(app: &App, inc: &Incoming, route: RunnerRoute, target: &str) -> Outcome {
    if inc.too_large {
        return Outcome::new(error(413, "request body over 64 MiB"), None);
    }
    // Faults come before anything else, so a faulted request changed nothing.
    let decision = {
        let st = app.lock();
        st.faults
            .for_route(route)
            .map(|f| f.decide(Instant::now(), &mut rand::thread_rng()))
    };
    let mut lose_answer = false;
    if let Some((delay, action)) = decision {
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        lose_answer = action == Action::LoseAnswer;
        if action != Action::Proceed && !lose_answer {
            let signature_valid = signature_validity(&app.lock(), route, target, inc);
            let reply = match action {
                Action::Error(status) => {
                    error(status, format!("injected fault on {}", route.as_str()))
                }
                _ => Reply::Drop,
            };
            return Outcome {
                reply,
                signature_valid,
                fault: action.label(),
            };
        }
    }
    let outcome = match route {
        RunnerRoute::Register => register(app, inc),
        RunnerRoute::Poll => poll(app, inc, target),
        RunnerRoute::State => claim(app, inc, target),
        RunnerRoute::Logs => logs(app, inc, target),
        RunnerRoute::Status => status(app, inc, target),
        RunnerRoute::Result => result(app, inc, target),
    };
    if lose_answer {
        return Outcome {
            reply: Reply::Drop,
            fault: Action::LoseAnswer.label(),
            ..outcome
        };
    }
    outcome
}

/// Whether the signature is the one the route wants, for the request log of
/// a faulted request (the handlers work it out themselves otherwise).
fn signature_validity(
    st: &State,
    route: RunnerRoute,
    target: &str,
    inc: &Incoming,
) -> Option<bool> {
    let sig = inc.signature.as_deref();
    match route {
        RunnerRoute::Register => None,
        RunnerRoute::Poll => Some(
            st.runner(target)
                .is_some_and(|r| verify_hex(&r.key, &inc.body, sig)),
        ),
        _ => {
            let message = signed_message(route, target, inc);
            Some(
                st.execution(target)
                    .is_some_and(|e| st.signer(e, message, sig) == Signer::Assignee),
            )
        }
    }
}

/// The status route signs the execution id; every POST signs its body.
fn signed_message<'a>(route: RunnerRoute, target: &'a str, inc: &'a Incoming) -> &'a [u8] {
    if route == RunnerRoute::Status {
        target.as_bytes()
    } else {
        &inc.body
    }
}

fn register(app: &App, inc: &Incoming) -> Outcome {
    let parsed = inc.json().and_then(|v| {
        serde_json::from_value::<RegistrationRequest>(v)
            .map_err(|e| format!("not a registration request: {e}"))
    });
    let request = match parsed {
        Ok(r) => r,
        Err(why) => return Outcome::new(error(400, why), None),
    };
    if request.registration_code != app.registration_code {
        return Outcome::new(error(404, "registration code not recognised"), None);
    }
    if request.identifier.trim().is_empty() {
        return Outcome::new(error(400, "identifier is empty"), None);
    }
    let pem = match request.public_key.as_deref().map(str::trim) {
        Some(p) if !p.is_empty() => p.to_string(),
        _ => return Outcome::new(error(400, "public_key is missing"), None),
    };
    let key = match parse_public_key(&pem) {
        Ok(k) => k,
        Err(why) => return Outcome::new(error(400, why), None),
    };
    let (new, record) = app.lock().register(request, key, pem, &now_rfc3339());
    Outcome::new(Reply::Json(if new { 200 } else { 201 }, record), None)
}

fn poll(app: &App, inc: &Incoming, identifier: &str) -> Outcome {
    let mut st = app.lock();
    let Some(runner) = st.runner(identifier) else {
        return Outcome::new(
            error(403, format!("runner {identifier:?} is not registered")),
            Some(false),
        );
    };
    if !verify_hex(&runner.key, &inc.body, inc.signature.as_deref()) {
        return Outcome::new(
            error(
                403,
                format!("signature does not verify with runner {identifier:?}'s key"),
            ),
            Some(false),
        );
    }
    st.touch_runner(identifier, &now_rfc3339());
    if let Some(forced) = st.poll_overrides.pop_front() {
        return Outcome::new(forced.reply(), Some(true));
    }
    let requested_at = inc.json().and_then(|v| match v.get("requested_at") {
        Some(Value::String(_)) => Ok(()),
        _ => Err("requested_at (a string) is missing".to_string()),
    });
    if let Err(why) = requested_at {
        return Outcome::new(error(400, why), Some(true));
    }
    let deadline = Instant::now() + app.long_poll;
    loop {
        if let Some(pending) = st.allocate(identifier) {
            log::info!(
                "allocated execution {} to runner {identifier}",
                pending["execution"]["id"]
            );
            return Outcome::new(Reply::Json(200, pending), Some(true));
        }
        let now = Instant::now();
        if now >= deadline || app.is_stopping() {
            return Outcome::new(Reply::Empty(204), Some(true));
        }
        // Woken by an enqueue; spurious wake-ups just go round again.
        st = app.wait(st, (deadline - now).max(Duration::from_millis(1)));
    }
}

/// Authenticates a request on an execution route. `Err` is the answer.
fn gate(st: &State, route: RunnerRoute, id: &str, inc: &Incoming) -> Result<(), Outcome> {
    let Some(execution) = st.execution(id) else {
        return Err(Outcome::new(
            error(404, format!("execution {id:?} not found")),
            Some(false),
        ));
    };
    match st.signer(
        execution,
        signed_message(route, id, inc),
        inc.signature.as_deref(),
    ) {
        Signer::Assignee => Ok(()),
        Signer::OtherRunner(who) => Err(Outcome::new(
            error(
                409,
                format!("execution {id:?} is not allocated to runner {who:?}"),
            ),
            Some(false),
        )),
        Signer::Nobody => Err(Outcome::new(
            error(
                403,
                format!("signature for execution {id:?} verifies with no registered runner's key"),
            ),
            Some(false),
        )),
    }
}

fn parse_body<T: serde::de::DeserializeOwned>(inc: &Incoming, what: &str) -> Result<T, Outcome> {
    inc.json()
        .and_then(|v| serde_json::from_value(v).map_err(|e| format!("not a {what}: {e}")))
        .map_err(|why| Outcome::new(error(400, why), Some(true)))
}

fn claim(app: &App, inc: &Incoming, id: &str) -> Outcome {
    let mut st = app.lock();
    if let Some(e) = st.execution_mut(id) {
        e.state_posts += 1;
    }
    if let Err(o) = gate(&st, RunnerRoute::State, id, inc) {
        return o;
    }
    if let Err(o) = parse_body::<StateUpdate>(inc, "state update") {
        return o;
    }
    let Some(e) = st.execution_mut(id) else {
        return Outcome::new(
            error(404, format!("execution {id:?} not found")),
            Some(true),
        );
    };
    if e.status == Status::Completed {
        return Outcome::new(
            error(409, format!("execution {id:?} is already completed")),
            Some(true),
        );
    }
    if let Some(forced) = e.spec.claim_status {
        return Outcome::new(
            error(forced, "claim status forced by the admin API"),
            Some(true),
        );
    }
    e.status = Status::Running;
    Outcome::new(
        Reply::Json(200, json!({"id": id, "status": "running"})),
        Some(true),
    )
}

fn logs(app: &App, inc: &Incoming, id: &str) -> Outcome {
    let mut st = app.lock();
    if let Err(o) = gate(&st, RunnerRoute::Logs, id, inc) {
        return o;
    }
    let batch = match parse_body::<LogBatch>(inc, "log batch") {
        Ok(b) => b,
        Err(o) => return o,
    };
    let Some(e) = st.execution_mut(id) else {
        return Outcome::new(
            error(404, format!("execution {id:?} not found")),
            Some(true),
        );
    };
    let accepted = batch.lines.len();
    e.logs.extend(batch.lines);
    e.log_batches += 1;
    Outcome::new(Reply::Json(200, json!({"accepted": accepted})), Some(true))
}

fn status(app: &App, inc: &Incoming, id: &str) -> Outcome {
    let st = app.lock();
    if let Err(o) = gate(&st, RunnerRoute::Status, id, inc) {
        return o;
    }
    let completion = st
        .execution(id)
        .map(|e| e.completion_status.clone())
        .unwrap_or_default();
    Outcome::new(
        Reply::Json(200, json!({"completion_status": completion})),
        Some(true),
    )
}

fn result(app: &App, inc: &Incoming, id: &str) -> Outcome {
    let mut st = app.lock();
    if let Err(o) = gate(&st, RunnerRoute::Result, id, inc) {
        return o;
    }
    let parsed = match parse_body::<ExecutionResult>(inc, "result") {
        Ok(r) => r,
        Err(o) => return o,
    };
    // Kept exactly as received: tests compare what the runner sent.
    let raw: Value = serde_json::from_slice(&inc.body).unwrap_or(Value::Null);
    let Some(e) = st.execution_mut(id) else {
        return Outcome::new(
            error(404, format!("execution {id:?} not found")),
            Some(true),
        );
    };
    if !e.results.is_empty() {
        log::warn!("execution {id} got result number {}", e.results.len() + 1);
    }
    e.results.push(raw);
    e.status = Status::Completed;
    e.completion_status = if parsed.cancelled {
        "cancelled"
    } else if parsed.has_errored {
        "failed"
    } else {
        "success"
    }
    .to_string();
    let completion = e.completion_status.clone();
    Outcome::new(
        Reply::Json(200, json!({"id": id, "completion_status": completion})),
        Some(true),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(path: &str) -> Vec<String> {
        Incoming::new("GET", path, None, b"").segments()
    }

    #[test]
    fn recognises_every_route() {
        let cases = [
            ("/api/v1/runner", RunnerRoute::Register, ""),
            ("/api/v1/runner/abc/execution", RunnerRoute::Poll, "abc"),
            ("/api/v1/execution/e1/state", RunnerRoute::State, "e1"),
            ("/api/v1/execution/e1/logs", RunnerRoute::Logs, "e1"),
            ("/api/v1/execution/e1/status", RunnerRoute::Status, "e1"),
            ("/api/v1/execution/e%2F1", RunnerRoute::Result, "e/1"),
        ];
        for (path, route, target) in cases {
            assert_eq!(
                RunnerRoute::recognise(&segs(path)),
                Some((route, target.to_string())),
                "{path}"
            );
            assert_eq!(RunnerRoute::parse(route.as_str()), Some(route));
        }
        assert_eq!(RunnerRoute::recognise(&segs("/api/v1/other")), None);
    }

    #[test]
    fn logged_body_caps_text() {
        let mut inc = Incoming::new("POST", "/x", None, &vec![b'a'; 10_000]);
        assert_eq!(logged_body(&inc).as_str().unwrap().len(), MAX_LOGGED_TEXT);
        inc.body = br#"{"a":1}"#.to_vec();
        assert_eq!(logged_body(&inc), json!({"a": 1}));
        inc.body.clear();
        assert_eq!(logged_body(&inc), Value::Null);
    }
}
