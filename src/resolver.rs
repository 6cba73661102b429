//! The API host's addresses, looked up once and kept for a while.
//!
//! ureq 3 resolves the host before every request, even one that then goes
//! out on a pooled connection, and with a timeout set (the runner always
//! sets one) it does so on a thread of its own: three thread spawns per
//! execution (claim, logs, result) to learn the same loopback or API
//! address. ureq 2 looked the host up only for a new connection. This keeps
//! each host's answer for [`KEEP`], so DNS is asked about as often as before
//! (a changed record still reaches new connections within that time), and
//! the lookup itself is still ureq's, with its timeout.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// How long an answer is used for new requests.
const KEEP: Duration = Duration::from_secs(30);
/// Hosts remembered: the API and a proxy, with room to spare.
const HOSTS: usize = 4;

#[derive(Default)]
pub struct CachingResolver {
    lookup: DefaultResolver,
    kept: Mutex<Vec<Kept>>,
}

struct Kept {
    /// What the lookup depended on.
    scheme: String,
    authority: String,
    at: Instant,
    addrs: ResolvedSocketAddrs,
}

impl Kept {
    fn is_for(&self, scheme: &str, authority: &str) -> bool {
        self.scheme == scheme && self.authority == authority
    }
}

impl fmt::Debug for CachingResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachingResolver").finish_non_exhaustive()
    }
}

impl Resolver for CachingResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        // Compared in place: this runs for every request.
        let scheme = uri.scheme_str().unwrap_or_default();
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        let now = Instant::now();
        if let Some(kept) = crate::sync::lock(&self.kept)
            .iter()
            .find(|k| k.is_for(scheme, authority) && now.duration_since(k.at) < KEEP)
        {
            return Ok(kept.addrs.clone());
        }
        // Outside the lock: a slow lookup must not hold up requests to a
        // host already known.
        let addrs = self.lookup.resolve(uri, config, timeout)?;
        let mut kept = crate::sync::lock(&self.kept);
        kept.retain(|k| !k.is_for(scheme, authority) && now.duration_since(k.at) < KEEP);
        kept.truncate(HOSTS - 1);
        kept.push(Kept {
            scheme: scheme.to_string(),
            authority: authority.to_string(),
            at: now,
            addrs: addrs.clone(),
        });
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(r: &CachingResolver, url: &str) -> Vec<std::net::SocketAddr> {
        let agent = ureq::Agent::new_with_defaults();
        let uri: Uri = url.parse().unwrap();
        r.resolve(&uri, agent.config(), NextTimeout::default())
            .unwrap()
            .iter()
            .copied()
            .collect()
    }

    #[test]
    fn an_answer_is_kept_per_scheme_and_authority() {
        let r = CachingResolver::default();
        let a = resolve(&r, "http://127.0.0.1:8080/api/v1/runner");
        assert_eq!(a, ["127.0.0.1:8080".parse().unwrap()]);
        assert_eq!(resolve(&r, "http://127.0.0.1:8080/other"), a);
        assert_eq!(
            resolve(&r, "http://127.0.0.1:9090/"),
            ["127.0.0.1:9090".parse().unwrap()]
        );
        assert_eq!(crate::sync::lock(&r.kept).len(), 2);
        for port in 1..10 {
            resolve(&r, &format!("http://127.0.0.1:{port}/"));
        }
        assert!(crate::sync::lock(&r.kept).len() <= HOSTS);
    }
}
