//! Fault injection on the runner routes, so the runner's retry and recovery
//! paths can be tested against a real server. Off until an admin asks.
//!
//! A fault is decided before the handler runs. An error or a drop changes
//! nothing on the server: the runner must be able to repeat it safely. A
//! lost answer is the opposite case: the request takes effect and then the
//! connection closes without an answer, as when a 2xx is lost on the way
//! back: the runner cannot know, and must not make it take effect twice.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Value};

use super::routes::RunnerRoute;

/// `POST /admin/faults` body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// A runner route name, or `*` for every runner route without its own fault.
    pub route: String,
    #[serde(default)]
    pub error_rate: f64,
    #[serde(default = "default_error_status")]
    pub error_status: u16,
    #[serde(default)]
    pub drop_rate: f64,
    /// Run the request, then close without answering.
    #[serde(default)]
    pub lose_answer_rate: f64,
    /// Answer 413 to a request whose body is longer than this (an API's
    /// request size limit), whatever the rates say.
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    #[serde(default)]
    pub delay_ms: u64,
    #[serde(default)]
    pub down_for_ms: u64,
}

fn default_error_status() -> u16 {
    500
}

/// A validated fault with its outage turned into a deadline.
#[derive(Debug, Clone)]
pub struct Fault {
    spec: FaultSpec,
    down_until: Option<Instant>,
}

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Proceed,
    /// Answer this status and do nothing else.
    Error(u16),
    /// Close without an HTTP answer.
    Drop,
    /// Handle the request, then close without an HTTP answer.
    LoseAnswer,
}

impl Action {
    /// The name recorded in the request log.
    pub fn label(self) -> Option<&'static str> {
        match self {
            Action::Proceed => None,
            Action::Error(_) => Some("error"),
            Action::Drop => Some("drop"),
            Action::LoseAnswer => Some("lost_answer"),
        }
    }
}

impl Fault {
    pub fn new(spec: FaultSpec, now: Instant) -> Result<Self, String> {
        if spec.route != "*" && RunnerRoute::parse(&spec.route).is_none() {
            return Err(format!(
                "unknown route {:?} (expected register, poll, state, logs, status, result or *)",
                spec.route
            ));
        }
        for (name, rate) in [
            ("error_rate", spec.error_rate),
            ("drop_rate", spec.drop_rate),
            ("lose_answer_rate", spec.lose_answer_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} {rate} is outside 0..1"));
            }
        }
        if !(100..=599).contains(&spec.error_status) {
            return Err(format!(
                "error_status {} is not an HTTP status",
                spec.error_status
            ));
        }
        let down_until =
            (spec.down_for_ms > 0).then(|| now + Duration::from_millis(spec.down_for_ms));
        Ok(Self { spec, down_until })
    }

    /// How long to stall first, then what to do. A body over the size
    /// limit is refused first; then an outage wins over the random error,
    /// which wins over the random drop.
    pub fn decide(&self, now: Instant, body_len: usize, rng: &mut impl Rng) -> (Duration, Action) {
        let delay = Duration::from_millis(self.spec.delay_ms);
        if self
            .spec
            .max_body_bytes
            .is_some_and(|max| body_len as u64 > max)
        {
            return (delay, Action::Error(413));
        }
        if self.down_until.is_some_and(|until| now < until) {
            return (delay, Action::Error(503));
        }
        if self.spec.error_rate > 0.0 && rng.gen_bool(self.spec.error_rate) {
            return (delay, Action::Error(self.spec.error_status));
        }
        if self.spec.drop_rate > 0.0 && rng.gen_bool(self.spec.drop_rate) {
            return (delay, Action::Drop);
        }
        if self.spec.lose_answer_rate > 0.0 && rng.gen_bool(self.spec.lose_answer_rate) {
            return (delay, Action::LoseAnswer);
        }
        (delay, Action::Proceed)
    }

    fn to_json(&self, now: Instant) -> Value {
        let down_left = self
            .down_until
            .map(|u| u.saturating_duration_since(now).as_millis() as u64)
            .unwrap_or(0);
        json!({
            "route": self.spec.route,
            "error_rate": self.spec.error_rate,
            "error_status": self.spec.error_status,
            "drop_rate": self.spec.drop_rate,
            "lose_answer_rate": self.spec.lose_answer_rate,
            "max_body_bytes": self.spec.max_body_bytes,
            "delay_ms": self.spec.delay_ms,
            "down_for_ms": self.spec.down_for_ms,
            "down_remaining_ms": down_left,
        })
    }
}

/// The faults in force, one per route name (`*` included).
#[derive(Debug, Default)]
pub struct Faults {
    by_route: BTreeMap<String, Fault>,
}

impl Faults {
    /// Replaces the fault for the spec's route.
    pub fn set(&mut self, fault: Fault) {
        self.by_route.insert(fault.spec.route.clone(), fault);
    }

    pub fn clear(&mut self) {
        self.by_route.clear();
    }

    /// The route's own fault, else the `*` one: a specific fault overrides
    /// the catch-all rather than adding to it.
    pub fn for_route(&self, route: RunnerRoute) -> Option<&Fault> {
        self.by_route
            .get(route.as_str())
            .or_else(|| self.by_route.get("*"))
    }

    pub fn to_json(&self, now: Instant) -> Value {
        Value::Array(self.by_route.values().map(|f| f.to_json(now)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn spec(v: Value) -> FaultSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn validation_names_the_bad_value() {
        let now = Instant::now();
        let e = Fault::new(spec(json!({"route": "nope"})), now).unwrap_err();
        assert!(e.contains("nope"), "{e}");
        let e = Fault::new(spec(json!({"route": "poll", "error_rate": 1.5})), now).unwrap_err();
        assert!(e.contains("error_rate"), "{e}");
        assert!(serde_json::from_value::<FaultSpec>(json!({"route": "poll", "typo": 1})).is_err());
    }

    #[test]
    fn certain_error_and_certain_drop() {
        let now = Instant::now();
        let mut rng = StdRng::seed_from_u64(7);
        let f = Fault::new(
            spec(json!({"route": "result", "error_rate": 1.0, "error_status": 502})),
            now,
        )
        .unwrap();
        assert_eq!(f.decide(now, 0, &mut rng).1, Action::Error(502));
        let f = Fault::new(
            spec(json!({"route": "result", "drop_rate": 1.0, "delay_ms": 5})),
            now,
        )
        .unwrap();
        assert_eq!(
            f.decide(now, 0, &mut rng),
            (Duration::from_millis(5), Action::Drop)
        );
        let f = Fault::new(spec(json!({"route": "result"})), now).unwrap();
        assert_eq!(f.decide(now, 0, &mut rng).1, Action::Proceed);
    }

    #[test]
    fn rates_are_roughly_honoured() {
        let now = Instant::now();
        let mut rng = StdRng::seed_from_u64(1);
        let f = Fault::new(spec(json!({"route": "*", "error_rate": 0.3})), now).unwrap();
        let errors = (0..10_000)
            .filter(|_| f.decide(now, 0, &mut rng).1 != Action::Proceed)
            .count();
        assert!((2_500..3_500).contains(&errors), "{errors}");
    }

    #[test]
    fn outage_ends() {
        let now = Instant::now();
        let mut rng = StdRng::seed_from_u64(1);
        let f = Fault::new(spec(json!({"route": "poll", "down_for_ms": 100})), now).unwrap();
        assert_eq!(f.decide(now, 0, &mut rng).1, Action::Error(503));
        let later = now + Duration::from_millis(101);
        assert_eq!(f.decide(later, 0, &mut rng).1, Action::Proceed);
    }

    #[test]
    fn specific_route_overrides_wildcard() {
        let now = Instant::now();
        let mut faults = Faults::default();
        faults.set(Fault::new(spec(json!({"route": "*", "error_rate": 1.0})), now).unwrap());
        faults.set(Fault::new(spec(json!({"route": "logs", "delay_ms": 1})), now).unwrap());
        let mut rng = StdRng::seed_from_u64(1);
        let logs = faults.for_route(RunnerRoute::Logs).unwrap();
        assert_eq!(logs.decide(now, 0, &mut rng).1, Action::Proceed);
        let poll = faults.for_route(RunnerRoute::Poll).unwrap();
        assert_eq!(poll.decide(now, 0, &mut rng).1, Action::Error(500));
        faults.clear();
        assert!(faults.for_route(RunnerRoute::Poll).is_none());
    }
}
