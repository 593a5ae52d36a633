//! A writer lock on a `coordination.k8s.io/v1` Lease.
//!
//! Compare-and-swap on each shard cannot keep an address unique *across* shards: two writers
//! could give one free address to two hosts in different shards. So writers first take this
//! lease (itself acquired by compare-and-swap), and hold it while they read, decide and write.
//! A holder that dies loses it when `leaseDurationSeconds` pass without renewal.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tracing::debug;

use super::retry::{api_code, with_retries};

pub const LEASE_NAME: &str = "globaldns-allocator";
/// Longer than any transaction; a crashed holder blocks writers at most this long.
const LEASE_SECONDS: i32 = 30;
/// How long to wait for a busy lease before giving up.
pub const WAIT: Duration = Duration::from_secs(60);

pub struct WriterLock {
    api: Api<Lease>,
    identity: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("lease {LEASE_NAME} is held by {0} (waited {WAIT:?})")]
    Busy(String),
    #[error(transparent)]
    Api(#[from] kube::Error),
}

impl WriterLock {
    pub fn new(api: Api<Lease>, identity: String) -> Self {
        WriterLock { api, identity }
    }

    /// Takes the lease, waiting while someone else holds a live one.
    pub async fn acquire(&self) -> Result<(), LockError> {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut delays = crate::backoff::lease_wait();
        loop {
            let holder = match self.try_acquire().await? {
                None => return Ok(()),
                Some(holder) => holder,
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(LockError::Busy(holder));
            }
            let delay = delays.next().expect("lease_wait never gives up");
            tokio::time::sleep(delay).await;
        }
    }

    /// `None` when acquired; otherwise who holds it.
    async fn try_acquire(&self) -> Result<Option<String>, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let current = with_retries("get lease", || self.api.get_opt(LEASE_NAME)).await?;
        let Some(mut lease) = current else {
            let mut lease = Lease::default();
            lease.metadata.name = Some(LEASE_NAME.to_string());
            lease.spec = Some(self.spec(now.clone(), 0));
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(None),
                Err(e) if api_code(&e) == Some(409) => Ok(Some("a concurrent creator".into())),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let expired = spec.renew_time.as_ref().is_none_or(|t| {
            let duration = i64::from(spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS));
            t.0.as_second() + duration < now.0.as_second()
        });
        if !holder.is_empty() && holder != self.identity && !expired {
            return Ok(Some(holder));
        }
        if !holder.is_empty() && holder != self.identity {
            debug!(previous = %holder, "taking over an expired allocator lease");
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(holder != self.identity);
        lease.spec = Some(self.spec(now, transitions));
        // resourceVersion is kept: this replace is a compare-and-swap.
        match self
            .api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(None),
            Err(e) if api_code(&e) == Some(409) => Ok(Some("a concurrent writer".into())),
            Err(e) => Err(e),
        }
    }

    fn spec(&self, now: MicroTime, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_duration_seconds: Some(LEASE_SECONDS),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// Gives the lease up (best effort: an unreleased lease expires on its own).
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(LEASE_NAME).await else {
            return;
        };
        if let Some(spec) = lease
            .spec
            .as_mut()
            .filter(|s| s.holder_identity.as_deref() == Some(&self.identity))
        {
            spec.holder_identity = None;
            spec.renew_time = None;
            if let Err(e) = self
                .api
                .replace(LEASE_NAME, &PostParams::default(), &lease)
                .await
            {
                debug!(error = %e, "could not release the allocator lease; it will expire");
            }
        }
    }
}
