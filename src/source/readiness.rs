//! Whether every configured source has loaded once: what `/readyz` reports.
//!
//! Like istiod with remote clusters, a cluster that never syncs does not keep the server
//! unready forever: after the timeout the server is ready with what it has.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

#[derive(Clone)]
pub struct Readiness {
    inner: Arc<Mutex<State>>,
}

struct State {
    pending: BTreeSet<String>,
    deadline: Instant,
    announced: bool,
}

impl Readiness {
    pub fn new(timeout: Duration) -> Self {
        Readiness {
            inner: Arc::new(Mutex::new(State {
                pending: BTreeSet::new(),
                deadline: Instant::now() + timeout,
                announced: false,
            })),
        }
    }

    /// A source that must sync before the server is ready (only before the deadline).
    pub fn expect(&self, source: &str) {
        let mut s = self.inner.lock().expect("readiness lock");
        if Instant::now() < s.deadline && !s.announced {
            s.pending.insert(source.to_string());
        }
    }

    pub fn synced(&self, source: &str) {
        let mut s = self.inner.lock().expect("readiness lock");
        if s.pending.remove(source) && s.pending.is_empty() && !s.announced {
            s.announced = true;
            info!("every source has synced; ready");
        }
    }

    /// A source that went away no longer holds readiness back.
    pub fn forget(&self, source: &str) {
        self.synced(source);
    }

    pub fn is_ready(&self) -> bool {
        let mut s = self.inner.lock().expect("readiness lock");
        if s.pending.is_empty() {
            return true;
        }
        if Instant::now() >= s.deadline {
            if !s.announced {
                s.announced = true;
                warn!(unsynced = ?s.pending, "sync timeout passed; ready without these sources");
            }
            return true;
        }
        false
    }
}
