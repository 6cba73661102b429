//! Configuration: `config.json` (Go runner layout) overlaid by environment
//! variables, parsed once into a typed, validated [`Config`].
//!
//! Precedence for every key: `FLOMATION_*` variable, then the Docker `RUNNER_*`
//! / `EXECUTOR_*` name (if it has one), then the file, then the default.
//! An empty variable counts as unset (Docker's `-e NAME=` is a common slip).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

pub const DEFAULT_CONFIG_FILE: &str = "config.json";
pub const DEFAULT_NAME: &str = "Flo Runner";
pub const DEFAULT_CERTIFICATE: &str = "flomation-runner.pem";
pub const DEFAULT_EXECUTABLE: &str = "flomation-executor";
pub const DEFAULT_EXECUTION_DIRECTORY: &str = "./executions";
/// `state.json` over this is not read: an errored result says why.
pub const DEFAULT_MAX_STATE_BYTES: u64 = 8 * 1024 * 1024;
/// About 2,800 typical executions (seven entries each): the same order as
/// the 2 GiB byte cap holds, and a small share of a small disk's inodes.
pub const DEFAULT_RETENTION_MAX_ENTRIES: u64 = 20_000;
/// A running execution over these is stopped: far above what ordinary
/// flows write (a large `npm install` is ~100,000 files), low enough that
/// a runaway flow is stopped before it fills an ordinary host.
pub const DEFAULT_MAX_DIR_BYTES: u64 = 10 * 1024 * 1024 * 1024;
pub const DEFAULT_MAX_DIR_ENTRIES: u64 = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON: {why}")]
    NotJson { path: PathBuf, why: String },
    #[error("{origin}: {key}: {why}")]
    Invalid {
        origin: String,
        key: String,
        why: String,
    },
    #[error("{key} is not set: put it in {path} or set {env}")]
    Missing {
        key: &'static str,
        path: PathBuf,
        env: &'static str,
    },
}

/// How registration is retried (PROTOCOL.md §3, flo-runner goes further).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryStrategy {
    /// 8 s, doubling, until `max_duration` has passed; then give up.
    Exponential,
    /// Every `interval`, forever.
    Interval,
    /// One attempt.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationRetry {
    pub strategy: RetryStrategy,
    pub interval: Duration,
    pub max_duration: Duration,
}

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// API base URL, without a trailing slash.
    pub url: String,
    pub registration_code: String,
    pub name: String,
    pub checkin_timeout: Duration,
    pub certificate: PathBuf,
    pub registration_retry: RegistrationRetry,
    pub shutdown_grace: Duration,
    pub metrics_listen: Option<SocketAddr>,
    /// Unhealthy once every poll for this long was refused (`None`: never).
    pub unhealthy_after_refused: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct ExecutionConfig {
    pub max_concurrent_executors: usize,
    pub state_directory: PathBuf,
    pub execution_directory: PathBuf,
    /// `executable_name` as configured.
    pub executable_name: String,
    /// The program (first word of `executable_name`) ...
    pub program: PathBuf,
    /// ... and the leading arguments (the other words).
    pub leading_args: Vec<String>,
    /// `None` = no limit.
    pub timeout: Option<Duration>,
    pub kill_grace: Duration,
    pub max_log_bytes: usize,
    pub log_batch_lines: usize,
    pub log_flush: Duration,
    pub max_output_file_bytes: u64,
    /// Cap on the `state.json` the executor leaves (read into the result).
    pub max_state_bytes: u64,
    /// Finished execution directories older than this are removed (`None`: kept).
    pub retention: Option<Duration>,
    /// Finished execution directories are removed, oldest first, while they
    /// total more than this (`None`: no limit).
    pub retention_max_bytes: Option<u64>,
    /// Finished execution directories are removed, oldest first, while
    /// they hold more than this many entries in all (`None`: no limit).
    pub retention_max_entries: Option<u64>,
    /// How often retention looks.
    pub retention_interval: Duration,
    /// A running execution whose directory holds more bytes than this is
    /// stopped (`None`: no limit).
    pub max_dir_bytes: Option<u64>,
    /// ... or more entries than this.
    pub max_dir_entries: Option<u64>,
    /// Landlock around executors (`sandbox` module).
    pub sandbox: SandboxMode,
    /// A separate user for executors (`None`: the runner's own).
    pub run_as: Option<RunAs>,
    /// Whether `--key` is passed (PROTOCOL.md §7); when not, the executor
    /// cannot read the key file either.
    pub pass_key: bool,
    pub environment: EnvironmentConfig,
    /// `memory.max` of each execution's cgroup (where cgroups are delegated).
    pub memory_max_bytes: Option<u64>,
    /// `pids.max` of each execution's cgroup (where cgroups are delegated).
    pub pids_max: Option<u64>,
    /// Whether executions get a cgroup each (where one can be made).
    pub cgroups: CgroupMode,
}

/// `execution.cgroups`: one cgroup per execution where a cgroup v2 subtree
/// is delegated. Moving the executor into its cgroup costs the kernel an
/// RCU grace period per execution (about 13 ms measured on this project's
/// CI machine), so by default it is done only when a limit needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    /// When `memory_max_bytes` or `pids_max` is set.
    Auto,
    On,
    Off,
}

/// `execution.sandbox`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxMode {
    /// Landlock where the kernel has it; where not, said once at start-up.
    Auto,
    /// No start without Landlock.
    Required,
    Off,
}

/// `execution.run_as`: a user name, or a numeric uid with an optional gid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunAs {
    Name(String),
    Id { uid: u32, gid: Option<u32> },
}

/// `execution.environment.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvironmentMode {
    /// The runner's whole environment minus its own secrets and settings.
    Inherit,
    /// Only a basic set (PATH, HOME, locale...) and the `allow` patterns.
    Allowlist,
}

/// `execution.environment`: what the executor's environment holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentConfig {
    pub mode: EnvironmentMode,
    /// Names, or prefixes ending in `*` (`AWS_*`); allowlist mode only.
    pub allow: Vec<String>,
    /// Variables set for every executor, in the order given.
    pub set: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    pub enabled: bool,
    pub ca_cert: String,
    pub cert: String,
    pub key: String,
    pub api_url: String,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The file that was read, if one was.
    pub source: Option<PathBuf>,
    pub runner: RunnerConfig,
    pub execution: ExecutionConfig,
    pub tls: TlsConfig,
}

impl Config {
    /// The URL executors are told to call (`tls.api_url` when mTLS is on).
    pub fn executor_api_url(&self) -> &str {
        if self.tls.enabled && !self.tls.api_url.is_empty() {
            &self.tls.api_url
        } else {
            &self.runner.url
        }
    }
}

/// Keys the Go runner's Docker entrypoint writes; accepted without a warning.
const SILENT_KEYS: &[&str] = &[
    "execution.execution_install_dir",
    "execution.execution_module_dir",
    "execution.download_on_start",
];

/// Every key we know: (section, key).
const KNOWN_KEYS: &[(&str, &str)] = &[
    ("runner", "url"),
    ("runner", "registration_code"),
    ("runner", "name"),
    ("runner", "checkin_timeout"),
    ("runner", "certificate"),
    ("runner", "registration_retry"),
    ("runner", "shutdown_grace_secs"),
    ("runner", "metrics_listen"),
    ("runner", "unhealthy_after_refused_secs"),
    ("execution", "max_concurrent_executors"),
    ("execution", "state_directory"),
    ("execution", "execution_directory"),
    ("execution", "executable_name"),
    ("execution", "timeout_secs"),
    ("execution", "kill_grace_secs"),
    ("execution", "max_log_bytes"),
    ("execution", "log_batch_lines"),
    ("execution", "log_flush_ms"),
    ("execution", "max_output_file_bytes"),
    ("execution", "max_state_bytes"),
    ("execution", "retention_hours"),
    ("execution", "retention_max_bytes"),
    ("execution", "retention_max_entries"),
    ("execution", "retention_interval_secs"),
    ("execution", "max_dir_bytes"),
    ("execution", "max_dir_entries"),
    ("execution", "sandbox"),
    ("execution", "run_as"),
    ("execution", "pass_key"),
    ("execution", "environment"),
    ("execution", "memory_max_bytes"),
    ("execution", "pids_max"),
    ("execution", "cgroups"),
    ("tls", "enabled"),
    ("tls", "ca_cert"),
    ("tls", "cert"),
    ("tls", "key"),
    ("tls", "api_url"),
];
const RETRY_KEYS: &[&str] = &["strategy", "interval_secs", "max_duration_secs"];
const ENVIRONMENT_KEYS: &[&str] = &["mode", "allow", "set"];

/// Loads the configuration. `explicit` says the path came from `--config`, in
/// which case a missing file is an error; the default `./config.json` may be
/// absent when the environment supplies the url and registration code.
/// Returns the config and the warnings to log (unknown keys).
pub fn load(
    path: &Path,
    explicit: bool,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Config, Vec<String>), ConfigError> {
    let file = match std::fs::read(path) {
        Ok(bytes) => {
            Some(
                serde_json::from_slice::<Value>(&bytes).map_err(|e| ConfigError::NotJson {
                    path: path.to_path_buf(),
                    why: e.to_string(),
                })?,
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => None,
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let src = Source {
        path,
        root: file.as_ref(),
        env: &|name: &str| env(name).filter(|v| !v.trim().is_empty()),
    };
    let warnings = src.unknown_keys()?;
    let config = build(&src, file.is_some())?;
    Ok((config, warnings))
}

/// Only `execution.state_directory` (file, then environment, then default),
/// for `flo-runner health`, which must work even where the rest of the
/// configuration (the URL, the code) lives only in the runner's environment.
pub fn state_directory(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    let from_env = env("FLOMATION_RUNNER_STATE_DIRECTORY").filter(|v| !v.trim().is_empty());
    let from_file = || {
        let bytes = std::fs::read(path).ok()?;
        let v: Value = serde_json::from_slice(&bytes).ok()?;
        v.get("execution")?
            .get("state_directory")?
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    PathBuf::from(
        from_env
            .or_else(from_file)
            .unwrap_or_else(|| "./".to_string()),
    )
}

fn build(src: &Source, have_file: bool) -> Result<Config, ConfigError> {
    let url = src
        .string("runner", "url", &["FLOMATION_API", "RUNNER_URL"])?
        .ok_or(ConfigError::Missing {
            key: "runner.url",
            path: src.path.to_path_buf(),
            env: "FLOMATION_API",
        })?;
    let url = validate_url(src, "runner.url", &["FLOMATION_API", "RUNNER_URL"], &url)?;
    let registration_code = src
        .string(
            "runner",
            "registration_code",
            &["FLOMATION_REGISTRATION_CODE", "RUNNER_REGISTRATION_CODE"],
        )?
        .filter(|c| !c.is_empty())
        .ok_or(ConfigError::Missing {
            key: "runner.registration_code",
            path: src.path.to_path_buf(),
            env: "FLOMATION_REGISTRATION_CODE",
        })?;
    let name = src
        .string("runner", "name", &["FLOMATION_RUNNER_NAME", "RUNNER_NAME"])?
        .unwrap_or_else(|| DEFAULT_NAME.to_string());
    let checkin = src
        .uint(
            "runner",
            "checkin_timeout",
            &["FLOMATION_RUNNER_CHECKIN_TIMEOUT", "RUNNER_CHECKIN_TIMEOUT"],
        )?
        .unwrap_or(5);
    let certificate = src
        .string(
            "runner",
            "certificate",
            &["FLOMATION_RUNNER_CERTIFICATE_PATH"],
        )?
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| DEFAULT_CERTIFICATE.to_string());
    let registration_retry = retry(src)?;
    let shutdown_grace = src
        .uint(
            "runner",
            "shutdown_grace_secs",
            &["FLOMATION_RUNNER_SHUTDOWN_GRACE_SECS"],
        )?
        .unwrap_or(30);
    let metrics_listen = match src.nullable_string(
        "runner",
        "metrics_listen",
        &["FLOMATION_RUNNER_METRICS_LISTEN"],
    )? {
        None => None,
        Some(addr) => Some(addr.parse::<SocketAddr>().map_err(|e| {
            src.invalid(
                "runner.metrics_listen",
                &["FLOMATION_RUNNER_METRICS_LISTEN"],
                format!("{addr:?} is not a host:port socket address ({e})"),
            )
        })?),
    };
    // Three minutes: several polls at the longest error backoff (60 s), so
    // one refused poll in a deployment's hiccup is not enough.
    let unhealthy_after_refused = src
        .uint(
            "runner",
            "unhealthy_after_refused_secs",
            &["FLOMATION_RUNNER_UNHEALTHY_AFTER_REFUSED_SECS"],
        )?
        .unwrap_or(180);

    // Go semantics: below 1 means 1.
    let max_concurrent = src
        .int(
            "execution",
            "max_concurrent_executors",
            &["FLOMATION_RUNNER_MAX_EXECUTORS", "EXECUTOR_MAX_CONCURRENT"],
        )?
        .unwrap_or(1)
        .max(1);
    let max_concurrent = usize::try_from(max_concurrent)
        .unwrap_or(usize::MAX)
        .min(1024);
    let state_directory = src
        .string(
            "execution",
            "state_directory",
            &["FLOMATION_RUNNER_STATE_DIRECTORY"],
        )?
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "./".to_string());
    let execution_directory = src
        .string(
            "execution",
            "execution_directory",
            &["FLOMATION_RUNNER_EXECUTION_DIRECTORY", "EXECUTOR_DIRECTORY"],
        )?
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_EXECUTION_DIRECTORY.to_string());
    let executable_name = src
        .string(
            "execution",
            "executable_name",
            &["FLOMATION_RUNNER_EXECUTABLE_NAME"],
        )?
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_EXECUTABLE.to_string());
    let mut words = executable_name.split(' ').filter(|w| !w.is_empty());
    let program = words.next().unwrap_or(DEFAULT_EXECUTABLE);
    let leading_args = words.map(str::to_string).collect();
    let timeout_secs = src
        .uint(
            "execution",
            "timeout_secs",
            &["FLOMATION_RUNNER_TIMEOUT_SECS"],
        )?
        .unwrap_or(0);
    let kill_grace = src
        .uint(
            "execution",
            "kill_grace_secs",
            &["FLOMATION_RUNNER_KILL_GRACE_SECS"],
        )?
        .unwrap_or(10);
    let max_log_bytes = src
        .uint(
            "execution",
            "max_log_bytes",
            &["FLOMATION_RUNNER_MAX_LOG_BYTES"],
        )?
        .unwrap_or(1_048_576);
    // Room for the "output cut" marker line and at least a little output.
    if max_log_bytes < 1024 {
        return Err(src.invalid(
            "execution.max_log_bytes",
            &["FLOMATION_RUNNER_MAX_LOG_BYTES"],
            format!("{max_log_bytes} is too small (at least 1024)"),
        ));
    }
    let log_batch_lines = src
        .uint(
            "execution",
            "log_batch_lines",
            &["FLOMATION_RUNNER_LOG_BATCH_LINES"],
        )?
        .unwrap_or(1000);
    if log_batch_lines == 0 {
        return Err(src.invalid(
            "execution.log_batch_lines",
            &["FLOMATION_RUNNER_LOG_BATCH_LINES"],
            "must be at least 1".into(),
        ));
    }
    let log_flush_ms = src
        .uint(
            "execution",
            "log_flush_ms",
            &["FLOMATION_RUNNER_LOG_FLUSH_MS"],
        )?
        .unwrap_or(500);
    if log_flush_ms == 0 {
        return Err(src.invalid(
            "execution.log_flush_ms",
            &["FLOMATION_RUNNER_LOG_FLUSH_MS"],
            "must be at least 1".into(),
        ));
    }
    let max_output_file_bytes = src
        .uint(
            "execution",
            "max_output_file_bytes",
            &["FLOMATION_RUNNER_MAX_OUTPUT_FILE_BYTES"],
        )?
        .unwrap_or(104_857_600);
    let max_state_bytes = src
        .uint(
            "execution",
            "max_state_bytes",
            &["FLOMATION_RUNNER_MAX_STATE_BYTES"],
        )?
        .unwrap_or(DEFAULT_MAX_STATE_BYTES);

    let retention_hours = src
        .uint(
            "execution",
            "retention_hours",
            &["FLOMATION_RUNNER_RETENTION_HOURS"],
        )?
        .unwrap_or(72);
    let retention_max_bytes = src
        .uint(
            "execution",
            "retention_max_bytes",
            &["FLOMATION_RUNNER_RETENTION_MAX_BYTES"],
        )?
        .unwrap_or(2 * 1024 * 1024 * 1024);
    let retention_max_entries = src
        .uint(
            "execution",
            "retention_max_entries",
            &["FLOMATION_RUNNER_RETENTION_MAX_ENTRIES"],
        )?
        .unwrap_or(DEFAULT_RETENTION_MAX_ENTRIES);
    let retention_interval_secs = src
        .uint(
            "execution",
            "retention_interval_secs",
            &["FLOMATION_RUNNER_RETENTION_INTERVAL_SECS"],
        )?
        .unwrap_or(600);
    if retention_interval_secs == 0 {
        return Err(src.invalid(
            "execution.retention_interval_secs",
            &["FLOMATION_RUNNER_RETENTION_INTERVAL_SECS"],
            "must be at least 1".into(),
        ));
    }
    // 0 = no limit, like the retention limits.
    let max_dir_bytes = src
        .uint(
            "execution",
            "max_dir_bytes",
            &["FLOMATION_RUNNER_MAX_DIR_BYTES"],
        )?
        .unwrap_or(DEFAULT_MAX_DIR_BYTES);
    let max_dir_entries = src
        .uint(
            "execution",
            "max_dir_entries",
            &["FLOMATION_RUNNER_MAX_DIR_ENTRIES"],
        )?
        .unwrap_or(DEFAULT_MAX_DIR_ENTRIES);
    // Unset (or 0) = no limit: a limit that kills flows must be chosen.
    let memory_max_bytes = src
        .uint(
            "execution",
            "memory_max_bytes",
            &["FLOMATION_RUNNER_MEMORY_MAX_BYTES"],
        )?
        .filter(|v| *v > 0);
    // Below a megabyte nothing starts, and the executor fails to spawn with
    // an error that does not say why.
    if let Some(m) = memory_max_bytes.filter(|m| *m < 1 << 20) {
        return Err(src.invalid(
            "execution.memory_max_bytes",
            &["FLOMATION_RUNNER_MEMORY_MAX_BYTES"],
            format!("{m} is too small (at least 1048576, or 0 for no limit)"),
        ));
    }
    let pids_max = src
        .uint("execution", "pids_max", &["FLOMATION_RUNNER_PIDS_MAX"])?
        .filter(|v| *v > 0);
    let cgroups = match src.string("execution", "cgroups", &["FLOMATION_RUNNER_CGROUPS"])? {
        None => CgroupMode::Auto,
        Some(v) => match v.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => CgroupMode::Auto,
            "on" => CgroupMode::On,
            "off" => CgroupMode::Off,
            _ => {
                return Err(src.invalid(
                    "execution.cgroups",
                    &["FLOMATION_RUNNER_CGROUPS"],
                    format!("{v:?} is not one of auto, on, off"),
                ))
            }
        },
    };

    let sandbox = match src.string("execution", "sandbox", &["FLOMATION_RUNNER_SANDBOX"])? {
        None => SandboxMode::Auto,
        Some(v) => match v.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => SandboxMode::Auto,
            "required" => SandboxMode::Required,
            "off" => SandboxMode::Off,
            _ => {
                return Err(src.invalid(
                    "execution.sandbox",
                    &["FLOMATION_RUNNER_SANDBOX"],
                    format!("{v:?} is not one of auto, required, off"),
                ))
            }
        },
    };
    let run_as =
        match src.nullable_string("execution", "run_as", &["FLOMATION_RUNNER_RUN_AS"])? {
            None => None,
            Some(v) => Some(parse_run_as(&v).map_err(|why| {
                src.invalid("execution.run_as", &["FLOMATION_RUNNER_RUN_AS"], why)
            })?),
        };
    let pass_key = src
        .boolean("execution", "pass_key", &["FLOMATION_RUNNER_PASS_KEY"])?
        .unwrap_or(true);
    let environment = environment(src)?;

    let tls = TlsConfig {
        enabled: src
            .boolean("tls", "enabled", &["MTLS_ENABLED"])?
            .unwrap_or(false),
        ca_cert: src
            .string("tls", "ca_cert", &["MTLS_CA_CERT"])?
            .unwrap_or_default(),
        cert: src
            .string("tls", "cert", &["MTLS_CERT"])?
            .unwrap_or_default(),
        key: src.string("tls", "key", &["MTLS_KEY"])?.unwrap_or_default(),
        api_url: src
            .string("tls", "api_url", &["MTLS_API_URL"])?
            .unwrap_or_default(),
    };
    if tls.enabled && !tls.api_url.is_empty() {
        validate_url(src, "tls.api_url", &["MTLS_API_URL"], &tls.api_url)?;
    }

    Ok(Config {
        source: have_file.then(|| src.path.to_path_buf()),
        runner: RunnerConfig {
            url,
            registration_code,
            name,
            checkin_timeout: Duration::from_secs(checkin),
            certificate: PathBuf::from(certificate),
            registration_retry,
            shutdown_grace: Duration::from_secs(shutdown_grace),
            metrics_listen,
            unhealthy_after_refused: (unhealthy_after_refused > 0)
                .then(|| Duration::from_secs(unhealthy_after_refused)),
        },
        execution: ExecutionConfig {
            max_concurrent_executors: max_concurrent,
            state_directory: PathBuf::from(state_directory),
            execution_directory: PathBuf::from(execution_directory),
            program: resolve_program(program),
            leading_args,
            executable_name,
            timeout: (timeout_secs > 0).then(|| Duration::from_secs(timeout_secs)),
            kill_grace: Duration::from_secs(kill_grace),
            max_log_bytes: usize::try_from(max_log_bytes).unwrap_or(usize::MAX),
            log_batch_lines: usize::try_from(log_batch_lines).unwrap_or(usize::MAX),
            log_flush: Duration::from_millis(log_flush_ms),
            max_output_file_bytes,
            max_state_bytes,
            retention: (retention_hours > 0)
                .then(|| Duration::from_secs(retention_hours.saturating_mul(3600))),
            retention_max_bytes: (retention_max_bytes > 0).then_some(retention_max_bytes),
            retention_max_entries: (retention_max_entries > 0).then_some(retention_max_entries),
            retention_interval: Duration::from_secs(retention_interval_secs),
            max_dir_bytes: (max_dir_bytes > 0).then_some(max_dir_bytes),
            max_dir_entries: (max_dir_entries > 0).then_some(max_dir_entries),
            sandbox,
            run_as,
            pass_key,
            environment,
            memory_max_bytes,
            pids_max,
            cgroups,
        },
        tls,
    })
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

fn validate_url(src: &Source, key: &str, vars: &[&str], url: &str) -> Result<String, ConfigError> {
    let trimmed = url.trim().trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains(char::is_whitespace) => {
            Ok(trimmed.to_string())
        }
        _ => Err(src.invalid(
            key,
            vars,
            format!("{url:?} is not an http:// or https:// URL"),
        )),
    }
}

fn retry(src: &Source) -> Result<RegistrationRetry, ConfigError> {
    let obj = match src.field("runner", "registration_retry") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m),
        Some(other) => {
            return Err(src.file_invalid(
                "runner.registration_retry",
                format!("expected an object, found {}", kind(other)),
            ))
        }
    };
    let sub = |k: &str| obj.and_then(|m| m.get(k)).filter(|v| !v.is_null());
    let env = |name: &str| (src.env)(name);

    let strategy = match env("FLOMATION_RUNNER_REGISTRATION_RETRY_STRATEGY") {
        Some(v) => parse_strategy(&v).ok_or_else(|| {
            src.env_invalid(
                "FLOMATION_RUNNER_REGISTRATION_RETRY_STRATEGY",
                format!("{v:?} is not one of exponential, interval, none"),
            )
        })?,
        None => match sub("strategy") {
            None => RetryStrategy::Exponential,
            Some(Value::String(s)) => parse_strategy(s).ok_or_else(|| {
                src.file_invalid(
                    "runner.registration_retry.strategy",
                    format!("{s:?} is not one of exponential, interval, none"),
                )
            })?,
            Some(other) => {
                return Err(src.file_invalid(
                    "runner.registration_retry.strategy",
                    format!("expected a string, found {}", kind(other)),
                ))
            }
        },
    };
    let number = |key: &str, env_name: &str, default: u64| -> Result<u64, ConfigError> {
        if let Some(v) = env(env_name) {
            return v
                .trim()
                .parse::<u64>()
                .map_err(|_| src.env_invalid(env_name, format!("{v:?} is not a whole number")));
        }
        match sub(key) {
            None => Ok(default),
            Some(v) => as_uint(v).ok_or_else(|| {
                src.file_invalid(
                    &format!("runner.registration_retry.{key}"),
                    format!("expected a whole number, found {}", describe(v)),
                )
            }),
        }
    };
    let interval = number(
        "interval_secs",
        "FLOMATION_RUNNER_REGISTRATION_RETRY_INTERVAL_SECS",
        60,
    )?;
    if interval == 0 {
        return Err(src.invalid(
            "runner.registration_retry.interval_secs",
            &["FLOMATION_RUNNER_REGISTRATION_RETRY_INTERVAL_SECS"],
            "must be at least 1".into(),
        ));
    }
    let max_duration = number(
        "max_duration_secs",
        "FLOMATION_RUNNER_REGISTRATION_RETRY_MAX_DURATION_SECS",
        900,
    )?;
    Ok(RegistrationRetry {
        strategy,
        interval: Duration::from_secs(interval),
        max_duration: Duration::from_secs(max_duration),
    })
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

/// `execution.environment` from the file, with `mode` and `allow` also
/// from `FLOMATION_RUNNER_ENVIRONMENT_MODE` / `_ALLOW` (comma-separated).
fn environment(src: &Source) -> Result<EnvironmentConfig, ConfigError> {
    const MODE_VAR: &str = "FLOMATION_RUNNER_ENVIRONMENT_MODE";
    const ALLOW_VAR: &str = "FLOMATION_RUNNER_ENVIRONMENT_ALLOW";
    let obj = match src.field("execution", "environment") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m),
        Some(other) => {
            return Err(src.file_invalid(
                "execution.environment",
                format!("expected an object, found {}", kind(other)),
            ))
        }
    };
    let sub = |k: &str| obj.and_then(|m| m.get(k)).filter(|v| !v.is_null());
    let parse_mode = |s: &str| match s.trim().to_ascii_lowercase().as_str() {
        "inherit" => Some(EnvironmentMode::Inherit),
        "allowlist" => Some(EnvironmentMode::Allowlist),
        _ => None,
    };
    let mode = match (src.env)(MODE_VAR) {
        Some(v) => parse_mode(&v).ok_or_else(|| {
            src.env_invalid(MODE_VAR, format!("{v:?} is not one of inherit, allowlist"))
        })?,
        None => match sub("mode") {
            None => EnvironmentMode::Inherit,
            Some(Value::String(s)) => parse_mode(s).ok_or_else(|| {
                src.file_invalid(
                    "execution.environment.mode",
                    format!("{s:?} is not one of inherit, allowlist"),
                )
            })?,
            Some(other) => {
                return Err(src.file_invalid(
                    "execution.environment.mode",
                    format!("expected a string, found {}", kind(other)),
                ))
            }
        },
    };
    let allow: Vec<String> = match (src.env)(ALLOW_VAR) {
        Some(v) => v
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        None => match sub("allow") {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| match i {
                    Value::String(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
                    other => Err(src.file_invalid(
                        "execution.environment.allow",
                        format!("expected variable names, found {}", describe(other)),
                    )),
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(src.file_invalid(
                    "execution.environment.allow",
                    format!("expected an array of names, found {}", kind(other)),
                ))
            }
        },
    };
    if let Some(bad) = allow
        .iter()
        .find(|a| !valid_name(a.strip_suffix('*').unwrap_or(a)))
    {
        return Err(src.invalid(
            "execution.environment.allow",
            &[ALLOW_VAR],
            format!("{bad:?} is not a variable name or a prefix ending in *"),
        ));
    }
    if mode == EnvironmentMode::Inherit && !allow.is_empty() {
        return Err(src.invalid(
            "execution.environment.allow",
            &[ALLOW_VAR],
            "is only used with \"mode\": \"allowlist\" (in inherit mode every variable but the runner's own is passed)".into(),
        ));
    }
    let set = match sub("set") {
        None => Vec::new(),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) if valid_name(k) => Ok((k.clone(), s.clone())),
                Value::String(_) => Err(src.file_invalid(
                    "execution.environment.set",
                    format!("{k:?} is not a variable name"),
                )),
                other => Err(src.file_invalid(
                    &format!("execution.environment.set.{k}"),
                    format!("expected a string, found {}", describe(other)),
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(src.file_invalid(
                "execution.environment.set",
                format!("expected an object of strings, found {}", kind(other)),
            ))
        }
    };
    Ok(EnvironmentConfig { mode, allow, set })
}

/// A name `execve` can carry: not empty, no `=` and no NUL.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['=', '\0'])
}

fn parse_strategy(s: &str) -> Option<RetryStrategy> {
    match s.trim().to_ascii_lowercase().as_str() {
        "exponential" => Some(RetryStrategy::Exponential),
        "interval" => Some(RetryStrategy::Interval),
        "none" => Some(RetryStrategy::None),
        _ => None,
    }
}

/// The config file plus the environment, with typed accessors whose errors
/// name where the bad value came from.
struct Source<'a> {
    path: &'a Path,
    root: Option<&'a Value>,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Source<'_> {
    fn field(&self, section: &str, key: &str) -> Option<&Value> {
        self.root?.get(section)?.get(key)
    }

    fn file_invalid(&self, key: &str, why: String) -> ConfigError {
        ConfigError::Invalid {
            origin: self.path.display().to_string(),
            key: key.to_string(),
            why,
        }
    }

    fn env_invalid(&self, var: &str, why: String) -> ConfigError {
        ConfigError::Invalid {
            origin: "environment".to_string(),
            key: var.to_string(),
            why,
        }
    }

    /// A value that parsed but is not allowed: blames the variable when one
    /// of `vars` supplied it, else the file.
    fn invalid(&self, key: &str, vars: &[&str], why: String) -> ConfigError {
        match self.env_value(vars) {
            Some((var, _)) => self.env_invalid(&var, why),
            None => self.file_invalid(key, why),
        }
    }

    fn env_value(&self, vars: &[&str]) -> Option<(String, String)> {
        vars.iter()
            .find_map(|v| (self.env)(v).map(|val| (v.to_string(), val)))
    }

    /// Null in the file counts as absent (Go's `*string` fields are nullable).
    fn file_value(&self, section: &str, key: &str) -> Option<&Value> {
        self.field(section, key).filter(|v| !v.is_null())
    }

    fn string(
        &self,
        section: &str,
        key: &str,
        vars: &[&str],
    ) -> Result<Option<String>, ConfigError> {
        if let Some((_, v)) = self.env_value(vars) {
            return Ok(Some(v));
        }
        match self.file_value(section, key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.file_invalid(
                &format!("{section}.{key}"),
                format!("expected a string, found {}", describe(other)),
            )),
        }
    }

    fn nullable_string(
        &self,
        section: &str,
        key: &str,
        vars: &[&str],
    ) -> Result<Option<String>, ConfigError> {
        Ok(self.string(section, key, vars)?.filter(|s| !s.is_empty()))
    }

    fn int(&self, section: &str, key: &str, vars: &[&str]) -> Result<Option<i64>, ConfigError> {
        if let Some((var, v)) = self.env_value(vars) {
            return v
                .trim()
                .parse::<i64>()
                .map(Some)
                .map_err(|_| self.env_invalid(&var, format!("{v:?} is not a whole number")));
        }
        match self.file_value(section, key) {
            None => Ok(None),
            Some(v) => v.as_i64().map(Some).ok_or_else(|| {
                self.file_invalid(
                    &format!("{section}.{key}"),
                    format!("expected a whole number, found {}", describe(v)),
                )
            }),
        }
    }

    fn uint(&self, section: &str, key: &str, vars: &[&str]) -> Result<Option<u64>, ConfigError> {
        if let Some((var, v)) = self.env_value(vars) {
            return v.trim().parse::<u64>().map(Some).map_err(|_| {
                self.env_invalid(&var, format!("{v:?} is not a non-negative whole number"))
            });
        }
        match self.file_value(section, key) {
            None => Ok(None),
            Some(v) => as_uint(v).map(Some).ok_or_else(|| {
                self.file_invalid(
                    &format!("{section}.{key}"),
                    format!(
                        "expected a non-negative whole number, found {}",
                        describe(v)
                    ),
                )
            }),
        }
    }

    fn boolean(
        &self,
        section: &str,
        key: &str,
        vars: &[&str],
    ) -> Result<Option<bool>, ConfigError> {
        if let Some((var, v)) = self.env_value(vars) {
            return match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(Some(true)),
                "0" | "false" | "no" | "off" => Ok(Some(false)),
                _ => Err(self.env_invalid(&var, format!("{v:?} is not true or false"))),
            };
        }
        match self.file_value(section, key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.file_invalid(
                &format!("{section}.{key}"),
                format!("expected true or false, found {}", describe(other)),
            )),
        }
    }

    /// Warnings for keys we do not know; errors for sections of the wrong type.
    fn unknown_keys(&self) -> Result<Vec<String>, ConfigError> {
        let mut warnings = Vec::new();
        let Some(root) = self.root else {
            return Ok(warnings);
        };
        let Value::Object(root) = root else {
            return Err(self.file_invalid(
                "(top level)",
                format!("expected an object, found {}", kind(root)),
            ));
        };
        for (section, value) in root {
            if !matches!(section.as_str(), "runner" | "execution" | "tls") {
                warnings.push(self.unknown(section));
                continue;
            }
            let map: &Map<String, Value> = match value {
                Value::Object(m) => m,
                Value::Null if section == "tls" => continue,
                other => {
                    return Err(self.file_invalid(
                        section,
                        format!("expected an object, found {}", kind(other)),
                    ))
                }
            };
            for (key, v) in map {
                let dotted = format!("{section}.{key}");
                if KNOWN_KEYS.contains(&(section.as_str(), key.as_str())) {
                    let sub_keys = match dotted.as_str() {
                        "runner.registration_retry" => RETRY_KEYS,
                        "execution.environment" => ENVIRONMENT_KEYS,
                        _ => &[],
                    };
                    if let (false, Value::Object(r)) = (sub_keys.is_empty(), v) {
                        for k in r.keys().filter(|k| !sub_keys.contains(&k.as_str())) {
                            warnings.push(self.unknown(&format!("{dotted}.{k}")));
                        }
                    }
                } else if !SILENT_KEYS.contains(&dotted.as_str()) {
                    warnings.push(self.unknown(&dotted));
                }
            }
        }
        Ok(warnings)
    }

    fn unknown(&self, key: &str) -> String {
        format!("{}: unknown key {key:?} ignored", self.path.display())
    }
}

fn as_uint(v: &Value) -> Option<u64> {
    v.as_u64()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn describe(v: &Value) -> String {
    let mut text = v.to_string();
    if text.len() > 60 {
        text.truncate(57);
        text.push_str("...");
    }
    format!("{} {text}", kind(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load_with(json: &str, vars: &[(&str, &str)]) -> Result<(Config, Vec<String>), ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, json).unwrap();
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        load(&path, true, &|k| vars.get(k).cloned())
    }

    const MIN: &str = r#"{"runner":{"url":"http://api/","registration_code":"c"}}"#;

    #[test]
    fn defaults_match_the_go_runner() {
        let (c, w) = load_with(MIN, &[]).unwrap();
        assert!(w.is_empty());
        assert_eq!(c.runner.url, "http://api");
        assert_eq!(c.runner.name, "Flo Runner");
        assert_eq!(c.runner.checkin_timeout, Duration::from_secs(5));
        assert_eq!(c.runner.certificate, PathBuf::from("flomation-runner.pem"));
        assert_eq!(c.execution.state_directory, PathBuf::from("./"));
        assert_eq!(c.execution.max_concurrent_executors, 1);
        assert_eq!(c.execution.program, PathBuf::from("flomation-executor"));
        assert_eq!(
            c.runner.registration_retry.strategy,
            RetryStrategy::Exponential
        );
        assert_eq!(
            c.runner.registration_retry.interval,
            Duration::from_secs(60)
        );
        assert_eq!(
            c.runner.registration_retry.max_duration,
            Duration::from_secs(900)
        );
        assert_eq!(c.runner.shutdown_grace, Duration::from_secs(30));
        assert!(c.runner.metrics_listen.is_none());
        assert_eq!(
            c.runner.unhealthy_after_refused,
            Some(Duration::from_secs(180))
        );
        assert!(c.execution.timeout.is_none());
        assert_eq!(c.execution.kill_grace, Duration::from_secs(10));
        assert_eq!(c.execution.max_log_bytes, 1_048_576);
        assert_eq!(c.execution.log_batch_lines, 1000);
        assert_eq!(c.execution.log_flush, Duration::from_millis(500));
        assert_eq!(c.execution.memory_max_bytes, None);
        assert_eq!(c.execution.pids_max, None);
        assert_eq!(c.execution.retention_max_entries, Some(20_000));
        assert_eq!(c.execution.retention_interval, Duration::from_secs(600));
        assert_eq!(c.execution.max_dir_bytes, Some(10 << 30));
        assert_eq!(c.execution.max_dir_entries, Some(1_000_000));
    }

    #[test]
    fn execution_limits_are_optional_and_checked() {
        let json = r#"{"runner":{"url":"http://a","registration_code":"c"},
            "execution":{"memory_max_bytes":268435456,"pids_max":0}}"#;
        let (c, w) = load_with(json, &[("FLOMATION_RUNNER_PIDS_MAX", "64")]).unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.execution.memory_max_bytes, Some(268_435_456));
        assert_eq!(c.execution.pids_max, Some(64));
        let e = load_with(
            r#"{"runner":{"url":"http://a","registration_code":"c"},"execution":{"memory_max_bytes":4096}}"#,
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("execution.memory_max_bytes"), "{e}");
    }

    #[test]
    fn env_beats_file_and_flomation_beats_docker_names() {
        let (c, _) = load_with(
            r#"{"runner":{"url":"http://file","registration_code":"c","name":"file"},
                "execution":{"max_concurrent_executors":0,"executable_name":"python3 -u exec.py"}}"#,
            &[
                ("RUNNER_URL", "http://docker"),
                ("FLOMATION_API", "https://env"),
                ("RUNNER_NAME", "docker-name"),
                ("EXECUTOR_MAX_CONCURRENT", "4"),
                ("FLOMATION_RUNNER_TIMEOUT_SECS", "7"),
                ("FLOMATION_RUNNER_REGISTRATION_RETRY_STRATEGY", "none"),
            ],
        )
        .unwrap();
        assert_eq!(c.runner.url, "https://env");
        assert_eq!(c.runner.name, "docker-name");
        assert_eq!(c.execution.max_concurrent_executors, 4);
        assert_eq!(c.execution.timeout, Some(Duration::from_secs(7)));
        assert_eq!(c.runner.registration_retry.strategy, RetryStrategy::None);
        assert_eq!(c.execution.program, PathBuf::from("python3"));
        assert_eq!(c.execution.leading_args, vec!["-u", "exec.py"]);
    }

    #[test]
    fn below_one_executor_means_one() {
        let (c, _) = load_with(MIN, &[("FLOMATION_RUNNER_MAX_EXECUTORS", "-3")]).unwrap();
        assert_eq!(c.execution.max_concurrent_executors, 1);
    }

    #[test]
    fn errors_name_file_and_key() {
        let e = load_with(
            r#"{"runner":{"url":"http://a","registration_code":"c","checkin_timeout":"5"}}"#,
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("config.json") && e.contains("runner.checkin_timeout"),
            "{e}"
        );
        let e = load_with("{nope", &[]).unwrap_err().to_string();
        assert!(
            e.contains("config.json") && e.contains("not valid JSON"),
            "{e}"
        );
        let e = load_with(r#"{"runner":{"url":"http://a"}}"#, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("runner.registration_code"), "{e}");
        let e = load_with(MIN, &[("FLOMATION_RUNNER_LOG_FLUSH_MS", "soon")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("FLOMATION_RUNNER_LOG_FLUSH_MS"), "{e}");
        let e = load_with(
            r#"{"runner":{"url":"http://a","registration_code":"c","registration_retry":{"strategy":"sometimes"}}}"#,
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("runner.registration_retry.strategy"), "{e}");
    }

    #[test]
    fn a_disallowed_value_from_the_environment_names_the_variable() {
        let e = load_with(MIN, &[("FLOMATION_RUNNER_LOG_FLUSH_MS", "0")])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("environment: FLOMATION_RUNNER_LOG_FLUSH_MS"),
            "{e}"
        );
        let e = load_with(
            r#"{"runner":{"url":"http://a","registration_code":"c"},"execution":{"log_flush_ms":0}}"#,
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("config.json: execution.log_flush_ms"), "{e}");
    }

    #[test]
    fn entrypoint_keys_are_silent_and_others_warn() {
        let (_, w) = load_with(
            r#"{"runner":{"url":"http://a","registration_code":"c","colour":"blue"},
                "execution":{"execution_install_dir":"/x","execution_module_dir":"/y","download_on_start":true},
                "extra":1}"#,
            &[],
        )
        .unwrap();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("colour") || w[1].contains("colour"));
    }

    #[test]
    fn sandbox_settings_default_to_auto_inherit_and_passing_the_key() {
        let (c, _) = load_with(MIN, &[]).unwrap();
        assert_eq!(c.execution.sandbox, SandboxMode::Auto);
        assert_eq!(c.execution.run_as, None);
        assert!(c.execution.pass_key);
        assert_eq!(c.execution.environment.mode, EnvironmentMode::Inherit);
        assert!(c.execution.environment.allow.is_empty());
        assert!(c.execution.environment.set.is_empty());
    }

    #[test]
    fn sandbox_settings_parse_from_the_file_and_the_environment() {
        let (c, w) = load_with(
            r#"{"runner":{"url":"http://a","registration_code":"c"},
                "execution":{"sandbox":"required","run_as":"1001:1002","pass_key":false,
                  "environment":{"mode":"allowlist","allow":["AWS_*","HTTPS_PROXY"],"set":{"A":"1"}}}}"#,
            &[],
        )
        .unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.execution.sandbox, SandboxMode::Required);
        assert_eq!(
            c.execution.run_as,
            Some(RunAs::Id {
                uid: 1001,
                gid: Some(1002)
            })
        );
        assert!(!c.execution.pass_key);
        assert_eq!(c.execution.environment.mode, EnvironmentMode::Allowlist);
        assert_eq!(c.execution.environment.allow, ["AWS_*", "HTTPS_PROXY"]);
        assert_eq!(
            c.execution.environment.set,
            [("A".to_string(), "1".to_string())]
        );

        let (c, _) = load_with(
            MIN,
            &[
                ("FLOMATION_RUNNER_SANDBOX", "off"),
                ("FLOMATION_RUNNER_RUN_AS", "flow-user"),
                ("FLOMATION_RUNNER_PASS_KEY", "no"),
                ("FLOMATION_RUNNER_ENVIRONMENT_MODE", "allowlist"),
                ("FLOMATION_RUNNER_ENVIRONMENT_ALLOW", "AWS_*, GOOGLE_*"),
            ],
        )
        .unwrap();
        assert_eq!(c.execution.sandbox, SandboxMode::Off);
        assert_eq!(c.execution.run_as, Some(RunAs::Name("flow-user".into())));
        assert!(!c.execution.pass_key);
        assert_eq!(c.execution.environment.allow, ["AWS_*", "GOOGLE_*"]);
        let (c, _) = load_with(MIN, &[("FLOMATION_RUNNER_RUN_AS", "1001")]).unwrap();
        assert_eq!(
            c.execution.run_as,
            Some(RunAs::Id {
                uid: 1001,
                gid: None
            })
        );
    }

    #[test]
    fn bad_sandbox_settings_name_the_key_and_the_value() {
        let bad = |execution: &str, needle: &str| {
            let json = format!(
                r#"{{"runner":{{"url":"http://a","registration_code":"c"}},"execution":{execution}}}"#
            );
            let e = load_with(&json, &[]).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        };
        bad(
            r#"{"sandbox":"strict"}"#,
            "execution.sandbox: \"strict\" is not one of auto, required, off",
        );
        bad(
            r#"{"sandbox":true}"#,
            "execution.sandbox: expected a string",
        );
        bad(r#"{"run_as":"1001:staff"}"#, "execution.run_as");
        bad(r#"{"run_as":"a user"}"#, "execution.run_as");
        bad(
            r#"{"pass_key":"yes"}"#,
            "execution.pass_key: expected true or false",
        );
        bad(
            r#"{"environment":"inherit"}"#,
            "execution.environment: expected an object",
        );
        bad(
            r#"{"environment":{"mode":"all"}}"#,
            "execution.environment.mode",
        );
        bad(r#"{"environment":{"allow":["AWS_*"]}}"#, "only used with");
        bad(
            r#"{"environment":{"mode":"allowlist","allow":["A=B"]}}"#,
            "execution.environment.allow",
        );
        bad(
            r#"{"environment":{"set":{"A":1}}}"#,
            "execution.environment.set.A",
        );
        bad(
            r#"{"environment":{"set":{"A=":"1"}}}"#,
            "not a variable name",
        );
        let e = load_with(MIN, &[("FLOMATION_RUNNER_SANDBOX", "maybe")])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("environment: FLOMATION_RUNNER_SANDBOX"),
            "{e}"
        );
        let (_, w) = load_with(
            r#"{"runner":{"url":"http://a","registration_code":"c"},"execution":{"environment":{"mode":"inherit","extra":1}}}"#,
            &[],
        )
        .unwrap();
        assert!(
            w.len() == 1 && w[0].contains("execution.environment.extra"),
            "{w:?}"
        );
    }

    #[test]
    fn missing_default_file_is_fine_with_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let env = |k: &str| match k {
            "RUNNER_URL" => Some("http://x".to_string()),
            "RUNNER_REGISTRATION_CODE" => Some("code".to_string()),
            _ => None,
        };
        let (c, _) = load(&path, false, &env).unwrap();
        assert_eq!(c.runner.url, "http://x");
        assert!(c.source.is_none());
        assert!(load(&path, true, &env).is_err());
    }
}
