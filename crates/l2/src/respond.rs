//! What to do with a received ARP/NDP frame, and the frames to announce a
//! VIP with. Pure: the caller gives the bytes and the set of VIPs this node
//! owns on the interface (each with the MAC it answers with: the
//! interface's, or its group's virtual MAC), and sends what comes back.

use crate::wire::{self, Arp, ArpOp, Frame, FrameBuf, Mac, Ndp, Packet, WireError, ALL_NODES};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The outcome of one received frame.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    /// The answer to send, if the frame asked for a VIP we own.
    pub reply: Option<FrameBuf>,
    /// Who asked (the frame's Ethernet source), for per-source rate limits.
    pub from: Mac,
    /// Another MAC claims a VIP we own (an answer or announcement for it).
    pub conflict: Option<(IpAddr, Mac)>,
    /// Whether the frame asked about a VIP we own (counted as a request).
    pub asked: bool,
}

/// Answers ARP and NDP for the VIPs one interface owns.
#[derive(Debug, Clone, Default)]
pub struct Responder {
    mac: Mac,
    /// Owned VIPs and the MAC each answers with.
    v4: BTreeMap<Ipv4Addr, Mac>,
    v6: BTreeMap<Ipv6Addr, Mac>,
}

impl Responder {
    /// A responder for an interface with address `mac`, owning nothing.
    pub fn new(mac: Mac) -> Responder {
        Responder {
            mac,
            v4: BTreeMap::new(),
            v6: BTreeMap::new(),
        }
    }

    /// The interface's MAC.
    pub fn mac(&self) -> Mac {
        self.mac
    }

    /// Replaces the owned VIPs, answered with the interface's MAC;
    /// answering stops at once for VIPs not in `vips`.
    pub fn set_owned(&mut self, vips: impl IntoIterator<Item = IpAddr>) {
        let mac = self.mac;
        self.set_owned_as(vips.into_iter().map(|v| (v, mac)));
    }

    /// Replaces the owned VIPs, each answered and announced with its own
    /// MAC (a virtual MAC, or the interface's).
    pub fn set_owned_as(&mut self, vips: impl IntoIterator<Item = (IpAddr, Mac)>) {
        self.v4.clear();
        self.v6.clear();
        for (ip, mac) in vips {
            match ip {
                IpAddr::V4(a) => {
                    self.v4.insert(a, mac);
                }
                IpAddr::V6(a) => {
                    self.v6.insert(a, mac);
                }
            }
        }
    }

    /// Whether `ip` is owned.
    pub fn owns(&self, ip: IpAddr) -> bool {
        self.mac_of(ip).is_some()
    }

    /// The MAC `ip` is answered with, if owned.
    pub fn mac_of(&self, ip: IpAddr) -> Option<Mac> {
        match ip {
            IpAddr::V4(a) => self.v4.get(&a).copied(),
            IpAddr::V6(a) => self.v6.get(&a).copied(),
        }
    }

    /// Handles one received frame.
    pub fn handle(&self, bytes: &[u8]) -> Result<Outcome, WireError> {
        let frame = wire::parse(bytes)?;
        // Our own transmissions, looped back to a packet socket, say nothing.
        if frame.src == self.mac {
            return Ok(Outcome::default());
        }
        let mut out = match frame.packet {
            Packet::Arp(a) => self.arp(&frame, a),
            Packet::Ndp { src, msg, .. } => self.ndp(&frame, src, msg),
        };
        out.from = frame.src;
        Ok(out)
    }

    fn arp(&self, frame: &Frame, a: Arp) -> Outcome {
        let mut out = Outcome::default();
        // Someone else speaks for a VIP we own: an answer, a gratuitous
        // announcement, or traffic sourced from it. With a virtual MAC that
        // includes our own MAC: this socket never receives what it sent, so
        // a frame from the virtual MAC comes from another node holding it.
        if let Some(&ours) = self.v4.get(&a.spa) {
            if a.sha != ours || ours != self.mac {
                out.conflict = Some((IpAddr::V4(a.spa), a.sha));
            }
        }
        if let (ArpOp::Request, Some(&ours)) = (a.op, self.v4.get(&a.tpa)) {
            if a.spa == a.tpa {
                return out;
            }
            out.asked = true;
            // Answer the asker; a probe (sender 0.0.0.0, RFC 5227) is answered too, which defends the VIP.
            let to = if a.sha.is_multicast() || a.sha == Mac::ZERO {
                frame.src
            } else {
                a.sha
            };
            out.reply = Some(wire::emit(&Frame {
                dst: to,
                src: ours,
                packet: Packet::Arp(Arp {
                    op: ArpOp::Reply,
                    sha: ours,
                    spa: a.tpa,
                    tha: to,
                    tpa: a.spa,
                }),
            }));
        }
        out
    }

    fn ndp(&self, frame: &Frame, src: Ipv6Addr, msg: Ndp) -> Outcome {
        let mut out = Outcome::default();
        match msg {
            Ndp::Solicit { target, source_lla } if self.v6.contains_key(&target) => {
                let ours = self.v6.get(&target).copied().unwrap_or(self.mac);
                out.asked = true;
                // DAD (unspecified source) is answered to all nodes, unsolicited (RFC 4861 7.2.4).
                let (dst_ip, dst_mac, solicited) = if src.is_unspecified() {
                    (ALL_NODES, Mac::ipv6_multicast(ALL_NODES), false)
                } else {
                    // A unicast reachability probe may carry no source LLA: answer the frame's sender.
                    (src, source_lla.unwrap_or(frame.src), true)
                };
                out.reply = Some(wire::emit(&Frame {
                    dst: dst_mac,
                    src: ours,
                    packet: Packet::Ndp {
                        src: target,
                        dst: dst_ip,
                        msg: Ndp::Advert {
                            target,
                            router: false,
                            solicited,
                            override_: true,
                            target_lla: Some(ours),
                        },
                    },
                }));
            }
            Ndp::Advert {
                target, target_lla, ..
            } if self.v6.contains_key(&target) => {
                let ours = self.v6.get(&target).copied().unwrap_or(self.mac);
                let other = target_lla.unwrap_or(frame.src);
                if other != ours || ours != self.mac {
                    out.conflict = Some((IpAddr::V6(target), other));
                }
            }
            _ => {}
        }
        out
    }

    /// The frames that announce `vip` as ours: a gratuitous ARP request and
    /// reply (Linux treats both as updates), or an unsolicited NA to all nodes
    /// with the override flag; from the VIP's MAC (so a switch moves its
    /// forwarding entry for a virtual MAC to this port), the interface's
    /// for a VIP not owned.
    pub fn announce(&self, vip: IpAddr) -> Vec<FrameBuf> {
        let mac = self.mac_of(vip).unwrap_or(self.mac);
        Self::announce_as(vip, mac)
    }

    fn announce_as(vip: IpAddr, mac: Mac) -> Vec<FrameBuf> {
        match vip {
            IpAddr::V4(v) => vec![
                wire::emit(&Frame {
                    dst: Mac::BROADCAST,
                    src: mac,
                    packet: Packet::Arp(Arp {
                        op: ArpOp::Request,
                        sha: mac,
                        spa: v,
                        tha: Mac::ZERO,
                        tpa: v,
                    }),
                }),
                wire::emit(&Frame {
                    dst: Mac::BROADCAST,
                    src: mac,
                    packet: Packet::Arp(Arp {
                        op: ArpOp::Reply,
                        sha: mac,
                        spa: v,
                        tha: mac,
                        tpa: v,
                    }),
                }),
            ],
            IpAddr::V6(v) => vec![wire::emit(&Frame {
                dst: Mac::ipv6_multicast(ALL_NODES),
                src: mac,
                packet: Packet::Ndp {
                    src: v,
                    dst: ALL_NODES,
                    msg: Ndp::Advert {
                        target: v,
                        router: false,
                        solicited: false,
                        override_: true,
                        target_lla: Some(mac),
                    },
                },
            })],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{emit, parse, solicited_node};

    fn mac(s: &str) -> Mac {
        s.parse().unwrap()
    }
    const US: &str = "02:00:00:00:00:aa";
    const CLIENT: &str = "02:00:00:00:00:01";

    fn responder() -> Responder {
        let mut r = Responder::new(mac(US));
        r.set_owned([
            "192.0.2.10".parse().unwrap(),
            "2001:db8::10".parse().unwrap(),
        ]);
        r
    }

    fn arp(op: ArpOp, sha: &str, spa: &str, tpa: &str, dst: Mac) -> Vec<u8> {
        emit(&Frame {
            dst,
            src: mac(sha),
            packet: Packet::Arp(Arp {
                op,
                sha: mac(sha),
                spa: spa.parse().unwrap(),
                tha: Mac::ZERO,
                tpa: tpa.parse().unwrap(),
            }),
        })
        .to_vec()
    }

    #[test]
    fn answers_arp_requests_broadcast_and_unicast() {
        let r = responder();
        for dst in [Mac::BROADCAST, mac(US)] {
            let out = r
                .handle(&arp(ArpOp::Request, CLIENT, "192.0.2.1", "192.0.2.10", dst))
                .unwrap();
            assert!(out.asked && out.conflict.is_none());
            let reply = parse(&out.reply.unwrap()).unwrap();
            assert_eq!((reply.dst, reply.src), (mac(CLIENT), mac(US)));
            assert_eq!(
                reply.packet,
                Packet::Arp(Arp {
                    op: ArpOp::Reply,
                    sha: mac(US),
                    spa: "192.0.2.10".parse().unwrap(),
                    tha: mac(CLIENT),
                    tpa: "192.0.2.1".parse().unwrap()
                })
            );
        }
        // Not ours: silence.
        let out = r
            .handle(&arp(
                ArpOp::Request,
                CLIENT,
                "192.0.2.1",
                "192.0.2.11",
                Mac::BROADCAST,
            ))
            .unwrap();
        assert_eq!(
            out,
            Outcome {
                from: mac(CLIENT),
                ..Outcome::default()
            }
        );
    }

    #[test]
    fn giving_a_vip_up_stops_answering_at_once() {
        let mut r = responder();
        r.set_owned([]);
        let out = r
            .handle(&arp(
                ArpOp::Request,
                CLIENT,
                "192.0.2.1",
                "192.0.2.10",
                Mac::BROADCAST,
            ))
            .unwrap();
        assert!(out.reply.is_none());
    }

    #[test]
    fn another_mac_claiming_our_vip_is_a_conflict() {
        let r = responder();
        let other = "02:00:00:00:00:bb";
        let garp = arp(
            ArpOp::Request,
            other,
            "192.0.2.10",
            "192.0.2.10",
            Mac::BROADCAST,
        );
        let out = r.handle(&garp).unwrap();
        assert_eq!(
            out.conflict,
            Some(("192.0.2.10".parse().unwrap(), mac(other)))
        );
        assert!(
            out.reply.is_none(),
            "a gratuitous announcement is not a question"
        );
        let reply = arp(ArpOp::Reply, other, "192.0.2.10", "192.0.2.1", mac(CLIENT));
        assert!(r.handle(&reply).unwrap().conflict.is_some());
        // Our own frames, looped back, are not conflicts.
        let mine = arp(
            ArpOp::Request,
            US,
            "192.0.2.10",
            "192.0.2.10",
            Mac::BROADCAST,
        );
        assert_eq!(r.handle(&mine).unwrap(), Outcome::default());
    }

    fn ns(src: &str, dst: &str, frame_src: &str, lla: Option<Mac>) -> Vec<u8> {
        emit(&Frame {
            dst: Mac::ipv6_multicast(dst.parse().unwrap()),
            src: mac(frame_src),
            packet: Packet::Ndp {
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
                msg: Ndp::Solicit {
                    target: "2001:db8::10".parse().unwrap(),
                    source_lla: lla,
                },
            },
        })
        .to_vec()
    }

    fn advert(bytes: &[u8]) -> (Frame, Ipv6Addr, Ipv6Addr, bool, bool, bool, Option<Mac>) {
        let f = parse(bytes).unwrap();
        match f.packet {
            Packet::Ndp {
                src,
                dst,
                msg:
                    Ndp::Advert {
                        router,
                        solicited,
                        override_,
                        target_lla,
                        ..
                    },
            } => (f, src, dst, router, solicited, override_, target_lla),
            other => panic!("not an advert: {other:?}"),
        }
    }

    #[test]
    fn answers_neighbour_solicitations_rfc4861() {
        let r = responder();
        let group = solicited_node("2001:db8::10".parse().unwrap()).to_string();
        // Multicast NS with a source LLA.
        let out = r
            .handle(&ns("2001:db8::1", &group, CLIENT, Some(mac(CLIENT))))
            .unwrap();
        let (f, src, dst, router, solicited, override_, lla) = advert(&out.reply.unwrap());
        assert_eq!((f.dst, f.src), (mac(CLIENT), mac(US)));
        assert_eq!(
            (src, dst),
            (
                "2001:db8::10".parse().unwrap(),
                "2001:db8::1".parse().unwrap()
            )
        );
        assert_eq!(
            (router, solicited, override_, lla),
            (false, true, true, Some(mac(US)))
        );
        // Unicast reachability probe without a source LLA: answered to the frame's sender.
        let out = r
            .handle(&ns("2001:db8::1", "2001:db8::10", CLIENT, None))
            .unwrap();
        let (f, _, dst, _, solicited, _, _) = advert(&out.reply.unwrap());
        assert_eq!(f.dst, mac(CLIENT));
        assert_eq!(dst, "2001:db8::1".parse::<Ipv6Addr>().unwrap());
        assert!(solicited);
        // DAD for our VIP: defended to all nodes, not solicited.
        let out = r.handle(&ns("::", &group, CLIENT, None)).unwrap();
        let (f, _, dst, _, solicited, override_, _) = advert(&out.reply.unwrap());
        assert_eq!(f.dst, mac("33:33:00:00:00:01"));
        assert_eq!(dst, ALL_NODES);
        assert!(!solicited && override_);
    }

    #[test]
    fn announcements_are_what_linux_calls_gratuitous() {
        let r = responder();
        let frames = r.announce("192.0.2.10".parse().unwrap());
        assert_eq!(frames.len(), 2);
        for (i, b) in frames.iter().enumerate() {
            let f = parse(b).unwrap();
            assert_eq!(f.dst, Mac::BROADCAST);
            let Packet::Arp(a) = f.packet else { panic!() };
            // Sender IP = target IP; for the reply form also target MAC = sender MAC.
            assert_eq!(a.spa, a.tpa);
            assert_eq!(a.sha, mac(US));
            if i == 1 {
                assert_eq!((a.op, a.tha), (ArpOp::Reply, mac(US)));
            }
        }
        let na = r.announce("2001:db8::10".parse().unwrap());
        let (f, src, dst, router, solicited, override_, lla) = advert(&na[0]);
        assert_eq!(f.dst, mac("33:33:00:00:00:01"));
        assert_eq!((src, dst), ("2001:db8::10".parse().unwrap(), ALL_NODES));
        assert_eq!(
            (router, solicited, override_, lla),
            (false, false, true, Some(mac(US)))
        );
    }

    #[test]
    fn malformed_frames_are_errors_not_answers() {
        let r = responder();
        assert!(r.handle(&[0u8; 10]).is_err());
        let mut bad = ns("2001:db8::1", "ff02::1:ff00:10", CLIENT, None);
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(r.handle(&bad).is_err(), "checksum");
    }
    const VMAC: &str = "02:6d:5c:dc:ef:bd";

    fn virtual_responder() -> Responder {
        let mut r = Responder::new(mac(US));
        r.set_owned_as([
            ("192.0.2.10".parse().unwrap(), mac(VMAC)),
            ("2001:db8::10".parse().unwrap(), mac(VMAC)),
            ("192.0.2.20".parse().unwrap(), mac(US)),
        ]);
        r
    }

    #[test]
    fn a_virtual_mac_answers_and_announces_from_itself() {
        let r = virtual_responder();
        // ARP: Ethernet source and sender MAC are the virtual MAC, so the
        // client caches it and the switch learns it on this port.
        for dst in [Mac::BROADCAST, mac(VMAC)] {
            let out = r
                .handle(&arp(ArpOp::Request, CLIENT, "192.0.2.1", "192.0.2.10", dst))
                .unwrap();
            let reply = parse(&out.reply.unwrap()).unwrap();
            assert_eq!((reply.dst, reply.src), (mac(CLIENT), mac(VMAC)));
            let Packet::Arp(a) = reply.packet else {
                panic!()
            };
            assert_eq!(a.sha, mac(VMAC));
        }
        // A VIP of this interface without one still answers as the node.
        let out = r
            .handle(&arp(
                ArpOp::Request,
                CLIENT,
                "192.0.2.1",
                "192.0.2.20",
                Mac::BROADCAST,
            ))
            .unwrap();
        assert_eq!(parse(&out.reply.unwrap()).unwrap().src, mac(US));
        // NDP: the advertisement's source and target LLA.
        let group = solicited_node("2001:db8::10".parse().unwrap()).to_string();
        let out = r
            .handle(&ns("2001:db8::1", &group, CLIENT, Some(mac(CLIENT))))
            .unwrap();
        let (f, _, _, _, _, _, lla) = advert(&out.reply.unwrap());
        assert_eq!((f.src, lla), (mac(VMAC), Some(mac(VMAC))));
        // Announcements from the virtual MAC.
        for b in r.announce("192.0.2.10".parse().unwrap()) {
            let f = parse(&b).unwrap();
            let Packet::Arp(a) = f.packet else { panic!() };
            assert_eq!((f.src, a.sha), (mac(VMAC), mac(VMAC)));
        }
        let na = r.announce("2001:db8::10".parse().unwrap());
        let (f, _, _, _, _, _, lla) = advert(&na[0]);
        assert_eq!((f.src, lla), (mac(VMAC), Some(mac(VMAC))));
        assert_eq!(
            parse(&r.announce("192.0.2.20".parse().unwrap())[0])
                .unwrap()
                .src,
            mac(US)
        );
    }

    #[test]
    fn another_node_holding_our_virtual_mac_is_a_conflict() {
        let r = virtual_responder();
        // The frame comes in from the wire, so it is not ours: a second holder.
        let garp = arp(
            ArpOp::Request,
            VMAC,
            "192.0.2.10",
            "192.0.2.10",
            Mac::BROADCAST,
        );
        assert_eq!(
            r.handle(&garp).unwrap().conflict,
            Some(("192.0.2.10".parse().unwrap(), mac(VMAC)))
        );
        let other = arp(
            ArpOp::Reply,
            "02:00:00:00:00:bb",
            "192.0.2.10",
            "192.0.2.1",
            mac(CLIENT),
        );
        assert!(r.handle(&other).unwrap().conflict.is_some());
        let na = emit(&Frame {
            dst: Mac::ipv6_multicast(ALL_NODES),
            src: mac(VMAC),
            packet: Packet::Ndp {
                src: "2001:db8::10".parse().unwrap(),
                dst: ALL_NODES,
                msg: Ndp::Advert {
                    target: "2001:db8::10".parse().unwrap(),
                    router: false,
                    solicited: false,
                    override_: true,
                    target_lla: Some(mac(VMAC)),
                },
            },
        });
        assert_eq!(
            r.handle(&na).unwrap().conflict,
            Some(("2001:db8::10".parse().unwrap(), mac(VMAC)))
        );
        // The node-MAC VIP keeps the old rule: our own MAC is no conflict.
        let mine = arp(ArpOp::Reply, US, "192.0.2.20", "192.0.2.1", mac(CLIENT));
        assert_eq!(r.handle(&mine).unwrap(), Outcome::default());
    }
}
