//! VIP allocation: every host without `spec.addresses` gets one stable virtual IP per address
//! family, keyed by host name, recorded durably in a [`Store`] before it is ever answered.

mod allocator;
mod holders;
mod pool;
mod state;
pub mod store;
mod tally;

pub use allocator::{
    AllocError, Allocator, Moved, Policy, PoolUsage, Reconciled, Reserved, Scope, check,
    in_istio_ranges, reconcile, unix_now, usage,
};
pub use holders::Holders;
pub use pool::{DEFAULT_POOL, ISTIO_RANGES, Pool, PoolError};
pub use state::{
    AllocState, DecodeError, FORMAT, Record, RecordState, Records, ZoneSerial, host_key,
    host_key_from_str,
};
pub use store::{
    ConfigMapStore, FileStore, MemoryStore, Mutation, Store, StoreError, Unavailable, operate,
};
pub use tally::Tally;
