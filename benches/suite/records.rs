//! The dev server's request log (`GET /admin/requests`), typed: what the
//! bench reads of each request a runner made.

use serde::Deserialize;
use serde_json::Value;

use crate::Res;

#[derive(Clone, Debug, Deserialize)]
pub struct Record {
    #[serde(default)]
    pub seq: u64,
    /// Milliseconds since the server started, truncated, on arrival.
    #[serde(default)]
    pub at_ms: f64,
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub route: String,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub signature: Option<String>,
}

impl Record {
    pub fn from_json(values: Vec<Value>) -> Res<Vec<Record>> {
        values
            .into_iter()
            .map(|v| serde_json::from_value(v).map_err(|e| format!("a request record: {e}")))
            .collect()
    }

    /// The execution id in `/api/v1/execution/{id}[/...]`.
    pub fn execution(&self) -> Option<&str> {
        let rest = self.path.strip_prefix("/api/v1/execution/")?;
        Some(rest.split('/').next().unwrap_or(rest))
    }

    /// On `route` for execution `id`.
    pub fn is(&self, route: &str, id: &str) -> bool {
        self.route == route && self.execution() == Some(id)
    }
}
