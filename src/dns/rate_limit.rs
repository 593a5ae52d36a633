//! Response rate limiting (RRL) for UDP: how many answers a client prefix gets per second.
//!
//! A UDP source address can be forged, so an open DNS server can be made to send its answers to
//! a victim (reflection). Counting responses per client prefix (an IPv4 /24, an IPv6 /56 by
//! default, as NSD and Knot do) caps what any one network can receive from us. Past the limit
//! most answers are dropped; every `slip`th one is sent as an empty truncated reply (TC=1)
//! instead, so a real client behind a busy prefix retries over TCP, which cannot be forged, and
//! still gets its answer. TCP answers are never limited.
//!
//! Counters live in a fixed table of atomics indexed by a keyed hash of the prefix: no lock, no
//! allocation, and bounded memory however many prefixes a spoofed flood uses. Two prefixes that
//! land in the same slot share its budget, which errs towards limiting; the key is random per
//! process, so an attacker cannot aim a collision at a chosen victim.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use super::client::network;

/// Slots in the counter table (a power of two): 512 KiB.
const SLOTS: usize = 1 << 16;

/// What the limits are; `per_second` 0 turns limiting off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Responses one prefix may receive per second.
    pub per_second: u32,
    /// Of the responses past the limit, every `slip`th goes out truncated (TC=1) instead of
    /// being dropped; 0 drops them all, 1 truncates them all.
    pub slip: u32,
    /// Prefix lengths that make one client network.
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
}

/// What to do with one UDP response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Answer,
    /// Over the limit: send an empty truncated reply.
    Slip,
    /// Over the limit: send nothing.
    Drop,
}

pub struct RateLimiter {
    config: RateLimitConfig,
    /// Per slot: the second it counts (high 32 bits) and responses in it so far (low 32).
    slots: Box<[AtomicU64]>,
    key: std::collections::hash_map::RandomState,
    epoch: Instant,
}

impl RateLimiter {
    /// `None` when the configuration turns limiting off.
    pub fn new(config: RateLimitConfig) -> Option<Self> {
        (config.per_second > 0).then(|| RateLimiter {
            config,
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            key: Default::default(),
            epoch: Instant::now(),
        })
    }

    /// Counts one response to `client` at `now` and says whether it may go out.
    pub fn check(&self, client: IpAddr, now: Instant) -> Verdict {
        let second = now.saturating_duration_since(self.epoch).as_secs() as u32;
        let slot = &self.slots[self.key.hash_one(network(
            client,
            self.config.ipv4_prefix,
            self.config.ipv6_prefix,
        )) as usize
            & (SLOTS - 1)];
        // The slot after one more response: a new second starts counting from 1.
        let next = |packed: u64| {
            let count = if (packed >> 32) as u32 == second {
                (packed as u32).saturating_add(1)
            } else {
                1
            };
            u64::from(second) << 32 | u64::from(count)
        };
        let before = slot
            .fetch_update(Relaxed, Relaxed, |p| Some(next(p)))
            .expect("the update always succeeds");
        let count = next(before) as u32;
        let Some(over) = count.checked_sub(self.config.per_second).filter(|&o| o > 0) else {
            return Verdict::Answer;
        };
        if self.config.slip > 0 && over % self.config.slip == 0 {
            Verdict::Slip
        } else {
            Verdict::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limiter(per_second: u32, slip: u32) -> RateLimiter {
        RateLimiter::new(RateLimitConfig {
            per_second,
            slip,
            ipv4_prefix: 24,
            ipv6_prefix: 56,
        })
        .expect("limiting is on")
    }

    fn verdicts(l: &RateLimiter, client: &str, n: usize, now: Instant) -> Vec<Verdict> {
        let ip: IpAddr = client.parse().unwrap();
        (0..n).map(|_| l.check(ip, now)).collect()
    }

    #[test]
    fn zero_turns_limiting_off() {
        assert!(
            RateLimiter::new(RateLimitConfig {
                per_second: 0,
                slip: 2,
                ipv4_prefix: 24,
                ipv6_prefix: 56
            })
            .is_none()
        );
    }

    #[test]
    fn a_prefix_gets_its_limit_per_second_then_every_slipth_truncated() {
        let l = limiter(3, 2);
        let now = Instant::now();
        let v = verdicts(&l, "192.0.2.1", 3, now);
        assert_eq!(v, [Verdict::Answer; 3]);
        // Another address of the same /24 shares the budget.
        let v = verdicts(&l, "192.0.2.200", 4, now);
        use Verdict::*;
        assert_eq!(v, [Drop, Slip, Drop, Slip]);
        // A different /24 has its own.
        assert_eq!(verdicts(&l, "192.0.3.1", 1, now), [Answer]);
        // The next second starts afresh.
        let later = now + Duration::from_secs(1);
        assert_eq!(verdicts(&l, "192.0.2.1", 3, later), [Answer; 3]);
    }

    #[test]
    fn slip_zero_drops_all_and_one_truncates_all() {
        let now = Instant::now();
        let drop_all = limiter(1, 0);
        assert_eq!(
            verdicts(&drop_all, "10.0.0.1", 4, now)[1..],
            [Verdict::Drop; 3]
        );
        let slip_all = limiter(1, 1);
        assert_eq!(
            verdicts(&slip_all, "10.0.0.1", 4, now)[1..],
            [Verdict::Slip; 3]
        );
    }

    #[test]
    fn ipv6_clients_are_grouped_by_prefix_and_mapped_ipv4_as_ipv4() {
        let l = limiter(1, 0);
        let now = Instant::now();
        assert_eq!(verdicts(&l, "2001:db8:0:ff::1", 1, now), [Verdict::Answer]);
        // Same /56.
        assert_eq!(verdicts(&l, "2001:db8:0:1::2", 1, now), [Verdict::Drop]);
        // Another /56.
        assert_eq!(verdicts(&l, "2001:db8:1:100::1", 1, now), [Verdict::Answer]);
        assert_eq!(verdicts(&l, "198.51.100.7", 1, now), [Verdict::Answer]);
        assert_eq!(verdicts(&l, "::ffff:198.51.100.9", 1, now), [Verdict::Drop]);
    }
}
