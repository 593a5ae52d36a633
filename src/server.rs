//! Wires the pieces together: file source → publisher (catalog, allocator) → name table → DNS
//! listeners.

use std::net::SocketAddr;

use ipnet::IpNet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::alloc::{AllocState, ConfigMapStore, FileStore, Policy, Store};
use crate::cluster::{self, ClusterError};
use crate::dns::chaos::Chaos;
use crate::dns::https::serve_https;
use crate::dns::rate_limit::{RateLimitConfig, RateLimiter};
use crate::dns::tls::{self, SharedAcceptor, TlsError, TlsFiles, serve_tls};
use crate::dns::{self, Handler, QueryMetrics, TcpLimits, TcpSlots, serve_tcp, serve_udp};
use crate::forward::{self, ForwardConfig, ForwardMetrics};
use crate::ops::{ReadyCheck, serve_http};
use crate::publish::{PublishMetrics, Publisher};
use crate::source::file;
use crate::source::kube::{ClusterMetrics, ClusterSet, watch_remote_secrets};
use crate::source::readiness::Readiness;
use crate::source::set::SourceSet;
use crate::status::{self, StatusInputs, StatusMetrics, StatusSettings};
use crate::wire::name::to_text;
use crate::wire::tsig::TsigKeys;
use crate::zone::{BuildError, ZoneSettings};

/// How long the server keeps the ConfigMap store's writer lease while changes keep coming: the
/// transactions of one change, and the changes of a burst, take it once. Well below the lease's
/// 15 s, and short enough that another replica that must write waits little.
const LEASE_HOLD: Duration = Duration::from_secs(2);
/// ... as long as changes come less than this apart.
const LEASE_IDLE: Duration = Duration::from_millis(250);
/// How long a store transaction waits for another replica's lease. Tables wait for their
/// transactions, so this bounds how long a busy lease (a replica killed while it kept it holds
/// it until it expires, 15 s) holds back every other change; what could not be stored is
/// pending and tried again.
const LEASE_WAIT: Duration = Duration::from_secs(2);
/// A lease left held at shutdown expires on its own; the stop does not wait longer for it.
const CLOSE_STORE: Duration = Duration::from_secs(2);

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
    /// Text answered for `version.bind` and the other identity names of class CH.
    pub identity: Option<String>,
    /// Clients that may transfer zones.
    pub allow_transfer: Vec<IpNet>,
    /// DNS-over-TLS and DNS-over-HTTPS addresses, served with `tls_files`.
    pub tls_listen: Vec<SocketAddr>,
    pub https_listen: Vec<SocketAddr>,
    pub tls_files: Option<TlsFiles>,
    /// Secondaries told of every change (NOTIFY).
    pub notify: Vec<SocketAddr>,
    /// TSIG keys that must sign transfer requests, when there are any.
    pub transfer_keys: TsigKeys,
    pub tcp: TcpLimits,
    /// Response rate limiting for UDP; off when its rate is 0.
    pub rate_limit: RateLimitConfig,
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
    /// Where our VIPs are written into ServiceEntry statuses.
    pub status: StatusSettings,
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
    #[error("DNS over TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("--identity: {0}")]
    Identity(#[source] hickory_proto::ProtoError),
    #[error("building the name table: {0}")]
    Table(#[from] BuildError),
    #[error("--transfer-key {0}=…: {0} is not a served zone (a --zone, or a pool's reverse zone)")]
    KeyZone(String),
}

pub struct Server {
    /// One per `--listen`, in order, with the ports picked for port 0.
    local_addrs: Vec<SocketAddr>,
    /// One per `--tls-listen`, likewise.
    tls_addrs: Vec<SocketAddr>,
    /// One per `--https-listen`, likewise.
    https_addrs: Vec<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    tasks: JoinSet<()>,
    /// Closed after the tasks stop: it may hold the writer lease other replicas wait for.
    store: Arc<dyn Store>,
}

impl Server {
    /// Binds, loads the sources once, and serves. Queries are answered only after the first
    /// table is built, so a starting server never denies names it is about to serve.
    pub async fn start(config: ServerConfig) -> Result<Server, ServerError> {
        let mut listeners = Vec::with_capacity(config.listen.len());
        for addr in &config.listen {
            let bound = dns::bind(*addr, config.workers);
            listeners.push(bound.map_err(|source| ServerError::Bind {
                addr: *addr,
                source,
            })?);
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
        let status_metrics = Arc::new(StatusMetrics::default());
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(query_metrics.clone()));
        registry.register_collector(Box::new(forward_metrics.clone()));
        registry.register_collector(Box::new(publish_metrics.clone()));
        registry.register_collector(Box::new(cluster_metrics.clone()));
        registry.register_collector(Box::new(status_metrics.clone()));
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

        let c = &config.clusters;
        let clusters =
            cluster::connect_all(&c.kubeconfigs, &c.contexts, c.in_cluster_id.as_deref())
                .await
                .map_err(|(id, source)| ServerError::Cluster { id, source })?;
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
                (Some(client), false) => Arc::new(
                    ConfigMapStore::new(client.clone(), &config.clusters.namespace)
                        .holding_lease(LEASE_HOLD, LEASE_IDLE)
                        .waiting_for_lease(LEASE_WAIT),
                ),
                _ => Arc::new(FileStore::new(&config.state)),
            };
        info!(store = %store.describe(), "allocations");
        let (allocations, stored) = watch::channel(Arc::new(AllocState::default()));
        if !clusters.is_empty() {
            let writers = status::companion(
                config.clusters.status.clone(),
                StatusInputs {
                    declarations: rx.clone(),
                    allocations: stored,
                    policy: Arc::new(config.policy.clone()),
                    metrics: status_metrics,
                },
            );
            let set = ClusterSet::with_companion(
                sources.clone(),
                readiness.clone(),
                cluster_metrics,
                Some(writers),
            );
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

        let publisher = Publisher::start(
            config.zone.clone(),
            config.policy.clone(),
            store.clone(),
            readiness.clone(),
            publish_metrics,
            &mut rx,
            allocations,
        )
        .await?;
        let table = publisher.table();
        // A key meant for a zone we do not serve would leave the intended zone open.
        let unserved = (config.transfer_keys.zones())
            .find(|zone| !table.load().apexes().any(|apex| apex == *zone));
        if let Some(zone) = unserved {
            return Err(ServerError::KeyZone(to_text(zone)));
        }
        tasks.spawn(dns::notify_secondaries(
            table.clone(),
            publisher.published(),
            config.notify.clone(),
            config.transfer_keys.clone(),
        ));
        tasks.spawn(publisher.run(rx));

        let forwarder = forward::build(&config.forward, &forward_metrics);
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
            .with_rate_limit(rate_limit)
            .with_chaos(Chaos::new(config.identity.as_deref()).map_err(ServerError::Identity)?)
            .with_transfers(config.allow_transfer.clone(), config.transfer_keys.clone()),
        );
        let tcp_slots = TcpSlots::new(config.tcp);
        for (tcp, udp) in listeners {
            for socket in udp {
                tasks.spawn(serve_udp(Arc::new(socket), handler.clone()));
            }
            tasks.spawn(serve_tcp(tcp, handler.clone(), tcp_slots.clone()));
        }
        let (mut tls_addrs, mut https_addrs) = (Vec::new(), Vec::new());
        if let Some(files) = &config.tls_files {
            let mut acceptors = Vec::new();
            let bind = async |addr: &SocketAddr| {
                let err = |source| ServerError::Bind {
                    addr: *addr,
                    source,
                };
                let listener = TcpListener::bind(addr).await.map_err(err)?;
                let local = listener.local_addr().map_err(err)?;
                Ok::<_, ServerError>((listener, local))
            };
            if !config.tls_listen.is_empty() {
                let dot: SharedAcceptor =
                    Arc::new(ArcSwap::from_pointee(tls::acceptor(files, tls::ALPN_DOT)?));
                for addr in &config.tls_listen {
                    let (listener, local) = bind(addr).await?;
                    tls_addrs.push(local);
                    let (slots, handler) = (tcp_slots.clone(), handler.clone());
                    tasks.spawn(serve_tls(listener, dot.clone(), handler, slots));
                }
                acceptors.push((tls::ALPN_DOT, dot));
                info!(addresses = ?tls_addrs, "serving DNS over TLS");
            }
            if !config.https_listen.is_empty() {
                let doh: SharedAcceptor =
                    Arc::new(ArcSwap::from_pointee(tls::acceptor(files, tls::ALPN_DOH)?));
                for addr in &config.https_listen {
                    let (listener, local) = bind(addr).await?;
                    https_addrs.push(local);
                    let (slots, handler) = (tcp_slots.clone(), handler.clone());
                    tasks.spawn(serve_https(listener, doh.clone(), handler, slots));
                }
                acceptors.push((tls::ALPN_DOH, doh));
                info!(addresses = ?https_addrs, "serving DNS over HTTPS");
            }
            if !acceptors.is_empty() {
                tasks.spawn(tls::reload_on_change(files.clone(), acceptors));
            }
        }
        info!(addresses = ?local_addrs, upstreams = ?config.forward.upstreams, workers = config.workers, "serving DNS over UDP and TCP");
        Ok(Server {
            local_addrs,
            tls_addrs,
            https_addrs,
            metrics_addr,
            tasks,
            store,
        })
    }

    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Where DNS over TLS is served, one per `--tls-listen`.
    pub fn tls_addrs(&self) -> &[SocketAddr] {
        &self.tls_addrs
    }

    /// Where DNS over HTTPS is served, one per `--https-listen`.
    pub fn https_addrs(&self) -> &[SocketAddr] {
        &self.https_addrs
    }

    /// Where /metrics, /healthz and /readyz are served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub async fn shutdown(mut self) {
        self.tasks.shutdown().await;
        if tokio::time::timeout(CLOSE_STORE, self.store.close())
            .await
            .is_err()
        {
            warn!(store = %self.store.describe(), "could not close the allocation store in time");
        }
    }
}
