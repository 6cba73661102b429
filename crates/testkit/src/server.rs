//! The real `flo-devserver` on a loopback port, driven through its one
//! admin client ([`flo_devserver::client::Client`]). Tests want answers, not
//! errors: every call here panics with the request and the reason.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flo_devserver::client::Client;
use serde_json::{json, Value};

use crate::{devserver_bin, CODE};

pub struct DevServer {
    child: Child,
    pub url: String,
    client: Client,
}

/// Starts `flo-devserver` with exactly `args` (they must make it listen on a
/// loopback port) and returns it with the URL from its banner, which must
/// start with `scheme`.
pub fn spawn_devserver_with(args: &[&str], scheme: &str) -> (Child, String) {
    spawn_devserver_into(args, scheme, Stdio::inherit())
}

/// [`spawn_devserver_with`], with the server's stderr (its warnings) going
/// to `stderr`.
fn spawn_devserver_into(args: &[&str], scheme: &str, stderr: Stdio) -> (Child, String) {
    let mut child = Command::new(devserver_bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("start flo-devserver");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read devserver banner");
    let url = line
        .trim()
        .rsplit(' ')
        .next()
        .filter(|u| u.starts_with(scheme))
        .unwrap_or_else(|| panic!("unexpected devserver banner {line:?}"))
        .to_string();
    (child, url)
}

/// `flo-devserver serve` on a loopback port with `extra` options.
fn spawn_serve(extra: &[&str], scheme: &str) -> (Child, String) {
    spawn_serve_into(extra, scheme, Stdio::inherit())
}

fn spawn_serve_into(extra: &[&str], scheme: &str, stderr: Stdio) -> (Child, String) {
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--registration-code",
        CODE,
    ];
    args.extend_from_slice(extra);
    spawn_devserver_into(&args, scheme, stderr)
}

impl DevServer {
    pub fn start() -> Self {
        Self::start_with(&["--long-poll-secs", "0"])
    }

    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_logged(extra, Stdio::inherit())
    }

    /// [`DevServer::start_with`], the server's stderr going to `stderr`
    /// (the benchmarks keep it in a file beside the runners').
    pub fn start_logged(extra: &[&str], stderr: Stdio) -> Self {
        let (child, url) = spawn_serve_into(extra, "http://", stderr);
        let client = Client::new(&url);
        Self { child, url, client }
    }

    /// The server process's id (to read its CPU time).
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The admin client itself, for callers that handle errors rather than
    /// panic (the benchmarks report a failed measurement and go on).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A `flo-devserver` serving HTTPS: `extra` carries `--tls-cert`,
    /// `--tls-key` (and perhaps `--tls-client-ca`) besides any other serve
    /// options. The admin client trusts the CA in `ca_pem` and, when
    /// `client` is given, presents that certificate and key (PEM files).
    pub fn start_tls(extra: &[&str], ca_pem: &Path, client: Option<(&Path, &Path)>) -> Self {
        let tls = flo_devserver::tls::client_config(Some(ca_pem), client)
            .unwrap_or_else(|e| panic!("admin client TLS: {e}"));
        let (child, url) = spawn_serve(extra, "https://");
        let client = Client::with_tls(&url, tls);
        Self { child, url, client }
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        self.client
            .call(method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn get(&self, path: &str) -> Value {
        self.call("GET", path, None)
    }

    pub fn post(&self, path: &str, body: Value) -> Value {
        self.call("POST", path, Some(&body))
    }

    /// A DELETE whose answer does not matter (resetting state).
    pub fn delete(&self, path: &str) {
        let _ = self.client.call("DELETE", path, None);
    }

    /// Enqueues a flow; `extra` fields are merged into the admin request.
    pub fn enqueue(&self, flow: Value, extra: Value) -> String {
        let mut body = json!({ "flow": flow });
        if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
            b.extend(e);
        }
        self.client
            .enqueue(&body)
            .unwrap_or_else(|e| panic!("enqueue: {e}"))
    }

    /// The execution's record: status, results, logs.
    pub fn execution(&self, id: &str) -> Value {
        self.client
            .show(id)
            .unwrap_or_else(|e| panic!("execution {id}: {e}"))
    }

    /// Waits until the execution has a result.
    pub fn wait_completed(&self, id: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let e = self.execution(id);
            if e["status"] == "completed" {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "execution {id} not completed within {limit:?}: {e:#}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn requests(&self) -> Vec<Value> {
        self.client
            .requests()
            .unwrap_or_else(|e| panic!("requests: {e}"))
    }

    pub fn requests_on(&self, route: &str) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r["route"] == route)
            .collect()
    }

    pub fn runners(&self) -> Vec<Value> {
        self.client
            .runners()
            .unwrap_or_else(|e| panic!("runners: {e}"))
    }

    pub fn fault(&self, body: Value) {
        self.client
            .set_faults(&body)
            .unwrap_or_else(|e| panic!("faults: {e}"));
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
