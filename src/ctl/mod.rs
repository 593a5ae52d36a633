//! `dnsctl`: the operator's CLI over the allocator and its store.
//!
//! Exit codes are part of the interface: 0 success, 1 not found or `check` found problems,
//! 2 usage error, 3 allocation refused (conflict, exhaustion, outside the pools), 4 the store
//! could not be read or written.

mod output;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::alloc::{
    AllocError, AllocState, Allocator, DEFAULT_POOL, FileStore, Policy, Pool, Reserved, Store,
    StoreError, check, host_key_from_str, unix_now, usage,
};

/// Operate globaldns: allocate, pin, release and inspect the VIPs of `.global` hosts.
#[derive(Parser, Debug)]
#[command(name = "dnsctl", version, arg_required_else_help = true, after_help = EXIT_CODES)]
pub struct Cli {
    /// State file shared with the server (its --state).
    #[arg(
        long,
        global = true,
        env = "GLOBALDNS_STATE",
        default_value = "zones.state.json"
    )]
    pub state: PathBuf,

    /// VIP pools, in order (the server's --pool).
    #[arg(long = "pool", global = true, default_value = DEFAULT_POOL, value_name = "CIDR")]
    pub pools: Vec<Pool>,

    /// Grace period of released VIPs, in seconds (the server's --grace).
    #[arg(long, global = true, default_value_t = 86400, value_name = "SECONDS")]
    pub grace: u64,

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
        /// With --ip: move the host to it even if it already has another address.
        #[arg(long, requires = "ip")]
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
    /// Print /etc/hosts lines, for VMs that do not use globaldns as their resolver.
    Hosts,
    /// Verify that addresses are unique and inside the pools.
    Check,
    /// Show how full each pool is.
    Pools,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// A failure with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
enum CtlError {
    #[error("{0}")]
    Usage(String),
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
            CtlError::Store(_) => 4,
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

async fn execute(cli: Cli) -> Result<String, CtlError> {
    let policy = Arc::new(Policy {
        pools: cli.pools,
        grace: Duration::from_secs(cli.grace),
    });
    let store = FileStore::new(&cli.state);
    match cli.command {
        Command::Allocate {
            hosts,
            ip,
            force,
            from_file,
        } => {
            let mut hosts = hosts;
            if let Some(file) = from_file {
                let text = std::fs::read_to_string(&file)
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
            let (p, h) = (policy.clone(), hosts.clone());
            let state = store
                .update(Box::new(move |state: &mut AllocState| {
                    let reserved = Reserved::new();
                    let mut alloc = Allocator::new(&p, state, &reserved, unix_now());
                    for host in &h {
                        match ip {
                            Some(ip) => alloc.pin(host, ip, force)?,
                            None => {
                                alloc.allocate_pinned(host)?;
                            }
                        }
                    }
                    Ok(alloc.changed())
                }))
                .await?;
            Ok(output::host_lines(&state, &hosts))
        }
        Command::Release { hosts } => {
            let hosts = normalize(&hosts)?;
            let (p, h) = (policy.clone(), hosts.clone());
            store
                .update(Box::new(move |state: &mut AllocState| {
                    let reserved = Reserved::new();
                    let mut alloc = Allocator::new(&p, state, &reserved, unix_now());
                    for host in &h {
                        alloc.release(host)?;
                    }
                    Ok(alloc.changed())
                }))
                .await?;
            Ok(hosts.iter().map(|h| format!("{h} released\n")).collect())
        }
        Command::Get { host } => {
            let host = normalize(&[host])?.remove(0);
            let state = store.load().await?;
            match state.records.get(&host) {
                Some(record) => Ok(output::get(&host, record)),
                None => Err(CtlError::NotFound(format!("{host} has no allocation"))),
            }
        }
        Command::List { output } => Ok(output::list(&store.load().await?, output)),
        Command::Hosts => Ok(output::etc_hosts(&store.load().await?, &cli.state)),
        Command::Check => {
            let state = store.load().await?;
            let problems = check(&policy, &state);
            if problems.is_empty() {
                let addresses: usize = state.records.values().map(|r| r.addresses.len()).sum();
                Ok(format!(
                    "ok: {} hosts, {addresses} addresses, unique and inside the pools\n",
                    state.records.len()
                ))
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
