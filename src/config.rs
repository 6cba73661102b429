//! Configuration: `config.json` (Go runner layout) overlaid by environment
//! variables, parsed once into a typed, validated [`Config`].
//!
//! Precedence for every key: `FLOMATION_*` variable, then the Docker `RUNNER_*`
//! / `EXECUTOR_*` name (if it has one), then the file, then the default.
//! An empty variable counts as unset (Docker's `-e NAME=` is a common slip).
//!
//! Every key is one entry of the table in `config/keys.rs`; `config/source.rs` finds its
//! value and words the errors. The types here are what the rest of the
//! runner reads. Their `Default` is the blank the table fills in, not the
//! defaults (those are in the table).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

mod keys;
mod source;

use keys::KEYS;
use source::Source;

pub const DEFAULT_CONFIG_FILE: &str = "config.json";

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetryStrategy {
    /// 8 s, doubling, until `max_duration` has passed; then give up.
    #[default]
    Exponential,
    /// Every `interval`, forever.
    Interval,
    /// One attempt.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RegistrationRetry {
    pub strategy: RetryStrategy,
    pub interval: Duration,
    pub max_duration: Duration,
}

#[derive(Debug, Clone, Default)]
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

#[derive(Debug, Clone, Default)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CgroupMode {
    /// When `memory_max_bytes` or `pids_max` is set.
    #[default]
    Auto,
    On,
    Off,
}

/// `execution.sandbox`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SandboxMode {
    /// Landlock where the kernel has it; where not, said once at start-up.
    #[default]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EnvironmentMode {
    /// The runner's whole environment minus its own secrets and settings.
    #[default]
    Inherit,
    /// Only a basic set (PATH, HOME, locale...) and the `allow` patterns.
    Allowlist,
}

/// `execution.environment`: what the executor's environment holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EnvironmentConfig {
    pub mode: EnvironmentMode,
    /// Names, or prefixes ending in `*` (`AWS_*`); allowlist mode only.
    pub allow: Vec<String>,
    /// Variables set for every executor, in the order given.
    pub set: Vec<(String, String)>,
}

/// `tls`: paths and the URL are `None` when unset (`""` in the file).
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    pub enabled: bool,
    /// Extra CA certificates, trusted whether or not mTLS is on.
    pub ca_cert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub api_url: Option<String>,
}

#[derive(Debug, Clone, Default)]
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
        match &self.tls.api_url {
            Some(url) if self.tls.enabled => url,
            _ => &self.runner.url,
        }
    }
}

/// Loads the configuration. `explicit` says the path came from `--config`, in
/// which case a missing file is an error; the default `./config.json` may be
/// absent when the environment supplies the url and registration code.
/// Returns the config and the warnings to log (unknown keys).
pub fn load(
    path: &Path,
    explicit: bool,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Config, Vec<String>), ConfigError> {
    let file = source::read_file(path, explicit)?;
    let src = Source {
        path,
        root: file.as_ref(),
        env: &|name: &str| env(name).filter(|v| !v.trim().is_empty()),
    };
    let warnings = src.unknown_keys()?;
    let mut config = Config {
        source: file.is_some().then(|| path.to_path_buf()),
        ..Config::default()
    };
    for key in KEYS {
        src.apply(&mut config, key)?;
    }
    Ok((config, warnings))
}

/// Only `execution.state_directory`, with the same precedence, for
/// `flo-runner health`, which must work even where the rest of the
/// configuration (the URL, the code) lives only in the runner's environment.
/// A file that cannot be read or holds a bad value counts as absent: the
/// runner itself would not have started with it, and health still answers.
pub fn state_directory(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    let file = source::read_file(path, false).ok().flatten();
    let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let from = |root: Option<&Value>| {
        let mut config = Config::default();
        let src = Source {
            path,
            root,
            env: &env,
        };
        src.apply(&mut config, &keys::STATE_DIRECTORY)
            .ok()
            .map(|()| config.execution.state_directory)
    };
    // Without the file the key is a string from a variable or the default,
    // which cannot be refused.
    from(file.as_ref())
        .or_else(|| from(None))
        .unwrap_or_default()
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

    /// The rows of README.md's configuration table: (key, variables, default).
    fn readme_rows() -> Vec<(String, Vec<String>, String)> {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"));
        let section = readme
            .split("\n## ")
            .find(|s| s.starts_with("Configuration\n"))
            .expect("README.md has a ## Configuration section");
        let quoted = |cell: &str| -> Vec<String> {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect()
        };
        section
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| {
                let cells: Vec<&str> = l.split(" | ").collect();
                let key = quoted(cells[0]).concat();
                (key, quoted(cells[1]), cells[2].to_string())
            })
            .collect()
    }

    #[test]
    fn the_readme_table_lists_exactly_the_keys_in_order() {
        let rows = readme_rows();
        let names: Vec<&str> = rows.iter().map(|(k, _, _)| k.as_str()).collect();
        let keys: Vec<&str> = KEYS.iter().map(|k| k.name).collect();
        assert_eq!(names, keys, "README.md's configuration table");
        for ((name, vars, default), key) in rows.iter().zip(KEYS) {
            assert_eq!(vars, key.vars, "README.md: the variables of {name}");
            match key.default {
                keys::Fallback::Text(t) => {
                    assert_eq!(default, &format!("`{t}`"), "README.md: default of {name}")
                }
                keys::Fallback::Required => {
                    assert_eq!(default, "required", "README.md: default of {name}")
                }
                keys::Fallback::Unset => {}
            }
        }
    }

    #[test]
    fn the_example_file_has_every_key_and_nothing_else() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.json.example");
        let (_, warnings) = load(&path, true, &|_| None).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let example: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        for key in KEYS {
            let pointer = format!("/{}", key.name.replace('.', "/"));
            assert!(
                example.pointer(&pointer).is_some(),
                "config.json.example lacks {}",
                key.name
            );
        }
    }

    #[test]
    fn every_required_key_names_a_variable_and_names_are_unique() {
        for (i, key) in KEYS.iter().enumerate() {
            if matches!(key.default, keys::Fallback::Required) {
                assert!(!key.vars.is_empty(), "{}", key.name);
            }
            assert!(
                KEYS[i + 1..].iter().all(|k| k.name != key.name),
                "{} twice",
                key.name
            );
        }
    }

    #[test]
    fn state_directory_has_the_precedence_of_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let none = |_: &str| None;
        let set = |k: &str| (k == "FLOMATION_RUNNER_STATE_DIRECTORY").then(|| "/env".to_string());
        let blank = |k: &str| (k == "FLOMATION_RUNNER_STATE_DIRECTORY").then(|| " ".to_string());
        assert_eq!(state_directory(&path, &none), PathBuf::from("./"));
        std::fs::write(&path, r#"{"execution":{"state_directory":"/file"}}"#).unwrap();
        assert_eq!(state_directory(&path, &none), PathBuf::from("/file"));
        assert_eq!(state_directory(&path, &blank), PathBuf::from("/file"));
        assert_eq!(state_directory(&path, &set), PathBuf::from("/env"));
        std::fs::write(&path, r#"{"execution":{"state_directory":""}}"#).unwrap();
        assert_eq!(state_directory(&path, &none), PathBuf::from("./"));
        // A broken file: health still answers, with the default or the variable.
        std::fs::write(&path, r#"{"execution":{"state_directory":7}}"#).unwrap();
        assert_eq!(state_directory(&path, &none), PathBuf::from("./"));
        std::fs::write(&path, "{nope").unwrap();
        assert_eq!(state_directory(&path, &none), PathBuf::from("./"));
        assert_eq!(state_directory(&path, &set), PathBuf::from("/env"));
    }

    #[test]
    fn tls_paths_are_none_when_unset_or_empty() {
        let (c, _) = load_with(MIN, &[]).unwrap();
        assert!(c.tls.ca_cert.is_none() && c.tls.cert.is_none() && c.tls.key.is_none());
        assert_eq!(c.executor_api_url(), "http://api");
        let json = r#"{"runner":{"url":"http://a","registration_code":"c"},
            "tls":{"enabled":true,"ca_cert":"","cert":"c.pem","key":"k.pem","api_url":"https://m/"}}"#;
        let (c, _) = load_with(json, &[("MTLS_CA_CERT", "ca.pem")]).unwrap();
        assert_eq!(c.tls.ca_cert, Some(PathBuf::from("ca.pem")));
        assert_eq!(c.tls.cert, Some(PathBuf::from("c.pem")));
        assert_eq!(c.tls.key, Some(PathBuf::from("k.pem")));
        // As given: executors are told exactly this.
        assert_eq!(c.executor_api_url(), "https://m/");
        let e = load_with(MIN, &[("MTLS_ENABLED", "1"), ("MTLS_API_URL", "m:1")])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("environment: MTLS_API_URL: \"m:1\""), "{e}");
        let (c, _) = load_with(MIN, &[("MTLS_API_URL", "m:1")]).unwrap();
        assert_eq!(c.executor_api_url(), "http://api");
    }

    #[test]
    fn a_bad_group_is_named_even_where_a_variable_sets_its_keys() {
        let e = load_with(
            r#"{"runner":{"url":"http://a","registration_code":"c","registration_retry":5}}"#,
            &[("FLOMATION_RUNNER_REGISTRATION_RETRY_STRATEGY", "none")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(
                "config.json: runner.registration_retry: expected an object, found a number"
            ),
            "{e}"
        );
        let e = load_with(r#"{"runner":5}"#, &[]).unwrap_err().to_string();
        assert!(e.contains("config.json: runner: expected an object"), "{e}");
        let (_, w) = load_with(
            r#"{"runner":{"url":"http://a","registration_code":"c","registration_retry":{"jitter":1}},"tls":null}"#,
            &[],
        )
        .unwrap();
        assert!(
            w.len() == 1 && w[0].contains("runner.registration_retry.jitter"),
            "{w:?}"
        );
    }

    #[test]
    fn long_values_in_errors_are_cut_on_a_character_boundary() {
        let name = "é".repeat(40);
        let json = format!(
            r#"{{"runner":{{"url":"http://a","registration_code":"c","checkin_timeout":"{name}"}}}}"#
        );
        let e = load_with(&json, &[]).unwrap_err().to_string();
        assert!(
            e.contains("runner.checkin_timeout") && e.ends_with("..."),
            "{e}"
        );
    }
}
