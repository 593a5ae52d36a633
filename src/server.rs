//! Wires the pieces together: file source → catalog → name table → DNS listeners.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::catalog::Catalog;
use crate::dns::{Handler, serve_tcp, serve_udp};
use crate::forward::{Forward, UpstreamForwarder};
use crate::source::{DeclarationSet, file};
use crate::zone::{BuildError, NameTable, SharedTable, ZoneSettings};

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub zones_dir: PathBuf,
    pub zone: ZoneSettings,
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
        let mut serial = next_serial(0);
        let first = build_table(&config.zone, serial, &rx.borrow_and_update())?;
        let table: SharedTable = Arc::new(ArcSwap::from_pointee(first));

        let (zone, shared) = (config.zone.clone(), table.clone());
        tasks.spawn(async move {
            while rx.changed().await.is_ok() {
                serial = next_serial(serial);
                let declarations = rx.borrow_and_update().clone();
                let zone = zone.clone();
                // Off the runtime's threads: a large rebuild must not hold up queries.
                let built =
                    tokio::task::spawn_blocking(move || build_table(&zone, serial, &declarations))
                        .await;
                match built {
                    Ok(Ok(t)) => shared.store(Arc::new(t)),
                    Ok(Err(error)) => warn!(%error, "keeping the previous name table"),
                    Err(_) => return,
                }
            }
        });

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

fn build_table(
    zone: &ZoneSettings,
    serial: u32,
    declarations: &DeclarationSet,
) -> Result<NameTable, BuildError> {
    let catalog = Catalog::merge(declarations);
    for c in &catalog.conflicts {
        warn!(host = %c.host, kept = %c.kept, ignored = %c.ignored, "host declared with different addresses; keeping the first");
    }
    let table = NameTable::build(zone, serial, &catalog.hosts)?;
    info!(hosts = table.host_count(), serial, "name table published");
    Ok(table)
}

/// SOA serials follow the clock but always move forward, even for rebuilds within a second.
fn next_serial(previous: u32) -> u32 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32);
    now.max(previous.wrapping_add(1))
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
