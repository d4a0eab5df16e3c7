//! Merging: the probes a root (and, sparsely, a member) sends to find other trees, the answers,
//! and the merge of the higher root into the lower one. See the protocol in [`super`].

use super::*;
use crate::ctx::Ctx;
use crate::id::NodeId;
use crate::wire::TreeMsg;
use rand::RngExt;
use smallvec::SmallVec;

impl Tree {
    /// Probe after `probe_gap` (plus up to 10% jitter); the gap doubles up to `probe_interval`,
    /// so a root that has just formed looks for other trees quickly, then settles down.
    pub(super) fn arm_probe(&mut self, ctx: &mut Ctx<'_>) {
        let gap = self.busy.probe_gap.min(ctx.cfg.probe_interval);
        let jitter = ctx.rng.random_range(0..=gap.as_micros() as u64 / 10);
        self.probe_at = Some(ctx.now + gap + core::time::Duration::from_micros(jitter));
        self.busy.probe_gap = (gap * 2).min(ctx.cfg.probe_interval);
    }

    pub(super) fn probe(&mut self, ctx: &mut Ctx<'_>) {
        // The backbone we remember (the most likely bridge to another tree after a failover)
        // and the peers learnt from RanSub, the bootstrap set and joins: one of the two first,
        // at random; peers that failed lately last.
        let (me, children) = (self.me, &self.children);
        let usable = |p: &NodeId| *p != me && !children.contains(p);
        let mut top: SmallVec<[NodeId; 8]> = self.top.iter().copied().filter(usable).collect();
        let mut others: SmallVec<[NodeId; 48]> =
            self.peers.iter().copied().chain(ctx.all.iter().map(|e| e.id)).filter(usable).collect();
        shuffle(ctx, &mut top);
        shuffle(ctx, &mut others);
        let top_first = ctx.rng.random_bool(0.5);
        let mut round: SmallVec<[NodeId; 64]> = SmallVec::new();
        let (a, b) = if top_first { (&top[..], &others[..]) } else { (&others[..], &top[..]) };
        for &p in a.iter().chain(b) {
            if !round.contains(&p) {
                round.push(p);
            }
        }
        round.sort_by_key(|p| self.suspects.contains(p));
        round.truncate(ctx.cfg.probe_tries);
        self.busy.probe_round.clear();
        self.busy.probe_round.extend(round.iter().rev());
        self.probe_next(ctx);
        self.arm_probe(ctx);
    }

    /// A root: probe the next peer of this round, if any is left.
    pub(super) fn probe_next(&mut self, ctx: &mut Ctx<'_>) {
        self.probing = None;
        while let Some(peer) = self.busy.probe_round.pop() {
            if peer == self.me || self.children.contains(&peer) {
                continue;
            }
            self.probing = Some(peer);
            ctx.send(peer, TreeMsg::Probe { root: self.me });
            return;
        }
    }

    pub(super) fn on_probe(&mut self, ctx: &mut Ctx<'_>, from: NodeId, their_root: NodeId) {
        self.add_peer(ctx, from);
        if self.state != TreeState::Joined {
            return;
        }
        let Some(root) = self.root else { return };
        ctx.send(from, TreeMsg::ProbeReply { root });
        if their_root == root {
            return;
        }
        if self.is_root() {
            if their_root < self.me {
                self.lower_root(ctx, from, their_root);
            }
        } else if their_root < root {
            // A member of another tree with a lower root probed us: tell our root, which checks.
            ctx.send(root, TreeMsg::Probe { root: their_root });
        }
    }

    pub(super) fn on_probe_reply(&mut self, ctx: &mut Ctx<'_>, from: NodeId, their_root: NodeId) {
        if self.state != TreeState::Joined {
            return;
        }
        let Some(root) = self.root else { return };
        if self.is_root() && self.probing == Some(from) {
            self.probing = None;
            if their_root == root {
                // One of our own: the round goes on.
                self.probe_next(ctx);
                return;
            }
        }
        if their_root == root {
            return;
        }
        if self.is_root() {
            if their_root < self.me {
                self.lower_root(ctx, from, their_root);
            } else {
                // Tell the higher root about us: it will check, then join us.
                ctx.send(their_root, TreeMsg::Probe { root: self.me });
            }
            return;
        }
        // A member: act only on the answer to our own probe (one report per probe).
        if self.probing != Some(from) {
            return;
        }
        self.probing = None;
        // Tell the higher of the two roots about the lower one.
        let (higher, lower) = if their_root < root { (root, their_root) } else { (their_root, root) };
        if higher == self.me {
            // Our root is still ourselves: a detached top, joining. Its own join settles it.
            return;
        }
        ctx.send(higher, TreeMsg::Probe { root: lower });
    }

    /// We are a root and `from` says `lower` is the root of its tree: merge when `lower` says so
    /// itself, else ask `lower` first (it answers with its root, and we come back here).
    pub(super) fn lower_root(&mut self, ctx: &mut Ctx<'_>, from: NodeId, lower: NodeId) {
        if from == lower {
            self.merge_into(ctx, lower);
        } else {
            self.add_peer(ctx, lower);
            ctx.send(lower, TreeMsg::Probe { root: self.me });
        }
    }

    /// A member's probe timer: every `probe_interval` to `3 * probe_interval`.
    pub(super) fn arm_member_probe(&mut self, ctx: &mut Ctx<'_>) {
        let gap = ctx.cfg.probe_interval.mul_f64(ctx.rng.random_range(1.0..3.0));
        self.probe_at = Some(ctx.now + gap);
    }

    /// A member probes a random contact with probability `member_probes / population`, always
    /// while it does not know the population yet.
    pub(super) fn member_probe(&mut self, ctx: &mut Ctx<'_>) {
        self.arm_member_probe(ctx);
        let population = ctx.population;
        if population > ctx.cfg.member_probes && ctx.rng.random_range(0..population) >= ctx.cfg.member_probes {
            return;
        }
        let Some(root) = self.root else { return };
        let me = self.me;
        let (parent, children) = (self.parent, &self.children);
        let usable = |p: &NodeId| *p != me && *p != root && Some(*p) != parent && !children.contains(p);
        let candidates: SmallVec<[NodeId; 48]> = self
            .peers
            .iter()
            .chain(self.suspects.iter())
            .chain(self.top.iter())
            .copied()
            .chain(ctx.all.iter().map(|e| e.id))
            .filter(usable)
            .collect();
        if candidates.is_empty() {
            return;
        }
        let peer = candidates[ctx.rng.random_range(0..candidates.len())];
        self.probing = Some(peer);
        ctx.io.stats.member_probes += 1;
        ctx.send(peer, TreeMsg::Probe { root });
    }

    /// Probe `peer` now, out of turn: it is believed to belong to another tree (it invited us,
    /// and only a root invites). A root probes it as its own probes do; a member as its member
    /// probes do, and acts on the answer.
    pub fn probe_peer(&mut self, ctx: &mut Ctx<'_>, peer: NodeId) {
        let Some(root) = self.root.filter(|_| self.state == TreeState::Joined) else { return };
        if peer == self.me || peer == root || self.parent == Some(peer) || self.children.contains(&peer) {
            return;
        }
        self.probing = Some(peer);
        ctx.send(peer, TreeMsg::Probe { root });
    }

    /// Join the tree of the lower root `other`, subtree and all.
    pub(super) fn merge_into(&mut self, ctx: &mut Ctx<'_>, other: NodeId) {
        self.add_peer(ctx, other);
        self.state = TreeState::Joining;
        self.probe_at = None;
        self.busy.probe_round.clear();
        self.begin_round(ctx, &[other]);
    }
}
