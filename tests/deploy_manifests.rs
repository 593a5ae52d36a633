//! The Kubernetes manifests of deploy/, checked offline: the kustomize base lists every manifest,
//! each object passes the Kubernetes OpenAPI schema (`kubernetes-validate` from PyPI, which ships
//! the schemas; `.ci/run` installs it), RBAC is least-privilege, the Deployment is hardened, and
//! the flags given to the server are flags it has.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

/// Schemas the manifests must pass: the oldest Kubernetes we support and the newest known.
const KUBE_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

/// Manifests outside the kustomize base, applied by hand as their READMEs say; validated too.
const OPTIONAL: [&str; 2] = [
    "coredns/kube-dns-stubdomains.yaml",
    "vm/service-internal-lb.yaml",
];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// The YAML documents of `deploy/<rel>`, empty ones left out.
fn load(rel: &str) -> Vec<Value> {
    let path = deploy_dir().join(rel);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn kustomization() -> Value {
    load("kustomization.yaml").remove(0)
}

/// The files of the kustomize base, as listed in kustomization.yaml.
fn base_files() -> Vec<String> {
    let resources = kustomization()["resources"].clone();
    let list = resources.as_array().expect("kustomization resources");
    list.iter()
        .map(|r| r.as_str().expect("resource path").to_string())
        .collect()
}

/// Every object of the base, with the kustomization's namespace applied (as kustomize does).
fn objects() -> Vec<Value> {
    let namespace = kustomization()["namespace"].clone();
    let mut out = Vec::new();
    for file in base_files() {
        for mut doc in load(&file) {
            let kind = doc["kind"].as_str().unwrap_or("").to_string();
            if !["Namespace", "ClusterRole", "ClusterRoleBinding"].contains(&kind.as_str()) {
                doc["metadata"]["namespace"] = namespace.clone();
            }
            out.push(doc);
        }
    }
    out
}

fn only(kind: &str) -> Value {
    let mut found: Vec<Value> = objects()
        .into_iter()
        .filter(|o| o["kind"] == kind)
        .collect();
    assert_eq!(found.len(), 1, "exactly one {kind} in the base");
    found.remove(0)
}

fn strings(v: &Value) -> Vec<&str> {
    let list = v.as_array().map(Vec::as_slice).unwrap_or_default();
    list.iter().filter_map(Value::as_str).collect()
}

fn yaml_files(dir: &Path, prefix: &str, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = format!("{prefix}{}", path.file_name().unwrap().to_string_lossy());
        if path.is_dir() {
            yaml_files(&path, &format!("{name}/"), out);
        } else if name.ends_with(".yaml") || name.ends_with(".yml") {
            out.insert(name);
        }
    }
}

#[test]
fn kustomization_lists_every_manifest() {
    assert_eq!(kustomization()["namespace"], "globaldns");
    let listed: BTreeSet<String> = base_files().into_iter().collect();
    for file in &listed {
        assert!(
            deploy_dir().join(file).is_file(),
            "{file} is listed but missing"
        );
    }
    let mut present = BTreeSet::new();
    yaml_files(&deploy_dir(), "", &mut present);
    present.remove("kustomization.yaml");
    let mut expected = listed.clone();
    expected.extend(OPTIONAL.iter().map(|f| f.to_string()));
    assert_eq!(
        present, expected,
        "deploy/ manifests must be in kustomization.yaml or in OPTIONAL"
    );
}

#[test]
fn manifests_pass_the_kubernetes_schema() {
    let tool = std::env::var("KUBERNETES_VALIDATE").unwrap_or("kubernetes-validate".into());
    let version = Command::new(&tool).arg("--version").output();
    assert!(
        version.as_ref().is_ok_and(|o| o.status.success()),
        "`{tool}` is needed (tools/test.sh installs it into target/ci-venv): {version:?}"
    );
    let mut files = base_files();
    files.extend(OPTIONAL.iter().map(|f| f.to_string()));
    let objects: usize = files.iter().map(|f| load(f).len()).sum();
    // Options before the files: everything after the first file name is taken as a file.
    let mut cmd = Command::new(&tool);
    cmd.current_dir(deploy_dir()).arg("--strict");
    for v in KUBE_VERSIONS {
        cmd.args(["-k", v]);
    }
    cmd.args(&files);
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "schema validation failed:\n{report}");
    // An unknown kind or apiVersion is only a WARN with exit status 0: every object must pass.
    let passed = stdout
        .lines()
        .filter(|l| l.starts_with("INFO ") && l.contains(" passed "));
    assert_eq!(passed.count(), objects * KUBE_VERSIONS.len(), "{report}");
    assert!(stdout.lines().all(|l| l.starts_with("INFO ")), "{report}");
}

#[test]
fn rbac_is_least_privilege() {
    let mut cluster_wide = Vec::new();
    for role in objects()
        .into_iter()
        .filter(|o| o["kind"] == "Role" || o["kind"] == "ClusterRole")
    {
        let cluster = role["kind"] == "ClusterRole";
        for rule in role["rules"].as_array().expect("rules") {
            let fields = ["apiGroups", "resources", "verbs", "resourceNames"];
            for field in fields {
                assert!(!strings(&rule[field]).contains(&"*"), "`*` in {rule}");
            }
            let resources = strings(&rule["resources"]);
            let verbs = strings(&rule["verbs"]);
            if resources.contains(&"secrets") {
                assert!(
                    !cluster,
                    "Secrets may only be read in the namespace: {rule}"
                );
                assert!(verbs.iter().all(|v| ["get", "list", "watch"].contains(v)));
            }
            if resources.contains(&"serviceentries") {
                assert_eq!(verbs, ["get", "list", "watch"], "{rule}");
            }
            if cluster {
                cluster_wide.push(rule.clone());
            }
        }
    }
    // Cluster-wide, nothing but reading ServiceEntries and patching their status (our VIPs
    // into status.addresses).
    let read_service_entries = json!({
        "apiGroups": ["networking.istio.io"],
        "resources": ["serviceentries"],
        "verbs": ["get", "list", "watch"],
    });
    let patch_status = json!({
        "apiGroups": ["networking.istio.io"],
        "resources": ["serviceentries/status"],
        "verbs": ["patch"],
    });
    assert_eq!(cluster_wide, [read_service_entries, patch_status]);
    for binding in objects()
        .into_iter()
        .filter(|o| o["kind"] == "RoleBinding" || o["kind"] == "ClusterRoleBinding")
    {
        let subject =
            json!([{"kind": "ServiceAccount", "name": "globaldns", "namespace": "globaldns"}]);
        assert_eq!(binding["subjects"], subject);
        let role = &binding["roleRef"];
        assert!(
            objects()
                .iter()
                .any(|o| o["kind"] == role["kind"] && o["metadata"]["name"] == role["name"]),
            "{binding} binds a role that is not in the base"
        );
    }
}

#[test]
fn deployment_is_hardened() {
    let deployment = only("Deployment");
    assert!(deployment["spec"]["replicas"].as_u64() >= Some(2));
    let pod = &deployment["spec"]["template"]["spec"];
    assert!(!pod["affinity"]["podAntiAffinity"].is_null());
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_ne!(pod["securityContext"]["runAsUser"], 0);
    for c in pod["containers"].as_array().unwrap() {
        let security = &c["securityContext"];
        assert_eq!(security["readOnlyRootFilesystem"], true);
        assert_eq!(security["allowPrivilegeEscalation"], false);
        assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
        assert!(strings(&security["capabilities"]["add"]).is_empty());
        assert_ne!(security["privileged"], true);
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert!(!c["resources"]["requests"]["cpu"].is_null());
        assert!(!c["resources"]["requests"]["memory"].is_null());
        assert!(!c["resources"]["limits"]["memory"].is_null());
    }
    let pdb = only("PodDisruptionBudget");
    assert!(pdb["spec"]["minAvailable"].as_u64() >= Some(1));
    assert_eq!(
        pdb["spec"]["selector"], deployment["spec"]["selector"],
        "the PodDisruptionBudget covers the Deployment's pods"
    );
}

#[test]
fn service_serves_dns_over_udp_and_tcp() {
    let service = only("Service");
    let deployment = only("Deployment");
    let pod = &deployment["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    for (key, value) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&pod["metadata"]["labels"][key], value, "selector {key}");
    }
    for protocol in ["UDP", "TCP"] {
        let port = service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["port"] == 53 && p["protocol"] == protocol)
            .unwrap_or_else(|| panic!("no port 53/{protocol} in {service}"));
        // The target is a container port of the same protocol, the one --listen binds.
        let target = container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == port["targetPort"] || c["containerPort"] == port["targetPort"])
            .unwrap_or_else(|| panic!("target of {port} is not a container port"));
        assert_eq!(target["protocol"], protocol);
        let listen = format!(":{}", target["containerPort"]);
        assert!(
            strings(&container["args"])
                .iter()
                .any(|a| a.starts_with("--listen") && a.ends_with(&listen)),
            "--listen must bind the container port {listen}"
        );
    }
}

/// Every `--flag` in `args` is one the server's --help lists.
fn assert_server_flags<'a>(origin: &str, args: impl IntoIterator<Item = &'a str>) {
    let help = Command::new(env!("CARGO_BIN_EXE_globaldns"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let known: BTreeSet<&str> = help
        .split(|c: char| c.is_whitespace() || c == ',' || c == '=')
        .filter(|w| w.starts_with("--"))
        .collect();
    for arg in args.into_iter().filter(|a| a.starts_with("--")) {
        let flag = arg.split('=').next().unwrap();
        assert!(known.contains(flag), "{origin}: globaldns has no {flag}");
    }
}

#[test]
fn manifests_and_units_use_only_server_flags() {
    let deployment = only("Deployment");
    for c in deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
    {
        assert_server_flags("deployment.yaml", strings(&c["args"]));
    }
    let unit = std::fs::read_to_string(deploy_dir().join("vm/globaldns.service")).unwrap();
    let lines = unit
        .lines()
        .filter(|l| l.starts_with("ExecStart=") || l.contains("GLOBALDNS_OPTS="));
    let words: Vec<&str> = lines
        .flat_map(|l| l.split(|c: char| c.is_whitespace() || c == '"'))
        .collect();
    assert_server_flags("vm/globaldns.service", words);
    let dockerfile = std::fs::read_to_string(deploy_dir().join("../Dockerfile")).unwrap();
    let cmd = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("CMD "))
        .expect("Dockerfile CMD");
    let cmd: Vec<String> = serde_json::from_str(cmd).expect("CMD in exec form");
    assert_server_flags("Dockerfile", cmd.iter().map(String::as_str));
}
