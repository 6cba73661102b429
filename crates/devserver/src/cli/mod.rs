//! The `flo-devserver` command line: `serve` and the admin subcommands.
//! [`commands`] says what each takes (and is its help), [`args`] parses it;
//! here each subcommand turns its options into a call.

mod args;
mod commands;

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use self::args::Parsed;
use self::commands::{CANCEL, DEFAULT_SERVER, ENQUEUE, LIST, SERVE, SHOW};
use super::app::Generation;
use super::client::{Client, ClientError};
use super::server::{serve, ServeError, ServeOptions};
use super::tls::{self, TlsError, TlsFiles};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line itself is wrong.
    #[error("{0} (see --help)")]
    Usage(String),
    #[error("--trigger-data is not valid JSON ({0}); use @FILE for a file (see --help)")]
    TriggerData(#[source] serde_json::Error),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot read {what} file {}: {source}", path.display())]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what} file {} is not valid JSON: {source}", path.display())]
    NotJson {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write to stdout: {0}")]
    Stdout(#[source] io::Error),
    #[error("execution {id} is not completed after {secs} s (status {status})")]
    NotCompleted {
        id: String,
        secs: f64,
        status: String,
    },
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) | CliError::TriggerData(_) => 2,
            _ => 1,
        }
    }
}

/// Runs the command line (the arguments after the program name); `Ok`
/// carries the exit code.
pub fn run<I>(args: I) -> Result<i32, CliError>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    let mut args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let first = match args.first() {
        None => return Err(CliError::Usage("no subcommand or options given".into())),
        Some(first) => first.to_string_lossy().into_owned(),
    };
    match first.as_str() {
        "--help" | "-h" | "help" => {
            print!("{}", commands::main_help());
            return Ok(0);
        }
        "--version" | "-V" => {
            println!("flo-devserver {}", env!("CARGO_PKG_VERSION"));
            return Ok(0);
        }
        _ => {}
    }
    // Options first means `serve`.
    let command = if first.starts_with("--") {
        "serve".to_string()
    } else {
        args.remove(0);
        first
    };
    match command.as_str() {
        "serve" => cmd_serve(args),
        "enqueue" => cmd_enqueue(args),
        "list" => cmd_list(args),
        "show" => cmd_show(args),
        "cancel" => cmd_cancel(args),
        other => Err(CliError::Usage(format!("unknown subcommand {other:?}"))),
    }
}

fn cmd_serve(args: Vec<OsString>) -> Result<i32, CliError> {
    let Some(a) = SERVE.parse(args)? else {
        return Ok(0);
    };
    a.no_positional()?;
    let options = serve_options(&a)?;
    init_logging();
    serve(&options)?;
    Ok(0)
}

fn serve_options(a: &Parsed) -> Result<ServeOptions, CliError> {
    let registration_code = a
        .get("registration-code")
        .ok_or_else(|| CliError::Usage("--registration-code is required".into()))?;
    let generation = match a.get("generation") {
        None => Generation::Current,
        Some(name) => Generation::parse(name).ok_or_else(|| {
            CliError::Usage(format!(
                "--generation {name:?} is not a known API generation (current or 2026-03)"
            ))
        })?,
    };
    Ok(ServeOptions {
        listen: a.get("listen").unwrap_or("127.0.0.1:8080").to_string(),
        registration_code: registration_code.to_string(),
        long_poll: Duration::from_secs(seconds(a, "long-poll-secs")?.unwrap_or(25)),
        claim_lease: seconds(a, "claim-lease-secs")?.map(Duration::from_secs),
        tls: tls_files(a)?,
        generation,
    })
}

/// A whole number of seconds, when the option is given.
fn seconds(a: &Parsed, option: &str) -> Result<Option<u64>, CliError> {
    let Some(v) = a.get(option) else {
        return Ok(None);
    };
    v.parse()
        .map(Some)
        .map_err(|_| CliError::Usage(format!("--{option} {v:?} is not a whole number of seconds")))
}

/// `--tls-cert`, `--tls-key` and `--tls-client-ca`, which only go together.
fn tls_files(a: &Parsed) -> Result<Option<TlsFiles>, CliError> {
    match (a.get("tls-cert"), a.get("tls-key"), a.get("tls-client-ca")) {
        (Some(cert), Some(key), client_ca) => Ok(Some(TlsFiles {
            cert: PathBuf::from(cert),
            key: PathBuf::from(key),
            client_ca: client_ca.map(PathBuf::from),
        })),
        (None, None, None) => Ok(None),
        (None, None, Some(_)) => Err(CliError::Usage(
            "--tls-client-ca needs --tls-cert and --tls-key".into(),
        )),
        _ => Err(CliError::Usage(
            "--tls-cert and --tls-key go together".into(),
        )),
    }
}

fn init_logging() {
    let env = env_logger::Env::default().default_filter_or("info");
    // Already initialised (e.g. a test called in twice) is fine.
    let _ = env_logger::Builder::from_env(env).try_init();
}

/// The admin client for `--server`, with `--ca-cert` and
/// `--client-cert`/`--client-key` when given.
fn client(a: &Parsed) -> Result<Client, CliError> {
    let url = a.get("server").unwrap_or(DEFAULT_SERVER);
    let ca = a.get("ca-cert").map(Path::new);
    let identity = match (a.get("client-cert"), a.get("client-key")) {
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
    Ok(Client::with_tls(url, tls::client_config(ca, identity)?))
}

/// Reads and parses a JSON file, naming it in any error.
fn read_json_file(path: &str, what: &'static str) -> Result<Value, CliError> {
    let path = PathBuf::from(path);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(source) => return Err(CliError::ReadFile { what, path, source }),
    };
    serde_json::from_str(&text).map_err(|source| CliError::NotJson { what, path, source })
}

fn cmd_enqueue(args: Vec<OsString>) -> Result<i32, CliError> {
    let Some(a) = ENQUEUE.parse(args)? else {
        return Ok(0);
    };
    a.no_positional()?;
    let flow_path = a
        .get("flow")
        .ok_or_else(|| CliError::Usage("--flow FILE is required".into()))?;
    let flow = read_json_file(flow_path, "flow")?;
    let trigger_data = match a.get("trigger-data") {
        None => Value::Null,
        Some(v) => match v.strip_prefix('@') {
            Some(path) => read_json_file(path, "trigger data")?,
            None => serde_json::from_str(v).map_err(CliError::TriggerData)?,
        },
    };
    let body = json!({
        "flow": flow,
        "trigger_data": trigger_data,
        "entry_node_id": a.get("entry"),
        "environment_id": a.get("environment"),
    });
    let id = client(&a)?.enqueue(&body)?;
    println!("{id}");
    Ok(0)
}

fn cmd_list(args: Vec<OsString>) -> Result<i32, CliError> {
    let Some(a) = LIST.parse(args)? else {
        return Ok(0);
    };
    a.no_positional()?;
    let list = client(&a)?.list()?;
    let rows = list.as_array().map(Vec::as_slice).unwrap_or_default();
    let mut out = io::stdout().lock();
    let written = if a.flag("json") {
        rows.iter().try_for_each(|r| writeln!(out, "{r}"))
    } else {
        write_table(&mut out, rows)
    };
    written.map_err(CliError::Stdout)?;
    Ok(0)
}

/// `list`'s table: one execution a row, `-` for what is not set.
fn write_table(out: &mut impl Write, rows: &[Value]) -> io::Result<()> {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    writeln!(
        out,
        "{:<38} {:<38} {:<10} {:<10} RUNNER",
        "ID", "FLOW", "STATUS", "COMPLETION"
    )?;
    for r in rows {
        writeln!(
            out,
            "{:<38} {:<38} {:<10} {:<10} {}",
            text(&r["id"]),
            text(&r["flo_id"]),
            text(&r["status"]),
            text(&r["completion_status"]),
            text(&r["runner"])
        )?;
    }
    Ok(())
}

fn print_pretty(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

fn cmd_show(args: Vec<OsString>) -> Result<i32, CliError> {
    let Some(a) = SHOW.parse(args)? else {
        return Ok(0);
    };
    let id = a.id()?;
    let client = client(&a)?;
    let Some(wait) = a.get("wait") else {
        print_pretty(&client.show(id)?);
        return Ok(0);
    };
    let secs: f64 = wait
        .parse()
        .ok()
        .filter(|s: &f64| s.is_finite() && *s >= 0.0)
        .ok_or_else(|| CliError::Usage(format!("--wait {wait:?} is not a number of seconds")))?;
    wait_for_completion(&client, id, secs)
}

/// `show --wait`: polls until the execution is completed or `secs` pass,
/// then prints it either way.
fn wait_for_completion(client: &Client, id: &str, secs: f64) -> Result<i32, CliError> {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    loop {
        let execution = client.show(id)?;
        if execution["status"] == "completed" {
            print_pretty(&execution);
            return Ok(0);
        }
        if Instant::now() >= deadline {
            print_pretty(&execution);
            return Err(CliError::NotCompleted {
                id: id.to_string(),
                secs,
                status: execution["status"]
                    .as_str()
                    .unwrap_or("unknown")
                    .to_string(),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn cmd_cancel(args: Vec<OsString>) -> Result<i32, CliError> {
    let Some(a) = CANCEL.parse(args)? else {
        return Ok(0);
    };
    let id = a.id()?;
    let answer = client(&a)?.cancel(id)?;
    println!("{answer}");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(command: &args::Command, v: &[&str]) -> Result<Parsed, CliError> {
        let args = v.iter().map(OsString::from).collect();
        command.parse(args).map(|p| p.expect("not --help"))
    }

    #[test]
    fn parses_values_flags_and_positionals() {
        let a = parse(&SHOW, &["--server=http://x", "id1", "--wait", "3"]).unwrap();
        assert_eq!(a.get("server"), Some("http://x"));
        assert_eq!(a.get("wait"), Some("3"));
        assert_eq!(a.id().unwrap(), "id1");
        assert!(parse(&LIST, &["--json"]).unwrap().flag("json"));
    }

    #[test]
    fn errors_name_the_option() {
        let e = parse(&LIST, &["--nope"]).unwrap_err();
        assert!(e.to_string().contains("--nope"), "{e}");
        assert_eq!(e.exit_code(), 2);
        let e = parse(&SHOW, &["--wait"]).unwrap_err();
        assert!(e.to_string().contains("--wait needs a value"), "{e}");
        let e = parse(&LIST, &["--json=yes"]).unwrap_err();
        assert!(e.to_string().contains("--json takes no value"), "{e}");
        let e = parse(&SHOW, &["a", "b"]).unwrap().id().unwrap_err();
        assert!(e.to_string().contains("\"b\""), "{e}");
    }

    #[test]
    fn double_dash_ends_options() {
        let a = parse(&CANCEL, &["--", "--odd-id"]).unwrap();
        assert_eq!(a.id().unwrap(), "--odd-id");
    }

    #[test]
    fn every_help_describes_the_shared_options_once() {
        for command in commands::ALL {
            let help = command.help();
            assert!(help.starts_with("flo-devserver "), "{help}");
            for option in ["--server URL", "--ca-cert FILE", "--tls-cert FILE"] {
                assert!(help.matches(option).count() <= 1, "{option}: {help}");
            }
        }
        assert!(ENQUEUE.help().contains("--client-key FILE"));
        let server_help = format!("(default {DEFAULT_SERVER})");
        assert!(LIST.help().contains(&server_help), "{server_help}");
        assert!(SERVE.help().contains("--tls-client-ca FILE"));
        let main = commands::main_help();
        assert!(main.contains("--client-cert FILE"), "{main}");
        assert!(
            main.contains("flo-devserver cancel  [--server URL] ID"),
            "{main}"
        );
    }

    #[test]
    fn tls_options_go_together() {
        let e = run(["--registration-code", "c", "--tls-cert", "/nonexistent.pem"]).unwrap_err();
        assert!(e.to_string().contains("--tls-key"), "{e}");
        assert_eq!(e.exit_code(), 2);
        let e = run(["--registration-code", "c", "--tls-client-ca", "ca.pem"]).unwrap_err();
        assert!(e.to_string().contains("--tls-client-ca needs"), "{e}");
        let e = run(["list", "--client-cert", "c.pem"]).unwrap_err();
        assert!(e.to_string().contains("--client-key"), "{e}");
    }

    #[test]
    fn a_missing_tls_file_is_named() {
        let e = run([
            "--registration-code",
            "c",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/cert.pem"), "{e}");
        assert_eq!(e.exit_code(), 1);
        let e = run(["list", "--ca-cert", "/nonexistent/ca.pem"]).unwrap_err();
        assert!(
            e.to_string().contains("--ca-cert /nonexistent/ca.pem"),
            "{e}"
        );
        assert_eq!(e.exit_code(), 1);
    }

    #[test]
    fn serve_requires_a_registration_code() {
        let e = run(["--listen", "127.0.0.1:0"]).unwrap_err();
        assert!(e.to_string().contains("--registration-code"), "{e}");
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn enqueue_names_the_bad_input() {
        let e = run(["enqueue", "--flow", "/nonexistent.json"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("cannot read flow file /nonexistent.json"),
            "{e}"
        );
        assert_eq!(e.exit_code(), 1);
        let flow = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(flow.path(), "{}").unwrap();
        let flow = flow.path().to_str().unwrap();
        let e = run(["enqueue", "--flow", flow, "--trigger-data", "{"]).unwrap_err();
        assert!(
            e.to_string().contains("--trigger-data is not valid JSON"),
            "{e}"
        );
        assert_eq!(e.exit_code(), 2);
    }
}
