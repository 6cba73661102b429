//! TLS and proxies between the runner and the API (issue 5): the real
//! `flo-devserver` serving HTTPS on loopback with certificates from a CA made
//! here (rcgen), the real `flo-runner` trusting that CA through `tls.ca_cert`
//! (or not), client certificates when the server requires them, and a small
//! HTTP proxy made here that the runner must use, or bypass for `NO_PROXY`.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flo_testkit::{flow, wait_for, DevServer, Runner, RunnerSetup};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- PKI

/// A CA and certificates in a temp directory:
/// `ca.pem`; `server.pem`/`server.key` (localhost, 127.0.0.1) and
/// `client.pem`/`client.key`, both signed by the CA; `rogue-ca.pem` and
/// `rogue.pem`/`rogue.key`, a client certificate from an unrelated CA.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Self { dir };
        let (ca, ca_key) = make_ca("flo test CA");
        pki.write("ca.pem", &ca.pem());
        let (cert, key) = make_leaf(
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
            &ca,
            &ca_key,
        );
        pki.write("server.pem", &cert);
        pki.write("server.key", &key);
        let (cert, key) = make_leaf(&[], ExtendedKeyUsagePurpose::ClientAuth, &ca, &ca_key);
        pki.write("client.pem", &cert);
        pki.write("client.key", &key);
        let (rogue_ca, rogue_key) = make_ca("rogue CA");
        pki.write("rogue-ca.pem", &rogue_ca.pem());
        let (cert, key) = make_leaf(
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
            &rogue_ca,
            &rogue_key,
        );
        pki.write("rogue.pem", &cert);
        pki.write("rogue.key", &key);
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }

    fn write(&self, name: &str, text: &str) {
        fs::write(self.path(name), text).expect("write PEM");
    }

    /// `--tls-cert`/`--tls-key` for the server certificate, plus `extra`.
    fn serve_args(&self, extra: &[&str]) -> Vec<String> {
        let mut args = vec![
            "--long-poll-secs".to_string(),
            "2".to_string(),
            "--tls-cert".to_string(),
            self.arg("server.pem"),
            "--tls-key".to_string(),
            self.arg("server.key"),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }
}

fn make_ca(name: &str) -> (Certificate, KeyPair) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).expect("self-sign the CA");
    (cert, key)
}

/// A certificate signed by `ca`; returns (certificate PEM, key PEM).
fn make_leaf(
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
    ca: &Certificate,
    ca_key: &KeyPair,
) -> (String, String) {
    let key = KeyPair::generate().expect("leaf key");
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("leaf params");
    params
        .distinguished_name
        .push(DnType::CommonName, "flo test leaf");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, ca, ca_key).expect("sign the leaf");
    (cert.pem(), key.serialize_pem())
}

// ---------------------------------------------------------------- helpers

fn str_args(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// A runner config for `server` with `tls.*` set from `tls`.
fn setup(server: &DevServer, tls: Value) -> RunnerSetup {
    let mut s = RunnerSetup::new(server);
    s.config["tls"] = tls;
    s
}

/// Runs one execution through `runner` and checks its result arrived.
fn runs_an_execution(server: &DevServer, runner: &Runner, message: &str) {
    wait_for(LIMIT, "the runner to register", || {
        !server.runners().is_empty()
    });
    let id = server.enqueue(
        flow(json!([{"type": "log", "message": message}])),
        json!({"flo_id": "flo-tls"}),
    );
    let deadline = Instant::now() + LIMIT;
    let e = loop {
        let e = server.execution(&id);
        if e["status"] == "completed" {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "execution not completed: {e:#}\nrunner log:\n{}",
            runner.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let results = e["results"].as_array().expect("results");
    assert_eq!(results.len(), 1, "{e:#}");
    assert_eq!(results[0]["has_errored"], false, "{e:#}");
    assert!(
        e["logs"].to_string().contains(message),
        "the log line came through: {e:#}"
    );
}

/// The runner gives up (registration retry `none`) and says why.
fn refused(server: &DevServer, mut runner: Runner) -> String {
    let status = runner.wait_exit(LIMIT);
    let log = runner.log();
    assert!(!status.success(), "the runner must fail; log:\n{log}");
    let lower = log.to_lowercase();
    assert!(
        lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake"),
        "the log names a TLS/certificate problem:\n{log}"
    );
    assert!(!log.contains("panicked"), "no panic:\n{log}");
    assert!(
        server.requests_on("register").is_empty(),
        "no registration reached the server: {:#?}",
        server.requests()
    );
    log
}

/// Starts `flo-devserver` expecting it to fail; returns (exit code, stderr).
fn devserver_fails(args: &[&str]) -> (i32, String) {
    let mut child = Command::new(flo_testkit::devserver_bin())
        .args(["--listen", "127.0.0.1:0", "--registration-code", "c"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start flo-devserver");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("flo-devserver {args:?} started instead of failing");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .ok();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .ok();
    assert!(stdout.is_empty(), "no banner when failing: {stdout:?}");
    (status.code().unwrap_or(-1), stderr)
}

// ---------------------------------------------------------------- server TLS only

#[test]
fn runner_trusting_the_ca_registers_and_runs() {
    let pki = Pki::new();
    let server = DevServer::start_tls(&str_args(&pki.serve_args(&[])), &pki.path("ca.pem"), None);
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    let runner = setup(&server, json!({"ca_cert": pki.arg("ca.pem")})).start();
    wait_for(LIMIT, "the runner to register", || {
        !server.runners().is_empty()
    });
    // Long-polls (2 s here) are held open through the TLS relay and answered
    // 204; the next execution still arrives over the same kind of connection.
    std::thread::sleep(Duration::from_millis(4500));
    let polls = server.requests_on("poll");
    assert!(
        polls.iter().any(|p| p["status"] == 204),
        "a held poll came back empty: {polls:#?}"
    );
    runs_an_execution(&server, &runner, "hello over TLS");
    runs_an_execution(&server, &runner, "and again");
}

#[test]
fn runner_without_the_ca_refuses_the_server_certificate() {
    let pki = Pki::new();
    let server = DevServer::start_tls(&str_args(&pki.serve_args(&[])), &pki.path("ca.pem"), None);
    let runner = setup(&server, json!({})).start();
    let log = refused(&server, runner);
    assert!(
        log.to_lowercase().contains("certificate"),
        "the reason is the certificate:\n{log}"
    );
    assert!(
        log.contains("add its CA with tls.ca_cert"),
        "the log says what to do:\n{log}"
    );
    // The server is unharmed.
    assert!(server.runners().is_empty());
}

#[test]
fn runner_with_another_ca_refuses_the_server_certificate() {
    let pki = Pki::new();
    let server = DevServer::start_tls(&str_args(&pki.serve_args(&[])), &pki.path("ca.pem"), None);
    let runner = setup(&server, json!({"ca_cert": pki.arg("rogue-ca.pem")})).start();
    refused(&server, runner);
}

#[test]
fn localhost_name_is_checked_too() {
    let pki = Pki::new();
    let server = DevServer::start_tls(&str_args(&pki.serve_args(&[])), &pki.path("ca.pem"), None);
    let mut s = setup(&server, json!({"ca_cert": pki.arg("ca.pem")}));
    s.config["runner"]["url"] = json!(server.url.replace("127.0.0.1", "localhost"));
    let runner = s.start();
    runs_an_execution(&server, &runner, "by name");
}

#[test]
fn plain_http_to_the_https_port_gets_a_400_that_says_so() {
    let pki = Pki::new();
    let server = DevServer::start_tls(&str_args(&pki.serve_args(&[])), &pki.path("ca.pem"), None);
    let addr = server.url.trim_start_matches("https://");
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(b"GET /admin/runners HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).expect("read the answer");
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("https://"), "{answer}");
    // And the TLS side still works.
    assert!(server.runners().is_empty());
}

/// A request the client sends together with its last handshake message
/// (TLS 1.3 lets it) is answered: the relay must pass on what the handshake
/// already received before it waits for more.
#[test]
fn request_sent_with_the_handshake_is_answered() {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName};
    use std::sync::Arc;

    let pki = Pki::new();
    let server = DevServer::start_tls(&str_args(&pki.serve_args(&[])), &pki.path("ca.pem"), None);
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pki.path("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let addr = server.url.trim_start_matches("https://").to_string();
    for round in 0..10 {
        let mut tcp = TcpStream::connect(&addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::clone(&config), name).unwrap();
        // Queued now, sent in the same write as the client's Finished.
        conn.writer()
            .write_all(b"GET /admin/runners HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "round {round}: no answer");
            match conn.complete_io(&mut tcp) {
                Ok((0, 0)) if !conn.wants_write() => break,
                Ok(_) => {}
                Err(e) => panic!("round {round}: {e} after {answer:?}"),
            }
            let mut buf = [0u8; 4096];
            match conn.reader().read(&mut buf) {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("round {round}: {e}"),
            }
        }
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 200 "),
            "round {round}: {answer}"
        );
        assert!(answer.ends_with("[]"), "round {round}: {answer}");
    }
}

#[test]
fn check_passes_with_the_ca_and_fails_without() {
    let pki = Pki::new();
    let server = DevServer::start_tls(&str_args(&pki.serve_args(&[])), &pki.path("ca.pem"), None);
    let run_check = |tls: Value| {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = setup(&server, tls).config;
        fs::write(
            dir.path().join("config.json"),
            serde_json::to_vec_pretty(&config).unwrap(),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_flo-runner"))
            .arg("check")
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .output()
            .expect("run flo-runner check");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stdout, stderr) = run_check(json!({"ca_cert": pki.arg("ca.pem")}));
    assert!(ok, "check passes with the CA:\n{stdout}\n{stderr}");
    let api = stdout.lines().find(|l| l.contains("API")).unwrap_or("");
    assert!(api.starts_with("[ ok ]"), "{stdout}");

    let (ok, stdout, stderr) = run_check(json!({}));
    assert!(!ok, "check fails without the CA:\n{stdout}\n{stderr}");
    let api = stdout.lines().find(|l| l.contains("API")).unwrap_or("");
    assert!(api.starts_with("[FAIL]"), "{stdout}");
    assert!(
        api.to_lowercase().contains("certificate"),
        "the API line names the certificate problem: {api}"
    );
}

// ---------------------------------------------------------------- client certificates

fn mtls_server(pki: &Pki) -> DevServer {
    let ca = pki.arg("ca.pem");
    DevServer::start_tls(
        &str_args(&pki.serve_args(&["--tls-client-ca", &ca])),
        &pki.path("ca.pem"),
        Some((&pki.path("client.pem"), &pki.path("client.key"))),
    )
}

#[test]
fn client_certificate_from_the_ca_is_accepted() {
    let pki = Pki::new();
    let server = mtls_server(&pki);
    let runner = setup(
        &server,
        json!({
            "enabled": true,
            "ca_cert": pki.arg("ca.pem"),
            "cert": pki.arg("client.pem"),
            "key": pki.arg("client.key"),
        }),
    )
    .start();
    runs_an_execution(&server, &runner, "mutual TLS");
}

#[test]
fn runner_without_a_client_certificate_is_refused() {
    let pki = Pki::new();
    let server = mtls_server(&pki);
    let runner = setup(
        &server,
        json!({"enabled": false, "ca_cert": pki.arg("ca.pem")}),
    )
    .start();
    refused(&server, runner);
    assert!(server.runners().is_empty());
}

#[test]
fn client_certificate_from_another_ca_is_refused() {
    let pki = Pki::new();
    let server = mtls_server(&pki);
    let runner = setup(
        &server,
        json!({
            "enabled": true,
            "ca_cert": pki.arg("ca.pem"),
            "cert": pki.arg("rogue.pem"),
            "key": pki.arg("rogue.key"),
        }),
    )
    .start();
    refused(&server, runner);
    // A good client still gets through afterwards.
    let good = setup(
        &server,
        json!({
            "enabled": true,
            "ca_cert": pki.arg("ca.pem"),
            "cert": pki.arg("client.pem"),
            "key": pki.arg("client.key"),
        }),
    )
    .start();
    runs_an_execution(&server, &good, "after a rogue");
}

// ---------------------------------------------------------------- bad files

#[test]
fn bad_certificate_files_are_named_and_fatal() {
    let pki = Pki::new();
    let garbage = pki.path("garbage.pem");
    fs::write(&garbage, "not a PEM file\n").unwrap();
    let missing = pki.path("missing.pem");
    let (cert, key, client_key) = (
        pki.arg("server.pem"),
        pki.arg("server.key"),
        pki.arg("client.key"),
    );
    let (g, m) = (
        garbage.to_string_lossy().into_owned(),
        missing.to_string_lossy().into_owned(),
    );
    for (args, named) in [
        (vec!["--tls-cert", &m, "--tls-key", &key], &m),
        (vec!["--tls-cert", &g, "--tls-key", &key], &g),
        (vec!["--tls-cert", &cert, "--tls-key", &g], &g),
        // The client's key with the server's certificate.
        (
            vec!["--tls-cert", &cert, "--tls-key", &client_key],
            &client_key,
        ),
        (
            vec![
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
                "--tls-client-ca",
                &g,
            ],
            &g,
        ),
        (
            vec![
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
                "--tls-client-ca",
                &m,
            ],
            &m,
        ),
    ] {
        let (code, stderr) = devserver_fails(&args);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert!(
            stderr.contains(named.as_str()),
            "{args:?} names {named}: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

// ---------------------------------------------------------------- proxies

/// A minimal HTTP proxy on loopback. `CONNECT host:port` opens a tunnel;
/// any other request (the absolute form a client sends to a proxy) is
/// relayed byte for byte to `upstream`. It records the first line of every
/// connection it is given.
struct Proxy {
    url: String,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy listener");
        let url = format!("http://{}", listener.local_addr().expect("proxy address"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (upstream, log) = (upstream.to_string(), seen.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (upstream, log) = (upstream.clone(), log.clone());
                std::thread::spawn(move || relay(client, &upstream, &log));
            }
        });
        Self { url, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

fn relay(mut client: TcpStream, upstream: &str, log: &Mutex<Vec<String>>) {
    // The request head, byte by byte up to the blank line.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        match client.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let first = text.lines().next().unwrap_or_default().to_string();
    log.lock().unwrap().push(first.clone());
    let server = match first.strip_prefix("CONNECT ") {
        Some(rest) => {
            let target = rest.split(' ').next().unwrap_or_default();
            let Ok(server) = TcpStream::connect(target) else {
                let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
                return;
            };
            let _ = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
            server
        }
        None => {
            let Ok(mut server) = TcpStream::connect(upstream) else {
                return;
            };
            if server.write_all(&head).is_err() {
                return;
            }
            server
        }
    };
    let (Ok(mut client_in), Ok(mut server_out)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_in, &mut server_out);
        let _ = server_out.shutdown(std::net::Shutdown::Write);
    });
    let mut server_in = server;
    let _ = std::io::copy(&mut server_in, &mut client);
    let _ = client.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}

#[test]
fn a_plain_http_api_is_reached_through_http_proxy_unless_no_proxy_names_it() {
    let server = DevServer::start();
    let host = server.url.trim_start_matches("http://");
    let proxy = Proxy::start(host);
    let runner = RunnerSetup::new(&server)
        .env("HTTP_PROXY", &proxy.url)
        .start();
    runs_an_execution(&server, &runner, "through the proxy");
    let seen = proxy.seen();
    // ureq 3 tunnels plain HTTP too (README "Network"): no absolute form.
    assert!(!seen.is_empty(), "the runner never used the proxy");
    for line in &seen {
        assert_eq!(line, &format!("CONNECT {host} HTTP/1.1"), "{seen:?}");
    }
    assert!(
        runner.log().contains(&proxy.url),
        "the log names the proxy:\n{}",
        runner.log_tail()
    );

    let direct = DevServer::start();
    let unused = Proxy::start(direct.url.trim_start_matches("http://"));
    let runner = RunnerSetup::new(&direct)
        .env("HTTP_PROXY", &unused.url)
        .env("NO_PROXY", "localhost,127.0.0.1")
        .start();
    runs_an_execution(&direct, &runner, "straight to the API");
    assert_eq!(unused.seen(), Vec::<String>::new(), "NO_PROXY bypasses it");
}

#[test]
fn an_https_api_is_reached_through_a_connect_tunnel() {
    let pki = Pki::new();
    let server = DevServer::start_tls(&str_args(&pki.serve_args(&[])), &pki.path("ca.pem"), None);
    let proxy = Proxy::start("127.0.0.1:9");
    let runner = setup(&server, json!({"ca_cert": pki.arg("ca.pem")}))
        .env("HTTPS_PROXY", &proxy.url)
        .start();
    runs_an_execution(&server, &runner, "through the tunnel");
    let seen = proxy.seen();
    let host = server.url.trim_start_matches("https://");
    assert!(!seen.is_empty(), "the runner never used the proxy");
    for line in &seen {
        assert_eq!(line, &format!("CONNECT {host} HTTP/1.1"), "{seen:?}");
    }
}
