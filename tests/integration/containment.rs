//! Nothing escapes supervision (issue 11, item 1): a daemon an execution
//! starts with `setsid` and a double fork, keeping the runner's pipes open,
//! is stopped when the execution ends, times out, is cancelled, at shutdown
//! and by crash recovery; the runner's threads and fds stay bounded; the
//! result's logs name what was stopped. Against the real `flo-devserver`,
//! the real `flo-runner` and the example executor's `daemon` node.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flo_testkit::{
    alive, completed, flow, http_get, only_result, state_of, wait_for, DevServer, Runner,
    RunnerSetup,
};
use serde_json::{json, Map, Value};

const LIMIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- helpers

/// (state, parent, process group, session) of a live process.
fn proc_stat(pid: i32) -> Option<(char, i32, i32, i32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((
        f.first()?.chars().next()?,
        f.get(1)?.parse().ok()?,
        f.get(2)?.parse().ok()?,
        f.get(3)?.parse().ok()?,
    ))
}

fn daemons(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("daemon.pid"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Kills, whatever the test's outcome, the daemons it made (a failing
/// runner would leave them sleeping).
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for dir in &self.0 {
            for pid in daemons(dir) {
                let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if alive(pid) && comm.trim() == "sleep" {
                    // SAFETY: kill has no memory-safety preconditions.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
}

fn flo_of(server: &DevServer, id: &str) -> String {
    server.execution(id)["flo_id"]
        .as_str()
        .expect("flo_id")
        .to_string()
}

/// The execution's directory (kept in `cleanup`), once its daemon runs.
fn wait_daemon(
    server: &DevServer,
    runner: &Runner,
    id: &str,
    cleanup: &mut Cleanup,
) -> (PathBuf, i32) {
    let dir = runner.exec_dir(&flo_of(server, id), id);
    cleanup.0.push(dir.clone());
    wait_for(LIMIT, "the daemon's pid", || !daemons(&dir).is_empty());
    let pid = daemons(&dir)[0];
    // daemon.pid is written just after the fork, before setsid.
    wait_for(LIMIT, "the daemon to lead its own session", || {
        proc_stat(pid).is_some_and(|(_, _, pgid, sid)| (pgid, sid) == (pid, pid))
    });
    (dir, pid)
}

fn wait_gone(pid: i32, what: &str) {
    wait_for(Duration::from_secs(10), what, || !alive(pid));
}

fn logs_of(result: &Map<String, Value>) -> String {
    state_of(result)["logs"]
        .as_str()
        .expect("state.logs")
        .to_string()
}

fn leftover_line(pid: i32) -> String {
    format!("[flo-runner] stopped 1 leftover process(es) of this execution: pid {pid} (sleep)")
}

fn count(dir: String) -> usize {
    fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .count()
}

/// The value of a metric on the runner's /metrics (from the address it logs).
fn metric(runner: &Runner, name: &str) -> Option<f64> {
    let log = runner.log();
    let url = log
        .lines()
        .find_map(|l| l.split("metrics on ").nth(1))?
        .split(',')
        .next()?
        .trim()
        .to_string();
    let (status, text) = http_get(&url);
    if status != 200 {
        return None;
    }
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

fn daemon_flow(extra: Value) -> Value {
    let mut nodes = vec![json!({"type": "daemon", "ms": 120000})];
    if let Value::Array(more) = extra {
        nodes.extend(more);
    }
    flow(Value::Array(nodes))
}

// ---------------------------------------------------------------- an execution ends

#[test]
fn a_setsid_daemon_holding_the_pipes_is_stopped_when_the_execution_ends() {
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server)
        .set("runner", "metrics_listen", json!("127.0.0.1:0"))
        .start();
    let id = server.enqueue(
        daemon_flow(json!([{"type": "log", "message": "done"}])),
        json!({}),
    );
    let mut cleanup = Cleanup(Vec::new());
    let (dir, daemon) = wait_daemon(&server, &runner, &id, &mut cleanup);
    let e = completed(&server, &runner, &id, LIMIT);
    // The result waits for nothing: the daemon was killed and the pipes closed.
    wait_gone(daemon, "the daemon to be stopped");
    let result = only_result(&e);
    assert_eq!(result["has_errored"], false, "{result:#?}");
    assert_eq!(
        logs_of(&result),
        format!("[node #1] done\n{}", leftover_line(daemon))
    );
    assert!(
        fs::read_to_string(dir.join("output.log"))
            .unwrap_or_default()
            .contains(&leftover_line(daemon)),
        "output.log names it too"
    );
    assert!(
        !runner.log().contains("executor output still open"),
        "the pipes closed once the daemon died; log:\n{}",
        runner.log_tail()
    );
    assert_eq!(
        metric(&runner, "flo_runner_leftover_processes_killed_total"),
        Some(1.0)
    );
}

#[test]
fn a_daemon_that_cleared_its_environment_is_stopped_too() {
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server).start();
    let id = server.enqueue(
        flow(json!([
            {"type": "daemon", "ms": 120000, "clear_env": true},
            {"type": "log", "message": "done"}
        ])),
        json!({}),
    );
    let mut cleanup = Cleanup(Vec::new());
    let (_, daemon) = wait_daemon(&server, &runner, &id, &mut cleanup);
    let e = completed(&server, &runner, &id, LIMIT);
    wait_gone(daemon, "the unmarked daemon to be stopped");
    assert!(logs_of(&only_result(&e)).ends_with(&leftover_line(daemon)));
}

#[test]
fn each_execution_stops_its_own_daemons_and_not_another_running_ones() {
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server)
        .set("execution", "max_concurrent_executors", json!(2))
        .start();
    let long = server.enqueue(
        daemon_flow(json!([
            {"type": "log", "message": "long"},
            {"type": "sleep", "ms": 6000}
        ])),
        json!({}),
    );
    let mut cleanup = Cleanup(Vec::new());
    let (_, long_daemon) = wait_daemon(&server, &runner, &long, &mut cleanup);
    let short = server.enqueue(
        daemon_flow(json!([{"type": "log", "message": "short"}])),
        json!({}),
    );
    let (_, short_daemon) = wait_daemon(&server, &runner, &short, &mut cleanup);
    completed(&server, &runner, &short, LIMIT);
    wait_gone(short_daemon, "the short execution's daemon to be stopped");
    assert_ne!(
        server.execution(&long)["status"],
        "completed",
        "the long one still runs"
    );
    assert!(
        alive(long_daemon),
        "the daemon of an execution that still runs was stopped"
    );
    let e = completed(&server, &runner, &long, LIMIT);
    wait_gone(long_daemon, "the long execution's daemon to be stopped");
    assert!(logs_of(&only_result(&e)).ends_with(&leftover_line(long_daemon)));
}

// ---------------------------------------------------------------- stopped

#[test]
fn a_timeout_stops_a_setsid_daemon() {
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server)
        .set("execution", "timeout_secs", json!(1))
        .start();
    let id = server.enqueue(
        daemon_flow(json!([{"type": "sleep", "ms": 30000}])),
        json!({}),
    );
    let mut cleanup = Cleanup(Vec::new());
    let (_, daemon) = wait_daemon(&server, &runner, &id, &mut cleanup);
    let e = completed(&server, &runner, &id, LIMIT);
    wait_gone(daemon, "the daemon to be stopped at the timeout");
    let result = only_result(&e);
    assert_eq!(state_of(&result)["error"], "timed out after 1 s");
}

#[test]
fn a_server_cancel_stops_a_setsid_daemon() {
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server).start();
    let id = server.enqueue(
        daemon_flow(json!([{"type": "sleep", "ms": 30000}])),
        json!({}),
    );
    let mut cleanup = Cleanup(Vec::new());
    let (_, daemon) = wait_daemon(&server, &runner, &id, &mut cleanup);
    server.post(&format!("/admin/executions/{id}/cancel"), Value::Null);
    let e = completed(&server, &runner, &id, LIMIT);
    wait_gone(daemon, "the daemon to be stopped by the cancel");
    assert_eq!(only_result(&e)["cancelled"], true);
}

#[test]
fn shutdown_stops_a_setsid_daemon() {
    let server = DevServer::start();
    let mut runner = RunnerSetup::new(&server)
        .set("runner", "shutdown_grace_secs", json!(1))
        .start();
    let id = server.enqueue(
        daemon_flow(json!([{"type": "sleep", "ms": 30000}])),
        json!({}),
    );
    let mut cleanup = Cleanup(Vec::new());
    let (_, daemon) = wait_daemon(&server, &runner, &id, &mut cleanup);
    runner.signal("TERM");
    let status = runner.wait_exit(LIMIT);
    assert_eq!(status.code(), Some(0), "log:\n{}", runner.log_tail());
    assert!(!alive(daemon), "the daemon outlived the runner");
    assert_eq!(only_result(&server.execution(&id))["cancelled"], true);
}

#[test]
fn crash_recovery_stops_a_setsid_daemon() {
    let server = DevServer::start();
    let setup = || RunnerSetup::new(&server);
    let mut runner = setup().start();
    let id = server.enqueue(
        daemon_flow(json!([{"type": "sleep", "ms": 30000}])),
        json!({}),
    );
    let mut cleanup = Cleanup(Vec::new());
    let (_, daemon) = wait_daemon(&server, &runner, &id, &mut cleanup);
    runner.signal("KILL");
    runner.wait_exit(Duration::from_secs(10));
    assert!(alive(daemon), "the daemon outlives the killed runner");
    let state = std::mem::replace(&mut runner.dir, tempfile::tempdir().expect("tempdir"));
    drop(runner);
    let runner = setup().start_in(state);
    wait_gone(daemon, "recovery to stop the daemon");
    let e = completed(&server, &runner, &id, LIMIT);
    assert_eq!(only_result(&e)["has_errored"], true);
}

// ---------------------------------------------------------------- bounded

#[test]
fn threads_and_fds_stay_bounded_over_ten_executions_with_leaking_daemons() {
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server).start();
    let warm = server.enqueue(flow(json!([{"type": "log", "message": "warm"}])), json!({}));
    completed(&server, &runner, &warm, LIMIT);
    let pid = runner.pid();
    let threads = || count(format!("/proc/{pid}/task"));
    let fds = || count(format!("/proc/{pid}/fd"));
    let (threads_before, fds_before) = (threads(), fds());
    let mut cleanup = Cleanup(Vec::new());
    let mut pids = Vec::new();
    for i in 0..10 {
        let id = server.enqueue(
            daemon_flow(json!([{"type": "log", "message": format!("run {i}")}])),
            json!({}),
        );
        let (_, daemon) = wait_daemon(&server, &runner, &id, &mut cleanup);
        pids.push(daemon);
        completed(&server, &runner, &id, LIMIT);
    }
    // The last execution's readers and pipes are gone once its result is.
    let settle = std::time::Instant::now() + Duration::from_secs(10);
    while threads() > threads_before + 1 && std::time::Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (threads_after, fds_after) = (threads(), fds());
    assert!(
        threads_after <= threads_before + 1,
        "threads {threads_before} -> {threads_after} over 10 executions"
    );
    assert!(
        fds_after <= fds_before + 4,
        "fds {fds_before} -> {fds_after} over 10 executions"
    );
    for d in &pids {
        assert!(!alive(*d), "daemon {d} still runs");
    }
    let next = server.enqueue(flow(json!([{"type": "log", "message": "next"}])), json!({}));
    let e = completed(&server, &runner, &next, LIMIT);
    let result = only_result(&e);
    assert_eq!(result["has_errored"], false, "{result:#?}");
    assert_eq!(logs_of(&result), "[node #0] next");
}

// ---------------------------------------------------------------- cgroups

/// The runner's own words about cgroups, once it has started.
fn cgroup_mode(runner: &Runner) -> String {
    wait_for(LIMIT, "the supervision line", || {
        runner.log().contains("process supervision:")
    });
    runner
        .log()
        .lines()
        .find(|l| l.contains("process supervision:"))
        .unwrap_or_default()
        .to_string()
}

/// The execution cgroup in the journal's pid line.
fn journal_cgroup(runner: &Runner) -> Option<PathBuf> {
    let log = fs::read_to_string(runner.path().join("journal").join("journal.log")).ok()?;
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["pid"]["cgroup"].as_str().map(PathBuf::from))
        .next_back()
}

#[test]
fn each_execution_gets_its_own_cgroup_where_one_is_delegated() {
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server)
        .set("execution", "cgroups", json!("on"))
        .start();
    let mode = cgroup_mode(&runner);
    if !mode.contains("one cgroup per execution") {
        println!("skipped: no writable cgroup v2 subtree here ({mode})");
        return;
    }
    let id = server.enqueue(
        daemon_flow(json!([{"type": "sleep", "ms": 1500}])),
        json!({}),
    );
    let mut cleanup = Cleanup(Vec::new());
    let (_, daemon) = wait_daemon(&server, &runner, &id, &mut cleanup);
    let cgroup = journal_cgroup(&runner).expect("the journal records the cgroup");
    let procs = fs::read_to_string(cgroup.join("cgroup.procs")).expect("cgroup.procs");
    assert!(
        procs.lines().any(|l| l.trim() == daemon.to_string()),
        "the daemon is in the execution's cgroup {}: {procs}",
        cgroup.display()
    );
    completed(&server, &runner, &id, LIMIT);
    wait_gone(daemon, "the daemon to be stopped");
    wait_for(Duration::from_secs(5), "the cgroup to be removed", || {
        !cgroup.exists()
    });
}

#[test]
fn execution_limits_apply_where_the_controllers_are_delegated() {
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server)
        .set("execution", "pids_max", json!(32))
        .set("execution", "memory_max_bytes", json!(268435456))
        .start();
    let mode = cgroup_mode(&runner);
    let log = runner.log();
    if !mode.contains("pids.max 32") {
        let why = log
            .lines()
            .find(|l| l.contains("cannot be applied") || l.contains("not applied"))
            .unwrap_or(&mode);
        println!("skipped: execution limits unavailable here ({why})");
        return;
    }
    let id = server.enqueue(
        flow(json!([
            {"type": "log", "message": "limited"},
            {"type": "sleep", "ms": 1500}
        ])),
        json!({}),
    );
    let dir = runner.exec_dir(&flo_of(&server, &id), &id);
    wait_for(LIMIT, "the executor to start", || {
        dir.join("argv.json").exists()
    });
    let cgroup = journal_cgroup(&runner).expect("the journal records the cgroup");
    let read = |f: &str| fs::read_to_string(cgroup.join(f)).unwrap_or_default();
    assert_eq!(read("pids.max").trim(), "32");
    assert_eq!(read("memory.max").trim(), "268435456");
    completed(&server, &runner, &id, LIMIT);
}
