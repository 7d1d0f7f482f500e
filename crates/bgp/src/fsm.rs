//! The BGP session state machine (RFC 4271 section 8), sans I/O: the driver
//! feeds it events (start, stop, TCP up/down, messages, timer expiries) and
//! carries out what it returns (connect, send, close, start/stop timers).

use crate::codec::{Action, DecodeError};
use crate::message::*;
use std::net::Ipv4Addr;
use std::time::Duration;

/// Session states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not trying.
    Idle,
    /// Connecting out.
    Connect,
    /// Waiting for the peer to connect (or for the retry timer).
    Active,
    /// OPEN sent, waiting for the peer's.
    OpenSent,
    /// OPENs exchanged, waiting for the first KEEPALIVE.
    OpenConfirm,
    /// Routes may flow.
    Established,
}

/// Timers the driver runs for the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// Retry connecting (or restarting after a failure).
    ConnectRetry,
    /// The peer has been silent too long.
    Hold,
    /// Time to send a KEEPALIVE.
    Keepalive,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Start (or restart) the session.
    Start,
    /// Stop the session for good, telling the peer why.
    Stop(String),
    /// The TCP connection is up (outgoing or accepted).
    TcpConnected,
    /// The TCP connection failed or closed.
    TcpFailed,
    /// A message arrived.
    Message(Message),
    /// Bytes arrived that do not decode.
    Malformed(DecodeError),
    /// A timer expired.
    Expired(Timer),
}

/// What was agreed when the session came up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Hold time in seconds (0: no keepalives).
    pub hold_time: u16,
    /// Keepalive interval in seconds.
    pub keepalive: u16,
    /// Both sides speak 4-octet AS numbers.
    pub four_octet: bool,
    /// Families both sides announced (IPv4 unicast is implied without MP).
    pub families: Vec<Afi>,
    /// The peer's BGP identifier.
    pub peer_id: Ipv4Addr,
    /// The peer's graceful restart capability, if any.
    pub peer_graceful_restart: Option<GracefulRestart>,
    /// The peer understands ROUTE-REFRESH.
    pub route_refresh: bool,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Open a TCP connection to the peer.
    Connect,
    /// Close the TCP connection.
    Disconnect,
    /// Send a message.
    Send(Message),
    /// (Re)start a timer.
    StartTimer(Timer, Duration),
    /// Stop a timer.
    StopTimer(Timer),
    /// The session is up: send the routes, then End-of-RIB.
    Established(Negotiated),
    /// The session went down.
    Down(String),
    /// An UPDATE arrived (received routes are counted, not installed).
    Received(Update),
    /// An UPDATE was malformed in a way that withdraws its routes only (RFC 7606).
    TreatAsWithdraw(Vec<Prefix>),
    /// The peer asked for our routes again.
    Refresh(RouteRefresh),
}

/// Session configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Our AS.
    pub local_asn: u32,
    /// The peer's AS.
    pub peer_asn: u32,
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// Proposed hold time, seconds (0 or at least 3).
    pub hold_time: u16,
    /// Wait for the peer to connect instead of connecting out.
    pub passive: bool,
    /// Between connection attempts (and before restarting after a failure).
    pub connect_retry: Duration,
    /// Families to announce.
    pub families: Vec<Afi>,
    /// Graceful restart time to advertise, if enabled.
    pub graceful_restart: Option<u16>,
}

/// One BGP session.
#[derive(Debug, Clone)]
pub struct Session {
    cfg: Config,
    state: State,
    negotiated: Option<Negotiated>,
    /// Stopped by the operator: no automatic restart.
    stopped: bool,
    /// Attempts that failed since the session was last established; sets the backoff.
    failures: u32,
}

/// The longest wait between attempts, however many failed in a row.
pub const MAX_RETRY: Duration = Duration::from_secs(30);

/// Wait before attempt `failures + 1`: `base`, doubled per consecutive failure
/// after the first, at most [`MAX_RETRY`] (and never less than `base`).
pub fn backoff(base: Duration, failures: u32) -> Duration {
    let doubled = base.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    doubled.min(MAX_RETRY).max(base)
}

/// Hold time the first OPEN may wait for (RFC 4271 suggests 4 minutes).
const OPEN_HOLD: Duration = Duration::from_secs(240);

/// Negotiates the hold time (the smaller) and the keepalive (a third of it).
pub fn negotiate_hold(ours: u16, theirs: u16) -> (u16, u16) {
    let hold = ours.min(theirs);
    (hold, hold / 3)
}

/// Which connection survives a collision (RFC 4271 6.8): the one opened by
/// the speaker with the higher BGP identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Keep the connection we opened.
    Outgoing,
    /// Keep the connection the peer opened.
    Incoming,
}

/// What to do with a connection the peer opened while this session has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Collision {
    /// Keep the current connection; close the new one with
    /// [`Notification::collision`] (after its OPEN).
    KeepCurrent,
    /// Take the new connection: carry out these outputs on the current one
    /// (Cease with subcode 7 if an OPEN was sent, then close), then feed
    /// `TcpConnected` and the new connection's OPEN.
    TakeIncoming(Vec<Output>),
}

/// Resolves a connection collision.
pub fn collision(local_id: Ipv4Addr, remote_id: Ipv4Addr) -> Keep {
    if u32::from(local_id) > u32::from(remote_id) {
        Keep::Outgoing
    } else {
        Keep::Incoming
    }
}

impl Session {
    /// A session in Idle.
    pub fn new(cfg: Config) -> Session {
        Session {
            cfg,
            state: State::Idle,
            negotiated: None,
            stopped: false,
            failures: 0,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// What was negotiated, while Established.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    /// The peer opened a connection (and sent an OPEN with `remote_id`)
    /// while this session has one (RFC 4271 6.8). `current_outgoing` says
    /// whether the current connection is ours. An Established session is
    /// kept; before that the speaker with the higher BGP identifier keeps the
    /// connection it opened. A second connection from the peer while the
    /// current one is also the peer's means the peer restarted: the new one
    /// is taken. Without a connection (Idle, Connect, Active) there is no
    /// collision: the new connection is taken.
    pub fn collision_with(&mut self, remote_id: Ipv4Addr, current_outgoing: bool) -> Collision {
        let take = match self.state {
            State::Established => false,
            State::OpenSent | State::OpenConfirm if current_outgoing => {
                collision(self.cfg.router_id, remote_id) == Keep::Incoming
            }
            _ => true,
        };
        if !take {
            return Collision::KeepCurrent;
        }
        let mut out = Vec::new();
        if matches!(
            self.state,
            State::OpenSent | State::OpenConfirm | State::Established
        ) {
            out.push(Output::Send(Message::Notification(
                Notification::collision(),
            )));
        }
        out.push(Output::Disconnect);
        out.push(Output::StopTimer(Timer::Hold));
        out.push(Output::StopTimer(Timer::Keepalive));
        if self.state == State::Established {
            out.push(Output::Down("replaced by the peer's new connection".into()));
        }
        // Ready for TcpConnected on the new connection, as if it had just been accepted.
        self.negotiated = None;
        self.stopped = false;
        self.state = State::Active;
        Collision::TakeIncoming(out)
    }

    /// The OPEN this session sends.
    pub fn open(&self) -> Open {
        let mut capabilities: Vec<Capability> = self
            .cfg
            .families
            .iter()
            .map(|a| Capability::Multiprotocol(*a, SAFI_UNICAST))
            .collect();
        capabilities.push(Capability::RouteRefresh);
        if let Some(time) = self.cfg.graceful_restart {
            capabilities.push(Capability::GracefulRestart(GracefulRestart {
                restarting: false,
                restart_time: time.min(4095),
                // Forwarding state is preserved: the VIPs keep working while the speaker restarts.
                families: self
                    .cfg
                    .families
                    .iter()
                    .map(|a| (*a, SAFI_UNICAST, true))
                    .collect(),
            }));
        }
        capabilities.push(Capability::FourOctetAs(self.cfg.local_asn));
        Open {
            asn: self.cfg.local_asn,
            hold_time: self.cfg.hold_time,
            router_id: self.cfg.router_id,
            capabilities,
        }
    }

    fn go_down(&mut self, out: &mut Vec<Output>, reason: String, notify: Option<Notification>) {
        if let Some(n) = notify {
            out.push(Output::Send(Message::Notification(n)));
        }
        out.push(Output::Disconnect);
        out.push(Output::StopTimer(Timer::Hold));
        out.push(Output::StopTimer(Timer::Keepalive));
        let was_up = self.state != State::Idle;
        self.state = State::Idle;
        self.negotiated = None;
        if !self.stopped {
            // Automatic restart, backing off while attempts keep failing, so a
            // peer that rejects us (or sends garbage) is not hammered.
            let wait = self.next_retry();
            out.push(Output::StartTimer(Timer::ConnectRetry, wait));
        } else {
            out.push(Output::StopTimer(Timer::ConnectRetry));
        }
        if was_up {
            out.push(Output::Down(reason));
        }
    }

    fn next_retry(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        backoff(self.cfg.connect_retry, self.failures)
    }

    fn fsm_error(&mut self, out: &mut Vec<Output>, what: &str) {
        // RFC 6608 subcodes: unexpected message in OpenSent (1), OpenConfirm (2), Established (3).
        let sub = match self.state {
            State::OpenSent => 1,
            State::OpenConfirm => 2,
            State::Established => 3,
            _ => 0,
        };
        self.go_down(
            out,
            format!("finite state machine error: {what}"),
            Some(Notification {
                code: 5,
                subcode: sub,
                data: vec![],
            }),
        );
    }

    fn check_open(&self, o: &Open) -> Result<Negotiated, Notification> {
        if o.asn != self.cfg.peer_asn {
            return Err(Notification {
                code: 2,
                subcode: 2,
                data: vec![],
            });
        }
        if o.router_id == self.cfg.router_id && self.cfg.peer_asn == self.cfg.local_asn {
            return Err(Notification {
                code: 2,
                subcode: 3,
                data: vec![],
            });
        }
        let (hold_time, keepalive) = negotiate_hold(self.cfg.hold_time, o.hold_time);
        let theirs: Vec<Afi> = o
            .capabilities
            .iter()
            .filter_map(|c| {
                if let Capability::Multiprotocol(a, SAFI_UNICAST) = c {
                    Some(*a)
                } else {
                    None
                }
            })
            .collect();
        // Without any multiprotocol capability, a peer speaks IPv4 unicast only (RFC 4760 8).
        let theirs = if theirs.is_empty() {
            vec![Afi::Ipv4]
        } else {
            theirs
        };
        let families = self
            .cfg
            .families
            .iter()
            .copied()
            .filter(|a| theirs.contains(a))
            .collect();
        Ok(Negotiated {
            hold_time,
            keepalive,
            four_octet: o.four_octet_as(),
            families,
            peer_id: o.router_id,
            peer_graceful_restart: o.capabilities.iter().find_map(|c| {
                if let Capability::GracefulRestart(g) = c {
                    Some(g.clone())
                } else {
                    None
                }
            }),
            route_refresh: o.capabilities.contains(&Capability::RouteRefresh),
        })
    }

    fn restart_hold(&self, out: &mut Vec<Output>) {
        if let Some(n) = &self.negotiated {
            if n.hold_time > 0 {
                out.push(Output::StartTimer(
                    Timer::Hold,
                    Duration::from_secs(n.hold_time as u64),
                ));
            }
        }
    }

    fn start_connecting(&mut self, out: &mut Vec<Output>) {
        out.push(Output::StartTimer(
            Timer::ConnectRetry,
            self.cfg.connect_retry,
        ));
        if self.cfg.passive {
            self.state = State::Active;
        } else {
            self.state = State::Connect;
            out.push(Output::Connect);
        }
    }

    /// Handles one event; returns what the driver must do, in order.
    pub fn handle(&mut self, ev: Event) -> Vec<Output> {
        let mut out = Vec::new();
        match (self.state, ev) {
            (_, Event::Stop(reason)) => {
                self.stopped = true;
                if self.state == State::Idle {
                    out.push(Output::StopTimer(Timer::ConnectRetry));
                } else {
                    let notify = matches!(
                        self.state,
                        State::OpenSent | State::OpenConfirm | State::Established
                    )
                    .then(|| Notification::shutdown(&reason));
                    self.go_down(&mut out, format!("stopped: {reason}"), notify);
                }
            }
            (State::Idle, Event::Start) => {
                self.stopped = false;
                self.failures = 0;
                self.start_connecting(&mut out);
            }
            (State::Idle, Event::Expired(Timer::ConnectRetry)) if !self.stopped => {
                self.start_connecting(&mut out)
            }
            // A passive peer has no other way to a session than the router
            // connecting: a connection while it waits out the back-off after
            // an error starts it at once (RFC 4271 8.1.1, event 5: automatic
            // start with passive TCP establishment). Holding the connection
            // unanswered would leave the router waiting on its OPEN timer.
            (State::Idle, Event::TcpConnected) if self.cfg.passive && !self.stopped => {
                out.push(Output::StopTimer(Timer::ConnectRetry));
                out.push(Output::Send(Message::Open(self.open())));
                out.push(Output::StartTimer(Timer::Hold, OPEN_HOLD));
                self.state = State::OpenSent;
            }
            (State::Idle, _) => {}
            (State::Connect | State::Active, Event::TcpConnected) => {
                out.push(Output::StopTimer(Timer::ConnectRetry));
                out.push(Output::Send(Message::Open(self.open())));
                out.push(Output::StartTimer(Timer::Hold, OPEN_HOLD));
                self.state = State::OpenSent;
            }
            (State::Connect, Event::TcpFailed) => {
                let wait = self.next_retry();
                out.push(Output::StartTimer(Timer::ConnectRetry, wait));
                self.state = State::Active;
            }
            (State::Connect, Event::Expired(Timer::ConnectRetry)) => {
                out.push(Output::Disconnect);
                out.push(Output::Connect);
                out.push(Output::StartTimer(
                    Timer::ConnectRetry,
                    self.cfg.connect_retry,
                ));
            }
            (State::Active, Event::Expired(Timer::ConnectRetry)) => {
                if self.cfg.passive {
                    out.push(Output::StartTimer(
                        Timer::ConnectRetry,
                        self.cfg.connect_retry,
                    ));
                } else {
                    self.state = State::Connect;
                    out.push(Output::Connect);
                    out.push(Output::StartTimer(
                        Timer::ConnectRetry,
                        self.cfg.connect_retry,
                    ));
                }
            }
            (State::Connect | State::Active, Event::Start) => {}
            (State::Connect | State::Active, _) => {}
            (_, Event::Expired(Timer::Hold)) => {
                self.go_down(
                    &mut out,
                    "hold timer expired".into(),
                    Some(Notification {
                        code: 4,
                        subcode: 0,
                        data: vec![],
                    }),
                );
            }
            (_, Event::TcpFailed) => self.go_down(&mut out, "connection closed".into(), None),
            (_, Event::Message(Message::Notification(n))) => {
                let why = n
                    .shutdown_message()
                    .map(|m| format!("peer shut down: {m}"))
                    .unwrap_or(format!("peer sent NOTIFICATION {}/{}", n.code, n.subcode));
                self.go_down(&mut out, why, None);
            }
            (_, Event::Malformed(e)) => match e.action {
                Action::TreatAsWithdraw if self.state == State::Established => {
                    out.push(Output::TreatAsWithdraw(e.routes))
                }
                _ => {
                    let n = e.notification();
                    self.go_down(
                        &mut out,
                        format!("malformed message: {}", e.reason),
                        Some(n),
                    );
                }
            },
            (State::OpenSent, Event::Message(Message::Open(o))) => match self.check_open(&o) {
                Ok(n) => {
                    out.push(Output::Send(Message::Keepalive));
                    if n.hold_time > 0 {
                        out.push(Output::StartTimer(
                            Timer::Keepalive,
                            Duration::from_secs(n.keepalive as u64),
                        ));
                        out.push(Output::StartTimer(
                            Timer::Hold,
                            Duration::from_secs(n.hold_time as u64),
                        ));
                    } else {
                        out.push(Output::StopTimer(Timer::Hold));
                    }
                    self.negotiated = Some(n);
                    self.state = State::OpenConfirm;
                }
                Err(notify) => self.go_down(&mut out, "unacceptable OPEN".into(), Some(notify)),
            },
            (State::OpenConfirm, Event::Message(Message::Keepalive)) => {
                // OpenConfirm is only entered with the OPEN negotiated; were it
                // not, the session ends with an FSM error rather than a panic.
                match self.negotiated.clone() {
                    Some(n) => {
                        self.restart_hold(&mut out);
                        self.state = State::Established;
                        self.failures = 0;
                        out.push(Output::Established(n));
                    }
                    None => self.fsm_error(&mut out, "KEEPALIVE in OpenConfirm without an OPEN"),
                }
            }
            (State::OpenConfirm | State::Established, Event::Expired(Timer::Keepalive)) => {
                out.push(Output::Send(Message::Keepalive));
                if let Some(n) = &self.negotiated {
                    out.push(Output::StartTimer(
                        Timer::Keepalive,
                        Duration::from_secs(n.keepalive as u64),
                    ));
                }
            }
            (State::Established, Event::Message(Message::Keepalive)) => self.restart_hold(&mut out),
            (State::Established, Event::Message(Message::Update(u))) => {
                self.restart_hold(&mut out);
                out.push(Output::Received(u));
            }
            (State::Established, Event::Message(Message::RouteRefresh(r))) => {
                self.restart_hold(&mut out);
                out.push(Output::Refresh(r));
            }
            (_, Event::Start) | (_, Event::TcpConnected) | (_, Event::Expired(_)) => {}
            (_, Event::Message(m)) => {
                let what = match m {
                    Message::Open(_) => "unexpected OPEN",
                    Message::Update(_) => "UPDATE before the session is established",
                    Message::Keepalive => "unexpected KEEPALIVE",
                    Message::RouteRefresh(_) => "unexpected ROUTE-REFRESH",
                    Message::Notification(_) => "unexpected NOTIFICATION",
                };
                self.fsm_error(&mut out, what);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode, Wire};

    fn cfg(passive: bool) -> Config {
        Config {
            local_asn: 65001,
            peer_asn: 65000,
            router_id: "10.0.0.2".parse().unwrap(),
            hold_time: 9,
            passive,
            connect_retry: Duration::from_secs(5),
            families: vec![Afi::Ipv4, Afi::Ipv6],
            graceful_restart: Some(120),
        }
    }

    fn peer_open(hold: u16) -> Message {
        Message::Open(Open {
            asn: 65000,
            hold_time: hold,
            router_id: "10.0.0.1".parse().unwrap(),
            capabilities: vec![
                Capability::Multiprotocol(Afi::Ipv4, 1),
                Capability::RouteRefresh,
                Capability::FourOctetAs(65000),
            ],
        })
    }

    fn established(passive: bool) -> Session {
        let mut s = Session::new(cfg(passive));
        s.handle(Event::Start);
        s.handle(Event::TcpConnected);
        s.handle(Event::Message(peer_open(90)));
        let out = s.handle(Event::Message(Message::Keepalive));
        assert!(
            matches!(out.last(), Some(Output::Established(_))),
            "{out:?}"
        );
        s
    }

    #[test]
    fn a_passive_peer_backing_off_takes_the_routers_next_connection() {
        let mut s = established(true);
        // A malformed message resets the session; the peer is Idle, backing off.
        let out = s.handle(Event::Message(Message::Open(match peer_open(90) {
            Message::Open(o) => o,
            _ => unreachable!(),
        })));
        assert!(
            out.iter().any(|o| matches!(o, Output::Down { .. })),
            "{out:?}"
        );
        assert_eq!(s.state(), State::Idle);
        // The router connects again at once: OPEN sent, no waiting.
        let out = s.handle(Event::TcpConnected);
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::Send(Message::Open(_)))),
            "{out:?}"
        );
        assert_eq!(s.state(), State::OpenSent);
        // An active peer in Idle still waits for its retry timer.
        let mut a = established(false);
        a.handle(Event::TcpFailed);
        assert_eq!(a.state(), State::Idle);
        assert!(a.handle(Event::TcpConnected).is_empty());
        assert_eq!(a.state(), State::Idle);
    }

    #[test]
    fn active_happy_path() {
        let mut s = Session::new(cfg(false));
        assert_eq!(
            s.handle(Event::Start),
            vec![
                Output::StartTimer(Timer::ConnectRetry, Duration::from_secs(5)),
                Output::Connect
            ]
        );
        assert_eq!(s.state(), State::Connect);
        let out = s.handle(Event::TcpConnected);
        assert_eq!(s.state(), State::OpenSent);
        let Output::Send(Message::Open(open)) = &out[1] else {
            panic!("{out:?}")
        };
        assert!(open.four_octet_as());
        assert!(open
            .capabilities
            .contains(&Capability::Multiprotocol(Afi::Ipv6, 1)));
        assert!(open.capabilities.iter().any(|c| matches!(c, Capability::GracefulRestart(g) if g.restart_time == 120 && g.families.iter().all(|f| f.2))));
        let out = s.handle(Event::Message(peer_open(90)));
        assert_eq!(s.state(), State::OpenConfirm);
        assert_eq!(
            out,
            vec![
                Output::Send(Message::Keepalive),
                Output::StartTimer(Timer::Keepalive, Duration::from_secs(3)),
                Output::StartTimer(Timer::Hold, Duration::from_secs(9)),
            ],
            "hold is the smaller of 9 and 90; keepalive a third"
        );
        let out = s.handle(Event::Message(Message::Keepalive));
        assert_eq!(s.state(), State::Established);
        let Some(Output::Established(n)) = out.last() else {
            panic!()
        };
        assert_eq!(
            (n.hold_time, n.keepalive, n.four_octet, n.route_refresh),
            (9, 3, true, true)
        );
        assert_eq!(
            n.families,
            vec![Afi::Ipv4],
            "only families both sides announced"
        );
    }

    #[test]
    fn passive_waits_for_the_peer() {
        let mut s = Session::new(cfg(true));
        let out = s.handle(Event::Start);
        assert!(!out.contains(&Output::Connect));
        assert_eq!(s.state(), State::Active);
        assert_eq!(
            s.handle(Event::Expired(Timer::ConnectRetry)),
            vec![Output::StartTimer(
                Timer::ConnectRetry,
                Duration::from_secs(5)
            )]
        );
        s.handle(Event::TcpConnected);
        assert_eq!(s.state(), State::OpenSent);
    }

    #[test]
    fn connect_failures_retry() {
        let mut s = Session::new(cfg(false));
        s.handle(Event::Start);
        s.handle(Event::TcpFailed);
        assert_eq!(s.state(), State::Active);
        let out = s.handle(Event::Expired(Timer::ConnectRetry));
        assert!(out.contains(&Output::Connect));
        assert_eq!(s.state(), State::Connect);
    }

    fn retry_timer(out: &[Output]) -> Option<Duration> {
        out.iter().find_map(|o| match o {
            Output::StartTimer(Timer::ConnectRetry, d) => Some(*d),
            _ => None,
        })
    }

    #[test]
    fn backoff_table() {
        let base = Duration::from_secs(2);
        let s = Duration::from_secs;
        for (failures, want) in [
            (0, s(2)),
            (1, s(2)),
            (2, s(4)),
            (3, s(8)),
            (4, s(16)),
            (5, s(30)),
            (40, s(30)),
            (u32::MAX, s(30)),
        ] {
            assert_eq!(backoff(base, failures), want, "failures {failures}");
        }
        // A base above the cap is kept (the operator asked for it).
        assert_eq!(backoff(s(60), 3), s(60));
        assert_eq!(backoff(Duration::ZERO, 5), Duration::ZERO);
    }

    #[test]
    fn failed_attempts_back_off_and_an_established_session_resets_it() {
        let base = cfg(false).connect_retry;
        let mut s = Session::new(cfg(false));
        s.handle(Event::Start);
        let mut waits = Vec::new();
        for _ in 0..6 {
            waits.push(retry_timer(&s.handle(Event::TcpFailed)).expect("retry timer"));
            s.handle(Event::Expired(Timer::ConnectRetry));
        }
        let want: Vec<Duration> = (1..=6).map(|f| backoff(base, f)).collect();
        assert_eq!(waits, want);
        assert!(waits.windows(2).all(|w| w[0] <= w[1]), "{waits:?}");
        // A peer answering with a NOTIFICATION in OpenSent keeps backing off.
        s.handle(Event::TcpConnected);
        let out = s.handle(Event::Message(Message::Notification(Notification {
            code: 2,
            subcode: 1,
            data: vec![],
        })));
        assert_eq!(retry_timer(&out), Some(backoff(base, 7)));
        // Once established, the next failure waits the base interval again.
        let mut s = established(false);
        let out = s.handle(Event::TcpFailed);
        assert_eq!(retry_timer(&out), Some(base));
    }

    #[test]
    fn hold_timer_expiry_sends_notification_and_restarts_later() {
        let mut s = established(false);
        let out = s.handle(Event::Expired(Timer::Hold));
        assert_eq!(
            out[0],
            Output::Send(Message::Notification(Notification {
                code: 4,
                subcode: 0,
                data: vec![]
            }))
        );
        assert!(out.contains(&Output::Disconnect));
        assert!(out.contains(&Output::StartTimer(
            Timer::ConnectRetry,
            Duration::from_secs(5)
        )));
        assert!(matches!(out.last(), Some(Output::Down(r)) if r.contains("hold")));
        assert_eq!(s.state(), State::Idle);
        // Automatic restart.
        assert!(s
            .handle(Event::Expired(Timer::ConnectRetry))
            .contains(&Output::Connect));
    }

    #[test]
    fn keepalives_and_updates_refresh_the_hold_timer() {
        let mut s = established(false);
        assert_eq!(
            s.handle(Event::Expired(Timer::Keepalive)),
            vec![
                Output::Send(Message::Keepalive),
                Output::StartTimer(Timer::Keepalive, Duration::from_secs(3))
            ]
        );
        assert_eq!(
            s.handle(Event::Message(Message::Keepalive)),
            vec![Output::StartTimer(Timer::Hold, Duration::from_secs(9))]
        );
        let out = s.handle(Event::Message(Message::Update(Update::end_of_rib(
            Afi::Ipv4,
        ))));
        assert!(
            matches!(out.last(), Some(Output::Received(u)) if u.is_end_of_rib() == Some(Afi::Ipv4))
        );
        let out = s.handle(Event::Message(Message::RouteRefresh(RouteRefresh {
            afi: Afi::Ipv4,
            safi: 1,
        })));
        assert!(matches!(out.last(), Some(Output::Refresh(_))));
    }

    #[test]
    fn zero_hold_time_means_no_timers() {
        let mut c = cfg(false);
        c.hold_time = 0;
        let mut s = Session::new(c);
        s.handle(Event::Start);
        s.handle(Event::TcpConnected);
        let out = s.handle(Event::Message(peer_open(90)));
        assert!(out.contains(&Output::StopTimer(Timer::Hold)));
        assert!(!out
            .iter()
            .any(|o| matches!(o, Output::StartTimer(Timer::Keepalive, _))));
    }

    #[test]
    fn wrong_peer_as_is_refused() {
        let mut s = Session::new(cfg(false));
        s.handle(Event::Start);
        s.handle(Event::TcpConnected);
        let Message::Open(mut o) = peer_open(90) else {
            panic!()
        };
        o.asn = 64999;
        let out = s.handle(Event::Message(Message::Open(o)));
        assert_eq!(
            out[0],
            Output::Send(Message::Notification(Notification {
                code: 2,
                subcode: 2,
                data: vec![]
            }))
        );
        assert_eq!(s.state(), State::Idle);
    }

    #[test]
    fn unexpected_messages_are_fsm_errors_rfc6608() {
        let mut s = Session::new(cfg(false));
        s.handle(Event::Start);
        s.handle(Event::TcpConnected);
        let out = s.handle(Event::Message(Message::Update(Update::default())));
        assert_eq!(
            out[0],
            Output::Send(Message::Notification(Notification {
                code: 5,
                subcode: 1,
                data: vec![]
            }))
        );
        let mut s = established(false);
        let out = s.handle(Event::Message(peer_open(90)));
        assert_eq!(
            out[0],
            Output::Send(Message::Notification(Notification {
                code: 5,
                subcode: 3,
                data: vec![]
            }))
        );
    }

    #[test]
    fn stop_sends_cease_with_a_message_and_stays_down() {
        let mut s = established(false);
        let out = s.handle(Event::Stop("speaker shutting down".into()));
        let Output::Send(Message::Notification(n)) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(n.shutdown_message(), Some("speaker shutting down"));
        assert!(out.contains(&Output::StopTimer(Timer::ConnectRetry)));
        assert!(
            s.handle(Event::Expired(Timer::ConnectRetry)).is_empty(),
            "no automatic restart after a stop"
        );
        assert!(
            !s.handle(Event::Start).is_empty(),
            "an explicit start works"
        );
    }

    #[test]
    fn peer_notification_and_connection_loss_take_the_session_down() {
        let mut s = established(false);
        let out = s.handle(Event::Message(Message::Notification(
            Notification::shutdown("maintenance"),
        )));
        assert!(matches!(out.last(), Some(Output::Down(r)) if r.contains("maintenance")));
        assert!(
            !out.iter().any(|o| matches!(o, Output::Send(_))),
            "never answer a NOTIFICATION"
        );
        let mut s = established(false);
        let out = s.handle(Event::TcpFailed);
        assert!(matches!(out.last(), Some(Output::Down(_))));
    }

    #[test]
    fn malformed_updates_follow_rfc7606() {
        let wire = Wire { four_octet: true };
        // An UPDATE with an invalid ORIGIN value: treat as withdraw, the session stays up.
        let mut bytes = encode(
            &Message::Update(Update {
                attrs: Attrs {
                    origin: Some(Origin::Igp),
                    as_path: Some(vec![Segment::Sequence(vec![65000])]),
                    next_hop: Some("10.0.0.1".parse().unwrap()),
                    ..Attrs::default()
                },
                nlri: vec![Prefix::new("203.0.113.10".parse().unwrap(), 32).unwrap()],
                ..Update::default()
            }),
            &wire,
        );
        let origin_value = 19 + 4 + 3;
        bytes[origin_value] = 9;
        let err = decode(&bytes, &wire).unwrap_err();
        let mut s = established(false);
        let out = s.handle(Event::Malformed(err));
        assert!(matches!(&out[..], [Output::TreatAsWithdraw(r)] if r.len() == 1));
        assert_eq!(s.state(), State::Established);
        // A broken header resets the session with its NOTIFICATION.
        let mut bad = encode(&Message::Keepalive, &wire);
        bad[0] = 0;
        let err = decode(&bad, &wire).unwrap_err();
        let out = s.handle(Event::Malformed(err));
        assert_eq!(
            out[0],
            Output::Send(Message::Notification(Notification {
                code: 1,
                subcode: 1,
                data: vec![]
            }))
        );
        assert_eq!(s.state(), State::Idle);
    }

    #[test]
    fn hold_time_negotiation_table() {
        for (ours, theirs, want) in [
            (90, 180, (90, 30)),
            (9, 3, (3, 1)),
            (0, 90, (0, 0)),
            (90, 0, (0, 0)),
            (3, 3, (3, 1)),
        ] {
            assert_eq!(negotiate_hold(ours, theirs), want, "{ours} vs {theirs}");
        }
    }

    #[test]
    fn collision_keeps_the_higher_identifiers_connection() {
        let hi: Ipv4Addr = "10.0.0.9".parse().unwrap();
        let lo: Ipv4Addr = "10.0.0.1".parse().unwrap();
        assert_eq!(collision(hi, lo), Keep::Outgoing);
        assert_eq!(collision(lo, hi), Keep::Incoming);
    }

    /// A session driven to `state` over an outgoing connection.
    fn in_state(state: State) -> Session {
        let mut s = Session::new(cfg(false));
        match state {
            State::Idle => {}
            State::Connect => {
                s.handle(Event::Start);
            }
            State::Active => {
                s.handle(Event::Start);
                s.handle(Event::TcpFailed);
            }
            State::OpenSent => {
                s.handle(Event::Start);
                s.handle(Event::TcpConnected);
            }
            State::OpenConfirm => {
                s.handle(Event::Start);
                s.handle(Event::TcpConnected);
                s.handle(Event::Message(peer_open(90)));
            }
            State::Established => s = established(false),
        }
        assert_eq!(s.state(), state);
        s
    }

    #[test]
    fn collisions_in_every_state() {
        // Our identifier is 10.0.0.2.
        let higher: Ipv4Addr = "10.0.0.9".parse().unwrap();
        let lower: Ipv4Addr = "10.0.0.1".parse().unwrap();
        let cease = Output::Send(Message::Notification(Notification::collision()));
        // (state, peer id, current connection ours?) -> take the new one?, Cease sent on the old?
        let table = [
            (State::Idle, lower, true, true, false),
            (State::Connect, lower, true, true, false),
            (State::Active, lower, true, true, false),
            (State::OpenSent, lower, true, false, false),
            (State::OpenSent, higher, true, true, true),
            (State::OpenConfirm, lower, true, false, false),
            (State::OpenConfirm, higher, true, true, true),
            (State::OpenConfirm, lower, false, true, true),
            (State::Established, higher, true, false, false),
            (State::Established, lower, false, false, false),
        ];
        for (state, peer, ours, take, notify) in table {
            let mut s = in_state(state);
            match s.collision_with(peer, ours) {
                Collision::KeepCurrent => {
                    assert!(
                        !take,
                        "{state:?} {peer} {ours}: kept the current connection"
                    );
                    assert_eq!(
                        s.state(),
                        state,
                        "nothing changes when the new connection is refused"
                    );
                }
                Collision::TakeIncoming(out) => {
                    assert!(take, "{state:?} {peer} {ours}: took the new connection");
                    assert_eq!(out.contains(&cease), notify, "{state:?}: {out:?}");
                    assert!(out.contains(&Output::Disconnect));
                    assert_eq!(s.state(), State::Active);
                    // The new connection then runs the normal handshake.
                    let out = s.handle(Event::TcpConnected);
                    assert!(matches!(out[1], Output::Send(Message::Open(_))), "{out:?}");
                    s.handle(Event::Message(peer_open(90)));
                    let out = s.handle(Event::Message(Message::Keepalive));
                    assert!(
                        matches!(out.last(), Some(Output::Established(_))),
                        "{out:?}"
                    );
                }
            }
        }
        // The Cease is subcode 7 and survives the wire.
        let wire = Wire::default();
        let bytes = encode(&Message::Notification(Notification::collision()), &wire);
        let (m, _) = decode(&bytes, &wire).unwrap().unwrap();
        assert_eq!(
            m,
            Message::Notification(Notification {
                code: 6,
                subcode: 7,
                data: vec![]
            })
        );
    }

    #[test]
    fn every_event_in_every_state_is_handled_without_panic() {
        let events = || {
            vec![
                Event::Start,
                Event::Stop("x".into()),
                Event::TcpConnected,
                Event::TcpFailed,
                Event::Message(peer_open(90)),
                Event::Message(Message::Keepalive),
                Event::Message(Message::Update(Update::default())),
                Event::Message(Message::Notification(Notification {
                    code: 6,
                    subcode: 2,
                    data: vec![],
                })),
                Event::Message(Message::RouteRefresh(RouteRefresh {
                    afi: Afi::Ipv4,
                    safi: 1,
                })),
                Event::Expired(Timer::ConnectRetry),
                Event::Expired(Timer::Hold),
                Event::Expired(Timer::Keepalive),
            ]
        };
        // Reach each state, then apply each event: the outputs must leave a consistent state.
        let paths: Vec<Vec<Event>> = vec![
            vec![],
            vec![Event::Start],
            vec![Event::Start, Event::TcpFailed],
            vec![Event::Start, Event::TcpConnected],
            vec![
                Event::Start,
                Event::TcpConnected,
                Event::Message(peer_open(90)),
            ],
            vec![
                Event::Start,
                Event::TcpConnected,
                Event::Message(peer_open(90)),
                Event::Message(Message::Keepalive),
            ],
        ];
        for path in paths {
            for ev in events() {
                let mut s = Session::new(cfg(false));
                for p in path.clone() {
                    s.handle(p);
                }
                let before = s.state();
                let out = s.handle(ev.clone());
                // Leaving a connected state always closes the connection.
                if matches!(
                    before,
                    State::OpenSent | State::OpenConfirm | State::Established
                ) && s.state() == State::Idle
                {
                    assert!(
                        out.contains(&Output::Disconnect),
                        "{before:?} + {ev:?}: {out:?}"
                    );
                }
                if s.state() == State::Established {
                    assert!(s.negotiated().is_some());
                }
            }
        }
    }
}
