//! Who announces a VIP: one owner per service, computed identically by
//! every node from the same inputs.
//!
//! - Without a claim, the owner is the eligible node with the highest
//!   rendezvous score `hash(node "#" key)` (MetalLB's rule), so services
//!   spread evenly and a membership change moves only the keys it must.
//! - With claims (each node's heartbeat lists the services it announces and
//!   for how long), the live claimant that has held the service longest
//!   keeps it: a node that joins or comes back does not take VIPs back
//!   (no second outage), and after a partition heals the incumbent wins and
//!   the newcomer stands down.
//! - Hold times within [`TIE_MS`] of the longest count as a tie, decided by
//!   the score. Each node sees its peers' hold times a little late (a
//!   heartbeat interval plus the network), so two claims taken at nearly the
//!   same moment (every node claiming everything during a full partition)
//!   would otherwise each look longer to their own node, and both would keep
//!   answering. With the tie band, nodes disagree only when two hold times
//!   differ by almost exactly `TIE_MS`, give or take that delay.
//!
//! The key is the service, not the address, so both addresses of a
//! dual-stack service land on the same node.

use ferrolb_balance::hash::hash64;

/// The rendezvous score of `node` for `key`.
pub fn score(node: &str, key: &str) -> u64 {
    let mut bytes = Vec::with_capacity(node.len() + key.len() + 1);
    bytes.extend_from_slice(node.as_bytes());
    bytes.push(b'#');
    bytes.extend_from_slice(key.as_bytes());
    hash64(&bytes, 0x4c32)
}

/// A node's claim on a key, from its heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim<'a> {
    /// The claiming node.
    pub node: &'a str,
    /// How long it has announced the key, in milliseconds.
    pub held_ms: u64,
}

/// The owner of `key` among `eligible` nodes (live and allowed to announce
/// it), given the current `claims`. `None` when no node is eligible.
pub fn owner<'a>(key: &str, eligible: &[&'a str], claims: &[Claim<'_>]) -> Option<&'a str> {
    let live: Vec<(&'a str, u64)> = claims
        .iter()
        .filter_map(|c| {
            eligible
                .iter()
                .find(|e| **e == c.node)
                .map(|e| (*e, c.held_ms))
        })
        .collect();
    let by_score = |a: &&'a str, b: &&'a str| score(a, key).cmp(&score(b, key)).then(a.cmp(b));
    if let Some(longest) = live.iter().map(|(_, h)| *h).max() {
        // Everything close to the longest hold is a tie; the score decides, the
        // same way whatever order the claims arrived in.
        return live
            .iter()
            .filter(|(_, h)| longest - h <= TIE_MS)
            .map(|(n, _)| *n)
            .max_by(by_score);
    }
    eligible.iter().copied().max_by(by_score)
}

/// Hold times this close to the longest one tie (see the module notes).
pub const TIE_MS: u64 = 1_000;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nodes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i}")).collect()
    }

    #[test]
    fn no_eligible_no_owner() {
        assert_eq!(owner("svc", &[], &[]), None);
        assert_eq!(
            owner(
                "svc",
                &[],
                &[Claim {
                    node: "a",
                    held_ms: 5
                }]
            ),
            None
        );
    }

    #[test]
    fn incumbent_keeps_the_key_when_a_better_node_returns() {
        let all = ["a", "b", "c"];
        let fresh = owner("svc", &all, &[]).unwrap();
        let others: Vec<&str> = all.iter().copied().filter(|n| *n != fresh).collect();
        // The natural owner was away; another node took over and has held it since.
        let stand_in = owner("svc", &others, &[]).unwrap();
        let claims = [Claim {
            node: stand_in,
            held_ms: 4_000,
        }];
        assert_eq!(owner("svc", &all, &claims), Some(stand_in), "no flap-back");
        // A dead claimant's claim does not count.
        assert_eq!(owner("svc", &[fresh], &claims), Some(fresh));
    }

    #[test]
    fn split_brain_resolves_to_the_longest_holder() {
        let all = ["a", "b", "c"];
        let claims = [
            Claim {
                node: "a",
                held_ms: 10,
            },
            Claim {
                node: "c",
                held_ms: 9_000,
            },
        ];
        assert_eq!(owner("svc", &all, &claims), Some("c"));
        // Within the tie band (here 600 ms apart) the score decides, not who is a
        // little older.
        let tie = [
            Claim {
                node: "a",
                held_ms: 50,
            },
            Claim {
                node: "c",
                held_ms: 650,
            },
        ];
        let by_score = if score("a", "svc") > score("c", "svc") {
            "a"
        } else {
            "c"
        };
        assert_eq!(owner("svc", &all, &tie), Some(by_score));
    }

    proptest! {
        #[test]
        fn agreement_whatever_the_order(n in 1usize..12, key in "[a-z]{1,12}", rot in 0usize..12) {
            let ns = nodes(n);
            let refs: Vec<&str> = ns.iter().map(|s| s.as_str()).collect();
            let mut rotated = refs.clone();
            rotated.rotate_left(rot % n);
            prop_assert_eq!(owner(&key, &refs, &[]), owner(&key, &rotated, &[]));
        }

        /// Two nodes each see their own claim exactly and the other's up to
        /// `lag` ms late (heartbeat interval plus network). They agree on the
        /// owner unless the hold times differ by about `TIE_MS`, within `lag`.
        #[test]
        fn views_a_heartbeat_apart_agree(key in "[a-z]{1,12}", ha in 0u64..10_000, hb in 0u64..10_000,
                                         lag_a in 0u64..150, lag_b in 0u64..150, third in proptest::option::of(0u64..10_000)) {
            let all = ["a", "b", "c"];
            prop_assume!((ha.abs_diff(hb)).abs_diff(TIE_MS) > 300);
            let mut view_a = vec![Claim { node: "a", held_ms: ha }, Claim { node: "b", held_ms: hb.saturating_sub(lag_a) }];
            let mut view_b = vec![Claim { node: "b", held_ms: hb }, Claim { node: "a", held_ms: ha.saturating_sub(lag_b) }];
            if let Some(hc) = third {
                prop_assume!(hc.abs_diff(ha).abs_diff(TIE_MS) > 300 && hc.abs_diff(hb).abs_diff(TIE_MS) > 300);
                view_a.push(Claim { node: "c", held_ms: hc.saturating_sub(lag_a) });
                view_b.push(Claim { node: "c", held_ms: hc.saturating_sub(lag_b) });
            }
            prop_assert_eq!(owner(&key, &all, &view_a), owner(&key, &all, &view_b));
            // And the order the claims are listed in never matters.
            view_a.reverse();
            prop_assert_eq!(owner(&key, &all, &view_a), owner(&key, &all, &view_b));
        }

        #[test]
        fn removing_a_node_moves_only_its_keys(n in 2usize..10, victim in 0usize..10) {
            let ns = nodes(n);
            let refs: Vec<&str> = ns.iter().map(|s| s.as_str()).collect();
            let gone = refs[victim % n];
            let rest: Vec<&str> = refs.iter().copied().filter(|x| *x != gone).collect();
            for k in 0..300 {
                let key = format!("svc-{k}");
                let before = owner(&key, &refs, &[]).unwrap();
                let after = owner(&key, &rest, &[]).unwrap();
                if before != gone {
                    prop_assert_eq!(before, after);
                }
            }
        }
    }

    #[test]
    fn spread_is_even() {
        for n in [2usize, 3, 5, 8] {
            let ns = nodes(n);
            let refs: Vec<&str> = ns.iter().map(|s| s.as_str()).collect();
            let mut counts = vec![0usize; n];
            for k in 0..20_000 {
                let o = owner(&format!("ns/svc-{k}"), &refs, &[]).unwrap();
                counts[refs.iter().position(|x| *x == o).unwrap()] += 1;
            }
            let ideal = 20_000.0 / n as f64;
            for c in counts {
                assert!(
                    (c as f64 - ideal).abs() / ideal < 0.05,
                    "n={n}: {c} vs {ideal}"
                );
            }
        }
    }

    #[test]
    fn adding_a_node_moves_about_one_in_n_plus_one() {
        let ns = nodes(5);
        let refs: Vec<&str> = ns.iter().map(|s| s.as_str()).collect();
        let moved = (0..10_000)
            .filter(|k| {
                let key = format!("svc-{k}");
                owner(&key, &refs[..4], &[]) != owner(&key, &refs, &[])
            })
            .count();
        // Without claims, the new node takes ~1/5 of the keys; nothing else moves.
        assert!((1_700..2_300).contains(&moved), "{moved}");
        // With claims (the running system), nothing moves at all.
        let moved_with_claims = (0..2_000)
            .filter(|k| {
                let key = format!("svc-{k}");
                let holder = owner(&key, &refs[..4], &[]).unwrap();
                owner(
                    &key,
                    &refs,
                    &[Claim {
                        node: holder,
                        held_ms: 1,
                    }],
                ) != Some(holder)
            })
            .count();
        assert_eq!(moved_with_claims, 0);
    }
}
