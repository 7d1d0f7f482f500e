//! The rtnetlink link messages of virtual MACs: a macvlan on the announcing
//! interface carrying a VIP group's MAC (`ip link add link eth0 name flb...
//! address 02:... type macvlan mode private`), its host settings, bringing
//! it up, deleting it, and reading the link table to find the ones an
//! earlier run left. Pure bytes, like the route messages.

use super::{
    attr, attrs, messages, u32_at, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINK: u16 = 5;
const IFLA_LINKINFO: u16 = 18;
const IFLA_IFALIAS: u16 = 20;
const IFLA_AF_SPEC: u16 = 26;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const IFLA_MACVLAN_MODE: u16 = 1;
/// The macvlan talks to the wire only, never to its siblings.
const MACVLAN_MODE_PRIVATE: u32 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IFLA_INET_CONF: u16 = 1;
const IPV4_DEVCONF_RP_FILTER: u16 = 8;
const IPV4_DEVCONF_ARP_ANNOUNCE: u16 = 18;
const IPV4_DEVCONF_ARP_IGNORE: u16 = 19;
const IFLA_INET6_ADDR_GEN_MODE: u16 = 8;
const IN6_ADDR_GEN_MODE_NONE: u8 = 1;
const IFF_UP: u32 = 1;

fn header(m: &mut [u8], kind: u16, flags: u16, seq: u32) {
    let total = m.len() as u32;
    m[0..4].copy_from_slice(&total.to_ne_bytes());
    m[4..6].copy_from_slice(&kind.to_ne_bytes());
    m[6..8].copy_from_slice(&flags.to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
}

/// The netlink header and a `struct ifinfomsg` for `index` with `flags`.
fn ifinfo(index: u32, flags: u32, change: u32) -> Vec<u8> {
    let mut m = vec![0u8; 16];
    m.extend_from_slice(&[0, 0, 0, 0]); // family AF_UNSPEC, pad, type
    m.extend_from_slice(&index.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&change.to_ne_bytes());
    m
}

fn nested(out: &mut Vec<u8>, kind: u16, inner: &[u8]) {
    attr(out, kind | NLA_F_NESTED, inner);
}

fn cstr(s: &str) -> Vec<u8> {
    let mut b = s.as_bytes().to_vec();
    b.push(0);
    b
}

/// The `RTM_NEWLINK` request creating macvlan `name` (down) on `parent`
/// with address `mac`; refused with EEXIST if the name is taken.
pub fn encode_new_macvlan(seq: u32, name: &str, parent: u32, mac: [u8; 6]) -> Vec<u8> {
    let mut m = ifinfo(0, 0, 0);
    attr(&mut m, IFLA_IFNAME, &cstr(name));
    attr(&mut m, IFLA_LINK, &parent.to_ne_bytes());
    attr(&mut m, IFLA_ADDRESS, &mac);
    let mut data = Vec::new();
    attr(
        &mut data,
        IFLA_MACVLAN_MODE,
        &MACVLAN_MODE_PRIVATE.to_ne_bytes(),
    );
    let mut info = Vec::new();
    attr(&mut info, IFLA_INFO_KIND, b"macvlan");
    nested(&mut info, IFLA_INFO_DATA, &data);
    nested(&mut m, IFLA_LINKINFO, &info);
    header(
        &mut m,
        RTM_NEWLINK,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        seq,
    );
    m
}

/// The `RTM_SETLINK` request giving link `index` its alias (which the
/// kernel takes only here, not at creation) and its host settings before
/// it is brought up, through netlink because a pod's `/proc/sys` is
/// read-only: no IPv6 address of its own (so it sends nothing, not even
/// duplicate address detection, from the virtual MAC), the kernel never
/// answering ARP on it (`arp_ignore` 8) nor choosing its addresses
/// (`arp_announce` 2), and no reverse-path filter of its own (`rp_filter`
/// 0: traffic to the VIP arrives here but is answered through the parent;
/// the kernel still applies `conf/all` if that is stricter).
pub fn encode_link_settings(seq: u32, index: u32, alias: &str) -> Vec<u8> {
    let mut m = ifinfo(index, 0, 0);
    attr(&mut m, IFLA_IFALIAS, alias.as_bytes());
    let mut conf = Vec::new();
    attr(&mut conf, IPV4_DEVCONF_RP_FILTER, &0u32.to_ne_bytes());
    attr(&mut conf, IPV4_DEVCONF_ARP_IGNORE, &8u32.to_ne_bytes());
    attr(&mut conf, IPV4_DEVCONF_ARP_ANNOUNCE, &2u32.to_ne_bytes());
    let mut inet = Vec::new();
    nested(&mut inet, IFLA_INET_CONF, &conf);
    let mut inet6 = Vec::new();
    attr(
        &mut inet6,
        IFLA_INET6_ADDR_GEN_MODE,
        &[IN6_ADDR_GEN_MODE_NONE],
    );
    let mut spec = Vec::new();
    nested(&mut spec, AF_INET, &inet);
    nested(&mut spec, AF_INET6, &inet6);
    nested(&mut m, IFLA_AF_SPEC, &spec);
    header(&mut m, RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, seq);
    m
}

/// The `RTM_SETLINK` request bringing link `index` up.
pub fn encode_link_up(seq: u32, index: u32) -> Vec<u8> {
    let mut m = ifinfo(index, IFF_UP, IFF_UP);
    header(&mut m, RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, seq);
    m
}

/// The `RTM_DELLINK` request removing link `index`.
pub fn encode_del_link(seq: u32, index: u32) -> Vec<u8> {
    let mut m = ifinfo(index, 0, 0);
    header(&mut m, RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, seq);
    m
}

/// The `RTM_GETLINK` request for one link by name (its index comes back).
pub fn encode_get_link(seq: u32, name: &str) -> Vec<u8> {
    let mut m = ifinfo(0, 0, 0);
    attr(&mut m, IFLA_IFNAME, &cstr(name));
    header(&mut m, RTM_GETLINK, NLM_F_REQUEST, seq);
    m
}

/// The `RTM_GETLINK` dump request of every link.
pub fn encode_link_dump(seq: u32) -> Vec<u8> {
    let mut m = ifinfo(0, 0, 0);
    header(&mut m, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq);
    m
}

/// One link of a dump, as far as virtual MACs care.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    /// Its index.
    pub index: u32,
    /// Its name.
    pub name: String,
    /// Its MAC (links without a 6-byte address have none).
    pub mac: Option<[u8; 6]>,
    /// The index of its lower device (macvlan, vlan), if any.
    pub parent: Option<u32>,
    /// Its `IFLA_INFO_KIND` ("macvlan", "veth"...), if any.
    pub kind: Option<String>,
    /// Its alias, if set.
    pub alias: Option<String>,
    /// Administratively up.
    pub up: bool,
}

fn text(payload: &[u8]) -> String {
    let end = payload
        .iter()
        .position(|&c| c == 0)
        .unwrap_or(payload.len());
    String::from_utf8_lossy(&payload[..end]).into_owned()
}

/// The links in a dump (or get) answer, and whether it ended the dump.
/// Anything malformed is skipped, never trusted.
pub fn parse_links(buf: &[u8]) -> (Vec<Link>, bool) {
    let mut out = Vec::new();
    let mut done = false;
    for (kind, _, m) in messages(buf) {
        if kind == NLMSG_DONE || kind == NLMSG_ERROR {
            done = true;
        }
        if kind != RTM_NEWLINK || m.len() < 32 {
            continue;
        }
        let mut link = Link {
            index: u32_at(m, 20).unwrap_or(0),
            up: u32_at(m, 24).unwrap_or(0) & IFF_UP != 0,
            ..Link::default()
        };
        for (akind, payload) in attrs(&m[32..]) {
            match akind {
                IFLA_IFNAME => link.name = text(payload),
                IFLA_ADDRESS => link.mac = <[u8; 6]>::try_from(payload).ok(),
                IFLA_LINK => link.parent = u32_at(payload, 0).filter(|_| payload.len() == 4),
                IFLA_IFALIAS => link.alias = Some(text(payload)),
                IFLA_LINKINFO => {
                    for (ik, ip) in attrs(payload) {
                        if ik == IFLA_INFO_KIND {
                            link.kind = Some(text(ip));
                        }
                    }
                }
                _ => {}
            }
        }
        if link.index != 0 && !link.name.is_empty() {
            out.push(link);
        }
    }
    (out, done)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0xb4, 0x98, 0x1c, 0x29, 0x5f];

    #[test]
    fn golden_macvlan_request() {
        let m = encode_new_macvlan(7, "flb0a0b0c0d", 3, MAC);
        let mut want = Vec::new();
        let push_attr = |w: &mut Vec<u8>, kind: u16, p: &[u8]| {
            w.extend_from_slice(&((4 + p.len()) as u16).to_ne_bytes());
            w.extend_from_slice(&kind.to_ne_bytes());
            w.extend_from_slice(p);
            while !w.len().is_multiple_of(4) {
                w.push(0);
            }
        };
        want.extend_from_slice(&0u32.to_ne_bytes()); // length, set below
        want.extend_from_slice(&16u16.to_ne_bytes());
        want.extend_from_slice(&0x605u16.to_ne_bytes()); // REQUEST|ACK|EXCL|CREATE
        want.extend_from_slice(&7u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        want.extend_from_slice(&[0u8; 16]);
        push_attr(&mut want, 3, b"flb0a0b0c0d\0");
        push_attr(&mut want, 5, &3u32.to_ne_bytes());
        push_attr(&mut want, 1, &MAC);
        // linkinfo { kind "macvlan", data { mode private } }
        let mut data = Vec::new();
        push_attr(&mut data, 1, &1u32.to_ne_bytes());
        let mut info = Vec::new();
        push_attr(&mut info, 1, b"macvlan");
        push_attr(&mut info, 2 | 0x8000, &data);
        push_attr(&mut want, 18 | 0x8000, &info);
        let n = want.len() as u32;
        want[0..4].copy_from_slice(&n.to_ne_bytes());
        assert_eq!(m, want);
    }

    #[test]
    fn golden_settings_up_and_delete() {
        let s = encode_link_settings(2, 9, "ferrolb");
        assert_eq!(&s[4..6], &19u16.to_ne_bytes(), "RTM_SETLINK");
        assert_eq!(&s[20..24], &9u32.to_ne_bytes(), "the link's index");
        // alias, af_spec { inet { conf { rp_filter 0, arp_ignore 8, arp_announce 2 } }, inet6 { addr_gen_mode none } }
        let tail: Vec<u8> = s[32..].to_vec();
        let spec: Vec<(u16, Vec<u8>)> = attrs(&tail).map(|(k, p)| (k, p.to_vec())).collect();
        assert_eq!(spec.len(), 2);
        assert_eq!(spec[0], (20, b"ferrolb".to_vec()));
        assert_eq!(spec[1].0, 26);
        let families: Vec<(u16, Vec<u8>)> =
            attrs(&spec[1].1).map(|(k, p)| (k, p.to_vec())).collect();
        assert_eq!(families.iter().map(|f| f.0).collect::<Vec<_>>(), [2, 10]);
        let conf: Vec<(u16, Vec<u8>)> = attrs(&families[0].1)
            .flat_map(|(_, p)| attrs(p).map(|(k, v)| (k, v.to_vec())).collect::<Vec<_>>())
            .collect();
        assert_eq!(
            conf,
            vec![
                (8, 0u32.to_ne_bytes().to_vec()),
                (19, 8u32.to_ne_bytes().to_vec()),
                (18, 2u32.to_ne_bytes().to_vec())
            ]
        );
        let v6: Vec<(u16, Vec<u8>)> = attrs(&families[1].1)
            .map(|(k, p)| (k, p.to_vec()))
            .collect();
        assert_eq!(v6, vec![(8, vec![1])]);
        let up = encode_link_up(3, 9);
        assert_eq!(up.len(), 32);
        assert_eq!(
            &up[24..32],
            &[1, 0, 0, 0, 1, 0, 0, 0][..],
            "flags and change: IFF_UP"
        );
        let del = encode_del_link(4, 9);
        assert_eq!(&del[4..6], &17u16.to_ne_bytes());
        assert_eq!(&del[6..8], &5u16.to_ne_bytes());
        let dump = encode_link_dump(5);
        assert_eq!(&dump[6..8], &0x301u16.to_ne_bytes());
        let get = encode_get_link(6, "eth0");
        assert_eq!(&get[6..8], &1u16.to_ne_bytes());
    }

    /// A create request is a valid RTM_NEWLINK, so with an index and flags
    /// filled in it doubles as the kernel's dump answer for the parser.
    fn as_reply(index: u32, up: bool) -> Vec<u8> {
        let mut m = encode_new_macvlan(1, "flb01020304", 3, MAC);
        // The alias attribute, as the kernel reports it.
        let mut alias = Vec::new();
        attr(&mut alias, IFLA_IFALIAS, b"ferrolb virtual MAC for x\0");
        m.splice(32..32, alias);
        m[20..24].copy_from_slice(&index.to_ne_bytes());
        m[24..28].copy_from_slice(&(up as u32).to_ne_bytes());
        let n = m.len() as u32;
        m[0..4].copy_from_slice(&n.to_ne_bytes());
        m
    }

    #[test]
    fn dumps_are_parsed_and_garbage_is_skipped() {
        let mut reply = as_reply(12, true);
        reply.extend(as_reply(13, false));
        let (links, done) = parse_links(&reply);
        assert!(!done);
        assert_eq!(
            links[0],
            Link {
                index: 12,
                name: "flb01020304".into(),
                mac: Some(MAC),
                parent: Some(3),
                kind: Some("macvlan".into()),
                alias: Some("ferrolb virtual MAC for x".into()),
                up: true,
            }
        );
        assert_eq!((links[1].index, links[1].up), (13, false));
        let mut end = vec![0u8; 20];
        end[0..4].copy_from_slice(&20u32.to_ne_bytes());
        end[4..6].copy_from_slice(&3u16.to_ne_bytes());
        assert!(parse_links(&end).1);
        for cut in 0..reply.len() {
            assert!(parse_links(&reply[..cut]).0.len() <= 2);
        }
        let mut bad = as_reply(14, true);
        bad[32..34].copy_from_slice(&500u16.to_ne_bytes());
        let (l, _) = parse_links(&bad);
        assert!(
            l.is_empty(),
            "an attribute longer than its message: no name, no link"
        );
        for b in 0..=255u8 {
            let mut flip = as_reply(15, true);
            let i = (b as usize * 7) % flip.len();
            flip[i] ^= b;
            let _ = parse_links(&flip);
        }
    }
}
