//! A writer lock on a `coordination.k8s.io/v1` Lease.
//!
//! Compare-and-swap on each shard cannot keep an address unique *across* shards: two writers
//! could give one free address to two hosts in different shards. So writers first take this
//! lease (itself acquired by compare-and-swap), and hold it while they read, decide and write.
//! A holder that dies loses it when `leaseDurationSeconds` pass without renewal.
//!
//! Two things keep a busy mesh's changes from paying for the lease every time:
//! - a holder may keep the lease for a short while after a transaction ([`WriterLock::hold`]),
//!   so the transactions of one change, and the next change, reuse it and what was read under it;
//! - a holder that releases writes its last shard write into the lease ([`LAST_WRITE`]). The
//!   next holder, once its shard watch has delivered that write, has seen every write made
//!   under the lease (a watch delivers events in order) and need not list the shards again.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::{Mutex, MutexGuard};
use tokio::time::Instant;
use tracing::debug;

use super::retry::{api_code, with_retries};

pub const LEASE_NAME: &str = "globaldns-allocator";
/// A crashed holder blocks writers at most this long (as long as Kubernetes' own leader
/// elections), and a restarted server waits for it at start (the test of that: a server killed
/// while it keeps the lease). Holders make sure it outlasts their writes: see [`WRITE_WINDOW`].
const LEASE_SECONDS: i32 = 15;
/// A holder starts no shard write later than this after taking the lease: what is left (8 s)
/// covers a write's retries (about 6 s) with room to spare, so no write lands after the lease
/// could have been taken over. A transaction that gets there starts again under a lease taken
/// anew. A kept lease is given up after 2 s, so this only ever stops a slow transaction.
const WRITE_WINDOW: Duration = Duration::from_secs(7);
/// How long to wait for a busy lease before giving up, unless told otherwise: longer than the
/// lease, so that only live holders that keep taking it make a writer give up.
pub const WAIT: Duration = Duration::from_secs(60);
/// On the lease: the shard ConfigMap and resourceVersion of the last write made under it, as
/// `<leaseTransitions> <name> <resourceVersion>`, written by a holder that releases it.
const LAST_WRITE: &str = "globaldns.io/last-write";

/// A shard write: the ConfigMap's name and the resourceVersion the write gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    pub shard: String,
    pub resource_version: String,
}

pub struct WriterLock<V> {
    inner: Arc<Inner<V>>,
}

struct Inner<V> {
    api: Api<Lease>,
    identity: String,
    /// How long a taken lease may be kept for more transactions; zero gives it up after each.
    hold: Duration,
    /// A kept lease is given up once no transaction used it for this long.
    idle: Duration,
    state: Mutex<Holding<V>>,
}

struct Holding<V> {
    /// The lease as we last wrote it: the next write replaces it by compare-and-swap without
    /// reading it first.
    lease: Option<Lease>,
    /// When we took it, while we hold it.
    since: Option<Instant>,
    /// Transactions so far, so that a pending release knows whether one came after it.
    uses: u64,
    /// The last shard write made under the lease, by us or (when we took it from a holder that
    /// released it) by the holder before us.
    last_write: Option<Write>,
    /// What the holder read and wrote under this lease; dropped when the lease is taken anew.
    view: Option<V>,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("lease {LEASE_NAME} is held by {holder} (waited {waited:?})")]
    Busy { holder: String, waited: Duration },
    #[error(transparent)]
    Api(#[from] kube::Error),
}

/// The lease, held for one transaction.
pub struct Held<'a, V: Send + 'static> {
    state: MutexGuard<'a, Holding<V>>,
    inner: &'a Arc<Inner<V>>,
}

impl<V: Send + 'static> WriterLock<V> {
    pub fn new(api: Api<Lease>, identity: String) -> Self {
        WriterLock {
            inner: Arc::new(Inner {
                api,
                identity,
                hold: Duration::ZERO,
                idle: Duration::ZERO,
                state: Mutex::new(Holding {
                    lease: None,
                    since: None,
                    uses: 0,
                    last_write: None,
                    view: None,
                }),
            }),
        }
    }

    /// Keeps a taken lease for up to `hold`, while transactions come less than `idle` apart
    /// (see the module documentation). A process that ends must [`close`](Self::close) it, or
    /// other writers wait until it expires. `hold` is cut to [`WRITE_WINDOW`]: a lease kept
    /// longer could not be written under.
    pub fn hold(&mut self, hold: Duration, idle: Duration) {
        let inner = Arc::get_mut(&mut self.inner).expect("configured before use");
        (inner.hold, inner.idle) = (hold.min(WRITE_WINDOW), idle);
    }

    /// Takes the lease, or keeps holding it, waiting up to `wait` while someone else holds a
    /// live one. `None` when `still_needed` says, between waits, that the transaction is moot.
    pub async fn lock(
        &self,
        wait: Duration,
        mut still_needed: impl FnMut() -> bool,
    ) -> Result<Option<Held<'_, V>>, LockError> {
        let mut state = self.inner.state.lock().await;
        state.uses += 1;
        match state.since {
            Some(since) if since.elapsed() < self.inner.hold => {
                return Ok(Some(self.held(state)));
            }
            Some(_) => self.inner.release(&mut state).await,
            None => {}
        }
        let deadline = Instant::now() + wait;
        let mut delays = crate::backoff::lease_wait();
        loop {
            let holder = match self.inner.try_acquire(&mut state).await? {
                None => {
                    state.since = Some(Instant::now());
                    return Ok(Some(self.held(state)));
                }
                Some(holder) => holder,
            };
            if Instant::now() >= deadline {
                return Err(LockError::Busy {
                    holder,
                    waited: wait,
                });
            }
            if !still_needed() {
                return Ok(None);
            }
            let delay = delays.next().expect("lease_wait never gives up");
            tokio::time::sleep(delay).await;
        }
    }

    fn held<'a>(&'a self, state: MutexGuard<'a, Holding<V>>) -> Held<'a, V> {
        Held {
            state,
            inner: &self.inner,
        }
    }

    /// Gives up a kept lease now.
    pub async fn close(&self) {
        let mut state = self.inner.state.lock().await;
        if state.since.is_some() {
            self.inner.release(&mut state).await;
        }
    }
}

impl<V: Send + 'static> Held<'_, V> {
    /// What was read and written under this lease, taken out: whoever takes it puts it back
    /// once it is true again, so that a transaction cut short leaves nothing stale behind.
    pub fn take_view(&mut self) -> Option<V> {
        self.state.view.take()
    }

    pub fn keep_view(&mut self, view: V) {
        self.state.view = Some(view);
    }

    /// The last shard write made under the lease (see [`LAST_WRITE`]), if known.
    pub fn last_write(&self) -> Option<&Write> {
        self.state.last_write.as_ref()
    }

    /// Whether a shard write may start now: see [`WRITE_WINDOW`].
    pub fn may_write(&self) -> bool {
        self.state.since.is_some_and(|s| s.elapsed() < WRITE_WINDOW)
    }

    pub fn wrote(&mut self, write: Write) {
        self.state.last_write = Some(write);
    }

    /// Ends the transaction: gives the lease up now, or once it has been idle for a while.
    pub async fn finish(mut self) {
        let inner = self.inner.clone();
        let kept = self.state.since.is_some_and(|s| s.elapsed() < inner.hold);
        if !kept {
            inner.release(&mut self.state).await;
            return;
        }
        let uses = self.state.uses;
        drop(self);
        tokio::spawn(async move {
            tokio::time::sleep(inner.idle).await;
            let mut state = inner.state.lock().await;
            if state.uses == uses && state.since.is_some() {
                inner.release(&mut state).await;
            }
        });
    }
}

impl<V> Inner<V> {
    /// `None` when acquired; otherwise who holds it. Tries the lease as we last wrote it first:
    /// when nobody took it since, one request takes it.
    async fn try_acquire(&self, state: &mut Holding<V>) -> Result<Option<String>, kube::Error> {
        if let Some(lease) = state.lease.take()
            && self.take(state, lease).await?.is_none()
        {
            return Ok(None);
        }
        let current = with_retries("get lease", || self.api.get_opt(LEASE_NAME)).await?;
        let Some(lease) = current else {
            let mut lease = Lease::default();
            lease.metadata.name = Some(LEASE_NAME.to_string());
            lease.spec = Some(self.spec(0));
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    state.taken(created, None);
                    Ok(None)
                }
                Err(e) if api_code(&e) == Some(409) => Ok(Some("a concurrent creator".into())),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let expired = spec.renew_time.as_ref().is_none_or(|t| {
            let duration = i64::from(spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS));
            t.0.as_second() + duration < Timestamp::now().as_second()
        });
        if !holder.is_empty() && holder != self.identity && !expired {
            return Ok(Some(holder));
        }
        self.take(state, lease).await
    }

    /// Replaces `lease` (kept resourceVersion: a compare-and-swap) with one held by us.
    async fn take(
        &self,
        state: &mut Holding<V>,
        mut lease: Lease,
    ) -> Result<Option<String>, kube::Error> {
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.unwrap_or_default();
        let transitions = spec.lease_transitions.unwrap_or(0);
        // Ours: we know what we wrote. Released: the holder said what it wrote last, unless
        // it did not say (a version without LAST_WRITE took the lease since the note was
        // written, counting a transition). Expired: the holder may have written after saying.
        let last_write = if holder == self.identity {
            state.last_write.clone()
        } else if holder.is_empty() {
            last_write(&lease, transitions)
        } else {
            debug!(previous = %holder, "taking over an expired allocator lease");
            None
        };
        let transitions = transitions + i32::from(holder != self.identity);
        lease.spec = Some(self.spec(transitions));
        match self
            .api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
        {
            Ok(taken) => {
                state.taken(taken, last_write);
                Ok(None)
            }
            Err(e) if api_code(&e) == Some(409) => Ok(Some("a concurrent writer".into())),
            Err(e) => Err(e),
        }
    }

    fn spec(&self, transitions: i32) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_duration_seconds: Some(LEASE_SECONDS),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// Gives the lease up, saying what was written last (best effort: an unreleased lease
    /// expires on its own). Compare-and-swap on the lease as we took it: when that fails,
    /// someone took it over after it expired, and it is theirs.
    async fn release(&self, state: &mut Holding<V>) {
        state.since = None;
        state.view = None;
        let Some(mut lease) = state.lease.take() else {
            return;
        };
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
            spec.renew_time = None;
        }
        let transitions = lease.spec.as_ref().and_then(|s| s.lease_transitions);
        if let Some(write) = &state.last_write {
            let annotations = lease.metadata.annotations.get_or_insert_default();
            let value = format!(
                "{} {} {}",
                transitions.unwrap_or(0),
                write.shard,
                write.resource_version
            );
            annotations.insert(LAST_WRITE.to_string(), value);
        }
        match self
            .api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
        {
            Ok(released) => state.lease = Some(released),
            Err(e) => debug!(error = %e, "could not release the allocator lease; it will expire"),
        }
    }
}

impl<V> Holding<V> {
    fn taken(&mut self, lease: Lease, last_write: Option<Write>) {
        self.lease = Some(lease);
        self.last_write = last_write;
        self.view = None;
    }
}

/// The last write noted on a released lease, if no writer took it since without noting its own:
/// the note counts the lease's transitions when it was written, and every taking adds one.
fn last_write(lease: &Lease, transitions: i32) -> Option<Write> {
    let value = lease.metadata.annotations.as_ref()?.get(LAST_WRITE)?;
    let mut words = value.split(' ');
    let noted: i32 = words.next()?.parse().ok()?;
    let (shard, resource_version) = (words.next()?, words.next()?);
    if noted != transitions || words.next().is_some() {
        return None;
    }
    Some(Write {
        shard: shard.to_string(),
        resource_version: resource_version.to_string(),
    })
}
