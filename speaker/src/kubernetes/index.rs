//! The speaker's view of the cluster, kept incrementally. Pure: API changes
//! (a Service, an EndpointSlice, the nodes, the speakers, the configuration,
//! the forwarder's health) go in one at a time; [`Index::flush`] says what
//! changed for the announcers and the forwarder. A change to one Service or
//! EndpointSlice re-derives that Service alone, with the same rule as
//! [`model::desired`] (`model::entry`), so 10,000 Services cost what the
//! change touches, not the cluster. Changes to what every Service depends on
//! (nodes, speakers, configuration) re-derive all of them, as they must.
//!
//! `Recompute::Full` re-derives every Service from every EndpointSlice on
//! each flush: the reference the scale benchmark compares against
//! (`tests/bench/speaker_scale.sh`), and what the speaker did before.

use super::model::{self, Endpoint, Excluded, Filter};
use crate::announce::{Change, ServiceVips};
use crate::plan::{Plan, PlannedService};
use ferrolb_config::Config;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// How the index recomputes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Recompute {
    /// Only the Services a change touches (the default).
    #[default]
    Incremental,
    /// Every Service on every change (the benchmark's reference).
    Full,
}

/// What a flush found changed.
#[derive(Debug, Default, PartialEq)]
pub struct Delta {
    /// For the announcers: entries new, changed (health included) or gone.
    pub changes: Vec<Change>,
    /// The forwarder's whole plan, when any part of it changed.
    pub plan: Option<Plan>,
    /// Problems that appeared (Service, why), for the log.
    pub problems: Vec<(String, String)>,
    /// Every Service whose entry was re-derived (the runner re-checks what
    /// this node announces for them).
    pub touched: BTreeSet<String>,
}

/// One Service as last derived.
#[derive(Debug, Clone, Default, PartialEq)]
struct Derived {
    entry: model::Entry,
    /// What the announcers were told (the entry with its health).
    told: Option<Arc<ServiceVips>>,
}

/// The objects the speaker watches, and what it derived from them.
#[derive(Debug)]
pub struct Index {
    me: String,
    filter: Filter,
    mode: Recompute,
    config: Option<Arc<Config>>,
    /// What each Service says that the speaker reads.
    services: BTreeMap<String, model::Facts>,
    /// Slice (`namespace/name`) -> its Service and ready endpoints.
    slices: BTreeMap<String, (String, Vec<Endpoint>)>,
    /// Service -> its slices.
    by_service: BTreeMap<String, BTreeSet<String>>,
    usable: BTreeSet<String>,
    excluded: Vec<Excluded>,
    leaving: BTreeSet<String>,
    /// Forwarded Services' health (a Service absent is unhealthy).
    health: BTreeMap<String, bool>,
    derived: BTreeMap<String, Derived>,
    dirty: BTreeSet<String>,
    all_dirty: bool,
    plan_dirty: bool,
    /// Objects seen since a relist began, per kind (so a relist removes the rest).
    relisting: [Option<BTreeSet<String>>; 2],
}

/// The kinds the index watches one object at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Services.
    Service = 0,
    /// EndpointSlices.
    Slice = 1,
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or(""),
        meta.name.as_deref().unwrap_or("")
    )
}

impl Index {
    /// An empty index for node `me`.
    pub fn new(me: &str, filter: Filter, mode: Recompute) -> Index {
        Index {
            me: me.to_string(),
            filter,
            mode,
            config: None,
            services: BTreeMap::new(),
            slices: BTreeMap::new(),
            by_service: BTreeMap::new(),
            usable: BTreeSet::new(),
            excluded: Vec::new(),
            leaving: BTreeSet::new(),
            health: BTreeMap::new(),
            derived: BTreeMap::new(),
            dirty: BTreeSet::new(),
            all_dirty: true,
            plan_dirty: true,
            relisting: [None, None],
        }
    }

    /// The configuration in force (every Service depends on its pools).
    pub fn set_config(&mut self, config: Arc<Config>) {
        self.config = Some(config);
        self.all_dirty = true;
    }

    /// The configuration in force, if any.
    pub fn config(&self) -> Option<&Arc<Config>> {
        self.config.as_ref()
    }

    /// The nodes, the live speakers and the leaving nodes, as a whole (rare
    /// changes every Service depends on). Re-derives everything only if the
    /// outcome (usable or leaving nodes) changed.
    pub fn set_nodes(
        &mut self,
        nodes: &[impl std::borrow::Borrow<Node>],
        speakers: &BTreeSet<String>,
        leaving: BTreeSet<String>,
    ) {
        let (usable, excluded) = model::usable_nodes(nodes, speakers, &self.filter);
        if usable != self.usable || leaving != self.leaving {
            self.all_dirty = true;
        }
        self.usable = usable;
        self.excluded = excluded;
        self.leaving = leaving;
    }

    /// Nodes out of every election, with the reason.
    pub fn excluded(&self) -> &[Excluded] {
        &self.excluded
    }

    /// The forwarder's health per Service; marks those whose health changed.
    pub fn set_health(&mut self, health: &BTreeMap<String, bool>) {
        // Only forwarded Services have health: look at those, not at every Service.
        let up = |m: &BTreeMap<String, bool>, k: &str| m.get(k).copied().unwrap_or(false);
        for k in health.keys().chain(self.health.keys()) {
            if up(health, k) != up(&self.health, k)
                && self
                    .derived
                    .get(k)
                    .is_some_and(|d| d.entry.planned.is_some())
            {
                self.dirty.insert(k.clone());
            }
        }
        self.health.clone_from(health);
    }

    /// Starts a relist of `kind`: objects not applied before [`Index::relist_done`] are gone.
    pub fn relist(&mut self, kind: Kind) {
        self.relisting[kind as usize] = Some(BTreeSet::new());
    }

    /// Ends a relist of `kind`.
    pub fn relist_done(&mut self, kind: Kind) {
        let Some(seen) = self.relisting[kind as usize].take() else {
            return;
        };
        let gone: Vec<String> = match kind {
            Kind::Service => self
                .services
                .keys()
                .filter(|k| !seen.contains(*k))
                .cloned()
                .collect(),
            Kind::Slice => self
                .slices
                .keys()
                .filter(|k| !seen.contains(*k))
                .cloned()
                .collect(),
        };
        for k in gone {
            match kind {
                Kind::Service => self.remove_service(&k),
                Kind::Slice => self.remove_slice(&k),
            }
        }
    }

    fn seen(&mut self, kind: Kind, key: &str) {
        if let Some(s) = self.relisting[kind as usize].as_mut() {
            s.insert(key.to_string());
        }
    }

    /// A Service was created or changed: only its [`model::Facts`] are
    /// kept, and a change to nothing they hold re-derives nothing.
    pub fn apply_service(&mut self, svc: &Service) {
        let key = key_of(&svc.metadata);
        self.seen(Kind::Service, &key);
        let facts = model::Facts::of(svc);
        if self.services.get(&key) == Some(&facts) {
            return;
        }
        self.services.insert(key.clone(), facts);
        self.dirty.insert(key);
    }

    /// A Service was deleted.
    pub fn delete_service(&mut self, svc: &Service) {
        self.remove_service(&key_of(&svc.metadata));
    }

    fn remove_service(&mut self, key: &str) {
        if self.services.remove(key).is_some() {
            self.dirty.insert(key.to_string());
        }
    }

    /// An EndpointSlice was created or changed.
    pub fn apply_slice(&mut self, slice: &EndpointSlice) {
        let key = key_of(&slice.metadata);
        self.seen(Kind::Slice, &key);
        match model::slice_endpoints(slice) {
            Some((service, eps)) => {
                if self.slices.get(&key) == Some(&(service.clone(), eps.clone())) {
                    return;
                }
                self.remove_slice(&key);
                self.by_service
                    .entry(service.clone())
                    .or_default()
                    .insert(key.clone());
                self.dirty.insert(service.clone());
                self.slices.insert(key, (service, eps));
            }
            // It names no Service (any more).
            None => self.remove_slice(&key),
        }
    }

    /// An EndpointSlice was deleted.
    pub fn delete_slice(&mut self, slice: &EndpointSlice) {
        self.remove_slice(&key_of(&slice.metadata));
    }

    fn remove_slice(&mut self, key: &str) {
        let Some((service, _)) = self.slices.remove(key) else {
            return;
        };
        if let Some(set) = self.by_service.get_mut(&service) {
            set.remove(key);
            if set.is_empty() {
                self.by_service.remove(&service);
            }
        }
        self.dirty.insert(service);
    }

    /// A Service's uid (for Events about it).
    pub fn uid(&self, key: &str) -> Option<String> {
        self.services.get(key)?.uid.clone()
    }

    /// What the announcers were last told about a Service.
    pub fn told(&self, key: &str) -> Option<&Arc<ServiceVips>> {
        self.derived.get(key)?.told.as_ref()
    }

    /// Every Service the announcers know of.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.derived.keys()
    }

    /// Re-derives what changed since the last flush.
    pub fn flush(&mut self) -> Delta {
        let mut delta = Delta::default();
        let Some(config) = self.config.clone() else {
            return delta;
        };
        let keys: BTreeSet<String> = if self.all_dirty || self.mode == Recompute::Full {
            self.derived
                .keys()
                .chain(self.services.keys())
                .cloned()
                .collect()
        } else {
            std::mem::take(&mut self.dirty)
        };
        self.dirty.clear();
        self.all_dirty = false;
        // The reference re-reads every slice, as a full recompute does.
        let regrouped: Option<BTreeMap<String, Vec<Endpoint>>> = (self.mode == Recompute::Full)
            .then(|| {
                let mut all: BTreeMap<String, Vec<Endpoint>> = BTreeMap::new();
                for (service, eps) in self.slices.values() {
                    all.entry(service.clone())
                        .or_default()
                        .extend(eps.iter().cloned());
                }
                all
            });
        for key in keys {
            let entry = match self.services.get(&key) {
                Some(svc) if model::handled(svc, &self.filter) => {
                    let owned;
                    let ready: &[Endpoint] = match &regrouped {
                        Some(all) => all.get(&key).map(Vec::as_slice).unwrap_or(&[]),
                        None => {
                            owned = self.ready(&key);
                            &owned
                        }
                    };
                    Some(model::entry(
                        &self.me,
                        &key,
                        svc,
                        ready,
                        &self.usable,
                        &self.leaving,
                        &config,
                    ))
                }
                _ => None,
            };
            let told = entry.as_ref().and_then(|e| {
                let mut v = e.vips.clone()?;
                if e.planned.is_some() {
                    v.healthy = self.health.get(&key).copied().unwrap_or(false);
                }
                Some(v)
            });
            let old = self.derived.remove(&key);
            let old_told = old.as_ref().and_then(|d| d.told.clone());
            let told = match (old_told, told) {
                (Some(o), Some(n)) if *o == n => Some(o),
                (_, Some(n)) => {
                    let n = Arc::new(n);
                    delta.changes.push(Change::Put(Arc::clone(&n)));
                    Some(n)
                }
                (Some(_), None) => {
                    delta.changes.push(Change::Remove(key.clone()));
                    None
                }
                (None, None) => None,
            };
            let entry = entry.unwrap_or_default();
            let old_entry = old.map(|d| d.entry).unwrap_or_default();
            if old_entry.planned != entry.planned {
                self.plan_dirty = true;
            }
            if let Some(why) = &entry.problem {
                if old_entry.problem.as_ref() != Some(why) {
                    delta.problems.push((key.clone(), why.clone()));
                }
            }
            delta.touched.insert(key.clone());
            if told.is_some() || entry != model::Entry::default() {
                self.derived.insert(key, Derived { entry, told });
            }
        }
        if self.plan_dirty {
            self.plan_dirty = false;
            delta.plan = Some(Plan {
                services: self
                    .derived
                    .values()
                    .filter_map(|d| d.entry.planned.clone())
                    .collect::<Vec<PlannedService>>(),
            });
        }
        delta
    }

    /// A Service's ready endpoints, its slices taken in name order.
    fn ready(&self, service: &str) -> Vec<Endpoint> {
        self.by_service
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|s| self.slices.get(s))
            .flat_map(|(_, eps)| eps.iter().cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).expect("valid object")
    }

    fn service(i: u32, local: bool, forward: bool) -> Service {
        obj(json!({
            "metadata": {"namespace": format!("ns{}", i % 3), "name": format!("s{i}"), "uid": format!("u{i}"),
                         "annotations": {"ferrolb.io/forward": if forward { "true" } else { "false" }}},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": if local { "Local" } else { "Cluster" },
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": format!("203.0.113.{}", i % 200)}]}}
        }))
    }

    fn slice(service: u32, n: u32, endpoints: &[(u32, &str, bool)]) -> EndpointSlice {
        let eps: Vec<serde_json::Value> = endpoints
            .iter()
            .map(|(ip, node, ready)| json!({"addresses": [format!("10.0.{service}.{ip}")], "nodeName": node, "conditions": {"ready": ready}}))
            .collect();
        obj(json!({
            "metadata": {"namespace": format!("ns{}", service % 3), "name": format!("s{service}-{n}"),
                         "labels": {"kubernetes.io/service-name": format!("s{service}")}},
            "addressType": "IPv4", "endpoints": eps,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }))
    }

    fn node(name: &str, labels: serde_json::Value) -> Node {
        obj(json!({"metadata": {"name": name, "labels": labels}}))
    }

    /// An incremental index of node n1, the only node and speaker, with no configuration yet.
    fn one_node() -> Index {
        let mut index = Index::new("n1", Filter::default(), Recompute::Incremental);
        index.set_nodes(
            &[node("n1", json!({}))],
            &["n1".to_string()].into(),
            BTreeSet::new(),
        );
        index
    }

    fn config() -> Arc<Config> {
        Arc::new(
            Config::from_yaml("pools: [{name: vips, addresses: [203.0.113.0/24]}]\n")
                .expect("valid config"),
        )
    }

    /// What the announcers hold, from the changes they were sent.
    fn held(table: &mut crate::announce::Table, delta: &Delta) {
        table.apply(&delta.changes);
    }

    /// The reference: every object at once through `model::desired`, with
    /// the same health rule as the runner applies.
    fn reference(
        index: &Index,
        services: &BTreeMap<String, Service>,
        slices: &BTreeMap<String, EndpointSlice>,
        nodes: &[Node],
        speakers: &BTreeSet<String>,
    ) -> (Vec<ServiceVips>, Plan) {
        let svc: Vec<&Service> = services.values().collect();
        let sl: Vec<&EndpointSlice> = slices.values().collect();
        let d = model::desired(
            &index.me,
            &svc,
            &sl,
            nodes,
            speakers,
            &index.leaving,
            index.config.as_ref().unwrap(),
            &index.filter,
        );
        let forwarded: BTreeSet<&str> = d
            .plan
            .services
            .iter()
            .map(|s| s.service.name.as_str())
            .collect();
        let vips = d
            .vips
            .into_iter()
            .map(|mut v| {
                if forwarded.contains(v.key.as_str()) {
                    v.healthy = index.health.get(&v.key).copied().unwrap_or(false);
                }
                v
            })
            .collect();
        (vips, d.plan)
    }

    /// Random changes, one at a time: after every flush what the announcers
    /// hold and the forwarder's plan equal a recomputation from scratch, in
    /// both modes; and a change to one Service or slice touches that Service
    /// alone.
    #[test]
    fn incremental_changes_end_where_a_full_recompute_does() {
        for mode in [Recompute::Incremental, Recompute::Full] {
            let mut seed = 0x2545_f491_4f6c_dd1du64;
            let mut next = move |n: u64| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed % n) as u32
            };
            let mut index = Index::new("n1", Filter::default(), mode);
            index.set_config(config());
            let mut nodes = vec![
                node("n1", json!({})),
                node("n2", json!({})),
                node("n3", json!({})),
            ];
            let mut speakers: BTreeSet<String> = ["n1", "n2", "n3"].map(String::from).into();
            index.set_nodes(&nodes, &speakers, BTreeSet::new());
            let mut services: BTreeMap<String, Service> = BTreeMap::new();
            let mut slices: BTreeMap<String, EndpointSlice> = BTreeMap::new();
            let mut table = crate::announce::Table::default();
            let mut plan = Plan::default();
            let node_names = ["n1", "n2", "n3"];
            for step in 0..3_000 {
                let i = next(20);
                let single = match next(12) {
                    0 => {
                        let s = service(i, next(2) == 0, next(2) == 0);
                        services.insert(key_of(&s.metadata), s.clone());
                        index.apply_service(&s);
                        true
                    }
                    1 => {
                        let s = service(i, false, false);
                        services.remove(&key_of(&s.metadata));
                        index.delete_service(&s);
                        true
                    }
                    2 => {
                        let sl = slice(i, next(2), &[]);
                        slices.remove(&key_of(&sl.metadata));
                        index.delete_slice(&sl);
                        true
                    }
                    3 if step % 10 == 0 => {
                        // A node labelled out, or back.
                        let n = next(3) as usize;
                        let labels = if next(2) == 0 {
                            json!({model::EXCLUDE_LABEL: ""})
                        } else {
                            json!({})
                        };
                        nodes[n] = node(node_names[n], labels);
                        index.set_nodes(&nodes, &speakers, BTreeSet::new());
                        false
                    }
                    4 if step % 10 == 0 => {
                        // A speaker goes or comes.
                        let n = node_names[next(3) as usize].to_string();
                        if !speakers.remove(&n) {
                            speakers.insert(n);
                        }
                        index.set_nodes(&nodes, &speakers, BTreeSet::new());
                        false
                    }
                    5 => {
                        let mut h = index.health.clone();
                        h.insert(format!("ns{}/s{i}", i % 3), next(2) == 0);
                        index.set_health(&h);
                        true
                    }
                    _ => {
                        let eps: Vec<(u32, &str, bool)> = (0..next(3))
                            .map(|e| (e, node_names[next(3) as usize], next(3) != 0))
                            .collect();
                        let sl = slice(i, next(2), &eps);
                        slices.insert(key_of(&sl.metadata), sl.clone());
                        index.apply_slice(&sl);
                        true
                    }
                };
                let delta = index.flush();
                if single && mode == Recompute::Incremental {
                    assert!(delta.touched.len() <= 1, "step {step}: {:?}", delta.touched);
                }
                held(&mut table, &delta);
                if let Some(p) = delta.plan {
                    plan = p;
                }
                let (want, want_plan) = reference(&index, &services, &slices, &nodes, &speakers);
                let have: Vec<ServiceVips> = table.iter().map(|s| (**s).clone()).collect();
                assert_eq!(have, want, "step {step} ({mode:?})");
                assert_eq!(plan, want_plan, "step {step} ({mode:?})");
            }
        }
    }

    #[test]
    fn a_relist_removes_what_it_did_not_list_and_keeps_the_rest_untouched() {
        let mut index = one_node();
        index.set_config(config());
        for i in 0..3 {
            index.apply_service(&service(i, false, false));
            index.apply_slice(&slice(i, 0, &[(1, "n1", true)]));
        }
        assert_eq!(index.flush().changes.len(), 3);
        // The watch restarts (a 410): s1 and its slice are gone meanwhile.
        index.relist(Kind::Service);
        index.relist(Kind::Slice);
        for i in [0, 2] {
            index.apply_service(&service(i, false, false));
            index.apply_slice(&slice(i, 0, &[(1, "n1", true)]));
        }
        index.relist_done(Kind::Service);
        index.relist_done(Kind::Slice);
        let delta = index.flush();
        assert_eq!(delta.changes, [Change::Remove("ns1/s1".into())]);
        assert_eq!(delta.touched, BTreeSet::from(["ns1/s1".to_string()]));
    }

    /// Advertisements select Services by label, so a relabelled Service is
    /// told again, with its new labels (and nothing else changes).
    #[test]
    fn a_relabelled_service_is_told_with_its_new_labels() {
        let mut index = one_node();
        index.set_config(config());
        let mut s = service(1, false, false);
        index.apply_service(&s);
        index.apply_slice(&slice(1, 0, &[(1, "n1", true)]));
        let first = index.flush();
        let [Change::Put(before)] = &first.changes[..] else {
            panic!("{:?}", first.changes)
        };
        assert!(before.labels.is_empty());
        s.metadata.labels = Some([("exposure".to_string(), "internet".to_string())].into());
        index.apply_service(&s);
        let delta = index.flush();
        let [Change::Put(after)] = &delta.changes[..] else {
            panic!("{:?}", delta.changes)
        };
        assert_eq!(
            after.labels.get("exposure").map(String::as_str),
            Some("internet")
        );
        assert_eq!((&after.vips, &after.nodes), (&before.vips, &before.nodes));
    }

    #[test]
    fn nothing_is_told_before_a_configuration_and_every_service_after_one() {
        let mut index = one_node();
        index.apply_service(&service(7, false, false));
        index.apply_slice(&slice(7, 0, &[(1, "n1", true)]));
        assert_eq!(index.flush(), Delta::default());
        index.set_config(config());
        let delta = index.flush();
        assert_eq!(delta.changes.len(), 1);
        // A flush with no change in between says nothing.
        let again = index.flush();
        assert!(again.changes.is_empty() && again.touched.is_empty() && again.plan.is_none());
    }
}
