//! Command-line flags of the server, turned into a [`ServerConfig`].

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use hickory_proto::rr::Name;
use ipnet::IpNet;
use tracing::warn;

use crate::dns::TcpLimits;
use crate::dns::rate_limit::RateLimitConfig;
use crate::dns::tls::TlsFiles;
use crate::forward::{ForwardConfig, system_upstreams, without_self};
use crate::server::{ClusterConfig, ServerConfig};
use crate::status::StatusSettings;
use crate::wire::name::lower_wire;
use crate::wire::tsig::{TransferKey, TsigKeys};
use crate::zone::{SoaSettings, ZoneSettings};

mod alloc_args;
mod file;
mod tsig_keys;

pub use alloc_args::AllocArgs;

/// Authoritative DNS for the `.global` names of an Istio multicluster mesh, read from
/// ServiceEntry manifests; every other name is forwarded upstream.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "globaldns",
    version,
    after_help = "Logging follows RUST_LOG (e.g. RUST_LOG=globaldns=debug); the default is info."
)]
pub struct ServerArgs {
    /// YAML (.yaml, .yml) or TOML (.toml) file setting any of these flags, keyed by long name
    /// (`ttl: 60`, `upstream: [10.96.0.10]`). Command-line flags and env vars win over it.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Address for both UDP and TCP (repeatable: `--listen 0.0.0.0:53 --listen [::]:53` serves
    /// both families). Port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:5353", value_name = "ADDR:PORT")]
    pub listen: Vec<SocketAddr>,

    /// Address for DNS over TLS (RFC 7858; port 853 by convention; repeatable); needs --tls-cert
    /// and --tls-key. Port 0 picks a free port (printed on stdout).
    #[arg(long = "tls-listen", value_name = "ADDR:PORT", requires_all = ["tls_cert", "tls_key"])]
    pub tls_listen: Vec<SocketAddr>,

    /// Address for DNS over HTTPS (RFC 8484, `/dns-query`; port 443 by convention; repeatable);
    /// needs --tls-cert and --tls-key. Port 0 picks a free port (printed on stdout).
    #[arg(long = "https-listen", value_name = "ADDR:PORT", requires_all = ["tls_cert", "tls_key"])]
    pub https_listen: Vec<SocketAddr>,

    /// PEM file of the TLS certificate, its chain after it; read again when it changes.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM file of the TLS certificate's private key; read again when it changes.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// Directory of ServiceEntry manifests (*.yaml, *.yml, multi-document), watched for changes.
    #[arg(long, default_value = "zones", value_name = "DIR")]
    pub zones: PathBuf,

    /// Zone served authoritatively (repeatable). Names under it are never forwarded.
    #[arg(long = "zone", default_value = "global", value_name = "NAME", value_parser = parse_zone)]
    pub zones_served: Vec<Name>,

    /// Upstream resolver for other names (repeatable, tried in order; port defaults to 53).
    /// Default: the nameservers of --resolv-conf, minus this server itself.
    #[arg(long = "upstream", value_name = "IP[:PORT]", value_parser = parse_upstream)]
    pub upstreams: Vec<SocketAddr>,

    /// Where default upstreams are read from.
    #[arg(long, default_value = "/etc/resolv.conf", value_name = "PATH")]
    pub resolv_conf: PathBuf,

    /// Time budget for one forwarded query across all upstreams; SERVFAIL after it.
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    pub forward_timeout_ms: u64,

    /// Forwarded answers kept in the cache, in entries of up to 1 KiB; 0 turns it off.
    #[arg(long, default_value_t = 100_000, value_name = "ENTRIES")]
    pub cache_size: u64,

    /// Longest time a forwarded answer is cached, whatever its TTL.
    #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
    pub cache_max_ttl: u64,

    /// Keep forwarded answers this long past their TTL, and answer with them (TTL 30 s) when
    /// every upstream fails or answers SERVFAIL (RFC 8767); 0 turns it off.
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    pub serve_stale: u64,

    /// Clients that may resolve names outside the served zones (repeatable); others get REFUSED
    /// for those, and answers for the served zones.
    /// [default: loopback, RFC 1918, 100.64.0.0/10, fc00::/7]
    #[arg(long = "allow-from", value_name = "CIDR")]
    pub allow_from: Vec<IpNet>,

    /// Clients that may transfer the served zones (AXFR, IXFR; repeatable); others get REFUSED.
    /// [default: loopback]
    #[arg(long = "allow-transfer", value_name = "CIDR")]
    pub allow_transfer: Vec<IpNet>,

    /// TSIG keys (a file as BIND's tsig-keygen writes it; repeatable), for every zone or, as
    /// ZONE=FILE, for that zone only: a transfer of a zone with keys must be signed with one of
    /// them, its reply is signed too, and NOTIFY for it is signed with the first.
    #[arg(long = "transfer-key", value_name = "[ZONE=]FILE", value_parser = parse_key_file)]
    pub transfer_keys: Vec<TsigKeys>,

    /// Secondary to send NOTIFY to when the zones change (repeatable; port defaults to 53). It
    /// must be in --allow-transfer to transfer them.
    #[arg(long = "notify", value_name = "IP[:PORT]", value_parser = parse_upstream)]
    pub notify: Vec<SocketAddr>,

    /// TCP connections open at once, across every --listen address; more are closed at once.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub tcp_connections: usize,

    /// TCP connections one client (an IPv4 address, or an IPv6 /64) may hold open at once.
    /// Generous: a busy CoreDNS pod sends every truncated answer's retry from one address.
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub tcp_per_client: usize,

    /// How long a TCP connection may wait for its next query (1 s while more than half of
    /// --tcp-connections are open).
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub tcp_idle_timeout: u64,

    /// How long a TCP connection may stay open however busy it is; the client reconnects.
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    pub tcp_lifetime: u64,

    /// UDP responses one client network may receive per second (response rate limiting, as in
    /// NSD and Knot); past it most are dropped. 0 turns it off, the default: behind CoreDNS one
    /// address asks for a whole cluster. Set it where untrusted networks reach the listener.
    #[arg(long, default_value_t = 0, value_name = "PER_SECOND")]
    pub rate_limit: u32,

    /// Of the responses over --rate-limit, every Nth is sent empty with TC=1 instead of dropped,
    /// so a real client retries over TCP (never limited); 0 drops them all.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub rate_limit_slip: u32,

    /// IPv4 prefix length that makes one client network for --rate-limit.
    #[arg(long, default_value_t = 24, value_name = "BITS", value_parser = clap::value_parser!(u8).range(0..=32))]
    pub rate_limit_ipv4_prefix: u8,

    /// IPv6 prefix length that makes one client network for --rate-limit.
    #[arg(long, default_value_t = 56, value_name = "BITS", value_parser = clap::value_parser!(u8).range(0..=128))]
    pub rate_limit_ipv6_prefix: u8,

    /// TTL of answers for served names.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub ttl: u32,

    /// SOA primary name server, also the apex NS record [default: ns.dns.<zone>].
    #[arg(long, value_name = "NAME", value_parser = parse_zone)]
    pub soa_mname: Option<Name>,

    /// Address clients reach this server on, port 53 implied (repeatable; IPv4 and IPv6): the
    /// A/AAAA of the apex NS name, so resolvers that prime a stub zone (BIND `type stub`,
    /// unbound `stub-prime`) find us. In a cluster, the Service IP CoreDNS and VMs use
    /// [default: the --listen addresses when all are loopback; otherwise none, with a warning].
    #[arg(long = "ns-address", value_name = "IP")]
    pub ns_addresses: Vec<IpAddr>,

    /// SOA responsible mailbox, as a name [default: hostmaster.<zone>].
    #[arg(long, value_name = "NAME", value_parser = parse_zone)]
    pub soa_rname: Option<Name>,

    /// SOA refresh.
    #[arg(long, default_value_t = SoaSettings::DEFAULT.refresh, value_name = "SECONDS")]
    pub soa_refresh: i32,

    /// SOA retry.
    #[arg(long, default_value_t = SoaSettings::DEFAULT.retry, value_name = "SECONDS")]
    pub soa_retry: i32,

    /// SOA expire.
    #[arg(long, default_value_t = SoaSettings::DEFAULT.expire, value_name = "SECONDS")]
    pub soa_expire: i32,

    /// SOA minimum: how long resolvers cache NXDOMAIN and NODATA (RFC 2308).
    #[arg(long, default_value_t = SoaSettings::DEFAULT.minimum, value_name = "SECONDS")]
    pub soa_minimum: u32,

    /// File keeping the VIP allocations, shared with `dnsctl`; with clusters, given only to keep
    /// allocations in a file instead of the primary's ConfigMaps
    /// [default: <zones>.state.json, next to the zones directory].
    #[arg(long, value_name = "PATH")]
    pub state: Option<PathBuf>,

    /// Kubeconfig of clusters whose ServiceEntries are served (repeatable); every context in
    /// each file is a cluster, its ID the context name. The first cluster is the primary: it
    /// holds the VIP allocations and the remote secrets.
    #[arg(long = "kubeconfig", value_name = "PATH")]
    pub kubeconfigs: Vec<PathBuf>,

    /// Only these contexts of the kubeconfigs (repeatable).
    #[arg(long = "context", value_name = "NAME")]
    pub contexts: Vec<String>,

    /// Keep the allocations in this context's cluster instead of the first one.
    #[arg(long, value_name = "NAME")]
    pub store_context: Option<String>,

    #[command(flatten)]
    pub alloc: AllocArgs,

    /// ID of this cluster when running in a pod without --kubeconfig.
    #[arg(
        long,
        env = "CLUSTER_ID",
        default_value = "Kubernetes",
        value_name = "ID"
    )]
    pub cluster_id: String,

    /// Only read ServiceEntry statuses (reporting drift), never write our VIPs into them.
    #[arg(long)]
    pub no_status_writes: bool,

    /// Leave this cluster's ServiceEntry statuses alone (repeatable): a remote cluster of a
    /// primary-remote mesh, whose istiod (the primary's) never reads them.
    #[arg(long = "status-skip-cluster", value_name = "ID")]
    pub status_skip_clusters: Vec<String>,

    /// Ready once every cluster has synced, or after this long.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub sync_timeout: u64,

    /// Rescan the zones directory this often even without filesystem events.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    pub rescan_interval: u64,

    /// How far work that updates the served data steps back for queries: `low` (nice 10) or
    /// `idle` (SCHED_IDLE: a waking query thread never waits for an update thread; for a
    /// server in its own pod or systemd unit).
    #[arg(long, value_enum, default_value_t, value_name = "PRIORITY")]
    pub update_priority: crate::background::UpdatePriority,

    /// UDP sockets and threads serving queries [default: number of CPUs].
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,

    /// Serve /metrics (Prometheus), /healthz and /readyz over HTTP on this address.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,

    /// Text answered for `version.bind`, `version.server`, `hostname.bind` and `id.server` in
    /// class CH (TXT) [default: none; those queries get REFUSED, so nothing leaks].
    #[arg(long, value_name = "TEXT", value_parser = parse_identity)]
    pub identity: Option<String>,

    /// Log every answered query (client, name, type, rcode, source, time) at info level.
    /// `--query-log=false` turns off what a config file turned on.
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_value_t = false,
        default_missing_value = "true",
        hide_default_value = true,
        hide_possible_values = true,
        action = clap::ArgAction::Set
    )]
    pub query_log: bool,
}

impl ServerArgs {
    pub fn into_config(self) -> ServerConfig {
        let upstreams = if self.upstreams.is_empty() {
            system_upstreams(&self.resolv_conf).unwrap_or_else(|error| {
                warn!(path = %self.resolv_conf.display(), %error, "cannot read default upstreams");
                Vec::new()
            })
        } else {
            self.upstreams
        };
        let upstreams = without_self(upstreams, &self.listen);
        let ns_addresses = ns_addresses(self.ns_addresses, &self.listen);
        let workers = self
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        ServerConfig {
            force_state_file: self.state.is_some(),
            state: self
                .state
                .unwrap_or_else(|| default_state_path(&self.zones)),
            clusters: ClusterConfig {
                kubeconfigs: self.kubeconfigs,
                contexts: self.contexts,
                in_cluster_id: std::env::var_os("KUBERNETES_SERVICE_HOST").map(|_| self.cluster_id),
                store_context: self.store_context,
                namespace: self.alloc.namespace.clone(),
                sync_timeout: Duration::from_secs(self.sync_timeout),
                status: StatusSettings {
                    write: !self.no_status_writes,
                    skip: self.status_skip_clusters,
                },
            },
            policy: (self.alloc.policy()).expect("pools are checked when the arguments are parsed"),
            listen: self.listen,
            zones_dir: self.zones,
            zone: ZoneSettings {
                zones: self.zones_served,
                ttl: self.ttl,
                soa: SoaSettings {
                    mname: self.soa_mname,
                    rname: self.soa_rname,
                    refresh: self.soa_refresh,
                    retry: self.soa_retry,
                    expire: self.soa_expire,
                    minimum: self.soa_minimum,
                    ns_addresses,
                },
                reverse: self.alloc.pools.iter().map(|p| p.net()).collect(),
            },
            forward: ForwardConfig {
                upstreams,
                budget: Duration::from_millis(self.forward_timeout_ms.max(1)),
                cache_size: self.cache_size,
                cache_max_ttl: Duration::from_secs(self.cache_max_ttl),
                serve_stale: Duration::from_secs(self.serve_stale),
                allow_recursion: if self.allow_from.is_empty() {
                    default_allow_from()
                } else {
                    self.allow_from
                },
            },
            workers: workers.max(1),
            metrics: self.metrics,
            query_log: self.query_log,
            identity: self.identity,
            tls_listen: self.tls_listen,
            https_listen: self.https_listen,
            tls_files: match (self.tls_cert, self.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
                _ => None,
            },
            allow_transfer: if self.allow_transfer.is_empty() {
                crate::dns::client::loopback()
            } else {
                self.allow_transfer
            },
            notify: self.notify,
            transfer_keys: TsigKeys(self.transfer_keys.into_iter().flat_map(|f| f.0).collect()),
            rescan_every: Duration::from_secs(self.rescan_interval.max(1)),
            tcp: TcpLimits {
                connections: self.tcp_connections.max(1),
                per_client: self.tcp_per_client.max(1),
                idle: Duration::from_secs(self.tcp_idle_timeout.max(1)),
                lifetime: Duration::from_secs(self.tcp_lifetime.max(1)),
            },
            rate_limit: RateLimitConfig {
                per_second: self.rate_limit,
                slip: self.rate_limit_slip,
                ipv4_prefix: self.rate_limit_ipv4_prefix,
                ipv6_prefix: self.rate_limit_ipv6_prefix,
            },
        }
    }
}

/// Private and cluster-internal ranges: what pods, nodes and VMs of a mesh use.
fn default_allow_from() -> Vec<IpNet> {
    [
        "127.0.0.0/8",
        "::1/128",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "fc00::/7",
    ]
    .iter()
    .map(|n| n.parse().expect("valid CIDR"))
    .collect()
}

/// `<zones>.state.json`, beside the zones directory (so the directory watch never sees it).
pub fn default_state_path(zones: &Path) -> PathBuf {
    let mut name = zones.components().as_path().as_os_str().to_owned();
    name.push(".state.json");
    PathBuf::from(name)
}

fn parse_zone(s: &str) -> Result<Name, String> {
    let mut name = Name::from_ascii(s).map_err(|e| format!("{s:?} is not a DNS name: {e}"))?;
    name.set_fqdn(true);
    if name.is_root() {
        return Err("the root zone cannot be served".into());
    }
    Ok(name.to_lowercase())
}

/// The name server's addresses: as given, or the listen addresses when every one is loopback
/// (a server only this machine reaches). Otherwise there is no telling which address clients
/// use (NAT, a Service IP): say so.
fn ns_addresses(given: Vec<IpAddr>, listen: &[SocketAddr]) -> Vec<IpAddr> {
    if !given.is_empty() {
        return given;
    }
    if listen.iter().all(|a| a.ip().is_loopback()) {
        let mut ips: Vec<IpAddr> = listen.iter().map(SocketAddr::ip).collect();
        ips.sort();
        ips.dedup();
        return ips;
    }
    warn!(
        "the apex NS name has no address (no --ns-address): resolvers that prime the zone \
         (BIND type stub, unbound stub-prime) cannot find this server"
    );
    Vec::new()
}

/// `FILE`, or `ZONE=FILE` (a zone name holds no `/`, so a path with `=` in it still reads).
fn parse_key_file(arg: &str) -> Result<TsigKeys, String> {
    let (zone, path) = match arg.split_once('=') {
        Some((zone, path)) if !zone.contains('/') => {
            let name = Name::from_ascii(zone).map_err(|e| format!("zone {zone:?}: {e}"))?;
            (Some(lower_wire(&name).into_boxed_slice()), path)
        }
        _ => (None, arg),
    };
    let keys = tsig_keys::read_keys(Path::new(path))?;
    Ok(TsigKeys(
        (keys.into_iter())
            .map(|signer| TransferKey {
                signer,
                zone: zone.clone(),
            })
            .collect(),
    ))
}

/// One TXT string: at most 255 bytes.
fn parse_identity(s: &str) -> Result<String, String> {
    if s.len() > 255 {
        return Err(format!("{} bytes; at most 255 fit one TXT string", s.len()));
    }
    Ok(s.to_string())
}

/// `IP` (port 53) or `IP:PORT`.
pub fn parse_upstream(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| format!("{s:?} is not IP or IP:PORT"))
}

/// Logs to stderr, filtered by RUST_LOG (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for people: journald and `kubectl logs` get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_with_defaults() {
        let args = ServerArgs::try_parse_from([
            "globaldns",
            "--upstream",
            "10.96.0.10",
            "--upstream",
            "[::1]:5300",
            "--zone",
            "Global",
            "--zone",
            "mesh.example",
        ])
        .unwrap();
        assert_eq!(args.listen, ["127.0.0.1:5353".parse().unwrap()]);
        assert_eq!(
            args.upstreams,
            vec![
                "10.96.0.10:53".parse().unwrap(),
                "[::1]:5300".parse().unwrap()
            ]
        );
        let zones: Vec<String> = args.zones_served.iter().map(|z| z.to_ascii()).collect();
        assert_eq!(zones, ["global.", "mesh.example."]);
        assert!(ServerArgs::try_parse_from(["globaldns", "--upstream", "nope"]).is_err());
        assert!(ServerArgs::try_parse_from(["globaldns", "--pool", "240.0.0.0/40"]).is_err());
        assert_eq!(
            default_state_path(Path::new("zones/")),
            PathBuf::from("zones.state.json")
        );
        assert_eq!(
            default_state_path(Path::new("/etc/globaldns/zones")),
            PathBuf::from("/etc/globaldns/zones.state.json")
        );
        assert!(ServerArgs::try_parse_from(["globaldns", "--zone", "."]).is_err());
    }
}
