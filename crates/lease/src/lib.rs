//! Leader election on a `coordination.k8s.io/v1` Lease, decided without I/O.
//!
//! The driver reads the Lease, hands what it saw to [`Elector::observe`]
//! with the time on its **monotonic** clock, carries out the [`Step`] it
//! gets back (create or update the Lease with a resourceVersion
//! precondition), and reports the result. Three rules make two leaders
//! impossible however the nodes' wall clocks differ (the ones client-go's
//! `leaderelection` follows):
//!
//! 1. **Expiry on the observer's clock.** Another holder's Lease is taken
//!    over only after this replica has seen it unchanged (same
//!    resourceVersion) for `lease_duration`, timed from when it first saw
//!    that version. `renewTime` is written for people and never compared
//!    with this clock.
//! 2. **Fencing by the renew deadline.** A leader is a leader until
//!    `renew_deadline` after it *sent* its last successful renewal (not
//!    after the answer came), and only then. The deadline is shorter than
//!    the lease, so a leader that is paused, partitioned or slow stops
//!    writing at least `lease_duration - renew_deadline` before anyone else
//!    may start.
//! 3. **Optimistic concurrency.** Every write of the Lease carries the
//!    resourceVersion it was decided on: of two replicas deciding at once,
//!    the API server lets one through.

use std::time::{Duration, Instant};

/// How the election is timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a holder's Lease stands unrenewed (`leaseDurationSeconds`).
    pub lease_duration: Duration,
    /// How long after sending its last successful renewal a leader still
    /// leads. Shorter than `lease_duration`.
    pub renew_deadline: Duration,
    /// How often the Lease is read (and renewed by the leader).
    pub retry_period: Duration,
}

impl Timing {
    /// client-go's proportions (15 s / 10 s / 2 s) for a lease of `secs`
    /// seconds: the deadline at two thirds, a read every 2/15.
    pub fn for_lease_seconds(secs: u64) -> Timing {
        let lease = Duration::from_secs(secs.max(1));
        Timing {
            lease_duration: lease,
            renew_deadline: lease * 2 / 3,
            retry_period: (lease * 2 / 15).max(Duration::from_millis(100)),
        }
    }
}

/// The Lease as read: what the election looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// `spec.holderIdentity`; empty or absent: released.
    pub holder: Option<String>,
    /// `metadata.resourceVersion`: changes on every write.
    pub resource_version: String,
    /// `spec.leaseTransitions`.
    pub transitions: i32,
    /// `spec.acquireTime` as written (kept while the holder stays).
    pub acquire_time: Option<String>,
}

/// What to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The holder to write: this replica, or none to release.
    pub holder: Option<String>,
    /// `spec.leaseTransitions` to write.
    pub transitions: i32,
    /// Keep the existing `acquireTime` (a renewal), or set it now (`None`).
    pub acquire_time: Option<String>,
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create the Lease holding it (there is none).
    Create(Record),
    /// Replace the Lease, on condition that it is still at `resource_version`.
    Update {
        /// The precondition.
        resource_version: String,
        /// The new content.
        record: Record,
    },
    /// Nothing to write: read again at the next retry.
    Wait,
}

/// The election, for one replica.
#[derive(Debug, Clone)]
pub struct Elector {
    me: String,
    timing: Timing,
    /// The version last seen and when (this clock) it was first seen.
    seen: Option<(Seen, Instant)>,
    /// When the write in flight was sent.
    sent: Option<Instant>,
    /// What the write in flight writes.
    pending: Option<Record>,
    /// Leading until then (the renew deadline after the last renewal sent).
    leads_until: Option<Instant>,
}

impl Elector {
    /// An elector for identity `me`.
    pub fn new(me: impl Into<String>, timing: Timing) -> Elector {
        Elector {
            me: me.into(),
            timing,
            seen: None,
            sent: None,
            pending: None,
            leads_until: None,
        }
    }

    /// The timing.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// Whether this replica may act as leader at `now`. False the instant
    /// the deadline passes, whatever the driver is doing.
    pub fn leads(&self, now: Instant) -> bool {
        self.leads_until.is_some_and(|u| now < u)
    }

    /// Until when this replica leads, if it does.
    pub fn leads_until(&self) -> Option<Instant> {
        self.leads_until
    }

    /// The Lease as read at `now` (`None`: it does not exist): decides
    /// whether to create, take over, renew or wait. The caller must then
    /// call [`Elector::sent`] with the time it sends the write.
    pub fn observe(&mut self, lease: Option<Seen>, now: Instant) -> Step {
        let Some(seen) = lease else {
            self.seen = None;
            let record = Record {
                holder: Some(self.me.clone()),
                transitions: 0,
                acquire_time: None,
            };
            self.pending = Some(record.clone());
            return Step::Create(record);
        };
        let first_seen = match &self.seen {
            Some((old, at)) if old.resource_version == seen.resource_version => *at,
            _ => now,
        };
        self.seen = Some((seen.clone(), first_seen));
        let holder = seen.holder.as_deref().filter(|h| !h.is_empty());
        let mine = holder == Some(self.me.as_str());
        if !mine {
            // Someone else's claim (or our own, now lost): we do not lead.
            self.leads_until = None;
        }
        let free = holder.is_none()
            || now.saturating_duration_since(first_seen) >= self.timing.lease_duration;
        if !mine && !free {
            return Step::Wait;
        }
        let record = Record {
            holder: Some(self.me.clone()),
            transitions: if mine {
                seen.transitions
            } else {
                seen.transitions.saturating_add(1)
            },
            acquire_time: if mine { seen.acquire_time } else { None },
        };
        self.pending = Some(record.clone());
        Step::Update {
            resource_version: seen.resource_version,
            record,
        }
    }

    /// The write decided by [`Elector::observe`] is being sent at `now`.
    pub fn sent(&mut self, now: Instant) {
        self.sent = Some(now);
    }

    /// The write succeeded; the Lease is now at `resource_version`. This
    /// replica leads until the renew deadline after the write was sent.
    pub fn written(&mut self, resource_version: String, now: Instant) {
        let sent = self.sent.take().unwrap_or(now);
        let until = sent + self.timing.renew_deadline;
        // A late answer never extends what an earlier renewal gave.
        self.leads_until = Some(self.leads_until.map_or(until, |u| u.max(until)));
        // What the Lease now says: ours, at the new version (so that a
        // release, or the next renewal, writes on top of it).
        let record = self.pending.take();
        let acquire_time = self.seen.as_ref().and_then(|(s, _)| s.acquire_time.clone());
        self.seen = Some((
            Seen {
                holder: Some(self.me.clone()),
                resource_version,
                transitions: record.as_ref().map_or(0, |r| r.transitions),
                acquire_time: record.and_then(|r| r.acquire_time).or(acquire_time),
            },
            now,
        ));
    }

    /// The write failed (conflict, error, timeout): leadership runs out at
    /// its deadline unless a later renewal succeeds.
    pub fn failed(&mut self) {
        self.sent = None;
        self.pending = None;
    }

    /// What to write to release the Lease on shutdown (if this replica
    /// holds it): an empty holder lets a standby take over at its next read.
    pub fn release(&mut self) -> Option<Step> {
        self.leads_until = None;
        let (seen, _) = self.seen.as_ref()?;
        (seen.holder.as_deref() == Some(self.me.as_str())).then(|| Step::Update {
            resource_version: seen.resource_version.clone(),
            record: Record {
                holder: None,
                transitions: seen.transitions,
                acquire_time: seen.acquire_time.clone(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn timing() -> Timing {
        Timing {
            lease_duration: 15 * S,
            renew_deadline: 10 * S,
            retry_period: 2 * S,
        }
    }

    fn seen(holder: &str, rv: &str) -> Seen {
        Seen {
            holder: (!holder.is_empty()).then(|| holder.to_string()),
            resource_version: rv.into(),
            transitions: 3,
            acquire_time: Some("t0".into()),
        }
    }

    #[test]
    fn a_missing_lease_is_created_and_an_empty_one_taken_at_once() {
        let t0 = Instant::now();
        let mut e = Elector::new("b", timing());
        assert!(matches!(e.observe(None, t0), Step::Create(r) if r.holder.as_deref() == Some("b")));
        match e.observe(Some(seen("", "7")), t0) {
            Step::Update {
                resource_version,
                record,
            } => {
                assert_eq!(resource_version, "7");
                assert_eq!(record.transitions, 4, "a new holder is a transition");
                assert_eq!(record.acquire_time, None, "acquired now");
            }
            other => panic!("{other:?}"),
        }
    }

    /// Wall clocks play no part: only how long this replica saw the same
    /// version. A standby that first sees a Lease waits a full lease
    /// duration from then, even if it (re)starts right before expiry.
    #[test]
    fn another_holder_is_replaced_only_after_a_full_lease_unchanged_on_this_clock() {
        let t0 = Instant::now();
        let mut e = Elector::new("b", timing());
        assert_eq!(e.observe(Some(seen("a", "10")), t0), Step::Wait);
        assert_eq!(e.observe(Some(seen("a", "10")), t0 + 14 * S), Step::Wait);
        // The holder renewed (a new version): the wait starts again.
        assert_eq!(e.observe(Some(seen("a", "11")), t0 + 14 * S), Step::Wait);
        assert_eq!(e.observe(Some(seen("a", "11")), t0 + 28 * S), Step::Wait);
        assert!(matches!(
            e.observe(Some(seen("a", "11")), t0 + 29 * S),
            Step::Update { ref resource_version, .. } if resource_version == "11"
        ));
        assert!(!e.leads(t0 + 29 * S), "not before the write succeeded");
    }

    #[test]
    fn a_leader_leads_until_the_deadline_after_its_last_renewal_was_sent() {
        let t0 = Instant::now();
        let mut e = Elector::new("a", timing());
        let _ = e.observe(Some(seen("", "1")), t0);
        e.sent(t0);
        // The answer took 3 s: the deadline still counts from the sending.
        e.written("2".into(), t0 + 3 * S);
        assert!(e.leads(t0 + 9 * S));
        assert!(!e.leads(t0 + 10 * S), "fenced at the deadline");
        // Renewals keep it.
        assert!(matches!(
            e.observe(Some(seen("a", "2")), t0 + 2 * S),
            Step::Update { .. }
        ));
        e.sent(t0 + 2 * S);
        e.written("3".into(), t0 + 2 * S);
        assert!(e.leads(t0 + 11 * S) && !e.leads(t0 + 12 * S));
        // A failed renewal changes nothing until the deadline, then it is over.
        let _ = e.observe(Some(seen("a", "3")), t0 + 4 * S);
        e.sent(t0 + 4 * S);
        e.failed();
        assert!(e.leads(t0 + 11 * S) && !e.leads(t0 + 12 * S));
    }

    #[test]
    fn seeing_another_holder_ends_leadership_at_once() {
        let t0 = Instant::now();
        let mut e = Elector::new("a", timing());
        let _ = e.observe(Some(seen("", "1")), t0);
        e.sent(t0);
        e.written("2".into(), t0);
        assert!(e.leads(t0 + S));
        assert_eq!(e.observe(Some(seen("b", "9")), t0 + S), Step::Wait);
        assert!(!e.leads(t0 + S));
    }

    #[test]
    fn a_lease_just_created_can_be_released() {
        let t0 = Instant::now();
        let mut e = Elector::new("a", timing());
        assert!(matches!(e.observe(None, t0), Step::Create(_)));
        e.sent(t0);
        e.written("5".into(), t0);
        assert!(e.leads(t0));
        match e.release() {
            Some(Step::Update {
                resource_version,
                record,
            }) => {
                assert_eq!((resource_version.as_str(), record.holder), ("5", None));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn release_writes_an_empty_holder_only_when_holding() {
        let t0 = Instant::now();
        let mut e = Elector::new("a", timing());
        assert_eq!(e.observe(Some(seen("b", "1")), t0), Step::Wait);
        assert_eq!(e.release(), None);
        let _ = e.observe(Some(seen("", "2")), t0);
        e.sent(t0);
        e.written("3".into(), t0);
        match e.release() {
            Some(Step::Update {
                resource_version,
                record,
            }) => {
                assert_eq!((resource_version.as_str(), record.holder), ("3", None));
            }
            other => panic!("{other:?}"),
        }
        assert!(!e.leads(t0));
    }

    /// Two replicas under any interleaving of reads, writes and clocks that
    /// run at the same rate but start anywhere: never both leading at once,
    /// given a server that takes one write per resourceVersion.
    #[test]
    fn two_replicas_never_lead_at_once() {
        use proptest::prelude::*;
        proptest!(ProptestConfig::with_cases(2_000), |(
            steps in proptest::collection::vec((0usize..2, 0u64..3_000, any::<bool>()), 1..200)
        )| {
            let t0 = Instant::now();
            let mut rv = 1u64;
            let mut lease: Option<(Option<String>, u64, i32)> = None;
            let mut es = [Elector::new("a", timing()), Elector::new("b", timing())];
            let mut now = t0;
            for (who, advance_ms, lose) in steps {
                now += Duration::from_millis(advance_ms);
                let seen_lease = lease.clone().map(|(h, v, t)| Seen {
                    holder: h, resource_version: v.to_string(), transitions: t, acquire_time: None,
                });
                let step = es[who].observe(seen_lease, now);
                let write = match step {
                    Step::Create(r) if lease.is_none() => Some(r),
                    Step::Update { resource_version, record }
                        if lease.as_ref().is_some_and(|l| l.1.to_string() == resource_version) => Some(record),
                    Step::Wait => None,
                    _ => { es[who].sent(now); es[who].failed(); None }
                };
                if let Some(r) = write {
                    es[who].sent(now);
                    rv += 1;
                    lease = Some((r.holder, rv, r.transitions));
                    if lose {
                        // Written, but the answer was lost: the replica does not know.
                        es[who].failed();
                    } else {
                        es[who].written(rv.to_string(), now);
                    }
                }
                prop_assert!(!(es[0].leads(now) && es[1].leads(now)), "both lead at {:?}", now - t0);
            }
        });
    }
}
