//! The file source: ServiceEntry manifests in `*.yaml` / `*.yml` files under a directory.
//!
//! Each file is all-or-nothing: a file that fails to parse is skipped with a log line naming it,
//! and everything else is served. Changes are picked up from filesystem events, with a periodic
//! rescan as a safety net for filesystems that do not deliver them (network mounts, some
//! ConfigMap volume updates).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;
use notify::{RecursiveMode, Watcher};
use rayon::prelude::*;
use serde_saphyr::Spanned;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::manifest::Document;
use super::set::SourceSet;
use super::{Declaration, DeclarationSet};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("reading: {0}")]
    Read(#[from] std::io::Error),
    #[error("YAML: {0}")]
    Yaml(String),
    #[error("line {line}: ServiceEntry {name:?}: {reason}")]
    Entry {
        line: u64,
        name: String,
        reason: String,
    },
}

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
}

impl Scan {
    pub fn entries(&self) -> usize {
        self.declarations.iter().map(|d| d.len()).sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Declaration> {
        self.declarations.iter().flat_map(|d| d.iter())
    }
}

/// Below this size a file is parsed on one thread.
const PARALLEL_FROM_BYTES: usize = 1 << 20;

/// Parses one manifest file's text; `origin` names it in declarations and messages.
///
/// A large file is split at document markers and parsed on every core (YAML parsing is most of
/// a big mesh's start-up). If any part fails, the file is parsed again in one piece so that the
/// error carries its true line.
pub fn parse_manifest(origin: &str, text: &str) -> Result<Vec<Declaration>, FileError> {
    let parts = split_documents(text, rayon::current_num_threads());
    if parts.len() > 1 {
        let parsed: Result<Vec<Vec<Declaration>>, _> = (parts.par_iter())
            .map(|part| parse_documents(origin, part))
            .collect();
        if let Ok(parts) = parsed {
            return Ok(parts.into_iter().flatten().collect());
        }
    }
    parse_documents(origin, text)
}

/// Up to `parts` pieces of `text` of similar size, each a run of whole documents. A line
/// starting with `---` at column 0 always starts a document (YAML forbids it inside content);
/// a split never separates a document from the `%` directives before it.
fn split_documents(text: &str, parts: usize) -> Vec<&str> {
    if parts < 2 || text.len() < PARALLEL_FROM_BYTES {
        return vec![text];
    }
    let target = text.len() / parts;
    let mut pieces = Vec::with_capacity(parts);
    let mut start = 0;
    let mut from = target;
    while pieces.len() + 1 < parts && from < text.len() {
        // Bytes, not str: `from` may fall inside a multi-byte character.
        let Some(found) = text.as_bytes()[from..]
            .windows(4)
            .position(|w| w == b"\n---")
        else {
            break;
        };
        let at = from + found + 1;
        let marker_ends = text[at + 3..]
            .chars()
            .next()
            .is_none_or(char::is_whitespace);
        let after_directive = text[start..at]
            .trim_end()
            .rsplit('\n')
            .next()
            .is_some_and(|l| l.starts_with('%'));
        if marker_ends && !after_directive {
            pieces.push(&text[start..at]);
            start = at;
            from = (at + target).max(at + 1);
        } else {
            from = at;
        }
    }
    pieces.push(&text[start..]);
    pieces
}

fn parse_documents(origin: &str, text: &str) -> Result<Vec<Declaration>, FileError> {
    let entries = serde_saphyr::from_str_multiple_with_options::<Spanned<Document>, Entries>(
        text,
        options_for(text),
    )
    .map_err(|e| FileError::Yaml(first_line(&e.to_string())))?;
    entries.finish(origin)
}

/// The parser's message without the excerpt of the file it appends: one log line, and no
/// manifest content (which may hold anything) in the logs.
fn first_line(message: &str) -> String {
    let line = message.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

/// The parser's default budget is for one configuration file and refuses a mesh's manifests
/// (over 1,024 documents). Counts that grow with the text are scaled to its size: at most one
/// node per byte bounds what aliases can expand to by what an honest file of that size holds.
/// The limits on aliases and anchors themselves are kept.
fn options_for(text: &str) -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    let len = text.len();
    budget.max_documents = budget.max_documents.max(len / 4);
    budget.max_nodes = budget.max_nodes.max(len);
    budget.max_events = budget.max_events.max(2 * len);
    budget.max_total_scalar_bytes = budget.max_total_scalar_bytes.max(len);
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

/// The ServiceEntries of a stream, turned into declarations as each document is parsed, so
/// that no parsed document outlives its turn.
#[derive(Default)]
struct Entries {
    /// Stands in until [`Entries::finish`] names the file.
    unnamed: Arc<str>,
    declarations: Vec<Declaration>,
    /// Index into `declarations`, and that entry's CIDRs left out.
    cidrs: Vec<(usize, Vec<IpNet>)>,
    error: Option<FileError>,
}

impl Extend<Spanned<Document>> for Entries {
    fn extend<I: IntoIterator<Item = Spanned<Document>>>(&mut self, documents: I) {
        for document in documents {
            let Document::ServiceEntry(se) = document.value else {
                continue;
            };
            if self.error.is_some() {
                continue;
            }
            let name = se.metadata.name.clone();
            match Declaration::from_entry(self.unnamed.clone(), se) {
                Ok((declaration, cidrs)) => {
                    if !cidrs.is_empty() {
                        self.cidrs.push((self.declarations.len(), cidrs));
                    }
                    self.declarations.push(declaration);
                }
                Err(reason) => {
                    self.error = Some(FileError::Entry {
                        line: document.defined.line(),
                        name,
                        reason,
                    })
                }
            }
        }
    }
}

impl Entries {
    fn finish(mut self, origin: &str) -> Result<Vec<Declaration>, FileError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let origin: Arc<str> = origin.into();
        for declaration in &mut self.declarations {
            declaration.origin = origin.clone();
        }
        for (at, cidrs) in &self.cidrs {
            self.declarations[*at].warn_ignored(cidrs);
        }
        self.declarations.shrink_to_fit();
        Ok(self.declarations)
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
        for ((path, stamp), decls) in stamps.iter().zip(read) {
            match decls {
                Some(Ok(decls)) => {
                    out.declarations.push(decls.clone());
                    parsed.insert(path.clone(), (*stamp, decls));
                }
                Some(Err(e)) => {
                    out.failed.push((path.clone(), e));
                    failing.insert(path.clone(), *stamp);
                }
                None => {
                    out.still_failing += 1;
                    failing.insert(path.clone(), *stamp);
                }
            }
        }
        self.parsed = parsed;
        self.failing = failing;
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

/// How long a rescan may run before each warning that it is stuck. A healthy scan of thousands
/// of files takes well under a second.
const STALL_WARNING: Duration = Duration::from_secs(10);

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
        let mut pass = tokio::task::spawn_blocking(move || {
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
                warn!(file = %path.display(), %error, "skipping manifest");
            }
            let failed = result.failed.len() + result.still_failing;
            info!(dir = %dir.display(), entries = result.entries(), failed, "loaded manifests");
            sources.publish_chunks(SOURCE, result.declarations);
        }
        tokio::select! {
            _ = changed.notified() => {
                // Let an editor or `kubectl cp` finish writing before reading.
                tokio::time::sleep(Duration::from_millis(100)).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.global]
  addresses: [240.0.0.3]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ignored}
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: httpbin}
spec:
  hosts: [httpbin.bar.global]
  addresses: [127.255.0.3]
---
apiVersion: example.com/v1
kind: ServiceEntry
metadata: {name: not-istio}
spec: {hosts: [x.global], addresses: [1.2.3.4]}
";

    #[test]
    fn keeps_only_istio_service_entries() {
        let decls = parse_manifest("f.yaml", GOOD).unwrap();
        let names: Vec<_> = decls
            .iter()
            .map(|d| (d.namespace.as_str(), d.name.as_str()))
            .collect();
        assert_eq!(names, [("default", "reviews"), ("default", "httpbin")]);
        assert_eq!(
            decls[1].addresses,
            vec!["127.255.0.3".parse::<std::net::IpAddr>().unwrap()]
        );
    }

    #[test]
    fn a_bad_entry_names_its_line() {
        let text = format!(
            "{GOOD}---\napiVersion: networking.istio.io/v1beta1\nkind: ServiceEntry\nmetadata: {{name: broken}}\nspec: {{hosts: [a.global], addresses: [not-an-ip]}}\n"
        );
        let err = parse_manifest("f.yaml", &text).unwrap_err().to_string();
        let line = GOOD.lines().count() + 2;
        assert!(
            err.contains(&format!("line {line}:"))
                && err.contains("broken")
                && err.contains("not-an-ip"),
            "{err}"
        );
        assert!(matches!(
            parse_manifest("f.yaml", "a: [b"),
            Err(FileError::Yaml(_))
        ));
        // One line, naming the place, and none of the file's content.
        let text =
            "kind: ServiceEntry\nspec:\n  hosts: [a.global\n  addresses: [\"secret-token\"]\n";
        let err = parse_manifest("f.yaml", text).unwrap_err().to_string();
        assert!(
            !err.contains('\n') && !err.contains("secret-token"),
            "{err}"
        );
        assert!(err.contains("line 4"), "{err}");
    }

    #[test]
    fn a_host_with_more_addresses_than_one_message_holds_is_refused() {
        let entry = |count: u32| {
            let addresses: Vec<String> = (0..count)
                .map(|i| format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255))
                .collect();
            format!(
                "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: huge, namespace: ns}}\nspec:\n  hosts: [huge.global]\n  addresses: [{}]\n",
                addresses.join(", ")
            )
        };
        assert!(parse_manifest("f.yaml", &entry(4000)).is_ok());
        let err = parse_manifest("f.yaml", &entry(5000))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"huge\"") && err.contains("do not fit in one DNS message"),
            "{err}"
        );
    }

    #[test]
    fn a_file_of_many_entries_is_read_whole() {
        let text: String = (0..3000)
            .map(|i| format!("---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: se{i}, namespace: ns}}\nspec: {{hosts: [s{i}.global], addresses: [240.0.{}.{}]}}\n", i / 250, i % 250 + 1))
            .collect();
        assert_eq!(parse_manifest("big.yaml", &text).unwrap().len(), 3000);
    }

    #[test]
    fn alias_bombs_are_refused() {
        // Nine levels of ten aliases each: a billion nodes if expanded.
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..10 {
            let refs = vec![format!("*a{}", level - 1); 10].join(", ");
            text.push_str(&format!("a{level}: &a{level} [{refs}]\n"));
        }
        // In a document of another kind, whose fields are skipped unread.
        let other = format!("kind: ConfigMap\n{text}");
        let err = parse_manifest("bomb.yaml", &other).unwrap_err().to_string();
        assert!(err.contains("budget breached"), "{err}");
    }

    #[test]
    fn big_files_split_only_at_document_markers() {
        let doc = "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: é, namespace: ns}\nspec:\n  hosts: [a.global]\n  addresses: [240.0.0.1]\n  # ---not a marker\n";
        let text = doc.repeat(PARALLEL_FROM_BYTES / doc.len() + 10);
        let parts = split_documents(&text, 3);
        assert_eq!(parts.len(), 3);
        assert_eq!(parts.concat(), text);
        assert!(parts.iter().all(|p| p.starts_with("---\napiVersion")));
        assert_eq!(split_documents(&text[..100], 3), [&text[..100]]);
        let with_directive = format!("{text}%YAML 1.2\n---\nkind: Other\n");
        let parts = split_documents(&with_directive, 64);
        assert!(parts.iter().all(|p| !p.starts_with("---\nkind: Other")));
    }

    #[test]
    fn a_big_file_reports_the_true_line_of_an_error() {
        let entry = |i: usize, address: &str| {
            format!(
                "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: se{i}, namespace: ns}}\nspec: {{hosts: [s{i}.global], addresses: [{address}]}}\n"
            )
        };
        let count = 2 * PARALLEL_FROM_BYTES / entry(0, "240.0.0.1").len();
        let mut text: String = (0..count).map(|i| entry(i, "240.0.0.1")).collect();
        assert_eq!(parse_manifest("big.yaml", &text).unwrap().len(), count);
        text.push_str(&entry(count, "not-an-ip"));
        let err = parse_manifest("big.yaml", &text).unwrap_err().to_string();
        let line = 5 * count + 2;
        assert!(err.contains(&format!("line {line}:")), "{err}");
    }

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
