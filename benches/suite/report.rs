//! What a run found: each measurement's typed results (or why it could not
//! be made), and the JSON file they are written to.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::first_line::FirstLineResult;
use crate::fs::FsResult;
use crate::idle::IdleResult;
use crate::logs::LogsResult;
use crate::machine::Machine;
use crate::overhead::OverheadResult;
use crate::peak::PeakResult;
use crate::signing::SigningResult;
use crate::startup::StartupResult;
use crate::table::Row;
use crate::throughput::ThroughputResult;

/// A measurement's figures with the time it took, or why it could not be
/// made (`{"error": "..."}`).
#[derive(Serialize)]
#[serde(untagged)]
pub enum Outcome<T> {
    Done {
        #[serde(flatten)]
        result: T,
        bench_seconds: f64,
    },
    Failed {
        error: String,
    },
}

/// One entry per measurement that was run (`FLO_BENCH_ONLY` picks them).
#[derive(Default, Serialize)]
pub struct Results {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_line: Option<Outcome<FirstLineResult>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fs: Option<Outcome<FsResult>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle: Option<Outcome<IdleResult>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logs: Option<Outcome<LogsResult>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overhead: Option<Outcome<OverheadResult>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overhead_tmpfs: Option<Outcome<OverheadResult>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak: Option<Outcome<PeakResult>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing: Option<Outcome<SigningResult>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub startup: Option<Outcome<StartupResult>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throughput: Option<Outcome<ThroughputResult>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throughput_tmpfs: Option<Outcome<ThroughputResult>>,
}

impl Results {
    /// The measurements that could not be made, by name (in the JSON's
    /// order: alphabetical).
    pub fn errors(&self) -> Vec<(&'static str, &str)> {
        fn error<T>(o: &Option<Outcome<T>>) -> Option<&str> {
            match o {
                Some(Outcome::Failed { error }) => Some(error),
                _ => None,
            }
        }
        [
            ("first_line", error(&self.first_line)),
            ("fs", error(&self.fs)),
            ("idle", error(&self.idle)),
            ("logs", error(&self.logs)),
            ("overhead", error(&self.overhead)),
            ("overhead_tmpfs", error(&self.overhead_tmpfs)),
            ("peak", error(&self.peak)),
            ("signing", error(&self.signing)),
            ("startup", error(&self.startup)),
            ("throughput", error(&self.throughput)),
            ("throughput_tmpfs", error(&self.throughput_tmpfs)),
        ]
        .into_iter()
        .filter_map(|(name, e)| Some((name, e?)))
        .collect()
    }
}

/// All of bench/results.json.
#[derive(Serialize)]
pub struct Report<'a> {
    pub machine: Machine,
    pub loadavg_at_start: String,
    pub quick: bool,
    pub only: Option<Vec<String>>,
    pub suite_seconds: f64,
    pub table: &'a [Row],
    pub results: &'a Results,
}

impl Report<'_> {
    /// Writes `bench/results.json`, or `bench/results-partial.json` for a
    /// quick or partial run (so that results.json always holds a full one).
    pub fn write(&self) {
        let name = if self.quick || self.only.is_some() {
            "results-partial.json"
        } else {
            "results.json"
        };
        let path: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("bench")
            .join(name);
        // Through a `Value`: its maps are sorted, so the keys come out in
        // the same order in every run and every version of the suite.
        let written = serde_json::to_value(self)
            .and_then(|v| serde_json::to_vec_pretty(&v))
            .map(|bytes| std::fs::write(&path, bytes));
        match written {
            Ok(Ok(())) => eprintln!("bench: figures written to {}", path.display()),
            _ => eprintln!("bench: cannot write {}", path.display()),
        }
    }
}
