//! What dnsctl prints.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

use super::Format;
use crate::alloc::{AllocState, PoolUsage, Record, RecordState};
use crate::catalog::HostEntry;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Row<'a> {
    host: &'a str,
    address: String,
    state: RecordState,
    #[serde(skip_serializing_if = "Option::is_none")]
    released_at: Option<u64>,
}

fn rows(state: &AllocState) -> Vec<Row<'_>> {
    state
        .records
        .iter()
        .flat_map(|(host, r)| {
            r.addresses.iter().map(move |a| Row {
                host,
                address: a.to_string(),
                state: r.state(),
                released_at: r.released_at,
            })
        })
        .collect()
}

fn state_name(state: RecordState) -> &'static str {
    match state {
        RecordState::Allocated => "allocated",
        RecordState::Pinned => "pinned",
        RecordState::Released => "released",
    }
}

/// `HOST ADDRESS` for each address of each host, in the order given.
pub fn host_lines(state: &AllocState, hosts: &[String]) -> String {
    let mut out = String::new();
    for host in hosts {
        for address in state.records.get(host).map_or(&[][..], |r| &r.addresses) {
            out.push_str(&format!("{host} {address}\n"));
        }
    }
    out
}

pub fn get(host: &str, record: &Record) -> String {
    let state = state_name(record.state());
    record
        .addresses
        .iter()
        .map(|a| format!("{host} {a} {state}\n"))
        .collect()
}

pub fn list(state: &AllocState, format: Format) -> String {
    let rows = rows(state);
    match format {
        Format::Json => serde_json::to_string_pretty(&rows).expect("rows serialize") + "\n",
        Format::Yaml => serde_saphyr::to_string(&rows).expect("rows serialize"),
        Format::Table => {
            let hw = rows.iter().map(|r| r.host.len()).max().unwrap_or(0).max(4);
            let aw = rows
                .iter()
                .map(|r| r.address.len())
                .max()
                .unwrap_or(0)
                .max(7);
            let mut out = format!("{:<hw$}  {:<aw$}  STATE\n", "HOST", "ADDRESS");
            for r in &rows {
                let state = state_name(r.state);
                out.push_str(&format!("{:<hw$}  {:<aw$}  {state}\n", r.host, r.address));
            }
            out
        }
    }
}

/// `/etc/hosts` lines, as Istio's VM guide adds for `.global` names: hosts declared with
/// addresses, then allocated VIPs (released ones left out). Wildcard hosts cannot be written
/// there; they are named in a comment.
pub fn etc_hosts(state: &AllocState, explicit: &[HostEntry], source: &str) -> String {
    let mut out = String::new();
    if !explicit.is_empty() {
        out.push_str("# .global hosts with addresses in their ServiceEntries (dnsctl hosts)\n");
    }
    for host in explicit {
        let name = host.name.to_ascii();
        let name = name.trim_end_matches('.');
        if host.name.is_wildcard() {
            out.push_str(&format!("# {name}: a wildcard, not expressible here\n"));
            continue;
        }
        for address in &host.addresses {
            out.push_str(&format!("{address} {name}\n"));
        }
    }
    out.push_str(&format!("# .global VIPs from {source} (dnsctl hosts)\n"));
    for r in rows(state)
        .iter()
        .filter(|r| r.state != RecordState::Released)
    {
        out.push_str(&format!("{} {}\n", r.address, r.host));
    }
    out
}

pub fn pools(usage: &[PoolUsage]) -> String {
    let mut out = format!(
        "{:<24}  {:>12}  {:>12}  {:>12}\n",
        "POOL", "CAPACITY", "USED", "FREE"
    );
    for u in usage {
        let free = u.capacity.saturating_sub(u.used);
        out.push_str(&format!(
            "{:<24}  {:>12}  {:>12}  {:>12}\n",
            u.pool, u.capacity, u.used, free
        ));
    }
    out
}

/// `dnsctl check --hosts`: one line per allocated, live host: what the store holds, then what
/// each other place (`cluster ID`'s status, a server) holds, `-` for nothing.
pub fn host_view(
    state: &AllocState,
    places: &BTreeMap<String, Vec<(String, Vec<IpAddr>)>>,
) -> String {
    let list = |addresses: &[IpAddr]| {
        if addresses.is_empty() {
            return "-".to_string();
        }
        let text: Vec<String> = addresses.iter().map(ToString::to_string).collect();
        text.join(",")
    };
    let mut out = String::new();
    for (host, record) in state
        .records
        .iter()
        .filter(|(_, r)| r.released_at.is_none())
    {
        let mut stored = record.addresses.clone();
        stored.sort();
        out.push_str(&format!("{host} store {}", list(&stored)));
        for (place, addresses) in places.get(host).into_iter().flatten() {
            out.push_str(&format!("; {place} {}", list(addresses)));
        }
        out.push('\n');
    }
    out
}
