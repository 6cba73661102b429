//! The executor subprocess (PROTOCOL.md §7): discovery at start-up, the exact
//! argument list, and one supervised run per execution (the supervision
//! itself, processes and pipes, is `supervise`'s).

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use serde_json::Value;

use crate::cancel::{StopReason, Watcher};
use crate::config::Config;
use crate::identity::Identity;
use crate::output::Output;
use crate::sandbox::{Plan, SandboxError};
use crate::supervise::{self, ProcessGroup, Readers, Spawned, DRAIN_TIMEOUT};
use crate::workspace::{Job, Workspace, CONTEXT_FILE, FLOW_FILE, TRIGGER_FILE};

pub const MANIFEST_FILE: &str = "manifest.json";
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error(
        "executor {program:?} cannot run `{args}`: {source} (check execution.executable_name)"
    )]
    Run {
        program: String,
        args: String,
        #[source]
        source: BoundedError,
    },
    /// It ran and failed; `detail` is the last line of its stderr.
    #[error("executor {program:?} cannot run `{args}`: {} (check execution.executable_name)", failed(.status, .detail))]
    Failed {
        program: String,
        args: String,
        status: ExitStatus,
        detail: String,
    },
    #[error("executor {program:?} wrote no usable {path}: {source}")]
    ManifestRead {
        program: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("executor {program:?} wrote no usable {path}: {source}")]
    ManifestJson {
        program: String,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// `exit status: 2 usage: ...`, or only the status when stderr was empty.
fn failed(status: &ExitStatus, detail: &str) -> String {
    format!("{status} {detail}").trim().to_string()
}

/// Why a run of the executor has no exit status.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("not started: cannot sandbox the executor: {0}")]
    Sandbox(#[source] SandboxError),
    #[error("cannot start executor {program:?}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("waiting for the executor failed: {0}")]
    Wait(#[source] supervise::ReapError),
}

/// Why a short supervised command gave no output.
#[derive(Debug, thiserror::Error)]
pub enum BoundedError {
    #[error("{0}")]
    Spawn(#[source] io::Error),
    #[error("{0}")]
    Readers(#[source] io::Error),
    #[error("did not finish within {} s", .0.as_secs())]
    TimedOut(Duration),
    #[error("{0}")]
    Reap(#[source] supervise::ReapError),
}

/// What the executor says about itself, sent at registration.
pub struct Discovery {
    /// Its stdout of `--version`, exactly as printed.
    pub version: String,
    pub manifest: Value,
}

fn command(config: &Config) -> Command {
    let mut cmd = Command::new(&config.execution.program);
    cmd.args(&config.execution.leading_args);
    cmd
}

/// Runs `<executor> --version` and `<executor> --manifest manifest.json` in
/// the execution directory. Either failing fails start-up.
pub fn discover(config: &Config) -> Result<Discovery, DiscoveryError> {
    let dir = &config.execution.execution_directory;
    let program = config.execution.executable_name.clone();
    let run = |args: &[&str]| -> Result<Vec<u8>, DiscoveryError> {
        let mut cmd = command(config);
        cmd.args(args).current_dir(dir);
        let (status, stdout, stderr) =
            run_bounded(cmd, DISCOVERY_TIMEOUT).map_err(|source| DiscoveryError::Run {
                program: program.clone(),
                args: args.join(" "),
                source,
            })?;
        if !status.success() {
            let stderr = String::from_utf8_lossy(&stderr);
            return Err(DiscoveryError::Failed {
                program: program.clone(),
                args: args.join(" "),
                status,
                detail: stderr.trim().lines().last().unwrap_or("").to_string(),
            });
        }
        Ok(stdout)
    };
    let version = String::from_utf8_lossy(&run(&["--version"])?).into_owned();
    run(&["--manifest", MANIFEST_FILE])?;
    let path = dir.join(MANIFEST_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(source) => {
            return Err(DiscoveryError::ManifestRead {
                program,
                path,
                source,
            })
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(manifest) => Ok(Discovery { version, manifest }),
        Err(source) => Err(DiscoveryError::ManifestJson {
            program,
            path,
            source,
        }),
    }
}

/// Runs a short command with a deadline, collecting (bounded) output.
/// Supervised like an execution: whatever it leaves running is killed, and
/// its pipes are given up after the drain time even if something holds them.
fn run_bounded(
    cmd: Command,
    limit: Duration,
) -> Result<(ExitStatus, Vec<u8>, Vec<u8>), BoundedError> {
    let started =
        ProcessGroup::spawn(cmd, "executor discovery".into(), None).map_err(BoundedError::Spawn)?;
    let group = started.group;
    let mut readers = Readers::new("executor discovery").map_err(BoundedError::Readers)?;
    let out = collect(&mut readers, "stdout", started.stdout, 1 << 20);
    let err = collect(&mut readers, "stderr", started.stderr, 64 << 10);
    let exited = group.wait_exit(Some(limit));
    if !exited {
        group.signal(Signal::KILL);
        group.wait_exit(None);
    }
    let finished = group.finish();
    readers.finish(Instant::now() + DRAIN_TIMEOUT);
    if !exited {
        return Err(BoundedError::TimedOut(limit));
    }
    let status = finished.status.map_err(BoundedError::Reap)?;
    let take = |c: Arc<Mutex<Vec<u8>>>| std::mem::take(&mut *crate::sync::lock(&c));
    Ok((status, take(out), take(err)))
}

/// Reads `pipe` to its end, keeping the first `cap` bytes exactly as written
/// and draining the rest so the child never blocks on a full pipe.
fn collect(
    readers: &mut Readers,
    name: &'static str,
    pipe: Option<std::os::fd::OwnedFd>,
    cap: u64,
) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    if let Some(pipe) = pipe {
        let kept = buf.clone();
        readers.spawn(name, pipe, move |source| {
            use std::io::Read;
            let mut bytes = Vec::new();
            let mut limited = source.take(cap);
            let _ = limited.read_to_end(&mut bytes);
            *crate::sync::lock(&kept) = bytes;
            let _ = io::copy(&mut limited.into_inner(), &mut io::sink());
        });
    }
    buf
}

/// The executor's arguments, in the order of PROTOCOL.md §7 (after the
/// leading words of `executable_name`).
pub fn arguments(config: &Config, identity: &Identity, job: &Job, ws: &Workspace) -> Vec<OsString> {
    let e = &job.pending.execution;
    let mut args: Vec<OsString> = config
        .execution
        .leading_args
        .iter()
        .map(OsString::from)
        .collect();
    let mut push = |a: &str, b: &str| {
        args.push(a.into());
        args.push(b.into());
    };
    push("--output", "json");
    push("--path", FLOW_FILE);
    push("--entry", e.entry_node_id.as_deref().unwrap_or(""));
    push("--id", job.execution_id.as_str());
    push("--flow", job.flo_id.as_str());
    push("--api", &config.runner.url);
    push("--runner", &config.runner.name);
    if let Some(env) = &job.pending.flo.environment_id {
        push("--environment", env);
    }
    if ws.trigger_data {
        push("--trigger-data", TRIGGER_FILE);
    }
    // Always written by the workspace (§5 passes it "when written").
    push("--context", CONTEXT_FILE);
    if config.execution.pass_key {
        args.push("--key".into());
        args.push(identity.key_path.clone().into_os_string());
    }
    args
}

/// How a run ended.
pub struct RunOutcome {
    /// `Err` when the executor could not be started at all, or its exit
    /// could not be learned.
    pub status: Result<ExitStatus, RunError>,
    pub stopped: Option<StopReason>,
}

/// One run of the executor: what [`run`] starts, where, for which job.
pub struct Launch<'a> {
    pub config: &'a Config,
    pub sandbox: &'a Plan,
    /// The execution directory, its working directory.
    pub dir: &'a Path,
    /// From [`arguments`].
    pub args: Vec<OsString>,
    pub job: &'a Job,
    /// Registered with once started: it may stop the run.
    pub watcher: &'a Watcher,
}

/// Starts the executor supervised (`supervise::ProcessGroup`) and follows
/// it until it exits: all output goes to `on_output` (from two reader
/// threads), the watcher may stop it, and everything it leaves running is
/// killed at the end and named in a last output line.
pub fn run(
    launch: Launch<'_>,
    on_spawn: impl FnOnce(&Spawned),
    on_output: impl Fn(Output) + Send + Sync + 'static,
) -> RunOutcome {
    let id = &launch.job.execution_id;
    let label = format!("execution {id}");
    let started = match start(&launch, &label) {
        Ok(s) => s,
        Err(e) => {
            return RunOutcome {
                status: Err(e),
                stopped: None,
            }
        }
    };
    let group = started.group;
    on_spawn(&group.spawned());
    launch
        .watcher
        .register(id, group.clone(), launch.config.execution.timeout);

    let on_output = Arc::new(on_output);
    let pipes: Vec<_> = [("stdout", started.stdout), ("stderr", started.stderr)]
        .into_iter()
        .filter_map(|(name, fd)| fd.map(|fd| (name, fd)))
        .collect();
    let readers = match Readers::lines(&label, pipes, on_output.clone()) {
        Ok(r) => Some(r),
        Err(e) => {
            log::error!("{label}: cannot read its output ({e}); its pipes are closed");
            None
        }
    };

    // Exited, not reaped: its process group id stays ours while leftovers
    // are found and killed; `finish` reaps it after.
    group.wait_exit(None);
    let stopped = launch.watcher.deregister(id);
    let finished = group.finish();
    let status = finished.status.map_err(RunError::Wait);
    if let Some(readers) = readers {
        drain(&label, readers);
    }
    // After the readers: the last line of the output, in the result's logs.
    if let Some(line) = supervise::leftover_line(&finished.leftovers) {
        on_output(Output::Line(line));
    }
    RunOutcome { status, stopped }
}

/// The executor's command, sandboxed, spawned under supervision.
fn start(launch: &Launch<'_>, label: &str) -> Result<supervise::Started, RunError> {
    let mut cmd = Command::new(&launch.config.execution.program);
    cmd.args(&launch.args).current_dir(launch.dir);
    // The sandbox (environment, Landlock, run_as) before supervision adds
    // its part at spawn (stdio, process group, cgroup, execution marker).
    crate::sandbox::apply(&mut cmd, launch.sandbox, launch.dir).map_err(RunError::Sandbox)?;
    let marker = launch.job.execution_id.as_str();
    ProcessGroup::spawn(cmd, label.to_string(), Some(marker)).map_err(|source| RunError::Spawn {
        program: launch.config.execution.executable_name.clone(),
        source,
    })
}

/// Waits for the readers until the drain time has passed.
fn drain(label: &str, readers: Readers) {
    if !readers.finish(Instant::now() + DRAIN_TIMEOUT) {
        log::warn!(
            "{label}: executor output still open {} s after it exited and its leftovers were killed (a process out of reach holds it); stopped reading",
            DRAIN_TIMEOUT.as_secs()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        cmd
    }

    #[test]
    fn a_bounded_run_returns_the_output_of_a_quick_command() {
        let (status, out, err) =
            run_bounded(sh("echo v1; echo oops >&2"), DISCOVERY_TIMEOUT).expect("runs");
        assert!(status.success());
        assert_eq!(out, b"v1\n");
        assert_eq!(err, b"oops\n");
    }

    #[test]
    fn a_hung_bounded_run_times_out_and_its_whole_group_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!("echo $$ > {}; sleep 30 & sleep 30", pid_file.display());
        let e = run_bounded(sh(&script), Duration::from_millis(500)).expect_err("hangs");
        assert!(matches!(e, BoundedError::TimedOut(_)), "{e}");
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let group = supervise::pid_of(pid).unwrap();
        // The leader is reaped; the backgrounded sleep was killed with it.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while rustix::process::test_kill_process_group(group).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "group {pid} still alive"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
