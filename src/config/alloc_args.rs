//! The allocation flags `globaldns` and `dnsctl` share, declared once so that their names,
//! defaults and meaning cannot drift apart: an operator passes `dnsctl` the server's values.

use std::time::Duration;

use ipnet::IpNet;

use crate::alloc::{DEFAULT_POOL, ISTIO_RANGES, Policy, Pool, PoolError};

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
    /// 127.255.0.0/16 suits VMs; an IPv6 pool (a ULA prefix such as fd00:f1d0::/48) adds AAAA
    /// answers. Never handed out: the --istio-range parts.
    #[arg(long = "pool", global = true, default_value = DEFAULT_POOL, value_name = "CIDR")]
    pub pools: Vec<Pool>,

    /// Where istiod allocates VIPs itself (PILOT_IP_AUTOALLOCATE_IPV4_PREFIX and _IPV6_PREFIX;
    /// repeatable, replaces the defaults): no pool hands these out, and a pool inside one is
    /// refused.
    #[arg(
        long = "istio-range",
        global = true,
        default_values = ISTIO_RANGES,
        value_name = "CIDR"
    )]
    pub istio_ranges: Vec<IpNet>,

    /// How long a VIP stays reserved for a host that is no longer declared (or released).
    #[arg(long, global = true, default_value_t = 86400, value_name = "SECONDS")]
    pub grace: u64,
}

impl AllocArgs {
    /// The pools without Istio's ranges; an error for a pool that lies inside one of them.
    pub fn policy(&self) -> Result<Policy, PoolError> {
        let pools = (self.pools.iter())
            .map(|p| p.excluding(&self.istio_ranges))
            .collect::<Result<_, _>>()?;
        Ok(Policy {
            pools,
            grace: Duration::from_secs(self.grace),
        })
    }
}
