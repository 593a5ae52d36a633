//! Who a client is, as the limits count it: its address with IPv4-mapped IPv6 unwrapped, and
//! the network (prefix) it belongs to.

use std::net::IpAddr;

use ipnet::IpNet;

/// An IPv4 client on a dual-stack socket shows up as `::ffff:a.b.c.d`: that is an IPv4 client.
pub fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The loopback networks: the clients that may transfer zones unless told otherwise.
pub fn loopback() -> Vec<IpNet> {
    ["127.0.0.0/8", "::1/128"]
        .map(|n| n.parse().expect("a CIDR"))
        .into()
}

/// The client's network: its unmapped address cut to `ipv4_prefix` or `ipv6_prefix` bits
/// (clamped to the family's length).
pub fn network(ip: IpAddr, ipv4_prefix: u8, ipv6_prefix: u8) -> IpNet {
    let ip = unmapped(ip);
    let len = match ip {
        IpAddr::V4(_) => ipv4_prefix.min(32),
        IpAddr::V6(_) => ipv6_prefix.min(128),
    };
    IpNet::new(ip, len).expect("prefix clamped").trunc()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_unwrap_mapped_addresses_and_clamp() {
        let net = |ip: &str, v4, v6| network(ip.parse().unwrap(), v4, v6).to_string();
        assert_eq!(net("::ffff:192.0.2.77", 24, 56), "192.0.2.0/24");
        assert_eq!(net("2001:db8:0:ff::1", 24, 56), "2001:db8::/56");
        assert_eq!(net("192.0.2.77", 40, 200), "192.0.2.77/32");
        assert_eq!(net("2001:db8::1", 0, 0), "::/0");
    }
}
