//! RandTree: a self-repairing random tree of bounded degree.
//!
//! **Join.** A joiner sends `Join(Forward)` to a member; members forward it up, parent by parent,
//! to the root. The root accepts while it has fewer than `degree` children, else it passes
//! the join to a random child as `Join(Redirect)`. A redirected join only ever goes down: a node
//! accepts one only from its current parent, and answers a redirect from anyone else with
//! `Remove` (the sender holds a stale child pointer to it). The acceptor answers `JoinAccept(path,
//! siblings)`, `path` being the joiner's new ancestors from the root down; a joiner takes the first accept as its parent and answers any other
//! acceptor with `Remove` (the MaceMC "kids match" fix). A node that is not joined refuses joins
//! (`JoinReject`) and the joiner tries its next candidate.
//!
//! **Leaves are placed where they ask.** A joiner without a subtree (a fresh joiner, or a leaf
//! whose parent died) sends `Join(Leaf)` instead, and the member it asked places it: that
//! member takes it when it has room and is no deeper than the height of a complete tree holding
//! RanSub's population (at least [`PLACING_DEPTH`]), passes it up to its parent when it is
//! deeper, and down to a random child (a `Leaf` from the parent, which only goes down) when it
//! is full. Only a leaf that asked the root, or climbed to it, is placed by the root. Depth
//! stays bounded like the root's placements: members at the ideal depth fill first, and a
//! descent from a full member lands on its subtree's frontier.
//!
//! **Failures.** A failed child is dropped; a root then tells its children their new siblings. A
//! node whose parent fails keeps its subtree and rejoins through its nearest live ancestor (every
//! node knows its path to the root: `RootInfo(path)` flows down whenever it changes), then through
//! its peers. If the failed parent was the root, its children already know each other: the lowest
//! `NodeId` among the survivors becomes root and the others send it `Join(Failover)`; a sibling
//! that gets such a join while still attached to the dead root drops it at once. A sibling that
//! gets no answer from the lower ones, and heard from none of them since it asked, is the lowest
//! survivor and becomes the root. A detached node whose candidates all stay silent becomes the
//! root of its own fragment.
//!
//! **Merging.** A root probes every `probe_interval`: a round of up to `probe_tries` (8) known
//! peers (the backbone first or the other contacts first, at random; peers that failed lately
//! last), one after another; the peer answers with its root. A peer found dead, or answering
//! from our own tree, moves the round on at once, so that a fragment left by a wave of failures,
//! whose contacts are mostly dead or its own members, still meets the rest within one round.
//! When two roots meet, the higher one joins the lower one with its whole subtree. An ordinary
//! join never displaces a live root.
//!
//! A root alone may know nobody outside its own tree: after a partition heals, each side's root
//! has met only its own side, while its members still remember peers (bootstrap nodes, old
//! parents, suspects) on the other side. So members probe too, sparsely: each member's probe
//! timer fires every `probe_interval` to `3 * probe_interval` and probes with probability
//! `member_probes / population` (RanSub's count), so a whole tree sends about
//! `member_probes` (32) probes every two intervals whatever its size. A member whose probe meets
//! another root tells whichever of the two roots is higher about the lower one (a `Probe`
//! naming it). A root merges only into a root that says so itself (a `Probe` or `ProbeReply`
//! from that very root); a report about a root from anyone else is first checked by probing
//! that root, so a stale report never takes a root out of its tree.
//!
//! **Repair through RanSub.** A node that lost its parent first asks, in waves of
//! `repair_fanout` at once, RanSub candidates (non-descendants first) with free slots to take it
//! directly (`Join(Direct)`). The candidate sends `Verify` up its own parent chain; the top of the
//! chain answers back down (`VerifyOk`/`VerifyFail`) and only then does the candidate accept.
//! The last wave asks every candidate left, our further ancestors among them (not the root nor
//! its children), whose subtrees are ours alone where the views' members are shared by most
//! orphans of a large failure. Only when every wave has ended without an accept (each ends when
//! all its candidates answered, or after `repair_timeout`) does the node fall back to the root.
//! A candidate that closes our link to make room (its budget is full) says so first
//! (`Closing`) and is waited for: it, or the member it passed us to, still answers. A link that
//! closes without it was reset by a crash: an answer. So is a refusal from a member we did not
//! ask (a candidate passed our join on, and that member refused), for one of the wave's
//! candidates.
//!
//! **Why no loop can form.** Only a joined root starts placing a join, and every hop down is
//! checked by the receiver against its own parent pointer, so a placement follows real parent
//! links down from a root. A detached node is not joined (it accepts nothing and originates no
//! redirect), so no join can be placed inside its subtree until it has re-attached. A direct
//! join is accepted only once the candidate's chain has been walked up to its top: a joined root
//! vouches for anyone; a detached top (a node repairing with its subtree) vouches only for
//! joiners with a lower id and never for itself. A fragment therefore only attaches below a
//! rooted tree or below a fragment whose top is higher, and ids cannot increase around a cycle.
//! A `Leaf` join needs none of this: a node without children is nobody's ancestor, so no place
//! it takes closes a cycle; a joining node therefore never takes children while it has none (a
//! childless joiner is no detached top), and refuses an accept whose path names it or a child.
//! A chain walk is checked when it is made, and the accept comes a round trip later: a top `T`
//! may vouch for a lower joiner `J` (so `J` lands in `T`'s fragment) while `T`'s own accept is on
//! its way from a candidate whose chain ran, when it was walked, through `J` still attached
//! above it; `J` has detached since, and each would land in the other's subtree (swarm seed
//! 1510). So a detached top remembers whom it vouched for (`Busy::vouched`, for two
//! `repair_timeout`s) and refuses an accept whose path names one of them.
//!
//! **Rebalancing.** A repair hangs whole subtrees wherever RanSub found room, and subtrees that
//! attached below other repaired subtrees can leave the tree three or four times as deep. A
//! joined member with children deeper than the ideal depth plus [`MOVE_SLACK`] waits a RanSub
//! epoch (the deeper, the longer), then asks a random member of its views with room, no deeper
//! than the ideal depth, to take it with `Join(Direct)`. That member verifies its chain like any
//! direct join (a chain through the mover fails), and the mover keeps its parent until an accept
//! from a shallower place comes; then it sends `Remove` to the old parent. A move detaches
//! nothing and closes no loop for the reason a direct repair closes none.
//!
//! **Leave.** A leaving node tells its parent and its children; they treat it as failed.

use crate::conn::Pin;
use crate::contract::{CommandError, Event};
use crate::ctx::Ctx;
use crate::id::NodeId;
use crate::lazy::Lazy;
use crate::ransub::Place;
use crate::time::Instant;
use crate::wire::{Filler, JoinMode, List, TreeMsg};
use busy::Busy;
use rand::RngExt;

mod busy;
mod join;
mod merge;

/// A join that has travelled this many hops is refused (bounds forwarding even on a broken tree).
const MAX_JOIN_HOPS: u8 = 64;
/// Candidates tried per round of joining: failover siblings, the root, then random peers.
const MAX_CANDIDATES: usize = 16;
/// Nearest ancestors asked directly at the start of a repair.
const ANCESTORS_ASKED: usize = 1;
/// Most RanSub candidates asked at once in a repair.
const MAX_FANOUT: usize = 8;
/// Most RanSub candidates asked over one repair.
const MAX_DIRECT: usize = 16;
/// Direct joins a node verifies at once; more are refused.
const MAX_VERIFYING: usize = 12;
/// Joiners a detached top remembers vouching for (see `Busy::vouched`).
const MAX_VOUCHED: usize = 16;
/// Depth down to which a member always takes leaves itself when it has room, whatever the
/// population (see `Tree::on_leaf`): a leaf asked deeper climbs at most to here while RanSub's
/// count is not known yet, so a cold build's joins spread over the top levels' subtrees instead
/// of all reaching the root.
const PLACING_DEPTH: u16 = 2;
/// Broadcast ids remembered during a move's grace (see [`Left`]).
const MAX_LEFT_SEEN: usize = 4;

/// The parent a move left, during the grace after the move (`Config::repair_timeout`): we are
/// still its child there until we send it `Remove`, and take its broadcasts as well as the new
/// parent's, each id once.
#[derive(Debug)]
struct Left {
    peer: NodeId,
    until: Instant,
    /// Broadcasts taken during the grace. At most [`MAX_LEFT_SEEN`].
    seen: smallvec::SmallVec<[u64; MAX_LEFT_SEEN]>,
}

/// Levels below the ideal depth (see `join::ideal_depth`) at which a member with children still
/// stays where it is; deeper, it moves its subtree up (see `Tree::rebalance`). With the members
/// of a cold build placed at most one level below the ideal depth, a tree whose members with
/// children all sit within this slack is at most `MOVE_SLACK + 1` levels deeper than a fresh one.
const MOVE_SLACK: u16 = 2;
/// Join candidates of a repair's ordinary round asked at once (see [`Tree::hedge`]).
const MAX_HEDGED: usize = 4;
/// Longest verification walk (hops up a parent chain) before it is refused.
const MAX_ROUTE: usize = 64;
/// Members of its RanSub views a joining node adds to each round's candidates.
const VIEW_CANDIDATES: usize = 4;
/// Most backbone contacts (the root's children) a node remembers.
const MAX_TOP: usize = 8;
/// Recently unreachable peers remembered (tried last when joining).
const MAX_SUSPECTS: usize = 8;
/// Rounds of joining, every candidate refusing, after which a detached top (a node with a
/// subtree that lost its parent; not a fresh joiner) roots its fragment anyway. Refusals come from nodes that are not placing joins:
/// members of a fragment whose own top is detached, restarted nodes still joining. Two detached
/// tops waiting for each other's fragment would otherwise wait forever; as roots, their probes
/// merge them.
const REFUSED_ROUNDS: u8 = 4;

/// Where a node stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TreeState {
    /// Created; no `Join` command yet.
    Idle,
    /// Looking for a parent (first join, or after losing its parent). Refuses joins.
    Joining,
    /// In a tree: has a parent, or is a root.
    Joined,
    /// Left the overlay.
    Left,
}

/// Children: a plain vector, so that leaves (most nodes) carry no inline array.
type Children = Vec<NodeId>;

#[derive(Debug)]
pub(crate) struct Tree {
    me: NodeId,
    state: TreeState,
    root: Option<NodeId>,
    parent: Option<NodeId>,
    /// Our ancestors, root first, parent last (empty at a root). Bound: [`crate::wire::MAX_LIST`].
    path: Vec<NodeId>,
    children: Children,
    /// Changes whenever `children` does: a batch's run to the children is for one version.
    children_version: u64,
    /// The root's other children; meaningful while our parent is the root.
    siblings: Vec<NodeId>,
    /// Known members, for recovery and probes. At most `Config::max_peers`.
    peers: Vec<NodeId>,
    /// The root's children as last heard: the tree's backbone, contacts for recovery and probes.
    /// At most [`MAX_TOP`].
    top: Vec<NodeId>,
    /// Peers that recently failed to connect, tried last. At most [`MAX_SUSPECTS`], oldest dropped.
    suspects: Vec<NodeId>,
    /// Set when the parent changes; the node resets RanSub's collect on it.
    parent_changed: bool,
    /// What we hold only while busy (joining, repairing, electing, verifying, moving,
    /// probing): boxed, and freed once idle.
    busy: Lazy<Busy>,
    /// When to probe next for other trees (a root's rounds, a member's sparse probes).
    probe_at: Option<Instant>,
    /// The peer our last probe went to; only that peer's answer is acted on.
    probing: Option<NodeId>,
    /// After a move: the parent we left, still taken broadcasts from until we tell it (see
    /// [`Left`]). Boxed: rare, and `None` costs a pointer.
    left: Option<Box<Left>>,
}

impl Tree {
    pub fn new(me: NodeId) -> Self {
        Tree {
            me,
            state: TreeState::Idle,
            root: None,
            parent: None,
            path: Vec::new(),
            children: Children::new(),
            children_version: 0,
            siblings: Vec::new(),
            peers: Vec::new(),
            suspects: Vec::new(),
            top: Vec::new(),
            parent_changed: false,
            busy: Lazy::default(),
            probe_at: None,
            probing: None,
            left: None,
        }
    }

    /// Heap bytes this tree's lists hold (capacities), for the simulator's memory report.
    pub fn heap_bytes(&self) -> usize {
        let ids = self.path.capacity()
            + self.children.capacity()
            + self.siblings.capacity()
            + self.peers.capacity()
            + self.top.capacity()
            + self.suspects.capacity();
        ids * core::mem::size_of::<NodeId>()
            + self.busy.get().map_or(0, |b| core::mem::size_of::<Busy>() + b.heap_bytes())
            + self.left.as_ref().map_or(0, |_| core::mem::size_of::<Left>())
    }

    /// Free the busy state once nothing in it is set (after every input).
    #[inline]
    pub fn trim(&mut self) {
        self.busy.trim();
    }

    pub fn state(&self) -> TreeState {
        self.state
    }
    pub fn parent(&self) -> Option<NodeId> {
        self.parent
    }
    pub fn root(&self) -> Option<NodeId> {
        self.root
    }
    pub fn is_root(&self) -> bool {
        self.state == TreeState::Joined && self.parent.is_none()
    }
    pub fn children(&self) -> &[NodeId] {
        &self.children
    }
    pub fn siblings(&self) -> &[NodeId] {
        &self.siblings
    }
    pub fn peers(&self) -> &[NodeId] {
        &self.peers
    }
    pub fn depth(&self) -> u16 {
        self.path.len().min(u16::MAX as usize) as u16
    }

    pub fn next_timeout(&self) -> Option<Instant> {
        let mut next = self.busy.join_at;
        let left = self.left.as_ref().map(|l| l.until);
        for t in [
            self.busy.hedge_at,
            self.busy.direct_at,
            self.probe_at,
            self.busy.move_at,
            self.busy.moving.map(|m| m.1),
            left,
        ]
        .into_iter()
        .flatten()
        .chain(self.busy.verifying.iter().map(|v| v.1))
        {
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        next
    }

    /// What RanSub needs to know of our place.
    pub fn place_info(&self, max_children: usize) -> Place<'_> {
        Place {
            joined: self.state == TreeState::Joined,
            parent: self.parent,
            children: &self.children,
            depth: self.depth(),
            free: max_children.saturating_sub(self.children.len()).min(255) as u8,
        }
    }

    /// Whether we have tree links to keep alive with heartbeats.
    pub fn has_relations(&self) -> bool {
        self.parent.is_some() || !self.children.is_empty()
    }

    /// Whether [`Tree::take_parent_changed`] would say so.
    pub fn parent_changed(&self) -> bool {
        self.parent_changed
    }

    /// Whether the parent changed since the last call.
    pub fn take_parent_changed(&mut self) -> bool {
        core::mem::take(&mut self.parent_changed)
    }

    // ----- commands -------------------------------------------------------------------------

    pub fn start(&mut self, ctx: &mut Ctx<'_>, bootstrap: &[NodeId]) -> Result<(), CommandError> {
        match self.state {
            TreeState::Idle => {}
            TreeState::Left => return Err(CommandError::Left),
            _ => return Err(CommandError::AlreadyStarted),
        }
        for &p in bootstrap {
            self.add_peer(ctx, p);
        }
        if self.peers.is_empty() {
            self.become_root(ctx);
        } else {
            self.state = TreeState::Joining;
            self.begin_round(ctx, bootstrap);
        }
        Ok(())
    }

    pub fn leave(&mut self, ctx: &mut Ctx<'_>) -> Result<(), CommandError> {
        if self.state == TreeState::Left {
            return Err(CommandError::Left);
        }
        let was_root = self.is_root();
        let related: Children = self.parent.iter().chain(self.children.iter()).copied().collect();
        for peer in related {
            ctx.send(peer, TreeMsg::Leave);
            ctx.close(&peer);
        }
        for peer in core::mem::take(&mut self.busy.contacted) {
            ctx.release(&peer);
        }
        self.children.clear();
        self.children_version += 1;
        self.siblings.clear();
        self.busy.candidates.clear();
        self.parent = None;
        self.root = None;
        self.busy.target = None;
        self.busy.failover = None;
        self.busy.join_at = None;
        self.probe_at = None;
        self.state = TreeState::Left;
        if was_root {
            ctx.event(Event::StoppedBeingRoot);
        }
        ctx.event(Event::Left);
        Ok(())
    }

    pub fn add_peers(&mut self, ctx: &mut Ctx<'_>, peers: &[NodeId]) -> Result<(), CommandError> {
        if self.state == TreeState::Left {
            return Err(CommandError::Left);
        }
        for &p in peers {
            self.add_peer(ctx, p);
        }
        Ok(())
    }

    /// Stop retrying these hosts (the controller declared them failed): drop them from every
    /// list of contacts.
    /// The backbone and siblings are left alone: they are refreshed from the tree itself, and a
    /// host failed by the controller may still be a live member cut off for a while.
    pub fn forget(&mut self, gone: &crate::NodeSet) {
        self.peers.retain(|p| !gone.contains(p));
        self.suspects.retain(|p| !gone.contains(p));
        self.busy.candidates.retain(|(p, _)| !gone.contains(p));
    }

    pub fn broadcast(&mut self, ctx: &mut Ctx<'_>, id: u64) -> Result<(), CommandError> {
        if !self.is_root() {
            return Err(CommandError::NotRoot);
        }
        if let Some(frame) = ctx.encode(TreeMsg::Broadcast { id, filler: Filler::default() }) {
            for &c in &self.children {
                ctx.send_frame(c, frame.clone());
            }
        }
        ctx.event(Event::BroadcastReply { id, node: self.me });
        Ok(())
    }

    // ----- input ----------------------------------------------------------------------------

    /// One decoded tree message; `raw` is its payload as received, for verbatim relaying.
    pub fn on_message(&mut self, ctx: &mut Ctx<'_>, from: NodeId, msg: TreeMsg, raw: &[u8]) {
        if self.state == TreeState::Left {
            return;
        }
        match msg {
            TreeMsg::Join { joiner, mode, hops } => self.on_join(ctx, from, joiner, mode, hops),
            TreeMsg::JoinAccept { path, top, siblings, direct } => {
                self.on_accept(ctx, from, path, &top, siblings, direct)
            }
            TreeMsg::JoinReject => self.on_reject(ctx, from),
            TreeMsg::Remove => self.on_remove(ctx, from),
            TreeMsg::Siblings { list } => {
                if self.parent == Some(from) && self.root == Some(from) {
                    self.set_siblings(&list);
                }
            }
            TreeMsg::RootInfo { path, top } => {
                if self.parent != Some(from) {
                    return;
                }
                if path.last() != Some(&from) || path.contains(&self.me) {
                    // A path through ourselves: our parent is below us. Drop it and rejoin.
                    ctx.send(from, TreeMsg::Remove);
                    self.parent_lost(ctx, true);
                    return;
                }
                self.set_top(&top);
                self.set_path(ctx, &path);
            }
            TreeMsg::Probe { root } => self.on_probe(ctx, from, root),
            TreeMsg::ProbeReply { root } => self.on_probe_reply(ctx, from, root),
            TreeMsg::Leave => self.on_link_down(ctx, from, false),
            TreeMsg::Broadcast { id, .. } => self.on_broadcast(ctx, &from, id, raw),
            TreeMsg::Heartbeat => {}
            TreeMsg::Closing => {
                if self.state == TreeState::Joining
                    && self.busy.in_direct
                    && self.busy.direct.contains(&from)
                    && !self.busy.closing.contains(&from)
                {
                    self.busy.closing.push(from);
                }
            }
            TreeMsg::Verify { joiner, route } => self.on_verify(ctx, from, joiner, route),
            TreeMsg::VerifyOk { joiner, route } => self.on_verified(ctx, from, joiner, route, true),
            TreeMsg::VerifyFail { joiner, route } => self.on_verified(ctx, from, joiner, route, false),
            TreeMsg::BroadcastReply { id, node } => {
                if !self.children.contains(&from) {
                    return;
                }
                match self.parent {
                    Some(p) => ctx.relay_up(p, raw),
                    None if self.state == TreeState::Joined => ctx.event(Event::BroadcastReply { id, node }),
                    None => {}
                }
            }
        }
    }

    /// A broadcast (`raw` as received): passed on to the children, answered up. Called
    /// straight from the node's dispatch (a relay's most frequent message: no `TreeMsg` moved).
    #[inline]
    pub fn on_broadcast(&mut self, ctx: &mut Ctx<'_>, from: &NodeId, id: u64, raw: &[u8]) {
        // `from` by reference: a copy of the 18 bytes per call was read back in other widths
        // than written, a store-forwarding stall on every broadcast.
        if self.state != TreeState::Joined {
            return;
        }
        if (self.parent.as_ref() != Some(from) || self.left.is_some()) && !self.moving_broadcast(from, id) {
            return;
        }
        ctx.relay_down(&self.children, self.children_version, raw);
        ctx.reply_up(from, id);
    }

    /// The link to `peer` is gone: `failed` if it never opened.
    pub fn on_link_down(&mut self, ctx: &mut Ctx<'_>, peer: NodeId, failed: bool) {
        if failed {
            self.suspect(peer);
        }
        if self.children.contains(&peer) {
            self.remove_child(ctx, peer);
        }
        if self.is_root() && self.probing == Some(peer) {
            // The probed peer is gone: the round goes on.
            self.probe_next(ctx);
        }
        if self.parent == Some(peer) {
            self.parent_lost(ctx, false);
        } else if self.state == TreeState::Joining {
            // A candidate whose link failed to open, or was reset, is dead or unreachable: the
            // wave goes on without it. But a link also closes under a live node: a candidate in
            // many views (RanSub's views of one epoch share most of their members) takes more
            // joiners at once than its link budget holds and closes the least recently used,
            // ours among them, while it verifies us or after it passed us down to a child. It
            // says so first (`Closing`); its answer, or its child's, may still come, and the
            // wave waits for it until its timeout. (Read as a death, that close sent most
            // subtree orphans of a 1,000,000-node repair to the root; waiting on every close
            // made a crash cost a whole wave.)
            if self.busy.in_direct && self.busy.direct.contains(&peer) {
                let said_closing = self.busy.closing.contains(&peer);
                self.busy.closing.retain(|c| *c != peer);
                if failed || !said_closing {
                    self.direct_answered(ctx, peer);
                }
            }
            if self.busy.asked.contains(&peer) {
                self.failover_answered(ctx, peer);
            }
            if self.busy.target == Some(peer) {
                self.try_next(ctx);
            } else if self.hedged_gone(peer) && self.busy.target.is_none() && self.busy.hedged.is_empty() {
                // The round waited for this last hedged candidate: go on.
                self.try_next(ctx);
            }
        }
    }

    pub fn on_timeout(&mut self, ctx: &mut Ctx<'_>) {
        if self.busy.hedge_at.is_some_and(|t| t <= ctx.now) {
            self.busy.hedge_at = None;
            self.hedge(ctx);
        }
        if self.busy.direct_at.is_some_and(|t| t <= ctx.now) {
            self.busy.direct_at = None;
            if self.state == TreeState::Joining && self.busy.in_direct {
                // The RanSub candidates were too slow: next wave, or the ordinary round.
                ctx.io.stats.repair_waves_timed_out += 1;
                self.end_direct_wave(ctx);
            }
        }
        if self.busy.join_at.is_some_and(|t| t <= ctx.now) {
            self.busy.join_at = None;
            if self.state == TreeState::Joining {
                if !self.busy.asked.is_empty() {
                    // The siblings still unanswered are as good as silent, but for one we
                    // heard from since we asked (its process took our connection, say): it is
                    // alive and passed our join on, to a child of its when it is the new root
                    // and full, and that answer was lost (the child it picked had just left
                    // it). We are then not the lowest survivor: the round goes on through the
                    // backbone, the new root among it. (Taken for silent, such a sibling made
                    // us a second root, and the tree stayed split until a probe merged it.)
                    let asked_at = self.busy.asked_at.unwrap_or(ctx.now);
                    if self.busy.asked.iter().any(|s| ctx.io.conns.last_heard(s).is_some_and(|t| t >= asked_at)) {
                        self.busy.answered = true;
                    }
                    self.busy.asked.clear();
                    self.try_next(ctx);
                } else if self.busy.target.is_some() || !self.busy.hedged.is_empty() {
                    self.busy.hedged.clear();
                    // The target stayed silent: next candidate.
                    self.try_next(ctx);
                } else {
                    self.begin_round(ctx, &[]);
                }
            }
        }
        if self.probe_at.is_some_and(|t| t <= ctx.now) {
            self.probe_at = None;
            if self.is_root() {
                self.probe(ctx);
            } else if self.state == TreeState::Joined {
                self.member_probe(ctx);
            }
        }
        if self.busy.moving.is_some_and(|m| m.1 <= ctx.now) {
            // The shallower member did not take us in time: stay, and ask another.
            self.busy.moving = None;
            self.retry_move(ctx);
        }
        if self.busy.move_at.is_some_and(|t| t <= ctx.now) {
            self.busy.move_at = None;
            self.rebalance(ctx);
        }
        if self.left.as_ref().is_some_and(|l| l.until <= ctx.now) {
            self.leave_old_parent(ctx);
        }
        while let Some(i) = self.busy.verifying.iter().position(|v| v.1 <= ctx.now) {
            let (joiner, _) = self.busy.verifying.swap_remove(i);
            self.reject(ctx, joiner);
        }
    }

    // ----- failures -------------------------------------------------------------------------

    fn on_remove(&mut self, ctx: &mut Ctx<'_>, from: NodeId) {
        if self.children.contains(&from) {
            self.remove_child(ctx, from);
        }
        if self.parent == Some(from) {
            // Our parent is alive but does not count us as its child.
            self.parent_lost(ctx, true);
        }
    }

    fn remove_child(&mut self, ctx: &mut Ctx<'_>, child: NodeId) {
        self.children.retain(|c| *c != child);
        self.children_version += 1;
        ctx.unpin(&child, Pin::Child);
        ctx.event(Event::ChildRemoved(child));
        if self.is_root() {
            self.send_siblings(ctx, None);
        }
    }

    /// Our parent failed or left (`alive == false`), or disowned us: keep the subtree and rejoin.
    /// Only the failure of a root starts a failover among its children.
    fn parent_lost(&mut self, ctx: &mut Ctx<'_>, alive: bool) {
        let Some(old) = self.parent.take() else { return };
        if self.path.last() == Some(&old) {
            self.path.pop();
        }
        if !alive {
            // Dead or gone: whatever else names it (the backbone, RanSub's views, our peers),
            // it is tried last, after every live contact, and never asked directly.
            self.suspect(old);
        }
        ctx.unpin(&old, Pin::Parent);
        ctx.event(Event::ParentChanged(None));
        self.parent_changed = true;
        self.busy.repairing = true;
        // A move under way is now an ordinary repair: its candidate's accept still counts.
        self.busy.moving = None;
        self.busy.move_at = None;
        self.busy.direct_sent.clear();
        self.state = TreeState::Joining;
        self.probe_at = None;
        if self.root == Some(old) && !alive {
            self.busy.failover = Some(old);
            self.root = None;
        }
        self.begin_round(ctx, &[]);
    }

    fn become_root(&mut self, ctx: &mut Ctx<'_>) {
        let was_root = self.is_root();
        let fresh = ctx.now - Self::held_for(ctx.cfg);
        let held: Vec<NodeId> =
            core::mem::take(&mut self.busy.held).into_iter().filter(|h| h.1 >= fresh).map(|h| h.0).collect();
        // Their links are idle since they asked: pinned now, so that what we send below (new
        // links to the controller, to children) does not evict them before they are children.
        for joiner in &held {
            ctx.pin(*joiner, Pin::Child);
        }
        self.state = TreeState::Joined;
        if let Some(p) = self.parent.take() {
            ctx.unpin(&p, Pin::Parent);
            ctx.event(Event::ParentChanged(None));
        }
        self.parent_changed = true;
        self.end_attempt();
        self.busy.failover = None;
        self.busy.candidates = Vec::new();
        self.busy.target = None;
        self.busy.join_at = None;
        self.siblings.clear();
        for peer in core::mem::take(&mut self.busy.contacted) {
            // A sibling we asked and also refused stays: it becomes our child below.
            if !held.contains(&peer) {
                ctx.release(&peer);
            }
        }
        if !was_root {
            ctx.event(Event::BecameRoot);
        }
        self.adopt_path(ctx, &[], true);
        self.send_siblings(ctx, None);
        self.busy.probe_round.clear();
        self.probing = None;
        self.busy.probe_gap = ctx.cfg.first_probe;
        self.arm_probe(ctx);
        // The siblings we refused while electing: we are the new root they were looking for.
        for joiner in held {
            if joiner != self.me && !self.children.contains(&joiner) && self.children.len() < ctx.cfg.degree() {
                self.accept_child(ctx, joiner, false);
            } else if !self.children.contains(&joiner) {
                ctx.unpin(&joiner, Pin::Child);
            }
        }
    }

    /// How long a refused failover joiner is held: until we would have seen the old root dead
    /// (`dead_after`) and asked our own lower siblings (`connect_timeout + repair_timeout`).
    fn held_for(cfg: &crate::Config) -> core::time::Duration {
        cfg.dead_after + cfg.connect_timeout + cfg.repair_timeout
    }

    /// Remember `peer` as recently unreachable (tried last when joining, never asked directly).
    fn suspect(&mut self, peer: NodeId) {
        if !self.suspects.contains(&peer) {
            if self.suspects.len() == MAX_SUSPECTS {
                self.suspects.remove(0);
            }
            self.suspects.push(peer);
        }
    }

    // ----- shared bookkeeping ---------------------------------------------------------------

    fn set_siblings(&mut self, list: &[NodeId]) {
        self.siblings.clear();
        self.siblings.extend(list.iter().copied().filter(|s| *s != self.me).take(crate::wire::MAX_LIST));
        // Our siblings are the backbone; remember them beyond a failover, for probes.
        self.set_top(list);
    }

    /// Tell the children (if we are a root) who their siblings are.
    fn send_siblings(&mut self, ctx: &mut Ctx<'_>, except: Option<NodeId>) {
        if !self.is_root() || self.children.is_empty() {
            return;
        }
        if let Some(frame) = ctx.encode(TreeMsg::Siblings { list: List(self.children.to_vec()) }) {
            for &c in self.children.iter().filter(|c| Some(**c) != except) {
                ctx.send_frame(c, frame.clone());
            }
        }
    }

    /// Adopt `path` (root first, parent last; empty at a root) and tell the children if it changed.
    fn set_path(&mut self, ctx: &mut Ctx<'_>, path: &[NodeId]) {
        self.adopt_path(ctx, path, false);
    }

    /// [`Tree::set_path`], telling the children even when nothing seems to have changed: after a
    /// re-attachment, children taken while we were detached hold a path we never had.
    fn adopt_path(&mut self, ctx: &mut Ctx<'_>, path: &[NodeId], force: bool) {
        // Callers checked what came from the network: a node is never its own ancestor, and the
        // path ends at its parent (a root's is empty).
        debug_assert!(!path.contains(&self.me), "{} in its own path {path:?}", self.me);
        debug_assert_eq!(path.last(), self.parent.as_ref(), "{}: a path that does not end at the parent", self.me);
        let root = path.first().copied().unwrap_or(self.me);
        let root_changed = self.root != Some(root);
        if root_changed {
            ctx.event(Event::RootChanged(root));
        }
        self.root = Some(root);
        if self.path == path && !root_changed && !force {
            return;
        }
        self.path.clear();
        self.path.extend_from_slice(path);
        if let (TreeState::Joined, Some(p)) = (self.state, self.parent) {
            // Our chain changed: a verification we sent up may have been lost with a dead
            // ancestor (it forwarded it before it died, or before its own parent was seen dead).
            // Ask again along the new chain rather than make the joiner wait `repair_timeout`;
            // a second answer finds nothing waiting and is dropped.
            for &(joiner, _) in &self.busy.verifying {
                ctx.send(p, TreeMsg::Verify { joiner, route: List(vec![self.me]) });
            }
        }
        self.arm_move(ctx);
        if !self.children.is_empty() {
            let mut down = Vec::with_capacity(path.len() + 1);
            down.extend_from_slice(path);
            down.push(self.me);
            let top = List(self.top_view());
            if let Some(frame) = ctx.encode(TreeMsg::RootInfo { path: List(down), top }) {
                for &c in &self.children {
                    ctx.send_frame(c, frame.clone());
                }
            }
        }
    }

    /// The depth past which a member with children moves its subtree up, once RanSub counted
    /// the population (see [`MOVE_SLACK`]).
    fn move_limit(&self, ctx: &Ctx<'_>) -> Option<u16> {
        (ctx.population > 0).then(|| join::ideal_depth(ctx.population, ctx.cfg.degree()) + MOVE_SLACK)
    }

    /// Whether our subtree sits too deep: we are a joined member with children below the
    /// move limit.
    fn too_deep(&self, ctx: &Ctx<'_>) -> bool {
        self.state == TreeState::Joined
            && self.parent.is_some()
            && !self.children.is_empty()
            && self.move_limit(ctx).is_some_and(|l| self.depth() > l)
    }

    /// After our path changed: if our subtree sits too deep, look for a shallower place a
    /// RanSub epoch later. The deeper we are, the later, so that the highest of a deep chain
    /// moves first and takes the rest up with it.
    fn arm_move(&mut self, ctx: &mut Ctx<'_>) {
        if self.busy.move_at.is_some() || self.busy.moving.is_some() || !self.too_deep(ctx) {
            return;
        }
        let over = self.depth().saturating_sub(self.move_limit(ctx).unwrap_or(0)).min(8);
        // Not before a RanSub epoch has passed: the repair that left us deep is over by then
        // (a move is no repair: the tree is whole meanwhile), and the views name shallow
        // members with room as they are after it.
        let wait =
            ctx.cfg.ransub_epoch + ctx.cfg.repair_timeout.mul_f64(f64::from(over) + ctx.rng.random_range(0.0..1.0));
        self.busy.move_at = Some(ctx.now + wait);
    }

    /// A move failed: ask another candidate a little later (one ask at a time, about one a
    /// second, for as long as we sit too deep).
    pub(super) fn retry_move(&mut self, ctx: &mut Ctx<'_>) {
        self.busy.move_at = Some(ctx.now + ctx.cfg.repair_timeout.mul_f64(2.0 + ctx.rng.random_range(0.0..1.0)));
    }

    /// Whether we are in the quiet part of a RanSub epoch: our collect went up less than half
    /// an epoch ago, so a new parent loses nothing of this epoch's count (our subtree is in the
    /// old parent's), and the move is over well before the next distribute.
    fn quiet_for_moves(&self, ctx: &Ctx<'_>) -> bool {
        ctx.collected_at.is_some_and(|t| ctx.now < t + ctx.cfg.ransub_epoch / 2)
    }

    /// Move our subtree up: ask a random RanSub candidate with a free slot, one level above the
    /// move limit or higher, to take us directly. It verifies its chain up to the root like any
    /// direct join, so it is not below us; we keep our parent until it accepts (see
    /// `Tree::on_accept`), and leave that parent with `Remove` then. Rebalancing never detaches
    /// anything: a move that fails leaves the tree as it was.
    pub(super) fn rebalance(&mut self, ctx: &mut Ctx<'_>) {
        if !self.too_deep(ctx) {
            return;
        }
        if !self.quiet_for_moves(ctx) {
            self.busy.move_at = Some(ctx.now + ctx.cfg.ransub_epoch / 4);
            return;
        }
        // A place from which we sit no deeper than the limit: one level above it, or higher.
        let highest = self.move_limit(ctx).unwrap_or(0).saturating_sub(1);
        let usable = |e: &&crate::wire::Entry| {
            e.free > 0
                && e.depth <= highest
                && e.id != self.me
                && Some(e.id) != self.parent
                && !self.children.contains(&e.id)
                && !self.suspects.contains(&e.id)
        };
        // A random one: a retry after a stale candidate refused asks another.
        let n = ctx.nondesc.iter().chain(ctx.all.iter()).filter(usable).count();
        let pick = if n == 0 { None } else { Some(ctx.rng.random_range(0..n)) };
        let Some(x) = pick.and_then(|k| ctx.nondesc.iter().chain(ctx.all.iter()).filter(usable).nth(k)).map(|e| e.id)
        else {
            // Nobody shallow with room in this epoch's views: look again with the next.
            self.busy.move_at = Some(ctx.now + ctx.cfg.ransub_epoch);
            return;
        };
        ctx.io.stats.moves_asked += 1;
        self.busy.moving = Some((x, ctx.now + ctx.cfg.repair_timeout * 2));
        ctx.send(x, TreeMsg::Join { joiner: self.me, mode: JoinMode::Direct, hops: 0 });
    }

    /// A broadcast just after a move: taken from the new parent or the one we left (whichever
    /// forwarded it; one that reached the new parent before it took us may reach the old one
    /// after we left), once each.
    fn moving_broadcast(&mut self, from: &NodeId, id: u64) -> bool {
        let Some(l) = self.left.as_mut() else { return false };
        if *from != l.peer && self.parent.as_ref() != Some(from) || l.seen.contains(&id) {
            return false;
        }
        if l.seen.len() < MAX_LEFT_SEEN {
            l.seen.push(id);
        }
        true
    }

    /// The grace after a move is over: tell the parent we left that we are not its child.
    fn leave_old_parent(&mut self, ctx: &mut Ctx<'_>) {
        let Some(l) = self.left.take() else { return };
        if Some(l.peer) != self.parent {
            ctx.send(l.peer, TreeMsg::Remove);
            ctx.release(&l.peer);
        }
    }

    /// The member we asked to take us (see [`Tree::rebalance`]) accepted: take it as our
    /// parent. The old one keeps us as a child for [`Left`]'s grace (what it was sending us
    /// still comes), then hears `Remove`. The caller checked the path.
    pub(super) fn moved(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: NodeId,
        path: &[NodeId],
        top: &[NodeId],
        siblings: &[NodeId],
    ) {
        self.busy.moving = None;
        self.leave_old_parent(ctx);
        if let Some(old) = self.parent.replace(from) {
            ctx.unpin(&old, Pin::Parent);
            let until = ctx.now + ctx.cfg.repair_timeout;
            self.left = Some(Box::new(Left { peer: old, until, seen: smallvec::SmallVec::new() }));
        }
        ctx.io.stats.moves += 1;
        self.parent_changed = true;
        ctx.pin(from, Pin::Parent);
        ctx.event(Event::ParentChanged(Some(from)));
        self.siblings.clear();
        if path.first() == Some(&from) {
            self.set_siblings(siblings);
        }
        self.set_top(top);
        self.adopt_path(ctx, path, true);
    }

    /// The root's children as we know them, for our children.
    fn top_view(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = if self.is_root() {
            self.children.to_vec()
        } else if self.parent.is_some() && self.parent == self.root {
            self.siblings.iter().copied().chain(core::iter::once(self.me)).collect()
        } else {
            self.top.clone()
        };
        v.truncate(MAX_TOP);
        v
    }

    fn set_top(&mut self, top: &[NodeId]) {
        self.top.clear();
        self.top.extend(top.iter().copied().filter(|p| *p != self.me).take(MAX_TOP));
    }

    fn add_peer(&mut self, ctx: &mut Ctx<'_>, p: NodeId) {
        if p == self.me || self.peers.contains(&p) || ctx.cfg.max_peers == 0 {
            return;
        }
        if self.peers.len() < ctx.cfg.max_peers {
            self.peers.push(p);
        } else {
            let i = ctx.rng.random_range(0..self.peers.len());
            self.peers[i] = p;
        }
    }
}

pub(crate) fn shuffle<T>(ctx: &mut Ctx<'_>, v: &mut [T]) {
    for i in (1..v.len()).rev() {
        let j = ctx.rng.random_range(0..=i);
        v.swap(i, j);
    }
}
