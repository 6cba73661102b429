//! How the runner reaches the API: TLS roots and client certificate, and the
//! proxy. Built once at start-up from the configuration and the environment.
//!
//! - Roots: the system's CA store (falling back to the Mozilla roots when the
//!   system has none, e.g. a slim container), plus `tls.ca_cert` when set.
//! - Client certificate: `tls.cert`/`tls.key` when `tls.enabled` (the Go
//!   runner only passed them to the executor; we also use them ourselves).
//! - Proxy: `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY` (either case), unless
//!   `NO_PROXY` names the API host. Which variable applies is decided here
//!   (ureq's own `Proxy::try_from_env` prefers `ALL_PROXY` and ignores the
//!   API's scheme); whether `NO_PROXY` names the host is ureq's matching.
//!   Every request goes to the one API host, so deciding once is exact.
//!
//! Every file is read and checked here, so that a bad one is an error at
//! start-up that names its key, not a failed handshake later.

use std::path::Path;

use rustls::RootCertStore;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{key}: cannot use {path}: {problem}")]
    File {
        key: &'static str,
        path: String,
        #[source]
        problem: FileProblem,
    },
    #[error("{var}: {value:?} is not a usable proxy: {source}")]
    Proxy {
        var: String,
        value: String,
        #[source]
        source: ureq::Error,
    },
}

/// What is wrong with a certificate or key file.
#[derive(Debug, thiserror::Error)]
pub enum FileProblem {
    /// Not readable at all (missing, a directory, no permission).
    #[error("{0}")]
    Read(#[source] pem::Error),
    #[error("not PEM certificates ({0})")]
    NotCertificates(#[source] pem::Error),
    #[error("no PEM certificate in it")]
    NoCertificate,
    /// PEM, but not a certificate that can be a trust anchor.
    #[error("{0}")]
    BadCertificate(#[source] rustls::Error),
    #[error("not a PEM private key ({0})")]
    NotKey(#[source] pem::Error),
    /// A key rustls reads but ureq does not (not seen in practice: both use
    /// the same PEM parser).
    #[error("not a PEM private key ({0})")]
    Unsupported(#[source] ureq::Error),
    #[error("does not go with tls.key ({0})")]
    KeyMismatch(#[source] rustls::Error),
}

/// Network settings shared by every agent.
#[derive(Clone)]
pub struct Net {
    pub(crate) tls: TlsConfig,
    pub(crate) proxy: Option<ureq::Proxy>,
    /// For the log: which proxy, if any.
    pub proxy_url: Option<String>,
}

impl Net {
    pub fn from_config(
        config: &Config,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, NetError> {
        install_crypto_provider();
        let tls = tls_config(config)?;
        let (proxy, proxy_url) = choose_proxy(&config.runner.url, env)?.unzip();
        Ok(Self {
            tls,
            proxy,
            proxy_url,
        })
    }

    /// Plain defaults (system roots, no proxy), for tools and tests.
    pub fn system() -> Self {
        install_crypto_provider();
        Self {
            tls: TlsConfig::builder()
                .root_certs(system_roots().into())
                .build(),
            proxy: None,
            proxy_url: None,
        }
    }
}

/// ureq is built without a crypto provider of its own (`rustls-no-provider`
/// in Cargo.toml) and takes the process default: ring, the provider the
/// rest of the runner is built with. Installing it twice is harmless.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The system's CA store, or the Mozilla roots when it has none that can be
/// a trust anchor. As certificates, because that is what ureq takes (and
/// keeps, for as long as the agent lives).
fn system_roots() -> Vec<Certificate<'static>> {
    let found = rustls_native_certs::load_native_certs().certs;
    let (usable, _) = RootCertStore::empty().add_parsable_certificates(found.iter().cloned());
    if usable == 0 {
        return mozilla::roots();
    }
    found
        .iter()
        .map(|c| Certificate::from_der(c).to_owned())
        .collect()
}

/// The Mozilla roots as the certificates ureq takes, made from
/// `webpki-roots`' trust anchors when they are needed.
///
/// The roots are embedded as trust anchors (subject, key, name constraints:
/// all rustls keeps of a root), not as the full certificates of
/// `webpki-root-certs`, which would add ~100 KB to the binary for a
/// fallback few runners use. ureq takes certificates only, and hands them to
/// rustls, which turns each back into a trust anchor
/// (`webpki::anchor_from_trusted_cert`) reading nothing of a root but those
/// three fields: so each anchor is wrapped in the smallest certificate rustls
/// reads back to the same anchor (a unit test checks every one). A root's
/// signature, validity and other extensions are never checked (it is trusted
/// as given), so the wrapper has none. Unlike `webpki-root-certs`, the
/// anchors carry the name constraints Mozilla sets beside a root (TUBITAK's
/// to `.tr`), as the runner's roots did before ureq 3.
mod mozilla {
    use ureq::tls::Certificate;

    /// Roots Mozilla has withdrawn since the `webpki-roots` release the
    /// registry has (1.0.10), by their subject's common name: gone from the
    /// `webpki-root-certs` release the runner used before (1.0.11), so they
    /// stay untrusted. A unit test checks the two sets are the same; once
    /// `webpki-roots` is at 1.0.11 or later this list matches nothing and
    /// can go.
    const WITHDRAWN: [&[u8]; 2] = [b"emSign ECC Root CA - C3", b"emSign Root CA - C1"];

    pub(super) fn withdrawn(subject: &[u8]) -> bool {
        WITHDRAWN
            .iter()
            .any(|name| subject.windows(name.len()).any(|w| w == *name))
    }

    pub(super) fn roots() -> Vec<Certificate<'static>> {
        webpki_roots::TLS_SERVER_ROOTS
            .iter()
            .filter(|anchor| !withdrawn(&anchor.subject))
            .map(|anchor| {
                let der = certificate(
                    &anchor.subject,
                    &anchor.subject_public_key_info,
                    anchor.name_constraints.as_deref(),
                );
                Certificate::from_der(&der).to_owned()
            })
            .collect()
    }

    const SEQUENCE: u8 = 0x30;
    const INTEGER: u8 = 0x02;
    const BIT_STRING: u8 = 0x03;
    const OCTET_STRING: u8 = 0x04;
    const OID: u8 = 0x06;
    /// `[0]`, the version, and `[3]`, the extensions, of a TBSCertificate.
    const EXPLICIT_0: u8 = 0xa0;
    const EXPLICIT_3: u8 = 0xa3;
    /// id-ce-nameConstraints, 2.5.29.30.
    const NAME_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x1e];

    /// An X.509 v3 certificate (RFC 5280 4.1) whose subject, public key and
    /// name constraints are these, `subject` and `spki` being the contents of
    /// their SEQUENCEs and `name_constraints` that of the extension's
    /// SEQUENCE, as a `TrustAnchor` holds them. Issuer = subject, an empty
    /// validity and algorithm, no signature.
    pub(super) fn certificate(
        subject: &[u8],
        spki: &[u8],
        name_constraints: Option<&[u8]>,
    ) -> Vec<u8> {
        let algorithm = tlv(SEQUENCE, &[]);
        let mut tbs = Vec::new();
        tbs.extend(tlv(EXPLICIT_0, &tlv(INTEGER, &[2])));
        tbs.extend(tlv(INTEGER, &[1]));
        tbs.extend(&algorithm);
        tbs.extend(tlv(SEQUENCE, subject)); // issuer
        tbs.extend(tlv(SEQUENCE, &[])); // validity
        tbs.extend(tlv(SEQUENCE, subject));
        tbs.extend(tlv(SEQUENCE, spki));
        if let Some(constraints) = name_constraints {
            let mut extension = tlv(OID, NAME_CONSTRAINTS);
            extension.extend(tlv(OCTET_STRING, &tlv(SEQUENCE, constraints)));
            let extensions = tlv(SEQUENCE, &tlv(SEQUENCE, &extension));
            tbs.extend(tlv(EXPLICIT_3, &extensions));
        }
        let mut cert = tlv(SEQUENCE, &tbs);
        cert.extend(algorithm);
        cert.extend(tlv(BIT_STRING, &[0])); // no unused bits, no bits
        tlv(SEQUENCE, &cert)
    }

    /// A DER tag-length-value (definite length, short or long form).
    fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
        let len = value.len();
        let mut out = Vec::with_capacity(value.len() + 6);
        out.push(tag);
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes = len.to_be_bytes();
            let skip = bytes.iter().take_while(|&&b| b == 0).count();
            out.push(0x80 | (bytes.len() - skip) as u8);
            out.extend(&bytes[skip..]);
        }
        out.extend(value);
        out
    }
}

fn is_plain_http(url: &str) -> bool {
    url.get(..7)
        .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
}

fn tls_config(config: &Config) -> Result<TlsConfig, NetError> {
    let tls = &config.tls;
    // Reading the system store (every file in /etc/ssl/certs) is a few ms of
    // start-up that a plain-HTTP API never uses.
    let mut roots = if is_plain_http(&config.runner.url) {
        Vec::new()
    } else {
        system_roots()
    };
    if let Some(ca_cert) = &tls.ca_cert {
        let fail = file_error("tls.ca_cert", ca_cert);
        let mut check = RootCertStore::empty();
        for cert in read_certs(ca_cert).map_err(&fail)? {
            // ureq skips a root it cannot use; here it is an error that
            // names the file.
            check
                .add(cert.clone())
                .map_err(|e| fail(FileProblem::BadCertificate(e)))?;
            roots.push(Certificate::from_der(&cert).to_owned());
        }
    }
    let pair = tls
        .cert
        .as_ref()
        .zip(tls.key.as_ref())
        .filter(|_| tls.enabled);
    let client_cert = if let Some((cert, key)) = pair {
        Some(client_cert(cert, key)?)
    } else {
        if tls.enabled {
            log::warn!("tls.enabled is true but tls.cert or tls.key is empty: no client certificate will be presented");
        }
        None
    };
    Ok(TlsConfig::builder()
        .root_certs(RootCerts::from(roots))
        .client_cert(client_cert)
        .build())
}

fn file_error<'a>(key: &'static str, path: &'a Path) -> impl Fn(FileProblem) -> NetError + 'a {
    move |problem| NetError::File {
        key,
        path: path.display().to_string(),
        problem,
    }
}

/// `tls.cert` and `tls.key`, checked to be a pair the way rustls checks them
/// when it makes a client configuration.
fn client_cert(cert_path: &Path, key_path: &Path) -> Result<ClientCert, NetError> {
    let certs = read_certs(cert_path).map_err(file_error("tls.cert", cert_path))?;
    let key_error = file_error("tls.key", key_path);
    let pem =
        std::fs::read(key_path).map_err(|e| key_error(FileProblem::NotKey(pem::Error::Io(e))))?;
    // Parsed twice, from the same bytes: by rustls for the check below, and
    // by ureq, whose key type cannot be made from rustls's.
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| key_error(FileProblem::NotKey(e)))?;
    let ureq_key =
        PrivateKey::from_pem(&pem).map_err(|e| key_error(FileProblem::Unsupported(e)))?;
    let chain: Vec<_> = certs
        .iter()
        .map(|c| Certificate::from_der(c).to_owned())
        .collect();
    rustls::sign::CertifiedKey::from_der(certs, key, &rustls::crypto::ring::default_provider())
        .map_err(|e| file_error("tls.cert", cert_path)(FileProblem::KeyMismatch(e)))?;
    Ok(ClientCert::new_with_certs(&chain, ureq_key))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, FileProblem> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(FileProblem::Read)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(FileProblem::NotCertificates)?;
    if certs.is_empty() {
        return Err(FileProblem::NoCertificate);
    }
    Ok(certs)
}

/// `name` or its lower-case form, the first that is set and not blank, as
/// (variable, value).
fn get_either_case(name: &str, env: &dyn Fn(&str) -> Option<String>) -> Option<(String, String)> {
    [name.to_string(), name.to_ascii_lowercase()]
        .into_iter()
        .find_map(|n| env(&n).filter(|v| !v.trim().is_empty()).map(|v| (n, v)))
}

/// The proxy variable that applies to `url`, as (variable, value):
/// `HTTPS_PROXY` for an `https://` API, `HTTP_PROXY` for another, then
/// `ALL_PROXY`. `NO_PROXY` is not looked at here (see [`exempts`]).
fn proxy_for(url: &str, env: &dyn Fn(&str) -> Option<String>) -> Option<(String, String)> {
    let (scheme, _) = url.split_once("://")?;
    match scheme {
        "https" => get_either_case("HTTPS_PROXY", env),
        _ => get_either_case("HTTP_PROXY", env),
    }
    .or_else(|| get_either_case("ALL_PROXY", env))
}

/// The proxy for requests to `url` and its URL for the log (credentials
/// masked); `None` when no variable names one, or `NO_PROXY` exempts `url`
/// (then the proxy's URL is not looked at, as it is never used).
fn choose_proxy(
    url: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<(ureq::Proxy, String)>, NetError> {
    let Some((var, value)) = proxy_for(url, env) else {
        return Ok(None);
    };
    if get_either_case("NO_PROXY", env).is_some_and(|(_, list)| exempts(&list, url)) {
        return Ok(None);
    }
    let proxy = ureq::Proxy::new(&value).map_err(|source| NetError::Proxy {
        var,
        value: value.clone(),
        source,
    })?;
    Ok(Some((proxy, redact(&value))))
}

/// Whether the `NO_PROXY` list exempts `url`, by ureq's matching. ureq
/// matches a list only as part of a proxy (`ProxyBuilder::no_proxy`,
/// `Proxy::is_no_proxy`): the proxy here is a stand-in, never connected to.
fn exempts(no_proxy: &str, url: &str) -> bool {
    let Ok(uri) = url.parse::<ureq::http::Uri>() else {
        return false;
    };
    no_proxy_patterns(no_proxy)
        .iter()
        .fold(ureq::Proxy::builder(ureq::ProxyProtocol::Http), |b, p| {
            b.no_proxy(p)
        })
        .build()
        .is_ok_and(|matcher| matcher.is_no_proxy(&uri))
}

/// The README's `NO_PROXY` in ureq's patterns. The README promises what the
/// runner has always matched: comma-separated entries with spaces around
/// them allowed, `example.com` matching it and its subdomains (with or
/// without a leading dot), an optional `:port` ignored, IPv6 addresses with
/// or without brackets, `*` for everything. ureq matches `example.com`
/// exactly and `.example.com` as a suffix only, and compares ports and
/// brackets as written; so each entry becomes both forms, bare.
fn no_proxy_patterns(no_proxy: &str) -> Vec<String> {
    let mut patterns = Vec::new();
    for entry in no_proxy.split(',').map(str::trim) {
        if entry == "*" {
            patterns.push(entry.to_string());
            continue;
        }
        let entry = entry.trim_start_matches('.');
        let host = match entry.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) && !h.contains(':') => h,
            _ => entry,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            continue;
        }
        if host.contains(':') {
            // An IPv6 address: the URL's host is the bracketed form.
            patterns.push(format!("[{host}]"));
        } else {
            patterns.push(host.to_string());
            patterns.push(format!(".{host}"));
        }
    }
    patterns
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

    /// The log's name of the proxy chosen for `url`, `None` for none.
    fn chosen(url: &str, env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
        choose_proxy(url, env)
            .expect("a usable proxy")
            .map(|(_, shown)| shown)
    }

    #[test]
    fn picks_the_proxy_by_scheme_and_honours_no_proxy() {
        let env = with(&[
            ("HTTPS_PROXY", "http://proxy:3128"),
            ("http_proxy", "http://plain:8080"),
            (
                "NO_PROXY",
                "localhost, .internal.example,10.0.0.1:443,[fd00::1], ::2",
            ),
        ]);
        assert_eq!(
            chosen("https://api.flomation.app", &env).as_deref(),
            Some("http://proxy:3128")
        );
        assert_eq!(
            proxy_for("http://api.flomation.app/x", &env)
                .map(|p| p.0)
                .as_deref(),
            Some("http_proxy")
        );
        assert_eq!(
            chosen("http://api.flomation.app/x", &env).as_deref(),
            Some("http://plain:8080")
        );
        assert!(chosen("https://localhost:8443", &env).is_none());
        assert!(chosen("https://LocalHost:8443", &env).is_none());
        assert!(chosen("https://api.internal.example", &env).is_none());
        assert!(chosen("https://internal.example", &env).is_none());
        assert!(chosen("https://10.0.0.1", &env).is_none());
        assert!(chosen("https://[fd00::1]:8443", &env).is_none());
        assert!(chosen("https://[::2]/", &env).is_none());
        assert!(chosen("https://notinternal.example", &env).is_some());
        assert!(chosen("https://10.0.0.11", &env).is_some());
        let all = with(&[("no_proxy", "*"), ("ALL_PROXY", "http://p:1")]);
        assert!(chosen("https://x", &all).is_none());
        assert_eq!(
            chosen("https://x", &with(&[("ALL_PROXY", "http://p:1")])).as_deref(),
            Some("http://p:1")
        );
        assert!(chosen("https://x", &with(&[])).is_none());
        assert_eq!(
            redact("http://u:secret@proxy:3128"),
            "http://***@proxy:3128"
        );
        assert_eq!(redact("proxy:3128"), "proxy:3128");
    }

    /// What rustls makes of each wrapped root is the Mozilla trust anchor it
    /// came from, name constraints included, the one root with some too.
    #[test]
    fn the_mozilla_roots_read_back_as_their_trust_anchors() {
        let anchors: Vec<_> = webpki_roots::TLS_SERVER_ROOTS
            .iter()
            .filter(|a| !mozilla::withdrawn(&a.subject))
            .collect();
        let roots = mozilla::roots();
        assert_eq!(roots.len(), anchors.len());
        for (anchor, root) in anchors.iter().zip(&roots) {
            let mut store = RootCertStore::empty();
            store
                .add(CertificateDer::from(root.der()))
                .expect("a usable trust anchor");
            assert_eq!(store.roots, [(*anchor).to_owned()]);
        }
        assert!(anchors.iter().any(|a| a.name_constraints.is_some()));
        // The same roots, to the trust anchor, as the full certificates of
        // `webpki-root-certs` (what the runner embedded before) give.
        let mut ours = RootCertStore::empty();
        ours.add_parsable_certificates(roots.iter().map(|c| CertificateDer::from(c.der())));
        let mut theirs = RootCertStore::empty();
        theirs.add_parsable_certificates(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned());
        // But for the name constraints Mozilla adds beside a root's
        // certificate (the `.tr` of TUBITAK's): `webpki-roots` keeps them,
        // a certificate does not carry them, so they were lost with
        // `webpki-root-certs` (ureq 2 and the runner before it used the
        // anchors, and had them).
        let ours: Vec<_> = ours
            .roots
            .into_iter()
            .map(|a| rustls_pki_types::TrustAnchor {
                name_constraints: None,
                ..a
            })
            .collect();
        let theirs = theirs.roots;
        let subject = |a: &rustls_pki_types::TrustAnchor<'_>| {
            String::from_utf8_lossy(&a.subject).into_owned()
        };
        let extra: Vec<_> = ours
            .iter()
            .filter(|a| !theirs.contains(a))
            .map(subject)
            .collect();
        let missing: Vec<_> = theirs
            .iter()
            .filter(|a| !ours.contains(a))
            .map(subject)
            .collect();
        assert!(
            extra.is_empty() && missing.is_empty(),
            "extra {extra:?}, missing {missing:?}"
        );
        assert_eq!(ours.len(), theirs.len());
        // Long-form lengths: a subject or key of 128 bytes or more.
        let long = [7u8; 300];
        let cert = mozilla::certificate(&long, &long, Some(&long));
        let mut store = RootCertStore::empty();
        let spki_error = store.add(CertificateDer::from(cert));
        // Not a real key, but it parses as far as the anchor's fields.
        assert!(spki_error.is_ok(), "{spki_error:?}");
        assert_eq!(&*store.roots[0].subject, &long[..]);
        assert_eq!(store.roots[0].name_constraints.as_deref(), Some(&long[..]));
    }

    #[test]
    fn a_bad_proxy_url_names_the_variable() {
        let env = with(&[("HTTPS_PROXY", "ftp://proxy:21")]);
        let e = choose_proxy("https://api.flomation.app", &env).unwrap_err();
        assert!(matches!(e, NetError::Proxy { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.starts_with("HTTPS_PROXY: \"ftp://proxy:21\""),
            "{text}"
        );
    }

    #[test]
    fn a_proxy_that_no_proxy_exempts_is_not_parsed() {
        let env = with(&[
            ("HTTPS_PROXY", "ftp://proxy:21"),
            ("NO_PROXY", "api.flomation.app"),
        ]);
        assert!(chosen("https://api.flomation.app", &env).is_none());
    }
}
