//! The uniformity test of RanSub views: do nodes appear in delivered subsets in proportion to
//! 1/N?
//!
//! One random receiver is sampled per epoch (views delivered in one epoch share ingredients, so
//! counting every receiver would overstate the evidence). Nodes are pooled into groups so that
//! every group expects at least [`MIN_EXPECTED`] appearances, and Pearson's chi-square compares
//! the observed counts with the expected ones. For the all-nodes view every live node is
//! equally likely; for the non-descendant view of receiver `r`, the expected share of node `x`
//! is `|view| / (N - |subtree(r)|)` when `x` is outside `r`'s subtree, 0 inside.

use statrs::distribution::{ChiSquared, ContinuousCDF};

/// Least expected count per group.
pub const MIN_EXPECTED: f64 = 20.0;

/// Counts gathered over the sampled epochs.
#[derive(Debug, Default, Clone)]
pub struct Uniformity {
    all_seen: Vec<f64>,
    all_expected: Vec<f64>,
    nd_seen: Vec<f64>,
    nd_expected: Vec<f64>,
    /// Views sampled.
    pub samples: u32,
}

impl Uniformity {
    /// Counts for `n` node slots.
    pub fn new(n: usize) -> Self {
        Uniformity {
            all_seen: vec![0.0; n],
            all_expected: vec![0.0; n],
            nd_seen: vec![0.0; n],
            nd_expected: vec![0.0; n],
            samples: 0,
        }
    }

    /// Record one receiver's views. `live[x]` tells which nodes are members; `inside[x]` which
    /// are in the receiver's subtree.
    pub fn record(&mut self, all: &[u32], nondesc: &[u32], live: &[bool], inside: &[bool]) {
        let n_live = live.iter().filter(|l| **l).count() as f64;
        let outside = live.iter().zip(inside).filter(|(l, i)| **l && !**i).count() as f64;
        for &x in all {
            if let Some(c) = self.all_seen.get_mut(x as usize) {
                *c += 1.0;
            }
        }
        for &x in nondesc {
            if let Some(c) = self.nd_seen.get_mut(x as usize) {
                *c += 1.0;
            }
        }
        for x in 0..live.len() {
            if !live[x] {
                continue;
            }
            self.all_expected[x] += all.len() as f64 / n_live;
            if !inside[x] && outside > 0.0 {
                self.nd_expected[x] += nondesc.len() as f64 / outside;
            }
        }
        self.samples += 1;
    }

    /// p-values for the all-nodes and the non-descendant views (NaN, `null` in JSON, when there
    /// is too little data for even two groups).
    pub fn p_values(&self) -> (f64, f64) {
        (p_value(&self.all_seen, &self.all_expected), p_value(&self.nd_seen, &self.nd_expected))
    }
}

fn p_value(seen: &[f64], expected: &[f64]) -> f64 {
    let total: f64 = expected.iter().sum();
    let nodes = expected.iter().filter(|e| **e > 0.0).count();
    // A small allowance for rounding: 4 samples of 10 expect 40 in all, not 39.999...
    let groups = ((total / MIN_EXPECTED + 1e-6) as usize).min(nodes);
    if groups < 2 {
        return f64::NAN;
    }
    // Interleave nodes into groups: node k of those with a positive expectation goes to k % groups.
    let mut o = vec![0.0; groups];
    let mut e = vec![0.0; groups];
    let mut k = 0;
    for (s, x) in seen.iter().zip(expected) {
        if *x > 0.0 {
            o[k % groups] += s;
            e[k % groups] += x;
            k += 1;
        }
    }
    let stat: f64 = o.iter().zip(&e).map(|(o, e)| (o - e) * (o - e) / e).sum();
    match ChiSquared::new((groups - 1) as f64) {
        Ok(d) => d.sf(stat),
        Err(_) => f64::NAN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};
    use rand_pcg::Pcg64;

    #[test]
    fn uniform_samples_pass_and_skewed_ones_fail() {
        let n = 500;
        let live = vec![true; n];
        let inside = vec![false; n];
        let mut r = Pcg64::seed_from_u64(1);
        let (mut fair, mut skewed) = (Uniformity::new(n), Uniformity::new(n));
        for _ in 0..2000 {
            let a: Vec<u32> = (0..10).map(|_| r.random_range(0..n as u32)).collect();
            fair.record(&a, &a, &live, &inside);
            // Low ids twice as likely.
            let mut b = Vec::new();
            for _ in 0..10 {
                let x = r.random_range(0..n as u32);
                b.push(if x >= 250 && r.random_bool(0.5) { x - 250 } else { x });
            }
            skewed.record(&b, &b, &live, &inside);
        }
        assert!(fair.p_values().0 > 0.01, "{:?}", fair.p_values());
        assert!(skewed.p_values().0 < 1e-6, "{:?}", skewed.p_values());
    }
}
