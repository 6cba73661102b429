//! Processes and executors: a shell-script executor, a process's peak
//! memory, whether it is alive, a file's mode.

use std::fs;
use std::path::Path;

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
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// Alive and not a zombie (a zombie is dead; its parent may be an init that
/// never reaps).
pub fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().map(|r| r.trim_start().to_string()))
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}
