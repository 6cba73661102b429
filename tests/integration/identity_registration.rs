//! Identity (PROTOCOL.md §1), signing (§2) and registration (§3), driven
//! against the real `flo-devserver` and the real `flo-runner` binary. Every
//! assertion is on what the server received or on what is on disk.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use flo_testkit::{executor_path, flow, mode, wait_for, DevServer, Runner, RunnerSetup, CODE};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::RsaPrivateKey;
use serde_json::{json, Value};

const KEY_FILE: &str = "flomation-runner.pem";

/// The PEM `PUBLIC KEY` of a PKCS#1 private key file.
fn public_pem_of_pkcs1(path: &Path) -> String {
    let text = fs::read_to_string(path).expect("key file");
    let key = RsaPrivateKey::from_pkcs1_pem(text.trim()).expect("PKCS#1 key");
    key.to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("public pem")
}

/// Waits until exactly one runner is registered with `registration_count >=
/// count`, and returns its admin record.
fn wait_registered(server: &DevServer, runner: &Runner, count: u64) -> Value {
    let mut record = Value::Null;
    wait_for(
        Duration::from_secs(15),
        &format!("registration #{count}; runner log:\n{}", runner.log()),
        || {
            let runners = server.runners();
            match runners.as_slice() {
                [one] if one["registration_count"].as_u64() >= Some(count) => {
                    record = one.clone();
                    true
                }
                _ => false,
            }
        },
    );
    record
}

fn wait_polls(server: &DevServer, runner: &Runner, n: usize) {
    wait_for(
        Duration::from_secs(15),
        &format!("{n} polls; runner log:\n{}", runner.log()),
        || server.requests_on("poll").len() >= n,
    );
}

/// Lines the runner logged at ERROR level.
fn error_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(" ERROR]"))
        .map(str::to_string)
        .collect()
}

/// The log of a run that must have failed cleanly: no panic, no backtrace.
fn assert_no_panic(log: &str) {
    assert!(!log.contains("panicked"), "panic in the log:\n{log}");
    assert!(!log.contains("internal error"), "panic in the log:\n{log}");
    assert!(!log.contains("RUST_BACKTRACE"), "backtrace hint:\n{log}");
    assert!(!log.contains("stack backtrace"), "backtrace:\n{log}");
}

/// Stops the runner (SIGTERM), asserts a clean exit, gives back its directory.
fn stop_keep_dir(mut runner: Runner) -> tempfile::TempDir {
    let status = runner.stop();
    assert_eq!(status.code(), Some(0), "log:\n{}", runner.log());
    std::mem::replace(&mut runner.dir, tempfile::tempdir().expect("tempdir"))
}

fn register_requests(server: &DevServer) -> Vec<Value> {
    server.requests_on("register")
}

// ---------------------------------------------------------------------------
// 1. Identity created on first start and reused on restart.

#[test]
fn identity_is_created_then_reused_on_restart() {
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server).start();
    let first = wait_registered(&server, &runner, 1);
    wait_polls(&server, &runner, 1);

    // flo.state: exactly {"identifier": 16 ASCII letters}, mode 0600.
    let state_path = runner.path().join("flo.state");
    let state: Value = serde_json::from_slice(&fs::read(&state_path).expect("flo.state"))
        .expect("flo.state is JSON");
    let obj = state.as_object().expect("flo.state is an object");
    assert_eq!(obj.len(), 1, "flo.state has only the identifier: {state}");
    let identifier = state["identifier"].as_str().expect("identifier string");
    assert_eq!(identifier.len(), 16, "{identifier:?}");
    assert!(
        identifier.bytes().all(|b| b.is_ascii_alphabetic()),
        "identifier {identifier:?} is not ASCII letters"
    );
    assert_eq!(mode(&state_path), 0o600, "flo.state mode");

    // The key: PEM RSA PRIVATE KEY (PKCS#1), mode 0600, at the default path.
    let key_path = runner.path().join(KEY_FILE);
    let key_text = fs::read_to_string(&key_path).expect("key file created");
    assert!(
        key_text.starts_with("-----BEGIN RSA PRIVATE KEY-----\n"),
        "{key_text:.60}"
    );
    assert!(key_text
        .trim_end()
        .ends_with("-----END RSA PRIVATE KEY-----"));
    assert_eq!(mode(&key_path), 0o600, "key file mode");
    let key = RsaPrivateKey::from_pkcs1_pem(key_text.trim()).expect("valid PKCS#1");
    use rsa::traits::PublicKeyParts;
    assert_eq!(key.size() * 8, 2048, "RSA 2048");

    // The server knows it under that identifier with that key.
    let public = public_pem_of_pkcs1(&key_path);
    assert_eq!(first["identifier"], identifier);
    assert_eq!(first["name"], "test-runner");
    assert_eq!(first["public_key"].as_str().unwrap().trim(), public.trim());

    // Restart in the same directory: same identity, nothing rewritten.
    let key_bytes = fs::read(&key_path).unwrap();
    let state_bytes = fs::read(&state_path).unwrap();
    let dir = stop_keep_dir(runner);
    let runner = RunnerSetup::new(&server).start_in(dir);
    let second = wait_registered(&server, &runner, 2);
    // A poll after the second registration proves the old key still signs.
    let polls_before = server.requests_on("poll").len();
    wait_polls(&server, &runner, polls_before + 1);

    assert_eq!(runner.identifier(), identifier);
    assert_eq!(fs::read(&key_path).unwrap(), key_bytes, "key rewritten");
    assert_eq!(
        fs::read(&state_path).unwrap(),
        state_bytes,
        "state rewritten"
    );
    assert_eq!(mode(&key_path), 0o600);
    assert_eq!(mode(&state_path), 0o600);
    assert_eq!(second["registration_count"], 2);
    assert_eq!(second["identifier"], identifier);
    assert_eq!(second["public_key"], first["public_key"]);

    let regs = register_requests(&server);
    let statuses: Vec<_> = regs.iter().map(|r| r["status"].clone()).collect();
    assert_eq!(statuses, vec![json!(200), json!(201)], "{regs:#?}");
    for r in &regs {
        assert_eq!(r["body"]["identifier"], identifier);
        assert_eq!(r["body"]["public_key"].as_str().unwrap(), public);
    }
    for p in server.requests_on("poll") {
        assert_eq!(p["signature_valid"], true, "{p}");
        assert_eq!(p["status"], 204, "{p}");
    }
    let mut runner = runner;
    assert_eq!(runner.stop().code(), Some(0));
    assert_no_panic(&runner.log());
}

// ---------------------------------------------------------------------------
// 2. A supplied PKCS#8 key is used; a garbage key is refused untouched.

#[test]
fn supplied_pkcs8_key_is_used_and_left_as_is() {
    let server = DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let key = RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("generate key");
    let pem = key.to_pkcs8_pem(LineEnding::LF).expect("pkcs8 pem");
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    let expected_public = key
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    fs::create_dir(dir.path().join("keys")).unwrap();
    let key_path = dir.path().join("keys").join("supplied.pem");
    fs::write(&key_path, pem.as_bytes()).unwrap();
    fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600)).unwrap();

    let mut runner = RunnerSetup::new(&server)
        .set("runner", "certificate", json!("keys/supplied.pem"))
        .start_in(dir);
    let record = wait_registered(&server, &runner, 1);
    wait_polls(&server, &runner, 2);

    assert_eq!(
        record["public_key"].as_str().unwrap().trim(),
        expected_public.trim()
    );
    let reg = &register_requests(&server)[0];
    assert_eq!(reg["body"]["public_key"].as_str().unwrap(), expected_public);
    // Polls are signed with the supplied key (the server verified them).
    for p in server.requests_on("poll") {
        assert_eq!(p["signature_valid"], true, "{p}");
    }
    assert_eq!(
        fs::read(&key_path).unwrap(),
        pem.as_bytes(),
        "supplied key rewritten"
    );
    assert!(
        !runner.path().join(KEY_FILE).exists(),
        "a default key was generated although one was configured"
    );
    assert_eq!(runner.stop().code(), Some(0));
}

/// Starts a runner whose key file holds `content`; it must fail cleanly.
fn assert_bad_key_refused(content: &[u8]) {
    let server = DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join(KEY_FILE);
    fs::write(&key_path, content).unwrap();
    let mut runner = RunnerSetup::new(&server).start_in(dir);
    let started = Instant::now();
    let status = runner.wait_exit(Duration::from_secs(10));
    let log = runner.log();
    assert!(!status.success(), "exit {status:?}; log:\n{log}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_no_panic(&log);
    let errors = error_lines(&log);
    assert_eq!(errors.len(), 1, "one clear error line:\n{log}");
    assert!(
        errors[0].contains(KEY_FILE),
        "the error names the key file: {}",
        errors[0]
    );
    assert_eq!(fs::read(&key_path).unwrap(), content, "key file modified");
    assert!(
        register_requests(&server).is_empty(),
        "registered with an unusable key"
    );
    assert!(server.requests().is_empty());
}

#[test]
fn garbage_key_file_is_an_error_and_left_untouched() {
    assert_bad_key_refused(b"this is not a key\n");
}

#[test]
fn truncated_pem_key_file_is_an_error_and_left_untouched() {
    assert_bad_key_refused(
        b"-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo\n-----END RSA PRIVATE KEY-----\n",
    );
}

#[test]
fn unreadable_state_file_is_an_error_and_left_untouched() {
    let server = DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let state_path = dir.path().join("flo.state");
    fs::write(&state_path, b"{\"identifier\": ").unwrap();
    let mut runner = RunnerSetup::new(&server).start_in(dir);
    let status = runner.wait_exit(Duration::from_secs(10));
    let log = runner.log();
    assert!(!status.success(), "exit {status:?}; log:\n{log}");
    assert_no_panic(&log);
    let errors = error_lines(&log);
    assert_eq!(errors.len(), 1, "one clear error line:\n{log}");
    assert!(errors[0].contains("flo.state"), "{}", errors[0]);
    assert_eq!(fs::read(&state_path).unwrap(), b"{\"identifier\": ");
    assert!(server.requests().is_empty());
}

// ---------------------------------------------------------------------------
// 3. Registration body; every other request is signed and verifies.

#[test]
fn registration_body_fields_and_every_other_request_verifies() {
    let server = DevServer::start();
    let mut setup = RunnerSetup::new(&server);
    // No name configured: the default applies.
    setup.config["runner"]
        .as_object_mut()
        .unwrap()
        .remove("name");
    let mut runner = setup.start();
    wait_registered(&server, &runner, 1);

    // What the example executor says about itself, asked directly.
    let version_out = Command::new(executor_path())
        .arg("--version")
        .output()
        .expect("run executor --version");
    assert!(version_out.status.success());
    let executor_version = String::from_utf8(version_out.stdout).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let status = Command::new(executor_path())
        .args(["--manifest", "manifest.json"])
        .current_dir(scratch.path())
        .status()
        .expect("run executor --manifest");
    assert!(status.success());
    let manifest: Value =
        serde_json::from_slice(&fs::read(scratch.path().join("manifest.json")).unwrap())
            .expect("manifest JSON");

    let regs = register_requests(&server);
    assert_eq!(regs.len(), 1, "{regs:#?}");
    let reg = &regs[0];
    assert_eq!(reg["method"], "POST");
    assert_eq!(reg["path"], "/api/v1/runner");
    assert_eq!(reg["status"], 200);
    assert!(
        reg["signature"].is_null(),
        "registration is unsigned: {reg}"
    );
    assert!(reg["signature_valid"].is_null(), "{reg}");

    let body = &reg["body"];
    let keys: std::collections::BTreeSet<&str> = body
        .as_object()
        .expect("body object")
        .keys()
        .map(String::as_str)
        .collect();
    let expected: std::collections::BTreeSet<&str> = [
        "id",
        "identifier",
        "name",
        "registration_code",
        "enrolled_at",
        "last_contact_at",
        "ip_address",
        "version",
        "executor_version",
        "manifest",
        "public_key",
    ]
    .into_iter()
    .collect();
    assert_eq!(keys, expected, "registration body keys: {body:#}");
    assert_eq!(body["id"], "");
    assert_eq!(body["identifier"], runner.identifier());
    assert_eq!(body["name"], "Flo Runner");
    assert_eq!(body["registration_code"], CODE);
    assert_eq!(body["enrolled_at"], "0001-01-01T00:00:00Z");
    assert!(body["last_contact_at"].is_null());
    assert!(body["ip_address"].is_null());
    let version = body["version"].as_str().expect("version string");
    assert!(!version.is_empty());
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    assert_eq!(body["executor_version"], executor_version.as_str());
    assert_eq!(body["manifest"], manifest);
    let public_key = body["public_key"].as_str().expect("public_key string");
    assert!(
        public_key.starts_with("-----BEGIN PUBLIC KEY-----\n"),
        "{public_key}"
    );
    assert!(
        public_key.ends_with("-----END PUBLIC KEY-----\n"),
        "{public_key}"
    );
    assert_eq!(
        public_key,
        public_pem_of_pkcs1(&runner.path().join(KEY_FILE))
    );

    // One execution long enough for a status check, then a few more polls.
    let id = server.enqueue(
        flow(json!([
            {"id": "a", "type": "log", "message": "hello"},
            {"id": "b", "type": "sleep", "ms": 3000},
            {"id": "c", "type": "log", "message": "bye"}
        ])),
        json!({}),
    );
    let done = server.wait_completed(&id, Duration::from_secs(15));
    assert_eq!(done["results"][0]["has_errored"], false, "{done:#}");
    assert_eq!(
        done["results"].as_array().map(Vec::len),
        Some(1),
        "{done:#}"
    );
    let polls = server.requests_on("poll").len();
    wait_polls(&server, &runner, (polls + 2).max(3));
    assert_eq!(runner.stop().code(), Some(0));

    let requests = server.requests();
    let mut routes = std::collections::BTreeSet::new();
    for r in &requests {
        let route = r["route"].as_str().unwrap();
        if route == "register" {
            continue;
        }
        routes.insert(route.to_string());
        assert!(
            r["signature"].as_str().is_some_and(|s| !s.is_empty()),
            "unsigned request: {r}"
        );
        assert_eq!(r["signature_valid"], true, "signature did not verify: {r}");
        let status = r["status"].as_u64().unwrap_or(0);
        assert!((200..300).contains(&status), "not accepted: {r}");
    }
    for route in ["poll", "state", "logs", "status", "result"] {
        assert!(
            routes.contains(route),
            "no {route} request seen: {routes:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// 4. Wrong registration code.

#[test]
fn wrong_registration_code_with_no_retry_exits_without_polling() {
    let server = DevServer::start();
    let mut runner = RunnerSetup::new(&server)
        .set("runner", "registration_code", json!("not-the-code"))
        .set("runner", "registration_retry", json!({"strategy": "none"}))
        .start();
    let status = runner.wait_exit(Duration::from_secs(15));
    let log = runner.log();
    assert!(!status.success(), "exit {status:?}; log:\n{log}");
    assert_no_panic(&log);
    let errors = error_lines(&log);
    assert_eq!(errors.len(), 1, "one clear error line:\n{log}");
    assert!(
        errors[0].contains("registration code not recognised"),
        "log:\n{log}"
    );
    let regs = register_requests(&server);
    assert_eq!(regs.len(), 1, "strategy none tries once: {regs:#?}");
    assert_eq!(regs[0]["status"], 404);
    assert_eq!(regs[0]["body"]["registration_code"], "not-the-code");
    assert!(server.requests_on("poll").is_empty(), "polled unregistered");
    assert!(server.runners().is_empty());
}

#[test]
fn wrong_registration_code_with_interval_retry_keeps_trying_until_stopped() {
    let server = DevServer::start();
    let mut runner = RunnerSetup::new(&server)
        .set("runner", "registration_code", json!("not-the-code"))
        .set(
            "runner",
            "registration_retry",
            json!({"strategy": "interval", "interval_secs": 1}),
        )
        .start();
    wait_for(
        Duration::from_secs(10),
        "three registration attempts",
        || register_requests(&server).len() >= 3,
    );
    assert!(runner.is_running());
    let status = runner.stop();
    let log = runner.log();
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    assert!(log.contains("registration code not recognised"), "{log}");
    assert!(register_requests(&server)
        .iter()
        .all(|r| r["status"] == 404));
    assert!(server.requests_on("poll").is_empty(), "polled unregistered");
}

// ---------------------------------------------------------------------------
// 5. Retry strategies against a register route that is down.

#[test]
fn interval_retry_registers_after_an_outage_and_polls_only_afterwards() {
    let server = DevServer::start();
    let setup = RunnerSetup::new(&server).set(
        "runner",
        "registration_retry",
        json!({"strategy": "interval", "interval_secs": 1}),
    );
    // The register route answers 503 until two attempts have failed (an
    // outage ended by hand, so a slow start cannot outlast it).
    server.fault(json!({"route": "register", "down_for_ms": 60_000}));
    let mut runner = setup.start();
    wait_for(Duration::from_secs(10), "two failed registrations", || {
        register_requests(&server).len() >= 2
    });
    assert!(server.runners().is_empty());
    assert!(server.requests_on("poll").is_empty(), "polled unregistered");
    server.delete("/admin/faults");
    wait_registered(&server, &runner, 1);
    wait_polls(&server, &runner, 1);
    assert_eq!(runner.stop().code(), Some(0));

    let regs = register_requests(&server);
    assert!(regs.len() >= 2, "retried: {regs:#?}");
    let (last, failed) = regs.split_last().unwrap();
    assert_eq!(last["status"], 200, "{last}");
    for r in failed {
        assert_eq!(r["status"], 503, "{r}");
        assert_eq!(r["fault"], "error", "{r}");
    }
    // The interval is respected: each attempt at least ~1 s after the previous.
    for pair in regs.windows(2) {
        let gap = pair[1]["at_ms"].as_u64().unwrap() - pair[0]["at_ms"].as_u64().unwrap();
        assert!(gap >= 900, "attempts {gap} ms apart: {regs:#?}");
    }
    let ok_seq = last["seq"].as_u64().unwrap();
    let ok_at = last["at_ms"].as_u64().unwrap();
    let polls = server.requests_on("poll");
    assert!(!polls.is_empty());
    for p in &polls {
        assert!(
            p["seq"].as_u64().unwrap() > ok_seq,
            "poll before registration succeeded: {p} vs {last}"
        );
        assert!(p["at_ms"].as_u64().unwrap() >= ok_at);
        assert_eq!(p["signature_valid"], true);
    }
}

#[test]
fn exponential_retry_gives_up_after_max_duration() {
    let server = DevServer::start();
    let setup = RunnerSetup::new(&server).set(
        "runner",
        "registration_retry",
        json!({"strategy": "exponential", "max_duration_secs": 3}),
    );
    server.fault(json!({"route": "register", "down_for_ms": 600_000}));
    let mut runner = setup.start();
    let started = Instant::now();
    let status = runner.wait_exit(Duration::from_secs(20));
    let elapsed = started.elapsed();
    let log = runner.log();
    assert!(!status.success(), "exit {status:?}; log:\n{log}");
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(20),
        "gave up after {elapsed:?}; log:\n{log}"
    );
    assert_no_panic(&log);
    let errors = error_lines(&log);
    assert_eq!(errors.len(), 1, "one clear error line:\n{log}");
    assert!(
        errors[0].contains("503"),
        "the server's answer: {}",
        errors[0]
    );

    // Tried at t≈0 and t≈3 (the 8 s first delay is capped by the deadline).
    let regs = register_requests(&server);
    assert_eq!(regs.len(), 2, "{regs:#?}");
    assert!(regs.iter().all(|r| r["status"] == 503));
    let gap = regs[1]["at_ms"].as_u64().unwrap() - regs[0]["at_ms"].as_u64().unwrap();
    assert!(
        (2500..=10_000).contains(&gap),
        "second attempt {gap} ms after the first"
    );
    assert!(server.requests_on("poll").is_empty());
}

// ---------------------------------------------------------------------------
// 7. Executor discovery failure.

fn assert_discovery_fails(executable_name: &str, named: &str) -> (ExitStatus, String) {
    let server = DevServer::start();
    let mut runner = RunnerSetup::new(&server)
        .set("execution", "executable_name", json!(executable_name))
        .start();
    let status = runner.wait_exit(Duration::from_secs(15));
    let log = runner.log();
    assert!(!status.success(), "exit {status:?}; log:\n{log}");
    assert_no_panic(&log);
    let errors = error_lines(&log);
    assert_eq!(errors.len(), 1, "one clear error line:\n{log}");
    assert!(
        errors[0].contains(named),
        "the error names the executable {named:?}: {}",
        errors[0]
    );
    assert!(
        server.requests().is_empty(),
        "the runner talked to the server: {:#?}",
        server.requests()
    );
    (status, log)
}

#[test]
fn missing_executor_fails_startup_without_registering() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-executor");
    let missing = missing.to_str().unwrap();
    assert_discovery_fails(missing, missing);
}

#[test]
fn executor_failing_version_fails_startup_without_registering() {
    // `false --version` runs but exits 1.
    assert_discovery_fails("false", "false");
}

// ---------------------------------------------------------------------------
// 8. A signal while a long poll is held open.

fn assert_prompt_exit_during_long_poll(sig: &str) {
    let server = DevServer::start_with(&["--long-poll-secs", "25"]);
    let mut runner = RunnerSetup::new(&server).start();
    wait_registered(&server, &runner, 1);
    wait_for(Duration::from_secs(10), "the poller to start", || {
        runner.log().contains("polling ")
    });
    // Give the first poll time to reach the server, where it is held for 25 s
    // (a held poll is recorded only when it is answered).
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        server.requests_on("poll").is_empty(),
        "a poll was answered: the long poll is not held"
    );
    let started = Instant::now();
    runner.signal(sig);
    let status = runner.wait_exit(Duration::from_secs(20));
    let elapsed = started.elapsed();
    let log = runner.log();
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    assert!(
        elapsed < Duration::from_secs(5),
        "SIG{sig} took {elapsed:?} to stop the runner; log:\n{log}"
    );
    assert_no_panic(&log);
}

#[test]
fn sigterm_during_a_held_long_poll_exits_promptly() {
    assert_prompt_exit_during_long_poll("TERM");
}

#[test]
fn sigint_during_a_held_long_poll_exits_promptly() {
    assert_prompt_exit_during_long_poll("INT");
}
