//! One manifest file's text to declarations.

use std::sync::Arc;

use ipnet::IpNet;
use rayon::prelude::*;
use serde::de::{self, DeserializeSeed, Deserializer};

use super::FileError;
use crate::source::Declaration;
use crate::source::manifest::{DocumentVisitor, OnEntry};
use crate::source::service_entry::{EntryError, ServiceEntry};

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
            // Sized first: collected from the flattened parts, the vector would grow by
            // doubling and keep up to twice the room it needs for the life of the file.
            let mut all = Vec::with_capacity(parts.iter().map(Vec::len).sum());
            all.extend(parts.into_iter().flatten());
            return Ok(all);
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

/// The documents of `text`, parsed by libyaml (through serde_yaml_ng: more than twice as fast as
/// serde-saphyr on a mesh's manifests). Aliases cannot blow a file up: fields that are skipped
/// are never expanded, and the parser follows at most a hundred aliases per event of a document.
fn parse_documents(origin: &str, text: &str) -> Result<Vec<Declaration>, FileError> {
    let mut entries = Entries::default();
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        let mut refused = None;
        let read = Read {
            entries: &mut entries,
            refused: &mut refused,
        };
        if let Err(e) = read.deserialize(document) {
            return Err(match refused {
                Some((name, source)) => FileError::Entry {
                    line: e.location().map_or(0, |l| l.line() as u64),
                    name,
                    source,
                },
                None => FileError::Yaml(e.to_string()),
            });
        }
    }
    Ok(entries.finish(origin))
}

/// Reads one document into [`Entries`]. An entry that is refused fails the document from
/// inside the parser, so that the error carries the line where the entry starts; why it was
/// refused goes to `refused`, whole.
struct Read<'a> {
    entries: &'a mut Entries,
    refused: &'a mut Option<(String, EntryError)>,
}

impl<'de> DeserializeSeed<'de> for Read<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(DocumentVisitor(self))
    }
}

impl OnEntry for Read<'_> {
    type Value = ();

    fn entry<E: de::Error>(self, se: ServiceEntry) -> Result<(), E> {
        let name = se.metadata.name.clone();
        match Declaration::from_entry(self.entries.unnamed.clone(), se) {
            Ok((declaration, cidrs)) => {
                self.entries.push(declaration, cidrs);
                Ok(())
            }
            Err(source) => {
                *self.refused = Some((name, source));
                Err(E::custom("refused"))
            }
        }
    }

    fn other(self) {}
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
}

impl Entries {
    fn push(&mut self, declaration: Declaration, cidrs: Vec<IpNet>) {
        if !cidrs.is_empty() {
            self.cidrs.push((self.declarations.len(), cidrs));
        }
        self.declarations.push(declaration);
    }

    fn finish(mut self, origin: &str) -> Vec<Declaration> {
        let origin: Arc<str> = origin.into();
        for declaration in &mut self.declarations {
            declaration.origin = origin.clone();
        }
        for (at, declaration) in self.declarations.iter().enumerate() {
            let cidrs = self.cidrs.iter().find(|(i, _)| *i == at);
            declaration.warn_ignored(cidrs.map_or(&[][..], |(_, c)| c));
        }
        self.declarations.shrink_to_fit();
        self.declarations
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::file::GOOD;

    #[test]
    fn the_same_entry_read_twice_is_held_once() {
        let from_a = parse_manifest("a.yaml", GOOD).unwrap();
        let from_b = parse_manifest("b.yaml", GOOD).unwrap();
        for (a, b) in from_a.iter().zip(&from_b) {
            assert_ne!(a.origin, b.origin);
            assert!(std::ptr::eq(&*a.content, &*b.content), "{a:?}");
        }
        let other = parse_manifest("a.yaml", &GOOD.replace("reviews", "ratings")).unwrap();
        assert!(!std::ptr::eq(&*from_a[0].content, &*other[0].content));
        assert_eq!(other[0].name, "ratings");
    }

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
    fn ports_resolution_and_labels_are_carried() {
        let text = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: r, namespace: ns, labels: {app: r, tier: web}}\nspec:\n  hosts: [r.global]\n  resolution: DNS\n  ports:\n  - {number: 9080, name: http, protocol: HTTP}\n  - {number: 15443, name: tls, protocol: TLS, targetPort: 443}\n";
        let decl = &parse_manifest("f.yaml", text).unwrap()[0];
        use crate::source::service_entry::Resolution;
        assert_eq!(decl.resolution, Some(Resolution::Dns));
        let ports: Vec<_> = decl
            .ports
            .iter()
            .map(|p| (p.number, p.name.as_deref(), p.target_port))
            .collect();
        assert_eq!(
            ports,
            [(9080, Some("http"), None), (15443, Some("tls"), Some(443))]
        );
        let labels: Vec<_> = decl
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(labels, [("app", "r"), ("tier", "web")]);
        let plain = &parse_manifest("f.yaml", GOOD).unwrap()[0];
        assert!(plain.ports.is_empty() && plain.labels.is_empty());
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
        // Read before the kind is known, as a tree: expanded until the parser's limit on
        // aliases followed (a hundred per event of the document) stops it.
        let read = format!("{text}metadata: *a9\nkind: ServiceEntry\n");
        let err = parse_manifest("bomb.yaml", &read).unwrap_err().to_string();
        assert!(err.contains("repetition limit exceeded"), "{err}");
        // In a document of another kind, whose fields are skipped unread: never expanded.
        let other = format!("kind: ConfigMap\n{text}metadata: *a9\n");
        assert!(parse_manifest("bomb.yaml", &other).unwrap().is_empty());
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
}
