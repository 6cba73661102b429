//! The container entrypoint (`entrypoint.sh`), run under `sh` outside a
//! container: the image's paths are overridden with `FLO_RUNNER_BIN` and
//! `FLO_RUNNER_MOUNTED_CONFIG`.
//!
//! Most tests use a fake binary that records what it was started with (argv,
//! its exact environment, its pid) into files, so the assertions are exact and
//! the registration code is never printed. The last tests run the real
//! `flo-runner` through the entrypoint against the dev server.
//!
//! Every entrypoint case runs under each POSIX shell found here: `sh` (dash on
//! Debian), and `bash --posix` and `busybox sh` when installed.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use flo_testkit::{executor_path, wait_for, DevServer, Runner, CODE};

const ENTRYPOINT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/entrypoint.sh");
const RUNNER: &str = env!("CARGO_BIN_EXE_flo-runner");

const SECRET: &str = "s3cr3t-'\"-$(code)-`x`-\\";
const QUOTED_NAME: &str = r#"My "quoted" \ runner"#;

/// Records argv (NUL-separated), the exact environment it received (from
/// /proc, NUL-separated) and its pid. Prints nothing that holds a value.
const FAKE: &str = r#"#!/bin/sh
out=${FAKE_OUT:?}
: > "$out/argv"
for a in "$@"; do printf '%s\0' "$a" >> "$out/argv"; done
cat "/proc/$$/environ" > "$out/environ"
printf '%s\n' "$$" > "$out/pid"
echo "fake flo-runner: $# argument(s)"
exit "${FAKE_EXIT:-0}"
"#;

/// A shell to run the entrypoint with: program and leading arguments.
type Shell = (&'static str, &'static [&'static str]);

fn shells() -> Vec<Shell> {
    let mut shells: Vec<Shell> = vec![("sh", &[])];
    let found = |p: &str| {
        Command::new(p)
            .args(["-c", "exit 0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if found("bash") {
        shells.push(("bash", &["--posix"]));
    }
    if Command::new("busybox")
        .args(["sh", "-c", "exit 0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
    {
        shells.push(("busybox", &["sh"]));
    }
    shells
}

/// A scratch directory with the fake binary and a place for its records.
struct Case {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

struct Run {
    output: Output,
    sh_pid: u32,
    out_dir: PathBuf,
}

impl Case {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("bin");
        fs::create_dir(&bin).unwrap();
        let fake = bin.join("flo-runner");
        fs::write(&fake, FAKE).unwrap();
        set_mode(&fake, 0o755);
        fs::create_dir(dir.path().join("out")).unwrap();
        fs::create_dir(dir.path().join("cwd")).unwrap();
        let env = vec![
            ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
            ("FAKE_OUT".into(), path_str(&dir.path().join("out"))),
            ("FLO_RUNNER_BIN".into(), path_str(&fake)),
            (
                "FLO_RUNNER_MOUNTED_CONFIG".into(),
                path_str(&dir.path().join("mnt").join("config.json")),
            ),
        ];
        Self { dir, env }
    }

    fn env(mut self, k: &str, v: &str) -> Self {
        self.env.retain(|(key, _)| key != k);
        self.env.push((k.into(), v.into()));
        self
    }

    /// The three variables Docker mode requires.
    fn docker_vars(self) -> Self {
        self.env("RUNNER_NAME", "edge-1")
            .env("RUNNER_URL", "https://api.example.test")
            .env("RUNNER_REGISTRATION_CODE", SECRET)
    }

    fn mounted_config_path(&self) -> PathBuf {
        self.dir.path().join("mnt").join("config.json")
    }

    /// Writes a config file where the image expects a mounted one.
    fn mount_config(self) -> Self {
        fs::create_dir_all(self.dir.path().join("mnt")).unwrap();
        fs::write(self.mounted_config_path(), "{}").unwrap();
        self
    }

    fn run(&self, shell: Shell, args: &[&str]) -> Run {
        let out_dir = self.dir.path().join("out");
        for f in ["argv", "environ", "pid"] {
            let _ = fs::remove_file(out_dir.join(f));
        }
        let mut cmd = Command::new(shell.0);
        cmd.args(shell.1)
            .arg(ENTRYPOINT)
            .args(args)
            .current_dir(self.dir.path().join("cwd"))
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("run the entrypoint");
        let sh_pid = child.id();
        let output = child.wait_with_output().expect("wait for the entrypoint");
        Run {
            output,
            sh_pid,
            out_dir,
        }
    }

    fn passed_env(&self) -> BTreeMap<String, String> {
        self.env.iter().cloned().collect()
    }
}

impl Run {
    fn text(&self) -> String {
        format!(
            "{}{}",
            String::from_utf8_lossy(&self.output.stdout),
            String::from_utf8_lossy(&self.output.stderr)
        )
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    fn code(&self) -> Option<i32> {
        self.output.status.code()
    }

    fn execed(&self) -> bool {
        self.out_dir.join("argv").exists()
    }

    /// The fake binary's argv (without argv[0]).
    fn argv(&self) -> Vec<String> {
        let raw = fs::read(self.out_dir.join("argv"))
            .unwrap_or_else(|_| panic!("the binary was not started; output:\n{}", self.text()));
        split_nul(&raw)
    }

    /// The fake binary's environment, exactly as it received it.
    fn environ(&self) -> BTreeMap<String, String> {
        let raw = fs::read(self.out_dir.join("environ")).expect("environ");
        split_nul(&raw)
            .into_iter()
            .map(|kv| {
                let (k, v) = kv.split_once('=').expect("KEY=value");
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    fn fake_pid(&self) -> u32 {
        fs::read_to_string(self.out_dir.join("pid"))
            .expect("pid")
            .trim()
            .parse()
            .expect("pid number")
    }

    fn assert_no_secret(&self) {
        let text = self.text();
        assert!(
            !text.contains(SECRET) && !text.contains("s3cr3t"),
            "the registration code was printed:\n{text}"
        );
    }
}

fn split_nul(raw: &[u8]) -> Vec<String> {
    raw.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8(s.to_vec()).expect("utf-8"))
        .collect()
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_string()
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// Variables a shell may add to the environment of what it execs.
const SHELL_VARS: &[&str] = &["PWD", "OLDPWD", "SHLVL", "_"];

/// The binary got exactly the variables it was given (plus what any shell
/// adds), with the same values.
fn assert_env_untouched(case: &Case, run: &Run) {
    let mut got = run.environ();
    for v in SHELL_VARS {
        got.remove(*v);
    }
    assert_eq!(got, case.passed_env(), "environment changed on the way");
}

#[test]
fn docker_mode_execs_the_binary_with_the_environment_untouched() {
    for shell in shells() {
        let case = Case::new()
            .docker_vars()
            .env("EXECUTOR_MAX_CONCURRENT", "3");
        let run = case.run(shell, &[]);
        assert_eq!(run.code(), Some(0), "{shell:?}: {}", run.text());
        assert!(
            run.argv().is_empty(),
            "{shell:?}: no --config in Docker mode: {:?}",
            run.argv()
        );
        assert_env_untouched(&case, &run);
        assert_eq!(
            run.fake_pid(),
            run.sh_pid,
            "{shell:?}: the binary must be exec'd, not a child"
        );
        assert!(run.stderr().contains("Docker mode"), "{}", run.text());
        run.assert_no_secret();
    }
}

#[test]
fn docker_mode_values_with_quotes_and_backslashes_reach_the_binary_unchanged() {
    let nasty_url = "https://api.example.test/?a='1'&b=\"2\"\\$HOME";
    for shell in shells() {
        let case = Case::new()
            .docker_vars()
            .env("RUNNER_NAME", QUOTED_NAME)
            .env("RUNNER_URL", nasty_url)
            .env(
                "MTLS_API_URL",
                "$(touch pwned) `touch pwned2` \n second line",
            );
        let run = case.run(shell, &[]);
        assert_eq!(run.code(), Some(0), "{shell:?}: {}", run.text());
        let env = run.environ();
        assert_eq!(env["RUNNER_NAME"], QUOTED_NAME);
        assert_eq!(env["RUNNER_URL"], nasty_url);
        assert_eq!(env["RUNNER_REGISTRATION_CODE"], SECRET);
        assert_env_untouched(&case, &run);
        let cwd = case.dir.path().join("cwd");
        assert!(!cwd.join("pwned").exists() && !cwd.join("pwned2").exists());
        // Nothing is written as a configuration file.
        assert_eq!(
            fs::read_dir(&cwd).unwrap().count(),
            0,
            "the entrypoint wrote files"
        );
        assert!(!case.mounted_config_path().exists());
        run.assert_no_secret();
    }
}

#[test]
fn docker_mode_missing_variables_exit_1_with_help_and_no_secret() {
    let required = ["RUNNER_NAME", "RUNNER_URL", "RUNNER_REGISTRATION_CODE"];
    for shell in shells() {
        // Each one missing on its own, then all of them.
        let mut cases: Vec<Vec<&str>> = required.iter().map(|r| vec![*r]).collect();
        cases.push(required.to_vec());
        for missing in cases {
            let mut case = Case::new().docker_vars();
            case.env.retain(|(k, _)| !missing.contains(&k.as_str()));
            let run = case.run(shell, &[]);
            let text = run.stderr();
            assert_eq!(
                run.code(),
                Some(1),
                "{shell:?} without {missing:?}: {}",
                run.text()
            );
            assert!(
                !run.execed(),
                "the binary must not start without {missing:?}"
            );
            let reason = text
                .lines()
                .find(|l| l.contains("missing or empty"))
                .unwrap_or_else(|| panic!("no line naming the missing variables:\n{text}"));
            for r in required {
                assert_eq!(
                    reason.contains(&format!(" {r}")),
                    missing.contains(&r),
                    "the reason line must name exactly the missing variables: {reason}"
                );
                assert!(text.contains(r), "help must list {r}:\n{text}");
            }
            for optional in [
                "RUNNER_CHECKIN_TIMEOUT",
                "EXECUTOR_MAX_CONCURRENT",
                "EXECUTOR_DIRECTORY",
            ] {
                assert!(
                    text.contains(optional),
                    "help must list {optional}:\n{text}"
                );
            }
            assert!(
                text.contains("docker run"),
                "help must show a docker run example:\n{text}"
            );
            assert!(
                text.contains("FLO_RUNNER_CONFIG"),
                "help must mention the file option"
            );
            run.assert_no_secret();
        }
    }
}

#[test]
fn docker_mode_empty_variable_counts_as_missing() {
    for shell in shells() {
        let case = Case::new().docker_vars().env("RUNNER_URL", "");
        let run = case.run(shell, &[]);
        assert_eq!(run.code(), Some(1), "{}", run.text());
        assert!(!run.execed());
        assert!(run.stderr().contains("RUNNER_URL"));
        run.assert_no_secret();
    }
}

#[test]
fn docker_mode_accepts_the_flomation_names() {
    for shell in shells() {
        let case = Case::new()
            .env("FLOMATION_RUNNER_NAME", "edge-2")
            .env("FLOMATION_API", "https://api.example.test")
            .env("FLOMATION_REGISTRATION_CODE", SECRET);
        let run = case.run(shell, &[]);
        assert_eq!(run.code(), Some(0), "{}", run.text());
        assert!(run.argv().is_empty());
        assert_env_untouched(&case, &run);
        run.assert_no_secret();
    }
}

#[test]
fn kubernetes_mode_uses_the_mounted_config_file() {
    for shell in shells() {
        // No RUNNER_* variables: the file and the Secret's variable suffice.
        let case = Case::new()
            .mount_config()
            .env("FLOMATION_REGISTRATION_CODE", SECRET);
        let run = case.run(shell, &[]);
        assert_eq!(run.code(), Some(0), "{shell:?}: {}", run.text());
        assert_eq!(
            run.argv(),
            vec![
                "--config".to_string(),
                path_str(&case.mounted_config_path())
            ]
        );
        assert_env_untouched(&case, &run);
        assert_eq!(run.fake_pid(), run.sh_pid, "the binary must be exec'd");
        assert!(run.stderr().contains("Kubernetes mode"), "{}", run.text());
        assert_eq!(
            fs::read_to_string(case.mounted_config_path()).unwrap(),
            "{}"
        );
        run.assert_no_secret();
    }
}

#[test]
fn flo_runner_config_is_used_and_wins_over_the_mounted_file() {
    for shell in shells() {
        let case = Case::new().mount_config();
        let own = case.dir.path().join("etc-flo-runner.json");
        fs::write(&own, "{}").unwrap();
        let case = case.env("FLO_RUNNER_CONFIG", &path_str(&own));
        let run = case.run(shell, &[]);
        assert_eq!(run.code(), Some(0), "{}", run.text());
        assert_eq!(run.argv(), vec!["--config".to_string(), path_str(&own)]);
        assert_env_untouched(&case, &run);
    }
}

#[test]
fn flo_runner_config_naming_a_missing_file_is_an_error() {
    for shell in shells() {
        let case = Case::new()
            .docker_vars()
            .env("FLO_RUNNER_CONFIG", "/nonexistent/flo-runner/config.json");
        let run = case.run(shell, &[]);
        assert_eq!(run.code(), Some(1), "{}", run.text());
        assert!(!run.execed());
        assert!(run.stderr().contains("/nonexistent/flo-runner/config.json"));
        run.assert_no_secret();
    }
}

#[test]
fn health_and_check_run_the_subcommand_with_the_same_config() {
    for shell in shells() {
        for sub in ["health", "check"] {
            // Docker mode: no variable check, the subcommand reports problems.
            let case = Case::new();
            let run = case.run(shell, &[sub]);
            assert_eq!(run.code(), Some(0), "{}", run.text());
            assert_eq!(run.argv(), vec![sub.to_string()]);
            assert_eq!(run.fake_pid(), run.sh_pid);

            // Its exit status is the entrypoint's (what HEALTHCHECK sees).
            let case = Case::new().env("FAKE_EXIT", "1");
            let run = case.run(shell, &[sub]);
            assert_eq!(run.code(), Some(1));

            // Kubernetes mode: the same file as the runner.
            let case = Case::new().mount_config();
            let run = case.run(shell, &[sub, "--verbose"]);
            assert_eq!(run.code(), Some(0), "{}", run.text());
            assert_eq!(
                run.argv(),
                vec![
                    sub.to_string(),
                    "--config".into(),
                    path_str(&case.mounted_config_path()),
                    "--verbose".into()
                ]
            );
            // Nothing but the subcommand's own output: no mode banner.
            assert_eq!(run.stderr(), "");
        }
    }
}

#[test]
fn extra_arguments_are_passed_through() {
    for shell in shells() {
        let case = Case::new().docker_vars();
        let run = case.run(shell, &["--some-flag", "a value"]);
        assert_eq!(run.code(), Some(0), "{}", run.text());
        assert_eq!(run.argv(), vec!["--some-flag", "a value"]);

        let case = Case::new().mount_config();
        let run = case.run(shell, &["--some-flag"]);
        assert_eq!(
            run.argv(),
            vec![
                "--config".to_string(),
                path_str(&case.mounted_config_path()),
                "--some-flag".into()
            ]
        );

        // --help and --version work without any configuration.
        for flag in ["--help", "--version"] {
            let case = Case::new();
            let run = case.run(shell, &[flag]);
            assert_eq!(run.code(), Some(0), "{}", run.text());
            assert_eq!(run.argv(), vec![flag]);
        }
    }
}

#[test]
fn a_missing_binary_is_reported() {
    for shell in shells() {
        let case = Case::new()
            .docker_vars()
            .env("FLO_RUNNER_BIN", "/nonexistent/flo-runner");
        let run = case.run(shell, &[]);
        assert_eq!(run.code(), Some(127), "{}", run.text());
        assert!(run.stderr().contains("/nonexistent/flo-runner"));
        run.assert_no_secret();
    }
}

// --- The real runner through the entrypoint -------------------------------

/// Starts `sh entrypoint.sh` with the real binary, in a fresh directory.
fn start_real(env: &[(&str, String)]) -> Runner {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = fs::File::create(dir.path().join("runner.log")).unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg(ENTRYPOINT)
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("FLO_RUNNER_BIN", RUNNER)
        .env(
            "FLO_RUNNER_MOUNTED_CONFIG",
            dir.path().join("mnt").join("config.json"),
        )
        .env(
            "FLOMATION_RUNNER_STATE_DIRECTORY",
            format!("{}/state/", dir.path().display()),
        )
        .env(
            "FLOMATION_RUNNER_CERTIFICATE_PATH",
            dir.path().join("state").join("flomation-runner.pem"),
        )
        .env("EXECUTOR_DIRECTORY", dir.path().join("workspace"))
        .env("FLOMATION_RUNNER_EXECUTABLE_NAME", executor_path())
        .env("FLOMATION_RUNNER_REGISTRATION_RETRY_STRATEGY", "none")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    fs::create_dir_all(dir.path().join("state")).unwrap();
    fs::create_dir_all(dir.path().join("workspace")).unwrap();
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("start the entrypoint");
    Runner {
        child: Some(child),
        dir,
    }
}

fn registered_names(server: &DevServer) -> Vec<String> {
    server
        .runners()
        .iter()
        .map(|r| r["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn real_runner_docker_mode_registers_with_the_exact_name_and_stops_on_sigterm() {
    let server = DevServer::start();
    let mut runner = start_real(&[
        ("RUNNER_NAME", QUOTED_NAME.to_string()),
        ("RUNNER_URL", server.url.clone()),
        ("RUNNER_REGISTRATION_CODE", CODE.to_string()),
    ]);
    wait_for(Duration::from_secs(30), "registration", || {
        !registered_names(&server).is_empty()
    });
    assert_eq!(registered_names(&server), vec![QUOTED_NAME.to_string()]);
    // The shell exec'd the runner: the signal reaches it directly.
    runner.signal("TERM");
    let status = runner.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "log:\n{}", runner.log());
    let log = runner.log();
    assert!(
        !log.contains(CODE),
        "the registration code is in the log:\n{log}"
    );
}

#[test]
fn real_runner_kubernetes_mode_uses_the_file_and_reports_healthy() {
    let server = DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    // The URL from the file, the code from the environment (the Secret).
    fs::write(
        &config,
        serde_json::json!({"runner": {"url": server.url, "name": "from-file"}}).to_string(),
    )
    .unwrap();
    let env = [
        ("FLO_RUNNER_CONFIG", path_str(&config)),
        ("FLOMATION_REGISTRATION_CODE", CODE.to_string()),
    ];
    let mut runner = start_real(&env);
    wait_for(Duration::from_secs(30), "registration", || {
        registered_names(&server) == vec!["from-file".to_string()]
    });

    // `entrypoint.sh health` (the image's HEALTHCHECK), same environment.
    let health = |runner: &Runner| {
        let mut cmd = Command::new("sh");
        cmd.arg(ENTRYPOINT)
            .arg("health")
            .current_dir(runner.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("FLO_RUNNER_BIN", RUNNER)
            .env("FLO_RUNNER_MOUNTED_CONFIG", runner.path().join("none.json"))
            .env(
                "FLOMATION_RUNNER_STATE_DIRECTORY",
                format!("{}/state/", runner.path().display()),
            );
        for (k, v) in &env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).output().expect("health")
    };
    wait_for(Duration::from_secs(30), "a healthy report", || {
        health(&runner).status.success()
    });

    runner.signal("TERM");
    let status = runner.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "log:\n{}", runner.log());
    let after = health(&runner);
    assert!(
        !after.status.success(),
        "health must fail once the runner is gone"
    );
    assert!(!runner.log().contains(CODE));
}

/// The `builder` stage of the Dockerfile, one line per element.
fn builder_stage(root: &Path) -> Vec<String> {
    let dockerfile = fs::read_to_string(root.join("Dockerfile")).unwrap();
    dockerfile
        .lines()
        .skip_while(|l| !l.contains(" AS builder"))
        .skip(1)
        .take_while(|l| !l.starts_with("FROM "))
        .map(str::to_string)
        .collect()
}

/// The `COPY` lines among `lines`, as (sources, destination).
fn copies(lines: &[String]) -> Vec<(Vec<String>, String)> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("COPY "))
        .map(|l| {
            let mut words: Vec<String> = l.split_whitespace().map(str::to_string).collect();
            let dest = words.pop().unwrap();
            (words, dest)
        })
        .collect()
}

/// Copies as `COPY` does (WORKDIR is `dir`): a directory's contents into
/// the destination, a file into it when it ends in `/`.
fn copy_like_docker(root: &Path, dir: &Path, copies: &[(Vec<String>, String)]) {
    for (sources, dest) in copies {
        for source in sources {
            let from = root.join(source);
            let to = match from.file_name() {
                Some(name) if from.is_file() && dest.ends_with('/') => dir.join(dest).join(name),
                _ => dir.join(dest),
            };
            fs::create_dir_all(to.parent().unwrap()).unwrap();
            let status = Command::new("cp")
                .arg("-rT")
                .arg(&from)
                .arg(&to)
                .status()
                .unwrap();
            assert!(status.success(), "COPY {source} {dest}");
        }
    }
}

/// `cargo check` of the runner alone in `dir`, sharing this build's target
/// directory (so it only checks).
fn cargo_check_runner(root: &Path, dir: &Path) -> Output {
    let target = std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| root.join("target").into());
    Command::new(env!("CARGO"))
        .args([
            "check",
            "--locked",
            "--offline",
            "-p",
            "flo-runner",
            "--bin",
            "flo-runner",
        ])
        .env("CARGO_TARGET_DIR", target)
        .current_dir(dir)
        .output()
        .unwrap()
}

/// The dependency layer of the image's build stage: the files copied before
/// its first `RUN`, plus the stub sources that `RUN` makes (the commands
/// before its `cargo build`), must be enough for cargo to build the
/// dependencies of the runner; otherwise the layer fails, or misses crates.
#[test]
fn the_dockerfile_dependency_layer_builds_from_stubs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let stage = builder_stage(root);
    let before_run: Vec<String> = stage
        .iter()
        .take_while(|l| !l.starts_with("RUN "))
        .cloned()
        .collect();
    let before_run = copies(&before_run);
    let sources: Vec<&str> = before_run
        .iter()
        .flat_map(|(s, _)| s.iter().map(String::as_str))
        .collect();
    assert!(
        sources.iter().all(|s| !s.ends_with("src")),
        "the dependency layer copies sources: {sources:?}"
    );
    // The first RUN, its continuation lines joined.
    let mut run = String::new();
    for l in stage.iter().skip_while(|l| !l.starts_with("RUN ")) {
        let l = l.trim();
        match l.strip_suffix('\\') {
            Some(part) => run.push_str(part),
            None => {
                run.push_str(l);
                break;
            }
        }
        run.push(' ');
    }
    let run = run.strip_prefix("RUN ").unwrap();
    let (stubs, build) = run
        .split_once("&& cargo build")
        .unwrap_or_else(|| panic!("the first RUN of the builder stage builds nothing: {run}"));
    assert!(
        build.starts_with(" --release --locked -p flo-runner --bin flo-runner"),
        "{build}"
    );
    let dir = tempfile::tempdir().unwrap();
    copy_like_docker(root, dir.path(), &before_run);
    let status = Command::new("sh")
        .args(["-euc", stubs])
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(status.success(), "the stub commands failed: {stubs}");
    let out = cargo_check_runner(root, dir.path());
    assert!(
        out.status.success(),
        "cargo rejects the dependency layer's stubs ({stubs}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The image's build stage copies only some of the repository. Without a
/// Docker engine here, this checks the part that broke before: `cargo check`
/// of the runner must work with exactly those files (cargo checks, for
/// instance, that every workspace member's manifest and the patched
/// dependency exist). The sources are the `COPY` lines of the `builder`
/// stage, minus `.dockerignore`'s `*.md`. (`make container-check` builds the
/// image for real, where podman runs.)
#[test]
fn the_dockerfile_build_stage_copies_what_cargo_needs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let stage = builder_stage(root);
    let copies = copies(&stage);
    let sources: Vec<&str> = copies
        .iter()
        .flat_map(|(s, _)| s.iter().map(String::as_str))
        .collect();
    assert!(sources.contains(&"Cargo.toml"), "{stage:?}");
    for server_side in ["crates/devserver/src", "crates/testkit/src", "benches"] {
        assert!(
            !sources.contains(&server_side),
            "the runner's image builds only the runner, yet copies {server_side}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    copy_like_docker(root, dir.path(), &copies);
    // .dockerignore leaves out every *.md.
    let status = Command::new("find")
        .arg(dir.path())
        .args(["-name", "*.md", "-delete"])
        .status()
        .unwrap();
    assert!(status.success());
    let out = cargo_check_runner(root, dir.path());
    assert!(
        out.status.success(),
        "cargo rejects the build stage's files ({sources:?}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
