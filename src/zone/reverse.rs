//! Reverse names (RFC 1035 §3.5, RFC 3596 §2.5) of the VIP pools: ours to answer, never
//! forwarded, since no other server knows which host holds a VIP.
//!
//! A pool is split into the zones a reverse tree can have: IPv4 on octet boundaries
//! (`240.0.0.0/4` is the sixteen zones `240.in-addr.arpa.` … `255.in-addr.arpa.`), IPv6 on nibble
//! boundaries. Inside those zones an address gets the PTR records of the hosts on it (several
//! when hosts share an explicit address), a name leading to one gets NODATA, and anything else
//! NXDOMAIN, with the zone's SOA. Names outside them stay [`None`] and are forwarded as before,
//! so a pool that is not on a boundary claims no neighbour's names.
//!
//! The addresses live in an ordered map, not as name-table nodes: an IPv6 reverse name has 32
//! labels, and a node per label would multiply a big mesh's table.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use hickory_proto::ProtoError;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::PTR;
use hickory_proto::rr::{Name, RData};
use imbl::OrdMap;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::table::{ZoneContent, ZoneNegatives, apex_answers, negatives, soa_of, without_soa};
use super::{SoaSettings, ZoneSettings};
use crate::wire::name::lower_wire;
use crate::wire::prepared::{Answers, Body, BodyBuilder, Owner, Prepared};

const TYPE_PTR: u16 = 12;
const IN_ADDR_ARPA: &[u8] = b"\x07in-addr\x04arpa\x00";
const IP6_ARPA: &[u8] = b"\x03ip6\x04arpa\x00";
const TYPE_ANY: u16 = 255;

/// The reverse zones of the pools and the PTR answer of every address in them.
#[derive(Default)]
pub struct ReverseZones {
    zones: Vec<ReverseZone>,
    /// Zone index by its network (as written in the tree: IPv4 /8, /16…, IPv6 /4, /8…).
    by_net: HashMap<IpNet, usize>,
    /// Shared with the tables before and after, but for the addresses a change touched.
    ptrs: OrdMap<IpAddr, Arc<Ptr>>,
    /// TTL of the PTR records.
    ttl: u32,
}

/// The hosts on one address, in name order, and the PTR answer naming them.
#[derive(Clone)]
struct Ptr {
    names: Vec<Name>,
    answer: Prepared,
}

impl Ptr {
    fn new(mut names: Vec<Name>, ttl: u32) -> Result<Ptr, ProtoError> {
        // Most addresses have one name, in a vector that grew room for four (a `Name` is about
        // 80 bytes): 24 MiB more for a mesh of 100,000 hosts.
        names.shrink_to_fit();
        let mut b = BodyBuilder::default();
        for name in &names {
            b.answer(Owner::QueryName, ttl, &RData::PTR(PTR(name.clone())))?;
        }
        Ok(Ptr {
            names,
            answer: b.finish(ResponseCode::NoError),
        })
    }
}

struct ReverseZone {
    net: IpNet,
    /// Lower-cased wire form of the apex name.
    apex_key: Box<[u8]>,
    apex: Answers,
    negatives: ZoneNegatives,
    /// PTR records in the zone.
    records: usize,
}

/// How a family's reverse names are written.
#[derive(Clone, Copy)]
struct Family {
    /// Bits per label: 8 (decimal octets) or 4 (hex nibbles).
    bits: u8,
    /// Address bits.
    width: u8,
}

const V4: Family = Family { bits: 8, width: 32 };
const V6: Family = Family {
    bits: 4,
    width: 128,
};

impl Family {
    fn labels(self) -> usize {
        (self.width / self.bits) as usize
    }

    /// The value of one label, if it is a canonical octet or nibble.
    fn parse(self, label: &[u8]) -> Option<u128> {
        if self.bits == 4 {
            return match label {
                [c] => (*c as char).to_digit(16).map(u128::from),
                _ => None,
            };
        }
        let canonical =
            !label.is_empty() && label.len() <= 3 && (label[0] != b'0' || label.len() == 1);
        if !canonical || !label.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let value: u128 = std::str::from_utf8(label).ok()?.parse().ok()?;
        (value <= 255).then_some(value)
    }

    /// The network of the first `depth` labels, whose value is `value`.
    fn net(self, value: u128, depth: usize) -> IpNet {
        let len = depth as u8 * self.bits;
        let addr = value.checked_shl(u32::from(self.width - len)).unwrap_or(0);
        match self.width {
            32 => Ipv4Net::new(Ipv4Addr::from(addr as u32), len)
                .expect("length fits")
                .into(),
            _ => Ipv6Net::new(Ipv6Addr::from(addr), len)
                .expect("length fits")
                .into(),
        }
    }
}

/// The zones of `pools`: each split on its family's label boundary, nested ones dropped.
fn zone_nets(pools: &[IpNet]) -> Vec<IpNet> {
    let mut nets: Vec<IpNet> = Vec::new();
    for pool in pools {
        let bits = if pool.addr().is_ipv4() { 8 } else { 4 };
        let len = pool.prefix_len().div_ceil(bits) * bits;
        nets.extend(pool.trunc().subnets(len).expect("a longer prefix"));
    }
    nets.sort();
    nets.dedup();
    let all = nets.clone();
    nets.retain(|n| !all.iter().any(|o| o != n && o.contains(n)));
    nets
}

/// The reverse name of a network on a label boundary (`240.in-addr.arpa.`).
fn reverse_name(net: &IpNet) -> Result<Name, ProtoError> {
    let mut labels: Vec<String> = match net {
        IpNet::V4(n) => {
            let octets = n.addr().octets();
            (octets[..n.prefix_len() as usize / 8])
                .iter()
                .rev()
                .map(u8::to_string)
                .collect()
        }
        IpNet::V6(n) => {
            let bits = u128::from(n.addr());
            (0..n.prefix_len() as u32 / 4)
                .rev()
                .map(|i| format!("{:x}", (bits >> (124 - 4 * i)) & 0xF))
                .collect()
        }
    };
    labels.extend(
        match net {
            IpNet::V4(_) => ["in-addr", "arpa"],
            IpNet::V6(_) => ["ip6", "arpa"],
        }
        .map(String::from),
    );
    Name::from_labels(labels)
}

impl ReverseZones {
    /// The zones of `settings.reverse` (the pools) and the PTR answers of `hosts` (name and
    /// addresses) on addresses inside them. `glue`: the name server's addresses are known and
    /// its name is ours, so the NS answer carries them.
    pub fn build<'a>(
        settings: &ZoneSettings,
        serial: u32,
        glue: bool,
        hosts: impl IntoIterator<Item = (&'a Name, &'a [IpAddr])>,
    ) -> Result<Self, ProtoError> {
        let mut this = Self::empty(settings, serial, glue)?;
        if this.zones.is_empty() {
            return Ok(this);
        }
        let mut names: BTreeMap<IpAddr, Vec<Name>> = BTreeMap::new();
        for (name, addresses) in hosts {
            for address in addresses {
                if this.zone_index(address).is_some() {
                    let on = names.entry(*address).or_default();
                    if !on.contains(name) {
                        on.push(name.clone());
                    }
                }
            }
        }
        for (address, mut names) in names {
            names.sort();
            let zone = this.zone_index(&address).expect("kept above");
            this.zones[zone].records += names.len();
            this.ptrs
                .insert(address, Arc::new(Ptr::new(names, settings.ttl)?));
        }
        Ok(this)
    }

    /// The zones of `settings.reverse` with no addresses in them yet.
    fn empty(settings: &ZoneSettings, serial: u32, glue: bool) -> Result<Self, ProtoError> {
        let Some(forward) = settings.zones.first() else {
            return Ok(Self::default());
        };
        let nets = zone_nets(&settings.reverse);
        // The SOA and NS of a reverse zone name the forward zone's server and mailbox.
        let soa = settings.soa.record(forward, serial);
        let reverse_settings = ZoneSettings {
            soa: SoaSettings {
                mname: Some(soa.mname),
                rname: Some(soa.rname),
                ..settings.soa.clone()
            },
            ..settings.clone()
        };
        let mut zones = Vec::with_capacity(nets.len());
        let mut by_net = HashMap::with_capacity(nets.len());
        for net in &nets {
            let apex = reverse_name(net)?;
            by_net.insert(*net, zones.len());
            zones.push(ReverseZone {
                net: *net,
                apex_key: lower_wire(&apex).into(),
                apex: apex_answers(&reverse_settings, serial, &apex, glue)?,
                negatives: negatives(&reverse_settings, serial, &apex)?,
                records: 0,
            });
        }
        Ok(ReverseZones {
            zones,
            by_net,
            ptrs: OrdMap::new(),
            ttl: settings.ttl,
        })
    }

    /// These zones at `serial` (their SOA, NS and negative answers), sharing every address.
    pub fn with_serial(
        &self,
        settings: &ZoneSettings,
        serial: u32,
        glue: bool,
    ) -> Result<Self, ProtoError> {
        let mut next = Self::empty(settings, serial, glue)?;
        for (zone, old) in next.zones.iter_mut().zip(&self.zones) {
            zone.records = old.records;
        }
        next.ptrs = self.ptrs.clone();
        Ok(next)
    }

    fn zone_index(&self, address: &IpAddr) -> Option<usize> {
        self.zones.iter().position(|z| z.net.contains(address))
    }

    /// Names `name` on each of `addresses` inside the zones; the addresses whose PTR answer
    /// changed are added to `touched`.
    pub fn add(&mut self, name: &Name, addresses: &[IpAddr], touched: &mut Vec<IpAddr>) {
        self.edit(addresses, touched, |names| {
            match names.binary_search(name) {
                Ok(_) => false,
                Err(at) => {
                    names.insert(at, name.clone());
                    true
                }
            }
        });
    }

    /// Takes `name` off each of `addresses`, as [`ReverseZones::add`] puts it on.
    pub fn remove(&mut self, name: &Name, addresses: &[IpAddr], touched: &mut Vec<IpAddr>) {
        self.edit(addresses, touched, |names| {
            match names.binary_search(name) {
                Ok(at) => {
                    names.remove(at);
                    true
                }
                Err(_) => false,
            }
        });
    }

    fn edit(
        &mut self,
        addresses: &[IpAddr],
        touched: &mut Vec<IpAddr>,
        change: impl Fn(&mut Vec<Name>) -> bool,
    ) {
        for address in addresses {
            let Some(zone) = self.zone_index(address) else {
                continue;
            };
            let mut names = (self.ptrs.get(address)).map_or_else(Vec::new, |p| p.names.clone());
            let before = names.len();
            if !change(&mut names) {
                continue;
            }
            self.zones[zone].records = self.zones[zone].records + names.len() - before;
            touched.push(*address);
            if names.is_empty() {
                self.ptrs.remove(address);
                continue;
            }
            // A PTR answer that cannot be encoded was not encodable at build time either.
            if let Ok(ptr) = Ptr::new(names, self.ttl) {
                self.ptrs.insert(*address, Arc::new(ptr));
            }
        }
    }

    /// The apex of the zone `address` is in and the address's reverse name (lower-cased wire
    /// forms); `None` outside the zones.
    pub fn owner_of(&self, address: &IpAddr) -> Option<(&[u8], Vec<u8>)> {
        let zone = &self.zones[self.zone_index(address)?];
        let owner = lower_wire(&reverse_name(&IpNet::from(*address)).ok()?);
        Some((&zone.apex_key, owner))
    }

    /// The PTR records of `address` (none when no host is on it).
    pub fn records_at(&self, address: &IpAddr) -> Vec<&[u8]> {
        (self.ptrs.get(address))
            .map(|p| p.answer.view().answer_records().collect())
            .unwrap_or_default()
    }

    /// Records an AXFR of the zone at `apex` sends (its SOA first and last).
    pub fn zone_size(&self, apex: &[u8]) -> Option<usize> {
        let zone = self.zones.iter().find(|z| *z.apex_key == *apex)?;
        Some(zone.records + without_soa(zone.apex.get(TYPE_ANY)).count() + 2)
    }

    pub fn apexes(&self) -> impl Iterator<Item = &[u8]> {
        self.zones.iter().map(|z| &z.apex_key[..])
    }

    /// The records of the reverse zone with this apex, for a zone transfer.
    pub fn zone_content(&self, apex: &[u8]) -> Option<ZoneContent<'_>> {
        let zone = self.zones.iter().find(|z| *z.apex_key == *apex)?;
        let soa = soa_of(zone.apex.get(TYPE_ANY))?;
        let apex_records =
            without_soa(zone.apex.get(TYPE_ANY)).map(|r| (Cow::Borrowed(&zone.apex_key[..]), r));
        let ptrs = (self.ptrs.range(zone.net.network()..=zone.net.broadcast())).flat_map(
            |(address, ptr)| {
                let owner = lower_wire(
                    &reverse_name(&IpNet::from(*address)).expect("an address has a reverse name"),
                );
                let owner: Cow<'_, [u8]> = Cow::Owned(owner);
                ptr.answer
                    .view()
                    .answer_records()
                    .map(move |r| (owner.clone(), r))
            },
        );
        Some(ZoneContent {
            soa,
            records: Box::new(apex_records.chain(ptrs)),
        })
    }

    /// The answer for a lower-cased wire name inside one of the reverse zones; `None` outside.
    pub fn lookup(&self, qname: &[u8], qtype: u16) -> Option<Body<'_>> {
        // Every forwarded name passes here: most are no reverse name at all.
        let family = if qname.ends_with(IN_ADDR_ARPA) {
            V4
        } else if qname.ends_with(IP6_ARPA) {
            V6
        } else {
            return None;
        };
        if self.zones.is_empty() {
            return None;
        }
        // Where each label starts (a name has at most 127), then the address labels: all but
        // the last two, most significant last.
        let mut starts = [0u8; 128];
        let mut count = 0;
        let mut at = 0;
        while let Some(&len) = qname.get(at).filter(|&&l| l > 0) {
            *starts.get_mut(count)? = at as u8;
            count += 1;
            at += 1 + len as usize;
        }
        let address_labels = count - 2;
        let label = |i: usize| {
            let at = starts[i] as usize;
            qname.get(at + 1..at + 1 + qname[at] as usize)
        };
        // From the most significant label down: find the zone, then read the rest of the name.
        let mut value: u128 = 0;
        let mut zone: Option<(&ReverseZone, usize)> = None;
        for depth in 0..=address_labels {
            if zone.is_none() {
                let net = family.net(value, depth);
                zone = self.by_net.get(&net).map(|&z| (&self.zones[z], depth));
            }
            if depth == address_labels {
                break;
            }
            let parsed = label(address_labels - depth - 1).and_then(|l| family.parse(l));
            match parsed.filter(|_| depth < family.labels()) {
                Some(v) => value = value << family.bits | v,
                // Not an address name: nothing by that name in our zone, or not our zone at all.
                None => return zone.map(|(z, _)| z.negatives.nxdomain.view()),
            }
        }
        let (zone, apex_depth) = zone?;
        let negatives = &zone.negatives;
        if address_labels == apex_depth {
            return Some(
                zone.apex
                    .get(qtype)
                    .unwrap_or_else(|| negatives.nodata.view()),
            );
        }
        let net = family.net(value, address_labels);
        if address_labels == family.labels() {
            return Some(match self.ptrs.get(&net.addr()) {
                Some(ptr) if matches!(qtype, TYPE_PTR | TYPE_ANY) => ptr.answer.view(),
                Some(_) => negatives.nodata.view(),
                None => negatives.nxdomain.view(),
            });
        }
        // A name on the way to addresses: it exists (NODATA) when one is below it.
        let below = self
            .ptrs
            .range(net.network()..=net.broadcast())
            .next()
            .is_some();
        Some(if below {
            negatives.nodata.view()
        } else {
            negatives.nxdomain.view()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(pools: &[&str]) -> Vec<String> {
        let pools: Vec<IpNet> = pools.iter().map(|p| p.parse().unwrap()).collect();
        zone_nets(&pools)
            .iter()
            .map(|n| reverse_name(n).unwrap().to_ascii())
            .collect()
    }

    #[test]
    fn pools_split_on_label_boundaries() {
        let v4 = nets(&["240.0.0.0/4"]);
        assert_eq!(v4.len(), 16);
        assert_eq!(v4[0], "240.in-addr.arpa.");
        assert_eq!(v4[15], "255.in-addr.arpa.");
        assert_eq!(
            nets(&["10.64.0.0/16", "10.64.3.0/24"]),
            ["64.10.in-addr.arpa."]
        );
        assert_eq!(nets(&["127.255.0.0/17"]).len(), 128);
        assert_eq!(
            nets(&["2001:2::/48"]),
            ["0.0.0.0.2.0.0.0.1.0.0.2.ip6.arpa."]
        );
        assert_eq!(nets(&["fd00::/6"]).len(), 4);
    }

    #[test]
    fn labels_parse_only_in_canonical_form() {
        assert_eq!(V4.parse(b"0"), Some(0));
        assert_eq!(V4.parse(b"255"), Some(255));
        for bad in [&b"256"[..], b"01", b"", b"1a", b"1000"] {
            assert_eq!(V4.parse(bad), None, "{bad:?}");
        }
        assert_eq!(V6.parse(b"f"), Some(15));
        assert_eq!(V6.parse(b"10"), None);
        assert_eq!(V6.parse(b"g"), None);
    }
}
