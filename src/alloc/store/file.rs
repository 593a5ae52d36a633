//! A JSON file shared by the server and `dnsctl`, with a journal beside it.
//!
//! Writers take an exclusive lock on `PATH.lock` and read the latest state: the file, with the
//! lines of `PATH.journal` applied (see [`journal`](super::journal)). A transaction appends one
//! line to the journal and fsyncs it, so a change to a big mesh does not rewrite every record.
//! Once the journal has grown as big as the file (and for the first write), the whole state
//! replaces the file atomically (temporary file, fsync, rename, fsync of the directory) and the
//! journal is emptied; a crash in between reads back the same state, since replaying lines the
//! file already holds changes nothing. Readers take a shared lock, so they never see a new
//! file with an old journal emptied under them. A file or journal that does not read is
//! reported and never overwritten.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::journal::{self, Entry};
use super::{Mutation, Store, StoreError, StoreFuture};
use crate::alloc::state::{AllocState, Renderer};

/// How often a server looks for changes made by other processes.
const POLL: Duration = Duration::from_millis(500);

/// The journal is folded into the file once it holds this much, or as much as the file: a
/// small state is rewritten now and then, a big one when the journal would take as long to
/// read as the file.
const JOURNAL_MIN_BYTES: u64 = 64 << 10;

/// The largest state file (or journal) read: about ten million hosts at roughly 110 bytes each.
pub const MAX_STATE_BYTES: u64 = 1 << 30;

/// A file's modification time, size and inode, as last seen (`None`: no file).
type Stamp = Option<(i64, i64, u64, u64)>;

/// The file's and the journal's stamps: another process wrote when either changed.
type Fingerprint = (Stamp, Stamp);

/// A state as read or written, with the sizes that decide how the next write goes.
#[derive(Clone)]
struct Loaded {
    state: AllocState,
    /// The file's size; `None` while there is no file.
    file_bytes: Option<u64>,
    /// The size of the journal's whole lines: the next line is written there.
    journal_bytes: u64,
}

#[derive(Clone)]
pub struct FileStore {
    path: PathBuf,
    journal: PathBuf,
    /// Writers hold it exclusively, readers shared.
    lock: PathBuf,
    /// What this process last read or wrote, to tell others' changes from its own.
    seen: Arc<Mutex<Option<Fingerprint>>>,
    /// The state as this process last read or wrote it, and the fingerprint then: a write finds
    /// the files unchanged since and skips reading and parsing them again, which for a big
    /// mesh costs more than the write.
    last: Arc<Mutex<Option<(Fingerprint, Loaded)>>>,
    renderer: Arc<Mutex<Renderer>>,
    /// The journal is folded into the file once it holds this much, or as much as the file.
    journal_min: u64,
}

impl FileStore {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        FileStore {
            journal: with_suffix(&path, ".journal"),
            lock: with_suffix(&path, ".lock"),
            path,
            seen: Arc::new(Mutex::new(None)),
            last: Arc::default(),
            renderer: Arc::default(),
            journal_min: JOURNAL_MIN_BYTES,
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

    fn corrupt(&self, detail: String) -> StoreError {
        StoreError::Corrupt {
            store: self.describe(),
            detail,
        }
    }

    fn fingerprint(&self) -> Fingerprint {
        let stamp = |path: &Path| {
            let m = std::fs::metadata(path).ok()?;
            Some((m.mtime(), m.mtime_nsec(), m.len(), m.ino()))
        };
        (stamp(&self.path), stamp(&self.journal))
    }

    fn remember(&self, fp: Fingerprint) {
        *self.seen.lock().expect("fingerprint lock") = Some(fp);
    }

    /// Reads the state: the file, then the journal's lines. Both must be regular files of at
    /// most [`MAX_STATE_BYTES`] (a FIFO or a device in their place is refused at once, never
    /// waited on or read without end). Called with the lock held, shared or exclusive.
    fn read(&self) -> Result<Loaded, StoreError> {
        let fp = self.fingerprint();
        // Remembered even when unreadable: a broken file is reported again when it changes
        // (or on retry), not on every poll.
        self.remember(fp);
        let missing = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
        let journal = match crate::bounded::read_bytes(&self.journal, MAX_STATE_BYTES) {
            Ok(bytes) => bytes,
            Err(e) if missing(&e) => Vec::new(),
            Err(e) => return Err(self.io(e)),
        };
        let (mut state, file_bytes) = match crate::bounded::read_text(&self.path, MAX_STATE_BYTES) {
            Ok(text) => {
                let state =
                    AllocState::from_json(&text).map_err(|e| self.corrupt(e.to_string()))?;
                (state, Some(text.len() as u64))
            }
            Err(e) if missing(&e) && journal.is_empty() => (AllocState::default(), None),
            Err(e) if missing(&e) => {
                return Err(self.corrupt(format!(
                    "{} holds changes to a state file that is gone (remove both to start \
                         afresh)",
                    self.journal.display()
                )));
            }
            Err(e) => return Err(self.io(e)),
        };
        let replayed = journal::replay(&mut state, &journal)
            .map_err(|e| self.corrupt(format!("{}: {e}", self.journal.display())))?;
        Ok(Loaded {
            state,
            file_bytes,
            journal_bytes: replayed.applied,
        })
    }

    /// A shared hold on the lock, for reading: no writer empties the journal meanwhile. None
    /// when no writer ever made the lock file (nothing to be consistent with) or it cannot be
    /// opened (a read-only copy): read as it stands.
    fn read_lock(&self) -> Option<File> {
        let lock = File::open(&self.lock).ok()?;
        lock.lock_shared().ok()?;
        Some(lock)
    }

    fn update_blocking(&self, mut mutate: Mutation) -> Result<AllocState, StoreError> {
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| self.io(e))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock)
            .map_err(|e| self.io(e))?;
        lock.lock().map_err(|e| self.io(e))?;
        let mut fp = self.fingerprint();
        let cached = (self.last.lock().expect("state cache lock").as_ref())
            .filter(|(at, _)| at.0.is_some() && *at == fp)
            .map(|(_, loaded)| loaded.clone());
        let mut loaded = match cached {
            Some(loaded) => loaded,
            None => self.read()?,
        };
        let mut state = loaded.state.clone();
        if mutate(&mut state)? {
            self.remove_leftovers(dir);
            let line = Entry::between(&loaded.state, &state).map(|e| (e.is_empty(), e.line()));
            let room = (loaded.file_bytes).map(|file| {
                file.max(self.journal_min)
                    .saturating_sub(loaded.journal_bytes)
            });
            match (line, room) {
                (Some((true, _)), _) => {}
                (Some((_, line)), Some(room)) if line.len() as u64 <= room => {
                    self.append(dir, &line, loaded.journal_bytes)
                        .map_err(|e| self.io(e))?;
                    loaded.journal_bytes += line.len() as u64;
                }
                // The first write, a change no line says, or a journal as big as the file.
                _ => {
                    let text = self.renderer.lock().expect("renderer lock").render(&state);
                    self.write(dir, &text).map_err(|e| self.io(e))?;
                    self.empty_journal().map_err(|e| self.io(e))?;
                    loaded.file_bytes = Some(text.len() as u64);
                    loaded.journal_bytes = 0;
                }
            }
            fp = self.fingerprint();
            self.remember(fp);
        }
        loaded.state = state.clone();
        *self.last.lock().expect("state cache lock") = Some((fp, loaded));
        // The lock is released when `lock` is dropped, after the write is durable.
        Ok(state)
    }

    /// Appends `line` to the journal at `at` (over the torn end of an append a crash cut
    /// short, if any) and makes it durable; called with the lock held.
    fn append(&self, dir: &Path, line: &str, at: u64) -> std::io::Result<()> {
        let created = !self.journal.exists();
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.journal)?;
        if created {
            self.inherit_mode(&file)?;
        }
        if file.metadata()?.len() != at {
            file.set_len(at)?;
        }
        file.write_all(line.as_bytes())?;
        file.sync_data()?;
        if created {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Empties the journal once the file holds what it said; called with the lock held.
    fn empty_journal(&self) -> std::io::Result<()> {
        match OpenOptions::new().write(true).open(&self.journal) {
            Ok(file) if file.metadata()?.len() > 0 => {
                file.set_len(0)?;
                file.sync_all()
            }
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Gives a new file the state file's mode (and owner, when we may set it), so an
    /// operator's `chmod 600` or `chown` survives our writes.
    fn inherit_mode(&self, file: &File) -> std::io::Result<()> {
        if let Ok(old) = std::fs::metadata(&self.path) {
            file.set_permissions(old.permissions())?;
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } == 0 {
                std::os::unix::fs::fchown(file, Some(old.uid()), Some(old.gid()))?;
            }
        }
        Ok(())
    }

    /// Replaces the file; called with the lock held.
    fn write(&self, dir: &Path, text: &str) -> std::io::Result<()> {
        let tmp = with_suffix(&self.path, &format!(".tmp.{}", std::process::id()));
        let result = (|| {
            let mut file = File::create(&tmp)?;
            self.inherit_mode(&file)?;
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
            crate::background::spawn_blocking(move || {
                let _shared = this.read_lock();
                this.read().map(|loaded| loaded.state)
            })
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
                if Some(self.fingerprint()) != *self.seen.lock().expect("fingerprint lock") {
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
        let journal = with_suffix(&path, ".journal");
        for file in [&path, &journal] {
            let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "mode kept: {}", file.display());
        }
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

    fn journal_of(path: &Path) -> String {
        std::fs::read_to_string(with_suffix(path, ".journal")).unwrap_or_default()
    }

    fn hosts(n: usize) -> impl Iterator<Item = Mutation> {
        (0..n).map(|i| -> Mutation {
            Box::new(move |s: &mut AllocState| {
                let record = Record {
                    addresses: vec![format!("240.1.{}.{}", i / 250, i % 250).parse().unwrap()],
                    ..Default::default()
                };
                s.records.insert(format!("h{i}.global"), record);
                Ok(true)
            })
        })
    }

    #[test]
    fn changes_go_to_the_journal_until_it_is_folded_into_the_file() {
        let (_dir, path, mut store, rt) = holding_one_host();
        store.journal_min = 1000;
        let file = std::fs::read_to_string(&path).unwrap();
        let mut last = AllocState::default();
        for (i, mutation) in hosts(40).enumerate() {
            last = rt.block_on(store.update(mutation)).unwrap();
            let journal = journal_of(&path);
            let now = std::fs::read_to_string(&path).unwrap();
            if now == file {
                assert_eq!(journal.lines().count(), i + 1, "a line per change");
                assert!(journal.len() <= 1000);
            } else {
                // Folded: the file holds everything, the journal nothing.
                assert!(journal.is_empty(), "{journal}");
                assert_eq!(AllocState::from_json(&now).unwrap(), last);
                assert!(i > 10, "not before the journal is full: {i}");
                break;
            }
            assert_eq!(rt.block_on(FileStore::new(&path).load()).unwrap(), last);
        }
        assert!(journal_of(&path).is_empty(), "folded by now");
        assert_eq!(rt.block_on(FileStore::new(&path).load()).unwrap(), last);
    }

    #[test]
    fn a_crash_costs_only_the_write_it_cut_short() {
        let (_dir, path, store, rt) = holding_one_host();
        let mut changes = hosts(3);
        rt.block_on(store.update(changes.next().unwrap())).unwrap();
        let before = rt.block_on(store.update(changes.next().unwrap())).unwrap();
        let whole = journal_of(&path);
        // An append cut short: part of a line, or blocks the crash left as zeros.
        for torn in ["{\"set\":{\"x.global\":{\"addr", "\0\0\0\0\0\0"] {
            std::fs::write(with_suffix(&path, ".journal"), format!("{whole}{torn}")).unwrap();
            let fresh = FileStore::new(&path);
            assert_eq!(rt.block_on(fresh.load()).unwrap(), before);
        }
        // The next write goes over the torn end.
        let fresh = FileStore::new(&path);
        let after = rt.block_on(fresh.update(changes.next().unwrap())).unwrap();
        assert_eq!(after.records.len(), before.records.len() + 1);
        let journal = journal_of(&path);
        assert!(
            journal.starts_with(&whole) && !journal.contains('\0'),
            "{journal}"
        );
        assert_eq!(rt.block_on(FileStore::new(&path).load()).unwrap(), after);

        // A crash after the file was rewritten, before the journal was emptied: the old lines
        // apply again to a file that already holds them, and change nothing.
        let mut folding = FileStore::new(&path);
        folding.journal_min = 0;
        let last = rt
            .block_on(folding.update(add("z.global", "240.0.9.9")))
            .unwrap();
        assert!(journal_of(&path).is_empty());
        std::fs::write(with_suffix(&path, ".journal"), &journal).unwrap();
        assert_eq!(rt.block_on(FileStore::new(&path).load()).unwrap(), last);
    }

    #[test]
    fn a_damaged_journal_is_refused_and_kept() {
        let (_dir, path, store, rt) = holding_one_host();
        for mutation in hosts(2) {
            rt.block_on(store.update(mutation)).unwrap();
        }
        let journal = with_suffix(&path, ".journal");
        let damaged = journal_of(&path).replacen("240.1.0.0", "240.1.0.x", 1);
        std::fs::write(&journal, &damaged).unwrap();
        let err = rt
            .block_on(store.update(add("b.global", "240.0.0.2")))
            .unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(
            err.to_string().contains("state.json.journal: line 1"),
            "{err}"
        );
        assert_eq!(journal_of(&path), damaged, "never overwritten");
        // Without the file it changes, a journal means nothing whole.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(
            &journal,
            journal_of(&path).replacen("240.1.0.x", "240.1.0.0", 1),
        )
        .unwrap();
        let err = rt.block_on(FileStore::new(&path).load()).unwrap_err();
        assert!(err.to_string().contains("remove both"), "{err}");
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
