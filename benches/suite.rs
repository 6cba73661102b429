//! The benchmark suite (`make bench`, or `cargo bench --bench suite` after
//! `cargo build --release --bins --examples`). See BENCHMARKS.md for the
//! method behind every figure.
//!
//! It drives the release `flo-devserver` (long-poll 25 s) and `flo-runner`
//! binaries on loopback with `examples/noop-executor.rs` as the executor,
//! prints a table and writes every figure to `bench/results.json`.
//! Benchmarks are not tests: a missed target is reported, not fatal. The exit
//! status is 1 only when a measurement could not be made at all.
//!
//! Environment:
//! * `FLO_BENCH_ONLY=overhead,throughput,...` runs only those measurements
//!   (names: fs, signing, overhead, overhead_tmpfs, throughput,
//!   throughput_tmpfs, logs, idle, peak, startup, first_line);
//! * `FLO_BENCH_QUICK=1` shrinks every count (a smoke run, figures not
//!   comparable); quick or partial runs write `bench/results-partial.json`
//!   instead of `bench/results.json`;
//! * `FLO_BENCH_KEEP=1` keeps the `flo-bench-*` directories (runner logs,
//!   execution directories) instead of removing them at the end;
//! * `TMPDIR` chooses where the runners' directories go.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use flo_protocol::signing::Signer;
use rsa::signature::RandomizedSigner;
use rsa::signature::SignatureEncoding;
use rsa::RsaPrivateKey;
use serde_json::{json, Value};
use sha2::Sha256;

type Res<T> = Result<T, String>;

const CODE: &str = "bench";
const LONG_POLL_SECS: &str = "25";

/// Counts, shrunk by `FLO_BENCH_QUICK`.
struct Plan {
    quick: bool,
    overhead_runs: usize,
    overhead_warmup: usize,
    throughput_executions: usize,
    throughput_rounds: usize,
    log_lines: u64,
    log_rounds: usize,
    idle_secs: u64,
    idle_runners: usize,
    peak_bytes: u64,
    startup_runs: usize,
    signing_rounds: usize,
    signing_round_time: Duration,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Plan {
                quick,
                overhead_runs: 30,
                overhead_warmup: 3,
                throughput_executions: 200,
                throughput_rounds: 1,
                log_lines: 20_000,
                log_rounds: 1,
                idle_secs: 10,
                idle_runners: 1,
                peak_bytes: 64 << 20,
                startup_runs: 3,
                signing_rounds: 2,
                signing_round_time: Duration::from_millis(200),
            }
        } else {
            Plan {
                quick,
                overhead_runs: 200,
                overhead_warmup: 10,
                throughput_executions: 2000,
                throughput_rounds: 3,
                log_lines: 200_000,
                log_rounds: 3,
                idle_secs: 60,
                idle_runners: 3,
                peak_bytes: 1 << 30,
                startup_runs: 10,
                signing_rounds: 5,
                signing_round_time: Duration::from_millis(600),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Clock, statistics, /proc

/// Milliseconds on the bench's monotonic clock (CLOCK_MONOTONIC, as the dev
/// server's `Instant`s are).
fn now_ms() -> f64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_secs_f64() * 1000.0
}

#[derive(Clone, Debug)]
struct Stats {
    n: usize,
    median: f64,
    p5: f64,
    p95: f64,
    min: f64,
    max: f64,
    mean: f64,
}

impl Stats {
    fn of(values: &[f64]) -> Option<Stats> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let rank = |p: f64| v[((p / 100.0 * n as f64).ceil() as usize).clamp(1, n) - 1];
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stats {
            n,
            median,
            p5: rank(5.0),
            p95: rank(95.0),
            min: v[0],
            max: v[n - 1],
            mean: v.iter().sum::<f64>() / n as f64,
        })
    }

    fn json(&self) -> Value {
        let r = |x: f64| (x * 1000.0).round() / 1000.0;
        json!({
            "n": self.n, "median": r(self.median), "p5": r(self.p5), "p95": r(self.p95),
            "min": r(self.min), "max": r(self.max), "mean": r(self.mean),
        })
    }
}

fn stats_json(values: &[f64]) -> Value {
    Stats::of(values).map_or(Value::Null, |s| s.json())
}

fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// utime + stime of a process in seconds (all its threads, dead ones too;
/// clock-tick resolution).
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields after the command: state is field 3, utime 14, stime 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

/// Time on the CPU of a process's live threads, nanoseconds (schedstat:
/// precise, but threads that exited are not counted).
fn sched_ns(pid: u32) -> Option<u64> {
    let mut total = 0;
    for entry in fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = entry.ok()?.path().join("schedstat");
        let text = fs::read_to_string(path).unwrap_or_default();
        total += text
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(total)
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn machine() -> Value {
    let cmd = |c: &str, args: &[&str]| {
        Command::new(c)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let mem_kib = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|n| n.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let root = env!("CARGO_MANIFEST_DIR");
    let dirty = !cmd("git", &["-C", root, "status", "--porcelain", "--", "src"]).is_empty();
    json!({
        "nproc": cmd("nproc", &[]).parse::<u64>().unwrap_or(0),
        "cpu_model": model,
        "mem_total_mib": mem_kib / 1024,
        "kernel": fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "temp_dir": std::env::temp_dir(),
        "temp_dir_fs": fs_type(&std::env::temp_dir()),
        "date": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        "rustc": cmd("rustc", &["--version"]),
        "git_commit": cmd("git", &["-C", root, "rev-parse", "--short", "HEAD"]),
        "src_modified_since_commit": dirty,
        "loadavg": fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    })
}

// ---------------------------------------------------------------------------
// Temporary directories

/// Every directory the suite creates; removed only when the suite ends. On
/// a filesystem like this machine's (ext4 without a journal), creating a file
/// scans past every inode freed in the last few minutes, so deleting a
/// round's thousands of files would slow down the rounds after it.
static GRAVEYARD: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// A new directory under `base` (default: the system temp directory).
fn temp_dir(base: Option<&Path>) -> Res<PathBuf> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("flo-bench-");
    let dir = match base {
        Some(b) => builder.tempdir_in(b),
        None => builder.tempdir(),
    }
    .map_err(|e| format!("temp dir: {e}"))?
    .keep();
    GRAVEYARD
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(dir.clone());
    Ok(dir)
}

fn remove_temp_dirs() {
    let dirs = std::mem::take(&mut *GRAVEYARD.lock().unwrap_or_else(|e| e.into_inner()));
    for d in dirs {
        let _ = fs::remove_dir_all(d);
    }
}

/// The filesystem type of a directory (`stat -f`), e.g. ext2/ext3 or tmpfs.
fn fs_type(dir: &Path) -> String {
    Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// `/dev/shm` when it is a tmpfs: the supplementary runs put every file there.
fn tmpfs_dir() -> Option<PathBuf> {
    let shm = PathBuf::from("/dev/shm");
    (shm.is_dir() && fs_type(&shm) == "tmpfs").then_some(shm)
}

// ---------------------------------------------------------------------------
// Binaries

struct Bins {
    runner: PathBuf,
    devserver: PathBuf,
    noop: PathBuf,
}

fn bins() -> Res<Bins> {
    // FLO_BENCH_RUNNER measures another build of flo-runner (say, an older
    // commit's) against the same dev server and executor.
    let runner = std::env::var_os("FLO_BENCH_RUNNER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_flo-runner")));
    Ok(Bins {
        runner,
        devserver: flo_testkit::devserver_bin(),
        noop: flo_testkit::noop_executor_path(),
    })
}

// ---------------------------------------------------------------------------
// The dev server

struct DevServer {
    child: Child,
    _stdout: BufReader<ChildStdout>,
    url: String,
    agent: ureq2::Agent,
    /// Server clock minus bench clock, ms (see `calibrate`).
    offset: f64,
    offset_uncertainty: f64,
    probes: usize,
}

impl DevServer {
    fn start(bins: &Bins) -> Res<DevServer> {
        let dir = temp_dir(None)?;
        let log = fs::File::create(dir.join("devserver.log")).map_err(|e| e.to_string())?;
        let mut child = Command::new(&bins.devserver)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--registration-code",
                CODE,
            ])
            .args(["--long-poll-secs", LONG_POLL_SECS])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start flo-devserver: {e}"))?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .map_err(|e| format!("devserver banner: {e}"))?;
        let url = line
            .trim()
            .rsplit(' ')
            .next()
            .filter(|u| u.starts_with("http://"))
            .ok_or_else(|| format!("unexpected devserver banner {line:?}"))?
            .to_string();
        let mut server = DevServer {
            child,
            _stdout: stdout,
            url,
            agent: ureq2::AgentBuilder::new()
                .timeout(Duration::from_secs(60))
                .build(),
            offset: 0.0,
            offset_uncertainty: f64::INFINITY,
            probes: 0,
        };
        server.calibrate(48)?;
        Ok(server)
    }

    fn get(&self, path: &str) -> Res<Value> {
        let resp = self
            .agent
            .get(&format!("{}{path}", self.url))
            .call()
            .map_err(|e| format!("GET {path}: {e}"))?;
        serde_json::from_reader(resp.into_reader()).map_err(|e| format!("GET {path}: {e}"))
    }

    fn post(&self, path: &str, body: &Value) -> Res<Value> {
        let resp = self
            .agent
            .post(&format!("{}{path}", self.url))
            .set("Content-Type", "application/json")
            .send_string(&body.to_string())
            .map_err(|e| format!("POST {path}: {e}"))?;
        serde_json::from_reader(resp.into_reader()).map_err(|e| format!("POST {path}: {e}"))
    }

    /// Enqueues a flow; returns the id and the bench time just before the
    /// request was sent and just after the answer came back.
    fn enqueue(&self, flow: &Value, trigger: &Value) -> Res<(String, f64, f64)> {
        let body = json!({ "flow": flow, "trigger_data": trigger });
        let sent = now_ms();
        let v = self.post("/admin/executions", &body)?;
        let answered = now_ms();
        let id = v["id"].as_str().ok_or("enqueue gave no id")?.to_string();
        Ok((id, sent, answered))
    }

    fn execution(&self, id: &str) -> Res<Value> {
        self.get(&format!("/admin/executions/{id}"))
    }

    fn wait_completed(&self, id: &str, limit: Duration, every: Duration) -> Res<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let e = self.execution(id)?;
            if e["status"] == "completed" {
                return Ok(e);
            }
            if Instant::now() > deadline {
                return Err(format!("execution {id} not completed within {limit:?}"));
            }
            std::thread::sleep(every);
        }
    }

    /// Like `wait_completed`, but watching the execution list, which stays
    /// small while an execution's own record (with all its log lines) grows.
    fn wait_listed_completed(&self, id: &str, limit: Duration, every: Duration) -> Res<()> {
        let deadline = Instant::now() + limit;
        loop {
            let list = self.get("/admin/executions")?;
            let done = list.as_array().is_some_and(|a| {
                a.iter()
                    .any(|e| e["id"] == id && e["status"] == "completed")
            });
            if done {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("execution {id} not completed within {limit:?}"));
            }
            std::thread::sleep(every);
        }
    }

    /// Request records with `seq` above `after`.
    fn requests_after(&self, after: u64) -> Res<Vec<Value>> {
        match self.get("/admin/requests")? {
            Value::Array(a) => Ok(a
                .into_iter()
                .filter(|r| r["seq"].as_u64().unwrap_or(0) > after)
                .collect()),
            other => Err(format!("requests: {other}")),
        }
    }

    fn max_seq(&self) -> Res<u64> {
        Ok(self
            .requests_after(0)?
            .iter()
            .filter_map(|r| r["seq"].as_u64())
            .max()
            .unwrap_or(0))
    }

    /// Maps the dev server's request clock (`at_ms`: whole milliseconds since
    /// it started, truncated) onto the bench clock. Each probe is a request
    /// on an unknown route, which the server records with its `at_ms`; the
    /// arrival lies between the bench's send and receive times, so
    /// `at_ms - recv <= offset < at_ms + 1 - send`. Intersecting the bounds of
    /// many probes (sent at scattered sub-millisecond phases) pins the offset
    /// to a fraction of a millisecond; the midpoint is used.
    fn calibrate(&mut self, probes: usize) -> Res<()> {
        let tag = format!("/bench-probe-{}", self.probes);
        let mut sent = Vec::with_capacity(probes);
        for k in 0..probes {
            std::thread::sleep(Duration::from_micros(((k * 379) % 1000) as u64 + 50));
            let t0 = now_ms();
            let _ = self.agent.get(&format!("{}{tag}/{k}", self.url)).call();
            let t1 = now_ms();
            sent.push((t0, t1));
        }
        self.probes += 1;
        let records = self.requests_after(0)?;
        let (mut lo, mut hi) = (f64::NEG_INFINITY, f64::INFINITY);
        for r in &records {
            let Some(path) = r["path"].as_str() else {
                continue;
            };
            let Some(k) = path
                .strip_prefix(&format!("{tag}/"))
                .and_then(|k| k.parse::<usize>().ok())
            else {
                continue;
            };
            let at = r["at_ms"].as_f64().unwrap_or(0.0);
            let (t0, t1) = sent[k];
            lo = lo.max(at - t1);
            hi = hi.min(at + 1.0 - t0);
        }
        if !(lo.is_finite() && hi.is_finite()) || lo > hi {
            return Err(format!("clock calibration failed ({lo}, {hi})"));
        }
        self.offset = (lo + hi) / 2.0;
        self.offset_uncertainty = (hi - lo) / 2.0;
        Ok(())
    }

    /// A server `at_ms` on the bench clock.
    fn to_bench(&self, at_ms: f64) -> f64 {
        at_ms - self.offset
    }

    fn calibration_json(&self) -> Value {
        json!({"offset_ms": self.offset, "uncertainty_ms": self.offset_uncertainty})
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Runners

struct Runner {
    child: Option<Child>,
    dir: PathBuf,
    bin: PathBuf,
}

fn runner_config(server: &DevServer, bins: &Bins, dir: &Path, slots: u32) -> Value {
    json!({
        "runner": {
            "url": server.url,
            "registration_code": CODE,
            "name": "bench-runner",
            "checkin_timeout": 5,
            "registration_retry": {"strategy": "none"}
        },
        "execution": {
            "max_concurrent_executors": slots,
            "executable_name": bins.noop.to_string_lossy(),
            "execution_directory": dir.join("executions").to_string_lossy()
        }
    })
}

impl Runner {
    /// A runner in a fresh directory under `base`, not started yet.
    fn new(server: &DevServer, bins: &Bins, slots: u32, base: Option<&Path>) -> Res<Runner> {
        let dir = temp_dir(base)?;
        let config = runner_config(server, bins, &dir, slots);
        fs::write(dir.join("config.json"), config.to_string()).map_err(|e| e.to_string())?;
        Ok(Runner {
            child: None,
            dir,
            bin: bins.runner.clone(),
        })
    }

    fn path(&self) -> &Path {
        &self.dir
    }

    /// Points the (stopped) runner at another server, keeping its identity.
    fn use_server(&self, server: &DevServer, bins: &Bins, slots: u32) -> Res<()> {
        let config = runner_config(server, bins, self.path(), slots);
        fs::write(self.path().join("config.json"), config.to_string()).map_err(|e| e.to_string())
    }

    /// Starts the process; returns the bench time just before the spawn.
    fn start(&mut self) -> Res<f64> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path().join("runner.log"))
            .map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config")
            .arg(self.path().join("config.json"))
            .current_dir(self.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let t = now_ms();
        self.child = Some(cmd.spawn().map_err(|e| format!("start flo-runner: {e}"))?);
        Ok(t)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn identifier(&self) -> Option<String> {
        let bytes = fs::read(self.path().join("flo.state")).ok()?;
        let v: Value = serde_json::from_slice(&bytes).ok()?;
        v["identifier"].as_str().map(str::to_string)
    }

    /// Waits until the server has this runner registered.
    fn wait_registered(&mut self, server: &DevServer, limit: Duration) -> Res<String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(id) = self.identifier() {
                let runners = server.get("/admin/runners")?;
                let known = runners
                    .as_array()
                    .is_some_and(|a| a.iter().any(|r| r["identifier"] == id.as_str()));
                if known {
                    return Ok(id);
                }
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!("runner exited ({status}): {}", self.log_tail()));
            }
            if Instant::now() > deadline {
                return Err(format!("runner not registered: {}", self.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.path().join("runner.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    /// SIGTERM and wait for the exit.
    fn stop(&mut self) -> Res<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if child.try_wait().map_err(|e| e.to_string())?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("runner did not stop within 30 s of SIGTERM".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
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

// ---------------------------------------------------------------------------
// The executor alone: the same argument list and files as the runner's

/// The files of one execution directory, as the runner writes them.
#[derive(Clone)]
struct ExecFiles {
    flow: Vec<u8>,
    trigger: Vec<u8>,
    context: Vec<u8>,
}

impl ExecFiles {
    fn representative() -> Self {
        let context = json!({
            "flow_id": "00000000-0000-4000-8000-000000000000",
            "execution_id": "00000000-0000-4000-8000-000000000001",
            "sequence": 1, "author_id": "", "organisation_id": "",
            "runner_id": "abcdefghijklmnop", "start_time": "2025-01-01T00:00:00Z",
            "trigger_type": "", "author_email": "", "triggerer_email": "",
            "api_url": "http://127.0.0.1:1", "system_prompt": "", "agent_id": "",
            "agent_user_id": "", "conversation_id": "", "trigger_source": "",
            "channel_type": "", "channel_id": "", "thread_id": "", "role": "",
            "system_flow": false
        });
        ExecFiles {
            flow: NOOP_FLOW.to_string().into_bytes(),
            trigger: br#"{"bench":1}"#.to_vec(),
            context: context.to_string().into_bytes(),
        }
    }

    /// The files the runner actually wrote for one of its executions.
    fn from_dir(dir: &Path) -> Option<Self> {
        Some(ExecFiles {
            flow: fs::read(dir.join("execution.flow")).ok()?,
            trigger: fs::read(dir.join("trigger-data.json")).ok()?,
            context: fs::read(dir.join("context.json")).ok()?,
        })
    }
}

const NOOP_FLOW: &str = r#"{"noop":true}"#;

fn noop_flow() -> Value {
    serde_json::from_str(NOOP_FLOW).unwrap_or(Value::Null)
}

fn noop_trigger() -> Value {
    json!({"bench": 1})
}

/// Prepares `{root}/{flo}/{id}` as the runner does (mode 0750, the three
/// input files at 0600), runs the executor with the runner's argument list,
/// reaps it and reads `state.json`. Returns the time from spawn to reap, ms.
fn run_executor_directly(noop: &Path, root: &Path, n: usize, files: &ExecFiles) -> Res<f64> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let flo = format!("flo-{}", n % 16);
    let id = format!("exec-{n:08}");
    let dir = root.join(&flo).join(&id);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(&dir)
        .map_err(|e| e.to_string())?;
    for (name, bytes) in [
        ("execution.flow", &files.flow),
        ("trigger-data.json", &files.trigger),
        ("context.json", &files.context),
    ] {
        use std::io::Write;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(dir.join(name))
            .map_err(|e| e.to_string())?;
        f.write_all(bytes).map_err(|e| e.to_string())?;
    }
    let mut cmd = Command::new(noop);
    cmd.args([
        "--output",
        "json",
        "--path",
        "execution.flow",
        "--entry",
        "",
    ])
    .args(["--id", &id, "--flow", &flo, "--api", "http://127.0.0.1:1"])
    .args([
        "--runner",
        "bench-runner",
        "--trigger-data",
        "trigger-data.json",
    ])
    .args(["--context", "context.json", "--key"])
    .arg(root.join("flomation-runner.pem"))
    .current_dir(&dir)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    let t0 = Instant::now();
    let child = cmd
        .spawn()
        .map_err(|e| format!("spawn noop-executor: {e}"))?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let took = t0.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        return Err(format!("noop-executor failed: {}", out.status));
    }
    let state = fs::read(dir.join("state.json")).map_err(|e| format!("state.json: {e}"))?;
    if state.is_empty() {
        return Err("empty state.json".into());
    }
    Ok(took)
}

/// `{runner}/executions/{flo}/{id}` of some execution (the executions
/// directory also holds the executor's `manifest.json`).
fn first_execution_dir(runner_dir: &Path) -> Option<PathBuf> {
    let first_subdir = |dir: &Path| {
        fs::read_dir(dir)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.is_dir())
    };
    first_subdir(&first_subdir(&runner_dir.join("executions"))?)
}

// ---------------------------------------------------------------------------
// Request log helpers

fn route(r: &Value) -> &str {
    r["route"].as_str().unwrap_or("")
}

fn path_id(r: &Value) -> Option<&str> {
    let p = r["path"].as_str()?;
    let rest = p.strip_prefix("/api/v1/execution/")?;
    Some(rest.split('/').next().unwrap_or(rest))
}

fn at(r: &Value) -> f64 {
    r["at_ms"].as_f64().unwrap_or(0.0)
}

// ---------------------------------------------------------------------------
// Context: what creating a small file costs here

/// Microseconds per create+write+close of a small file, in a fresh directory
/// under `base`; median of 5 rounds of 200.
fn file_create_us(base: Option<&Path>) -> Res<Value> {
    use std::io::Write;
    let dir = temp_dir(base)?;
    let mut per = Vec::new();
    for round in 0..5 {
        let t0 = Instant::now();
        for i in 0..200 {
            let mut f =
                fs::File::create(dir.join(format!("f-{round}-{i}"))).map_err(|e| e.to_string())?;
            f.write_all(b"{}").map_err(|e| e.to_string())?;
        }
        per.push(t0.elapsed().as_secs_f64() * 1e6 / 200.0);
    }
    Ok(json!({"dir_fs": fs_type(&dir), "us_per_file": stats_json(&per)}))
}

fn bench_fs(shm: Option<&Path>) -> Res<Value> {
    Ok(json!({
        "temp_dir": file_create_us(None)?,
        "tmpfs": match shm {
            Some(s) => file_create_us(Some(s))?,
            None => Value::Null,
        },
        "note": "context, not a target: the runner creates about ten files and directories per execution",
    }))
}

// ---------------------------------------------------------------------------
// 6. Signing

fn bench_signing(plan: &Plan, key: &RsaPrivateKey) -> Res<Value> {
    let messages: Vec<Vec<u8>> = (0..64)
        .map(|i| {
            json!({"id": format!("exec-{i}"), "flow_id": "f", "status": 0, "duration": i,
                   "billing_duration": i, "outputs": {}, "logs": "x".repeat(200)})
            .to_string()
            .into_bytes()
        })
        .collect();
    let ring_signer = Signer::new(key);
    let rsa_signer = rsa::pss::SigningKey::<Sha256>::new(key.clone());
    let mut rng = rand::thread_rng();
    // Both produce signatures the dev server (Go semantics) accepts.
    let public = key.to_public_key();
    let a = hex::decode(
        ring_signer
            .sign_hex(&messages[0])
            .map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let b = rsa_signer.sign_with_rng(&mut rng, &messages[0]).to_vec();
    if !flo_protocol::signing::verify_pss_sha256(&public, &messages[0], &a)
        || !flo_protocol::signing::verify_pss_sha256(&public, &messages[0], &b)
    {
        return Err("a signature did not verify".into());
    }
    let (mut ring_rates, mut rsa_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..plan.signing_rounds {
        let rate = |f: &mut dyn FnMut(&[u8])| {
            let t0 = Instant::now();
            let mut n = 0;
            while t0.elapsed() < plan.signing_round_time {
                f(&messages[n % messages.len()]);
                n += 1;
            }
            n as f64 / t0.elapsed().as_secs_f64()
        };
        let r1 = rate(&mut |m| {
            let _ = ring_signer.sign_hex(m);
        });
        let r2 = rate(&mut |m| {
            let sig = rsa_signer.sign_with_rng(&mut rng, m);
            let _ = hex::encode(sig.to_bytes());
        });
        ring_rates.push(r1);
        rsa_rates.push(r2);
        ratios.push(r1 / r2);
    }
    Ok(json!({
        "ring_per_s": stats_json(&ring_rates),
        "rsa_crate_per_s": stats_json(&rsa_rates),
        "ratio_ring_over_rsa": stats_json(&ratios),
        "note": "one thread; hex encoding included for both, as the runner sends hex",
    }))
}

// ---------------------------------------------------------------------------
// 1. Overhead per execution

fn bench_overhead(plan: &Plan, bins: &Bins, base: Option<&Path>) -> Res<Value> {
    let mut server = DevServer::start(bins)?;
    let mut runner = Runner::new(&server, bins, 1, base)?;
    runner.start()?;
    runner.wait_registered(&server, Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_millis(300));
    let direct_root = temp_dir(base)?;
    let files = ExecFiles::representative();

    struct Sample {
        id: String,
        sent: f64,
        answered: f64,
    }
    let mut samples = Vec::new();
    let mut direct = Vec::new();
    let mut cpu0 = None;
    let total = plan.overhead_warmup + plan.overhead_runs;
    for i in 0..total {
        if i == plan.overhead_warmup {
            cpu0 = cpu_secs(runner.pid());
        }
        // The executor alone, while the runner is idle with its poll held:
        // same machine state, interleaved with the runner's executions.
        let took = run_executor_directly(&bins.noop, &direct_root, i, &files)?;
        if i >= plan.overhead_warmup {
            direct.push(took);
        }
        // A gap, so the runner's next poll is waiting at the server (checked
        // below from the request log), as it is when work arrives at random.
        std::thread::sleep(Duration::from_millis(15 + (i % 7) as u64));
        let (id, sent, answered) = server.enqueue(&noop_flow(), &noop_trigger())?;
        server.wait_completed(&id, Duration::from_secs(30), Duration::from_millis(2))?;
        if i >= plan.overhead_warmup {
            samples.push(Sample { id, sent, answered });
        }
    }
    let cpu = cpu_secs(runner.pid())
        .zip(cpu0)
        .map(|(b, a)| (b - a) * 1000.0 / plan.overhead_runs as f64);
    let before = (server.offset, server.offset_uncertainty);
    server.calibrate(48)?;
    let drift = server.offset - before.0;
    // Both calibrations bound the offset; use the tighter one.
    if before.1 < server.offset_uncertainty {
        server.offset = before.0;
        server.offset_uncertainty = before.1;
    }
    let records = server.requests_after(0)?;
    runner.stop()?;

    let exec_median = Stats::of(&direct).map_or(0.0, |s| s.median);
    let mut by_id: HashMap<&str, (Option<&Value>, Option<&Value>)> = HashMap::new();
    for r in &records {
        if let Some(id) = path_id(r) {
            let e = by_id.entry(id).or_default();
            match route(r) {
                "state" if e.0.is_none() => e.0 = Some(r),
                "result" if e.1.is_none() => e.1 = Some(r),
                _ => {}
            }
        }
    }
    let polls: Vec<&Value> = records.iter().filter(|r| route(r) == "poll").collect();
    let (mut total_ms, mut overhead, mut to_claim, mut after_claim) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut poll_waiting, mut enqueue_rtt) = (0, Vec::new());
    for s in &samples {
        let (Some(Some(claim)), Some(Some(result))) = (
            by_id.get(s.id.as_str()).map(|e| e.0),
            by_id.get(s.id.as_str()).map(|e| e.1),
        ) else {
            return Err(format!("no claim or result recorded for {}", s.id));
        };
        let claim_at = server.to_bench(at(claim));
        let result_at = server.to_bench(at(result));
        total_ms.push(result_at - s.sent);
        overhead.push(result_at - s.sent - exec_median);
        to_claim.push(claim_at - s.sent);
        after_claim.push(result_at - claim_at - exec_median);
        enqueue_rtt.push(s.answered - s.sent);
        // The poll that brought it: the last one to arrive before the claim.
        let claim_seq = claim["seq"].as_u64().unwrap_or(0);
        let poll = polls
            .iter()
            .filter(|p| p["seq"].as_u64().unwrap_or(0) < claim_seq)
            .max_by_key(|p| p["seq"].as_u64().unwrap_or(0));
        if poll.is_some_and(|p| server.to_bench(at(p)) <= s.sent) {
            poll_waiting += 1;
        }
    }
    let o = Stats::of(&overhead).ok_or("no samples")?;
    Ok(json!({
        "overhead_ms": o.json(),
        "enqueue_to_result_ms": stats_json(&total_ms),
        "enqueue_to_claim_ms": stats_json(&to_claim),
        "claim_to_result_minus_executor_ms": stats_json(&after_claim),
        "executor_alone_ms": stats_json(&direct),
        "enqueue_round_trip_ms": stats_json(&enqueue_rtt),
        "poll_already_waiting": poll_waiting,
        "runner_cpu_ms_per_execution": cpu,
        "clock": {"calibration": server.calibration_json(), "drift_between_calibrations_ms": drift},
        "executions": samples.len(),
        "work_dir_fs": fs_type(runner.path()),
        "target": {"median_ms": 5, "p95_ms": 20},
        "pass": o.median <= 5.0 && o.p95 <= 20.0,
    }))
}

// ---------------------------------------------------------------------------
// 2. Throughput, and the machine's limit for the same work

struct Round {
    rate: f64,
    window_s: f64,
    signed_per_exec: f64,
    requests_per_exec: HashMap<String, f64>,
    cpu_ms_per_exec: Option<f64>,
    server_cpu_ms_per_exec: Option<f64>,
    /// Results acknowledged in each second of the window, and the longest
    /// time without any (stalls show here).
    results_per_second: Vec<u64>,
    longest_gap_ms: f64,
    /// The execution whose result came last: its request times, relative
    /// to the first claim.
    last_execution: Value,
    /// The rate when results that came more than 1 s after all the others
    /// (a stalled request) are left out, and how many were.
    rate_without_stragglers: f64,
    stragglers: usize,
    files: Option<ExecFiles>,
}

/// One round on a fresh dev server: all `n` executions are queued before the
/// runner starts. (A fresh server each round because a runner stopped while
/// its long-poll is held leaves that poll open at the server, which would
/// hand the next execution queued to a connection nobody reads.)
fn throughput_round(bins: &Bins, runner: &mut Runner, n: usize) -> Res<Round> {
    let server = DevServer::start(bins)?;
    runner.use_server(&server, bins, 8)?;
    let seq0 = server.max_seq()?;
    let mut ids = HashSet::new();
    for _ in 0..n {
        let (id, _, _) = server.enqueue(&noop_flow(), &noop_trigger())?;
        ids.insert(id);
    }
    let server_cpu0 = cpu_secs(server.child.id());
    runner.start()?;
    let pid = runner.pid();
    let cpu0 = cpu_secs(pid);
    let deadline = Instant::now() + Duration::from_secs(600);
    let (cpu1, server_cpu1) = loop {
        std::thread::sleep(Duration::from_millis(200));
        let list = server.get("/admin/executions")?;
        let done = list.as_array().map_or(0, |a| {
            a.iter()
                .filter(|e| {
                    e["status"] == "completed" && e["id"].as_str().is_some_and(|i| ids.contains(i))
                })
                .count()
        });
        if done == n {
            break (cpu_secs(pid), cpu_secs(server.child.id()));
        }
        if Instant::now() > deadline {
            return Err(format!("throughput: only {done} of {n} completed in 600 s"));
        }
    };
    let records = server.requests_after(seq0)?;
    runner.stop()?;
    let mine: Vec<&Value> = records
        .iter()
        .filter(|r| match path_id(r) {
            Some(id) => ids.contains(id),
            None => route(r) == "poll",
        })
        .collect();
    let first = mine
        .iter()
        .filter(|r| route(r) == "state")
        .map(|r| at(r))
        .fold(f64::INFINITY, f64::min);
    let last = mine
        .iter()
        .filter(|r| route(r) == "result")
        .map(|r| at(r))
        .fold(f64::NEG_INFINITY, f64::max);
    let window_ms = (last - first).max(1.0);
    let last_execution = mine
        .iter()
        .filter(|r| route(r) == "result")
        .max_by(|a, b| at(a).total_cmp(&at(b)))
        .and_then(|r| path_id(r))
        .map_or(Value::Null, |id| {
            let events: Vec<Value> = mine
                .iter()
                .filter(|r| path_id(r) == Some(id))
                .map(|r| json!([route(r), at(r) - first, r["status"]]))
                .collect();
            json!({"id": id, "requests_ms_after_first_claim": events})
        });
    let mut result_times: Vec<f64> = mine
        .iter()
        .filter(|r| route(r) == "result")
        .map(|r| at(r))
        .collect();
    result_times.sort_by(|a, b| a.total_cmp(b));
    let mut results_per_second = vec![0u64; (window_ms / 1000.0) as usize + 1];
    for t in &result_times {
        if let Some(slot) = results_per_second.get_mut(((t - first) / 1000.0) as usize) {
            *slot += 1;
        }
    }
    let mut kept = result_times.len();
    while kept > 1 && result_times[kept - 1] - result_times[kept - 2] > 1000.0 {
        kept -= 1;
    }
    let stragglers = result_times.len() - kept;
    let rate_without_stragglers = kept as f64
        / ((result_times
            .get(kept.wrapping_sub(1))
            .copied()
            .unwrap_or(last)
            - first)
            .max(1.0)
            / 1000.0);
    let longest_gap_ms = std::iter::once(first)
        .chain(result_times.iter().copied())
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(0.0, f64::max);
    let in_window: Vec<&&Value> = mine
        .iter()
        .filter(|r| at(r) >= first && at(r) <= last)
        .collect();
    let signed = in_window
        .iter()
        .filter(|r| r["signature"].is_string())
        .count();
    let mut per_route: HashMap<String, f64> = HashMap::new();
    for r in &in_window {
        *per_route.entry(route(r).to_string()).or_default() += 1.0 / n as f64;
    }
    // The real input files of one execution, for the limit loop.
    let files = first_execution_dir(runner.path()).and_then(|d| ExecFiles::from_dir(&d));
    Ok(Round {
        rate: n as f64 / (window_ms / 1000.0),
        window_s: window_ms / 1000.0,
        signed_per_exec: signed as f64 / n as f64,
        requests_per_exec: per_route,
        cpu_ms_per_exec: cpu0.zip(cpu1).map(|(a, b)| (b - a) * 1000.0 / n as f64),
        results_per_second,
        longest_gap_ms,
        last_execution,
        rate_without_stragglers,
        stragglers,
        server_cpu_ms_per_exec: server_cpu0
            .zip(server_cpu1)
            .map(|(a, b)| (b - a) * 1000.0 / n as f64),
        files,
    })
}

/// 8 threads spawning and reaping the executor `n` times in all, with the
/// runner's files and arguments, and computing `signatures` RSA signatures in
/// all (spread evenly over the executions). Executions per second.
fn limit_round(
    bins: &Bins,
    signer: &Signer,
    files: &ExecFiles,
    (n, signatures): (usize, usize),
    base: Option<&Path>,
) -> Res<f64> {
    let root = temp_dir(base)?;
    let next = AtomicUsize::new(0);
    let message = vec![b'x'; 400];
    let t0 = Instant::now();
    let errors: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| -> Res<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return Ok(());
                        }
                        run_executor_directly(&bins.noop, &root, i, files)?;
                        let sigs = signatures * (i + 1) / n - signatures * i / n;
                        for _ in 0..sigs {
                            signer.sign_hex(&message).map_err(|e| e.to_string())?;
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .filter_map(|w| {
                w.join()
                    .map_err(|_| "panic".to_string())
                    .and_then(|r| r)
                    .err()
            })
            .collect()
    });
    if let Some(e) = errors.first() {
        return Err(e.clone());
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

fn bench_throughput(plan: &Plan, bins: &Bins, signer: &Signer, base: Option<&Path>) -> Res<Value> {
    let mut runner = {
        // Create the identity (key generation) on a throwaway server first.
        let warm = DevServer::start(bins)?;
        let mut runner = Runner::new(&warm, bins, 8, base)?;
        runner.start()?;
        runner.wait_registered(&warm, Duration::from_secs(60))?;
        runner.stop()?;
        runner
    };
    let n = plan.throughput_executions;
    let (mut rates, mut limits, mut ratios, mut signed, mut windows) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut cpu, mut server_cpu) = (Vec::new(), Vec::new());
    let mut routes = HashMap::new();
    let (mut per_second, mut gaps, mut lasts) = (Vec::new(), Vec::new(), Vec::new());
    let (mut unstalled, mut stalled_rounds) = (Vec::new(), 0);
    let mut files_from_runner = true;
    for _ in 0..plan.throughput_rounds {
        let round = throughput_round(bins, &mut runner, n)?;
        files_from_runner &= round.files.is_some();
        let files = round
            .files
            .clone()
            .unwrap_or_else(ExecFiles::representative);
        let sigs = (round.signed_per_exec * n as f64).round() as usize;
        let limit = limit_round(bins, signer, &files, (n, sigs), base)?;
        rates.push(round.rate);
        limits.push(limit);
        ratios.push(round.rate / limit);
        signed.push(round.signed_per_exec);
        windows.push(round.window_s);
        cpu.extend(round.cpu_ms_per_exec);
        server_cpu.extend(round.server_cpu_ms_per_exec);
        per_second.push(round.results_per_second);
        gaps.push(round.longest_gap_ms);
        lasts.push(round.last_execution);
        unstalled.push(round.rate_without_stragglers);
        stalled_rounds += usize::from(round.stragglers > 0);
        routes = round.requests_per_exec;
    }
    let r = Stats::of(&rates).ok_or("no rounds")?;
    Ok(json!({
        "executions_per_round": n,
        "work_dir_fs": fs_type(runner.path()),
        "slots": 8,
        "runner_per_s": r.json(),
        "rounds": {
            "runner_per_s": rates, "limit_per_s": limits, "window_s": windows,
            "results_per_second": per_second, "longest_gap_between_results_ms": gaps,
            "last_execution": lasts,
        },
        "runner_per_s_without_stalled_results": stats_json(&unstalled),
        "rounds_with_a_stalled_result": stalled_rounds,
        "limit_per_s": stats_json(&limits),
        "limit_used_the_runners_files": files_from_runner,
        "ratio_runner_over_limit": stats_json(&ratios),
        "window_s": stats_json(&windows),
        "signed_requests_per_execution": stats_json(&signed),
        "requests_per_execution_by_route": routes,
        "runner_cpu_ms_per_execution": stats_json(&cpu),
        "devserver_cpu_ms_per_execution": stats_json(&server_cpu),
        "target": {"per_s": 200},
        "pass": r.median >= 200.0,
    }))
}

// ---------------------------------------------------------------------------
// 3. Log streaming

/// Checks the lines the server got against `0..expected`, allowing the
/// runner's `[flo-runner: N lines dropped]` markers. Returns (delivered,
/// dropped per markers, in order, unexplained).
fn check_lines(lines: &[Value], expected: u64, line_bytes: usize) -> (u64, u64, bool, u64) {
    let (mut delivered, mut dropped_marked, mut in_order) = (0u64, 0u64, true);
    let mut next = 0u64;
    let mut bad = 0u64;
    for l in lines {
        let s = l.as_str().unwrap_or("");
        if let Some(n) = s
            .strip_prefix("[flo-runner: ")
            .and_then(|r| r.strip_suffix(" lines dropped]"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            dropped_marked += n;
            continue;
        }
        let Some(num) = s.get(..10).and_then(|d| d.parse::<u64>().ok()) else {
            bad += 1;
            continue;
        };
        if s.len() != line_bytes.max(11) {
            bad += 1;
        }
        if num < next {
            in_order = false;
        }
        next = num + 1;
        delivered += 1;
    }
    let missing = expected.saturating_sub(delivered);
    let unexplained = missing.saturating_sub(dropped_marked) + bad;
    (delivered, dropped_marked, in_order, unexplained)
}

fn bench_logs(plan: &Plan, bins: &Bins) -> Res<Value> {
    let server = DevServer::start(bins)?;
    let mut runner = Runner::new(&server, bins, 1, None)?;
    runner.start()?;
    runner.wait_registered(&server, Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_millis(300));
    let pid = runner.pid();
    let lines = plan.log_lines;
    let flow = json!({"print_lines": lines, "line_bytes": 100});
    let (mut per_req, mut cpu, mut walls, mut delivered_all) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut all_in_order, mut dropped_total, mut unexplained_total, mut requests_total) =
        (true, 0u64, 0u64, 0u64);
    for _ in 0..plan.log_rounds {
        let seq0 = server.max_seq()?;
        let c0 = cpu_secs(pid).ok_or("no /proc stat")?;
        let (id, sent, _) = server.enqueue(&flow, &Value::Null)?;
        server.wait_listed_completed(&id, Duration::from_secs(300), Duration::from_millis(20))?;
        let c1 = cpu_secs(pid).ok_or("no /proc stat")?;
        let e = server.execution(&id)?;
        let records = server.requests_after(seq0)?;
        let result_at = records
            .iter()
            .filter(|r| route(r) == "result" && path_id(r) == Some(id.as_str()))
            .map(|r| server.to_bench(at(r)))
            .fold(f64::NEG_INFINITY, f64::max);
        let log_requests = records
            .iter()
            .filter(|r| route(r) == "logs" && path_id(r) == Some(id.as_str()))
            .count() as u64;
        let got = e["logs"].as_array().cloned().unwrap_or_default();
        let (delivered, dropped, in_order, unexplained) = check_lines(&got, lines, 100);
        let batches = e["log_batches"].as_u64().unwrap_or(0).max(1);
        per_req.push((got.len() as f64) / batches as f64);
        cpu.push((c1 - c0) * 1000.0 * 100_000.0 / lines as f64);
        walls.push((result_at - sent) / 1000.0);
        delivered_all.push(delivered as f64);
        all_in_order &= in_order;
        dropped_total += dropped;
        unexplained_total += unexplained;
        requests_total += log_requests;
    }
    runner.stop()?;
    let p = Stats::of(&per_req).ok_or("no rounds")?;
    Ok(json!({
        "lines_printed_per_round": lines,
        "line_bytes": 100,
        "rounds": plan.log_rounds,
        "lines_per_request": p.json(),
        "lines_delivered": stats_json(&delivered_all),
        "lines_dropped_by_runner_total": dropped_total,
        "lines_missing_unexplained_total": unexplained_total,
        "in_order": all_in_order,
        "log_requests_total": requests_total,
        "runner_cpu_ms_per_100k_lines": stats_json(&cpu),
        "enqueue_to_result_s": stats_json(&walls),
        "target": {"lines_per_request": 100, "every_line_in_order": true},
        "pass": p.median >= 100.0 && all_in_order && dropped_total == 0 && unexplained_total == 0,
    }))
}

// ---------------------------------------------------------------------------
// 4 and 5. Idle: RSS after 60 s and CPU time over 60 s, several runners at once

fn bench_idle(plan: &Plan, bins: &Bins) -> Res<Value> {
    let server = DevServer::start(bins)?;
    let mut runners = Vec::new();
    for _ in 0..plan.idle_runners {
        let mut r = Runner::new(&server, bins, 1, None)?;
        r.start()?;
        runners.push(r);
    }
    for r in &mut runners {
        r.wait_registered(&server, Duration::from_secs(60))?;
    }
    // Let start-up finish (the first poll goes out right after registration).
    std::thread::sleep(Duration::from_secs(1));
    let seq0 = server.max_seq()?;
    let start: Vec<(Option<f64>, Option<u64>)> = runners
        .iter()
        .map(|r| (cpu_secs(r.pid()), sched_ns(r.pid())))
        .collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(plan.idle_secs));
    let window = t0.elapsed().as_secs_f64();
    let (mut rss, mut cpu_ticks, mut cpu_sched) = (Vec::new(), Vec::new(), Vec::new());
    for (r, (c0, s0)) in runners.iter().zip(&start) {
        let pid = r.pid();
        let (c1, s1) = (cpu_secs(pid), sched_ns(pid));
        rss.push(status_kib(pid, "VmRSS").ok_or("no VmRSS")? as f64 / 1024.0);
        if let (Some(a), Some(b)) = (c0, c1) {
            cpu_ticks.push(b - a);
        }
        if let (Some(a), Some(b)) = (s0, s1) {
            cpu_sched.push((b - a) as f64 / 1e9);
        }
    }
    let requests = server.requests_after(seq0)?;
    let polls = requests.iter().filter(|r| route(r) == "poll").count();
    for r in &mut runners {
        r.stop()?;
    }
    let rss_s = Stats::of(&rss).ok_or("no runners")?;
    // schedstat is precise (ns) and idle threads do not exit; the tick-based
    // figure is the cross-check.
    let cpu = Stats::of(if cpu_sched.len() == rss.len() {
        &cpu_sched
    } else {
        &cpu_ticks
    })
    .ok_or("no CPU figures")?;
    let scale = 60.0 / window;
    Ok(json!({
        "runners": runners.len(),
        "window_s": window,
        "rss_mib": rss_s.json(),
        "cpu_s_schedstat": stats_json(&cpu_sched),
        "cpu_s_ticks": stats_json(&cpu_ticks),
        "cpu_s_per_60s": cpu.median * scale,
        "polls_answered_in_window_all_runners": polls,
        "target": {"rss_mib": 6, "cpu_s_per_60s": 0.03},
        "pass_rss": rss_s.median <= 6.0,
        "pass_cpu": cpu.median * scale <= 0.03,
    }))
}

// ---------------------------------------------------------------------------
// 4. Peak RSS while the executor prints 1 GiB

fn bench_peak(plan: &Plan, bins: &Bins) -> Res<Value> {
    let server = DevServer::start(bins)?;
    let mut runner = Runner::new(&server, bins, 1, None)?;
    runner.start()?;
    runner.wait_registered(&server, Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_millis(300));
    let pid = runner.pid();
    let before = status_kib(pid, "VmHWM").unwrap_or(0);
    let lines = plan.peak_bytes / 101;
    let flow = json!({"print_lines": lines, "line_bytes": 100});
    let c0 = cpu_secs(pid).unwrap_or(0.0);
    let t0 = Instant::now();
    let (id, _, _) = server.enqueue(&flow, &Value::Null)?;
    server.wait_listed_completed(&id, Duration::from_secs(900), Duration::from_millis(100))?;
    let wall = t0.elapsed().as_secs_f64();
    let hwm = status_kib(pid, "VmHWM").ok_or("no VmHWM")?;
    let c1 = cpu_secs(pid).unwrap_or(0.0);
    // The execution's record holds every line delivered: fine to fetch for a
    // small run, gigabytes of JSON for the full one (delivery is measurement
    // 3's business).
    let delivery = if lines <= 1_000_000 {
        let e = server.execution(&id)?;
        let got = e["logs"].as_array().cloned().unwrap_or_default();
        let (delivered, dropped, in_order, unexplained) = check_lines(&got, lines, 100);
        json!({"lines_delivered": delivered, "lines_dropped_by_runner": dropped,
               "lines_missing_unexplained": unexplained, "in_order": in_order,
               "log_requests": e["log_batches"]})
    } else {
        json!("not checked for this size (see logs)")
    };
    runner.stop()?;
    let output_log = first_execution_dir(runner.path())
        .and_then(|d| fs::metadata(d.join("output.log")).ok())
        .map_or(0, |m| m.len());
    let peak = hwm as f64 / 1024.0;
    Ok(json!({
        "bytes_printed": lines * 101,
        "lines_printed": lines,
        "peak_rss_mib": peak,
        "rss_before_mib": before as f64 / 1024.0,
        "wall_s": wall,
        "runner_cpu_s": c1 - c0,
        "delivery": delivery,
        "output_log_bytes": output_log,
        "target": {"peak_rss_mib": 32},
        "pass": peak <= 32.0,
    }))
}

// ---------------------------------------------------------------------------
// 7. Start-up: exec to the first poll, with an existing identity

fn bench_startup(plan: &Plan, bins: &Bins) -> Res<Value> {
    let server = DevServer::start(bins)?;
    let mut runner = Runner::new(&server, bins, 1, None)?;
    runner.start()?;
    runner.wait_registered(&server, Duration::from_secs(60))?;
    runner.stop()?;
    let (mut to_poll, mut to_register) = (Vec::new(), Vec::new());
    for _ in 0..plan.startup_runs {
        // The next poll is answered at once (204), so it is in the request
        // log straight away; its at_ms is its arrival.
        server.post("/admin/poll-responses", &json!({"status": 204, "body": ""}))?;
        std::thread::sleep(Duration::from_millis(100));
        let spawned = runner.start()?;
        let since = spawned - 1.0;
        let deadline = Instant::now() + Duration::from_secs(30);
        let poll = loop {
            let records = server.requests_after(0)?;
            let fresh = |want: &str| {
                records
                    .iter()
                    .filter(|r| route(r) == want && server.to_bench(at(r)) >= since)
                    .map(|r| server.to_bench(at(r)))
                    .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.min(t))))
            };
            if let Some(p) = fresh("poll") {
                if let Some(reg) = fresh("register") {
                    to_register.push(reg - spawned);
                }
                break p;
            }
            if Instant::now() > deadline {
                return Err(format!("no poll within 30 s: {}", runner.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        to_poll.push(poll - spawned);
        runner.stop()?;
    }
    let s = Stats::of(&to_poll).ok_or("no starts")?;
    Ok(json!({
        "exec_to_first_poll_ms": s.json(),
        "exec_to_registration_ms": stats_json(&to_register),
        "clock": server.calibration_json(),
        "note": "includes executor discovery (two runs of the executor) and re-registration",
    }))
}

// ---------------------------------------------------------------------------
// Extra: first-line latency (from bench/output_rss.sh)

fn bench_first_line(bins: &Bins) -> Res<Value> {
    let server = DevServer::start(bins)?;
    let mut runner = Runner::new(&server, bins, 1, None)?;
    runner.start()?;
    runner.wait_registered(&server, Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_millis(300));
    let mut lat = Vec::new();
    for _ in 0..3 {
        let seq0 = server.max_seq()?;
        let flow = json!({"print_lines": 1, "line_bytes": 20, "sleep_ms": 1500});
        let (id, _, _) = server.enqueue(&flow, &Value::Null)?;
        server.wait_completed(&id, Duration::from_secs(30), Duration::from_millis(10))?;
        let records = server.requests_after(seq0)?;
        let when = |want: &str| {
            records
                .iter()
                .find(|r| route(r) == want && path_id(r) == Some(id.as_str()))
                .map(at)
        };
        if let (Some(claim), Some(logs)) = (when("state"), when("logs")) {
            lat.push(logs - claim);
        }
    }
    runner.stop()?;
    Ok(json!({
        "claim_to_first_line_ms": stats_json(&lat),
        "note": "the executor prints one line, then sleeps 1.5 s: the partial batch goes out after log_flush_ms (500 by default)",
        "target_ms": "log_flush_ms (500) + one request",
    }))
}

// ---------------------------------------------------------------------------
// The table

struct Row {
    name: &'static str,
    value: String,
    target: &'static str,
    pass: Option<bool>,
    go: &'static str,
    vs_go: String,
}

fn f(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_f64()
}

/// ", 1 round stalled: 320/s without its stalled result" when a round had
/// a result arriving more than 1 s after all the others.
fn stall_note(t: &Value) -> String {
    match t["rounds_with_a_stalled_result"].as_u64() {
        Some(n) if n > 0 => format!(
            "; {n} round(s) with a stalled result: {:.0}/s without it",
            f(t, &["runner_per_s_without_stalled_results", "median"]).unwrap_or(f64::NAN)
        ),
        _ => String::new(),
    }
}

fn table(results: &serde_json::Map<String, Value>) -> Vec<Row> {
    let mut rows = Vec::new();
    let get = |k: &str| results.get(k).filter(|v| v.get("error").is_none());
    if let Some(o) = get("overhead") {
        let (med, p95) = (
            f(o, &["overhead_ms", "median"]).unwrap_or(f64::NAN),
            f(o, &["overhead_ms", "p95"]).unwrap_or(f64::NAN),
        );
        let total = f(o, &["enqueue_to_result_ms", "median"]).unwrap_or(f64::NAN);
        rows.push(Row {
            name: "1. overhead per execution",
            value: format!(
                "median {med:.2} ms, p5 {:.2}, p95 {p95:.2} (n={})",
                f(o, &["overhead_ms", "p5"]).unwrap_or(f64::NAN),
                f(o, &["overhead_ms", "n"]).unwrap_or(0.0)
            ),
            target: "median <= 5 ms, p95 <= 20 ms",
            pass: o["pass"].as_bool(),
            go: "5.06 s enqueue->result",
            vs_go: format!(
                "enqueue->result {total:.1} ms: {:.0}x faster",
                5060.0 / total
            ),
        });
        rows.push(Row {
            name: "   runner CPU per execution",
            value: format!(
                "{:.2} ms (max_concurrent 1)",
                o["runner_cpu_ms_per_execution"]
                    .as_f64()
                    .unwrap_or(f64::NAN)
            ),
            target: "-",
            pass: None,
            go: "18.8 ms",
            vs_go: format!(
                "{:.1}x less",
                18.8 / o["runner_cpu_ms_per_execution"]
                    .as_f64()
                    .unwrap_or(f64::NAN)
            ),
        });
    }
    if let Some(o) = get("overhead_tmpfs") {
        rows.push(Row {
            name: "   same, work dirs on tmpfs",
            value: format!(
                "median {:.2} ms, p95 {:.2}; runner CPU {:.2} ms/execution",
                f(o, &["overhead_ms", "median"]).unwrap_or(f64::NAN),
                f(o, &["overhead_ms", "p95"]).unwrap_or(f64::NAN),
                o["runner_cpu_ms_per_execution"]
                    .as_f64()
                    .unwrap_or(f64::NAN)
            ),
            target: "(supplementary)",
            pass: o["pass"].as_bool(),
            go: "-",
            vs_go: String::new(),
        });
    }
    if let Some(t) = get("throughput") {
        let med = f(t, &["runner_per_s", "median"]).unwrap_or(f64::NAN);
        rows.push(Row {
            name: "2. throughput, 8 slots",
            value: format!(
                "{med:.0}/s (min {:.0}, max {:.0}, {} rounds of {}){}",
                f(t, &["runner_per_s", "min"]).unwrap_or(f64::NAN),
                f(t, &["runner_per_s", "max"]).unwrap_or(f64::NAN),
                f(t, &["runner_per_s", "n"]).unwrap_or(0.0),
                t["executions_per_round"],
                stall_note(t)
            ),
            target: ">= 200/s",
            pass: t["pass"].as_bool(),
            go: "1.58/s",
            vs_go: format!("{:.0}x", med / 1.58),
        });
        rows.push(Row {
            name: "   machine limit (same work)",
            value: format!(
                "{:.0}/s; runner/limit {:.2} (min {:.2}, max {:.2}); {:.2} signatures/execution",
                f(t, &["limit_per_s", "median"]).unwrap_or(f64::NAN),
                f(t, &["ratio_runner_over_limit", "median"]).unwrap_or(f64::NAN),
                f(t, &["ratio_runner_over_limit", "min"]).unwrap_or(f64::NAN),
                f(t, &["ratio_runner_over_limit", "max"]).unwrap_or(f64::NAN),
                f(t, &["signed_requests_per_execution", "median"]).unwrap_or(f64::NAN)
            ),
            target: "-",
            pass: None,
            go: "-",
            vs_go: String::new(),
        });
        let cpu = f(t, &["runner_cpu_ms_per_execution", "median"]).unwrap_or(f64::NAN);
        rows.push(Row {
            name: "   runner CPU per execution",
            value: format!("{cpu:.2} ms (8 slots)"),
            target: "-",
            pass: None,
            go: "18.8 ms",
            vs_go: format!("{:.1}x less", 18.8 / cpu),
        });
    }
    if let Some(t) = get("throughput_tmpfs") {
        rows.push(Row {
            name: "   same, work dirs on tmpfs",
            value: format!(
                "{:.0}/s (min {:.0}, max {:.0}){}; limit {:.0}/s; ratio {:.2}; runner CPU {:.2} ms/execution",
                f(t, &["runner_per_s", "median"]).unwrap_or(f64::NAN),
                f(t, &["runner_per_s", "min"]).unwrap_or(f64::NAN),
                f(t, &["runner_per_s", "max"]).unwrap_or(f64::NAN),
                stall_note(t),
                f(t, &["limit_per_s", "median"]).unwrap_or(f64::NAN),
                f(t, &["ratio_runner_over_limit", "median"]).unwrap_or(f64::NAN),
                f(t, &["runner_cpu_ms_per_execution", "median"]).unwrap_or(f64::NAN)
            ),
            target: "(supplementary)",
            pass: t["pass"].as_bool(),
            go: "-",
            vs_go: String::new(),
        });
    }
    if let Some(l) = get("logs") {
        let per = f(l, &["lines_per_request", "median"]).unwrap_or(f64::NAN);
        rows.push(Row {
            name: "3. log lines per request",
            value: format!(
                "{per:.1} (min {:.1})",
                f(l, &["lines_per_request", "min"]).unwrap_or(f64::NAN)
            ),
            target: ">= 100",
            pass: Some(per >= 100.0),
            go: "1",
            vs_go: format!("{per:.0}x fewer requests"),
        });
        let dropped = l["lines_dropped_by_runner_total"].as_u64().unwrap_or(0);
        let unexplained = l["lines_missing_unexplained_total"].as_u64().unwrap_or(0);
        let in_order = l["in_order"].as_bool().unwrap_or(false);
        rows.push(Row {
            name: "   every line, in order",
            value: format!(
                "in order: {}; delivered median {:.0} of {}; dropped (marked) {dropped}; unexplained {unexplained}",
                if in_order { "yes" } else { "NO" },
                f(l, &["lines_delivered", "median"]).unwrap_or(f64::NAN),
                l["lines_printed_per_round"]
            ),
            target: "all, in order",
            pass: Some(in_order && dropped == 0 && unexplained == 0),
            go: "all held in memory",
            vs_go: String::new(),
        });
        rows.push(Row {
            name: "   runner CPU per 100k lines",
            value: format!(
                "{:.0} ms (min {:.0}, max {:.0})",
                f(l, &["runner_cpu_ms_per_100k_lines", "median"]).unwrap_or(f64::NAN),
                f(l, &["runner_cpu_ms_per_100k_lines", "min"]).unwrap_or(f64::NAN),
                f(l, &["runner_cpu_ms_per_100k_lines", "max"]).unwrap_or(f64::NAN)
            ),
            target: "report",
            pass: None,
            go: "-",
            vs_go: String::new(),
        });
    }
    if let Some(i) = get("idle") {
        let rss = f(i, &["rss_mib", "median"]).unwrap_or(f64::NAN);
        rows.push(Row {
            name: "4. idle RSS after 60 s",
            value: format!(
                "{rss:.2} MiB (min {:.2}, max {:.2}, {} runners)",
                f(i, &["rss_mib", "min"]).unwrap_or(f64::NAN),
                f(i, &["rss_mib", "max"]).unwrap_or(f64::NAN),
                i["runners"]
            ),
            target: "<= 6 MiB",
            pass: i["pass_rss"].as_bool(),
            go: "11.3 MiB",
            vs_go: format!("{:.1}x less", 11.3 / rss),
        });
    }
    if let Some(p) = get("peak") {
        let peak = p["peak_rss_mib"].as_f64().unwrap_or(f64::NAN);
        rows.push(Row {
            name: "4. peak RSS, executor prints 1 GiB",
            value: format!(
                "{peak:.2} MiB ({:.0} MiB printed in {:.1} s)",
                p["bytes_printed"].as_f64().unwrap_or(0.0) / 1048576.0,
                p["wall_s"].as_f64().unwrap_or(f64::NAN)
            ),
            target: "<= 32 MiB",
            pass: p["pass"].as_bool(),
            go: "18.6 MiB for 20,000 lines",
            vs_go: "Go keeps all output in memory".into(),
        });
    }
    if let Some(i) = get("idle") {
        let cpu = i["cpu_s_per_60s"].as_f64().unwrap_or(f64::NAN);
        rows.push(Row {
            name: "5. idle CPU per 60 s",
            value: format!(
                "{cpu:.4} s (min {:.4}, max {:.4})",
                f(i, &["cpu_s_schedstat", "min"]).unwrap_or(f64::NAN),
                f(i, &["cpu_s_schedstat", "max"]).unwrap_or(f64::NAN)
            ),
            target: "<= 0.03 s",
            pass: i["pass_cpu"].as_bool(),
            go: "-",
            vs_go: String::new(),
        });
    }
    if let Some(s) = get("signing") {
        rows.push(Row {
            name: "6. RSA-2048 PSS signatures/s",
            value: format!(
                "ring {:.0}/s, rsa crate {:.0}/s",
                f(s, &["ring_per_s", "median"]).unwrap_or(f64::NAN),
                f(s, &["rsa_crate_per_s", "median"]).unwrap_or(f64::NAN)
            ),
            target: "report",
            pass: None,
            go: "-",
            vs_go: format!(
                "ring/rsa {:.2}x",
                f(s, &["ratio_ring_over_rsa", "median"]).unwrap_or(f64::NAN)
            ),
        });
    }
    if let Some(s) = get("startup") {
        rows.push(Row {
            name: "7. start-up, exec to first poll",
            value: format!(
                "median {:.1} ms (min {:.1}, max {:.1}, n={})",
                f(s, &["exec_to_first_poll_ms", "median"]).unwrap_or(f64::NAN),
                f(s, &["exec_to_first_poll_ms", "min"]).unwrap_or(f64::NAN),
                f(s, &["exec_to_first_poll_ms", "max"]).unwrap_or(f64::NAN),
                f(s, &["exec_to_first_poll_ms", "n"]).unwrap_or(0.0)
            ),
            target: "report",
            pass: None,
            go: "-",
            vs_go: String::new(),
        });
    }
    if let Some(x) = get("first_line") {
        rows.push(Row {
            name: "   extra: claim to first log line",
            value: format!(
                "median {:.0} ms",
                f(x, &["claim_to_first_line_ms", "median"]).unwrap_or(f64::NAN)
            ),
            target: "~ log_flush_ms 500 + 1 request",
            pass: None,
            go: "-",
            vs_go: String::new(),
        });
    }
    if let Some(x) = get("fs") {
        rows.push(Row {
            name: "   context: create a small file",
            value: format!(
                "{:.0} us in the temp dir ({}), {:.0} us on tmpfs",
                f(x, &["temp_dir", "us_per_file", "median"]).unwrap_or(f64::NAN),
                x["temp_dir"]["dir_fs"].as_str().unwrap_or("?"),
                f(x, &["tmpfs", "us_per_file", "median"]).unwrap_or(f64::NAN)
            ),
            target: "-",
            pass: None,
            go: "-",
            vs_go: String::new(),
        });
    }
    for (k, v) in results {
        if let Some(e) = v.get("error") {
            rows.push(Row {
                name: "ERROR",
                value: format!("{k}: {e}"),
                target: "-",
                pass: Some(false),
                go: "-",
                vs_go: String::new(),
            });
        }
    }
    rows
}

fn print_table(rows: &[Row]) {
    let header = [
        "measurement",
        "value",
        "target",
        "pass",
        "Go runner",
        "vs Go",
    ];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.name.to_string(),
                r.value.clone(),
                r.target.to_string(),
                match r.pass {
                    Some(true) => "PASS".into(),
                    Some(false) => "MISS".into(),
                    None => "-".into(),
                },
                r.go.to_string(),
                r.vs_go.clone(),
            ]
        })
        .collect();
    println!();
    println!("| {} |", header.join(" | "));
    println!("|{}|", ["---"; 6].join("|"));
    for c in &cells {
        println!("| {} |", c.join(" | "));
    }
    println!();
}

// ---------------------------------------------------------------------------

fn main() {
    // `cargo bench` passes `--bench`. `cargo test --all-targets` (that is,
    // `make test`) runs this binary without it: benchmarks are not tests, so
    // it does nothing then (it would otherwise take minutes, in a debug
    // build, and overwrite bench/results.json with meaningless figures).
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("bench: not run (use `make bench` or `cargo bench --bench suite`)");
        return;
    }
    let quick = std::env::var("FLO_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let only: Option<HashSet<String>> = std::env::var("FLO_BENCH_ONLY")
        .ok()
        .filter(|v| !v.is_empty())
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
    let wanted = |name: &str| only.as_ref().is_none_or(|o| o.contains(name));
    let plan = Plan::new(quick);
    now_ms();
    let started = Instant::now();
    let load_at_start = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let bins = match bins() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("bench: generating an RSA-2048 key");
    let key = match RsaPrivateKey::new(&mut rand::thread_rng(), 2048) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("bench: key generation failed: {e}");
            std::process::exit(1);
        }
    };
    let signer = Signer::new(&key);

    let mut results = serde_json::Map::new();
    let mut run = |name: &str, f: &mut dyn FnMut() -> Res<Value>| {
        if !wanted(name) {
            return;
        }
        eprintln!("bench: {name} ...");
        let t0 = Instant::now();
        let v = match f() {
            Ok(mut v) => {
                v["bench_seconds"] = json!(t0.elapsed().as_secs_f64());
                v
            }
            Err(e) => {
                eprintln!("bench: {name} FAILED: {e}");
                json!({"error": e})
            }
        };
        eprintln!("bench: {name} done in {:.1} s", t0.elapsed().as_secs_f64());
        results.insert(name.to_string(), v);
    };
    let shm = tmpfs_dir();
    run("fs", &mut || bench_fs(shm.as_deref()));
    run("signing", &mut || bench_signing(&plan, &key));
    run("overhead", &mut || bench_overhead(&plan, &bins, None));
    if let Some(shm) = &shm {
        run("overhead_tmpfs", &mut || {
            bench_overhead(&plan, &bins, Some(shm))
        });
    }
    run("throughput", &mut || {
        bench_throughput(&plan, &bins, &signer, None)
    });
    if let Some(shm) = &shm {
        run("throughput_tmpfs", &mut || {
            bench_throughput(&plan, &bins, &signer, Some(shm))
        });
    }
    run("logs", &mut || bench_logs(&plan, &bins));
    run("startup", &mut || bench_startup(&plan, &bins));
    run("first_line", &mut || bench_first_line(&bins));
    run("idle", &mut || bench_idle(&plan, &bins));
    run("peak", &mut || bench_peak(&plan, &bins));

    if std::env::var("FLO_BENCH_KEEP").is_ok_and(|v| !v.is_empty() && v != "0") {
        let kept = GRAVEYARD.lock().map(|g| g.len()).unwrap_or(0);
        eprintln!("bench: FLO_BENCH_KEEP: {kept} flo-bench-* directories kept");
    } else {
        remove_temp_dirs();
    }
    let rows = table(&results);
    print_table(&rows);
    let failed = results.values().any(|v| v.get("error").is_some());
    let out = json!({
        "machine": machine(),
        "loadavg_at_start": load_at_start.trim(),
        "quick": plan.quick,
        "only": only.as_ref().map(|o| o.iter().cloned().collect::<Vec<_>>()),
        "suite_seconds": started.elapsed().as_secs_f64(),
        "table": rows.iter().map(|r| json!({
            "measurement": r.name.trim(), "value": r.value, "target": r.target,
            "pass": r.pass, "go_runner": r.go, "vs_go": r.vs_go,
        })).collect::<Vec<_>>(),
        "results": results,
    });
    let name = if plan.quick || only.is_some() {
        "results-partial.json"
    } else {
        "results.json"
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("bench")
        .join(name);
    match serde_json::to_vec_pretty(&out).map(|b| fs::write(&path, b)) {
        Ok(Ok(())) => eprintln!("bench: figures written to {}", path.display()),
        _ => eprintln!("bench: cannot write {}", path.display()),
    }
    eprintln!(
        "bench: suite finished in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    if failed {
        std::process::exit(1);
    }
}
