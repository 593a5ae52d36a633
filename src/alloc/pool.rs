//! Address pools: which addresses may be handed out, and in which order a host tries them.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use sha2::{Digest, Sha256};

/// Class E, reserved and unroutable: what Istio's multicluster docs use for `.global` VIPs.
pub const DEFAULT_POOL: &str = "240.0.0.0/4";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("{0:?} is not a CIDR (e.g. 240.0.0.0/4)")]
    Parse(String),
    #[error("pool {0} has no usable address")]
    Empty(IpNet),
    #[error("pool {0} is larger than 2^96 addresses")]
    TooLarge(IpNet),
}

/// One CIDR. Unusable addresses are skipped: the network and broadcast addresses, and in IPv4
/// every `.0` and `.255`, which some clients and firewalls treat as special.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    net: IpNet,
}

impl Pool {
    pub fn new(net: IpNet) -> Result<Pool, PoolError> {
        let net = net.trunc();
        if net.max_prefix_len() - net.prefix_len() > 96 {
            return Err(PoolError::TooLarge(net));
        }
        let pool = Pool { net };
        if pool.capacity() == 0 {
            return Err(PoolError::Empty(net));
        }
        Ok(pool)
    }

    pub fn net(&self) -> IpNet {
        self.net
    }

    pub fn is_ipv4(&self) -> bool {
        matches!(self.net, IpNet::V4(_))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.net.contains(&ip)
    }

    /// Whether `ip` is in the pool and may be handed out.
    pub fn is_usable(&self, ip: IpAddr) -> bool {
        if !self.contains(ip) {
            return false;
        }
        // In a /31 or /32 (/127, /128) every address is a host address (RFC 3021).
        if self.net.max_prefix_len() - self.net.prefix_len() <= 1 {
            return true;
        }
        match ip {
            IpAddr::V4(v4) => {
                let last = v4.octets()[3];
                ip != self.net.network() && ip != self.net.broadcast() && last != 0 && last != 255
            }
            // The subnet-router anycast address (RFC 4291 §2.6.1).
            IpAddr::V6(_) => ip != self.net.network(),
        }
    }

    /// Number of addresses in the CIDR.
    fn span(&self) -> u128 {
        1u128 << (self.net.max_prefix_len() - self.net.prefix_len())
    }

    /// Number of usable addresses.
    pub fn capacity(&self) -> u128 {
        let span = self.span();
        match self.net {
            IpNet::V6(_) if span <= 2 => span,
            IpNet::V6(_) => span - 1,
            IpNet::V4(_) if span <= 256 => {
                (0..span).filter(|&i| self.is_usable(self.at(i))).count() as u128
            }
            // Whole /24s: 254 usable each (no .0, no .255); network and broadcast are among those.
            IpNet::V4(_) => span / 256 * 254,
        }
    }

    fn at(&self, offset: u128) -> IpAddr {
        match self.net {
            IpNet::V4(n) => IpAddr::V4(Ipv4Addr::from(
                u32::from(n.network()).wrapping_add(offset as u32),
            )),
            IpNet::V6(n) => {
                IpAddr::V6(Ipv6Addr::from(u128::from(n.network()).wrapping_add(offset)))
            }
        }
    }

    /// Every usable address once, starting at a position derived from `host` alone, so allocators
    /// that never talked to each other tend to pick the same address for the same host.
    pub fn probe(&self, host: &str) -> impl Iterator<Item = IpAddr> + '_ {
        let span = self.span();
        let start = host_hash(host) % span;
        (0..span)
            .map(move |i| self.at((start + i) % span))
            .filter(|ip| self.is_usable(*ip))
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.net.fmt(f)
    }
}

impl std::str::FromStr for Pool {
    type Err = PoolError;
    fn from_str(s: &str) -> Result<Pool, PoolError> {
        let net: IpNet = s.parse().map_err(|_| PoolError::Parse(s.to_string()))?;
        Pool::new(net)
    }
}

/// A stable hash: the same on every machine, build and release (the first 16 bytes of SHA-256).
pub(crate) fn host_hash(host: &str) -> u128 {
    let digest = Sha256::digest(host.as_bytes());
    u128::from_be_bytes(digest[..16].try_into().expect("SHA-256 is 32 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(s: &str) -> Pool {
        s.parse().unwrap()
    }

    #[test]
    fn capacities_skip_special_addresses() {
        assert_eq!(pool("240.0.0.0/4").capacity(), (1u128 << 28) / 256 * 254);
        assert_eq!(pool("127.255.0.0/16").capacity(), 256 * 254);
        assert_eq!(pool("10.0.0.0/30").capacity(), 2);
        assert_eq!(pool("10.0.0.4/31").capacity(), 2);
        assert_eq!(
            pool("10.0.0.255/32").capacity(),
            1,
            "a /32 pin is usable whatever its last octet"
        );
        assert_eq!(pool("2001:2::/126").capacity(), 3);
        assert_eq!(
            "10.0.0.0/40".parse::<Pool>(),
            Err(PoolError::Parse("10.0.0.0/40".into()))
        );
        assert!(matches!(
            "::/0".parse::<Pool>(),
            Err(PoolError::TooLarge(_))
        ));
    }

    #[test]
    fn probing_visits_every_usable_address_once() {
        let p = pool("10.1.0.0/23");
        let mut seen: Vec<IpAddr> = p.probe("reviews.default.global").collect();
        assert_eq!(seen.len() as u128, p.capacity());
        assert!(seen.iter().all(|ip| p.is_usable(*ip)));
        assert!(
            !seen.contains(&"10.1.0.255".parse().unwrap())
                && !seen.contains(&"10.1.1.0".parse().unwrap())
        );
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len() as u128, p.capacity());
    }

    #[test]
    fn first_choice_depends_only_on_the_host() {
        let p = pool(DEFAULT_POOL);
        let a = p.probe("reviews.default.global").next();
        assert_eq!(a, p.probe("reviews.default.global").next());
        assert_ne!(a, p.probe("ratings.default.global").next());
        // Pinned: changing the hash would move every VIP ever allocated without a record.
        assert_eq!(host_hash("reviews.default.global") >> 120, 0x47);
    }
}
