//! The simulator's object store: one resourceVersion sequence for everything (as etcd has), and
//! an event history that can be compacted.

use std::collections::{BTreeMap, VecDeque};

use serde_json::{Value, json};
use tokio::sync::broadcast;

/// A kind the simulator serves.
#[derive(Debug)]
pub struct Kind {
    pub group: &'static str,
    pub versions: &'static [&'static str],
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// Strategic merge patch is only understood for built-in kinds.
    pub builtin: bool,
}

pub const KINDS: &[Kind] = &[
    Kind {
        group: "",
        versions: &["v1"],
        plural: "namespaces",
        kind: "Namespace",
        namespaced: false,
        builtin: true,
    },
    Kind {
        group: "",
        versions: &["v1"],
        plural: "configmaps",
        kind: "ConfigMap",
        namespaced: true,
        builtin: true,
    },
    Kind {
        group: "",
        versions: &["v1"],
        plural: "secrets",
        kind: "Secret",
        namespaced: true,
        builtin: true,
    },
    Kind {
        group: "coordination.k8s.io",
        versions: &["v1"],
        plural: "leases",
        kind: "Lease",
        namespaced: true,
        builtin: true,
    },
    Kind {
        group: "networking.istio.io",
        versions: &["v1", "v1beta1", "v1alpha3"],
        plural: "serviceentries",
        kind: "ServiceEntry",
        namespaced: true,
        builtin: false,
    },
];

pub fn kind_index(group: &str, version: &str, plural: &str) -> Option<usize> {
    KINDS
        .iter()
        .position(|k| k.group == group && k.plural == plural && k.versions.contains(&version))
}

pub fn api_version(kind: &Kind, version: &str) -> String {
    if kind.group.is_empty() {
        version.to_string()
    } else {
        format!("{}/{version}", kind.group)
    }
}

/// An API error, rendered as a `Status` body.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
        }
    }

    pub fn not_found(kind: &Kind, name: &str) -> Self {
        let what = if kind.group.is_empty() {
            kind.plural.to_string()
        } else {
            format!("{}.{}", kind.plural, kind.group)
        };
        ApiError::new(404, "NotFound", format!("{what} \"{name}\" not found"))
    }

    pub fn status(&self) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message, "reason": self.reason, "code": self.code,
        })
    }
}

pub type Key = (usize, String, String);

#[derive(Clone, Debug)]
pub struct Event {
    pub rv: u64,
    pub kind: usize,
    pub namespace: String,
    pub kind_of: &'static str, // ADDED, MODIFIED, DELETED
    pub object: Value,
}

pub struct Store {
    pub rv: u64,
    pub objects: BTreeMap<Key, Value>,
    /// Events newer than `compacted`, oldest first.
    pub history: VecDeque<Event>,
    /// Watches from a resourceVersion below this get 410 Gone.
    pub compacted: u64,
    pub events: broadcast::Sender<Event>,
    pub uid: u64,
}

impl Store {
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(4096);
        let mut store = Store {
            rv: 0,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            compacted: 0,
            events,
            uid: 0,
        };
        for ns in ["default", "kube-system", "istio-system"] {
            let ns_kind = kind_index("", "v1", "namespaces").unwrap();
            store
                .create(ns_kind, "", json!({"metadata": {"name": ns}}))
                .unwrap();
        }
        store
    }

    pub fn get(&self, key: &Key) -> Option<&Value> {
        self.objects.get(key)
    }

    fn require_namespace(&self, kind: usize, namespace: &str) -> Result<(), ApiError> {
        if !KINDS[kind].namespaced {
            return Ok(());
        }
        let ns_kind = kind_index("", "v1", "namespaces").unwrap();
        match self
            .objects
            .contains_key(&(ns_kind, String::new(), namespace.to_string()))
        {
            true => Ok(()),
            false => Err(ApiError::new(
                404,
                "NotFound",
                format!("namespaces \"{namespace}\" not found"),
            )),
        }
    }

    pub fn create(
        &mut self,
        kind: usize,
        namespace: &str,
        mut obj: Value,
    ) -> Result<Value, ApiError> {
        let name = object_name(&obj)?;
        self.require_namespace(kind, namespace)?;
        let key = (kind, namespace.to_string(), name.clone());
        if self.objects.contains_key(&key) {
            let k = &KINDS[kind];
            let what = if k.group.is_empty() {
                k.plural.to_string()
            } else {
                format!("{}.{}", k.plural, k.group)
            };
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{what} \"{name}\" already exists"),
            ));
        }
        self.uid += 1;
        let meta = obj
            .as_object_mut()
            .unwrap()
            .entry("metadata")
            .or_insert_with(|| json!({}));
        meta["uid"] = json!(format!("00000000-0000-4000-8000-{:012x}", self.uid));
        meta["creationTimestamp"] = json!(now_rfc3339());
        if KINDS[kind].namespaced {
            meta["namespace"] = json!(namespace);
        }
        if let Some(m) = meta.as_object_mut() {
            m.remove("resourceVersion");
        }
        self.commit(key, obj, "ADDED")
    }

    /// PUT: conditional on `metadata.resourceVersion` when the body has one.
    pub fn replace(&mut self, key: &Key, mut obj: Value) -> Result<Value, ApiError> {
        let name = object_name(&obj)?;
        if name != key.2 {
            return Err(ApiError::new(
                400,
                "BadRequest",
                format!(
                    "the name of the object ({name}) does not match the name on the URL ({})",
                    key.2
                ),
            ));
        }
        let current = self
            .objects
            .get(key)
            .ok_or_else(|| ApiError::not_found(&KINDS[key.0], &key.2))?;
        check_precondition(&obj, current, &key.2)?;
        for field in ["uid", "creationTimestamp", "namespace"] {
            if let Some(v) = current["metadata"].get(field) {
                obj["metadata"][field] = v.clone();
            }
        }
        self.commit(key.clone(), obj, "MODIFIED")
    }

    fn commit(
        &mut self,
        key: Key,
        mut obj: Value,
        kind_of: &'static str,
    ) -> Result<Value, ApiError> {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let k = &KINDS[key.0];
        obj["kind"] = json!(k.kind);
        if obj.get("apiVersion").is_none() {
            obj["apiVersion"] = json!(api_version(k, k.versions[0]));
        }
        self.objects.insert(key.clone(), obj.clone());
        self.record(&key, obj.clone(), kind_of);
        Ok(obj)
    }

    fn record(&mut self, key: &Key, object: Value, kind_of: &'static str) {
        let event = Event {
            rv: self.rv,
            kind: key.0,
            namespace: key.1.clone(),
            kind_of,
            object,
        };
        self.history.push_back(event.clone());
        let _ = self.events.send(event);
    }

    /// Forgets history up to now: watches from an older resourceVersion get 410 Gone.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }
}

fn object_name(obj: &Value) -> Result<String, ApiError> {
    match obj.pointer("/metadata/name").and_then(Value::as_str) {
        Some(n) if !n.is_empty() => Ok(n.to_string()),
        _ => Err(ApiError::new(
            422,
            "Invalid",
            "metadata.name: Required value: name or generateName is required",
        )),
    }
}

fn conflict(name: &str) -> ApiError {
    ApiError::new(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
        ),
    )
}

/// A `metadata.resourceVersion` in the body is a precondition (optimistic concurrency).
fn check_precondition(obj: &Value, current: &Value, name: &str) -> Result<(), ApiError> {
    match obj
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
    {
        Some(rv)
            if !rv.is_empty() && Some(rv) != current["metadata"]["resourceVersion"].as_str() =>
        {
            Err(conflict(name))
        }
        _ => Ok(()),
    }
}

pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `labelSelector` as the API server parses it: `k=v`, `k==v`, `k!=v`, `k`, `!k`,
/// `k in (a,b)`, `k notin (a,b)`, comma-separated and all required.
pub struct Selector(Vec<Requirement>);

enum Requirement {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, ApiError> {
        let bad = || {
            ApiError::new(
                400,
                "BadRequest",
                format!("unable to parse requirement: {text:?}"),
            )
        };
        let mut parts = Vec::new();
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in text.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&text[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&text[start..]);
        let mut reqs = Vec::new();
        for part in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            let set = |rest: &str| -> Option<Vec<String>> {
                let inner = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
                Some(inner.split(',').map(|v| v.trim().to_string()).collect())
            };
            let req = if let Some((k, v)) = part.split_once("!=") {
                Requirement::Ne(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, rest)) = part.split_once(" notin ") {
                Requirement::NotIn(k.trim().into(), set(rest).ok_or_else(bad)?)
            } else if let Some((k, rest)) = part.split_once(" in ") {
                Requirement::In(k.trim().into(), set(rest).ok_or_else(bad)?)
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(k.trim().into())
            } else if part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._/".contains(c))
            {
                Requirement::Exists(part.into())
            } else {
                return Err(bad());
            };
            reqs.push(req);
        }
        Ok(Selector(reqs))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Eq(k, v) => get(k) == Some(v.as_str()),
            Requirement::Ne(k, v) => get(k) != Some(v.as_str()),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
            Requirement::In(k, vs) => get(k).is_some_and(|v| vs.iter().any(|x| x == v)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|v| !vs.iter().any(|x| x == v)),
        })
    }
}
