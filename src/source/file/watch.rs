//! Keeping the source set up to date: filesystem events, periodic rescans, and a warning when a
//! rescan is stuck.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
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
    let events = Arc::new(Mutex::new(Events::default()));
    let mut watcher = None;
    let mut scanner = Scanner::default();
    let mut ticker = tokio::time::interval(rescan_every);
    // The first pass, and every periodic one, reads the whole tree.
    let mut only: Option<BTreeSet<PathBuf>> = None;
    loop {
        if watcher.is_none() {
            // Retried on every pass: the directory may appear after start. Until it starts,
            // passes come from the ticker and read the whole tree.
            watcher = start_watcher(&dir, changed.clone(), events.clone());
        }
        let d = dir.clone();
        let mut pass = crate::background::spawn_blocking(move || {
            let result = match only {
                Some(paths) => scanner.rescan_paths(&d, &paths),
                None => scanner.rescan(&d),
            };
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
        only = tokio::select! {
            _ = changed.notified() => {
                // Events come in bursts (an editor's writes, a `git checkout`): read once they
                // pause. A file read half-written that fails to parse keeps what it declared
                // before, and its next write brings another event. Events that come while
                // the pass runs are kept for the next one.
                tokio::time::sleep(SETTLE).await;
                let mut events = events.lock().unwrap_or_else(PoisonError::into_inner);
                let taken = std::mem::take(&mut *events);
                (!taken.everything).then_some(taken.paths)
            }
            _ = ticker.tick() => None,
            _ = sources.closed() => return,
        }
    }
}

/// What the filesystem events since the last pass name.
#[derive(Default)]
struct Events {
    paths: BTreeSet<PathBuf>,
    /// An event named no path, or the kernel dropped some: the whole tree is read.
    everything: bool,
}

impl Events {
    /// Notes `event`; false for one that changes nothing (a read, an open).
    fn note(&mut self, event: notify::Result<notify::Event>, dir: &Path, watched: &Path) -> bool {
        let event = match event {
            Ok(event) if event.kind.is_access() => return false,
            Ok(event) if !event.need_rescan() && !event.paths.is_empty() => event,
            _ => {
                self.everything = true;
                return true;
            }
        };
        // The watcher names paths below the directory it was given made absolute; the scanner
        // names them below `dir` as configured.
        for path in event.paths {
            let path = match path.strip_prefix(watched) {
                Ok(below) => dir.join(below),
                Err(_) => path,
            };
            self.paths.insert(path);
        }
        true
    }
}

fn start_watcher(
    dir: &Path,
    changed: Arc<Notify>,
    events: Arc<Mutex<Events>>,
) -> Option<notify::RecommendedWatcher> {
    let watched = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let configured = dir.to_path_buf();
    let handler = move |event: notify::Result<notify::Event>| {
        // The watcher's thread turns the kernel's events into paths: update work, which
        // steps back for queries like the rest.
        crate::background::lower_this_thread();
        let mut noted = events.lock().unwrap_or_else(PoisonError::into_inner);
        if noted.note(event, &configured, &watched) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, CreateKind, EventKind, Flag};

    #[test]
    fn events_name_paths_below_the_configured_directory() {
        let (dir, watched) = (Path::new("zones"), Path::new("/srv/./zones"));
        let event = |kind, path: &str| Ok(notify::Event::new(kind).add_path(path.into()));
        let mut events = Events::default();
        let read = event(EventKind::Access(AccessKind::Any), "/srv/zones/a.yaml");
        assert!(!events.note(read, dir, watched), "a read changes nothing");
        let created = event(EventKind::Create(CreateKind::File), "/srv/zones/x/a.yaml");
        assert!(events.note(created, dir, watched));
        let elsewhere = event(EventKind::Create(CreateKind::File), "/tmp/b.yaml");
        assert!(events.note(elsewhere, dir, watched));
        let want = [
            PathBuf::from("/tmp/b.yaml"),
            PathBuf::from("zones/x/a.yaml"),
        ];
        assert_eq!(events.paths, BTreeSet::from(want));
        assert!(!events.everything);

        let dropped = notify::Event::new(EventKind::Other).set_flag(Flag::Rescan);
        assert!(events.note(Ok(dropped), dir, watched));
        assert!(events.everything, "the kernel dropped events");
        let mut failed = Events::default();
        assert!(failed.note(Err(notify::Error::generic("boom")), dir, watched));
        assert!(failed.everything);
    }
}
