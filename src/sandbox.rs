//! What an executor may see and do. A flow is arbitrary code; the runner's
//! promises (one honest result per execution, a state directory only it
//! writes) must hold whatever the flow does. This module owns the layers
//! applied to the executor's [`Command`] before it is spawned, in one call
//! ([`apply`]), from a [`Plan`] built once at start-up (so every problem
//! with the configuration or the kernel is reported once, then):
//!
//! - **Environment**: the runner's own, minus its secrets and settings
//!   (the registration code in any variable, `FLOMATION_*`, `FLO_RUNNER_*`,
//!   the Docker names, the TLS key path), or an allowlist; plus `set`.
//! - **Landlock** (Linux 5.13+, unprivileged): the executor may not read or
//!   write the state directory, the configuration file, the key (unless it is
//!   passed) or other executions' directories; everything else keeps the
//!   access it had. See [`Landlock`] for how an allow-list expresses that.
//! - **run_as**: another uid/gid for executors, when the runner may switch.
//! - **pass_key**: whether `--key` is passed (and the key readable).
//!
//! The runner also marks itself non-dumpable ([`make_non_dumpable`]), so a
//! flow of the same uid cannot read `/proc/<runner>/environ` or `mem`.
//!
//! # What runs after `fork`
//!
//! `pre_exec` runs in the child of a multi-threaded process, where only
//! async-signal-safe work is allowed (no allocation, no locks). So the whole
//! Landlock ruleset is built in the parent, before `spawn`: the paths are
//! opened, the rules added, and the ruleset's file descriptor moved into the
//! closure. The child then makes exactly two system calls through `libc`
//! (`prctl(PR_SET_NO_NEW_PRIVS)` and `landlock_restrict_self`), allocating
//! nothing; the crate's `restrict_self` is not used there because it builds
//! a status value and may format errors. std switches the uid/gid and the
//! working directory before `pre_exec` closures run, so the restriction is
//! the last thing before `execve`. The ruleset fd is close-on-exec: the
//! executor never holds it.

use std::collections::HashSet;
use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use landlock::{
    Access, AccessFs, PathBeneath, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetError, Scope,
    ABI,
};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use crate::config::{Config, EnvironmentConfig, EnvironmentMode, RunAs, SandboxMode};

/// The Landlock ABI whose rights are asked for. The crate degrades to what
/// the kernel has (best effort): ABI 6 adds the signal scope (a flow cannot
/// signal the runner or other executions), 5 device ioctls, 3 truncate,
/// 2 renames and links across directories (on ABI 1 those are always denied).
const TARGET_ABI: ABI = ABI::V6;

/// Variables the runner reads as its own configuration (config.rs, main.rs,
/// failpoint.rs, entrypoint.sh): never handed to executors. A `*` ends a prefix.
/// Proxy variables are not here: flows rely on them (see the README).
pub const RUNNER_VARIABLES: &[&str] = &[
    "FLOMATION_*",
    "FLO_RUNNER_*",
    "RUNNER_URL",
    "RUNNER_REGISTRATION_CODE",
    "RUNNER_NAME",
    "RUNNER_CHECKIN_TIMEOUT",
    "EXECUTOR_MAX_CONCURRENT",
    "EXECUTOR_DIRECTORY",
    "MTLS_KEY",
];

/// What allowlist mode always keeps: what programs need to run at all.
pub const BASIC_VARIABLES: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "LC_*", "TZ", "TMPDIR", "TERM",
];

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("execution.sandbox is \"required\" but Landlock is not available here ({why}); run on Linux 5.13+ with Landlock enabled (the \"lsm=\" boot list must include landlock), or set execution.sandbox to \"auto\" or \"off\"")]
    LandlockMissing {
        #[source]
        why: LandlockUnavailable,
    },
    #[error("execution.run_as: {value:?}: {why}")]
    User {
        value: String,
        #[source]
        why: UserError,
    },
    #[error("execution.run_as is set but the runner cannot switch executors to uid {uid}: it lacks {missing} (run it as root, or grant those capabilities)")]
    NoPrivilege { uid: u32, missing: String },
    #[error("execution.run_as: uid {uid} cannot {what} {path} ({detail}); {fix}")]
    Unreachable {
        uid: u32,
        what: &'static str,
        path: PathBuf,
        detail: String,
        fix: String,
    },
    #[error("cannot resolve {what} {path}: {source}")]
    Resolve {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot build the Landlock ruleset: {0}")]
    Ruleset(#[from] RulesetError),
    #[error("cannot open {path} for the Landlock ruleset: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("Landlock was available at start-up but no ruleset could be created now")]
    Vanished,
    #[error("{path} is not inside the execution directory {root}")]
    Outside { path: PathBuf, root: PathBuf },
    #[error("cannot hand {path} to uid {uid}: {source}")]
    Hand {
        path: PathBuf,
        uid: u32,
        source: io::Error,
    },
}

/// Why Landlock cannot be used here.
#[derive(Debug, thiserror::Error)]
pub enum LandlockUnavailable {
    #[error("the kernel has no Landlock")]
    NotInKernel,
    #[error("Landlock is built in but not enabled at boot")]
    NotEnabled,
    #[error("landlock_create_ruleset: {0}")]
    Syscall(#[source] io::Error),
    #[error("{0}")]
    Probe(#[source] RulesetError),
    #[error("no Landlock ruleset can be created")]
    NoRuleset,
}

/// Why `execution.run_as` names no usable user.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("cannot look the user up: {0}")]
    Lookup(#[source] io::Error),
    #[error("no such user")]
    NoSuchUser,
    #[error("uid {0} has no entry in the user database, so its group is unknown: give it as \"{0}:GID\"")]
    NoGroup(u32),
    #[error("4294967295 is not a usable id")]
    Unusable,
}

/// Closes `/proc/<runner>/environ`, `mem` and the like to processes of the
/// same uid (ptrace-mode access needs a dumpable target), and disables core
/// dumps that would hold the registration code and the signing key. The
/// runner's own reads of `/proc/self` are unaffected (a process may always
/// read its own), and `flo-runner health` reads only the heartbeat file and
/// `/proc/<pid>` existence, which stays visible.
pub fn make_non_dumpable() -> io::Result<()> {
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(io::Error::from)
}

/// Everything [`apply`] needs, decided once at start-up.
#[derive(Debug)]
pub struct Plan {
    landlock: Option<Landlock>,
    user: Option<User>,
    env: Vec<(OsString, OsString)>,
    env_mode: EnvironmentMode,
    /// Names of the runner's variables that were withheld, for the log.
    withheld: Vec<String>,
    pass_key: bool,
    /// The execution root as configured (every execution directory starts
    /// with it) ...
    root: PathBuf,
    /// ... and resolved.
    real_root: PathBuf,
}

#[derive(Debug, Clone)]
struct User {
    uid: u32,
    gid: u32,
    name: Option<String>,
    home: Option<PathBuf>,
}

/// Landlock is an allow-list: rules grant, nothing denies. "Everything but
/// the runner's files" is expressed by granting full access on every entry
/// of `/` except those that lead to a protected path, and descending into
/// those: each directory above a protected path is enumerated and its other
/// entries are granted; the protected path itself gets no rule. Symbolic
/// links get none either (Landlock checks the path a link resolves to).
/// Consequences, documented in the README: the directories *above* a
/// protected path keep their entries accessible but no new entry can be
/// created directly in them (a rule on a directory covers its whole tree);
/// entries created there after the executor started are not accessible to
/// it; names can still be listed everywhere (`ReadDir` on `/`).
#[derive(Debug)]
struct Landlock {
    /// The kernel's Landlock ABI version, for the start-up line.
    kernel_abi: i64,
    /// Resolved paths no rule may cover.
    protected: HashSet<PathBuf>,
    /// Their (device, inode), to catch another name for the same directory.
    protected_ids: HashSet<(u64, u64)>,
    /// Every directory above a protected path (resolved).
    ancestors: HashSet<PathBuf>,
    /// Files inside protected paths that executors may read and execute:
    /// the key when it is passed, the executor program when it lives there.
    readable: Vec<PathBuf>,
    /// Every rule but the execution's own directory, found once (walking
    /// `/` per execution cost milliseconds) and reused for each ruleset.
    /// Entries created later in a directory above a protected path are
    /// therefore not granted: that fails closed.
    granted: std::sync::OnceLock<Vec<(OwnedFd, landlock::BitFlags<AccessFs>)>>,
}

impl Plan {
    /// Decides what executors get. `env` is the runner's environment, read
    /// once by the caller. Returns the plan and the warnings to log once.
    pub fn new(
        config: &Config,
        key_path: &Path,
        env: Vec<(OsString, OsString)>,
    ) -> Result<(Plan, Vec<String>), SandboxError> {
        let exec = &config.execution;
        let mut warnings = Vec::new();
        let real_root = real("the execution directory", &exec.execution_directory)?;
        let real_key = real("the key file", key_path)?;
        let user = match &exec.run_as {
            None => None,
            Some(run_as) => Some(resolve_user(run_as)?),
        };
        if let Some(u) = &user {
            check_privilege(u)?;
            check_reachable(u, &real_root, exec.pass_key.then_some(real_key.as_path()))?;
        }
        let (env, withheld) = environment(
            &exec.environment,
            &config.runner.registration_code,
            user.as_ref(),
            env,
        );

        let landlock = match exec.sandbox {
            SandboxMode::Off => None,
            mode => match landlock_available() {
                Ok(kernel_abi) => {
                    let (protected, readable) = landlock_paths(config, &real_root, &real_key)?;
                    Some(Landlock::new(kernel_abi, protected, readable))
                }
                Err(why) if mode == SandboxMode::Required => {
                    return Err(SandboxError::LandlockMissing { why })
                }
                Err(why) => {
                    warnings.push(format!(
                        "Landlock is not available here ({why}): executors run without it, so a flow can read and write the state directory like the runner can (execution.sandbox is \"auto\"; \"required\" refuses to start instead)"
                    ));
                    None
                }
            },
        };
        let plan = Plan {
            landlock,
            user,
            env,
            env_mode: exec.environment.mode,
            withheld,
            pass_key: exec.pass_key,
            root: exec.execution_directory.clone(),
            real_root,
        };
        Ok((plan, warnings))
    }

    /// Makes a freshly prepared execution directory usable by the executor's
    /// user: with `run_as`, the directory and the files in it (not below:
    /// the runner writes only top-level files) are given to that user, and
    /// the directories from the execution root down get the search bit for
    /// others (traverse, not list). Without `run_as` it does nothing.
    /// Idempotent; [`apply`] calls it too, so workspace preparation may call
    /// it earlier without harm. Nothing on the way is followed if it is a
    /// symbolic link.
    pub fn prepare_dir(&self, path: &Path) -> Result<(), SandboxError> {
        let Some(user) = &self.user else {
            return Ok(());
        };
        let hand = |source: io::Error| SandboxError::Hand {
            path: path.to_path_buf(),
            uid: user.uid,
            source,
        };
        let names = self.components(path)?;
        let mut dir = open_dir(&self.real_root, OFlags::RDONLY).map_err(hand)?;
        for (i, name) in names.iter().enumerate() {
            // Search for others on the root and the flow directory, so the
            // executor's user can reach its own directory.
            let st = rustix::fs::fstat(&dir).map_err(|e| hand(e.into()))?;
            if st.st_mode & 0o001 == 0 {
                rustix::fs::fchmod(&dir, Mode::from_raw_mode(st.st_mode & 0o7777 | 0o001))
                    .map_err(|e| hand(e.into()))?;
            }
            let next = openat_dir(&dir, name, OFlags::RDONLY).map_err(hand)?;
            if i + 1 == names.len() {
                chown(&dir, name, user).map_err(hand)?;
                let entries = rustix::fs::Dir::read_from(&next).map_err(|e| hand(e.into()))?;
                for entry in entries {
                    let entry = entry.map_err(|e| hand(e.into()))?;
                    let name = entry.file_name();
                    if name.to_bytes() != b"." && name.to_bytes() != b".." {
                        chown(&next, OsStr::from_bytes(name.to_bytes()), user).map_err(hand)?;
                    }
                }
            }
            dir = next;
        }
        Ok(())
    }

    /// The names from the execution root down to `path`.
    fn components(&self, path: &Path) -> Result<Vec<OsString>, SandboxError> {
        let outside = || SandboxError::Outside {
            path: path.to_path_buf(),
            root: self.root.clone(),
        };
        let rel = path.strip_prefix(&self.root).map_err(|_| outside())?;
        let names: Vec<OsString> = rel
            .components()
            .map(|c| match c {
                Component::Normal(n) => Ok(n.to_os_string()),
                _ => Err(outside()),
            })
            .collect::<Result<_, _>>()?;
        if names.is_empty() {
            return Err(outside());
        }
        Ok(names)
    }

    /// Opens the execution directory `path` (O_PATH) without following links.
    fn open_execution_dir(&self, path: &Path) -> Result<OwnedFd, SandboxError> {
        let open_err = |source: io::Error| SandboxError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut dir = open_dir(&self.real_root, OFlags::PATH).map_err(open_err)?;
        for name in self.components(path)? {
            dir = openat_dir(&dir, &name, OFlags::PATH).map_err(open_err)?;
        }
        Ok(dir)
    }
}

/// `path` resolved, or an error naming what it is.
fn real(what: &'static str, path: &Path) -> Result<PathBuf, SandboxError> {
    fs::canonicalize(path).map_err(|source| SandboxError::Resolve {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// What Landlock protects from executors (resolved), and the files inside
/// those that they may still read and execute.
fn landlock_paths(
    config: &Config,
    real_root: &Path,
    real_key: &Path,
) -> Result<(Vec<PathBuf>, Vec<PathBuf>), SandboxError> {
    let exec = &config.execution;
    let mut protected = vec![
        real("the state directory", &exec.state_directory)?,
        real_root.to_path_buf(),
    ];
    if let Some(source) = &config.source {
        protected.push(real("the configuration file", source)?);
    }
    let mut readable = Vec::new();
    protected.push(real_key.to_path_buf());
    if exec.pass_key {
        readable.push(real_key.to_path_buf());
    }
    // An executor installed inside a protected directory must still be
    // able to run.
    if exec.program.components().count() > 1 {
        if let Ok(p) = fs::canonicalize(&exec.program) {
            if protected.iter().any(|d| p.starts_with(d)) {
                readable.push(p);
            }
        }
    }
    Ok((protected, readable))
}

impl fmt::Display for Plan {
    /// One start-up line saying what executors get.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.landlock {
            Some(l) => write!(f, "Landlock on (kernel ABI {})", l.kernel_abi)?,
            None => write!(f, "Landlock off")?,
        }
        match &self.user {
            Some(u) => write!(f, "; executors run as uid {} gid {}", u.uid, u.gid)?,
            None => write!(f, "; executors run as the runner's user")?,
        }
        let mode = match self.env_mode {
            EnvironmentMode::Inherit => "inherited",
            EnvironmentMode::Allowlist => "allowlist",
        };
        write!(f, "; environment {mode}, {} variable(s)", self.env.len())?;
        if !self.withheld.is_empty() {
            write!(
                f,
                ", the runner's own withheld: {}",
                self.withheld.join(", ")
            )?;
        }
        write!(
            f,
            "; key {}",
            if self.pass_key {
                "passed (--key)"
            } else {
                "withheld"
            }
        )
    }
}

/// Configures `cmd` to run the executor for the execution directory `dir`
/// under `plan`: its environment, its user, its Landlock domain. Call it
/// last, after the other settings of `cmd`, and spawn soon after (the
/// ruleset holds one file descriptor until the command is dropped). An
/// error means the executor must not run: with Landlock on, failing open
/// would hand the flow the state directory.
pub fn apply(cmd: &mut Command, plan: &Plan, dir: &Path) -> Result<(), SandboxError> {
    cmd.env_clear();
    cmd.envs(plan.env.iter().map(|(k, v)| (k, v)));
    if let Some(user) = &plan.user {
        plan.prepare_dir(dir)?;
        // std drops the supplementary groups (setgroups(0)) when switching
        // from root, then sets the gid, then the uid.
        cmd.uid(user.uid).gid(user.gid);
    }
    if let Some(landlock) = &plan.landlock {
        let own = plan.open_execution_dir(dir)?;
        let ruleset = landlock.ruleset(own)?;
        // SAFETY: the closure makes two system calls and allocates nothing
        // (see the module comment); the fd it uses lives as long as it does.
        unsafe {
            cmd.pre_exec(move || restrict_self(ruleset.as_raw_fd()));
        }
    }
    Ok(())
}

/// Runs in the forked child: async-signal-safe system calls only.
fn restrict_self(ruleset: std::os::fd::RawFd) -> io::Result<()> {
    // Landlock requires no_new_privs from an unprivileged process; it also
    // means a setuid program (sudo) started by the flow gains nothing.
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: landlock_restrict_self(fd, flags) with a ruleset fd we own.
    if unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0u32) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The kernel's Landlock ABI version, or why there is none. Asks the crate
/// too, so that "available" means a ruleset can really be created here (a
/// seccomp filter or an old kernel answer the same way for both).
fn landlock_available() -> Result<i64, LandlockUnavailable> {
    // SAFETY: landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    // creates nothing and returns the ABI version.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    };
    if v < 1 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENOSYS) => LandlockUnavailable::NotInKernel,
            Some(libc::EOPNOTSUPP) => LandlockUnavailable::NotEnabled,
            _ => LandlockUnavailable::Syscall(e),
        });
    }
    let probe = Ruleset::default()
        .handle_access(AccessFs::from_all(TARGET_ABI))
        .and_then(|r| r.create())
        .map_err(LandlockUnavailable::Probe)?;
    match Option::<OwnedFd>::from(probe) {
        Some(_) => Ok(v),
        None => Err(LandlockUnavailable::NoRuleset),
    }
}

impl Landlock {
    fn new(kernel_abi: i64, protected: Vec<PathBuf>, readable: Vec<PathBuf>) -> Self {
        let mut ancestors = HashSet::new();
        for p in &protected {
            for a in p.ancestors().skip(1) {
                ancestors.insert(a.to_path_buf());
            }
        }
        let protected_ids = protected
            .iter()
            .filter_map(|p| fs::metadata(p).ok())
            .map(|m| (m.dev(), m.ino()))
            .collect();
        Landlock {
            kernel_abi,
            protected: protected.into_iter().collect(),
            protected_ids,
            ancestors,
            readable,
            granted: std::sync::OnceLock::new(),
        }
    }

    /// The ruleset for one execution whose directory is `own` (an O_PATH
    /// fd), as a file descriptor ready for `landlock_restrict_self`.
    fn ruleset(&self, own: OwnedFd) -> Result<OwnedFd, SandboxError> {
        let all = AccessFs::from_all(TARGET_ABI);
        let mut rs = Ruleset::default()
            .handle_access(all)?
            .scope(Scope::Signal)?
            .create()?;
        for (fd, access) in self.granted() {
            rs = rs.add_rule(PathBeneath::new(fd, *access))?;
        }
        rs = rs.add_rule(PathBeneath::new(own, all))?;
        Option::<OwnedFd>::from(rs).ok_or(SandboxError::Vanished)
    }

    /// The rules every execution gets, found on first use.
    fn granted(&self) -> &[(OwnedFd, landlock::BitFlags<AccessFs>)] {
        self.granted.get_or_init(|| {
            let mut out = Vec::new();
            let root = Path::new("/");
            // Names are not what is protected; without this `ls /` would fail.
            match open_path(root) {
                Ok(fd) => out.push((fd, AccessFs::ReadDir.into())),
                Err(e) => log::warn!("sandbox: cannot open /: {e}"),
            }
            self.grant_outside(&mut out, root, AccessFs::from_all(TARGET_ABI));
            let read = AccessFs::from_read(TARGET_ABI);
            for p in &self.readable {
                match open_path(p) {
                    Ok(fd) => out.push((fd, read)),
                    Err(e) => log::warn!("sandbox: cannot open {}: {e}", p.display()),
                }
            }
            out
        })
    }

    /// Grants `access` on every entry of `dir` that is not protected,
    /// descending into the entries above a protected path.
    fn grant_outside(
        &self,
        out: &mut Vec<(OwnedFd, landlock::BitFlags<AccessFs>)>,
        dir: &Path,
        access: landlock::BitFlags<AccessFs>,
    ) {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            // Fails closed: what cannot be listed is not granted.
            Err(e) => {
                log::debug!("sandbox: cannot list {}: {e}", dir.display());
                return;
            }
        };
        for entry in entries.flatten() {
            let path = dir.join(entry.file_name());
            if self.protected.contains(&path) {
                continue;
            }
            // O_NOFOLLOW and a check on the fd: an entry swapped for a link
            // between the listing and here is skipped, never followed.
            let Ok(fd) = open_path(&path) else { continue };
            let Ok(st) = rustix::fs::fstat(&fd) else {
                continue;
            };
            let kind = FileType::from_raw_mode(st.st_mode);
            if kind == FileType::Symlink || self.protected_ids.contains(&(st.st_dev, st.st_ino)) {
                continue;
            }
            if kind == FileType::Directory && self.ancestors.contains(&path) {
                self.grant_outside(out, &path, access);
                continue;
            }
            // For a file the crate keeps only the rights a file can have.
            out.push((fd, access));
        }
    }
}

fn open_path(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

fn open_dir(path: &Path, how: OFlags) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        how | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

fn openat_dir(dir: &impl AsFd, name: &OsStr, how: OFlags) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        how | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

fn chown(dir: &impl AsFd, name: &OsStr, user: &User) -> io::Result<()> {
    // u32::MAX would mean "leave unchanged"; resolve_user refuses it.
    let (uid, gid) = (
        rustix::fs::Uid::from_raw(user.uid),
        rustix::fs::Gid::from_raw(user.gid),
    );
    Ok(rustix::fs::chownat(
        dir,
        name,
        Some(uid),
        Some(gid),
        AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

// ---------------------------------------------------------------- environment

fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    }
}

/// A value that is the registration code, or carries it (a URL with the
/// code in it); "carries" only for codes long enough not to match by chance.
fn holds_code(value: &OsStr, code: &str) -> bool {
    let (value, code) = (value.as_bytes(), code.as_bytes());
    if code.is_empty() {
        return false;
    }
    value == code || (code.len() >= 8 && value.windows(code.len()).any(|w| w == code))
}

/// The executor's environment from the runner's `from`, and the names of
/// the runner's own variables withheld from it.
fn environment(
    config: &EnvironmentConfig,
    code: &str,
    user: Option<&User>,
    from: Vec<(OsString, OsString)>,
) -> (Vec<(OsString, OsString)>, Vec<String>) {
    let mut env = Vec::new();
    let mut withheld = Vec::new();
    for (k, v) in from {
        let name = k.to_string_lossy();
        if RUNNER_VARIABLES.iter().any(|p| matches(p, &name)) || holds_code(&v, code) {
            withheld.push(name.into_owned());
            continue;
        }
        let listed = || {
            BASIC_VARIABLES
                .iter()
                .copied()
                .chain(config.allow.iter().map(String::as_str))
                .any(|p| matches(p, &name))
        };
        if config.mode == EnvironmentMode::Allowlist && !listed() {
            continue;
        }
        env.push((k, v));
    }
    let mut put = |k: &str, v: OsString| {
        env.retain(|(name, _)| name != k);
        env.push((OsString::from(k), v));
    };
    // The executor's user, not the runner's, when they differ.
    if let Some(u) = user {
        if let Some(home) = &u.home {
            put("HOME", home.clone().into_os_string());
        }
        if let Some(name) = &u.name {
            put("USER", name.into());
            put("LOGNAME", name.into());
        }
    }
    for (k, v) in &config.set {
        put(k, v.into());
    }
    withheld.sort();
    (env, withheld)
}

// ---------------------------------------------------------------- run_as

/// One entry of the user database.
struct Passwd {
    name: String,
    uid: u32,
    gid: u32,
    home: PathBuf,
}

fn resolve_user(run_as: &RunAs) -> Result<User, SandboxError> {
    let value = match run_as {
        RunAs::Name(n) => n.clone(),
        RunAs::Id { uid, gid: Some(g) } => format!("{uid}:{g}"),
        RunAs::Id { uid, gid: None } => uid.to_string(),
    };
    let fail = |why: UserError| SandboxError::User {
        value: value.clone(),
        why,
    };
    let user = match run_as {
        RunAs::Name(name) => {
            let pw = lookup(Key::Name(name))
                .map_err(|e| fail(UserError::Lookup(e)))?
                .ok_or_else(|| fail(UserError::NoSuchUser))?;
            User {
                uid: pw.uid,
                gid: pw.gid,
                name: Some(pw.name),
                home: Some(pw.home),
            }
        }
        RunAs::Id { uid, gid } => {
            let pw = lookup(Key::Uid(*uid)).map_err(|e| fail(UserError::Lookup(e)))?;
            let gid = match (gid, &pw) {
                (Some(g), _) => *g,
                (None, Some(pw)) => pw.gid,
                (None, None) => return Err(fail(UserError::NoGroup(*uid))),
            };
            User {
                uid: *uid,
                gid,
                name: pw.as_ref().map(|p| p.name.clone()),
                home: pw.map(|p| p.home),
            }
        }
    };
    if user.uid == u32::MAX || user.gid == u32::MAX {
        return Err(fail(UserError::Unusable));
    }
    Ok(user)
}

enum Key<'a> {
    Name(&'a str),
    Uid(u32),
}

/// getpwnam_r / getpwuid_r: the user database as the system configures it
/// (NSS: files, LDAP, ...), not just /etc/passwd.
fn lookup(key: Key) -> io::Result<Option<Passwd>> {
    enum CKey {
        Name(CString),
        Uid(u32),
    }
    let key = match key {
        Key::Name(n) => CKey::Name(CString::new(n).map_err(io::Error::other)?),
        Key::Uid(u) => CKey::Uid(u),
    };
    let mut buf: Vec<libc::c_char> = vec![0; 4096];
    loop {
        // SAFETY: passwd is plain data; all-zero is a valid (empty) value.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: the buffers outlive the call; result points into pwd or is null.
        let rc = unsafe {
            match &key {
                CKey::Name(n) => libc::getpwnam_r(
                    n.as_ptr(),
                    &mut pwd,
                    buf.as_mut_ptr(),
                    buf.len(),
                    &mut result,
                ),
                CKey::Uid(uid) => {
                    libc::getpwuid_r(*uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result)
                }
            }
        };
        if rc == libc::ERANGE && buf.len() < (1 << 20) {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if result.is_null() {
            return Ok(None);
        }
        // SAFETY: on success the strings point into buf, NUL-terminated.
        let text = |p: *const libc::c_char| {
            if p.is_null() {
                Vec::new()
            } else {
                unsafe { std::ffi::CStr::from_ptr(p) }.to_bytes().to_vec()
            }
        };
        return Ok(Some(Passwd {
            name: String::from_utf8_lossy(&text(pwd.pw_name)).into_owned(),
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
            home: PathBuf::from(OsStr::from_bytes(&text(pwd.pw_dir))),
        }));
    }
}

/// Switching needs CAP_SETUID and CAP_SETGID; handing the execution
/// directory over needs CAP_CHOWN; reading back what the executor wrote
/// (its `state.json` may be 0600) needs CAP_DAC_OVERRIDE; stopping it
/// (cancel, timeout, shutdown) needs CAP_KILL once it has another uid.
/// Root has them all.
fn check_privilege(user: &User) -> Result<(), SandboxError> {
    let euid = rustix::process::geteuid().as_raw();
    let egid = rustix::process::getegid().as_raw();
    if user.uid == euid && user.gid == egid {
        return Ok(());
    }
    const NEEDED: &[(u32, &str)] = &[
        (0, "CAP_CHOWN"),
        (1, "CAP_DAC_OVERRIDE"),
        (5, "CAP_KILL"),
        (6, "CAP_SETGID"),
        (7, "CAP_SETUID"),
    ];
    let effective = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(if euid == 0 { u64::MAX } else { 0 });
    let missing: Vec<&str> = NEEDED
        .iter()
        .filter(|(bit, _)| effective & (1u64 << bit) == 0)
        .map(|(_, name)| *name)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(SandboxError::NoPrivilege {
            uid: user.uid,
            missing: missing.join(", "),
        })
    }
}

/// Whether `user` (with only its primary group: std drops the others) has
/// `bits` (r=4, w=2, x=1) on `path` by its mode. ACLs are not consulted.
fn permits(user: &User, meta: &fs::Metadata, bits: u32) -> bool {
    if user.uid == 0 {
        return true;
    }
    let shift = if meta.uid() == user.uid {
        6
    } else if meta.gid() == user.gid {
        3
    } else {
        0
    };
    (meta.mode() >> shift) & bits == bits
}

/// The executor's user must reach the execution root (the runner adds the
/// search bit from there down) and, when it is passed, read the key.
fn check_reachable(user: &User, root: &Path, key: Option<&Path>) -> Result<(), SandboxError> {
    let unreachable =
        |what, path: &Path, meta: &fs::Metadata, fix: String| SandboxError::Unreachable {
            uid: user.uid,
            what,
            path: path.to_path_buf(),
            detail: format!(
                "mode {:04o}, owner {}:{}",
                meta.mode() & 0o7777,
                meta.uid(),
                meta.gid()
            ),
            fix,
        };
    let search = |path: &Path| -> Result<(), SandboxError> {
        for dir in path.ancestors().skip(1) {
            let Ok(meta) = fs::metadata(dir) else {
                continue;
            };
            if !permits(user, &meta, 1) {
                return Err(unreachable(
                    "pass through",
                    dir,
                    &meta,
                    format!("give it the search bit (chmod o+x {})", dir.display()),
                ));
            }
        }
        Ok(())
    };
    search(root)?;
    if let Some(key) = key {
        search(key)?;
        if let Ok(meta) = fs::metadata(key) {
            if !permits(user, &meta, 4) {
                return Err(unreachable(
                    "read the key file",
                    key,
                    &meta,
                    format!(
                        "it is passed to executors (execution.pass_key): make it readable by group {} (chgrp {} {}; chmod 0640 {}), or set execution.pass_key to false",
                        user.gid,
                        user.gid,
                        key.display(),
                        key.display()
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EnvironmentConfig;

    fn os(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    fn names(env: &[(OsString, OsString)]) -> Vec<String> {
        env.iter()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn inherit_keeps_everything_but_the_runners_own_variables_and_the_code() {
        let cfg = EnvironmentConfig {
            mode: EnvironmentMode::Inherit,
            allow: vec![],
            set: vec![("ADDED".into(), "1".into())],
        };
        let (env, withheld) = environment(
            &cfg,
            "the-registration-code",
            None,
            os(&[
                ("PATH", "/usr/bin"),
                ("AWS_REGION", "eu-west-2"),
                ("HTTPS_PROXY", "http://u:p@proxy:3128"),
                ("FLOMATION_API", "http://api"),
                ("FLO_RUNNER_CONFIG", "/etc/c.json"),
                ("RUNNER_REGISTRATION_CODE", "the-registration-code"),
                ("SOMETHING_ELSE", "the-registration-code"),
                ("EMBEDDED", "https://x/?code=the-registration-code"),
                ("MTLS_KEY", "/k.pem"),
                ("RUNNER_TEMP", "/kept/not/ours"),
            ]),
        );
        assert_eq!(
            names(&env),
            ["PATH", "AWS_REGION", "HTTPS_PROXY", "RUNNER_TEMP", "ADDED"]
        );
        assert_eq!(
            withheld,
            [
                "EMBEDDED",
                "FLOMATION_API",
                "FLO_RUNNER_CONFIG",
                "MTLS_KEY",
                "RUNNER_REGISTRATION_CODE",
                "SOMETHING_ELSE"
            ]
        );
    }

    #[test]
    fn a_short_code_is_only_withheld_where_it_is_the_whole_value() {
        assert!(holds_code(OsStr::new("abc"), "abc"));
        assert!(!holds_code(OsStr::new("/usr/abc/bin"), "abc"));
        assert!(!holds_code(OsStr::new(""), ""));
    }

    #[test]
    fn allowlist_keeps_the_basic_set_and_the_patterns_and_sets_the_users_home() {
        let cfg = EnvironmentConfig {
            mode: EnvironmentMode::Allowlist,
            allow: vec!["AWS_*".into(), "EXACT".into()],
            set: vec![("HOME".into(), "/override".into())],
        };
        let user = User {
            uid: 1,
            gid: 1,
            name: Some("flow".into()),
            home: Some("/home/flow".into()),
        };
        let (env, _) = environment(
            &cfg,
            "code-code-code",
            Some(&user),
            os(&[
                ("PATH", "/usr/bin"),
                ("LC_ALL", "C"),
                ("AWS_PROFILE", "ops"),
                ("EXACT", "1"),
                ("EXACTLY", "no"),
                ("FLOMATION_RUNNER_NAME", "n"),
                ("USER", "root"),
            ]),
        );
        let get = |k: &str| {
            env.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.to_string_lossy().into_owned())
        };
        assert_eq!(get("AWS_PROFILE").as_deref(), Some("ops"));
        assert_eq!(get("EXACT").as_deref(), Some("1"));
        assert_eq!(get("EXACTLY"), None);
        assert_eq!(get("FLOMATION_RUNNER_NAME"), None);
        assert_eq!(get("LC_ALL").as_deref(), Some("C"));
        assert_eq!(get("USER").as_deref(), Some("flow"));
        assert_eq!(get("HOME").as_deref(), Some("/override"));
    }

    /// Every variable name config.rs reads must be withheld: a new setting
    /// added there without a matching entry here fails this test.
    #[test]
    fn every_variable_the_runner_reads_is_withheld() {
        let sources = [
            include_str!("config.rs"),
            include_str!("main.rs"),
            include_str!("failpoint.rs"),
        ];
        let mut seen = 0;
        for source in sources {
            for literal in source.split('"').skip(1).step_by(2) {
                let looks_like_var = literal.len() > 3
                    && literal.contains('_')
                    && literal
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
                if !looks_like_var {
                    continue;
                }
                seen += 1;
                // Proxies are read for the runner's own connection but flows
                // rely on them; mTLS paths other than the key are not secret;
                // CARGO_* are read at build time.
                if literal.ends_with("_PROXY")
                    || literal.starts_with("CARGO_")
                    || matches!(
                        literal,
                        "MTLS_ENABLED"
                            | "MTLS_CA_CERT"
                            | "MTLS_CERT"
                            | "MTLS_API_URL"
                            | "FLO_LOG_FORMAT"
                    )
                {
                    continue;
                }
                assert!(
                    RUNNER_VARIABLES.iter().any(|p| matches(p, literal)),
                    "{literal} is read by the runner but would reach executors"
                );
            }
        }
        assert!(seen > 20, "found only {seen} variable names");
    }

    #[test]
    fn run_as_ids_without_a_user_entry_need_a_group() {
        let e = resolve_user(&RunAs::Id {
            uid: 3_999_999_999,
            gid: None,
        })
        .expect_err("no group");
        assert!(e.to_string().contains("\"3999999999:GID\""), "{e}");
        let u = resolve_user(&RunAs::Id {
            uid: 3_999_999_999,
            gid: Some(7),
        })
        .expect("explicit group");
        assert_eq!((u.uid, u.gid), (3_999_999_999, 7));
        let e = resolve_user(&RunAs::Name("no-such-user-here".into())).expect_err("unknown");
        assert!(e.to_string().contains("no such user"), "{e}");
    }
}
