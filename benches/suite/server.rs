//! The dev server as the bench drives it: flo-testkit's [`DevServer`]
//! holding each poll 25 s, its request timestamps mapped onto the bench
//! clock, and admin calls that report errors instead of panicking.

use std::fs;
use std::process::Stdio;
use std::time::{Duration, Instant};

use flo_testkit::DevServer;
use serde_json::{json, Value};

use crate::clock::{self, now_ms, Calibration};
use crate::dirs;
use crate::records::Record;
use crate::Res;

const LONG_POLL_SECS: &str = "25";

pub struct Server {
    pub kit: DevServer,
    pub clock: Calibration,
    calibrations: usize,
}

/// An enqueued execution: its id, and the bench time just before the
/// request went out and just after the answer came back.
pub struct Enqueued {
    pub id: String,
    pub sent: f64,
    pub answered: f64,
}

impl Server {
    /// A fresh `flo-devserver` (its warnings in a `devserver.log` of its
    /// own), calibrated.
    pub fn start() -> Res<Server> {
        let dir = dirs::temp_dir(None)?;
        let log = fs::File::create(dir.join("devserver.log"))
            .map_err(|e| format!("{}: {e}", dir.join("devserver.log").display()))?;
        let kit = DevServer::start_logged(&["--long-poll-secs", LONG_POLL_SECS], Stdio::from(log));
        let mut server = Server {
            kit,
            clock: Calibration {
                offset_ms: 0.0,
                uncertainty_ms: f64::INFINITY,
            },
            calibrations: 0,
        };
        server.clock = server.calibrate()?;
        Ok(server)
    }

    /// A new calibration (the current one stays until the caller picks).
    pub fn calibrate(&mut self) -> Res<Calibration> {
        let c = clock::calibrate(self, self.calibrations)?;
        self.calibrations += 1;
        Ok(c)
    }

    /// A server `at_ms` on the bench clock.
    pub fn to_bench(&self, at_ms: f64) -> f64 {
        at_ms - self.clock.offset_ms
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Res<Value> {
        self.kit
            .client()
            .call(method, path, body)
            .map_err(|e| e.to_string())
    }

    pub fn post(&self, path: &str, body: &Value) -> Res<Value> {
        self.call("POST", path, Some(body))
    }

    /// Enqueues `flow` with `trigger` as its trigger data.
    pub fn enqueue(&self, flow: &Value, trigger: &Value) -> Res<Enqueued> {
        let body = json!({ "flow": flow, "trigger_data": trigger });
        let sent = now_ms();
        let id = self
            .kit
            .client()
            .enqueue(&body)
            .map_err(|e| e.to_string())?;
        let answered = now_ms();
        Ok(Enqueued { id, sent, answered })
    }

    pub fn execution(&self, id: &str) -> Res<Value> {
        self.kit.client().show(id).map_err(|e| e.to_string())
    }

    /// The execution list (small, while an execution's own record grows with
    /// its log lines).
    pub fn executions(&self) -> Res<Vec<Value>> {
        match self.kit.client().list().map_err(|e| e.to_string())? {
            Value::Array(a) => Ok(a),
            other => Err(format!("executions: {other}")),
        }
    }

    /// Waits for the execution's result, asking every `every`.
    pub fn wait_completed(&self, id: &str, limit: Duration, every: Duration) -> Res<()> {
        self.wait(id, limit, every, || {
            Ok(self.execution(id)?["status"] == "completed")
        })
    }

    /// Like `wait_completed`, but watching the execution list.
    pub fn wait_listed_completed(&self, id: &str, limit: Duration, every: Duration) -> Res<()> {
        self.wait(id, limit, every, || {
            Ok(self
                .executions()?
                .iter()
                .any(|e| e["id"] == id && e["status"] == "completed"))
        })
    }

    fn wait(
        &self,
        id: &str,
        limit: Duration,
        every: Duration,
        mut done: impl FnMut() -> Res<bool>,
    ) -> Res<()> {
        let deadline = Instant::now() + limit;
        loop {
            if done()? {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("execution {id} not completed within {limit:?}"));
            }
            std::thread::sleep(every);
        }
    }

    /// Request records with `seq` above `after`.
    pub fn requests_after(&self, after: u64) -> Res<Vec<Record>> {
        let all = self.kit.client().requests().map_err(|e| e.to_string())?;
        let mut records = Record::from_json(all)?;
        records.retain(|r| r.seq > after);
        Ok(records)
    }

    pub fn max_seq(&self) -> Res<u64> {
        Ok(self
            .requests_after(0)?
            .iter()
            .map(|r| r.seq)
            .max()
            .unwrap_or(0))
    }
}
