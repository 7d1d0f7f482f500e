//! The fake server through the real kube client: what the controller and
//! speaker rely on works the way a real API server answers.

use ferrolb_kubefake::{FakeApiServer, Options};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher;
use kube::Client;
use serde_json::json;
use std::time::Duration;

fn client(server: &FakeApiServer) -> Client {
    let config = kube::Config::new(server.url().parse().unwrap());
    Client::try_from(config).unwrap()
}

fn service(name: &str, app: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]}
    }))
    .unwrap()
}

#[tokio::test]
async fn crud_status_and_conflicts() {
    let server = FakeApiServer::start().await.unwrap();
    for ns in ["web", "ferrolb-system", "ns", "a", "b"] {
        server.create_namespace(ns);
    }
    let api: Api<Service> = Api::namespaced(client(&server), "web");
    let created = api
        .create(&PostParams::default(), &service("a", "x"))
        .await
        .unwrap();
    assert_eq!(created.metadata.namespace.as_deref(), Some("web"));
    let err = api
        .create(&PostParams::default(), &service("a", "x"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409),
        "{err}"
    );

    let patched = api
        .patch_status(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1", "ipMode": "VIP"}]}}})),
        )
        .await
        .unwrap();
    let ingress = patched
        .status
        .unwrap()
        .load_balancer
        .unwrap()
        .ingress
        .unwrap();
    assert_eq!(ingress[0].ip.as_deref(), Some("192.0.2.1"));
    assert_eq!(ingress[0].ip_mode.as_deref(), Some("VIP"));

    // A replace with a stale resource version is a conflict.
    let mut stale = created.clone();
    stale.metadata.labels = Some([("app".to_string(), "y".to_string())].into());
    let err = api
        .replace("a", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409 && s.reason == "Conflict"),
        "{err}"
    );
    // With the current one it succeeds and keeps the status.
    let current = api.get("a").await.unwrap();
    let mut fresh = current.clone();
    fresh.metadata.labels = Some([("app".to_string(), "y".to_string())].into());
    fresh.status = None;
    let replaced = api
        .replace("a", &PostParams::default(), &fresh)
        .await
        .unwrap();
    assert!(replaced
        .status
        .unwrap()
        .load_balancer
        .unwrap()
        .ingress
        .is_some());

    // JSON patch.
    // JSON patch, over raw HTTP (kube's typed JSON patch needs its jsonpatch feature).
    let req = http_patch(
        &server,
        "/api/v1/namespaces/web/services/a",
        "application/json-patch+json",
        r#"[{"op":"add","path":"/metadata/annotations","value":{"k":"v"}}]"#,
    )
    .await;
    assert_eq!(req, 200);
    assert_eq!(
        api.get("a").await.unwrap().metadata.annotations.unwrap()["k"],
        "v"
    );

    let lp = ListParams::default().labels("app=y");
    assert_eq!(api.list(&lp).await.unwrap().items.len(), 1);
    api.delete("a", &DeleteParams::default()).await.unwrap();
    assert!(api.get_opt("a").await.unwrap().is_none());

    let verbs: Vec<&str> = server.requests().iter().map(|r| r.verb).collect();
    assert_eq!(
        verbs,
        [
            "create", "create", "patch", "update", "get", "update", "patch", "get", "list",
            "delete", "get"
        ]
    );
}

async fn http_patch(server: &FakeApiServer, path: &str, content_type: &str, body: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let req = format!(
        "PATCH {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn watcher_sees_changes_bookmarks_and_recovers_from_410() {
    let server = FakeApiServer::start_with(Options {
        history: 4,
        bookmark_interval: Duration::from_millis(50),
        ..Options::default()
    })
    .await
    .unwrap();
    for ns in ["a", "b"] {
        server.create_namespace(ns);
    }
    let api: Api<ConfigMap> = Api::all(client(&server));
    let ns_api: Api<ConfigMap> = Api::namespaced(client(&server), "a");
    for i in 0..3 {
        ns_api
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": format!("c{i}")}})).unwrap(),
            )
            .await
            .unwrap();
    }
    let mut stream = watcher(api.clone(), watcher::Config::default().page_size(2)).boxed();
    let mut initial = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            watcher::Event::InitApply(c) => initial.push(c.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(initial, ["c0", "c1", "c2"], "paged initial list");
    ns_api.delete("c1", &DeleteParams::default()).await.unwrap();
    loop {
        if let watcher::Event::Delete(c) =
            tokio::time::timeout(Duration::from_secs(5), stream.try_next())
                .await
                .unwrap()
                .unwrap()
                .unwrap()
        {
            assert_eq!(c.metadata.name.as_deref(), Some("c1"));
            break;
        }
    }

    // A raw watch from a compacted resource version gets ERROR 410.
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    server.store().compact();
    for i in 10..20 {
        ns_api
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": format!("c{i}")}})).unwrap(),
            )
            .await
            .unwrap();
    }
    server.store().compact();
    let mut raw = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match raw.try_next().await.unwrap().unwrap() {
        WatchEvent::Error(e) => assert_eq!(e.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }
    // Bookmarks arrive on an idle watch that asked for them.
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut raw = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(Duration::from_secs(2), raw.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        WatchEvent::Bookmark(b) => assert_eq!(b.metadata.resource_version, rv),
        other => panic!("expected a bookmark, got {other:?}"),
    }
    // Dropping the server's connections makes the watcher re-list and catch up.
    let server2 = server.restart().await.unwrap();
    Api::<ConfigMap>::namespaced(client(&server2), "a")
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "late"}})).unwrap(),
        )
        .await
        .unwrap();
    let mut seen_late = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen_late && tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(10), stream.try_next()).await {
            Ok(Ok(Some(watcher::Event::Apply(c) | watcher::Event::InitApply(c)))) => {
                seen_late = c.metadata.name.as_deref() == Some("late");
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(
        seen_late,
        "the watcher recovered after the server restarted"
    );
}

#[tokio::test]
async fn selector_watch_turns_label_changes_into_add_and_delete() {
    let server = FakeApiServer::start().await.unwrap();
    for ns in ["web", "ferrolb-system", "ns", "a", "b"] {
        server.create_namespace(ns);
    }
    let api: Api<Service> = Api::namespaced(client(&server), "web");
    api.create(&PostParams::default(), &service("a", "x"))
        .await
        .unwrap();
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut raw = api
        .watch(&WatchParams::default().labels("app=y"), &rv)
        .await
        .unwrap()
        .boxed();
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "y"}}})),
    )
    .await
    .unwrap();
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "z"}}})),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        match raw.try_next().await.unwrap().unwrap() {
            WatchEvent::Added(_) => got.push("ADDED"),
            WatchEvent::Deleted(_) => got.push("DELETED"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, ["ADDED", "DELETED"]);
}

#[tokio::test]
async fn lease_manager_elects_one_leader_and_hands_over() {
    use kube_lease_manager::{LeaseCreateMode, LeaseManagerBuilder};
    let server = FakeApiServer::start().await.unwrap();
    for ns in ["web", "ferrolb-system", "ns", "a", "b"] {
        server.create_namespace(ns);
    }
    let mut receivers = Vec::new();
    let mut handles = Vec::new();
    for id in ["one", "two"] {
        let m = LeaseManagerBuilder::new(client(&server), "ferrolb-controller")
            .with_namespace("ferrolb-system")
            .with_identity(id)
            .with_duration(2)
            .with_grace(1)
            .with_create_mode(LeaseCreateMode::AutoCreate)
            .build()
            .await
            .unwrap();
        let (rx, handle) = m.watch().await;
        receivers.push(rx);
        handles.push(handle);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let leader = loop {
        let states: Vec<bool> = receivers.iter().map(|r| *r.borrow()).collect();
        assert!(!(states[0] && states[1]), "two leaders at once");
        if let Some(i) = states.iter().position(|s| *s) {
            break i;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nobody became leader"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The leader dies without releasing: the standby takes over once the lease lapses.
    handles[leader].abort();
    let other = 1 - leader;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !*receivers[other].borrow() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "standby never took over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lease: Lease = Api::<Lease>::namespaced(client(&server), "ferrolb-system")
        .get("ferrolb-controller")
        .await
        .unwrap();
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some(["one", "two"][other])
    );
}
