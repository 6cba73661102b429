//! Registration (PROTOCOL.md §3) with a retry strategy. Nothing is polled
//! until this succeeds.

use std::time::{Duration, Instant};

use crate::api::{Api, ApiError};
use crate::config::{RegistrationRetry, RetryStrategy};
use crate::protocol::RegistrationRequest;
use crate::shutdown::Shutdown;

/// First delay of the exponential strategy; it doubles after each failure.
pub const EXPONENTIAL_START: Duration = Duration::from_secs(8);

#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error("registration with {url} gave up after {attempts} attempt(s) over {secs} s: {last}")]
    GaveUp {
        url: String,
        attempts: u32,
        secs: u64,
        last: String,
    },
    #[error("stopped by a signal before registration succeeded")]
    Interrupted,
}

/// Registers, retrying per `policy`. Each failure is logged in one line.
pub fn register(
    api: &Api,
    body: &RegistrationRequest,
    policy: &RegistrationRetry,
    shutdown: &Shutdown,
) -> Result<u16, RegistrationError> {
    let started = Instant::now();
    let mut retry = Retry::new(policy, started);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let last = match api.register(body) {
            Ok(status) => {
                registered(api, body, status);
                return Ok(status);
            }
            Err(e) => describe(api, &e),
        };
        let Some(wait) = retry.next_wait() else {
            // The caller prints the error (one line, with `last` in it).
            return Err(RegistrationError::GaveUp {
                url: api.base_url().to_string(),
                attempts,
                secs: started.elapsed().as_secs(),
                last,
            });
        };
        log::warn!(
            "{last}; retrying in {} s (attempt {attempts})",
            wait.as_secs()
        );
        if shutdown.sleep(wait) {
            return Err(RegistrationError::Interrupted);
        }
    }
}

fn registered(api: &Api, body: &RegistrationRequest, status: u16) {
    // What the API offers is found out again from here: the API
    // behind the URL may have been upgraded (or replaced).
    api.reset_generation();
    log::info!(
        "registered with {} as {} ({})",
        api.base_url(),
        body.identifier,
        if status == 201 {
            "already known"
        } else {
            "newly enrolled"
        }
    );
}

/// The waits between attempts, per the policy's strategy. The exponential
/// one doubles from [`EXPONENTIAL_START`] and stops at the deadline, its
/// last wait cut to end there.
struct Retry<'a> {
    policy: &'a RegistrationRetry,
    deadline: Instant,
    delay: Duration,
}

impl<'a> Retry<'a> {
    fn new(policy: &'a RegistrationRetry, started: Instant) -> Self {
        Retry {
            policy,
            deadline: started + policy.max_duration,
            delay: EXPONENTIAL_START,
        }
    }

    /// The wait before the next attempt; `None` to give up.
    fn next_wait(&mut self) -> Option<Duration> {
        match self.policy.strategy {
            RetryStrategy::None => None,
            RetryStrategy::Interval => Some(self.policy.interval),
            RetryStrategy::Exponential => {
                let now = Instant::now();
                if now >= self.deadline {
                    return None;
                }
                let d = self.delay.min(self.deadline - now);
                self.delay = self.delay.saturating_mul(2);
                Some(d)
            }
        }
    }
}

fn describe(api: &Api, e: &ApiError) -> String {
    match e.status() {
        Some(404) => format!(
            "registration code not recognised by {} (HTTP 404)",
            api.base_url()
        ),
        _ => format!("registration with {} failed ({e})", api.base_url()),
    }
}
