//! An in-memory store, for tests and for running without persistence.

use std::sync::Mutex;

use tokio::sync::Notify;

use super::{Mutation, Store, StoreFuture};
use crate::alloc::state::AllocState;

#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<AllocState>,
    notify: Notify,
}

impl MemoryStore {
    pub fn new(state: AllocState) -> Self {
        MemoryStore {
            state: Mutex::new(state),
            notify: Notify::new(),
        }
    }
}

impl Store for MemoryStore {
    fn describe(&self) -> String {
        "memory".to_string()
    }

    fn load(&self) -> StoreFuture<'_, AllocState> {
        let state = self.state.lock().expect("memory store lock").clone();
        Box::pin(async move { Ok(state) })
    }

    fn update(&self, mut mutate: Mutation) -> StoreFuture<'_, AllocState> {
        let result = {
            let mut guard = self.state.lock().expect("memory store lock");
            let mut next = guard.clone();
            mutate(&mut next).map(|changed| {
                if changed {
                    *guard = next;
                    self.notify.notify_waiters();
                }
                guard.clone()
            })
        };
        Box::pin(async move { Ok(result?) })
    }

    fn changed(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(self.notify.notified())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::AllocError;
    use crate::alloc::state::Record;

    #[tokio::test]
    async fn updates_apply_whole_or_not_at_all_and_wake_watchers() {
        let store = MemoryStore::default();
        let waiting = store.changed();
        let stored = store
            .update(Box::new(|s: &mut AllocState| {
                s.records.insert(
                    "a.global".into(),
                    Record {
                        addresses: vec!["240.0.0.1".parse().unwrap()],
                        ..Default::default()
                    },
                );
                Ok(true)
            }))
            .await
            .unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), waiting)
            .await
            .expect("woken");
        let failed = store
            .update(Box::new(|s: &mut AllocState| {
                s.records.clear();
                Err(AllocError::NotFound("x".into()))
            }))
            .await;
        assert!(failed.is_err());
        assert_eq!(
            store.load().await.unwrap(),
            stored,
            "a failed mutation changed nothing"
        );
    }
}
