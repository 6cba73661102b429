//! Test harness: the real `flo-devserver` on a loopback port, the real
//! `flo-runner` binary in a temp directory, the example executor as the
//! executor subprocess. Tests assert on what the server recorded and on disk.
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

pub const CODE: &str = "test-code";

/// The example executor, built once per test binary if it is not there yet.
pub fn executor_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let runner = PathBuf::from(env!("CARGO_BIN_EXE_flo-runner"));
        let profile_dir = runner
            .parent()
            .expect("binary has a directory")
            .to_path_buf();
        let path = profile_dir.join("examples").join("example-executor");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        // Always ask cargo: it is a no-op when the example is up to date.
        // Without the variables cargo sets for this test process: build
        // scripts (ring's) track them, and a different value would make this
        // build and the next plain `cargo` run rebuild each other.
        let mut cmd = Command::new(cargo);
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k == "CARGO_MANIFEST_DIR"
                || k.starts_with("CARGO_PKG_")
                || k == "CARGO_CRATE_NAME"
                || k == "CARGO_PRIMARY_PACKAGE"
                || k.starts_with("CARGO_BIN_EXE_")
            {
                cmd.env_remove(k.as_ref());
            }
        }
        let status = cmd
            .args(["build", "--example", "example-executor"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build --example");
        assert!(status.success(), "building the example executor failed");
        assert!(path.exists(), "{} missing after build", path.display());
        path
    })
    .clone()
}

/// The runner binary under test: this build's, or `FLO_TEST_RUNNER` (to
/// run the same tests against another build, such as the one before a fix).
pub fn runner_bin() -> PathBuf {
    std::env::var_os("FLO_TEST_RUNNER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_flo-runner")))
}

pub struct DevServer {
    child: Child,
    pub url: String,
    agent: ureq::Agent,
}

/// Starts `flo-devserver serve` on a loopback port with `extra` options and
/// returns it with the URL from its banner, which must start with `scheme`.
fn spawn_devserver(extra: &[&str], scheme: &str) -> (Child, String) {
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--registration-code",
        CODE,
    ];
    args.extend_from_slice(extra);
    spawn_devserver_with(&args, scheme)
}

/// Starts `flo-devserver` with exactly `args` (they must make it listen on a
/// loopback port) and returns it with the URL from its banner, which must
/// start with `scheme`.
pub fn spawn_devserver_with(args: &[&str], scheme: &str) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flo-devserver"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
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

impl DevServer {
    pub fn start() -> Self {
        Self::start_with(&["--long-poll-secs", "0"])
    }

    pub fn start_with(extra: &[&str]) -> Self {
        let (child, url) = spawn_devserver(extra, "http://");
        Self {
            child,
            url,
            // Generous: an execution's record can carry tens of MB of logs,
            // and the machine may be busy with other tests.
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(60))
                .build(),
        }
    }

    pub fn get(&self, path: &str) -> Value {
        let resp = self
            .agent
            .get(&format!("{}{path}", self.url))
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        // Not into_string: it stops at 10 MB, and an execution's logs can be more.
        serde_json::from_reader(std::io::BufReader::new(resp.into_reader())).expect("admin JSON")
    }

    pub fn post(&self, path: &str, body: Value) -> Value {
        let resp = self
            .agent
            .post(&format!("{}{path}", self.url))
            .set("Content-Type", "application/json")
            .send_string(&body.to_string())
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        resp.into_string()
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null)
    }

    pub fn delete(&self, path: &str) {
        let _ = self.agent.delete(&format!("{}{path}", self.url)).call();
    }

    /// Enqueues a flow; `extra` fields are merged into the admin request.
    pub fn enqueue(&self, flow: Value, extra: Value) -> String {
        let mut body = json!({ "flow": flow });
        if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
            b.extend(e);
        }
        let v = self.post("/admin/executions", body);
        v["id"].as_str().expect("enqueue returns an id").to_string()
    }

    pub fn execution(&self, id: &str) -> Value {
        let enc: String = id
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        self.get(&format!("/admin/executions/{enc}"))
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
        match self.get("/admin/requests") {
            Value::Array(a) => a,
            other => panic!("requests: {other}"),
        }
    }

    pub fn requests_on(&self, route: &str) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r["route"] == route)
            .collect()
    }

    pub fn runners(&self) -> Vec<Value> {
        match self.get("/admin/runners") {
            Value::Array(a) => a,
            other => panic!("runners: {other}"),
        }
    }

    pub fn fault(&self, body: Value) {
        self.post("/admin/faults", body);
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for `cond` for at most `limit`.
pub fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

pub struct Runner {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
}

pub struct RunnerSetup {
    pub config: Value,
    pub env: Vec<(String, String)>,
    /// Write no config.json (environment only).
    pub no_config_file: bool,
    pub args: Vec<String>,
    /// Run the runner as this uid/gid (the test runs as root).
    pub user: Option<(u32, u32)>,
}

impl RunnerSetup {
    /// A config for `server` with the example executor and fast pacing.
    pub fn new(server: &DevServer) -> Self {
        Self {
            config: json!({
                "runner": {
                    "url": server.url,
                    "registration_code": CODE,
                    "name": "test-runner",
                    "checkin_timeout": 1,
                    "registration_retry": {"strategy": "none"},
                    "shutdown_grace_secs": 10
                },
                "execution": {
                    "max_concurrent_executors": 1,
                    "executable_name": executor_path().to_string_lossy(),
                    "log_flush_ms": 100,
                    "kill_grace_secs": 2
                }
            }),
            env: Vec::new(),
            no_config_file: false,
            args: Vec::new(),
            user: None,
        }
    }

    /// Runs the runner as `uid`:`gid`; its directory is handed to that user.
    pub fn run_as(mut self, uid: u32, gid: u32) -> Self {
        self.user = Some((uid, gid));
        self
    }

    /// Sets `section.key` in the config.
    pub fn set(mut self, section: &str, key: &str, value: Value) -> Self {
        self.config[section][key] = value;
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn start(self) -> Runner {
        let dir = tempfile::tempdir().expect("tempdir");
        self.start_in(dir)
    }

    /// Starts in an existing directory (to restart with the same identity).
    pub fn start_in(self, dir: tempfile::TempDir) -> Runner {
        if !self.no_config_file {
            fs::write(
                dir.path().join("config.json"),
                serde_json::to_vec_pretty(&self.config).expect("config json"),
            )
            .expect("write config");
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("runner.log"))
            .expect("runner.log");
        let mut cmd = Command::new(runner_bin());
        if let Some((uid, gid)) = self.user {
            use std::os::unix::process::CommandExt;
            let status = Command::new("chown")
                .args(["-R", &format!("{uid}:{gid}")])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown the runner directory");
            cmd.uid(uid).gid(gid);
        }
        cmd.current_dir(dir.path())
            .args(&self.args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start flo-runner");
        Runner {
            child: Some(child),
            dir,
        }
    }
}

impl Runner {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("runner.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the runner to exit on its own.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let log = self.log();
                panic!("runner did not exit within {limit:?}; log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit(Duration::from_secs(30))
    }

    /// Stops the runner and gives back its directory (for a restart).
    pub fn into_dir(mut self) -> tempfile::TempDir {
        self.stop();
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"))
    }

    pub fn identifier(&self) -> String {
        let state: Value =
            serde_json::from_slice(&fs::read(self.path().join("flo.state")).expect("flo.state"))
                .expect("state json");
        state["identifier"]
            .as_str()
            .expect("identifier")
            .to_string()
    }

    pub fn exec_dir(&self, flo: &str, id: &str) -> PathBuf {
        self.path().join("executions").join(flo).join(id)
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A flow for the example executor.
pub fn flow(nodes: Value) -> Value {
    json!({ "nodes": nodes, "edges": [] })
}

impl DevServer {
    /// A `flo-devserver` serving HTTPS: `extra` carries `--tls-cert`,
    /// `--tls-key` (and perhaps `--tls-client-ca`) besides any other serve
    /// options. The admin agent trusts only the CA in `ca_pem` and, when
    /// `client` is given, presents that certificate and key (PEM files).
    pub fn start_tls(extra: &[&str], ca_pem: &Path, client: Option<(&Path, &Path)>) -> Self {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        use std::sync::Arc;

        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca_pem).expect("read the CA PEM") {
            roots.add(cert.expect("CA PEM")).expect("add the CA");
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots);
        let tls = match client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_file_iter(cert)
                        .expect("read the client certificate")
                        .collect::<Result<Vec<_>, _>>()
                        .expect("client certificate PEM"),
                    PrivateKeyDer::from_pem_file(key).expect("client key PEM"),
                )
                .expect("client certificate and key"),
        };

        let (child, url) = spawn_devserver(extra, "https://");
        Self {
            child,
            url,
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(10))
                .tls_config(Arc::new(tls))
                .build(),
        }
    }
}

// ---------------------------------------------------------------- results

impl Runner {
    /// The last 80 lines of the runner's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(80)..].join("\n")
    }
}

/// Waits for the execution's result; the failure message carries the runner log.
pub fn completed(server: &DevServer, runner: &Runner, id: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let e = server.execution(id);
        if e["status"] == "completed" {
            return e;
        }
        if Instant::now() >= deadline {
            panic!(
                "execution {id} not completed within {limit:?}: {}\nrunner log (tail):\n{}",
                e["status"],
                runner.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The one result of a completed execution (asserting there is exactly one).
pub fn only_result(e: &Value) -> Map<String, Value> {
    let results = e["results"].as_array().expect("results array");
    assert_eq!(
        results.len(),
        1,
        "exactly one result expected, got {}: {}",
        results.len(),
        e["id"]
    );
    results[0].as_object().expect("result object").clone()
}

pub fn state_of(result: &Map<String, Value>) -> Map<String, Value> {
    result["state"].as_object().expect("state object").clone()
}

pub fn read_json(path: &Path) -> Value {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// The runner's requests on `route` for execution `id`, in arrival order.
pub fn execution_requests(server: &DevServer, route: &str, id: &str) -> Vec<Value> {
    let path = match route {
        "result" => format!("/api/v1/execution/{id}"),
        other => format!("/api/v1/execution/{id}/{other}"),
    };
    server
        .requests_on(route)
        .into_iter()
        .filter(|r| r["path"] == path.as_str())
        .collect()
}

/// Every line the server accepted on `/logs` for `id`, batches concatenated
/// in arrival order.
pub fn lines_received(server: &DevServer, id: &str) -> Vec<String> {
    execution_requests(server, "logs", id)
        .iter()
        .filter(|r| r["status"] == 200)
        .flat_map(|r| {
            r["body"]["lines"]
                .as_array()
                .expect("lines")
                .iter()
                .map(|l| l.as_str().expect("line").to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The permission bits of `path`.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

// ---------------------------------------------------------------- processes and executors

/// A shell-script executor in `dir`: discovery (`--version`, `--manifest`)
/// answers as the contract wants, then `body` runs in the execution
/// directory. Returns the `executable_name` for it.
pub fn script_executor(dir: &Path, body: &str) -> String {
    let path = dir.join("script-executor.sh");
    fs::write(
        &path,
        format!(
            "case \"$1\" in\n--version) echo script 1.0; exit 0;;\n--manifest) echo '{{}}' > \"$2\"; exit 0;;\nesac\n{body}\n"
        ),
    )
    .expect("write the script");
    format!("sh {}", path.display())
}

/// The process's peak resident memory (VmHWM), in KiB.
pub fn peak_rss_kib(pid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// Alive and not a zombie (a zombie is dead; its parent may be an init that
/// never reaps).
pub fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().map(|r| r.trim_start().to_string()))
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}
