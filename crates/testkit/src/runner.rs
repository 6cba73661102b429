//! A real `flo-runner` process in a temporary directory of its own: its
//! config.json, its log (`runner.log`), its state and execution directories.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{executor_path, runner_bin, DevServer, CODE};

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
    /// `RUST_LOG` for the runner: `debug` unless changed; `None` leaves it
    /// unset, so the runner logs at its default level (info), as the
    /// benchmarks want it.
    pub rust_log: Option<String>,
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
            rust_log: Some("debug".into()),
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
        let mut runner = Runner { child: None, dir };
        runner.restart(&self);
        runner
    }

    /// The command that starts the runner in `dir`, once its config.json is
    /// written and its log opened.
    fn command(&self, dir: &Path) -> Command {
        if !self.no_config_file {
            fs::write(
                dir.join("config.json"),
                serde_json::to_vec_pretty(&self.config).expect("config json"),
            )
            .expect("write config");
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("runner.log"))
            .expect("runner.log");
        let mut cmd = Command::new(runner_bin());
        if let Some((uid, gid)) = self.user {
            use std::os::unix::process::CommandExt;
            let status = Command::new("chown")
                .args(["-R", &format!("{uid}:{gid}")])
                .arg(dir)
                .status()
                .expect("chown");
            assert!(status.success(), "chown the runner directory");
            cmd.uid(uid).gid(gid);
        }
        cmd.current_dir(dir)
            .args(&self.args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(level) = &self.rust_log {
            cmd.env("RUST_LOG", level);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }
}

impl Runner {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("runner.log")).unwrap_or_default()
    }

    /// Starts the stopped runner again in its directory with `setup` (a
    /// config for another server, say; the identity stays). Returns the
    /// time just before the spawn, which start-up is timed from.
    pub fn restart(&mut self, setup: &RunnerSetup) -> Instant {
        assert!(self.child.is_none(), "restart: the runner is still running");
        let mut cmd = setup.command(self.dir.path());
        let spawned = Instant::now();
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "start flo-runner {}: {e}",
                cmd.get_program().to_string_lossy()
            )
        });
        self.child = Some(child);
        spawned
    }

    /// Waits until `server` lists this runner as registered and returns its
    /// identifier; an error, with the log's last lines, if the runner exits
    /// first or `limit` passes.
    pub fn wait_registered(
        &mut self,
        server: &DevServer,
        limit: Duration,
    ) -> Result<String, String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(id) = self.saved_identifier() {
                let runners = server.client().runners().map_err(|e| e.to_string())?;
                if runners.iter().any(|r| r["identifier"] == id.as_str()) {
                    return Ok(id);
                }
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let tail = self.last_log_lines(5).join(" | ");
                return Err(format!("runner exited ({status}): {tail}"));
            }
            if Instant::now() > deadline {
                let tail = self.last_log_lines(5).join(" | ");
                return Err(format!("runner not registered: {tail}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The identifier in flo.state, once the runner has saved one.
    fn saved_identifier(&self) -> Option<String> {
        let state: Value =
            serde_json::from_slice(&fs::read(self.path().join("flo.state")).ok()?).ok()?;
        state["identifier"].as_str().map(str::to_string)
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

    /// Started and not exited yet.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().expect("try_wait").is_none())
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

impl Runner {
    /// The last 80 lines of the runner's log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.last_log_lines(80).join("\n")
    }

    /// The last `n` lines of the runner's log.
    pub fn last_log_lines(&self, n: usize) -> Vec<String> {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..]
            .iter()
            .map(|l| l.to_string())
            .collect()
    }
}
