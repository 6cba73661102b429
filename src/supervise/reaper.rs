//! The runner as child subreaper, and the reaper that goes with it.
//!
//! With `PR_SET_CHILD_SUBREAPER`, a process an execution started that loses
//! its parent (a `setsid` daemon, a double fork) is reparented to the runner
//! instead of to init, so it stays in the runner's process tree where it can
//! be found and stopped. The price: the runner must reap those orphans when
//! they die, or zombies fill the process table.
//!
//! The reaper must never take the exit status of a child someone waits for
//! (an executor's owner uses `waitpid(pid)` through `std::process::Child`).
//! So it looks with `waitid(P_ALL, WNOWAIT)`, which leaves the zombie in
//! place, and reaps a pid only when no owner registered it. Spawning holds
//! the registry lock until the new pid is registered, so a child that exits
//! at once is never mistaken for an orphan.

use std::collections::HashSet;
use std::io;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

#[derive(Default)]
struct Registry {
    /// Children whose owner will reap them.
    owned: HashSet<u32>,
    /// Bumped on every spawn: wakes a reaper that had no child at all.
    spawns: u64,
}

struct Shared {
    registry: Mutex<Registry>,
    changed: Condvar,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| Shared {
        registry: Mutex::new(Registry::default()),
        changed: Condvar::new(),
    })
}

/// Whether this process is a subreaper with a reaper thread running.
static ACTIVE: AtomicBool = AtomicBool::new(false);

pub fn active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// Why the runner is no child subreaper.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("prctl(PR_SET_CHILD_SUBREAPER): {0}")]
    Subreaper(#[source] rustix::io::Errno),
    #[error("cannot start the reaper thread: {0}")]
    Thread(#[source] io::Error),
}

/// Makes the runner a child subreaper and starts the reaper thread. Call once,
/// before the first spawn.
pub fn start() -> Result<(), StartError> {
    if active() {
        return Ok(());
    }
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .map_err(StartError::Subreaper)?;
    std::thread::Builder::new()
        .name("reaper".into())
        .spawn(reap_orphans)
        .map_err(StartError::Thread)?;
    ACTIVE.store(true, Ordering::Relaxed);
    Ok(())
}

/// Spawns `cmd` and registers the child as owned: the reaper leaves it to
/// the caller, who must call [`release`] once it has reaped it.
pub fn spawn(cmd: &mut Command) -> io::Result<Child> {
    let s = shared();
    let mut registry = crate::sync::lock(&s.registry);
    let child = cmd.spawn()?;
    registry.owned.insert(child.id());
    registry.spawns += 1;
    s.changed.notify_all();
    Ok(child)
}

/// The owner has reaped `pid`.
pub fn release(pid: u32) {
    let s = shared();
    crate::sync::lock(&s.registry).owned.remove(&pid);
    s.changed.notify_all();
}

/// Whether `pid` is a child with an owner (an executor, a discovery run).
pub fn is_owned(pid: u32) -> bool {
    crate::sync::lock(&shared().registry).owned.contains(&pid)
}

/// Looks at the next dead child without reaping it: `Ok(None)` when there
/// is no child at all.
fn next_dead_child() -> io::Result<Option<u32>> {
    // SAFETY: an all-zero siginfo_t is a valid value for the kernel to fill.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `info` is a valid, writable siginfo_t; P_ALL ignores the id.
        let rc = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc == 0 {
            // SAFETY: waitid succeeded with WEXITED, so si_pid is set.
            let pid = unsafe { info.si_pid() };
            return Ok(u32::try_from(pid).ok());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ECHILD) => return Ok(None),
            _ => return Err(e),
        }
    }
}

fn reap_orphans() {
    let s = shared();
    loop {
        match next_dead_child() {
            Ok(Some(pid)) => {
                let mut registry = crate::sync::lock(&s.registry);
                if registry.owned.contains(&pid) {
                    // Its owner reaps it (soon: it only kills the leftovers
                    // first). Until then waitid keeps showing this one.
                    while registry.owned.contains(&pid) {
                        registry =
                            crate::sync::wait_timeout(&s.changed, registry, Duration::from_secs(1));
                    }
                    continue;
                }
                drop(registry);
                reap(pid);
            }
            Ok(None) => {
                // No child at all, so no descendant either: nothing can be
                // reparented to us before the next spawn.
                let mut registry = crate::sync::lock(&s.registry);
                let seen = registry.spawns;
                while registry.spawns == seen {
                    registry = crate::sync::wait(&s.changed, registry);
                }
            }
            Err(e) => {
                log::error!("reaper: waitid failed: {e}; orphans are reaped once a second");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// Reaps one orphan. The registry is not held: an orphan's pid cannot be
/// reused before it is reaped, and no owner waits for it.
fn reap(pid: u32) {
    use rustix::process::{waitid, WaitId, WaitIdOptions};
    let Some(raw) = super::procfs::pid_of(pid) else {
        return;
    };
    match waitid(
        WaitId::Pid(raw),
        WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
    ) {
        Ok(_) => log::debug!("reaped orphan {pid}"),
        // Reaped meanwhile by an owner that released it just now.
        Err(rustix::io::Errno::CHILD) => {}
        Err(e) => log::debug!("reaping orphan {pid}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owned_child_is_registered_until_released() {
        let mut child = spawn(&mut Command::new("true")).expect("spawn true");
        let pid = child.id();
        assert!(is_owned(pid));
        assert!(child.wait().expect("wait").success());
        release(pid);
        assert!(!is_owned(pid));
    }
}
