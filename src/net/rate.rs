//! [`RateLimiter`]: a keyed token bucket, so one peer's burst of requests
//! costs that peer its budget without touching anyone else's.
//!
//! Time is passed in by the caller (an [`Instant`]), so the limiter is a pure
//! state machine and its tests need no clock.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Instant;

/// Most keys remembered; beyond this, keys whose bucket has refilled are
/// forgotten (they would start full anyway), so the map stays bounded
/// whatever number of identities a swarm throws at it.
const MAX_KEYS: usize = 4096;

/// A bucket: `tokens` left as of `at`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets per key: each key may spend `rate` units per second on
/// average, and at most `burst` at once. A rate of zero disables the limit.
#[derive(Debug)]
pub struct RateLimiter<K> {
    rate: f64,
    burst: f64,
    buckets: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// `per_sec` units per second per key, bursts of up to `burst` (at
    /// least one). `per_sec == 0` lets everything through.
    pub fn new(per_sec: u32, burst: u32) -> Self {
        RateLimiter {
            rate: f64::from(per_sec),
            burst: f64::from(burst.max(1)),
            buckets: HashMap::new(),
        }
    }

    /// Spends one unit of `key`'s budget at `now`; `false` if it has none
    /// left (the request should be refused).
    pub fn check(&mut self, key: &K, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        if self.buckets.len() >= MAX_KEYS && !self.buckets.contains_key(key) {
            self.prune(now);
        }
        let (rate, burst) = (self.rate, self.burst);
        let b = self.buckets.entry(key.clone()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forgets every key whose bucket is full again at `now`; if that frees
    /// nothing (a flood of fresh keys), forgets all: a refilled bucket for
    /// everyone is the safe side for honest peers.
    fn prune(&mut self, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        self.buckets.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
        });
        if self.buckets.len() >= MAX_KEYS {
            self.buckets.clear();
        }
    }

    /// Keys currently remembered.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_then_refills_per_key() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(10, 5);
        for _ in 0..5 {
            assert!(r.check(&"a", t0));
        }
        assert!(!r.check(&"a", t0), "burst spent");
        assert!(r.check(&"b", t0), "another key is untouched");
        // 10 per second: one token every 100 ms.
        assert!(!r.check(&"a", t0 + Duration::from_millis(50)));
        assert!(r.check(&"a", t0 + Duration::from_millis(160)));
        assert!(!r.check(&"a", t0 + Duration::from_millis(170)));
        // Never more than the burst, however long the pause.
        let later = t0 + Duration::from_secs(3600);
        let granted = (0..20).filter(|_| r.check(&"a", later)).count();
        assert_eq!(granted, 5);
    }

    #[test]
    fn zero_rate_is_unlimited_and_keys_stay_bounded() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(0, 1);
        assert!((0..1000).all(|_| r.check(&1u32, t0)));
        let mut r = RateLimiter::new(1, 1);
        for k in 0..(MAX_KEYS as u32 * 3) {
            r.check(&k, t0);
        }
        assert!(r.len() <= MAX_KEYS);
    }
}
