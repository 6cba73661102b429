//! Processes and executors: a shell-script executor, a process's memory
//! and CPU time (from `/proc`), whether it is alive, a file's mode.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

/// The permission bits of `path`.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// A shell-script executor in `dir`: discovery (`--version`, `--manifest`)
/// answers as the contract wants, then `body` runs in the execution
/// directory. Returns the `executable_name` for it.
pub fn script_executor(dir: &Path, body: &str) -> String {
    let path = dir.join("script-executor.sh");
    fs::write(
        &path,
        format!(
            "case \"$1\" in\n--version) echo script 1.0; exit 0;;\n--manifest) echo '{{}}' > \"$2\"; exit 0;;\nesac\n{body}\n"
        ),
    )
    .expect("write the script");
    format!("sh {}", path.display())
}

/// The process's peak resident memory (VmHWM), in KiB.
pub fn peak_rss_kib(pid: i32) -> u64 {
    status_kib(pid, "VmHWM").expect("VmHWM in /proc/<pid>/status")
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`); `None` once the
/// process is gone.
pub fn status_kib(pid: i32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// utime + stime of a process in seconds: all its threads, exited ones too,
/// at clock-tick resolution (10 ms here).
pub fn cpu_secs(pid: i32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command (field 2) may hold spaces and parentheses; what follows
    // its last ')' is field 3 (state) onwards, so utime (14) is the 12th.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

/// Time on the CPU of a process's live threads, in nanoseconds (the sum of
/// `/proc/<pid>/task/*/schedstat`): precise, but threads that exited are
/// not counted, so it suits processes whose threads live on (an idle runner).
pub fn sched_ns(pid: i32) -> Option<u64> {
    let mut total = 0;
    for entry in fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = entry.ok()?.path().join("schedstat");
        let text = fs::read_to_string(path).unwrap_or_default();
        total += text
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(total)
}

/// Clock ticks per second (`getconf CLK_TCK`), the unit of `/proc/<pid>/stat`.
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Alive and not a zombie (a zombie is dead; its parent may be an init that
/// never reaps).
pub fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().map(|r| r.trim_start().to_string()))
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}
