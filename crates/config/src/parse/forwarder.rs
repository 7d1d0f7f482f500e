//! The `forwarder` section: limits and timeouts of the L4 forwarder.

use super::*;

pub(super) fn forwarder(ctx: &mut Ctx, f: Field<'_>) -> Option<ForwarderSettings> {
    let obj = ctx.object(
        f,
        &[
            "connectTimeout",
            "idleTimeout",
            "drainTimeout",
            "maxConnections",
            "maxConnectionsPerSource",
            "udpIdleTimeout",
            "udpMaxFlows",
            "splice",
            "mode",
        ],
    )?;
    let mut s = ForwarderSettings::default();
    let bounded = |ctx: &mut Ctx, key: &str, min: Duration, max: Duration| -> Option<Duration> {
        let f = obj.get(key)?;
        let d = ctx.duration(f)?;
        if d < min || d > max {
            ctx.error(
                f.path,
                format!(
                    "must be between {} and {}",
                    crate::duration::format_duration(min),
                    crate::duration::format_duration(max)
                ),
            );
            return None;
        }
        Some(d)
    };
    let ms = Duration::from_millis;
    let secs = Duration::from_secs;
    if let Some(d) = bounded(ctx, "connectTimeout", ms(1), secs(60)) {
        s.connect_timeout = d;
    }
    if let Some(d) = bounded(ctx, "idleTimeout", secs(1), secs(7 * 24 * 3600)) {
        s.idle_timeout = d;
    }
    if let Some(d) = bounded(ctx, "drainTimeout", ms(0), secs(3600)) {
        s.drain_timeout = d;
    }
    if let Some(d) = bounded(ctx, "udpIdleTimeout", ms(100), secs(3600)) {
        s.udp_idle_timeout = d;
    }
    if let Some(n) = obj
        .get("maxConnections")
        .and_then(|f| ctx.uint(f, 1, 10_000_000))
    {
        s.max_connections = n;
    }
    if let Some(n) = obj
        .get("maxConnectionsPerSource")
        .and_then(|f| ctx.uint(f, 0, 10_000_000))
    {
        s.max_connections_per_source = n;
    }
    if let Some(n) = obj
        .get("udpMaxFlows")
        .and_then(|f| ctx.uint(f, 1, 10_000_000))
    {
        s.udp_max_flows = n;
    }
    if let Some(b) = obj.get("splice").and_then(|f| ctx.boolean(f)) {
        s.splice = b;
    }
    if let Some(m) = obj.get("mode").and_then(|f| mode(ctx, f)) {
        s.mode = m;
    }
    Some(s)
}

/// `mode: userspace|kernel|kernel-dsr`, of the forwarder or of one port.
pub(super) fn mode(ctx: &mut Ctx, f: Field<'_>) -> Option<ForwardMode> {
    match ctx.string(f)?.as_str() {
        "userspace" => Some(ForwardMode::Userspace),
        "kernel" => Some(ForwardMode::Kernel),
        "kernel-dsr" => Some(ForwardMode::KernelDsr),
        other => {
            ctx.error(
                f.path,
                format!("{other:?} is not a forwarding mode; use userspace, kernel or kernel-dsr"),
            );
            None
        }
    }
}
