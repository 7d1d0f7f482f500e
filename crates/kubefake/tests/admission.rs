//! Request-level rules of the real API server that sit outside one object's
//! validation: a server-side apply that creates its object needs `create`
//! (the patch handler's `createAuthorizerAttributes` in
//! k8s.io/apiserver/pkg/endpoints/handlers/patch.go) and answers 201; a
//! custom resource is served only while its CustomResourceDefinition exists
//! (apiextensions-apiserver's handler answers 404 otherwise).

use ferrolb_kubefake::{FakeApiServer, Options};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use serde_json::json;

async fn client_with(server: &FakeApiServer, token: &str) -> kube::Client {
    let kc = kube::config::Kubeconfig::from_yaml(&server.kubeconfig_with_token(token)).unwrap();
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .unwrap();
    kube::Client::try_from(config).unwrap()
}

fn configmaps() -> ApiResource {
    ApiResource {
        group: String::new(),
        version: "v1".into(),
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        plural: "configmaps".into(),
    }
}

fn code(e: kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("not an API error: {other}"),
    }
}

#[tokio::test]
async fn an_apply_that_creates_needs_create_and_a_custom_resource_its_definition() {
    let server = FakeApiServer::start_with(Options {
        tls: true,
        authorize: true,
        ..Options::default()
    })
    .await
    .unwrap();
    let admin = client_with(&server, ferrolb_kubefake::ADMIN_TOKEN).await;
    let rbac = |kind: &str, body: serde_json::Value| {
        let r = ApiResource {
            group: "rbac.authorization.k8s.io".into(),
            version: "v1".into(),
            api_version: "rbac.authorization.k8s.io/v1".into(),
            kind: kind.into(),
            plural: format!("{}s", kind.to_lowercase()),
        };
        let api: Api<DynamicObject> = Api::namespaced_with(admin.clone(), "default", &r);
        async move {
            api.create(
                &PostParams::default(),
                &serde_json::from_value(body).unwrap(),
            )
            .await
            .unwrap();
        }
    };
    rbac(
        "Role",
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "patcher"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["patch"]}]}),
    )
    .await;
    rbac(
        "RoleBinding",
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "patcher"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "patcher"},
        "subjects": [{"kind": "ServiceAccount", "name": "app", "namespace": "default"}]}),
    )
    .await;
    let app = client_with(&server, &server.service_account_token("default", "app")).await;
    let cms: Api<DynamicObject> = Api::namespaced_with(app, "default", &configmaps());
    let body = |v: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "state"}, "data": {"v": v}});
    let apply = PatchParams::apply("app").force();
    // Patch alone cannot create.
    let refused = cms
        .patch("state", &apply, &Patch::Apply(body("1")))
        .await
        .unwrap_err();
    assert_eq!(code(refused), 403);
    assert!(server
        .get("configmaps", "", Some("default"), "state")
        .is_none());
    // The object exists (made by someone allowed): patch alone updates it.
    let admin_cms: Api<DynamicObject> =
        Api::namespaced_with(admin.clone(), "default", &configmaps());
    admin_cms
        .patch("state", &apply, &Patch::Apply(body("0")))
        .await
        .unwrap();
    cms.patch("state", &apply, &Patch::Apply(body("2")))
        .await
        .unwrap();
    assert_eq!(
        server
            .get("configmaps", "", Some("default"), "state")
            .unwrap()["data"]["v"],
        "2"
    );
    let codes: Vec<u16> = server
        .requests()
        .iter()
        .filter(|r| r.verb == "patch" && r.resource == "configmaps")
        .map(|r| r.code)
        .collect();
    assert_eq!(
        codes,
        [403, 201, 200],
        "an apply that creates is 201 Created"
    );

    // A custom resource: 404 until its definition exists.
    let nann = ApiResource {
        group: "ferrolb.io".into(),
        version: "v1alpha1".into(),
        api_version: "ferrolb.io/v1alpha1".into(),
        kind: "NodeAnnouncement".into(),
        plural: "nodeannouncements".into(),
    };
    let anns: Api<DynamicObject> = Api::namespaced_with(admin.clone(), "default", &nann);
    assert_eq!(code(anns.list(&Default::default()).await.unwrap_err()), 404);
    let crds = ApiResource {
        group: "apiextensions.k8s.io".into(),
        version: "v1".into(),
        api_version: "apiextensions.k8s.io/v1".into(),
        kind: "CustomResourceDefinition".into(),
        plural: "customresourcedefinitions".into(),
    };
    let crd_api: Api<DynamicObject> = Api::all_with(admin.clone(), &crds);
    crd_api
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition", "metadata": {"name": "nodeannouncements.ferrolb.io"},
                "spec": {"group": "ferrolb.io", "scope": "Namespaced",
                    "names": {"plural": "nodeannouncements", "kind": "NodeAnnouncement"},
                    "versions": [{"name": "v1alpha1", "served": true, "storage": true}]}}))
            .unwrap(),
        )
        .await
        .unwrap();
    assert!(anns
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .is_empty());
}
