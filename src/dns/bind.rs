//! The listening sockets of one `--listen` address.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, UdpSocket};

/// One TCP listener on `addr` and `workers` UDP sockets sharing its port through SO_REUSEPORT
/// (the kernel spreads datagrams over them). With port 0 the TCP listener picks the port; if
/// another process holds that port for UDP, a few more are tried.
///
/// TCP is bound first without SO_REUSEPORT, so a second server on the same port fails here
/// instead of silently receiving a share of the UDP queries.
pub fn bind(addr: SocketAddr, workers: usize) -> std::io::Result<(TcpListener, Vec<UdpSocket>)> {
    let mut attempts = if addr.port() == 0 { 8 } else { 1 };
    loop {
        let tcp = std::net::TcpListener::bind(addr)?;
        tcp.set_nonblocking(true)?;
        let port = tcp.local_addr()?.port();
        let udp: std::io::Result<Vec<UdpSocket>> = (0..workers.max(1))
            .map(|_| udp_socket(SocketAddr::new(addr.ip(), port)))
            .collect();
        match udp {
            Ok(udp) => return Ok((TcpListener::from_std(tcp)?, udp)),
            Err(e) if attempts > 1 && e.kind() == std::io::ErrorKind::AddrInUse => attempts -= 1,
            Err(e) => return Err(e),
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
