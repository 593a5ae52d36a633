//! What operators see: /metrics counting real queries, /healthz, and /readyz waiting for the
//! clusters to sync.

mod support;

use std::time::Duration;

use hickory_proto::rr::RecordType;
use support::apiserver::{ApiServer, kubeconfig};
use support::*;

const A_NOERROR_UDP: &str = r#"globaldns_queries_total{qtype="A",rcode="NOERROR",protocol="udp"}"#;

#[test]
fn metrics_count_queries_and_describe_the_table() {
    let server = GlobalDns::start(&repo_zones(), &["--metrics", "127.0.0.1:0"]);
    let http = server.metrics.expect("metrics address on stdout");
    assert_eq!(http_get(http, "/healthz").0, 200);
    assert_eq!(
        http_get(http, "/readyz").0,
        200,
        "no clusters: ready at once"
    );

    let (status, before) = http_get(http, "/metrics");
    assert_eq!(status, 200);
    assert!(before.ends_with("# EOF\n"), "OpenMetrics text: {before}");
    assert_eq!(sample(&before, r#"globaldns_names"#), 6.0, "{before}");
    assert_eq!(
        sample(&before, r#"globaldns_vip_pool_used{pool="240.0.0.0/4"}"#),
        1.0
    );
    assert_eq!(sample(&before, "globaldns_store_up"), 1.0);

    for _ in 0..5 {
        assert!(resolves_to(&server, "reviews.default.global", "240.0.0.3"));
    }
    let nx = query(
        server.addr,
        "nope.default.global",
        RecordType::AAAA,
        Proto::Tcp,
    );
    assert_eq!(nx.metadata.response_code.low(), 3);

    let (_, after) = http_get(http, "/metrics");
    let counted = sample(&after, A_NOERROR_UDP) - sample(&before, A_NOERROR_UDP);
    assert_eq!(counted, 5.0, "{after}");
    assert_eq!(
        sample(
            &after,
            r#"globaldns_queries_total{qtype="AAAA",rcode="NXDOMAIN",protocol="tcp"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &after,
            r#"globaldns_query_duration_seconds_count{source="local"}"#
        ),
        sample(
            &before,
            r#"globaldns_query_duration_seconds_count{source="local"}"#
        ) + 6.0
    );
    assert_eq!(http_get(http, "/nothing").0, 404);
}

#[test]
fn query_log_names_each_query_when_asked() {
    let quiet = GlobalDns::start(&repo_zones(), &[]);
    assert!(resolves_to(&quiet, "reviews.default.global", "240.0.0.3"));
    let logged = GlobalDns::start(&repo_zones(), &["--query-log"]);
    assert!(resolves_to(&logged, "Reviews.Default.Global", "240.0.0.3"));
    let line_of = |server: &GlobalDns| {
        server
            .log_text()
            .lines()
            .find(|l| l.contains("globaldns::query"))
            .map(str::to_string)
    };
    assert!(eventually(TIMEOUT, || line_of(&logged).is_some()));
    let line = line_of(&logged).unwrap();
    assert!(line.contains("Reviews.Default.Global."), "{line}");
    assert!(line.contains("rcode=0"), "{line}");
    assert_eq!(line_of(&quiet), None, "off by default");
    assert!(
        !logged.log_text().contains('\u{1b}'),
        "no colour codes in a log file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readyz_turns_ready_once_the_cluster_has_synced() {
    let sim = ApiServer::start().await;
    // Every API call of the watcher (discovery, list) takes this long.
    sim.set_latency(Duration::from_millis(1500));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kubeconfig");
    std::fs::write(&config, kubeconfig(&[("c1", sim.addr)], "c1")).unwrap();
    let zones = dir.path().join("zones");
    std::fs::create_dir_all(&zones).unwrap();
    let state = dir.path().join("state.json");
    let server = tokio::task::spawn_blocking(move || {
        GlobalDns::start(
            &zones,
            &[
                "--kubeconfig",
                config.to_str().unwrap(),
                "--state",
                state.to_str().unwrap(),
                "--metrics",
                "127.0.0.1:0",
                "--sync-timeout",
                "60",
            ],
        )
    })
    .await
    .unwrap();
    let http = server.metrics.unwrap();
    let synced = r#"globaldns_cluster_synced{cluster="c1"}"#;
    tokio::task::spawn_blocking(move || {
        let (status, body) = http_get(http, "/readyz");
        assert_eq!(status, 503, "ready before the cluster listed: {body}");
        assert_eq!(sample(&http_get(http, "/metrics").1, synced), 0.0);
        assert!(
            eventually(Duration::from_secs(30), || http_get(http, "/readyz").0
                == 200),
            "{}",
            server.log_text()
        );
        assert_eq!(sample(&http_get(http, "/metrics").1, synced), 1.0);
    })
    .await
    .unwrap();
}

/// Idle connections to the metrics port cannot pile up: at most 64 are accepted at once, each is
/// closed 10 s after it was accepted, and DNS keeps being served meanwhile.
#[test]
fn idle_metrics_connections_are_capped_and_closed() {
    use std::io::Read;
    let server = GlobalDns::start(&repo_zones(), &["--metrics", "127.0.0.1:0"]);
    let http = server.metrics.unwrap();
    assert_eq!(http_get(http, "/healthz").0, 200);
    let before = server.open_fds();
    let idle: Vec<std::net::TcpStream> = (0..300)
        .map(|_| std::net::TcpStream::connect(http).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let during = server.open_fds();
    assert!(
        during <= before + 64,
        "{before} fds before, {during} with 300 idle connections"
    );
    assert!(resolves_to(&server, "reviews.default.global.", "240.0.0.3"));
    let tcp = query(
        server.addr,
        "reviews.default.global.",
        RecordType::A,
        Proto::Tcp,
    );
    assert_eq!(answer_ips(&tcp), ["240.0.0.3"]);
    // The first ones accepted are closed by the server after their 10 s.
    let mut first = idle.into_iter().next().unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let closed = matches!(first.read(&mut buf), Ok(0) | Err(_));
    assert!(
        closed && started.elapsed() < Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );
}

/// The file descriptor soft limit is raised to the hard limit at start, and logged.
#[test]
fn the_file_descriptor_limit_is_raised_to_the_hard_limit() {
    let hard = std::process::Command::new("sh")
        .args(["-c", "ulimit -Hn"])
        .output()
        .unwrap();
    let hard = String::from_utf8_lossy(&hard.stdout).trim().to_string();
    let server = GlobalDns::start_wrapped(&["prlimit", "--nofile=256:"], &repo_zones(), &[]);
    let log = server.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("file descriptors"))
        .unwrap();
    assert!(
        line.contains(&format!("limit={hard}")) && line.contains("was=256"),
        "{line}"
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid())).unwrap();
    let open = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        open.split_whitespace().nth(3),
        Some(hard.as_str()),
        "{open}"
    );
}

/// Each thread's name, nice value and scheduling policy, from `/proc`.
fn threads(pid: u32) -> Vec<(String, i64, u32)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    (tasks.flatten())
        .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
        .map(|stat| {
            let (head, tail) = stat.rsplit_once(')').unwrap();
            let name = head.split_once('(').unwrap().1.to_string();
            // Fields from the third on: nice is the 19th, the policy the 41st.
            let fields: Vec<&str> = tail.split_whitespace().collect();
            (
                name,
                fields[16].parse().unwrap(),
                fields[38].parse().unwrap(),
            )
        })
        .collect()
}

/// Update work (here the rebuild threads) steps back for queries: niced by default, SCHED_IDLE
/// when asked; the threads answering queries keep the normal priority either way.
#[test]
fn update_threads_step_back_for_queries_as_configured() {
    const SCHED_IDLE: u32 = 5;
    for (args, nice, policy) in [
        (&[][..], 10, 0),
        (&["--update-priority", "idle"][..], 0, SCHED_IDLE),
    ] {
        // The harness gives it two workers.
        let server = GlobalDns::start(&repo_zones(), args);
        let threads = threads(server.pid());
        let rebuild: Vec<_> = (threads.iter())
            .filter(|(name, ..)| name.starts_with("rebuild-"))
            .collect();
        assert!(!rebuild.is_empty(), "{threads:?}");
        for (name, n, p) in rebuild {
            assert_eq!((*n, *p), (nice, policy), "{name} with {args:?}");
        }
        // Tokio's two workers and its blocking threads (which take update work) share a name.
        let tokio: Vec<_> = (threads.iter())
            .filter(|(name, ..)| name.starts_with("tokio-"))
            .map(|(_, n, p)| (*n, *p))
            .collect();
        let normal = tokio.iter().filter(|t| **t == (0, 0)).count();
        assert!(normal >= 2, "the query workers: {threads:?}");
        assert_eq!(
            normal + tokio.iter().filter(|t| **t == (nice, policy)).count(),
            tokio.len(),
            "{threads:?}"
        );
    }
}

/// The first table is built from the declarations as they are once the store has been read.
/// Taken before, while the clusters were still listing, and judged complete after a store read
/// that outlasted the sync timeout, they would lack every host: each would be released in the
/// store, unanswered, and taken back on the next publish. So a restart against a slow store
/// writes nothing and keeps answering the same VIP.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_slower_than_the_sync_timeout_releases_nothing_at_start() {
    use ::kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
    let (entries, store) = (ApiServer::start().await, ApiServer::start().await);
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("networking.istio.io", "v1", "ServiceEntry"),
        "serviceentries",
    );
    let mut entry = DynamicObject::new("slow", &resource);
    entry.data = serde_json::json!({"spec": {"hosts": ["slow.default.global"]}});
    Api::<DynamicObject>::namespaced_with(entries.client().await, "default", &resource)
        .create(&PostParams::default(), &entry)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kubeconfig");
    let clusters = [("entries", entries.addr), ("store", store.addr)];
    std::fs::write(&config, kubeconfig(&clusters, "entries")).unwrap();
    let zones = dir.path().join("zones");
    std::fs::create_dir_all(&zones).unwrap();
    let start = move || {
        GlobalDns::start(
            &zones,
            &[
                "--kubeconfig",
                config.to_str().unwrap(),
                "--store-context",
                "store",
                "--namespace",
                "istio-system",
                "--sync-timeout",
                "1",
                "--no-status-writes",
            ],
        )
    };
    let name = "slow.default.global.";
    let first = tokio::task::spawn_blocking(start.clone()).await.unwrap();
    let vip = tokio::task::spawn_blocking(move || {
        assert!(
            eventually(Duration::from_secs(10), || a_ips(&first, name).len() == 1),
            "{}",
            first.log_text()
        );
        a_ips(&first, name).remove(0)
    })
    .await
    .unwrap();

    let writes = store.writes();
    // Longer than the sync timeout, and than the other cluster takes to list.
    store.set_latency(Duration::from_millis(1500));
    let again = tokio::task::spawn_blocking(start).await.unwrap();
    let again = tokio::task::spawn_blocking(move || {
        assert!(
            eventually(Duration::from_secs(30), || a_ips(&again, name)
                == [vip.clone()]),
            "{}",
            again.log_text()
        );
        std::thread::sleep(Duration::from_secs(2));
        again
    })
    .await
    .unwrap();
    assert_eq!(store.writes(), writes, "{}", again.log_text());
    assert!(
        !again.log_text().contains("hosts=0"),
        "{}",
        again.log_text()
    );
}
