//! Chaos: many runners, one queue, a faulty API, a runner SIGKILLed mid-run.
//! Proves on the server side that nothing is lost, nothing runs twice and
//! nothing stays running (issue: durable outbox and crash recovery).
//!
//! The default is a reduced run that fits CI; `make chaos` runs the full one
//! (6 runners × 4 slots, 300 executions) through the CHAOS_* variables.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use flo_testkit::*;
use serde_json::{json, Value};

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Every `argv.json` under a runner's executions directory: execution ids run.
fn executions_run(root: &Path, out: &mut HashMap<String, usize>) {
    let Ok(flows) = fs::read_dir(root.join("executions")) else {
        return;
    };
    for flow in flows.flatten() {
        let Ok(execs) = fs::read_dir(flow.path()) else {
            continue;
        };
        for exec in execs.flatten() {
            if exec.path().join("argv.json").exists() {
                *out.entry(exec.file_name().to_string_lossy().into_owned())
                    .or_default() += 1;
            }
        }
    }
}

/// Every `result.json` a runner wrote: (execution id, result).
fn results_written(root: &Path) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let Ok(flows) = fs::read_dir(root.join("executions")) else {
        return out;
    };
    for flow in flows.flatten() {
        for exec in fs::read_dir(flow.path()).into_iter().flatten().flatten() {
            if let Ok(bytes) = fs::read(exec.path().join("result.json")) {
                let v: Value = serde_json::from_slice(&bytes).expect("result.json is JSON");
                out.push((exec.file_name().to_string_lossy().into_owned(), v));
            }
        }
    }
    out
}

#[test]
fn many_runners_faulty_api_and_a_killed_runner_lose_nothing() {
    let runners_n = env_num("CHAOS_RUNNERS", 3);
    let slots = env_num("CHAOS_SLOTS", 2);
    let total = env_num("CHAOS_EXECUTIONS", 40);
    let limit = Duration::from_secs(env_num("CHAOS_LIMIT_SECS", 240) as u64);

    let server = DevServer::start_with(&["--long-poll-secs", "2", "--claim-lease-secs", "10"]);
    let setup = |server: &DevServer| {
        RunnerSetup::new(server)
            .set(
                "runner",
                "registration_retry",
                json!({"strategy": "interval", "interval_secs": 1}),
            )
            .set("runner", "shutdown_grace_secs", json!(5))
            .set("execution", "max_concurrent_executors", json!(slots))
            .set("execution", "kill_grace_secs", json!(1))
    };
    let mut runners: Vec<Runner> = (0..runners_n).map(|_| setup(&server).start()).collect();

    let mut ids = Vec::new();
    for i in 0..total {
        let ms = 100 + (i * 37) % 300;
        ids.push(server.enqueue(
            flow(json!([
                {"id": "a", "type": "log", "message": format!("start {i}")},
                {"id": "b", "type": "sleep", "ms": ms},
                {"id": "c", "type": "log", "message": format!("end {i}")}
            ])),
            json!({}),
        ));
    }
    server.fault(json!({"route": "*", "error_rate": 0.10, "drop_rate": 0.05}));

    let completed = |server: &DevServer| match server.get("/admin/executions") {
        Value::Array(a) => a.iter().filter(|e| e["status"] == "completed").count(),
        _ => 0,
    };
    let started = Instant::now();
    let wait_until = |n: usize| {
        wait_for(
            limit,
            &format!("{n} of {total} executions completed"),
            || completed(&server) >= n,
        )
    };

    // A full outage a third of the way in.
    wait_until(total / 3);
    server.fault(json!({"route": "*", "error_rate": 0.10, "drop_rate": 0.05, "down_for_ms": 5000}));

    // Kill one runner mid-run (SIGKILL: no chance to clean up), restart it.
    wait_until(total / 2);
    let victim = runners.remove(0);
    victim.signal("KILL");
    let dir = {
        let mut victim = victim;
        victim.wait_exit(Duration::from_secs(10));
        std::mem::replace(&mut victim.dir, tempfile::tempdir().expect("tempdir"))
    };
    std::thread::sleep(Duration::from_secs(1));
    runners.push(setup(&server).start_in(dir));

    wait_until(total);
    let elapsed = started.elapsed();
    server.delete("/admin/faults");
    for r in runners.iter_mut() {
        let status = r.stop();
        assert!(
            status.success(),
            "runner exit {status:?}; log:\n{}",
            r.log()
        );
    }

    // 1. Every execution reached a final state, with results all the same.
    let mut errored = 0;
    let mut duplicates = 0;
    let mut server_results: HashMap<String, Vec<Value>> = HashMap::new();
    for id in &ids {
        let e = server.execution(id);
        assert_eq!(e["status"], "completed", "{e:#}");
        let results = e["results"].as_array().cloned().unwrap_or_default();
        assert!(!results.is_empty(), "{id} has no result");
        assert!(
            results.iter().all(|r| r == &results[0]),
            "{id} got different results: {results:#?}"
        );
        duplicates += results.len() - 1;
        if results[0]["has_errored"] == true {
            errored += 1;
        }
        server_results.insert(id.clone(), results);
    }

    // 2. No execution ran on two runners (or twice on one).
    let mut runs = HashMap::new();
    for r in &runners {
        executions_run(r.path(), &mut runs);
    }
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "run more than once: {twice:?}");

    // 3. Every result a runner produced was delivered, as produced.
    let mut produced = 0;
    for r in &runners {
        for (id, result) in results_written(r.path()) {
            produced += 1;
            let got = server_results
                .get(&id)
                .expect("result for a known execution");
            assert!(
                got.contains(&result),
                "{id}: the server never got {result:#}"
            );
        }
    }

    println!(
        "chaos: {total} executions on {runners_n} runners × {slots} slots in {:.1} s: \
         {} completed, {} run, {produced} results produced and delivered, \
         {errored} errored (recovered or faulted), {duplicates} duplicate deliveries, 0 run twice",
        elapsed.as_secs_f64(),
        ids.len(),
        runs.len(),
    );
}
