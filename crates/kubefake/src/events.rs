//! One Event store seen through two APIs, as the real server keeps it: the
//! objects are stored as core `v1` Events and `events.k8s.io/v1` is a view
//! converted on the way in and out. The field mapping mirrors
//! `Convert_v1_Event_To_core_Event` and `Convert_core_Event_To_v1_Event` in
//! kubernetes/kubernetes `pkg/apis/events/v1/conversion.go` (and the
//! generated conversions they call).

use serde_json::{Map, Value};

/// events.k8s.io/v1 name -> core v1 name, for the fields that differ.
const RENAMED: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn rename(v: Value, forward: bool, api_version: &str) -> Value {
    let Value::Object(map) = v else { return v };
    let mut out = Map::with_capacity(map.len());
    for (k, val) in map {
        let key = RENAMED
            .iter()
            .find(|(new, core)| if forward { new == &k } else { core == &k })
            .map(|(new, core)| if forward { *core } else { *new })
            .unwrap_or(&k)
            .to_string();
        out.insert(key, val);
    }
    out.insert("apiVersion".into(), Value::String(api_version.into()));
    out.insert("kind".into(), Value::String("Event".into()));
    Value::Object(out)
}

/// An `events.k8s.io/v1` Event as the core `v1` Event it is stored as.
pub fn to_core(v: Value) -> Value {
    rename(v, true, "v1")
}

/// A stored core `v1` Event as `events.k8s.io/v1` shows it.
pub fn to_events(v: Value) -> Value {
    rename(v, false, "events.k8s.io/v1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_two_event_apis_map_field_for_field() {
        let new = json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "web.1", "namespace": "shop"},
            "eventTime": "2026-12-02T03:00:00.000000Z",
            "regarding": {"kind": "Service", "name": "web", "namespace": "shop"},
            "note": "assigned 192.0.2.10", "reason": "IPAllocated", "type": "Normal",
            "action": "Allocate", "reportingController": "ferrolb.io/controller",
            "reportingInstance": "ctl-1", "deprecatedCount": 3,
            "series": {"count": 2, "lastObservedTime": "2026-12-02T03:00:01.000000Z"}
        });
        let core = to_core(new.clone());
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["involvedObject"]["name"], "web");
        assert_eq!(core["message"], "assigned 192.0.2.10");
        assert_eq!(core["reportingComponent"], "ferrolb.io/controller");
        assert_eq!(core["reportingInstance"], "ctl-1");
        assert_eq!(core["count"], 3);
        assert_eq!(core["series"]["count"], 2);
        assert!(core.get("regarding").is_none() && core.get("note").is_none());
        assert_eq!(to_events(core), new, "the round trip loses nothing");
    }
}
