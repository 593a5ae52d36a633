//! Reading the manifests under a directory, again only the files that changed.

use std::collections::BTreeMap;
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
        let (files, unlisted) = manifest_files(dir);
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
        if self.seen.as_ref() == Some(&stamps) {
            return None;
        }
        let mut out = Scan {
            unlisted,
            ..Scan::default()
        };
        // Unchanged files are kept; the others are read on every core (a mesh may be
        // thousands of small files).
        // A file that failed and has not changed since is neither read nor reported again.
        let unchanged =
            |stamp: &Stamp, old: Option<&Stamp>| old == Some(stamp) && stamp.0.is_some();
        let read: Vec<Option<Result<DeclarationSet, FileError>>> = (stamps.par_iter())
            .map(|(path, stamp)| match self.parsed.get(path) {
                Some((old, decls)) if unchanged(stamp, Some(old)) => Some(Ok(decls.clone())),
                _ if unchanged(stamp, self.failing.get(path)) => None,
                _ => Some(read_manifest(path).map(Arc::new)),
            })
            .collect();
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

/// Manifest paths under `dir`, sorted, and the directories that could not be listed (with
/// why). Hidden entries are skipped, which also skips the `..data` indirection of Kubernetes
/// ConfigMap volumes. A missing `dir` is an empty one.
fn manifest_files(dir: &Path) -> (Vec<PathBuf>, Vec<(PathBuf, std::io::Error)>) {
    let mut files = Vec::new();
    let mut unlisted = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let listed = std::fs::read_dir(&d).and_then(|entries| {
            for entry in entries {
                let entry = entry?;
                let path = entry.path();
                if entry.file_name().to_string_lossy().starts_with('.') {
                    continue;
                }
                if entry.file_type()?.is_dir() {
                    pending.push(path);
                } else if matches!(
                    path.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml")
                ) {
                    files.push(path);
                }
            }
            Ok(())
        });
        match listed {
            Err(e) if d == dir && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => unlisted.push((d, e)),
            Ok(()) => {}
        }
    }
    files.sort();
    (files, unlisted)
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
