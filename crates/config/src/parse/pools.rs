//! The `pools` section.

use super::*;

pub(super) fn pool(ctx: &mut Ctx, f: Field<'_>) -> Option<Pool> {
    let obj = ctx.object(
        f,
        &[
            "name",
            "addresses",
            "autoAssign",
            "avoidBuggyIPs",
            "priority",
            "namespaces",
            "serviceSelector",
            "namespaceSelector",
        ],
    )?;
    let name = name(ctx, &obj, "pool");
    let entries: Vec<(Path, AddrSpec)> =
        match obj.require(ctx, "addresses", "list CIDRs or a-b ranges") {
            Some(f) => {
                if matches!(f.value, Value::Seq(v) if v.is_empty()) {
                    ctx.error(f.path, "is empty; list at least one CIDR or a-b range");
                }
                ctx.list(f, |ctx, f| {
                    ctx.parse::<AddrSpec>(f).map(|s| (f.path.clone(), s))
                })
            }
            None => Vec::new(),
        };
    // Overlap inside one pool is almost always a typo (a wrong prefix length), so it is refused.
    let mut by_start: Vec<&(Path, AddrSpec)> = entries.iter().collect();
    by_start.sort_by_key(|(_, s)| s.interval());
    for w in by_start.windows(2) {
        let (a, b) = (w[0].1.interval(), w[1].1.interval());
        if a.family() == b.family() && b.start() <= a.end() {
            ctx.error(
                &w[1].0,
                format!(
                    "{} overlaps {} ({}) in the same pool; remove one",
                    w[1].1,
                    w[0].1,
                    w[0].0.as_str()
                ),
            );
        }
    }
    let specs: Vec<AddrSpec> = entries.into_iter().map(|(_, s)| s).collect();
    let addresses = IpSet::from_intervals(specs.iter().map(|s| s.interval()));
    if addresses.count(Family::V6) == u128::MAX {
        ctx.error(
            &obj.path().key("addresses"),
            "covers the entire IPv6 address space; use a real prefix such as 2001:db8::/64",
        );
    }
    let auto_assign = obj
        .get("autoAssign")
        .and_then(|f| ctx.boolean(f))
        .unwrap_or(true);
    let avoid_buggy_ips = obj
        .get("avoidBuggyIPs")
        .and_then(|f| ctx.boolean(f))
        .unwrap_or(false);
    let priority = obj
        .get("priority")
        .and_then(|f| ctx.uint(f, 0, u32::MAX as u64));
    let namespaces = obj
        .get("namespaces")
        .map(|f| ctx.list(f, namespace))
        .unwrap_or_default();
    let service_selector = obj.get("serviceSelector").and_then(|f| selector(ctx, f));
    let namespace_selector = obj.get("namespaceSelector").and_then(|f| selector(ctx, f));
    Some(Pool {
        name: name?,
        specs,
        addresses,
        auto_assign,
        avoid_buggy_ips,
        priority,
        namespaces,
        namespace_selector,
        service_selector,
    })
}

pub(super) fn namespace(ctx: &mut Ctx, f: Field<'_>) -> Option<String> {
    let ns = ctx.string(f)?;
    if !is_dns_label(&ns) {
        ctx.error(f.path, format!("{ns:?} is not a valid namespace name"));
        return None;
    }
    Some(ns)
}
