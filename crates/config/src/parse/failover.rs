//! The `failover` section: heartbeat timing and announcement schedule.

use super::*;

pub(super) fn failover(ctx: &mut Ctx, f: Field<'_>) -> Option<FailoverSettings> {
    let obj = ctx.object(
        f,
        &[
            "heartbeatInterval",
            "deadAfter",
            "refreshInterval",
            "announceRepeats",
            "keyFile",
            "profile",
        ],
    )?;
    let mut s = FailoverSettings::default();
    if let Some(f) = obj.get("profile") {
        match ctx.string(f).as_deref() {
            Some("default") => {}
            Some("fast") => s.fast_detection = true,
            Some(other) => ctx.error(
                f.path,
                format!("{other:?} is not a profile: use default or fast"),
            ),
            None => {}
        }
    }
    if let Some(f) = obj.get("keyFile") {
        s.key_file = ctx.string(f).map(PathBuf::from);
    }
    if let Some(d) = obj.get("heartbeatInterval").and_then(|f| ctx.duration(f)) {
        s.heartbeat_interval = d;
    }
    if let Some(d) = obj.get("deadAfter").and_then(|f| ctx.duration(f)) {
        s.dead_after = d;
    }
    if let Some(d) = obj.get("refreshInterval").and_then(|f| ctx.duration(f)) {
        s.refresh_interval = d;
    }
    if let Some(f) = obj.get("announceRepeats") {
        let repeats: Vec<Duration> = ctx.list(f, |ctx, f| ctx.duration(f));
        // Offsets from the takeover: they must grow, and stay within a minute.
        if repeats.windows(2).any(|w| w[1] <= w[0])
            || repeats.iter().any(|d| *d > Duration::from_secs(60))
        {
            ctx.error(f.path, "must be increasing offsets from the takeover, each at most 1m, e.g. [100ms, 300ms, 1s, 2s]");
        } else {
            s.announce_repeats = repeats;
        }
    }
    if s.heartbeat_interval < Duration::from_millis(10)
        || s.heartbeat_interval > Duration::from_secs(10)
    {
        ctx.error(
            &obj.path().key("heartbeatInterval"),
            "must be between 10ms and 10s",
        );
    }
    // Fewer than two missed heartbeats would declare members dead on a single lost packet.
    if s.dead_after < s.heartbeat_interval * 2 {
        ctx.error(
            &obj.path().key("deadAfter"),
            format!(
                "must be at least twice heartbeatInterval ({}); four times is usual",
                crate::duration::format_duration(s.heartbeat_interval)
            ),
        );
    }
    if !s.refresh_interval.is_zero() && s.refresh_interval < Duration::from_secs(1) {
        ctx.error(
            &obj.path().key("refreshInterval"),
            "must be 0s (off) or at least 1s",
        );
    }
    Some(s)
}
