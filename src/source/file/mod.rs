//! The file source: ServiceEntry manifests in `*.yaml` / `*.yml` files under a directory.
//!
//! Each file is all-or-nothing: a file that fails to parse is skipped with a log line naming it,
//! and everything else is served. Changes are picked up from filesystem events, with a periodic
//! rescan as a safety net for filesystems that do not deliver them (network mounts, some
//! ConfigMap volume updates).
//!
//! `parse.rs` turns one file's text into declarations, `scan.rs` reads a directory (again only
//! what changed), `watch.rs` keeps the source set up to date from events and rescans.

mod parse;
mod scan;
mod watch;

pub use parse::parse_manifest;
pub use scan::{MAX_MANIFEST_BYTES, Scan, Scanner, scan};
pub use watch::{SOURCE, watch_dir};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("reading: {0}")]
    Read(#[from] std::io::Error),
    #[error("YAML: {0}")]
    Yaml(String),
    #[error("line {line}: ServiceEntry {name:?}: {source}")]
    Entry {
        line: u64,
        name: String,
        source: crate::source::service_entry::EntryError,
    },
}

#[cfg(test)]
pub(crate) const GOOD: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.global]
  addresses: [240.0.0.3]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ignored}
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: httpbin}
spec:
  hosts: [httpbin.bar.global]
  addresses: [127.255.0.3]
---
apiVersion: example.com/v1
kind: ServiceEntry
metadata: {name: not-istio}
spec: {hosts: [x.global], addresses: [1.2.3.4]}
";
