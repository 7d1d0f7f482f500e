//! The standalone `services`: ports, backends and health checks.

use super::*;

pub(super) fn service(ctx: &mut Ctx, f: Field<'_>) -> Option<Service> {
    let obj = ctx.object(
        f,
        &[
            "name",
            "ip",
            "pool",
            "sourceRanges",
            "ports",
            "maxConnections",
            "labels",
        ],
    )?;
    let max_connections = obj
        .get("maxConnections")
        .and_then(|f| ctx.uint(f, 1, 10_000_000));
    let name = name(ctx, &obj, "service");
    let ip = obj.get("ip").and_then(|f| ctx.parse::<IpAddr>(f));
    let pool = obj.get("pool").and_then(|f| ctx.string(f));
    let source_ranges = obj
        .get("sourceRanges")
        .map(|f| ctx.list(f, |ctx, f| ctx.parse::<Cidr>(f)))
        .unwrap_or_default();
    let ports: Vec<(Path, ServicePort)> = obj
        .get("ports")
        .map(|f| ctx.list(f, |ctx, f| port(ctx, f).map(|p| (f.path.clone(), p))))
        .unwrap_or_default();
    for (i, (path, p)) in ports.iter().enumerate() {
        if ports[..i]
            .iter()
            .any(|(_, q)| (q.port, q.protocol) == (p.port, p.protocol))
        {
            ctx.error(
                path,
                format!(
                    "{} {} is listed twice in this service; merge the backends into one entry",
                    p.protocol, p.port
                ),
            );
        }
    }
    let ports = ports.into_iter().map(|(_, p)| p).collect();
    let labels = obj
        .get("labels")
        .and_then(|f| labels(ctx, f))
        .unwrap_or_default();
    Some(Service {
        name: name?,
        ip,
        pool,
        source_ranges,
        ports,
        max_connections,
        labels,
    })
}

pub(super) fn port(ctx: &mut Ctx, f: Field<'_>) -> Option<ServicePort> {
    let obj = ctx.object(
        f,
        &[
            "port",
            "protocol",
            "backends",
            "algorithm",
            "proxyProtocol",
            "healthCheck",
            "mode",
        ],
    )?;
    let port = obj
        .require(ctx, "port", "give the port number on the VIP")
        .and_then(|f| ctx.uint(f, 1, 65535));
    let protocol = match obj.get("protocol") {
        None => Some(Protocol::Tcp),
        Some(f) => ctx
            .string(f)
            .and_then(|p| match p.to_ascii_uppercase().as_str() {
                "TCP" => Some(Protocol::Tcp),
                "UDP" => Some(Protocol::Udp),
                _ => {
                    ctx.error(f.path, format!("{p:?} is not forwarded; use TCP or UDP"));
                    None
                }
            }),
    };
    let backends = match obj.require(ctx, "backends", "list host:port backends") {
        Some(f) => {
            let list = ctx.list(f, backend);
            if matches!(f.value, Value::Seq(v) if v.is_empty()) {
                ctx.error(f.path, "is empty; list at least one backend, or drop the port to only announce the VIP");
            }
            list
        }
        None => Vec::new(),
    };
    let algorithm = obj
        .get("algorithm")
        .and_then(|f| match ctx.string(f)?.as_str() {
            "roundRobin" => Some(Algorithm::RoundRobin),
            "leastConnections" => Some(Algorithm::LeastConnections),
            "maglev" => Some(Algorithm::Maglev),
            other => {
                ctx.error(
                    f.path,
                    format!(
                        "{other:?} is not an algorithm; use roundRobin, leastConnections or maglev"
                    ),
                );
                None
            }
        });
    let proxy_protocol = obj
        .get("proxyProtocol")
        .and_then(|f| match ctx.string(f)?.as_str() {
            "v1" => Some(ProxyProtocol::V1),
            "v2" => Some(ProxyProtocol::V2),
            other => {
                ctx.error(
                    f.path,
                    format!("{other:?} is not a PROXY protocol version; use v1 or v2"),
                );
                None
            }
        });
    let health_check = match obj.get("healthCheck") {
        Some(f) => health_check(ctx, f).flatten(),
        // A TCP connect tells nothing about a UDP service, so UDP ports are unchecked unless asked.
        None if protocol == Some(Protocol::Udp) => None,
        None => Some(HealthCheck::default()),
    };
    if let (Some(Protocol::Udp), Some(f)) = (protocol, obj.get("proxyProtocol")) {
        ctx.error(f.path, "PROXY protocol is only sent on TCP ports");
    }
    let mode = obj.get("mode").and_then(|f| super::forwarder::mode(ctx, f));
    if let (true, Some(f)) = (
        mode.is_some_and(|m| m.is_kernel()),
        obj.get("proxyProtocol"),
    ) {
        ctx.error(
            f.path,
            "PROXY protocol needs the user-space forwarder (the kernel path does not terminate TCP); set mode: userspace on this port or drop proxyProtocol",
        );
    }
    Some(ServicePort {
        port: port?,
        protocol: protocol?,
        backends,
        algorithm: algorithm.unwrap_or_default(),
        proxy_protocol,
        health_check,
        mode,
    })
}

pub(super) fn backend(ctx: &mut Ctx, f: Field<'_>) -> Option<Backend> {
    let parse_addr = |ctx: &mut Ctx, f: Field<'_>| -> Option<SocketAddr> {
        let text = ctx.string(f)?;
        text.trim()
            .parse::<SocketAddr>()
            .map_err(|_| {
                ctx.error(
                    f.path,
                    format!(
                        "{text:?} is not IP:port ([v6]:port for IPv6); host names are not resolved"
                    ),
                )
            })
            .ok()
    };
    match f.value {
        Value::Str(_) => Some(Backend {
            address: parse_addr(ctx, f)?,
            weight: 1,
        }),
        _ => {
            let obj = ctx.object(f, &["address", "weight"])?;
            let address = obj
                .require(ctx, "address", "give the backend as IP:port")
                .and_then(|f| parse_addr(ctx, f));
            let weight = obj
                .get("weight")
                .and_then(|f| ctx.uint(f, 0, 1000))
                .unwrap_or(1);
            Some(Backend {
                address: address?,
                weight,
            })
        }
    }
}

/// `Some(None)` is `type: none`, an explicitly disabled check.
pub(super) fn health_check(ctx: &mut Ctx, f: Field<'_>) -> Option<Option<HealthCheck>> {
    let obj = ctx.object(
        f,
        &[
            "type",
            "path",
            "expectStatus",
            "interval",
            "timeout",
            "rise",
            "fall",
        ],
    )?;
    let mut hc = HealthCheck::default();
    let kind = obj
        .get("type")
        .and_then(|f| ctx.string(f))
        .unwrap_or_else(|| "tcp".into());
    let path = obj.get("path").and_then(|f| ctx.string(f));
    let status = obj.get("expectStatus").and_then(|f| {
        let text = match f.value {
            Value::Int(i) => i.to_string(),
            _ => ctx.string(f)?,
        };
        let (lo, hi) = text.split_once('-').unwrap_or((&text, &text));
        match (lo.trim().parse::<u16>(), hi.trim().parse::<u16>()) {
            (Ok(lo), Ok(hi)) if (100..=599).contains(&lo) && (lo..=599).contains(&hi) => {
                Some((lo, hi))
            }
            _ => {
                ctx.error(
                    f.path,
                    format!("{text:?} is not a status or range like 200 or 200-399"),
                );
                None
            }
        }
    });
    match kind.as_str() {
        "none" => return Some(None),
        "tcp" => {
            for key in ["path", "expectStatus"] {
                if let Some(f) = obj.get(key) {
                    ctx.error(f.path, "only applies to type: http");
                }
            }
        }
        "http" => {
            let path = path.unwrap_or_else(|| "/".into());
            if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                ctx.error(
                    &obj.path().key("path"),
                    format!("{path:?} must start with '/' and contain no spaces"),
                );
            }
            let (min_status, max_status) = status.unwrap_or((200, 399));
            hc.kind = CheckKind::Http {
                path,
                min_status,
                max_status,
            };
        }
        other => {
            ctx.error(
                &obj.path().key("type"),
                format!("{other:?} is not a check type; use tcp, http or none"),
            );
        }
    }
    if let Some(d) = obj.get("interval").and_then(|f| ctx.duration(f)) {
        hc.interval = d;
    }
    if let Some(d) = obj.get("timeout").and_then(|f| ctx.duration(f)) {
        hc.timeout = d;
    }
    if let Some(n) = obj.get("rise").and_then(|f| ctx.uint(f, 1, 100)) {
        hc.rise = n;
    }
    if let Some(n) = obj.get("fall").and_then(|f| ctx.uint(f, 1, 100)) {
        hc.fall = n;
    }
    if hc.interval < Duration::from_millis(10) {
        ctx.error(&obj.path().key("interval"), "must be at least 10ms");
    }
    if hc.timeout.is_zero() || hc.timeout > hc.interval {
        ctx.error(
            &obj.path().key("timeout"),
            format!(
                "must be more than 0 and at most the interval ({}); a probe cannot outlive the next one",
                crate::duration::format_duration(hc.interval)
            ),
        );
    }
    Some(Some(hc))
}
