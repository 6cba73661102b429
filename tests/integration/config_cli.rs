//! The command line and the configuration (file, environment, defaults),
//! driven through the real `flo-runner` binary against the real dev server.

use std::fs;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use flo_testkit::{executor_path, wait_for, DevServer, Runner, RunnerSetup, CODE};
use serde_json::{json, Value};

const RUNNER: &str = env!("CARGO_BIN_EXE_flo-runner");

/// Runs the binary to completion with `args` in a fresh directory.
fn run_cli(args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    Command::new(RUNNER)
        .args(args)
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .output()
        .expect("run flo-runner")
}

fn wait_registered(server: &DevServer, runner: &Runner) -> Value {
    let mut record = Value::Null;
    wait_for(
        Duration::from_secs(15),
        &format!("registration; runner log:\n{}", runner.log()),
        || match server.runners().as_slice() {
            [one] => {
                record = one.clone();
                true
            }
            _ => false,
        },
    );
    record
}

fn error_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains(" ERROR]")).collect()
}

fn warn_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains(" WARN ]")).collect()
}

/// The runner must stop on its own, non-zero, with exactly one error line
/// containing every string of `named`, having sent the server nothing.
fn assert_startup_error(server: &DevServer, mut runner: Runner, named: &[&str]) -> String {
    let status: ExitStatus = runner.wait_exit(Duration::from_secs(10));
    let log = runner.log();
    assert!(!status.success(), "exit {status:?}; log:\n{log}");
    assert_eq!(status.code(), Some(1), "log:\n{log}");
    assert!(!log.contains("panicked"), "panic:\n{log}");
    assert!(!log.contains("backtrace"), "backtrace:\n{log}");
    let errors = error_lines(&log);
    assert_eq!(errors.len(), 1, "one clear error line:\n{log}");
    for n in named {
        assert!(
            errors[0].contains(n),
            "error line lacks {n:?}: {}",
            errors[0]
        );
    }
    assert!(
        server.requests().is_empty(),
        "the runner talked to the server: {:#?}",
        server.requests()
    );
    log
}

/// A setup whose config.json is written as raw text instead.
fn start_with_raw_config(server: &DevServer, text: &str) -> Runner {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("config.json"), text).unwrap();
    let mut setup = RunnerSetup::new(server);
    setup.no_config_file = true;
    setup.start_in(dir)
}

// ---------------------------------------------------------------------------
// Command line.

#[test]
fn version_prints_name_and_version() {
    let out = run_cli(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("flo-runner {}\n", env!("CARGO_PKG_VERSION"))
    );
    let short = run_cli(&["-V"]);
    assert_eq!(short.status.code(), Some(0));
    assert_eq!(short.stdout, out.stdout);
}

#[test]
fn help_exits_zero_and_describes_the_options() {
    let out = run_cli(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for word in ["--config", "--version", "--help"] {
        assert!(text.contains(word), "help lacks {word}:\n{text}");
    }
}

#[test]
fn unknown_argument_exits_2() {
    let out = run_cli(&["--frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--frobnicate"), "stderr: {err}");
    assert!(!err.contains("panicked"), "stderr: {err}");
    // `--config` without its path is a usage error too.
    let out = run_cli(&["--config"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn config_flag_to_a_missing_file_is_an_error() {
    let server = DevServer::start();
    let mut setup = RunnerSetup::new(&server);
    setup.no_config_file = true;
    setup.args = vec!["--config".into(), "nowhere/runner.json".into()];
    // The environment would be enough without a file, but an explicit
    // --config must exist.
    let setup = setup
        .env("RUNNER_URL", &server.url)
        .env("RUNNER_REGISTRATION_CODE", CODE);
    let runner = setup.start();
    assert_startup_error(&server, runner, &["nowhere/runner.json"]);
}

#[test]
fn config_flag_reads_the_given_file() {
    let server = DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("etc")).unwrap();
    let mut setup = RunnerSetup::new(&server).set("runner", "name", json!("from-alt-file"));
    fs::write(
        dir.path().join("etc").join("alt.json"),
        serde_json::to_vec(&setup.config).unwrap(),
    )
    .unwrap();
    // A ./config.json that would not work must be ignored.
    fs::write(dir.path().join("config.json"), "{not json").unwrap();
    setup.no_config_file = true;
    setup.args = vec!["--config".into(), "etc/alt.json".into()];
    let mut runner = setup.start_in(dir);
    let record = wait_registered(&server, &runner);
    assert_eq!(record["name"], "from-alt-file");
    assert_eq!(runner.stop().code(), Some(0));
}

// ---------------------------------------------------------------------------
// Configuration sources.

#[test]
fn environment_only_without_config_file() {
    let server = DevServer::start();
    let mut setup = RunnerSetup::new(&server);
    setup.no_config_file = true;
    let exe = executor_path();
    let setup = setup
        .env("RUNNER_URL", &server.url)
        .env("RUNNER_REGISTRATION_CODE", CODE)
        .env("RUNNER_NAME", "env-only-runner")
        .env("EXECUTOR_DIRECTORY", "work-area")
        .env("FLOMATION_RUNNER_EXECUTABLE_NAME", exe.to_str().unwrap());
    let mut runner = setup.start();
    let record = wait_registered(&server, &runner);
    assert_eq!(record["name"], "env-only-runner");
    wait_for(Duration::from_secs(10), "a poll", || {
        !server.requests_on("poll").is_empty()
    });
    assert!(!runner.path().join("config.json").exists());
    // EXECUTOR_DIRECTORY is where discovery ran (it wrote the manifest there).
    assert!(
        runner
            .path()
            .join("work-area")
            .join("manifest.json")
            .exists(),
        "manifest not in EXECUTOR_DIRECTORY"
    );
    assert!(!runner.path().join("executions").exists());
    let status = runner.stop();
    let log = runner.log();
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    assert!(warn_lines(&log).is_empty(), "warnings:\n{log}");
}

#[test]
fn flomation_variables_beat_the_file_and_the_container_names() {
    let server = DevServer::start();
    // The file points nowhere useful; the environment fixes every key.
    let setup = RunnerSetup::new(&server)
        .set("runner", "url", json!("http://127.0.0.1:9"))
        .set("runner", "registration_code", json!("file-code"))
        .set("runner", "name", json!("file-name"))
        .set("execution", "state_directory", json!("file-state"))
        .env("FLOMATION_API", &server.url)
        .env("RUNNER_URL", "http://127.0.0.1:9")
        .env("FLOMATION_REGISTRATION_CODE", CODE)
        .env("RUNNER_REGISTRATION_CODE", "docker-code")
        .env("FLOMATION_RUNNER_NAME", "env-name")
        .env("RUNNER_NAME", "docker-name")
        .env("FLOMATION_RUNNER_STATE_DIRECTORY", "env-state")
        .env("FLOMATION_RUNNER_CERTIFICATE_PATH", "env-keys/runner.pem");
    let mut runner = setup.start();
    let record = wait_registered(&server, &runner);
    assert_eq!(record["name"], "env-name");
    let reg = &server.requests_on("register")[0];
    assert_eq!(reg["body"]["registration_code"], CODE);

    let state: Value =
        serde_json::from_slice(&fs::read(runner.path().join("env-state/flo.state")).unwrap())
            .unwrap();
    assert_eq!(state["identifier"], record["identifier"]);
    assert!(!runner.path().join("file-state").exists());
    assert!(!runner.path().join("flo.state").exists());
    assert!(runner.path().join("env-keys/runner.pem").exists());
    assert!(!runner.path().join("flomation-runner.pem").exists());
    assert_eq!(runner.stop().code(), Some(0));
}

#[test]
fn container_names_beat_the_file() {
    let server = DevServer::start();
    let setup = RunnerSetup::new(&server)
        .set("runner", "url", json!("http://127.0.0.1:9"))
        .set("runner", "name", json!("file-name"))
        .env("RUNNER_URL", &server.url)
        .env("RUNNER_NAME", "docker-name");
    let mut runner = setup.start();
    let record = wait_registered(&server, &runner);
    assert_eq!(record["name"], "docker-name");
    assert_eq!(runner.stop().code(), Some(0));
}

#[test]
fn go_entrypoint_keys_are_accepted_silently() {
    let server = DevServer::start();
    let setup = RunnerSetup::new(&server)
        .set(
            "execution",
            "execution_install_dir",
            json!("/opt/flomation"),
        )
        .set("execution", "execution_module_dir", json!("/opt/modules"))
        .set("execution", "download_on_start", json!(true));
    let mut runner = setup.start();
    wait_registered(&server, &runner);
    let status = runner.stop();
    let log = runner.log();
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    assert!(warn_lines(&log).is_empty(), "warnings:\n{log}");
    for key in [
        "execution_install_dir",
        "execution_module_dir",
        "download_on_start",
    ] {
        assert!(!log.contains(key), "{key} mentioned:\n{log}");
    }
}

#[test]
fn unknown_keys_are_warned_about_by_name() {
    let server = DevServer::start();
    let mut setup = RunnerSetup::new(&server).set("runner", "colour", json!("blue"));
    setup.config["telemetry"] = json!({"on": true});
    let mut runner = setup.start();
    // Unknown keys do not stop the runner.
    wait_registered(&server, &runner);
    let status = runner.stop();
    let log = runner.log();
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    let warns = warn_lines(&log);
    assert!(
        warns.iter().any(|l| l.contains("runner.colour")),
        "no warning naming runner.colour:\n{log}"
    );
    assert!(
        warns.iter().any(|l| l.contains("telemetry")),
        "no warning naming telemetry:\n{log}"
    );
}

// ---------------------------------------------------------------------------
// Configuration errors: one line naming the file and the key, exit non-zero.

#[test]
fn wrong_type_names_the_file_and_the_key() {
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server)
        .set("runner", "checkin_timeout", json!("five"))
        .start();
    assert_startup_error(&server, runner, &["config.json", "runner.checkin_timeout"]);
}

#[test]
fn wrong_type_in_the_environment_names_the_variable() {
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server)
        .env("FLOMATION_RUNNER_CHECKIN_TIMEOUT", "five")
        .start();
    assert_startup_error(&server, runner, &["FLOMATION_RUNNER_CHECKIN_TIMEOUT"]);
}

#[test]
fn config_that_is_not_json_names_the_file() {
    let server = DevServer::start();
    let runner = start_with_raw_config(&server, "runner:\n  url: http://x\n");
    assert_startup_error(&server, runner, &["config.json"]);
}

#[test]
fn missing_url_names_runner_url() {
    let server = DevServer::start();
    let mut setup = RunnerSetup::new(&server);
    setup.config["runner"]
        .as_object_mut()
        .unwrap()
        .remove("url");
    let runner = setup.start();
    assert_startup_error(&server, runner, &["runner.url"]);
}

#[test]
fn missing_registration_code_names_the_key() {
    let server = DevServer::start();
    let mut setup = RunnerSetup::new(&server);
    setup.config["runner"]
        .as_object_mut()
        .unwrap()
        .remove("registration_code");
    let runner = setup.start();
    assert_startup_error(&server, runner, &["runner.registration_code"]);
}

#[test]
fn no_config_and_no_environment_is_an_error() {
    let server = DevServer::start();
    let mut setup = RunnerSetup::new(&server);
    setup.no_config_file = true;
    let runner = setup.start();
    assert_startup_error(&server, runner, &["runner.url"]);
}

#[test]
fn bad_registration_retry_strategy_names_the_key() {
    let server = DevServer::start();
    let runner = RunnerSetup::new(&server)
        .set(
            "runner",
            "registration_retry",
            json!({"strategy": "sometimes"}),
        )
        .start();
    assert_startup_error(
        &server,
        runner,
        &["config.json", "runner.registration_retry.strategy"],
    );
}
