//! The executor subprocess (PROTOCOL.md §7): discovery at start-up, the exact
//! argument list, and one supervised run per execution.

use std::ffi::OsString;
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cancel::{self, StopReason, Watcher};
use crate::config::Config;
use crate::identity::Identity;
use crate::workspace::{Job, Workspace, CONTEXT_FILE, FLOW_FILE, TRIGGER_FILE};

pub const MANIFEST_FILE: &str = "manifest.json";
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for output pipes to close after the executor exited and
/// its leftovers were killed (a grandchild that escaped the group may hold them).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("executor {program:?} cannot run `{args}`: {why} (check execution.executable_name)")]
    Run {
        program: String,
        args: String,
        why: String,
    },
    #[error("executor {program:?} wrote no usable {path}: {why}")]
    Manifest {
        program: String,
        path: String,
        why: String,
    },
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
        let fail = |why: String| DiscoveryError::Run {
            program: program.clone(),
            args: args.join(" "),
            why,
        };
        let mut cmd = command(config);
        cmd.args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (status, stdout, stderr) =
            run_bounded(cmd, DISCOVERY_TIMEOUT).map_err(|e| fail(e.to_string()))?;
        if !status.success() {
            let stderr = String::from_utf8_lossy(&stderr);
            let detail = stderr.trim().lines().last().unwrap_or("").to_string();
            return Err(fail(format!("{status} {detail}").trim().to_string()));
        }
        Ok(stdout)
    };
    let version = String::from_utf8_lossy(&run(&["--version"])?).into_owned();
    run(&["--manifest", MANIFEST_FILE])?;
    let path = dir.join(MANIFEST_FILE);
    let manifest_err = |why: String| DiscoveryError::Manifest {
        program: program.clone(),
        path: path.display().to_string(),
        why,
    };
    let bytes = std::fs::read(&path).map_err(|e| manifest_err(e.to_string()))?;
    let manifest = serde_json::from_slice(&bytes).map_err(|e| manifest_err(e.to_string()))?;
    Ok(Discovery { version, manifest })
}

/// Runs a short command with a deadline, collecting (bounded) output.
fn run_bounded(mut cmd: Command, limit: Duration) -> io::Result<(ExitStatus, Vec<u8>, Vec<u8>)> {
    cmd.process_group(0);
    let mut child = cmd.spawn()?;
    let out = child.stdout.take().map(|s| collect(s, 1 << 20));
    let err = child.stderr.take().map(|s| collect(s, 64 << 10));
    // A blocking wait on its own thread, so a quick executor is seen at once
    // (a polling loop made each discovery run cost at least one sleep).
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = match rx.recv_timeout(limit) {
        Ok(status) => status?,
        Err(_) => {
            cancel::kill_leftovers(pid);
            let _ = rx.recv();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("did not finish within {} s", limit.as_secs()),
            ));
        }
    };
    cancel::kill_leftovers(pid);
    let join =
        |h: Option<thread::JoinHandle<Vec<u8>>>| h.and_then(|h| h.join().ok()).unwrap_or_default();
    Ok((status, join(out), join(err)))
}

fn collect<R: Read + Send + 'static>(source: R, cap: u64) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let mut limited = source.take(cap);
        let _ = limited.read_to_end(&mut buf);
        // Keep draining so the child never blocks on a full pipe.
        let _ = io::copy(&mut limited.into_inner(), &mut io::sink());
        buf
    })
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
    /// `Err` when the executor could not be started at all.
    pub status: Result<ExitStatus, String>,
    pub stopped: Option<StopReason>,
}

/// Starts the executor in its own process group and supervises it until it
/// exits: all output goes to `on_output` (from two reader threads), the
/// watcher may stop it, and leftovers in its group are killed at the end.
#[allow(clippy::too_many_arguments)]
pub fn run(
    config: &Config,
    sandbox: &crate::sandbox::Plan,
    dir: &Path,
    args: Vec<OsString>,
    job: &Job,
    watcher: &Watcher,
    on_spawn: impl FnOnce(u32),
    on_output: impl Fn(crate::output::Output) + Send + Sync + 'static,
) -> RunOutcome {
    let mut cmd = Command::new(&config.execution.program);
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Err(e) = crate::sandbox::apply(&mut cmd, sandbox, dir) {
        let status = Err(format!("not started: cannot sandbox the executor: {e}"));
        return RunOutcome {
            status,
            stopped: None,
        };
    }
    let mut child: Child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return RunOutcome {
                status: Err(format!(
                    "cannot start executor {:?}: {e}",
                    config.execution.executable_name
                )),
                stopped: None,
            }
        }
    };
    let pid = child.id();
    on_spawn(pid);
    watcher.register(&job.execution_id, pid, config.execution.timeout);

    let on_output = std::sync::Arc::new(on_output);
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(2);
    let mut readers = 0;
    for (name, pipe) in [
        (
            "stdout",
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
        (
            "stderr",
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
    ] {
        let Some(pipe) = pipe else { continue };
        let on_output = on_output.clone();
        let done = done_tx.clone();
        let spawned = thread::Builder::new()
            .name(format!("exec-{name}"))
            .spawn(move || {
                if let Err(e) = crate::output::read_lines(pipe, |o| on_output(o)) {
                    log::warn!("reading executor {name}: {e}");
                }
                let _ = done.send(());
            });
        match spawned {
            Ok(_) => readers += 1,
            Err(e) => log::error!("cannot start a reader thread for executor {name}: {e}"),
        }
    }
    drop(done_tx);

    // Wait for the exit without reaping, so the group id stays ours while the
    // watcher might still signal it; then deregister, clean up, and reap.
    wait_exited(pid);
    let stopped = watcher.deregister(&job.execution_id);
    cancel::kill_leftovers(pid);
    let status = child
        .wait()
        .map_err(|e| format!("waiting for the executor failed: {e}"));

    let deadline = Instant::now() + DRAIN_TIMEOUT;
    for _ in 0..readers {
        let left = deadline.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            log::warn!(
                "execution {}: executor output still open {} s after it exited (a process outside its group holds it); not waiting",
                job.execution_id,
                DRAIN_TIMEOUT.as_secs()
            );
            break;
        }
    }
    RunOutcome { status, stopped }
}

fn wait_exited(pid: u32) {
    use rustix::process::{waitid, WaitId, WaitidOptions};
    let Some(pid) = cancel::pid_of(pid) else {
        return;
    };
    loop {
        match waitid(
            WaitId::Pid(pid),
            WaitidOptions::EXITED | WaitidOptions::NOWAIT,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
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
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let group = cancel::pid_of(pid).unwrap();
        // The leader is reaped; the backgrounded sleep was killed with it.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while rustix::process::test_kill_process_group(group).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "group {pid} still alive"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}
