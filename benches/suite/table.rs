//! The table printed at the end (and kept in results.json): one row per
//! figure, each described once, beside the measurement it reads, by a
//! [`Figure`].

use serde::Serialize;
use serde_json::Value;

use crate::report::{Outcome, Results};
use crate::{fs, idle, logs, overhead, peak, signing, startup, throughput};

/// One row of the table, described: what the figure is, its target and
/// the Go runner's figure (fixed text), and how to read the rest from a
/// measurement's typed results `T`.
pub struct Figure<T> {
    pub name: &'static str,
    pub target: &'static str,
    pub go: &'static str,
    pub read: fn(&T) -> Reading,
}

/// What a figure reads from the results.
pub struct Reading {
    pub value: String,
    /// `None`: a figure with no target to pass or miss.
    pub pass: Option<bool>,
    pub vs_go: String,
}

impl Reading {
    /// A figure without a target or a comparison.
    pub fn value(value: String) -> Reading {
        Reading {
            value,
            pass: None,
            vs_go: String::new(),
        }
    }

    pub fn pass(self, pass: bool) -> Reading {
        Reading {
            pass: Some(pass),
            ..self
        }
    }

    pub fn vs_go(self, vs_go: String) -> Reading {
        Reading { vs_go, ..self }
    }
}

#[derive(Serialize)]
pub struct Row {
    #[serde(rename = "measurement")]
    pub name: &'static str,
    pub value: String,
    pub target: &'static str,
    pub pass: Option<bool>,
    #[serde(rename = "go_runner")]
    pub go: &'static str,
    pub vs_go: String,
}

impl<T> Figure<T> {
    fn row(&self, results: &T) -> Row {
        let r = (self.read)(results);
        Row {
            name: self.name,
            value: r.value,
            target: self.target,
            pass: r.pass,
            go: self.go,
            vs_go: r.vs_go,
        }
    }
}

/// The rows of every measurement that was made, in the table's order, then
/// an `ERROR` row for each that could not be.
pub fn rows(results: &Results) -> Vec<Row> {
    let mut rows = Vec::new();
    add(&mut rows, &results.overhead, overhead::FIGURES);
    add(&mut rows, &results.overhead_tmpfs, overhead::TMPFS_FIGURES);
    add(&mut rows, &results.throughput, throughput::FIGURES);
    add(
        &mut rows,
        &results.throughput_tmpfs,
        throughput::TMPFS_FIGURES,
    );
    add(&mut rows, &results.logs, logs::FIGURES);
    add(&mut rows, &results.idle, idle::RSS_FIGURES);
    add(&mut rows, &results.peak, peak::FIGURES);
    add(&mut rows, &results.idle, idle::CPU_FIGURES);
    add(&mut rows, &results.signing, signing::FIGURES);
    add(&mut rows, &results.startup, startup::FIGURES);
    add(&mut rows, &results.first_line, crate::first_line::FIGURES);
    add(&mut rows, &results.fs, fs::FIGURES);
    for (name, error) in results.errors() {
        rows.push(Row {
            name: "ERROR",
            // As JSON: quoted, escaped.
            value: format!("{name}: {}", Value::from(error)),
            target: "-",
            pass: Some(false),
            go: "-",
            vs_go: String::new(),
        });
    }
    rows
}

fn add<T>(rows: &mut Vec<Row>, outcome: &Option<Outcome<T>>, figures: &[Figure<T>]) {
    if let Some(Outcome::Done { result, .. }) = outcome {
        rows.extend(figures.iter().map(|f| f.row(result)));
    }
}

pub fn print(rows: &[Row]) {
    let header = [
        "measurement",
        "value",
        "target",
        "pass",
        "Go runner",
        "vs Go",
    ];
    println!();
    println!("| {} |", header.join(" | "));
    println!("|{}|", ["---"; 6].join("|"));
    for r in rows {
        let pass = match r.pass {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => "-",
        };
        let cells = [r.name, &r.value, r.target, pass, r.go, &r.vs_go];
        println!("| {} |", cells.join(" | "));
    }
    println!();
}
