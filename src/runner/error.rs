//! Why the runner could not start or stopped on its own: each variant keeps
//! the error it came from, and says which file, directory or setting.

use std::io;
use std::path::PathBuf;

use super::threads::SpawnError;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot install the signal handler: {0}")]
    Signals(#[source] ctrlc::Error),
    #[error(transparent)]
    StateDir(#[from] crate::statedir::LockError),
    #[error("cannot create execution directory {}: {source}", path.display())]
    ExecutionDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    #[error(transparent)]
    Executor(#[from] crate::executor::DiscoveryError),
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    #[error("cannot open the journal in {}: {source}", dir.display())]
    Journal {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open the outbox in {}: {source}", dir.display())]
    Outbox {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Thread(#[from] SpawnError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::ServeError),
    #[error(transparent)]
    Registration(#[from] crate::registration::RegistrationError),
}
