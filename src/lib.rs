//! globaldns: an authoritative DNS server for the `.global` names of a multicluster Istio mesh,
//! forwarding every other name upstream.
//!
//! Data flows one way: [`source`] (ServiceEntry manifests) → [`catalog`] (one entry per host) →
//! [`zone`] (immutable name table with precomputed answers) → [`dns`] (sockets and wire format).
//! Names outside the served zones go to [`forward`].

pub mod alloc;
pub mod backoff;
pub mod bounded;
pub mod catalog;
pub mod cluster;
pub mod config;
pub mod ctl;
pub mod dns;
pub mod forward;
pub mod metrics;
pub mod ops;
pub mod publish;
pub mod server;
pub mod source;
pub mod wire;
pub mod zone;
