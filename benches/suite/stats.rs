//! Statistics of a sample, as every figure of the suite reports them.

use serde::{Serialize, Serializer};

/// Median, p5, p95 (nearest rank), min, max, mean and n of a sample.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    pub n: usize,
    pub median: f64,
    pub p5: f64,
    pub p95: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
}

impl Stats {
    /// `None` for an empty sample (serialised as `null`).
    pub fn of(values: &[f64]) -> Option<Stats> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let rank = |p: f64| v[((p / 100.0 * n as f64).ceil() as usize).clamp(1, n) - 1];
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stats {
            n,
            median,
            p5: rank(5.0),
            p95: rank(95.0),
            min: v[0],
            max: v[n - 1],
            mean: v.iter().sum::<f64>() / n as f64,
        })
    }

    /// The figures as results.json holds them (rounded to 1/1000), which is
    /// also what the table shows.
    pub fn rounded(&self) -> Stats {
        let r = |x: f64| (x * 1000.0).round() / 1000.0;
        Stats {
            n: self.n,
            median: r(self.median),
            p5: r(self.p5),
            p95: r(self.p95),
            min: r(self.min),
            max: r(self.max),
            mean: r(self.mean),
        }
    }
}

impl Serialize for Stats {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Figures {
            n: usize,
            median: f64,
            p5: f64,
            p95: f64,
            min: f64,
            max: f64,
            mean: f64,
        }
        let s = self.rounded();
        Figures {
            n: s.n,
            median: s.median,
            p5: s.p5,
            p95: s.p95,
            min: s.min,
            max: s.max,
            mean: s.mean,
        }
        .serialize(serializer)
    }
}

/// One figure of an optional sample, as shown: NaN when there was no sample.
pub fn fig(stats: &Option<Stats>, pick: fn(&Stats) -> f64) -> f64 {
    stats.map_or(f64::NAN, |s| pick(&s.rounded()))
}
