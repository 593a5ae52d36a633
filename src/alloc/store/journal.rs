//! The state file's journal (`PATH.journal`): what each transaction changed, one JSON line per
//! transaction. A change to a big mesh then costs a line and one fsync, not a rewrite of every
//! record (a 100,000-host mesh's state file is about 3 MB). The stored state is the file with
//! the journal's lines applied in order; the file store folds the journal back into the file
//! once the journal has grown as big as the file.
//!
//! A line sets records to what they became and drops the records that went; it never says
//! "add" or "move". Applying lines to a state that already holds them changes nothing, so a
//! crash after the file was rewritten but before the journal was emptied reads back the same
//! state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::alloc::state::{AllocState, DecodeError, Record, ZoneSerial, follow_records};

/// One transaction's change.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    set: BTreeMap<String, Record>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    drop: Vec<String>,
    #[serde(
        default,
        rename = "zoneSerial",
        skip_serializing_if = "Option::is_none"
    )]
    zone_serial: Option<ZoneSerial>,
}

impl Entry {
    /// What turned `before` into `after`; `None` when a line cannot say it (the zone serial
    /// went away), and the whole file is written instead. Two states of one store share most
    /// of their records' nodes, which the comparison skips.
    pub fn between(before: &AllocState, after: &AllocState) -> Option<Entry> {
        let mut entry = Entry::default();
        follow_records(
            &mut before.records.clone(),
            &after.records,
            |host, _, now| match now {
                Some(record) => {
                    entry.set.insert(host.clone(), record.clone());
                }
                None => entry.drop.push(host.clone()),
            },
        );
        if before.zone_serial != after.zone_serial {
            entry.zone_serial = Some(after.zone_serial.clone()?);
        }
        Some(entry)
    }

    /// Whether it changes nothing (and is not worth a line).
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.drop.is_empty() && self.zone_serial.is_none()
    }

    /// The line appended for it, newline included.
    pub fn line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("records serialize");
        line.push('\n');
        line
    }

    fn apply(self, state: &mut AllocState) {
        for host in &self.drop {
            state.records.remove(host);
        }
        for (host, record) in self.set {
            state.records.insert(host, record);
        }
        if let Some(serial) = self.zone_serial {
            state.zone_serial = Some(serial);
        }
    }
}

/// What a replay found.
#[derive(Debug, PartialEq)]
pub struct Replayed {
    /// Bytes of the lines applied. What follows them is the torn end of an append that a crash
    /// cut short; the next append writes over it.
    pub applied: u64,
    pub lines: usize,
}

/// Applies every line of `journal` to `state`, in order, and checks the result. The last line
/// may be the torn end of an append a crash cut short: that write was never acknowledged, so
/// nothing was answered from it, and it is left out. Any other line that does not read is
/// damage, and an error naming the line.
pub fn replay(state: &mut AllocState, journal: &[u8]) -> Result<Replayed, DecodeError> {
    let mut replayed = Replayed {
        applied: 0,
        lines: 0,
    };
    let mut lines = journal.split_inclusive(|b| *b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let last = lines.peek().is_none();
        match serde_json::from_slice::<Entry>(line) {
            Ok(entry) if line.ends_with(b"\n") => {
                entry.apply(state);
                replayed.applied += line.len() as u64;
                replayed.lines += 1;
            }
            _ if last => break,
            Ok(_) => unreachable!("only the last line can lack its newline"),
            Err(error) => {
                return Err(DecodeError::Journal {
                    line: replayed.lines + 1,
                    detail: error.to_string(),
                });
            }
        }
    }
    if replayed.lines > 0 {
        state.validate()?;
    }
    Ok(replayed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ip: &str) -> Record {
        Record {
            addresses: vec![ip.parse().unwrap()],
            ..Record::default()
        }
    }

    /// Three states of one store, each a transaction after the one before.
    fn history() -> Vec<AllocState> {
        let mut states = vec![AllocState::default()];
        let mut next = |change: &dyn Fn(&mut AllocState)| {
            let mut state = states.last().unwrap().clone();
            change(&mut state);
            states.push(state);
        };
        next(&|s| {
            s.records.insert("a.global".into(), record("240.0.0.1"));
            s.records.insert("b.global".into(), record("240.0.0.2"));
        });
        next(&|s| {
            s.records.remove("a.global");
            s.records.insert("c.global".into(), record("240.0.0.1"));
            s.zone_serial = Some(ZoneSerial {
                serial: 7,
                content: "ab".into(),
            });
        });
        next(&|s| {
            let b = s.records.get_mut("b.global").unwrap();
            b.released_at = Some(99);
        });
        states
    }

    fn journal(states: &[AllocState]) -> String {
        (states.windows(2))
            .map(|w| Entry::between(&w[0], &w[1]).unwrap().line())
            .collect()
    }

    #[test]
    fn a_journal_replays_to_the_last_state_from_any_state_it_holds() {
        let states = history();
        let text = journal(&states);
        // From the first state, and (a crash between rewriting the file and emptying the
        // journal) from every later one: always the last state.
        for start in &states {
            let mut state = start.clone();
            let replayed = replay(&mut state, text.as_bytes()).unwrap();
            assert_eq!(&state, states.last().unwrap());
            assert_eq!(replayed.applied, text.len() as u64);
            assert_eq!(replayed.lines, 3);
        }
        assert!(
            text.lines().all(|l| !l.contains('\n') && l.len() < 120),
            "{text}"
        );
    }

    #[test]
    fn a_torn_last_line_is_left_out_and_damage_before_it_is_refused() {
        let states = history();
        let text = journal(&states);
        let whole_two = text.lines().take(2).map(|l| l.len() + 1).sum::<usize>();
        for torn in [&text[..text.len() - 1], &text[..text.len() - 9]] {
            let mut state = AllocState::default();
            let replayed = replay(&mut state, torn.as_bytes()).unwrap();
            assert_eq!(state, states[2], "up to the last whole line");
            assert_eq!(replayed.applied, whole_two as u64);
        }
        let mut zeros = text.clone().into_bytes();
        zeros.extend_from_slice(&[0; 40]);
        let mut state = AllocState::default();
        assert_eq!(
            replay(&mut state, &zeros).unwrap().applied,
            text.len() as u64,
            "a tail the crash left as zeros is not a line"
        );

        let damaged = text.replacen("\"set\"", "\"sat\"", 1);
        let err = replay(&mut AllocState::default(), damaged.as_bytes()).unwrap_err();
        assert!(matches!(err, DecodeError::Journal { line: 1, .. }), "{err}");
        // A whole last line that says another host holds an address: not torn, refused.
        let clash =
            format!("{text}{{\"set\":{{\"d.global\":{{\"addresses\":[\"240.0.0.2\"]}}}}}}\n");
        let err = replay(&mut AllocState::default(), clash.as_bytes()).unwrap_err();
        assert!(matches!(err, DecodeError::Duplicate { .. }), "{err}");
    }

    #[test]
    fn a_lost_zone_serial_is_not_a_line() {
        let states = history();
        let mut gone = states[2].clone();
        gone.zone_serial = None;
        assert_eq!(Entry::between(&states[2], &gone), None);
        assert!(Entry::between(&states[2], &states[2]).unwrap().is_empty());
    }
}
