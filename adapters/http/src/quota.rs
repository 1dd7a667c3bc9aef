//! Per-tenant request and byte rates: a token bucket per tenant and rate.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::StatusCode;

use crate::error::ApiError;

/// Rates one tenant may use, each a token bucket; 0 turns one off.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateLimits {
    /// Requests per second, sustained.
    pub requests_per_second: f64,
    /// Requests that may come at once after a quiet time.
    pub request_burst: u32,
    /// Upload bytes per second, sustained.
    pub bytes_per_second: u64,
    /// Upload bytes that may come at once; at least the largest request,
    /// or that request could never pass.
    pub byte_burst: u64,
}

/// Tenants tracked at most; beyond, full buckets (the same as new ones)
/// are dropped.
const MAX_TENANTS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Refill at `rate` up to `burst`, then take `cost`; or the time until
    /// there is room (nothing taken). A cost above the burst passes with
    /// a full bucket and leaves it in debt, so that large requests cost
    /// what they weigh.
    fn take(&mut self, cost: f64, rate: f64, burst: f64, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at = now;
        let needed = cost.min(burst);
        if self.tokens >= needed {
            self.tokens -= cost;
            Ok(())
        } else {
            let cost = needed;
            // Finite and positive for a positive, finite rate; anything
            // else says "a second".
            Err(Duration::try_from_secs_f64((cost - self.tokens) / rate)
                .unwrap_or(Duration::from_secs(1)))
        }
    }
}

/// The buckets of every tenant.
#[derive(Debug, Default)]
pub(crate) struct Limiter {
    limits: RateLimits,
    buckets: Mutex<HashMap<String, [Option<Bucket>; 2]>>,
}

const REQUESTS: usize = 0;
const BYTES: usize = 1;

impl Limiter {
    pub(crate) fn new(limits: RateLimits) -> Self {
        Self {
            limits,
            buckets: Mutex::default(),
        }
    }

    /// Count one request of `tenant`; 429 `rate_limited` when its rate is
    /// used up.
    pub(crate) fn request(&self, tenant: &str) -> Result<(), ApiError> {
        let l = &self.limits;
        let burst = f64::from(l.request_burst.max(1));
        self.take(
            tenant,
            REQUESTS,
            1.0,
            l.requests_per_second,
            burst,
            "requests",
        )
    }

    /// Whether a byte rate is set.
    pub(crate) fn meters_bytes(&self) -> bool {
        self.limits.bytes_per_second > 0
    }

    /// Count `bytes` of upload of `tenant`; 429 `rate_limited` when its
    /// byte rate is used up.
    pub(crate) fn bytes(&self, tenant: &str, bytes: u64) -> Result<(), ApiError> {
        let l = &self.limits;
        let burst = l.byte_burst.max(l.bytes_per_second) as f64;
        self.take(
            tenant,
            BYTES,
            bytes as f64,
            l.bytes_per_second as f64,
            burst,
            "upload bytes",
        )
    }

    fn take(
        &self,
        tenant: &str,
        which: usize,
        cost: f64,
        rate: f64,
        burst: f64,
        what: &str,
    ) -> Result<(), ApiError> {
        // Off when 0 (or not a usable number).
        if !(rate.is_finite() && rate > 0.0) {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_TENANTS && !buckets.contains_key(tenant) {
            let limits = self.limits;
            buckets.retain(|_, b| !is_full(b, &limits, now));
            if buckets.len() >= MAX_TENANTS {
                // Still full of busy tenants: forget the half seen least
                // lately (a forgotten tenant starts again with a full
                // bucket, the most it could have had).
                let mut seen: Vec<Instant> = buckets.values().map(last_seen).collect();
                let middle = seen.len() / 2;
                let (_, cut, _) = seen.select_nth_unstable(middle);
                let cut = *cut;
                buckets.retain(|_, b| last_seen(b) > cut);
            }
        }
        let slot = &mut buckets.entry(tenant.to_string()).or_default()[which];
        let bucket = slot.get_or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        bucket.take(cost, rate, burst, now).map_err(|wait| {
            let seconds = wait.as_secs_f64().ceil().max(1.0) as u32;
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("tenant {tenant:?} is over its rate of {what}; retry in {seconds} s"),
            );
            e.retry_after = Some(seconds);
            e
        })
    }
}

/// When a tenant's buckets were last used.
fn last_seen(b: &[Option<Bucket>; 2]) -> Instant {
    b.iter()
        .flatten()
        .map(|b| b.at)
        .max()
        .unwrap_or_else(Instant::now)
}

/// Whether both buckets would be full now (dropping them changes nothing).
fn is_full(b: &[Option<Bucket>; 2], l: &RateLimits, now: Instant) -> bool {
    let full = |slot: &Option<Bucket>, rate: f64, burst: f64| {
        slot.is_none_or(|b| {
            b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate >= burst
        })
    };
    full(
        &b[REQUESTS],
        l.requests_per_second,
        f64::from(l.request_burst.max(1)),
    ) && full(
        &b[BYTES],
        l.bytes_per_second as f64,
        l.byte_burst.max(l.bytes_per_second) as f64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_refills_at_its_rate_up_to_its_burst() {
        let t0 = Instant::now();
        let mut b = Bucket {
            tokens: 3.0,
            at: t0,
        };
        for _ in 0..3 {
            assert!(b.take(1.0, 2.0, 3.0, t0).is_ok());
        }
        let wait = b.take(1.0, 2.0, 3.0, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        // Half a second later: one token.
        let t1 = t0 + Duration::from_millis(500);
        assert!(b.take(1.0, 2.0, 3.0, t1).is_ok());
        assert!(b.take(1.0, 2.0, 3.0, t1).is_err());
        // A long quiet time refills to the burst, not beyond.
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(b.take(1.0, 2.0, 3.0, t2).is_ok());
        }
        assert!(b.take(1.0, 2.0, 3.0, t2).is_err());
    }

    #[test]
    fn tenants_have_buckets_of_their_own() {
        let limiter = Limiter::new(RateLimits {
            requests_per_second: 1.0,
            request_burst: 2,
            ..RateLimits::default()
        });
        assert!(limiter.request("a").is_ok());
        assert!(limiter.request("a").is_ok());
        let refused = limiter.request("a").unwrap_err();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.code, "rate_limited");
        assert_eq!(refused.retry_after, Some(1));
        assert!(limiter.request("b").is_ok());
        // No byte rate set: bytes are not counted.
        assert!(limiter.bytes("a", u64::MAX).is_ok());
    }

    #[test]
    fn the_buckets_of_many_busy_tenants_are_bounded() {
        let limiter = Limiter::new(RateLimits {
            requests_per_second: 0.001,
            request_burst: 1,
            ..RateLimits::default()
        });
        for n in 0..(MAX_TENANTS + 10) {
            assert!(limiter.request(&format!("t{n}")).is_ok());
        }
        let kept = limiter.buckets.lock().unwrap().len();
        assert!(kept <= MAX_TENANTS, "{kept}");
        // The latest are kept, and still held to their rate.
        assert!(limiter.request(&format!("t{}", MAX_TENANTS + 9)).is_err());
    }

    #[test]
    fn an_upload_larger_than_the_burst_takes_a_full_bucket() {
        let limiter = Limiter::new(RateLimits {
            bytes_per_second: 1000,
            byte_burst: 5000,
            ..RateLimits::default()
        });
        assert!(limiter.bytes("a", 1_000_000).is_ok());
        // In debt for what it weighed: about 1000 s at 1000 bytes/s.
        let refused = limiter.bytes("a", 1000).unwrap_err();
        let after = refused.retry_after.unwrap();
        assert!((995..=1001).contains(&after), "{after}");
    }
}
