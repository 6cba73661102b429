//! How the runner reaches the API: TLS roots and client certificate, and the
//! proxy. Built once at start-up from the configuration and the environment.
//!
//! - Roots: the system's CA store (falling back to the Mozilla roots when the
//!   system has none, e.g. a slim container), plus `tls.ca_cert` when set.
//! - Client certificate: `tls.cert`/`tls.key` when `tls.enabled` (the Go
//!   runner only passed them to the executor; we also use them ourselves).
//! - Proxy: `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY` (either case), unless
//!   `NO_PROXY` names the API host. ureq reads the proxy variables but not
//!   `NO_PROXY`; since every request goes to the one API host, deciding once
//!   here is exact.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{key}: cannot use {path}: {why}")]
    File {
        key: &'static str,
        path: String,
        why: String,
    },
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("{var}: {value:?} is not a usable proxy: {why}")]
    Proxy {
        var: String,
        value: String,
        why: String,
    },
}

/// Network settings shared by every agent.
#[derive(Clone)]
pub struct Net {
    pub tls: Arc<rustls::ClientConfig>,
    pub proxy: Option<ureq::Proxy>,
    /// For the log: which proxy, if any.
    pub proxy_url: Option<String>,
}

impl Net {
    pub fn from_config(
        config: &Config,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, NetError> {
        let tls = client_config(config)?;
        let proxy_url = proxy_for(&config.runner.url, env);
        let proxy = match &proxy_url {
            None => None,
            Some((var, value)) => Some(ureq::Proxy::new(value).map_err(|e| NetError::Proxy {
                var: var.clone(),
                value: value.clone(),
                why: e.to_string(),
            })?),
        };
        Ok(Self {
            tls,
            proxy,
            proxy_url: proxy_url.map(|(_, v)| redact(&v)),
        })
    }

    /// Plain defaults (system roots, no proxy), for tools and tests.
    pub fn system() -> Self {
        let mut roots = RootCertStore::empty();
        add_system_roots(&mut roots);
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth());
        let tls = match tls {
            Ok(t) => t,
            // The ring provider supports the default versions; unreachable in practice.
            Err(_) => rustls::ClientConfig::builder()
                .with_root_certificates(RootCertStore::empty())
                .with_no_client_auth(),
        };
        Self {
            tls: Arc::new(tls),
            proxy: None,
            proxy_url: None,
        }
    }
}

fn add_system_roots(roots: &mut RootCertStore) {
    let found = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
}

fn is_plain_http(url: &str) -> bool {
    url.get(..7)
        .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
}

fn client_config(config: &Config) -> Result<Arc<rustls::ClientConfig>, NetError> {
    let tls = &config.tls;
    let mut roots = RootCertStore::empty();
    // Reading the system store (every file in /etc/ssl/certs) is a few ms of
    // start-up that a plain-HTTP API never uses.
    if !is_plain_http(&config.runner.url) {
        add_system_roots(&mut roots);
    }
    if let Some(ca_cert) = &tls.ca_cert {
        let certs = read_certs("tls.ca_cert", ca_cert)?;
        for cert in certs {
            roots.add(cert).map_err(|e| NetError::File {
                key: "tls.ca_cert",
                path: ca_cert.display().to_string(),
                why: e.to_string(),
            })?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| NetError::Tls(e.to_string()))?
    .with_root_certificates(roots);
    let client_cert = tls
        .cert
        .as_ref()
        .zip(tls.key.as_ref())
        .filter(|_| tls.enabled);
    let config = if let Some((cert_path, key_path)) = client_cert {
        let certs = read_certs("tls.cert", cert_path)?;
        let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| NetError::File {
            key: "tls.key",
            path: key_path.display().to_string(),
            why: format!("not a PEM private key ({e})"),
        })?;
        builder
            .with_client_auth_cert(certs, key)
            .map_err(|e| NetError::File {
                key: "tls.cert",
                path: cert_path.display().to_string(),
                why: format!("does not go with tls.key ({e})"),
            })?
    } else {
        if tls.enabled {
            log::warn!("tls.enabled is true but tls.cert or tls.key is empty: no client certificate will be presented");
        }
        builder.with_no_client_auth()
    };
    Ok(Arc::new(config))
}

fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, NetError> {
    let fail = |why: String| NetError::File {
        key,
        path: path.display().to_string(),
        why,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("not PEM certificates ({e})")))?;
    if certs.is_empty() {
        return Err(fail("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// The proxy to use for `url`, as (variable, value), honouring `NO_PROXY`.
pub fn proxy_for(url: &str, env: &dyn Fn(&str) -> Option<String>) -> Option<(String, String)> {
    let get = |name: &str| {
        [name.to_string(), name.to_ascii_lowercase()]
            .into_iter()
            .find_map(|n| env(&n).filter(|v| !v.trim().is_empty()).map(|v| (n, v)))
    };
    let (scheme, rest) = url.split_once("://")?;
    let host = host_of(rest);
    if let Some((_, no_proxy)) = get("NO_PROXY") {
        if bypass(&host, &no_proxy) {
            return None;
        }
    }
    match scheme {
        "https" => get("HTTPS_PROXY"),
        _ => get("HTTP_PROXY"),
    }
    .or_else(|| get("ALL_PROXY"))
}

/// A proxy URL without its credentials, for logs.
fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((_, host)) => {
            let prefix = if scheme.is_empty() {
                String::new()
            } else {
                format!("{scheme}://")
            };
            format!("{prefix}***@{host}{}", &rest[authority_end..])
        }
        None => url.to_string(),
    }
}

/// `user@host:port/path` → `host` (IPv6 without brackets).
fn host_of(rest: &str) -> String {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or("").to_ascii_lowercase();
    }
    authority
        .split(':')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// `NO_PROXY`: comma-separated hosts or domain suffixes (`example.com`
/// matches it and its subdomains; a leading dot is allowed), optional
/// `:port` ignored, `*` for everything.
fn bypass(host: &str, no_proxy: &str) -> bool {
    no_proxy.split(',').map(str::trim).any(|entry| {
        if entry == "*" {
            return true;
        }
        let entry = entry.trim_start_matches('.');
        let entry = match entry.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) && !h.contains(':') => h,
            _ => entry,
        };
        let entry = entry
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        !entry.is_empty() && (host == entry || host.ends_with(&format!(".{entry}")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn picks_the_proxy_by_scheme_and_honours_no_proxy() {
        let env = with(&[
            ("HTTPS_PROXY", "http://proxy:3128"),
            ("http_proxy", "http://plain:8080"),
            ("NO_PROXY", "localhost, .internal.example,10.0.0.1:443"),
        ]);
        assert_eq!(
            proxy_for("https://api.flomation.app", &env)
                .map(|p| p.1)
                .as_deref(),
            Some("http://proxy:3128")
        );
        assert_eq!(
            proxy_for("http://api.flomation.app/x", &env)
                .map(|p| p.0)
                .as_deref(),
            Some("http_proxy")
        );
        assert!(proxy_for("https://localhost:8443", &env).is_none());
        assert!(proxy_for("https://api.internal.example", &env).is_none());
        assert!(proxy_for("https://internal.example", &env).is_none());
        assert!(proxy_for("https://10.0.0.1", &env).is_none());
        assert!(proxy_for("https://notinternal.example", &env).is_some());
        assert!(proxy_for(
            "https://x",
            &with(&[("NO_PROXY", "*"), ("ALL_PROXY", "p:1")])
        )
        .is_none());
        assert!(proxy_for("https://x", &with(&[])).is_none());
        assert_eq!(host_of("u:p@[::1]:8080/a"), "::1");
        assert_eq!(
            redact("http://u:secret@proxy:3128"),
            "http://***@proxy:3128"
        );
        assert_eq!(redact("proxy:3128"), "proxy:3128");
    }
}
