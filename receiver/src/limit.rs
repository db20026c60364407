//! Per-source token buckets (SPEC "Bad input": floods are limited per source, dropped and
//! counted, never allowed to grow memory).
//!
//! Sans-IO: time is an argument. The table of sources is bounded; when full, the source idle
//! the longest is forgotten (it starts again with a full bucket, which is the safe side).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Sustained messages per second per source; 0 disables limiting.
    pub per_second: u64,
    /// Burst a source may send at once.
    pub burst: u64,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

pub struct TokenBuckets {
    limit: RateLimit,
    sources_max: usize,
    buckets: HashMap<IpAddr, Bucket>,
}

impl TokenBuckets {
    pub fn new(limit: RateLimit, sources_max: usize) -> TokenBuckets {
        TokenBuckets {
            limit,
            sources_max: sources_max.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Takes one token for `source` at `now`; false means: over the limit, drop and count.
    pub fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        self.wait_for(source, now).is_none()
    }

    /// Takes one token, or says how long until one is available (for TCP, which can wait
    /// instead of dropping: the sender is slowed by TCP flow control, nothing is lost).
    pub fn wait_for(&mut self, source: IpAddr, now: Instant) -> Option<std::time::Duration> {
        if self.limit.per_second == 0 {
            return None;
        }
        if !self.buckets.contains_key(&source) && self.buckets.len() >= self.sources_max {
            self.evict_idlest();
        }
        let rate = self.limit.per_second as f64;
        let burst = self.limit.burst.max(1) as f64;
        let b = self.buckets.entry(source).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            None
        } else {
            Some(std::time::Duration::from_secs_f64((1.0 - b.tokens) / rate))
        }
    }

    pub fn sources(&self) -> usize {
        self.buckets.len()
    }

    fn evict_idlest(&mut self) {
        if let Some(ip) = self
            .buckets
            .iter()
            .min_by_key(|(_, b)| b.last)
            .map(|(ip, _)| *ip)
        {
            self.buckets.remove(&ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn burst_then_sustained_rate() {
        let mut tb = TokenBuckets::new(
            RateLimit {
                per_second: 10,
                burst: 5,
            },
            16,
        );
        let t0 = Instant::now();
        assert_eq!((0..8).filter(|_| tb.allow(A, t0)).count(), 5);
        // Another source has its own bucket.
        assert!(tb.allow(B, t0));
        // 1 s later: 10 more tokens, capped at the burst of 5.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..8).filter(|_| tb.allow(A, t1)).count(), 5);
        let wait = tb.wait_for(A, t1).expect("empty bucket");
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO);
    }

    #[test]
    fn zero_rate_disables_and_table_is_bounded() {
        let mut off = TokenBuckets::new(
            RateLimit {
                per_second: 0,
                burst: 0,
            },
            1,
        );
        assert!((0..1000).all(|_| off.allow(A, Instant::now())));
        let mut tb = TokenBuckets::new(
            RateLimit {
                per_second: 1,
                burst: 1,
            },
            2,
        );
        let now = Instant::now();
        for i in 0..100u8 {
            tb.allow(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, i)), now);
        }
        assert_eq!(tb.sources(), 2);
    }
}
