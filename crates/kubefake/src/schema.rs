//! Custom resources checked against their CustomResourceDefinition's
//! structural schema on every write, as the real API server does: fields
//! the schema does not declare are pruned (unless it preserves unknown
//! fields), defaults are filled in, and a wrong type, a missing required
//! field, a value out of `minimum`/`maximum`/`enum` or a too-long string is
//! refused with a 422 naming every offending path. A client that sends a
//! field MetalLB's CRDs do not know thus sees it vanish here as it would
//! in a cluster, instead of a fake that keeps whatever it is given.
//!
//! Not emulated: `format`, `pattern`, CEL `x-kubernetes-validations`,
//! `oneOf`/`anyOf`, list-type uniqueness and ObjectMeta pruning.

use serde_json::{Map, Value};

/// The `openAPIV3Schema` of `version` in CRD `crd`, if it declares one.
pub fn of_version<'a>(crd: &'a Value, version: &str) -> Option<&'a Value> {
    crd.pointer("/spec/versions")?
        .as_array()?
        .iter()
        .find(|v| v["name"] == version)?
        .pointer("/schema/openAPIV3Schema")
}

/// Whether CRD `crd` serves `version` (`served: true`).
pub fn serves(crd: &Value, version: &str) -> bool {
    crd.pointer("/spec/versions")
        .and_then(Value::as_array)
        .is_some_and(|vs| {
            vs.iter()
                .any(|v| v["name"] == version && v["served"].as_bool().unwrap_or(false))
        })
}

/// Prunes, defaults and validates `object` against `schema` in place; the
/// error lists every problem as `path: why`. `apiVersion`, `kind` and
/// `metadata` are the server's, never pruned here.
pub fn admit(schema: &Value, object: &mut Value) -> Result<(), Vec<String>> {
    let Some(map) = object.as_object_mut() else {
        return Err(vec!["the object must be a JSON object".into()]);
    };
    // The server's fields stay out of the schema's reach (`metadata` is
    // declared as a bare object, which would prune it to nothing).
    let kept: Vec<(String, Value)> = ["apiVersion", "kind", "metadata"]
        .into_iter()
        .filter_map(|k| map.remove_entry(k))
        .collect();
    let mut errors = Vec::new();
    check(schema, object, "", &mut errors);
    if let Some(map) = object.as_object_mut() {
        map.extend(kept);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn preserves(schema: &Value) -> bool {
    schema["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Checks `v` at `path` against `schema`, pruning and defaulting inside it.
fn check(schema: &Value, v: &mut Value, path: &str, errors: &mut Vec<String>) {
    if v.is_null() && schema["nullable"].as_bool() == Some(true) {
        return;
    }
    let int_or_string = schema["x-kubernetes-int-or-string"].as_bool() == Some(true);
    if let Some(want) = schema["type"].as_str() {
        let have = type_name(v);
        let ok = have == want
            || (want == "number" && have == "integer")
            || (int_or_string && matches!(have, "integer" | "string"));
        if !ok {
            errors.push(format!(
                "{path}: Invalid value: \"{have}\": {path} in body must be of type {want}: {}",
                short(v)
            ));
            return;
        }
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(v) {
            let list: Vec<String> = allowed.iter().map(short).collect();
            errors.push(format!(
                "{path}: Unsupported value: {}: supported values: {}",
                short(v),
                list.join(", ")
            ));
        }
    }
    match v {
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if let Some(min) = schema["minimum"].as_f64() {
                if x < min {
                    errors.push(format!(
                        "{path}: Invalid value: {n}: {path} in body should be greater than or equal to {min}"
                    ));
                }
            }
            if let Some(max) = schema["maximum"].as_f64() {
                if x > max {
                    errors.push(format!(
                        "{path}: Invalid value: {n}: {path} in body should be less than or equal to {max}"
                    ));
                }
            }
        }
        Value::String(s) => {
            if let Some(max) = schema["maxLength"].as_u64() {
                if s.chars().count() as u64 > max {
                    errors.push(format!("{path}: Too long: may not be longer than {max}"));
                }
            }
        }
        Value::Array(items) => {
            if let Some(max) = schema["maxItems"].as_u64() {
                if items.len() as u64 > max {
                    errors.push(format!(
                        "{path}: Too many: {} items, at most {max}",
                        items.len()
                    ));
                }
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    check(item_schema, item, &format!("{path}[{i}]"), errors);
                }
            }
        }
        Value::Object(map) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                let keys: Vec<String> = map.keys().cloned().collect();
                for k in keys {
                    match props.get(&k) {
                        Some(sub) => {
                            let child = map.get_mut(&k).expect("listed");
                            check(sub, child, &join(path, &k), errors);
                        }
                        None if preserves(schema) => {}
                        None => {
                            map.remove(&k);
                        }
                    }
                }
                fill_defaults(schema, map, path, errors);
                required(schema, map, path, errors);
            } else if let Some(extra) = schema.get("additionalProperties").filter(|a| a.is_object())
            {
                for (k, child) in map.iter_mut() {
                    check(extra, child, &join(path, k), errors);
                }
            } else if !preserves(schema) && schema.get("additionalProperties").is_none() {
                // A structural schema's object without properties keeps nothing.
                map.clear();
            }
        }
        _ => {}
    }
}

/// Fills in the declared defaults of absent fields (and checks them as values).
fn fill_defaults(
    schema: &Value,
    map: &mut Map<String, Value>,
    path: &str,
    errors: &mut Vec<String>,
) {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (k, sub) in props {
        if map.contains_key(k) {
            continue;
        }
        if let Some(d) = sub.get("default") {
            let mut v = d.clone();
            check(sub, &mut v, &join(path, k), errors);
            map.insert(k.clone(), v);
        }
    }
}

fn required(schema: &Value, map: &Map<String, Value>, path: &str, errors: &mut Vec<String>) {
    for r in schema["required"].as_array().into_iter().flatten() {
        if let Some(k) = r.as_str() {
            if !map.contains_key(k) {
                errors.push(format!("{}: Required value", join(path, k)));
            }
        }
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 64 {
        format!("{}...", s.chars().take(61).collect::<String>())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["myASN"],
                    "properties": {
                        "myASN": {"type": "integer", "format": "int64", "minimum": 0, "maximum": 4294967295u64},
                        "peerPort": {"type": "integer", "default": 179, "minimum": 1, "maximum": 16384},
                        "holdTime": {"type": "string"},
                        "dynamicASN": {"type": "string", "enum": ["internal", "external"]},
                        "nodeSelectors": {"type": "array", "items": {
                            "type": "object",
                            "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}}
                        }},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                    }
                },
                "status": {"type": "object"}
            }
        })
    }

    #[test]
    fn unknown_fields_are_pruned_and_defaults_filled() {
        let mut o = json!({
            "apiVersion": "metallb.io/v1beta2", "kind": "BGPPeer", "metadata": {"name": "a"},
            "spec": {"myASN": 64512, "serviceSelectors": [{}], "nodeSelectors": [{"matchLabels": {"a": "b"}, "extra": 1}],
                     "free": {"anything": [1]}},
            "top": true
        });
        admit(&schema(), &mut o).expect("valid");
        assert_eq!(
            o,
            json!({
                "apiVersion": "metallb.io/v1beta2", "kind": "BGPPeer", "metadata": {"name": "a"},
                "spec": {"myASN": 64512, "peerPort": 179, "nodeSelectors": [{"matchLabels": {"a": "b"}}],
                         "free": {"anything": [1]}}
            })
        );
    }

    #[test]
    fn every_violation_is_named_with_its_path() {
        let mut o = json!({"spec": {"myASN": "64512", "peerPort": 0, "dynamicASN": "both",
                                    "nodeSelectors": [{"matchLabels": {"a": 1}}]}});
        let errors = admit(&schema(), &mut o).expect_err("invalid");
        let text = errors.join("\n");
        for want in [
            "spec.myASN: Invalid value: \"string\"",
            "spec.peerPort: Invalid value: 0",
            "spec.dynamicASN: Unsupported value: \"both\"",
            "spec.nodeSelectors[0].matchLabels.a: Invalid value: \"integer\"",
        ] {
            assert!(text.contains(want), "{want} in:\n{text}");
        }
        let mut missing = json!({"spec": {}});
        assert_eq!(
            admit(&schema(), &mut missing).expect_err("invalid"),
            ["spec.myASN: Required value"]
        );
    }
}
