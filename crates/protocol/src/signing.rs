//! RSA-PSS signing of request bodies (PROTOCOL.md §2), and verification.
//!
//! Signing uses `ring`: constant-time (the `rsa` crate carries the open
//! RUSTSEC-2023-0071 timing advisory) and several times faster, which matters
//! because every request is signed. `rsa` is still used for what `ring` cannot
//! do: key generation, PEM parsing, and keys `ring` refuses (under 2048 bits).

use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PSS_SHA256};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha256};

/// Signs request bodies with the runner's private key.
pub struct Signer {
    inner: Inner,
}

enum Inner {
    Ring {
        key: Box<RsaKeyPair>,
        rng: SystemRandom,
    },
    /// For keys `ring` will not load; the `rsa` crate signs them instead.
    Fallback(Box<RsaPrivateKey>),
}

#[derive(Debug, thiserror::Error)]
#[error("signing failed: {0}")]
pub struct SignError(String);

impl Signer {
    pub fn new(key: &RsaPrivateKey) -> Self {
        let ring_key = key
            .to_pkcs1_der()
            .ok()
            .and_then(|der| RsaKeyPair::from_der(der.as_bytes()).ok());
        let inner = match ring_key {
            Some(key) => Inner::Ring {
                key: Box::new(key),
                rng: SystemRandom::new(),
            },
            None => {
                log::warn!("the private key is not accepted by ring (smaller than 2048 bits?); signing with the slower rsa crate");
                Inner::Fallback(Box::new(key.clone()))
            }
        };
        Self { inner }
    }

    /// Lowercase hex of RSA-PSS(SHA-256) over `SHA-256(message)`, salt 32 bytes.
    pub fn sign_hex(&self, message: &[u8]) -> Result<String, SignError> {
        match &self.inner {
            Inner::Ring { key, rng } => {
                let mut sig = vec![0u8; key.public().modulus_len()];
                key.sign(&RSA_PSS_SHA256, rng, message, &mut sig)
                    .map_err(|e| SignError(e.to_string()))?;
                Ok(hex::encode(sig))
            }
            Inner::Fallback(key) => {
                let digest = Sha256::digest(message);
                let mut rng = rand::thread_rng();
                let sig = key
                    .sign_with_rng(&mut rng, rsa::Pss::new::<Sha256>(), &digest)
                    .map_err(|e| SignError(e.to_string()))?;
                Ok(hex::encode(sig))
            }
        }
    }
}

/// Verifies an RSA-PSS SHA-256 signature over `SHA-256(message)` the way Go's
/// `rsa.VerifyPSS(pub, SHA256, digest, sig, nil)` does: any salt length.
/// (`ring` and the `rsa` crate both insist on one salt length, and the Go
/// runner signs with the maximum one.)
pub fn verify_pss_sha256(key: &RsaPublicKey, message: &[u8], signature: &[u8]) -> bool {
    const H_LEN: usize = 32;
    let n = key.n();
    let k = key.size();
    if signature.len() != k {
        return false;
    }
    let s = BigUint::from_bytes_be(signature);
    if &s >= n {
        return false;
    }
    let m = s.modpow(key.e(), n);
    let mod_bits = n.bits();
    let em_bits = mod_bits - 1;
    let em_len = em_bits.div_ceil(8);
    let m_bytes = m.to_bytes_be();
    if m_bytes.len() > em_len || em_len < H_LEN + 2 {
        return false;
    }
    let mut em = vec![0u8; em_len - m_bytes.len()];
    em.extend_from_slice(&m_bytes);
    if em[em_len - 1] != 0xbc {
        return false;
    }
    let db_len = em_len - H_LEN - 1;
    let (masked_db, rest) = em.split_at(db_len);
    let h = &rest[..H_LEN];
    let unused_bits = 8 * em_len - em_bits;
    let top_mask = 0xffu8 >> unused_bits;
    if masked_db[0] & !top_mask != 0 {
        return false;
    }
    let mut db = mgf1_sha256(h, db_len);
    for (d, m) in db.iter_mut().zip(masked_db) {
        *d ^= m;
    }
    db[0] &= top_mask;
    let Some(one) = db.iter().position(|&b| b != 0) else {
        return false;
    };
    if db[one] != 0x01 {
        return false;
    }
    let salt = &db[one + 1..];
    let m_hash = Sha256::digest(message);
    let mut hasher = Sha256::new();
    hasher.update([0u8; 8]);
    hasher.update(m_hash);
    hasher.update(salt);
    let expected = hasher.finalize();
    expected.as_slice() == h
}

fn mgf1_sha256(seed: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut counter: u32 = 0;
    while out.len() < len {
        let mut h = Sha256::new();
        h.update(seed);
        h.update(counter.to_be_bytes());
        out.extend_from_slice(&h.finalize());
        counter += 1;
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> RsaPrivateKey {
        RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap()
    }

    #[test]
    fn ring_signature_verifies_and_tamper_fails() {
        let k = key();
        let signer = Signer::new(&k);
        let sig = hex::decode(signer.sign_hex(b"{\"a\":1}").unwrap()).unwrap();
        let public = k.to_public_key();
        assert!(verify_pss_sha256(&public, b"{\"a\":1}", &sig));
        assert!(!verify_pss_sha256(&public, b"{\"a\":2}", &sig));
        let mut bad = sig.clone();
        bad[10] ^= 1;
        assert!(!verify_pss_sha256(&public, b"{\"a\":1}", &bad));
    }

    #[test]
    fn max_salt_signature_verifies() {
        // The Go runner signs with the maximum salt length.
        let k = key();
        let digest = Sha256::digest(b"body");
        let sig = k
            .sign_with_rng(
                &mut rand::thread_rng(),
                rsa::Pss::new_with_salt::<Sha256>(256 - 32 - 2),
                &digest,
            )
            .unwrap();
        assert!(verify_pss_sha256(&k.to_public_key(), b"body", &sig));
    }

    #[test]
    fn small_keys_fall_back_to_rsa_crate() {
        let k = RsaPrivateKey::new(&mut rand::thread_rng(), 1024).unwrap();
        let signer = Signer::new(&k);
        let sig = hex::decode(signer.sign_hex(b"x").unwrap()).unwrap();
        assert!(verify_pss_sha256(&k.to_public_key(), b"x", &sig));
    }
}
