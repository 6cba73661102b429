//! One result per execution at the edges (issue 10), against the real
//! binaries: lost answers, SIGKILLs in every window of the ledger's sequence
//! (held open by a failpoint, not hoped for), two runners on one state
//! directory, leftover process groups, and, with root, a state directory on
//! a loop-mounted ext4 that fills up, becomes unwritable, or loses power.
//!
//! The root-only tests do not skip: on a machine that cannot make loop
//! devices or switch users they fail and say why.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use flo_testkit::*;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(30);

fn results_of(server: &DevServer, id: &str) -> Vec<Value> {
    server.execution(id)["results"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Result POSTs for `id` that reached the server's handler (lost answers
/// included: the server stored those).
fn result_posts(server: &DevServer, id: &str) -> usize {
    execution_requests(server, "result", id)
        .iter()
        .filter(|r| r["status"] == 200 || r["fault"] == "lost_answer")
        .count()
}

fn wait_log(runner: &Runner, needle: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !runner.log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "runner never logged {needle:?}; log:\n{}",
            runner.log_tail()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn sigkill(runner: &mut Runner) {
    runner.signal("KILL");
    runner.wait_exit(Duration::from_secs(10));
}

/// Restarts a killed runner in its directory with the same setup.
fn restart(runner: Runner, setup: RunnerSetup) -> Runner {
    let mut runner = runner;
    let dir = std::mem::replace(&mut runner.dir, tempfile::tempdir().expect("tempdir"));
    drop(runner);
    setup.start_in(dir)
}

fn quick_flow() -> Value {
    flow(json!([{"id": "a", "type": "log", "message": "hello"}]))
}

// ------------------------------------------------------------ lost answers

#[test]
fn a_result_whose_answer_was_lost_is_not_accepted_twice() {
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server).start();
    let warm = server.enqueue(quick_flow(), json!({}));
    completed(&server, &runner, &warm, LIMIT);

    // The server stores the result, then the answer never arrives.
    server.fault(json!({"route": "result", "lose_answer_rate": 1.0}));
    let id = server.enqueue(quick_flow(), json!({}));
    completed(&server, &runner, &id, LIMIT);
    wait_for(LIMIT, "a status check after the lost answer", || {
        !execution_requests(&server, "status", &id).is_empty()
    });
    server.fault(json!({"route": "result"}));
    // Time for any re-send the outbox would make (its first retry is 1 s).
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        result_posts(&server, &id),
        1,
        "the result was accepted more than once; runner log:\n{}",
        runner.log_tail()
    );
    assert_eq!(results_of(&server, &id).len(), 1);
    assert!(runner.log().contains("already has its result"));
    // Nothing is left to send, and the journal entry is finished.
    let outbox = runner.path().join("outbox");
    let left: Vec<_> = fs::read_dir(&outbox)
        .map(|d| d.flatten().filter(|e| e.path().is_file()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "outbox still holds {left:?}");
}

// ------------------------------------------------- kills in every window

/// A flow that lasts long enough to be killed in, and says it succeeded.
fn kill_window(window: &str, expect_success: bool) {
    let server = DevServer::start();
    let setup = || RunnerSetup::new(&server);
    let mut runner = setup().env("FLO_RUNNER_FAILPOINT", window).start();
    let id = server.enqueue(quick_flow(), json!({}));
    wait_log(&runner, &format!("failpoint {window} reached"), LIMIT);
    sigkill(&mut runner);
    let runner = restart(runner, setup());
    let e = completed(&server, &runner, &id, LIMIT);
    // Long enough for a second result to arrive if one were coming.
    std::thread::sleep(Duration::from_secs(3));
    let results = results_of(&server, &id);
    assert_eq!(
        results.len(),
        1,
        "{window}: {} results; runner log:\n{}",
        results.len(),
        runner.log_tail()
    );
    let errored = results[0]["has_errored"].as_bool().unwrap_or(true);
    if expect_success {
        assert!(
            !errored,
            "{window}: a delivered success was overwritten: {:#}",
            results[0]
        );
    } else {
        assert_eq!(
            results[0]["state"]["error"], "runner stopped while this execution was running",
            "{window}: {e:#}"
        );
    }
}

#[test]
fn killed_after_the_journal_start_before_the_claim() {
    kill_window("ledger.begun", false);
}

#[test]
fn killed_with_the_result_durable_before_its_first_send() {
    // The produced result is in the outbox: it is the one sent.
    kill_window("ledger.result-durable", true);
}

#[test]
fn killed_after_the_2xx_before_the_journal_done() {
    kill_window("ledger.acknowledged", true);
}

#[test]
fn killed_after_the_journal_done_before_the_outbox_entry_went() {
    kill_window("ledger.done", true);
}

#[test]
fn a_logs_only_outbox_entry_does_not_stand_for_the_result() {
    let server = DevServer::start();
    // Lines cannot be streamed, so the last ones go to the outbox first.
    server.fault(json!({"route": "logs", "error_rate": 1.0, "error_status": 503}));
    let setup = || RunnerSetup::new(&server);
    let mut runner = setup()
        .env("FLO_RUNNER_FAILPOINT", "outbox.logs-written")
        .start();
    let id = server.enqueue(
        flow(json!([{"id": "a", "type": "print", "count": 20}])),
        json!({}),
    );
    wait_log(&runner, "failpoint outbox.logs-written reached", LIMIT);
    sigkill(&mut runner);
    server.fault(json!({"route": "logs"}));
    let runner = restart(runner, setup());
    let e = completed(&server, &runner, &id, LIMIT);
    let result = only_result(&e);
    assert_eq!(
        result["state"]["error"], "runner stopped while this execution was running",
        "{e:#}"
    );
}

// ------------------------------------------------------------ the lock

#[test]
fn a_second_runner_on_the_same_state_directory_exits_at_once() {
    let server = DevServer::start();
    let first = RunnerSetup::new(&server).start();
    let warm = server.enqueue(quick_flow(), json!({}));
    completed(&server, &first, &warm, LIMIT);

    let state_dir = first.path().to_string_lossy().into_owned();
    let mut second = RunnerSetup::new(&server)
        .set("execution", "state_directory", json!(state_dir))
        .start();
    let status = second.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{}", second.log());
    let log = second.log();
    assert!(
        log.contains(&format!(
            "state directory {state_dir} is in use by another flo-runner (pid {})",
            first.pid()
        )),
        "{log}"
    );
    // It touched nothing: the first runner still works, with one result each.
    let id = server.enqueue(quick_flow(), json!({}));
    let e = completed(&server, &first, &id, LIMIT);
    only_result(&e);
    assert_eq!(server.runners().len(), 1, "the second runner registered");

    // `check` says the directory is in use.
    let out = Command::new(runner_bin())
        .args(["check", "--config"])
        .arg(first.path().join("config.json"))
        .current_dir(first.path())
        .output()
        .expect("run check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "in use by a running flo-runner (pid {})",
            first.pid()
        )),
        "{text}"
    );
}

// ------------------------------------------------------ process groups

fn executor_pid(runner: &Runner) -> i32 {
    let log =
        fs::read_to_string(runner.path().join("journal").join("journal.log")).unwrap_or_default();
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["pid"]["pid"].as_i64())
        .next_back()
        .expect("a pid line in the journal") as i32
}

#[test]
fn recovery_stops_the_group_members_of_an_executor_that_already_exited() {
    let server = DevServer::start();
    let setup = || RunnerSetup::new(&server);
    let mut runner = setup().start();
    let id = server.enqueue(
        flow(json!([
            {"id": "a", "type": "spawn", "ms": 120000, "stdio": "null"},
            {"id": "b", "type": "sleep", "ms": 1500}
        ])),
        json!({}),
    );
    let flo = server.execution(&id)["flo_id"].clone();
    let marker = runner
        .exec_dir(flo.as_str().unwrap_or_default(), &id)
        .join("grandchild.pid");
    wait_for(LIMIT, "the grandchild", || marker.exists());
    let leader = executor_pid(&runner);
    let grandchild: i32 = fs::read_to_string(&marker)
        .expect("grandchild.pid")
        .trim()
        .parse()
        .expect("a pid");
    // Orphans are reparented to this test process rather than to pid 1,
    // which on some machines (containers, this CI's VM) never reaps them:
    // the executor must be really gone, not a zombie that still looks like
    // the group's leader.
    // SAFETY: prctl with these arguments only sets a flag on this process.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0, "PR_SET_CHILD_SUBREAPER");
    sigkill(&mut runner);
    // The executor finishes on its own; its grandchild stays in its group.
    wait_for(LIMIT, "the executor to exit and be reaped", || {
        // SAFETY: waitpid on one pid, not blocking.
        let reaped = unsafe { libc::waitpid(leader, std::ptr::null_mut(), libc::WNOHANG) };
        reaped == leader || !Path::new(&format!("/proc/{leader}")).exists()
    });
    assert!(
        alive(grandchild),
        "the grandchild should outlive its parent"
    );

    let runner = restart(runner, setup());
    wait_for(LIMIT, "recovery to stop the grandchild", || {
        !alive(grandchild)
    });
    let e = completed(&server, &runner, &id, LIMIT);
    only_result(&e);
}

// ------------------------------------------------------ root: real disks

/// An ext4 filesystem on a loop device, mounted in a temp directory;
/// unmounted and detached on drop, failure or not.
struct LoopFs {
    _dir: tempfile::TempDir,
    image: PathBuf,
    mnt: PathBuf,
    options: String,
    mounted: bool,
}

fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn require_root(what: &str) {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "{what} needs root (loop devices, mounts, another uid); this machine cannot run it"
    );
}

impl LoopFs {
    fn new(mib: u32, options: &str) -> Self {
        require_root("a loop-mounted ext4");
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("fs.img");
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).expect("mount point");
        let f = fs::File::create(&image).expect("image");
        f.set_len(u64::from(mib) << 20).expect("image size");
        drop(f);
        let image_s = image.to_string_lossy().into_owned();
        run("mkfs.ext4", &["-q", "-F", "-m", "0", &image_s])
            .unwrap_or_else(|e| panic!("cannot make the test filesystem: {e}"));
        let mut fs = Self {
            _dir: dir,
            image,
            mnt,
            options: options.to_string(),
            mounted: false,
        };
        fs.mount();
        fs
    }

    fn mount(&mut self) {
        let image = self.image.to_string_lossy().into_owned();
        let mnt = self.mnt.to_string_lossy().into_owned();
        let opts = format!("loop,{}", self.options);
        run("mount", &["-o", &opts, &image, &mnt])
            .unwrap_or_else(|e| panic!("cannot mount a loop device here: {e}"));
        self.mounted = true;
    }

    fn umount(&mut self) {
        if self.mounted {
            let mnt = self.mnt.to_string_lossy().into_owned();
            // The loop device goes with the mount (mount -o loop sets autoclear).
            let deadline = Instant::now() + Duration::from_secs(10);
            while let Err(e) = run("umount", &[&mnt]) {
                if Instant::now() > deadline {
                    let _ = run("umount", &["-l", &mnt]);
                    panic!("cannot unmount {mnt}: {e}");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            self.mounted = false;
        }
    }

    /// A power cut: EXT4_IOC_SHUTDOWN with NOLOGFLUSH. What was not
    /// committed by an fsync (or the commit interval) is gone after the
    /// next mount, as after a real power loss.
    fn power_cut(&self) {
        const EXT4_IOC_SHUTDOWN: libc::c_ulong = 0x8004_587d;
        const EXT4_GOING_FLAGS_NOLOGFLUSH: u32 = 2;
        let dir = fs::File::open(&self.mnt).expect("open the mount point");
        use std::os::fd::AsRawFd;
        let flags = EXT4_GOING_FLAGS_NOLOGFLUSH;
        // SAFETY: a valid fd and a pointer to a u32, as the ioctl expects.
        let rc = unsafe { libc::ioctl(dir.as_raw_fd(), EXT4_IOC_SHUTDOWN, &flags) };
        assert_eq!(
            rc,
            0,
            "EXT4_IOC_SHUTDOWN failed: {} (this kernel cannot simulate a power cut)",
            std::io::Error::last_os_error()
        );
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted {
            let mnt = self.mnt.to_string_lossy().into_owned();
            if run("umount", &[&mnt]).is_err() {
                let _ = run("umount", &["-l", &mnt]);
            }
        }
    }
}

/// Fills the filesystem holding `dir` with one file; returns its path.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = fs::File::create(&path).expect("filler");
    let chunk = vec![0u8; 1 << 20];
    while f.write_all(&chunk).is_ok() {}
    let small = vec![0u8; 4096];
    while f.write_all(&small).is_ok() {}
    let _ = f.sync_all();
    path
}

fn health(runner: &Runner) -> (bool, String) {
    let out = Command::new(runner_bin())
        .args(["health", "--config"])
        .arg(runner.path().join("config.json"))
        .current_dir(runner.path())
        .output()
        .expect("run health");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn assert_not_claimed(server: &DevServer, id: &str, for_: Duration) {
    let deadline = Instant::now() + for_;
    while Instant::now() < deadline {
        let claims = execution_requests(server, "state", id);
        assert!(claims.is_empty(), "{id} was claimed: {claims:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_full_state_disk_and_a_failing_result_route_lose_nothing() {
    let disk = LoopFs::new(16, "commit=5");
    let server = DevServer::start();
    let state = disk.path("state");
    let runner = RunnerSetup::new(&server)
        .set("execution", "state_directory", json!(state))
        .start();
    let warm = server.enqueue(quick_flow(), json!({}));
    completed(&server, &runner, &warm, LIMIT);

    server.fault(json!({"route": "result", "error_rate": 1.0, "error_status": 503}));
    let filler = fill(&disk.mnt);
    let id = server.enqueue(quick_flow(), json!({}));
    wait_log(&runner, "taking no new work", LIMIT);
    wait_for(LIMIT, "health to name the disk", || {
        let (healthy, said) = health(&runner);
        !healthy && said.contains("cannot be written")
    });
    // No new work while nothing can be made durable.
    let later = server.enqueue(quick_flow(), json!({}));
    assert_not_claimed(&server, &later, Duration::from_secs(3));

    // Space comes back, then the API: everything arrives, once.
    fs::remove_file(&filler).expect("remove the filler");
    server.fault(json!({"route": "result"}));
    for id in [&id, &later] {
        let e = completed(&server, &runner, id, LIMIT);
        let result = only_result(&e);
        assert_eq!(result["has_errored"], false, "{e:#}");
    }
    wait_for(LIMIT, "healthy again", || health(&runner).0);
}

#[test]
fn an_unwritable_state_directory_stops_polling_until_it_can_be_written() {
    require_root("running the runner as another user");
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server).run_as(65534, 65534).start();
    let warm = server.enqueue(quick_flow(), json!({}));
    completed(&server, &runner, &warm, LIMIT);

    let chmod = |mode: &str| {
        for dir in ["", "outbox", "journal"] {
            run("chmod", &[mode, &runner.path().join(dir).to_string_lossy()]).expect("chmod");
        }
    };
    chmod("0555");
    wait_log(&runner, "taking no new work", LIMIT);
    let log = runner.log();
    assert!(
        log.contains(&format!(
            "state directory {} cannot be written",
            runner.path().display()
        )) || log.contains("state directory ./ cannot be written"),
        "{log}"
    );
    wait_for(LIMIT, "health to name the disk", || {
        let (healthy, said) = health(&runner);
        !healthy && said.contains("cannot be written")
    });
    let id = server.enqueue(quick_flow(), json!({}));
    assert_not_claimed(&server, &id, Duration::from_secs(3));

    chmod("0750");
    let e = completed(&server, &runner, &id, LIMIT);
    only_result(&e);
    wait_log(&runner, "can be written again", LIMIT);
    wait_for(LIMIT, "healthy again", || health(&runner).0);
}

#[test]
fn a_power_cut_after_delivered_results_does_not_report_them_again() {
    // commit=60: only fsyncs make anything durable within the test.
    let mut disk = LoopFs::new(32, "commit=60");
    let server = DevServer::start();
    let (state, executions) = (disk.path("state"), disk.path("executions"));
    let setup = || {
        RunnerSetup::new(&server)
            .set("execution", "state_directory", json!(state))
            .set("execution", "execution_directory", json!(executions))
    };
    let mut runner = setup().start();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = server.enqueue(quick_flow(), json!({}));
        completed(&server, &runner, &id, LIMIT);
        ids.push(id);
    }
    // What the runner does after a 2xx takes well under this.
    std::thread::sleep(Duration::from_millis(300));
    disk.power_cut();
    sigkill(&mut runner);
    disk.umount();
    disk.mount();

    let runner = restart(runner, setup());
    wait_log(&runner, "polling", LIMIT);
    // The outbox's first retry and recovery's status checks happen by now.
    std::thread::sleep(Duration::from_secs(4));
    for id in &ids {
        let results = results_of(&server, id);
        assert_eq!(
            results.len(),
            1,
            "{id} reported again after the power cut: {results:#?}\nrunner log:\n{}",
            runner.log_tail()
        );
        assert_eq!(results[0]["has_errored"], false);
    }
}
