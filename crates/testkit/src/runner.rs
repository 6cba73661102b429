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
        if !self.no_config_file {
            fs::write(
                dir.path().join("config.json"),
                serde_json::to_vec_pretty(&self.config).expect("config json"),
            )
            .expect("write config");
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("runner.log"))
            .expect("runner.log");
        let mut cmd = Command::new(runner_bin());
        if let Some((uid, gid)) = self.user {
            use std::os::unix::process::CommandExt;
            let status = Command::new("chown")
                .args(["-R", &format!("{uid}:{gid}")])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown the runner directory");
            cmd.uid(uid).gid(gid);
        }
        cmd.current_dir(dir.path())
            .args(&self.args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start flo-runner");
        Runner {
            child: Some(child),
            dir,
        }
    }
}

impl Runner {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("runner.log")).unwrap_or_default()
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
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(80)..].join("\n")
    }
}
