//! A runner as the bench runs it: flo-testkit's [`Runner`] in a directory
//! of the suite's, with the noop executor, a 5 s check-in and every other
//! setting at its default (info logging included).

use std::path::Path;
use std::time::{Duration, Instant};

use flo_testkit::{Runner, RunnerSetup, CODE};
use serde_json::json;

use crate::server::Server;
use crate::Res;
use crate::{dirs, executor};

/// The runner's setup for `server` with `slots` executors, in `dir`.
pub fn setup(server: &Server, slots: u32, dir: &Path) -> RunnerSetup {
    let config = json!({
        "runner": {
            "url": server.kit.url,
            "registration_code": CODE,
            "name": "bench-runner",
            "checkin_timeout": 5,
            "registration_retry": {"strategy": "none"}
        },
        "execution": {
            "max_concurrent_executors": slots,
            "executable_name": executor::noop().to_string_lossy(),
            "execution_directory": dir.join("executions").to_string_lossy()
        }
    });
    RunnerSetup {
        config,
        env: Vec::new(),
        no_config_file: false,
        args: vec![
            "--config".into(),
            dir.join("config.json").to_string_lossy().into_owned(),
        ],
        user: None,
        rust_log: None,
    }
}

/// A runner for `server` in a fresh directory under `base`, started.
pub fn start(server: &Server, slots: u32, base: Option<&Path>) -> Res<Runner> {
    let dir = dirs::temp_dir_handle(base)?;
    Ok(setup(server, slots, dir.path()).start_in(dir))
}

/// [`start`], then waits for the registration.
pub fn start_registered(server: &Server, slots: u32, base: Option<&Path>) -> Res<Runner> {
    let mut runner = start(server, slots, base)?;
    runner.wait_registered(&server.kit, Duration::from_secs(60))?;
    Ok(runner)
}

/// [`start_registered`], then lets start-up finish: the runner's first poll
/// is held at the server.
pub fn start_settled(server: &Server, slots: u32) -> Res<Runner> {
    let runner = start_registered(server, slots, None)?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(runner)
}

/// Starts the stopped `runner` again, pointed at `server` (its identity
/// stays); returns the time just before the spawn.
pub fn restart(runner: &mut Runner, server: &Server, slots: u32) -> Instant {
    let setup = setup(server, slots, runner.path());
    runner.restart(&setup)
}
