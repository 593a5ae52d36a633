//! Real Kubernetes clusters for the tests: etcd plus kube-apiserver, built by `tools/build.sh`
//! into `target/kube/`, on a loopback address of their own with ephemeral ports.
//!
//! Each cluster serves TLS with certificates made here, authorizes with RBAC, signs
//! service-account tokens (so a test can act as deploy/'s ServiceAccount through the
//! TokenRequest API), and has Istio's published CRDs installed from the `istio.io/api` module in
//! Go's module cache, Established before the cluster is handed out. There is no
//! controller-manager: deleted namespaces stay Terminating and nothing is garbage-collected.
//!
//! [`shared`] clusters serve every test of one test binary; such tests use namespaces and host
//! names of their own and assert nothing about a cluster as a whole. A test that stops an API
//! server, compacts etcd or counts what a cluster holds starts clusters of its own with
//! [`Cluster::start`]; they end when dropped.

pub mod pki;
pub mod process;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;

use pki::Pki;
use process::Proc;

/// How long a cluster may take to come up on a busy two-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// A program built by `tools/build.sh`.
pub fn bin(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/kube")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run tools/build.sh (the README's test command does)",
        path.display()
    );
    path
}

/// Istio's published CRDs (`kubernetes/customresourcedefinitions.gen.yaml` of the `istio.io/api`
/// module pinned in tools/istio), read from Go's module cache.
pub fn istio_crds() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let module = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/istio");
        let out = Command::new("go")
            .args(["mod", "download", "-json", "istio.io/api"])
            .current_dir(&module)
            .output()
            .expect("go (needed for istio.io/api) must be installed");
        let info: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "go mod download istio.io/api: {e}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let dir = info["Dir"].as_str().expect("module directory");
        let path = Path::new(dir).join("kubernetes/customresourcedefinitions.gen.yaml");
        assert!(path.exists(), "{} is missing", path.display());
        path
    })
}

/// A loopback address no other cluster of this test process uses; the process ID keeps
/// concurrently running test binaries apart too.
fn next_ip() -> Ipv4Addr {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    Ipv4Addr::new(127, 77, (std::process::id() % 250) as u8 + 1, n as u8)
}

/// Free ports on `ip`, all held until each is known, then released for the programs to bind.
fn free_ports<const N: usize>(ip: Ipv4Addr) -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind((ip, 0)).unwrap())
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().unwrap().port())
}

/// Polls `check` every 100 ms until it holds; false after `within`.
fn wait_for(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One cluster: etcd and kube-apiserver, with their files in a directory of their own.
pub struct Cluster {
    /// The API server's process; `None` while stopped.
    apiserver: Mutex<Option<Proc>>,
    etcd: Proc,
    pub ip: Ipv4Addr,
    pub api: SocketAddr,
    pub etcd_url: String,
    pki: Pki,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts a cluster and waits until it serves Istio's CRDs.
    pub fn start() -> Cluster {
        let ip = next_ip();
        let dir = tempfile::Builder::new()
            .prefix("globaldns-cluster-")
            .tempdir()
            .unwrap();
        let pki = Pki::create(dir.path(), IpAddr::V4(ip));
        let [client, peer, secure] = free_ports::<3>(ip);
        let etcd_url = format!("http://{ip}:{client}");
        let peer_url = format!("http://{ip}:{peer}");
        let mut etcd = Command::new(bin("etcd"));
        etcd.arg("--name=test")
            .arg(format!("--data-dir={}", dir.path().join("etcd").display()))
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=test={peer_url}"))
            // Tests never outlive a machine crash; fsync would only slow them.
            .arg("--unsafe-no-fsync")
            .arg("--log-level=warn");
        let etcd = Proc::spawn("etcd", etcd, &dir.path().join("etcd.log"));
        let cluster = Cluster {
            apiserver: Mutex::new(None),
            etcd,
            ip,
            api: SocketAddr::new(IpAddr::V4(ip), secure),
            etcd_url,
            pki,
            dir,
        };
        std::fs::write(cluster.admin_kubeconfig(), cluster.kubeconfig("admin")).unwrap();
        cluster.start_apiserver();
        cluster.kubectl_ok(&["create", "-f", istio_crds().to_str().unwrap()]);
        cluster.wait_for_crds();
        cluster.ensure_namespace("istio-system");
        cluster
    }

    /// Starts the API server (again) on the same address and etcd, and waits until it is ready.
    pub fn start_apiserver(&self) {
        let mut slot = self.apiserver.lock().unwrap();
        assert!(slot.is_none(), "the API server is already running");
        let file = |p: &Path| p.to_str().unwrap().to_string();
        let pki = &self.pki;
        let issuer = "https://kubernetes.default.svc.cluster.local";
        let mut cmd = Command::new(bin("kube-apiserver"));
        cmd.arg(format!("--etcd-servers={}", self.etcd_url))
            .arg(format!("--bind-address={}", self.ip))
            .arg(format!("--advertise-address={}", self.ip))
            .arg(format!("--secure-port={}", self.api.port()))
            .arg(format!(
                "--cert-dir={}",
                file(&self.dir.path().join("certs"))
            ))
            .arg(format!("--tls-cert-file={}", file(&pki.serving_cert)))
            .arg(format!("--tls-private-key-file={}", file(&pki.serving_key)))
            .arg(format!("--client-ca-file={}", file(&pki.ca_cert)))
            .arg("--authorization-mode=RBAC")
            .arg(format!("--service-account-issuer={issuer}"))
            .arg(format!("--api-audiences={issuer}"))
            .arg(format!("--service-account-key-file={}", file(&pki.sa_pub)))
            .arg(format!(
                "--service-account-signing-key-file={}",
                file(&pki.sa_key)
            ))
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            // No controller-manager creates `default` ServiceAccounts for pods to use.
            .arg("--disable-admission-plugins=ServiceAccount")
            .arg("--profiling=false")
            // Every request, without bodies, for tests that count what a client asked.
            .arg(format!(
                "--audit-policy-file={}",
                file(&self.audit_policy())
            ))
            .arg(format!("--audit-log-path={}", file(&self.audit_log())));
        let mut proc = Proc::spawn(
            "kube-apiserver",
            cmd,
            &self.dir.path().join("apiserver.log"),
        );
        let ready = wait_for(START_TIMEOUT, || {
            proc.running() && self.kubectl(&["get", "--raw", "/readyz"]).status.success()
        });
        assert!(
            ready,
            "kube-apiserver on {} did not become ready:\n{}",
            self.api,
            proc.log_tail()
        );
        *slot = Some(proc);
    }

    fn audit_policy(&self) -> PathBuf {
        let path = self.dir.path().join("audit-policy.yaml");
        let policy = "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n";
        std::fs::write(&path, policy).unwrap();
        path
    }

    fn audit_log(&self) -> PathBuf {
        self.dir.path().join("audit.log")
    }

    /// Requests globaldns or dnsctl (User-Agent `globaldns/…`) made so far on objects in
    /// namespace `ns`, watches left out, from the API server's audit log: `(verb, resource)`.
    pub fn requests_in(&self, ns: &str) -> Vec<(String, String)> {
        let log = std::fs::read_to_string(self.audit_log()).unwrap_or_default();
        log.lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|e| e["stage"] == "ResponseComplete" && e["objectRef"]["namespace"] == ns)
            .filter(|e| {
                let agent = e["userAgent"].as_str().unwrap_or_default();
                e["verb"] != "watch" && agent.starts_with("globaldns/")
            })
            .map(|e| {
                let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
                (text(&e["verb"]), text(&e["objectRef"]["resource"]))
            })
            .collect()
    }

    /// Stops the API server (SIGTERM, as a restart would); etcd keeps running.
    pub fn stop_apiserver(&self) {
        if let Some(mut proc) = self.apiserver.lock().unwrap().take() {
            proc.stop(Duration::from_secs(10));
        }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the API server: a stall, where connections stay
    /// open and nothing answers.
    pub fn freeze_apiserver(&self, frozen: bool) {
        let slot = self.apiserver.lock().unwrap();
        let proc = slot.as_ref().expect("the API server is running");
        let signal = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: kill(2) with a pid we started and still own.
        assert_eq!(unsafe { libc::kill(proc.pid() as i32, signal) }, 0);
    }

    /// Compacts etcd's history up to its current revision, so a watch from any older
    /// resourceVersion gets 410 Gone.
    pub fn compact_etcd(&self) {
        let status = self.etcdctl(&["endpoint", "status", "-w", "json"]);
        let status: Value = serde_json::from_str(&status).unwrap();
        let revision = status[0]["Status"]["header"]["revision"]
            .as_u64()
            .expect("etcd revision");
        self.etcdctl(&["compact", &revision.to_string(), "--physical"]);
    }

    /// Deletes `key` straight from etcd, behind the API server's back (as a restore or a
    /// storage fault would); panics unless exactly that key went.
    pub fn etcd_delete(&self, key: &str) {
        assert_eq!(self.etcdctl(&["del", key]).trim(), "1", "etcd key {key}");
    }

    fn etcdctl(&self, args: &[&str]) -> String {
        let out = Command::new(bin("etcdctl"))
            .arg(format!("--endpoints={}", self.etcd_url))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The admin kubeconfig (client certificate in `system:masters`), one context "admin".
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    /// A kubeconfig for this cluster as admin: one context, `context`.
    pub fn kubeconfig(&self, context: &str) -> String {
        kubeconfig(&[(context, self)], context)
    }

    /// Runs kubectl as admin; its output, whatever the exit status.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_input(args, None)
    }

    /// Runs kubectl as admin with `input` on its standard input.
    pub fn kubectl_input(&self, args: &[&str], input: Option<&str>) -> Output {
        kubectl(
            &self.admin_kubeconfig(),
            &self.dir.path().join("cache"),
            args,
            input,
        )
    }

    /// Waits until every CRD is established. `kubectl wait` fails at once, rather than waiting,
    /// on a CRD the API server has not yet given any status condition ("`.status.conditions`
    /// accessor error"): asked again until the conditions are there.
    fn wait_for_crds(&self) {
        let args = [
            "wait",
            "--for=condition=Established",
            "--timeout=120s",
            "crd",
            "--all",
        ];
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let out = self.kubectl(&args);
            let not_yet = String::from_utf8_lossy(&out.stderr).contains(".status.conditions");
            if out.status.success() || !not_yet || Instant::now() > deadline {
                checked(&args, out);
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs kubectl as admin; its standard output, panicking with its error when it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        checked(args, self.kubectl(args))
    }

    /// `kubectl apply -f -` of `manifest` (YAML or JSON) as admin.
    pub fn apply(&self, manifest: &str) -> String {
        let args = ["apply", "-f", "-"];
        checked(&args, self.kubectl_input(&args, Some(manifest)))
    }

    /// Creates namespace `name` unless it exists.
    pub fn ensure_namespace(&self, name: &str) {
        self.apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n"
        ));
    }

    /// Creates or replaces a `networking.istio.io/v1` ServiceEntry in `ns` (created too);
    /// `addresses` empty leaves `spec.addresses` out, so its hosts need VIPs.
    pub fn put_service_entry(&self, ns: &str, name: &str, hosts: &[&str], addresses: &[&str]) {
        self.apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\n{}",
            service_entry_yaml("v1", ns, name, hosts, addresses)
        ));
    }

    /// Deletes an object (no error when it is absent).
    /// Sets `status.addresses` of ServiceEntry `ns/name` to `addresses` (`(value, host)`), as
    /// istiod writes it.
    pub fn set_status_addresses(&self, ns: &str, name: &str, addresses: &[(&str, &str)]) {
        let entries: Vec<Value> = (addresses.iter())
            .map(|(value, host)| serde_json::json!({"value": value, "host": host}))
            .collect();
        let patch = serde_json::json!({"status": {"addresses": entries}}).to_string();
        let resource = "serviceentries.networking.istio.io";
        let status = "--subresource=status";
        self.kubectl_ok(&[
            "patch",
            resource,
            name,
            "-n",
            ns,
            status,
            "--type=merge",
            "-p",
            &patch,
        ]);
    }

    pub fn delete(&self, resource: &str, ns: &str, name: &str) {
        self.kubectl_ok(&["delete", resource, name, "-n", ns, "--ignore-not-found"]);
    }

    /// Every object of `resource` in `ns`, as JSON.
    pub fn objects(&self, resource: &str, ns: &str) -> Vec<Value> {
        let list = self.kubectl_ok(&["get", resource, "-n", ns, "-o", "json"]);
        let list: Value = serde_json::from_str(&list).unwrap();
        list["items"].as_array().cloned().unwrap_or_default()
    }

    /// A client for this cluster as admin, built as globaldns builds its own (so the audit log
    /// knows its requests by their User-Agent).
    pub async fn client(&self) -> kube::Client {
        globaldns::cluster::connect_yaml(&self.kubeconfig("admin"), "test cluster")
            .await
            .unwrap()
    }

    /// A TokenRequest token of ServiceAccount `ns/name`, valid for an hour.
    pub fn token(&self, ns: &str, name: &str) -> String {
        let token = self.kubectl_ok(&["create", "token", name, "-n", ns, "--duration=1h"]);
        token.trim().to_string()
    }

    /// A kubeconfig for this cluster that authenticates with a bearer `token`.
    pub fn token_kubeconfig(&self, context: &str, token: &str) -> String {
        let user = format!("    token: {token}\n");
        kubeconfig_doc(&[(context, self, user)], context)
    }

    /// The CA data, base64, as kubeconfigs embed it.
    fn ca_data(&self) -> String {
        b64(&self.pki.ca_cert)
    }

    /// Whether the TCP port of the API server accepts connections.
    pub fn api_listening(&self) -> bool {
        TcpStream::connect_timeout(&self.api, Duration::from_millis(200)).is_ok()
    }
}

fn b64(path: &Path) -> String {
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).unwrap())
}

/// A kubeconfig with one context per `(name, cluster)`, each as admin, `current` selected.
/// Certificates are embedded, as in Istio's remote secrets.
pub fn kubeconfig(clusters: &[(&str, &Cluster)], current: &str) -> String {
    let entries: Vec<(&str, &Cluster, String)> = clusters
        .iter()
        .map(|(name, c)| {
            let user = format!(
                "    client-certificate-data: {}\n    client-key-data: {}\n",
                b64(&c.pki.admin_cert),
                b64(&c.pki.admin_key)
            );
            (*name, *c, user)
        })
        .collect();
    kubeconfig_doc(&entries, current)
}

fn kubeconfig_doc(clusters: &[(&str, &Cluster, String)], current: &str) -> String {
    let mut doc = String::from("apiVersion: v1\nkind: Config\nclusters:\n");
    for (name, c, _) in clusters {
        doc.push_str(&format!(
            "- name: {name}\n  cluster:\n    server: https://{}\n    certificate-authority-data: {}\n",
            c.api,
            c.ca_data()
        ));
    }
    doc.push_str("users:\n");
    for (name, _, user) in clusters {
        doc.push_str(&format!("- name: {name}\n  user:\n{user}"));
    }
    doc.push_str("contexts:\n");
    for (name, _, _) in clusters {
        doc.push_str(&format!(
            "- name: {name}\n  context:\n    cluster: {name}\n    user: {name}\n    namespace: default\n"
        ));
    }
    doc.push_str(&format!("current-context: {current}\n"));
    doc
}

/// Runs kubectl with `kubeconfig`; its output, whatever the exit status.
pub fn kubectl(kubeconfig: &Path, cache: &Path, args: &[&str], input: Option<&str>) -> Output {
    let mut cmd = Command::new(bin("kubectl"));
    cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--cache-dir={}", cache.display()))
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run kubectl");
    if let Some(input) = input {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

fn checked(args: &[&str], out: Output) -> String {
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A ServiceEntry in `networking.istio.io/<version>` as a user writes it; `addresses` empty
/// leaves `spec.addresses` out.
pub fn service_entry_yaml(
    version: &str,
    ns: &str,
    name: &str,
    hosts: &[&str],
    addresses: &[&str],
) -> String {
    let list = |v: &[&str]| {
        let items: Vec<String> = v.iter().map(|s| format!("\"{s}\"")).collect();
        format!("[{}]", items.join(", "))
    };
    let addresses = if addresses.is_empty() {
        String::new()
    } else {
        format!("  addresses: {}\n", list(addresses))
    };
    format!(
        "apiVersion: networking.istio.io/{version}\nkind: ServiceEntry\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  hosts: {}\n{addresses}  location: MESH_INTERNAL\n  resolution: DNS\n  ports:\n  - {{number: 80, name: http, protocol: HTTP}}\n",
        list(hosts)
    )
}

/// A remote secret in Istio's format (`istioctl create-remote-secret`): labelled
/// `istio/multiCluster=true`, annotated with the cluster ID, one data key per cluster ID whose
/// value is a kubeconfig authenticating with a ServiceAccount token of the remote cluster.
pub fn remote_secret(name: &str, entries: &[(&str, String)]) -> String {
    let data: Vec<String> = entries
        .iter()
        .map(|(id, kc)| {
            use base64::Engine;
            let kc = base64::engine::general_purpose::STANDARD.encode(kc);
            format!("  {id}: {kc}\n")
        })
        .collect();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  labels: {{istio/multiCluster: \"true\"}}\n  annotations: {{networking.istio.io/cluster: {}}}\ntype: Opaque\ndata:\n{}",
        entries[0].0,
        data.concat()
    )
}

/// `globaldns` watching the clusters of `kubeconfig` (text, written into `dir`) with `args`, and
/// an empty zones directory in `dir`. It only reads ServiceEntry statuses: the tests of one
/// binary share clusters, and servers with stores of their own would each write their VIPs
/// into the same entries ([`globaldns_writing`] writes them).
pub fn globaldns(dir: &Path, kubeconfig: &str, args: &[&str]) -> crate::support::GlobalDns {
    let mut all = vec!["--no-status-writes"];
    all.extend_from_slice(args);
    globaldns_writing(dir, kubeconfig, &all)
}

/// [`globaldns`], writing our VIPs into ServiceEntry statuses where it may (the default).
pub fn globaldns_writing(dir: &Path, kubeconfig: &str, args: &[&str]) -> crate::support::GlobalDns {
    let path = dir.join("kubeconfig");
    std::fs::write(&path, kubeconfig).unwrap();
    let zones = dir.join("zones");
    std::fs::create_dir_all(&zones).unwrap();
    let mut all = vec!["--kubeconfig", path.to_str().unwrap()];
    all.extend_from_slice(args);
    crate::support::GlobalDns::start(&zones, &all)
}

/// The clusters [`shared`] started.
static SHARED: Mutex<Vec<&'static Cluster>> = Mutex::new(Vec::new());

/// Ends the shared clusters when the test binary exits: statics are never dropped, and each
/// cluster's directory (etcd preallocates over 100 MB) would otherwise stay behind.
extern "C" fn end_shared() {
    let clusters = match SHARED.try_lock() {
        Ok(clusters) => clusters,
        Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return,
    };
    for cluster in clusters.iter() {
        if let Ok(apiserver) = cluster.apiserver.try_lock()
            && let Some(apiserver) = apiserver.as_ref()
        {
            apiserver.kill_group();
        }
        cluster.etcd.kill_group();
        let _ = std::fs::remove_dir_all(cluster.dir.path());
    }
}

/// The first `count` clusters shared by every test of this test binary, started on first use
/// (in parallel) and ended with the binary.
pub fn shared(count: usize) -> Vec<&'static Cluster> {
    static AT_EXIT: std::sync::Once = std::sync::Once::new();
    // SAFETY: registers a plain function with exit(3), once.
    AT_EXIT.call_once(|| assert_eq!(unsafe { libc::atexit(end_shared) }, 0));
    let mut clusters = SHARED.lock().unwrap();
    let missing = count.saturating_sub(clusters.len());
    let started: Vec<&'static Cluster> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..missing)
            .map(|_| s.spawn(|| &*Box::leak(Box::new(Cluster::start()))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    clusters.extend(started);
    clusters[..count].to_vec()
}
