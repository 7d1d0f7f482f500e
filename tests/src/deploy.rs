//! `deploy/` as `kubectl apply -k deploy/` would send it: the
//! kustomization's resources in order, its `images:` and `namespace:`
//! transforms applied, and nothing else changed but what a test substitutes
//! (the ConfigMap's configuration).

use ferrolb_kubefake::FakeApiServer;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The repository's `deploy/`.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The documents of one YAML file.
pub fn documents(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_saphyr::from_str_multiple::<Value, Vec<Value>>(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// The strings of a JSON array (none for anything else).
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Splits `registry:5000/ferrolb/speaker:0.1.0@sha256:..` into name and tag.
fn split_image(image: &str) -> (&str, Option<&str>) {
    let image = image.split('@').next().unwrap_or(image);
    match image.rfind(':') {
        // A colon after the last slash is a tag; before it, a registry port.
        Some(i) if !image[i..].contains('/') => (&image[..i], Some(&image[i + 1..])),
        _ => (image, None),
    }
}

/// kustomize's `images:` transform on one image reference.
pub fn transform_image(image: &str, rules: &[Value]) -> String {
    let (name, tag) = split_image(image);
    for r in rules {
        if r["name"].as_str() == Some(name) {
            let new_name = r["newName"].as_str().unwrap_or(name);
            let new_tag = r["newTag"].as_str().or(tag);
            return match (r["digest"].as_str(), new_tag) {
                (Some(d), _) => format!("{new_name}@{d}"),
                (None, Some(t)) => format!("{new_name}:{t}"),
                (None, None) => new_name.to_string(),
            };
        }
    }
    image.to_string()
}

fn each_container(obj: &mut Value, f: &mut dyn FnMut(&mut Value)) {
    for key in ["initContainers", "containers"] {
        if let Some(cs) = obj
            .pointer_mut(&format!("/spec/template/spec/{key}"))
            .and_then(Value::as_array_mut)
        {
            cs.iter_mut().for_each(&mut *f);
        }
    }
}

/// `kustomize build` of a directory holding a kustomization.yaml: its
/// `resources` (files), then `namespace` and `images`.
pub fn render_dir(dir: &Path) -> Vec<Value> {
    let k = documents(&dir.join("kustomization.yaml"))
        .into_iter()
        .next()
        .expect("a kustomization");
    let mut out = Vec::new();
    for r in k["resources"].as_array().expect("resources") {
        out.extend(documents(&dir.join(r.as_str().expect("a file name"))));
    }
    let rules = k["images"].as_array().cloned().unwrap_or_default();
    for obj in &mut out {
        if let Some(ns) = k["namespace"].as_str() {
            if obj["metadata"].get("namespace").is_some() {
                obj["metadata"]["namespace"] = Value::String(ns.into());
            }
        }
        each_container(obj, &mut |c| {
            if let Some(i) = c["image"].as_str() {
                c["image"] = Value::String(transform_image(i, &rules));
            }
        });
    }
    out
}

/// `deploy/` rendered.
pub fn render() -> Vec<Value> {
    render_dir(&dir())
}

/// Replaces the configuration in the ferrolb ConfigMap.
pub fn with_config(mut objects: Vec<Value>, yaml: &str) -> Vec<Value> {
    for o in &mut objects {
        if o["kind"] == "ConfigMap" && o["metadata"]["name"] == "ferrolb-config" {
            o["data"]["config.yaml"] = Value::String(yaml.to_string());
        }
    }
    objects
}

/// The object of `kind` named `name`.
pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("deploy/ has no {kind} {name}"))
}

/// Creates `objects` in the server's store, as `kubectl apply` would
/// (the store's admission: names, namespaces, resource versions).
pub fn apply(server: &FakeApiServer, objects: &[Value]) {
    for o in objects {
        let api_version = o["apiVersion"].as_str().unwrap_or("");
        let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
        let kind = o["kind"].as_str().unwrap_or("");
        let r = ferrolb_kubefake::resource::RESOURCES
            .iter()
            .position(|r| r.group == group && r.kind == kind)
            .unwrap_or_else(|| panic!("the fake API server does not serve {api_version} {kind}"));
        let ns = o["metadata"]["namespace"].as_str();
        server
            .store()
            .create(r, ns, o.clone(), "kubectl")
            .unwrap_or_else(|e| panic!("apply {kind} {:?}: {e:?}", o["metadata"]["name"]));
    }
}

/// The RBAC of `deploy/` and its ServiceAccounts (what the components'
/// tokens are authorised by), without workloads or configuration.
pub fn access_objects() -> Vec<Value> {
    render()
        .into_iter()
        .filter(|o| {
            matches!(
                o["kind"].as_str(),
                Some(
                    "Namespace"
                        | "CustomResourceDefinition"
                        | "ServiceAccount"
                        | "ClusterRole"
                        | "ClusterRoleBinding"
                        | "Role"
                        | "RoleBinding"
                )
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn images_transform_as_kustomize_does() {
        let rules = vec![
            json!({"name": "ferrolb/speaker", "newName": "reg.example:5000/me/speaker", "newTag": "v2"}),
            json!({"name": "ferrolb/controller", "newTag": "0.2.0"}),
        ];
        assert_eq!(
            transform_image("ferrolb/speaker:0.1.0", &rules),
            "reg.example:5000/me/speaker:v2"
        );
        assert_eq!(
            transform_image("ferrolb/controller:0.1.0", &rules),
            "ferrolb/controller:0.2.0"
        );
        assert_eq!(transform_image("other/x:1", &rules), "other/x:1");
        assert_eq!(split_image("reg:5000/a/b"), ("reg:5000/a/b", None));
        assert_eq!(split_image("reg:5000/a/b:t"), ("reg:5000/a/b", Some("t")));
    }

    #[test]
    fn deploy_renders_with_every_image_set_by_the_kustomization() {
        let objects = render();
        let mut images = Vec::new();
        for mut o in objects {
            each_container(&mut o, &mut |c| images.push(c["image"].clone()));
        }
        assert_eq!(images.len(), 3, "{images:?}");
        assert!(images
            .iter()
            .all(|i| i.as_str().unwrap().ends_with(":0.1.0")));
    }
}
