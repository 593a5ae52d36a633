//! Keeping the source set up to date: filesystem events, periodic rescans, and a warning when a
//! rescan is stuck.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::scan::Scanner;
use crate::source::set::SourceSet;

/// How long a rescan may run before each warning that it is stuck. A healthy scan of thousands
/// of files takes well under a second.
const STALL_WARNING: Duration = Duration::from_secs(10);

/// How long after a filesystem event the directory is read.
const SETTLE: Duration = Duration::from_millis(20);

/// The name the file source publishes under.
pub const SOURCE: &str = "files";

/// Loads `dir` now, then keeps `sources` up to date until nobody reads them.
pub async fn watch_dir(dir: PathBuf, rescan_every: Duration, sources: SourceSet) {
    let changed = Arc::new(Notify::new());
    let mut watcher = None;
    let mut scanner = Scanner::default();
    let mut ticker = tokio::time::interval(rescan_every);
    loop {
        if watcher.is_none() {
            // Retried on every pass: the directory may appear after start.
            watcher = start_watcher(&dir, changed.clone());
        }
        let d = dir.clone();
        let mut pass = crate::background::spawn_blocking(move || {
            let result = scanner.rescan(&d);
            (result, scanner)
        });
        // A stat or read on a hung network mount blocks in the kernel, and nothing can cancel
        // it. The names last read keep being served meanwhile; the operator is told, and
        // shutdown does not wait for the stuck thread.
        let started = Instant::now();
        let (result, kept) = loop {
            tokio::select! {
                done = &mut pass => match done {
                    Ok(done) => break done,
                    Err(_) => return,
                },
                _ = tokio::time::sleep(STALL_WARNING) => warn!(
                    dir = %dir.display(),
                    stuck_secs = started.elapsed().as_secs(),
                    "manifest scan is stuck in the filesystem (a hung mount?); serving the manifests last read"
                ),
                _ = sources.closed() => return,
            }
        };
        if started.elapsed() >= STALL_WARNING {
            info!(dir = %dir.display(), stuck_secs = started.elapsed().as_secs(), "manifest scan finished after stalling");
        }
        scanner = kept;
        if let Some(result) = result {
            for (path, error) in &result.unlisted {
                warn!(dir = %path.display(), %error, "cannot list directory; keeping the manifests last read below it");
            }
            for (path, error) in &result.failed {
                if result.stale.contains(path) {
                    warn!(file = %path.display(), %error, "cannot read manifest; serving what it declared when it last parsed");
                } else {
                    warn!(file = %path.display(), %error, "skipping manifest");
                }
            }
            let failed = result.failed.len() + result.still_failing;
            info!(dir = %dir.display(), entries = result.entries(), failed, "loaded manifests");
            sources.publish_chunks(SOURCE, result.declarations);
        }
        tokio::select! {
            _ = changed.notified() => {
                // Events come in bursts (an editor's writes, a `git checkout`): read once they
                // pause. A file read half-written that fails to parse keeps what it declared
                // before, and its next write brings another event.
                tokio::time::sleep(SETTLE).await;
            }
            _ = ticker.tick() => {}
            _ = sources.closed() => return,
        }
    }
}

fn start_watcher(dir: &Path, changed: Arc<Notify>) -> Option<notify::RecommendedWatcher> {
    let handler = move |res: notify::Result<notify::Event>| {
        if res.is_ok_and(|event| !event.kind.is_access()) {
            changed.notify_one();
        }
    };
    let watcher = notify::recommended_watcher(handler).and_then(|mut w| {
        w.watch(dir, RecursiveMode::Recursive)?;
        Ok(w)
    });
    match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            debug!(dir = %dir.display(), error = %e, "no filesystem events; relying on periodic rescans");
            None
        }
    }
}
