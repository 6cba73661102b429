//! Every configuration key, once: its name in `config.json` (the Go
//! runner's layout), the variables that set it (strongest first), its
//! default, and how its value is parsed, checked and stored. Reading, the
//! unknown-key warning, the error messages, `health`'s state directory and
//! the README's table (a test) all follow this table.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::source::{describe, kind, Bad, Raw};
use super::{CgroupMode, Config, EnvironmentMode, RetryStrategy, RunAs, SandboxMode};

pub(super) struct Key {
    /// Dotted path in `config.json`: `runner.registration_retry.strategy`.
    pub name: &'static str,
    /// Variables that set it, strongest first; any of them beats the file.
    pub vars: &'static [&'static str],
    /// What applies when neither a variable nor the file gives a value.
    pub default: Fallback,
    /// `""` in the file means unset, as it does for the Go runner's paths.
    pub empty_is_unset: bool,
    /// Parses and checks the value that won, and stores it.
    pub set: fn(&mut Config, Raw) -> Result<(), Bad>,
}

#[derive(Clone, Copy)]
pub(super) enum Fallback {
    /// Parsed like a variable's text (and shown so in the README).
    Text(&'static str),
    /// The field stays as `Config::default()` has it: `None`, empty.
    Unset,
    /// No start without it.
    Required,
}

use Fallback::{Required, Text, Unset};

/// Keys the Go runner's Docker entrypoint writes; accepted without a warning.
pub(super) const SILENT_KEYS: &[&str] = &[
    "execution.execution_install_dir",
    "execution.execution_module_dir",
    "execution.download_on_start",
];

const DEFAULT_EXECUTABLE: &str = "flomation-executor";

/// Also read on its own, by `flo-runner health`.
pub(super) const STATE_DIRECTORY: Key = Key {
    name: "execution.state_directory",
    vars: &["FLOMATION_RUNNER_STATE_DIRECTORY"],
    default: Text("./"),
    empty_is_unset: true,
    set: |c, v| v.string().map(|s| c.execution.state_directory = s.into()),
};

/// In the order they are read (a later key may check an earlier one), which
/// is also the order of the README's table.
pub(super) const KEYS: &[Key] = &[
    Key {
        name: "runner.url",
        vars: &["FLOMATION_API", "RUNNER_URL"],
        default: Required,
        empty_is_unset: false,
        set: |c, v| url(v).map(|u| c.runner.url = u),
    },
    Key {
        name: "runner.registration_code",
        vars: &["FLOMATION_REGISTRATION_CODE", "RUNNER_REGISTRATION_CODE"],
        default: Required,
        empty_is_unset: true,
        set: |c, v| v.string().map(|s| c.runner.registration_code = s),
    },
    Key {
        name: "runner.name",
        vars: &["FLOMATION_RUNNER_NAME", "RUNNER_NAME"],
        default: Text("Flo Runner"),
        empty_is_unset: false,
        set: |c, v| v.string().map(|s| c.runner.name = s),
    },
    Key {
        name: "runner.checkin_timeout",
        vars: &["FLOMATION_RUNNER_CHECKIN_TIMEOUT", "RUNNER_CHECKIN_TIMEOUT"],
        default: Text("5"),
        empty_is_unset: false,
        set: |c, v| v.uint().map(|n| c.runner.checkin_timeout = secs(n)),
    },
    Key {
        name: "runner.certificate",
        vars: &["FLOMATION_RUNNER_CERTIFICATE_PATH"],
        default: Text("flomation-runner.pem"),
        empty_is_unset: true,
        set: |c, v| v.string().map(|s| c.runner.certificate = s.into()),
    },
    Key {
        name: "runner.registration_retry.strategy",
        vars: &["FLOMATION_RUNNER_REGISTRATION_RETRY_STRATEGY"],
        default: Text("exponential"),
        empty_is_unset: false,
        set: |c, v| {
            let choices = [
                ("exponential", RetryStrategy::Exponential),
                ("interval", RetryStrategy::Interval),
                ("none", RetryStrategy::None),
            ];
            choice(v, &choices).map(|s| c.runner.registration_retry.strategy = s)
        },
    },
    Key {
        name: "runner.registration_retry.interval_secs",
        vars: &["FLOMATION_RUNNER_REGISTRATION_RETRY_INTERVAL_SECS"],
        default: Text("60"),
        empty_is_unset: false,
        set: |c, v| at_least_1(v).map(|n| c.runner.registration_retry.interval = secs(n)),
    },
    Key {
        name: "runner.registration_retry.max_duration_secs",
        vars: &["FLOMATION_RUNNER_REGISTRATION_RETRY_MAX_DURATION_SECS"],
        default: Text("900"),
        empty_is_unset: false,
        set: |c, v| {
            v.uint()
                .map(|n| c.runner.registration_retry.max_duration = secs(n))
        },
    },
    Key {
        name: "runner.shutdown_grace_secs",
        vars: &["FLOMATION_RUNNER_SHUTDOWN_GRACE_SECS"],
        default: Text("30"),
        empty_is_unset: false,
        set: |c, v| v.uint().map(|n| c.runner.shutdown_grace = secs(n)),
    },
    Key {
        name: "runner.metrics_listen",
        vars: &["FLOMATION_RUNNER_METRICS_LISTEN"],
        default: Unset,
        empty_is_unset: true,
        set: |c, v| socket_addr(v).map(|a| c.runner.metrics_listen = Some(a)),
    },
    // Three minutes: several polls at the longest error backoff (60 s), so
    // one refused poll in a deployment's hiccup is not enough.
    Key {
        name: "runner.unhealthy_after_refused_secs",
        vars: &["FLOMATION_RUNNER_UNHEALTHY_AFTER_REFUSED_SECS"],
        default: Text("180"),
        empty_is_unset: false,
        set: |c, v| {
            v.uint()
                .map(|n| c.runner.unhealthy_after_refused = secs_or_never(n))
        },
    },
    Key {
        name: "execution.max_concurrent_executors",
        vars: &["FLOMATION_RUNNER_MAX_EXECUTORS", "EXECUTOR_MAX_CONCURRENT"],
        default: Text("1"),
        empty_is_unset: false,
        // Go semantics: below 1 means 1.
        set: |c, v| {
            let n = usize::try_from(v.int()?.max(1)).unwrap_or(usize::MAX);
            c.execution.max_concurrent_executors = n.min(1024);
            Ok(())
        },
    },
    STATE_DIRECTORY,
    Key {
        name: "execution.execution_directory",
        vars: &["FLOMATION_RUNNER_EXECUTION_DIRECTORY", "EXECUTOR_DIRECTORY"],
        default: Text("./executions"),
        empty_is_unset: true,
        set: |c, v| {
            v.string()
                .map(|s| c.execution.execution_directory = s.into())
        },
    },
    Key {
        name: "execution.executable_name",
        vars: &["FLOMATION_RUNNER_EXECUTABLE_NAME"],
        default: Text(DEFAULT_EXECUTABLE),
        empty_is_unset: true,
        set: executable,
    },
    Key {
        name: "execution.timeout_secs",
        vars: &["FLOMATION_RUNNER_TIMEOUT_SECS"],
        default: Text("0"),
        empty_is_unset: false,
        set: |c, v| v.uint().map(|n| c.execution.timeout = secs_or_never(n)),
    },
    Key {
        name: "execution.kill_grace_secs",
        vars: &["FLOMATION_RUNNER_KILL_GRACE_SECS"],
        default: Text("10"),
        empty_is_unset: false,
        set: |c, v| v.uint().map(|n| c.execution.kill_grace = secs(n)),
    },
    Key {
        name: "execution.max_log_bytes",
        vars: &["FLOMATION_RUNNER_MAX_LOG_BYTES"],
        default: Text("1048576"),
        empty_is_unset: false,
        set: |c, v| {
            let n = v.uint()?;
            // Room for the "output cut" marker line and at least a little output.
            if n < 1024 {
                return Err(format!("{n} is too small (at least 1024)").into());
            }
            c.execution.max_log_bytes = usize::try_from(n).unwrap_or(usize::MAX);
            Ok(())
        },
    },
    Key {
        name: "execution.log_batch_lines",
        vars: &["FLOMATION_RUNNER_LOG_BATCH_LINES"],
        default: Text("1000"),
        empty_is_unset: false,
        set: |c, v| {
            let n = at_least_1(v)?;
            c.execution.log_batch_lines = usize::try_from(n).unwrap_or(usize::MAX);
            Ok(())
        },
    },
    Key {
        name: "execution.log_flush_ms",
        vars: &["FLOMATION_RUNNER_LOG_FLUSH_MS"],
        default: Text("500"),
        empty_is_unset: false,
        set: |c, v| at_least_1(v).map(|n| c.execution.log_flush = Duration::from_millis(n)),
    },
    Key {
        name: "execution.max_output_file_bytes",
        vars: &["FLOMATION_RUNNER_MAX_OUTPUT_FILE_BYTES"],
        default: Text("104857600"),
        empty_is_unset: false,
        set: |c, v| v.uint().map(|n| c.execution.max_output_file_bytes = n),
    },
    // 8 MiB. A larger `state.json` is not read: an errored result says why.
    Key {
        name: "execution.max_state_bytes",
        vars: &["FLOMATION_RUNNER_MAX_STATE_BYTES"],
        default: Text("8388608"),
        empty_is_unset: false,
        set: |c, v| v.uint().map(|n| c.execution.max_state_bytes = n),
    },
    Key {
        name: "execution.retention_hours",
        vars: &["FLOMATION_RUNNER_RETENTION_HOURS"],
        default: Text("72"),
        empty_is_unset: false,
        set: |c, v| {
            let n = v.uint()?;
            c.execution.retention = (n > 0).then(|| secs(n.saturating_mul(3600)));
            Ok(())
        },
    },
    // 2 GiB; 0 = no limit, here and in the limits below.
    Key {
        name: "execution.retention_max_bytes",
        vars: &["FLOMATION_RUNNER_RETENTION_MAX_BYTES"],
        default: Text("2147483648"),
        empty_is_unset: false,
        set: |c, v| {
            v.uint()
                .map(|n| c.execution.retention_max_bytes = no_limit_if_0(n))
        },
    },
    // About 2,800 typical executions (seven entries each): the same order as
    // the 2 GiB byte cap holds, and a small share of a small disk's inodes.
    Key {
        name: "execution.retention_max_entries",
        vars: &["FLOMATION_RUNNER_RETENTION_MAX_ENTRIES"],
        default: Text("20000"),
        empty_is_unset: false,
        set: |c, v| {
            v.uint()
                .map(|n| c.execution.retention_max_entries = no_limit_if_0(n))
        },
    },
    Key {
        name: "execution.retention_interval_secs",
        vars: &["FLOMATION_RUNNER_RETENTION_INTERVAL_SECS"],
        default: Text("600"),
        empty_is_unset: false,
        set: |c, v| at_least_1(v).map(|n| c.execution.retention_interval = secs(n)),
    },
    // 10 GiB and a million entries stop a running execution: far above what
    // ordinary flows write (a large `npm install` is ~100,000 files), low
    // enough that a runaway flow is stopped before it fills an ordinary host.
    Key {
        name: "execution.max_dir_bytes",
        vars: &["FLOMATION_RUNNER_MAX_DIR_BYTES"],
        default: Text("10737418240"),
        empty_is_unset: false,
        set: |c, v| {
            v.uint()
                .map(|n| c.execution.max_dir_bytes = no_limit_if_0(n))
        },
    },
    Key {
        name: "execution.max_dir_entries",
        vars: &["FLOMATION_RUNNER_MAX_DIR_ENTRIES"],
        default: Text("1000000"),
        empty_is_unset: false,
        set: |c, v| {
            v.uint()
                .map(|n| c.execution.max_dir_entries = no_limit_if_0(n))
        },
    },
    Key {
        name: "execution.sandbox",
        vars: &["FLOMATION_RUNNER_SANDBOX"],
        default: Text("auto"),
        empty_is_unset: false,
        set: |c, v| {
            let choices = [
                ("auto", SandboxMode::Auto),
                ("", SandboxMode::Auto),
                ("required", SandboxMode::Required),
                ("off", SandboxMode::Off),
            ];
            choice(v, &choices).map(|m| c.execution.sandbox = m)
        },
    },
    Key {
        name: "execution.run_as",
        vars: &["FLOMATION_RUNNER_RUN_AS"],
        default: Unset,
        empty_is_unset: true,
        set: |c, v| {
            let run_as = parse_run_as(&v.string()?)?;
            c.execution.run_as = Some(run_as);
            Ok(())
        },
    },
    Key {
        name: "execution.pass_key",
        vars: &["FLOMATION_RUNNER_PASS_KEY"],
        default: Text("true"),
        empty_is_unset: false,
        set: |c, v| v.boolean().map(|b| c.execution.pass_key = b),
    },
    Key {
        name: "execution.environment.mode",
        vars: &["FLOMATION_RUNNER_ENVIRONMENT_MODE"],
        default: Text("inherit"),
        empty_is_unset: false,
        set: |c, v| {
            let choices = [
                ("inherit", EnvironmentMode::Inherit),
                ("allowlist", EnvironmentMode::Allowlist),
            ];
            choice(v, &choices).map(|m| c.execution.environment.mode = m)
        },
    },
    Key {
        name: "execution.environment.allow",
        vars: &["FLOMATION_RUNNER_ENVIRONMENT_ALLOW"],
        default: Unset,
        empty_is_unset: false,
        set: environment_allow,
    },
    Key {
        name: "execution.environment.set",
        vars: &[],
        default: Unset,
        empty_is_unset: false,
        set: environment_set,
    },
    // Unset (or 0) = no limit: a limit that kills flows must be chosen.
    Key {
        name: "execution.memory_max_bytes",
        vars: &["FLOMATION_RUNNER_MEMORY_MAX_BYTES"],
        default: Unset,
        empty_is_unset: false,
        set: |c, v| {
            let limit = no_limit_if_0(v.uint()?);
            // Below a megabyte nothing starts, and the executor fails to
            // spawn with an error that does not say why.
            if let Some(m) = limit.filter(|m| *m < 1 << 20) {
                return Err(
                    format!("{m} is too small (at least 1048576, or 0 for no limit)").into(),
                );
            }
            c.execution.memory_max_bytes = limit;
            Ok(())
        },
    },
    Key {
        name: "execution.pids_max",
        vars: &["FLOMATION_RUNNER_PIDS_MAX"],
        default: Unset,
        empty_is_unset: false,
        set: |c, v| v.uint().map(|n| c.execution.pids_max = no_limit_if_0(n)),
    },
    Key {
        name: "execution.cgroups",
        vars: &["FLOMATION_RUNNER_CGROUPS"],
        default: Text("auto"),
        empty_is_unset: false,
        set: |c, v| {
            let choices = [
                ("auto", CgroupMode::Auto),
                ("", CgroupMode::Auto),
                ("on", CgroupMode::On),
                ("off", CgroupMode::Off),
            ];
            choice(v, &choices).map(|m| c.execution.cgroups = m)
        },
    },
    Key {
        name: "tls.enabled",
        vars: &["MTLS_ENABLED"],
        default: Text("false"),
        empty_is_unset: false,
        set: |c, v| v.boolean().map(|b| c.tls.enabled = b),
    },
    Key {
        name: "tls.ca_cert",
        vars: &["MTLS_CA_CERT"],
        default: Unset,
        empty_is_unset: true,
        set: |c, v| v.string().map(|s| c.tls.ca_cert = Some(s.into())),
    },
    Key {
        name: "tls.cert",
        vars: &["MTLS_CERT"],
        default: Unset,
        empty_is_unset: true,
        set: |c, v| v.string().map(|s| c.tls.cert = Some(s.into())),
    },
    Key {
        name: "tls.key",
        vars: &["MTLS_KEY"],
        default: Unset,
        empty_is_unset: true,
        set: |c, v| v.string().map(|s| c.tls.key = Some(s.into())),
    },
    // Checked only where it is used (after `tls.enabled`), and kept as
    // given: executors are told exactly this.
    Key {
        name: "tls.api_url",
        vars: &["MTLS_API_URL"],
        default: Unset,
        empty_is_unset: true,
        set: |c, v| {
            let text = v.string()?;
            if c.tls.enabled {
                url(Raw::Text(&text))?;
            }
            c.tls.api_url = Some(text);
            Ok(())
        },
    },
];

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// 0 = never (no timeout, no limit).
fn secs_or_never(n: u64) -> Option<Duration> {
    (n > 0).then(|| secs(n))
}

fn no_limit_if_0(n: u64) -> Option<u64> {
    (n > 0).then_some(n)
}

fn at_least_1(v: Raw) -> Result<u64, Bad> {
    match v.uint()? {
        0 => Err("must be at least 1".to_string().into()),
        n => Ok(n),
    }
}

/// One of `choices`, ignoring case and surrounding blanks (`""` is listed
/// where blank means the default).
fn choice<T: Copy>(v: Raw, choices: &[(&str, T)]) -> Result<T, Bad> {
    let text = v.string()?;
    let wanted = text.trim().to_ascii_lowercase();
    if let Some((_, value)) = choices.iter().find(|(name, _)| *name == wanted) {
        return Ok(*value);
    }
    let names: Vec<&str> = choices
        .iter()
        .map(|(name, _)| *name)
        .filter(|n| !n.is_empty())
        .collect();
    Err(format!("{text:?} is not one of {}", names.join(", ")).into())
}

/// Without the trailing slash.
fn url(v: Raw) -> Result<String, Bad> {
    let url = v.string()?;
    let trimmed = url.trim().trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains(char::is_whitespace) => {
            Ok(trimmed.to_string())
        }
        _ => Err(format!("{url:?} is not an http:// or https:// URL").into()),
    }
}

fn socket_addr(v: Raw) -> Result<SocketAddr, Bad> {
    let addr = v.string()?;
    addr.parse()
        .map_err(|e| format!("{addr:?} is not a host:port socket address ({e})").into())
}

/// Split on spaces: the program, then its leading arguments.
fn executable(c: &mut Config, v: Raw) -> Result<(), Bad> {
    let mut name = v.string()?;
    if name.trim().is_empty() {
        name = DEFAULT_EXECUTABLE.to_string();
    }
    let mut words = name.split(' ').filter(|w| !w.is_empty());
    let program = words.next().unwrap_or(DEFAULT_EXECUTABLE);
    c.execution.program = resolve_program(program);
    c.execution.leading_args = words.map(str::to_string).collect();
    c.execution.executable_name = name;
    Ok(())
}

/// A program given as a relative path with a slash is taken relative to the
/// runner's working directory (the executor itself runs elsewhere); a bare
/// name is looked up in `PATH` as usual.
fn resolve_program(program: &str) -> PathBuf {
    let p = PathBuf::from(program);
    if p.is_relative() && program.contains('/') {
        if let Ok(cwd) = std::env::current_dir() {
            return cwd.join(p);
        }
    }
    p
}

/// `name`, `uid` or `uid:gid`. A name is looked up at start-up (the
/// `sandbox` module), where a missing user can be reported with the rest.
fn parse_run_as(v: &str) -> Result<RunAs, String> {
    let v = v.trim();
    let number = |s: &str, what: &str| {
        s.parse::<u32>().map_err(|_| {
            format!("{v:?}: the {what} {s:?} is not a number (use NAME, UID or UID:GID)")
        })
    };
    if let Some((uid, gid)) = v.split_once(':') {
        return Ok(RunAs::Id {
            uid: number(uid, "uid")?,
            gid: Some(number(gid, "gid")?),
        });
    }
    if v.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(RunAs::Id {
            uid: number(v, "uid")?,
            gid: None,
        });
    }
    if v.contains(|c: char| c.is_whitespace() || c == '/' || c == '\0') {
        return Err(format!(
            "{v:?} is not a user name (use NAME, UID or UID:GID)"
        ));
    }
    Ok(RunAs::Name(v.to_string()))
}

/// After `environment.mode`, which decides whether `allow` means anything.
fn environment_allow(c: &mut Config, v: Raw) -> Result<(), Bad> {
    let allow = v.list()?;
    if let Some(bad) = allow
        .iter()
        .find(|a| !valid_name(a.strip_suffix('*').unwrap_or(a)))
    {
        return Err(format!("{bad:?} is not a variable name or a prefix ending in *").into());
    }
    if c.execution.environment.mode == EnvironmentMode::Inherit && !allow.is_empty() {
        return Err("is only used with \"mode\": \"allowlist\" (in inherit mode every variable but the runner's own is passed)".to_string().into());
    }
    c.execution.environment.allow = allow;
    Ok(())
}

/// File only: an object of strings, kept in the file's order.
fn environment_set(c: &mut Config, v: Raw) -> Result<(), Bad> {
    let Raw::Json(Value::Object(m)) = v else {
        let found = match v {
            Raw::Json(other) => kind(other),
            Raw::Text(_) => "text",
        };
        return Err(format!("expected an object of strings, found {found}").into());
    };
    let pair = |(k, v): (&String, &Value)| match v {
        Value::String(s) if valid_name(k) => Ok((k.clone(), s.clone())),
        Value::String(_) => Err(format!("{k:?} is not a variable name").into()),
        other => Err(Bad {
            why: format!("expected a string, found {}", describe(other)),
            at: Some(k.clone()),
        }),
    };
    c.execution.environment.set = m.iter().map(pair).collect::<Result<_, Bad>>()?;
    Ok(())
}

/// A name `execve` can carry: not empty, no `=` and no NUL.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['=', '\0'])
}
