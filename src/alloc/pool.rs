//! Address pools: which addresses may be handed out, and in which order a host tries them.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use sha2::{Digest, Sha256};

/// Class E, reserved and unroutable: what Istio's multicluster docs use for `.global` VIPs.
pub const DEFAULT_POOL: &str = "240.0.0.0/4";

/// Where istiod (1.25 and later) allocates VIPs for address-less ServiceEntries itself, in every
/// cluster and independently of us (`PILOT_IP_AUTOALLOCATE_IPV4_PREFIX` and `_IPV6_PREFIX`
/// change them from Istio 1.27). A VIP of ours in there can be what istiod gave another
/// service, so no pool hands them out.
pub const ISTIO_RANGES: [&str; 2] = ["240.240.0.0/16", "2001:2::/48"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("{0:?} is not a CIDR (e.g. 240.0.0.0/4)")]
    Parse(String),
    #[error("pool {0} has no usable address")]
    Empty(IpNet),
    #[error("pool {0} is larger than 2^96 addresses")]
    TooLarge(IpNet),
    #[error(
        "pool {pool} lies inside {range}, where istiod allocates VIPs of its own (a VIP from it \
         can be one istiod gave another service); choose a pool outside it, {instead}"
    )]
    InsideIstioRange {
        pool: IpNet,
        range: IpNet,
        instead: &'static str,
    },
}

/// One CIDR. Unusable addresses are skipped: the network and broadcast addresses, and in IPv4
/// every `.0` and `.255`, which some clients and firewalls treat as special.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    net: IpNet,
    /// The part of the pool that istiod allocates from (see [`ISTIO_RANGES`]): never handed out.
    excluded: Option<IpNet>,
}

impl Pool {
    pub fn new(net: IpNet) -> Result<Pool, PoolError> {
        let net = net.trunc();
        if net.max_prefix_len() - net.prefix_len() > 96 {
            return Err(PoolError::TooLarge(net));
        }
        let pool = Pool {
            net,
            excluded: None,
        };
        if pool.capacity() == 0 {
            return Err(PoolError::Empty(net));
        }
        Ok(pool)
    }

    pub fn net(&self) -> IpNet {
        self.net
    }

    /// The pool without whatever part of it lies in `ranges` (Istio's own allocation ranges);
    /// an error when nothing else is left.
    pub fn excluding(self, ranges: &[IpNet]) -> Result<Pool, PoolError> {
        let mut pool = self;
        for range in ranges.iter().map(IpNet::trunc) {
            if range.contains(&self.net) {
                let instead = match range {
                    IpNet::V4(_) => "such as 240.0.0.0/4 (the default, which skips the range)",
                    IpNet::V6(_) => "such as a ULA prefix of your own (fd00:f1d0::/48, say)",
                };
                return Err(PoolError::InsideIstioRange {
                    pool: self.net,
                    range,
                    instead,
                });
            }
            // CIDRs are nested or apart: a range that overlaps the pool lies inside it.
            if self.net.contains(&range) {
                pool.excluded = Some(range);
            }
        }
        Ok(pool)
    }

    /// The part left out (see [`Pool::excluding`]).
    pub fn excluded(&self) -> Option<IpNet> {
        self.excluded
    }

    pub fn is_ipv4(&self) -> bool {
        matches!(self.net, IpNet::V4(_))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.net.contains(&ip)
    }

    /// Whether `ip` is in the pool and may be handed out.
    pub fn is_usable(&self, ip: IpAddr) -> bool {
        if !self.contains(ip) || self.excluded.is_some_and(|x| x.contains(&ip)) {
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
        span(self.net)
    }

    /// Number of usable addresses.
    pub fn capacity(&self) -> u128 {
        let whole = Pool {
            excluded: None,
            ..*self
        };
        let left_out = self.excluded.map_or(0, |x| whole.usable_in(x));
        whole.usable_in(self.net) - left_out
    }

    /// Number of usable addresses in `net`, a part of the pool (the pool itself, or the part
    /// it excludes), by the rules of [`Pool::is_usable`] without the exclusion.
    fn usable_in(&self, net: IpNet) -> u128 {
        let span = span(net);
        let first = self.offset(net.network());
        match net {
            IpNet::V6(_) if self.span() <= 2 => span,
            // Only the pool's own network address is left out (subnet-router anycast).
            IpNet::V6(_) => span - u128::from(first == 0),
            IpNet::V4(_) if span <= 256 => (first..first + span)
                .filter(|&i| self.is_usable(self.at(i)))
                .count() as u128,
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
    /// The excluded part is stepped over whole, not address by address (it can be 2^80 of them).
    pub fn probe(&self, host: &str) -> impl Iterator<Item = IpAddr> + '_ {
        let span = self.span();
        let start = host_hash(host) % span;
        let skip = self
            .excluded
            .map(|x| (self.offset(x.network()), self.offset(x.broadcast())));
        let mut i = 0u128;
        std::iter::from_fn(move || {
            while i < span {
                let offset = (start + i) % span;
                if let Some((_, last)) = skip.filter(|(f, l)| (*f..=*l).contains(&offset)) {
                    i += last - offset + 1;
                    continue;
                }
                i += 1;
                let ip = self.at(offset);
                if self.is_usable(ip) {
                    return Some(ip);
                }
            }
            None
        })
    }

    /// How far `ip` (inside the pool) is from its start.
    fn offset(&self, ip: IpAddr) -> u128 {
        let number = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => u128::from(v6),
        };
        number(ip) - number(self.net.network())
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

fn span(net: IpNet) -> u128 {
    1u128 << (net.max_prefix_len() - net.prefix_len())
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

    fn ranges() -> Vec<IpNet> {
        ISTIO_RANGES.iter().map(|r| r.parse().unwrap()).collect()
    }

    #[test]
    fn istio_ranges_are_left_out_of_the_pools() {
        let p = pool(DEFAULT_POOL).excluding(&ranges()).unwrap();
        assert_eq!(p.excluded(), Some("240.240.0.0/16".parse().unwrap()));
        assert_eq!(p.capacity(), (1u128 << 28) / 256 * 254 - 256 * 254);
        assert!(!p.is_usable("240.240.1.1".parse().unwrap()));
        assert!(p.is_usable("240.239.255.254".parse().unwrap()));
        // Hosts whose first choice lies in Istio's range get the next address after it.
        let inside: Vec<String> = (0..200_000)
            .map(|i| format!("h{i}.global"))
            .filter(|h| {
                let first = pool(DEFAULT_POOL).probe(h).next().unwrap();
                "240.240.0.0/16".parse::<IpNet>().unwrap().contains(&first)
            })
            .take(3)
            .collect();
        assert_eq!(inside.len(), 3);
        for host in &inside {
            let got = p.probe(host).next().unwrap();
            assert_eq!(got, "240.241.0.1".parse::<IpAddr>().unwrap(), "{host}");
        }
        // A small range inside a small pool: every address outside it, once, none inside.
        let small = pool("10.0.0.0/24")
            .excluding(&["10.0.0.128/25".parse().unwrap()])
            .unwrap();
        assert_eq!(small.capacity(), 127);
        // Ten hosts: some start probing inside the range, some outside.
        for i in 0..10 {
            let mut seen: Vec<IpAddr> = small.probe(&format!("a{i}.global")).collect();
            assert_eq!(seen.len(), 127);
            seen.sort();
            seen.dedup();
            assert_eq!(seen.len(), 127);
            assert!(seen.iter().all(|ip| small.is_usable(*ip)));
        }
        // IPv6: the /48 is stepped over whole (2^80 addresses), not walked.
        let v6 = pool("2001:2::/40").excluding(&ranges()).unwrap();
        // The pool starts where the range does: its unusable first address is in the range.
        assert_eq!(v6.capacity(), (1u128 << 88) - (1u128 << 80));
        let mut probe = v6.probe("x.global");
        assert!(probe.next().is_some());
    }

    #[test]
    fn a_pool_inside_an_istio_range_is_refused() {
        for (inside, instead) in [
            ("2001:2::/48", "fd00:f1d0::/48"),
            ("2001:2:0:1::/64", "fd00:f1d0::/48"),
            ("240.240.7.0/24", "240.0.0.0/4"),
        ] {
            let error = pool(inside).excluding(&ranges()).unwrap_err();
            assert!(
                matches!(error, PoolError::InsideIstioRange { .. }),
                "{inside}"
            );
            let text = error.to_string();
            assert!(text.contains("istiod") && text.contains(instead), "{text}");
        }
        assert_eq!(
            pool("127.255.0.0/16")
                .excluding(&ranges())
                .unwrap()
                .excluded(),
            None
        );
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
