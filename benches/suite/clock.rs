//! One clock for the bench and the dev server: the bench's monotonic
//! milliseconds, and the calibration that maps the server's request
//! timestamps onto them.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::server::Server;
use crate::Res;

/// The bench clock's origin (CLOCK_MONOTONIC, as the dev server's
/// `Instant`s are); fixed by the first call.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Milliseconds on the bench's clock.
pub fn now_ms() -> f64 {
    ms_at(Instant::now())
}

/// An `Instant` on the bench's clock, in milliseconds.
pub fn ms_at(t: Instant) -> f64 {
    t.saturating_duration_since(origin()).as_secs_f64() * 1000.0
}

/// Server clock minus bench clock, ms, and how far off it may be.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Calibration {
    pub offset_ms: f64,
    pub uncertainty_ms: f64,
}

/// Probes per calibration.
pub const PROBES: usize = 48;

/// Maps the dev server's request clock (`at_ms`: whole milliseconds since
/// it started, truncated) onto the bench clock. Each probe is a request on
/// an unknown route, which the server records with its `at_ms`; the arrival
/// lies between the bench's send and receive times, so
/// `at_ms - recv <= offset < at_ms + 1 - send`. Intersecting the bounds of
/// many probes (sent at scattered sub-millisecond phases) pins the offset to
/// a fraction of a millisecond; the midpoint is used. `round` keeps each
/// calibration's probes apart.
pub fn calibrate(server: &Server, round: usize) -> Res<Calibration> {
    let tag = format!("/bench-probe-{round}");
    let mut sent = Vec::with_capacity(PROBES);
    for k in 0..PROBES {
        std::thread::sleep(Duration::from_micros(((k * 379) % 1000) as u64 + 50));
        let t0 = now_ms();
        // An unknown route: the answer is an error, and only its timing counts.
        let _ = server.kit.client().call("GET", &format!("{tag}/{k}"), None);
        let t1 = now_ms();
        sent.push((t0, t1));
    }
    let (mut lo, mut hi) = (f64::NEG_INFINITY, f64::INFINITY);
    for r in server.requests_after(0)? {
        let Some(k) = r
            .path
            .strip_prefix(&format!("{tag}/"))
            .and_then(|k| k.parse::<usize>().ok())
        else {
            continue;
        };
        let Some(&(t0, t1)) = sent.get(k) else {
            continue;
        };
        lo = lo.max(r.at_ms - t1);
        hi = hi.min(r.at_ms + 1.0 - t0);
    }
    if !(lo.is_finite() && hi.is_finite()) || lo > hi {
        return Err(format!("clock calibration failed ({lo}, {hi})"));
    }
    Ok(Calibration {
        offset_ms: (lo + hi) / 2.0,
        uncertainty_ms: (hi - lo) / 2.0,
    })
}
