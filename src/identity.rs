//! The runner's identity (PROTOCOL.md §1): the identifier in `flo.state` and
//! the RSA key at `runner.certificate`. Both are created once and reused.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};
use rsa::RsaPrivateKey;
use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::ids::RunnerIdentifier;
use crate::signing::Signer;

pub const STATE_FILE: &str = "flo.state";
const KEY_BITS: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot create state directory {path}: {source}")]
    StateDir { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{path} is not a valid runner state file ({why}); fix or remove it")]
    BadState { path: PathBuf, why: String },
    #[error("{path} is not a usable RSA private key ({why}); the file was left untouched")]
    BadKey { path: PathBuf, why: String },
    #[error("cannot generate an RSA key: {0}")]
    Generate(String),
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    identifier: String,
}

/// Who this runner is, and how it signs.
pub struct Identity {
    pub identifier: RunnerIdentifier,
    pub signer: Signer,
    /// PEM `PUBLIC KEY` (SubjectPublicKeyInfo), as sent at registration.
    pub public_key_pem: String,
    /// Absolute path of the private key file, passed to the executor as `--key`.
    pub key_path: PathBuf,
}

impl Identity {
    pub fn load_or_create(state_dir: &Path, key_path: &Path) -> Result<Self, IdentityError> {
        fsutil::create_dir_all(state_dir).map_err(|source| IdentityError::StateDir {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let state_path = state_dir.join(STATE_FILE);
        let (identifier, state_is_new) = load_or_create_identifier(&state_path)?;
        let key = load_or_create_key(key_path, &identifier, state_is_new)?;
        let public_key_pem = key
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| IdentityError::BadKey {
                path: key_path.to_path_buf(),
                why: e.to_string(),
            })?;
        let key_path = absolute(key_path);
        Ok(Self {
            identifier,
            signer: Signer::new(&key),
            public_key_pem,
            key_path,
        })
    }
}

/// For `check`: describes the identity on disk without creating anything.
pub fn inspect(state_dir: &Path, key_path: &Path) -> Result<String, IdentityError> {
    let state_path = state_dir.join(STATE_FILE);
    let identifier = match fs::read(&state_path) {
        Ok(bytes) => {
            let state: StateFile =
                serde_json::from_slice(&bytes).map_err(|e| IdentityError::BadState {
                    path: state_path.clone(),
                    why: e.to_string(),
                })?;
            format!("identifier {}", state.identifier)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            "no identifier yet (created at first start)".to_string()
        }
        Err(source) => {
            return Err(IdentityError::Read {
                path: state_path,
                source,
            })
        }
    };
    let key = match fs::read(key_path) {
        Ok(bytes) => {
            parse_key(key_path, &bytes)?;
            format!("key {} is a usable RSA key", key_path.display())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            format!(
                "no key at {} yet (generated at first start)",
                key_path.display()
            )
        }
        Err(source) => {
            return Err(IdentityError::Read {
                path: key_path.to_path_buf(),
                source,
            })
        }
    };
    Ok(format!("{identifier}; {key}"))
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    match std::env::current_dir() {
        Ok(cwd) => cwd.join(path),
        Err(_) => path.to_path_buf(),
    }
}

fn load_or_create_identifier(path: &Path) -> Result<(RunnerIdentifier, bool), IdentityError> {
    match fs::read(path) {
        Ok(bytes) => {
            let state: StateFile =
                serde_json::from_slice(&bytes).map_err(|e| IdentityError::BadState {
                    path: path.to_path_buf(),
                    why: e.to_string(),
                })?;
            let id = RunnerIdentifier::parse(&state.identifier).ok_or_else(|| {
                IdentityError::BadState {
                    path: path.to_path_buf(),
                    why: format!(
                        "identifier {:?} is not letters and digits",
                        state.identifier
                    ),
                }
            })?;
            Ok((id, false))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let id = RunnerIdentifier::generate();
            let body = serde_json::to_vec(&StateFile {
                identifier: id.as_str().to_string(),
            })
            .map_err(|e| IdentityError::BadState {
                path: path.to_path_buf(),
                why: e.to_string(),
            })?;
            fsutil::write_atomic(path, &body, fsutil::FILE_MODE).map_err(|source| {
                IdentityError::Write {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
            log::info!("created runner identifier {id} in {}", path.display());
            Ok((id, true))
        }
        Err(source) => Err(IdentityError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn load_or_create_key(
    path: &Path,
    identifier: &RunnerIdentifier,
    state_is_new: bool,
) -> Result<RsaPrivateKey, IdentityError> {
    match fs::read(path) {
        Ok(bytes) => parse_key(path, &bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if !state_is_new {
                log::warn!(
                    "runner {identifier} has no key at {}; generating a new one. If this identifier \
                     registered before, the API keeps the old public key and will answer 403",
                    path.display()
                );
            }
            let key = RsaPrivateKey::new(&mut rand::thread_rng(), KEY_BITS)
                .map_err(|e| IdentityError::Generate(e.to_string()))?;
            let pem = key
                .to_pkcs1_pem(LineEnding::LF)
                .map_err(|e| IdentityError::Generate(e.to_string()))?;
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                fsutil::create_dir_all(parent).map_err(|source| IdentityError::Write {
                    path: path.to_path_buf(),
                    source,
                })?;
            }
            match fsutil::write_new_atomic(path, pem.as_bytes(), fsutil::FILE_MODE) {
                Ok(()) => {
                    log::info!("generated a {KEY_BITS}-bit RSA key in {}", path.display());
                    Ok(key)
                }
                // Another process created it meanwhile: use theirs, never clobber it.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let bytes = fs::read(path).map_err(|source| IdentityError::Read {
                        path: path.to_path_buf(),
                        source,
                    })?;
                    parse_key(path, &bytes)
                }
                Err(source) => Err(IdentityError::Write {
                    path: path.to_path_buf(),
                    source,
                }),
            }
        }
        Err(source) => Err(IdentityError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Parses PEM `RSA PRIVATE KEY` (PKCS#1) or `PRIVATE KEY` (PKCS#8, RSA only).
fn parse_key(path: &Path, bytes: &[u8]) -> Result<RsaPrivateKey, IdentityError> {
    let bad = |why: String| IdentityError::BadKey {
        path: path.to_path_buf(),
        why,
    };
    let text = std::str::from_utf8(bytes).map_err(|_| bad("not PEM text".into()))?;
    let label = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("-----BEGIN "))
        .and_then(|l| l.strip_suffix("-----"))
        .ok_or_else(|| bad("no PEM block found".into()))?;
    let key = match label {
        "RSA PRIVATE KEY" => {
            RsaPrivateKey::from_pkcs1_pem(text.trim()).map_err(|e| bad(format!("PKCS#1: {e}")))?
        }
        "PRIVATE KEY" => RsaPrivateKey::from_pkcs8_pem(text.trim())
            .map_err(|e| bad(format!("PKCS#8 (RSA keys only): {e}")))?,
        other => {
            return Err(bad(format!(
                "PEM type {other:?} is not a supported private key"
            )))
        }
    };
    key.validate().map_err(|e| bad(e.to_string()))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs8::EncodePrivateKey;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_then_reuses_identity() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        let a = Identity::load_or_create(dir.path(), &key).unwrap();
        let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let state_mode = fs::metadata(dir.path().join(STATE_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(state_mode, 0o600);
        assert!(fs::read_to_string(&key)
            .unwrap()
            .starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        let b = Identity::load_or_create(dir.path(), &key).unwrap();
        assert_eq!(a.identifier, b.identifier);
        assert_eq!(a.public_key_pem, b.public_key_pem);
        assert!(a.public_key_pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
    }

    #[test]
    fn accepts_pkcs8_and_refuses_garbage_without_overwriting() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        let k = RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
        let pem = k.to_pkcs8_pem(LineEnding::LF).unwrap();
        fs::write(&key, pem.as_bytes()).unwrap();
        let id = Identity::load_or_create(dir.path(), &key).unwrap();
        assert_eq!(
            id.public_key_pem,
            k.to_public_key().to_public_key_pem(LineEnding::LF).unwrap()
        );

        fs::write(&key, b"not a key").unwrap();
        let err = Identity::load_or_create(dir.path(), &key)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("k.pem"), "{err}");
        assert_eq!(fs::read(&key).unwrap(), b"not a key");
    }

    #[test]
    fn bad_state_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(STATE_FILE), b"{").unwrap();
        let err = Identity::load_or_create(dir.path(), &dir.path().join("k.pem"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("flo.state"), "{err}");
    }
}
