//! DNS over TLS (RFC 7858): the TCP protocol inside TLS, for VMs that reach the mesh over
//! networks nobody controls. Each connection is served by the same code as plain TCP, within the
//! same connection limits; zone transfers work over it too (XoT, RFC 9103).
//!
//! rustls (through tokio-rustls) rather than hickory-server's listener: hickory-server would hand
//! us decoded messages and take encoded ones back, while the handler reads and writes the wire
//! format itself; carrying it through would cost a decode and an encode per query for nothing.
//!
//! The certificate and key are read from files and read again when they change (checked every
//! two seconds), so a renewed certificate (cert-manager rewriting a Secret) is served without a
//! restart; a broken renewal is logged and the previous certificate kept.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::server::TlsStream;
use tracing::{debug, info, warn};

use super::Handler;
use super::tcp::{Slot, TcpSlots, serve_connection};

/// How often the certificate files are checked for a change.
const RELOAD_CHECK: Duration = Duration::from_secs(2);
/// How long a client may take to complete the handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// The PEM files of the serving certificate (with its chain) and its private key.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate {path}: {source}")]
    Cert {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("certificate {0}: no certificate in the file")]
    NoCert(PathBuf),
    #[error("private key {path}: {source}")]
    Key {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("certificate and key do not go together: {0}")]
    Config(#[from] rustls::Error),
}

/// The current TLS configuration, swapped whole on a reload.
pub type SharedAcceptor = Arc<ArcSwap<TlsAcceptor>>;

/// ALPN of DNS over TLS (RFC 7858 §3.2).
pub const ALPN_DOT: &[&[u8]] = &[b"dot"];
/// ALPN of DNS over HTTPS: HTTP/2 first (RFC 8484 §5.2 recommends it), then HTTP/1.1.
pub const ALPN_DOH: &[&[u8]] = &[b"h2", b"http/1.1"];

/// A TLS acceptor for `files`, offering the protocols `alpn`.
pub fn acceptor(files: &TlsFiles, alpn: &[&[u8]]) -> Result<TlsAcceptor, TlsError> {
    let cert_err = |source| TlsError::Cert {
        path: files.cert.clone(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .map_err(cert_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(cert_err)?;
    if certs.is_empty() {
        return Err(TlsError::NoCert(files.cert.clone()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|source| TlsError::Key {
        path: files.key.clone(),
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts DNS-over-TLS connections on `listener`.
pub async fn serve_tls(
    listener: TcpListener,
    acceptor: SharedAcceptor,
    handler: Arc<Handler>,
    slots: Arc<TcpSlots>,
) {
    accept_tls(listener, acceptor, slots, move |stream, peer, slot| {
        let handler = handler.clone();
        async move {
            if let Err(error) = serve_connection(stream, peer.ip(), &handler, &slot).await {
                debug!(%peer, %error, "TLS connection ended");
            }
        }
    })
    .await
}

/// Accepts TLS connections on `listener` within the TCP connection limits (`slots`), and runs
/// `serve` on each once its handshake is done, holding its slot until `serve` ends.
pub(super) async fn accept_tls<F, Fut>(
    listener: TcpListener,
    acceptor: SharedAcceptor,
    slots: Arc<TcpSlots>,
    serve: F,
) where
    F: Fn(TlsStream<TcpStream>, SocketAddr, Slot) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                debug!(%error, "TLS accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some(slot) = slots.take(peer.ip()) else {
            debug!(%peer, "too many TCP connections from this client or in all; closing");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.load_full();
        let handshake = async move {
            match tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => Some(stream),
                Ok(Err(error)) => {
                    debug!(%peer, %error, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    debug!(%peer, "TLS handshake timed out");
                    None
                }
            }
        };
        let serve = serve.clone();
        tokio::spawn(async move {
            if let Some(stream) = handshake.await {
                serve(stream, peer, slot).await;
            }
        });
    }
}

/// Reads the files again whenever they change, and serves the new certificate from then on, in
/// each acceptor with its own ALPN.
pub async fn reload_on_change(
    files: TlsFiles,
    acceptors: Vec<(&'static [&'static [u8]], SharedAcceptor)>,
) {
    let mut seen = stamps(&files);
    loop {
        tokio::time::sleep(RELOAD_CHECK).await;
        let now = stamps(&files);
        if now == seen {
            continue;
        }
        seen = now;
        let fresh: Result<Vec<TlsAcceptor>, TlsError> = acceptors
            .iter()
            .map(|(alpn, _)| acceptor(&files, alpn))
            .collect();
        match fresh {
            Ok(fresh) => {
                for ((_, slot), fresh) in acceptors.iter().zip(fresh) {
                    slot.store(Arc::new(fresh));
                }
                info!(cert = %files.cert.display(), "TLS certificate reloaded");
            }
            Err(error) => {
                warn!(%error, "cannot reload the TLS certificate; keeping the previous one")
            }
        }
    }
}

/// What tells a changed file: modification time and length, following symbolic links (a
/// Kubernetes Secret volume swaps a link).
fn stamps(files: &TlsFiles) -> [Option<(SystemTime, u64)>; 2] {
    let stamp = |path: &Path| {
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    };
    [stamp(&files.cert), stamp(&files.key)]
}
