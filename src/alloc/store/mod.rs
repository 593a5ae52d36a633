//! Where allocations live. Every store offers the same transaction: apply a mutation to the
//! latest state and make the result durable before returning it.

pub mod configmap;
mod file;
pub mod journal;
mod memory;

use std::future::Future;
use std::pin::Pin;

pub use configmap::ConfigMapStore;
pub use file::FileStore;
pub use memory::MemoryStore;

use super::allocator::AllocError;
use super::state::AllocState;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{store}: {source}")]
    Io {
        store: String,
        source: std::io::Error,
    },
    #[error("{store} is unreadable, refusing to use or overwrite it: {detail}")]
    Corrupt { store: String, detail: String },
    #[error("{store} is unavailable: {source}")]
    Unavailable { store: String, source: Unavailable },
    #[error(transparent)]
    Alloc(#[from] AllocError),
}

/// Why a store cannot be used now; it may come back. The variants let a caller tell a busy
/// writer lease from an API error.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// The API server refused or failed (the message is kube's, on one line).
    #[error("{}", configmap::api_message(.0))]
    Api(#[source] kube::Error),
    #[error("lease {lease} is held by {holder} (waited {waited:?})")]
    LeaseBusy {
        lease: &'static str,
        holder: String,
        waited: std::time::Duration,
    },
    #[error("gave up after {0} conflicting attempts")]
    Conflicts(u32),
    /// Hosts a transaction could not store (why was logged as it happened).
    #[error("not stored (see the errors above): {}", .0.join(" "))]
    NotStored(Vec<String>),
}

/// A change to apply; returns whether it changed anything. It may run more than once (a store
/// retries after a concurrent writer, and the ConfigMap store decides once from its cache and
/// again under its lease), so it must only depend on the state it is given and do nothing
/// outside it: no logging or counting. What it decided goes to a slot that each run overwrites, read after the store
/// returns (see `publish.rs`).
pub type Mutation = Box<dyn FnMut(&mut AllocState) -> Result<bool, AllocError> + Send>;

pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Runs `operate` on an [`Allocator`](super::Allocator) over the latest stored state, as one
/// transaction: what operators and tools do (no explicit addresses are known to them).
pub async fn operate<F>(
    store: &dyn Store,
    policy: std::sync::Arc<super::Policy>,
    mut operate: F,
) -> Result<AllocState, StoreError>
where
    F: FnMut(&mut super::Allocator<'_>) -> Result<(), AllocError> + Send + 'static,
{
    store
        .update(Box::new(move |state: &mut AllocState| {
            let none = super::Reserved::new();
            let mut alloc = super::Allocator::new(&policy, state, &none, super::unix_now());
            operate(&mut alloc)?;
            Ok(alloc.changed())
        }))
        .await
}

pub trait Store: Send + Sync + 'static {
    /// Human-readable location, for messages.
    fn describe(&self) -> String;

    fn load(&self) -> StoreFuture<'_, AllocState>;

    /// Applies `mutate` to the latest state and stores the result durably when it changed.
    /// Returns the state as stored. A failed mutation stores nothing.
    fn update(&self, mutate: Mutation) -> StoreFuture<'_, AllocState>;

    /// Resolves once the stored state may have been changed by another writer.
    fn changed(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;

    /// Lets go of what the store keeps between transactions for other writers' sake (the
    /// ConfigMap store's writer lease), when the process ends.
    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async {})
    }
}
