//! Network interfaces as Linux reports them in /sys/class/net, and which of
//! them may announce VIPs.

use ferrolb_l2::wire::Mac;
use std::path::Path;

/// One interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    /// Its name.
    pub name: String,
    /// Its index.
    pub index: u32,
    /// Its MAC address.
    pub mac: Mac,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// Link detected (carrier).
    pub carrier: bool,
    /// Broadcast-capable (IFF_BROADCAST).
    pub broadcast: bool,
    /// Loopback (IFF_LOOPBACK).
    pub loopback: bool,
    /// Enslaved to a bridge or bond (its master answers instead).
    pub enslaved: bool,
}

fn read(dir: &Path, file: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(file))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Reads one interface; `None` if it vanished or is not Ethernet-like.
pub fn read_iface(name: &str) -> Option<Iface> {
    let dir = Path::new("/sys/class/net").join(name);
    let index = read(&dir, "ifindex")?.parse().ok()?;
    let mac: Mac = read(&dir, "address")?.parse().ok()?;
    let flags = u32::from_str_radix(read(&dir, "flags")?.trim_start_matches("0x"), 16).ok()?;
    Some(Iface {
        name: name.to_string(),
        index,
        mac,
        up: flags & 0x1 != 0,
        carrier: read(&dir, "carrier").is_some_and(|c| c == "1"),
        broadcast: flags & 0x2 != 0,
        loopback: flags & 0x8 != 0,
        // A bridge port or bond slave has a `master` link.
        enslaved: dir.join("master").exists() || dir.join("brport").exists(),
    })
}

/// Every interface the kernel lists.
pub fn list() -> Vec<Iface> {
    let Ok(entries) = std::fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    let mut out: Vec<Iface> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| read_iface(&e.file_name().to_string_lossy()))
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Which interfaces announce: the ones named, or with none named every
/// suitable one whose name no exclusion pattern matches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted {
    /// Interfaces named by `l2[].interfaces` (empty: any suitable one).
    pub named: Vec<String>,
    /// Name patterns left out when none is named (`l2[].excludeInterfaces`).
    pub excluded: Vec<String>,
}

impl Wanted {
    /// For messages: the names, or "any".
    pub fn describe(&self) -> String {
        if self.named.is_empty() {
            "any".into()
        } else {
            self.named.join(",")
        }
    }
}

/// Whether `name` matches `pattern`, where `*` stands for any run of
/// characters (possibly none) and everything else for itself.
pub fn matches(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Whether `i` is one of the interfaces to announce on, up or not: one
/// named, or by default a broadcast-capable interface that is neither
/// loopback nor enslaved nor excluded.
pub fn candidate(i: &Iface, wanted: &Wanted) -> bool {
    if wanted.named.is_empty() {
        i.broadcast
            && !i.loopback
            && !i.enslaved
            && !wanted.excluded.iter().any(|p| matches(p, &i.name))
    } else {
        wanted.named.contains(&i.name)
    }
}

/// The interfaces to announce on: the [`candidate`]s that are up.
pub fn announcing(wanted: &Wanted) -> Vec<Iface> {
    list()
        .into_iter()
        .filter(|i| i.up && candidate(i, wanted))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_as_shell_globs_with_star_only() {
        for (p, n, want) in [
            ("veth*", "veth1a2b", true),
            ("veth*", "veth", true),
            ("veth*", "eth0", false),
            ("cali*", "cali0123456789a", true),
            ("kube-bridge", "kube-bridge", true),
            ("kube-bridge", "kube-bridge0", false),
            ("*.calico", "vxlan.calico", true),
            ("vx*calico", "vxlan.calico", true),
            ("vx*calico", "vxlan.cilium", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "acb", false),
            ("*", "eth0", true),
            ("eth0", "eth0", true),
        ] {
            assert_eq!(matches(p, n), want, "{p} {n}");
        }
    }

    #[test]
    fn exclusions_apply_only_when_no_interface_is_named() {
        let iface = |name: &str| Iface {
            name: name.into(),
            index: 1,
            mac: "02:00:00:00:00:01".parse().unwrap(),
            up: true,
            carrier: true,
            broadcast: true,
            loopback: false,
            enslaved: false,
        };
        let default = Wanted {
            named: vec![],
            excluded: ferrolb_config::DEFAULT_EXCLUDED_INTERFACES
                .iter()
                .map(|s| s.to_string())
                .collect(),
        };
        for (name, want) in [
            ("eth0", true),
            ("bond0.120", true),
            ("cni0", false),
            ("docker0", false),
            ("cali1234", false),
            ("flannel.1", false),
            ("cilium_host", false),
            ("kube-ipvs0", false),
            ("veth99", false),
        ] {
            assert_eq!(candidate(&iface(name), &default), want, "{name}");
        }
        let named = Wanted {
            named: vec!["cni0".into()],
            ..default.clone()
        };
        assert!(
            candidate(&iface("cni0"), &named),
            "a named interface is used whatever the exclusions"
        );
        let none = Wanted::default();
        assert!(
            candidate(&iface("cni0"), &none),
            "excludeInterfaces: [] turns exclusion off"
        );
    }
}
