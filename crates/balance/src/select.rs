//! Backend selection. The runtime passes the current view of its backends
//! (weight, health, active connections) and gets an index back; nothing
//! here knows about sockets.

use crate::hash::client_hash;
use crate::maglev::{Table, DEFAULT_TABLE_SIZE};
use std::net::IpAddr;

/// What the selector needs to know about one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// A stable name (its `IP:port`), used by Maglev so all hosts agree.
    pub name: String,
    /// Relative weight; 0 means no new connections.
    pub weight: u32,
    /// Whether health checks consider it up.
    pub up: bool,
}

/// How to choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Smooth weighted round robin (nginx's): interleaves, never bursts.
    RoundRobin,
    /// Fewest active connections relative to weight; ties rotate.
    LeastConnections,
    /// Maglev on the client address.
    Maglev,
}

/// Selection state for one forwarded port. Rebuild it with
/// [`Selector::update`] when backends, weights or health change.
#[derive(Debug, Clone)]
pub struct Selector {
    algorithm: Algorithm,
    candidates: Vec<Candidate>,
    /// Smooth WRR's running scores.
    current: Vec<i64>,
    /// Rotates the starting point among least-connections ties.
    cursor: usize,
    table: Option<Table>,
}

impl Selector {
    /// A selector over `candidates`.
    pub fn new(algorithm: Algorithm, candidates: Vec<Candidate>) -> Selector {
        let mut s = Selector {
            algorithm,
            candidates: Vec::new(),
            current: Vec::new(),
            cursor: 0,
            table: None,
        };
        s.update(candidates);
        s
    }

    /// Replaces the candidate list (same indices as the caller's backends).
    /// Maglev's table is rebuilt only from eligible backends, so a backend
    /// going down moves only its own clients.
    pub fn update(&mut self, candidates: Vec<Candidate>) {
        if self.algorithm == Algorithm::Maglev {
            let eligible: Vec<(&str, u32)> = candidates
                .iter()
                .map(|c| (c.name.as_str(), if c.up { c.weight } else { 0 }))
                .collect();
            self.table = Table::build(&eligible, DEFAULT_TABLE_SIZE);
        }
        // Keep WRR scores of backends that stay at the same index, so an update does not restart the cycle.
        self.current.resize(candidates.len(), 0);
        self.candidates = candidates;
    }

    /// The candidates as last given.
    pub fn candidates(&self) -> &[Candidate] {
        &self.candidates
    }

    /// Whether some backend may take new connections.
    pub fn any_eligible(&self) -> bool {
        self.candidates.iter().any(|c| c.up && c.weight > 0)
    }

    /// Picks a backend for a new connection from `client`. `active[i]` is
    /// backend i's open connection count (least connections only);
    /// `exclude` lists backends that already failed for this connection.
    pub fn pick(&mut self, client: IpAddr, active: &[u64], exclude: &[usize]) -> Option<usize> {
        let ok = |i: usize, c: &Candidate| c.up && c.weight > 0 && !exclude.contains(&i);
        match self.algorithm {
            Algorithm::RoundRobin => {
                let total: i64 = self
                    .candidates
                    .iter()
                    .enumerate()
                    .filter(|(i, c)| ok(*i, c))
                    .map(|(_, c)| c.weight as i64)
                    .sum();
                let mut best: Option<usize> = None;
                for (i, c) in self.candidates.iter().enumerate() {
                    if !ok(i, c) {
                        continue;
                    }
                    self.current[i] += c.weight as i64;
                    if best.is_none_or(|b| self.current[i] > self.current[b]) {
                        best = Some(i);
                    }
                }
                let b = best?;
                self.current[b] -= total;
                Some(b)
            }
            Algorithm::LeastConnections => {
                let n = self.candidates.len();
                let mut best: Option<usize> = None;
                for k in 0..n {
                    let i = (self.cursor + k) % n;
                    let c = &self.candidates[i];
                    if !ok(i, c) {
                        continue;
                    }
                    let load = |j: usize| active.get(j).copied().unwrap_or(0) as u128;
                    // active_i / w_i < active_b / w_b, without division.
                    let better = best.is_none_or(|b| {
                        load(i) * (self.candidates[b].weight as u128) < load(b) * (c.weight as u128)
                    });
                    if better {
                        best = Some(i);
                    }
                }
                let b = best?;
                self.cursor = (b + 1) % n.max(1);
                Some(b)
            }
            Algorithm::Maglev => {
                let table = self.table.as_ref()?;
                let h = client_hash(client);
                let first = table.lookup(h);
                if !exclude.contains(&first) {
                    return Some(first);
                }
                table.lookup_excluding(h, |b| exclude.contains(&b))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cands(weights: &[u32]) -> Vec<Candidate> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| Candidate {
                name: format!("10.0.0.{}:80", i + 1),
                weight: *w,
                up: true,
            })
            .collect()
    }

    fn ip(i: u32) -> IpAddr {
        IpAddr::V4((0x0a00_0000 + i).into())
    }

    #[test]
    fn smooth_wrr_interleaves() {
        let mut s = Selector::new(Algorithm::RoundRobin, cands(&[5, 1, 1]));
        let seq: Vec<usize> = (0..7).map(|_| s.pick(ip(0), &[], &[]).unwrap()).collect();
        // nginx's documented sequence for weights 5,1,1: a a b a c a a.
        assert_eq!(seq, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn round_robin_skips_down_and_zero_weight_and_excluded() {
        let mut c = cands(&[1, 1, 0, 1]);
        c[1].up = false;
        let mut s = Selector::new(Algorithm::RoundRobin, c);
        let seq: Vec<usize> = (0..4).map(|_| s.pick(ip(0), &[], &[]).unwrap()).collect();
        assert_eq!(seq, [0, 3, 0, 3]);
        assert_eq!(s.pick(ip(0), &[], &[0]), Some(3));
        assert_eq!(s.pick(ip(0), &[], &[0, 3]), None);
    }

    #[test]
    fn least_connections_prefers_idle_weighted() {
        let mut s = Selector::new(Algorithm::LeastConnections, cands(&[1, 1, 2]));
        assert_eq!(s.pick(ip(0), &[5, 2, 5], &[]), Some(1));
        // 5/2 < 3/1: the weight-2 backend is less loaded.
        assert_eq!(s.pick(ip(0), &[4, 3, 5], &[]), Some(2));
        // Ties rotate instead of piling onto the first.
        let picks: Vec<usize> = (0..3)
            .map(|_| s.pick(ip(0), &[0, 0, 0], &[]).unwrap())
            .collect();
        let mut sorted = picks.clone();
        sorted.sort();
        sorted.dedup();
        assert!(sorted.len() >= 2, "{picks:?}");
    }

    #[test]
    fn maglev_is_sticky_per_client_and_retries_elsewhere() {
        let mut s = Selector::new(Algorithm::Maglev, cands(&[1, 1, 1]));
        let first = s.pick(ip(42), &[], &[]).unwrap();
        for _ in 0..10 {
            assert_eq!(s.pick(ip(42), &[], &[]), Some(first));
        }
        let second = s.pick(ip(42), &[], &[first]).unwrap();
        assert_ne!(second, first);
        let mut c = cands(&[1, 1, 1]);
        c.iter_mut().for_each(|c| c.up = false);
        s.update(c);
        assert_eq!(s.pick(ip(42), &[], &[]), None);
        assert!(!s.any_eligible());
    }

    proptest! {
        #[test]
        fn wrr_shares_match_weights(weights in prop::collection::vec(1u32..6, 1..6)) {
            let total: u32 = weights.iter().sum();
            let mut s = Selector::new(Algorithm::RoundRobin, cands(&weights));
            let mut counts = vec![0u32; weights.len()];
            for _ in 0..total * 10 {
                counts[s.pick(ip(0), &[], &[]).unwrap()] += 1;
            }
            // Over whole cycles smooth WRR is exact.
            for (c, w) in counts.iter().zip(&weights) {
                prop_assert_eq!(*c, w * 10);
            }
        }

        #[test]
        fn maglev_spread_is_even_over_clients(n in 2usize..8) {
            let mut s = Selector::new(Algorithm::Maglev, cands(&vec![1; n]));
            let mut counts = vec![0u32; n];
            for i in 0..20_000u32 {
                counts[s.pick(ip(i), &[], &[]).unwrap()] += 1;
            }
            let ideal = 20_000.0 / n as f64;
            for c in counts {
                prop_assert!((c as f64 - ideal).abs() / ideal < 0.08, "{} vs {}", c, ideal);
            }
        }
    }
}
