//! What /proc says about processes, and signals that reach only the process
//! that was looked at: a pid alone is not an identity (it is reused), a pid
//! with its start time and the boot id is.

use std::fs;
use std::io::{self, Read};

use rustix::process::{Pid, Signal};

/// The variable every process an execution starts inherits (unless it clears
/// its environment): its value is the execution id. It is how a descendant
/// that left the executor's process group (`setsid`, a double fork) is told
/// apart from another execution's after it was reparented to the runner.
pub const MARKER_ENV: &str = "FLO_RUNNER_EXECUTION_ID";
/// Most of /proc/PID/environ read when looking for the marker: a process
/// that pushes it further than this counts as unmarked (see `members`).
const ENVIRON_CAP: u64 = 1 << 20;

/// The fields of /proc/PID/stat supervision needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub pid: u32,
    /// Field 2 without its parentheses (at most 15 bytes, set by the process).
    pub comm: String,
    /// Field 3: `Z` is a zombie (dead, not yet reaped), `X` dead.
    pub state: char,
    pub ppid: u32,
    pub pgid: u32,
    /// Field 22: start time in clock ticks since boot.
    pub start: u64,
}

impl Stat {
    /// Still running (a zombie has already died).
    pub fn alive(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses one /proc/PID/stat line.
fn parse_stat(pid: u32, text: &str) -> Option<Stat> {
    // The command name may contain spaces and parentheses: it runs from the
    // first '(' to the last ')'.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    // Fields after the name start at field 3 (state).
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    Some(Stat {
        pid,
        comm,
        state: rest.first()?.chars().next()?,
        ppid: rest.get(1)?.parse().ok()?,
        pgid: rest.get(2)?.parse().ok()?,
        start: rest.get(19)?.parse().ok()?,
    })
}

/// /proc/PID/stat of `pid`, if it exists.
pub fn stat(pid: u32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(pid, &text)
}

/// Start time of `pid` in clock ticks since boot.
pub fn process_start(pid: u32) -> Option<u64> {
    stat(pid).map(|s| s.start)
}

/// The kernel's boot id: a start time means nothing across a reboot.
pub fn boot_id() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
}

/// Every process visible in /proc, as one snapshot. No CONFIG_PROC_CHILDREN
/// is assumed (many kernels lack /proc/PID/task/TID/children), so this is
/// one read per process, done when an execution ends or is stopped, never
/// periodically.
pub fn snapshot() -> Vec<Stat> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(stat)
        .collect()
}

/// This process's children, from `/proc/self/task/*/children`: a look at
/// the runner's own few threads instead of every process on the host.
/// `None` when the kernel does not list children (CONFIG_PROC_CHILDREN).
pub fn own_children() -> Option<Vec<u32>> {
    // A thread that ends while the list is read hands its children to
    // another thread, perhaps one already read: read the whole list again.
    'again: for _ in 0..3 {
        let mut out = Vec::new();
        for task in fs::read_dir("/proc/self/task").ok()?.flatten() {
            match fs::read_to_string(task.path().join("children")) {
                Ok(text) => out.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                ),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue 'again,
                Err(_) => return None,
            }
        }
        return Some(out);
    }
    None
}

/// The value of [`MARKER_ENV`] in the environment `pid` was started with
/// (`None`: unmarked, unreadable, or gone).
pub fn marker(pid: u32) -> Option<String> {
    let file = fs::File::open(format!("/proc/{pid}/environ")).ok()?;
    let mut bytes = Vec::new();
    file.take(ENVIRON_CAP).read_to_end(&mut bytes).ok()?;
    find_marker(&bytes)
}

fn find_marker(environ: &[u8]) -> Option<String> {
    let prefix = format!("{MARKER_ENV}=");
    environ
        .split(|b| *b == 0)
        .find_map(|var| var.strip_prefix(prefix.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// The process (group) id for `pid`, when it is one (not 0, fits an i32).
pub fn pid_of(pid: u32) -> Option<Pid> {
    i32::try_from(pid).ok().and_then(Pid::from_raw)
}

/// Sends `signal` to `pid` only if it is still the process that started at
/// `start` and is alive. A pidfd is opened first and the identity checked
/// after, so the signal cannot reach a process that took over the pid in
/// between. Where pidfds are missing (Linux before 5.3) or refused (a
/// seccomp filter), the check and the kill are two steps. Returns whether it
/// was signalled.
pub fn signal_verified(pid: u32, start: u64, signal: Signal) -> bool {
    let Some(raw) = pid_of(pid) else {
        return false;
    };
    let same = || stat(pid).is_some_and(|s| s.start == start && s.alive());
    match rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => same() && rustix::process::pidfd_send_signal(&fd, signal).is_ok(),
        // Gone.
        Err(rustix::io::Errno::SRCH) => false,
        Err(_) => same() && rustix::process::kill_process(raw, signal).is_ok(),
    }
}

/// Signals process group `pgid`; a group that is already empty is fine.
pub fn signal_group(pgid: u32, signal: Signal) {
    let Some(pgid) = pid_of(pgid) else {
        return;
    };
    if let Err(e) = rustix::process::kill_process_group(pgid, signal) {
        if e != rustix::io::Errno::SRCH {
            log::warn!("signalling process group {}: {e}", pgid.as_raw_nonzero());
        }
    }
}

/// The cgroup v2 path of `pid` (the `0::` line of /proc/PID/cgroup).
pub fn cgroup_of(pid: &str) -> io::Result<Option<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_past_an_awkward_name() {
        let line = "42 (a) b (c)) S 7 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 12345 1 1";
        let s = parse_stat(42, line).expect("parses");
        assert_eq!(s.comm, "a) b (c)");
        assert_eq!((s.state, s.ppid, s.pgid, s.start), ('S', 7, 42, 12345));
    }

    #[test]
    fn own_stat_is_readable_and_stable() {
        let me = std::process::id();
        let s = stat(me).expect("own stat");
        assert!(s.alive());
        assert_eq!(process_start(me), Some(s.start));
        assert_eq!(
            s.pgid,
            rustix::process::getpgrp().as_raw_nonzero().get() as u32
        );
        assert!(snapshot().iter().any(|p| p.pid == me));
    }

    #[test]
    fn the_marker_is_found_among_the_variables() {
        let env = b"A=1\0FLO_RUNNER_EXECUTION_ID=e-1\0B=2\0";
        assert_eq!(find_marker(env).as_deref(), Some("e-1"));
        assert_eq!(find_marker(b"XFLO_RUNNER_EXECUTION_ID=e\0"), None);
        assert_eq!(find_marker(b""), None);
    }

    #[test]
    fn a_signal_needs_the_right_start_time() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pid = child.id();
        let start = process_start(pid).expect("start");
        assert!(!signal_verified(pid, start + 1, Signal::KILL));
        assert!(stat(pid).is_some_and(|s| s.alive()));
        assert!(signal_verified(pid, start, Signal::KILL));
        let status = child.wait().expect("wait");
        assert!(!status.success());
    }
}
