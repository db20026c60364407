//! The reference function: both whole journals in, the events the merged stream must carry
//! out (SPEC "De-duplication: what one event is"). Written to be obviously right, not fast;
//! the property tests hold the streaming [`crate::Merger`] against it.
//!
//! Rule: two records with the same key from different nodes are copies of one event when
//! their receive times differ by at most the horizon `H` (`None`: unbounded, the default).
//! Matching is one-to-one, in time order: per key, walk node A's and node B's records sorted
//! by receive time; the earlier of the two heads is either matched with the other head (within
//! `H`) or, if it is too far before it, it can match nothing later either (every later record
//! of the other node is later still), so it is an event of its own. This greedy pairing is a
//! maximum matching of the "within `H`" relation, so k copies on A and m on B inside one
//! horizon give max(k, m) events (tested against a brute-force maximum matching below); with
//! the unbounded horizon, max(k, m) per key over the whole journals.

use std::collections::BTreeMap;

use twinrx_types::{Key, NodeId};

use crate::record::{JournalPos, Record};

/// One event of the expected stream: the copies (one or two, from different nodes) it stands for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RefEvent {
    pub key: Key,
    pub copies: Vec<JournalPos>,
}

/// The expected events of two whole journals, in key order then time order.
pub fn reference(
    journal_a: &[Record],
    journal_b: &[Record],
    horizon_ms: Option<u64>,
) -> Vec<RefEvent> {
    let w = horizon_ms.map_or(i128::MAX, |h| i128::from(h) * 1_000_000);
    let mut per_key: BTreeMap<Key, [Vec<&Record>; 2]> = BTreeMap::new();
    for r in journal_a.iter().chain(journal_b) {
        let side = if r.node == NodeId::A { 0 } else { 1 };
        per_key.entry(r.key).or_default()[side].push(r);
    }
    let mut events = Vec::new();
    for (key, [mut a, mut b]) in per_key {
        a.sort_by_key(|r| (r.received_at, r.seq));
        b.sort_by_key(|r| (r.received_at, r.seq));
        let (mut i, mut j) = (0, 0);
        loop {
            match (a.get(i), b.get(j)) {
                (None, None) => break,
                (Some(ra), None) => {
                    events.push(single(key, ra));
                    i += 1;
                }
                (None, Some(rb)) => {
                    events.push(single(key, rb));
                    j += 1;
                }
                (Some(ra), Some(rb)) => {
                    let ta = i128::from(ra.received_at.0);
                    let tb = i128::from(rb.received_at.0);
                    if (ta - tb).abs() <= w {
                        events.push(RefEvent {
                            key,
                            copies: vec![ra.pos(), rb.pos()],
                        });
                        i += 1;
                        j += 1;
                    } else if ta < tb {
                        events.push(single(key, ra));
                        i += 1;
                    } else {
                        events.push(single(key, rb));
                        j += 1;
                    }
                }
            }
        }
    }
    events
}

fn single(key: Key, r: &Record) -> RefEvent {
    RefEvent {
        key,
        copies: vec![r.pos()],
    }
}

/// Number of events per key: what the streaming merger must reproduce exactly.
pub fn counts_per_key(events: &[RefEvent]) -> BTreeMap<Key, usize> {
    let mut counts = BTreeMap::new();
    for e in events {
        *counts.entry(e.key).or_insert(0) += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinrx_types::{Seq, UnixNanos};

    fn rec(node: NodeId, seq: u64, key: u8, ms: i64) -> Record {
        Record {
            node,
            seq: Seq(seq),
            key: Key([key; 16]),
            received_at: UnixNanos(ms * 1_000_000),
        }
    }

    /// Journals from per-node lists of (key, ms), seqs assigned in order.
    fn journals(a: &[(u8, i64)], b: &[(u8, i64)]) -> (Vec<Record>, Vec<Record>) {
        let mk = |node, l: &[(u8, i64)]| {
            l.iter()
                .enumerate()
                .map(|(i, &(k, t))| rec(node, i as u64 + 1, k, t))
                .collect::<Vec<_>>()
        };
        (mk(NodeId::A, a), mk(NodeId::B, b))
    }

    #[test]
    fn copies_on_both_nodes_are_one_event() {
        let (a, b) = journals(&[(1, 1000)], &[(1, 1003)]);
        let ev = reference(&a, &b, Some(5000));
        assert_eq!(
            ev,
            vec![RefEvent {
                key: Key([1; 16]),
                copies: vec![a[0].pos(), b[0].pos()]
            }]
        );
    }

    #[test]
    fn k_on_a_and_m_on_b_in_a_window_give_max_k_m() {
        let (a, b) = journals(
            &[(1, 0), (1, 100), (1, 200)],
            &[(1, 50), (1, 150), (1, 250), (1, 300), (1, 350)],
        );
        assert_eq!(reference(&a, &b, Some(5000)).len(), 5);
        assert_eq!(reference(&b, &a, Some(5000)).len(), 5);
    }

    #[test]
    fn skew_beyond_a_short_horizon_gives_two_events() {
        let (a, b) = journals(&[(1, 0)], &[(1, 5001)]);
        assert_eq!(reference(&a, &b, Some(5000)).len(), 2);
        let (a, b) = journals(&[(1, 0)], &[(1, 5000)]);
        assert_eq!(reference(&a, &b, Some(5000)).len(), 1);
    }

    #[test]
    fn with_the_unbounded_horizon_a_copy_days_late_is_the_same_event() {
        // A node down for a weekend; its relay delivers the backlog on Monday.
        let day = 86_400_000;
        let (a, b) = journals(
            &[(1, 0), (2, 10), (1, 3 * day)],
            &[(1, 3 * day), (2, 3 * day)],
        );
        let ev = reference(&a, &b, None);
        // Key 1: 2 copies on A, 1 on B: 2 events; key 2: 1 and 1: 1 event.
        assert_eq!(
            counts_per_key(&ev).values().copied().collect::<Vec<_>>(),
            [2, 1]
        );
        assert_eq!(
            ev[0].copies,
            vec![a[0].pos(), b[0].pos()],
            "one-to-one in journal order: A's first copy pairs with B's first"
        );
        // The same journals with a one-day horizon: nothing pairs across the weekend.
        let ev = reference(&a, &b, Some(day as u64));
        assert_eq!(
            counts_per_key(&ev).values().copied().collect::<Vec<_>>(),
            [2, 2]
        );
    }

    /// Brute-force maximum bipartite matching (Kuhn's augmenting paths).
    fn max_matching(a: &[i64], b: &[i64], w: i64) -> usize {
        fn augment(
            i: usize,
            a: &[i64],
            b: &[i64],
            w: i64,
            seen: &mut [bool],
            owner: &mut [Option<usize>],
        ) -> bool {
            for j in 0..b.len() {
                if (a[i] - b[j]).abs() <= w && !seen[j] {
                    seen[j] = true;
                    let free = match owner[j] {
                        None => true,
                        Some(k) => augment(k, a, b, w, seen, owner),
                    };
                    if free {
                        owner[j] = Some(i);
                        return true;
                    }
                }
            }
            false
        }
        let mut owner = vec![None; b.len()];
        (0..a.len())
            .filter(|&i| augment(i, a, b, w, &mut vec![false; b.len()], &mut owner))
            .count()
    }

    #[test]
    fn greedy_pairing_is_a_maximum_matching() {
        // Deterministic pseudo-random small cases (no RNG dependency): an LCG.
        let mut s: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |m: u64| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) % m
        };
        for _ in 0..3000 {
            let na = next(7) as usize;
            let nb = next(7) as usize;
            let ta: Vec<i64> = (0..na).map(|_| next(30) as i64 * 500).collect();
            let tb: Vec<i64> = (0..nb).map(|_| next(30) as i64 * 500).collect();
            let a: Vec<(u8, i64)> = ta.iter().map(|&t| (9, t)).collect();
            let b: Vec<(u8, i64)> = tb.iter().map(|&t| (9, t)).collect();
            let (ja, jb) = journals(&a, &b);
            let events = reference(&ja, &jb, Some(5000));
            let expected = na + nb - max_matching(&ta, &tb, 5000);
            assert_eq!(events.len(), expected, "a={ta:?} b={tb:?}");
        }
    }
}
