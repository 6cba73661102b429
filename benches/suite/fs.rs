//! Context: what creating a small file costs here, in the temp directory
//! and on tmpfs.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::dirs::{fs_type, temp_dir};
use crate::stats::{fig, Stats};
use crate::table::{Figure, Reading};
use crate::Res;

#[derive(Serialize)]
pub struct FsResult {
    pub temp_dir: FileCreate,
    pub tmpfs: Option<FileCreate>,
    pub note: &'static str,
}

#[derive(Serialize)]
pub struct FileCreate {
    pub dir_fs: String,
    pub us_per_file: Option<Stats>,
}

pub fn run(shm: Option<&Path>) -> Res<FsResult> {
    Ok(FsResult {
        temp_dir: file_create_us(None)?,
        tmpfs: shm.map(|s| file_create_us(Some(s))).transpose()?,
        note: "context, not a target: the runner creates about ten files and directories per execution",
    })
}

/// Microseconds per create+write+close of a small file, in a fresh directory
/// under `base`; 5 rounds of 200.
fn file_create_us(base: Option<&Path>) -> Res<FileCreate> {
    let dir = temp_dir(base)?;
    let mut per = Vec::new();
    for round in 0..5 {
        let t0 = Instant::now();
        for i in 0..200 {
            let mut f =
                fs::File::create(dir.join(format!("f-{round}-{i}"))).map_err(|e| e.to_string())?;
            f.write_all(b"{}").map_err(|e| e.to_string())?;
        }
        per.push(t0.elapsed().as_secs_f64() * 1e6 / 200.0);
    }
    Ok(FileCreate {
        dir_fs: fs_type(&dir),
        us_per_file: Stats::of(&per),
    })
}

pub const FIGURES: &[Figure<FsResult>] = &[Figure {
    name: "   context: create a small file",
    target: "-",
    go: "-",
    read: |x| {
        let us = |c: Option<&FileCreate>| c.map_or(f64::NAN, |c| fig(&c.us_per_file, |s| s.median));
        Reading::value(format!(
            "{:.0} us in the temp dir ({}), {:.0} us on tmpfs",
            us(Some(&x.temp_dir)),
            x.temp_dir.dir_fs,
            us(x.tmpfs.as_ref())
        ))
    },
}];
