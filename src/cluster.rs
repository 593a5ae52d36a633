//! Connecting to a Kubernetes cluster the way kubectl does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use tracing::warn;

/// Fail fast on an unreachable API server instead of hanging a CLI or a startup.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a cluster cannot be used. Each keeps the error it comes from as its source; the message
/// names it on one line already (kube's errors nest several levels deep), so log lines print
/// just the message.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("kubeconfig {path}: {}", one_line(source))]
    Kubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no kubeconfig found (--kubeconfig, KUBECONFIG, ~/.kube/config) and not running in a pod: {}",
        one_line(.0)
    )]
    NoConfig(#[source] kube::config::InClusterError),
    #[error("kubeconfig {path}: the value is not UTF-8 text")]
    NotText { path: String },
    #[error("cannot build a client: {}", one_line(.0))]
    Client(#[source] kube::Error),
    #[error("cluster API: {}", one_line(.0))]
    Api(#[source] kube::Error),
    #[error("{group} serves none of {} (only {served:?})", wanted.join(", "))]
    NoVersion {
        group: &'static str,
        wanted: Vec<&'static str>,
        served: Vec<String>,
    },
}

/// A client from, in order: `kubeconfig` if given, then `KUBECONFIG`, then `~/.kube/config`,
/// then the in-cluster service account. `context` picks a kubeconfig context.
pub async fn connect(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<kube::Client, ClusterError> {
    let options = KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let file = match kubeconfig {
        Some(path) => Some((path.to_path_buf(), Kubeconfig::read_from(path))),
        None => default_kubeconfig().map(|path| (path, Kubeconfig::read())),
    };
    let config = match file {
        Some((path, kc)) => {
            let bad = |source| ClusterError::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let kc = kc.map_err(bad)?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(bad)?
        }
        None => kube::Config::incluster().map_err(ClusterError::NoConfig)?,
    };
    client(config)
}

/// The client for `config`, failing fast on an unreachable server, and named in the API server's
/// audit log and request metrics as `globaldns/VERSION` (kube-rs sends no User-Agent of its own).
fn client(mut config: kube::Config) -> Result<kube::Client, ClusterError> {
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(USER_AGENT),
    ));
    kube::Client::try_from(config).map_err(ClusterError::Client)
}

const USER_AGENT: &str = concat!("globaldns/", env!("CARGO_PKG_VERSION"));

/// A client from kubeconfig text, as held in an Istio remote secret.
pub async fn connect_yaml(yaml: &str, what: &str) -> Result<kube::Client, ClusterError> {
    let bad = |source| ClusterError::Kubeconfig {
        path: what.to_string(),
        source,
    };
    let kc = Kubeconfig::from_yaml(yaml).map_err(bad)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(bad)?;
    client(config)
}

/// Clients for every context of `kubeconfigs` (only those in `contexts`, when given), in order;
/// a duplicate ID keeps the first. The first cluster must connect: it is the primary. A later
/// one that cannot is kept without a client, and logged. Without kubeconfigs, the in-cluster
/// service account as `in_cluster_id`. An error names the cluster (or file) that failed.
pub async fn connect_all(
    kubeconfigs: &[PathBuf],
    contexts: &[String],
    in_cluster_id: Option<&str>,
) -> Result<Vec<(String, Option<kube::Client>)>, (String, ClusterError)> {
    let mut out: Vec<(String, Option<kube::Client>)> = Vec::new();
    for path in kubeconfigs {
        let found = self::contexts(path).map_err(|e| (path.display().to_string(), e))?;
        for ctx in found
            .into_iter()
            .filter(|c| contexts.is_empty() || contexts.contains(c))
        {
            if out.iter().any(|(id, _)| *id == ctx) {
                warn!(cluster = %ctx, kubeconfig = %path.display(), "duplicate cluster ID; keeping the first");
                continue;
            }
            match connect(Some(path), Some(&ctx)).await {
                Ok(client) => out.push((ctx, Some(client))),
                Err(source) if out.is_empty() => return Err((ctx, source)),
                Err(error) => {
                    warn!(cluster = %ctx, %error, "cannot use cluster; skipped");
                    out.push((ctx, None));
                }
            }
        }
    }
    if let (true, Some(id)) = (out.is_empty(), in_cluster_id) {
        let client = connect(None, None).await.map_err(|e| (id.to_string(), e))?;
        out.push((id.to_string(), Some(client)));
    }
    Ok(out)
}

/// Context names of a kubeconfig file, in file order.
pub fn contexts(path: &Path) -> Result<Vec<String>, ClusterError> {
    let kc = Kubeconfig::read_from(path).map_err(|source| ClusterError::Kubeconfig {
        path: path.display().to_string(),
        source,
    })?;
    Ok(kc.contexts.into_iter().map(|c| c.name).collect())
}

fn default_kubeconfig() -> Option<PathBuf> {
    if let Some(paths) = std::env::var_os("KUBECONFIG").filter(|p| !p.is_empty()) {
        return std::env::split_paths(&paths).next();
    }
    let home = std::env::var_os("HOME")?;
    let path = Path::new(&home).join(".kube/config");
    path.exists().then_some(path)
}

/// An error and its causes on one line.
pub fn one_line(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text.replace('\n', " ")
}

/// kube-runtime's watcher of `api`, with client-go's backoff on failures (0.8 s doubling to
/// 30 s, each delay jittered by up to as much again), except that 410 Gone is not a failure:
/// it means the resourceVersion the watch resumed from was compacted away, and the watcher
/// relists at once. After every API server restart each resumed watch gets one; backing off on
/// it would leave the changes made during the outage unseen for one more backoff step after
/// the server is back. `what` names the watch
/// in the log line that reports the relist.
pub fn relisting_watcher<K>(
    api: kube::Api<K>,
    config: kube::runtime::watcher::Config,
    what: String,
) -> futures::stream::BoxStream<
    'static,
    kube::runtime::watcher::Result<kube::runtime::watcher::Event<K>>,
>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    use futures::StreamExt;
    use kube::runtime::WatchStreamExt;
    use kube::runtime::watcher::{Error, watcher};
    watcher(api, config)
        .filter(move |event| {
            let expired = matches!(event, Err(Error::WatchError(status)) if status.code == 410);
            if let (true, Err(error)) = (expired, event) {
                tracing::info!(watch = %what, %error, "resourceVersion expired (410 Gone); relisting");
            }
            std::future::ready(!expired)
        })
        .default_backoff()
        .boxed()
}
