//! The machine a run was made on, and the source it measured.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::SystemTime;

use serde::Serialize;

use crate::dirs::fs_type;

#[derive(Serialize)]
pub struct Machine {
    pub nproc: u64,
    pub cpu_model: String,
    pub mem_total_mib: u64,
    pub kernel: String,
    pub temp_dir: PathBuf,
    pub temp_dir_fs: String,
    pub date: String,
    pub rustc: String,
    pub git_commit: String,
    pub src_modified_since_commit: bool,
    pub loadavg: String,
}

impl Machine {
    pub fn describe() -> Machine {
        let root = env!("CARGO_MANIFEST_DIR");
        let dirty = !output("git", &["-C", root, "status", "--porcelain", "--", "src"]).is_empty();
        let temp_dir = std::env::temp_dir();
        Machine {
            nproc: output("nproc", &[]).parse().unwrap_or(0),
            cpu_model: cpu_model(),
            mem_total_mib: mem_total_kib() / 1024,
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            temp_dir_fs: fs_type(&temp_dir),
            temp_dir,
            date: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            rustc: output("rustc", &["--version"]),
            git_commit: output("git", &["-C", root, "rev-parse", "--short", "HEAD"]),
            src_modified_since_commit: dirty,
            loadavg: read_trimmed("/proc/loadavg"),
        }
    }
}

/// A file's contents, trimmed; empty when it cannot be read.
pub fn read_trimmed(path: &str) -> String {
    fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// A command's stdout, trimmed; empty when it cannot run.
fn output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn mem_total_kib() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
