//! MetalLB's configuration read and converted to ferrolb's.
//!
//! Input: what `kubectl get ipaddresspools,l2advertisements,bgpadvertisements,
//! bgppeers,communities,bfdprofiles -A -o yaml` prints (a `List`, or a stream
//! of documents; metallb.io v1beta1 and v1beta2), and MetalLB's legacy
//! ConfigMap (0.12 and before) as a ConfigMap object or its `config` key
//! alone. Output: a ferrolb configuration, validated by ferrolb's own
//! parser, and a [`Report`] with the fate of every field met: mapped,
//! converted (and how), dropped (why, and what to do instead), or unknown.
//! Nothing is refused silently. Pure: no I/O, no cluster access.

mod convert;
pub mod fields;
mod legacy;
pub mod report;
pub mod yaml;

pub use convert::{go_duration_ms, label, Objects};
pub use report::{Note, Outcome, Report};

use serde_json::Value;
use std::collections::BTreeSet;

/// Why an input could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Not YAML.
    #[error("the input is not YAML: {0}")]
    Yaml(String),
    /// YAML, but nothing MetalLB in it.
    #[error("no MetalLB configuration in the input: expected metallb.io objects (kubectl get ipaddresspools,l2advertisements,bgpadvertisements,bgppeers,communities,bfdprofiles -A -o yaml) or MetalLB's legacy ConfigMap")]
    Empty,
}

/// A conversion's result.
#[derive(Debug, Clone)]
pub struct Import {
    /// The ferrolb configuration (`config.yaml` of the ferrolb ConfigMap).
    pub config: String,
    /// What became of every field.
    pub report: Report,
    /// ferrolb's validation errors of `config` (empty: it validates).
    pub errors: Vec<String>,
}

const KINDS: [&str; 6] = [
    "IPAddressPool",
    "L2Advertisement",
    "BGPAdvertisement",
    "BGPPeer",
    "Community",
    "BFDProfile",
];

/// Sorts the objects of `docs` by kind; notes what is ignored.
fn gather(
    doc: &Value,
    out: &mut Objects,
    quiet: &mut BTreeSet<String>,
    report: &mut Report,
    found: &mut bool,
) {
    if doc.is_null() {
        return;
    }
    let kind = doc["kind"].as_str().unwrap_or_default();
    if kind == "List" || kind.ends_with("List") && doc["items"].is_array() {
        for item in doc["items"].as_array().into_iter().flatten() {
            gather(item, out, quiet, report, found);
        }
        return;
    }
    if kind.is_empty() && (doc.get("address-pools").is_some() || doc.get("peers").is_some()) {
        *found = true;
        legacy::objects(doc, "legacy configuration", out, quiet, report);
        return;
    }
    let api = doc["apiVersion"].as_str().unwrap_or_default();
    let label = convert::label(doc);
    if kind == "ConfigMap" {
        match doc["data"]["config"].as_str() {
            Some(text) => match serde_saphyr::from_str::<Value>(text) {
                Ok(config) => {
                    *found = true;
                    legacy::objects(&config, &label, out, quiet, report);
                }
                Err(e) => report.note(
                    &label,
                    "data.config",
                    Outcome::Dropped(format!("not YAML ({e}): nothing read from this ConfigMap")),
                ),
            },
            None => report.note(
                &label,
                "data",
                Outcome::Dropped("a ConfigMap without a config key: not MetalLB's, ignored".into()),
            ),
        }
        return;
    }
    let metallb = api.starts_with("metallb.io/");
    if !metallb || !KINDS.contains(&kind) {
        let why = if metallb {
            format!("{kind} ({api}) is not configuration ferrolb converts (AddressPool: convert it to IPAddressPool with MetalLB first; status objects carry nothing to convert)")
        } else {
            format!("not a MetalLB object ({api} {kind}): ignored")
        };
        report.note(&label, "", Outcome::Dropped(why));
        return;
    }
    *found = true;
    let list = match kind {
        "IPAddressPool" => &mut out.pools,
        "L2Advertisement" => &mut out.l2,
        "BGPAdvertisement" => &mut out.bgp_ads,
        "BGPPeer" => &mut out.peers,
        "Community" => &mut out.communities,
        _ => &mut out.bfd,
    };
    list.push(doc.clone());
}

/// Reads MetalLB's configuration from `text` and converts it.
pub fn import(text: &str) -> Result<Import, ImportError> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|e| ImportError::Yaml(e.to_string()))?;
    import_values(&docs)
}

/// Converts MetalLB's objects already parsed (documents, `List`s, the
/// legacy ConfigMap), as [`import`] does with text: what `--config-source
/// metallb` feeds it from the API server's watches.
pub fn import_values(docs: &[Value]) -> Result<Import, ImportError> {
    let mut objects = Objects::default();
    let mut quiet = BTreeSet::new();
    let mut report = Report::default();
    let mut found = false;
    for d in docs {
        gather(d, &mut objects, &mut quiet, &mut report, &mut found);
    }
    if !found {
        return Err(ImportError::Empty);
    }
    let (tree, notes) = convert::convert(&objects, quiet.clone());
    for mut n in notes.notes {
        // Problems found in objects made from the legacy ConfigMap, told in its terms.
        if quiet.contains(&n.object) {
            if let Some(p) = legacy::legacy_path(&n.object, &n.field) {
                n.field = p;
            }
        }
        report.notes.push(n);
    }
    let config = format!(
        "# Converted from MetalLB by ferrolb-controller import-metallb; the report lists every field's fate.\n{}",
        yaml::to_string(&tree)
    );
    let errors = match ferrolb_config::Config::from_yaml(&config) {
        Ok(_) => Vec::new(),
        Err(e) => e.to_string().lines().map(String::from).collect(),
    };
    Ok(Import {
        config,
        report,
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_that_is_not_metallb_is_refused_with_what_was_expected() {
        assert!(matches!(import("a: [b"), Err(ImportError::Yaml(_))));
        assert!(matches!(import(""), Err(ImportError::Empty)));
        assert!(matches!(
            import("apiVersion: v1\nkind: Secret\nmetadata: {name: x}\n"),
            Err(ImportError::Empty)
        ));
        let e = import("kind: Service\n").unwrap_err().to_string();
        assert!(e.contains("kubectl get ipaddresspools"), "{e}");
    }

    #[test]
    fn objects_beside_the_configuration_are_reported_as_ignored() {
        let text = "apiVersion: v1\nkind: Secret\nmetadata: {name: tor, namespace: metallb-system}\n---\napiVersion: metallb.io/v1beta1\nkind: AddressPool\nmetadata: {name: old}\nspec: {protocol: layer2, addresses: [192.0.2.0/28]}\n---\napiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: p}\nspec: {addresses: [192.0.2.16/28]}\n";
        let i = import(text).unwrap();
        assert!(i.errors.is_empty(), "{:?}", i.errors);
        let report = i.report.to_string();
        assert!(
            report.contains("Secret metallb-system/tor\n  DROPPED    : not a MetalLB object"),
            "{report}"
        );
        assert!(report.contains("AddressPool old\n  DROPPED    : AddressPool (metallb.io/v1beta1) is not configuration ferrolb converts"), "{report}");
        assert!(i.config.contains("192.0.2.16/28") && !i.config.contains("192.0.2.0/28"));
    }

    #[test]
    fn the_legacy_configuration_alone_is_read_too() {
        let i = import("address-pools:\n- name: default\n  protocol: layer2\n  addresses: [192.0.2.0/28]\n  surprise: 1\n").unwrap();
        assert!(i.errors.is_empty());
        assert!(i.config.contains("l2:\n- pools: [default]"), "{}", i.config);
        let report = i.report.to_string();
        assert!(
            report.contains("UNKNOWN    address-pools[].surprise"),
            "{report}"
        );
    }

    #[test]
    fn a_result_ferrolb_refuses_is_reported_not_hidden() {
        // Two pools sharing an address: MetalLB refuses it too; the
        // conversion says what ferrolb's validation says.
        let text = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: a}\nspec: {addresses: [192.0.2.0/28]}\n---\napiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: b}\nspec: {addresses: [192.0.2.8/29]}\n";
        let i = import(text).unwrap();
        assert!(!i.errors.is_empty());
        assert!(i.errors.join("\n").contains("pools[1]"), "{:?}", i.errors);
    }

    #[test]
    fn peers_without_advertisements_are_left_out_not_given_every_pool() {
        let text = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: a}\nspec: {addresses: [192.0.2.0/28]}\n---\napiVersion: metallb.io/v1beta2\nkind: BGPPeer\nmetadata: {name: tor}\nspec: {myASN: 64512, peerASN: 64500, peerAddress: 10.0.0.1}\n";
        let i = import(text).unwrap();
        assert!(!i.config.contains("bgp:"), "{}", i.config);
        assert!(i
            .report
            .to_string()
            .contains("no BGPAdvertisement in the input"));
    }

    #[test]
    fn an_advertisement_whose_pools_all_fail_to_resolve_is_left_out_not_widened() {
        let text = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: a, labels: {x: y}}\nspec: {addresses: [192.0.2.0/28]}\n---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: l}\nspec: {ipAddressPoolSelectors: [{matchLabels: {x: z}}]}\n";
        let i = import(text).unwrap();
        assert!(!i.config.contains("l2:"), "{}", i.config);
        assert!(i.report.to_string().contains("it selects no pool"));
    }
}
