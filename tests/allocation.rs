//! VIPs for hosts without spec.addresses: the server and dnsctl sharing one state file.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use support::*;

const WITHIN: Duration = Duration::from_secs(5);

fn ips(server: &GlobalDns, name: &str, qtype: RecordType) -> Vec<String> {
    answer_ips(&query(server.addr, name, qtype, Proto::Udp))
}

fn zones_with(entries: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("entries.yaml"), entries).unwrap();
    dir
}

fn state_arg(path: &Path) -> String {
    path.to_str().unwrap().to_string()
}

#[test]
fn address_less_hosts_get_a_stored_vip_that_dnsctl_sees() {
    let zones = zones_with(
        &(service_entry("sleep", &["sleep.foo.global"], &[])
            + &service_entry("ext", &["api.example.com"], &[])),
    );
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let server = GlobalDns::start(zones.path(), &["--state", &state_arg(&state)]);
    let vip = ips(&server, "sleep.foo.global.", RecordType::A);
    assert_eq!(vip.len(), 1);
    assert!(
        vip[0].parse::<std::net::Ipv4Addr>().unwrap().octets()[0] >= 240,
        "{vip:?} in 240.0.0.0/4"
    );
    let (code, out, _) = dnsctl(&state, &["get", "sleep.foo.global"]);
    assert_eq!(code, 0);
    assert_eq!(out, format!("sleep.foo.global {} allocated\n", vip[0]));
    // Only names in our zones are allocated.
    let (code, _, err) = dnsctl(&state, &["get", "api.example.com"]);
    assert_eq!(code, 1, "{err}");
}

#[test]
fn dnsctl_pins_reach_the_running_server() {
    let zones = zones_with(&service_entry("sleep", &["sleep.foo.global"], &[]));
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    // Pinned before the host is declared: the server uses it from the start.
    assert_eq!(
        dnsctl(
            &state,
            &["allocate", "web.foo.global", "--ip", "240.0.0.99"]
        )
        .0,
        0
    );
    let server = GlobalDns::start(zones.path(), &["--state", &state_arg(&state)]);
    std::fs::write(
        zones.path().join("web.yaml"),
        service_entry("web", &["web.foo.global"], &[]),
    )
    .unwrap();
    assert!(eventually(WITHIN, || resolves_to(
        &server,
        "web.foo.global.",
        "240.0.0.99"
    )));
    // Moving a live host: the server follows within seconds.
    let (code, out, err) = dnsctl(
        &state,
        &[
            "allocate",
            "sleep.foo.global",
            "--ip",
            "240.0.0.77",
            "--force",
        ],
    );
    assert_eq!(
        (code, out.as_str()),
        (0, "sleep.foo.global 240.0.0.77\n"),
        "{err}"
    );
    assert!(eventually(WITHIN, || resolves_to(
        &server,
        "sleep.foo.global.",
        "240.0.0.77"
    )));
    // A conflicting pin is refused with a clear message and exit code 3.
    let (code, _, err) = dnsctl(
        &state,
        &["allocate", "other.foo.global", "--ip", "240.0.0.77"],
    );
    assert_eq!(code, 3);
    assert!(
        err.contains("240.0.0.77 is already allocated to sleep.foo.global"),
        "{err}"
    );
}

#[test]
fn restarts_and_kill_9_keep_every_vip() {
    let hosts: Vec<String> = (0..20).map(|i| format!("svc{i}.ns.global")).collect();
    let entries: String = hosts.iter().map(|h| service_entry(h, &[h], &[])).collect();
    let zones = zones_with(&entries);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let args = [
        "--state",
        &state_arg(&state),
        "--pool",
        "240.0.0.0/4",
        "--pool",
        "fd00:f1d0::/48",
    ];
    let answers = |server: &GlobalDns| -> Vec<(Vec<String>, Vec<String>)> {
        hosts
            .iter()
            .map(|h| {
                (
                    ips(server, &format!("{h}."), RecordType::A),
                    ips(server, &format!("{h}."), RecordType::AAAA),
                )
            })
            .collect()
    };
    let first = GlobalDns::start(zones.path(), &args);
    let before = answers(&first);
    assert!(
        before
            .iter()
            .all(|(a, aaaa)| a.len() == 1 && aaaa.len() == 1),
        "{before:?}"
    );
    let distinct: BTreeSet<&String> = before.iter().flat_map(|(a, b)| a.iter().chain(b)).collect();
    assert_eq!(distinct.len(), 40);
    drop(first); // SIGKILL
    let second = GlobalDns::start(zones.path(), &args);
    assert_eq!(answers(&second), before, "after kill -9");
    assert!(second.terminate().success());
    let third = GlobalDns::start(zones.path(), &args);
    assert_eq!(answers(&third), before, "after a clean restart");
}

#[test]
fn concurrent_dnsctl_writers_never_share_an_address() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let state = state.clone();
            std::thread::spawn(move || {
                for i in 0..100 {
                    let host = format!("w{w}-h{i}.global");
                    let (code, out, err) = dnsctl(&state, &["allocate", &host]);
                    assert_eq!(code, 0, "{err}");
                    assert!(out.starts_with(&host));
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let (code, json, _) = dnsctl(&state, &["list", "-o", "json"]);
    assert_eq!(code, 0);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(rows.len(), 300);
    let addresses: BTreeSet<&str> = rows
        .iter()
        .map(|r| r["address"].as_str().unwrap())
        .collect();
    assert_eq!(addresses.len(), 300, "300 distinct VIPs");
    assert!(rows.iter().all(|r| r["state"] == "pinned"));
    let (code, out, _) = dnsctl(&state, &["check"]);
    assert_eq!(
        (code, out.as_str()),
        (
            0,
            "ok: 300 hosts, 300 addresses, unique and inside the pools\n"
        )
    );
}

#[test]
fn three_batch_writers_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let children: Vec<_> = (0..3)
        .map(|w| {
            let list = dir.path().join(format!("hosts{w}.txt"));
            let text: String = (0..100)
                .map(|i| format!("b{w}-{i}.global  # writer {w}\n"))
                .collect();
            std::fs::write(&list, text).unwrap();
            std::process::Command::new(env!("CARGO_BIN_EXE_dnsctl"))
                .arg("--state")
                .arg(&state)
                .args(["allocate", "--from-file"])
                .arg(&list)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut printed = BTreeSet::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            printed.insert(line.split_whitespace().nth(1).unwrap().to_string());
        }
    }
    assert_eq!(printed.len(), 300);
    assert_eq!(dnsctl(&state, &["check"]).0, 0);
}

#[test]
fn corrupt_state_is_refused_and_never_overwritten() {
    let zones = zones_with(
        &(service_entry("sleep", &["sleep.foo.global"], &[])
            + &service_entry("fixed", &["fixed.global"], &["240.0.0.5"])),
    );
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    assert_eq!(dnsctl(&state, &["allocate", "a.global", "b.global"]).0, 0);
    let good = std::fs::read(&state).unwrap();
    let truncated = &good[..good.len() / 2];
    std::fs::write(&state, truncated).unwrap();

    let (code, _, err) = dnsctl(&state, &["allocate", "c.global"]);
    assert_eq!(code, 4);
    assert!(
        err.contains("state.json") && err.contains("refusing"),
        "{err}"
    );
    assert_eq!(dnsctl(&state, &["list"]).0, 4);

    let server = GlobalDns::start(zones.path(), &["--state", &state_arg(&state)]);
    // Explicit addresses keep resolving; the host whose VIP cannot be stored does not.
    assert_eq!(ips(&server, "fixed.global.", RecordType::A), ["240.0.0.5"]);
    let pending = query(server.addr, "sleep.foo.global.", RecordType::A, Proto::Udp);
    assert_eq!(pending.metadata.response_code, ResponseCode::ServFail);
    assert!(server.log_text().contains("refusing to use or overwrite"));
    assert_eq!(
        std::fs::read(&state).unwrap(),
        truncated,
        "never overwritten"
    );

    // Once an operator restores the file, the server allocates and answers.
    std::fs::write(&state, &good).unwrap();
    assert!(eventually(Duration::from_secs(8), || ips(
        &server,
        "sleep.foo.global.",
        RecordType::A
    )
    .len()
        == 1));
}

#[test]
fn vip_is_never_served_before_it_is_stored() {
    let zones = zones_with(&service_entry("sleep", &["sleep.foo.global"], &[]));
    let dir = tempfile::tempdir().unwrap();
    // The state file's directory cannot be created: a regular file is in the way.
    let blocker = dir.path().join("blocked");
    std::fs::write(&blocker, "").unwrap();
    let state = blocker.join("state.json");
    let server = GlobalDns::start(zones.path(), &["--state", &state_arg(&state)]);
    let reply = query(server.addr, "sleep.foo.global.", RecordType::A, Proto::Udp);
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert!(!reply.metadata.authoritative);
    std::fs::remove_file(&blocker).unwrap();
    assert!(eventually(Duration::from_secs(8), || ips(
        &server,
        "sleep.foo.global.",
        RecordType::A
    )
    .len()
        == 1));
    // The first write makes the file; later ones go to its journal.
    let journal = state.with_extension("json.journal");
    let stored = std::fs::read_to_string(&state).unwrap()
        + &std::fs::read_to_string(journal).unwrap_or_default();
    let served = ips(&server, "sleep.foo.global.", RecordType::A);
    assert!(
        stored.contains(&served[0]),
        "what is served is what is stored"
    );
}

#[test]
fn explicit_addresses_are_never_handed_out_twice() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let zones = zones_with(&service_entry("auto", &["auto.global"], &[]));
    let server = GlobalDns::start(zones.path(), &["--state", &state_arg(&state)]);
    let auto = ips(&server, "auto.global.", RecordType::A);
    // Another entry now claims that VIP explicitly: the allocated host moves, with a log line.
    std::fs::write(
        zones.path().join("claim.yaml"),
        service_entry("claim", &["claim.global"], &[&auto[0]]),
    )
    .unwrap();
    assert!(eventually(WITHIN, || ips(
        &server,
        "claim.global.",
        RecordType::A
    ) == auto));
    assert!(eventually(WITHIN, || {
        let now = ips(&server, "auto.global.", RecordType::A);
        now.len() == 1 && now != auto
    }));
    assert!(
        server
            .log_text()
            .contains("declared explicitly by another ServiceEntry")
    );
}

#[test]
fn dnsctl_reports_usage_and_hosts_lines() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    assert_eq!(
        dnsctl(
            &state,
            &["allocate", "a.global", "b.global", "--ip", "240.0.0.9"]
        )
        .0,
        2
    );
    assert_eq!(dnsctl(&state, &["allocate", "bad..name"]).0, 2);
    assert_eq!(
        dnsctl(&state, &["allocate", "x.global", "--ip", "10.0.0.1"]).0,
        3,
        "outside the pools"
    );
    dnsctl(&state, &["allocate", "vm.bar.global", "--ip", "240.0.0.9"]);
    let (_, hosts, _) = dnsctl(&state, &["hosts"]);
    assert!(
        hosts.lines().any(|l| l == "240.0.0.9 vm.bar.global"),
        "{hosts}"
    );
    let zones = repo_zones();
    let (code, with_entries, _) = dnsctl(&state, &["hosts", "--zones", zones.to_str().unwrap()]);
    assert_eq!(code, 0);
    for line in [
        "240.0.0.3 reviews.default.global",
        "127.255.0.3 httpbin.bar.global",
        "2001:2::4 ratings.prod.global",
        "# *.apps.global: a wildcard, not expressible here",
        "240.0.0.9 vm.bar.global",
    ] {
        assert!(
            with_entries.lines().any(|l| l == line),
            "{line} in\n{with_entries}"
        );
    }
    assert_eq!(dnsctl(&state, &["release", "vm.bar.global"]).0, 0);
    assert!(!dnsctl(&state, &["hosts"]).1.contains("vm.bar.global"));
    assert_eq!(dnsctl(&state, &["release", "never.global"]).0, 1);
    let (code, pools, _) = dnsctl(&state, &["pools"]);
    assert_eq!(code, 0);
    assert!(
        // 2^28 addresses in whole /24s, less Istio's 240.240.0.0/16.
        pools.contains("240.0.0.0/4") && pools.contains("266273280"),
        "{pools}"
    );
}

/// A FIFO or a device in place of the state file is refused at once (exit 4), never waited on
/// or read without end.
#[test]
fn dnsctl_refuses_a_state_file_that_is_not_a_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("state.json");
    mkfifo(&fifo);
    let zero = dir.path().join("zero.json");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    for state in [&fifo, &zero] {
        let started = std::time::Instant::now();
        let (code, _, err) = dnsctl(state, &["list"]);
        assert_eq!(code, 4, "{err}");
        assert!(err.contains("not a regular file"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

/// `dnsctl list | head -1` ends quietly when `head` closes the pipe, as any Unix filter does.
#[test]
fn dnsctl_ends_quietly_on_a_closed_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let hosts: Vec<String> = (0..20_000).map(|i| format!("h{i}.global")).collect();
    let list = dir.path().join("hosts.txt");
    std::fs::write(&list, hosts.join("\n")).unwrap();
    let (code, _, err) = dnsctl(&state, &["allocate", "--from-file", list.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let script = format!(
        "'{}' --state '{}' list | head -1",
        env!("CARGO_BIN_EXE_dnsctl"),
        state.display()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    assert!(stderr.is_empty(), "{stderr}");
}

/// `allocate --from-file` is all-or-nothing even when the list takes several transactions:
/// 20,000 hosts into a pool of about 16,000 addresses store none.
#[test]
fn allocate_from_file_stores_nothing_when_the_whole_list_cannot_be_allocated() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let list = dir.path().join("hosts.txt");
    let hosts: Vec<String> = (0..20_000).map(|i| format!("h{i}.global")).collect();
    std::fs::write(&list, hosts.join("\n")).unwrap();
    let args = [
        "--pool",
        "240.0.0.0/18",
        "allocate",
        "--from-file",
        list.to_str().unwrap(),
    ];
    let (code, out, err) = dnsctl(&state, &args);
    assert_eq!(code, 3, "{err}");
    assert!(out.is_empty() && err.contains("exhausted"), "{err}");
    let (_, listed, _) = dnsctl(&state, &["list", "-o", "json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap_or_default();
    assert!(rows.is_empty(), "nothing stored: {} rows", rows.len());
}
