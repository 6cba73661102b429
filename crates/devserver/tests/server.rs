//! The dev server, tested the way the runner uses it: the real binary on a
//! loopback port, real RSA keys and signatures, and assertions on what the
//! admin API says the server received.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use flo_protocol::protocol::{paths, PendingExecution, SIGNATURE_HEADER};
use flo_protocol::signing::Signer;
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::RsaPrivateKey;
use serde_json::{json, Value};

const CODE: &str = "test-code";
const BIN: &str = env!("CARGO_BIN_EXE_flo-devserver");

/// A running `flo-devserver`, killed when dropped.
struct DevServer {
    child: Child,
    url: String,
}

impl DevServer {
    fn start(long_poll_secs: u64) -> Self {
        Self::start_with(long_poll_secs, &[])
    }

    fn start_with(long_poll_secs: u64, extra: &[&str]) -> Self {
        let long_poll = long_poll_secs.to_string();
        // No `serve`: it is the default subcommand.
        let mut args = vec!["--listen", "127.0.0.1:0", "--registration-code", CODE];
        args.extend(["--long-poll-secs", &long_poll]);
        args.extend_from_slice(extra);
        let (child, url) = flo_testkit::spawn_devserver_with(&args, "http://");
        Self { child, url }
    }

    fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, text) = http(
            method,
            &format!("{}{path}", self.url),
            body.map(|b| b.to_string().into_bytes()),
            None,
        );
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    fn enqueue(&self, body: Value) -> String {
        let (status, answer) = self.admin("POST", "/admin/executions", Some(body));
        assert_eq!(status, 201, "{answer}");
        answer["id"].as_str().unwrap().to_string()
    }

    fn execution(&self, id: &str) -> Value {
        let (status, v) = self.admin("GET", &format!("/admin/executions/{id}"), None);
        assert_eq!(status, 200, "{v}");
        v
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .proxy(None)
            .build()
            .new_agent()
    })
}

/// One request; any HTTP status comes back as `(status, body)`.
fn http(method: &str, url: &str, body: Option<Vec<u8>>, signature: Option<&str>) -> (u16, String) {
    let mut request = ureq::http::Request::builder().method(method).uri(url);
    if let Some(sig) = signature {
        request = request.header(SIGNATURE_HEADER, sig);
    }
    let answer = match body {
        Some(b) => agent().run(
            request
                .header("Content-Type", "application/json")
                .body(b)
                .unwrap(),
        ),
        None => agent().run(request.body(()).unwrap()),
    };
    match answer {
        Ok(mut r) if r.status().as_u16() < 400 => {
            (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
        }
        Ok(mut r) => (
            r.status().as_u16(),
            r.body_mut().read_to_string().unwrap_or_default(),
        ),
        Err(e) => panic!("{method} {url}: {e}"),
    }
}

/// 2048-bit keys are slow to make, so all tests share a few.
fn keys() -> &'static [RsaPrivateKey] {
    static KEYS: OnceLock<Vec<RsaPrivateKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let makers: Vec<_> = (0..3)
            .map(|_| {
                std::thread::spawn(|| RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap())
            })
            .collect();
        makers.into_iter().map(|m| m.join().unwrap()).collect()
    })
}

/// A runner as the server sees it: an identifier and a key.
struct TestRunner {
    identifier: String,
    signer: Signer,
    pem: String,
    url: String,
}

impl TestRunner {
    fn new(server: &DevServer, identifier: &str, key: &RsaPrivateKey) -> Self {
        Self {
            identifier: identifier.to_string(),
            signer: Signer::new(key),
            pem: key
                .to_public_key()
                .to_public_key_pem(LineEnding::LF)
                .unwrap(),
            url: server.url.clone(),
        }
    }

    fn registration(&self) -> Value {
        json!({
            "id": "", "identifier": self.identifier, "name": "test runner",
            "registration_code": CODE, "enrolled_at": "0001-01-01T00:00:00Z",
            "last_contact_at": null, "ip_address": null, "version": "0.1.0",
            "executor_version": "exec 1", "manifest": {"actions": []},
            "public_key": self.pem,
        })
    }

    fn register(&self) -> (u16, Value) {
        let body = self.registration();
        let (status, text) = http(
            "POST",
            &format!("{}{}", self.url, paths::REGISTER),
            Some(body.to_string().into_bytes()),
            None,
        );
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn sign(&self, message: &[u8]) -> String {
        self.signer.sign_hex(message).unwrap()
    }

    fn post(&self, path: &str, body: &Value) -> (u16, String) {
        let bytes = body.to_string().into_bytes();
        let sig = self.sign(&bytes);
        http(
            "POST",
            &format!("{}{path}", self.url),
            Some(bytes),
            Some(&sig),
        )
    }

    fn poll(&self) -> (u16, String) {
        self.post(
            &paths::poll(&self.identifier),
            &json!({"requested_at": "2026-11-21T10:00:00.123456789Z"}),
        )
    }

    fn status(&self, id: &str) -> (u16, String) {
        let sig = self.sign(id.as_bytes());
        http(
            "GET",
            &format!("{}{}", self.url, paths::status(id)),
            None,
            Some(&sig),
        )
    }
}

#[test]
fn a_whole_execution_as_a_runner_sees_it() {
    let server = DevServer::start(0);
    let runner = TestRunner::new(&server, "AbcdefghIjklmnop", &keys()[0]);

    let (status, record) = runner.register();
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["identifier"], "AbcdefghIjklmnop");
    assert!(record["id"].as_str().is_some_and(|id| id.len() == 36));
    // Same identity, new key: 201, and the first key stays.
    let impostor = TestRunner::new(&server, "AbcdefghIjklmnop", &keys()[1]);
    assert_eq!(impostor.register().0, 201);
    let mut wrong_code = runner.registration();
    wrong_code["registration_code"] = json!("nope");
    let (status, _) = http(
        "POST",
        &format!("{}{}", server.url, paths::REGISTER),
        Some(wrong_code.to_string().into_bytes()),
        None,
    );
    assert_eq!(status, 404);
    let (_, runners) = server.admin("GET", "/admin/runners", None);
    assert_eq!(runners[0]["public_key"], runner.pem.trim());
    assert_eq!(runners[0]["registration_count"], 2);

    // Nothing queued yet.
    assert_eq!(runner.poll().0, 204);
    let id = server.enqueue(json!({
        "flow": {"nodes": [{"id": "n1"}], "edges": []},
        "trigger_data": {"system_prompt": "be brief"},
        "entry_node_id": "n1",
        "environment_id": "env-1",
        "name": "demo",
        "flo_id": "flow-1",
        "owner_id": "owner-1",
    }));

    // The impostor's key is not the registered one.
    assert_eq!(impostor.poll().0, 403);
    let (status, body) = runner.poll();
    assert_eq!(status, 200, "{body}");
    let pending: PendingExecution = serde_json::from_str(&body).unwrap();
    assert_eq!(pending.execution.id, id);
    assert_eq!(pending.execution.flo_id, "flow-1");
    assert_eq!(pending.execution.entry_node_id.as_deref(), Some("n1"));
    assert_eq!(
        pending.execution.execution_status.as_deref(),
        Some("allocated")
    );
    assert_eq!(
        pending.execution.completion_status.as_deref(),
        Some("pending")
    );
    let tree =
        |raw: &serde_json::value::RawValue| -> Value { serde_json::from_str(raw.get()).unwrap() };
    assert_eq!(
        tree(&pending.execution.data),
        json!({"system_prompt": "be brief"})
    );
    assert_eq!(pending.flo.environment_id.as_deref(), Some("env-1"));
    assert_eq!(
        tree(&pending.data),
        json!({"nodes": [{"id": "n1"}], "edges": []})
    );
    let raw: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(raw["execution"]["completed_ad"], Value::Null);
    assert_eq!(raw["flo"]["system_flow"], false);
    assert_eq!(runner.poll().0, 204, "an execution is handed out once");

    // Claim: a bad signature is refused and changes nothing.
    let claim = json!({"state": "running"});
    let (status, _) = http(
        "POST",
        &format!("{}{}", server.url, paths::state(&id)),
        Some(claim.to_string().into_bytes()),
        Some(&runner.sign(b"something else")),
    );
    assert_eq!(status, 403);
    assert_eq!(server.execution(&id)["status"], "allocated");
    assert_eq!(runner.post(&paths::state(&id), &claim).0, 200);
    assert_eq!(runner.post(&paths::state("missing"), &claim).0, 404);

    assert_eq!(
        runner.status(&id),
        (200, r#"{"completion_status":"pending"}"#.to_string())
    );
    let lines = json!({"lines": ["one", "two"]});
    assert_eq!(runner.post(&paths::logs(&id), &lines).0, 200);
    assert_eq!(
        runner
            .post(&paths::logs(&id), &json!({"lines": ["three"]}))
            .0,
        200
    );

    let (status, _) = server.admin("POST", &format!("/admin/executions/{id}/cancel"), None);
    assert_eq!(status, 200);
    assert_eq!(runner.status(&id).1, r#"{"completion_status":"cancel"}"#);

    let result = json!({"has_errored": true, "cancelled": true, "state": {"status": 1, "logs": "one\ntwo\nthree"}});
    assert_eq!(runner.post(&paths::result(&id), &result).0, 200);

    let e = server.execution(&id);
    assert_eq!(e["status"], "completed");
    assert_eq!(e["completion_status"], "cancelled");
    assert_eq!(e["runner"], "AbcdefghIjklmnop");
    assert_eq!(e["logs"], json!(["one", "two", "three"]));
    assert_eq!(e["log_batches"], 2);
    assert_eq!(e["state_posts"], 2);
    assert_eq!(e["results"], json!([result]));
    assert_eq!(e["result"], result);
    // A completed execution cannot be claimed again.
    assert_eq!(runner.post(&paths::state(&id), &claim).0, 409);

    let (_, requests) = server.admin("GET", "/admin/requests", None);
    let requests = requests.as_array().unwrap();
    let seen: Vec<(&str, u64, Value)> = requests
        .iter()
        .map(|r| {
            (
                r["route"].as_str().unwrap(),
                r["status"].as_u64().unwrap(),
                r["signature_valid"].clone(),
            )
        })
        .collect();
    let expected: Vec<(&str, u64, Value)> = vec![
        ("register", 200, Value::Null),
        ("register", 201, Value::Null),
        ("register", 404, Value::Null),
        ("poll", 204, json!(true)),
        ("poll", 403, json!(false)),
        ("poll", 200, json!(true)),
        ("poll", 204, json!(true)),
        ("state", 403, json!(false)),
        ("state", 200, json!(true)),
        ("state", 404, json!(false)),
        ("status", 200, json!(true)),
        ("logs", 200, json!(true)),
        ("logs", 200, json!(true)),
        ("status", 200, json!(true)),
        ("result", 200, json!(true)),
        ("state", 409, json!(true)),
    ];
    assert_eq!(seen, expected);
    let result_record = &requests[14];
    assert_eq!(result_record["body"], result);
    assert_eq!(result_record["path"], paths::result(&id));
    assert!(result_record["signature"]
        .as_str()
        .is_some_and(|s| s.len() == 512));
    let seqs: Vec<u64> = requests
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn two_runners_polling_at_once_never_share_an_execution() {
    let server = DevServer::start(0);
    let a = TestRunner::new(&server, "RunnerAaaaaaaaaa", &keys()[1]);
    let b = TestRunner::new(&server, "RunnerBbbbbbbbbb", &keys()[2]);
    assert_eq!(a.register().0, 200);
    assert_eq!(b.register().0, 200);
    let ids: HashSet<String> = (0..40)
        .map(|_| server.enqueue(json!({"flow": {}})))
        .collect();

    let take_all = |runner: &TestRunner| -> Vec<String> {
        let mut got = Vec::new();
        loop {
            let (status, body) = runner.poll();
            if status == 204 {
                return got;
            }
            assert_eq!(status, 200, "{body}");
            let p: PendingExecution = serde_json::from_str(&body).unwrap();
            got.push(p.execution.id);
        }
    };
    let (got_a, got_b) = std::thread::scope(|s| {
        let ta = s.spawn(|| take_all(&a));
        let tb = s.spawn(|| take_all(&b));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    let set_a: HashSet<String> = got_a.iter().cloned().collect();
    let set_b: HashSet<String> = got_b.iter().cloned().collect();
    assert_eq!(set_a.len() + set_b.len(), 40, "a: {got_a:?}\nb: {got_b:?}");
    assert!(set_a.is_disjoint(&set_b));
    assert_eq!(&set_a | &set_b, ids);

    // B may not claim, log to, or report on A's execution.
    let theirs = &got_a[0];
    assert_eq!(
        b.post(&paths::state(theirs), &json!({"state": "running"}))
            .0,
        409
    );
    assert_eq!(b.status(theirs).0, 409);
    assert_eq!(
        a.post(&paths::state(theirs), &json!({"state": "running"}))
            .0,
        200
    );
}

/// A runner killed between poll and claim must not keep its execution
/// forever: with `--claim-lease-secs`, an allocation not claimed in time goes
/// back to the queue, the next poll gets it, and the late claim gets 409.
#[test]
fn an_unclaimed_execution_returns_to_the_queue_after_the_lease() {
    let server = DevServer::start_with(0, &["--claim-lease-secs", "1"]);
    let a = TestRunner::new(&server, "LeaseAaaaaaaaaaa", &keys()[1]);
    let b = TestRunner::new(&server, "LeaseBbbbbbbbbbb", &keys()[2]);
    assert_eq!(a.register().0, 200);
    assert_eq!(b.register().0, 200);
    let id = server.enqueue(json!({"flow": {}}));
    let (status, body) = a.poll();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&id));
    // Within the lease it stays A's.
    assert_eq!(b.poll().0, 204);
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let (status, body) = b.poll();
        if status == 200 {
            break body;
        }
        assert_eq!(status, 204, "{body}");
        assert!(Instant::now() < deadline, "the allocation never came back");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(body.contains(&id));
    let claim = json!({"state": "running"});
    assert_eq!(
        a.post(&paths::state(&id), &claim).0,
        409,
        "A's claim is late"
    );
    assert_eq!(b.post(&paths::state(&id), &claim).0, 200);
    // Claimed: the lease no longer applies.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(a.poll().0, 204);
    assert_eq!(server.execution(&id)["status"], "running");
}

#[test]
fn a_long_poll_is_woken_by_an_enqueue() {
    let server = DevServer::start(5);
    let runner = TestRunner::new(&server, "Sleeperxxxxxxxxx", &keys()[0]);
    assert_eq!(runner.register().0, 200);
    let started = Instant::now();
    let (answer, id) = std::thread::scope(|s| {
        let poll = s.spawn(|| runner.poll());
        std::thread::sleep(Duration::from_millis(300));
        let id = server.enqueue(json!({"flow": null}));
        (poll.join().unwrap(), id)
    });
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert!(answer.1.contains(&id));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn forced_answers_and_faults() {
    let server = DevServer::start(0);
    let runner = TestRunner::new(&server, "Faultyxxxxxxxxxx", &keys()[2]);
    assert_eq!(runner.register().0, 200);

    // Queued poll answers are used once each, in order.
    let (s, _) = server.admin(
        "POST",
        "/admin/poll-responses",
        Some(json!({"body": "{not json"})),
    );
    assert_eq!(s, 201);
    server.admin(
        "POST",
        "/admin/poll-responses",
        Some(json!({"status": 200, "huge_bytes": 300_000})),
    );
    assert_eq!(runner.poll(), (200, "{not json".to_string()));
    let (status, huge) = runner.poll();
    assert_eq!(status, 200);
    assert_eq!(huge.len(), 300_000);
    assert!(serde_json::from_str::<Value>(&huge).is_err());
    assert_eq!(runner.poll().0, 204);

    // A per-execution claim answer.
    let id = server.enqueue(json!({"flow": {}, "claim_status": 409}));
    assert_eq!(runner.poll().0, 200);
    assert_eq!(
        runner
            .post(&paths::state(&id), &json!({"state": "running"}))
            .0,
        409
    );
    assert_eq!(server.execution(&id)["status"], "allocated");

    // An injected error changes nothing; a drop gives no HTTP answer.
    let result = json!({"has_errored": false, "state": {}});
    let (s, _) = server.admin(
        "POST",
        "/admin/faults",
        Some(json!({"route": "result", "error_rate": 1, "error_status": 502})),
    );
    assert_eq!(s, 200);
    assert_eq!(runner.post(&paths::result(&id), &result).0, 502);
    assert_eq!(server.execution(&id)["results"], json!([]));
    server.admin(
        "POST",
        "/admin/faults",
        Some(json!({"route": "result", "drop_rate": 1})),
    );
    let bytes = result.to_string().into_bytes();
    let dropped = agent()
        .post(&format!("{}{}", server.url, paths::result(&id)))
        .header(SIGNATURE_HEADER, &runner.sign(&bytes))
        .send(&bytes);
    // Statuses are answers here, so any error is the dropped connection.
    assert!(dropped.is_err(), "{dropped:?}");
    server.admin(
        "POST",
        "/admin/faults",
        Some(json!({"route": "*", "down_for_ms": 60_000})),
    );
    assert_eq!(runner.poll().0, 503);
    assert_eq!(server.admin("DELETE", "/admin/faults", None).0, 200);
    assert_eq!(runner.post(&paths::result(&id), &result).0, 200);
    let e = server.execution(&id);
    assert_eq!(e["results"], json!([result]));
    assert_eq!(e["completion_status"], "success");

    let (_, requests) = server.admin("GET", "/admin/requests", None);
    let faults: Vec<(Value, Value, Value)> = requests
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| !r["fault"].is_null())
        .map(|r| {
            (
                r["fault"].clone(),
                r["status"].clone(),
                r["signature_valid"].clone(),
            )
        })
        .collect();
    assert_eq!(
        faults,
        vec![
            (json!("error"), json!(502), json!(true)),
            (json!("drop"), Value::Null, json!(true)),
            (json!("error"), json!(503), json!(true)),
        ]
    );
}

#[test]
fn oversized_bodies_are_refused_unread() {
    let server = DevServer::start(0);
    let addr = server.url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "POST /api/v1/runner HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{{",
        64 * 1024 * 1024 + 1
    )
    .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 413");
}

/// Many keep-alive connections opened together are all served, none left
/// waiting for another to close. tiny_http 0.12 could lose the wake-up for
/// a connection that arrived beside another (vendor/tiny_http/FLO-PATCH.md):
/// it then went unread for as long as the other connections stayed open,
/// which here is until the end of the test, so it shows as a read timeout.
#[test]
fn connections_opened_together_are_all_served() {
    let server = DevServer::start(0);
    let addr = server.url.trim_start_matches("http://").to_string();
    for round in 0..5 {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(24));
        let threads: Vec<_> = (0..24)
            .map(|_| {
                let (addr, barrier) = (addr.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let mut stream = TcpStream::connect(&addr).unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_secs(8)))
                        .unwrap();
                    stream
                        .write_all(b"GET /admin/executions HTTP/1.1\r\nHost: x\r\n\r\n")
                        .unwrap();
                    let mut head = [0u8; 12];
                    let answered = stream.read_exact(&mut head).map(|_| head);
                    // Every connection stays open until all have been answered.
                    barrier.wait();
                    answered
                })
            })
            .collect();
        for t in threads {
            match t.join().unwrap() {
                Ok(head) => assert_eq!(&head, b"HTTP/1.1 200", "round {round}"),
                Err(e) => panic!("round {round}: a connection was not served: {e}"),
            }
        }
    }
}

#[test]
fn admin_subcommands() {
    let server = DevServer::start(0);
    let dir = tempfile::tempdir().unwrap();
    let flow = dir.path().join("flow.json");
    std::fs::write(&flow, r#"{"nodes": [], "edges": []}"#).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let url = server.url.as_str();
    let (code, id, _) = run(&[
        "enqueue",
        "--server",
        url,
        "--flow",
        flow.to_str().unwrap(),
        "--trigger-data",
        r#"{"k": 1}"#,
        "--entry",
        "n1",
        "--environment",
        "e",
    ]);
    assert_eq!(code, Some(0));
    let id = id.trim();
    assert_eq!(id.len(), 36, "{id:?}");

    let (code, table, _) = run(&["list", "--server", url]);
    assert_eq!(code, Some(0));
    assert!(
        table
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with(id) && l.contains("pending")),
        "{table}"
    );
    let (_, lines, _) = run(&["list", "--server", url, "--json"]);
    let row: Value = serde_json::from_str(lines.trim()).unwrap();
    assert_eq!(row["id"], id);

    let (code, shown, _) = run(&["show", "--server", url, id]);
    assert_eq!(code, Some(0));
    assert_eq!(
        serde_json::from_str::<Value>(&shown).unwrap()["status"],
        "pending"
    );
    let (code, _, err) = run(&["show", "--server", url, id, "--wait", "0.3"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not completed"), "{err}");

    let (code, out, _) = run(&["cancel", "--server", url, id]);
    assert_eq!(code, Some(0));
    assert!(out.contains(r#""completion_status":"cancel""#), "{out}");

    let (code, _, err) = run(&["show", "--server", url, "missing"]);
    assert_eq!(code, Some(1));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("404"), "{err}");
    let (code, _, err) = run(&["enqueue", "--server", url, "--flow", "/nonexistent.json"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("/nonexistent.json"), "{err}");
    let (code, _, err) = run(&["list", "--bogus"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--bogus"), "{err}");
    let (code, version, _) = run(&["--version"]);
    assert_eq!(code, Some(0));
    assert!(version.starts_with("flo-devserver "));
    for sub in ["serve", "enqueue", "list", "show", "cancel"] {
        let (code, help, _) = run(&[sub, "--help"]);
        assert_eq!(code, Some(0), "{sub}");
        assert!(
            help.starts_with(&format!("flo-devserver {sub}")),
            "{sub}: {help}"
        );
    }
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let mut server = DevServer::start(25);
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            return;
        }
        assert!(Instant::now() < deadline, "still running after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}
