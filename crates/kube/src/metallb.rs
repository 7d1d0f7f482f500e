//! `--config-source metallb`: MetalLB's custom resources (IPAddressPools,
//! L2Advertisements, BGPAdvertisements, BGPPeers, Communities, BFDProfiles)
//! watched in their namespace and converted into a ferrolb configuration on
//! every change, with the same converter and report as `import-metallb`.
//! A cluster can then switch announcers without touching its configuration.
//!
//! The watch task is thin: it keeps the objects by kind, and once every
//! kind has been listed, converts them all (a burst of changes settles into
//! one conversion) and publishes the result when it differs.

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The kinds read, with their plural and the version read (BGPPeer at
/// v1beta2, MetalLB's storage version; the converter reads both).
pub const KINDS: [(&str, &str, &str); 6] = [
    ("ipaddresspools", "v1beta1", "IPAddressPool"),
    ("l2advertisements", "v1beta1", "L2Advertisement"),
    ("bgpadvertisements", "v1beta1", "BGPAdvertisement"),
    ("bgppeers", "v1beta2", "BGPPeer"),
    ("communities", "v1beta1", "Community"),
    ("bfdprofiles", "v1beta1", "BFDProfile"),
];

/// MetalLB's API group.
pub const GROUP: &str = "metallb.io";

/// One conversion of everything listed.
#[derive(Debug, Clone)]
pub struct Converted {
    /// The ferrolb configuration (YAML), what a ConfigMap would hold.
    pub text: String,
    /// `text` parsed, or why it is not a valid ferrolb configuration.
    pub config: Result<ferrolb_config::Config, String>,
    /// What became of every MetalLB field.
    pub report: ferrolb_metallb::Report,
    /// Each object read, by the report's label (`Kind namespace/name`),
    /// for Events about it.
    pub objects: BTreeMap<String, ObjectReference>,
}

impl Converted {
    /// Converts `docs` (MetalLB objects) read from `namespace`.
    pub fn of(namespace: &str, docs: &[Value]) -> Converted {
        let objects = docs
            .iter()
            .map(|d| (ferrolb_metallb::label(d), reference(d)))
            .collect();
        match ferrolb_metallb::import_values(docs) {
            Ok(i) => {
                let config = ferrolb_config::Config::from_yaml(&i.config).map_err(|e| {
                    format!("MetalLB's configuration in namespace {namespace} converts to an invalid ferrolb configuration (fix the MetalLB objects; `ferrolb-controller import-metallb` shows the same):\n{e}")
                });
                Converted {
                    text: i.config,
                    config,
                    report: i.report,
                    objects,
                }
            }
            // No object at all: a configuration without pools, announcing nothing.
            Err(_) => Converted {
                text: String::new(),
                config: ferrolb_config::Config::from_yaml("")
                    .map_err(|e| format!("the empty configuration is invalid: {e}")),
                report: ferrolb_metallb::Report::default(),
                objects,
            },
        }
    }

    /// The notes of fields not carried over, per object label, as an
    /// Event's note: what an operator must fix on that object.
    pub fn lost_by_object(&self) -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for n in self.report.lost() {
            let why = match &n.outcome {
                ferrolb_metallb::Outcome::Dropped(why) => why.clone(),
                _ => "not a field ferrolb's converter knows; not carried over".to_string(),
            };
            let field = if n.field.is_empty() {
                "the object".to_string()
            } else {
                n.field.clone()
            };
            out.entry(n.object.clone())
                .or_default()
                .push(format!("{field}: {why}"));
        }
        out.into_iter()
            .map(|(k, v)| {
                (
                    k,
                    format!(
                        "ferrolb reads this object but not all of it: {}",
                        v.join("; ")
                    ),
                )
            })
            .collect()
    }
}

/// An Event's reference to MetalLB object `doc`.
fn reference(doc: &Value) -> ObjectReference {
    let s = |p: &str| doc.pointer(p).and_then(Value::as_str).map(str::to_string);
    ObjectReference {
        api_version: s("/apiVersion"),
        kind: s("/kind"),
        namespace: s("/metadata/namespace"),
        name: s("/metadata/name"),
        uid: s("/metadata/uid"),
        ..ObjectReference::default()
    }
}

/// Starts watching MetalLB's objects in `namespace`; the receiver holds the
/// latest conversion (`None` until every kind has been listed once).
pub fn watch(client: Client, namespace: &str) -> watch::Receiver<Option<Arc<Converted>>> {
    let (tx, rx) = watch::channel(None);
    let ns = namespace.to_string();
    tokio::spawn(async move { run(client, ns, tx).await });
    rx
}

async fn run(client: Client, ns: String, tx: watch::Sender<Option<Arc<Converted>>>) {
    let streams = KINDS
        .iter()
        .enumerate()
        .map(|(i, (plural, version, kind))| {
            let ar = ApiResource {
                group: GROUP.into(),
                version: (*version).into(),
                api_version: format!("{GROUP}/{version}"),
                kind: (*kind).into(),
                plural: (*plural).into(),
            };
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
            watcher::watcher(api, watcher::Config::default())
                .default_backoff()
                .map(move |e| (i, e))
                .boxed()
        });
    let mut events = futures::stream::select_all(streams);
    let mut objects: Vec<BTreeMap<String, Value>> = vec![BTreeMap::new(); KINDS.len()];
    let mut relisting: Vec<Option<BTreeMap<String, Value>>> = vec![None; KINDS.len()];
    let mut listed = [false; KINDS.len()];
    let mut warned: Vec<Option<String>> = vec![None; KINDS.len()];
    let mut dirty = false;
    loop {
        let next = async {
            if dirty {
                // A burst of changes settles into one conversion.
                tokio::time::timeout(Duration::from_millis(50), events.next()).await
            } else {
                Ok(events.next().await)
            }
        };
        let ev = tokio::select! {
            // Nobody reads any more (a controller that stopped leading): stop watching.
            _ = tx.closed() => return,
            ev = next => ev,
        };
        let ev = match ev {
            Ok(ev) => ev,
            Err(_) => {
                dirty = false;
                if listed.iter().all(|l| *l) {
                    publish(&ns, &objects, &tx);
                }
                continue;
            }
        };
        let Some((i, ev)) = ev else { return };
        let (plural, version, kind) = KINDS[i];
        let key_of = |o: &DynamicObject| {
            format!(
                "{}/{}",
                o.metadata.namespace.as_deref().unwrap_or_default(),
                o.metadata.name.as_deref().unwrap_or_default()
            )
        };
        let value_of = |o: DynamicObject| {
            let mut v = serde_json::to_value(o).unwrap_or(Value::Null);
            // List items may come without their type.
            v["apiVersion"] = Value::String(format!("{GROUP}/{version}"));
            v["kind"] = Value::String(kind.to_string());
            v
        };
        match ev {
            Ok(Event::Init) => relisting[i] = Some(BTreeMap::new()),
            Ok(Event::InitApply(o)) => {
                let k = key_of(&o);
                relisting[i]
                    .get_or_insert_with(BTreeMap::new)
                    .insert(k, value_of(o));
            }
            Ok(Event::InitDone) => {
                objects[i] = relisting[i].take().unwrap_or_default();
                if !listed[i] || warned[i].is_some() {
                    tracing::info!(resource = %format!("{plural}.{GROUP}"), namespace = %ns, objects = objects[i].len(), "MetalLB objects listed");
                }
                listed[i] = true;
                warned[i] = None;
                dirty = true;
            }
            Ok(Event::Apply(o)) => {
                let k = key_of(&o);
                objects[i].insert(k, value_of(o));
                dirty = true;
            }
            Ok(Event::Delete(o)) => {
                objects[i].remove(&key_of(&o));
                dirty = true;
            }
            Err(e) => {
                let text = e.to_string();
                if warned[i].as_deref() != Some(text.as_str()) {
                    tracing::warn!(resource = %format!("{plural}.{GROUP}"), namespace = %ns, error = %text, "cannot watch MetalLB's objects (are MetalLB's CRDs installed, and may this ServiceAccount list them?); retrying");
                    warned[i] = Some(text);
                }
            }
        }
    }
}

fn publish(
    ns: &str,
    objects: &[BTreeMap<String, Value>],
    tx: &watch::Sender<Option<Arc<Converted>>>,
) {
    let docs: Vec<Value> = objects.iter().flat_map(|m| m.values().cloned()).collect();
    let c = Converted::of(ns, &docs);
    tx.send_if_modified(|cur| {
        let same = cur.as_ref().is_some_and(|old| {
            old.text == c.text
                && old.report == c.report
                && old.config.as_ref().err() == c.config.as_ref().err()
                && old.objects == c.objects
        });
        if same {
            return false;
        }
        let (m, conv, d, u) = c.report.counts();
        tracing::info!(namespace = %ns, mapped = m, converted = conv, dropped = d, unknown = u, valid = c.config.is_ok(), "MetalLB's configuration converted");
        *cur = Some(Arc::new(c));
        true
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_conversion_names_each_object_and_what_it_lost() {
        let docs = vec![
            json!({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
                   "metadata": {"name": "prod", "namespace": "metallb-system", "uid": "u1"},
                   "spec": {"addresses": ["192.0.2.0/28"]}}),
            json!({"apiVersion": "metallb.io/v1beta2", "kind": "BGPPeer",
                   "metadata": {"name": "tor", "namespace": "metallb-system", "uid": "u2"},
                   "spec": {"myASN": 64512, "peerASN": 65000, "peerAddress": "192.0.2.254", "connectTime": "5s"}}),
        ];
        let c = Converted::of("metallb-system", &docs);
        assert!(c.config.is_ok(), "{:?}", c.config);
        assert!(c.text.contains("192.0.2.0/28"), "{}", c.text);
        assert_eq!(
            c.objects["BGPPeer metallb-system/tor"].uid.as_deref(),
            Some("u2")
        );
        let lost = c.lost_by_object();
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert!(
            lost["BGPPeer metallb-system/tor"].contains("spec.connectTime"),
            "{lost:?}"
        );
    }

    #[test]
    fn no_objects_is_a_configuration_without_pools() {
        let c = Converted::of("metallb-system", &[]);
        assert!(c.config.as_ref().is_ok_and(|c| c.pools.is_empty()));
    }

    #[test]
    fn an_invalid_result_says_where_to_fix_it() {
        let pool = |name: &str| {
            json!({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
                   "metadata": {"name": name, "namespace": "metallb-system"},
                   "spec": {"addresses": ["192.0.2.0/28"]}})
        };
        let c = Converted::of("metallb-system", &[pool("a"), pool("b")]);
        let e = c.config.expect_err("overlapping pools");
        assert!(e.contains("fix the MetalLB objects"), "{e}");
    }
}
