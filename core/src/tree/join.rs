//! Joining: rounds of join attempts over the candidates (failover siblings, ancestors, the
//! root, RanSub candidates in waves, peers), the acceptor's side (accept, redirect down, verify
//! a direct join up the chain), and the answers. See the protocol in [`super`].

use super::*;
use crate::conn::Pin;
use crate::contract::Event;
use crate::ctx::Ctx;
use crate::id::NodeId;
use crate::wire::{JoinMode, List, TreeMsg};
use rand::RngExt;
use smallvec::SmallVec;

impl Tree {
    /// Start a round of join attempts: `first`, then the ancestors (or, in a failover, the lower
    /// siblings, all asked at once), the backbone, RanSub's views, random peers.
    pub(super) fn begin_round(&mut self, ctx: &mut Ctx<'_>, first: &[NodeId]) {
        debug_assert_eq!(self.state, TreeState::Joining);
        self.busy.hedged.clear();
        self.busy.hedge_at = None;
        let mut list: Vec<(NodeId, JoinMode)> = Vec::with_capacity(MAX_CANDIDATES);
        let me = self.me;
        // Without a subtree we cannot close a loop wherever we land: any member may place us.
        let plain = self.plain_mode(ctx);
        let children = &self.children;
        let push = |list: &mut Vec<(NodeId, JoinMode)>, id: NodeId, mode: JoinMode| {
            if id != me && !children.contains(&id) && list.len() < MAX_CANDIDATES && !list.iter().any(|(c, _)| *c == id)
            {
                list.push((id, mode));
            }
        };
        for &id in first {
            push(&mut list, id, plain);
        }
        self.busy.asked.clear();
        if let Some(dead_root) = self.busy.failover {
            // Siblings below us: the lowest live one is the new root. All are asked at once, so
            // that deciding costs one connect timeout however many of them are silent.
            let mut lower: SmallVec<[NodeId; 12]> =
                self.siblings.iter().copied().filter(|s| *s < me && *s != dead_root && !children.contains(s)).collect();
            lower.sort_unstable();
            if lower.is_empty() {
                self.become_root(ctx);
                return;
            }
            self.busy.asked_at = Some(ctx.now);
            for id in lower.into_iter().take(ctx.cfg.degree()) {
                if !self.busy.contacted.contains(&id) && self.busy.contacted.len() < MAX_CANDIDATES {
                    self.busy.contacted.push(id);
                }
                self.busy.asked.push(id);
                ctx.send(id, TreeMsg::Join { joiner: me, mode: JoinMode::Failover { dead_root }, hops: 0 });
            }
        } else {
            // Nearest ancestor first: it forwards our join up to the root. (A suspect, such as
            // an ancestor that did not answer our direct join, comes last with the others.)
            for &a in self.path.iter().rev() {
                if !self.suspects.contains(&a) {
                    push(&mut list, a, plain);
                }
            }
        }
        // Then the backbone, then everyone else we know.
        let mut top: SmallVec<[NodeId; MAX_TOP]> =
            self.top.iter().copied().filter(|p| Some(*p) != self.busy.failover && !self.suspects.contains(p)).collect();
        shuffle(ctx, &mut top);
        for id in top {
            push(&mut list, id, plain);
        }
        // A few members of our last RanSub views, non-descendants first: a uniform sample of
        // the tree, mostly alive even when every ancestor, the backbone and our few peers died
        // together (a node deep in a tree of degree 2 knows little else).
        let mut view: SmallVec<[NodeId; 24]> = SmallVec::new();
        for e in ctx.nondesc.iter().chain(ctx.all.iter()) {
            if Some(e.id) != self.busy.failover && !self.suspects.contains(&e.id) && !view.contains(&e.id) {
                view.push(e.id);
            }
        }
        shuffle(ctx, &mut view);
        for id in view.into_iter().take(VIEW_CANDIDATES) {
            push(&mut list, id, plain);
        }
        let mut peers: SmallVec<[NodeId; 32]> = self
            .peers
            .iter()
            .copied()
            .filter(|p| Some(*p) != self.busy.failover && !self.suspects.contains(p))
            .collect();
        shuffle(ctx, &mut peers);
        peers.extend(self.suspects.iter().copied());
        for id in peers {
            push(&mut list, id, plain);
        }
        list.reverse(); // tried from the back
        self.busy.candidates = list;
        self.busy.answered = false;
        if !self.busy.asked.is_empty() {
            // The rest of the round waits for the siblings' answers: a live one answers at once
            // (it accepts as the new root, or refuses while it still elects), a dead one's
            // connect fails within `connect_timeout`.
            self.busy.target = None;
            self.busy.join_at = Some(ctx.now + ctx.cfg.connect_timeout + ctx.cfg.repair_timeout);
            return;
        }
        if self.busy.repairing && first.is_empty() && self.busy.failover.is_none() && ctx.cfg.ransub_repair {
            self.busy.waves_left = ctx.cfg.repair_waves;
            self.start_direct(ctx);
            if self.busy.in_direct {
                return;
            }
        }
        self.try_next(ctx);
    }

    /// Ask up to `repair_fanout` RanSub candidates with free slots, at once, to take us directly.
    pub(super) fn start_direct(&mut self, ctx: &mut Ctx<'_>) {
        self.busy.waves_left = self.busy.waves_left.saturating_sub(1);
        let mut cands: SmallVec<[NodeId; 24]> = SmallVec::new();
        let usable = |id: &NodeId, cands: &SmallVec<[NodeId; 24]>| {
            *id != self.me
                && !self.children.contains(id)
                && !self.suspects.contains(id)
                && !cands.contains(id)
                && !self.busy.direct_sent.contains(id)
        };
        // Our nearest ancestors first: the grandparent has just lost a child, so it has room,
        // and passes us down its other branches when it has not.
        for a in self.path.iter().rev().take(ANCESTORS_ASKED) {
            if usable(a, &cands) {
                cands.push(*a);
            }
        }
        let first = cands.len();
        for e in ctx.nondesc.iter().chain(ctx.all.iter()) {
            if e.free > 0 && usable(&e.id, &cands) {
                cands.push(e.id);
            }
        }
        let views_end = cands.len();
        // Then RanSub's non-descendants (they cannot be below us), then its all-nodes view; in
        // each group the shallowest first (the repaired tree stays shallow), ties in random order.
        let nd = first + cands[first..views_end].iter().filter(|c| ctx.nondesc.iter().any(|e| e.id == **c)).count();
        let depth =
            |id: &NodeId| ctx.nondesc.iter().chain(ctx.all.iter()).find(|e| e.id == *id).map_or(u16::MAX, |e| e.depth);
        let (a, b) = cands[..views_end].split_at_mut(nd);
        let a = &mut a[first..];
        shuffle(ctx, a);
        shuffle(ctx, b);
        a.sort_by_key(depth);
        b.sort_by_key(depth);
        // Last, our further ancestors, nearest first: a branch of our own, unlike RanSub's
        // views, whose members of one epoch are shared by most nodes (after a large failure,
        // thousands of orphans ask the same few). A full one passes us down its subtree. Not
        // the root nor its children: every orphan of their branch would ask them.
        for a in self.path.iter().skip(2).rev() {
            if usable(a, &cands) {
                cands.push(*a);
            }
        }
        self.busy.direct.clear();
        // The last wave asks every candidate left, up to `MAX_FANOUT`: the join through the root
        // waits for it.
        let fanout = if self.busy.waves_left == 0 { MAX_FANOUT } else { ctx.cfg.repair_fanout.min(MAX_FANOUT) };
        for &c in cands.iter().take(fanout) {
            self.busy.direct.push(c);
            if !self.busy.direct_sent.contains(&c) && self.busy.direct_sent.len() < MAX_DIRECT {
                self.busy.direct_sent.push(c);
            }
            if !self.busy.contacted.contains(&c) && self.busy.contacted.len() < MAX_CANDIDATES {
                self.busy.contacted.push(c);
            }
            let mode = if self.children.is_empty() { JoinMode::Leaf } else { JoinMode::Direct };
            ctx.send(c, TreeMsg::Join { joiner: self.me, mode, hops: 0 });
        }
        if !self.busy.direct.is_empty() {
            self.busy.in_direct = true;
            self.busy.direct_at = Some(ctx.now + ctx.cfg.repair_timeout);
        } else {
            ctx.io.stats.repair_no_candidates += 1;
        }
    }

    /// A RanSub candidate refused or could not be reached.
    pub(super) fn direct_answered(&mut self, ctx: &mut Ctx<'_>, from: NodeId) {
        self.busy.direct.retain(|d| *d != from);
        self.busy.closing.retain(|d| *d != from);
        if self.busy.direct.is_empty() {
            self.end_direct_wave(ctx);
        }
    }

    /// A refusal during a wave from a member we did not ask: one of the wave's candidates passed
    /// our join on (down its subtree, or up towards a shallower member), and the member it
    /// reached refused. Every join has one final answer, so it stands for one candidate's: one
    /// that closed its link to us (a candidate that passed us on and then needed the link) if
    /// any, else the last asked. (Waiting for the relay's own answer, which never comes, made
    /// the wave wait out its timeout.) A wrong pick costs little: an accept is taken whoever
    /// sends it, while we join.
    fn relayed_answer(&mut self, ctx: &mut Ctx<'_>) {
        let direct = &self.busy.direct;
        let Some(&d) = direct.iter().find(|d| self.busy.closing.contains(d)).or(direct.last()) else { return };
        self.direct_answered(ctx, d);
    }

    /// A wave of direct attempts ended without an accept: the next wave starts, or, when none is
    /// left (or no candidate), the ordinary round, through the root. A wave ends as soon as all
    /// its candidates answered or failed to connect, so poor candidates (dead ones) cost little
    /// time; silent ones cost `repair_timeout` a wave.
    pub(super) fn end_direct_wave(&mut self, ctx: &mut Ctx<'_>) {
        // A live candidate answers a direct join within the wave (it accepts, refuses, or gives
        // up its verification): one still silent is probably dead, so it goes last from now on.
        for d in core::mem::take(&mut self.busy.direct) {
            self.suspect(d);
        }
        self.busy.in_direct = false;
        self.busy.direct.clear();
        self.busy.closing.clear();
        self.busy.direct_at = None;
        if self.busy.waves_left > 0 {
            self.start_direct(ctx);
        }
        if !self.busy.in_direct && self.busy.target.is_none() && self.busy.join_at.is_none() {
            self.try_next(ctx);
        }
    }

    /// A lower sibling asked in a failover refused or could not be reached.
    pub(super) fn failover_answered(&mut self, ctx: &mut Ctx<'_>, from: NodeId) {
        self.busy.asked.retain(|a| *a != from);
        if self.busy.asked.is_empty() {
            self.try_next(ctx);
        }
    }

    /// Remember a higher sibling whose `Join(Failover)` we refused, to take it as a child if we
    /// become the root soon (see `Tree::held`).
    pub(super) fn hold(&mut self, ctx: &mut Ctx<'_>, joiner: NodeId) {
        if joiner != self.me && !self.busy.held.iter().any(|h| h.0 == joiner) && self.busy.held.len() < ctx.cfg.degree()
        {
            self.busy.held.push((joiner, ctx.now));
        }
    }

    /// Forget `peer` as a hedged candidate; whether it was one.
    pub(super) fn hedged_gone(&mut self, peer: NodeId) -> bool {
        let Some(i) = self.busy.hedged.iter().position(|h| *h == peer) else { return false };
        self.busy.hedged.swap_remove(i);
        true
    }

    /// A repair's current target has not answered within `repair_timeout`: keep waiting for it,
    /// and ask the next candidate too, up to [`MAX_HEDGED`] at once. A live candidate answers
    /// within a few round trips; a dead one (on a link still open, or still connecting) would
    /// otherwise hold the repair for a connect timeout or `repair_join_wait`. The first accept
    /// wins; later ones are answered with `Remove`. Only repairs hedge: a first join waits its
    /// turn, so that a cold start does not multiply the joins that reach the root.
    pub(super) fn hedge(&mut self, ctx: &mut Ctx<'_>) {
        let Some(t) = self.busy.target else { return };
        let next_is_plain = matches!(self.busy.candidates.last(), Some((_, JoinMode::Forward | JoinMode::Leaf)));
        if self.state != TreeState::Joining
            || !self.busy.repairing
            || self.parent.is_some()
            || self.busy.hedged.len() >= MAX_HEDGED
            || !next_is_plain
        {
            return;
        }
        self.busy.hedged.push(t);
        self.try_next(ctx);
    }

    /// Send our join to the next candidate, or end the round.
    pub(super) fn try_next(&mut self, ctx: &mut Ctx<'_>) {
        self.busy.target = None;
        self.busy.hedge_at = None;
        if self.busy.failover.is_some() && self.busy.asked.is_empty() && !self.busy.answered {
            // Every lower sibling is unreachable: we are the lowest survivor.
            self.become_root(ctx);
            return;
        }
        match self.busy.candidates.pop() {
            Some((next, mode)) => {
                self.busy.target = Some(next);
                if !self.busy.contacted.contains(&next) && self.busy.contacted.len() < MAX_CANDIDATES {
                    self.busy.contacted.push(next);
                }
                ctx.send(next, TreeMsg::Join { joiner: self.me, mode, hops: 0 });
                let wait = if self.busy.repairing { ctx.cfg.repair_join_wait } else { ctx.cfg.join_retry };
                self.busy.join_at = Some(ctx.now + wait);
                if self.busy.repairing && matches!(mode, JoinMode::Forward | JoinMode::Leaf) {
                    self.busy.hedge_at = Some(ctx.now + ctx.cfg.repair_timeout);
                }
            }
            None if !self.busy.hedged.is_empty() => {
                // Earlier candidates are still unanswered: their answer, or their failure,
                // decides (at the latest after a connect timeout).
                self.busy.join_at = Some(ctx.now + ctx.cfg.connect_timeout);
            }
            None if !self.busy.answered && (!self.children.is_empty() || self.root == Some(self.me)) => {
                // Nobody we know is reachable: root our own fragment; probes merge it later.
                self.become_root(ctx)
            }
            None if !self.busy.answered && self.peers.is_empty() => self.become_root(ctx),
            None => {
                self.busy.refused_rounds = self.busy.refused_rounds.saturating_add(1);
                if self.busy.refused_rounds >= REFUSED_ROUNDS && self.busy.repairing && !self.children.is_empty() {
                    // Only refusals, round after round: nobody we know places joins.
                    self.become_root(ctx);
                } else {
                    self.busy.join_at = Some(ctx.now + ctx.cfg.join_backoff);
                }
            }
        }
    }

    pub(super) fn on_accept(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: NodeId,
        path: List<NodeId>,
        top: &[NodeId],
        siblings: List<NodeId>,
        direct: bool,
    ) {
        // A path through one of our children would close a loop: the acceptor was placed under
        // a fragment top that has since become our child (a placement still in flight when its
        // fragment detached, and that top, lower than us, joined us directly).
        // So would a path through a joiner we vouched for as a detached top: that joiner is
        // being placed in our fragment, and this acceptor's chain, checked before our top's
        // joiner was placed, may run through it by now (it was above the acceptor then).
        let now = ctx.now;
        let vouched = |p: &NodeId| self.busy.vouched.iter().any(|(v, until)| v == p && *until > now);
        let sane = path.last() == Some(&from)
            && !path.contains(&self.me)
            && !path.iter().any(|p| self.children.contains(p) || vouched(p));
        let Some(&root) = path.first() else { return ctx.send(from, TreeMsg::Remove) };
        if self.parent == Some(from) && sane {
            // A repeated accept from our parent: refresh what it says.
            if from == root {
                self.set_siblings(&siblings);
            }
            self.set_top(top);
            self.set_path(ctx, &path);
            return;
        }
        if sane
            && self.state == TreeState::Joined
            && self.parent.is_some()
            && self.busy.moving.is_some()
            && !self.children.contains(&from)
            && path.len() < self.path.len()
        {
            // The member we asked to take us when our subtree sat too deep, or one it passed us
            // down to (it verified its own chain): a shallower place.
            return self.moved(ctx, from, &path, top, &siblings);
        }
        let acceptable =
            sane && self.state == TreeState::Joining && self.parent.is_none() && !self.children.contains(&from);
        if !acceptable {
            ctx.send(from, TreeMsg::Remove);
            return;
        }
        let was_root = self.root == Some(self.me);
        self.state = TreeState::Joined;
        debug_assert!(from != self.me, "{} is its own parent", self.me);
        self.parent = Some(from);
        self.parent_changed = true;
        ctx.pin(from, Pin::Parent);
        ctx.event(Event::ParentChanged(Some(from)));
        if self.busy.repairing {
            let via_ransub = direct && self.busy.failover.is_none();
            if via_ransub {
                ctx.io.stats.repairs_via_ransub += 1;
            } else {
                ctx.io.stats.repairs_via_root += 1;
            }
            ctx.event(Event::Repaired { via_ransub });
        }
        self.end_attempt();
        if was_root {
            ctx.event(Event::StoppedBeingRoot);
        }
        self.siblings.clear();
        if from == root {
            self.set_siblings(&siblings);
        }
        self.busy.failover = None;
        self.busy.candidates = Vec::new();
        self.busy.target = None;
        self.busy.join_at = None;
        self.arm_member_probe(ctx);
        for peer in core::mem::take(&mut self.busy.contacted) {
            if peer != from {
                ctx.release(&peer);
            }
        }
        self.add_peer(ctx, root);
        self.set_top(top);
        self.adopt_path(ctx, &path, true);
    }

    /// A join attempt ended (attached, or became root).
    pub(super) fn end_attempt(&mut self) {
        self.busy.refused_rounds = 0;
        self.busy.answered = false;
        self.busy.repairing = false;
        self.busy.hedged = Vec::new();
        self.busy.hedge_at = None;
        self.busy.asked = Vec::new();
        self.busy.asked_at = None;
        self.busy.held = Vec::new();
        self.busy.in_direct = false;
        self.busy.waves_left = 0;
        self.busy.direct_at = None;
        // Free what a repair used: most nodes are rarely repairing.
        self.busy.direct = Vec::new();
        self.busy.direct_sent = Vec::new();
        self.busy.closing = Vec::new();
    }

    pub(super) fn on_reject(&mut self, ctx: &mut Ctx<'_>, from: NodeId) {
        if self.state == TreeState::Joined && self.busy.moving.is_some_and(|m| m.0 == from) {
            // The shallower member would not take us: stay, and ask another.
            self.busy.moving = None;
            self.retry_move(ctx);
        }
        if self.state != TreeState::Joining {
            return;
        }
        self.busy.answered = true;
        if self.busy.in_direct && self.busy.direct.contains(&from) {
            self.direct_answered(ctx, from);
        } else if self.busy.in_direct && !self.busy.direct_sent.contains(&from) {
            self.relayed_answer(ctx);
        } else if self.busy.asked.contains(&from) {
            self.failover_answered(ctx, from);
        } else if self.hedged_gone(from) {
            if self.busy.target.is_none() && self.busy.hedged.is_empty() {
                self.try_next(ctx);
            }
        } else if self.busy.target.is_some() {
            self.try_next(ctx);
        }
    }

    pub(super) fn on_join(&mut self, ctx: &mut Ctx<'_>, from: NodeId, joiner: NodeId, mode: JoinMode, hops: u8) {
        if joiner == self.me {
            // Our own join, forwarded up to us: the candidate is inside our own subtree (a stale
            // report of another tree, say). Like a silent candidate, but known at once: try the
            // next, so that a round of such candidates ends quickly (and a detached top with
            // nobody else to join roots its fragment again).
            if self.state == TreeState::Joining && self.busy.target.is_some() {
                self.try_next(ctx);
            }
            return;
        }
        if hops >= MAX_JOIN_HOPS {
            self.reject(ctx, joiner);
            return;
        }
        match mode {
            JoinMode::Redirect => {
                if self.state == TreeState::Joined && self.parent == Some(from) {
                    self.place(ctx, joiner, hops);
                } else {
                    if self.state == TreeState::Joined && !self.children.contains(&from) {
                        // `from` holds a stale child pointer to us.
                        ctx.send(from, TreeMsg::Remove);
                    }
                    self.reject(ctx, joiner);
                }
            }
            JoinMode::Failover { dead_root } => {
                let ours = self.state == TreeState::Joined && self.parent == Some(dead_root);
                if ours && !ctx.heard_lately(&dead_root) {
                    // A sibling saw the root fail before we did, and we have not heard from it
                    // lately either.
                    ctx.close(&dead_root);
                    self.parent_lost(ctx, false);
                } else if ours {
                    // We heard from the root lately. Either the sibling's link to it broke alone
                    // (a live root must not lose its whole backbone to one claim), or the news
                    // of its death is still on its way to us. Refuse for now (while we may be
                    // the lower survivor, the sibling must not become the root) and hold it:
                    // if we become the root after all, it is ours.
                    self.hold(ctx, joiner);
                    return self.reject(ctx, joiner);
                }
                if self.state == TreeState::Joining && self.busy.failover == Some(dead_root) && joiner > self.me {
                    // We elect too and rank below the joiner: if we become the root, it is ours.
                    self.hold(ctx, joiner);
                }
                self.route(ctx, joiner, hops);
            }
            JoinMode::Forward => self.route(ctx, joiner, hops),
            JoinMode::Direct => self.on_direct(ctx, from, joiner, hops),
            JoinMode::Leaf => self.on_leaf(ctx, from, joiner, hops),
        }
    }

    /// A repairing node asks us to take it. Accept only once our chain up to a joined root is
    /// verified not to pass through it: that is what keeps two repairs from closing a loop.
    pub(super) fn on_direct(&mut self, ctx: &mut Ctx<'_>, from: NodeId, joiner: NodeId, hops: u8) {
        if self.children.contains(&joiner) && self.state == TreeState::Joined {
            return self.accept_child(ctx, joiner, true);
        }
        let room = self.children.len() + self.busy.verifying.len() < ctx.cfg.degree();
        let passed_down = from != joiner;
        if passed_down && self.parent != Some(from) {
            return self.reject(ctx, joiner);
        }
        let placed = self.state == TreeState::Joined || (self.state == TreeState::Joining && self.parent.is_none());
        if !room && placed && !self.children.is_empty() && !self.path.contains(&joiner) {
            // Full (many repairs picked us): pass the request down to a random child, which
            // verifies its own chain, so that a popular candidate spreads the load.
            if let Some(c) = self.random_child(ctx, None).filter(|c| *c != joiner) {
                return ctx.send(c, TreeMsg::Join { joiner, mode: JoinMode::Direct, hops: hops + 1 });
            }
        }
        if self.state == TreeState::Joining
            && self.parent.is_none()
            && !self.children.is_empty()
            && room
            && joiner < self.me
        {
            // We are a detached top: we vouch for lower joiners ourselves (see the module docs).
            // A joining node without children is no top: it stays a leaf until it is placed, so
            // that its own `Leaf` joins stay safe anywhere.
            if !self.path.contains(&joiner) && !self.children.contains(&joiner) {
                return self.accept_child(ctx, joiner, true);
            }
        }
        if self.state != TreeState::Joined
            || !room
            || self.path.contains(&joiner)
            || Some(joiner) == self.parent
            || self.busy.verifying.len() == MAX_VERIFYING
            || self.busy.verifying.iter().any(|v| v.0 == joiner)
        {
            return self.reject(ctx, joiner);
        }
        match self.parent {
            None => self.accept_child(ctx, joiner, true),
            Some(p) => {
                // The joiner stops waiting after `repair_timeout`; so do we.
                self.busy.verifying.push((joiner, ctx.now + ctx.cfg.repair_timeout));
                ctx.send(p, TreeMsg::Verify { joiner, route: List(vec![self.me]) });
            }
        }
    }

    /// A verification walking up from a child of ours.
    pub(super) fn on_verify(&mut self, ctx: &mut Ctx<'_>, from: NodeId, joiner: NodeId, mut route: List<NodeId>) {
        if !self.children.contains(&from) || route.last() != Some(&from) {
            return;
        }
        // A joined root anchors the chain. A detached top (joining, its subtree kept) vouches only
        // for joiners with a lower id: fragments then only ever attach into fragments with
        // higher tops (or into a rooted tree), so no set of fragments can attach into each other
        // in a circle, and a repair need not wait for the fragment above it to be repaired first.
        let anchored = match (self.state, self.parent) {
            (TreeState::Joined, _) => true,
            (TreeState::Joining, None) => joiner < self.me,
            _ => false,
        };
        let ok = anchored && joiner != self.me && route.len() < MAX_ROUTE;
        if !ok && self.state == TreeState::Joining && self.parent.is_none() && joiner != self.me {
            // A detached top that does not vouch for this joiner: no answer. The candidate
            // keeps waiting (until its `repair_timeout`), and sends its verification again up
            // the new chain once we re-attach and the path reaches it (`adopt_path`): a
            // refusal now would send the joiner on to the root.
            return;
        }
        match (ok, self.parent) {
            (false, _) => ctx.send(from, TreeMsg::VerifyFail { joiner, route }),
            (true, None) => {
                if self.state == TreeState::Joined {
                    ctx.io.stats.root_verifies += 1;
                } else {
                    self.vouch(ctx, joiner);
                }
                ctx.send(from, TreeMsg::VerifyOk { joiner, route });
            }
            (true, Some(p)) => {
                route.0.push(self.me);
                ctx.send(p, TreeMsg::Verify { joiner, route });
            }
        }
    }

    /// Remember that we vouched for `joiner` as a detached top, until its placement is surely
    /// over (its candidate and itself wait `repair_timeout` each).
    fn vouch(&mut self, ctx: &mut Ctx<'_>, joiner: NodeId) {
        let until = ctx.now + ctx.cfg.repair_timeout * 2;
        let now = ctx.now;
        let v = &mut self.busy.vouched;
        v.retain(|(j, t)| *t > now && *j != joiner);
        if v.len() >= MAX_VOUCHED {
            v.remove(0);
        }
        v.push((joiner, until));
    }

    /// A verification's answer coming back down from our parent.
    pub(super) fn on_verified(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: NodeId,
        joiner: NodeId,
        mut route: List<NodeId>,
        ok: bool,
    ) {
        if self.parent != Some(from) || route.last() != Some(&self.me) {
            return;
        }
        route.0.pop();
        if let Some(&next) = route.last() {
            if self.children.contains(&next) {
                let msg = if ok { TreeMsg::VerifyOk { joiner, route } } else { TreeMsg::VerifyFail { joiner, route } };
                ctx.send(next, msg);
            }
            return;
        }
        // We asked: the chain from us to a joined root did (or did not) hold.
        let Some(i) = self.busy.verifying.iter().position(|v| v.0 == joiner) else { return };
        self.busy.verifying.swap_remove(i);
        if ok
            && self.state == TreeState::Joined
            && self.children.len() < ctx.cfg.degree()
            && !self.path.contains(&joiner)
        {
            self.accept_child(ctx, joiner, true);
        } else {
            self.reject(ctx, joiner);
        }
    }

    /// Take `joiner` as a child (or confirm it again).
    pub(super) fn accept_child(&mut self, ctx: &mut Ctx<'_>, joiner: NodeId, direct: bool) {
        let is_root = self.is_root();
        if !self.children.contains(&joiner) {
            // Every caller checked the room left and who the joiner is.
            debug_assert!(self.children.len() < ctx.cfg.degree(), "{}: a child past the degree", self.me);
            debug_assert!(joiner != self.me && Some(joiner) != self.parent, "{}: {joiner} as a child", self.me);
            debug_assert!(!self.path.contains(&joiner), "{}: an ancestor {joiner} as a child", self.me);
            self.children.push(joiner);
            self.children_version += 1;
            ctx.event(Event::ChildAdded(joiner));
        }
        let siblings = if is_root {
            List(self.children.iter().copied().filter(|c| *c != joiner).collect())
        } else {
            List(Vec::new())
        };
        let mut path = Vec::with_capacity(self.path.len() + 1);
        if self.state == TreeState::Joined {
            path.extend_from_slice(&self.path);
        }
        // A detached top names itself as the top of the joiner's path until it re-attaches.
        path.push(self.me);
        let top = List(self.top_view());
        ctx.send(joiner, TreeMsg::JoinAccept { path: List(path), top, siblings, direct });
        ctx.pin(joiner, Pin::Child);
        if is_root {
            self.send_siblings(ctx, Some(joiner));
        }
    }

    /// The mode of a round's ordinary joins: `Leaf` while we have no subtree (outside a
    /// failover, whose election needs the root's children to ask each other, and outside a
    /// repair without RanSub repair, which goes through the root alone), else `Forward`.
    pub(super) fn plain_mode(&self, ctx: &Ctx<'_>) -> JoinMode {
        if self.children.is_empty() && self.busy.failover.is_none() && (!self.busy.repairing || ctx.cfg.ransub_repair) {
            JoinMode::Leaf
        } else {
            JoinMode::Forward
        }
    }

    /// A joiner without a subtree asks us to place it (see [`JoinMode::Leaf`]). Coming from our
    /// parent, it is on its way down: take it or pass it to a random child. From anyone else:
    /// take it when we have room and are no deeper than [`ideal_depth`] for the population
    /// RanSub last counted; pass it up when we are deeper (or do not know the population yet);
    /// pass it down when we are full. Nothing here needs the chain walk of a direct join: a
    /// node without children is nobody's ancestor, so no placement of it closes a loop.
    pub(super) fn on_leaf(&mut self, ctx: &mut Ctx<'_>, from: NodeId, joiner: NodeId, hops: u8) {
        if self.state != TreeState::Joined
            || self.root.is_none()
            || Some(joiner) == self.parent
            || self.path.contains(&joiner)
        {
            return self.reject(ctx, joiner);
        }
        if self.children.contains(&joiner) {
            return self.accept_child(ctx, joiner, self.parent.is_some());
        }
        let room = self.children.len() + self.busy.verifying.len() < ctx.cfg.degree();
        let descending = self.parent.is_some() && Some(from) == self.parent;
        match self.parent {
            Some(p) if !descending && !self.shallow(ctx) => {
                ctx.send(p, TreeMsg::Join { joiner, mode: JoinMode::Leaf, hops: hops + 1 })
            }
            None => self.place(ctx, joiner, hops),
            Some(_) if room => {
                ctx.io.stats.member_placements += 1;
                self.accept_child(ctx, joiner, true)
            }
            Some(_) => match self.random_child(ctx, Some(joiner)) {
                Some(c) => ctx.send(c, TreeMsg::Join { joiner, mode: JoinMode::Leaf, hops: hops + 1 }),
                None => self.reject(ctx, joiner),
            },
        }
    }

    /// Whether we are shallow enough to take a leaf ourselves: no deeper than
    /// [`ideal_depth`] for the population RanSub last told us, and never too deep at
    /// [`PLACING_DEPTH`] (RanSub's first count reaches the members two epochs after the root
    /// starts; until then leaves climb at most that far).
    fn shallow(&self, ctx: &Ctx<'_>) -> bool {
        self.depth() <= ideal_depth(ctx.population, ctx.cfg.degree()).max(PLACING_DEPTH)
    }

    /// A join that may still need to go up: place it at the root, forward it otherwise.
    pub(super) fn route(&mut self, ctx: &mut Ctx<'_>, joiner: NodeId, hops: u8) {
        match (self.state, self.parent) {
            (TreeState::Joined, None) => self.place(ctx, joiner, hops),
            (TreeState::Joined, Some(p)) if p != joiner => {
                self.add_peer(ctx, joiner);
                ctx.send(p, TreeMsg::Join { joiner, mode: JoinMode::Forward, hops: hops + 1 })
            }
            _ => self.reject(ctx, joiner),
        }
    }

    pub(super) fn reject(&mut self, ctx: &mut Ctx<'_>, joiner: NodeId) {
        ctx.io.stats.join_rejects += 1;
        ctx.send(joiner, TreeMsg::JoinReject);
    }

    /// We are a joined root, or reached by a redirect from our parent: accept or pass down.
    pub(super) fn place(&mut self, ctx: &mut Ctx<'_>, joiner: NodeId, hops: u8) {
        let is_root = self.parent.is_none();
        if is_root {
            ctx.io.stats.root_joins += 1;
            self.add_peer(ctx, joiner);
        }
        if self.root.is_none() {
            return self.reject(ctx, joiner);
        }
        if Some(joiner) == self.parent {
            return self.reject(ctx, joiner);
        }
        if self.children.contains(&joiner) || self.children.len() + self.busy.verifying.len() < ctx.cfg.degree() {
            return self.accept_child(ctx, joiner, false);
        }
        // Full: pass it down to a random child, marked so it never comes back up; a child heard
        // from lately, when there is one (a join passed to a dead child is lost until the
        // joiner's `join_retry`).
        let Some(c) = self.random_child(ctx, Some(joiner)) else { return self.reject(ctx, joiner) };
        ctx.io.stats.redirects += 1;
        ctx.send(c, TreeMsg::Join { joiner, mode: JoinMode::Redirect, hops: hops + 1 });
    }

    /// A random child other than `except`, among those heard from lately when there is one (a
    /// join passed to a dead child, not yet declared dead, is lost until the joiner's retry).
    /// Picked by counting, without collecting: no allocation.
    fn random_child(&self, ctx: &mut Ctx<'_>, except: Option<NodeId>) -> Option<NodeId> {
        let eligible = |c: &&NodeId| Some(**c) != except;
        let lately = self.children.iter().filter(eligible).filter(|c| ctx.heard_lately(c)).count();
        let fresh_only = lately > 0;
        let n = if fresh_only { lately } else { self.children.iter().filter(eligible).count() };
        if n == 0 {
            return None;
        }
        let k = ctx.rng.random_range(0..n);
        self.children.iter().filter(eligible).filter(|c| !fresh_only || ctx.heard_lately(c)).nth(k).copied()
    }
}

/// The height of a complete tree of degree `degree` holding `population` nodes: the depth below
/// which a member takes leaves itself (see [`Tree::on_leaf`]). A member at this depth still
/// takes children, one level further: the slack absorbs a population that grew since RanSub
/// counted it. At most 32 (a population of `u32` in a binary tree).
pub(crate) fn ideal_depth(population: u32, degree: usize) -> u16 {
    let d = degree.max(2) as u64;
    let (mut held, mut level, mut h) = (1u64, 1u64, 0u16);
    while held < u64::from(population) && h < 32 {
        level = level.saturating_mul(d);
        held = held.saturating_add(level);
        h += 1;
    }
    h
}
