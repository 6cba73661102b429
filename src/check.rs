//! `flo-runner check`: a checklist an operator runs before (or instead of)
//! starting the runner. Every line is one thing that must work; `[warn]`
//! lines are features this API does not offer (the runner works without).

use std::path::Path;

use crate::api;
use crate::api::Generation;
use crate::config::Config;
use crate::executor;
use crate::fsutil;
use crate::identity;
use crate::ids::RunnerIdentifier;

/// Prints the checklist; returns whether everything passed.
pub fn run(config: &Config, out: &mut dyn std::io::Write) -> bool {
    let mut ok = true;
    let mut line = |mark: Mark, what: &str, detail: String| {
        ok &= mark != Mark::Fail;
        let detail = crate::logging::clean(&detail);
        let _ = writeln!(out, "[{}] {what}: {detail}", mark.as_str());
    };
    line(
        Mark::Ok,
        "configuration",
        match &config.source {
            Some(p) => format!("{} (plus environment)", p.display()),
            None => "environment only".to_string(),
        },
    );
    for (what, dir) in [
        ("state directory", &config.execution.state_directory),
        ("execution directory", &config.execution.execution_directory),
    ] {
        match writable(dir) {
            Ok(()) => line(Mark::Ok, what, format!("{} is writable", dir.display())),
            Err(e) => line(Mark::Fail, what, format!("{}: {e}", dir.display())),
        }
    }
    match crate::statedir::held_by(&config.execution.state_directory) {
        // Not a failure: `check` is often run beside the runner it checks.
        Ok(Some(pid)) => line(
            Mark::Ok,
            "state directory lock",
            format!(
                "in use by a running flo-runner (pid {pid}); a second runner on {} would exit",
                config.execution.state_directory.display()
            ),
        ),
        Ok(None) => line(Mark::Ok, "state directory lock", "free".to_string()),
        Err(e) => line(
            Mark::Fail,
            "state directory lock",
            format!("{}: {e}", config.execution.state_directory.display()),
        ),
    }
    match identity::inspect(
        &config.execution.state_directory,
        &config.runner.certificate,
    ) {
        Ok(d) => line(Mark::Ok, "identity", d),
        Err(e) => line(Mark::Fail, "identity", e.to_string()),
    }
    match executor::discover(config) {
        Ok(d) => line(
            Mark::Ok,
            "executor",
            format!(
                "{} runs (version {})",
                config.execution.executable_name,
                d.version.trim()
            ),
        ),
        Err(e) => line(Mark::Fail, "executor", e.to_string()),
    }
    let net = match crate::net::Net::from_config(config, &|k| std::env::var(k).ok()) {
        Ok(net) => {
            line(
                Mark::Ok,
                "network",
                match &net.proxy_url {
                    Some(p) => format!("TLS settings usable; proxy {p}"),
                    None => "TLS settings usable; no proxy".to_string(),
                },
            );
            net
        }
        Err(e) => {
            line(Mark::Fail, "network", e.to_string());
            crate::net::Net::system()
        }
    };
    let url = &config.runner.url;
    match api::probe(url, &own_identifier(&config.execution.state_directory), &net) {
        Err(e) => line(Mark::Fail, "API", format!("{url}: {e}")),
        Ok(probe) => match probe.generation {
            Some(generation) => {
                line(Mark::Ok,
                    "API",
                    format!(
                        "{url} has the runner's poll (API generation {}: {})",
                        generation.as_str(),
                        match generation {
                            Generation::March2026 => "GET poll, PROTOCOL.md §9",
                            _ => "POST poll",
                        }
                    ),
                );
                let (logs, cancel) = (probe.logs, probe.status);
                line(
                    if logs { Mark::Ok } else { Mark::Warn },
                    "log streaming",
                    if logs {
                        "the API has the /logs route".to_string()
                    } else {
                        "unavailable with this API (no /logs route): output stays in each execution's output.log and in its result's state.logs".to_string()
                    },
                );
                line(
                    if cancel { Mark::Ok } else { Mark::Warn },
                    "cancel",
                    if cancel {
                        "the API has the /status route".to_string()
                    } else {
                        "unavailable with this API (no /status route): an execution cancelled on the server runs to its end; execution.timeout_secs still applies".to_string()
                    },
                );
            }
            None => line(Mark::Fail,
                "API",
                match probe.get {
                    Some(get) if matches!((probe.post, get), (404 | 405, 404 | 405)) => format!(
                        "{url} does not answer the runner's poll in either form (POST: HTTP {}, GET: HTTP {get}): it is not a Flomation API, or not its base URL; check runner.url",
                        probe.post
                    ),
                    Some(get) => format!(
                        "{url} has no POST poll (HTTP {}) and answers the GET poll with HTTP {get}; check runner.url",
                        probe.post
                    ),
                    None => format!(
                        "{url} answers the runner's poll with HTTP {}; check runner.url, or try again if the API is failing",
                        probe.post
                    ),
                },
            ),
        },
    }
    ok
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mark {
    Ok,
    Warn,
    Fail,
}

impl Mark {
    fn as_str(self) -> &'static str {
        match self {
            Mark::Ok => " ok ",
            Mark::Warn => "warn",
            Mark::Fail => "FAIL",
        }
    }
}

/// The runner's identifier when it has one (the API knows it, so an unsigned
/// poll in its name is refused rather than unknown), else a stand-in.
fn own_identifier(state_dir: &Path) -> String {
    std::fs::read(state_dir.join(identity::STATE_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("identifier")?.as_str().map(str::to_string))
        .filter(|id| RunnerIdentifier::parse(id).is_some())
        .unwrap_or_else(|| "floRunnerCheckId".to_string())
}

fn writable(dir: &Path) -> std::io::Result<()> {
    fsutil::create_dir_all(dir)?;
    tempfile::Builder::new()
        .prefix(".flo-check-")
        .tempfile_in(dir)
        .map(drop)
}
