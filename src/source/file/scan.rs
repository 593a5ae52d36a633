//! Reading the manifests under a directory, again only the files that changed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rayon::prelude::*;

use super::FileError;
use super::parse::parse_manifest;
use crate::source::{Declaration, DeclarationSet};

/// What one scan of the directory found.
#[derive(Debug, Default)]
pub struct Scan {
    /// The declarations of each file that parsed, in path order.
    pub declarations: Vec<DeclarationSet>,
    pub failed: Vec<(PathBuf, FileError)>,
    /// Directories that could not be listed; the manifests last read below them are kept.
    pub unlisted: Vec<(PathBuf, std::io::Error)>,
    /// Files reported in an earlier scan that still fail, unchanged (not reported again).
    pub still_failing: usize,
    /// Failing files whose last good declarations are still served (among `declarations`).
    pub stale: Vec<PathBuf>,
}

impl Scan {
    pub fn entries(&self) -> usize {
        self.declarations.iter().map(|d| d.len()).sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Declaration> {
        self.declarations.iter().flat_map(|d| d.iter())
    }
}

/// Reads every manifest under `dir`, in path order.
pub fn scan(dir: &Path) -> Scan {
    Scanner::default()
        .rescan(dir)
        .expect("a first scan always reads")
}

/// Manifests parsed so far, by file: a rescan parses again only the files whose size or
/// modification time changed, so one changed ServiceEntry does not re-read a whole mesh.
#[derive(Default)]
pub struct Scanner {
    parsed: BTreeMap<PathBuf, (Stamp, DeclarationSet)>,
    /// Files that failed, by the stamp they failed at.
    failing: BTreeMap<PathBuf, Stamp>,
    /// The declarations a failing file had when it last parsed: served until it parses again
    /// or goes away, so a half-written or broken edit takes nothing down.
    stale: BTreeMap<PathBuf, DeclarationSet>,
    /// Every manifest path and its stamp at the last scan; `None` before the first.
    seen: Option<Vec<(PathBuf, Stamp)>>,
    /// The directories the last whole scan listed: an event naming one (renamed or removed)
    /// changes which files exist below it, which only a whole scan finds out.
    dirs: BTreeSet<PathBuf>,
    /// The last whole scan could not list some directory: what it kept below it is only
    /// checked by whole scans.
    partial: bool,
}

type Stamp = (Option<SystemTime>, u64);

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok();
    let mtime = meta.as_ref().and_then(|m| m.modified().ok());
    (mtime, meta.map_or(0, |m| m.len()))
}

impl Scanner {
    /// Reads `dir` if a manifest was added, removed or changed since the last call (always on
    /// the first); `None` when nothing did.
    pub fn rescan(&mut self, dir: &Path) -> Option<Scan> {
        let Listing {
            files,
            dirs,
            unlisted,
        } = manifest_files(dir);
        let mut stamps: Vec<(PathBuf, Stamp)> =
            files.iter().map(|p| (p.clone(), stamp(p))).collect();
        // A directory that cannot be listed (no permission, no file descriptors left, an I/O
        // error) keeps what was last read below it: one bad subdirectory must not empty the zone.
        let below_unlisted = |path: &Path| unlisted.iter().any(|(d, _)| path.starts_with(d));
        let kept = (self.parsed.iter())
            .filter(|(path, _)| below_unlisted(path) && files.binary_search(path).is_err())
            .map(|(path, (stamp, _))| (path.clone(), *stamp));
        stamps.extend(kept.collect::<Vec<_>>());
        stamps.sort();
        self.dirs = dirs;
        self.partial = !unlisted.is_empty();
        self.read(stamps, unlisted)
    }

    /// Like [`rescan`](Self::rescan) after filesystem events named `paths`: only those are
    /// looked at, so a change to one file of a big tree costs a `stat` and a read, not a
    /// listing of every directory and a `stat` of every file. Whatever the names alone cannot
    /// settle (the first scan, a directory, a hidden entry such as a ConfigMap volume's
    /// `..data`, a tree not wholly listed last time) is read by a whole scan.
    pub fn rescan_paths(&mut self, dir: &Path, paths: &BTreeSet<PathBuf>) -> Option<Scan> {
        match self.restamp(dir, paths) {
            Some(stamps) => self.read(stamps, Vec::new()),
            None => self.rescan(dir),
        }
    }

    /// The stamps of the last scan with those of `paths` looked at again; `None` when a whole
    /// scan is needed.
    fn restamp(&self, dir: &Path, paths: &BTreeSet<PathBuf>) -> Option<Vec<(PathBuf, Stamp)>> {
        let mut stamps = self.seen.clone().filter(|_| !self.partial)?;
        for path in paths {
            let below = path.strip_prefix(dir).ok()?;
            if below.as_os_str().is_empty() || below.iter().any(is_hidden) {
                return None;
            }
            let kind = match std::fs::symlink_metadata(path) {
                Ok(meta) => Some(meta.file_type()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(_) => return None,
            };
            if kind.is_some_and(|k| k.is_dir()) || self.dirs.contains(path) {
                return None;
            }
            // Anything else that is not a manifest (an editor's backup, notes) changes nothing.
            if !is_manifest(path) {
                continue;
            }
            let at = stamps.binary_search_by(|(p, _)| p.as_path().cmp(path));
            match (kind, at) {
                (Some(_), Ok(i)) => stamps[i].1 = stamp(path),
                (Some(_), Err(i)) => stamps.insert(i, (path.clone(), stamp(path))),
                (None, Ok(i)) => {
                    stamps.remove(i);
                }
                (None, Err(_)) => {}
            }
        }
        Some(stamps)
    }

    /// Reads what changed among `stamps` (every manifest, sorted) since the last scan.
    fn read(
        &mut self,
        stamps: Vec<(PathBuf, Stamp)>,
        unlisted: Vec<(PathBuf, std::io::Error)>,
    ) -> Option<Scan> {
        if self.seen.as_ref() == Some(&stamps) {
            return None;
        }
        let mut out = Scan {
            unlisted,
            ..Scan::default()
        };
        // Unchanged files are kept; the others are read, on every core when there are several
        // (a mesh may be thousands of small files).
        // A file that failed and has not changed since is neither read nor reported again.
        let unchanged =
            |stamp: &Stamp, old: Option<&Stamp>| old == Some(stamp) && stamp.0.is_some();
        let kept = |(path, stamp): &(PathBuf, Stamp)| {
            (self.parsed.get(path)).filter(|(old, _)| unchanged(stamp, Some(old)))
        };
        let needs_read = |entry @ (path, stamp): &(PathBuf, Stamp)| {
            kept(entry).is_none() && !unchanged(stamp, self.failing.get(path))
        };
        let look = |entry @ (path, _): &(PathBuf, Stamp)| match kept(entry) {
            Some((_, decls)) => Some(Ok(decls.clone())),
            None if needs_read(entry) => Some(read_manifest(path).map(Arc::new)),
            None => None,
        };
        let several = stamps.iter().filter(|e| needs_read(e)).take(2).count() > 1;
        let read: Vec<Option<Result<DeclarationSet, FileError>>> = if several {
            stamps.par_iter().map(look).collect()
        } else {
            stamps.iter().map(look).collect()
        };
        let mut parsed = BTreeMap::new();
        let mut failing = BTreeMap::new();
        let mut stale = BTreeMap::new();
        for ((path, stamp), decls) in stamps.iter().zip(read) {
            match decls {
                Some(Ok(decls)) => {
                    out.declarations.push(decls.clone());
                    parsed.insert(path.clone(), (*stamp, decls));
                    continue;
                }
                Some(Err(e)) => out.failed.push((path.clone(), e)),
                None => out.still_failing += 1,
            }
            failing.insert(path.clone(), *stamp);
            let last_good = (self.parsed.get(path).map(|(_, d)| d))
                .or_else(|| self.stale.get(path))
                .cloned();
            if let Some(decls) = last_good {
                out.declarations.push(decls.clone());
                out.stale.push(path.clone());
                stale.insert(path.clone(), decls);
            }
        }
        self.parsed = parsed;
        self.failing = failing;
        self.stale = stale;
        self.seen = Some(stamps);
        Some(out)
    }
}

/// The largest manifest file read: room for a million ServiceEntries in one file, far from what
/// would exhaust a pod's memory.
pub const MAX_MANIFEST_BYTES: u64 = 256 << 20;

fn read_manifest(path: &Path) -> Result<Vec<Declaration>, FileError> {
    let text = crate::bounded::read_text(path, MAX_MANIFEST_BYTES)?;
    parse_manifest(&path.display().to_string(), &text)
}

/// What a whole scan finds under a directory.
struct Listing {
    /// Manifest paths, sorted.
    files: Vec<PathBuf>,
    /// The directories listed (the top one included).
    dirs: BTreeSet<PathBuf>,
    /// The directories that could not be listed, with why.
    unlisted: Vec<(PathBuf, std::io::Error)>,
}

/// Hidden entries are skipped, which also skips the `..data` indirection of Kubernetes
/// ConfigMap volumes.
fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.as_encoded_bytes().starts_with(b".")
}

fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// Lists the manifests under `dir`, skipping hidden entries. A missing `dir` is an empty one.
fn manifest_files(dir: &Path) -> Listing {
    let mut files = Vec::new();
    let mut dirs = BTreeSet::new();
    let mut unlisted = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let listed = std::fs::read_dir(&d).and_then(|entries| {
            for entry in entries {
                let entry = entry?;
                let path = entry.path();
                if is_hidden(&entry.file_name()) {
                    continue;
                }
                if entry.file_type()?.is_dir() {
                    pending.push(path);
                } else if is_manifest(&path) {
                    files.push(path);
                }
            }
            Ok(())
        });
        match listed {
            Err(e) if d == dir && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => unlisted.push((d, e)),
            Ok(()) => {
                dirs.insert(d);
            }
        }
    }
    files.sort();
    Listing {
        files,
        dirs,
        unlisted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::file::GOOD;

    #[test]
    fn rescans_parse_only_changed_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), GOOD).unwrap();
        std::fs::write(dir.path().join("b.yaml"), GOOD).unwrap();
        let mut scanner = Scanner::default();
        let first = scanner.rescan(dir.path()).unwrap();
        assert!(scanner.rescan(dir.path()).is_none(), "nothing changed");
        let edited = GOOD.replace("127.255.0.3", "127.255.0.4");
        std::fs::write(dir.path().join("b.yaml"), edited).unwrap();
        let second = scanner.rescan(dir.path()).unwrap();
        assert!(
            Arc::ptr_eq(&first.declarations[0], &second.declarations[0]),
            "a.yaml reused"
        );
        assert_eq!(
            second.declarations[1][1].addresses[0].to_string(),
            "127.255.0.4"
        );
        std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
        assert_eq!(scanner.rescan(dir.path()).unwrap().entries(), 2);
    }

    /// A rescan after events reads only the files they name, and finds what a whole scan
    /// finds; what names alone cannot settle is read whole.
    #[test]
    fn rescans_after_events_look_only_at_the_named_files() {
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str| dir.path().join(name);
        let named = |names: &[&str]| names.iter().map(|n| at(n)).collect::<BTreeSet<_>>();
        std::fs::create_dir(at("sub")).unwrap();
        std::fs::write(at("a.yaml"), GOOD).unwrap();
        std::fs::write(at("sub/b.yaml"), GOOD).unwrap();
        let mut scanner = Scanner::default();
        let first = scanner
            .rescan_paths(dir.path(), &named(&["a.yaml"]))
            .unwrap();
        assert_eq!(
            first.entries(),
            4,
            "the first scan is whole, whatever was named"
        );

        // Changed, added and removed files, each named: read as a whole scan reads them.
        let edited = GOOD.replace("127.255.0.3", "127.255.0.4");
        std::fs::write(at("sub/b.yaml"), &edited).unwrap();
        std::fs::write(at("c.yml"), GOOD).unwrap();
        std::fs::write(at("notes.txt"), "not a manifest").unwrap();
        let named_scan = (scanner
            .rescan_paths(dir.path(), &named(&["sub/b.yaml", "c.yml", "notes.txt"])))
        .unwrap();
        assert!(
            Arc::ptr_eq(&first.declarations[0], &named_scan.declarations[0]),
            "a.yaml kept"
        );
        let whole = scan(dir.path());
        assert_eq!(named_scan.declarations, whole.declarations);
        std::fs::remove_file(at("c.yml")).unwrap();
        let removed = scanner
            .rescan_paths(dir.path(), &named(&["c.yml"]))
            .unwrap();
        assert_eq!(removed.entries(), 4);

        // A file no event names is not looked at (the periodic whole scan finds it)...
        std::fs::write(at("unnamed.yaml"), GOOD).unwrap();
        assert!(
            scanner
                .rescan_paths(dir.path(), &named(&["notes.txt"]))
                .is_none()
        );
        // ...but a directory named makes the scan whole, and so does a hidden entry.
        let entries = |scanner: &mut Scanner, paths: &BTreeSet<PathBuf>| {
            scanner.rescan_paths(dir.path(), paths).unwrap().entries()
        };
        std::fs::create_dir(at("new")).unwrap();
        assert_eq!(entries(&mut scanner, &named(&["new"])), 6);
        std::fs::write(at("new/d.yaml"), GOOD).unwrap();
        assert_eq!(entries(&mut scanner, &named(&["..data"])), 8);
        // A directory that went away is known to have been one.
        std::fs::remove_dir_all(at("new")).unwrap();
        assert_eq!(entries(&mut scanner, &named(&["new"])), 6);
        // A path outside the directory, or the directory itself.
        std::fs::write(at("e.yaml"), GOOD).unwrap();
        let outside = BTreeSet::from([PathBuf::from("/elsewhere/e.yaml")]);
        assert_eq!(entries(&mut scanner, &outside), 8);
        std::fs::remove_file(at("e.yaml")).unwrap();
        let itself = BTreeSet::from([dir.path().to_path_buf()]);
        assert_eq!(entries(&mut scanner, &itself), 6);
    }

    #[test]
    fn a_file_that_breaks_keeps_what_it_declared_until_it_parses_or_goes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.yaml");
        std::fs::write(&file, GOOD).unwrap();
        let mut scanner = Scanner::default();
        let good = scanner.rescan(dir.path()).unwrap();
        std::fs::write(&file, "kind: [").unwrap();
        let broken = scanner.rescan(dir.path()).unwrap();
        assert_eq!(broken.failed.len(), 1);
        assert_eq!(broken.stale, std::slice::from_ref(&file));
        assert!(Arc::ptr_eq(&good.declarations[0], &broken.declarations[0]));
        // Still broken, and another file changes: not reported again, still served.
        std::fs::write(dir.path().join("b.yaml"), GOOD).unwrap();
        let again = scanner.rescan(dir.path()).unwrap();
        assert_eq!((again.failed.len(), again.still_failing), (0, 1));
        assert_eq!(again.entries(), 4);
        std::fs::remove_file(&file).unwrap();
        assert_eq!(scanner.rescan(dir.path()).unwrap().entries(), 2);
    }

    #[test]
    fn scan_skips_broken_files_and_hidden_dirs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("good.yaml"), GOOD).unwrap();
        std::fs::write(dir.path().join("bad.yml"), "kind: [").unwrap();
        std::fs::write(dir.path().join("notes.txt"), GOOD).unwrap();
        std::fs::create_dir(dir.path().join("..data")).unwrap();
        std::fs::write(dir.path().join("..data/dup.yaml"), GOOD).unwrap();
        let scan = scan(dir.path());
        assert_eq!(scan.entries(), 2);
        assert_eq!(scan.failed.len(), 1);
        assert!(scan.failed[0].0.ends_with("bad.yml"));
    }
}
