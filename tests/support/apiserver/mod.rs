//! An in-process Kubernetes API server simulator, spoken to by kube-rs over plain HTTP through an
//! ordinary kubeconfig. Every behaviour a real API server has is tested against the real one
//! (tests/support/kube); this keeps only what a real server cannot do on demand:
//! - fail the next N requests with 500 InternalError ([`ApiServer::fail_next`]);
//! - answer every request late ([`ApiServer::set_latency`]);
//! - many clusters in one process, cheaply, for benchmarks: list (labelSelector, limit/continue),
//!   watch (ADDED/MODIFIED, BOOKMARK, timeoutSeconds, 410 Gone after [`ApiServer::compact`],
//!   ended by [`ApiServer::drop_watches`]), create and compare-and-swap update (409), discovery,
//!   and request counts.
//!
//! Not served: delete, patch, server-side apply, validation, authentication and authorization.
//! `default`, `kube-system` and `istio-system` exist from the start.

mod store;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch};

use store::{ApiError, Event, KINDS, Key, Kind, Selector, Store, api_version, kind_index};

/// Knobs tests turn to make the API server misbehave.
#[derive(Default)]
struct Faults {
    fail_next: AtomicU32,
    latency_ms: AtomicU64,
}

struct Shared {
    store: Mutex<Store>,
    faults: Faults,
    /// Bumped to end every open watch.
    watch_generation: watch::Sender<u64>,
    bookmark_every: Duration,
    writes: AtomicU64,
    requests: AtomicU64,
}

/// A running simulator; stops when dropped.
pub struct ApiServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ApiServer {
    /// Starts on an ephemeral loopback port (inside the current Tokio runtime).
    pub async fn start() -> ApiServer {
        let (watch_generation, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new()),
            faults: Faults::default(),
            watch_generation,
            bookmark_every: Duration::from_millis(500),
            writes: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ApiServer { addr, shared, task }
    }

    /// A kubeconfig for this cluster: one context, named `context`, with no credentials.
    pub fn kubeconfig(&self, context: &str) -> String {
        kubeconfig(&[(context, self.addr)], context)
    }

    /// A kube-rs client for this cluster.
    pub async fn client(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&self.kubeconfig("sim")).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    /// The next `n` requests fail with 500 InternalError.
    pub fn fail_next(&self, n: u32) {
        self.shared.faults.fail_next.store(n, Ordering::SeqCst);
    }

    /// Every request waits this long first.
    pub fn set_latency(&self, latency: Duration) {
        self.shared
            .faults
            .latency_ms
            .store(latency.as_millis() as u64, Ordering::SeqCst);
    }

    /// Ends every open watch stream, as an API server restart or a load balancer would.
    pub fn drop_watches(&self) {
        self.shared.watch_generation.send_modify(|g| *g += 1);
    }

    /// Forgets the event history: watches from an older resourceVersion get 410 Gone.
    pub fn compact(&self) {
        self.shared.store.lock().unwrap().compact();
    }

    /// Write requests (POST, PUT) served so far, failed ones included.
    pub fn writes(&self) -> u64 {
        self.shared.writes.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Every object of a kind in `namespace` (for assertions).
    pub fn objects(&self, group: &str, plural: &str, namespace: &str) -> Vec<Value> {
        let kind = KINDS
            .iter()
            .position(|k| k.group == group && k.plural == plural)
            .unwrap();
        let store = self.shared.store.lock().unwrap();
        store
            .objects
            .iter()
            .filter(|((k, ns, _), _)| *k == kind && ns == namespace)
            .map(|(_, o)| o.clone())
            .collect()
    }
}

/// A kubeconfig with one context per `(name, API server)`, `current` selected.
pub fn kubeconfig(clusters: &[(&str, SocketAddr)], current: &str) -> String {
    let mut doc = String::from("apiVersion: v1\nkind: Config\nclusters:\n");
    for (name, addr) in clusters {
        doc.push_str(&format!(
            "- name: {name}\n  cluster:\n    server: http://{addr}\n"
        ));
    }
    doc.push_str("users:\n");
    for (name, _) in clusters {
        doc.push_str(&format!("- name: {name}\n  user: {{}}\n"));
    }
    doc.push_str("contexts:\n");
    for (name, _) in clusters {
        doc.push_str(&format!("- name: {name}\n  context:\n    cluster: {name}\n    user: {name}\n    namespace: default\n"));
    }
    doc.push_str(&format!("current-context: {current}\n"));
    doc
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error_response(err: ApiError) -> Response {
    json_response(StatusCode::from_u16(err.code).unwrap(), &err.status())
}

async fn handle(State(sim): State<Arc<Shared>>, method: Method, uri: Uri, body: Bytes) -> Response {
    sim.requests.fetch_add(1, Ordering::SeqCst);
    if matches!(method, Method::POST | Method::PUT) {
        sim.writes.fetch_add(1, Ordering::SeqCst);
    }
    let latency = sim.faults.latency_ms.load(Ordering::SeqCst);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let failing = sim
        .faults
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        return error_response(ApiError::new(
            500,
            "InternalError",
            "Internal error occurred: injected fault",
        ));
    }
    let param = Query(uri.query().map(url_pairs).unwrap_or_default());
    let segs: Vec<&str> = uri
        .path()
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    match segs.as_slice() {
        ["version"] => json_response(
            StatusCode::OK,
            &json!({"major": "1", "minor": "34", "gitVersion": "v1.34.0-globaldns-sim", "platform": "linux/amd64"}),
        ),
        ["api"] => json_response(
            StatusCode::OK,
            &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
        ),
        ["apis"] => json_response(StatusCode::OK, &group_list()),
        ["api", "v1"] => json_response(StatusCode::OK, &resource_list("", "v1")),
        ["apis", group] => match group_entry(group) {
            Some(g) => json_response(StatusCode::OK, &g),
            None => error_response(ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )),
        },
        ["apis", group, version]
            if KINDS
                .iter()
                .any(|k| k.group == *group && k.versions.contains(version)) =>
        {
            json_response(StatusCode::OK, &resource_list(group, version))
        }
        ["api", "v1", rest @ ..] => resource(&sim, method, "", "v1", rest, &param, &body).await,
        ["apis", group, version, rest @ ..] => {
            resource(&sim, method, group, version, rest, &param, &body).await
        }
        _ => error_response(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )),
    }
}

/// Query parameters of a request.
struct Query(Vec<(String, String)>);

impl Query {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn url_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], hex) {
            (_, Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (b, None) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn group_entry(group: &str) -> Option<Value> {
    let kind = KINDS
        .iter()
        .find(|k| k.group == group && !group.is_empty())?;
    let versions: Vec<Value> = kind
        .versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    Some(json!({
        "kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": versions,
        "preferredVersion": versions[0],
    }))
}

fn group_list() -> Value {
    let mut groups: Vec<&str> = KINDS
        .iter()
        .map(|k| k.group)
        .filter(|g| !g.is_empty())
        .collect();
    groups.dedup();
    let groups: Vec<Value> = groups.into_iter().filter_map(group_entry).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(group: &str, version: &str) -> Value {
    let resources: Vec<Value> = KINDS
        .iter()
        .filter(|k| k.group == group && k.versions.contains(&version))
        .map(|k| {
            json!({
                "name": k.plural, "singularName": k.kind.to_lowercase(), "namespaced": k.namespaced,
                "kind": k.kind,
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            })
        })
        .collect();
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": api_version(&KINDS[kind_index(group, version, resources[0]["name"].as_str().unwrap()).unwrap()], version), "resources": resources})
}

#[allow(clippy::too_many_arguments)]
async fn resource(
    sim: &Arc<Shared>,
    method: Method,
    group: &str,
    version: &str,
    rest: &[&str],
    param: &Query,
    body: &Bytes,
) -> Response {
    let (namespace, plural, name) = match rest {
        ["namespaces", ns, plural] => (Some(*ns), *plural, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
        [plural] => (None, *plural, None),
        [plural, name] => (None, *plural, Some(*name)),
        _ => {
            return error_response(ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ));
        }
    };
    let Some(kind) = kind_index(group, version, plural) else {
        return error_response(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    };
    let k = &KINDS[kind];
    if k.namespaced == (namespace.is_none() && name.is_some())
        && !(k.namespaced && namespace.is_none() && name.is_none())
    {
        return error_response(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    }
    let result = match (method, name) {
        (Method::GET, None) if matches!(param.get("watch"), Some("true" | "1")) => {
            return watch(sim, kind, version, namespace, param);
        }
        (Method::GET, None) => list(sim, kind, version, namespace, param),
        (Method::POST, None) => parse_body(body)
            .and_then(|obj| {
                sim.store
                    .lock()
                    .unwrap()
                    .create(kind, namespace.unwrap_or(""), obj)
            })
            .map(|obj| (StatusCode::CREATED, obj)),
        (method, Some(name)) => {
            let key: Key = (kind, namespace.unwrap_or("").to_string(), name.to_string());
            object(sim, method, k, &key, body)
        }
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )),
    };
    match result {
        Ok((code, mut obj)) => {
            if obj.get("kind").and_then(Value::as_str) == Some(k.kind) {
                obj["apiVersion"] = json!(api_version(k, version));
            }
            json_response(code, &obj)
        }
        Err(e) => error_response(e),
    }
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(400, "BadRequest", format!("invalid JSON body: {e}")))
}

fn object(
    sim: &Arc<Shared>,
    method: Method,
    k: &Kind,
    key: &Key,
    body: &Bytes,
) -> Result<(StatusCode, Value), ApiError> {
    let mut store = sim.store.lock().unwrap();
    match method {
        Method::GET => store
            .get(key)
            .cloned()
            .map(|o| (StatusCode::OK, o))
            .ok_or_else(|| ApiError::not_found(k, &key.2)),
        Method::PUT => store
            .replace(key, parse_body(body)?)
            .map(|o| (StatusCode::OK, o)),
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )),
    }
}

fn matching<'a>(
    store: &'a Store,
    kind: usize,
    namespace: Option<&'a str>,
    selector: &'a Selector,
) -> impl Iterator<Item = (&'a Key, &'a Value)> {
    store.objects.iter().filter(move |((k, ns, _), obj)| {
        *k == kind && namespace.is_none_or(|n| n == ns) && selector.matches(obj)
    })
}

fn list(
    sim: &Arc<Shared>,
    kind: usize,
    version: &str,
    namespace: Option<&str>,
    param: &Query,
) -> Result<(StatusCode, Value), ApiError> {
    let selector = Selector::parse(param.get("labelSelector").unwrap_or(""))?;
    let limit = param
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let after = param
        .get("continue")
        .filter(|c| !c.is_empty())
        .map(|c| c.to_string());
    let store = sim.store.lock().unwrap();
    let k = &KINDS[kind];
    let mut items = Vec::new();
    let mut next = None;
    for ((_, ns, name), obj) in matching(&store, kind, namespace, &selector) {
        let token = format!("{ns}/{name}");
        if after.as_ref().is_some_and(|a| token.as_str() <= a.as_str()) {
            continue;
        }
        if limit.is_some_and(|l| items.len() == l) {
            break;
        }
        let mut obj = obj.clone();
        obj["apiVersion"] = json!(api_version(k, version));
        items.push(obj);
        next = Some(token);
    }
    // A continue token only when the page is full and more may follow.
    let more = limit.is_some_and(|l| items.len() == l)
        && matching(&store, kind, namespace, &selector).any(|((_, ns, name), _)| {
            next.as_ref()
                .is_some_and(|t| format!("{ns}/{name}").as_str() > t.as_str())
        });
    if !more {
        next = None;
    }
    let mut metadata = json!({"resourceVersion": store.rv.to_string()});
    if let Some(token) = next {
        metadata["continue"] = json!(token);
    }
    Ok((
        StatusCode::OK,
        json!({"apiVersion": api_version(k, version), "kind": format!("{}List", k.kind), "metadata": metadata, "items": items}),
    ))
}

fn watch(
    sim: &Arc<Shared>,
    kind: usize,
    version: &str,
    namespace: Option<&str>,
    param: &Query,
) -> Response {
    let selector = match Selector::parse(param.get("labelSelector").unwrap_or("")) {
        Ok(s) => s,
        Err(e) => return error_response(e),
    };
    let bookmarks = param.get("allowWatchBookmarks") == Some("true");
    let timeout = param
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs);
    let from = param
        .get("resourceVersion")
        .filter(|v| !v.is_empty() && *v != "0")
        .map(|v| v.parse::<u64>().unwrap_or(0));
    let k = &KINDS[kind];
    let api_version = api_version(k, version);
    let namespace = namespace.map(str::to_string);
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(1024);
    let line = move |kind_of: &str, mut object: Value| -> Bytes {
        if object.get("kind").and_then(Value::as_str) == Some(KINDS[kind].kind) {
            object["apiVersion"] = json!(api_version);
        }
        Bytes::from(format!("{}\n", json!({"type": kind_of, "object": object})))
    };

    // Under the store lock: what the client has missed, and the live subscription.
    let (backlog, mut live, mut current_rv, gone): (
        Vec<Bytes>,
        broadcast::Receiver<Event>,
        u64,
        bool,
    ) = {
        let store = sim.store.lock().unwrap();
        let in_scope = |e: &Event| {
            e.kind == kind
                && namespace.as_ref().is_none_or(|n| *n == e.namespace)
                && selector.matches(&e.object)
        };
        match from {
            Some(rv) if rv < store.compacted => {
                (Vec::new(), store.events.subscribe(), store.rv, true)
            }
            Some(rv) => {
                let missed = store
                    .history
                    .iter()
                    .filter(|e| e.rv > rv && in_scope(e))
                    .map(|e| line(e.kind_of, e.object.clone()))
                    .collect();
                (missed, store.events.subscribe(), store.rv, false)
            }
            None => {
                let all = matching(&store, kind, namespace.as_deref(), &selector)
                    .map(|(_, o)| line("ADDED", o.clone()))
                    .collect();
                (all, store.events.subscribe(), store.rv, false)
            }
        }
    };
    let mut generation = sim.watch_generation.subscribe();
    let bookmark_every = sim.bookmark_every;
    let bookmark_kind = k.kind;
    tokio::spawn(async move {
        if gone {
            let status = ApiError::new(410, "Expired", "too old resource version").status();
            let _ = tx
                .send(Ok(Bytes::from(format!(
                    "{}\n",
                    json!({"type": "ERROR", "object": status})
                ))))
                .await;
            return;
        }
        for event in backlog {
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut ticker = tokio::time::interval(bookmark_every);
        loop {
            let until_deadline = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let out = tokio::select! {
                _ = until_deadline => return,
                _ = generation.changed() => return,
                _ = tx.closed() => return,
                _ = ticker.tick(), if bookmarks => {
                    let object = json!({"kind": bookmark_kind, "apiVersion": "", "metadata": {"resourceVersion": current_rv.to_string()}});
                    Bytes::from(format!("{}\n", json!({"type": "BOOKMARK", "object": object})))
                }
                event = live.recv() => match event {
                    Ok(e) => {
                        current_rv = current_rv.max(e.rv);
                        let in_scope = e.kind == kind && namespace.as_ref().is_none_or(|n| *n == e.namespace) && selector.matches(&e.object);
                        if !in_scope { continue; }
                        line(e.kind_of, e.object)
                    }
                    // Fell behind: end the stream; the client resumes or relists.
                    Err(_) => return,
                },
            };
            if tx.send(Ok(out)).await.is_err() {
                return;
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}
