//! What a flow can see and do (issue 11, items 3 and 4): the executor's
//! environment, the runner's /proc files, Landlock around the state and
//! execution directories, `execution.run_as`, `execution.pass_key`. Against
//! the real `flo-devserver`, the real `flo-runner` and the example executor,
//! whose `env`, `read_file` and `write_file` nodes say what they could do.
//! Where the kernel lacks a feature, the test says it is skipped and why.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use flo_testkit::{completed, flow, only_result, read_json, DevServer, Runner, RunnerSetup, CODE};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(30);

/// Runs one flow of `nodes` and returns its result's `state.logs` lines.
fn run_flow(server: &DevServer, runner: &Runner, nodes: Value) -> (String, Vec<String>) {
    let id = server.enqueue(flow(nodes), json!({}));
    let e = completed(server, runner, &id, LIMIT);
    let result = only_result(&e);
    let logs = result["state"]["logs"]
        .as_str()
        .unwrap_or_else(|| panic!("no state.logs in {e:#}"))
        .to_string();
    (id, logs.lines().map(str::to_string).collect())
}

/// The line the example executor printed for `node` on `path`.
fn said<'a>(lines: &'a [String], node: &str, path: &str) -> &'a str {
    let prefix = format!("{node} {path}: ");
    lines
        .iter()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {node} line for {path} in {lines:#?}"))
}

fn env_lines(lines: &[String]) -> Vec<&str> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("env "))
        .collect()
}

/// The Landlock ABI version of this kernel, or why there is none.
fn landlock_abi() -> Result<i64, String> {
    // SAFETY: landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    // only returns a number; it creates nothing.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    };
    if v >= 1 {
        Ok(v)
    } else {
        Err(std::io::Error::last_os_error().to_string())
    }
}

fn skip_without_landlock(test: &str) -> bool {
    match landlock_abi() {
        Ok(_) => false,
        Err(why) => {
            eprintln!("{test}: SKIPPED: this kernel has no Landlock ({why})");
            true
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A runner directory outside /tmp: the sandbox cannot give a flow the right
/// to create entries directly in a directory above the state directory, and
/// these tests check that /tmp stays writable.
fn runner_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir in the target directory")
}

// ---------------------------------------------------------------- environment

#[test]
fn the_runners_secrets_are_not_handed_to_the_executor_but_ordinary_variables_are() {
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server)
        .env("RUNNER_REGISTRATION_CODE", CODE)
        .env("FLOMATION_RUNNER_LOG_FLUSH_MS", "100")
        .env("FLOMATION_RUNNER_NAME", "test-runner")
        .env("RUNNER_NAME", "test-runner")
        .env("FLO_RUNNER_ANYTHING", "x")
        .env("EXECUTOR_MAX_CONCURRENT", "1")
        .env("MTLS_KEY", "/somewhere/client-key.pem")
        .env("A_COPY_OF_THE_CODE", CODE)
        .env("AWS_REGION", "eu-west-2")
        .env("HTTPS_PROXY", "http://user:secret@proxy.invalid:3128")
        .start();
    let (_, lines) = run_flow(&server, &runner, json!([{"type": "env"}]));
    let env = env_lines(&lines);
    assert!(env.contains(&"AWS_REGION=eu-west-2"), "{env:#?}");
    assert!(
        env.contains(&"HTTPS_PROXY=http://user:secret@proxy.invalid:3128"),
        "proxies are kept: {env:#?}"
    );
    assert!(env.iter().any(|l| l.starts_with("PATH=")), "{env:#?}");
    for l in &env {
        let name = l.split('=').next().unwrap_or("");
        // The one the runner sets itself: the marker that attributes an
        // escaped process to its execution (supervise), not a secret.
        if name == "FLO_RUNNER_EXECUTION_ID" {
            continue;
        }
        assert!(
            !name.starts_with("FLOMATION_")
                && !name.starts_with("FLO_RUNNER_")
                && !matches!(
                    name,
                    "RUNNER_NAME"
                        | "RUNNER_REGISTRATION_CODE"
                        | "EXECUTOR_MAX_CONCURRENT"
                        | "MTLS_KEY"
                ),
            "the runner's own variable {name} reached the executor: {env:#?}"
        );
        assert!(!l.contains(CODE), "the registration code leaked: {l}");
    }
}

#[test]
fn an_allowlist_passes_only_the_listed_variables_and_the_added_ones() {
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server)
        .set(
            "execution",
            "environment",
            json!({"mode": "allowlist", "allow": ["AWS_*"], "set": {"FLOW_GREETING": "hello"}}),
        )
        .env("AWS_REGION", "eu-west-2")
        .env("AWS_PROFILE", "ops")
        .env("UNLISTED", "nope")
        .start();
    let (_, lines) = run_flow(&server, &runner, json!([{"type": "env"}]));
    let env = env_lines(&lines);
    for expected in [
        "AWS_REGION=eu-west-2",
        "AWS_PROFILE=ops",
        "FLOW_GREETING=hello",
    ] {
        assert!(env.contains(&expected), "{expected} missing: {env:#?}");
    }
    assert!(
        env.iter().any(|l| l.starts_with("PATH=")),
        "PATH is in the basic set: {env:#?}"
    );
    assert!(!env.iter().any(|l| l.starts_with("UNLISTED=")), "{env:#?}");
    assert!(!env.iter().any(|l| l.starts_with("RUST_LOG=")), "{env:#?}");
}

// ---------------------------------------------------------------- /proc

#[test]
fn a_flow_running_as_the_runners_user_cannot_read_its_environ_or_mem() {
    if !is_root() {
        eprintln!("SKIPPED: running the runner as another user needs root");
        return;
    }
    let server = DevServer::start();
    // Landlock off: this checks the non-dumpable layer alone (Landlock would
    // deny the ptrace-style access to the runner's /proc files too).
    let runner = RunnerSetup::new(&server)
        .set("execution", "sandbox", json!("off"))
        .env("A_MARKER_ONLY_THE_RUNNER_HAS", "marker-value")
        .run_as(65534, 65534)
        .start();
    let pid = runner.pid();
    let environ = format!("/proc/{pid}/environ");
    let mem = format!("/proc/{pid}/mem");
    let (_, lines) = run_flow(
        &server,
        &runner,
        json!([
            {"type": "read_file", "path": environ},
            {"type": "read_file", "path": mem},
        ]),
    );
    for path in [&environ, &mem] {
        let what = said(&lines, "read_file", path);
        assert!(
            what.starts_with("error: open:"),
            "{path} could be opened by the flow: {what}"
        );
    }
    // `flo-runner health` is another process of the same user reading the
    // heartbeat: being non-dumpable must not break it.
    // The heartbeat is rewritten every few seconds; registration shows in
    // the next one.
    let health = || {
        Command::new(flo_testkit::runner_bin())
            .arg("health")
            .current_dir(runner.path())
            .uid(65534)
            .gid(65534)
            .env_clear()
            .output()
            .expect("run flo-runner health")
    };
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let out = health();
        if out.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "health: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

// ---------------------------------------------------------------- Landlock

#[test]
fn with_landlock_a_flow_cannot_touch_the_runners_files_but_has_its_own_directory_and_tmp() {
    if skip_without_landlock("landlock") {
        return;
    }
    let server = DevServer::start();
    // A directory in the temp dir made before the runner starts: where the
    // checkout itself lives under /tmp, /tmp is above the protected paths
    // and only what it held already is granted (README).
    let scratch = tempfile::Builder::new()
        .prefix("flo-sandbox-scratch-")
        .tempdir()
        .expect("scratch dir");
    let runner = RunnerSetup::new(&server).start_in(runner_dir());
    let state = runner.path().to_path_buf();
    let (first, _) = run_flow(&server, &runner, json!([{"type": "log", "message": "one"}]));
    let other = fs::read_dir(state.join("executions"))
        .expect("executions")
        .filter_map(Result::ok)
        .map(|e| e.path().join(&first))
        .find(|p| p.exists())
        .expect("the first execution's directory");

    let tmp_file = scratch
        .path()
        .join("written")
        .to_string_lossy()
        .into_owned();
    let p = |rel: &str| state.join(rel).to_string_lossy().into_owned();
    let forged = p("outbox/forged.json");
    let planted = p("planted");
    let journal = p("journal/journal.log");
    let flo_state = p("flo.state");
    let config = p("config.json");
    let other_write = other.join("x").to_string_lossy().into_owned();
    let other_read = other.join("state.json").to_string_lossy().into_owned();
    let (_, lines) = run_flow(
        &server,
        &runner,
        json!([
            {"type": "write_file", "path": forged, "content": "{}"},
            {"type": "write_file", "path": planted, "content": "x"},
            {"type": "read_file", "path": journal},
            {"type": "read_file", "path": flo_state},
            {"type": "read_file", "path": config},
            {"type": "write_file", "path": other_write, "content": "x"},
            {"type": "read_file", "path": other_read},
            {"type": "write_file", "path": "mine.txt", "content": "mine"},
            {"type": "write_file", "path": tmp_file, "content": "tmp"},
            {"type": "write_file", "path": "/dev/null", "content": "x"},
            {"type": "read_file", "path": "/etc/passwd"},
            {"type": "run", "argv": ["kill", "-0", runner.pid().to_string()]},
            {"type": "run", "argv": ["sh", "-c", "kill -0 $$"]},
        ]),
    );
    let _ = fs::remove_file(&tmp_file);
    for (node, path) in [
        ("write_file", &forged),
        ("write_file", &planted),
        ("read_file", &journal),
        ("read_file", &flo_state),
        ("read_file", &config),
        ("write_file", &other_write),
        ("read_file", &other_read),
    ] {
        let what = said(&lines, node, path);
        assert!(
            what.starts_with("error:"),
            "{node} {path} was allowed: {what}"
        );
    }
    for (node, path) in [
        ("write_file", "mine.txt"),
        ("write_file", tmp_file.as_str()),
        ("write_file", "/dev/null"),
        ("read_file", "/etc/passwd"),
    ] {
        let what = said(&lines, node, path);
        assert!(what.starts_with("ok"), "{node} {path} was denied: {what}");
    }
    // The signal scope needs Landlock ABI 6 (Linux 6.12).
    if landlock_abi().unwrap_or(0) >= 6 {
        assert_eq!(
            said(&lines, "run", "kill"),
            "exit 1",
            "the flow could signal the runner"
        );
        assert_eq!(said(&lines, "run", "sh"), "exit 0", "its own processes");
    } else {
        eprintln!("landlock: the signal check SKIPPED: Landlock ABI below 6");
    }
    assert!(!Path::new(&forged).exists());
    assert!(!Path::new(&planted).exists());
    assert!(runner.log().contains("Landlock"), "{}", runner.log_tail());
}

/// A seccomp filter that makes the Landlock system calls fail with ENOSYS,
/// as on a kernel built without Landlock. Installed in the runner's process
/// (and inherited by everything it starts) through `pre_exec`.
fn without_landlock(cmd: &mut Command) {
    const LD_NR: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS, offset 0: the syscall number
    const JEQ: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET: u16 = 0x06; // BPF_RET | BPF_K
    const ALLOW: u32 = 0x7fff_0000;
    const ENOSYS: u32 = 0x0005_0000 | libc::ENOSYS as u32;
    // The three Landlock calls are 444..=446 on every architecture.
    static FILTER: [libc::sock_filter; 6] = [
        libc::sock_filter {
            code: LD_NR,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: JEQ,
            jt: 3,
            jf: 0,
            k: 444,
        },
        libc::sock_filter {
            code: JEQ,
            jt: 2,
            jf: 0,
            k: 445,
        },
        libc::sock_filter {
            code: JEQ,
            jt: 1,
            jf: 0,
            k: 446,
        },
        libc::sock_filter {
            code: RET,
            jt: 0,
            jf: 0,
            k: ALLOW,
        },
        libc::sock_filter {
            code: RET,
            jt: 0,
            jf: 0,
            k: ENOSYS,
        },
    ];
    // SAFETY: two prctl calls, async-signal-safe, on a static program.
    unsafe {
        cmd.pre_exec(|| {
            let prog = libc::sock_fprog {
                len: FILTER.len() as u16,
                filter: FILTER.as_ptr().cast_mut(),
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Starts the runner of `setup` in `dir` under [`without_landlock`]; its
/// stderr goes to `runner.log` as with the harness.
fn start_without_landlock(setup: RunnerSetup, dir: tempfile::TempDir) -> Runner {
    fs::write(
        dir.path().join("config.json"),
        serde_json::to_vec_pretty(&setup.config).expect("config"),
    )
    .expect("write config");
    let log = fs::File::create(dir.path().join("runner.log")).expect("runner.log");
    let mut cmd = Command::new(flo_testkit::runner_bin());
    cmd.current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    without_landlock(&mut cmd);
    let child = cmd.spawn().expect("start flo-runner");
    Runner {
        child: Some(child),
        dir,
    }
}

#[test]
fn sandbox_required_refuses_to_start_without_landlock_and_auto_says_so_once_and_runs() {
    let server = DevServer::start();
    let setup = RunnerSetup::new(&server).set("execution", "sandbox", json!("required"));
    let mut runner = start_without_landlock(setup, runner_dir());
    let status = runner.wait_exit(LIMIT);
    let log = runner.log();
    assert!(!status.success(), "{log}");
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "one clear error line: {log}");
    assert!(
        errors[0].contains("execution.sandbox") && errors[0].contains("Landlock"),
        "{log}"
    );
    assert!(server.runners().is_empty(), "it registered anyway: {log}");

    let runner = start_without_landlock(RunnerSetup::new(&server), runner_dir());
    let (_, lines) = run_flow(
        &server,
        &runner,
        json!([{"type": "write_file", "path": "mine.txt", "content": "x"}]),
    );
    assert_eq!(said(&lines, "write_file", "mine.txt"), "ok");
    let (_, _) = run_flow(
        &server,
        &runner,
        json!([{"type": "log", "message": "again"}]),
    );
    let log = runner.log();
    let said_missing = log
        .lines()
        .filter(|l| l.contains("Landlock") && l.contains("WARN"))
        .count();
    assert_eq!(said_missing, 1, "said once at start-up: {log}");
}

// ---------------------------------------------------------------- the key

fn argv(runner: &Runner, id: &str) -> Vec<String> {
    let dir = fs::read_dir(runner.path().join("executions"))
        .expect("executions")
        .filter_map(Result::ok)
        .map(|e| e.path().join(id))
        .find(|p| p.exists())
        .expect("the execution's directory");
    read_json(&dir.join("argv.json"))["argv"]
        .as_array()
        .expect("argv")
        .iter()
        .map(|a| a.as_str().expect("string").to_string())
        .collect()
}

#[test]
fn without_pass_key_the_key_is_neither_passed_nor_readable() {
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server)
        .set("execution", "pass_key", json!(false))
        .start_in(runner_dir());
    let key = runner
        .path()
        .join("flomation-runner.pem")
        .to_string_lossy()
        .into_owned();
    let (id, lines) = run_flow(
        &server,
        &runner,
        json!([{"type": "read_file", "path": key}]),
    );
    let args = argv(&runner, &id);
    assert!(!args.contains(&"--key".to_string()), "{args:?}");
    if skip_without_landlock("pass_key: the key unreadable") {
        return;
    }
    let what = said(&lines, "read_file", &key);
    assert!(
        what.starts_with("error: open:"),
        "the key was readable: {what}"
    );
}

#[test]
fn by_default_the_key_is_passed_and_readable_as_the_executor_contract_says() {
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server).start_in(runner_dir());
    let key = runner
        .path()
        .join("flomation-runner.pem")
        .to_string_lossy()
        .into_owned();
    let (id, lines) = run_flow(
        &server,
        &runner,
        json!([{"type": "read_file", "path": key}]),
    );
    let args = argv(&runner, &id);
    let at = args.iter().position(|a| a == "--key").expect("--key");
    assert_eq!(
        fs::canonicalize(&args[at + 1]).expect("key path"),
        fs::canonicalize(&key).expect("key")
    );
    assert!(
        said(&lines, "read_file", &key).starts_with("ok"),
        "{lines:#?}"
    );
}

// ---------------------------------------------------------------- run_as

#[test]
fn run_as_switches_the_executors_user_and_the_result_still_comes_back() {
    if !is_root() {
        eprintln!("SKIPPED: switching users needs root");
        return;
    }
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server)
        .set("execution", "run_as", json!("nobody"))
        .set("execution", "pass_key", json!(false))
        .start_in(runner_dir());
    let (id, lines) = run_flow(
        &server,
        &runner,
        json!([
            {"type": "read_file", "path": "/proc/self/status", "print": true},
            {"type": "write_file", "path": "mine.txt", "content": "x"},
        ]),
    );
    let uid = lines
        .iter()
        .find_map(|l| l.strip_prefix("read_file /proc/self/status| Uid:"))
        .unwrap_or_else(|| panic!("no Uid line: {lines:#?}"));
    let uids: Vec<&str> = uid.split_whitespace().collect();
    assert_eq!(uids, ["65534"; 4], "{uid}");
    assert_eq!(said(&lines, "write_file", "mine.txt"), "ok");
    let e = server.execution(&id);
    assert_eq!(only_result(&e)["has_errored"], false, "{e:#}");
}

#[test]
fn run_as_without_the_privilege_to_switch_is_a_clear_start_up_error() {
    if !is_root() {
        eprintln!("SKIPPED: running the runner as another user needs root");
        return;
    }
    let server = DevServer::start();
    let mut runner = RunnerSetup::new(&server)
        .set("execution", "run_as", json!("0:0"))
        .run_as(65534, 65534)
        .start();
    let status = runner.wait_exit(LIMIT);
    let log = runner.log();
    assert!(!status.success(), "{log}");
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(errors[0].contains("execution.run_as"), "{log}");
    eprintln!("{}", errors[0]);
}

#[test]
fn run_as_with_the_key_passed_but_unreadable_by_that_user_is_a_clear_start_up_error() {
    if !is_root() {
        eprintln!("SKIPPED: switching users needs root");
        return;
    }
    let server = DevServer::start();
    let mut runner = RunnerSetup::new(&server)
        .set("execution", "run_as", json!("nobody"))
        .start_in(runner_dir());
    let status = runner.wait_exit(LIMIT);
    let log = runner.log();
    assert!(!status.success(), "{log}");
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(
        errors[0].contains("execution.run_as")
            && errors[0].contains("flomation-runner.pem")
            && errors[0].contains("execution.pass_key"),
        "{log}"
    );
    eprintln!("{}", errors[0]);
}
