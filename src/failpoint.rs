//! Named pause points in the ledger's sequence, for crash tests: with
//! `FLO_RUNNER_FAILPOINT=<name>` in its environment, the runner logs
//! `failpoint <name> reached` when it gets there and stops that thread for an
//! hour, so a test can SIGKILL it in exactly that window instead of hoping to
//! hit it. Unset (always, outside tests) it costs one load of a `OnceLock`.

use std::sync::OnceLock;
use std::time::Duration;

const VARIABLE: &str = "FLO_RUNNER_FAILPOINT";

/// Pauses here if this is the configured failpoint.
pub fn hit(name: &str) {
    static CHOSEN: OnceLock<Option<String>> = OnceLock::new();
    let chosen = CHOSEN.get_or_init(|| std::env::var(VARIABLE).ok().filter(|v| !v.is_empty()));
    if chosen.as_deref() == Some(name) {
        log::warn!("failpoint {name} reached; pausing");
        std::thread::sleep(Duration::from_secs(3600));
    }
}
