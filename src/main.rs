//! flo-runner: parse the command line, then run one mode. The pipeline
//! itself starts in [`flo_runner::Runner`] (`src/runner/`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use flo_runner::config::{self, Config};
use flo_runner::Runner;

const VERSION: &str = env!("CARGO_PKG_VERSION");

const HELP: &str = "\
flo-runner: a worker agent for the Flomation API

Usage:
  flo-runner [--config PATH]         run until SIGINT or SIGTERM
  flo-runner check [--config PATH]   check the configuration, key, directories,
                                     executor and API; print a checklist
  flo-runner health [--config PATH]  exit 0 if the runner using this state
                                     directory is registered and polling

Options:
  -c, --config PATH   configuration file (default: $FLO_RUNNER_CONFIG, else
                      ./config.json, which may be absent when FLOMATION_API /
                      RUNNER_URL and FLOMATION_REGISTRATION_CODE /
                      RUNNER_REGISTRATION_CODE are set)
  -V, --version       print the version and exit
  -h, --help          print this help and exit

A first SIGTERM/SIGINT stops polling and lets running executions finish (up to
runner.shutdown_grace_secs); a second stops them now. Logs go to stderr:
RUST_LOG sets the level (default info), FLO_LOG_FORMAT=json writes JSON lines.";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Run,
    Check,
    Health,
}

/// What the command line asks for.
struct Args {
    mode: Mode,
    config: PathBuf,
    /// Given by `--config` or `$FLO_RUNNER_CONFIG`: it must exist.
    explicit: bool,
}

fn main() -> ExitCode {
    // First, before the process holds anything worth reading: flows of the
    // same uid must not read /proc/<runner>/environ or mem.
    let dumpable = flo_runner::make_non_dumpable();
    let args = match parse_args() {
        Ok(args) => args,
        Err(code) => return code,
    };
    flo_runner::logging::init();
    if let Err(e) = dumpable {
        log::warn!(
            "cannot mark the runner non-dumpable (flows of its user may read its memory): {e}"
        );
    }
    // No backtraces for users: a panic is a bug, reported in one line.
    std::panic::set_hook(Box::new(|info| {
        log::error!("internal error (please report): {info}");
    }));
    if args.mode == Mode::Health {
        return health(&args.config);
    }
    let Some(config) = load_config(&args) else {
        return ExitCode::from(1);
    };
    match args.mode {
        Mode::Check => check(&config),
        _ => run(config, &args.config),
    }
}

/// The arguments, or the exit code when they were `--help`, `--version` or
/// a usage error (2, with one line on stderr).
fn parse_args() -> Result<Args, ExitCode> {
    let mut parser = lexopt::Parser::from_env();
    let mut mode = Mode::Run;
    let mut config = None;
    let mut first = true;
    while let Some(arg) = next_arg(&mut parser) {
        match take(&mut parser, arg, first)? {
            Took::Mode(m) => mode = m,
            Took::Config(path) => config = Some(path),
        }
        first = false;
    }
    Ok(resolve_config(mode, config))
}

/// What one argument sets.
enum Took {
    Mode(Mode),
    Config(PathBuf),
}

/// Takes `arg` (and the value it needs); the exit code when it was
/// `--help`, `--version` or a usage error. The mode may only come first.
fn take(parser: &mut lexopt::Parser, arg: Arg, first: bool) -> Result<Took, ExitCode> {
    // A value glued to a flag (`--help=x`, `-hx`, `-cPATH`) is as
    // unexpected as an unknown flag; only `--config=PATH` takes one.
    let attached = parser.optional_value();
    let Arg { flag, spelled } = arg;
    match (flag, attached) {
        (Flag::Help, None) => {
            println!("{HELP}");
            Err(ExitCode::SUCCESS)
        }
        (Flag::Version, None) => {
            println!("flo-runner {VERSION}");
            Err(ExitCode::SUCCESS)
        }
        (Flag::Config, Some(path)) if spelled == "--config" => {
            Ok(Took::Config(PathBuf::from(path)))
        }
        (Flag::Config, None) => match parser.value() {
            Ok(path) => Ok(Took::Config(PathBuf::from(path))),
            Err(_) => Err(usage_error("--config needs a path")),
        },
        (Flag::Value(v), _) if first && v == "check" => Ok(Took::Mode(Mode::Check)),
        (Flag::Value(v), _) if first && v == "health" => Ok(Took::Mode(Mode::Health)),
        (_, attached) => {
            let arg = glued(spelled, attached);
            Err(usage_error(&format!("unexpected argument {arg:?}")))
        }
    }
}

/// One line on stderr; exit code 2.
fn usage_error(what: &str) -> ExitCode {
    eprintln!("flo-runner: {what} (see --help)");
    ExitCode::from(2)
}

/// --config, then $FLO_RUNNER_CONFIG (both must exist), then ./config.json.
fn resolve_config(mode: Mode, config: Option<PathBuf>) -> Args {
    let from_env = std::env::var_os("FLO_RUNNER_CONFIG")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    match config.or(from_env) {
        Some(config) => Args {
            mode,
            config,
            explicit: true,
        },
        None => Args {
            mode,
            config: PathBuf::from(config::DEFAULT_CONFIG_FILE),
            explicit: false,
        },
    }
}

/// One argument, owned, so the parser can be asked for what follows it.
struct Arg {
    flag: Flag,
    /// As typed: `-h`, `--help`, `check`.
    spelled: String,
}

enum Flag {
    Help,
    Version,
    Config,
    Unknown,
    Value(std::ffi::OsString),
}

/// An argument as it was typed, with the value glued to it, for the usage
/// error.
fn glued(spelled: String, attached: Option<std::ffi::OsString>) -> String {
    match attached {
        None => spelled,
        Some(v) if spelled.starts_with("--") => format!("{spelled}={}", v.to_string_lossy()),
        Some(v) => format!("{spelled}{}", v.to_string_lossy()),
    }
}

/// The next argument; after `--` every argument is a value.
fn next_arg(parser: &mut lexopt::Parser) -> Option<Arg> {
    use lexopt::Arg::{Long, Short, Value};
    // `next` fails only on a glued value nobody took, and the caller takes
    // every one.
    let arg = parser.next().ok()??;
    let spelled = match &arg {
        Short(c) => format!("-{c}"),
        Long(name) => format!("--{name}"),
        Value(v) => v.to_string_lossy().into_owned(),
    };
    let flag = match arg {
        Short('h') | Long("help") => Flag::Help,
        Short('V') | Long("version") => Flag::Version,
        Short('c') | Long("config") => Flag::Config,
        Value(v) => Flag::Value(v),
        _ => Flag::Unknown,
    };
    Some(Arg { flag, spelled })
}

/// `flo-runner health`: only the state directory matters; the runner being
/// checked may have its URL and code in an environment this process does
/// not share.
fn health(path: &Path) -> ExitCode {
    let state_dir = config::state_directory(path, &|name| std::env::var(name).ok());
    match flo_runner::health(&state_dir) {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            println!("unhealthy: {why}");
            ExitCode::from(1)
        }
    }
}

/// The configuration, with its warnings logged; `None` after logging why
/// it cannot be used.
fn load_config(args: &Args) -> Option<Config> {
    let loaded = config::load(&args.config, args.explicit, &|name| {
        std::env::var(name).ok()
    });
    let (config, warnings) = match loaded {
        Ok(c) => c,
        Err(e) => {
            log::error!("{e}");
            return None;
        }
    };
    // Before anything can log them: the code, and passwords in URLs.
    flo_runner::logging::add_secret(&config.runner.registration_code);
    flo_runner::logging::add_url_secrets(&config.runner.url);
    for w in warnings {
        log::warn!("{w}");
    }
    Some(config)
}

/// `flo-runner check`: the checklist on stdout.
fn check(config: &Config) -> ExitCode {
    if flo_runner::check(config, &mut std::io::stdout()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `flo-runner [--config PATH]`: run until a signal.
fn run(config: Config, path: &Path) -> ExitCode {
    match &config.source {
        Some(p) => log::info!("flo-runner {VERSION} starting with {}", p.display()),
        None => log::info!(
            "flo-runner {VERSION} starting from environment variables (no {})",
            path.display()
        ),
    }
    // `None`: a signal came before it was up.
    match Runner::start(config).and_then(|r| r.map_or(Ok(()), Runner::run)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(1)
        }
    }
}
