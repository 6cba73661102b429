//! The binaries under test, found beside the test (or bench) executable:
//! cargo puts that in `target/<profile>/deps/`, and the binaries and
//! examples of the same build in `target/<profile>/` and
//! `target/<profile>/examples/`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// `target/<profile>/`, the directory of the build this test belongs to.
pub fn profile_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test executable's path");
        // target/<profile>/deps/<test>-<hash>
        exe.parent()
            .and_then(Path::parent)
            .expect("the test executable lies in target/<profile>/deps")
            .to_path_buf()
    })
}

fn built(relative: &str) -> PathBuf {
    let path = profile_dir().join(relative);
    assert!(
        path.is_file(),
        "{} is missing: build it first with `cargo build --workspace --bins --examples` \
         (add --release for the benchmarks); `make test` and `make bench` do",
        path.display()
    );
    path
}

/// The runner binary under test: this build's, or `FLO_TEST_RUNNER` (to run
/// the same tests against another build, such as the one before a fix).
pub fn runner_bin() -> PathBuf {
    match std::env::var_os("FLO_TEST_RUNNER") {
        Some(path) => PathBuf::from(path),
        None => built("flo-runner"),
    }
}

/// This build's `flo-devserver`.
pub fn devserver_bin() -> PathBuf {
    built("flo-devserver")
}

/// The example executor (`examples/example-executor.rs`).
pub fn executor_path() -> PathBuf {
    built("examples/example-executor")
}

/// The executor that does nothing, fast (`examples/noop-executor.rs`).
pub fn noop_executor_path() -> PathBuf {
    built("examples/noop-executor")
}
