//! The allocation flags `globaldns` and `dnsctl` share, declared once so that their names,
//! defaults and meaning cannot drift apart: an operator passes `dnsctl` the server's values.

use std::time::Duration;

use crate::alloc::{DEFAULT_POOL, Policy, Pool};

#[derive(clap::Args, Debug, Clone)]
pub struct AllocArgs {
    /// Namespace of the allocation ConfigMaps (for the server, also of the remote secrets in the
    /// primary cluster).
    #[arg(
        long,
        short = 'n',
        global = true,
        default_value = "istio-system",
        value_name = "NS"
    )]
    pub namespace: String,

    /// Pool for VIPs of hosts without spec.addresses (repeatable, in order of preference).
    /// 127.255.0.0/16 suits VMs; an IPv6 pool such as 2001:2::/48 adds AAAA answers.
    #[arg(long = "pool", global = true, default_value = DEFAULT_POOL, value_name = "CIDR")]
    pub pools: Vec<Pool>,

    /// How long a VIP stays reserved for a host that is no longer declared (or released).
    #[arg(long, global = true, default_value_t = 86400, value_name = "SECONDS")]
    pub grace: u64,
}

impl AllocArgs {
    pub fn policy(&self) -> Policy {
        Policy {
            pools: self.pools.clone(),
            grace: Duration::from_secs(self.grace),
        }
    }
}
