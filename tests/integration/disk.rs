//! What a flow leaves on disk cannot fill it or turn retention against
//! other executions (issue 11, "Disk"): retention counts entries, removes
//! trees of any depth, follows no link and removes only verified finished
//! execution directories; a running execution over its directory limits is
//! stopped with a result that says why. The executors are shell scripts
//! written by each test.

use std::fs;
use std::time::Duration;

use flo_testkit::*;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(60);

/// Retention that removes every finished execution directory within about
/// a second of its end (more than one entry in all is over the limit).
fn eager_retention(setup: RunnerSetup) -> RunnerSetup {
    setup
        .set("execution", "retention_max_entries", json!(1))
        .set("execution", "retention_interval_secs", json!(1))
}

fn flo_of(e: &Value) -> String {
    e["flo_id"].as_str().unwrap_or_default().to_string()
}

const OK: &str = "printf '{\"status\":0}' > state.json";

#[test]
fn fifty_thousand_empty_files_are_removed_by_their_count() {
    let server = DevServer::start();
    let scripts = tempfile::tempdir().expect("tempdir");
    let exe = script_executor(scripts.path(), &format!("seq 50000 | xargs touch; {OK}"));
    let setup = || {
        RunnerSetup::new(&server)
            .set("execution", "executable_name", json!(exe))
            // Bytes alone (50,000 empty files are a few bytes) keep it.
            .set("execution", "retention_max_bytes", json!(1 << 30))
            .set("execution", "retention_max_entries", json!(1000))
            .set("execution", "retention_interval_secs", json!(1))
    };
    let runner = setup().start();
    let id = server.enqueue(flow(json!([])), json!({}));
    let e = completed(&server, &runner, &id, LIMIT);
    assert_eq!(only_result(&e)["has_errored"], false, "{e:#}");
    // Retention also sweeps at start-up: after a restart, whatever the
    // interval.
    let runner = setup().start_in(runner.into_dir());
    let dir = runner.exec_dir(&flo_of(&e), &id);
    wait_for(LIMIT, "retention to remove 50,000 empty files", || {
        !dir.exists()
    });
    let next = server.enqueue(flow(json!([])), json!({}));
    let e = completed(&server, &runner, &next, LIMIT);
    assert_eq!(only_result(&e)["has_errored"], false, "{e:#}");
}

/// Lowers this process's open-file limit (the runner inherits it), as under
/// systemd's default soft limit of 1024: a removal that holds one
/// descriptor per level cannot go 5,000 deep.
fn lower_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(1024),
            maximum: lim.maximum,
        },
    )
    .expect("lower RLIMIT_NOFILE");
}

#[test]
fn a_tree_five_thousand_deep_is_removed() {
    lower_open_file_limit();
    let server = DevServer::start();
    let scripts = tempfile::tempdir().expect("tempdir");
    // 50 chains of 101 directories nested into each other: no path the
    // shell uses is long, the tree is 5,050 deep (far past PATH_MAX).
    let exe = script_executor(
        scripts.path(),
        &format!(
            "p=d; i=1; while [ $i -lt 100 ]; do p=$p/d; i=$((i+1)); done\n\
             mkdir -p c/$p && touch c/$p/leaf\n\
             j=0; while [ $j -lt 49 ]; do mkdir -p n/$p && mv c n/$p/ && mv n c || exit 1; j=$((j+1)); done\n\
             {OK}"
        ),
    );
    let setup = || {
        eager_retention(RunnerSetup::new(&server))
            .set("execution", "executable_name", json!(exe))
            .set("execution", "retention_max_bytes", json!(1))
    };
    let runner = setup().start();
    let id = server.enqueue(flow(json!([])), json!({}));
    let e = completed(&server, &runner, &id, LIMIT);
    assert_eq!(only_result(&e)["has_errored"], false, "{e:#}");
    // As above: the start-up sweep, whatever the interval.
    let runner = setup().start_in(runner.into_dir());
    let dir = runner.exec_dir(&flo_of(&e), &id);
    wait_for(LIMIT, "retention to remove a 5,050-deep tree", || {
        !dir.exists()
    });
    assert!(
        !runner.log().contains("cannot remove"),
        "{}",
        runner.log_tail()
    );
}

#[test]
fn links_at_and_in_execution_directories_are_not_followed() {
    let server = DevServer::start();
    let outside = tempfile::tempdir().expect("tempdir");
    fs::write(outside.path().join("keep"), b"outside").expect("write");
    let home = tempfile::tempdir().expect("tempdir");
    let root = home.path().join("executions");
    let scripts = tempfile::tempdir().expect("tempdir");
    // The victim runs a while; the attacker, meanwhile, plants links: in
    // its own directory to a directory outside, at the {execution_id}
    // level to the victim's directory, at the {flo_id} level to the
    // victim's flow directory.
    let exe = script_executor(
        scripts.path(),
        &format!(
            "case \"$(pwd)\" in\n\
             */victim/*) sleep 6; {OK}; exit 0;;\n\
             esac\n\
             ln -s \"$DISK_OUTSIDE\" out\n\
             for v in \"$DISK_ROOT\"/victim/*; do ln -s \"$v\" ../linked-execution; done\n\
             ln -s \"$DISK_ROOT/victim\" ../../linked-flow\n\
             {OK}"
        ),
    );
    let runner = eager_retention(RunnerSetup::new(&server))
        .set("execution", "executable_name", json!(exe))
        .set("execution", "max_concurrent_executors", json!(2))
        // Landlock would stop the links outside the execution directory
        // (the flow may not write its flow directory); this tests
        // retention under it.
        .set("execution", "sandbox", json!("off"))
        .env("DISK_OUTSIDE", &outside.path().to_string_lossy())
        .env("DISK_ROOT", &root.to_string_lossy())
        .start_in(home);
    let victim = server.enqueue(flow(json!([])), json!({"flo_id": "victim"}));
    let victim_dir = runner.exec_dir("victim", &victim);
    wait_for(LIMIT, "the victim to start", || {
        victim_dir.join("execution.flow").exists()
    });
    let attacker = server.enqueue(flow(json!([])), json!({"flo_id": "attacker"}));
    let e = completed(&server, &runner, &attacker, LIMIT);
    assert_eq!(only_result(&e)["has_errored"], false, "{e:#}");
    let attacker_dir = runner.exec_dir("attacker", &attacker);
    // Retention ran (it removed the attacker's finished directory) ...
    wait_for(
        LIMIT,
        "retention to remove the attacker's directory",
        || !attacker_dir.exists(),
    );
    // ... and followed none of the links.
    assert!(outside.path().join("keep").exists(), "outside was removed");
    assert!(
        victim_dir.join("execution.flow").exists(),
        "the running victim's directory was touched; log:\n{}",
        runner.log_tail()
    );
    let e = completed(&server, &runner, &victim, LIMIT);
    assert_eq!(only_result(&e)["has_errored"], false, "{e:#}");
    assert!(outside.path().join("keep").exists());
}

/// Writes forever in the `hog` flow; other flows end at once.
fn hog(body: &str) -> String {
    format!("case \"$(pwd)\" in\n*/hog/*) {body};;\nesac\n{OK}")
}

/// A `hog` flow that `grow`s its directory under `limit` = `value` is stopped
/// with `error`; the next execution is not affected.
fn a_hog_is_stopped(grow: &str, limit: &str, value: u64, error: &str) {
    let server = DevServer::start();
    let scripts = tempfile::tempdir().expect("tempdir");
    let exe = script_executor(scripts.path(), &hog(grow));
    let runner = RunnerSetup::new(&server)
        .set("execution", "executable_name", json!(exe))
        .set("execution", limit, json!(value))
        .start();
    let id = server.enqueue(flow(json!([])), json!({"flo_id": "hog"}));
    let e = completed(&server, &runner, &id, LIMIT);
    assert_eq!(only_result(&e)["has_errored"], true, "{e:#}");
    assert_eq!(error_of(&e), error);
    let next = server.enqueue(flow(json!([])), json!({"flo_id": "fine"}));
    let e = completed(&server, &runner, &next, LIMIT);
    assert_eq!(only_result(&e)["has_errored"], false, "{e:#}");
}

#[test]
fn an_execution_over_max_dir_bytes_is_stopped_and_the_result_says_why() {
    a_hog_is_stopped(
        "i=0; while :; do head -c 100000 /dev/zero > f$i; i=$((i+1)); sleep 0.05; done",
        "max_dir_bytes",
        1_000_000,
        "the execution directory exceeded execution.max_dir_bytes (1000000 bytes)",
    );
}

#[test]
fn an_execution_over_max_dir_entries_is_stopped_and_the_result_says_why() {
    a_hog_is_stopped(
        "mkdir sub; i=0; while :; do : > sub/e$i; i=$((i+1)); sleep 0.01; done",
        "max_dir_entries",
        100,
        "the execution directory exceeded execution.max_dir_entries (100 entries)",
    );
}
