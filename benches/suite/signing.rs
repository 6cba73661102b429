//! Signing (measurement 6): ring (the runner's `Signer`) against the `rsa`
//! crate, one thread, the same 64 result-sized messages, alternating rounds.

use std::time::Instant;

use flo_protocol::signing::{verify_pss_sha256, Signer};
use rsa::signature::{RandomizedSigner, SignatureEncoding};
use rsa::RsaPrivateKey;
use serde::Serialize;
use serde_json::json;
use sha2::Sha256;

use crate::plan::Plan;
use crate::stats::{fig, Stats};
use crate::table::{Figure, Reading};
use crate::Res;

#[derive(Serialize)]
pub struct SigningResult {
    pub ring_per_s: Option<Stats>,
    pub rsa_crate_per_s: Option<Stats>,
    pub ratio_ring_over_rsa: Option<Stats>,
    pub note: &'static str,
}

pub fn run(plan: &Plan, key: &RsaPrivateKey) -> Res<SigningResult> {
    let messages = messages();
    let ring_signer = Signer::new(key);
    let rsa_signer = rsa::pss::SigningKey::<Sha256>::new(key.clone());
    let mut rng = rand::thread_rng();
    both_verify(key, &ring_signer, &rsa_signer, &messages[0])?;
    let (mut ring_rates, mut rsa_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..plan.signing_rounds {
        let rate = |f: &mut dyn FnMut(&[u8])| {
            let t0 = Instant::now();
            let mut n = 0;
            while t0.elapsed() < plan.signing_round_time {
                f(&messages[n % messages.len()]);
                n += 1;
            }
            n as f64 / t0.elapsed().as_secs_f64()
        };
        let r1 = rate(&mut |m| {
            let _ = ring_signer.sign_hex(m);
        });
        let r2 = rate(&mut |m| {
            let sig = rsa_signer.sign_with_rng(&mut rng, m);
            let _ = hex::encode(sig.to_bytes());
        });
        ring_rates.push(r1);
        rsa_rates.push(r2);
        ratios.push(r1 / r2);
    }
    Ok(SigningResult {
        ring_per_s: Stats::of(&ring_rates),
        rsa_crate_per_s: Stats::of(&rsa_rates),
        ratio_ring_over_rsa: Stats::of(&ratios),
        note: "one thread; hex encoding included for both, as the runner sends hex",
    })
}

/// 64 result-sized messages.
fn messages() -> Vec<Vec<u8>> {
    (0..64)
        .map(|i| {
            json!({"id": format!("exec-{i}"), "flow_id": "f", "status": 0, "duration": i,
                   "billing_duration": i, "outputs": {}, "logs": "x".repeat(200)})
            .to_string()
            .into_bytes()
        })
        .collect()
}

/// Both produce signatures the dev server (Go semantics) accepts.
fn both_verify(
    key: &RsaPrivateKey,
    ring_signer: &Signer,
    rsa_signer: &rsa::pss::SigningKey<Sha256>,
    message: &[u8],
) -> Res<()> {
    let public = key.to_public_key();
    let a = hex::decode(ring_signer.sign_hex(message).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let b = rsa_signer
        .sign_with_rng(&mut rand::thread_rng(), message)
        .to_vec();
    if !verify_pss_sha256(&public, message, &a) || !verify_pss_sha256(&public, message, &b) {
        return Err("a signature did not verify".into());
    }
    Ok(())
}

pub const FIGURES: &[Figure<SigningResult>] = &[Figure {
    name: "6. RSA-2048 PSS signatures/s",
    target: "report",
    go: "-",
    read: |s| {
        Reading::value(format!(
            "ring {:.0}/s, rsa crate {:.0}/s",
            fig(&s.ring_per_s, |s| s.median),
            fig(&s.rsa_crate_per_s, |s| s.median)
        ))
        .vs_go(format!(
            "ring/rsa {:.2}x",
            fig(&s.ratio_ring_over_rsa, |s| s.median)
        ))
    },
}];
