//! `dnsctl`: the operator's CLI over the allocator and its store.
//!
//! Exit codes are part of the interface: 0 success, 1 not found or `check` found problems,
//! 2 usage error, 3 allocation refused (conflict, exhaustion, outside the pools), 4 the store
//! could not be read or written.

mod output;
mod probe;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};

use crate::alloc::{
    AllocError, Allocator, ConfigMapStore, FileStore, Reserved, Store, StoreError, Unavailable,
    check, host_key, host_key_from_str, operate, unix_now, usage,
};
use crate::cluster::one_line;
use crate::config::AllocArgs;
use crate::source::Declaration;
use crate::source::kube::{clusters_in, list_cluster, owner_of, remote_secrets};
use crate::status::{drifts, held};

/// Operate globaldns: allocate, pin, release and inspect the VIPs of `.global` hosts.
#[derive(Parser, Debug)]
#[command(name = "dnsctl", version, arg_required_else_help = true, after_help = EXIT_CODES)]
pub struct Cli {
    /// Use this state file (the server's --state) instead of a cluster.
    #[arg(long, global = true, env = "GLOBALDNS_STATE", value_name = "PATH", conflicts_with_all = ["kubeconfig", "context"])]
    pub state: Option<PathBuf>,

    /// Kubeconfig of the cluster holding the allocation ConfigMaps
    /// [default: KUBECONFIG, then ~/.kube/config, then in-cluster].
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// Kubeconfig context to use.
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,

    /// The server's allocation flags: give dnsctl the values the server runs with.
    #[command(flatten)]
    pub alloc: AllocArgs,

    #[command(subcommand)]
    pub command: Command,
}

const EXIT_CODES: &str = "Exit codes: 0 ok, 1 not found or problems found, 2 usage, \
3 allocation refused (conflict, exhausted pool, outside the pools), 4 state file unreadable or unwritable.";

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Give hosts a VIP, or pin one with --ip; prints `HOST ADDRESS` lines. Idempotent.
    Allocate {
        hosts: Vec<String>,
        /// Pin this address (one host only).
        #[arg(long)]
        ip: Option<IpAddr>,
        /// With --ip: move the host to it even if it already has another address. Without:
        /// move the host off a VIP inside an --istio-range, to a new one from the pools.
        #[arg(long)]
        force: bool,
        /// Read more hosts from a file, one per line (`#` starts a comment).
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
    },
    /// Release hosts: their VIPs stay reserved for the grace period, then may be reused.
    Release {
        #[arg(required = true)]
        hosts: Vec<String>,
    },
    /// Print a host's addresses and state.
    Get { host: String },
    /// List every allocation.
    List {
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Print /etc/hosts lines, for VMs that do not use globaldns as their resolver: allocated
    /// VIPs, plus the explicit addresses of ServiceEntries in the cluster (or, with --state,
    /// in --zones).
    Hosts {
        /// Also read ServiceEntry manifests from this directory.
        #[arg(long, value_name = "DIR")]
        zones: Option<std::path::PathBuf>,
        /// Only hosts under this zone.
        #[arg(long, default_value = "global", value_name = "NAME")]
        zone: hickory_proto::rr::Name,
    },
    /// Verify that addresses are unique, inside the pools and outside Istio's ranges; with a
    /// cluster, that every cluster's ServiceEntry statuses hold the stored VIPs; with --server,
    /// that each DNS server answers them.
    Check {
        /// A DNS server to ask for every allocated host (repeatable; port 53 by default).
        #[arg(long = "server", value_name = "IP[:PORT]", value_parser = crate::config::parse_upstream)]
        servers: Vec<std::net::SocketAddr>,
        /// Also print, for each allocated host, what the store, every cluster's status and
        /// every --server hold for it.
        #[arg(long)]
        hosts: bool,
    },
    /// Show how full each pool is.
    Pools,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// Hosts per transaction for `allocate --from-file`.
const BATCH: usize = 10_000;

/// A failure with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
enum CtlError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Problems(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl CtlError {
    fn code(&self) -> u8 {
        match self {
            CtlError::NotFound(_) | CtlError::Problems(_) => 1,
            CtlError::Usage(_) => 2,
            CtlError::Store(StoreError::Alloc(AllocError::NotFound(_))) => 1,
            CtlError::Store(StoreError::Alloc(_)) => 3,
            CtlError::Store(_) | CtlError::Cluster(_) => 4,
        }
    }
}

pub fn run(cli: Cli) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let result = match runtime {
        Ok(rt) => rt.block_on(execute(cli)),
        Err(e) => Err(CtlError::Usage(format!("cannot start: {e}"))),
    };
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dnsctl: {e}");
            ExitCode::from(e.code())
        }
    }
}

/// The allocation store, and the cluster client when it lives in a cluster.
async fn open_store(cli: &Cli) -> Result<(Box<dyn Store>, Option<kube::Client>), CtlError> {
    Ok(match &cli.state {
        Some(path) => (Box::new(FileStore::new(path)), None),
        None => {
            let client =
                crate::cluster::connect(cli.kubeconfig.as_deref(), cli.context.as_deref()).await?;
            let store = ConfigMapStore::new(client.clone(), &cli.alloc.namespace);
            (Box::new(store), Some(client))
        }
    })
}

/// The ServiceEntries of the remote clusters, found as the server finds them: through the
/// remote secrets in `namespace`. A cluster that cannot be read is named on stderr and left out.
async fn remote_declarations(client: kube::Client, namespace: &str) -> Vec<Declaration> {
    let secrets = match remote_secrets(client, namespace).await {
        Ok(secrets) => secrets,
        Err(e) => {
            eprintln!(
                "dnsctl: cannot list remote secrets in {namespace} ({}); remote clusters left out",
                one_line(&e)
            );
            return Vec::new();
        }
    };
    let mut declared = Vec::new();
    for secret in &secrets {
        let owner = owner_of(namespace, secret);
        for remote in clusters_in(&owner, secret).await {
            let listed = match remote.client {
                Ok(client) => list_cluster(&remote.id, client).await,
                Err(e) => Err(e),
            };
            match listed {
                Ok(found) => declared.extend(found),
                Err(e) => eprintln!(
                    "dnsctl: {owner} key {}: {e}; its ServiceEntries are left out",
                    remote.id
                ),
            }
        }
    }
    declared
}

fn state_location(cli: &Cli) -> String {
    match &cli.state {
        Some(path) => path.display().to_string(),
        None => format!("ConfigMaps in namespace {}", cli.alloc.namespace),
    }
}

async fn execute(cli: Cli) -> Result<String, CtlError> {
    let policy = Arc::new((cli.alloc.policy()).map_err(|e| CtlError::Usage(e.to_string()))?);
    let (store, client) = open_store(&cli).await?;
    match cli.command {
        Command::Allocate {
            ref hosts,
            ip,
            force,
            ref from_file,
        } => {
            let mut hosts = hosts.clone();
            if let Some(file) = from_file {
                let text = std::fs::read_to_string(file)
                    .map_err(|e| CtlError::Usage(format!("{}: {e}", file.display())))?;
                hosts.extend(host_lines(&text));
            }
            let hosts = normalize(&hosts)?;
            if hosts.is_empty() {
                return Err(CtlError::Usage("no host given".into()));
            }
            if ip.is_some() && hosts.len() != 1 {
                return Err(CtlError::Usage("--ip pins one host at a time".into()));
            }
            if hosts.len() > BATCH {
                // Several transactions: the whole list is first tried against the stored state,
                // so a list that cannot be allocated whole (a full pool, say) stores nothing.
                let mut trial = store.load().await?;
                let none = Reserved::new();
                let mut alloc = Allocator::new(&policy, &mut trial, &none, unix_now());
                for host in &hosts {
                    alloc.allocate_pinned(host).map_err(StoreError::from)?;
                }
            }
            let mut out = String::new();
            for batch in hosts.chunks(BATCH) {
                let batch_hosts = batch.to_vec();
                let state = operate(store.as_ref(), policy.clone(), move |alloc| {
                    for host in &batch_hosts {
                        match (ip, force) {
                            (Some(ip), _) => alloc.pin(host, ip, force)?,
                            (None, true) => {
                                alloc.leave_istio_ranges(host)?;
                            }
                            (None, false) => {
                                alloc.allocate_pinned(host)?;
                            }
                        }
                    }
                    Ok(())
                })
                .await?;
                let missing: Vec<&String> = batch
                    .iter()
                    .filter(|h| !state.records.contains_key(*h))
                    .collect();
                if !missing.is_empty() {
                    return Err(CtlError::Store(StoreError::Unavailable {
                        store: store.describe(),
                        source: Unavailable::NotStored(missing.into_iter().cloned().collect()),
                    }));
                }
                out.push_str(&output::host_lines(&state, batch));
            }
            Ok(out)
        }
        Command::Release { ref hosts } => {
            let hosts = normalize(hosts)?;
            let to_release = hosts.clone();
            operate(store.as_ref(), policy.clone(), move |alloc| {
                to_release.iter().try_for_each(|host| alloc.release(host))
            })
            .await?;
            Ok(hosts.iter().map(|h| format!("{h} released\n")).collect())
        }
        Command::Get { ref host } => {
            let host = normalize(std::slice::from_ref(host))?.remove(0);
            let state = store.load().await?;
            match state.records.get(&host) {
                Some(record) => Ok(output::get(&host, record)),
                None => Err(CtlError::NotFound(format!("{host} has no allocation"))),
            }
        }
        Command::List { output } => Ok(output::list(&store.load().await?, output)),
        Command::Hosts {
            ref zones,
            ref zone,
        } => {
            let mut declared = Vec::new();
            if let Some(dir) = zones {
                let scan = crate::source::file::scan(dir);
                for (path, error) in &scan.failed {
                    eprintln!("dnsctl: skipping {}: {error}", path.display());
                }
                declared.extend(scan.iter().cloned());
            }
            if let Some(client) = client {
                let id = cli.context.as_deref().unwrap_or("cluster");
                let listed = list_cluster(id, client.clone()).await;
                declared.extend(listed?);
                declared.extend(remote_declarations(client, &cli.alloc.namespace).await);
            }
            let explicit = crate::catalog::Catalog::merge(&declared).hosts;
            let mut explicit: Vec<_> = explicit
                .into_iter()
                .filter(|h| zone.zone_of(&h.name))
                .collect();
            explicit.sort_by(|a, b| a.name.cmp(&b.name));
            let state = store.load().await?;
            Ok(output::etc_hosts(&state, &explicit, &state_location(&cli)))
        }
        Command::Check { ref servers, hosts } => {
            let state = store.load().await?;
            // Host → what each place holds for it, for --hosts.
            let mut view: BTreeMap<String, Vec<(String, Vec<IpAddr>)>> = BTreeMap::new();
            let mut problems = check(&policy, &state);
            if !state.unreadable.is_empty() {
                problems.push(format!(
                    "{} addresses are held in unreadable storage (see the errors above)",
                    state.unreadable.len()
                ));
            }
            let mut agreed = Vec::new();
            if let Some(client) = client {
                let id = cli.context.as_deref().unwrap_or("cluster");
                let mut declared = list_cluster(id, client.clone()).await?;
                declared.extend(remote_declarations(client, &cli.alloc.namespace).await);
                for (host, origin, status) in held(&declared, &state, &policy) {
                    view.entry(host_key(&host))
                        .or_default()
                        .push((origin, status));
                }
                problems.extend(drifts(&declared, &state, &policy).iter().map(|d| {
                    format!(
                        "{}: {} entry {}: status.addresses holds {:?}, the store {:?}",
                        host_key(&d.host),
                        d.origin,
                        d.entry,
                        d.status,
                        d.ours
                    )
                }));
                agreed.push("ServiceEntry statuses hold them");
            }
            // What a server answers: the hosts it serves from the store (pinned ones only
            // when declared, which only the server knows: left out).
            let served =
                (state.records.iter()).filter(|(_, r)| r.released_at.is_none() && !r.pinned);
            for server in servers {
                for (host, record) in served.clone() {
                    let mut stored = record.addresses.clone();
                    stored.sort();
                    match probe::addresses(*server, host).await {
                        Ok(answered) => {
                            if answered != stored {
                                problems.push(format!(
                                    "{host}: {server} answers {answered:?}, the store {stored:?}"
                                ));
                            }
                            let place = (server.to_string(), answered);
                            view.entry(host.clone()).or_default().push(place);
                        }
                        Err(error) => problems.push(format!("{host}: {server}: {error}")),
                    }
                }
            }
            if !servers.is_empty() {
                agreed.push("the servers answer them");
            }
            if hosts {
                // Printed whatever the verdict: it is what the verdict is about.
                print!("{}", output::host_view(&state, &view));
            }
            if problems.is_empty() {
                let addresses: usize = state.records.values().map(|r| r.addresses.len()).sum();
                let mut line = format!(
                    "ok: {} hosts, {addresses} addresses, unique and inside the pools",
                    state.records.len()
                );
                for what in agreed {
                    line.push_str("; ");
                    line.push_str(what);
                }
                line.push('\n');
                Ok(line)
            } else {
                Err(CtlError::Problems(problems.join("\n")))
            }
        }
        Command::Pools => Ok(output::pools(&usage(&policy, &store.load().await?))),
    }
}

fn host_lines(text: &str) -> impl Iterator<Item = String> + '_ {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
}

/// Record keys of `hosts`, first occurrence kept, in the order given.
fn normalize(hosts: &[String]) -> Result<Vec<String>, CtlError> {
    let mut seen = std::collections::HashSet::with_capacity(hosts.len());
    let mut out = Vec::with_capacity(hosts.len());
    for host in hosts {
        let key = host_key_from_str(host)
            .ok_or_else(|| CtlError::Usage(format!("{host:?} is not a valid host name")))?;
        if seen.insert(key.clone()) {
            out.push(key);
        }
    }
    Ok(out)
}
