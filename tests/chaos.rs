//! Chaos on real clusters while clients keep asking: the primary's API server restarted and
//! stalled, a remote cluster flapping (its secret removed and added, its API server stopped),
//! and three writers (two replicas and an operator's `dnsctl`) allocating into the same
//! ConfigMaps at once. Every answer given meanwhile must be the VIP stored for that host in the
//! end (never another host's, never one that later moved), a host declared while the store is
//! unreachable is not answered until it is stored, and nothing the primary declares is lost.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::kube::{Cluster, globaldns, kubeconfig, remote_secret, service_entry_yaml};
use support::*;

const NS: &str = "chaos-dns";
const SECRET: &str = "istio-remote-secret-b";

/// ServiceEntries in `cluster`, one per host, all applied in one `kubectl apply`.
fn declare(cluster: &Cluster, prefix: &str, hosts: &[String]) {
    let manifest: Vec<String> = hosts
        .iter()
        .map(|h| {
            let name = format!("{prefix}-{}", h.split('.').next().unwrap());
            service_entry_yaml("v1", "chaos", &name, &[h], &[])
        })
        .collect();
    cluster.apply(&manifest.join("---\n"));
}

fn hosts(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}.chaos.global")).collect()
}

/// Every answer one replica gave: (host, addresses), in order.
type Answers = Arc<Mutex<Vec<(String, Vec<String>)>>>;

/// Asks `server` for every name of `names` in turn until `stop`, recording each answer. A
/// query that gets no reply fails the test (queries never wait on updates).
fn keep_asking(
    server: &GlobalDns,
    names: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
) -> (std::thread::JoinHandle<()>, Answers) {
    let answers: Answers = Default::default();
    let addr = server.addr;
    let record = answers.clone();
    let handle = std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let batch = names.lock().unwrap().clone();
            for host in batch {
                let reply = query(
                    addr,
                    &format!("{host}."),
                    hickory_proto::rr::RecordType::A,
                    Proto::Udp,
                );
                record.lock().unwrap().push((host, answer_ips(&reply)));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    (handle, answers)
}

/// `dnsctl` on the primary, cut off after 30 s; its exit code and stdout.
fn dnsctl(kubeconfig: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new("timeout")
        .arg("30")
        .arg(env!("CARGO_BIN_EXE_dnsctl"))
        .args(["--kubeconfig", kubeconfig.to_str().unwrap(), "-n", NS])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Allocates batches of pinned hosts with `dnsctl` until `stop`; what it reported allocated.
fn operator_storm(
    kubeconfig: PathBuf,
    dir: PathBuf,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<BTreeMap<String, String>> {
    std::thread::spawn(move || {
        let mut allocated = BTreeMap::new();
        let mut batch = 0;
        while !stop.load(Ordering::Relaxed) {
            let file = dir.join(format!("batch{batch}.txt"));
            let names: String = (0..5)
                .map(|i| format!("op{batch}-{i}.chaos.global\n"))
                .collect();
            std::fs::write(&file, names).unwrap();
            let (code, out) = dnsctl(
                &kubeconfig,
                &["allocate", "--from-file", file.to_str().unwrap()],
            );
            if code == Some(0) {
                for line in out.lines() {
                    let mut words = line.split(' ');
                    let (host, vip) = (words.next().unwrap(), words.next().unwrap());
                    allocated.insert(host.to_string(), vip.to_string());
                }
            }
            batch += 1;
        }
        allocated
    })
}

fn wait_all_answered(servers: &[&GlobalDns], names: &[String], within: Duration) -> bool {
    eventually(within, || {
        servers
            .iter()
            .all(|s| names.iter().all(|h| a_ips(s, &format!("{h}.")).len() == 1))
    })
}

#[test]
fn answers_stay_true_through_restarts_stalls_flapping_and_a_write_storm() {
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(Cluster::start);
        let b = s.spawn(Cluster::start);
        (a.join().unwrap(), b.join().unwrap())
    });
    a.ensure_namespace(NS);
    a.ensure_namespace("chaos");
    b.ensure_namespace("chaos");
    let only_a = hosts("a", 0..20);
    let both = hosts("ab", 0..10);
    let only_b = hosts("b", 0..20);
    declare(&a, "a", &only_a);
    declare(&a, "ab", &both);
    declare(&b, "ab", &both);
    declare(&b, "b", &only_b);
    let secret = remote_secret(SECRET, &[("cluster-b", b.kubeconfig("b"))]);
    let add_b = || {
        let out = a.kubectl_input(&["apply", "-n", NS, "-f", "-"], Some(&secret));
        assert!(out.status.success(), "{out:?}");
    };
    add_b();

    let dir = tempfile::tempdir().unwrap();
    let kc_text = kubeconfig(&[("a", &a)], "a");
    let kc = dir.path().join("kubeconfig");
    std::fs::write(&kc, &kc_text).unwrap();
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let args = ["--namespace", NS, "--sync-timeout", "10"];
    let (first, second) = std::thread::scope(|s| {
        let x = s.spawn(|| globaldns(one.path(), &kc_text, &args));
        let y = s.spawn(|| globaldns(two.path(), &kc_text, &args));
        (x.join().unwrap(), y.join().unwrap())
    });
    let replicas = [&first, &second];
    let initial: Vec<String> = [&only_a[..], &both, &only_b].concat();
    assert!(
        wait_all_answered(&replicas, &initial, Duration::from_secs(30)),
        "every host answered before the chaos starts: {}",
        first.log_text()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let names = Arc::new(Mutex::new(initial.clone()));
    let askers: Vec<_> = replicas
        .iter()
        .map(|r| keep_asking(r, names.clone(), stop.clone()))
        .collect();
    let storm = operator_storm(kc.clone(), dir.path().to_path_buf(), stop.clone());
    let more = |range| {
        let new = hosts("late", range);
        declare(&a, "late", &new);
        names.lock().unwrap().extend(new);
    };
    let flap_b = |times| {
        for _ in 0..times {
            a.delete("secret", NS, SECRET);
            std::thread::sleep(Duration::from_millis(1500));
            add_b();
            std::thread::sleep(Duration::from_millis(1500));
        }
    };
    let started = Instant::now();

    more(0..5);
    flap_b(2);

    // The primary's API server down: the store is unreachable, so a host declared meanwhile
    // (in the remote cluster) has no stored VIP and must not be answered.
    a.stop_apiserver();
    let outage = hosts("outage", 0..5);
    declare(&b, "outage", &outage);
    names.lock().unwrap().extend(outage.iter().cloned());
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        for r in replicas {
            for h in &outage {
                assert!(
                    a_ips(r, &format!("{h}.")).is_empty(),
                    "{h} answered while the store was unreachable"
                );
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    a.start_apiserver();

    more(5..10);
    // A stall: connections stay open, nothing answers.
    a.freeze_apiserver(true);
    std::thread::sleep(Duration::from_secs(4));
    a.freeze_apiserver(false);

    b.stop_apiserver();
    std::thread::sleep(Duration::from_secs(3));
    b.start_apiserver();
    more(10..20);
    flap_b(1);
    let chaos = started.elapsed();

    let late = hosts("late", 0..20);
    let everything: Vec<String> = [&initial[..], &late, &outage].concat();
    assert!(
        wait_all_answered(&replicas, &everything, Duration::from_secs(60)),
        "every declared host answered after the chaos: {}",
        first.log_text()
    );
    stop.store(true, Ordering::Relaxed);
    let answers: Vec<_> = askers
        .into_iter()
        .map(|(handle, answers)| {
            handle.join().expect("every query answered");
            Arc::try_unwrap(answers).unwrap().into_inner().unwrap()
        })
        .collect();
    let operator = storm.join().unwrap();

    // The store in the end: one VIP per host, none shared.
    let (code, listed) = dnsctl(&kc, &["list", "-o", "json"]);
    assert_eq!(code, Some(0), "{listed}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    let mut stored = BTreeMap::new();
    for row in &rows {
        let host = row["host"].as_str().unwrap().to_string();
        let address = row["address"].as_str().unwrap().to_string();
        assert!(stored.insert(host, address).is_none(), "one VIP per host");
    }
    let distinct: BTreeSet<&String> = stored.values().collect();
    assert_eq!(distinct.len(), stored.len(), "no VIP shared: {stored:?}");
    let (code, check) = dnsctl(&kc, &["check"]);
    assert_eq!(code, Some(0), "dnsctl check: {check}");

    // Everything dnsctl reported allocated is stored as it said.
    assert!(!operator.is_empty(), "the operator allocated something");
    for (host, vip) in &operator {
        assert_eq!(stored.get(host), Some(vip), "{host} as dnsctl reported it");
    }

    // Every answer given during the chaos is the VIP stored for that host.
    let never_lost: BTreeSet<&String> = only_a.iter().chain(&both).collect();
    let mut counted = 0;
    for (replica, answers) in answers.iter().enumerate() {
        let mut seen = BTreeSet::new();
        for (host, ips) in answers {
            match ips.as_slice() {
                [] => assert!(
                    !(never_lost.contains(host) && seen.contains(host)),
                    "replica {replica}: {host}, declared by the primary, vanished"
                ),
                [ip] => {
                    assert_eq!(Some(ip), stored.get(host), "replica {replica}: {host}");
                    seen.insert(host.clone());
                }
                more => panic!("replica {replica}: {host} answered {more:?}"),
            }
        }
        counted += answers.len();
    }
    println!(
        "{} s of chaos: {counted} answers checked against {} stored VIPs ({} by dnsctl in {} batches)",
        chaos.as_secs(),
        stored.len(),
        operator.len(),
        operator.len() / 5
    );
}
