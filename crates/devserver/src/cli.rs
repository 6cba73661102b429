//! The `flo-devserver` command line: `serve` and the admin subcommands.
//! Parsed by hand: a handful of `--name value` options per subcommand.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::app::Generation;
use super::client::Client;
use super::server::{serve, ServeOptions};
use super::tls::{self, TlsFiles};

const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

const MAIN_HELP: &str = "\
flo-devserver: the Flomation dev control plane (the API side of the runner protocol)

Usage:
  flo-devserver [serve] --registration-code CODE [--listen ADDR] [--long-poll-secs N] [--claim-lease-secs N]
                        [--generation current|2026-03] [--tls-cert FILE --tls-key FILE [--tls-client-ca FILE]]
  flo-devserver enqueue [--server URL] --flow FILE [--trigger-data JSON|@FILE] [--entry NODE] [--environment ID]
  flo-devserver list    [--server URL] [--json]
  flo-devserver show    [--server URL] ID [--wait SECS]
  flo-devserver cancel  [--server URL] ID

The admin subcommands also take --ca-cert FILE and --client-cert FILE --client-key FILE
for an https:// server with a private CA or required client certificates.

Run `flo-devserver SUBCOMMAND --help` for details. --version prints the version.
";

const SERVE_HELP: &str = "\
flo-devserver serve: run the dev server until SIGINT/SIGTERM

Options:
  --listen ADDR              address to bind (default 127.0.0.1:8080; port 0 picks one)
  --registration-code CODE   the code runners must register with (required)
  --long-poll-secs N         how long a poll waits for work before 204 (default 25; 0 = answer at once)
  --claim-lease-secs N       an allocation not claimed (POST /state) within N s goes back to the
                             queue, and a late claim gets 409 (default: off, allocations are final)
  --generation NAME          the API generation to play: `current` (the default; PROTOCOL.md §4-§8)
                             or `2026-03`, the public release of March 2026 (PROTOCOL.md §9): GET
                             poll signed over the empty body, no long-poll, no /logs and no /status
                             routes (gin's `404 page not found`), trigger data as a base64 string,
                             registration of a known identifier 201 without checking the code,
                             the manifest must be an object of action definitions

TLS (all PEM files):
  --tls-cert FILE            serve HTTPS with this certificate chain (leaf first); its names
                             must cover the URL runners use (e.g. IP 127.0.0.1, DNS localhost)
  --tls-key FILE             the certificate's private key (PKCS#8, PKCS#1 or SEC1)
  --tls-client-ca FILE       require a client certificate signed by a CA in FILE; a client
                             without one fails the handshake (runner: tls.enabled, tls.cert,
                             tls.key). This applies to the admin API too.

Prints one line, `flo-devserver listening on http://HOST:PORT` (https:// with TLS), on stdout
once bound. Logs go to stderr (RUST_LOG, default info); failed TLS handshakes are logged with
the reason. The admin API is under /admin.
";

const ENQUEUE_HELP: &str = "\
flo-devserver enqueue: queue an execution and print its id

Options:
  --server URL                 the dev server (default http://127.0.0.1:8080)
  --flow FILE                  the flow definition, a JSON file (required)
  --trigger-data JSON|@FILE    trigger data, inline JSON or @file
  --entry NODE                 entry node id
  --environment ID             environment id
  --ca-cert FILE               trust this CA (PEM) for an https:// server
  --client-cert FILE           client certificate (PEM), with --client-key, when the server
                               requires one (--tls-client-ca)
  --client-key FILE            its private key (PEM)
";

const LIST_HELP: &str = "\
flo-devserver list: list executions in enqueue order

Options:
  --server URL         the dev server (default http://127.0.0.1:8080)
  --json               one JSON object per line instead of a table
  --ca-cert FILE       trust this CA (PEM) for an https:// server
  --client-cert FILE   client certificate (PEM), with --client-key, when the server requires
                       one (--tls-client-ca)
  --client-key FILE    its private key (PEM)
";

const SHOW_HELP: &str = "\
flo-devserver show ID: print an execution (status, logs, results) as JSON

Options:
  --server URL         the dev server (default http://127.0.0.1:8080)
  --wait SECS          poll until the execution is completed; exit 1 if it is not
                       within SECS
  --ca-cert FILE       trust this CA (PEM) for an https:// server
  --client-cert FILE   client certificate (PEM), with --client-key, when the server requires
                       one (--tls-client-ca)
  --client-key FILE    its private key (PEM)
";

const CANCEL_HELP: &str = "\
flo-devserver cancel ID: ask the runner to stop an execution (completion_status `cancel`)

Options:
  --server URL         the dev server (default http://127.0.0.1:8080)
  --ca-cert FILE       trust this CA (PEM) for an https:// server
  --client-cert FILE   client certificate (PEM), with --client-key, when the server requires
                       one (--tls-client-ca)
  --client-key FILE    its private key (PEM)
";

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line itself is wrong.
    #[error("{0} (see --help)")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Failed(_) => 1,
        }
    }
}

fn failed(e: impl std::fmt::Display) -> CliError {
    CliError::Failed(e.to_string())
}

/// Options and positionals of one subcommand.
#[derive(Debug, Default)]
struct Args {
    values: HashMap<&'static str, String>,
    flags: Vec<&'static str>,
    positional: Vec<String>,
    help: bool,
}

impl Args {
    /// `valued` options take a value (`--x v` or `--x=v`); `flags` do not.
    fn parse(
        args: &[String],
        valued: &[&'static str],
        flags: &[&'static str],
    ) -> Result<Self, CliError> {
        let mut out = Args::default();
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            if arg == "--" {
                out.positional.extend(iter.by_ref().cloned());
                break;
            }
            if arg == "--help" || arg == "-h" {
                out.help = true;
                continue;
            }
            let Some(name) = arg.strip_prefix("--") else {
                out.positional.push(arg.clone());
                continue;
            };
            let (name, inline) = match name.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (name, None),
            };
            if let Some(&known) = valued.iter().find(|&&v| v == name) {
                let value = match inline {
                    Some(v) => v,
                    None => iter
                        .next()
                        .cloned()
                        .ok_or_else(|| CliError::Usage(format!("--{name} needs a value")))?,
                };
                out.values.insert(known, value);
            } else if let Some(&known) = flags.iter().find(|&&f| f == name) {
                if inline.is_some() {
                    return Err(CliError::Usage(format!("--{name} takes no value")));
                }
                out.flags.push(known);
            } else {
                return Err(CliError::Usage(format!("unknown option --{name}")));
            }
        }
        Ok(out)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    fn flag(&self, name: &str) -> bool {
        self.flags.contains(&name)
    }

    /// The admin client for `--server`, with `--ca-cert` and
    /// `--client-cert`/`--client-key` when given.
    fn server(&self) -> Result<Client, CliError> {
        let url = self.get("server").unwrap_or(DEFAULT_SERVER);
        let ca = self.get("ca-cert").map(Path::new);
        let identity = match (self.get("client-cert"), self.get("client-key")) {
            (Some(c), Some(k)) => Some((Path::new(c), Path::new(k))),
            (None, None) => None,
            _ => {
                return Err(CliError::Usage(
                    "--client-cert and --client-key go together".into(),
                ))
            }
        };
        if ca.is_none() && identity.is_none() {
            return Ok(Client::new(url));
        }
        let config = tls::client_config(ca, identity).map_err(failed)?;
        Ok(Client::with_tls(url, config))
    }

    fn no_positional(&self) -> Result<(), CliError> {
        match self.positional.first() {
            Some(extra) => Err(CliError::Usage(format!("unexpected argument {extra:?}"))),
            None => Ok(()),
        }
    }

    /// The single positional execution id.
    fn id(&self) -> Result<&str, CliError> {
        match self.positional.as_slice() {
            [id] => Ok(id),
            [] => Err(CliError::Usage("the execution ID is missing".into())),
            [_, extra, ..] => Err(CliError::Usage(format!("unexpected argument {extra:?}"))),
        }
    }
}

/// Runs the command line; `Ok` carries the exit code.
pub fn run(args: &[String]) -> Result<i32, CliError> {
    let (command, rest) = match args.first().map(String::as_str) {
        None => return Err(CliError::Usage("no subcommand or options given".into())),
        Some("--help" | "-h" | "help") => {
            print!("{MAIN_HELP}");
            return Ok(0);
        }
        Some("--version" | "-V") => {
            println!("flo-devserver {}", env!("CARGO_PKG_VERSION"));
            return Ok(0);
        }
        // Options first means `serve`.
        Some(first) if first.starts_with("--") => ("serve", args),
        Some(first) => (first, &args[1..]),
    };
    match command {
        "serve" => cmd_serve(rest),
        "enqueue" => cmd_enqueue(rest),
        "list" => cmd_list(rest),
        "show" => cmd_show(rest),
        "cancel" => cmd_cancel(rest),
        other => Err(CliError::Usage(format!("unknown subcommand {other:?}"))),
    }
}

fn cmd_serve(args: &[String]) -> Result<i32, CliError> {
    let a = Args::parse(
        args,
        &[
            "listen",
            "registration-code",
            "long-poll-secs",
            "claim-lease-secs",
            "generation",
            "tls-cert",
            "tls-key",
            "tls-client-ca",
        ],
        &[],
    )?;
    if a.help {
        print!("{SERVE_HELP}");
        return Ok(0);
    }
    a.no_positional()?;
    let registration_code = a
        .get("registration-code")
        .ok_or_else(|| CliError::Usage("--registration-code is required".into()))?
        .to_string();
    let long_poll_secs = match a.get("long-poll-secs") {
        None => 25,
        Some(v) => v.parse::<u64>().map_err(|_| {
            CliError::Usage(format!(
                "--long-poll-secs {v:?} is not a whole number of seconds"
            ))
        })?,
    };
    let claim_lease = match a.get("claim-lease-secs") {
        None => None,
        Some(v) => Some(Duration::from_secs(v.parse::<u64>().map_err(|_| {
            CliError::Usage(format!(
                "--claim-lease-secs {v:?} is not a whole number of seconds"
            ))
        })?)),
    };
    let generation = match a.get("generation") {
        None => Generation::Current,
        Some(name) => Generation::parse(name).ok_or_else(|| {
            CliError::Usage(format!(
                "--generation {name:?} is not a known API generation (current or 2026-03)"
            ))
        })?,
    };
    let tls = match (a.get("tls-cert"), a.get("tls-key"), a.get("tls-client-ca")) {
        (Some(cert), Some(key), client_ca) => Some(TlsFiles {
            cert: PathBuf::from(cert),
            key: PathBuf::from(key),
            client_ca: client_ca.map(PathBuf::from),
        }),
        (None, None, None) => None,
        (None, None, Some(_)) => {
            return Err(CliError::Usage(
                "--tls-client-ca needs --tls-cert and --tls-key".into(),
            ))
        }
        _ => {
            return Err(CliError::Usage(
                "--tls-cert and --tls-key go together".into(),
            ))
        }
    };
    init_logging();
    let options = ServeOptions {
        listen: a.get("listen").unwrap_or("127.0.0.1:8080").to_string(),
        registration_code,
        long_poll: Duration::from_secs(long_poll_secs),
        claim_lease,
        tls,
        generation,
    };
    serve(&options).map_err(failed)?;
    Ok(0)
}

/// The admin subcommands' options plus the client TLS options.
fn with_tls(valued: &[&'static str]) -> Vec<&'static str> {
    let mut all = valued.to_vec();
    all.extend(["ca-cert", "client-cert", "client-key"]);
    all
}

fn init_logging() {
    let env = env_logger::Env::default().default_filter_or("info");
    // Already initialised (e.g. a test called in twice) is fine.
    let _ = env_logger::Builder::from_env(env).try_init();
}

/// Reads and parses a JSON file, naming it in any error.
fn read_json_file(path: &str, what: &str) -> Result<Value, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| failed(format!("cannot read {what} file {path}: {e}")))?;
    serde_json::from_str(&text)
        .map_err(|e| failed(format!("{what} file {path} is not valid JSON: {e}")))
}

fn cmd_enqueue(args: &[String]) -> Result<i32, CliError> {
    let a = Args::parse(
        args,
        &with_tls(&["server", "flow", "trigger-data", "entry", "environment"]),
        &[],
    )?;
    if a.help {
        print!("{ENQUEUE_HELP}");
        return Ok(0);
    }
    a.no_positional()?;
    let flow_path = a
        .get("flow")
        .ok_or_else(|| CliError::Usage("--flow FILE is required".into()))?;
    let flow = read_json_file(flow_path, "flow")?;
    let trigger_data = match a.get("trigger-data") {
        None => Value::Null,
        Some(v) => match v.strip_prefix('@') {
            Some(path) => read_json_file(path, "trigger data")?,
            None => serde_json::from_str(v).map_err(|e| {
                CliError::Usage(format!(
                    "--trigger-data is not valid JSON ({e}); use @FILE for a file"
                ))
            })?,
        },
    };
    let body = json!({
        "flow": flow,
        "trigger_data": trigger_data,
        "entry_node_id": a.get("entry"),
        "environment_id": a.get("environment"),
    });
    let id = a.server()?.enqueue(&body).map_err(failed)?;
    println!("{id}");
    Ok(0)
}

fn cmd_list(args: &[String]) -> Result<i32, CliError> {
    let a = Args::parse(args, &with_tls(&["server"]), &["json"])?;
    if a.help {
        print!("{LIST_HELP}");
        return Ok(0);
    }
    a.no_positional()?;
    let list = a.server()?.list().map_err(failed)?;
    let rows = list.as_array().cloned().unwrap_or_default();
    let mut out = std::io::stdout().lock();
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    let result = if a.flag("json") {
        rows.iter().try_for_each(|r| writeln!(out, "{r}"))
    } else {
        writeln!(
            out,
            "{:<38} {:<38} {:<10} {:<10} RUNNER",
            "ID", "FLOW", "STATUS", "COMPLETION"
        )
        .and_then(|_| {
            rows.iter().try_for_each(|r| {
                writeln!(
                    out,
                    "{:<38} {:<38} {:<10} {:<10} {}",
                    text(&r["id"]),
                    text(&r["flo_id"]),
                    text(&r["status"]),
                    text(&r["completion_status"]),
                    text(&r["runner"])
                )
            })
        })
    };
    result.map_err(|e| failed(format!("cannot write to stdout: {e}")))?;
    Ok(0)
}

fn print_pretty(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

fn cmd_show(args: &[String]) -> Result<i32, CliError> {
    let a = Args::parse(args, &with_tls(&["server", "wait"]), &[])?;
    if a.help {
        print!("{SHOW_HELP}");
        return Ok(0);
    }
    let id = a.id()?;
    let client = a.server()?;
    let Some(wait) = a.get("wait") else {
        print_pretty(&client.show(id).map_err(failed)?);
        return Ok(0);
    };
    let secs: f64 = wait
        .parse()
        .ok()
        .filter(|s: &f64| s.is_finite() && *s >= 0.0)
        .ok_or_else(|| CliError::Usage(format!("--wait {wait:?} is not a number of seconds")))?;
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    loop {
        let execution = client.show(id).map_err(failed)?;
        if execution["status"] == "completed" {
            print_pretty(&execution);
            return Ok(0);
        }
        if Instant::now() >= deadline {
            print_pretty(&execution);
            return Err(failed(format!(
                "execution {id} is not completed after {secs} s (status {})",
                execution["status"].as_str().unwrap_or("unknown")
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn cmd_cancel(args: &[String]) -> Result<i32, CliError> {
    let a = Args::parse(args, &with_tls(&["server"]), &[])?;
    if a.help {
        print!("{CANCEL_HELP}");
        return Ok(0);
    }
    let id = a.id()?;
    let answer = a.server()?.cancel(id).map_err(failed)?;
    println!("{answer}");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_values_flags_and_positionals() {
        let a = Args::parse(
            &strings(&["--server=http://x", "id1", "--wait", "3", "--json"]),
            &["server", "wait"],
            &["json"],
        )
        .unwrap();
        assert_eq!(a.get("server"), Some("http://x"));
        assert_eq!(a.get("wait"), Some("3"));
        assert!(a.flag("json"));
        assert_eq!(a.id().unwrap(), "id1");
    }

    #[test]
    fn errors_name_the_option() {
        let e = Args::parse(&strings(&["--nope"]), &[], &[]).unwrap_err();
        assert!(e.to_string().contains("--nope"), "{e}");
        let e = Args::parse(&strings(&["--wait"]), &["wait"], &[]).unwrap_err();
        assert!(e.to_string().contains("--wait needs a value"), "{e}");
        let e = Args::parse(&strings(&["a", "b"]), &[], &[])
            .unwrap()
            .id()
            .unwrap_err();
        assert!(e.to_string().contains("\"b\""), "{e}");
    }

    #[test]
    fn double_dash_ends_options() {
        let a = Args::parse(&strings(&["--", "--odd-id"]), &[], &[]).unwrap();
        assert_eq!(a.id().unwrap(), "--odd-id");
    }

    #[test]
    fn tls_options_go_together() {
        let e = run(&strings(&[
            "--registration-code",
            "c",
            "--tls-cert",
            "/nonexistent.pem",
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("--tls-key"), "{e}");
        assert_eq!(e.exit_code(), 2);
        let e = run(&strings(&[
            "--registration-code",
            "c",
            "--tls-client-ca",
            "ca.pem",
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("--tls-client-ca needs"), "{e}");
        let e = run(&strings(&["list", "--client-cert", "c.pem"])).unwrap_err();
        assert!(e.to_string().contains("--client-key"), "{e}");
    }

    #[test]
    fn a_missing_tls_file_is_named() {
        let e = run(&strings(&[
            "--registration-code",
            "c",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/cert.pem"), "{e}");
        assert_eq!(e.exit_code(), 1);
    }

    #[test]
    fn serve_requires_a_registration_code() {
        let e = run(&strings(&["--listen", "127.0.0.1:0"])).unwrap_err();
        assert!(e.to_string().contains("--registration-code"), "{e}");
        assert_eq!(e.exit_code(), 2);
    }
}
