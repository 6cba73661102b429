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
use crate::net::Net;

/// Prints the checklist; returns whether everything passed.
pub fn run(config: &Config, out: &mut dyn std::io::Write) -> bool {
    let mut list = Checklist { out, ok: true };
    configuration(&mut list, config);
    directories(&mut list, config);
    lock(&mut list, config);
    identity(&mut list, config);
    executor(&mut list, config);
    let net = network(&mut list, config);
    api(&mut list, config, &net);
    list.ok
}

/// The printed lines, and whether none of them failed.
struct Checklist<'a> {
    out: &'a mut dyn std::io::Write,
    ok: bool,
}

impl Checklist<'_> {
    fn line(&mut self, mark: Mark, what: &str, detail: String) {
        self.ok &= mark != Mark::Fail;
        let detail = crate::logging::clean(&detail);
        let _ = writeln!(self.out, "[{}] {what}: {detail}", mark.as_str());
    }

    /// A feature the runner works without: `[warn]` when it is missing.
    fn feature(&mut self, what: &str, present: bool, yes: &str, no: &str) {
        let (mark, detail) = if present {
            (Mark::Ok, yes)
        } else {
            (Mark::Warn, no)
        };
        self.line(mark, what, detail.to_string());
    }
}

fn configuration(list: &mut Checklist, config: &Config) {
    let detail = match &config.source {
        Some(p) => format!("{} (plus environment)", p.display()),
        None => "environment only".to_string(),
    };
    list.line(Mark::Ok, "configuration", detail);
}

fn directories(list: &mut Checklist, config: &Config) {
    for (what, dir) in [
        ("state directory", &config.execution.state_directory),
        ("execution directory", &config.execution.execution_directory),
    ] {
        match writable(dir) {
            Ok(()) => list.line(Mark::Ok, what, format!("{} is writable", dir.display())),
            Err(e) => list.line(Mark::Fail, what, format!("{}: {e}", dir.display())),
        }
    }
}

fn lock(list: &mut Checklist, config: &Config) {
    let dir = &config.execution.state_directory;
    let what = "state directory lock";
    match crate::statedir::held_by(dir) {
        // Not a failure: `check` is often run beside the runner it checks.
        Ok(Some(pid)) => list.line(
            Mark::Ok,
            what,
            format!(
                "in use by a running flo-runner (pid {pid}); a second runner on {} would exit",
                dir.display()
            ),
        ),
        Ok(None) => list.line(Mark::Ok, what, "free".to_string()),
        Err(e) => list.line(Mark::Fail, what, format!("{}: {e}", dir.display())),
    }
}

fn identity(list: &mut Checklist, config: &Config) {
    match identity::inspect(
        &config.execution.state_directory,
        &config.runner.certificate,
    ) {
        Ok(d) => list.line(Mark::Ok, "identity", d),
        Err(e) => list.line(Mark::Fail, "identity", e.to_string()),
    }
}

fn executor(list: &mut Checklist, config: &Config) {
    match executor::discover(config) {
        Ok(d) => list.line(
            Mark::Ok,
            "executor",
            format!(
                "{} runs (version {})",
                config.execution.executable_name,
                d.version.trim()
            ),
        ),
        Err(e) => list.line(Mark::Fail, "executor", e.to_string()),
    }
}

/// The network settings the API step uses: the configured ones, or the
/// system's when they are unusable (the API is still worth probing).
fn network(list: &mut Checklist, config: &Config) -> Net {
    match Net::from_config(config, &|k| std::env::var(k).ok()) {
        Ok(net) => {
            let detail = match &net.proxy_url {
                Some(p) => format!("TLS settings usable; proxy {p}"),
                None => "TLS settings usable; no proxy".to_string(),
            };
            list.line(Mark::Ok, "network", detail);
            net
        }
        Err(e) => {
            list.line(Mark::Fail, "network", e.to_string());
            Net::system()
        }
    }
}

/// The API line, and when the API has the runner's poll, its features.
fn api(list: &mut Checklist, config: &Config, net: &Net) {
    let url = &config.runner.url;
    let identifier = own_identifier(&config.execution.state_directory);
    let probe = match api::probe(url, &identifier, net) {
        Ok(probe) => probe,
        Err(e) => return list.line(Mark::Fail, "API", format!("{url}: {e}")),
    };
    let Some(generation) = probe.generation else {
        return list.line(Mark::Fail, "API", no_poll(url, &probe));
    };
    let form = match generation {
        Generation::March2026 => "GET poll, PROTOCOL.md §9",
        _ => "POST poll",
    };
    list.line(
        Mark::Ok,
        "API",
        format!(
            "{url} has the runner's poll (API generation {}: {form})",
            generation.as_str()
        ),
    );
    list.feature(
        "log streaming",
        probe.logs,
        "the API has the /logs route",
        "unavailable with this API (no /logs route): output stays in each execution's output.log and in its result's state.logs",
    );
    list.feature(
        "cancel",
        probe.status,
        "the API has the /status route",
        "unavailable with this API (no /status route): an execution cancelled on the server runs to its end; execution.timeout_secs still applies",
    );
}

/// Why `url` is not an API with the runner's poll, from what each form got.
fn no_poll(url: &str, probe: &api::Probe) -> String {
    let post = probe.post;
    match probe.get {
        Some(get) if matches!((post, get), (404 | 405, 404 | 405)) => format!(
            "{url} does not answer the runner's poll in either form (POST: HTTP {post}, GET: HTTP {get}): it is not a Flomation API, or not its base URL; check runner.url"
        ),
        Some(get) => format!(
            "{url} has no POST poll (HTTP {post}) and answers the GET poll with HTTP {get}; check runner.url"
        ),
        None => format!(
            "{url} answers the runner's poll with HTTP {post}; check runner.url, or try again if the API is failing"
        ),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(post: u16, get: Option<u16>) -> api::Probe {
        api::Probe {
            generation: None,
            post,
            get,
            logs: false,
            status: false,
        }
    }

    /// The three ways an answer shows no poll each say what to check.
    #[test]
    fn no_poll_names_what_each_form_got() {
        let url = "http://api.example";
        assert_eq!(
            no_poll(url, &probe(405, Some(404))),
            "http://api.example does not answer the runner's poll in either form (POST: HTTP 405, GET: HTTP 404): it is not a Flomation API, or not its base URL; check runner.url"
        );
        assert_eq!(
            no_poll(url, &probe(404, Some(500))),
            "http://api.example has no POST poll (HTTP 404) and answers the GET poll with HTTP 500; check runner.url"
        );
        assert_eq!(
            no_poll(url, &probe(502, None)),
            "http://api.example answers the runner's poll with HTTP 502; check runner.url, or try again if the API is failing"
        );
    }

    #[test]
    fn a_missing_feature_warns_and_passes() {
        let mut out = Vec::new();
        let mut list = Checklist {
            out: &mut out,
            ok: true,
        };
        list.feature("cancel", true, "here", "gone");
        list.feature("cancel", false, "here", "gone");
        assert!(list.ok);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "[ ok ] cancel: here\n[warn] cancel: gone\n"
        );
    }
}
