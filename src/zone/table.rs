//! The name table: an immutable snapshot of everything we answer authoritatively.
//!
//! Built whole ([`NameTable::build`]) or made from the table before by the hosts that changed
//! ([`NameTable::apply`], sharing every shard of nodes it did not touch), then swapped in whole,
//! so the query path reads it without locks. Every (node, type) answer is a body computed when
//! its node was last built or changed ([`Answers`]).

use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use foldhash::fast::RandomState;
use hickory_proto::ProtoError;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::SRV;
use hickory_proto::rr::{Name, RData, RecordType};
use ipnet::IpNet;
use rayon::prelude::*;

use super::journal::{Journal, JournalRecord, ZoneChanges};
use super::nodes::{Keyed, Shards};
use super::reverse::ReverseZones;
use super::soa::SoaSettings;
use crate::catalog::HostEntry;
use crate::wire::header::{HEADER_LEN, u16_at};
use crate::wire::name::{MAX_NAME_LEN, is_wildcard, lower_wire, parent, suffix_offsets};
use crate::wire::prepared::{Answers, Body, BodyBuilder, Owner, Prepared};
use crate::wire::response::CLASSIC_UDP_PAYLOAD;

/// How the table is shaped: which zones, TTLs and SOA.
#[derive(Clone, Debug)]
pub struct ZoneSettings {
    pub zones: Vec<Name>,
    pub ttl: u32,
    pub soa: SoaSettings,
    /// The VIP pools: their reverse names (PTR) are ours too.
    pub reverse: Vec<IpNet>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("zone {0} is listed twice")]
    DuplicateZone(Name),
    #[error("the root zone cannot be served")]
    RootZone,
    #[error("encoding records for {name}: {source}")]
    Encode { name: String, source: ProtoError },
}

/// What the table says about a query name.
#[derive(Debug)]
pub enum Lookup<'a> {
    /// Inside a served zone: this is the answer.
    Authoritative(Body<'a>),
    /// Outside every served zone.
    NotOurs,
}

/// A name in the table: what is declared at it, and its answers computed from that.
#[derive(Clone)]
struct Node {
    key: Box<[u8]>,
    data: DraftNode,
    /// Nodes directly below this one: a node with no data and none below it is removed.
    children: u32,
    /// `*.<this name>` exists (RFC 4592: answers for names below that do not exist).
    wildcard: bool,
    answers: Answers,
}

impl Keyed for Node {
    fn key(&self) -> &[u8] {
        &self.key
    }
}

pub(super) struct ZoneNegatives {
    pub(super) nodata: Prepared,
    pub(super) nxdomain: Prepared,
    servfail: Prepared,
}

pub struct NameTable {
    nodes: Shards<Node>,
    zones: Vec<ZoneNegatives>,
    /// Lower-cased wire names of the zone apexes, by zone index.
    apexes: Vec<Box<[u8]>>,
    /// The apexes as names, and whether each zone's NS answer carries the name server's
    /// addresses, by zone index: what re-encoding a node needs.
    apex_names: Vec<Name>,
    glue: Vec<bool>,
    /// Records of each zone but its SOA (pending hosts' left out), by zone index: the size of
    /// a transfer, which bounds the journal.
    records: Vec<usize>,
    reverse: ReverseZones,
    hosts: usize,
    serial: u32,
    /// How each zone came to be as it is, for incremental transfers.
    journal: Journal,
}

/// A served zone's records, for a zone transfer: its SOA record, and every other record with its
/// owner (lower-cased wire form). A record is type, class, TTL, length and data.
pub struct ZoneContent<'a> {
    pub soa: &'a [u8],
    pub records: Box<dyn Iterator<Item = OwnedRecord<'a>> + Send + 'a>,
}

/// A record's owner name (lower-cased wire form) and the record after it.
pub type OwnedRecord<'a> = (Cow<'a, [u8]>, &'a [u8]);

const TYPE_SOA: u16 = 6;
const TYPE_ANY: u16 = 255;

/// The records of `body` but its SOA, which a transfer sends first and last.
pub(super) fn without_soa<'a>(body: Option<Body<'a>>) -> impl Iterator<Item = &'a [u8]> + 'a {
    (body.into_iter())
        .flat_map(|b| b.answer_records())
        .filter(|r| u16_at(r, 0) != Some(TYPE_SOA))
}

/// The SOA record among `body`'s answers.
pub(super) fn soa_of(body: Option<Body<'_>>) -> Option<&[u8]> {
    body?
        .answer_records()
        .find(|r| u16_at(r, 0) == Some(TYPE_SOA))
}

impl ZoneSettings {
    /// Whether `name` falls under one of the served zones.
    pub fn serves(&self, name: &Name) -> bool {
        self.zones.iter().any(|z| z.zone_of(name))
    }
}

impl NameTable {
    /// Builds the table for `hosts`; hosts outside every zone are left out.
    pub fn build<'a>(
        settings: &ZoneSettings,
        serial: u32,
        hosts: impl IntoIterator<Item = &'a HostEntry>,
    ) -> Result<Self, BuildError> {
        let mut zones: Vec<(Vec<u8>, &Name)> = Vec::new();
        for apex in &settings.zones {
            if apex.is_root() {
                return Err(BuildError::RootZone);
            }
            let key = lower_wire(apex);
            if zones.iter().any(|(k, _)| *k == key) {
                return Err(BuildError::DuplicateZone(apex.clone()));
            }
            zones.push((key, apex));
        }

        let apexes: Vec<Box<[u8]>> = zones.iter().map(|(k, _)| k[..].into()).collect();
        let owner = |key: &[u8]| owning_zone(&apexes, key).map(usize::from);
        let mut draft = Draft::default();
        for (zone, (key, _)) in zones.iter().enumerate() {
            draft.node(key, zone as u16).apex = true;
        }
        // Each apex NS names a server; when that name is ours and its addresses are known, it
        // resolves (to them alone: a ServiceEntry cannot take our name server's name over).
        let mut glue = vec![false; zones.len()];
        if !settings.soa.ns_addresses.is_empty() {
            for (zone, (_, apex)) in zones.iter().enumerate() {
                let ns = lower_wire(&settings.soa.primary(apex));
                let Some(ns_zone) = owner(&ns) else { continue };
                glue[zone] = true;
                draft.place(&ns, ns_zone as u16, &zones[ns_zone].0);
                let node = draft.node(&ns, ns_zone as u16);
                node.name_server = true;
                node.addresses = settings.soa.ns_addresses.clone();
            }
        }
        let mut host_count = 0;
        // Hosts whose addresses get PTR records: a wildcard names no one host.
        let mut named = Vec::new();
        for host in hosts {
            let key = lower_wire(&host.name);
            let Some(zone) = owner(&key) else {
                continue;
            };
            host_count += 1;
            draft.place(&key, zone as u16, &zones[zone].0);
            let node = draft.node(&key, zone as u16);
            if node.name_server {
                continue;
            }
            node.host = true;
            node.addresses.extend(&host.addresses);
            node.settle();
            if !is_wildcard(&key) {
                named.push((&host.name, &host.addresses[..]));
                for (srv_key, srv) in srv_nodes(host, &key) {
                    draft.place(&srv_key, zone as u16, &zones[zone].0);
                    let node = draft.node(&srv_key, zone as u16);
                    node.srv = Some(Box::new(srv));
                    node.settle();
                }
            }
        }
        let reverse = ReverseZones::build(settings, serial, glue.first() == Some(&true), named)
            .map_err(|e| encode_err(b"reverse zones", e))?;

        let mut table = NameTable {
            nodes: Shards::with_capacity(draft.keys.len()),
            zones: Vec::with_capacity(zones.len()),
            apexes: apexes.clone(),
            apex_names: zones.iter().map(|(_, n)| (*n).clone()).collect(),
            glue: glue.clone(),
            records: vec![0; zones.len()],
            reverse,
            hosts: host_count,
            serial,
            journal: Journal::default(),
        };
        for (key, apex) in &zones {
            table
                .zones
                .push(negatives(settings, serial, apex).map_err(|e| encode_err(key, e))?);
        }
        // Encoding every answer is most of a big table's build: spread over the cores.
        let answers: Vec<Answers> = (draft.keys.par_iter())
            .zip(&draft.nodes)
            .map(|(key, node)| {
                let zone = node.zone as usize;
                let apex = zones[zone].1;
                (node.answers(settings, serial, apex, glue[zone])).map_err(|e| encode_err(key, e))
            })
            .collect::<Result<_, _>>()?;
        // What each node has below it, counted once here and kept up by every change after.
        let mut children = vec![0u32; draft.keys.len()];
        let mut wildcard = vec![false; draft.keys.len()];
        for key in &draft.keys {
            if table.apexes.iter().any(|a| **a == **key) {
                continue;
            }
            let above = parent(key).and_then(|p| draft.positions.get(p));
            if let Some(&at) = above {
                children[at as usize] += 1;
                wildcard[at as usize] |= is_wildcard(key);
            }
        }
        drop(draft.positions);
        for (i, ((key, data), answers)) in (draft.keys.into_iter())
            .zip(draft.nodes)
            .zip(answers)
            .enumerate()
        {
            let node = Node {
                key,
                data,
                children: children[i],
                wildcard: wildcard[i],
                answers,
            };
            table.records[node.data.zone as usize] += node.records().count();
            table.nodes.insert(node);
        }
        Ok(table)
    }

    /// The table after the hosts `removed` went and `added` came (a changed host is in both, as
    /// it was and as it is), with `serial`: what [`NameTable::build`] makes of the new host
    /// list, at the cost of what changed. Nodes, shards and reverse names that did not change
    /// are shared with this table. The journal continues this table's with the difference.
    pub fn apply(
        &self,
        settings: &ZoneSettings,
        serial: u32,
        removed: &[&HostEntry],
        added: &[&HostEntry],
    ) -> Result<NameTable, BuildError> {
        let glue_first = self.glue.first() == Some(&true);
        let mut next = NameTable {
            nodes: self.nodes.clone(),
            zones: Vec::with_capacity(self.zones.len()),
            apexes: self.apexes.clone(),
            apex_names: self.apex_names.clone(),
            glue: self.glue.clone(),
            records: self.records.clone(),
            reverse: (self.reverse.with_serial(settings, serial, glue_first))
                .map_err(|e| encode_err(b"reverse zones", e))?,
            hosts: self.hosts,
            serial,
            journal: Journal::default(),
        };
        for (key, apex) in self.apexes.iter().zip(&self.apex_names) {
            next.zones
                .push(negatives(settings, serial, apex).map_err(|e| encode_err(key, e))?);
        }
        // Every apex changes: its SOA carries the serial.
        let mut edit = Edit {
            touched: self.apexes.iter().cloned().collect(),
            addresses: Vec::new(),
        };
        for host in removed {
            next.unplace_host(host, &mut edit);
        }
        for host in added {
            next.place_host(host, &mut edit);
        }
        for key in &edit.touched {
            next.settle(settings, key)?;
        }

        // What each zone lost and gained, node by node: the records count and the journal.
        let mut changes = ZoneChanges::new();
        for key in &edit.touched {
            let (before, after) = (self.nodes.get(key), next.nodes.get(key));
            let Some(zone) = after.or(before).map(|n| n.data.zone as usize) else {
                continue;
            };
            let old: Vec<&[u8]> = before.into_iter().flat_map(|n| n.records()).collect();
            let new: Vec<&[u8]> = after.into_iter().flat_map(|n| n.records()).collect();
            next.records[zone] = next.records[zone] + new.len() - old.len();
            let change = changes.entry(self.apexes[zone].clone()).or_default();
            difference(key, &old, &new, change);
        }
        edit.addresses.sort_unstable();
        edit.addresses.dedup();
        for address in &edit.addresses {
            let Some((apex, owner)) = next.reverse.owner_of(address) else {
                continue;
            };
            let old = self.reverse.records_at(address);
            let new = next.reverse.records_at(address);
            difference(&owner, &old, &new, changes.entry(apex.into()).or_default());
        }
        next.journal = Journal::advance(self, &next, changes);
        Ok(next)
    }

    /// The zone `key` falls in.
    fn owner(&self, key: &[u8]) -> Option<u16> {
        owning_zone(&self.apexes, key)
    }

    /// Adds `key` and every missing name between it and its zone's apex (empty non-terminals),
    /// counting each new name as a child of the one above it.
    fn place(&mut self, key: &[u8], zone: u16) {
        let apex = &self.apexes[zone as usize];
        let mut missing = Vec::new();
        let mut name = key;
        while self.nodes.get(name).is_none() {
            missing.push(name);
            match parent(name).filter(|_| name != &apex[..]) {
                Some(up) => name = up,
                None => break,
            }
        }
        for name in missing.into_iter().rev() {
            self.nodes.insert(Node {
                key: name.into(),
                data: DraftNode {
                    zone,
                    ..Default::default()
                },
                children: 0,
                wildcard: false,
                answers: Answers::default(),
            });
            if let Some(above) = parent(name).and_then(|up| self.nodes.get_mut(up)) {
                above.children += 1;
                above.wildcard |= is_wildcard(name);
            }
        }
    }

    fn place_host(&mut self, host: &HostEntry, edit: &mut Edit) {
        let key = lower_wire(&host.name);
        let Some(zone) = self.owner(&key) else {
            return;
        };
        self.hosts += 1;
        self.place(&key, zone);
        let node = self.nodes.get_mut(&key).expect("placed");
        if node.data.name_server {
            return;
        }
        node.data.host = true;
        node.data.addresses.extend(&host.addresses);
        node.data.settle();
        if !is_wildcard(&key) {
            self.reverse
                .add(&host.name, &host.addresses, &mut edit.addresses);
            for (srv_key, srv) in srv_nodes(host, &key) {
                self.place(&srv_key, zone);
                let node = self.nodes.get_mut(&srv_key).expect("placed");
                node.data.srv = Some(Box::new(srv));
                node.data.settle();
                edit.touched.insert(srv_key.into());
            }
        }
        edit.touched.insert(key.into());
    }

    fn unplace_host(&mut self, host: &HostEntry, edit: &mut Edit) {
        let key = lower_wire(&host.name);
        if self.owner(&key).is_none() {
            return;
        }
        self.hosts -= 1;
        let Some(node) = self.nodes.get_mut(&key) else {
            return;
        };
        if node.data.name_server {
            return;
        }
        node.data.host = false;
        node.data.addresses.clear();
        node.data.settle();
        if !is_wildcard(&key) {
            self.reverse
                .remove(&host.name, &host.addresses, &mut edit.addresses);
            for (srv_key, _) in srv_nodes(host, &key) {
                if let Some(node) = self.nodes.get_mut(&srv_key) {
                    node.data.srv = None;
                    node.data.settle();
                    edit.touched.insert(srv_key.into());
                }
            }
        }
        edit.touched.insert(key.into());
    }

    /// Brings the node at `key` in line with what is declared at it: new answers, or gone
    /// (with the empty non-terminals above it) when nothing is declared at or below it.
    fn settle(&mut self, settings: &ZoneSettings, key: &[u8]) -> Result<(), BuildError> {
        let Some(node) = self.nodes.get(key) else {
            return Ok(());
        };
        if node.data.is_empty() && node.children == 0 {
            self.prune(key);
            return Ok(());
        }
        let node = self.nodes.get_mut(key).expect("found above");
        let zone = node.data.zone as usize;
        node.answers = (node.data)
            .answers(
                settings,
                self.serial,
                &self.apex_names[zone],
                self.glue[zone],
            )
            .map_err(|e| encode_err(key, e))?;
        Ok(())
    }

    /// Removes the node at `key`, then each name above it left with nothing declared and
    /// nothing below.
    fn prune(&mut self, key: &[u8]) {
        let mut key = key.to_vec();
        loop {
            match self.nodes.get(&key) {
                Some(node) if node.data.is_empty() && node.children == 0 => {}
                _ => return,
            }
            self.nodes.remove(&key);
            let Some(up) = parent(&key) else { return };
            if let Some(above) = self.nodes.get_mut(up) {
                above.children -= 1;
                if is_wildcard(&key) {
                    above.wildcard = false;
                }
            }
            key = up.to_vec();
        }
    }

    /// Looks up a lower-cased wire-format query name (RFC 1034 §4.3.2 with RFC 4592 wildcards).
    pub fn lookup(&self, qname: &[u8], qtype: u16) -> Lookup<'_> {
        for off in suffix_offsets(qname) {
            let Some(node) = self.nodes.get(&qname[off..]) else {
                continue;
            };
            let zone = &self.zones[node.data.zone as usize];
            let answer = if off == 0 {
                node.answer(qtype, zone)
            } else if node.wildcard {
                // `node` is the closest encloser: synthesise from its wildcard.
                let mut key = [0u8; MAX_NAME_LEN + 2];
                let encloser = &qname[off..];
                key[..2].copy_from_slice(b"\x01*");
                key[2..2 + encloser.len()].copy_from_slice(encloser);
                match self.nodes.get(&key[..2 + encloser.len()]) {
                    Some(w) => w.answer(qtype, zone),
                    None => zone.nxdomain.view(),
                }
            } else {
                zone.nxdomain.view()
            };
            return Lookup::Authoritative(answer);
        }
        match self.reverse.lookup(qname, qtype) {
            Some(answer) => Lookup::Authoritative(answer),
            None => Lookup::NotOurs,
        }
    }

    /// Hosts answered (not counting apexes and empty non-terminals).
    pub fn host_count(&self) -> usize {
        self.hosts
    }

    /// The SOA serial of every zone in this table.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// What changed in each zone over its recent serials.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Makes this table the successor of `previous`: its journal continues `previous`'s with
    /// what changed between the two.
    pub fn follow(&mut self, previous: &NameTable) {
        self.journal = Journal::follow(previous, self);
    }

    /// The apex of every served zone (lower-cased wire form): the forward zones, then the
    /// reverse zones of the pools.
    pub fn apexes(&self) -> impl Iterator<Item = &[u8]> {
        (self.apexes.iter().map(|a| &a[..])).chain(self.reverse.apexes())
    }

    /// Everything in the zone whose apex is `apex` (lower-cased wire form), for a zone transfer;
    /// `None` when no served zone has that apex. Hosts still waiting for a VIP are left out.
    pub fn zone_content(&self, apex: &[u8]) -> Option<ZoneContent<'_>> {
        let Some(zone) = self.apexes.iter().position(|a| **a == *apex) else {
            return self.reverse.zone_content(apex);
        };
        let soa = soa_of(self.nodes.get(apex)?.answers.get(TYPE_ANY))?;
        let records = (self.nodes.iter())
            .filter(move |node| node.data.zone as usize == zone)
            .flat_map(|node| node.records().map(|r| (Cow::Borrowed(&node.key[..]), r)));
        Some(ZoneContent {
            soa,
            records: Box::new(records),
        })
    }

    /// Records an AXFR of the zone whose apex is `apex` sends (its SOA first and last).
    pub fn zone_size(&self, apex: &[u8]) -> Option<usize> {
        match self.apexes.iter().position(|a| **a == *apex) {
            Some(zone) => Some(self.records[zone] + 2),
            None => self.reverse.zone_size(apex),
        }
    }
}

impl Node {
    fn answer<'a>(&'a self, qtype: u16, zone: &'a ZoneNegatives) -> Body<'a> {
        if self.data.pending {
            return zone.servfail.view();
        }
        (self.answers.get(qtype)).unwrap_or_else(|| zone.nodata.view())
    }

    /// The node's records in a zone transfer: all but the SOA, none while pending.
    fn records(&self) -> impl Iterator<Item = &[u8]> {
        let shown = (!self.data.pending)
            .then(|| self.answers.get(TYPE_ANY))
            .flatten();
        without_soa(shown)
    }
}

/// The zone (index into `apexes`) a lower-cased wire name falls in: the deepest one containing
/// it.
fn owning_zone(apexes: &[Box<[u8]>], key: &[u8]) -> Option<u16> {
    suffix_offsets(key).find_map(|off| {
        (apexes.iter())
            .position(|a| **a == key[off..])
            .map(|z| z as u16)
    })
}

/// What one change touched: names (lower-cased wire form) whose node changed, and addresses
/// whose PTR records did.
struct Edit {
    touched: HashSet<Box<[u8]>, RandomState>,
    addresses: Vec<IpAddr>,
}

/// Adds to `change` (deleted, added) the records at `owner` that `old` has and `new` has not,
/// and the other way round.
fn difference(
    owner: &[u8],
    old: &[&[u8]],
    new: &[&[u8]],
    change: &mut (Vec<JournalRecord>, Vec<JournalRecord>),
) {
    let record = |r: &[u8]| -> JournalRecord { (owner.into(), r.into()) };
    let mut kept = vec![false; new.len()];
    for r in old {
        match (0..new.len()).find(|&i| !kept[i] && new[i] == *r) {
            Some(i) => kept[i] = true,
            None => change.0.push(record(r)),
        }
    }
    for (i, r) in new.iter().enumerate() {
        if !kept[i] {
            change.1.push(record(r));
        }
    }
}

fn encode_err(key: &[u8], source: ProtoError) -> BuildError {
    BuildError::Encode {
        name: String::from_utf8_lossy(key).into_owned(),
        source,
    }
}

pub(super) fn negatives(
    settings: &ZoneSettings,
    serial: u32,
    apex: &Name,
) -> Result<ZoneNegatives, ProtoError> {
    let soa = RData::SOA(settings.soa.record(apex, serial));
    // RFC 2308 §3: the SOA of a negative answer lives no longer than its MINIMUM field.
    let ttl = settings.ttl.min(settings.soa.minimum);
    let with_soa = |rcode| -> Result<Prepared, ProtoError> {
        let mut b = BodyBuilder::default();
        b.authority(Owner::Named(apex), ttl, &soa)?;
        Ok(b.finish(rcode))
    };
    Ok(ZoneNegatives {
        nodata: with_soa(ResponseCode::NoError)?,
        nxdomain: with_soa(ResponseCode::NXDomain)?,
        servfail: Prepared::empty(ResponseCode::ServFail),
    })
}

/// The answers at a zone apex (SOA, NS, ANY), with the name server's addresses beside the NS
/// when `glue`.
pub(super) fn apex_answers(
    settings: &ZoneSettings,
    serial: u32,
    apex: &Name,
    glue: bool,
) -> Result<Answers, ProtoError> {
    let node = DraftNode {
        apex: true,
        ..Default::default()
    };
    node.answers(settings, serial, apex, glue)
}

/// The SRV records of one `_<service>._<protocol>.<host>` name.
#[derive(Clone)]
struct Srv {
    target: Name,
    ports: Vec<u16>,
    /// The target's addresses, sent as additional data when they fit.
    glue: Vec<IpAddr>,
    /// Bytes the records may take so the reply fits 512 bytes with the question and an OPT.
    room: usize,
}

/// The SRV names of `host`, whose name is `key` (lower-cased wire form), and their records:
/// one name per service and protocol, with every port number declared for it. A name that
/// would be too long has none.
fn srv_nodes(host: &HostEntry, key: &[u8]) -> Vec<(Vec<u8>, Srv)> {
    let mut out: Vec<(Vec<u8>, Srv)> = Vec::new();
    for port in &host.ports {
        let mut labels =
            Vec::with_capacity(port.service.len() + port.protocol.len() + 2 + key.len());
        for label in [&*port.service, port.protocol] {
            labels.push(label.len() as u8);
            labels.extend_from_slice(label.as_bytes());
        }
        labels.extend_from_slice(key);
        if labels.len() > MAX_NAME_LEN {
            continue;
        }
        match out.iter_mut().find(|(l, _)| *l == labels) {
            Some((_, srv)) => srv.ports.push(port.number),
            None => {
                // A question for this name leaves this much room in a 512-byte reply.
                let room = CLASSIC_UDP_PAYLOAD as usize - HEADER_LEN - labels.len() - 4 - 11;
                out.push((
                    labels,
                    Srv {
                        target: host.name.clone(),
                        ports: vec![port.number],
                        glue: host.addresses.clone(),
                        room,
                    },
                ))
            }
        }
    }
    out
}

/// What is declared at a name: what its answers are computed from.
#[derive(Clone, Default)]
struct DraftNode {
    zone: u16,
    apex: bool,
    /// The name the apex NS names, with `--ns-address`es: no ServiceEntry changes it.
    name_server: bool,
    /// A host by this name is declared (its addresses are `addresses`, none while pending).
    host: bool,
    /// Declared, but its VIP is not durably stored yet: SERVFAIL.
    pending: bool,
    addresses: Vec<IpAddr>,
    srv: Option<Box<Srv>>,
}

#[derive(Default)]
struct Draft {
    keys: Vec<Box<[u8]>>,
    nodes: Vec<DraftNode>,
    positions: HashMap<Box<[u8]>, u32, RandomState>,
}

impl Draft {
    fn node(&mut self, key: &[u8], zone: u16) -> &mut DraftNode {
        let idx = match self.positions.entry(key.into()) {
            Entry::Occupied(e) => *e.get(),
            Entry::Vacant(e) => {
                let idx = self.keys.len() as u32;
                self.keys.push(e.key().clone());
                self.nodes.push(DraftNode {
                    zone,
                    ..Default::default()
                });
                e.insert(idx);
                idx
            }
        };
        &mut self.nodes[idx as usize]
    }

    /// Adds `key` and every name between it and its zone's apex (empty non-terminals).
    fn place(&mut self, key: &[u8], zone: u16, apex_key: &[u8]) {
        self.node(key, zone);
        let mut up = if key == apex_key { None } else { parent(key) };
        while let Some(name) = up.filter(|n| *n != apex_key) {
            self.node(name, zone);
            up = parent(name);
        }
    }
}

impl DraftNode {
    /// Sets `pending` from what is declared here: a host with no address yet, or the SRV name
    /// of one.
    fn settle(&mut self) {
        self.pending = if self.host {
            self.addresses.is_empty() && !self.apex
        } else {
            self.srv.as_ref().is_some_and(|srv| srv.glue.is_empty())
        };
    }

    /// Nothing is declared here: the name exists only while names below it do.
    fn is_empty(&self) -> bool {
        !(self.apex || self.name_server || self.host || self.srv.is_some())
    }

    fn answers(
        &self,
        settings: &ZoneSettings,
        serial: u32,
        apex: &Name,
        glue: bool,
    ) -> Result<Answers, ProtoError> {
        let ttl = settings.ttl;
        let mut rrsets: Vec<(RecordType, Vec<RData>)> = Vec::new();
        let name_server = settings.soa.primary(apex);
        if self.apex {
            rrsets.push((
                RecordType::SOA,
                vec![RData::SOA(settings.soa.record(apex, serial))],
            ));
            let ns = hickory_proto::rr::rdata::NS(name_server.clone());
            rrsets.push((RecordType::NS, vec![RData::NS(ns)]));
        }
        let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = self.addresses.iter().partition(|a| a.is_ipv4());
        for (rtype, addrs) in [(RecordType::A, v4), (RecordType::AAAA, v6)] {
            if !addrs.is_empty() {
                rrsets.push((rtype, addrs.into_iter().map(RData::from).collect()));
            }
        }
        if let Some(srv) = &self.srv {
            let records = (srv.ports.iter())
                .map(|&port| RData::SRV(SRV::new(0, 100, port, srv.target.clone())))
                .collect();
            rrsets.push((RecordType::SRV, records));
        }
        if rrsets.is_empty() {
            return Ok(Answers::default());
        }
        let mut out = Vec::with_capacity(rrsets.len() + 1);
        let mut any = BodyBuilder::default();
        for (rtype, rdatas) in &rrsets {
            let mut b = BodyBuilder::default();
            for rdata in rdatas {
                b.answer(Owner::QueryName, ttl, rdata)?;
                any.answer(Owner::QueryName, ttl, rdata)?;
            }
            // The name server's addresses travel with the NS answer (RFC 1034 §4.3.2 step 6),
            // so a resolver priming the zone needs no second query.
            if *rtype == RecordType::NS && glue {
                for address in &settings.soa.ns_addresses {
                    b.additional(Owner::Named(&name_server), ttl, &RData::from(*address))?;
                }
            }
            let mut body = b.finish(ResponseCode::NoError);
            // The target's addresses come along when the reply still fits any UDP client.
            if let Some(srv) = self.srv.as_ref().filter(|_| *rtype == RecordType::SRV) {
                let mut with_glue = BodyBuilder::default();
                for rdata in rdatas {
                    with_glue.answer(Owner::QueryName, ttl, rdata)?;
                }
                for address in srv
                    .glue
                    .iter()
                    .filter(|a| a.is_ipv4())
                    .chain(srv.glue.iter().filter(|a| a.is_ipv6()))
                {
                    with_glue.additional(Owner::Named(&srv.target), ttl, &RData::from(*address))?;
                }
                let with_glue = with_glue.finish(ResponseCode::NoError);
                if with_glue.body.len() <= srv.room {
                    body = with_glue;
                }
            }
            out.push((u16::from(*rtype), body));
        }
        // RFC 8482 allows a subset; answering ANY with everything we hold stays small here.
        out.push((
            u16::from(RecordType::ANY),
            any.finish(ResponseCode::NoError),
        ));
        Ok(Answers::new(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::SrvPort;
    use hickory_proto::op::Message;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn table(hosts: &[(&str, &[&str])]) -> NameTable {
        let settings = ZoneSettings {
            zones: vec![name("global."), name("mesh.example.")],
            ttl: 30,
            soa: SoaSettings::default(),
            reverse: Vec::new(),
        };
        let entries: Vec<HostEntry> = hosts
            .iter()
            .map(|(h, addrs)| HostEntry {
                name: name(h),
                addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
                ports: Vec::new(),
            })
            .collect();
        NameTable::build(&settings, 7, &entries).unwrap()
    }

    /// Looks `qname` up (in whatever case it is given) and decodes the answer as a client would.
    fn ask(t: &NameTable, qname: &str, qtype: RecordType) -> Option<Message> {
        let wire = {
            let n = name(qname);
            let mut w = Vec::new();
            for l in n.iter() {
                w.push(l.len() as u8);
                w.extend_from_slice(l);
            }
            w.push(0);
            w
        };
        let lower: Vec<u8> = wire.iter().map(u8::to_ascii_lowercase).collect();
        let Lookup::Authoritative(p) = t.lookup(&lower, u16::from(qtype)) else {
            return None;
        };
        let mut msg = vec![0, 1, 0x84, p.rcode.low()];
        for count in [1, p.answers, p.authorities, p.additionals] {
            msg.extend_from_slice(&count.to_be_bytes());
        }
        msg.extend_from_slice(&wire);
        msg.extend_from_slice(&u16::from(qtype).to_be_bytes());
        msg.extend_from_slice(&1u16.to_be_bytes());
        msg.extend_from_slice(p.body);
        Some(Message::from_vec(&msg).unwrap())
    }

    fn ips(m: &Message) -> Vec<String> {
        m.answers
            .iter()
            .filter_map(|r| r.data.ip_addr())
            .map(|i| i.to_string())
            .collect()
    }

    const HOSTS: &[(&str, &[&str])] = &[
        ("reviews.default.global.", &["240.0.0.3"]),
        ("ratings.prod.global.", &["240.0.0.4", "2001:2::4"]),
        ("*.apps.global.", &["240.0.0.10"]),
        ("special.apps.global.", &["240.0.0.11"]),
        ("x.deep.apps.global.", &["240.0.0.12"]),
        ("svc.mesh.example.", &["240.0.0.13"]),
        ("outside.example.com.", &["192.0.2.1"]),
    ];

    #[test]
    fn exact_names_match_in_any_case() {
        let t = table(HOSTS);
        for q in ["reviews.default.global.", "REVIEWS.Default.GLOBAL."] {
            let m = ask(&t, q, RecordType::A).unwrap();
            assert_eq!(ips(&m), ["240.0.0.3"]);
            assert_eq!(
                m.answers[0].name.to_ascii(),
                q,
                "owner follows the question's case"
            );
        }
        assert_eq!(t.host_count(), 6, "the host outside every zone is left out");
        assert!(ask(&t, "outside.example.com.", RecordType::A).is_none());
        assert!(ask(&t, "example.com.", RecordType::A).is_none());
    }

    #[test]
    fn v4_and_v6_split_by_type() {
        let t = table(HOSTS);
        assert_eq!(
            ips(&ask(&t, "ratings.prod.global.", RecordType::A).unwrap()),
            ["240.0.0.4"]
        );
        assert_eq!(
            ips(&ask(&t, "ratings.prod.global.", RecordType::AAAA).unwrap()),
            ["2001:2::4"]
        );
        let nodata = ask(&t, "reviews.default.global.", RecordType::AAAA).unwrap();
        assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
        assert!(nodata.answers.is_empty());
        assert_eq!(nodata.authorities[0].record_type(), RecordType::SOA);
    }

    #[test]
    fn empty_non_terminals_are_nodata_and_missing_names_nxdomain() {
        let t = table(HOSTS);
        for ent in ["default.global.", "prod.global.", "deep.apps.global."] {
            let m = ask(&t, ent, RecordType::A).unwrap();
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{ent}");
            assert!(m.answers.is_empty() && m.authorities.len() == 1, "{ent}");
        }
        let nx = ask(&t, "nope.default.global.", RecordType::A).unwrap();
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(nx.authorities[0].name.to_ascii(), "global.");
    }

    #[test]
    fn wildcards_apply_only_without_a_closer_match() {
        let t = table(HOSTS);
        assert_eq!(
            ips(&ask(&t, "one.apps.global.", RecordType::A).unwrap()),
            ["240.0.0.10"]
        );
        assert_eq!(
            ips(&ask(&t, "a.b.c.apps.global.", RecordType::A).unwrap()),
            ["240.0.0.10"]
        );
        assert_eq!(
            ips(&ask(&t, "special.apps.global.", RecordType::A).unwrap()),
            ["240.0.0.11"]
        );
        // deep.apps.global exists (as an empty non-terminal), so it is the closest encloser and
        // has no wildcard of its own (RFC 4592 §2.2.1).
        let below_ent = ask(&t, "y.deep.apps.global.", RecordType::A).unwrap();
        assert_eq!(below_ent.metadata.response_code, ResponseCode::NXDomain);
        // Below a name that exists, the wildcard does not reach either.
        let below_special = ask(&t, "z.special.apps.global.", RecordType::A).unwrap();
        assert_eq!(below_special.metadata.response_code, ResponseCode::NXDomain);
        let synthesized = ask(&t, "One.Apps.global.", RecordType::A).unwrap();
        assert_eq!(synthesized.answers[0].name.to_ascii(), "One.Apps.global.");
    }

    #[test]
    fn each_zone_has_its_own_apex() {
        let t = table(HOSTS);
        let soa = ask(&t, "mesh.example.", RecordType::SOA).unwrap();
        let RData::SOA(data) = &soa.answers[0].data else {
            panic!()
        };
        assert_eq!(data.mname.to_ascii(), "ns.dns.mesh.example.");
        assert_eq!(data.serial, 7);
        let ns = ask(&t, "global.", RecordType::NS).unwrap();
        assert_eq!(ns.answers.len(), 1);
        let nx = ask(&t, "nope.mesh.example.", RecordType::A).unwrap();
        assert_eq!(nx.authorities[0].name.to_ascii(), "mesh.example.");
        assert_eq!(
            ips(&ask(&t, "svc.mesh.example.", RecordType::A).unwrap()),
            ["240.0.0.13"]
        );
    }

    #[test]
    fn hosts_without_addresses_get_servfail() {
        let t = table(&[("new.default.global.", &[]), ("*.pending.global.", &[])]);
        for q in ["new.default.global.", "x.pending.global."] {
            for qtype in [RecordType::A, RecordType::AAAA, RecordType::TXT] {
                let m = ask(&t, q, qtype).unwrap();
                assert_eq!(
                    m.metadata.response_code,
                    ResponseCode::ServFail,
                    "{q} {qtype}"
                );
                assert!(m.answers.is_empty() && m.authorities.is_empty());
            }
        }
        assert_eq!(
            ask(&t, "default.global.", RecordType::A)
                .unwrap()
                .metadata
                .response_code,
            ResponseCode::NoError
        );
    }

    #[test]
    fn the_name_server_resolves_and_comes_with_the_apex_ns() {
        let settings = |mname: Option<&str>| ZoneSettings {
            zones: vec![name("global.")],
            ttl: 30,
            soa: SoaSettings {
                mname: mname.map(name),
                ns_addresses: vec!["10.96.0.53".parse().unwrap(), "fd00::53".parse().unwrap()],
                ..SoaSettings::default()
            },
            reverse: Vec::new(),
        };
        // A ServiceEntry cannot take the name server's name over.
        let hosts = [HostEntry {
            name: name("ns.dns.global."),
            addresses: vec!["240.0.0.9".parse().unwrap()],
            ports: Vec::new(),
        }];
        let t = NameTable::build(&settings(None), 1, &hosts).unwrap();
        assert_eq!(
            ips(&ask(&t, "ns.dns.global.", RecordType::A).unwrap()),
            ["10.96.0.53"]
        );
        assert_eq!(
            ips(&ask(&t, "NS.dns.global.", RecordType::AAAA).unwrap()),
            ["fd00::53"]
        );
        let ent = ask(&t, "dns.global.", RecordType::A).unwrap();
        assert_eq!(ent.metadata.response_code, ResponseCode::NoError);
        let ns = ask(&t, "global.", RecordType::NS).unwrap();
        let glue: Vec<(String, String)> = ns
            .additionals
            .iter()
            .map(|r| (r.name.to_ascii(), r.data.ip_addr().unwrap().to_string()))
            .collect();
        assert_eq!(
            glue,
            [
                ("ns.dns.global.".to_string(), "10.96.0.53".to_string()),
                ("ns.dns.global.".to_string(), "fd00::53".to_string())
            ]
        );
        // Other answers carry no additional records.
        assert!(
            ask(&t, "global.", RecordType::SOA)
                .unwrap()
                .additionals
                .is_empty()
        );

        // A name server outside the zone: nothing to add, nothing created.
        let t = NameTable::build(&settings(Some("ns1.example.")), 1, &[]).unwrap();
        assert!(
            ask(&t, "global.", RecordType::NS)
                .unwrap()
                .additionals
                .is_empty()
        );
        let nx = ask(&t, "ns.dns.global.", RecordType::A).unwrap();
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn pool_addresses_have_ptr_records_and_neighbours_stay_foreign() {
        let settings = ZoneSettings {
            zones: vec![name("global.")],
            ttl: 30,
            soa: SoaSettings::default(),
            reverse: vec![
                "240.0.0.0/4".parse().unwrap(),
                "2001:2::/48".parse().unwrap(),
            ],
        };
        let hosts: Vec<HostEntry> = [
            ("a.global.", &["240.0.0.1", "2001:2::1"][..]),
            ("b.global.", &["240.0.0.1"]),
            ("*.w.global.", &["240.0.0.2"]),
            ("outside.global.", &["10.1.2.3"]),
            ("pending.global.", &[]),
        ]
        .iter()
        .map(|(h, a)| HostEntry {
            name: name(h),
            addresses: a.iter().map(|a| a.parse().unwrap()).collect(),
            ports: Vec::new(),
        })
        .collect();
        let t = NameTable::build(&settings, 3, &hosts).unwrap();
        let ptrs = |m: &Message| -> Vec<String> {
            m.answers
                .iter()
                .map(|r| match &r.data {
                    RData::PTR(p) => p.0.to_ascii(),
                    other => format!("{other:?}"),
                })
                .collect()
        };
        let v4 = ask(&t, "1.0.0.240.IN-ADDR.arpa.", RecordType::PTR).unwrap();
        assert_eq!(
            ptrs(&v4),
            ["a.global.", "b.global."],
            "shared address: both"
        );
        let v6 = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.2.0.0.0.1.0.0.2.ip6.arpa.";
        assert_eq!(ptrs(&ask(&t, v6, RecordType::PTR).unwrap()), ["a.global."]);
        // A wildcard names no host; an unused pool address does not exist.
        for unused in ["2.0.0.240.in-addr.arpa.", "9.0.0.240.in-addr.arpa."] {
            let nx = ask(&t, unused, RecordType::PTR).unwrap();
            assert_eq!(
                nx.metadata.response_code,
                ResponseCode::NXDomain,
                "{unused}"
            );
            assert_eq!(nx.authorities[0].name.to_ascii(), "240.in-addr.arpa.");
            let RData::SOA(soa) = &nx.authorities[0].data else {
                panic!()
            };
            assert_eq!(soa.mname.to_ascii(), "ns.dns.global.");
        }
        // Names on the way to an address exist; other types at an address get NODATA.
        for (q, qtype) in [
            ("0.0.240.in-addr.arpa.", RecordType::PTR),
            ("1.0.0.240.in-addr.arpa.", RecordType::A),
        ] {
            let m = ask(&t, q, qtype).unwrap();
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{q}");
            assert!(m.answers.is_empty(), "{q}");
        }
        for q in [
            "1.0.0.241.in-addr.arpa.",
            "x.1.0.0.240.in-addr.arpa.",
            "01.0.0.240.in-addr.arpa.",
        ] {
            let m = ask(&t, q, RecordType::PTR).unwrap();
            assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{q}");
        }
        let apex = ask(&t, "240.in-addr.arpa.", RecordType::NS).unwrap();
        assert_eq!(apex.answers.len(), 1);
        // Outside the pools: not ours (forwarded), even right next to one.
        for q in [
            "3.2.1.10.in-addr.arpa.",
            "1.0.0.239.in-addr.arpa.",
            "in-addr.arpa.",
            "arpa.",
        ] {
            assert!(ask(&t, q, RecordType::PTR).is_none(), "{q}");
        }
    }

    #[test]
    fn named_ports_have_srv_records_with_the_target_beside_them_when_it_fits() {
        let port = |service: &str, protocol, number| SrvPort {
            service: service.into(),
            protocol,
            number,
        };
        let host = |h: &str, addrs: Vec<String>, ports: Vec<SrvPort>| HostEntry {
            name: name(h),
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            ports,
        };
        let many: Vec<String> = (1..=30).map(|i| format!("240.0.1.{i}")).collect();
        let hosts = [
            host(
                "reviews.default.global.",
                vec!["240.0.0.3".into(), "2001:2::3".into()],
                vec![
                    port("_http", "_tcp", 9080),
                    port("_http", "_tcp", 9081),
                    port("_dns", "_udp", 53),
                ],
            ),
            host("big.global.", many, vec![port("_http", "_tcp", 80)]),
            host(
                "*.apps.global.",
                vec!["240.0.0.10".into()],
                vec![port("_http", "_tcp", 80)],
            ),
            host("new.global.", vec![], vec![port("_http", "_tcp", 80)]),
        ];
        let settings = ZoneSettings {
            zones: vec![name("global.")],
            ttl: 30,
            soa: SoaSettings::default(),
            reverse: Vec::new(),
        };
        let t = NameTable::build(&settings, 1, &hosts).unwrap();
        let srv = |m: &Message| -> Vec<String> {
            let mut v: Vec<String> = (m.answers.iter())
                .map(|r| match &r.data {
                    RData::SRV(s) => format!("{} {} {} {}", s.priority, s.weight, s.port, s.target),
                    other => format!("{other:?}"),
                })
                .collect();
            v.sort();
            v
        };
        let http = ask(&t, "_HTTP._tcp.reviews.default.global.", RecordType::SRV).unwrap();
        assert_eq!(
            srv(&http),
            [
                "0 100 9080 reviews.default.global.",
                "0 100 9081 reviews.default.global."
            ]
        );
        let glue: Vec<String> = (http.additionals.iter())
            .map(|r| format!("{} {}", r.name, r.data.ip_addr().unwrap()))
            .collect();
        assert_eq!(
            glue,
            [
                "reviews.default.global. 240.0.0.3",
                "reviews.default.global. 2001:2::3"
            ]
        );
        let dns = ask(&t, "_dns._udp.reviews.default.global.", RecordType::SRV).unwrap();
        assert_eq!(srv(&dns), ["0 100 53 reviews.default.global."]);
        // The protocol label is an empty non-terminal; the wrong protocol does not exist.
        let ent = ask(&t, "_tcp.reviews.default.global.", RecordType::SRV).unwrap();
        assert_eq!(
            (ent.metadata.response_code, ent.answers.len()),
            (ResponseCode::NoError, 0)
        );
        let nx = ask(&t, "_http._udp.reviews.default.global.", RecordType::SRV).unwrap();
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        // Thirty addresses do not fit beside the record in 512 bytes: the record alone.
        let big = ask(&t, "_http._tcp.big.global.", RecordType::SRV).unwrap();
        assert_eq!((big.answers.len(), big.additionals.len()), (1, 0));
        // A wildcard host has none (the wildcard's own A answers instead); a pending one waits.
        let wild = ask(&t, "_http._tcp.x.apps.global.", RecordType::SRV).unwrap();
        assert!(wild.answers.is_empty());
        let pending = ask(&t, "_http._tcp.new.global.", RecordType::SRV).unwrap();
        assert_eq!(pending.metadata.response_code, ResponseCode::ServFail);
    }

    #[test]
    fn settings_errors_are_reported() {
        let settings = ZoneSettings {
            zones: vec![name("global."), name("GLOBAL.")],
            ttl: 30,
            soa: SoaSettings::default(),
            reverse: Vec::new(),
        };
        assert!(matches!(
            NameTable::build(&settings, 1, &[]),
            Err(BuildError::DuplicateZone(_))
        ));
    }
}
