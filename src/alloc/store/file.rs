//! A JSON file shared by the server and `dnsctl`.
//!
//! Writers take an exclusive lock on `PATH.lock`, read the latest state, and replace the file
//! atomically (temporary file, fsync, rename, fsync of the directory), so a crash leaves either
//! the old or the new state. A file that does not parse is reported and never overwritten.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Mutation, Store, StoreError, StoreFuture};
use crate::alloc::state::{AllocState, Renderer};

/// How often a server looks for changes made by other processes.
const POLL: Duration = Duration::from_millis(500);

type Fingerprint = Option<(i64, i64, u64, u64)>;

/// The largest state file read: about ten million hosts at roughly 110 bytes each.
pub const MAX_STATE_BYTES: u64 = 1 << 30;

#[derive(Clone)]
pub struct FileStore {
    path: PathBuf,
    /// What this process last read or wrote, to tell others' changes from its own.
    seen: Arc<Mutex<Fingerprint>>,
    /// The state as this process last read or wrote it, and the file's fingerprint then: a
    /// write finds the file unchanged since and skips reading and parsing it again, which for
    /// a big mesh costs more than the write.
    last: Arc<Mutex<Option<(Fingerprint, AllocState)>>>,
    renderer: Arc<Mutex<Renderer>>,
}

impl FileStore {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileStore {
            path: path.into(),
            seen: Arc::new(Mutex::new(None)),
            last: Arc::default(),
            renderer: Arc::default(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> StoreError {
        StoreError::Io {
            store: self.describe(),
            source,
        }
    }

    fn fingerprint(&self) -> Fingerprint {
        let m = std::fs::metadata(&self.path).ok()?;
        Some((m.mtime(), m.mtime_nsec(), m.len(), m.ino()))
    }

    fn remember(&self, fp: Fingerprint) {
        *self.seen.lock().expect("fingerprint lock") = fp;
    }

    /// Reads the state file: a regular file of at most [`MAX_STATE_BYTES`] (a FIFO or a device in
    /// its place is refused at once, never waited on or read without end).
    fn read(&self) -> Result<AllocState, StoreError> {
        let fp = self.fingerprint();
        let text = match crate::bounded::read_text(&self.path, MAX_STATE_BYTES) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.remember(None);
                return Ok(AllocState::default());
            }
            Err(e) => return Err(self.io(e)),
        };
        // Remembered even when unreadable: a broken file is reported again when it changes
        // (or on retry), not on every poll.
        self.remember(fp);
        AllocState::from_json(&text).map_err(|e| StoreError::Corrupt {
            store: self.describe(),
            detail: e.to_string(),
        })
    }

    fn update_blocking(&self, mut mutate: Mutation) -> Result<AllocState, StoreError> {
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| self.io(e))?;
        let lock_path = with_suffix(&self.path, ".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| self.io(e))?;
        lock.lock().map_err(|e| self.io(e))?;
        let fp = self.fingerprint();
        let cached = (self.last.lock().expect("state cache lock").as_ref())
            .filter(|(at, _)| fp.is_some() && *at == fp)
            .map(|(_, state)| state.clone());
        let mut state = match cached {
            Some(state) => state,
            None => self.read()?,
        };
        if mutate(&mut state)? {
            let text = self.renderer.lock().expect("renderer lock").render(&state);
            self.write(dir, &text).map_err(|e| self.io(e))?;
            self.remember(self.fingerprint());
        }
        *self.last.lock().expect("state cache lock") = Some((self.fingerprint(), state.clone()));
        // The lock is released when `lock` is dropped, after the rename is durable.
        Ok(state)
    }

    /// Replaces the file; called with the lock held. The new file keeps the old one's mode (and
    /// owner, when we may set it), so an operator's `chmod 600` or `chown` survives our writes.
    fn write(&self, dir: &Path, text: &str) -> std::io::Result<()> {
        self.remove_leftovers(dir);
        let tmp = with_suffix(&self.path, &format!(".tmp.{}", std::process::id()));
        let result = (|| {
            let mut file = File::create(&tmp)?;
            if let Ok(old) = std::fs::metadata(&self.path) {
                file.set_permissions(old.permissions())?;
                // SAFETY: geteuid has no preconditions.
                if unsafe { libc::geteuid() } == 0 {
                    std::os::unix::fs::fchown(&file, Some(old.uid()), Some(old.gid()))?;
                }
            }
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

impl FileStore {
    /// Removes temporary files a writer killed mid-write left behind (`PATH.tmp.PID`). Called
    /// with the lock held: a live writer holds the lock while its temporary file exists, so any
    /// found now is a dead one's.
    fn remove_leftovers(&self, dir: &Path) {
        let Some(name) = self.path.file_name().and_then(|n| n.to_str()) else {
            return;
        };
        let prefix = format!("{name}.tmp.");
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix))
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

impl Store for FileStore {
    fn describe(&self) -> String {
        format!("state file {}", self.path.display())
    }

    fn load(&self) -> StoreFuture<'_, AllocState> {
        let this = self.clone();
        Box::pin(async move {
            crate::background::spawn_blocking(move || this.read())
                .await
                .map_err(|e| self.io(e.into()))?
        })
    }

    fn update(&self, mutate: Mutation) -> StoreFuture<'_, AllocState> {
        let this = self.clone();
        Box::pin(async move {
            crate::background::spawn_blocking(move || this.update_blocking(mutate))
                .await
                .map_err(|e| self.io(e.into()))?
        })
    }

    fn changed(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            loop {
                tokio::time::sleep(POLL).await;
                if self.fingerprint() != *self.seen.lock().expect("fingerprint lock") {
                    return;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::state::Record;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn add(host: &'static str, ip: &'static str) -> Mutation {
        Box::new(move |s: &mut AllocState| {
            s.records.insert(
                host.into(),
                Record {
                    addresses: vec![ip.parse().unwrap()],
                    ..Default::default()
                },
            );
            Ok(true)
        })
    }

    #[test]
    fn writes_atomically_and_reloads_equal() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("sub/state.json"));
        let rt = rt();
        assert_eq!(
            rt.block_on(store.load()).unwrap(),
            AllocState::default(),
            "missing file = empty state"
        );
        let saved = rt
            .block_on(store.update(add("a.global", "240.0.0.1")))
            .unwrap();
        let fresh = FileStore::new(store.path());
        assert_eq!(rt.block_on(fresh.load()).unwrap(), saved);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            leftovers.len(),
            2,
            "state and lock file only: {leftovers:?}"
        );
    }

    /// A state file in a fresh directory, written once (a.global holds 240.0.0.1).
    fn holding_one_host() -> (
        tempfile::TempDir,
        PathBuf,
        FileStore,
        tokio::runtime::Runtime,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let store = FileStore::new(&path);
        let rt = rt();
        rt.block_on(store.update(add("a.global", "240.0.0.1")))
            .unwrap();
        (dir, path, store, rt)
    }

    #[test]
    fn writes_keep_the_mode_and_clear_a_dead_writers_leftovers() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, path, store, rt) = holding_one_host();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        // A writer killed with -9 between creating its temporary file and the rename.
        let leftover = dir.path().join("state.json.tmp.99999999");
        std::fs::write(&leftover, "half a state").unwrap();
        rt.block_on(store.update(add("b.global", "240.0.0.2")))
            .unwrap();
        assert!(!leftover.exists(), "the dead writer's file is gone");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "mode kept");
    }

    #[test]
    fn corrupt_files_are_refused_and_kept() {
        let (_dir, path, store, rt) = holding_one_host();
        let good = std::fs::read_to_string(&path).unwrap();
        for broken in [&good[..good.len() / 2], "", "{}"] {
            std::fs::write(&path, broken).unwrap();
            let err = rt
                .block_on(store.update(add("b.global", "240.0.0.2")))
                .unwrap_err();
            assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
            assert!(err.to_string().contains("state.json"), "{err}");
            assert_eq!(
                std::fs::read_to_string(&path).unwrap(),
                broken,
                "never overwritten"
            );
        }
    }

    #[test]
    fn other_writers_are_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let (server, cli) = (FileStore::new(&path), FileStore::new(&path));
        let rt = rt();
        rt.block_on(server.update(add("a.global", "240.0.0.1")))
            .unwrap();
        rt.block_on(async {
            let waiting = server.changed();
            cli.update(add("b.global", "240.0.0.2")).await.unwrap();
            tokio::time::timeout(Duration::from_secs(3), waiting)
                .await
                .expect("change seen");
        });
    }
}
