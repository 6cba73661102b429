//! The admin API under `/admin`: how tests and people drive the dev server.
//! JSON in and out, no authentication (it is a development tool on loopback).

use std::time::Instant;

use serde::Deserialize;
use serde_json::json;

use super::app::App;
use super::faults::{Fault, FaultSpec};
use super::http::{error, Incoming, Reply};
use super::state::{now_rfc3339, NewExecution, PollOverride};

/// `POST /admin/poll-responses` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PollOverrideSpec {
    #[serde(default = "ok_status")]
    status: u16,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    huge_bytes: Option<u64>,
}

fn ok_status() -> u16 {
    200
}

/// Handles `/admin/...`; `segments` come after `admin`.
pub fn handle(app: &App, inc: &Incoming, segments: &[String]) -> Reply {
    if inc.too_large {
        return error(413, "request body over 64 MiB");
    }
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    match (inc.method.as_str(), s.as_slice()) {
        ("POST", ["executions"]) => enqueue(app, inc),
        ("GET", ["executions"]) => Reply::Json(200, app.lock().executions_json()),
        ("GET", ["executions", id]) => match app.lock().execution(id) {
            Some(e) => Reply::Json(200, e.detail_json()),
            None => error(404, format!("execution {id:?} not found")),
        },
        ("POST", ["executions", id, "cancel"]) => cancel(app, id),
        ("GET", ["runners"]) => Reply::Json(200, app.lock().runners_json()),
        ("GET", ["requests"]) => Reply::Json(200, app.lock().requests_json()),
        ("POST", ["poll-responses"]) => queue_poll_response(app, inc),
        ("GET", ["poll-responses"]) => {
            Reply::Json(200, json!({"queued": app.lock().poll_overrides.len()}))
        }
        ("DELETE", ["poll-responses"]) => {
            app.lock().poll_overrides.clear();
            Reply::Json(200, json!({"queued": 0}))
        }
        ("POST", ["faults"]) => set_fault(app, inc),
        ("GET", ["faults"]) => Reply::Json(200, app.lock().faults.to_json(Instant::now())),
        ("DELETE", ["faults"]) => {
            app.lock().faults.clear();
            Reply::Json(200, json!([]))
        }
        (_, path) if known_path(path) => error(
            405,
            format!("method {} not allowed on {}", inc.method, inc.path),
        ),
        _ => error(404, format!("no admin route {}", inc.path)),
    }
}

fn known_path(path: &[&str]) -> bool {
    matches!(
        path,
        ["executions"]
            | ["executions", _]
            | ["executions", _, "cancel"]
            | ["runners"]
            | ["requests"]
            | ["poll-responses"]
            | ["faults"]
    )
}

fn parse<T: serde::de::DeserializeOwned>(inc: &Incoming) -> Result<T, Reply> {
    inc.json()
        .and_then(|v| serde_json::from_value(v).map_err(|e| format!("bad request body: {e}")))
        .map_err(|why| error(400, why))
}

fn enqueue(app: &App, inc: &Incoming) -> Reply {
    let spec: NewExecution = match parse(inc) {
        Ok(s) => s,
        Err(reply) => return reply,
    };
    if let Some(code) = spec.claim_status {
        if !(100..=599).contains(&code) {
            return error(400, format!("claim_status {code} is not an HTTP status"));
        }
    }
    let queued = app.lock().enqueue(spec, &now_rfc3339());
    match queued {
        Ok((id, flo_id)) => {
            app.work.notify_all();
            log::info!("enqueued execution {id} (flow {flo_id})");
            Reply::Json(201, json!({"id": id, "flo_id": flo_id}))
        }
        Err(why) => error(409, why),
    }
}

fn cancel(app: &App, id: &str) -> Reply {
    let mut st = app.lock();
    let Some(e) = st.execution_mut(id) else {
        return error(404, format!("execution {id:?} not found"));
    };
    // A finished execution keeps its real outcome.
    if e.status != super::state::Status::Completed {
        e.completion_status = flo_protocol::protocol::COMPLETION_CANCEL.to_string();
    }
    Reply::Json(200, e.summary_json())
}

fn queue_poll_response(app: &App, inc: &Incoming) -> Reply {
    let spec: PollOverrideSpec = match parse(inc) {
        Ok(s) => s,
        Err(reply) => return reply,
    };
    if !(100..=599).contains(&spec.status) {
        return error(400, format!("status {} is not an HTTP status", spec.status));
    }
    let forced = match (spec.body, spec.huge_bytes) {
        (Some(body), None) => PollOverride::Raw(spec.status, body),
        (None, Some(n)) => PollOverride::Huge(spec.status, n),
        _ => return error(400, "give exactly one of body and huge_bytes"),
    };
    let mut st = app.lock();
    st.poll_overrides.push_back(forced);
    Reply::Json(201, json!({"queued": st.poll_overrides.len()}))
}

fn set_fault(app: &App, inc: &Incoming) -> Reply {
    let spec: FaultSpec = match parse(inc) {
        Ok(s) => s,
        Err(reply) => return reply,
    };
    let now = Instant::now();
    match Fault::new(spec, now) {
        Ok(fault) => {
            let mut st = app.lock();
            st.faults.set(fault);
            Reply::Json(200, st.faults.to_json(now))
        }
        Err(why) => error(400, why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::time::Duration;

    fn body(reply: &Reply) -> &Value {
        match reply {
            Reply::Json(_, v) => v,
            other => panic!("not JSON: {other:?}"),
        }
    }

    fn call(app: &App, method: &str, path: &str, body: Value) -> Reply {
        let bytes = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        let inc = Incoming::new(method, path, None, &bytes);
        let segs = inc.segments();
        handle(app, &inc, &segs[1..])
    }

    #[test]
    fn enqueue_show_cancel() {
        let app = App::new("c", Duration::ZERO);
        let r = call(
            &app,
            "POST",
            "/admin/executions",
            json!({"flow": {}, "execution_id": "../x"}),
        );
        assert_eq!(r.status(), Some(201));
        assert_eq!(body(&r)["id"], "../x");
        let dup = call(
            &app,
            "POST",
            "/admin/executions",
            json!({"flow": {}, "execution_id": "../x"}),
        );
        assert_eq!(dup.status(), Some(409));
        let shown = call(&app, "GET", "/admin/executions/..%2Fx", Value::Null);
        assert_eq!(body(&shown)["status"], "pending");
        assert_eq!(body(&shown)["results"], json!([]));
        let c = call(&app, "POST", "/admin/executions/..%2Fx/cancel", Value::Null);
        assert_eq!(body(&c)["completion_status"], "cancel");
        assert_eq!(
            call(&app, "GET", "/admin/executions/nope", Value::Null).status(),
            Some(404)
        );
        assert_eq!(
            call(&app, "PUT", "/admin/executions", Value::Null).status(),
            Some(405)
        );
        assert_eq!(
            call(&app, "POST", "/admin/executions", json!({"no_flow": 1})).status(),
            Some(400)
        );
    }

    #[test]
    fn poll_responses_need_one_kind() {
        let app = App::new("c", Duration::ZERO);
        let both = json!({"body": "x", "huge_bytes": 5});
        assert_eq!(
            call(&app, "POST", "/admin/poll-responses", both).status(),
            Some(400)
        );
        let ok = call(
            &app,
            "POST",
            "/admin/poll-responses",
            json!({"huge_bytes": 5}),
        );
        assert_eq!(ok.status(), Some(201));
        assert_eq!(
            app.lock().poll_overrides.front(),
            Some(&PollOverride::Huge(200, 5))
        );
    }

    #[test]
    fn faults_set_and_clear() {
        let app = App::new("c", Duration::ZERO);
        let bad = call(&app, "POST", "/admin/faults", json!({"route": "x"}));
        assert_eq!(bad.status(), Some(400));
        let set = call(
            &app,
            "POST",
            "/admin/faults",
            json!({"route": "poll", "error_rate": 1}),
        );
        assert_eq!(body(&set)[0]["route"], "poll");
        let cleared = call(&app, "DELETE", "/admin/faults", Value::Null);
        assert_eq!(body(&cleared), &json!([]));
    }
}
