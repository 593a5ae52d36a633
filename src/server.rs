//! Wires the pieces together: file source → publisher (catalog, allocator) → name table → DNS
//! listeners.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::alloc::{FileStore, Policy, Store};
use crate::dns::{Handler, serve_tcp, serve_udp};
use crate::forward::{Forward, UpstreamForwarder};
use crate::publish::Publisher;
use crate::source::{DeclarationSet, file};
use crate::zone::{BuildError, SharedTable, ZoneSettings};

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub zones_dir: PathBuf,
    pub zone: ZoneSettings,
    /// Where allocations are kept (the file store).
    pub state: PathBuf,
    pub policy: Policy,
    /// Already stripped of this server's own address.
    pub upstreams: Vec<SocketAddr>,
    /// UDP sockets (and runtime threads) serving queries.
    pub workers: usize,
    pub rescan_every: Duration,
    pub forward_budget: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("building the name table: {0}")]
    Table(#[from] BuildError),
    #[error("the file source stopped before its first load")]
    SourceGone,
}

pub struct Server {
    local_addr: SocketAddr,
    table: SharedTable,
    tasks: JoinSet<()>,
}

impl Server {
    /// Binds, loads the sources once, and serves. Queries are answered only after the first
    /// table is built, so a starting server never denies names it is about to serve.
    pub async fn start(config: ServerConfig) -> Result<Server, ServerError> {
        let (tcp, udp) = bind(config.listen, config.workers)?;
        let local_addr = tcp.local_addr().map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
        let mut tasks = JoinSet::new();

        let (tx, mut rx) = watch::channel(DeclarationSet::default());
        tasks.spawn(file::watch_dir(
            config.zones_dir.clone(),
            config.rescan_every,
            tx,
        ));
        rx.changed().await.map_err(|_| ServerError::SourceGone)?;
        let first = rx.borrow_and_update().clone();
        let store: Arc<dyn Store> = Arc::new(FileStore::new(&config.state));
        let publisher =
            Publisher::start(config.zone.clone(), config.policy.clone(), store, &first).await?;
        let table = publisher.table();
        tasks.spawn(publisher.run(rx));

        let forwarder = (!config.upstreams.is_empty()).then(|| {
            Arc::new(UpstreamForwarder::new(
                config.upstreams.clone(),
                config.forward_budget,
            )) as Arc<dyn Forward>
        });
        if forwarder.is_none() {
            warn!("no upstream resolver: names outside the served zones get REFUSED");
        }
        let handler = Arc::new(Handler::new(table.clone(), forwarder));
        for socket in udp {
            tasks.spawn(serve_udp(Arc::new(socket), handler.clone()));
        }
        tasks.spawn(serve_tcp(tcp, handler));
        info!(%local_addr, upstreams = ?config.upstreams, workers = config.workers, "serving DNS over UDP and TCP");
        Ok(Server {
            local_addr,
            table,
            tasks,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn table(&self) -> &SharedTable {
        &self.table
    }

    pub async fn shutdown(mut self) {
        self.tasks.shutdown().await;
    }
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
