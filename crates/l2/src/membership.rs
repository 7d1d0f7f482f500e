//! Membership and failure detection between speakers, independent of any
//! API server: every node sends a small UDP heartbeat to every other member
//! each `interval`, carrying the services it announces (and for how long)
//! and how long ago it last heard each member.
//!
//! A member is down when neither this node nor any live peer has heard it
//! for `dead_after`. The second condition is indirect confirmation (as in
//! SWIM's indirect probes): a few lost packets on one path never take a
//! live owner down, while a dead node is still declared down everywhere
//! within about `dead_after` plus one interval.
//!
//! Sans-IO: [`Membership::tick`] and [`Membership::receive`] take the time
//! and return what to send and which members changed state; the caller owns
//! the socket and the clock.
//!
//! Trust: with keys ([`crate::auth::Keys`]) every heartbeat carries an
//! HMAC-SHA256 over the whole datagram; a receiver takes one only if the MAC
//! verifies, it comes from the claimed member's address, and it is new: each
//! sender run has an id (its start time, so a restart is a later run) and a
//! sequence number, checked against a 64-heartbeat window, so a replayed
//! heartbeat (of this run or an older one) is refused. Every refusal says why
//! ([`crate::auth::Refusal`]).
//!
//! Cost: each node sends and receives N-1 heartbeats per interval (about
//! 60 bytes plus ~20 bytes per claimed service). With the default 100 ms
//! interval that is 10 x (N-1) packets per second per node: 20 pps with 3
//! nodes, ~1,000 with 100, ~10,000 (about 6 Mbit/s) with 1,000 - which is
//! why only nodes that may announce on the same segment need to be members.

use crate::auth::{Keys, Refusal, MAC_LEN};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Timing of the failure detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Time between heartbeats, in milliseconds.
    pub interval_ms: u64,
    /// Silence after which a member is down, in milliseconds. Also how long a
    /// starting node listens before it may claim anything.
    pub dead_after_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        // Down after 4 missed heartbeats: a dead owner is replaced in ~0.4-0.5 s.
        Timing {
            interval_ms: 100,
            dead_after_ms: 400,
        }
    }
}

/// One heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// The sender's node name.
    pub from: String,
    /// The sender's run: a later run (a restart) has a larger id.
    pub run: u64,
    /// Increases with every heartbeat of one sender run.
    pub seq: u64,
    /// Services the sender announces, with how long it has (ms).
    pub claims: Vec<(String, u64)>,
    /// Per member (in sorted member order), how long ago the sender last
    /// heard it, in units of 10 ms; `u16::MAX` for never or long ago.
    pub ages: Vec<u16>,
    /// Fingerprint of the sender's member list ([`roster`]): `ages` is read
    /// only by a node with the same list, since its indexes follow that list.
    pub roster: u64,
}

/// Fingerprint of a sorted member list.
pub fn roster(sorted_names: &[String]) -> u64 {
    let mut bytes = Vec::new();
    for n in sorted_names {
        bytes.extend_from_slice(n.as_bytes());
        bytes.push(0);
    }
    ferrolb_balance::hash::hash64(&bytes, 0x666c_6272_6f73_7472)
}

/// Age value meaning "never heard" (or longer than the encoding holds).
pub const NEVER: u16 = u16::MAX;

// Version 2 added the roster fingerprint, version 3 the run id and the MAC;
// older heartbeats are refused.
const MAGIC: &[u8; 4] = b"FLB3";
const SIGNED: u8 = 1;

/// The old name of [`Refusal`].
pub type DecodeError = Refusal;

impl Heartbeat {
    /// Encodes to bytes, with a MAC when `keys` has a signing key:
    /// `FLB3`, flags (1: signed), key id, run, seq, roster, name, claims,
    /// ages, then the 32-byte MAC over everything before it.
    pub fn encode(&self, keys: &Keys) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.claims.len() * 24);
        out.extend_from_slice(MAGIC);
        out.push(if keys.enabled() { SIGNED } else { 0 });
        out.extend_from_slice(&keys.signing_id().unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&self.run.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.roster.to_be_bytes());
        put_str(&mut out, &self.from);
        out.extend_from_slice(&(self.claims.len().min(u16::MAX as usize) as u16).to_be_bytes());
        for (k, held) in self.claims.iter().take(u16::MAX as usize) {
            put_str(&mut out, k);
            out.extend_from_slice(&held.to_be_bytes());
        }
        out.extend_from_slice(&(self.ages.len().min(u16::MAX as usize) as u16).to_be_bytes());
        for a in self.ages.iter().take(u16::MAX as usize) {
            out.extend_from_slice(&a.to_be_bytes());
        }
        if let Some(mac) = keys.sign(&out) {
            out.extend_from_slice(&mac);
        }
        out
    }

    /// Decodes bytes: anything malformed is refused, and with keys anything
    /// unsigned or whose MAC does not verify (checked before the body is
    /// read). Without keys a signed heartbeat is taken unchecked.
    pub fn decode(bytes: &[u8], keys: &Keys) -> Result<Heartbeat, Refusal> {
        if bytes.len() < 9 || &bytes[..4] != MAGIC {
            return Err(Refusal::Malformed);
        }
        let flags = bytes[4];
        let key = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
        let body_end = if flags & SIGNED != 0 {
            let end = bytes
                .len()
                .checked_sub(MAC_LEN)
                .filter(|e| *e >= 9)
                .ok_or(Refusal::Malformed)?;
            if keys.enabled() {
                keys.verify(key, &bytes[..end], &bytes[end..])?;
            }
            end
        } else if keys.enabled() {
            return Err(Refusal::Unsigned);
        } else {
            bytes.len()
        };
        let mut b = &bytes[9..body_end];
        let run = take_u64(&mut b)?;
        let seq = take_u64(&mut b)?;
        let roster = take_u64(&mut b)?;
        let from = take_str(&mut b)?;
        let n = take_u16(&mut b)? as usize;
        let mut claims = Vec::with_capacity(n.min(4096));
        for _ in 0..n {
            let k = take_str(&mut b)?;
            let held = take_u64(&mut b)?;
            claims.push((k, held));
        }
        let m = take_u16(&mut b)? as usize;
        let mut ages = Vec::with_capacity(m.min(4096));
        for _ in 0..m {
            ages.push(take_u16(&mut b)?);
        }
        if !b.is_empty() || from.is_empty() {
            return Err(Refusal::Malformed);
        }
        Ok(Heartbeat {
            from,
            run,
            seq,
            claims,
            ages,
            roster,
        })
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    out.extend_from_slice(b);
}

fn take_u16(b: &mut &[u8]) -> Result<u16, Refusal> {
    let v = b.get(..2).ok_or(Refusal::Malformed)?;
    let r = u16::from_be_bytes([v[0], v[1]]);
    *b = &b[2..];
    Ok(r)
}

fn take_u64(b: &mut &[u8]) -> Result<u64, Refusal> {
    let v = b.get(..8).ok_or(Refusal::Malformed)?;
    let r = u64::from_be_bytes(v.try_into().map_err(|_| Refusal::Malformed)?);
    *b = &b[8..];
    Ok(r)
}

fn take_str(b: &mut &[u8]) -> Result<String, Refusal> {
    let n = take_u16(b)? as usize;
    let v = b.get(..n).ok_or(Refusal::Malformed)?;
    let s = std::str::from_utf8(v)
        .map_err(|_| Refusal::Malformed)?
        .to_string();
    *b = &b[n..];
    Ok(s)
}

/// A state change of a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// First heard, or heard again after being down.
    Up(String),
    /// Silent for `dead_after`.
    Down(String),
}

#[derive(Debug, Clone)]
struct Peer {
    addr: SocketAddr,
    last_heard: Option<u64>,
    up: bool,
    /// The run heard from and its highest sequence number, with a bitmap of
    /// the 64 numbers below it already taken (bit i: `seq - 1 - i`).
    run: u64,
    seq: u64,
    window: u64,
    claims: Vec<(String, u64)>,
    /// When `claims` arrived, so their hold times can be aged to now.
    claims_at: u64,
    /// The peer's last report of member ages (10 ms units), and when it arrived.
    ages: Vec<u16>,
    ages_at: u64,
}

impl Peer {
    fn new(addr: SocketAddr) -> Peer {
        Peer {
            addr,
            last_heard: None,
            up: false,
            run: 0,
            seq: 0,
            window: 0,
            claims: Vec::new(),
            claims_at: 0,
            ages: Vec::new(),
            ages_at: 0,
        }
    }
}

/// The failure detector of one node.
#[derive(Debug, Clone)]
pub struct Membership {
    me: String,
    timing: Timing,
    peers: BTreeMap<String, Peer>,
    /// Every member, this node included, sorted: the order of `ages`.
    order: Vec<String>,
    /// [`roster`] of `order`.
    roster: u64,
    started: Option<u64>,
    next_send: u64,
    seq: u64,
    keys: Keys,
    run: u64,
}

/// Where a heartbeat falls in a sender's replay window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fresh {
    /// The newest: take everything it says.
    Newest,
    /// Late but unseen: the sender is alive, its news is older than what we have.
    Late,
}

impl Membership {
    /// A detector for node `me` with the other members and their addresses.
    pub fn new(
        me: &str,
        peers: impl IntoIterator<Item = (String, SocketAddr)>,
        timing: Timing,
    ) -> Membership {
        let peers: BTreeMap<String, Peer> = peers
            .into_iter()
            .filter(|(n, _)| n != me)
            .map(|(n, addr)| (n, Peer::new(addr)))
            .collect();
        let mut order: Vec<String> = peers.keys().cloned().collect();
        order.push(me.to_string());
        order.sort();
        Membership {
            me: me.to_string(),
            timing,
            peers,
            roster: roster(&order),
            order,
            started: None,
            next_send: 0,
            seq: 0,
            keys: Keys::none(),
            run: 0,
        }
    }

    /// Signs and checks heartbeats with `keys`; `run` identifies this run
    /// (its start time in ms or finer: a restart must have a larger one).
    pub fn set_auth(&mut self, keys: Keys, run: u64) {
        self.keys = keys;
        self.run = run;
    }

    /// Changes the heartbeat interval and the silence that means down,
    /// keeping every member's state. The next heartbeat is due no later than
    /// one new interval from `now`, so a shorter interval applies at once.
    pub fn set_timing(&mut self, now: u64, timing: Timing) {
        self.next_send = self.next_send.min(now + timing.interval_ms);
        self.timing = timing;
    }

    /// The heartbeat interval and dead-after silence in force.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// Replaces the member list (Kubernetes: speaker Pods come and go).
    /// Members that stay keep their state; new ones start down until heard;
    /// removed ones that were up are reported down.
    pub fn set_members(
        &mut self,
        members: impl IntoIterator<Item = (String, SocketAddr)>,
    ) -> Vec<Change> {
        let wanted: BTreeMap<String, SocketAddr> =
            members.into_iter().filter(|(n, _)| *n != self.me).collect();
        let mut changes = Vec::new();
        let gone: Vec<String> = self
            .peers
            .keys()
            .filter(|n| !wanted.contains_key(*n))
            .cloned()
            .collect();
        for n in gone {
            if self.peers.remove(&n).is_some_and(|p| p.up) {
                changes.push(Change::Down(n));
            }
        }
        for (n, addr) in wanted {
            match self.peers.get_mut(&n) {
                Some(p) => p.addr = addr,
                None => {
                    self.peers.insert(n, Peer::new(addr));
                }
            }
        }
        let mut order: Vec<String> = self.peers.keys().cloned().collect();
        order.push(self.me.clone());
        order.sort();
        self.roster = roster(&order);
        self.order = order;
        // Reports over the old list cannot be read against the new one.
        for p in self.peers.values_mut() {
            p.ages.clear();
        }
        changes
    }

    /// Advances time: returns the heartbeats due (destination and bytes) and
    /// members that went down. `claims` are this node's current claims.
    pub fn tick(
        &mut self,
        now: u64,
        claims: &[(String, u64)],
    ) -> (Vec<(SocketAddr, Vec<u8>)>, Vec<Change>) {
        self.started.get_or_insert(now);
        let mut changes = Vec::new();
        let dead_after = self.timing.dead_after_ms;
        let down: Vec<String> = self
            .peers
            .iter()
            // Cheap check first: only members this node has not heard lately need the peers' reports.
            .filter(|(_, p)| {
                p.up && p
                    .last_heard
                    .is_some_and(|t| now.saturating_sub(t) >= dead_after)
            })
            .filter(|(name, _)| self.heard_age(name, now) >= dead_after)
            .map(|(name, _)| name.clone())
            .collect();
        for name in down {
            if let Some(p) = self.peers.get_mut(&name) {
                p.up = false;
                p.claims.clear();
                changes.push(Change::Down(name));
            }
        }
        let mut sends = Vec::new();
        if now >= self.next_send {
            self.seq += 1;
            let ages = self.order.iter().map(|n| self.own_age(n, now)).collect();
            let bytes = Heartbeat {
                from: self.me.clone(),
                run: self.run,
                seq: self.seq,
                claims: claims.to_vec(),
                ages,
                roster: self.roster,
            }
            .encode(&self.keys);
            sends = self
                .peers
                .values()
                .map(|p| (p.addr, bytes.clone()))
                .collect();
            self.next_send = now + self.timing.interval_ms;
        }
        (sends, changes)
    }

    /// Takes a datagram received from `from`; returns a change if the sender
    /// came up, or why it was refused (nothing changes then).
    pub fn receive(
        &mut self,
        now: u64,
        from: SocketAddr,
        bytes: &[u8],
    ) -> Result<Option<Change>, Refusal> {
        let hb = Heartbeat::decode(bytes, &self.keys)?;
        let p = self.peers.get_mut(&hb.from).ok_or(Refusal::UnknownMember)?;
        if from.ip() != p.addr.ip() {
            return Err(Refusal::WrongSource);
        }
        let fresh = if hb.run > p.run || p.last_heard.is_none() {
            // A new run of the sender (a restart), or the first heard.
            p.run = hb.run;
            p.seq = hb.seq;
            p.window = 0;
            Fresh::Newest
        } else if hb.run < p.run {
            return Err(Refusal::Replay);
        } else if hb.seq > p.seq {
            let shift = hb.seq - p.seq;
            p.window = if shift >= 64 {
                0
            } else {
                (p.window << shift) | (1 << (shift - 1))
            };
            p.seq = hb.seq;
            Fresh::Newest
        } else {
            let back = p.seq - hb.seq;
            if back == 0 || back > 64 || p.window & (1 << (back - 1)) != 0 {
                return Err(Refusal::Replay);
            }
            p.window |= 1 << (back - 1);
            Fresh::Late
        };
        p.last_heard = Some(now);
        if fresh == Fresh::Newest {
            p.claims = hb.claims;
            p.claims_at = now;
            // Only a report over the same member list can be read index by index.
            if hb.roster == self.roster && hb.ages.len() == self.order.len() {
                p.ages = hb.ages;
                p.ages_at = now;
            } else {
                p.ages.clear();
            }
        }
        if !p.up {
            p.up = true;
            return Ok(Some(Change::Up(hb.from)));
        }
        Ok(None)
    }

    /// How long ago this node itself heard `name`, in 10 ms units.
    fn own_age(&self, name: &str, now: u64) -> u16 {
        if name == self.me {
            return 0;
        }
        match self.peers.get(name).and_then(|p| p.last_heard) {
            Some(t) => (now.saturating_sub(t) / 10).min(NEVER as u64 - 1) as u16,
            None => NEVER,
        }
    }

    /// The shortest time since anyone (this node or a live peer, by its
    /// latest report) heard `name`, in ms.
    fn heard_age(&self, name: &str, now: u64) -> u64 {
        let Some(idx) = self.order.iter().position(|n| n == name) else {
            return u64::MAX;
        };
        let mine = self
            .peers
            .get(name)
            .and_then(|p| p.last_heard)
            .map_or(u64::MAX, |t| now.saturating_sub(t));
        let reported = self
            .peers
            .iter()
            .filter(|(n, p)| p.up && n.as_str() != name)
            .filter_map(|(_, p)| {
                let a = *p.ages.get(idx)?;
                (a != NEVER).then(|| a as u64 * 10 + now.saturating_sub(p.ages_at))
            })
            .min()
            .unwrap_or(u64::MAX);
        mine.min(reported)
    }

    /// Whether this node has listened long enough to know its peers and may
    /// claim services (a starting node must not grab VIPs others hold).
    pub fn settled(&self, now: u64) -> bool {
        self.started
            .is_some_and(|s| now.saturating_sub(s) >= self.timing.dead_after_ms)
    }

    /// Live members, this node included.
    pub fn live(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .peers
            .iter()
            .filter(|(_, p)| p.up)
            .map(|(n, _)| n.as_str())
            .collect();
        v.push(&self.me);
        v.sort_unstable();
        v
    }

    /// The claims live peers reported, as (node, service, held ms), each
    /// hold time aged by how long ago it arrived, so they compare fairly with
    /// this node's own (computed at `now`).
    pub fn peer_claims(&self, now: u64) -> impl Iterator<Item = (&str, &str, u64)> {
        self.peers
            .iter()
            .filter(|(_, p)| p.up)
            .flat_map(move |(n, p)| {
                let age = now.saturating_sub(p.claims_at);
                p.claims
                    .iter()
                    .map(move |(k, h)| (n.as_str(), k.as_str(), h.saturating_add(age)))
            })
    }

    /// This node's name.
    pub fn me(&self) -> &str {
        &self.me
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn heartbeat_round_trip_and_golden_bytes() {
        let hb = Heartbeat {
            from: "n1".into(),
            run: 9,
            seq: 7,
            claims: vec![("svc".into(), 1500)],
            ages: vec![0, 12, NEVER],
            roster: 0x0102_0304_0506_0708,
        };
        let none = Keys::none();
        let bytes = hb.encode(&none);
        let mut want = b"FLB3".to_vec();
        want.extend_from_slice(&[0, 0, 0, 0, 0]);
        want.extend_from_slice(&9u64.to_be_bytes());
        want.extend_from_slice(&7u64.to_be_bytes());
        want.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        want.extend_from_slice(&[0, 2, b'n', b'1', 0, 1, 0, 3, b's', b'v', b'c']);
        want.extend_from_slice(&1500u64.to_be_bytes());
        want.extend_from_slice(&[0, 3, 0, 0, 0, 12, 0xff, 0xff]);
        assert_eq!(bytes, want);
        assert_eq!(Heartbeat::decode(&bytes, &none), Ok(hb.clone()));
        assert!(Heartbeat::decode(&bytes[..bytes.len() - 1], &none).is_err());
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(Heartbeat::decode(&extra, &none).is_err());
        // Signed: flag, key id, and a MAC over everything before it.
        let keys = Keys::from_text(KEY).unwrap();
        let signed = hb.encode(&keys);
        assert_eq!(signed[4], 1);
        assert_eq!(
            &signed[5..9],
            &crate::auth::key_id(KEY.as_bytes()).to_be_bytes()
        );
        assert_eq!(signed.len(), want.len() + 32);
        assert_eq!(&signed[9..signed.len() - 32], &want[9..]);
        assert_eq!(Heartbeat::decode(&signed, &keys), Ok(hb.clone()));
        assert_eq!(Heartbeat::decode(&bytes, &keys), Err(Refusal::Unsigned));
        // One bit changed anywhere: refused.
        for i in 0..signed.len() {
            let mut bad = signed.clone();
            bad[i] ^= 0x10;
            assert!(Heartbeat::decode(&bad, &keys).is_err(), "byte {i}");
        }
        let other = Keys::from_text("another key of thirty-two bytes!").unwrap();
        assert_eq!(Heartbeat::decode(&signed, &other), Err(Refusal::UnknownKey));
    }

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    /// Two members with `keys`, `a` hearing `b` at `b_addr`.
    fn pair(keys: &str) -> (Membership, Membership) {
        let t = Timing::default();
        let mut a = Membership::new("a", [("b".to_string(), addr(2))], t);
        let mut b = Membership::new("b", [("a".to_string(), addr(1))], t);
        a.set_auth(Keys::from_text(keys).unwrap(), 1);
        b.set_auth(Keys::from_text(keys).unwrap(), 1);
        (a, b)
    }

    #[test]
    fn forged_replayed_and_misdirected_heartbeats_change_nothing() {
        let (mut a, mut b) = pair(KEY);
        let (s1, _) = b.tick(0, &[("svc".into(), 10)]);
        assert_eq!(
            a.receive(0, addr(2), &s1[0].1),
            Ok(Some(Change::Up("b".into())))
        );
        // Replayed: refused, whether b is up or was declared down since.
        assert_eq!(a.receive(50, addr(2), &s1[0].1), Err(Refusal::Replay));
        let (_, changes) = a.tick(1_000, &[]);
        assert_eq!(changes, vec![Change::Down("b".into())]);
        assert_eq!(a.receive(1_000, addr(2), &s1[0].1), Err(Refusal::Replay));
        assert_eq!(a.live(), ["a"], "a replay does not revive a dead owner");
        // From another address than b's.
        let (s2, _) = b.tick(1_100, &[]);
        let elsewhere = SocketAddr::from(([192, 0, 2, 66], 7946));
        assert_eq!(
            a.receive(1_100, elsewhere, &s2[0].1),
            Err(Refusal::WrongSource)
        );
        // Forged by a host without the key, signed with its own, or unsigned.
        let mut rogue = Membership::new("b", [("a".to_string(), addr(1))], Timing::default());
        rogue.set_auth(
            Keys::from_text("the rogue's own key, 32 bytes!!!").unwrap(),
            99,
        );
        let (forged, _) = rogue.tick(1_200, &[("svc".into(), 1_000_000)]);
        assert_eq!(
            a.receive(1_200, addr(2), &forged[0].1),
            Err(Refusal::UnknownKey)
        );
        let mut plain = Membership::new("b", [("a".to_string(), addr(1))], Timing::default());
        plain.set_auth(Keys::none(), 99);
        let (unsigned, _) = plain.tick(1_200, &[]);
        assert_eq!(
            a.receive(1_200, addr(2), &unsigned[0].1),
            Err(Refusal::Unsigned)
        );
        assert_eq!(a.live(), ["a"]);
        // The real b, still running: taken.
        assert_eq!(
            a.receive(1_300, addr(2), &s2[0].1),
            Ok(Some(Change::Up("b".into())))
        );
        // A restart is a later run; the old run's heartbeats are replays from then on.
        let mut b2 = Membership::new("b", [("a".to_string(), addr(1))], Timing::default());
        b2.set_auth(Keys::from_text(KEY).unwrap(), 2);
        let (s3, _) = b2.tick(1_400, &[]);
        assert_eq!(a.receive(1_400, addr(2), &s3[0].1), Ok(None));
        let (s4, _) = b.tick(1_500, &[]);
        assert_eq!(a.receive(1_500, addr(2), &s4[0].1), Err(Refusal::Replay));
    }

    #[test]
    fn new_timing_applies_at_once_and_keeps_members_up() {
        let (mut a, mut b) = pair(KEY);
        let (s, _) = b.tick(0, &[]);
        a.receive(0, addr(2), &s[0].1).unwrap();
        assert_eq!(a.tick(0, &[]).0.len(), 1);
        // Default 100 ms: nothing due at 50 ms.
        assert!(a.tick(50, &[]).0.is_empty());
        // 20 ms heartbeats, down after 80 ms: due at once, b still up.
        let fast = Timing {
            interval_ms: 20,
            dead_after_ms: 80,
        };
        a.set_timing(50, fast);
        assert_eq!(a.timing(), fast);
        let (sends, changes) = a.tick(70, &[]);
        assert_eq!(sends.len(), 1);
        assert!(changes.is_empty());
        assert_eq!(a.live(), ["a", "b"]);
        // b silent for 80 ms is now down (it was 400 ms before).
        let (_, changes) = a.tick(81, &[]);
        assert_eq!(changes, vec![Change::Down("b".into())]);
        // A longer interval never delays the heartbeat already due.
        let slow = Timing {
            interval_ms: 1_000,
            dead_after_ms: 4_000,
        };
        let (_, _) = a.tick(100, &[]);
        a.set_timing(100, slow);
        assert_eq!(
            a.tick(120, &[]).0.len(),
            1,
            "due at 120 under the old timing"
        );
        assert!(a.tick(500, &[]).0.is_empty());
    }

    #[test]
    fn late_heartbeats_inside_the_window_count_once() {
        let (mut a, mut b) = pair(KEY);
        let sent: Vec<Vec<u8>> = (0..5).map(|i| b.tick(i * 100, &[]).0.remove(0).1).collect();
        a.receive(0, addr(2), &sent[4]).unwrap();
        // Older but unseen: taken (the sender is alive), each once.
        assert_eq!(a.receive(1, addr(2), &sent[2]), Ok(None));
        assert_eq!(a.receive(2, addr(2), &sent[2]), Err(Refusal::Replay));
        assert_eq!(a.receive(3, addr(2), &sent[4]), Err(Refusal::Replay));
        assert_eq!(a.receive(4, addr(2), &sent[3]), Ok(None));
    }

    #[test]
    fn rotation_keeps_every_pair_talking() {
        // Three rolling steps (docs/l2.md): "old" -> "old, new" (the new key
        // accepted everywhere) -> "new, old" (it signs) -> "new". Mid-step,
        // a node already changed (b) meets one not yet changed (a).
        let old = KEY;
        let new = "a brand new key of 32 bytes here";
        let on = format!("{old}\n{new}");
        let no = format!("{new}\n{old}");
        for (ka, kb) in [
            (old.to_string(), on.clone()),
            (on.clone(), no.clone()),
            (no.clone(), new.to_string()),
        ] {
            let t = Timing::default();
            let mut a = Membership::new("a", [("b".to_string(), addr(2))], t);
            let mut b = Membership::new("b", [("a".to_string(), addr(1))], t);
            a.set_auth(Keys::from_text(&ka).unwrap(), 1);
            b.set_auth(Keys::from_text(&kb).unwrap(), 1);
            let (to_a, _) = b.tick(0, &[]);
            let (to_b, _) = a.tick(0, &[]);
            assert!(
                a.receive(0, addr(2), &to_a[0].1).is_ok(),
                "a:{ka:?} b:{kb:?}"
            );
            assert!(
                b.receive(0, addr(1), &to_b[0].1).is_ok(),
                "a:{ka:?} b:{kb:?}"
            );
        }
    }

    fn addr(i: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 7000 + i))
    }

    #[test]
    fn members_can_join_and_leave_at_run_time() {
        let t = Timing::default();
        let mut a = Membership::new("a", [("b".to_string(), addr(2))], t);
        let mut c = Membership::new("c", [("a".to_string(), addr(1))], t);
        // b comes up.
        let mut b = Membership::new("b", [("a".to_string(), addr(1))], t);
        let (sends, _) = b.tick(0, &[]);
        assert_eq!(
            a.receive(0, addr(2), &sends[0].1),
            Ok(Some(Change::Up("b".into())))
        );
        // c is not a member of a yet: its heartbeats are refused.
        let (sends, _) = c.tick(0, &[]);
        assert_eq!(
            a.receive(0, addr(3), &sends[0].1),
            Err(Refusal::UnknownMember)
        );
        assert_eq!(a.live(), ["a", "b"]);
        // c joins; b leaves and, being up, is reported down.
        let changes = a.set_members([("c".to_string(), addr(3)), ("a".to_string(), addr(1))]);
        assert_eq!(changes, vec![Change::Down("b".into())]);
        assert_eq!(a.live(), ["a"], "a new member is down until heard");
        let (sends, _) = c.tick(200, &[]);
        assert_eq!(
            a.receive(200, addr(3), &sends[0].1),
            Ok(Some(Change::Up("c".into())))
        );
        assert_eq!(a.live(), ["a", "c"]);
        let (sends, _) = a.tick(300, &[]);
        assert_eq!(sends.len(), 1, "heartbeats go to the new list only");
        assert_eq!(sends[0].0, addr(3));
    }

    #[test]
    fn ages_over_another_member_list_are_not_read() {
        let t = Timing::default();
        // a knows [a, b, c]; b knows [a, b, d]: the same length, different members.
        let mut a = Membership::new(
            "a",
            [("b".to_string(), addr(2)), ("c".to_string(), addr(3))],
            t,
        );
        let mut b = Membership::new(
            "b",
            [("a".to_string(), addr(1)), ("d".to_string(), addr(4))],
            t,
        );
        let (sends, _) = b.tick(0, &[]);
        a.receive(0, addr(2), &sends[0].1).unwrap();
        assert!(a.peers["b"].ages.is_empty(), "b's ages index another list");
        b.set_members([("a".to_string(), addr(1)), ("c".to_string(), addr(3))]);
        let (sends, _) = b.tick(100, &[]);
        a.receive(100, addr(2), &sends[0].1).unwrap();
        assert_eq!(a.peers["b"].ages.len(), 3, "same list: read");
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let keys = Keys::from_text(KEY).unwrap();
            let _ = Heartbeat::decode(&bytes, &Keys::none());
            for flags in [0u8, 1] {
                let mut framed = b"FLB3".to_vec();
                framed.push(flags);
                framed.extend_from_slice(&bytes);
                let _ = Heartbeat::decode(&framed, &Keys::none());
                prop_assert!(Heartbeat::decode(&framed, &keys).is_err(), "nothing random verifies");
            }
        }
    }

    /// A simulated network of members with loss, driven by a simulated clock.
    struct Sim {
        nodes: Vec<Membership>,
        addrs: Vec<SocketAddr>,
        alive: Vec<bool>,
        rng: u64,
        loss_percent: u64,
        /// (observer, subject, time of the Down change)
        downs: Vec<(usize, usize, u64)>,
    }

    impl Sim {
        fn new(n: usize, loss_percent: u64) -> Sim {
            let addrs: Vec<(String, SocketAddr)> = (0..n)
                .map(|i| {
                    (
                        format!("n{i}"),
                        SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8], 7946)),
                    )
                })
                .collect();
            let nodes = (0..n)
                .map(|i| {
                    let mut m = Membership::new(&format!("n{i}"), addrs.clone(), Timing::default());
                    m.set_auth(Keys::from_text(KEY).unwrap(), 1);
                    m
                })
                .collect();
            Sim {
                nodes,
                addrs: addrs.iter().map(|(_, a)| *a).collect(),
                alive: vec![true; n],
                rng: 0x9e3779b97f4a7c15,
                loss_percent,
                downs: Vec::new(),
            }
        }

        fn lost(&mut self) -> bool {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            self.rng % 100 < self.loss_percent
        }

        fn index(addr: SocketAddr) -> usize {
            match addr.ip() {
                std::net::IpAddr::V4(v) => v.octets()[2] as usize * 250 + v.octets()[3] as usize,
                _ => unreachable!(),
            }
        }

        /// Runs until `until` ms in 10 ms steps.
        fn run(&mut self, from: u64, until: u64) {
            let mut now = from;
            while now < until {
                let mut inflight = Vec::new();
                for i in 0..self.nodes.len() {
                    if !self.alive[i] {
                        continue;
                    }
                    let (sends, changes) = self.nodes[i].tick(now, &[]);
                    for c in changes {
                        if let Change::Down(name) = c {
                            self.downs.push((i, name[1..].parse().unwrap(), now));
                        }
                    }
                    for (to, bytes) in sends {
                        inflight.push((i, Self::index(to), bytes));
                    }
                }
                for (from, to, bytes) in inflight {
                    if self.alive[to] && !self.lost() {
                        let addr = self.addrs[from];
                        self.nodes[to].receive(now, addr, &bytes).unwrap();
                    }
                }
                now += 10;
            }
        }
    }

    #[test]
    fn a_hundred_members_detect_a_death_within_half_a_second() {
        let mut sim = Sim::new(100, 1);
        sim.run(0, 2_000);
        for n in &sim.nodes {
            assert_eq!(n.live().len(), 100, "everyone sees everyone");
        }
        assert!(
            sim.downs.is_empty(),
            "no false positives at 1% loss: {:?}",
            &sim.downs[..sim.downs.len().min(5)]
        );
        sim.alive[42] = false;
        sim.run(2_000, 3_000);
        let detections: Vec<u64> = sim
            .downs
            .iter()
            .filter(|(_, s, _)| *s == 42)
            .map(|(_, _, t)| t - 2_000)
            .collect();
        assert_eq!(detections.len(), 99, "every live member notices");
        let worst = *detections.iter().max().unwrap();
        assert!(
            worst <= 500,
            "worst detection {worst} ms (dead_after 400 + interval 100)"
        );
    }

    #[test]
    fn heavy_loss_still_detects_and_rarely_misfires() {
        let mut sim = Sim::new(100, 10);
        sim.run(0, 10_000);
        // Lost heartbeats on one path are covered by the other peers' reports: no false verdict.
        let false_downs = sim.downs.len();
        assert_eq!(false_downs, 0, "false suspicions in 10 s at 10% loss");
        let before = sim.downs.len();
        sim.alive[7] = false;
        sim.run(10_000, 11_000);
        let detected = sim.downs[before..]
            .iter()
            .filter(|(_, s, _)| *s == 7)
            .count();
        assert!(detected >= 99, "{detected}");
    }

    #[test]
    fn a_starting_node_waits_before_claiming() {
        let mut m = Membership::new(
            "a",
            [("b".to_string(), "10.0.0.2:7946".parse().unwrap())],
            Timing::default(),
        );
        m.tick(1_000, &[]);
        assert!(!m.settled(1_100));
        assert!(m.settled(1_400));
        assert_eq!(m.live(), ["a"]);
    }

    #[test]
    fn peer_claims_age_from_when_they_arrived() {
        let mut a = Membership::new(
            "a",
            [("b".to_string(), "10.0.0.2:7946".parse().unwrap())],
            Timing::default(),
        );
        let mut b = Membership::new(
            "b",
            [("a".to_string(), "10.0.0.1:7946".parse().unwrap())],
            Timing::default(),
        );
        let (sends, _) = b.tick(1_000, &[("svc".to_string(), 2_000)]);
        let (_, bytes) = sends.into_iter().next().expect("b sends a heartbeat");
        a.receive(1_000, "10.0.0.2:7946".parse().unwrap(), &bytes)
            .expect("valid heartbeat");
        let at = |now| -> Vec<u64> { a.peer_claims(now).map(|(_, _, h)| h).collect() };
        assert_eq!(at(1_000), [2_000]);
        // 80 ms later b has held it 80 ms longer, heartbeat or not.
        assert_eq!(at(1_080), [2_080]);
        assert_eq!(
            at(900),
            [2_000],
            "a clock read before arrival does not subtract"
        );
    }
}
