//! globaldns: an authoritative DNS server for the `.global` names of a multicluster Istio mesh,
//! forwarding every other name upstream.
//!
//! Data flows one way: [`source`] (ServiceEntry manifests and clusters) → [`catalog`] (one entry
//! per host) → [`alloc`] (VIPs, stored) → [`zone`] (immutable name table with precomputed
//! answers) → [`dns`] (sockets and the handler). Names outside the served zones go to
//! [`forward`]. [`publish`] runs that pipeline on every change; [`server`] only wires the layers.
//!
//! At the bottom, importing nothing of ours: [`wire`] (the DNS wire format), [`metrics`] (the
//! helpers every layer's metrics are written with), [`backoff`] (every retry's pacing) and
//! [`bounded`] (reading operators' files). [`ops`] serves the metrics registry and readiness it
//! is given. `tests/layering.rs` keeps it that way.

pub mod alloc;
pub mod background;
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
pub mod status;
pub mod wire;
pub mod zone;
