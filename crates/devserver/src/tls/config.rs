//! The certificate files and what is built from them: the rustls server
//! configuration `serve` terminates TLS with, and the ureq TLS configuration
//! of the admin client. Every error names the option and the file.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};

/// The certificate files given to `serve`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first (`--tls-cert`).
    pub cert: PathBuf,
    /// PEM private key: PKCS#8, PKCS#1 or SEC1 (`--tls-key`).
    pub key: PathBuf,
    /// PEM CA certificate(s); when set, clients must present a certificate
    /// signed by one of them (`--tls-client-ca`).
    pub client_ca: Option<PathBuf>,
}

/// A certificate, key or CA file that cannot be used. `option` is the
/// command-line option that named the file. The biggest sources are boxed
/// to keep every `Result` that carries this small.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{option} {}: cannot read: {source}", path.display())]
    Read {
        option: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{option} {}: not valid PEM: {source}", path.display())]
    Pem {
        option: &'static str,
        path: PathBuf,
        #[source]
        source: pem::Error,
    },
    #[error(
        "{option} {}: no certificate in it (expected a PEM \"BEGIN CERTIFICATE\" block)",
        path.display()
    )]
    NoCertificate { option: &'static str, path: PathBuf },
    #[error(
        "{option} {}: no private key in it (expected a PEM \"PRIVATE KEY\", \
         \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" block)",
        path.display()
    )]
    NoKey { option: &'static str, path: PathBuf },
    #[error("{option} {}: the admin client cannot use this key: {source}", path.display())]
    UnsupportedKey {
        option: &'static str,
        path: PathBuf,
        #[source]
        source: ureq::Error,
    },
    #[error(
        "{option} {}: certificate {number} cannot be used as a CA: {source}",
        path.display()
    )]
    NotACa {
        option: &'static str,
        path: PathBuf,
        /// 1-based, in file order.
        number: usize,
        #[source]
        source: Box<rustls::Error>,
    },
    #[error("--tls-client-ca {}: unusable: {source}", path.display())]
    ClientCa {
        path: PathBuf,
        #[source]
        source: VerifierBuilderError,
    },
    #[error(
        "{key_option} {} with {cert_option} {}: {}",
        key.display(),
        cert.display(),
        describe_mismatch(source)
    )]
    KeyMismatch {
        key_option: &'static str,
        key: PathBuf,
        cert_option: &'static str,
        cert: PathBuf,
        #[source]
        source: Box<rustls::Error>,
    },
    #[error("TLS setup failed: {0}")]
    Setup(#[source] rustls::Error),
}

/// Why a certificate and a key do not make a pair, in an operator's words.
fn describe_mismatch(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            "the key does not belong to the (first) certificate".to_string()
        }
        other => other.to_string(),
    }
}

/// ring, as everywhere in the project (no aws-lc).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path, option: &'static str) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        option,
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate in a PEM file; an error when there is none.
fn load_certs(path: &Path, option: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path, option)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            option,
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            option,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file.
fn load_key(path: &Path, option: &'static str) -> Result<PrivateKeyDer<'static>, TlsError> {
    parse_key(&read(path, option)?, path, option)
}

fn parse_key(
    pem: &[u8],
    path: &Path,
    option: &'static str,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    let path = path.to_path_buf();
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoKey { option, path },
        source => TlsError::Pem {
            option,
            path,
            source,
        },
    })
}

/// The CA certificates of a PEM file as trust anchors; each must be usable
/// as one.
fn trust(
    certs: &[CertificateDer<'static>],
    path: &Path,
    option: &'static str,
) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        roots.add(cert.clone()).map_err(|source| TlsError::NotACa {
            option,
            path: path.to_path_buf(),
            number: i + 1,
            source: Box::new(source),
        })?;
    }
    Ok(roots)
}

/// The rustls server configuration for `serve`: the certificate chain and
/// key, HTTP/1.1 by ALPN, and (with a client CA) required client
/// certificates verified against that CA.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(&files.cert, "--tls-cert")?;
    let key = load_key(&files.key, "--tls-key")?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = trust(&load_certs(ca, "--tls-client-ca")?, ca, "--tls-client-ca")?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|source| TlsError::ClientCa {
                    path: ca.clone(),
                    source,
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config =
        builder
            .with_single_cert(certs, key)
            .map_err(|source| TlsError::KeyMismatch {
                key_option: "--tls-key",
                key: files.key.clone(),
                cert_option: "--tls-cert",
                cert: files.cert.clone(),
                source: Box::new(source),
            })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The admin client's TLS: the public web roots plus `ca` (a private CA,
/// PEM, `--ca-cert`), and a client certificate when given
/// (`--client-cert`, `--client-key`).
///
/// ureq builds its rustls configuration (with ring, its `rustls` feature)
/// only at the first request, and panics there on a key that does not match
/// its certificate; so the files are checked here, with errors that name
/// them.
pub fn client_config(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<TlsConfig, TlsError> {
    let roots = match ca {
        None => RootCerts::WebPki,
        Some(ca) => {
            let certs = load_certs(ca, "--ca-cert")?;
            trust(&certs, ca, "--ca-cert")?;
            // ureq takes its built-in roots or a list, not both.
            let public = webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter();
            public
                .chain(&certs)
                .map(|c| Certificate::from_der(c.as_ref()).to_owned())
                .into()
        }
    };
    let client_cert = match identity {
        None => None,
        Some((cert, key)) => Some(client_cert(cert, key)?),
    };
    Ok(TlsConfig::builder()
        .root_certs(roots)
        .client_cert(client_cert)
        .build())
}

/// The client certificate and key, checked to be a pair.
fn client_cert(cert_path: &Path, key_path: &Path) -> Result<ClientCert, TlsError> {
    let certs = load_certs(cert_path, "--client-cert")?;
    let pem = read(key_path, "--client-key")?;
    let key = parse_key(&pem, key_path, "--client-key")?;
    // The same first key, as ureq's type (whose key kind is not public).
    let ureq_key = PrivateKey::from_pem(&pem).map_err(|source| TlsError::UnsupportedKey {
        option: "--client-key",
        path: key_path.to_path_buf(),
        source,
    })?;
    let chain: Vec<Certificate<'static>> = certs
        .iter()
        .map(|c| Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    CertifiedKey::from_der(certs, key, &provider()).map_err(|source| TlsError::KeyMismatch {
        key_option: "--client-key",
        key: key_path.to_path_buf(),
        cert_option: "--client-cert",
        cert: cert_path.to_path_buf(),
        source: Box::new(source),
    })?;
    Ok(ClientCert::new_with_certs(&chain, ureq_key))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed CA certificate and its key, as PEM files in `dir`.
    fn ca(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let (cert_path, key_path) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        fs::write(&cert_path, cert.pem()).unwrap();
        fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    #[test]
    fn the_admin_client_takes_a_ca_and_a_matching_identity() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = ca(dir.path(), "a");
        let config = client_config(Some(&cert), Some((&cert, &key))).unwrap();
        assert!(config.client_cert().is_some());
        match config.root_certs() {
            RootCerts::Specific(roots) => {
                assert_eq!(
                    roots.len(),
                    webpki_root_certs::TLS_SERVER_ROOT_CERTS.len() + 1
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_key_of_another_certificate_is_named_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = ca(dir.path(), "a");
        let (_, other_key) = ca(dir.path(), "b");
        let e = client_config(None, Some((&cert, &other_key))).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, TlsError::KeyMismatch { .. }), "{text}");
        assert!(
            text.contains("--client-key") && text.contains("b.key"),
            "{text}"
        );
        assert!(text.contains("does not belong"), "{text}");
    }

    #[test]
    fn a_file_without_a_key_says_what_it_expected() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = ca(dir.path(), "a");
        let e = client_config(None, Some((&cert, &cert))).unwrap_err();
        assert!(e.to_string().contains("no private key in it"), "{e}");
        assert!(std::error::Error::source(&e).is_none());
        let e = load_certs(&dir.path().join("missing.pem"), "--ca-cert").unwrap_err();
        assert!(std::error::Error::source(&e).is_some(), "{e}");
    }
}
