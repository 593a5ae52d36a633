//! The simulator's object store: one resourceVersion sequence for everything (as etcd has),
//! an event history that can be compacted, and the validation the real API server applies to
//! the kinds we use.

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
    /// Field paths owned by each server-side-apply manager, per object.
    pub managers: BTreeMap<Key, BTreeMap<String, Vec<String>>>,
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
            managers: BTreeMap::new(),
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
        fold_string_data(kind, &mut obj);
        validate(kind, &obj)?;
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
        fold_string_data(key.0, &mut obj);
        validate(key.0, &obj)?;
        for field in ["uid", "creationTimestamp", "namespace"] {
            if let Some(v) = current["metadata"].get(field) {
                obj["metadata"][field] = v.clone();
            }
        }
        self.commit(key.clone(), obj, "MODIFIED")
    }

    pub fn delete(&mut self, key: &Key, precondition_rv: Option<&str>) -> Result<Value, ApiError> {
        let current = self
            .objects
            .get(key)
            .ok_or_else(|| ApiError::not_found(&KINDS[key.0], &key.2))?;
        if precondition_rv
            .is_some_and(|rv| current["metadata"]["resourceVersion"].as_str() != Some(rv))
        {
            return Err(conflict(&key.2));
        }
        let mut gone = self.objects.remove(key).unwrap();
        self.managers.remove(key);
        self.rv += 1;
        gone["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record(key, gone.clone(), "DELETED");
        Ok(gone)
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

pub fn conflict(name: &str) -> ApiError {
    ApiError::new(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
        ),
    )
}

/// A `metadata.resourceVersion` in the body is a precondition (optimistic concurrency).
pub fn check_precondition(obj: &Value, current: &Value, name: &str) -> Result<(), ApiError> {
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

/// Secrets: `stringData` is write-only; the API server folds it into `data` (base64).
fn fold_string_data(kind: usize, obj: &mut Value) {
    if KINDS[kind].kind != "Secret" {
        return;
    }
    let Some(Value::Object(strings)) = obj.as_object_mut().and_then(|o| o.remove("stringData"))
    else {
        return;
    };
    for (key, value) in strings {
        let bytes = k8s_openapi::ByteString(value.as_str().unwrap_or_default().as_bytes().to_vec());
        obj["data"][key] = serde_json::to_value(bytes).expect("bytes serialize");
    }
}

/// ConfigMap and Secret rules from the API server's validation.
fn validate(kind: usize, obj: &Value) -> Result<(), ApiError> {
    if !matches!(KINDS[kind].kind, "ConfigMap" | "Secret") {
        return Ok(());
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    let invalid = |msg: String| {
        ApiError::new(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: {msg}", KINDS[kind].kind),
        )
    };
    let mut total = 0usize;
    for field in ["data", "binaryData", "stringData"] {
        let Some(map) = obj.get(field).and_then(Value::as_object) else {
            continue;
        };
        for (key, value) in map {
            let valid = !key.is_empty()
                && key.len() <= 253
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
            if !valid {
                return Err(invalid(format!(
                    "{field}[{key}]: Invalid value: \"{key}\": a valid config key must consist of alphanumeric characters, '-', '_' or '.' (regex used for validation is '[-._a-zA-Z0-9]+')"
                )));
            }
            total += key.len() + value.as_str().map_or(0, str::len);
        }
    }
    if total > 1024 * 1024 {
        return Err(invalid(
            "[]: Too long: must have at most 1048576 bytes".into(),
        ));
    }
    Ok(())
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

/// Server-side apply, reduced to what matters for conflicts: each manager owns the leaf fields
/// it applied; applying a different value to a field another manager owns is a 409 unless
/// forced; fields a manager stops applying are removed.
pub fn apply(
    current: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    owners: &mut BTreeMap<String, Vec<String>>,
) -> Result<Value, ApiError> {
    let mut leaves = Vec::new();
    flatten("", applied, &mut leaves);
    let leaves: Vec<(String, Value)> = leaves
        .into_iter()
        .filter(|(p, _)| {
            !p.starts_with("/metadata/resourceVersion") && p != "/apiVersion" && p != "/kind"
        })
        .collect();
    let mut result = current.cloned().unwrap_or_else(|| json!({}));
    let mut conflicts = Vec::new();
    for (path, value) in &leaves {
        let owned_by_other = owners
            .iter()
            .any(|(m, paths)| m != manager && paths.contains(path));
        if owned_by_other && result.pointer(path) != Some(value) && !force {
            conflicts.push(path.clone());
        }
    }
    if !conflicts.is_empty() {
        return Err(ApiError::new(
            409,
            "Conflict",
            format!(
                "Apply failed with {} conflict(s): conflicts with another field manager on {}",
                conflicts.len(),
                conflicts.join(", ")
            ),
        ));
    }
    // Fields this manager applied before and no longer applies are removed.
    let now: Vec<&String> = leaves.iter().map(|(p, _)| p).collect();
    for old in owners.get(manager).cloned().unwrap_or_default() {
        let still_owned = owners
            .iter()
            .any(|(m, paths)| m != manager && paths.contains(&old));
        if !now.contains(&&old) && !still_owned {
            remove_path(&mut result, &old);
        }
    }
    for (path, value) in &leaves {
        set_path(&mut result, path, value.clone());
        for (m, paths) in owners.iter_mut() {
            if m != manager {
                paths.retain(|p| p != path);
            }
        }
    }
    owners.insert(
        manager.to_string(),
        leaves.into_iter().map(|(p, _)| p).collect(),
    );
    Ok(result)
}

fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, child) in map {
                let escaped = k.replace('~', "~0").replace('/', "~1");
                flatten(&format!("{prefix}/{escaped}"), child, out);
            }
        }
        _ => out.push((prefix.to_string(), v.clone())),
    }
}

fn set_path(root: &mut Value, path: &str, value: Value) {
    let mut cur = root;
    let parts: Vec<String> = path
        .split('/')
        .skip(1)
        .map(|p| p.replace("~1", "/").replace("~0", "~"))
        .collect();
    for (i, part) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = json!({});
        }
        let map = cur.as_object_mut().unwrap();
        if i == parts.len() - 1 {
            map.insert(part.clone(), value);
            return;
        }
        cur = map.entry(part.clone()).or_insert_with(|| json!({}));
    }
}

fn remove_path(root: &mut Value, path: &str) {
    let Some((parent, last)) = path.rsplit_once('/') else {
        return;
    };
    let last = last.replace("~1", "/").replace("~0", "~");
    let target = if parent.is_empty() {
        Some(root)
    } else {
        root.pointer_mut(parent)
    };
    if let Some(Value::Object(map)) = target {
        map.remove(&last);
    }
}
