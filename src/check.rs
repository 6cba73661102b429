//! `flo-runner check`: a checklist an operator runs before (or instead of)
//! starting the runner. Every line is one thing that must work.

use std::path::Path;

use crate::api;
use crate::config::Config;
use crate::executor;
use crate::fsutil;
use crate::identity;

/// Prints the checklist; returns whether everything passed.
pub fn run(config: &Config, out: &mut dyn std::io::Write) -> bool {
    let mut ok = true;
    let mut line = |pass: bool, what: &str, detail: String| {
        ok &= pass;
        let _ = writeln!(
            out,
            "[{}] {what}: {detail}",
            if pass { " ok " } else { "FAIL" }
        );
    };
    line(
        true,
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
            Ok(()) => line(true, what, format!("{} is writable", dir.display())),
            Err(e) => line(false, what, format!("{}: {e}", dir.display())),
        }
    }
    match crate::statedir::held_by(&config.execution.state_directory) {
        // Not a failure: `check` is often run beside the runner it checks.
        Ok(Some(pid)) => line(
            true,
            "state directory lock",
            format!(
                "in use by a running flo-runner (pid {pid}); a second runner on {} would exit",
                config.execution.state_directory.display()
            ),
        ),
        Ok(None) => line(true, "state directory lock", "free".to_string()),
        Err(e) => line(
            false,
            "state directory lock",
            format!("{}: {e}", config.execution.state_directory.display()),
        ),
    }
    match identity::inspect(
        &config.execution.state_directory,
        &config.runner.certificate,
    ) {
        Ok(d) => line(true, "identity", d),
        Err(e) => line(false, "identity", e.to_string()),
    }
    match executor::discover(config) {
        Ok(d) => line(
            true,
            "executor",
            format!(
                "{} runs (version {})",
                config.execution.executable_name,
                d.version.trim()
            ),
        ),
        Err(e) => line(false, "executor", e.to_string()),
    }
    let net = match crate::net::Net::from_config(config, &|k| std::env::var(k).ok()) {
        Ok(net) => {
            line(
                true,
                "network",
                match &net.proxy_url {
                    Some(p) => format!("TLS settings usable; proxy {p}"),
                    None => "TLS settings usable; no proxy".to_string(),
                },
            );
            net
        }
        Err(e) => {
            line(false, "network", e.to_string());
            crate::net::Net::system()
        }
    };
    match api::probe(&config.runner.url, &net) {
        Ok(code) => line(
            true,
            "API",
            format!("{} answers (HTTP {code})", config.runner.url),
        ),
        Err(e) => line(false, "API", format!("{}: {e}", config.runner.url)),
    }
    ok
}

fn writable(dir: &Path) -> std::io::Result<()> {
    fsutil::create_dir_all(dir)?;
    tempfile::Builder::new()
        .prefix(".flo-check-")
        .tempfile_in(dir)
        .map(drop)
}
