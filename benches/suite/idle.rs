//! Idle (measurements 4 and 5): several runners registered and polling;
//! RSS after the window and CPU time over it.

use std::time::{Duration, Instant};

use flo_testkit::{cpu_secs, sched_ns, status_kib, Runner};
use serde::Serialize;

use crate::plan::Plan;
use crate::runner;
use crate::server::Server;
use crate::stats::{fig, Stats};
use crate::table::{Figure, Reading};
use crate::Res;

#[derive(Serialize)]
pub struct IdleResult {
    pub runners: usize,
    pub window_s: f64,
    pub rss_mib: Stats,
    pub cpu_s_schedstat: Option<Stats>,
    pub cpu_s_ticks: Option<Stats>,
    pub cpu_s_per_60s: f64,
    pub polls_answered_in_window_all_runners: usize,
    pub target: Target,
    pub pass_rss: bool,
    pub pass_cpu: bool,
}

#[derive(Serialize)]
pub struct Target {
    pub rss_mib: u32,
    pub cpu_s_per_60s: f64,
}

pub fn run(plan: &Plan) -> Res<IdleResult> {
    let server = Server::start()?;
    let mut runners = (0..plan.idle_runners)
        .map(|_| runner::start(&server, 1, None))
        .collect::<Res<Vec<_>>>()?;
    for r in &mut runners {
        r.wait_registered(&server.kit, Duration::from_secs(60))?;
    }
    // Let start-up finish (the first poll goes out right after registration).
    std::thread::sleep(Duration::from_secs(1));
    let seq0 = server.max_seq()?;
    let start: Vec<(Option<f64>, Option<u64>)> = runners
        .iter()
        .map(|r| (cpu_secs(r.pid()), sched_ns(r.pid())))
        .collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(plan.idle_secs));
    let window = t0.elapsed().as_secs_f64();
    let Samples {
        rss,
        cpu_ticks,
        cpu_sched,
    } = sample(&runners, &start)?;
    let requests = server.requests_after(seq0)?;
    let polls = requests.iter().filter(|r| r.route == "poll").count();
    for r in &mut runners {
        r.stop();
    }
    let rss_s = Stats::of(&rss).ok_or("no runners")?;
    // schedstat is precise (ns) and idle threads do not exit; the tick-based
    // figure is the cross-check.
    let cpu = Stats::of(if cpu_sched.len() == rss.len() {
        &cpu_sched
    } else {
        &cpu_ticks
    })
    .ok_or("no CPU figures")?;
    let scale = 60.0 / window;
    let per_60s = cpu.median * scale;
    Ok(IdleResult {
        runners: runners.len(),
        window_s: window,
        rss_mib: rss_s,
        cpu_s_schedstat: Stats::of(&cpu_sched),
        cpu_s_ticks: Stats::of(&cpu_ticks),
        cpu_s_per_60s: per_60s,
        polls_answered_in_window_all_runners: polls,
        target: Target {
            rss_mib: 6,
            cpu_s_per_60s: 0.03,
        },
        pass_rss: rss_s.median <= 6.0,
        pass_cpu: per_60s <= 0.03,
    })
}

/// Each runner's RSS (MiB) at the end of the window, and its CPU time (s)
/// over it by both counts.
struct Samples {
    rss: Vec<f64>,
    cpu_ticks: Vec<f64>,
    cpu_sched: Vec<f64>,
}

fn sample(runners: &[Runner], start: &[(Option<f64>, Option<u64>)]) -> Res<Samples> {
    let (mut rss, mut cpu_ticks, mut cpu_sched) = (Vec::new(), Vec::new(), Vec::new());
    for (r, (c0, s0)) in runners.iter().zip(start) {
        let pid = r.pid();
        let (c1, s1) = (cpu_secs(pid), sched_ns(pid));
        rss.push(status_kib(pid, "VmRSS").ok_or("no VmRSS")? as f64 / 1024.0);
        if let (Some(a), Some(b)) = (c0, c1) {
            cpu_ticks.push(b - a);
        }
        if let (Some(a), Some(b)) = (s0, s1) {
            cpu_sched.push((b - a) as f64 / 1e9);
        }
    }
    Ok(Samples {
        rss,
        cpu_ticks,
        cpu_sched,
    })
}

pub const RSS_FIGURES: &[Figure<IdleResult>] = &[Figure {
    name: "4. idle RSS after 60 s",
    target: "<= 6 MiB",
    go: "11.3 MiB",
    read: |i| {
        let s = i.rss_mib.rounded();
        Reading::value(format!(
            "{:.2} MiB (min {:.2}, max {:.2}, {} runners)",
            s.median, s.min, s.max, i.runners
        ))
        .pass(i.pass_rss)
        .vs_go(format!("{:.1}x less", 11.3 / s.median))
    },
}];

pub const CPU_FIGURES: &[Figure<IdleResult>] = &[Figure {
    name: "5. idle CPU per 60 s",
    target: "<= 0.03 s",
    go: "-",
    read: |i| {
        Reading::value(format!(
            "{:.4} s (min {:.4}, max {:.4})",
            i.cpu_s_per_60s,
            fig(&i.cpu_s_schedstat, |s| s.min),
            fig(&i.cpu_s_schedstat, |s| s.max)
        ))
        .pass(i.pass_cpu)
    },
}];
