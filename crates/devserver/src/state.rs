//! Everything the dev server remembers, in memory only. One `Mutex<State>`
//! guards all of it (see `app.rs`), which is what makes allocation atomic:
//! two runners polling at once can never both take the same execution.

use std::collections::{HashMap, VecDeque};

use rsa::RsaPublicKey;
use serde::Deserialize;
use serde_json::{json, Value};

use base64::Engine as _;

use super::app::Generation;
use super::auth::verify_hex;
use super::faults::Faults;
use super::http::Reply;
use flo_protocol::protocol::RegistrationRequest;

/// The request log keeps this many entries; older ones are forgotten.
pub const MAX_REQUEST_RECORDS: usize = 100_000;

/// A registered runner.
#[derive(Debug, Clone)]
pub struct Runner {
    pub id: String,
    pub request: RegistrationRequest,
    /// The key from the first registration; later ones never replace it.
    pub key: RsaPublicKey,
    pub public_key_pem: String,
    pub enrolled_at: String,
    pub last_contact_at: String,
    pub registration_count: u64,
}

impl Runner {
    /// The runner record the registration route answers with.
    pub fn record_json(&self) -> Value {
        let r = &self.request;
        json!({
            "id": self.id,
            "identifier": r.identifier,
            "name": r.name,
            "registration_code": r.registration_code,
            "enrolled_at": self.enrolled_at,
            "last_contact_at": self.last_contact_at,
            "ip_address": r.ip_address,
            "version": r.version,
            "executor_version": r.executor_version,
            "manifest": r.manifest,
            "public_key": self.public_key_pem,
        })
    }

    fn admin_json(&self) -> Value {
        let r = &self.request;
        json!({
            "id": self.id,
            "identifier": r.identifier,
            "name": r.name,
            "version": r.version,
            "executor_version": r.executor_version,
            "manifest": r.manifest,
            "public_key": self.public_key_pem,
            "enrolled_at": self.enrolled_at,
            "last_contact_at": self.last_contact_at,
            "registration_count": self.registration_count,
        })
    }
}

/// `POST /admin/executions` body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewExecution {
    /// The flow definition (`data` in the pending execution); required, may be null.
    pub flow: Value,
    #[serde(default)]
    pub trigger_data: Value,
    #[serde(default)]
    pub entry_node_id: Option<String>,
    #[serde(default)]
    pub environment_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub flo_id: Option<String>,
    /// Taken as is, however hostile (`../x`): runners must refuse bad ids.
    #[serde(default)]
    pub execution_id: Option<String>,
    #[serde(default)]
    pub system_prompt: Option<String>,
    #[serde(default)]
    pub system_flow: bool,
    #[serde(default)]
    pub organisation_id: Option<String>,
    #[serde(default)]
    pub owner_id: Option<String>,
    #[serde(default)]
    pub trigger_type: Option<String>,
    #[serde(default)]
    pub author_email: Option<String>,
    #[serde(default)]
    pub triggerer_email: Option<String>,
    /// Forces the answer to `/state` for this execution (e.g. 409).
    #[serde(default)]
    pub claim_status: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Allocated,
    Running,
    Completed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Allocated => "allocated",
            Status::Running => "running",
            Status::Completed => "completed",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Execution {
    pub id: String,
    pub flo_id: String,
    pub spec: NewExecution,
    pub sequence: u64,
    pub created_at: String,
    pub status: Status,
    pub completion_status: String,
    /// Identifier of the runner it is allocated to.
    pub runner: Option<String>,
    /// When it was allocated (for the claim lease).
    pub allocated_at: Option<std::time::Instant>,
    pub results: Vec<Value>,
    pub logs: Vec<String>,
    pub log_batches: u64,
    pub state_posts: u64,
}

impl Execution {
    /// The `200` poll answer (PROTOCOL.md §4; §9 for the older generation).
    pub fn pending_json(&self, runner_record_id: Option<&str>, generation: Generation) -> Value {
        let s = &self.spec;
        let mut flo = json!({
            "id": self.flo_id,
            "name": s.name,
            "organisation_id": s.organisation_id,
            "author_id": s.owner_id,
            "created_at": null,
            "scale": 1,
            "x": 0,
            "y": 0,
            "execution_count": 0,
            "last_run": null,
            "duration": null,
            "duration_additional": null,
            "last_execution": null,
            "environment_id": s.environment_id,
        });
        let mut execution = json!({
            "id": self.id,
            "flo_id": self.flo_id,
            "name": s.name,
            "owner_id": s.owner_id,
            "organisation_id": s.organisation_id,
            "created_at": self.created_at,
            "updated_at": null,
            "triggered_by": null,
            "completion_status": self.completion_status,
            "runner_id": runner_record_id,
        });
        let (flo_fields, execution_fields) = match generation {
            Generation::Current => self.current_fields(),
            Generation::March2026 => self.fields_2026_03(),
        };
        extend(&mut flo, flo_fields);
        extend(&mut execution, execution_fields);
        json!({ "flo": flo, "execution": execution, "data": s.flow })
    }

    /// The current generation's own fields of the flo and the execution.
    fn current_fields(&self) -> (Value, Value) {
        let s = &self.spec;
        let flo = json!({
            "system_prompt": s.system_prompt,
            "system_flow": s.system_flow,
        });
        let execution = json!({
            // Sic: the API's field name.
            "completed_ad": null,
            "execution_status": self.status.as_str(),
            "sequence": self.sequence,
            "data": s.trigger_data,
            "trigger_type": s.trigger_type,
            "author_email": s.author_email,
            "triggerer_email": s.triggerer_email,
            "entry_node_id": s.entry_node_id,
        });
        (flo, execution)
    }

    /// The older generation's own fields (PROTOCOL.md §9): "created" and
    /// sequence 0, the trigger data as a base64 string of its JSON bytes (a
    /// JSONB column scanned into an interface, which Go marshals as bytes),
    /// extra fields, and no system prompt, system flow, trigger type, e-mails
    /// or entry node.
    fn fields_2026_03(&self) -> (Value, Value) {
        let data = match &self.spec.trigger_data {
            Value::Null => Value::Null,
            other => Value::String(
                base64::engine::general_purpose::STANDARD.encode(other.to_string().as_bytes()),
            ),
        };
        let flo = json!({ "environment_name": null, "triggers": [] });
        let execution = json!({
            "completed_at": null,
            "execution_status": "created",
            "sequence": 0,
            "data": data,
            "result": null,
            "duration": null,
            "billing_duration": null,
        });
        (flo, execution)
    }

    pub fn summary_json(&self) -> Value {
        json!({
            "id": self.id,
            "flo_id": self.flo_id,
            "status": self.status.as_str(),
            "completion_status": self.completion_status,
            "runner": self.runner,
        })
    }

    pub fn detail_json(&self) -> Value {
        json!({
            "id": self.id,
            "flo_id": self.flo_id,
            "sequence": self.sequence,
            "created_at": self.created_at,
            "status": self.status.as_str(),
            "completion_status": self.completion_status,
            "runner": self.runner,
            "claim_status": self.spec.claim_status,
            "result": self.results.last(),
            "results": self.results,
            "logs": self.logs,
            "log_batches": self.log_batches,
            "state_posts": self.state_posts,
        })
    }
}

/// Who signed a request on an execution route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signer {
    /// The runner the execution is allocated to.
    Assignee,
    /// A registered runner, but not the one the execution is allocated to.
    OtherRunner(String),
    /// No registered key verifies the signature.
    Nobody,
}

/// A queued poll answer (malformed-answer tests).
#[derive(Debug, Clone, PartialEq)]
pub enum PollOverride {
    Raw(u16, String),
    Huge(u16, u64),
}

impl PollOverride {
    pub fn reply(self) -> Reply {
        match self {
            PollOverride::Raw(status, body) => Reply::Raw(status, body),
            PollOverride::Huge(status, n) => Reply::Huge(status, n),
        }
    }
}

/// One entry of `GET /admin/requests`.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub seq: u64,
    pub at_ms: u64,
    pub method: String,
    pub path: String,
    pub route: &'static str,
    pub status: Option<u16>,
    pub signature: Option<String>,
    pub signature_valid: Option<bool>,
    pub body: Value,
    /// `error` or `drop` when a fault decided the answer.
    pub fault: Option<&'static str>,
}

impl RequestRecord {
    fn to_json(&self) -> Value {
        json!({
            "seq": self.seq,
            "at_ms": self.at_ms,
            "method": self.method,
            "path": self.path,
            "route": self.route,
            "status": self.status,
            "signature": self.signature,
            "signature_valid": self.signature_valid,
            "body": self.body,
            "fault": self.fault,
        })
    }
}

#[derive(Debug, Default)]
pub struct State {
    runners: HashMap<String, Runner>,
    executions: Vec<Execution>,
    index: HashMap<String, usize>,
    /// Indexes into `executions` not yet allocated, oldest first.
    pending: VecDeque<usize>,
    next_sequence: u64,
    pub poll_overrides: VecDeque<PollOverride>,
    /// Allocations not claimed within this go back to the queue.
    pub claim_lease: Option<std::time::Duration>,
    pub faults: Faults,
    /// Shapes the poll answers (see `App::with_generation`).
    pub generation: Generation,
    requests: VecDeque<RequestRecord>,
    next_request_seq: u64,
}

impl State {
    /// Registers a runner. `Ok(true)` for a new identifier. A known one keeps
    /// its first key (as the real API does) and gets its contact time and
    /// other fields refreshed.
    pub fn register(
        &mut self,
        request: RegistrationRequest,
        key: RsaPublicKey,
        pem: String,
        now: &str,
    ) -> (bool, Value) {
        match self.runners.get_mut(&request.identifier) {
            Some(runner) => {
                runner.last_contact_at = now.to_string();
                runner.registration_count += 1;
                runner.request = request;
                (false, runner.record_json())
            }
            None => {
                let runner = Runner {
                    id: new_uuid(),
                    request: request.clone(),
                    key,
                    public_key_pem: pem,
                    enrolled_at: now.to_string(),
                    last_contact_at: now.to_string(),
                    registration_count: 1,
                };
                let record = runner.record_json();
                self.runners.insert(request.identifier, runner);
                (true, record)
            }
        }
    }

    /// The older generation's answer to a known identifier registering
    /// again: its contact time only, nothing from the request (PROTOCOL.md §9).
    pub fn touch_registration(&mut self, identifier: &str, now: &str) -> Option<Value> {
        let runner = self.runners.get_mut(identifier)?;
        runner.last_contact_at = now.to_string();
        runner.registration_count += 1;
        Some(runner.record_json())
    }

    pub fn runner(&self, identifier: &str) -> Option<&Runner> {
        self.runners.get(identifier)
    }

    pub fn touch_runner(&mut self, identifier: &str, now: &str) {
        if let Some(r) = self.runners.get_mut(identifier) {
            r.last_contact_at = now.to_string();
        }
    }

    pub fn runners_json(&self) -> Value {
        let mut runners: Vec<&Runner> = self.runners.values().collect();
        runners.sort_by(|a, b| a.enrolled_at.cmp(&b.enrolled_at).then(a.id.cmp(&b.id)));
        Value::Array(runners.iter().map(|r| r.admin_json()).collect())
    }

    /// Queues an execution; `Err` names the clash when the id is taken.
    pub fn enqueue(&mut self, spec: NewExecution, now: &str) -> Result<(String, String), String> {
        let id = spec.execution_id.clone().unwrap_or_else(new_uuid);
        let flo_id = spec.flo_id.clone().unwrap_or_else(new_uuid);
        if self.index.contains_key(&id) {
            return Err(format!("execution {id:?} already exists"));
        }
        self.next_sequence += 1;
        let execution = Execution {
            id: id.clone(),
            flo_id: flo_id.clone(),
            spec,
            sequence: self.next_sequence,
            created_at: now.to_string(),
            status: Status::Pending,
            completion_status: "pending".to_string(),
            runner: None,
            allocated_at: None,
            results: Vec::new(),
            logs: Vec::new(),
            log_batches: 0,
            state_posts: 0,
        };
        let at = self.executions.len();
        self.executions.push(execution);
        self.index.insert(id.clone(), at);
        self.pending.push_back(at);
        Ok((id, flo_id))
    }

    /// Gives the oldest pending execution to `runner` and returns the poll
    /// answer. Must be called with the state lock held, which it is by type.
    pub fn allocate(&mut self, runner: &str) -> Option<Value> {
        self.requeue_unclaimed();
        let at = self.pending.pop_front()?;
        let record_id = self.runners.get(runner).map(|r| r.id.clone());
        let execution = &mut self.executions[at];
        execution.status = Status::Allocated;
        execution.runner = Some(runner.to_string());
        execution.allocated_at = Some(std::time::Instant::now());
        Some(execution.pending_json(record_id.as_deref(), self.generation))
    }

    /// With a claim lease, puts allocations nobody claimed in time back at
    /// the front of the queue (the runner that got them may have died before
    /// it could claim). Its late claim then gets 409.
    pub fn requeue_unclaimed(&mut self) {
        let Some(lease) = self.claim_lease else {
            return;
        };
        let mut stale = Vec::new();
        for (at, e) in self.executions.iter_mut().enumerate() {
            if e.status == Status::Allocated && e.allocated_at.is_some_and(|t| t.elapsed() > lease)
            {
                log::warn!(
                    "execution {} was not claimed by {} within {} s; back in the queue",
                    e.id,
                    e.runner.as_deref().unwrap_or("?"),
                    lease.as_secs()
                );
                e.status = Status::Pending;
                e.runner = None;
                e.allocated_at = None;
                stale.push(at);
            }
        }
        for at in stale.into_iter().rev() {
            self.pending.push_front(at);
        }
    }

    pub fn execution(&self, id: &str) -> Option<&Execution> {
        self.index.get(id).map(|&i| &self.executions[i])
    }

    pub fn execution_mut(&mut self, id: &str) -> Option<&mut Execution> {
        self.index.get(id).map(|&i| &mut self.executions[i])
    }

    pub fn executions_json(&self) -> Value {
        Value::Array(
            self.executions
                .iter()
                .map(Execution::summary_json)
                .collect(),
        )
    }

    /// Decides who signed `message` for execution `id` (which must exist).
    /// Other runners' keys are tried too, so a runner touching an execution
    /// that is not its own gets 409 rather than a misleading 403.
    pub fn signer(&self, execution: &Execution, message: &[u8], signature: Option<&str>) -> Signer {
        if let Some(assignee) = execution
            .runner
            .as_deref()
            .and_then(|r| self.runners.get(r))
        {
            if verify_hex(&assignee.key, message, signature) {
                return Signer::Assignee;
            }
        }
        if signature.is_none() {
            return Signer::Nobody;
        }
        for (identifier, runner) in &self.runners {
            if Some(identifier.as_str()) != execution.runner.as_deref()
                && verify_hex(&runner.key, message, signature)
            {
                return Signer::OtherRunner(identifier.clone());
            }
        }
        Signer::Nobody
    }

    /// Hands out the next request sequence number (at receipt, so the log
    /// reads in arrival order even when a long-poll answers late).
    pub fn next_request_seq(&mut self) -> u64 {
        self.next_request_seq += 1;
        self.next_request_seq
    }

    pub fn record_request(&mut self, record: RequestRecord) {
        if self.requests.len() >= MAX_REQUEST_RECORDS {
            self.requests.pop_front();
        }
        self.requests.push_back(record);
    }

    pub fn requests_json(&self) -> Value {
        let mut records: Vec<&RequestRecord> = self.requests.iter().collect();
        records.sort_by_key(|r| r.seq);
        Value::Array(records.iter().map(|r| r.to_json()).collect())
    }
}

/// A random (version 4) UUID.
pub fn new_uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Now, RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Adds the fields of the object `more` to the object `into`.
fn extend(into: &mut Value, more: Value) {
    if let (Value::Object(into), Value::Object(more)) = (into, more) {
        into.extend(more);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flo_protocol::signing::Signer as KeySigner;
    use rsa::RsaPrivateKey;

    fn spec(v: Value) -> NewExecution {
        serde_json::from_value(v).unwrap()
    }

    fn registration(identifier: &str) -> RegistrationRequest {
        serde_json::from_value(json!({"identifier": identifier, "name": "r"})).unwrap()
    }

    fn key() -> RsaPrivateKey {
        RsaPrivateKey::new(&mut rand::thread_rng(), 1024).unwrap()
    }

    #[test]
    fn flow_is_required_but_may_be_null() {
        assert!(serde_json::from_value::<NewExecution>(json!({})).is_err());
        let s = spec(json!({"flow": null}));
        assert_eq!(s.flow, Value::Null);
        assert!(serde_json::from_value::<NewExecution>(json!({"flow": 1, "flw": 2})).is_err());
    }

    #[test]
    fn allocation_is_fifo_and_once() {
        let mut st = State::default();
        let (a, _) = st.enqueue(spec(json!({"flow": {"n": 1}})), "t").unwrap();
        let (b, _) = st
            .enqueue(
                spec(json!({"flow": 2, "execution_id": "../x", "flo_id": "f"})),
                "t",
            )
            .unwrap();
        assert!(st
            .enqueue(spec(json!({"flow": 3, "execution_id": "../x"})), "t")
            .is_err());
        let first = st.allocate("r1").unwrap();
        assert_eq!(first["execution"]["id"], a.as_str());
        assert_eq!(first["execution"]["execution_status"], "allocated");
        assert_eq!(first["execution"]["completion_status"], "pending");
        assert_eq!(first["execution"]["sequence"], 1);
        assert_eq!(first["data"], json!({"n": 1}));
        let second = st.allocate("r2").unwrap();
        assert_eq!(second["execution"]["id"], b.as_str());
        assert_eq!(second["flo"]["id"], "f");
        assert!(st.allocate("r1").is_none());
        assert_eq!(st.execution(&a).unwrap().runner.as_deref(), Some("r1"));
        assert_eq!(st.execution(&b).unwrap().status, Status::Allocated);
    }

    #[test]
    fn re_registration_keeps_the_first_key() {
        let mut st = State::default();
        let (k1, k2) = (key(), key());
        let (new, _) = st.register(registration("abc"), k1.to_public_key(), "pem1".into(), "t1");
        assert!(new);
        let (new, record) =
            st.register(registration("abc"), k2.to_public_key(), "pem2".into(), "t2");
        assert!(!new);
        assert_eq!(record["public_key"], "pem1");
        assert_eq!(record["last_contact_at"], "t2");
        let r = st.runner("abc").unwrap();
        assert_eq!(r.key, k1.to_public_key());
        assert_eq!(r.registration_count, 2);
    }

    #[test]
    fn signer_tells_assignee_other_and_nobody_apart() {
        let mut st = State::default();
        let (k1, k2, k3) = (key(), key(), key());
        st.register(registration("one"), k1.to_public_key(), String::new(), "t");
        st.register(registration("two"), k2.to_public_key(), String::new(), "t");
        let (id, _) = st.enqueue(spec(json!({"flow": null})), "t").unwrap();
        st.allocate("one");
        let sign = |k: &RsaPrivateKey| KeySigner::new(k).sign_hex(b"m").unwrap();
        let e = st.execution(&id).unwrap();
        assert_eq!(st.signer(e, b"m", Some(&sign(&k1))), Signer::Assignee);
        assert_eq!(
            st.signer(e, b"m", Some(&sign(&k2))),
            Signer::OtherRunner("two".into())
        );
        assert_eq!(st.signer(e, b"m", Some(&sign(&k3))), Signer::Nobody);
        assert_eq!(st.signer(e, b"m", None), Signer::Nobody);
    }

    #[test]
    fn request_log_is_bounded_and_ordered_by_arrival() {
        let mut st = State::default();
        let record = |seq| RequestRecord {
            seq,
            at_ms: 0,
            method: "POST".into(),
            path: "/".into(),
            route: "poll",
            status: Some(204),
            signature: None,
            signature_valid: None,
            body: Value::Null,
            fault: None,
        };
        st.record_request(record(2));
        st.record_request(record(1));
        let log = st.requests_json();
        assert_eq!(log[0]["seq"], 1);
        assert_eq!(log[1]["seq"], 2);
        for seq in 3..(MAX_REQUEST_RECORDS as u64 + 10) {
            st.record_request(record(seq));
        }
        assert_eq!(st.requests.len(), MAX_REQUEST_RECORDS);
    }

    #[test]
    fn uuid_shape() {
        let u = new_uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, new_uuid());
    }
}
