//! Whatever the objects hold, the converter answers with a configuration
//! and a report (or a clear error), never a panic: every MetalLB kind with
//! arbitrary values in its fields, known and unknown.

use proptest::prelude::*;
use serde_json::{json, Value};

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        "[a-z0-9:./-]{0,12}".prop_map(Value::String),
        Just(json!("192.0.2.0/24")),
        Just(json!("2001:db8::/64")),
        Just(json!("large:1:2:3")),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z-]{1,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const FIELDS: &[(&str, &[&str])] = &[
    (
        "IPAddressPool",
        &[
            "addresses",
            "autoAssign",
            "avoidBuggyIPs",
            "serviceAllocation",
        ],
    ),
    (
        "L2Advertisement",
        &[
            "ipAddressPools",
            "ipAddressPoolSelectors",
            "nodeSelectors",
            "interfaces",
        ],
    ),
    (
        "BGPAdvertisement",
        &[
            "aggregationLength",
            "localPref",
            "communities",
            "ipAddressPools",
            "ipAddressPoolSelectors",
            "peers",
            "nodeSelectors",
        ],
    ),
    (
        "BGPPeer",
        &[
            "myASN",
            "peerASN",
            "peerAddress",
            "holdTime",
            "keepaliveTime",
            "passwordSecret",
            "bfdProfile",
            "ebgpMultiHop",
            "routerID",
            "nodeSelectors",
            "vrf",
        ],
    ),
    ("Community", &["communities"]),
    (
        "BFDProfile",
        &[
            "receiveInterval",
            "transmitInterval",
            "detectMultiplier",
            "echoMode",
        ],
    ),
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_field_values_give_a_report_not_a_panic(values in prop::collection::vec(value(), 40), names in prop::collection::vec("[A-Za-z.]{0,8}", 6)) {
        let mut docs = Vec::new();
        let mut i = 0;
        for (k, (kind, fields)) in FIELDS.iter().enumerate() {
            let mut spec = serde_json::Map::new();
            for f in *fields {
                spec.insert(f.to_string(), values[i % values.len()].clone());
                i += 1;
            }
            spec.insert("surprise".into(), values[i % values.len()].clone());
            i += 1;
            docs.push(json!({"apiVersion": "metallb.io/v1beta1", "kind": kind, "metadata": {"name": names[k], "labels": values[i % values.len()]}, "spec": spec}));
        }
        let text = json!({"apiVersion": "v1", "kind": "List", "items": docs}).to_string();
        let import = ferrolb_metallb::import(&text).expect("MetalLB objects are there");
        // Whatever it wrote, ferrolb's parser reads it (valid or with errors, never garbled YAML).
        let _ = ferrolb_config::Config::from_yaml(&import.config);
        prop_assert!(import.report.to_string().contains("surprise"));
    }

    #[test]
    fn any_legacy_configuration_gives_a_report_not_a_panic(pools in value(), peers in value(), communities in value(), bfd in value()) {
        let config = json!({"address-pools": pools, "peers": peers, "bgp-communities": communities, "bfd-profiles": bfd});
        let _ = ferrolb_metallb::import(&config.to_string());
    }
}
