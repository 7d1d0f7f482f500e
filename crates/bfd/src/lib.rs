//! Bidirectional Forwarding Detection (RFC 5880, single hop per RFC 5881),
//! asynchronous mode without authentication: the control packet codec and
//! the session state machine, free of sockets and clocks. The caller gives
//! received packets and the time, and sends what comes back.

// This crate decodes bytes from the network: a panic here is a remote crash,
// so nothing may unwrap, expect or panic (tests may: clippy.toml).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

/// Session states (RFC 5880 4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Administratively down.
    AdminDown,
    /// Down.
    Down,
    /// Initialising.
    Init,
    /// Up.
    Up,
}

impl State {
    fn code(self) -> u8 {
        match self {
            State::AdminDown => 0,
            State::Down => 1,
            State::Init => 2,
            State::Up => 3,
        }
    }

    fn from_code(c: u8) -> State {
        match c & 3 {
            0 => State::AdminDown,
            1 => State::Down,
            2 => State::Init,
            _ => State::Up,
        }
    }
}

/// Diagnostic codes (RFC 5880 4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Diag {
    /// No diagnostic.
    None = 0,
    /// Control detection time expired.
    DetectionTimeExpired = 1,
    /// Neighbour signalled session down.
    NeighborDown = 3,
    /// Administratively down.
    AdminDown = 7,
}

/// A BFD control packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Control {
    /// Diagnostic.
    pub diag: u8,
    /// Sender's state.
    pub state: State,
    /// Poll bit.
    pub poll: bool,
    /// Final bit.
    pub final_: bool,
    /// Detection time multiplier.
    pub detect_mult: u8,
    /// Sender's discriminator.
    pub my_disc: u32,
    /// The discriminator the sender has for us (0 until known).
    pub your_disc: u32,
    /// Desired minimum transmit interval, microseconds.
    pub desired_min_tx: u32,
    /// Required minimum receive interval, microseconds.
    pub required_min_rx: u32,
}

/// Why a packet was discarded (RFC 5880 6.8.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Too short, or the length field disagrees.
    #[error("bad length")]
    Length,
    /// Not version 1.
    #[error("unsupported version")]
    Version,
    /// Authentication is not supported.
    #[error("authenticated packets are not supported")]
    Auth,
    /// Multipoint bit, zero multiplier or zero discriminator.
    #[error("invalid field")]
    Invalid,
}

/// Length of a control packet without authentication.
pub const LEN: usize = 24;

impl Control {
    /// Encodes the packet.
    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0] = (1 << 5) | (self.diag & 0x1f);
        b[1] = (self.state.code() << 6) | (u8::from(self.poll) << 5) | (u8::from(self.final_) << 4);
        b[2] = self.detect_mult;
        b[3] = LEN as u8;
        b[4..8].copy_from_slice(&self.my_disc.to_be_bytes());
        b[8..12].copy_from_slice(&self.your_disc.to_be_bytes());
        b[12..16].copy_from_slice(&self.desired_min_tx.to_be_bytes());
        b[16..20].copy_from_slice(&self.required_min_rx.to_be_bytes());
        // Required min echo RX interval: 0, we do not do echo mode.
        b
    }

    /// Decodes and validates a packet.
    pub fn decode(b: &[u8]) -> Result<Control, PacketError> {
        if b.len() < LEN {
            return Err(PacketError::Length);
        }
        if b[0] >> 5 != 1 {
            return Err(PacketError::Version);
        }
        let len = b[3] as usize;
        if len < LEN || len > b.len() {
            return Err(PacketError::Length);
        }
        let flags = b[1];
        if flags & 0x04 != 0 {
            return Err(PacketError::Auth);
        }
        let word = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let c = Control {
            diag: b[0] & 0x1f,
            state: State::from_code(flags >> 6),
            poll: flags & 0x20 != 0,
            final_: flags & 0x10 != 0,
            detect_mult: b[2],
            my_disc: word(4),
            your_disc: word(8),
            desired_min_tx: word(12),
            required_min_rx: word(16),
        };
        // Multipoint bit set, zero multiplier or zero own discriminator: discard.
        if flags & 0x01 != 0 || c.detect_mult == 0 || c.my_disc == 0 {
            return Err(PacketError::Invalid);
        }
        // Your Discriminator may be 0 only while the sender is Down or AdminDown.
        if c.your_disc == 0 && !matches!(c.state, State::Down | State::AdminDown) {
            return Err(PacketError::Invalid);
        }
        Ok(c)
    }
}

/// Session parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Our discriminator (non-zero, unique per session on this host).
    pub my_disc: u32,
    /// Desired minimum transmit interval once Up.
    pub desired_min_tx: Duration,
    /// Required minimum receive interval.
    pub required_min_rx: Duration,
    /// Detection multiplier.
    pub detect_mult: u8,
    /// The passive role (RFC 5880 6.1): send nothing until the peer's first
    /// packet has told us its discriminator (again after each detection
    /// timeout), so the router starts every session.
    pub passive: bool,
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// A valid packet arrived.
    Received(Control),
    /// Time passed (milliseconds on a monotonic clock).
    Tick(Duration),
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this packet.
    Send([u8; LEN]),
    /// The session came up.
    Up,
    /// The session went down (it was up), with the diagnostic.
    Down(Diag),
}

/// While not Up, transmit no faster than once a second (RFC 5880 6.8.3).
const SLOW_TX: Duration = Duration::from_secs(1);

/// One BFD session.
#[derive(Debug, Clone)]
pub struct Session {
    cfg: Config,
    state: State,
    diag: Diag,
    remote_disc: u32,
    remote_min_rx: Duration,
    remote_desired_tx: Duration,
    remote_mult: u8,
    last_rx: Option<Duration>,
    next_tx: Duration,
    /// Reply to a poll with the final bit in the next packet.
    send_final: bool,
}

fn us(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

impl Session {
    /// A session in Down.
    pub fn new(cfg: Config) -> Session {
        Session {
            cfg,
            state: State::Down,
            diag: Diag::None,
            remote_disc: 0,
            remote_min_rx: Duration::from_micros(1),
            remote_desired_tx: Duration::ZERO,
            remote_mult: 0,
            last_rx: None,
            next_tx: Duration::ZERO,
            send_final: false,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    fn our_tx(&self) -> Duration {
        if self.state == State::Up {
            self.cfg.desired_min_tx
        } else {
            self.cfg.desired_min_tx.max(SLOW_TX)
        }
    }

    /// Time between our packets: the slower of what we want and what the peer accepts.
    pub fn tx_interval(&self) -> Duration {
        self.our_tx().max(self.remote_min_rx)
    }

    /// Detection time: the peer's multiplier times the agreed receive interval.
    pub fn detection_time(&self) -> Duration {
        self.cfg.required_min_rx.max(self.remote_desired_tx) * u32::from(self.remote_mult.max(1))
    }

    fn packet(&mut self) -> [u8; LEN] {
        let fin = std::mem::take(&mut self.send_final);
        Control {
            diag: self.diag as u8,
            state: self.state,
            poll: false,
            final_: fin,
            detect_mult: self.cfg.detect_mult,
            my_disc: self.cfg.my_disc,
            your_disc: self.remote_disc,
            desired_min_tx: us(self.our_tx()),
            required_min_rx: us(self.cfg.required_min_rx),
        }
        .encode()
    }

    fn go(&mut self, state: State, diag: Diag, out: &mut Vec<Output>) {
        if self.state == state {
            return;
        }
        let was_up = self.state == State::Up;
        self.state = state;
        self.diag = diag;
        if state == State::Up {
            out.push(Output::Up);
        } else if was_up {
            out.push(Output::Down(diag));
        }
        // A state change is announced at once rather than at the next interval.
        self.next_tx = Duration::ZERO;
    }

    /// Handles one input.
    pub fn handle(&mut self, input: Input, now: Duration) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::Received(c) => {
                if c.your_disc != 0 && c.your_disc != self.cfg.my_disc {
                    return out;
                }
                self.remote_disc = c.my_disc;
                self.remote_min_rx =
                    Duration::from_micros(c.required_min_rx as u64).max(Duration::from_micros(1));
                self.remote_desired_tx = Duration::from_micros(c.desired_min_tx as u64);
                self.remote_mult = c.detect_mult;
                self.last_rx = Some(now);
                if c.poll {
                    self.send_final = true;
                    self.next_tx = Duration::ZERO;
                }
                match (self.state, c.state) {
                    (State::AdminDown, _) => {}
                    (_, State::AdminDown) => self.go(State::Down, Diag::NeighborDown, &mut out),
                    (State::Down, State::Down) => self.go(State::Init, Diag::None, &mut out),
                    (State::Down, State::Init) => self.go(State::Up, Diag::None, &mut out),
                    (State::Init, State::Init | State::Up) => {
                        self.go(State::Up, Diag::None, &mut out)
                    }
                    (State::Up, State::Down) => self.go(State::Down, Diag::NeighborDown, &mut out),
                    _ => {}
                }
            }
            Input::Tick(_) => {}
        }
        // Detection: no packet for the detection time takes an Init or Up session down.
        if matches!(self.state, State::Init | State::Up) {
            if let Some(last) = self.last_rx {
                if now.saturating_sub(last) > self.detection_time() {
                    self.remote_disc = 0;
                    self.go(State::Down, Diag::DetectionTimeExpired, &mut out);
                }
            }
        }
        let silent = self.cfg.passive && self.remote_disc == 0;
        if now >= self.next_tx && !silent {
            out.push(Output::Send(self.packet()));
            // 75-100% jitter would be random; a fixed 90% keeps the machine deterministic and within the RFC's bounds.
            self.next_tx = now + self.tx_interval().mul_f64(0.9);
        }
        out
    }

    /// When the caller should call `handle` again at the latest.
    pub fn next_deadline(&self) -> Duration {
        let mut d = self.next_tx;
        if let (Some(last), true) = (self.last_rx, matches!(self.state, State::Init | State::Up)) {
            d = d.min(last + self.detection_time() + Duration::from_millis(1));
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg(disc: u32) -> Config {
        Config {
            my_disc: disc,
            desired_min_tx: Duration::from_millis(300),
            required_min_rx: Duration::from_millis(300),
            detect_mult: 3,
            passive: false,
        }
    }

    #[test]
    fn a_passive_session_speaks_only_after_the_peer_did_and_again_after_a_timeout() {
        let mut p = Session::new(Config {
            passive: true,
            ..cfg(9)
        });
        // Alone, for ten seconds: not one packet.
        for t in (0..10_000).step_by(10) {
            let now = Duration::from_millis(t);
            let out = p.handle(Input::Tick(now), now);
            assert!(
                !out.iter().any(|o| matches!(o, Output::Send(_))),
                "sent at {t} ms: {out:?}"
            );
        }
        // An active peer starts the session: the passive one answers and both come up.
        let mut a = Session::new(cfg(1));
        let ev = converse(&mut a, &mut p, 10_000, 13_000, true);
        assert_eq!((a.state(), p.state()), (State::Up, State::Up), "{ev:?}");
        // The peer falls silent: after the detection time the passive side
        // is down and silent again.
        let mut sent_after = None;
        for t in (13_000..16_000).step_by(10) {
            let now = Duration::from_millis(t);
            for o in p.handle(Input::Tick(now), now) {
                if matches!(o, Output::Send(_)) && p.state() == State::Down {
                    sent_after = Some(t);
                }
            }
        }
        assert_eq!(p.state(), State::Down);
        assert_eq!(sent_after, None, "a passive session down sends nothing");
    }

    #[test]
    fn golden_packet() {
        let c = Control {
            diag: 0,
            state: State::Up,
            poll: false,
            final_: true,
            detect_mult: 3,
            my_disc: 0x0102_0304,
            your_disc: 0x0a0b_0c0d,
            desired_min_tx: 300_000,
            required_min_rx: 300_000,
        };
        let b = c.encode();
        assert_eq!(
            b,
            [
                0x20, 0xd0, 3, 24, 1, 2, 3, 4, 0x0a, 0x0b, 0x0c, 0x0d, 0, 4, 0x93, 0xe0, 0, 4,
                0x93, 0xe0, 0, 0, 0, 0
            ]
        );
        assert_eq!(Control::decode(&b), Ok(c));
    }

    #[test]
    fn invalid_packets_are_discarded() {
        let good = Control {
            diag: 0,
            state: State::Down,
            poll: false,
            final_: false,
            detect_mult: 3,
            my_disc: 7,
            your_disc: 0,
            desired_min_tx: 1_000_000,
            required_min_rx: 300_000,
        }
        .encode();
        assert!(Control::decode(&good).is_ok());
        assert_eq!(Control::decode(&good[..20]), Err(PacketError::Length));
        let mut v = good;
        v[0] = 0x40;
        assert_eq!(Control::decode(&v), Err(PacketError::Version));
        let mut a = good;
        a[1] |= 0x04;
        assert_eq!(Control::decode(&a), Err(PacketError::Auth));
        let mut m = good;
        m[2] = 0;
        assert_eq!(Control::decode(&m), Err(PacketError::Invalid));
        let mut up_without_disc = good;
        up_without_disc[1] = 3 << 6;
        assert_eq!(Control::decode(&up_without_disc), Err(PacketError::Invalid));
    }

    /// Two sessions talking to each other over a lossless wire, 10 ms ticks.
    fn converse(
        a: &mut Session,
        b: &mut Session,
        from: u64,
        to: u64,
        b_alive: bool,
    ) -> Vec<(u64, char, Output)> {
        let mut events = Vec::new();
        let mut t = from;
        while t < to {
            let now = Duration::from_millis(t);
            let out_a = a.handle(Input::Tick(now), now);
            let out_b = if b_alive {
                b.handle(Input::Tick(now), now)
            } else {
                vec![]
            };
            for o in out_a {
                match o {
                    Output::Send(p) if b_alive => {
                        for r in b.handle(Input::Received(Control::decode(&p).unwrap()), now) {
                            events.push((t, 'b', r));
                        }
                    }
                    Output::Send(_) => {}
                    other => events.push((t, 'a', other)),
                }
            }
            for o in out_b {
                match o {
                    Output::Send(p) => {
                        for r in a.handle(Input::Received(Control::decode(&p).unwrap()), now) {
                            events.push((t, 'a', r));
                        }
                    }
                    other => events.push((t, 'b', other)),
                }
            }
            t += 10;
        }
        events
    }

    #[test]
    fn three_way_handshake_then_detection_in_three_intervals() {
        let (mut a, mut b) = (Session::new(cfg(1)), Session::new(cfg(2)));
        let ev = converse(&mut a, &mut b, 0, 3_000, true);
        assert_eq!((a.state(), b.state()), (State::Up, State::Up), "{ev:?}");
        assert!(ev.iter().any(|(_, w, o)| *w == 'a' && *o == Output::Up));
        assert_eq!(a.tx_interval(), Duration::from_millis(300), "fast once up");
        // b dies silently: a declares it down after 3 x 300 ms.
        let ev = converse(&mut a, &mut b, 3_000, 5_000, false);
        let (t, _, o) = ev
            .iter()
            .find(|(_, w, o)| *w == 'a' && matches!(o, Output::Down(_)))
            .expect("down");
        assert_eq!(*o, Output::Down(Diag::DetectionTimeExpired));
        let last_rx_before = 3_000u64;
        assert!(*t - last_rx_before <= 900 + 300, "detected at {t} ms");
    }

    #[test]
    fn neighbour_signalled_down_and_slow_rate_while_down() {
        let (mut a, mut b) = (Session::new(cfg(1)), Session::new(cfg(2)));
        assert_eq!(
            a.tx_interval(),
            Duration::from_secs(1),
            "at most one packet a second before Up"
        );
        converse(&mut a, &mut b, 0, 3_000, true);
        let admin = Control {
            diag: Diag::AdminDown as u8,
            state: State::AdminDown,
            poll: false,
            final_: false,
            detect_mult: 3,
            my_disc: 2,
            your_disc: 1,
            desired_min_tx: 1_000_000,
            required_min_rx: 300_000,
        };
        let out = a.handle(Input::Received(admin), Duration::from_millis(3_010));
        assert!(out.contains(&Output::Down(Diag::NeighborDown)));
    }

    #[test]
    fn poll_gets_final_and_foreign_discriminators_are_ignored() {
        let (mut a, mut b) = (Session::new(cfg(1)), Session::new(cfg(2)));
        converse(&mut a, &mut b, 0, 3_000, true);
        let now = Duration::from_millis(3_005);
        let poll = Control {
            diag: 0,
            state: State::Up,
            poll: true,
            final_: false,
            detect_mult: 3,
            my_disc: 2,
            your_disc: 1,
            desired_min_tx: 300_000,
            required_min_rx: 300_000,
        };
        let out = a.handle(Input::Received(poll), now);
        let Some(Output::Send(p)) = out.iter().find(|o| matches!(o, Output::Send(_))) else {
            panic!("{out:?}")
        };
        assert!(Control::decode(p).unwrap().final_);
        let foreign = Control {
            your_disc: 99,
            ..poll
        };
        assert!(a.handle(Input::Received(foreign), now).is_empty());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = Control::decode(&bytes);
        }
    }
}
