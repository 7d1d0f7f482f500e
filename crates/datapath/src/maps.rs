//! Byte layouts of the data path's BPF maps, mirroring
//! `crates/sys/bpf/maps.h`. Integers the program only compares or indexes
//! with are in host order (little-endian on every target ferrolb builds
//! for); ports and addresses are in network order, as in packets.

use std::net::IpAddr;

/// Maglev slots per service: the user-space forwarder's table size, so
/// both paths (and every node) send a client to the same backend.
pub const TABLE_SIZE: u32 = ferrolb_balance::maglev::DEFAULT_TABLE_SIZE as u32;
/// Services the kernel maps hold (the program's compiled-in limit).
pub const MAX_SERVICES: u32 = 64;
/// Backends the kernel maps hold, over all services.
pub const MAX_BACKENDS: u32 = 4096;

/// `svc_val.flags`: the service has source ranges (others are dropped).
pub const SVC_SOURCE_RANGES: u32 = 1;
/// `svc_val.flags`: direct server return (encapsulate to the backend,
/// which answers the client itself) instead of NAT.
pub const SVC_DSR: u32 = 2;
/// `backend.flags`: health checks say it is up.
pub const BACKEND_UP: u8 = 1;

/// `AF_INET`, `AF_INET6` as the program compares them.
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// A transport protocol the program forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// Its IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
}

/// An address as `struct addr`: IPv4 in the first four bytes.
pub fn addr(ip: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => out = a.octets(),
    }
    out
}

fn family(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        AF_INET
    } else {
        AF_INET6
    }
}

/// `struct svc_key`: which packets belong to a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SvcKey {
    /// The VIP.
    pub vip: IpAddr,
    /// The service port.
    pub port: u16,
    /// The protocol.
    pub proto: Proto,
}

/// Size of `struct svc_key`.
pub const SVC_KEY_LEN: usize = 20;

impl SvcKey {
    /// The map key's bytes.
    pub fn encode(&self) -> [u8; SVC_KEY_LEN] {
        let mut b = [0u8; SVC_KEY_LEN];
        b[..16].copy_from_slice(&addr(self.vip));
        b[16..18].copy_from_slice(&self.port.to_be_bytes());
        b[18] = self.proto.number();
        b[19] = family(self.vip);
        b
    }
}

impl SvcKey {
    /// Reads a key back from the map (a restarted speaker adopting the
    /// maps); `None` for bytes no encoder writes.
    pub fn decode(b: &[u8; SVC_KEY_LEN]) -> Option<SvcKey> {
        let vip = decode_addr(&b[..16], b[19])?;
        let proto = match b[18] {
            6 => Proto::Tcp,
            17 => Proto::Udp,
            _ => return None,
        };
        Some(SvcKey {
            vip,
            port: u16::from_be_bytes([b[16], b[17]]),
            proto,
        })
    }
}

/// An address of `family` from `struct addr` bytes; `None` for another
/// family or IPv4 with the padding set.
fn decode_addr(b: &[u8], family: u8) -> Option<IpAddr> {
    match family {
        AF_INET if b.len() == 16 && b[4..].iter().all(|x| *x == 0) => {
            Some(IpAddr::from([b[0], b[1], b[2], b[3]]))
        }
        AF_INET6 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

/// `struct svc_val`: how a service is forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SvcVal {
    /// Its index in the Maglev array and the statistics.
    pub id: u32,
    /// `SVC_*` flags.
    pub flags: u32,
    /// First NAT source port.
    pub nat_lo: u32,
    /// How many NAT source ports, from `nat_lo`.
    pub nat_count: u32,
    /// A flow idle this long (ns) is forgotten.
    pub idle_ns: u64,
}

/// Size of `struct svc_val`.
pub const SVC_VAL_LEN: usize = 24;

impl SvcVal {
    /// The map value's bytes.
    pub fn encode(&self) -> [u8; SVC_VAL_LEN] {
        let mut b = [0u8; SVC_VAL_LEN];
        b[0..4].copy_from_slice(&self.id.to_le_bytes());
        b[4..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..12].copy_from_slice(&self.nat_lo.to_le_bytes());
        b[12..16].copy_from_slice(&self.nat_count.to_le_bytes());
        b[16..24].copy_from_slice(&self.idle_ns.to_le_bytes());
        b
    }
}

impl SvcVal {
    /// Reads a value back from the map.
    pub fn decode(b: &[u8; SVC_VAL_LEN]) -> SvcVal {
        let u = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut idle = [0u8; 8];
        idle.copy_from_slice(&b[16..24]);
        SvcVal {
            id: u(0),
            flags: u(4),
            nat_lo: u(8),
            nat_count: u(12),
            idle_ns: u64::from_le_bytes(idle),
        }
    }
}

/// `struct backend`, with the way to it user space resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendVal {
    /// Its address.
    pub addr: IpAddr,
    /// Its port.
    pub port: u16,
    /// Health checks say it is up.
    pub up: bool,
    /// This host's address toward it: the NAT source.
    pub nat_src: IpAddr,
    /// The interface toward it (0: the one the client's packet came in on).
    pub ifindex: u32,
    /// The id of its service: the program serves a slot or a flow only from
    /// a backend of the packet's own service, so a reused id never sends one
    /// service's clients to another's backends.
    pub svc: u32,
}

/// Size of `struct backend`.
pub const BACKEND_LEN: usize = 44;

impl BackendVal {
    /// The map value's bytes.
    pub fn encode(&self) -> [u8; BACKEND_LEN] {
        let mut b = [0u8; BACKEND_LEN];
        b[..16].copy_from_slice(&addr(self.addr));
        b[16..32].copy_from_slice(&addr(self.nat_src));
        b[32..34].copy_from_slice(&self.port.to_be_bytes());
        b[34] = family(self.addr);
        b[35] = if self.up { BACKEND_UP } else { 0 };
        b[36..40].copy_from_slice(&self.ifindex.to_le_bytes());
        b[40..44].copy_from_slice(&self.svc.to_le_bytes());
        b
    }
}

impl BackendVal {
    /// Reads an entry back from the array; `None` for an unused (zero) or
    /// malformed one.
    pub fn decode(b: &[u8; BACKEND_LEN]) -> Option<BackendVal> {
        let family = b[34];
        let addr = decode_addr(&b[..16], family)?;
        let nat_src = decode_addr(&b[16..32], family)?;
        let u = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Some(BackendVal {
            addr,
            port: u16::from_be_bytes([b[32], b[33]]),
            up: b[35] & BACKEND_UP != 0,
            nat_src,
            ifindex: u(36),
            svc: u(40),
        })
    }
}

/// `struct range_key`: one allowed source prefix of a service, as the
/// LPM trie matches it (service id, then address bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RangeKey {
    /// The service's id.
    pub svc: u32,
    /// The prefix's address (host bits zero).
    pub addr: IpAddr,
    /// The prefix length.
    pub prefix: u8,
}

/// Size of `struct range_key`.
pub const RANGE_KEY_LEN: usize = 24;

impl RangeKey {
    /// The map key's bytes.
    pub fn encode(&self) -> [u8; RANGE_KEY_LEN] {
        let mut b = [0u8; RANGE_KEY_LEN];
        b[0..4].copy_from_slice(&(32 + self.prefix as u32).to_le_bytes());
        b[4..8].copy_from_slice(&self.svc.to_be_bytes());
        b[8..24].copy_from_slice(&addr(self.addr));
        b
    }
}

impl RangeKey {
    /// Reads a key back from the trie (aya gives the prefix length apart
    /// from the rest); the family is the service's, which the key does not
    /// hold. `None` for a prefix no encoder writes.
    pub fn decode(prefixlen: u32, data: &[u8; RANGE_KEY_LEN - 4], v4: bool) -> Option<RangeKey> {
        let bits = prefixlen.checked_sub(32)?;
        let max = if v4 { 32 } else { 128 };
        if bits > max {
            return None;
        }
        let addr = decode_addr(&data[4..20], if v4 { AF_INET } else { AF_INET6 })?;
        Some(RangeKey {
            svc: u32::from_be_bytes([data[0], data[1], data[2], data[3]]),
            addr,
            prefix: bits as u8,
        })
    }
}

/// `struct counters`, one CPU's share.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets forwarded.
    pub packets: u64,
    /// Their bytes (L3).
    pub bytes: u64,
    /// New flows.
    pub flows: u64,
    /// Packets dropped (source range, no backend, no NAT port).
    pub dropped: u64,
    /// Backends only: new TCP flows whose first answer was a reset (the
    /// connection was refused), taken as failed connects (passive health).
    pub refused: u64,
}

/// Size of `struct counters`.
pub const COUNTERS_LEN: usize = 40;

impl Counters {
    /// Reads one CPU's counters; `None` if the bytes are short.
    pub fn decode(b: &[u8]) -> Option<Counters> {
        let u = |i: usize| -> Option<u64> {
            Some(u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?))
        };
        Some(Counters {
            packets: u(0)?,
            bytes: u(8)?,
            flows: u(16)?,
            dropped: u(24)?,
            refused: u(32)?,
        })
    }

    /// Adds another CPU's share.
    pub fn add(&mut self, o: &Counters) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.flows += o.flows;
        self.dropped += o.dropped;
        self.refused += o.refused;
    }
}

/// Sizes of the structs the program uses but ferrolb never writes (flows
/// and their reverse entries), for the layout check.
pub const FLOW_KEY_LEN: usize = 40;
/// Size of `struct flow_val`.
pub const FLOW_VAL_LEN: usize = 32;
/// Size of `struct rev_key`.
pub const REV_KEY_LEN: usize = 40;
/// Size of `struct rev_val`.
pub const REV_VAL_LEN: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_bytes() {
        let k = SvcKey {
            vip: "192.0.2.10".parse().unwrap(),
            port: 8080,
            proto: Proto::Tcp,
        };
        let mut want = [0u8; 20];
        want[..4].copy_from_slice(&[192, 0, 2, 10]);
        want[16..].copy_from_slice(&[0x1f, 0x90, 6, 2]);
        assert_eq!(k.encode(), want);
        let k6 = SvcKey {
            vip: "2001:db8::1".parse().unwrap(),
            port: 53,
            proto: Proto::Udp,
        };
        let b = k6.encode();
        assert_eq!(&b[..2], &[0x20, 0x01]);
        assert_eq!(b[15], 1);
        assert_eq!(&b[16..], &[0, 53, 17, 10]);
        let v = SvcVal {
            id: 3,
            flags: SVC_SOURCE_RANGES,
            nat_lo: 61000,
            nat_count: 4535,
            idle_ns: 300_000_000_000,
        };
        let b = v.encode();
        assert_eq!(&b[..4], &[3, 0, 0, 0]);
        assert_eq!(&b[8..12], &61000u32.to_le_bytes());
        assert_eq!(&b[16..], &300_000_000_000u64.to_le_bytes());
        let bk = BackendVal {
            addr: "10.0.0.5".parse().unwrap(),
            port: 80,
            up: true,
            nat_src: "10.0.0.1".parse().unwrap(),
            ifindex: 7,
            svc: 3,
        };
        let b = bk.encode();
        assert_eq!(&b[..4], &[10, 0, 0, 5]);
        assert_eq!(&b[16..20], &[10, 0, 0, 1]);
        assert_eq!(&b[32..44], &[0, 80, 2, 1, 7, 0, 0, 0, 3, 0, 0, 0]);
        let r = RangeKey {
            svc: 2,
            addr: "198.51.100.0".parse().unwrap(),
            prefix: 24,
        };
        let b = r.encode();
        assert_eq!(&b[..8], &[56, 0, 0, 0, 0, 0, 0, 2]);
        assert_eq!(&b[8..12], &[198, 51, 100, 0]);
        let mut c = [0u8; 40];
        c[0] = 5;
        c[8] = 0xe8;
        c[9] = 3;
        c[16] = 1;
        c[24] = 2;
        c[32] = 4;
        assert_eq!(
            Counters::decode(&c),
            Some(Counters {
                packets: 5,
                bytes: 1000,
                flows: 1,
                dropped: 2,
                refused: 4
            })
        );
        assert_eq!(Counters::decode(&c[..39]), None);
    }

    #[test]
    fn what_is_encoded_decodes_back_and_garbage_does_not() {
        for (vip, proto) in [("192.0.2.10", Proto::Tcp), ("2001:db8::1", Proto::Udp)] {
            let k = SvcKey {
                vip: vip.parse().unwrap(),
                port: 8443,
                proto,
            };
            assert_eq!(SvcKey::decode(&k.encode()), Some(k));
        }
        let mut bad = SvcKey {
            vip: "192.0.2.10".parse().unwrap(),
            port: 1,
            proto: Proto::Tcp,
        }
        .encode();
        bad[18] = 1; // ICMP
        assert_eq!(SvcKey::decode(&bad), None);
        bad[18] = 6;
        bad[10] = 7; // an IPv4 key with bytes past the address
        assert_eq!(SvcKey::decode(&bad), None);
        assert_eq!(SvcKey::decode(&[0u8; SVC_KEY_LEN]), None);
        let v = SvcVal {
            id: 9,
            flags: SVC_DSR | SVC_SOURCE_RANGES,
            nat_lo: 1024,
            nat_count: 31744,
            idle_ns: 600_000_000_000,
        };
        assert_eq!(SvcVal::decode(&v.encode()), v);
        for (a, src) in [("10.0.0.5", "10.0.0.1"), ("fd00::5", "fd00::1")] {
            let b = BackendVal {
                addr: a.parse().unwrap(),
                port: 8080,
                up: true,
                nat_src: src.parse().unwrap(),
                ifindex: 7,
                svc: 3,
            };
            assert_eq!(BackendVal::decode(&b.encode()), Some(b));
            let down = BackendVal { up: false, ..b };
            assert_eq!(BackendVal::decode(&down.encode()), Some(down));
        }
        assert_eq!(
            BackendVal::decode(&[0u8; BACKEND_LEN]),
            None,
            "written down"
        );
        for (a, p, v4) in [("198.51.100.0", 24, true), ("2001:db8::", 48, false)] {
            let r = RangeKey {
                svc: 5,
                addr: a.parse().unwrap(),
                prefix: p,
            };
            let b = r.encode();
            let prefixlen = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            let mut data = [0u8; RANGE_KEY_LEN - 4];
            data.copy_from_slice(&b[4..]);
            assert_eq!(RangeKey::decode(prefixlen, &data, v4), Some(r));
            assert_eq!(RangeKey::decode(16, &data, v4), None);
            assert_eq!(RangeKey::decode(32 + 129, &data, v4), None);
        }
    }

    /// Compiles `maps.h` with the host's C compiler and compares every size
    /// and the offsets the encoders rely on.
    #[test]
    fn layouts_match_the_c_header() {
        let dir = std::env::temp_dir().join(format!("ferrolb-layout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("layout.c");
        let header = concat!(env!("CARGO_MANIFEST_DIR"), "/../sys/bpf/maps.h");
        std::fs::write(
            &src,
            format!(
                r#"#include <stdio.h>
#include <stddef.h>
#include "{header}"
#define S(t) printf(#t " %zu\n", sizeof(struct t));
#define O(t, f) printf(#t "." #f " %zu\n", offsetof(struct t, f));
int main(void) {{
  S(svc_key) S(svc_val) S(backend) S(range_key) S(counters)
  S(flow_key) S(flow_val) S(rev_key) S(rev_val)
  O(svc_key, port) O(svc_key, proto) O(svc_key, family)
  O(svc_val, flags) O(svc_val, nat_lo) O(svc_val, nat_count) O(svc_val, idle_ns)
  O(backend, nat_src) O(backend, port) O(backend, family) O(backend, flags) O(backend, ifindex) O(backend, svc)
  O(rev_val, client_ifindex) O(rev_val, answered) O(rev_val, seen_ns)
  O(range_key, svc) O(range_key, addr)
  O(counters, bytes) O(counters, flows) O(counters, dropped) O(counters, refused)
  printf("TABLE_SIZE %d\nMAX_SERVICES %d\nMAX_BACKENDS %d\n", TABLE_SIZE, MAX_SERVICES, MAX_BACKENDS);
  printf("SVC_SOURCE_RANGES %d\nSVC_DSR %d\nBACKEND_UP %d\n", SVC_SOURCE_RANGES, SVC_DSR, BACKEND_UP);
  return 0;
}}
"#
            ),
        )
        .unwrap();
        let exe = dir.join("layout");
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let out = std::process::Command::new(&cc)
            .arg(&src)
            .arg("-o")
            .arg(&exe)
            .output()
            .unwrap_or_else(|e| panic!("the layout check needs a C compiler ({cc}): {e}"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed = std::process::Command::new(&exe).output().unwrap();
        let text = String::from_utf8(printed.stdout).unwrap();
        let got: std::collections::BTreeMap<&str, usize> = text
            .lines()
            .map(|l| {
                let (k, v) = l.split_once(' ').unwrap();
                (k, v.parse().unwrap())
            })
            .collect();
        let want: &[(&str, usize)] = &[
            ("svc_key", SVC_KEY_LEN),
            ("svc_val", SVC_VAL_LEN),
            ("backend", BACKEND_LEN),
            ("range_key", RANGE_KEY_LEN),
            ("counters", COUNTERS_LEN),
            ("flow_key", FLOW_KEY_LEN),
            ("flow_val", FLOW_VAL_LEN),
            ("rev_key", REV_KEY_LEN),
            ("rev_val", REV_VAL_LEN),
            ("svc_key.port", 16),
            ("svc_key.proto", 18),
            ("svc_key.family", 19),
            ("svc_val.flags", 4),
            ("svc_val.nat_lo", 8),
            ("svc_val.nat_count", 12),
            ("svc_val.idle_ns", 16),
            ("backend.nat_src", 16),
            ("backend.port", 32),
            ("backend.family", 34),
            ("backend.flags", 35),
            ("backend.ifindex", 36),
            ("backend.svc", 40),
            ("rev_val.client_ifindex", 44),
            ("rev_val.answered", 48),
            ("rev_val.seen_ns", 56),
            ("range_key.svc", 4),
            ("range_key.addr", 8),
            ("counters.bytes", 8),
            ("counters.flows", 16),
            ("counters.dropped", 24),
            ("counters.refused", 32),
            ("TABLE_SIZE", TABLE_SIZE as usize),
            ("MAX_SERVICES", MAX_SERVICES as usize),
            ("MAX_BACKENDS", MAX_BACKENDS as usize),
            ("SVC_SOURCE_RANGES", SVC_SOURCE_RANGES as usize),
            ("SVC_DSR", SVC_DSR as usize),
            ("BACKEND_UP", BACKEND_UP as usize),
        ];
        for (k, v) in want {
            assert_eq!(got.get(k), Some(v), "{k}: C says {:?}", got.get(k));
        }
        assert_eq!(got.len(), want.len());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
