//! The runner's log lines: text (`[time LEVEL] message`) or JSON lines
//! (`FLO_LOG_FORMAT=json`), on stderr. Every message passes one filter on
//! the way out, so no call site can forget it:
//! - secrets registered at start-up (the registration code, passwords in
//!   URLs) are replaced by `[redacted]`, wherever they appear (an API error
//!   that echoes the registration request, a URL with userinfo);
//! - control characters are escaped (`\n`, `\u{1b}`...), so a value from
//!   the network or a flow (an execution id with a newline) cannot forge a
//!   log line or drive a terminal.

use std::borrow::Cow;
use std::io::Write;
use std::sync::RwLock;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

pub const REDACTED: &str = "[redacted]";

/// Starts logging (call once). `RUST_LOG` sets the level (default info).
pub fn init() {
    let json = std::env::var("FLO_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(move |buf, record| {
            let msg = clean(&record.args().to_string()).into_owned();
            if json {
                let line = serde_json::json!({
                    "ts": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                    "level": record.level().as_str(),
                    "target": record.target(),
                    "msg": msg,
                });
                writeln!(buf, "{line}")
            } else {
                let ts = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
                writeln!(buf, "[{ts} {:<5}] {msg}", record.level())
            }
        })
        .init();
}

/// Never logs `secret` (shorter than 4 bytes: not worth hiding, and it
/// would blank ordinary words).
pub fn add_secret(secret: &str) {
    if secret.len() < 4 {
        return;
    }
    let mut secrets = SECRETS
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !secrets.iter().any(|s| s == secret) {
        secrets.push(secret.to_string());
        // Longest first, so a secret that contains another is hidden whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// Never logs the userinfo of `url` (`user:password@`), nor the password.
pub fn add_url_secrets(url: &str) {
    let Some(rest) = url.split_once("://").map(|(_, r)| r) else {
        return;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let Some((userinfo, _)) = authority.rsplit_once('@') else {
        return;
    };
    add_secret(userinfo);
    if let Some((_, password)) = userinfo.split_once(':') {
        add_secret(password);
    }
}

/// `text` with secrets redacted and control characters escaped.
pub fn clean(text: &str) -> Cow<'_, str> {
    let secrets = SECRETS
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut out = Cow::Borrowed(text);
    for s in secrets.iter() {
        if out.contains(s.as_str()) {
            out = Cow::Owned(out.replace(s.as_str(), REDACTED));
        }
    }
    if out.chars().any(|c| c.is_control()) {
        let mut escaped = String::with_capacity(out.len() + 8);
        for c in out.chars() {
            match c {
                '\n' => escaped.push_str("\\n"),
                '\r' => escaped.push_str("\\r"),
                '\t' => escaped.push_str("\\t"),
                c if c.is_control() => escaped.push_str(&format!("\\u{{{:x}}}", c as u32)),
                c => escaped.push(c),
            }
        }
        out = Cow::Owned(escaped);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_and_control_characters_escaped() {
        add_secret("code-1234-secret");
        add_url_secrets("http://alice:s3cr3t-pw@proxy.example:3128/x");
        let line = clean("HTTP 400: {\"registration_code\":\"code-1234-secret\"} via http://alice:s3cr3t-pw@proxy.example:3128");
        assert!(
            !line.contains("code-1234-secret") && !line.contains("s3cr3t-pw"),
            "{line}"
        );
        assert!(line.contains("[redacted]@proxy.example"), "{line}");
        assert_eq!(
            clean("id a\nforged [ERROR] b\u{1b}[31m"),
            "id a\\nforged [ERROR] b\\u{1b}[31m"
        );
        assert!(matches!(clean("plain"), Cow::Borrowed(_)));
    }
}
