//! The noop executor run by the bench itself, as the runner runs it: the
//! same argument list and input files (for "executor alone" and the
//! machine's limit), and the flow every no-op execution uses.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use flo_testkit::noop_executor_path;
use serde_json::{json, Value};

use crate::Res;

/// The files of one execution directory, as the runner writes them.
#[derive(Clone)]
pub struct ExecFiles {
    flow: Vec<u8>,
    trigger: Vec<u8>,
    context: Vec<u8>,
}

impl ExecFiles {
    pub fn representative() -> Self {
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
    pub fn from_dir(dir: &Path) -> Option<Self> {
        Some(ExecFiles {
            flow: fs::read(dir.join("execution.flow")).ok()?,
            trigger: fs::read(dir.join("trigger-data.json")).ok()?,
            context: fs::read(dir.join("context.json")).ok()?,
        })
    }
}

/// The noop executor's path, found once (the limit loop spawns it thousands
/// of times).
pub fn noop() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(noop_executor_path)
}

const NOOP_FLOW: &str = r#"{"noop":true}"#;

pub fn noop_flow() -> Value {
    serde_json::from_str(NOOP_FLOW).unwrap_or(Value::Null)
}

pub fn noop_trigger() -> Value {
    json!({"bench": 1})
}

/// Prepares `{root}/{flo}/{id}` as the runner does (mode 0750, the three
/// input files at 0600), runs the executor with the runner's argument list,
/// reaps it and reads `state.json`. Returns the time from spawn to reap, ms.
pub fn run_directly(root: &Path, n: usize, files: &ExecFiles) -> Res<f64> {
    let flo = format!("flo-{}", n % 16);
    let id = format!("exec-{n:08}");
    let dir = root.join(&flo).join(&id);
    prepare(&dir, files)?;
    let mut cmd = command(root, &dir, &flo, &id);
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

/// The execution directory with its input files, as the runner makes them.
fn prepare(dir: &Path, files: &ExecFiles) -> Res<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .map_err(|e| e.to_string())?;
    for (name, bytes) in [
        ("execution.flow", &files.flow),
        ("trigger-data.json", &files.trigger),
        ("context.json", &files.context),
    ] {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(dir.join(name))
            .map_err(|e| e.to_string())?;
        f.write_all(bytes).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The executor's command line as the runner's, output piped, in a process
/// group of its own.
fn command(root: &Path, dir: &Path, flo: &str, id: &str) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(noop());
    cmd.args([
        "--output",
        "json",
        "--path",
        "execution.flow",
        "--entry",
        "",
    ])
    .args(["--id", id, "--flow", flo, "--api", "http://127.0.0.1:1"])
    .args([
        "--runner",
        "bench-runner",
        "--trigger-data",
        "trigger-data.json",
    ])
    .args(["--context", "context.json", "--key"])
    .arg(root.join("flomation-runner.pem"))
    .current_dir(dir)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    cmd
}

/// `{runner}/executions/{flo}/{id}` of some execution (the executions
/// directory also holds the executor's `manifest.json`).
pub fn first_execution_dir(runner_dir: &Path) -> Option<PathBuf> {
    let first_subdir = |dir: &Path| {
        fs::read_dir(dir)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.is_dir())
    };
    first_subdir(&first_subdir(&runner_dir.join("executions"))?)
}
