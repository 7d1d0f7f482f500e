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

/// Fast failure detection (the `fast` failover profile). All-to-all
/// heartbeats at a fast rate cost every node N-1 datagrams per interval
/// each way, so instead each node also sends a tiny ping every
/// `interval_ms` to its `monitors` successors on the ring of live members
/// (sorted by name); a monitor that hears nothing from its predecessor for
/// `dead_after_ms` tells every member (a verdict), and a member is down as
/// soon as two of its monitors (one, if it has only one) say so and this
/// node has not heard it since they did. The full heartbeats go on at the
/// slow rate and still declare a silent member down after `dead_after`, so
/// a death the monitors miss (they died too) is still seen. Cost per node:
/// `monitors` pings per interval out and about as many in, whatever N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fast {
    /// Time between pings to each successor, in milliseconds.
    pub interval_ms: u64,
    /// Silence after which a monitor gives its verdict, in milliseconds.
    pub dead_after_ms: u64,
    /// How many successors each node pings (and so how many monitor it).
    pub monitors: usize,
}

impl Fast {
    /// The `fast` profile: pings every 20 ms, a verdict after 80 ms, two monitors.
    pub const PROFILE: Fast = Fast {
        interval_ms: 20,
        dead_after_ms: 80,
        monitors: 2,
    };
}

/// A verdict is taken only if this node heard the suspect no later than
/// this long after the monitor last did (network jitter, clock steps).
const VERDICT_SLACK_MS: u64 = 10;

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
    /// The sender is alive but may not take anything now (no link with a
    /// carrier, or listening after its link came back): its peers leave it
    /// out of elections, so a VIP is never left to a node that will not
    /// take it. Older speakers ignore the flag.
    pub standby: bool,
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
/// A fast-detection ping: a heartbeat with no claims and no ages.
const MAGIC_PING: &[u8; 4] = b"FLBP";
/// A monitor's verdict: a heartbeat whose one claim is (suspect, silence ms).
const MAGIC_VERDICT: &[u8; 4] = b"FLBV";

/// What a datagram on the membership port is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The full heartbeat: claims and ages, to every member.
    Heartbeat,
    /// Fast detection: "alive", to a few ring successors.
    Ping,
    /// Fast detection: "I, a monitor of the suspect, have not heard it".
    Verdict,
}

impl Kind {
    fn magic(self) -> &'static [u8; 4] {
        match self {
            Kind::Heartbeat => MAGIC,
            Kind::Ping => MAGIC_PING,
            Kind::Verdict => MAGIC_VERDICT,
        }
    }
}
const SIGNED: u8 = 1;
/// Flag bit: the sender is in standby ([`Heartbeat::standby`]).
const STANDBY: u8 = 2;

/// The old name of [`Refusal`].
pub type DecodeError = Refusal;

impl Heartbeat {
    /// Encodes to bytes, with a MAC when `keys` has a signing key:
    /// `FLB3`, flags (1: signed, 2: standby), key id, run, seq, roster, name, claims,
    /// ages, then the 32-byte MAC over everything before it.
    pub fn encode(&self, keys: &Keys) -> Vec<u8> {
        self.encode_as(Kind::Heartbeat, keys)
    }

    /// Encodes as `kind`: the same layout under another magic.
    pub fn encode_as(&self, kind: Kind, keys: &Keys) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.claims.len() * 24);
        out.extend_from_slice(kind.magic());
        let signed = if keys.enabled() { SIGNED } else { 0 };
        out.push(signed | if self.standby { STANDBY } else { 0 });
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
        match Heartbeat::decode_any(bytes, keys)? {
            (Kind::Heartbeat, hb) => Ok(hb),
            _ => Err(Refusal::Malformed),
        }
    }

    /// Decodes a heartbeat, ping or verdict, with the checks of [`Heartbeat::decode`].
    pub fn decode_any(bytes: &[u8], keys: &Keys) -> Result<(Kind, Heartbeat), Refusal> {
        let kind = match bytes.get(..4) {
            Some(m) if m == MAGIC => Kind::Heartbeat,
            Some(m) if m == MAGIC_PING => Kind::Ping,
            Some(m) if m == MAGIC_VERDICT => Kind::Verdict,
            _ => return Err(Refusal::Malformed),
        };
        if bytes.len() < 9 {
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
        let shape = match kind {
            Kind::Heartbeat => true,
            Kind::Ping => claims.is_empty() && ages.is_empty(),
            Kind::Verdict => claims.len() == 1 && ages.is_empty(),
        };
        if !b.is_empty() || from.is_empty() || !shape {
            return Err(Refusal::Malformed);
        }
        Ok((
            kind,
            Heartbeat {
                from,
                run,
                seq,
                claims,
                ages,
                roster,
                standby: flags & STANDBY != 0,
            },
        ))
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
    /// The last fast ping from it (it counts this node among its monitors).
    last_ping: Option<u64>,
    /// Monitors' verdicts on it: monitor -> (arrival, silence it reported).
    verdicts: BTreeMap<String, (u64, u64)>,
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
    /// Its newest datagram said it is in standby.
    standby: bool,
}

impl Peer {
    fn new(addr: SocketAddr) -> Peer {
        Peer {
            addr,
            last_heard: None,
            last_ping: None,
            verdicts: BTreeMap::new(),
            up: false,
            run: 0,
            seq: 0,
            window: 0,
            claims: Vec::new(),
            claims_at: 0,
            ages: Vec::new(),
            ages_at: 0,
            standby: false,
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
    /// Fast detection, when on.
    fast: Option<Fast>,
    next_ping: u64,
    /// Verdicts this node gave, by suspect: when last sent.
    verdicts_sent: BTreeMap<String, u64>,
    /// Members taken down by their monitors' verdicts (not by silence).
    fast_downs: u64,
    /// Members this node just condemned: its own verdict goes to everyone
    /// with the next tick, so a monitor whose verdict completed this node's
    /// quorum gets the vote it needs too.
    condemned_now: Vec<String>,
    /// This node says it is in standby.
    standby: bool,
    /// The services this node's last full heartbeat claimed: a heartbeat
    /// whose claims differ goes out at once, so a takeover or a give-up is
    /// known everywhere within one tick, not one interval.
    sent_claims: Vec<String>,
    /// Leaving standby: this node takes part in elections again from then,
    /// once its peers have had a heartbeat saying so.
    ready_at: u64,
}

/// How long after its heartbeat left standby a node waits before it
/// counts itself a candidate again: its peers hear the heartbeat well
/// within this on a LAN, so no node elects it before it elects itself and
/// no two nodes take the same VIP at the turn.
pub const READY_MARGIN_MS: u64 = 20;

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
            fast: None,
            next_ping: 0,
            verdicts_sent: BTreeMap::new(),
            fast_downs: 0,
            condemned_now: Vec::new(),
            standby: false,
            ready_at: 0,
            sent_claims: Vec::new(),
        }
    }

    /// Puts this node in standby (it may not take anything) or out of it.
    /// A change goes to every member with the next tick, as a full
    /// heartbeat and a ping; leaving standby counts only
    /// [`READY_MARGIN_MS`] later ([`Membership::ready`]).
    pub fn set_standby(&mut self, now: u64, standby: bool) {
        if standby == self.standby {
            return;
        }
        self.standby = standby;
        self.next_send = now;
        self.next_ping = now;
        if !standby {
            self.ready_at = now + READY_MARGIN_MS;
        }
    }

    /// Whether this node is out of standby and its peers have had time to
    /// hear so.
    pub fn ready(&self, now: u64) -> bool {
        !self.standby && now >= self.ready_at
    }

    /// Whether the live member `name` said it is in standby (this node: its
    /// own setting).
    pub fn in_standby(&self, name: &str) -> bool {
        if name == self.me {
            return self.standby;
        }
        self.peers.get(name).is_some_and(|p| p.up && p.standby)
    }

    /// How many members went down on their monitors' verdicts so far.
    pub fn fast_downs(&self) -> u64 {
        self.fast_downs
    }

    /// Turns fast detection on (or off with `None`), keeping every member's state.
    pub fn set_fast(&mut self, now: u64, fast: Option<Fast>) {
        self.fast = fast;
        self.next_ping = now;
        self.verdicts_sent.clear();
        for p in self.peers.values_mut() {
            p.verdicts.clear();
            p.last_ping = None;
        }
    }

    /// Fast detection in force.
    pub fn fast(&self) -> Option<Fast> {
        self.fast
    }

    /// The `k` live members after `of` on the ring of live members (sorted
    /// names, this node included), `of` itself excluded.
    fn successors(&self, of: &str, k: usize) -> Vec<String> {
        let mut ring: Vec<&str> = self.live();
        if !ring.contains(&of) {
            ring.push(of);
            ring.sort_unstable();
        }
        let Some(at) = ring.iter().position(|n| *n == of) else {
            return Vec::new();
        };
        (1..ring.len())
            .map(|i| ring[(at + i) % ring.len()].to_string())
            .take(k)
            .collect()
    }

    /// Whether enough of `name`'s monitors say it is gone, uncontradicted.
    fn condemned(&self, name: &str, fast: Fast, now: u64) -> bool {
        let Some(p) = self.peers.get(name) else {
            return false;
        };
        let monitors = self.successors(name, fast.monitors);
        let quorum = monitors.len().min(2);
        if quorum == 0 {
            return false;
        }
        let slow = self.timing.dead_after_ms;
        let votes = monitors
            .iter()
            .filter(|m| {
                if **m == self.me {
                    // This node's own evidence: it was pinged, and the pings stopped.
                    p.last_ping.is_some_and(|t| now.saturating_sub(t) < slow)
                        && p.last_heard
                            .is_some_and(|t| now.saturating_sub(t) >= fast.dead_after_ms)
                } else {
                    p.verdicts.get(m.as_str()).is_some_and(|&(at, silence)| {
                        let lost = at.saturating_sub(silence);
                        now.saturating_sub(at) < slow
                            && p.last_heard.is_none_or(|t| t <= lost + VERDICT_SLACK_MS)
                    })
                }
            })
            .count();
        votes >= quorum
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
    /// members that went down. `claims` are this node's current claims: a
    /// full heartbeat goes out every interval, and at once when they name
    /// other services than the last one sent.
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
        let mut down = down;
        let mut sends = Vec::new();
        if let Some(fast) = self.fast {
            let condemned: Vec<String> = self
                .peers
                .iter()
                .filter(|(n, p)| p.up && !down.contains(n))
                // Cheap first: only a member with verdicts, or pinging this node, can be condemned.
                .filter(|(_, p)| !p.verdicts.is_empty() || p.last_ping.is_some())
                .filter(|(n, _)| self.condemned(n, fast, now))
                .map(|(n, _)| n.clone())
                .collect();
            self.fast_downs += condemned.len() as u64;
            self.condemned_now.extend(condemned.iter().cloned());
            down.extend(condemned);
            sends.extend(self.fast_sends(fast, now));
        }
        for name in down {
            if let Some(p) = self.peers.get_mut(&name) {
                p.up = false;
                p.claims.clear();
                p.verdicts.clear();
                self.verdicts_sent.remove(&name);
                changes.push(Change::Down(name));
            }
        }
        let claims_changed = claims.len() != self.sent_claims.len()
            || claims
                .iter()
                .zip(&self.sent_claims)
                .any(|((k, _), s)| k != s);
        if now >= self.next_send || claims_changed {
            self.sent_claims = claims.iter().map(|(k, _)| k.clone()).collect();
            self.seq += 1;
            let ages = self.order.iter().map(|n| self.own_age(n, now)).collect();
            let bytes = Heartbeat {
                from: self.me.clone(),
                run: self.run,
                seq: self.seq,
                claims: claims.to_vec(),
                ages,
                roster: self.roster,
                standby: self.standby,
            }
            .encode(&self.keys);
            sends.extend(self.peers.values().map(|p| (p.addr, bytes.clone())));
            self.next_send = now + self.timing.interval_ms;
        }
        (sends, changes)
    }

    /// The pings due to this node's successors, and the verdicts due on
    /// the live members it monitors that went silent.
    fn fast_sends(&mut self, fast: Fast, now: u64) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut out = Vec::new();
        if now >= self.next_ping {
            self.next_ping = now + fast.interval_ms;
            self.seq += 1;
            let ping = Heartbeat {
                from: self.me.clone(),
                run: self.run,
                seq: self.seq,
                claims: Vec::new(),
                ages: Vec::new(),
                roster: self.roster,
                standby: self.standby,
            }
            .encode_as(Kind::Ping, &self.keys);
            for s in self.successors(&self.me.clone(), fast.monitors) {
                if let Some(p) = self.peers.get(&s) {
                    out.push((p.addr, ping.clone()));
                }
            }
        }
        let slow = self.timing.dead_after_ms;
        let silent: Vec<(String, u64)> = self
            .peers
            .iter()
            .filter(|(_, p)| p.up && p.last_ping.is_some_and(|t| now.saturating_sub(t) < slow))
            .filter_map(|(n, p)| {
                let silence = now.saturating_sub(p.last_heard?);
                (silence >= fast.dead_after_ms).then(|| (n.clone(), silence))
            })
            .filter(|(n, _)| self.successors(n, fast.monitors).contains(&self.me))
            .filter(|(n, _)| {
                self.verdicts_sent
                    .get(n)
                    .is_none_or(|t| now.saturating_sub(*t) >= fast.interval_ms)
            })
            .collect();
        let mut silent = silent;
        for c in std::mem::take(&mut self.condemned_now) {
            let silence = self
                .peers
                .get(&c)
                .and_then(|p| p.last_heard)
                .map_or(u64::MAX / 2, |t| now.saturating_sub(t));
            if !silent.iter().any(|(n, _)| *n == c) {
                silent.push((c, silence));
            }
        }
        for (suspect, silence) in silent {
            self.verdicts_sent.insert(suspect.clone(), now);
            self.seq += 1;
            let verdict = Heartbeat {
                from: self.me.clone(),
                run: self.run,
                seq: self.seq,
                claims: vec![(suspect.clone(), silence)],
                ages: Vec::new(),
                roster: self.roster,
                standby: self.standby,
            }
            .encode_as(Kind::Verdict, &self.keys);
            for (n, p) in &self.peers {
                if *n != suspect {
                    out.push((p.addr, verdict.clone()));
                }
            }
        }
        out
    }

    /// Takes a datagram received from `from`; returns a change if the sender
    /// came up, or why it was refused (nothing changes then).
    pub fn receive(
        &mut self,
        now: u64,
        from: SocketAddr,
        bytes: &[u8],
    ) -> Result<Option<Change>, Refusal> {
        let (kind, hb) = Heartbeat::decode_any(bytes, &self.keys)?;
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
            p.standby = hb.standby;
        }
        // Heard: whatever its monitors said is contradicted.
        p.verdicts.clear();
        self.verdicts_sent.remove(&hb.from);
        match kind {
            Kind::Heartbeat => {}
            Kind::Ping => {
                p.last_ping = Some(now);
                return Ok(None);
            }
            Kind::Verdict => return Ok(self.take_verdict(now, hb)),
        }
        let Some(p) = self.peers.get_mut(&hb.from) else {
            return Err(Refusal::UnknownMember);
        };
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

    /// A monitor's verdict: recorded on the suspect, which goes down at once
    /// if that makes a quorum. A verdict on this node is answered with a
    /// full heartbeat to everyone now, which contradicts it everywhere.
    fn take_verdict(&mut self, now: u64, v: Heartbeat) -> Option<Change> {
        let fast = self.fast?;
        let (suspect, silence) = v.claims.into_iter().next()?;
        if suspect == self.me {
            self.next_send = now;
            return None;
        }
        let p = self.peers.get_mut(&suspect)?;
        if !p.up {
            return None;
        }
        p.verdicts.insert(v.from, (now, silence));
        if !self.condemned(&suspect, fast, now) {
            return None;
        }
        let p = self.peers.get_mut(&suspect)?;
        p.up = false;
        p.claims.clear();
        p.verdicts.clear();
        self.verdicts_sent.remove(&suspect);
        self.fast_downs += 1;
        self.condemned_now.push(suspect.clone());
        Some(Change::Down(suspect))
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
            standby: false,
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

    /// The failure detector's cost per node, from the pure model: N members
    /// exchanging heartbeats for 2 simulated seconds with 100 VIP groups
    /// spread over them: the default profile, the fast profile (pings to
    /// two successors), and what all-to-all heartbeats at the fast rate
    /// would cost instead. Prints the
    /// table docs/l2.md quotes (`cargo test --release -p ferrolb-l2 --lib
    /// cost_per_node -- --nocapture`); asserts the counts the design
    /// promises (N-1 heartbeats per interval, nobody declared down).
    #[test]
    fn cost_per_node_at_3_10_and_100_nodes() {
        println!("nodes  profile          sent/s  received/s  bytes/s out  bytes/datagram  handling per datagram");
        for n in [3usize, 10, 100] {
            for (label, timing, fast) in [
                ("default", Timing::default(), None),
                ("fast", Timing::default(), Some(Fast::PROFILE)),
                (
                    "all-to-all 20ms",
                    Timing {
                        interval_ms: 20,
                        dead_after_ms: 80,
                    },
                    None,
                ),
            ] {
                let names: Vec<String> = (0..n).map(|i| format!("node{i:03}")).collect();
                let addrs: Vec<SocketAddr> = (0..n as u16).map(addr).collect();
                let mut nodes: Vec<Membership> = names
                    .iter()
                    .map(|me| {
                        let mut m = Membership::new(
                            me,
                            names.iter().cloned().zip(addrs.iter().copied()),
                            timing,
                        );
                        m.set_fast(0, fast);
                        m
                    })
                    .collect();
                let claims: Vec<Vec<(String, u64)>> = (0..n)
                    .map(|i| {
                        (0..100)
                            .filter(|g| g % n == i)
                            .map(|g| (format!("default/service-{g:03}"), 60_000))
                            .collect()
                    })
                    .collect();
                let (mut sent, mut bytes, mut received) =
                    (vec![0u64; n], vec![0u64; n], vec![0u64; n]);
                let mut handling = std::time::Duration::ZERO;
                let mut handled = 0u32;
                let end_ms = 2_000;
                let step = 5;
                let mut now = 0;
                while now < end_ms {
                    for i in 0..n {
                        let (out, changes) = nodes[i].tick(now, &claims[i]);
                        assert!(
                            changes.iter().all(|c| !matches!(c, Change::Down(_))),
                            "{n} nodes, {label}: {changes:?} at {now} ms"
                        );
                        for (to, b) in out {
                            let j = addrs.iter().position(|a| *a == to).expect("a member");
                            sent[i] += 1;
                            bytes[i] += b.len() as u64;
                            received[j] += 1;
                            let t = std::time::Instant::now();
                            let _ = nodes[j].receive(now, addrs[i], &b);
                            handling += t.elapsed();
                            handled += 1;
                        }
                    }
                    now += step;
                }
                let secs = end_ms as f64 / 1000.0;
                let per_node_sent = sent[0] as f64 / secs;
                let pings = fast.map_or(0.0, |f| {
                    f.monitors.min(n - 1) as f64 * 1000.0 / f.interval_ms as f64
                });
                let expected = (n as f64 - 1.0) * 1000.0 / timing.interval_ms as f64 + pings;
                assert!(
                    (per_node_sent - expected).abs() <= expected * 0.05 + (n as f64),
                    "{n} nodes, {label}: {per_node_sent} heartbeats/s, expected {expected}"
                );
                println!(
                    "{n:>5}  {label:<15} {:>7.0} {:>11.0} {:>12.0} {:>15.0} {:>15.1?}",
                    per_node_sent,
                    received[0] as f64 / secs,
                    bytes[0] as f64 / secs,
                    bytes[0] as f64 / sent[0].max(1) as f64,
                    handling / handled.max(1)
                );
            }
        }
    }

    /// A simulated segment: members, datagrams in flight with their
    /// arrival times, and a deterministic generator for delay and loss.
    struct Segment {
        names: Vec<String>,
        nodes: Vec<Membership>,
        alive: Vec<bool>,
        flight: Vec<(u64, usize, usize, Vec<u8>)>,
        rng: u64,
        /// Largest extra delay (ms) and loss (per mille).
        jitter_ms: u64,
        loss: u64,
        /// (time, observer, member) of every Down seen.
        downs: Vec<(u64, usize, String)>,
        sent: Vec<u64>,
    }

    impl Segment {
        fn new(n: usize, timing: Timing, fast: Option<Fast>) -> Segment {
            let names: Vec<String> = (0..n).map(|i| format!("node{i:03}")).collect();
            let nodes = names
                .iter()
                .map(|me| {
                    let mut m = Membership::new(
                        me,
                        names.iter().cloned().zip((0..n as u16).map(addr)),
                        timing,
                    );
                    m.set_fast(0, fast);
                    m
                })
                .collect();
            Segment {
                names,
                nodes,
                alive: vec![true; n],
                flight: Vec::new(),
                rng: 0x9e37_79b9_7f4a_7c15,
                jitter_ms: 0,
                loss: 0,
                downs: Vec::new(),
                sent: vec![0; n],
            }
        }

        fn next(&mut self) -> u64 {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            self.rng
        }

        /// Runs from `from` to `to` in 1 ms steps.
        fn run(&mut self, from: u64, to: u64) {
            for now in from..to {
                let (due, later): (Vec<_>, Vec<_>) =
                    self.flight.drain(..).partition(|(t, ..)| *t <= now);
                self.flight = later;
                for (_, i, j, b) in due {
                    if !self.alive[j] {
                        continue;
                    }
                    if let Ok(Some(Change::Down(x))) =
                        self.nodes[j].receive(now, addr(i as u16), &b)
                    {
                        self.downs.push((now, j, x));
                    }
                }
                for i in 0..self.nodes.len() {
                    if !self.alive[i] {
                        continue;
                    }
                    let (out, changes) = self.nodes[i].tick(now, &[]);
                    for c in changes {
                        if let Change::Down(x) = c {
                            self.downs.push((now, i, x));
                        }
                    }
                    for (to, b) in out {
                        self.sent[i] += 1;
                        let j = (to.port() - 7000) as usize;
                        if self.loss > 0 && self.next() % 1000 < self.loss {
                            continue;
                        }
                        let delay = if self.jitter_ms > 0 {
                            self.next() % (self.jitter_ms + 1)
                        } else {
                            0
                        };
                        self.flight.push((now + delay, i, j, b));
                    }
                }
            }
        }
    }

    #[test]
    fn fast_detection_takes_a_dead_member_down_within_its_budget_at_any_size() {
        for n in [2usize, 3, 10, 100] {
            let mut sim = Segment::new(n, Timing::default(), Some(Fast::PROFILE));
            sim.run(0, 1_000);
            assert!(sim.downs.is_empty(), "{n} nodes: {:?}", sim.downs);
            // Kill one in the middle of the ring.
            let victim = n / 2;
            sim.alive[victim] = false;
            sim.run(1_000, 1_600);
            let name = sim.names[victim].clone();
            for (j, _) in sim.names.iter().enumerate().filter(|(j, _)| *j != victim) {
                let at = sim
                    .downs
                    .iter()
                    .find(|(_, o, x)| *o == j && *x == name)
                    .map(|(t, ..)| *t)
                    .unwrap_or_else(|| panic!("{n} nodes: node {j} never saw {name} down"));
                // A ping interval, the verdict silence, and a step.
                assert!(
                    at - 1_000 <= Fast::PROFILE.interval_ms + Fast::PROFILE.dead_after_ms + 1,
                    "{n} nodes: node {j} saw it {} ms after",
                    at - 1_000
                );
            }
            assert!(
                sim.downs.iter().all(|(_, _, x)| *x == name),
                "only the dead one: {:?}",
                sim.downs
            );
        }
    }

    #[test]
    fn without_fast_detection_the_slow_path_is_what_it_was() {
        let mut sim = Segment::new(3, Timing::default(), None);
        sim.run(0, 1_000);
        sim.alive[1] = false;
        sim.run(1_000, 2_000);
        let first = sim.downs.iter().map(|(t, ..)| *t).min().expect("seen down");
        assert!((1_300..=1_550).contains(&first), "{first}");
    }

    #[test]
    fn jitter_and_loss_never_take_a_live_member_down() {
        for n in [3usize, 10] {
            let mut sim = Segment::new(n, Timing::default(), Some(Fast::PROFILE));
            // Up to 30 ms of extra delay on every datagram and 2% loss, for 20 s.
            sim.jitter_ms = 30;
            sim.loss = 20;
            sim.run(0, 20_000);
            assert!(
                sim.downs.is_empty(),
                "{n} nodes: {:?}",
                &sim.downs[..sim.downs.len().min(5)]
            );
        }
    }

    #[test]
    fn one_monitors_verdict_alone_condemns_nobody() {
        let mut sim = Segment::new(4, Timing::default(), Some(Fast::PROFILE));
        sim.run(0, 1_000);
        // node001 (a monitor of node000) claims node000 has been silent, twice.
        for t in [1_000u64, 1_020] {
            sim.nodes[1].seq += 1;
            let forged = Heartbeat {
                from: "node001".into(),
                run: 0,
                seq: sim.nodes[1].seq,
                claims: vec![("node000".into(), 500)],
                ages: vec![],
                roster: sim.nodes[1].roster,
                standby: false,
            }
            .encode_as(Kind::Verdict, &Keys::none());
            for j in [2usize, 3] {
                let r = sim.nodes[j].receive(t, addr(1), &forged);
                assert_eq!(r, Ok(None), "node {j}");
            }
        }
        sim.run(1_000, 2_000);
        assert!(sim.downs.is_empty(), "{:?}", sim.downs);
    }

    #[test]
    fn a_verdict_on_this_node_is_answered_with_a_heartbeat_at_once() {
        let mut sim = Segment::new(3, Timing::default(), Some(Fast::PROFILE));
        sim.run(0, 1_000);
        let v = Heartbeat {
            from: "node001".into(),
            run: 0,
            seq: 10_000,
            claims: vec![("node000".into(), 90)],
            ages: vec![],
            roster: sim.nodes[0].roster,
            standby: false,
        }
        .encode_as(Kind::Verdict, &Keys::none());
        assert_eq!(sim.nodes[0].receive(1_000, addr(1), &v), Ok(None));
        let (out, _) = sim.nodes[0].tick(1_001, &[]);
        let full = out
            .iter()
            .filter(|(_, b)| Heartbeat::decode(b, &Keys::none()).is_ok())
            .count();
        assert_eq!(full, 2, "a full heartbeat to both others now");
    }

    #[test]
    fn standby_is_flag_bit_two_and_reaches_every_peer_at_once() {
        let hb = Heartbeat {
            from: "n1".into(),
            run: 1,
            seq: 2,
            claims: vec![],
            ages: vec![],
            roster: 3,
            standby: true,
        };
        let keys = Keys::from_text(KEY).unwrap();
        assert_eq!(hb.encode(&Keys::none())[4], 2);
        assert_eq!(hb.encode(&keys)[4], 3);
        for k in [Keys::none(), keys] {
            for kind in [Kind::Heartbeat, Kind::Ping] {
                assert_eq!(
                    Heartbeat::decode_any(&hb.encode_as(kind, &k), &k),
                    Ok((kind, hb.clone()))
                );
            }
        }
        // Peers learn a change with the very next tick, not one interval later.
        let mut sim = Segment::new(3, Timing::default(), Some(Fast::PROFILE));
        sim.run(0, 1_000);
        assert!(!sim.nodes[1].in_standby("node000"));
        sim.nodes[0].set_standby(1_000, true);
        assert!(sim.nodes[0].in_standby("node000"));
        assert!(!sim.nodes[0].ready(1_000));
        sim.run(1_000, 1_005);
        for j in [1usize, 2] {
            assert!(sim.nodes[j].in_standby("node000"), "node {j}");
            assert_eq!(
                sim.nodes[j].live().len(),
                3,
                "still alive in node {j}'s view"
            );
        }
        // Leaving: peers hear it at once; the node itself counts only after the margin.
        sim.nodes[0].set_standby(1_005, false);
        sim.run(1_005, 1_010);
        for j in [1usize, 2] {
            assert!(!sim.nodes[j].in_standby("node000"), "node {j}");
        }
        assert!(!sim.nodes[0].ready(1_010));
        assert!(sim.nodes[0].ready(1_005 + READY_MARGIN_MS));
        assert!(sim.downs.is_empty(), "{:?}", sim.downs);
    }

    #[test]
    fn a_changed_claim_goes_out_at_once() {
        let t = Timing::default();
        let mut a = Membership::new("a", [("b".to_string(), addr(2))], t);
        let full = |out: &[(SocketAddr, Vec<u8>)]| {
            out.iter()
                .filter_map(|(_, b)| Heartbeat::decode(b, &Keys::none()).ok())
                .collect::<Vec<_>>()
        };
        assert_eq!(full(&a.tick(0, &[]).0).len(), 1);
        assert!(full(&a.tick(10, &[]).0).is_empty(), "not due");
        // Taken: sent now, not at 100 ms.
        let took = full(&a.tick(20, &[("web".into(), 0)]).0);
        assert_eq!(took.len(), 1);
        assert_eq!(took[0].claims, [("web".to_string(), 0)]);
        // The same claim held longer is no news.
        assert!(full(&a.tick(30, &[("web".into(), 10)]).0).is_empty());
        // Given up: sent now.
        let gave = full(&a.tick(40, &[]).0);
        assert_eq!(gave.len(), 1);
        assert!(gave[0].claims.is_empty());
        // One claim swapped for another of the same count is news too.
        a.tick(50, &[("a1".into(), 0)]);
        assert_eq!(full(&a.tick(60, &[("a2".into(), 0)]).0).len(), 1);
    }

    #[test]
    fn a_late_datagram_does_not_bring_back_an_old_standby() {
        let t = Timing::default();
        let mut a = Membership::new("a", [("b".to_string(), addr(2))], t);
        let mut b = Membership::new("b", [("a".to_string(), addr(1))], t);
        b.set_standby(0, true);
        let (old, _) = b.tick(0, &[]);
        b.set_standby(10, false);
        let (new, _) = b.tick(10, &[]);
        a.receive(11, addr(2), &new[0].1).unwrap();
        assert!(!a.in_standby("b"));
        // The older one arrives late: b is alive, but its standby is news from before.
        assert_eq!(a.receive(12, addr(2), &old[0].1), Ok(None));
        assert!(!a.in_standby("b"));
        // A dead member is in nobody's standby.
        b.set_standby(20, true);
        let (s, _) = b.tick(20, &[]);
        a.receive(21, addr(2), &s[0].1).unwrap();
        assert!(a.in_standby("b"));
        let (_, changes) = a.tick(2_000, &[]);
        assert_eq!(changes, vec![Change::Down("b".into())]);
        assert!(!a.in_standby("b"));
    }

    #[test]
    fn pings_and_verdicts_round_trip_and_are_not_heartbeats() {
        let hb = Heartbeat {
            from: "n1".into(),
            run: 1,
            seq: 2,
            claims: vec![("n2".into(), 90)],
            ages: vec![],
            roster: 3,
            standby: false,
        };
        let keys = Keys::from_text(KEY).unwrap();
        for k in [Keys::none(), keys] {
            let v = hb.encode_as(Kind::Verdict, &k);
            assert_eq!(
                Heartbeat::decode_any(&v, &k),
                Ok((Kind::Verdict, hb.clone()))
            );
            assert_eq!(Heartbeat::decode(&v, &k), Err(Refusal::Malformed));
            let ping = Heartbeat {
                claims: vec![],
                ..hb.clone()
            };
            let p = ping.encode_as(Kind::Ping, &k);
            assert_eq!(
                Heartbeat::decode_any(&p, &k),
                Ok((Kind::Ping, ping.clone()))
            );
            // A ping with claims is malformed.
            assert_eq!(
                Heartbeat::decode_any(&hb.encode_as(Kind::Ping, &k), &k),
                Err(Refusal::Malformed)
            );
        }
    }
}
