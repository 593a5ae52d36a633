//! Wires the pieces together: file source → publisher (catalog, allocator) → name table → DNS
//! listeners.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::alloc::{ConfigMapStore, FileStore, Policy, Store};
use crate::cluster::{self, ClusterError};
use crate::dns::rate_limit::{RateLimitConfig, RateLimiter};
use crate::dns::{Handler, QueryMetrics, TcpLimits, TcpSlots, serve_tcp, serve_udp};
use crate::forward::{AnswerCache, CachingForwarder, Forward, ForwardMetrics, UpstreamForwarder};
use crate::ops::{ReadyCheck, serve_http};
use crate::publish::{PublishMetrics, Publisher};
use crate::source::file;
use crate::source::kube::{ClusterMetrics, ClusterSet, watch_remote_secrets};
use crate::source::readiness::Readiness;
use crate::source::set::SourceSet;
use crate::zone::{BuildError, ZoneSettings};

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
    pub zones_dir: PathBuf,
    pub zone: ZoneSettings,
    /// The state file, when allocations are kept in a file.
    pub state: PathBuf,
    /// Use the state file even when clusters are configured.
    pub force_state_file: bool,
    pub policy: Policy,
    pub clusters: ClusterConfig,
    pub forward: ForwardConfig,
    /// UDP sockets (and runtime threads) serving queries.
    pub workers: usize,
    pub rescan_every: Duration,
    /// Where /metrics, /healthz and /readyz are served, if anywhere.
    pub metrics: Option<SocketAddr>,
    pub query_log: bool,
    pub tcp: TcpLimits,
    /// Response rate limiting for UDP; off when its rate is 0.
    pub rate_limit: RateLimitConfig,
}

/// How names outside the served zones are resolved.
#[derive(Clone, Debug)]
pub struct ForwardConfig {
    /// Already stripped of this server's own address.
    pub upstreams: Vec<SocketAddr>,
    /// Time for one forwarded query across all upstreams.
    pub budget: Duration,
    /// Cached answers (entries of up to 1 KiB); 0 turns the cache off.
    pub cache_size: u64,
    pub cache_max_ttl: Duration,
    /// How long past their TTL answers are kept, to serve when the upstreams fail (RFC 8767).
    pub serve_stale: Duration,
    /// Clients that may use us as a recursive resolver.
    pub allow_recursion: Vec<IpNet>,
}

/// Queries upstream at once; beyond this, SERVFAIL at once instead of piling up.
const MAX_INFLIGHT: usize = 4096;

fn build_forwarder(
    config: &ForwardConfig,
    metrics: &Arc<ForwardMetrics>,
) -> Option<Arc<dyn Forward>> {
    if config.upstreams.is_empty() {
        return None;
    }
    let relay = Arc::new(UpstreamForwarder::new(
        config.upstreams.clone(),
        config.budget,
        MAX_INFLIGHT,
        metrics.clone(),
    ));
    let check = relay.clone();
    tokio::spawn(async move { check.check_loops().await });
    let upstream: Arc<dyn Forward> = relay;
    if config.cache_size == 0 {
        return Some(upstream);
    }
    let cache = AnswerCache::new(config.cache_size, config.cache_max_ttl, config.serve_stale);
    Some(Arc::new(CachingForwarder::new(
        upstream,
        cache,
        metrics.clone(),
    )))
}

/// Kubernetes clusters to watch. The first is the primary: it holds the allocation ConfigMaps
/// and the remote secrets.
#[derive(Clone, Debug, Default)]
pub struct ClusterConfig {
    /// Kubeconfig files: every context in each is a cluster (its ID is the context name).
    pub kubeconfigs: Vec<PathBuf>,
    /// Only these contexts, when not empty.
    pub contexts: Vec<String>,
    /// The in-cluster service account, when running in a pod without kubeconfigs.
    pub in_cluster_id: Option<String>,
    /// Context holding the allocations instead of the first cluster.
    pub store_context: Option<String>,
    pub namespace: String,
    pub sync_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cluster {id}: {source}")]
    Cluster { id: String, source: ClusterError },
    #[error("--store-context {0} is not one of the configured clusters")]
    NoStoreCluster(String),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics endpoint {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("building the name table: {0}")]
    Table(#[from] BuildError),
}

pub struct Server {
    /// One per `--listen`, in order, with the ports picked for port 0.
    local_addrs: Vec<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    tasks: JoinSet<()>,
}

impl Server {
    /// Binds, loads the sources once, and serves. Queries are answered only after the first
    /// table is built, so a starting server never denies names it is about to serve.
    pub async fn start(config: ServerConfig) -> Result<Server, ServerError> {
        let mut listeners = Vec::with_capacity(config.listen.len());
        for addr in &config.listen {
            listeners.push(bind(*addr, config.workers)?);
        }
        let local_addrs = listeners
            .iter()
            .zip(&config.listen)
            .map(|((tcp, _), addr)| {
                (tcp.local_addr()).map_err(|source| ServerError::Bind {
                    addr: *addr,
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut tasks = JoinSet::new();

        let readiness = Readiness::new(config.clusters.sync_timeout);
        // Each layer owns its metrics; they are all exposed through one registry.
        let query_metrics = Arc::new(QueryMetrics::default());
        let forward_metrics = Arc::new(ForwardMetrics::new(&config.forward.upstreams));
        let publish_metrics = Arc::new(PublishMetrics::default());
        let cluster_metrics = Arc::new(ClusterMetrics::default());
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(query_metrics.clone()));
        registry.register_collector(Box::new(forward_metrics.clone()));
        registry.register_collector(Box::new(publish_metrics.clone()));
        registry.register_collector(Box::new(cluster_metrics.clone()));
        let mut metrics_addr = None;
        if let Some(addr) = config.metrics {
            let err = |source| ServerError::Metrics { addr, source };
            let listener = TcpListener::bind(addr).await.map_err(err)?;
            let bound = listener.local_addr().map_err(err)?;
            info!(addr = %bound, "serving /metrics, /healthz and /readyz");
            metrics_addr = Some(bound);
            let (readiness, store) = (readiness.clone(), publish_metrics.clone());
            let ready: ReadyCheck = Arc::new(move || {
                if !readiness.is_ready() {
                    Err("sources not synced yet\n")
                } else if !store.store_reached() {
                    Err("allocation store not reached yet\n")
                } else {
                    Ok(())
                }
            });
            tasks.spawn(serve_http(listener, Arc::new(registry), ready));
        }
        let (sources, mut rx) = SourceSet::new();
        tasks.spawn(file::watch_dir(
            config.zones_dir.clone(),
            config.rescan_every,
            sources.clone(),
        ));
        sources.published(file::SOURCE).await;

        let clusters = connect_clusters(&config.clusters).await?;
        let primary = match &config.clusters.store_context {
            Some(ctx) => Some(
                clusters
                    .iter()
                    .find(|(id, _)| id == ctx)
                    .ok_or_else(|| ServerError::NoStoreCluster(ctx.clone()))?,
            ),
            None => clusters.first(),
        };
        let store: Arc<dyn Store> =
            match (primary.and_then(|p| p.1.as_ref()), config.force_state_file) {
                (Some(client), false) => Arc::new(ConfigMapStore::new(
                    client.clone(),
                    &config.clusters.namespace,
                )),
                _ => Arc::new(FileStore::new(&config.state)),
            };
        info!(store = %store.describe(), "allocations");
        if !clusters.is_empty() {
            let set = ClusterSet::new(sources.clone(), readiness.clone(), cluster_metrics);
            for (id, client) in &clusters {
                if let Some(client) = client {
                    set.add(id, &format!("context {id}"), "", client.clone());
                }
            }
            if let Some(client) = &clusters[0].1 {
                tasks.spawn(watch_remote_secrets(
                    client.clone(),
                    config.clusters.namespace.clone(),
                    set.clone(),
                ));
            }
            tasks.spawn(async move {
                // Keeps the cluster set (and its watches) alive as long as the server.
                let _set = set;
                std::future::pending::<()>().await
            });
        }

        let first = rx.borrow_and_update().clone();
        let publisher = Publisher::start(
            config.zone.clone(),
            config.policy.clone(),
            store,
            readiness.clone(),
            publish_metrics,
            &first,
        )
        .await?;
        let table = publisher.table();
        tasks.spawn(publisher.run(rx));

        let forwarder = build_forwarder(&config.forward, &forward_metrics);
        if forwarder.is_none() {
            warn!("no upstream resolver: names outside the served zones get REFUSED");
        }
        let rate_limit = RateLimiter::new(config.rate_limit);
        if rate_limit.is_some() {
            info!(limit = ?config.rate_limit, "rate limiting UDP responses per client network");
        }
        let handler = Arc::new(
            Handler::new(
                table.clone(),
                forwarder,
                config.forward.allow_recursion.clone(),
                query_metrics,
                config.query_log,
            )
            .with_rate_limit(rate_limit),
        );
        let tcp_slots = TcpSlots::new(config.tcp);
        for (tcp, udp) in listeners {
            for socket in udp {
                tasks.spawn(serve_udp(Arc::new(socket), handler.clone()));
            }
            tasks.spawn(serve_tcp(tcp, handler.clone(), tcp_slots.clone()));
        }
        info!(addresses = ?local_addrs, upstreams = ?config.forward.upstreams, workers = config.workers, "serving DNS over UDP and TCP");
        Ok(Server {
            local_addrs,
            metrics_addr,
            tasks,
        })
    }

    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Where /metrics, /healthz and /readyz are served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub async fn shutdown(mut self) {
        self.tasks.shutdown().await;
    }
}

/// Clients for the configured clusters, by ID, in order. A cluster whose kubeconfig is broken
/// is reported and left out (`None`) unless it would be the primary.
async fn connect_clusters(
    config: &ClusterConfig,
) -> Result<Vec<(String, Option<kube::Client>)>, ServerError> {
    let mut out: Vec<(String, Option<kube::Client>)> = Vec::new();
    for path in &config.kubeconfigs {
        let contexts = cluster::contexts(path).map_err(|source| ServerError::Cluster {
            id: path.display().to_string(),
            source,
        })?;
        for ctx in contexts
            .into_iter()
            .filter(|c| config.contexts.is_empty() || config.contexts.contains(c))
        {
            if out.iter().any(|(id, _)| *id == ctx) {
                warn!(cluster = %ctx, kubeconfig = %path.display(), "duplicate cluster ID; keeping the first");
                continue;
            }
            match cluster::connect(Some(path), Some(&ctx)).await {
                Ok(client) => out.push((ctx, Some(client))),
                Err(source) if out.is_empty() => {
                    return Err(ServerError::Cluster { id: ctx, source });
                }
                Err(error) => {
                    warn!(cluster = %ctx, %error, "cannot use cluster; skipped");
                    out.push((ctx, None));
                }
            }
        }
    }
    if let (true, Some(id)) = (out.is_empty(), &config.in_cluster_id) {
        let client = cluster::connect(None, None)
            .await
            .map_err(|source| ServerError::Cluster {
                id: id.clone(),
                source,
            })?;
        out.push((id.clone(), Some(client)));
    }
    Ok(out)
}

/// One TCP listener and `workers` UDP sockets sharing its port through SO_REUSEPORT.
///
/// TCP is bound first without SO_REUSEPORT, so a second server on the same port fails here
/// instead of silently receiving a share of the UDP queries.
fn bind(addr: SocketAddr, workers: usize) -> Result<(TcpListener, Vec<UdpSocket>), ServerError> {
    let mut attempts = if addr.port() == 0 { 8 } else { 1 };
    loop {
        let err = |source| ServerError::Bind { addr, source };
        let tcp = std::net::TcpListener::bind(addr).map_err(err)?;
        tcp.set_nonblocking(true).map_err(err)?;
        let port = tcp.local_addr().map_err(err)?.port();
        let udp: std::io::Result<Vec<UdpSocket>> = (0..workers.max(1))
            .map(|_| udp_socket(SocketAddr::new(addr.ip(), port)))
            .collect();
        match udp {
            Ok(udp) => return Ok((TcpListener::from_std(tcp).map_err(err)?, udp)),
            Err(e) if attempts > 1 && e.kind() == std::io::ErrorKind::AddrInUse => attempts -= 1,
            Err(e) => return Err(err(e)),
        }
    }
}

fn udp_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    // Room for bursts while a worker is busy; the kernel caps this at rmem_max.
    let _ = socket.set_recv_buffer_size(4 << 20);
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}
