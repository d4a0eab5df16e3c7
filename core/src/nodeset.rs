//! `NodeSet`: a compact set of node ids, as runs of consecutive addresses on one port.
//!
//! Results, barrier entries, acknowledgements and participant lists name thousands of nodes at
//! once. Clusters and testbeds number their hosts consecutively, so a set is stored as runs
//! `(first id, count)`: the ten thousand nodes of a simulation, or of a rack numbered
//! `10.1.0.1 ..`, are one run. Runs are kept sorted by (port, address), disjoint and not
//! touching, so that every set has exactly one representation and union or difference is one
//! merge pass.
//!
//! Bound: a set read from the network holds at most `MAX_RUNS` runs (checked before
//! allocating, and the frame size caps it further); a decoded set that is not canonical (unsorted,
//! overlapping, touching or empty runs) is a decode error.

use crate::bounded::List;
use crate::id::NodeId;
use serde::{Deserialize, Serialize};

/// A run as numbers: (port, first address, last address).
type Span = (u16, u128, u128);

/// Most runs in a set read from the network.
const MAX_RUNS: usize = 1 << 16;

/// The order runs are kept in: port, then address.
fn key(id: &NodeId) -> (u16, u128) {
    id.run_key()
}

/// A run: `count` ids starting at `first`, consecutive addresses on one port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Run {
    first: NodeId,
    count: u32,
}

impl Run {
    /// Key of the first and of the last id of the run.
    fn span(&self) -> ((u16, u128), (u16, u128)) {
        let (p, a) = key(&self.first);
        // count >= 1 and first + count - 1 fits (checked when decoded, kept by construction);
        // adding count first would overflow at the top address.
        ((p, a), (p, a.saturating_add(u128::from(self.count.saturating_sub(1)))))
    }
}

/// A set of node ids (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeSet {
    runs: Vec<Run>,
}

impl NodeSet {
    /// The empty set.
    pub fn new() -> Self {
        NodeSet::default()
    }

    /// The set of one node.
    pub fn one(id: NodeId) -> Self {
        NodeSet { runs: vec![Run { first: id, count: 1 }] }
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Number of ids.
    pub fn len(&self) -> u64 {
        self.runs.iter().map(|r| u64::from(r.count)).sum()
    }

    /// Number of runs (what the set costs on the wire: about 22 bytes each).
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// Whether `id` is in the set.
    pub fn contains(&self, id: &NodeId) -> bool {
        let k = key(id);
        // The last run starting at or before `id`.
        let i = self.runs.partition_point(|r| key(&r.first) <= k);
        i > 0 && {
            let (_, hi) = self.runs[i - 1].span();
            k <= hi
        }
    }

    /// Add one id.
    pub fn insert(&mut self, id: NodeId) {
        if !self.contains(&id) {
            self.extend(&NodeSet::one(id));
        }
    }

    /// Every id, in (port, address) order.
    pub fn iter(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.runs.iter().flat_map(|r| (0..r.count).filter_map(move |k| r.first.offset(k)))
    }

    /// Add every id of `other`.
    pub fn extend(&mut self, other: &NodeSet) {
        if other.is_empty() {
            return;
        }
        if self.is_empty() {
            self.runs = other.runs.clone();
            return;
        }
        let mut spans: Vec<Span> = Vec::with_capacity(self.runs.len() + other.runs.len());
        let (mut i, mut j) = (0, 0);
        while i < self.runs.len() || j < other.runs.len() {
            let take_self =
                j == other.runs.len() || (i < self.runs.len() && key(&self.runs[i].first) <= key(&other.runs[j].first));
            let r = if take_self {
                i += 1;
                self.runs[i - 1]
            } else {
                j += 1;
                other.runs[j - 1]
            };
            let (lo, hi) = r.span();
            match spans.last_mut() {
                // Same port and overlapping or touching: grow the last span.
                Some(last) if last.0 == lo.0 && lo.1 <= last.2.saturating_add(1) => last.2 = last.2.max(hi.1),
                _ => spans.push((lo.0, lo.1, hi.1)),
            }
        }
        self.runs = Self::from_spans(spans);
    }

    /// Remove every id of `other`.
    pub fn remove_all(&mut self, other: &NodeSet) {
        if self.is_empty() || other.is_empty() {
            return;
        }
        let mut spans: Vec<Span> = Vec::with_capacity(self.runs.len() + 1);
        let mut j = 0;
        for r in &self.runs {
            let (lo, hi) = r.span();
            // The first id not yet handed out or cut; `None` once past the top address.
            let mut cur = Some(lo.1);
            // Skip cuts that end before this run.
            while j < other.runs.len() && other.runs[j].span().1 < lo {
                j += 1;
            }
            let mut k = j;
            while k < other.runs.len() {
                let (clo, chi) = other.runs[k].span();
                if clo > hi {
                    break;
                }
                if let Some(c) = cur.filter(|&c| clo.0 == lo.0 && clo.1 > c) {
                    spans.push((lo.0, c, clo.1 - 1));
                }
                if chi.0 == lo.0 {
                    cur = cur.and_then(|c| Some(c.max(chi.1.checked_add(1)?)));
                }
                k += 1;
            }
            if let Some(c) = cur.filter(|&c| c <= hi.1) {
                spans.push((lo.0, c, hi.1));
            }
        }
        self.runs = Self::from_spans(spans);
    }

    /// Ids of `self` not in `other`, as a new set.
    pub fn minus(&self, other: &NodeSet) -> NodeSet {
        let mut s = self.clone();
        s.remove_all(other);
        s
    }

    fn from_spans(spans: Vec<Span>) -> Vec<Run> {
        let mut runs = Vec::with_capacity(spans.len());
        for (port, lo, hi) in spans {
            // Split spans longer than a run can say (only possible in IPv6).
            let mut at = lo;
            while at <= hi {
                let n = (hi - at).min(u128::from(u32::MAX - 1)) + 1;
                let first = NodeId::from_run_key(port, at);
                runs.push(Run { first, count: n as u32 });
                match at.checked_add(n) {
                    Some(next) => at = next,
                    None => break,
                }
            }
        }
        runs
    }
}

impl FromIterator<NodeId> for NodeSet {
    fn from_iter<I: IntoIterator<Item = NodeId>>(it: I) -> Self {
        let mut ids: Vec<NodeId> = it.into_iter().collect();
        ids.sort_unstable_by_key(key);
        ids.dedup();
        let mut s = NodeSet::new();
        for id in ids {
            match s.runs.last_mut() {
                Some(r) if r.count < u32::MAX && r.first.offset(r.count) == Some(id) => r.count += 1,
                _ => s.runs.push(Run { first: id, count: 1 }),
            }
        }
        s
    }
}

impl Serialize for NodeSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.runs.serialize(s)
    }
}

impl<'de> Deserialize<'de> for NodeSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let runs: List<Run, MAX_RUNS> = List::deserialize(d)?;
        let mut prev: Option<Span> = None;
        for r in runs.iter() {
            let span = span_checked(r).ok_or_else(|| serde::de::Error::custom("bad node run"))?;
            if let Some((port, _, last)) = prev {
                // Sorted, disjoint, not touching.
                if (span.0, span.1) <= (port, last) || (span.0 == port && span.1 == last + 1) {
                    return Err(serde::de::Error::custom("node runs out of order"));
                }
            }
            prev = Some(span);
        }
        Ok(NodeSet { runs: runs.0 })
    }
}

/// The span of a run read from the network, `(port, first, last)`, if it is well formed.
fn span_checked(r: &Run) -> Option<Span> {
    let count = u128::from(r.count.checked_sub(1)?);
    let (port, first) = key(&r.first);
    let last = first.checked_add(count)?;
    // An IPv4-mapped run must not run past the end of the IPv4 space into other addresses.
    if first >> 32 == 0xffff && last >> 32 != 0xffff {
        return None;
    }
    Some((port, first, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u32) -> NodeId {
        NodeId::loopback(i, 7000)
    }

    fn set(ids: &[u32]) -> NodeSet {
        ids.iter().map(|&i| id(i)).collect()
    }

    #[test]
    fn consecutive_ids_make_one_run() {
        let s: NodeSet = (0..10_000).map(id).collect();
        assert_eq!(s.runs(), 1);
        assert_eq!(s.len(), 10_000);
        assert!(s.contains(&id(9_999)) && !s.contains(&id(10_000)));
        assert_eq!(s.iter().nth(42), Some(id(42)));
    }

    #[test]
    fn union_and_difference_match_a_plain_set() {
        use std::collections::BTreeSet;
        let mut x = 12345u64;
        let mut rnd = move |m: u32| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % u64::from(m)) as u32
        };
        for _ in 0..200 {
            let a: Vec<u32> = (0..rnd(40)).map(|_| rnd(60)).collect();
            let b: Vec<u32> = (0..rnd(40)).map(|_| rnd(60)).collect();
            let (sa, sb) = (set(&a), set(&b));
            let (ba, bb): (BTreeSet<u32>, BTreeSet<u32>) = (a.iter().copied().collect(), b.iter().copied().collect());
            let mut u = sa.clone();
            u.extend(&sb);
            assert_eq!(u, set(&ba.union(&bb).copied().collect::<Vec<_>>()), "{a:?} ∪ {b:?}");
            let d = sa.minus(&sb);
            assert_eq!(d, set(&ba.difference(&bb).copied().collect::<Vec<_>>()), "{a:?} ∖ {b:?}");
            for i in 0..60 {
                assert_eq!(u.contains(&id(i)), ba.contains(&i) || bb.contains(&i));
            }
        }
    }

    #[test]
    fn other_ports_are_other_runs() {
        let s: NodeSet = [NodeId::loopback(1, 1), NodeId::loopback(2, 2), NodeId::loopback(2, 1)].into_iter().collect();
        assert_eq!(s.runs(), 2);
        assert!(s.contains(&NodeId::loopback(2, 2)) && !s.contains(&NodeId::loopback(1, 2)));
    }

    #[test]
    fn decoding_refuses_non_canonical_sets() {
        let good = set(&[1, 2, 3, 7]);
        let bytes = postcard::to_allocvec(&good).unwrap();
        assert_eq!(postcard::from_bytes::<NodeSet>(&bytes).unwrap(), good);
        for bad in [
            vec![Run { first: id(5), count: 1 }, Run { first: id(1), count: 1 }],
            vec![Run { first: id(1), count: 2 }, Run { first: id(3), count: 1 }],
            vec![Run { first: id(1), count: 0 }],
        ] {
            let bytes = postcard::to_allocvec(&bad).unwrap();
            assert!(postcard::from_bytes::<NodeSet>(&bytes).is_err(), "{bad:?}");
        }
    }

    /// Found by the `nodeset` fuzz target: a run at the very last IPv6 address overflowed while
    /// its end was computed, when merged with another set.
    #[test]
    fn sets_at_the_top_address_merge_and_subtract() {
        let top = NodeId::new(std::net::SocketAddr::from((std::net::Ipv6Addr::from(u128::MAX), 7000)));
        let below = NodeId::new(std::net::SocketAddr::from((std::net::Ipv6Addr::from(u128::MAX - 1), 7000)));
        let a = NodeSet::one(top);
        let b = NodeSet::one(below);
        let mut u = a.clone();
        u.extend(&b);
        assert_eq!(u.len(), 2);
        assert_eq!(u.runs(), 1);
        assert!(u.contains(&top) && u.contains(&below));
        assert_eq!(u.minus(&a), b);
        assert_eq!(u.minus(&b), a);
    }
}
