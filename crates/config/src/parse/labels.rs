//! Label selectors (`nodeSelector`, `namespaceSelector`) and label maps.

use super::*;

pub(super) fn selector(ctx: &mut Ctx, f: Field<'_>) -> Option<LabelSelector> {
    let obj = ctx.object(f, &["matchLabels", "matchExpressions"])?;
    let mut sel = LabelSelector::default();
    if let Some(f) = obj.get("matchLabels") {
        if let Some(labels) = labels(ctx, f) {
            sel.match_labels = labels;
        }
    }
    if let Some(f) = obj.get("matchExpressions") {
        sel.match_expressions = ctx.list(f, requirement);
    }
    Some(sel)
}

pub(super) fn labels(ctx: &mut Ctx, f: Field<'_>) -> Option<BTreeMap<String, String>> {
    let Value::Map(entries) = f.value else {
        ctx.error(
            f.path,
            format!("expected a mapping of labels, found {}", f.value.kind()),
        );
        return None;
    };
    let mut out = BTreeMap::new();
    for (k, v) in entries {
        let path = f.path.key(k);
        if let Err(e) = check_label_key(k) {
            ctx.error(&path, e);
            continue;
        }
        let value = match v {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            Value::Bool(b) => b.to_string(),
            other => {
                ctx.error(
                    &path,
                    format!("expected a label value, found {}", other.kind()),
                );
                continue;
            }
        };
        if let Err(e) = check_label_value(&value) {
            ctx.error(&path, e);
            continue;
        }
        out.insert(k.clone(), value);
    }
    Some(out)
}

pub(super) fn requirement(ctx: &mut Ctx, f: Field<'_>) -> Option<Requirement> {
    let obj = ctx.object(f, &["key", "operator", "values"])?;
    let key = obj.require(ctx, "key", "name the label").and_then(|f| {
        let k = ctx.string(f)?;
        check_label_key(&k).map_err(|e| ctx.error(f.path, e)).ok()?;
        Some(k)
    });
    let op = obj
        .require(ctx, "operator", "use In, NotIn, Exists or DoesNotExist")
        .and_then(|f| match ctx.string(f)?.as_str() {
            "In" => Some(SelectorOp::In),
            "NotIn" => Some(SelectorOp::NotIn),
            "Exists" => Some(SelectorOp::Exists),
            "DoesNotExist" => Some(SelectorOp::DoesNotExist),
            other => {
                ctx.error(
                    f.path,
                    format!("{other:?} is not an operator; use In, NotIn, Exists or DoesNotExist"),
                );
                None
            }
        });
    let values = obj
        .get("values")
        .map(|f| ctx.strings(f))
        .unwrap_or_default();
    let op = op?;
    let needs_values = matches!(op, SelectorOp::In | SelectorOp::NotIn);
    if needs_values && values.is_empty() {
        ctx.error(
            &obj.path().key("values"),
            "In and NotIn need at least one value",
        );
        return None;
    }
    if !needs_values && !values.is_empty() {
        ctx.error(
            &obj.path().key("values"),
            "Exists and DoesNotExist take no values; remove them",
        );
        return None;
    }
    Some(Requirement {
        key: key?,
        op,
        values,
    })
}
