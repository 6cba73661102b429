//! Supervision: the life of every process the runner starts, from spawn to
//! reap, and of everything those processes start in turn.
//!
//! A [`ProcessGroup`] owns one child (an execution's executor, or a
//! discovery run) and all its descendants, escaped or not:
//!
//! - **spawn**: the child leads a new process group; where a writable cgroup
//!   v2 subtree exists it enters its own cgroup between fork and exec; it
//!   carries [`MARKER_ENV`]`=<execution id>`, which its descendants inherit.
//! - **signal**: the stop policy's steps (SIGTERM, then SIGKILL after
//!   `execution.kill_grace_secs`; the timers are the watcher's, `cancel.rs`)
//!   reach the group, the cgroup, and every descendant that left the group.
//! - **wait, reap**: the leader is waited for without being reaped, so its
//!   process group id stays ours while leftovers are killed; then reaped.
//! - **leftovers**: when the leader has exited, everything else of it is
//!   killed, named in the result's logs and counted in
//!   `flo_runner_leftover_processes_killed_total`.
//! - **identity**: pid, start time, boot id and cgroup go to the journal, so
//!   crash recovery ([`stop_remains`]) stops exactly this execution's
//!   processes and never a process that merely reused a pid.
//!
//! How descendants are found. The runner is a child subreaper (`reaper.rs`):
//! a process whose parent dies is reparented to the runner, not to init, so
//! everything an execution started stays in the runner's process tree. When
//! an execution ends (or is stopped), its processes are: the leader's
//! subtree; its process group; its cgroup; and every orphan subtree (a child
//! of the runner that no owner waits for) whose root carries this
//! execution's marker. An orphan without a marker (it cleared its
//! environment) belongs to one of the executions that were running when it
//! started: it is stopped once no execution that started before it is still
//! running, and at shutdown in any case. With a cgroup, nothing can leave
//! without privileges, and `cgroup.kill` stops it all at once.

mod cgroup;
mod pipes;
pub mod procfs;
mod reaper;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustix::process::Signal;

pub use cgroup::Limits;
pub use pipes::{Readers, DRAIN_TIMEOUT};
pub use procfs::{boot_id, pid_of, process_start, MARKER_ENV};

use crate::journal::Record;
use procfs::Stat;

/// How long killed leftovers get to disappear before the runner goes on.
const LEFTOVER_WAIT: Duration = Duration::from_secs(2);
/// How long processes found at the leader's exit get to end on their own
/// (a member hit by the same SIGTERM as the leader, a background job just
/// finishing) before they count as leftovers and are killed.
const SETTLE: Duration = Duration::from_millis(100);
/// Leftovers named in the result's log line; the rest are counted.
const NAMED_LEFTOVERS: usize = 20;

/// What the runner found at start-up.
struct Supervisor {
    cgroups: Option<cgroup::Cgroups>,
    /// Children with an owner, by leader pid: whose marker, started when.
    live: Mutex<HashMap<u32, Live>>,
}

#[derive(Clone)]
struct Live {
    marker: Option<String>,
    start: u64,
}

static SUPERVISOR: OnceLock<Supervisor> = OnceLock::new();

fn supervisor() -> &'static Supervisor {
    // Without `init` (the check command, unit tests): no cgroups, no reaper;
    // process groups and markers still work.
    SUPERVISOR.get_or_init(|| Supervisor {
        cgroups: None,
        live: Mutex::new(HashMap::new()),
    })
}

/// Sets supervision up for the runner: child subreaper and reaper thread,
/// cgroup detection (with `limits`). Call once at start, before the first
/// spawn. Says in one line at info level what it found.
pub fn init(limits: Limits, mode: crate::config::CgroupMode) {
    use crate::config::CgroupMode;
    let reaper = reaper::start();
    let wanted = limits != Limits::default();
    let detected = match mode {
        CgroupMode::On => cgroup::detect(limits),
        CgroupMode::Auto if wanted => cgroup::detect(limits),
        CgroupMode::Auto | CgroupMode::Off => cgroup::Detected {
            cgroups: None,
            notes: vec![format!(
                "per-execution cgroups are {} (execution.cgroups {}; they cost each execution a kernel RCU grace period when the executor moves in)",
                if mode == CgroupMode::Off { "off" } else { "used only with a limit" },
                if mode == CgroupMode::Off { "\"off\"" } else { "\"auto\" and no memory_max_bytes or pids_max" },
            )],
        },
    };
    let supervisor = Supervisor {
        cgroups: detected.cgroups,
        live: Mutex::new(HashMap::new()),
    };
    log_setup(&supervisor, &detected.notes, wanted);
    if let Err(e) = reaper {
        log::warn!(
            "process supervision: {e}; processes that leave an execution's process group and lose their parent cannot be found"
        );
    }
    if SUPERVISOR.set(supervisor).is_err() {
        log::warn!("process supervision was set up twice; the first setup stays");
    }
}

/// The start-up lines: what supervision has (cgroups and their limits, or
/// why none), and the notes of detection as warnings.
fn log_setup(supervisor: &Supervisor, notes: &[String], wanted: bool) {
    match &supervisor.cgroups {
        Some(c) => {
            let l = c.limits();
            let mut what = vec!["cgroup.kill".to_string()];
            if let Some(m) = l.memory_max {
                what.push(format!("memory.max {m}"));
            }
            if let Some(p) = l.pids_max {
                what.push(format!("pids.max {p}"));
            }
            log::info!(
                "process supervision: one cgroup per execution under {} ({})",
                c.base().display(),
                what.join(", ")
            );
        }
        None => log::info!(
            "process supervision: no per-execution cgroups ({}); an execution's processes are found by process group, as orphans of this child subreaper, and by {MARKER_ENV}",
            notes.first().map_or("none found", String::as_str)
        ),
    }
    for note in notes.iter().skip(usize::from(supervisor.cgroups.is_none())) {
        log::warn!("process supervision: {note}");
    }
    if wanted && supervisor.cgroups.is_none() {
        log::warn!("execution.memory_max_bytes / execution.pids_max are set but need a writable cgroup v2 subtree: not applied");
    }
}

/// A spawned child's identity, for the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spawned {
    pub pid: u32,
    /// Start time in clock ticks since boot (field 22 of /proc/PID/stat).
    pub start: Option<u64>,
    /// The execution's cgroup directory, when it has one.
    pub cgroup: Option<PathBuf>,
}

/// One stopped leftover process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    pub pid: u32,
    pub name: String,
}

/// Why a finished child has no exit status.
#[derive(Debug, thiserror::Error)]
pub enum ReapError {
    #[error("{label}: pid {pid} was already reaped")]
    AlreadyReaped { label: String, pid: u32 },
    #[error("waiting for pid {pid} failed: {source}")]
    Wait {
        pid: u32,
        #[source]
        source: io::Error,
    },
}

/// What a finished child leaves: its exit status and what was killed.
pub struct Finished {
    pub status: Result<ExitStatus, ReapError>,
    pub leftovers: Vec<Leftover>,
}

/// A started child and its output pipes.
pub struct Started {
    pub group: Arc<ProcessGroup>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// The life of one child and all its descendants; see the module comment.
pub struct ProcessGroup {
    /// For logs: `execution <id>` or `executor discovery`.
    label: String,
    marker: Option<String>,
    leader: u32,
    start: u64,
    cgroup: Option<cgroup::ExecCgroup>,
    /// Readable once the leader exits (kernels before 5.3 have none).
    pidfd: Option<OwnedFd>,
    /// `None` once reaped: from then on the group id may be another's.
    child: Mutex<Option<Child>>,
}

impl ProcessGroup {
    /// Starts `cmd` supervised: stdin from /dev/null, stdout and stderr
    /// piped, a process group of its own, the marker `marker` (an execution
    /// id; `None` for discovery runs) and, for executions, its own cgroup
    /// where available. `cmd` comes configured by the caller (program,
    /// arguments, directory, sandbox); this adds only supervision.
    pub fn spawn(mut cmd: Command, label: String, marker: Option<&str>) -> io::Result<Started> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // After the caller's environment changes, so that no filtering of
        // the runner's variables can drop it.
        match marker {
            Some(m) => cmd.env(MARKER_ENV, m),
            None => cmd.env_remove(MARKER_ENV),
        };
        let cgroup = marker.and_then(|m| enter_cgroup(&mut cmd, &label, m));
        let mut child = match reaper::spawn(&mut cmd) {
            Ok(c) => c,
            Err(e) => {
                if let Some(cg) = &cgroup {
                    cg.remove();
                }
                return Err(e);
            }
        };
        let leader = child.id();
        // Registered and not reaped: the pid is this child's.
        let start = process_start(leader).unwrap_or(0);
        let pidfd = pid_of(leader).and_then(|p| {
            rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok()
        });
        let stdout = child.stdout.take().map(OwnedFd::from);
        let stderr = child.stderr.take().map(OwnedFd::from);
        crate::sync::lock(&supervisor().live).insert(
            leader,
            Live {
                marker: marker.map(str::to_string),
                start,
            },
        );
        Ok(Started {
            group: Arc::new(Self {
                label,
                marker: marker.map(str::to_string),
                leader,
                start,
                cgroup,
                pidfd,
                child: Mutex::new(Some(child)),
            }),
            stdout,
            stderr,
        })
    }

    /// The identity recovery needs after a crash.
    pub fn spawned(&self) -> Spawned {
        Spawned {
            pid: self.leader,
            start: (self.start > 0).then_some(self.start),
            cgroup: self.cgroup.as_ref().map(|c| c.path().to_path_buf()),
        }
    }

    /// Waits until the leader has exited, without reaping it; `false` when
    /// `limit` passed first.
    pub fn wait_exit(&self, limit: Option<Duration>) -> bool {
        let deadline = limit.map(|l| Instant::now() + l);
        if let Some(fd) = &self.pidfd {
            use rustix::event::{poll, PollFd, PollFlags, Timespec};
            loop {
                // A deadline too far to express waits without one.
                let timeout = deadline.and_then(|d| {
                    Timespec::try_from(d.saturating_duration_since(Instant::now())).ok()
                });
                let mut fds = [PollFd::new(fd, PollFlags::IN)];
                match poll(&mut fds, timeout.as_ref()) {
                    Ok(0) => return false,
                    Ok(_) => return true,
                    Err(rustix::io::Errno::INTR) => continue,
                    // Fall back to waitid below.
                    Err(_) => break,
                }
            }
        }
        use rustix::process::{waitid, WaitId, WaitIdOptions};
        let Some(pid) = pid_of(self.leader) else {
            return true;
        };
        loop {
            let mut options = WaitIdOptions::EXITED | WaitIdOptions::NOWAIT;
            if deadline.is_some() {
                options |= WaitIdOptions::NOHANG;
            }
            match waitid(WaitId::Pid(pid), options) {
                Ok(Some(_)) => return true,
                Err(rustix::io::Errno::INTR) => continue,
                Ok(None) => {}
                // ECHILD: already reaped (cannot happen while we own it).
                Err(_) => return true,
            }
            match deadline {
                Some(d) if Instant::now() >= d => return false,
                Some(_) => std::thread::sleep(Duration::from_millis(20)),
                None => return true,
            }
        }
    }

    /// One step of the stop policy: `signal` to the leader's process group
    /// and to every other process of this child (SIGKILL also through
    /// `cgroup.kill`). Nothing happens once the leader was reaped.
    pub fn signal(&self, signal: Signal) {
        let child = crate::sync::lock(&self.child);
        if child.is_none() {
            return;
        }
        procfs::signal_group(self.leader, signal);
        if signal == Signal::KILL {
            if let Some(cg) = &self.cgroup {
                if let Err(e) = cg.kill() {
                    log::warn!("{}: {e}", self.label);
                }
            }
        }
        for p in self.members(&procfs::snapshot()) {
            procfs::signal_verified(p.pid, p.start, signal);
        }
    }

    /// The processes of this child other than the leader, alive, from one
    /// snapshot of /proc (see the module comment for the rules).
    fn members<'a>(&self, snap: &'a [Stat]) -> Vec<&'a Stat> {
        let others: Vec<Live> = crate::sync::lock(&supervisor().live)
            .iter()
            .filter(|(pid, _)| **pid != self.leader)
            .map(|(_, l)| l.clone())
            .collect();
        let runner = std::process::id();
        let mut children: HashMap<u32, Vec<&Stat>> = HashMap::new();
        for p in snap {
            children.entry(p.ppid).or_default().push(p);
        }
        let mut roots: Vec<u32> = vec![self.leader];
        for c in children.get(&runner).into_iter().flatten() {
            if c.pid != self.leader && !reaper::is_owned(c.pid) && self.owns_orphan(c, &others) {
                roots.push(c.pid);
            }
        }
        let by_pid: HashMap<u32, &Stat> = snap.iter().map(|p| (p.pid, p)).collect();
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let mut stack = roots;
        // The process group, wherever its members are in the tree.
        stack.extend(snap.iter().filter(|p| p.pgid == self.leader).map(|p| p.pid));
        while let Some(pid) = stack.pop() {
            if !seen.insert(pid) {
                continue;
            }
            if let Some(p) = by_pid.get(&pid) {
                if p.pid != self.leader && p.pid != runner && p.alive() {
                    out.push(*p);
                }
            }
            for c in children.get(&pid).into_iter().flatten() {
                stack.push(c.pid);
            }
        }
        out
    }

    /// Whether an orphan subtree rooted at `root` (a child of the runner
    /// that no owner waits for) is this child's.
    fn owns_orphan(&self, root: &Stat, others: &[Live]) -> bool {
        match procfs::marker(root.pid) {
            Some(m) if Some(&m) == self.marker.as_ref() => true,
            Some(m) if others.iter().any(|o| o.marker.as_ref() == Some(&m)) => false,
            // Unmarked, or marked by nothing running: one of the executions
            // running when it started made it. Ours once none of those that
            // started before it is still running.
            _ => !others.iter().any(|o| o.start <= root.start),
        }
    }

    /// After the leader exited: kills everything else of it (repeating
    /// until a look at /proc finds nothing, so processes forked meanwhile are
    /// caught too), reaps the leader, removes the cgroup.
    pub fn finish(&self) -> Finished {
        if self.nothing_left() {
            return Finished {
                status: self.reap(),
                leftovers: Vec::new(),
            };
        }
        let stopped = self.kill_leftovers();
        let status = self.reap();
        let leftovers: Vec<Leftover> = stopped
            .into_iter()
            .map(|(pid, name)| Leftover { pid, name })
            .collect();
        if !leftovers.is_empty() {
            crate::metrics::global()
                .leftover_processes_killed
                .fetch_add(leftovers.len() as u64, Ordering::Relaxed);
            log::info!(
                "{}: stopped {} leftover process(es): {}",
                self.label,
                leftovers.len(),
                describe(&leftovers)
            );
        }
        Finished { status, leftovers }
    }

    /// SIGKILL to what is left of this child until nothing is (after the
    /// settle time, within [`LEFTOVER_WAIT`]); returns what was killed, by
    /// pid, with its name.
    fn kill_leftovers(&self) -> BTreeMap<u32, String> {
        let mut stopped: BTreeMap<u32, String> = BTreeMap::new();
        let settle = Instant::now() + SETTLE;
        let deadline = Instant::now() + LEFTOVER_WAIT;
        loop {
            let found = self.left();
            if found.is_empty() {
                break;
            }
            if stopped.is_empty() && Instant::now() < settle {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            if Instant::now() >= deadline {
                log::warn!(
                    "{}: {} leftover process(es) still there {} s after SIGKILL (uninterruptible?): {}",
                    self.label,
                    found.len(),
                    LEFTOVER_WAIT.as_secs(),
                    describe(&found.iter().map(leftover).collect::<Vec<_>>())
                );
                break;
            }
            for p in &found {
                stopped.entry(p.pid).or_insert_with(|| p.comm.clone());
                procfs::signal_verified(p.pid, p.start, Signal::KILL);
            }
            // The leader is a zombie, not reaped: the group id is still ours.
            procfs::signal_group(self.leader, Signal::KILL);
            if let Some(cg) = &self.cgroup {
                let _ = cg.kill();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        stopped
    }

    /// The common case, cheaply: as subreaper the runner is the parent of
    /// everything an exited executor left (its children were reparented when
    /// it died), so if the runner's only children are this leader and other
    /// executions' leaders, and its cgroup holds nothing else, nothing is
    /// left. Anything else takes the full look at /proc in [`Self::left`].
    fn nothing_left(&self) -> bool {
        if !reaper::active() {
            return false;
        }
        let Some(children) = procfs::own_children() else {
            return false;
        };
        let live = crate::sync::lock(&supervisor().live);
        let only_leaders = children
            .iter()
            .all(|pid| *pid == self.leader || live.contains_key(pid));
        drop(live);
        only_leaders
            && self
                .cgroup
                .as_ref()
                .is_none_or(|cg| cg.members().iter().all(|pid| *pid == self.leader))
    }

    /// What is alive of this child besides the leader: its members in the
    /// tree and in its cgroup.
    fn left(&self) -> Vec<Stat> {
        let snap = procfs::snapshot();
        let mut found: Vec<Stat> = self.members(&snap).into_iter().cloned().collect();
        if let Some(cg) = &self.cgroup {
            let known: HashSet<u32> = found.iter().map(|p| p.pid).collect();
            found.extend(
                cg.members()
                    .into_iter()
                    .filter(|pid| *pid != self.leader && !known.contains(pid))
                    .filter_map(procfs::stat)
                    .filter(Stat::alive),
            );
        }
        found
    }

    /// Reaps the leader (once), forgets it, removes its cgroup.
    fn reap(&self) -> Result<ExitStatus, ReapError> {
        let mut guard = crate::sync::lock(&self.child);
        let Some(mut child) = guard.take() else {
            return Err(ReapError::AlreadyReaped {
                label: self.label.clone(),
                pid: self.leader,
            });
        };
        let status = child.wait().map_err(|source| ReapError::Wait {
            pid: self.leader,
            source,
        });
        drop(guard);
        reaper::release(self.leader);
        crate::sync::lock(&supervisor().live).remove(&self.leader);
        if let Some(cg) = &self.cgroup {
            cg.remove();
        }
        status
    }
}

/// A new cgroup for the execution `marker`, which `cmd`'s child enters
/// between fork and exec; `None` (logged) without cgroups or when none can
/// be made.
fn enter_cgroup(cmd: &mut Command, label: &str, marker: &str) -> Option<cgroup::ExecCgroup> {
    let cg = match supervisor().cgroups.as_ref()?.create(marker) {
        Ok(cg) => cg,
        Err(e) => {
            log::warn!("{label}: runs without a cgroup of its own: {e}");
            return None;
        }
    };
    let procs = cg.procs_fd();
    // SAFETY: runs in the child between fork and exec; it only calls
    // write(2) on an fd opened before the fork (async-signal-safe, no
    // allocation, no lock).
    unsafe {
        cmd.pre_exec(move || {
            rustix::io::write(&*procs, b"0")
                .map(|_| ())
                .map_err(io::Error::from)
        });
    }
    Some(cg)
}

impl Drop for ProcessGroup {
    /// A group dropped before `finish` (a panic on its owner's thread) must
    /// not leave its processes running or its leader unreaped.
    fn drop(&mut self) {
        if crate::sync::lock(&self.child).is_some() {
            self.signal(Signal::KILL);
            let _ = self.finish();
        }
    }
}

fn leftover(p: &Stat) -> Leftover {
    Leftover {
        pid: p.pid,
        name: p.comm.clone(),
    }
}

/// `pid 123 (sleep), pid 456 (server)`, the first few of them.
fn describe(leftovers: &[Leftover]) -> String {
    let mut text = leftovers
        .iter()
        .take(NAMED_LEFTOVERS)
        .map(|l| format!("pid {} ({})", l.pid, l.name))
        .collect::<Vec<_>>()
        .join(", ");
    if leftovers.len() > NAMED_LEFTOVERS {
        text.push_str(&format!(" and {} more", leftovers.len() - NAMED_LEFTOVERS));
    }
    text
}

/// The line the result's logs get when leftovers were stopped.
pub fn leftover_line(leftovers: &[Leftover]) -> Option<String> {
    (!leftovers.is_empty()).then(|| {
        format!(
            "[flo-runner] stopped {} leftover process(es) of this execution: {}",
            leftovers.len(),
            describe(leftovers)
        )
    })
}

/// At shutdown, after every execution ended: kills whatever is still in the
/// runner's process tree (orphans that could not be attributed yet), which
/// would otherwise outlive the runner. Returns how many.
pub fn stop_orphans() -> usize {
    let runner = std::process::id();
    let snap = procfs::snapshot();
    let mut children: HashMap<u32, Vec<&Stat>> = HashMap::new();
    for p in &snap {
        children.entry(p.ppid).or_default().push(p);
    }
    let mut stack: Vec<&Stat> = children.get(&runner).cloned().unwrap_or_default();
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    while let Some(p) = stack.pop() {
        if !seen.insert(p.pid) {
            continue;
        }
        if p.alive() && procfs::signal_verified(p.pid, p.start, Signal::KILL) {
            found.push(leftover(p));
        }
        stack.extend(children.get(&p.pid).into_iter().flatten());
    }
    if !found.is_empty() {
        crate::metrics::global()
            .leftover_processes_killed
            .fetch_add(found.len() as u64, Ordering::Relaxed);
        log::warn!(
            "stopped {} leftover process(es) at shutdown: {}",
            found.len(),
            describe(&found)
        );
    }
    found.len()
}

/// Crash recovery: stops what is left of a previous run's execution, by the
/// identity in its journal `record`: its cgroup (`cgroup.kill`), its process
/// group (the leader alive with the same start time, or gone while members
/// started after it live on: the kernel does not reuse a pid that is still
/// a group id), and every process started after its executor that carries
/// its marker, with their descendants. SIGTERM, then SIGKILL after `grace`.
/// Nothing across a reboot. Returns what was stopped.
pub fn stop_remains(record: &Record, grace: Duration) -> Vec<Leftover> {
    if record.boot_id.is_some() && record.boot_id != boot_id() {
        return Vec::new();
    }
    let mut stopped = stop_cgroup(record);
    let find = || remains(record, &procfs::snapshot());
    let first = find();
    if !first.is_empty() {
        log::warn!(
            "execution {}: {} process(es) outlived the previous runner; stopping them: {}",
            record.execution_id,
            first.len(),
            describe(&first.iter().map(leftover).collect::<Vec<_>>())
        );
        for p in &first {
            stopped.entry(p.pid).or_insert_with(|| p.comm.clone());
            procfs::signal_verified(p.pid, p.start, Signal::TERM);
        }
        let deadline = Instant::now() + grace;
        let mut left = find();
        while !left.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            left = find();
        }
        // What is left (the leader may be gone, members not).
        for _ in 0..50 {
            if left.is_empty() {
                break;
            }
            for p in &left {
                stopped.entry(p.pid).or_insert_with(|| p.comm.clone());
                procfs::signal_verified(p.pid, p.start, Signal::KILL);
            }
            std::thread::sleep(Duration::from_millis(20));
            left = find();
        }
    }
    let stopped: Vec<Leftover> = stopped
        .into_iter()
        .map(|(pid, name)| Leftover { pid, name })
        .collect();
    crate::metrics::global()
        .leftover_processes_killed
        .fetch_add(stopped.len() as u64, Ordering::Relaxed);
    stopped
}

/// `cgroup.kill` on the recorded cgroup of a previous run's execution, if
/// it is one of ours; returns its members, by pid, with their names.
fn stop_cgroup(record: &Record) -> BTreeMap<u32, String> {
    let mut stopped = BTreeMap::new();
    let Some(path) = record
        .cgroup
        .as_deref()
        .filter(|p| cgroup::is_execution_cgroup(p))
    else {
        return stopped;
    };
    for pid in cgroup::members(path) {
        if let Some(s) = procfs::stat(pid) {
            stopped.insert(pid, s.comm);
        }
    }
    if let Err(e) = cgroup::kill(path) {
        log::warn!("execution {}: {e}", record.execution_id);
    }
    cgroup::remove(path);
    stopped
}

/// The live processes of a previous run's execution, by its recorded identity.
fn remains(record: &Record, snap: &[Stat]) -> Vec<Stat> {
    let (Some(pid), Some(start)) = (record.pid, record.pid_start) else {
        return Vec::new();
    };
    let me = std::process::id();
    let by_pid: HashMap<u32, &Stat> = snap.iter().map(|p| (p.pid, p)).collect();
    let group = match by_pid.get(&pid) {
        // The leader itself: the same process, so the group is the same.
        Some(leader) if leader.start == start => true,
        // The pid now belongs to another process, so the group number (the
        // leader's pid) may too: leave it alone.
        Some(_) => false,
        None => true,
    };
    let mut children: HashMap<u32, Vec<&Stat>> = HashMap::new();
    for p in snap {
        children.entry(p.ppid).or_default().push(p);
    }
    let mut stack: Vec<&Stat> = snap
        .iter()
        .filter(|p| p.start >= start && p.pid != me)
        .filter(|p| {
            (group && p.pgid == pid)
                || procfs::marker(p.pid).as_deref() == Some(record.execution_id.as_str())
        })
        .collect();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    while let Some(p) = stack.pop() {
        if !seen.insert(p.pid) {
            continue;
        }
        if p.alive() && p.pid != me && p.start >= start {
            out.push(p.clone());
        }
        stack.extend(children.get(&p.pid).into_iter().flatten());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        cmd
    }

    #[test]
    fn leftovers_in_the_group_and_escaped_with_the_marker_are_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        // One sleep stays in the group, one leaves it with setsid; both
        // carry the marker.
        let script = format!(
            "sleep 30 & echo $! >> {p}; setsid sleep 30 & echo $! >> {p}",
            p = pids.display()
        );
        let started = ProcessGroup::spawn(sh(&script), "test execution".into(), Some("unit-e1"))
            .expect("spawn");
        let group = started.group;
        assert!(group.wait_exit(Some(Duration::from_secs(10))));
        let text = std::fs::read_to_string(&pids).unwrap();
        let expected: Vec<u32> = text.lines().map(|l| l.parse().unwrap()).collect();
        assert_eq!(expected.len(), 2);
        // Not a subreaper here (no `init`): the escaped sleep may have been
        // reparented to init, so it is found by its marker only if it is in
        // our tree; the group member always is.
        let finished = group.finish();
        assert!(finished.status.expect("status").success());
        let killed: Vec<u32> = finished.leftovers.iter().map(|l| l.pid).collect();
        assert!(killed.contains(&expected[0]), "{killed:?} vs {expected:?}");
        for l in &finished.leftovers {
            assert_eq!(l.name, "sleep");
        }
        let line = leftover_line(&finished.leftovers).unwrap();
        assert!(line.starts_with("[flo-runner] stopped "), "{line}");
        assert!(!procfs::stat(expected[0]).is_some_and(|s| s.alive()));
        // The escaped one is ours to clean up in this test either way.
        if let Some(s) = procfs::stat(expected[1]) {
            procfs::signal_verified(s.pid, s.start, Signal::KILL);
        }
    }

    #[test]
    fn a_describe_names_the_first_and_counts_the_rest() {
        let many: Vec<Leftover> = (1..=25)
            .map(|pid| Leftover {
                pid,
                name: "x".into(),
            })
            .collect();
        let text = describe(&many);
        assert!(text.starts_with("pid 1 (x), pid 2 (x)"), "{text}");
        assert!(text.ends_with(" and 5 more"), "{text}");
        assert_eq!(leftover_line(&[]), None);
    }
}
