//! How long to wait before trying again, for every retry in the server, in one place and each
//! named by what it waits for. Built on `backon`'s exponential backoff; a policy is an iterator
//! of delays, `None` when it gives up. (kube-runtime's watchers keep their own client-go style
//! backoff: see `cluster::relisting_watcher`.)

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

fn doubling(first: Duration, max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_factor(2.0)
        .with_min_delay(first)
        .with_max_delay(max)
}

/// A Kubernetes API call that failed for a reason that may pass (5xx, 429, a broken
/// connection): 100 ms doubling, six retries, about six seconds in all, before the error is
/// reported to the caller (which has its own retry).
pub fn api_call() -> ExponentialBuilder {
    doubling(Duration::from_millis(100), Duration::from_secs(4)).with_max_times(6)
}

/// Finding which ServiceEntry API version a cluster serves: 0.5 s doubling to 30 s, forever
/// (a cluster without Istio's CRDs yet may get them later).
pub fn discovery() -> ExponentialBackoff {
    doubling(Duration::from_millis(500), Duration::from_secs(30))
        .without_max_times()
        .build()
}

/// Storing allocations after the store failed: 1 s doubling to 30 s, forever. New hosts stay
/// unanswered meanwhile, so the first retries come quickly.
pub fn store_retry() -> ExponentialBackoff {
    doubling(Duration::from_secs(1), Duration::from_secs(30))
        .without_max_times()
        .build()
}

/// Another writer changed an allocation shard under us: 50 ms doubling to 2 s, with jitter so
/// that writers that collided do not collide again, for `retries` retries.
pub fn shard_conflict(retries: usize) -> ExponentialBackoff {
    doubling(Duration::from_millis(50), Duration::from_secs(2))
        .with_jitter()
        .with_max_times(retries)
        .build()
}

/// Waiting for another writer's lease: 20 ms doubling to 0.5 s, jittered, until the caller's
/// deadline.
pub fn lease_wait() -> ExponentialBackoff {
    doubling(Duration::from_millis(20), Duration::from_millis(500))
        .with_jitter()
        .without_max_times()
        .build()
}

/// How long to wait for a secondary to answer a NOTIFY before sending it again: 1 s doubling,
/// five tries in all (RFC 1996 §3.6 leaves the schedule to us; BIND also tries five times).
pub fn notify_wait() -> ExponentialBackoff {
    doubling(Duration::from_secs(1), Duration::from_secs(16))
        .with_max_times(5)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_double_up_to_their_cap_and_stop_when_they_say() {
        let api: Vec<Duration> = api_call().build().collect();
        let ms: Vec<u128> = api.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200]);
        let store: Vec<Duration> = store_retry().take(8).collect();
        assert_eq!(store[0], Duration::from_secs(1));
        assert_eq!(store[7], Duration::from_secs(30));
        assert_eq!(shard_conflict(3).count(), 3);
        for (i, delay) in lease_wait().take(10).enumerate() {
            let base = Duration::from_millis((20u64 << i).min(500));
            assert!(delay >= base && delay <= base * 2, "{i}: {delay:?}");
        }
    }
}
