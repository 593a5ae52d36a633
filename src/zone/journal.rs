//! The journal: what changed between recent serials of each served zone, so a secondary that is
//! a few serials behind gets only the difference (IXFR, RFC 1995) rather than the whole zone.
//!
//! Each table carries the journal that leads up to it, built when the publisher swaps it in by
//! comparing it with the table before, so a transfer reads one snapshot for the zone and its
//! history alike. It keeps, per zone, the most recent differences while together they are
//! smaller than the zone itself, and at most [`MAX_RECORDS`] records; a client further behind
//! gets the zone in AXFR form (§4), which is then no bigger (or, past the cap, a few times
//! bigger, for a client that fell far behind).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::table::{NameTable, OwnedRecord, ZoneContent};

/// The most records the journal of one zone holds. It lives in memory, and a big zone under
/// steady churn would otherwise keep as much history as it has records: for a mesh of 100,000
/// hosts (about 300,000 records) that is reached after some 20 minutes of 50 changes a second,
/// roughly 30 MiB at about 100 bytes a record. At that rate the cap is a minute or more of
/// history; a secondary told of each change by NOTIFY asks within seconds.
pub const MAX_RECORDS: usize = 20_000;

/// A record with its owner: the owner's lower-cased wire name, then the record (type, class, TTL,
/// length and data).
pub type JournalRecord = (Box<[u8]>, Box<[u8]>);

/// Records one step deleted from and added to each zone, by zone apex.
pub type ZoneChanges = HashMap<Box<[u8]>, (Vec<JournalRecord>, Vec<JournalRecord>)>;

/// How one zone went from one serial to the next.
#[derive(Debug)]
pub struct Delta {
    /// The SOA record (without owner) before and after.
    pub from_soa: Box<[u8]>,
    pub to_soa: Box<[u8]>,
    pub from: u32,
    pub deleted: Vec<JournalRecord>,
    pub added: Vec<JournalRecord>,
}

impl Delta {
    fn size(&self) -> usize {
        self.deleted.len() + self.added.len() + 2
    }
}

/// The recent differences of every zone, oldest first.
#[derive(Clone, Debug, Default)]
pub struct Journal {
    zones: HashMap<Box<[u8]>, ZoneJournal>,
}

#[derive(Clone, Debug, Default)]
struct ZoneJournal {
    deltas: VecDeque<Arc<Delta>>,
    /// Records in `deltas`, both SOAs of each counted.
    records: usize,
}

impl ZoneJournal {
    /// This history followed by `step` (a difference, and the size of the zone after it), kept
    /// while sending it beats sending the zone and it fits under [`MAX_RECORDS`]; `None` (a
    /// difference bigger than the zone) leaves nothing before it worth keeping either.
    fn then(mut self, step: Option<(Delta, usize)>) -> ZoneJournal {
        let Some((delta, size)) = step else {
            return ZoneJournal::default();
        };
        self.records += delta.size();
        self.deltas.push_back(Arc::new(delta));
        while self.records > size.min(MAX_RECORDS)
            && let Some(dropped) = self.deltas.pop_front()
        {
            self.records -= dropped.size();
        }
        self
    }
}

impl Journal {
    /// The journal of `new`: `old`'s, followed by what changed from `old` to `new` in every zone
    /// both serve. A zone whose serial did not move carries its history over unchanged.
    pub fn follow(old: &NameTable, new: &NameTable) -> Journal {
        let mut journal = Journal::default();
        // The first table of a process (the one before it is empty): its difference is the
        // whole zone, never worth keeping, and costly to work out for a big mesh.
        if old.host_count() == 0 {
            return journal;
        }
        for apex in new.apexes() {
            let previous = old.journal().zones.get(apex).cloned().unwrap_or_default();
            let (Some(before), Some(after)) = (old.zone_content(apex), new.zone_content(apex))
            else {
                continue;
            };
            if old.serial() == new.serial() {
                journal.zones.insert(apex.into(), previous);
                continue;
            }
            let step = diff(before, after, old.serial());
            journal.zones.insert(apex.into(), previous.then(step));
        }
        journal
    }

    /// The journal of `new`, made from `old` by [`NameTable::apply`]: `old`'s, followed by
    /// `changes` (by zone apex: the records deleted and added), which that step worked out from
    /// the names it touched rather than from the whole zones.
    pub fn advance(old: &NameTable, new: &NameTable, mut changes: ZoneChanges) -> Journal {
        let mut journal = Journal::default();
        for apex in new.apexes() {
            let previous = old.journal().zones.get(apex).cloned().unwrap_or_default();
            if old.serial() == new.serial() {
                journal.zones.insert(apex.into(), previous);
                continue;
            }
            let soa = |t: &NameTable| t.zone_content(apex).map(|c| Box::<[u8]>::from(c.soa));
            let (Some(from_soa), Some(to_soa), Some(size)) =
                (soa(old), soa(new), new.zone_size(apex))
            else {
                continue;
            };
            let (deleted, added) = changes.remove(apex).unwrap_or_default();
            let delta = Delta {
                from_soa,
                to_soa,
                from: old.serial(),
                deleted,
                added,
            };
            let step = (delta.size() <= size).then_some((delta, size));
            journal.zones.insert(apex.into(), previous.then(step));
        }
        journal
    }

    /// The differences that take the zone at `apex` from `serial` to the current one, oldest
    /// first; `None` when the journal does not reach back to `serial`.
    pub fn since(&self, apex: &[u8], serial: u32) -> Option<impl Iterator<Item = &Delta>> {
        let deltas = &self.zones.get(apex)?.deltas;
        let first = deltas.iter().position(|d| d.from == serial)?;
        Some(deltas.range(first..).map(|d| &**d))
    }
}

/// What `after` deleted from and added to `before` (its serial `from`), and how many records
/// `after` holds. Both sides sorted and walked together: no record is copied but the changes,
/// and not those either once they outnumber the zone (the first table, a big change): `None`
/// then, as such a difference is never kept.
fn diff(before: ZoneContent<'_>, after: ZoneContent<'_>, from: u32) -> Option<(Delta, usize)> {
    let mut old: Vec<OwnedRecord<'_>> = before.records.collect();
    let mut new: Vec<OwnedRecord<'_>> = after.records.collect();
    old.sort_unstable();
    new.sort_unstable();
    let owned = |(owner, record): &OwnedRecord<'_>| -> JournalRecord {
        (owner[..].into(), (*record).into())
    };
    let (mut deleted, mut added) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        if deleted.len() + added.len() > new.len() {
            return None;
        }
        match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) if a == b => (i, j) = (i + 1, j + 1),
            (Some(a), Some(b)) if a < b => {
                deleted.push(owned(a));
                i += 1;
            }
            (Some(a), None) => {
                deleted.push(owned(a));
                i += 1;
            }
            (_, Some(b)) => {
                added.push(owned(b));
                j += 1;
            }
            (None, None) => unreachable!("the loop runs while either side has records"),
        }
    }
    let delta = Delta {
        from_soa: before.soa.into(),
        to_soa: after.soa.into(),
        from,
        deleted,
        added,
    };
    Some((delta, new.len() + 2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::HostEntry;
    use crate::wire::name::lower_wire;
    use crate::zone::{SoaSettings, ZoneSettings};
    use hickory_proto::rr::Name;
    use hickory_proto::serialize::binary::BinDecodable;

    fn table(serial: u32, hosts: &[(&str, &str)], previous: Option<&NameTable>) -> NameTable {
        let settings = ZoneSettings {
            zones: vec![Name::from_ascii("global.").unwrap()],
            ttl: 30,
            soa: SoaSettings::default(),
            reverse: vec!["240.0.0.0/24".parse().unwrap()],
        };
        let entries: Vec<HostEntry> = (hosts.iter())
            .map(|(h, a)| HostEntry {
                name: Name::from_ascii(h).unwrap(),
                addresses: vec![a.parse().unwrap()],
                ports: Vec::new(),
            })
            .collect();
        let mut table = NameTable::build(&settings, serial, &entries).unwrap();
        if let Some(previous) = previous {
            table.follow(previous);
        }
        table
    }

    fn owners(records: &[JournalRecord]) -> Vec<String> {
        let mut names: Vec<String> = (records.iter())
            .map(|(o, _)| Name::from_bytes(o).unwrap().to_string())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn each_serial_step_keeps_what_went_and_what_came() {
        let many: Vec<(String, String)> = (0..20)
            .map(|i| (format!("h{i}.global."), format!("240.0.0.{}", i + 10)))
            .collect();
        let mut hosts: Vec<(&str, &str)> = many.iter().map(|(h, a)| (&h[..], &a[..])).collect();
        let t1 = table(1, &hosts, None);
        hosts.retain(|(h, _)| *h != "h3.global.");
        hosts.push(("new.global.", "240.0.0.200"));
        let t2 = table(2, &hosts, Some(&t1));
        hosts[0].1 = "240.0.0.201";
        let t3 = table(3, &hosts, Some(&t2));
        let apex = lower_wire(&Name::from_ascii("global.").unwrap());

        let steps: Vec<&Delta> = t3.journal().since(&apex, 1).unwrap().collect();
        assert_eq!(steps.iter().map(|d| d.from).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(owners(&steps[0].deleted), ["h3.global."]);
        assert_eq!(owners(&steps[0].added), ["new.global."]);
        assert_eq!(owners(&steps[1].deleted), ["h0.global."]);
        assert_eq!(owners(&steps[1].added), ["h0.global."]);
        assert_ne!(steps[0].from_soa, steps[0].to_soa);
        assert_eq!(steps[0].to_soa, steps[1].from_soa);
        assert_eq!(t3.journal().since(&apex, 2).unwrap().count(), 1);
        // Not a serial the journal knows (the current one included): no differences to send.
        assert!(t3.journal().since(&apex, 3).is_none());
        assert!(t3.journal().since(&apex, 9).is_none());

        // The pool's reverse zone has its own history: h3's PTR went, new's came.
        let reverse = lower_wire(&Name::from_ascii("0.0.240.in-addr.arpa.").unwrap());
        let step = t3.journal().since(&reverse, 2).unwrap().next().unwrap();
        assert_eq!(owners(&step.deleted), ["10.0.0.240.in-addr.arpa."]);
        assert_eq!(owners(&step.added), ["201.0.0.240.in-addr.arpa."]);

        // The same serial again (a rebuild of the same content) keeps the history.
        let same = table(3, &hosts, Some(&t3));
        assert_eq!(same.journal().since(&apex, 1).unwrap().count(), 2);
    }

    /// However big the zone, the history held in memory stops at [`MAX_RECORDS`]: the oldest
    /// steps go first.
    #[test]
    fn history_is_capped_whatever_the_zone_size() {
        let step = |from: u32| Delta {
            from_soa: Box::default(),
            to_soa: Box::default(),
            from,
            deleted: Vec::new(),
            added: vec![(Box::default(), Box::default()); 98],
        };
        let mut journal = ZoneJournal::default();
        let huge_zone = MAX_RECORDS * 100;
        for from in 0..1000 {
            journal = journal.then(Some((step(from), huge_zone)));
        }
        assert!(journal.records <= MAX_RECORDS);
        assert_eq!(journal.deltas.len(), MAX_RECORDS / 100);
        assert_eq!(
            journal.deltas.back().unwrap().from,
            999,
            "the newest step is kept"
        );
        let counted: usize = journal.deltas.iter().map(|d| d.size()).sum();
        assert_eq!(counted, journal.records);
    }

    #[test]
    fn history_bigger_than_the_zone_is_dropped() {
        let hosts = |prefix: &str, base: usize| -> Vec<(String, String)> {
            (0..5)
                .map(|i| {
                    (
                        format!("{prefix}{i}.global."),
                        format!("240.0.0.{}", i + base),
                    )
                })
                .collect()
        };
        fn view(v: &[(String, String)]) -> Vec<(&str, &str)> {
            v.iter().map(|(h, a)| (&h[..], &a[..])).collect()
        }
        let (a, b) = (hosts("a", 1), hosts("b", 100));
        let t1 = table(1, &view(&a), None);
        let t2 = table(2, &view(&b), Some(&t1));
        let apex = lower_wire(&Name::from_ascii("global.").unwrap());
        // Replacing every host costs more than the zone: AXFR instead.
        assert!(t2.journal().since(&apex, 1).is_none());
        let t3 = table(3, &view(&b[..4]), Some(&t2));
        assert_eq!(t3.journal().since(&apex, 2).unwrap().count(), 1);
    }
}
