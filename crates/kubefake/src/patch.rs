//! The patch formats the API server accepts: JSON merge patch (RFC 7386,
//! also used for strategic merge patches), JSON patch (RFC 6902), and
//! server-side apply, treated as a merge patch plus field ownership so that
//! two appliers that disagree about a field get 409 Conflict.

use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// RFC 7386: objects merge recursively, `null` deletes, anything else replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let target = target.as_object_mut().expect("made an object above");
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn split_pointer(pointer: &str) -> Result<(String, String), String> {
    if pointer.is_empty() {
        return Err("the root cannot be the target of this operation".into());
    }
    let idx = pointer
        .rfind('/')
        .ok_or_else(|| format!("invalid JSON pointer {pointer:?}"))?;
    Ok((pointer[..idx].to_string(), unescape(&pointer[idx + 1..])))
}

fn parent_mut<'a>(doc: &'a mut Value, parent: &str) -> Result<&'a mut Value, String> {
    doc.pointer_mut(parent)
        .ok_or_else(|| format!("path {parent:?} does not exist"))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, key) = split_pointer(path)?;
    match parent_mut(doc, &parent)? {
        Value::Object(map) => {
            map.insert(key, value);
            Ok(())
        }
        Value::Array(items) => {
            let idx = if key == "-" {
                items.len()
            } else {
                key.parse::<usize>()
                    .map_err(|_| format!("invalid array index {key:?}"))?
            };
            if idx > items.len() {
                return Err(format!("array index {idx} out of bounds"));
            }
            items.insert(idx, value);
            Ok(())
        }
        _ => Err(format!("{parent:?} is not a container")),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, key) = split_pointer(path)?;
    match parent_mut(doc, &parent)? {
        Value::Object(map) => map
            .remove(&key)
            .ok_or_else(|| format!("path {path:?} does not exist")),
        Value::Array(items) => {
            let idx: usize = key
                .parse()
                .map_err(|_| format!("invalid array index {key:?}"))?;
            if idx >= items.len() {
                return Err(format!("array index {idx} out of bounds"));
            }
            Ok(items.remove(idx))
        }
        _ => Err(format!("{parent:?} is not a container")),
    }
}

/// RFC 6902 JSON patch. The whole patch applies or none of it does.
pub fn json_patch(doc: &Value, ops: &Value) -> Result<Value, String> {
    let ops = ops
        .as_array()
        .ok_or("a JSON patch must be an array of operations")?;
    let mut out = doc.clone();
    for op in ops {
        let name = op
            .get("op")
            .and_then(Value::as_str)
            .ok_or("operation without \"op\"")?;
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or("operation without \"path\"")?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or(format!("{name} without \"value\""))
        };
        let from = || {
            op.get("from")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or(format!("{name} without \"from\""))
        };
        match name {
            "add" => add(&mut out, path, value()?)?,
            "remove" => {
                remove(&mut out, path)?;
            }
            "replace" => {
                if out.pointer(path).is_none() {
                    return Err(format!("path {path:?} does not exist"));
                }
                *out.pointer_mut(path).expect("checked above") = value()?;
            }
            "move" => {
                let v = remove(&mut out, &from()?)?;
                add(&mut out, path, v)?;
            }
            "copy" => {
                let v = out
                    .pointer(&from()?)
                    .cloned()
                    .ok_or("copy from a missing path")?;
                add(&mut out, path, v)?;
            }
            "test" => {
                if out.pointer(path) != Some(&value()?) {
                    return Err(format!("test failed at {path:?}"));
                }
            }
            other => return Err(format!("unknown JSON patch operation {other:?}")),
        }
    }
    Ok(out)
}

/// Who last set each leaf field of an object: dotted path -> field manager.
pub type Owners = BTreeMap<String, String>;

/// Fields that identify an object rather than belong to anyone.
fn unowned(path: &str) -> bool {
    matches!(
        path,
        ".apiVersion"
            | ".kind"
            | ".metadata.name"
            | ".metadata.namespace"
            | ".metadata.resourceVersion"
            | ".metadata.uid"
            | ".metadata.creationTimestamp"
            | ".metadata.generation"
            | ".metadata.managedFields"
    )
}

/// Leaf fields of `value` as dotted paths. Arrays are leaves (atomic lists),
/// as are `null`s (a request to delete the field).
pub fn leaves(value: &Value) -> Vec<(String, &Value)> {
    fn walk<'a>(prefix: String, v: &'a Value, out: &mut Vec<(String, &'a Value)>) {
        match v {
            Value::Object(map) if !map.is_empty() => {
                for (k, child) in map {
                    walk(format!("{prefix}.{k}"), child, out);
                }
            }
            _ => out.push((prefix, v)),
        }
    }
    let mut out = Vec::new();
    walk(String::new(), value, &mut out);
    out.retain(|(p, _)| !p.is_empty() && !unowned(p));
    out
}

fn at<'a>(doc: &'a Value, dotted: &str) -> Option<&'a Value> {
    let mut cur = doc;
    for seg in dotted.trim_start_matches('.').split('.') {
        cur = cur.get(seg)?;
    }
    Some(cur)
}

/// The fields a server-side apply by `manager` would take from another
/// manager while changing their value: each is a conflict unless forced.
pub fn apply_conflicts(
    current: &Value,
    patch: &Value,
    owners: &Owners,
    manager: &str,
) -> Vec<String> {
    leaves(patch)
        .into_iter()
        .filter_map(|(path, value)| {
            let owner = owners.get(&path)?;
            let differs = at(current, &path).unwrap_or(&Value::Null) != value;
            (owner != manager && differs).then(|| format!("conflict with {owner:?}: {path}"))
        })
        .collect()
}

/// After a write by `manager` that turned `before` into `after`: every leaf
/// the write set (for apply: every leaf in the patch) now belongs to it, and
/// leaves that disappeared belong to nobody.
pub fn record_owners(
    owners: &mut Owners,
    before: &Value,
    after: &Value,
    patch_leaves: Option<&Value>,
    manager: &str,
) {
    let after_leaves: BTreeMap<String, &Value> = leaves(after).into_iter().collect();
    owners.retain(|path, _| after_leaves.contains_key(path));
    match patch_leaves {
        Some(patch) => {
            for (path, _) in leaves(patch) {
                if after_leaves.contains_key(&path) {
                    owners.insert(path, manager.to_string());
                }
            }
        }
        None => {
            for (path, value) in after_leaves {
                if at(before, &path) != Some(value) {
                    owners.insert(path, manager.to_string());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_rfc7386_examples() {
        // The table of RFC 7386 appendix A.
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (
                json!({"a":"b","b":"c"}),
                json!({"a":null}),
                json!({"b":"c"}),
            ),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"a":"foo"}), json!(null), json!(null)),
            (json!({"a":"foo"}), json!("bar"), json!("bar")),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (
                json!({}),
                json!({"a":{"bb":{"ccc":null}}}),
                json!({"a":{"bb":{}}}),
            ),
        ];
        for (target, patch, want) in cases {
            let mut t = target.clone();
            merge(&mut t, &patch);
            assert_eq!(t, want, "{target} + {patch}");
        }
    }

    #[test]
    fn json_patch_operations() {
        let doc = json!({"a": {"b": [1, 2]}, "c": "x"});
        let out = json_patch(
            &doc,
            &json!([
                {"op": "add", "path": "/a/b/-", "value": 3},
                {"op": "add", "path": "/a/b/0", "value": 0},
                {"op": "replace", "path": "/c", "value": "y"},
                {"op": "copy", "from": "/c", "path": "/d"},
                {"op": "move", "from": "/d", "path": "/e"},
                {"op": "remove", "path": "/a/b/1"},
                {"op": "test", "path": "/e", "value": "y"},
                {"op": "add", "path": "/k~1v", "value": true}
            ]),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"a": {"b": [0, 2, 3]}, "c": "y", "e": "y", "k/v": true})
        );
        // Failures leave nothing half-applied (the input is untouched by construction).
        for bad in [
            json!([{"op": "test", "path": "/c", "value": "z"}]),
            json!([{"op": "replace", "path": "/missing", "value": 1}]),
            json!([{"op": "remove", "path": "/a/b/9"}]),
            json!([{"op": "frobnicate", "path": "/c"}]),
            json!({"op": "add"}),
        ] {
            assert!(json_patch(&doc, &bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn apply_conflicts_only_on_changed_fields_owned_by_others() {
        let current = json!({"spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}});
        let mut owners = Owners::new();
        record_owners(&mut owners, &json!({}), &current, Some(&current), "mgr-a");
        let same = json!({"spec": {"holderIdentity": "a"}});
        assert!(apply_conflicts(&current, &same, &owners, "mgr-b").is_empty());
        let other = json!({"spec": {"holderIdentity": "b"}});
        assert_eq!(
            apply_conflicts(&current, &other, &owners, "mgr-b"),
            vec!["conflict with \"mgr-a\": .spec.holderIdentity".to_string()]
        );
        assert!(apply_conflicts(&current, &other, &owners, "mgr-a").is_empty());
        // An update that deletes the field frees it.
        let released = json!({"spec": {"leaseDurationSeconds": 15}});
        record_owners(&mut owners, &current, &released, None, "mgr-c");
        assert!(apply_conflicts(&released, &other, &owners, "mgr-b").is_empty());
    }
}
