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
//!
//! With `--generation 2026-03` the routes play the older API (PROTOCOL.md
//! §9): the poll is a GET, every signature is over the body (so a GET's over
//! the empty body), `/logs` and `/status` and any wrong method are gin's
//! `404 page not found`, a claim on another runner's execution is 403 (its
//! signature verifies with the wrong key) and never 409.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::app::{App, Generation};
use super::auth::{parse_public_key, verify_hex};
use super::faults::Action;
use super::http::{error, gin_not_found, Incoming, Reply};
use super::state::{now_rfc3339, RequestRecord, Signer, State, Status};
use flo_protocol::protocol::{ExecutionResult, LogBatch, RegistrationRequest, StateUpdate};

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

    fn method(self, generation: Generation) -> &'static str {
        match (self, generation) {
            (RunnerRoute::Status, _) | (RunnerRoute::Poll, Generation::March2026) => "GET",
            _ => "POST",
        }
    }

    /// Whether the generation has this route at all.
    fn exists_in(self, generation: Generation) -> bool {
        generation == Generation::Current
            || !matches!(self, RunnerRoute::Logs | RunnerRoute::Status)
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
    let generation = app.generation;
    let (route_name, outcome) = match recognised {
        // gin answers its text for a path it has no route for and, without
        // HandleMethodNotAllowed, for a method it has no route for too.
        None if generation == Generation::March2026 => {
            ("unknown", Outcome::new(gin_not_found(), None))
        }
        Some((route, _))
            if !route.exists_in(generation)
                || (generation == Generation::March2026
                    && route.method(generation) != inc.method) =>
        {
            (route.as_str(), Outcome::new(gin_not_found(), None))
        }
        None => (
            "unknown",
            Outcome::new(error(404, format!("no route for {}", inc.path)), None),
        ),
        Some((route, _)) if route.method(generation) != inc.method => (
            route.as_str(),
            Outcome::new(
                error(
                    405,
                    format!("{} wants {}", inc.path, route.method(generation)),
                ),
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
            .map(|f| f.decide(Instant::now(), inc.body.len(), &mut rand::thread_rng()))
    };
    let mut lose_answer = false;
    if let Some((delay, action)) = decision {
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        lose_answer = action == Action::LoseAnswer;
        if action != Action::Proceed && !lose_answer {
            let signature_valid =
                signature_validity(&app.lock(), app.generation, route, target, inc);
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
    generation: Generation,
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
            let message = signed_message(generation, route, target, inc);
            Some(
                st.execution(target)
                    .is_some_and(|e| st.signer(e, message, sig) == Signer::Assignee),
            )
        }
    }
}

/// The status route signs the execution id; every POST signs its body. The
/// older generation signs the body of every request, a GET's empty one too.
fn signed_message<'a>(
    generation: Generation,
    route: RunnerRoute,
    target: &'a str,
    inc: &'a Incoming,
) -> &'a [u8] {
    if route == RunnerRoute::Status && generation == Generation::Current {
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
    if app.generation == Generation::March2026 {
        // The older API binds the manifest into a map of action definitions.
        if let Err(why) = manifest_of_actions(&request.manifest) {
            return Outcome::new(error(400, why), None);
        }
        // ... and answers a known identifier before it looks at the code.
        let known = app
            .lock()
            .touch_registration(&request.identifier, &now_rfc3339());
        if let Some(record) = known {
            return Outcome::new(Reply::Json(201, record), None);
        }
    }
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

/// The older API's rule for a manifest: a JSON object whose values are
/// objects (action definitions).
fn manifest_of_actions(manifest: &Value) -> Result<(), String> {
    let Some(actions) = manifest.as_object() else {
        return Err(format!(
            "manifest must be an object of action definitions, not {}",
            json_kind(manifest)
        ));
    };
    match actions.iter().find(|(_, v)| !v.is_object()) {
        Some((name, v)) => Err(format!(
            "manifest action {name:?} must be an object, not {}",
            json_kind(v)
        )),
        None => Ok(()),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
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
    if app.generation == Generation::March2026 {
        // A GET with no body, and no long-poll: work now or 204 now.
        return match st.allocate(identifier) {
            Some(pending) => Outcome::new(Reply::Json(200, pending), Some(true)),
            None => Outcome::new(Reply::Empty(204), Some(true)),
        };
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
fn gate(
    st: &State,
    generation: Generation,
    route: RunnerRoute,
    id: &str,
    inc: &Incoming,
) -> Result<(), Outcome> {
    let Some(execution) = st.execution(id) else {
        return Err(Outcome::new(
            error(404, format!("execution {id:?} not found")),
            Some(false),
        ));
    };
    match st.signer(
        execution,
        signed_message(generation, route, id, inc),
        inc.signature.as_deref(),
    ) {
        Signer::Assignee => Ok(()),
        // The older API only tries the assignee's key.
        Signer::OtherRunner(_) if generation == Generation::March2026 => Err(Outcome::new(
            error(
                403,
                format!("signature does not verify for execution {id:?}"),
            ),
            Some(false),
        )),
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

/// The execution states the older API's state route accepts (an enum; the
/// dev server's reading of it).
const STATE_VALUES_2026_03: [&str; 4] = ["created", "allocated", "running", "completed"];

fn claim(app: &App, inc: &Incoming, id: &str) -> Outcome {
    let mut st = app.lock();
    if let Some(e) = st.execution_mut(id) {
        e.state_posts += 1;
    }
    if let Err(o) = gate(&st, app.generation, RunnerRoute::State, id, inc) {
        return o;
    }
    let update = match parse_body::<StateUpdate>(inc, "state update") {
        Ok(u) => u,
        Err(o) => return o,
    };
    let older = app.generation == Generation::March2026;
    if older && !STATE_VALUES_2026_03.contains(&update.state.as_str()) {
        return Outcome::new(
            error(
                400,
                format!(
                    "state {:?} is not one of {STATE_VALUES_2026_03:?}",
                    update.state
                ),
            ),
            Some(true),
        );
    }
    let Some(e) = st.execution_mut(id) else {
        return Outcome::new(
            error(404, format!("execution {id:?} not found")),
            Some(true),
        );
    };
    if e.status == Status::Completed && !older {
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
    if let Err(o) = gate(&st, app.generation, RunnerRoute::Logs, id, inc) {
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
    if let Err(o) = gate(&st, app.generation, RunnerRoute::Status, id, inc) {
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
    if let Err(o) = gate(&st, app.generation, RunnerRoute::Result, id, inc) {
        return o;
    }
    let parsed = match parse_body::<ExecutionResult>(inc, "result") {
        Ok(r) => r,
        Err(o) => return o,
    };
    // Kept exactly as received: tests compare what the runner sent. The
    // older API keeps only these two fields.
    let raw: Value = match app.generation {
        Generation::Current => serde_json::from_slice(&inc.body).unwrap_or(Value::Null),
        Generation::March2026 => {
            json!({"has_errored": parsed.has_errored, "state": parsed.state})
        }
    };
    let cancelled = parsed.cancelled && app.generation == Generation::Current;
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
    e.completion_status = if cancelled {
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
    fn the_2026_03_generation_polls_by_get_and_has_no_logs_or_status() {
        use flo_protocol::signing::Signer;
        use rsa::pkcs8::{EncodePublicKey, LineEnding};

        let app = App::new("code", Duration::ZERO).with_generation(Generation::March2026);
        let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 1024).unwrap();
        let pem = key
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let sign = |m: &[u8]| Signer::new(&key).sign_hex(m).unwrap();
        let call = |method: &str, path: &str, sig: Option<&str>, body: &[u8]| {
            handle(&app, &Incoming::new(method, path, sig, body))
        };
        let registration = |code: &str, manifest: Value| {
            json!({"identifier": "abc", "registration_code": code,
                   "public_key": pem, "manifest": manifest})
            .to_string()
        };
        let actions = json!({"print": {"name": "print"}});
        for bad in [json!({"actions": []}), json!([]), json!(null)] {
            let body = registration("code", bad);
            assert_eq!(
                call("POST", "/api/v1/runner", None, body.as_bytes()).status(),
                Some(400)
            );
        }
        let body = registration("code", actions.clone());
        assert_eq!(
            call("POST", "/api/v1/runner", None, body.as_bytes()).status(),
            Some(200)
        );
        // A known identifier: 201 whatever the code.
        let body = registration("wrong", actions);
        assert_eq!(
            call("POST", "/api/v1/runner", None, body.as_bytes()).status(),
            Some(201)
        );

        let poll = "/api/v1/runner/abc/execution";
        let post_body = br#"{"requested_at":"2026-03-01T00:00:00Z"}"#;
        assert_eq!(
            call("POST", poll, Some(&sign(post_body)), post_body),
            gin_not_found()
        );
        assert_eq!(
            call("GET", poll, Some(&sign(b"abc")), b"").status(),
            Some(403)
        );
        assert_eq!(call("GET", poll, Some(&sign(b"")), b"").status(), Some(204));

        let spec = serde_json::from_value(json!({"flow": {"nodes": []},
            "execution_id": "e1", "trigger_data": {"k": "v"}, "entry_node_id": "n"}))
        .unwrap();
        app.lock().enqueue(spec, "t").unwrap();
        let Reply::Json(200, pending) = call("GET", poll, Some(&sign(b"")), b"") else {
            panic!("no work handed out");
        };
        let e = &pending["execution"];
        assert_eq!(e["execution_status"], "created");
        assert_eq!(e["sequence"], 0);
        assert!(e.get("entry_node_id").is_none() && e.get("trigger_type").is_none());
        let data = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            e["data"].as_str().unwrap(),
        )
        .unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&data).unwrap(),
            json!({"k": "v"})
        );

        let lines = br#"{"lines":["a"]}"#;
        let logs = "/api/v1/execution/e1/logs";
        assert_eq!(
            call("POST", logs, Some(&sign(lines)), lines),
            gin_not_found()
        );
        let status = "/api/v1/execution/e1/status";
        assert_eq!(call("GET", status, Some(&sign(b"")), b""), gin_not_found());
        // A GET signed over the id is refused; a claim with a value outside
        // the enum is 400; a claim signed over the body is 200.
        let claim = br#"{"state":"running"}"#;
        let state = "/api/v1/execution/e1/state";
        let odd = br#"{"state":"sideways"}"#;
        assert_eq!(
            call("POST", state, Some(&sign(odd)), odd).status(),
            Some(400)
        );
        assert_eq!(
            call("POST", state, Some(&sign(claim)), claim).status(),
            Some(200)
        );
        let result = br#"{"has_errored":true,"cancelled":true,"state":{"x":1}}"#;
        let path = "/api/v1/execution/e1";
        assert_eq!(
            call("POST", path, Some(&sign(result)), result).status(),
            Some(200)
        );
        let st = app.lock();
        let kept = st.execution("e1").unwrap();
        assert_eq!(
            kept.results,
            [json!({"has_errored": true, "state": {"x": 1}})]
        );
        assert_eq!(kept.completion_status, "failed");
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
