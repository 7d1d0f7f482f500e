//! The `l2` advertisements and the standalone `members`.

use super::*;

pub(super) fn l2(ctx: &mut Ctx, f: Field<'_>) -> Option<L2Advertisement> {
    let obj = ctx.object(
        f,
        &[
            "pools",
            "interfaces",
            "excludeInterfaces",
            "nodeSelector",
            "serviceSelector",
            "virtualMac",
        ],
    )?;
    let pools = obj.get("pools").map(|f| ctx.strings(f)).unwrap_or_default();
    let interfaces = obj
        .get("interfaces")
        .map(|f| ctx.list(f, |ctx, f| interface_name(ctx, f, "a valid interface name")))
        .unwrap_or_default();
    let exclude_interfaces = match obj.get("excludeInterfaces") {
        None => DEFAULT_EXCLUDED_INTERFACES
            .iter()
            .map(|s| s.to_string())
            .collect(),
        Some(f) => ctx.list(f, |ctx, f| {
            interface_name(
                ctx,
                f,
                "an interface name pattern (`*` for any run of characters)",
            )
        }),
    };
    let node_selector = obj.get("nodeSelector").and_then(|f| selector(ctx, f));
    let service_selector = obj.get("serviceSelector").and_then(|f| selector(ctx, f));
    let virtual_mac = obj
        .get("virtualMac")
        .and_then(|f| ctx.boolean(f))
        .unwrap_or(false);
    Some(L2Advertisement {
        pools,
        interfaces,
        exclude_interfaces,
        node_selector,
        service_selector,
        virtual_mac,
    })
}

/// An interface name, or a pattern of one (`what` says which): Linux
/// limits names to IFNAMSIZ-1 and forbids '/' and whitespace.
fn interface_name(ctx: &mut Ctx, f: Field<'_>, what: &str) -> Option<String> {
    let name = ctx.string(f)?;
    let valid = !name.is_empty()
        && name.len() <= 15
        && !name.contains(['/', ':'])
        && !name.chars().any(char::is_whitespace);
    if !valid {
        ctx.error(
            f.path,
            format!("{name:?} is not {what} (1-15 characters, no '/', ':' or spaces)"),
        );
        return None;
    }
    Some(name)
}

pub(super) fn member(ctx: &mut Ctx, f: Field<'_>) -> Option<Member> {
    let obj = ctx.object(f, &["name", "address", "labels"])?;
    let name = obj
        .require(ctx, "name", "give the node name the host runs with")
        .and_then(|f| {
            let n = ctx.string(f)?;
            if n.is_empty() || n.len() > 253 {
                ctx.error(f.path, "must be 1-253 characters");
                return None;
            }
            Some(n)
        });
    let address = obj
        .require(
            ctx,
            "address",
            "give the host's IP (port 7947 by default) or IP:port",
        )
        .and_then(|f| {
            let text = ctx.string(f)?;
            let parsed = text.parse::<SocketAddr>().ok().or_else(|| {
                text.parse::<IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, DEFAULT_MEMBER_PORT))
            });
            if parsed.is_none() {
                ctx.error(
                    f.path,
                    format!("{text:?} is not an IP address or IP:port ([v6]:port for IPv6)"),
                );
            }
            parsed
        });
    let labels = obj
        .get("labels")
        .and_then(|f| labels(ctx, f))
        .unwrap_or_default();
    Some(Member {
        name: name?,
        address: address?,
        labels,
    })
}
