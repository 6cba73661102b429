//! One cgroup v2 per execution, where the runner has a writable cgroup v2
//! subtree (systemd `Delegate=yes`, a container with its own cgroup
//! namespace, or root). The executor is placed in it before it runs a single
//! instruction of its own (between fork and exec), so nothing it starts can
//! be outside it without privileges; `cgroup.kill` (Linux 5.14+) then stops
//! all of it at once, with no race against forks. Optional limits
//! (`execution.memory_max_bytes`, `execution.pids_max`) are written before
//! the executor enters.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The leaf the runner moves itself into when controllers must be enabled
/// for its executions: a cgroup with processes in it cannot hand controllers
/// to its children (the "no internal processes" rule).
pub const RUNNER_LEAF: &str = "flo-runner";
/// How long a killed cgroup may take to empty before it is left behind.
const EMPTY_WAIT: Duration = Duration::from_secs(2);

/// Optional limits for each execution's cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_max: Option<u64>,
    pub pids_max: Option<u64>,
}

impl Limits {
    fn controllers(&self) -> Vec<&'static str> {
        let mut c = Vec::new();
        if self.memory_max.is_some() {
            c.push("memory");
        }
        if self.pids_max.is_some() {
            c.push("pids");
        }
        c
    }
}

/// The runner's cgroup, where execution cgroups are made.
#[derive(Debug)]
pub struct Cgroups {
    base: PathBuf,
    limits: Limits,
    next: AtomicU64,
}

/// Why there are no per-execution cgroups, or no limits in them; or a file
/// of a cgroup that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read {path}: {source}")]
    Proc {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("no cgroup v2 filesystem is mounted")]
    NotMounted,
    #[error("this process is in no cgroup v2")]
    NotInOne,
    #[error("own cgroup {own} is outside the cgroup2 mount's root {root}")]
    OutsideMount { own: String, root: String },
    #[error("cgroup {} has no cgroup.kill (Linux 5.14+ needed)", .0.display())]
    NoKill(PathBuf),
    #[error("cannot create cgroups in {base} ({source}): not delegated to this user")]
    NotDelegated {
        base: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("controller(s) {} not available in {base} (cgroup.controllers: {available:?})", .missing.join(", "))]
    Unavailable {
        missing: Vec<&'static str>,
        base: PathBuf,
        available: String,
    },
    #[error("cannot create {path}: {source}")]
    CreateLeaf {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot move the runner into {leaf}: {source}")]
    MoveRunner {
        leaf: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot enable {} in {}/cgroup.subtree_control ({source}; other processes in that cgroup prevent it)", .enable.join(" "), .base.display())]
    Enable {
        enable: Vec<String>,
        base: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    File(#[from] CgroupFileError),
}

/// A cgroup file that could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct CgroupFileError {
    path: PathBuf,
    #[source]
    source: io::Error,
}

/// What detection found.
pub struct Detected {
    pub cgroups: Option<Cgroups>,
    /// Why there are no cgroups, or why the limits cannot be applied.
    pub notes: Vec<String>,
}

/// Looks for a writable cgroup v2 subtree at the runner's own cgroup.
pub fn detect(limits: Limits) -> Detected {
    let base = match own_cgroup_dir().and_then(probe) {
        Ok(base) => base,
        Err(why) => {
            return Detected {
                cgroups: None,
                notes: vec![why.to_string()],
            }
        }
    };
    remove_stale(&base);
    let mut notes = Vec::new();
    let limits = match enable_controllers(&base, &limits) {
        Ok(()) => limits,
        Err(why) => {
            notes.push(format!(
                "execution limits (execution.memory_max_bytes, execution.pids_max) cannot be applied: {why}"
            ));
            Limits::default()
        }
    };
    Detected {
        cgroups: Some(Cgroups {
            base,
            limits,
            next: AtomicU64::new(0),
        }),
        notes,
    }
}

/// A probe child shows at once whether we may create cgroups in `base` and
/// whether the kernel has cgroup.kill. Returns `base` when both hold.
fn probe(base: PathBuf) -> Result<PathBuf, CgroupError> {
    let probe = base.join(format!("flo-probe-{}", std::process::id()));
    let probed = fs::create_dir(&probe).and_then(|()| {
        let has_kill = probe.join("cgroup.kill").exists();
        fs::remove_dir(&probe)?;
        Ok(has_kill)
    });
    match probed {
        Ok(true) => Ok(base),
        Ok(false) => Err(CgroupError::NoKill(base)),
        Err(source) => Err(CgroupError::NotDelegated { base, source }),
    }
}

/// Removes the empty execution cgroups of runners that are gone (killed
/// without a restart in this directory); a populated one is left to the
/// recovery of its own runner, and rmdir refuses it anyway.
fn remove_stale(base: &Path) {
    let Ok(dir) = fs::read_dir(base) else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(owner) = name
            .to_str()
            .and_then(|n| n.strip_prefix("flo-exec-"))
            .and_then(|n| n.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if owner != std::process::id() && !Path::new(&format!("/proc/{owner}")).exists() {
            let path = entry.path();
            if !populated(&path) && fs::remove_dir(&path).is_ok() {
                log::debug!("removed the stale cgroup {}", path.display());
            }
        }
    }
}

/// The directory of this process's cgroup v2, from /proc/self/mountinfo
/// and /proc/self/cgroup.
fn own_cgroup_dir() -> Result<PathBuf, CgroupError> {
    let proc = |path: &'static str| move |source| CgroupError::Proc { path, source };
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").map_err(proc("/proc/self/mountinfo"))?;
    // "id parent major:minor root mountpoint options... - fstype source ..."
    let (root, mountpoint) = mountinfo
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            if right.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            let f: Vec<&str> = left.split_whitespace().collect();
            Some((f.get(3)?.to_string(), f.get(4)?.to_string()))
        })
        .ok_or(CgroupError::NotMounted)?;
    let own = super::procfs::cgroup_of("self")
        .map_err(proc("/proc/self/cgroup"))?
        .ok_or(CgroupError::NotInOne)?;
    let relative = match Path::new(&own).strip_prefix(&root) {
        Ok(relative) => relative,
        Err(_) => return Err(CgroupError::OutsideMount { own, root }),
    };
    Ok(Path::new(&mountpoint).join(relative))
}

/// Makes the limits' controllers available to children of `base`, moving the
/// runner into a leaf of its own first when `base` is not the root.
fn enable_controllers(base: &Path, limits: &Limits) -> Result<(), CgroupError> {
    let wanted = limits.controllers();
    if wanted.is_empty() {
        return Ok(());
    }
    let read = |name: &str| {
        let path = base.join(name);
        fs::read_to_string(&path).map_err(|source| CgroupFileError { path, source })
    };
    let available = read("cgroup.controllers")?;
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|c| !available.split_whitespace().any(|a| a == *c))
        .collect();
    if !missing.is_empty() {
        return Err(CgroupError::Unavailable {
            missing,
            base: base.to_path_buf(),
            available: available.trim().to_string(),
        });
    }
    let enabled = read("cgroup.subtree_control")?;
    let to_enable: Vec<String> = wanted
        .iter()
        .filter(|c| !enabled.split_whitespace().any(|e| e == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if to_enable.is_empty() {
        return Ok(());
    }
    // The root cgroup is exempt from the rule; any other must be empty.
    if base.join("cgroup.kill").exists() {
        move_into_leaf(base)?;
    }
    write_file(
        &base.join("cgroup.subtree_control"),
        to_enable.join(" ").as_bytes(),
    )
    .map_err(|source| CgroupError::Enable {
        enable: to_enable,
        base: base.to_path_buf(),
        source,
    })
}

/// Moves the runner into [`RUNNER_LEAF`] under `base`, so that `base` has no
/// processes of its own and may hand controllers to its children.
fn move_into_leaf(base: &Path) -> Result<(), CgroupError> {
    let leaf = base.join(RUNNER_LEAF);
    match fs::create_dir(&leaf) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => return Err(CgroupError::CreateLeaf { path: leaf, source }),
    }
    let pid = std::process::id().to_string();
    write_file(&leaf.join("cgroup.procs"), pid.as_bytes())
        .map_err(|source| CgroupError::MoveRunner { leaf, source })
}

fn write_file(path: &Path, value: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).open(path)?;
    f.write_all(value)
}

impl Cgroups {
    pub fn base(&self) -> &Path {
        &self.base
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// A new cgroup for one execution (`label` is its id), limits written.
    pub fn create(&self, label: &str) -> Result<ExecCgroup, CgroupFileError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let safe: String = label
            .chars()
            .take(64)
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = self
            .base
            .join(format!("flo-exec-{}-{n}-{safe}", std::process::id()));
        fs::create_dir(&path).map_err(at(&path))?;
        let cgroup = ExecCgroup::open(path)?;
        let limit = |file: &str, value: Option<u64>| -> Result<(), CgroupFileError> {
            match value {
                Some(v) => {
                    let p = cgroup.path.join(file);
                    write_file(&p, v.to_string().as_bytes()).map_err(at(&p))
                }
                None => Ok(()),
            }
        };
        let limited = limit("memory.max", self.limits.memory_max)
            .and(limit("pids.max", self.limits.pids_max));
        if let Err(e) = limited {
            cgroup.remove();
            return Err(e);
        }
        Ok(cgroup)
    }
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> CgroupFileError {
    let path = path.to_path_buf();
    move |source| CgroupFileError { path, source }
}

/// One execution's cgroup.
#[derive(Debug)]
pub struct ExecCgroup {
    path: PathBuf,
    /// `cgroup.procs`, open for the child to write itself in between fork
    /// and exec (opening a file there would not be async-signal-safe).
    procs: Arc<OwnedFd>,
}

impl ExecCgroup {
    fn open(path: PathBuf) -> Result<Self, CgroupFileError> {
        let procs_path = path.join("cgroup.procs");
        // std opens with O_CLOEXEC: the executor does not inherit it.
        let procs = OpenOptions::new()
            .write(true)
            .open(&procs_path)
            .map_err(at(&procs_path))?;
        Ok(Self {
            path,
            procs: Arc::new(OwnedFd::from(procs)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The fd a child writes "0" to, to enter this cgroup.
    pub fn procs_fd(&self) -> Arc<OwnedFd> {
        self.procs.clone()
    }

    /// The processes in it now.
    pub fn members(&self) -> Vec<u32> {
        members(&self.path)
    }

    /// SIGKILL to everything in it, atomically against forks.
    pub fn kill(&self) -> Result<(), CgroupFileError> {
        kill(&self.path)
    }

    /// Removes it once empty (waiting a little for killed processes to
    /// exit); one that stays busy is left and logged.
    pub fn remove(&self) {
        remove(&self.path);
    }
}

pub fn members(path: &Path) -> Vec<u32> {
    fs::read_to_string(path.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

pub fn kill(path: &Path) -> Result<(), CgroupFileError> {
    let p = path.join("cgroup.kill");
    write_file(&p, b"1").map_err(at(&p))
}

fn populated(path: &Path) -> bool {
    fs::read_to_string(path.join("cgroup.events"))
        .map(|t| t.lines().any(|l| l.trim() == "populated 1"))
        .unwrap_or(false)
}

pub fn remove(path: &Path) {
    let deadline = Instant::now() + EMPTY_WAIT;
    while populated(path) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    match fs::remove_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("cannot remove cgroup {}: {e}", path.display()),
    }
}

/// Whether `path` looks like an execution cgroup this runner makes (recovery
/// acts only on such a path from the journal, never on another cgroup).
pub fn is_execution_cgroup(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("flo-exec-"))
        && path.join("cgroup.kill").exists()
}
