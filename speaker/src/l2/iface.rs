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

/// Whether `i` is one of the interfaces to announce on, up or not: one
/// named, or by default a broadcast-capable interface that is neither
/// loopback nor enslaved.
pub fn candidate(i: &Iface, named: &[String]) -> bool {
    if named.is_empty() {
        i.broadcast && !i.loopback && !i.enslaved
    } else {
        named.contains(&i.name)
    }
}

/// The interfaces to announce on: the [`candidate`]s that are up.
pub fn announcing(named: &[String]) -> Vec<Iface> {
    list()
        .into_iter()
        .filter(|i| i.up && candidate(i, named))
        .collect()
}
