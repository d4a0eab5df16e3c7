//! The invariant checks, and the measures of a tree.
//!
//! **Safety**, checked after every event at the node it touched ([`Sim::check_node`], from
//! [`Sim::after`]): at most `max_children` children, no link to itself, its parent not among its
//! children, and, when its parent changed, no loop through it ([`Sim::check_loop`]). The
//! network checks the link budget when a link comes up, and [`Sim::after`] that no node closes
//! its link to its parent or a child. A violation is counted, and the first few kept as text.
//!
//! **Liveness**, computed when the scenario asks: the shape of the forest of live nodes
//! ([`Sim::shape`]: roots, orphans, loops, depth, parents and children that disagree), whether
//! it is one healthy tree ([`Sim::converged`]), its main root, and samples of RanSub's views for
//! the uniformity test.

use crate::scenario::Shape;
use crate::sim::{id, idx, Sim, SimNode, MAX_VIOLATION_TEXTS};
use crate::uniformity::Uniformity;
use plush_core::TreeState;
use rand::RngExt;
use rand_pcg::Pcg64;

impl Sim {
    /// Count a safety violation, and keep its text if there is room.
    pub(crate) fn violation(&mut self, text: String) {
        self.violations += 1;
        if self.violation_texts.len() < MAX_VIOLATION_TEXTS {
            self.violation_texts.push(format!("t={}ms {text}", self.now.as_millis()));
        }
    }

    /// Safety at node `i`, after it handled an input: at most `max_children` children, no link
    /// to itself, its parent not a child.
    pub(crate) fn check_node(&mut self, i: u32) {
        let Some(n) = self.node(i) else { return };
        let me = id(i);
        let max = self.cfg.max_children;
        let mut bad = Vec::new();
        if n.children().len() > max {
            bad.push(format!("node {i} has {} children (max {max})", n.children().len()));
        }
        if n.parent() == Some(me) || n.children().contains(&me) {
            bad.push(format!("node {i} links to itself"));
        }
        if let Some(p) = n.parent() {
            if n.children().contains(&p) {
                bad.push(format!("node {i} has its parent {p} as a child"));
            }
        }
        for b in bad {
            self.violation(b);
        }
    }

    /// A new parent pointer at `i`: walk up; coming back to `i` is a loop.
    pub(crate) fn check_loop(&mut self, i: u32) {
        let mut cur = i;
        for _ in 0..=self.nodes.len() {
            let Some(p) = self.node(cur).and_then(|n| n.parent()) else { return };
            cur = idx(p);
            if cur == i {
                self.violation(format!("loop through node {i}"));
                return;
            }
            if cur as usize >= self.nodes.len() {
                return;
            }
        }
    }

    /// The shape of the forest of live nodes (O(nodes)).
    pub fn shape(&self) -> Shape {
        let n = self.nodes.len();
        let mut s = Shape::default();
        // depth[i]: u32::MAX unknown, u32::MAX-1 in progress, u32::MAX-2 dead end / loop.
        const UNKNOWN: u32 = u32::MAX;
        const VISITING: u32 = u32::MAX - 1;
        const BROKEN: u32 = u32::MAX - 2;
        let mut depth = vec![UNKNOWN; n];
        let mut top = vec![u32::MAX; n];
        let mut stack = Vec::new();
        let mut roots = Vec::new();
        for i in 0..n as u32 {
            let Some(node) = self.node(i) else { continue };
            s.max_children = s.max_children.max(node.children().len() as u32);
            if node.is_root() {
                s.roots += 1;
                roots.push(i);
            }
            for c in node.children() {
                let ci = idx(*c);
                if self.node(ci).and_then(|cn| cn.parent()) != Some(id(i)) {
                    s.disagreements += 1;
                }
            }
            if let Some(p) = node.parent() {
                let pi = idx(p);
                if !self.node(pi).is_some_and(|pn| pn.children().contains(&id(i))) {
                    s.disagreements += 1;
                }
            }
        }
        for i in 0..n as u32 {
            if self.node(i).is_none() || depth[i as usize] != UNKNOWN {
                continue;
            }
            // Walk up until a known depth, a root, a dead end or a loop.
            stack.clear();
            let mut cur = i;
            let (base, base_top) = loop {
                let d = depth[cur as usize];
                if d == VISITING {
                    s.loops += 1;
                    break (BROKEN, u32::MAX);
                }
                if d != UNKNOWN {
                    break (d, top[cur as usize]);
                }
                let Some(node) = self.node(cur) else { break (BROKEN, u32::MAX) };
                depth[cur as usize] = VISITING;
                stack.push(cur);
                match node.parent() {
                    None if node.is_root() => {
                        stack.pop();
                        depth[cur as usize] = 0;
                        top[cur as usize] = cur;
                        break (0, cur);
                    }
                    None => break (BROKEN, u32::MAX),
                    Some(p) => {
                        let pi = idx(p);
                        if pi as usize >= n {
                            break (BROKEN, u32::MAX);
                        }
                        cur = pi;
                    }
                }
            };
            let mut d = base;
            while let Some(x) = stack.pop() {
                if d != BROKEN {
                    d += 1;
                }
                depth[x as usize] = d;
                top[x as usize] = base_top;
            }
        }
        // The main tree: the root with most members.
        let mut size = vec![0u32; n];
        for i in 0..n {
            if self.nodes[i].node().is_some() && top[i] != u32::MAX {
                size[top[i] as usize] += 1;
            }
        }
        let main = roots.iter().copied().max_by_key(|&r| (size[r as usize], std::cmp::Reverse(r)));
        for i in 0..n {
            if self.nodes[i].node().is_none() {
                continue;
            }
            match main {
                Some(r) if top[i] == r => s.depth = s.depth.max(depth[i]),
                _ => s.orphans += 1,
            }
        }
        s
    }

    /// Whether the live nodes form one healthy tree.
    pub fn converged(&self) -> bool {
        // Cheap pass first: exactly one root and everyone joined.
        let mut roots = 0;
        for n in self.nodes.iter().filter_map(SimNode::node) {
            if n.state() != TreeState::Joined {
                return false;
            }
            if n.parent().is_none() {
                roots += 1;
                if roots > 1 {
                    return false;
                }
            }
        }
        let s = self.shape();
        s.roots == 1
            && s.orphans == 0
            && s.loops == 0
            && s.disagreements == 0
            && self.nodes.iter().all(|n| n.node().is_none_or(|x| x.state() == TreeState::Joined))
    }

    /// The live root with the most members (the lowest id on a tie).
    pub fn main_root(&self) -> Option<u32> {
        let mut counts = std::collections::BTreeMap::new();
        for i in 0..self.len() {
            if let Some(r) = self.node(i).and_then(|n| if n.state() == TreeState::Joined { n.root() } else { None }) {
                *counts.entry(idx(r)).or_insert(0u32) += 1;
            }
        }
        counts
            .into_iter()
            .filter(|(r, _)| self.node(*r).is_some_and(|n| n.is_root()))
            .max_by_key(|(r, c)| (*c, std::cmp::Reverse(*r)))
            .map(|(r, _)| r)
    }

    /// Record the RanSub views of one random joined non-root node.
    pub fn sample_views(&self, uni: &mut Uniformity, rng: &mut Pcg64) {
        let n = self.len();
        let candidates: Vec<u32> = (0..n).filter(|&i| self.node(i).is_some_and(|x| x.parent().is_some())).collect();
        if candidates.is_empty() {
            return;
        }
        let r = candidates[rng.random_range(0..candidates.len())];
        let Some(node) = self.node(r) else { return };
        let live: Vec<bool> = (0..n).map(|i| self.alive(i)).collect();
        // inside[x]: r is x or one of its ancestors.
        let mut inside = vec![false; n as usize];
        for x in 0..n {
            let mut cur = x;
            for _ in 0..=n {
                if cur == r {
                    inside[x as usize] = true;
                    break;
                }
                match self.node(cur).and_then(|c| c.parent()) {
                    Some(p) => cur = idx(p),
                    None => break,
                }
            }
        }
        let all: Vec<u32> = node.ransub_all().iter().map(|e| idx(e.id)).collect();
        let nd: Vec<u32> = node.ransub_nondesc().iter().map(|e| idx(e.id)).collect();
        uni.record(&all, &nd, &live, &inside);
    }
}
