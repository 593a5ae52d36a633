//! What a watch has listed, keeping only what the caller reads from each object: for
//! ServiceEntries that is the declaration, not the whole object, which a million entries would
//! not fit beside. (ConfigMaps and Secrets are small: they use kube-runtime's reflector.)
//!
//! Like the reflector, a relist (`Init` … `InitDone`) is gathered aside and swapped in whole, so
//! objects deleted while the watch was down disappear and readers never see half a list.

use std::collections::BTreeMap;

use kube::runtime::watcher::Event;

/// What one event did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Nothing visible yet (a relist in progress).
    Nothing,
    Changed,
    /// A relist was swapped in: the set is complete.
    Relisted,
}

pub struct Listed<K, V> {
    current: BTreeMap<K, V>,
    relist: Option<BTreeMap<K, V>>,
}

impl<K, V> Default for Listed<K, V> {
    fn default() -> Self {
        Listed {
            current: BTreeMap::new(),
            relist: None,
        }
    }
}

impl<K: Ord, V> Listed<K, V> {
    pub fn current(&self) -> &BTreeMap<K, V> {
        &self.current
    }

    /// Applies `event`: `key` names an object, `read` gives what to keep of it (`None`: keep
    /// nothing, as for a deleted object).
    pub fn apply<T>(
        &mut self,
        event: Event<T>,
        key: impl Fn(&T) -> K,
        read: impl FnOnce(T) -> Option<V>,
    ) -> Applied {
        match event {
            Event::Init => {
                self.relist = Some(BTreeMap::new());
                Applied::Nothing
            }
            Event::InitApply(object) => {
                let k = key(&object);
                if let (Some(buffer), Some(value)) = (self.relist.as_mut(), read(object)) {
                    buffer.insert(k, value);
                }
                Applied::Nothing
            }
            Event::InitDone => {
                self.current = self.relist.take().unwrap_or_default();
                Applied::Relisted
            }
            Event::Apply(object) => {
                let k = key(&object);
                match read(object) {
                    Some(value) => self.current.insert(k, value),
                    None => self.current.remove(&k),
                };
                Applied::Changed
            }
            Event::Delete(object) => {
                self.current.remove(&key(&object));
                Applied::Changed
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(listed: &mut Listed<u32, String>, event: Event<(u32, &str)>) -> Applied {
        listed.apply(
            event,
            |o| o.0,
            |o| (!o.1.is_empty()).then(|| o.1.to_string()),
        )
    }

    #[test]
    fn a_relist_is_swapped_in_whole_and_drops_what_it_no_longer_holds() {
        let mut listed = Listed::default();
        assert_eq!(apply(&mut listed, Event::Init), Applied::Nothing);
        assert_eq!(
            apply(&mut listed, Event::InitApply((1, "a"))),
            Applied::Nothing
        );
        assert_eq!(
            apply(&mut listed, Event::InitApply((2, "b"))),
            Applied::Nothing
        );
        assert!(
            listed.current().is_empty(),
            "nothing shows before the list is whole"
        );
        assert_eq!(apply(&mut listed, Event::InitDone), Applied::Relisted);
        assert_eq!(listed.current().len(), 2);
        assert_eq!(apply(&mut listed, Event::Apply((3, "c"))), Applied::Changed);
        assert_eq!(apply(&mut listed, Event::Apply((1, ""))), Applied::Changed);
        assert_eq!(listed.current().keys().collect::<Vec<_>>(), [&2, &3]);
        // The watch failed and relists: 2 was deleted meanwhile.
        apply(&mut listed, Event::Init);
        apply(&mut listed, Event::InitApply((3, "c2")));
        assert_eq!(
            listed.current().len(),
            2,
            "the old set serves until the relist ends"
        );
        apply(&mut listed, Event::InitDone);
        assert_eq!(
            listed.current().iter().collect::<Vec<_>>(),
            [(&3, &"c2".to_string())]
        );
        assert_eq!(
            apply(&mut listed, Event::Delete((3, "c2"))),
            Applied::Changed
        );
        assert!(listed.current().is_empty());
    }
}
