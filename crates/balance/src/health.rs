//! The per-backend health state machine: `rise` consecutive successes
//! bring a backend up, `fall` consecutive failures take it down. Active
//! probes and failed real connections (passive checks) feed the same
//! machine.

/// A backend's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Takes new connections.
    Up,
    /// Takes none.
    Down,
}

/// What happened to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// An active probe succeeded.
    ProbeOk,
    /// An active probe failed or timed out.
    ProbeFailed,
    /// A client connection could not connect to the backend.
    ConnectFailed,
}

/// The rise/fall machine of one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    state: State,
    successes: u32,
    failures: u32,
    rise: u32,
    fall: u32,
}

impl Health {
    /// A backend starts up (as in HAProxy), so traffic flows before the
    /// first probe; a dead one is found by `fall` probes or failed
    /// connects.
    pub fn new(rise: u32, fall: u32) -> Health {
        Health {
            state: State::Up,
            successes: 0,
            failures: 0,
            rise: rise.max(1),
            fall: fall.max(1),
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether the backend takes new connections.
    pub fn is_up(&self) -> bool {
        self.state == State::Up
    }

    /// Feeds one observation; returns the new state if it changed.
    pub fn observe(&mut self, o: Observation) -> Option<State> {
        match o {
            Observation::ProbeOk => {
                self.failures = 0;
                self.successes = self.successes.saturating_add(1);
                if self.state == State::Down && self.successes >= self.rise {
                    self.state = State::Up;
                    return Some(State::Up);
                }
            }
            Observation::ProbeFailed | Observation::ConnectFailed => {
                self.successes = 0;
                self.failures = self.failures.saturating_add(1);
                if self.state == State::Up && self.failures >= self.fall {
                    self.state = State::Down;
                    return Some(State::Down);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Observation::*;

    #[test]
    fn fall_then_rise() {
        let mut h = Health::new(2, 3);
        assert!(h.is_up());
        assert_eq!(h.observe(ProbeFailed), None);
        assert_eq!(h.observe(ConnectFailed), None);
        assert_eq!(h.observe(ProbeFailed), Some(State::Down));
        assert_eq!(h.observe(ProbeFailed), None, "no repeated transition");
        assert_eq!(h.observe(ProbeOk), None);
        assert_eq!(h.observe(ProbeOk), Some(State::Up));
        assert_eq!(h.observe(ProbeOk), None);
    }

    #[test]
    fn a_success_resets_the_failure_run() {
        let mut h = Health::new(1, 2);
        h.observe(ProbeFailed);
        h.observe(ProbeOk);
        assert_eq!(h.observe(ProbeFailed), None);
        assert_eq!(h.observe(ProbeFailed), Some(State::Down));
        // A failure in the middle of a recovery restarts it.
        let mut h = Health::new(3, 1);
        h.observe(ProbeFailed);
        h.observe(ProbeOk);
        h.observe(ProbeOk);
        h.observe(ProbeFailed);
        h.observe(ProbeOk);
        h.observe(ProbeOk);
        assert_eq!(h.state(), State::Down);
        assert_eq!(h.observe(ProbeOk), Some(State::Up));
    }

    #[test]
    fn exhaustive_small_sequences() {
        // Every sequence of 8 observations for rise, fall in 1..=3, checked against a direct model.
        for rise in 1..=3u32 {
            for fall in 1..=3u32 {
                for bits in 0u32..(1 << 8) {
                    let mut h = Health::new(rise, fall);
                    let mut up = true;
                    let mut run_ok = 0;
                    let mut run_bad = 0;
                    for k in 0..8 {
                        let ok = bits >> k & 1 == 1;
                        h.observe(if ok { ProbeOk } else { ProbeFailed });
                        if ok {
                            run_ok += 1;
                            run_bad = 0;
                            if !up && run_ok >= rise {
                                up = true;
                            }
                        } else {
                            run_bad += 1;
                            run_ok = 0;
                            if up && run_bad >= fall {
                                up = false;
                            }
                        }
                        assert_eq!(
                            h.is_up(),
                            up,
                            "rise {rise} fall {fall} bits {bits:08b} step {k}"
                        );
                    }
                }
            }
        }
    }
}
