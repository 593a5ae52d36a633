//! The API simulator checked against documented Kubernetes API behaviour, through kube-rs.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use support::apiserver::ApiServer;

fn cm(name: &str, data: &[(&str, &str)], labels: &[(&str, &str)]) -> ConfigMap {
    let mut c = ConfigMap::default();
    c.metadata.name = Some(name.into());
    c.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    c.data = Some(
        data.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    );
    c
}

fn code(err: kube::Error) -> u16 {
    match err {
        kube::Error::Api(status) => status.code,
        other => panic!("not an API error: {other}"),
    }
}

#[tokio::test]
async fn create_get_update_and_conflict() {
    let sim = ApiServer::start().await;
    let api: Api<ConfigMap> = Api::namespaced(sim.client().await, "istio-system");
    let created = api
        .create(&PostParams::default(), &cm("a", &[("k", "v")], &[]))
        .await
        .unwrap();
    let rv1 = created.metadata.resource_version.clone().unwrap();
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    assert_eq!(
        code(
            api.create(&PostParams::default(), &cm("a", &[], &[]))
                .await
                .unwrap_err()
        ),
        409
    );

    // Update with the current resourceVersion succeeds and bumps it.
    let mut next = created.clone();
    next.data.as_mut().unwrap().insert("k".into(), "v2".into());
    let updated = api
        .replace("a", &PostParams::default(), &next)
        .await
        .unwrap();
    let rv2 = updated.metadata.resource_version.clone().unwrap();
    assert!(rv2.parse::<u64>().unwrap() > rv1.parse::<u64>().unwrap());
    // Stale resourceVersion: 409 Conflict with a Status body.
    let err = api
        .replace("a", &PostParams::default(), &next)
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => assert_eq!((s.code, s.reason.as_str()), (409, "Conflict")),
        other => panic!("{other}"),
    }
    // Without a resourceVersion the update is unconditional.
    let mut blind = cm("a", &[("k", "v3")], &[]);
    blind.metadata.resource_version = None;
    assert_eq!(
        api.replace("a", &PostParams::default(), &blind)
            .await
            .unwrap()
            .data
            .unwrap()["k"],
        "v3"
    );

    // Objects need their namespace to exist.
    let nowhere: Api<ConfigMap> = Api::namespaced(sim.client().await, "nowhere");
    assert_eq!(
        code(
            nowhere
                .create(&PostParams::default(), &cm("a", &[], &[]))
                .await
                .unwrap_err()
        ),
        404
    );
    let ns: Api<Namespace> = Api::all(sim.client().await);
    assert!(ns.get("istio-system").await.is_ok());
}

#[tokio::test]
async fn list_with_label_selector_and_pages() {
    let sim = ApiServer::start().await;
    let api: Api<ConfigMap> = Api::namespaced(sim.client().await, "default");
    for i in 0..7 {
        let team = if i % 2 == 0 { "a" } else { "b" };
        api.create(
            &PostParams::default(),
            &cm(&format!("cm{i}"), &[], &[("team", team), ("app", "x")]),
        )
        .await
        .unwrap();
    }
    let a = api
        .list(&ListParams::default().labels("team=a,app"))
        .await
        .unwrap();
    assert_eq!(a.items.len(), 4);
    assert!(a.metadata.resource_version.is_some());
    assert_eq!(
        api.list(&ListParams::default().labels("team!=a"))
            .await
            .unwrap()
            .items
            .len(),
        3
    );
    assert_eq!(
        api.list(&ListParams::default().labels("team in (a,b),!missing"))
            .await
            .unwrap()
            .items
            .len(),
        7
    );
    assert_eq!(
        api.list(&ListParams::default().labels("team notin (a)"))
            .await
            .unwrap()
            .items
            .len(),
        3
    );
    let page = api.list(&ListParams::default().limit(3)).await.unwrap();
    assert_eq!(page.items.len(), 3);
    let token = page.metadata.continue_.clone().expect("continue token");
    let mut seen = page.items.len();
    let mut next = Some(token);
    while let Some(t) = next {
        let page = api
            .list(&ListParams::default().limit(3).continue_token(&t))
            .await
            .unwrap();
        seen += page.items.len();
        next = page.metadata.continue_.filter(|c| !c.is_empty());
    }
    assert_eq!(seen, 7);
    // All namespaces.
    let all: Api<ConfigMap> = Api::all(sim.client().await);
    assert_eq!(
        all.list(&ListParams::default()).await.unwrap().items.len(),
        7
    );
}

#[tokio::test]
async fn watch_streams_events_bookmarks_and_410_after_compaction() {
    let sim = ApiServer::start().await;
    let api: Api<ConfigMap> = Api::namespaced(sim.client().await, "default");
    let start = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = api
        .watch(
            &WatchParams {
                bookmarks: true,
                ..WatchParams::default().labels("app=x").timeout(10)
            },
            &start,
        )
        .await
        .unwrap()
        .boxed();
    api.create(&PostParams::default(), &cm("w", &[], &[("app", "x")]))
        .await
        .unwrap();
    api.create(&PostParams::default(), &cm("other", &[], &[("app", "y")]))
        .await
        .unwrap();
    let mut w = api.get("w").await.unwrap();
    w.data = Some(BTreeMap::from([("k".to_string(), "v".to_string())]));
    api.replace("w", &PostParams::default(), &w).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(5), stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o)
                if o.metadata.name.as_deref() == Some("other") =>
            {
                panic!("selector ignored")
            }
            WatchEvent::Added(_) => seen.push("ADDED"),
            WatchEvent::Modified(_) => seen.push("MODIFIED"),
            WatchEvent::Deleted(_) => seen.push("DELETED"),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(seen, ["ADDED", "MODIFIED"]);
    let bookmark = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            if let Some(Ok(WatchEvent::Bookmark(b))) = stream.next().await {
                return b;
            }
        }
    })
    .await
    .expect("a bookmark");
    assert!(!bookmark.metadata.resource_version.is_empty());

    // After compaction, watching from the old resourceVersion is 410 Gone.
    sim.compact();
    let mut old = api
        .watch(&WatchParams::default(), &start)
        .await
        .unwrap()
        .boxed();
    match old.try_next().await.unwrap().unwrap() {
        WatchEvent::Error(e) => assert_eq!(e.code, 410),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn watches_end_on_timeout_and_when_dropped() {
    let sim = ApiServer::start().await;
    let api: Api<ConfigMap> = Api::namespaced(sim.client().await, "default");
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut short = api
        .watch(&WatchParams::default().timeout(1), &rv)
        .await
        .unwrap()
        .boxed();
    let ended = tokio::time::timeout(Duration::from_secs(4), async {
        while short.next().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "timeoutSeconds ends the stream");
    let mut long = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    sim.drop_watches();
    let ended = tokio::time::timeout(Duration::from_secs(4), async {
        while long.next().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "drop_watches ends the stream");
}

#[tokio::test]
async fn faults_and_discovery() {
    let sim = ApiServer::start().await;
    let client = sim.client().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "istio-system");
    sim.fail_next(2);
    assert_eq!(
        code(leases.list(&ListParams::default()).await.unwrap_err()),
        500
    );
    assert_eq!(
        code(leases.list(&ListParams::default()).await.unwrap_err()),
        500
    );
    assert!(leases.list(&ListParams::default()).await.is_ok());
    sim.set_latency(Duration::from_millis(200));
    let started = std::time::Instant::now();
    leases.list(&ListParams::default()).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(200));
    sim.set_latency(Duration::ZERO);

    // ServiceEntries: one store behind three API versions.
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    let group = discovery
        .get("networking.istio.io")
        .expect("istio group discovered");
    let versions: Vec<&str> = group.versions().collect();
    assert_eq!(versions, ["v1", "v1beta1", "v1alpha3"]);
    let gvk = |v: &str| GroupVersionKind::gvk("networking.istio.io", v, "ServiceEntry");
    let v1: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &ApiResource::from_gvk_with_plural(&gvk("v1"), "serviceentries"),
    );
    let alpha: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &ApiResource::from_gvk_with_plural(&gvk("v1alpha3"), "serviceentries"),
    );
    let mut se = DynamicObject::new(
        "reviews",
        &ApiResource::from_gvk_with_plural(&gvk("v1"), "serviceentries"),
    );
    se.data = serde_json::json!({"spec": {"hosts": ["reviews.default.global"]}});
    v1.create(&PostParams::default(), &se).await.unwrap();
    let seen = alpha.get("reviews").await.unwrap();
    assert_eq!(
        seen.types.unwrap().api_version,
        "networking.istio.io/v1alpha3"
    );
    assert_eq!(seen.data["spec"]["hosts"][0], "reviews.default.global");
}
