//! The name table: what we answer for names inside the served zones.

mod journal;
mod nodes;
mod reverse;
mod soa;
mod table;

use std::sync::Arc;

use arc_swap::ArcSwap;

pub use journal::{Delta, Journal};
pub use soa::SoaSettings;
pub use table::{BuildError, Lookup, NameTable, OwnedRecord, ZoneContent, ZoneSettings};

/// The current table, replaced whole on every change; readers never wait for writers.
pub type SharedTable = Arc<ArcSwap<NameTable>>;
