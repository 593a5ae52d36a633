//! Combines what every source declares into the one set the publisher reads.
//!
//! Sources come and go at run time (clusters from remote secrets): each publishes its complete
//! current set under its own name, and removing a source removes exactly its declarations.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::{Declaration, DeclarationSet};

/// Every source's declarations, sharing the sources' own sets (nothing is copied).
#[derive(Clone, Default)]
pub struct Combined(Arc<Vec<DeclarationSet>>);

impl From<Vec<DeclarationSet>> for Combined {
    fn from(sets: Vec<DeclarationSet>) -> Self {
        Combined(Arc::new(sets))
    }
}

impl Combined {
    pub fn iter(&self) -> impl Iterator<Item = &Declaration> {
        self.0.iter().flat_map(|set| set.iter())
    }

    pub fn len(&self) -> usize {
        self.0.iter().map(|set| set.len()).sum()
    }

    /// The sets themselves: one that did not change is the same allocation as before.
    pub fn sets(&self) -> impl Iterator<Item = &DeclarationSet> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Clone)]
pub struct SourceSet {
    inner: Arc<Inner>,
}

struct Inner {
    sets: Mutex<BTreeMap<String, Vec<DeclarationSet>>>,
    combined: watch::Sender<Combined>,
}

impl SourceSet {
    /// A set and the receiver of its combined declarations.
    pub fn new() -> (SourceSet, watch::Receiver<Combined>) {
        let (combined, rx) = watch::channel(Combined::default());
        (
            SourceSet {
                inner: Arc::new(Inner {
                    sets: Mutex::default(),
                    combined,
                }),
            },
            rx,
        )
    }

    /// Replaces everything `source` declares.
    pub fn publish(&self, source: &str, set: DeclarationSet) {
        self.publish_chunks(source, vec![set]);
    }

    /// Replaces everything `source` declares with several sets (shared, not copied).
    pub fn publish_chunks(&self, source: &str, chunks: Vec<DeclarationSet>) {
        let mut sets = self.inner.sets.lock().expect("source set lock");
        sets.insert(source.to_string(), chunks);
        self.recombine(&sets);
    }

    /// Forgets `source` and all it declared.
    pub fn remove(&self, source: &str) {
        let mut sets = self.inner.sets.lock().expect("source set lock");
        if sets.remove(source).is_some() {
            self.recombine(&sets);
        }
    }

    fn recombine(&self, sets: &BTreeMap<String, Vec<DeclarationSet>>) {
        let all = Combined(Arc::new(sets.values().flatten().cloned().collect()));
        self.inner.combined.send_replace(all);
    }

    /// Whether `source` has published at least once.
    pub fn has(&self, source: &str) -> bool {
        self.inner
            .sets
            .lock()
            .expect("source set lock")
            .contains_key(source)
    }

    /// Resolves once `source` has published at least once.
    pub async fn published(&self, source: &str) {
        let mut rx = self.inner.combined.subscribe();
        while !self.has(source) {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Resolves when nobody reads the combined set any more.
    pub async fn closed(&self) {
        self.inner.combined.closed().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{Content, Declaration};

    fn decl(origin: &str) -> Declaration {
        let content = Content {
            namespace: "ns".into(),
            name: "n".into(),
            hosts: vec![],
            addresses: vec![],
            needs_vip: true,
            resolution: None,
            ports: Box::default(),
            labels: Default::default(),
            claimed: Box::default(),
        };
        Declaration::new(origin.into(), content)
    }

    #[test]
    fn sources_add_replace_and_remove_their_own_declarations() {
        let (set, rx) = SourceSet::new();
        set.publish("files", Arc::new(vec![decl("a.yaml")]));
        set.publish("cluster b", Arc::new(vec![decl("b1"), decl("b2")]));
        assert_eq!(rx.borrow().len(), 3);
        set.publish("cluster b", Arc::new(vec![decl("b1")]));
        assert_eq!(rx.borrow().len(), 2);
        set.remove("cluster b");
        assert_eq!(
            rx.borrow().iter().map(|d| &*d.origin).collect::<Vec<_>>(),
            ["a.yaml"]
        );
        assert!(set.has("files") && !set.has("cluster b"));
    }
}
