//! One document of a manifest file, typed as far as globaldns reads it.
//!
//! Files mix ServiceEntries with other kinds, whose `spec` may not fit ours (a Service's
//! `ports` has no `number`). The document is read in one pass: once `apiVersion` and `kind`
//! are known, `metadata` and `spec` are read straight into their types or skipped unread. Only
//! when they come first are they kept as a generic tree until the kind is known. Parsing big
//! meshes this way takes about a third of building a generic tree for every document.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::service_entry::{API_VERSIONS, KIND, ObjectMeta, ServiceEntry, ServiceEntrySpec};

/// What a reader makes of a document: of a ServiceEntry, once it is read whole (while the parser
/// still knows where it is, so that an error carries the entry's line); of anything else.
pub trait OnEntry {
    type Value;
    fn entry<E: de::Error>(self, entry: ServiceEntry) -> Result<Self::Value, E>;
    fn other(self) -> Self::Value;
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum Field {
    ApiVersion,
    Kind,
    Metadata,
    Spec,
    #[serde(other)]
    Other,
}

/// A field read before the document's kind was known, or read typed after it was.
enum Part<T> {
    Absent,
    Typed(T),
    Untyped(Value),
}

impl<T: for<'a> Deserialize<'a>> Part<T> {
    fn read<'de, A: MapAccess<'de>>(map: &mut A, is_entry: Option<bool>) -> Result<Self, A::Error> {
        Ok(match is_entry {
            Some(true) => Part::Typed(map.next_value()?),
            Some(false) => {
                map.next_value::<IgnoredAny>()?;
                Part::Absent
            }
            None => Part::Untyped(map.next_value()?),
        })
    }

    fn finish<E: de::Error>(self, field: &'static str) -> Result<T, E> {
        match self {
            Part::Absent => Err(E::missing_field(field)),
            Part::Typed(value) => Ok(value),
            Part::Untyped(tree) => {
                T::deserialize(tree).map_err(|e| E::custom(format!("{field}: {e}")))
            }
        }
    }
}

/// Reads one document's top-level mapping (or skips what is not one), and hands a ServiceEntry
/// to its [`OnEntry`].
pub struct DocumentVisitor<R>(pub R);

impl<'de, R: OnEntry> Visitor<'de> for DocumentVisitor<R> {
    type Value = R::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a Kubernetes object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<R::Value, A::Error> {
        let mut api_version: Option<String> = None;
        let mut kind: Option<String> = None;
        let mut metadata = Part::<ObjectMeta>::Absent;
        let mut spec = Part::<ServiceEntrySpec>::Absent;
        while let Some(field) = map.next_key::<Field>()? {
            let is_entry = is_service_entry(api_version.as_deref(), kind.as_deref());
            match field {
                Field::ApiVersion => api_version = Some(map.next_value()?),
                Field::Kind => kind = Some(map.next_value()?),
                Field::Metadata => metadata = Part::read(&mut map, is_entry)?,
                Field::Spec => spec = Part::read(&mut map, is_entry)?,
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if is_service_entry(api_version.as_deref(), kind.as_deref()) != Some(true) {
            return Ok(self.0.other());
        }
        // A status in a file is nobody's to trust: only a cluster's (istiod's) is read.
        self.0.entry(ServiceEntry {
            metadata: metadata.finish("metadata")?,
            spec: spec.finish("spec")?,
            status: Default::default(),
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<R::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(self.0.other())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<R::Value, E> {
        Ok(self.0.other())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<R::Value, E> {
        Ok(self.0.other())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<R::Value, E> {
        Ok(self.0.other())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<R::Value, E> {
        Ok(self.0.other())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<R::Value, E> {
        Ok(self.0.other())
    }

    fn visit_unit<E: de::Error>(self) -> Result<R::Value, E> {
        Ok(self.0.other())
    }

    fn visit_none<E: de::Error>(self) -> Result<R::Value, E> {
        Ok(self.0.other())
    }
}

/// `Some` once the answer is known: a non-Istio kind settles it before the API version is read.
fn is_service_entry(api_version: Option<&str>, kind: Option<&str>) -> Option<bool> {
    match (api_version, kind) {
        (_, Some(kind)) if kind != KIND => Some(false),
        (Some(version), _) if !API_VERSIONS.contains(&version) => Some(false),
        (Some(_), Some(_)) => Some(true),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserializer;

    use super::*;

    /// A document as a test looks at it.
    enum Document {
        ServiceEntry(ServiceEntry),
        /// Another kind, or not a Kubernetes object at all.
        Other,
    }

    impl<'de> Deserialize<'de> for Document {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_any(DocumentVisitor(AsDocument))
        }
    }

    /// Reads a document as a [`Document`].
    struct AsDocument;

    impl OnEntry for AsDocument {
        type Value = Document;

        fn entry<E: de::Error>(self, entry: ServiceEntry) -> Result<Document, E> {
            Ok(Document::ServiceEntry(entry))
        }

        fn other(self) -> Document {
            Document::Other
        }
    }

    fn read(yaml: &str) -> Result<Document, serde_yaml_ng::Error> {
        serde_yaml_ng::from_str(yaml)
    }

    #[test]
    fn fields_may_come_in_any_order() {
        let late_kind = "spec: {hosts: [a.global]}\nmetadata: {name: a}\nkind: ServiceEntry\napiVersion: networking.istio.io/v1\n";
        let Document::ServiceEntry(se) = read(late_kind).unwrap() else {
            panic!("not read as a ServiceEntry");
        };
        assert_eq!(
            (se.metadata.name.as_str(), se.spec.hosts.as_slice()),
            ("a", &["a.global".to_string()][..])
        );
    }

    #[test]
    fn other_kinds_are_skipped_whatever_their_spec() {
        let service = "apiVersion: v1\nkind: Service\nmetadata: {}\nspec: {ports: [{port: 80}]}\n";
        assert!(matches!(read(service), Ok(Document::Other)));
        let late = "spec: {ports: [{port: 80}]}\napiVersion: v1\nkind: Service\n";
        assert!(matches!(read(late), Ok(Document::Other)));
        let foreign =
            "apiVersion: example.com/v1\nkind: ServiceEntry\nspec: {ports: [{port: 80}]}\n";
        assert!(matches!(read(foreign), Ok(Document::Other)));
        assert!(matches!(read("[1, 2]"), Ok(Document::Other)));
        assert!(matches!(read("just text"), Ok(Document::Other)));
    }

    #[test]
    fn a_malformed_service_entry_is_an_error_in_either_order() {
        let typed = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a}\nspec: {hosts: [a.global], ports: [{number: 70000}]}\n";
        assert!(read(typed).is_err());
        let untyped = "spec: {hosts: [a.global], ports: [{number: 70000}]}\nmetadata: {name: a}\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\n";
        let err = read(untyped).err().expect("rejected").to_string();
        assert!(err.contains("spec"), "{err}");
        let headless =
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a}\n";
        assert!(read(headless).is_err());
    }
}
