//! A human-readable overview of a valid configuration, printed by the
//! `validate` commands.

use crate::duration::format_duration;
use crate::model::*;
use ferrolb_ipset::Family;
use std::fmt::Write;

impl Config {
    /// Why `validate` refuses a configuration that parses but does nothing:
    /// without a pool nothing gets an address. The running components
    /// accept it (an install before its pools are written), `validate`
    /// does not, since an empty file is almost always the wrong file or key.
    pub fn refusal(&self) -> Option<String> {
        self.pools.is_empty().then(|| {
            "no address pools: nothing would get an address or be announced. Add at least one pool (docs/configuration.md); an empty result usually means the wrong file, or a ConfigMap key other than config.yaml".to_string()
        })
    }

    /// Describes pools (family, exact capacity, flags), L2 and BGP settings.
    /// Standalone services are described by the speaker, which knows their
    /// allocated addresses.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(w, "pools: {}", self.pools.len());
        for p in &self.pools {
            for family in Family::ALL {
                if !p.addresses.has_family(family) {
                    continue;
                }
                let ranges: Vec<String> = p
                    .specs
                    .iter()
                    .filter(|s| s.interval().family() == family)
                    .map(|s| s.to_string())
                    .collect();
                let mut flags = Vec::new();
                flags.push(
                    if p.auto_assign {
                        "autoAssign"
                    } else {
                        "manual"
                    }
                    .to_string(),
                );
                if p.avoid_buggy_ips && family == Family::V4 {
                    flags.push("avoidBuggyIPs".into());
                }
                if let Some(prio) = p.priority {
                    flags.push(format!("priority {prio}"));
                }
                if !p.namespaces.is_empty() {
                    flags.push(format!("namespaces {}", p.namespaces.join(",")));
                }
                if let Some(sel) = &p.service_selector {
                    flags.push(format!("services {sel}"));
                }
                let _ = writeln!(
                    w,
                    "  {:<16} {:<5} {:>12} addresses  {}  [{}]",
                    p.name,
                    family.to_string(),
                    p.usable(family),
                    ranges.join(", "),
                    flags.join(", ")
                );
            }
        }
        if !self.l2.is_empty() {
            let _ = writeln!(w, "l2 advertisements: {}", self.l2.len());
            for (i, a) in self.l2.iter().enumerate() {
                let _ = writeln!(
                    w,
                    "  l2[{i}]: pools {}, interfaces {}, nodes {}{}{}",
                    list_or(&a.pools, "all"),
                    list_or(&a.interfaces, "auto"),
                    a.node_selector
                        .as_ref()
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "all".into()),
                    a.service_selector
                        .as_ref()
                        .map(|s| format!(", services {s}"))
                        .unwrap_or_default(),
                    if a.virtual_mac { ", virtual MAC" } else { "" }
                );
            }
        }
        if let Some(bgp) = &self.bgp {
            let _ = writeln!(
                w,
                "bgp: router id {}, {} peer(s), {} advertisement(s)",
                bgp.router_id
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| "derived".into()),
                bgp.peers.len(),
                bgp.advertisements.len()
            );
            for p in &bgp.peers {
                let mut extras = Vec::new();
                if p.password.is_some() {
                    extras.push("md5".to_string());
                }
                if p.graceful_restart.enabled {
                    extras.push(format!(
                        "gr {}",
                        format_duration(p.graceful_restart.restart_time)
                    ));
                }
                if let Some(b) = p.bfd {
                    extras.push(format!(
                        "bfd {}x{}",
                        format_duration(b.transmit_interval),
                        b.detect_multiplier
                    ));
                }
                let _ = writeln!(
                    w,
                    "  {:<16} {} port {} AS{} (local AS{}, {}) hold {} keepalive {} {}",
                    p.name,
                    p.address,
                    p.port,
                    p.asn,
                    p.my_asn,
                    if p.is_ebgp() { "eBGP" } else { "iBGP" },
                    format_duration(p.hold_time),
                    format_duration(p.keepalive_time),
                    extras.join(" ")
                );
            }
        }
        if !self.members.is_empty() {
            let names: Vec<String> = self
                .members
                .iter()
                .map(|m| format!("{} ({})", m.name, m.address))
                .collect();
            let _ = writeln!(w, "members: {}", names.join(", "));
        }
        out
    }
}

fn list_or(items: &[String], empty: &str) -> String {
    if items.is_empty() {
        empty.to_string()
    } else {
        items.join(",")
    }
}
