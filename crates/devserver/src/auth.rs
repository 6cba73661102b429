//! Runner keys and request signatures (PROTOCOL.md §2), server side.

use rsa::pkcs8::DecodePublicKey;
use rsa::RsaPublicKey;

use flo_protocol::signing::verify_pss_sha256;

/// Parses a PEM `PUBLIC KEY` (SubjectPublicKeyInfo), the form runners send.
pub fn parse_public_key(pem: &str) -> Result<RsaPublicKey, String> {
    RsaPublicKey::from_public_key_pem(pem.trim())
        .map_err(|e| format!("public_key is not a PEM PUBLIC KEY holding an RSA key: {e}"))
}

/// True when `header` is the hex of a valid PSS signature over `message`.
/// A missing header, bad hex or wrong length is simply invalid: the caller
/// answers 403 either way, and the request log keeps the header as sent.
pub fn verify_hex(key: &RsaPublicKey, message: &[u8], header: Option<&str>) -> bool {
    let Some(header) = header else {
        return false;
    };
    match hex::decode(header.trim()) {
        Ok(sig) => verify_pss_sha256(key, message, &sig),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flo_protocol::signing::Signer;
    use rsa::pkcs8::{EncodePublicKey, LineEnding};
    use rsa::RsaPrivateKey;

    #[test]
    fn signature_check() {
        // 1024 bits keeps the test fast; the check does not care about size.
        let key = RsaPrivateKey::new(&mut rand::thread_rng(), 1024).unwrap();
        let pem = key
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let public = parse_public_key(&pem).unwrap();
        let sig = Signer::new(&key).sign_hex(b"body").unwrap();
        assert!(verify_hex(&public, b"body", Some(&sig)));
        assert!(verify_hex(&public, b"body", Some(&sig.to_uppercase())));
        assert!(!verify_hex(&public, b"other", Some(&sig)));
        assert!(!verify_hex(&public, b"body", None));
        assert!(!verify_hex(&public, b"body", Some("zz")));
        assert!(!verify_hex(&public, b"body", Some("abcd")));
    }

    #[test]
    fn bad_pem_is_explained() {
        let e = parse_public_key("-----BEGIN PUBLIC KEY-----\nxx\n-----END PUBLIC KEY-----")
            .unwrap_err();
        assert!(e.contains("public_key"), "{e}");
    }
}
