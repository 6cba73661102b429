//! The HTTP shapes the handlers work with, kept apart from `tiny_http` so the
//! handlers are plain functions from a request value to a reply value.

use serde_json::{json, Value};

/// Largest request body read; anything bigger is answered 413 unread.
pub const MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;

/// One request, already read off the socket.
#[derive(Debug, Clone, Default)]
pub struct Incoming {
    pub method: String,
    /// The path without the query string (no route reads one), still
    /// percent-encoded.
    pub path: String,
    /// The `X-Flomation-Runner-Signature` header.
    pub signature: Option<String>,
    pub body: Vec<u8>,
    /// The body was over [`MAX_BODY_BYTES`] and was not read.
    pub too_large: bool,
    pub remote: Option<String>,
}

impl Incoming {
    /// Builds a request; the path may carry a query string.
    pub fn new(method: &str, url: &str, signature: Option<&str>, body: &[u8]) -> Self {
        let url = origin_form(url);
        let path = url.split_once('?').map_or(url, |(path, _)| path);
        Self {
            method: method.to_ascii_uppercase(),
            path: path.to_string(),
            signature: signature.map(str::to_string),
            body: body.to_vec(),
            too_large: false,
            remote: None,
        }
    }

    /// Path segments, each percent-decoded after splitting, so an encoded
    /// `/` (`%2F`) stays inside its segment: admin tests use ids like `../x`.
    pub fn segments(&self) -> Vec<String> {
        self.path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(percent_decode)
            .collect()
    }

    /// The body parsed as JSON, with a message that says why not.
    pub fn json(&self) -> Result<Value, String> {
        if self.body.is_empty() {
            return Err("the request body is empty (JSON expected)".to_string());
        }
        serde_json::from_slice(&self.body).map_err(|e| format!("the body is not valid JSON: {e}"))
    }
}

/// What a handler answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Json(u16, Value),
    Empty(u16),
    /// A raw body sent as is (queued poll overrides).
    Raw(u16, String),
    /// A `text/plain` body (what gin answers for a route it does not have).
    Text(u16, String),
    /// `n` bytes of JSON-looking, never-valid text, generated while writing.
    Huge(u16, u64),
    /// No HTTP answer at all (fault injection).
    Drop,
}

impl Reply {
    /// The status for the request log; `None` when nothing was answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Reply::Json(s, _)
            | Reply::Empty(s)
            | Reply::Raw(s, _)
            | Reply::Text(s, _)
            | Reply::Huge(s, _) => Some(*s),
            Reply::Drop => None,
        }
    }
}

/// `{"error": why}` with `status`.
pub fn error(status: u16, why: impl Into<String>) -> Reply {
    Reply::Json(status, json!({ "error": why.into() }))
}

/// What the older API (gin, PROTOCOL.md §9) answers for a path or method it
/// has no route for, byte for byte.
pub fn gin_not_found() -> Reply {
    Reply::Text(404, "404 page not found".to_string())
}

/// Decodes `%XX` escapes; an invalid escape is kept literally, and bytes that
/// are not UTF-8 are replaced, because an id is only ever compared, never trusted.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Encodes everything but RFC 3986 unreserved characters, so any id fits in
/// one path segment.
pub fn percent_encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The path and query of a request target. A client talking through an
/// HTTP proxy sends the absolute form (`http://host:port/path`, RFC 9112
/// §3.2.2), which a server must accept as well as `/path`.
fn origin_form(target: &str) -> &str {
    let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
    let rest = if lower.starts_with("http://") {
        &target[7..]
    } else if lower.starts_with("https://") {
        &target[8..]
    } else {
        return target;
    };
    match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => &rest[i..],
        // `http://host?q` or `http://host`: the path is `/`.
        Some(_) | None => "/",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_decode_after_splitting() {
        let r = Incoming::new("get", "/admin/executions/..%2Fx?a=b", None, b"");
        assert_eq!(r.segments(), ["admin", "executions", "../x"]);
        assert_eq!(r.method, "GET");
    }

    #[test]
    fn absolute_form_targets_are_routed_by_their_path() {
        let r = Incoming::new("post", "http://127.0.0.1:8080/api/v1/runner?x=1", None, b"");
        assert_eq!(r.path, "/api/v1/runner");
        let r = Incoming::new("get", "HTTPS://api.example/admin/executions", None, b"");
        assert_eq!(r.segments(), ["admin", "executions"]);
        assert_eq!(Incoming::new("get", "http://host", None, b"").path, "/");
        assert_eq!(Incoming::new("get", "/plain", None, b"").path, "/plain");
    }

    #[test]
    fn percent_round_trip_and_bad_escapes() {
        for s in ["../x", "a b/c%d", "plain-id", "ü"] {
            assert_eq!(percent_decode(&percent_encode_segment(s)), s);
        }
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%41"), "A");
    }
}
