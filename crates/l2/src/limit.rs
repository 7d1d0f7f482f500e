//! Per-source answer limits for the ARP/NDP responder. A host flooding
//! requests gets a bounded share of answers, so the responder keeps
//! answering everyone else. Neither ARP (RFC 826) nor NDP (RFC 4861 7.2.4)
//! obliges a node to answer every request, and a legitimate host asks a few
//! times a second at most (probes, then one every reachable time), so the
//! limit never touches normal traffic.
//!
//! The table has a fixed size and is indexed by a hash of the source MAC: no
//! allocation per frame, and a flood from random MACs cannot grow it. Two
//! sources that share a slot share its budget, which only matters under a
//! flood.

use crate::wire::Mac;

/// Slots in the table; a power of two.
const SLOTS: usize = 1024;

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// Tokens in thousandths, so refills stay exact at any rate.
    milli: u64,
    /// When the slot was last refilled (ms).
    at_ms: u64,
}

/// A token bucket per source MAC (by hashed slot).
#[derive(Debug, Clone)]
pub struct SourceLimiter {
    slots: Box<[Slot]>,
    /// Answers per second per source.
    rate: u64,
    /// Answers a source may have in a burst.
    burst: u64,
    /// A random key so that a remote host cannot pick MACs that collide with a victim's slot.
    seed: u64,
}

impl SourceLimiter {
    /// `rate` answers a second per source with bursts of `burst`; `seed`
    /// keys the slot hash (give it something random).
    pub fn new(rate: u64, burst: u64, seed: u64) -> SourceLimiter {
        SourceLimiter {
            slots: vec![Slot::default(); SLOTS].into_boxed_slice(),
            rate,
            burst: burst.max(1),
            seed,
        }
    }

    fn slot(&self, mac: Mac) -> usize {
        // One round of a 64-bit mix (splitmix64) over the keyed MAC.
        let mut x = self.seed;
        for b in mac.0 {
            x = (x ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
        x ^= x >> 30;
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x ^= x >> 27;
        x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
        (x as usize) & (SLOTS - 1)
    }

    /// Whether `from` may have one more answer at `now_ms`; takes a token if so.
    pub fn allow(&mut self, from: Mac, now_ms: u64) -> bool {
        let (rate, cap) = (self.rate, self.burst * 1000);
        let i = self.slot(from);
        let s = &mut self.slots[i];
        if s.at_ms == 0 && s.milli == 0 {
            // A slot never used starts full.
            s.milli = cap;
        } else {
            let elapsed = now_ms.saturating_sub(s.at_ms);
            s.milli = (s.milli + elapsed.saturating_mul(rate)).min(cap);
        }
        s.at_ms = now_ms.max(1);
        if s.milli >= 1000 {
            s.milli -= 1000;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(last: u8) -> Mac {
        Mac([2, 0, 0, 0, 0, last])
    }

    #[test]
    fn a_burst_then_the_rate() {
        let mut l = SourceLimiter::new(10, 5, 7);
        let a = mac(1);
        let allowed = (0..100).filter(|_| l.allow(a, 1_000)).count();
        assert_eq!(allowed, 5, "the burst at one instant");
        // One second later: ten more (the rate), not more than the burst.
        let allowed = (0..100).filter(|_| l.allow(a, 2_000)).count();
        assert_eq!(allowed, 5, "refilled to the burst, no further");
        // 100 ms later: one token.
        assert!(l.allow(a, 2_100));
        assert!(!l.allow(a, 2_100));
    }

    #[test]
    fn a_flooding_source_does_not_use_up_another_sources_budget() {
        let mut l = SourceLimiter::new(50, 20, 42);
        let (flood, client) = (mac(0x66), mac(0x10));
        assert_ne!(
            l.slot(flood),
            l.slot(client),
            "the seed separates these two"
        );
        let mut client_answered = 0;
        // 10 s of a 100,000 frames/s flood, with the client asking every 100 ms.
        for ms in 1..=10_000u64 {
            for _ in 0..100 {
                l.allow(flood, ms);
            }
            if ms % 100 == 0 && l.allow(client, ms) {
                client_answered += 1;
            }
        }
        assert_eq!(client_answered, 100, "every request of the client answered");
        // The flood itself got its burst and then 50 a second.
        let mut l = SourceLimiter::new(50, 20, 42);
        let flood_answered = (1..=10_000u64)
            .map(|ms| (0..100).filter(|_| l.allow(flood, ms)).count())
            .sum::<usize>();
        assert!((500..=521).contains(&flood_answered), "{flood_answered}");
    }

    #[test]
    fn a_flood_from_random_sources_stays_in_the_fixed_table() {
        let mut l = SourceLimiter::new(50, 20, 1);
        for i in 0..100_000u32 {
            let b = i.to_be_bytes();
            l.allow(Mac([2, 0, b[0], b[1], b[2], b[3]]), 5);
        }
        assert_eq!(l.slots.len(), SLOTS);
        // Every source got at most its burst at that instant.
        let mut fresh = SourceLimiter::new(50, 20, 1);
        let granted = (0..1000).filter(|_| fresh.allow(mac(9), 5)).count();
        assert_eq!(granted, 20);
    }

    #[test]
    fn time_going_backwards_grants_nothing_extra() {
        let mut l = SourceLimiter::new(10, 2, 3);
        assert!(l.allow(mac(1), 5_000));
        assert!(l.allow(mac(1), 5_000));
        assert!(!l.allow(mac(1), 4_000));
    }
}
