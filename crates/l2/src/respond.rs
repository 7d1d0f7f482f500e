//! What to do with a received ARP/NDP frame, and the frames to announce a
//! VIP with. Pure: the caller gives the bytes and the set of VIPs this node
//! owns on the interface, and sends what comes back.

use crate::wire::{self, Arp, ArpOp, Frame, FrameBuf, Mac, Ndp, Packet, WireError, ALL_NODES};
use std::collections::BTreeSet;
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
    v4: BTreeSet<Ipv4Addr>,
    v6: BTreeSet<Ipv6Addr>,
}

impl Responder {
    /// A responder for an interface with address `mac`, owning nothing.
    pub fn new(mac: Mac) -> Responder {
        Responder {
            mac,
            v4: BTreeSet::new(),
            v6: BTreeSet::new(),
        }
    }

    /// The interface's MAC.
    pub fn mac(&self) -> Mac {
        self.mac
    }

    /// Replaces the owned VIPs; answering stops at once for VIPs not in `vips`.
    pub fn set_owned(&mut self, vips: impl IntoIterator<Item = IpAddr>) {
        self.v4.clear();
        self.v6.clear();
        for ip in vips {
            match ip {
                IpAddr::V4(a) => {
                    self.v4.insert(a);
                }
                IpAddr::V6(a) => {
                    self.v6.insert(a);
                }
            }
        }
    }

    /// Whether `ip` is owned.
    pub fn owns(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.v4.contains(&a),
            IpAddr::V6(a) => self.v6.contains(&a),
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
        // Someone else speaks for a VIP we own: an answer, a gratuitous announcement, or traffic sourced from it.
        if self.v4.contains(&a.spa) && a.sha != self.mac {
            out.conflict = Some((IpAddr::V4(a.spa), a.sha));
        }
        if a.op == ArpOp::Request && self.v4.contains(&a.tpa) && a.spa != a.tpa {
            out.asked = true;
            // Answer the asker; a probe (sender 0.0.0.0, RFC 5227) is answered too, which defends the VIP.
            let to = if a.sha.is_multicast() || a.sha == Mac::ZERO {
                frame.src
            } else {
                a.sha
            };
            out.reply = Some(wire::emit(&Frame {
                dst: to,
                src: self.mac,
                packet: Packet::Arp(Arp {
                    op: ArpOp::Reply,
                    sha: self.mac,
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
            Ndp::Solicit { target, source_lla } if self.v6.contains(&target) => {
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
                    src: self.mac,
                    packet: Packet::Ndp {
                        src: target,
                        dst: dst_ip,
                        msg: Ndp::Advert {
                            target,
                            router: false,
                            solicited,
                            override_: true,
                            target_lla: Some(self.mac),
                        },
                    },
                }));
            }
            Ndp::Advert {
                target, target_lla, ..
            } if self.v6.contains(&target) => {
                let other = target_lla.unwrap_or(frame.src);
                if other != self.mac {
                    out.conflict = Some((IpAddr::V6(target), other));
                }
            }
            _ => {}
        }
        out
    }

    /// The frames that announce `vip` as ours: a gratuitous ARP request and
    /// reply (Linux treats both as updates), or an unsolicited NA to all nodes
    /// with the override flag.
    pub fn announce(&self, vip: IpAddr) -> Vec<FrameBuf> {
        match vip {
            IpAddr::V4(v) => vec![
                wire::emit(&Frame {
                    dst: Mac::BROADCAST,
                    src: self.mac,
                    packet: Packet::Arp(Arp {
                        op: ArpOp::Request,
                        sha: self.mac,
                        spa: v,
                        tha: Mac::ZERO,
                        tpa: v,
                    }),
                }),
                wire::emit(&Frame {
                    dst: Mac::BROADCAST,
                    src: self.mac,
                    packet: Packet::Arp(Arp {
                        op: ArpOp::Reply,
                        sha: self.mac,
                        spa: v,
                        tha: self.mac,
                        tpa: v,
                    }),
                }),
            ],
            IpAddr::V6(v) => vec![wire::emit(&Frame {
                dst: Mac::ipv6_multicast(ALL_NODES),
                src: self.mac,
                packet: Packet::Ndp {
                    src: v,
                    dst: ALL_NODES,
                    msg: Ndp::Advert {
                        target: v,
                        router: false,
                        solicited: false,
                        override_: true,
                        target_lla: Some(self.mac),
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
}
