//! The machine's limit for the runner's work in a throughput round: 8
//! threads creating the execution directories and files, spawning and
//! reaping the executor, and signing, with no HTTP, fsync, journal or outbox.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use flo_protocol::signing::Signer;

use crate::dirs::temp_dir;
use crate::executor::{self, ExecFiles};
use crate::Res;

/// The work of one round: `executions` runs of the executor and
/// `signatures` RSA signatures in all (spread evenly over the executions).
pub struct Work<'a> {
    pub files: &'a ExecFiles,
    pub executions: usize,
    pub signatures: usize,
}

/// Executions per second for `work` on 8 threads.
pub fn round(signer: &Signer, work: &Work, base: Option<&Path>) -> Res<f64> {
    let root = temp_dir(base)?;
    let next = AtomicUsize::new(0);
    let message = vec![b'x'; 400];
    let (n, signatures) = (work.executions, work.signatures);
    let t0 = Instant::now();
    let errors: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| -> Res<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return Ok(());
                        }
                        executor::run_directly(&root, i, work.files)?;
                        let sigs = signatures * (i + 1) / n - signatures * i / n;
                        for _ in 0..sigs {
                            signer.sign_hex(&message).map_err(|e| e.to_string())?;
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .filter_map(|w| {
                w.join()
                    .map_err(|_| "panic".to_string())
                    .and_then(|r| r)
                    .err()
            })
            .collect()
    });
    if let Some(e) = errors.first() {
        return Err(e.clone());
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}
