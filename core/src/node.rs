//! `Node`: one Plush client as a sans-IO state machine.
//!
//! The driver feeds it one input per call (`handle_*`), then drains [`Node::poll_output`] until
//! it returns `None`, and calls [`Node::handle_timeout`] at [`Node::poll_timeout`]. `Node` itself
//! only decodes frames, routes them to the protocol module of their layer, and owns what the
//! modules share: the connection table, the frame pool, the output queue, the RNG and the stats.

use crate::batch::Outbox;
use crate::config::Config;
use crate::conn::{Admit, ConnTable, LinkState, Received};
use crate::contract::{
    Command, CommandError, Event, InputError, LaunchResult, LinkEvent, Machine, Output, ProcessEvent, Stats,
};
use crate::control::Control;
use crate::ctx::{Ctx, Io};
use crate::frame::{encode_once, split_frame, Frame, FramePool};
use crate::id::NodeId;
use crate::ransub::{Entry, Place, RanSub};
use crate::time::Instant;
use crate::tree::{Tree, TreeState};
use crate::wire::{InPlace, Message, Role, TreeMsg};
use rand::SeedableRng;
use rand_pcg::Pcg32;
use smallvec::SmallVec;
use std::rc::Rc;

/// One Plush client: RandTree membership and RanSub views over a table of links.
///
/// Memory: a fixed part (about a kilobyte) plus one entry per link (at most
/// [`Config::max_links`]), per known peer (at most [`Config::max_peers`]), per RanSub entry (two
/// views and one set per child, each at most [`Config::ransub_size`]) and per queued output;
/// outputs are drained after every call.
pub struct Node {
    me: NodeId,
    /// Shared, so that a simulator's thousands of nodes keep one copy.
    cfg: Rc<Config>,
    rng: Pcg32,
    io: Io,
    tree: Tree,
    ransub: RanSub,
    sweep_at: Option<Instant>,
    /// Next heartbeat check, while pinned links exist.
    tick_at: Option<Instant>,
    /// The heartbeat frame (constant), once encoded.
    heartbeat: Option<Frame>,
    control: Control,
}

impl Node {
    /// A node with identity `id`, seeded RNG, created at `now`. It does nothing until
    /// [`Command::Join`]. `cfg` is a [`Config`] or an `Rc<Config>` shared with other nodes.
    pub fn new(id: NodeId, cfg: impl Into<Rc<Config>>, seed: u64, now: Instant) -> Self {
        let cfg: Rc<Config> = cfg.into();
        Node {
            me: id,
            rng: Pcg32::seed_from_u64(seed),
            io: Io {
                out: Outbox::default(),
                conns: ConnTable::new(cfg.max_links),
                pool: FramePool::default(),
                stats: Stats::default(),
                refused: SmallVec::new(),
                news: SmallVec::new(),
            },
            tree: Tree::new(id),
            ransub: RanSub::default(),
            sweep_at: None,
            tick_at: None,
            heartbeat: None,
            // A new client has no link yet: its idle clock starts now.
            control: Control::new(id, now),
            cfg,
        }
    }

    /// Run `f` on the control plane, with the tree.
    fn with_control<R>(&mut self, now: Instant, f: impl FnOnce(&mut Control, &mut Tree, &mut Ctx<'_>) -> R) -> R {
        let (mut ctx, tree, control) = self.split(now);
        f(control, tree, &mut ctx)
    }

    /// A context that sees the RanSub views, beside the tree and the control plane it serves.
    fn split(&mut self, now: Instant) -> (Ctx<'_>, &mut Tree, &mut Control) {
        let ctx = Ctx {
            now,
            me: self.me,
            cfg: &self.cfg,
            rng: &mut self.rng,
            io: &mut self.io,
            nondesc: self.ransub.nondesc(),
            all: self.ransub.all(),
            population: self.ransub.population(),
            collected_at: self.ransub.collected_at(),
        };
        (ctx, &mut self.tree, &mut self.control)
    }

    /// Tell the control plane what the tree did during this call (parents, children, root), and
    /// what it did in turn while the control plane handled that.
    fn tree_news(&mut self, now: Instant) {
        loop {
            let news = core::mem::take(&mut self.io.news);
            if news.is_empty() || self.control.exited {
                return;
            }
            let was_root = news.contains(&Event::StoppedBeingRoot);
            let attached = news.iter().any(|e| matches!(e, Event::ParentChanged(Some(_))));
            for e in news {
                self.with_control(now, |c, tree, ctx| match e {
                    Event::ParentChanged(Some(_)) => c.on_attached(ctx, tree, was_root),
                    Event::BecameRoot => c.on_became_root(ctx, tree),
                    Event::StoppedBeingRoot if !attached => c.on_attached_nowhere(ctx),
                    Event::ChildAdded(child) => c.on_child_added(ctx, child),
                    Event::ChildRemoved(child) => c.on_child_removed(ctx, tree, child),
                    _ => {}
                });
            }
        }
    }

    /// Run `f` on the tree with a context that sees the RanSub views.
    fn with_tree<R>(&mut self, now: Instant, f: impl FnOnce(&mut Tree, &mut Ctx<'_>) -> R) -> R {
        let (mut ctx, tree, _) = self.split(now);
        f(tree, &mut ctx)
    }

    /// Run `f` on RanSub with the tree's current place.
    fn with_ransub(&mut self, now: Instant, f: impl FnOnce(&mut RanSub, &mut Ctx<'_>, &Place<'_>)) {
        let mut ctx = Ctx::bare(now, self.me, &self.cfg, &mut self.rng, &mut self.io);
        let place = self.tree.place_info(self.cfg.degree());
        f(&mut self.ransub, &mut ctx, &place);
    }

    /// After every input: refused links reach the tree, the control plane hears what the tree
    /// did, timers are re-armed.
    #[inline]
    fn after(&mut self, now: Instant) {
        self.tree.trim();
        self.control.trim();
        // Most inputs (every frame a relay passes on) leave all of it as it was.
        let quiet = self.io.refused.is_empty()
            && self.io.news.is_empty()
            && !self.tree.parent_changed()
            && self.control.idle_settled(self.io.conns.len())
            && (!self.io.conns.sweep_wanted || self.sweep_at.is_some())
            && !self.io.conns.pinned_since_tick
            && self.tick_at.is_some();
        if !quiet {
            self.after_all(now);
        }
    }

    #[inline(never)]
    fn after_all(&mut self, now: Instant) {
        while let Some(peer) = self.io.refused.pop() {
            self.with_tree(now, |tree, ctx| tree.on_link_down(ctx, peer, true));
        }
        self.tree_news(now);
        self.control.after(now, self.io.conns.len());
        if self.tree.take_parent_changed() {
            let detached = self.tree.parent().is_none() && !self.tree.is_root();
            self.control.note_detached(now, detached);
            // Joined, re-attached or became root: RanSub's collect restarts and the root's epoch
            // timer follows root-ness.
            self.ransub.reset();
            self.with_ransub(now, |r, ctx, place| {
                r.sync(ctx, place);
                if let Some(p) = place.parent.filter(|_| place.joined) {
                    r.new_parent(ctx, p);
                }
            });
        }
        if self.io.conns.sweep_wanted && self.sweep_at.is_none() {
            self.sweep_at = Some(now + self.cfg.link_idle);
            self.io.conns.sweep_wanted = false;
        }
        let pinned = core::mem::take(&mut self.io.conns.pinned_since_tick);
        if pinned || self.tick_at.is_none() {
            // A new relation is due its first heartbeat within an interval. A root's link to the
            // controller is one too (the root leads its heartbeats), also when the root has no
            // parent or child: a lone root that never ticked left the link silent, and the
            // controller dropped it after `dead_after`.
            if pinned || self.tree.has_relations() {
                let due = now + self.cfg.heartbeat;
                self.tick_at = Some(self.tick_at.map_or(due, |t| t.min(due)));
            }
        }
    }

    /// The heartbeat frame, encoded once and shared by every heartbeat this node sends.
    fn heartbeat_frame(&mut self) -> Option<Frame> {
        if self.heartbeat.is_none() {
            self.heartbeat = encode_once(&Message::Tree(TreeMsg::Heartbeat));
        }
        self.heartbeat.clone()
    }

    /// Heartbeats: write to quiet tree links, fail silent ones.
    fn tick(&mut self, now: Instant) {
        let (mut dead, mut quiet) = (Vec::new(), Vec::new());
        self.tick_at = self.io.conns.liveness(now, self.cfg.heartbeat, self.cfg.dead_after, &mut dead, &mut quiet);
        if !quiet.is_empty() {
            if let Some(frame) = self.heartbeat_frame() {
                for peer in quiet {
                    self.io.stats.heartbeats += 1;
                    self.io.stats.frames_out += 1;
                    self.io.out.push_back(Output::Transmit { to: peer, frame: frame.clone() });
                }
            }
        }
        for peer in dead {
            self.io.stats.silent_links += 1;
            self.io.conns.remove(&peer);
            self.io.out.push_back(Output::Close(peer));
            self.io.out.push_back(Output::Event(Event::LinkSilent(peer)));
            let related = self.tree.parent() == Some(peer) || self.tree.children().contains(&peer);
            self.with_tree(now, |tree, ctx| tree.on_link_down(ctx, peer, false));
            self.with_control(now, |c, tree, ctx| c.on_peer_lost(ctx, tree, peer, related, false));
        }
    }

    /// A batch starts: the driver read several frames at once and hands them over one by one
    /// with [`Node::handle_frame`] (draining [`Node::poll_output`] after each as always), then
    /// calls [`Node::end_batch`]. Meanwhile the frames a relay passes on in bulk gather into runs,
    /// one buffer per receiver; see [`crate::batch`].
    pub fn begin_batch(&mut self) {
        self.io.out.begin();
    }

    /// The batch ends: its runs are queued as outputs (drain [`Node::poll_output`] next).
    pub fn end_batch(&mut self) {
        self.io.out.end();
    }

    /// One frame's payload (length prefix removed) from `from`.
    ///
    /// Errors leave the node as it was; the driver closes the link to `from`.
    pub fn handle_frame(&mut self, now: Instant, from: NodeId, payload: &[u8]) -> Result<(), InputError> {
        self.frame_in(now, from, payload, &mut None)
    }

    /// [`Node::handle_frame`], with what the frames of one read share (see
    /// [`ConnTable::received_again`]).
    #[inline]
    fn frame_in(
        &mut self,
        now: Instant,
        from: NodeId,
        payload: &[u8],
        memo: &mut Option<Received>,
    ) -> Result<(), InputError> {
        // Matched where it was decoded, not moved out first: the copy read the message back
        // across the decoder's narrower stores, a store-forwarding stall on every frame.
        let mut input = InPlace::new(payload);
        let decoded = input.value::<Message>();
        if let Some(e) = input.check(decoded.is_err()) {
            self.io.stats.decode_errors += 1;
            return Err(InputError::Decode(e));
        }
        if self.control.exited {
            return Ok(());
        }
        let Some(answer) = self.io.conns.received_again(now, &from, self.cfg.heartbeat, memo) else {
            return Err(InputError::NoLink(from));
        };
        self.io.stats.frames_in += 1;
        if answer {
            // Our parent leads the heartbeats on this link; we answer, at most once an interval.
            if let Some(frame) = self.heartbeat_frame() {
                self.io.stats.heartbeats += 1;
                self.io.stats.frames_out += 1;
                self.io.out.push_back(Output::Transmit { to: from, frame });
            }
        }
        match decoded {
            Err(_) => return Ok(()),
            // A heartbeat only refreshes the link, done above: nothing else can have changed.
            Ok(Message::Tree(TreeMsg::Heartbeat)) => return Ok(()),
            // A relay's most frequent message, handed on without its `TreeMsg`.
            Ok(Message::Tree(TreeMsg::Broadcast { id, .. })) => {
                self.with_tree(now, |tree, ctx| tree.on_broadcast(ctx, &from, id, payload))
            }
            Ok(Message::Tree(m)) => self.with_tree(now, |tree, ctx| tree.on_message(ctx, from, m, payload)),
            Ok(Message::RanSub(m)) => self.with_ransub(now, |r, ctx, place| r.on_message(ctx, place, from, m)),
            Ok(Message::Control(m)) => self.with_control(now, |c, tree, ctx| c.on_control(ctx, tree, from, m)),
            Ok(Message::Job(m)) => self.with_control(now, |c, tree, ctx| c.on_job(ctx, tree, from, m, payload)),
        }
        self.after(now);
        Ok(())
    }

    /// The whole frames at the start of `data` (bytes read from `from`'s link, length prefixes
    /// included), taken one by one as [`Node::handle_frame`] takes them, until one leaves an
    /// output for the driver: drain [`Node::poll_output`], then call again with the rest. A
    /// relay in a batch (see [`crate::batch`]) leaves none, so a whole read is one call.
    ///
    /// Returns the bytes taken (whole frames only; the rest is the start of a frame whose
    /// prefix is valid) and the first error. A frame refused by [`Node::handle_frame`] counts as
    /// taken; a prefix announcing more than [`Config::max_frame`] does not (the driver closes the
    /// link: the stream cannot be cut after it).
    pub fn handle_frames(&mut self, now: Instant, from: NodeId, data: &[u8]) -> (usize, Result<(), InputError>) {
        let mut taken = 0;
        let mut memo = None;
        while let Some(rest) = data.get(taken..) {
            let (payload, used) = match split_frame(rest, self.cfg.max_frame) {
                Ok(Some(x)) => x,
                Ok(None) => break,
                Err(e) => return (taken, Err(InputError::Decode(e))),
            };
            taken += used;
            if let Err(e) = self.frame_in(now, from, payload, &mut memo) {
                return (taken, Err(e));
            }
            if !self.io.out.is_empty() {
                break;
            }
        }
        (taken, Ok(()))
    }

    /// A link came up, failed to open, or broke.
    pub fn handle_link(&mut self, now: Instant, peer: NodeId, ev: LinkEvent) {
        if peer == self.me || self.control.exited {
            return;
        }
        match ev {
            LinkEvent::Connected => {
                let Io { conns, out, stats, .. } = &mut self.io;
                // Already open: the driver replaced the connection (see `LinkEvent::Connected`).
                let replaced = conns.state(&peer) == Some(LinkState::Open);
                if conns.connected(now, peer, out, stats) == Admit::Refused {
                    out.push_back(Output::Close(peer));
                    out.push_back(Output::Event(Event::LinkRefused(peer)));
                } else {
                    self.with_control(now, |c, tree, ctx| c.on_link_up(ctx, tree, peer, replaced));
                }
            }
            LinkEvent::ConnectFailed | LinkEvent::Closed => {
                self.io.conns.remove(&peer);
                let related = self.tree.parent() == Some(peer) || self.tree.children().contains(&peer);
                let failed = ev == LinkEvent::ConnectFailed;
                self.with_tree(now, |tree, ctx| tree.on_link_down(ctx, peer, failed));
                self.with_control(now, |c, tree, ctx| c.on_peer_lost(ctx, tree, peer, related, failed));
            }
        }
        self.after(now);
    }

    /// Output or exit of a process the node asked to spawn ([`Output::Spawn`]).
    pub fn handle_process(&mut self, now: Instant, ev: ProcessEvent) {
        if self.control.exited {
            return;
        }
        self.with_control(now, |c, tree, ctx| c.on_process(ctx, tree, ev));
        self.after(now);
    }

    /// The driver launched a client on `host` after [`Output::Launch`] (`Ok`), or could not.
    pub fn handle_launched(&mut self, now: Instant, host: NodeId, result: LaunchResult) {
        let ok = result.is_ok();
        if self.control.exited {
            return;
        }
        self.with_control(now, |c, tree, ctx| c.on_launched(ctx, tree, host, ok));
        self.after(now);
    }

    /// A command from the local user.
    pub fn handle_command(&mut self, now: Instant, cmd: Command) -> Result<(), CommandError> {
        if self.control.exited {
            return Err(CommandError::Left);
        }
        let r = match cmd {
            Command::Join { bootstrap } => self.with_tree(now, |tree, ctx| tree.start(ctx, &bootstrap)),
            Command::Leave => self.with_tree(now, |tree, ctx| tree.leave(ctx)),
            Command::AddPeers { peers } => self.with_tree(now, |tree, ctx| tree.add_peers(ctx, &peers)),
            Command::Broadcast { id } => self.with_tree(now, |tree, ctx| tree.broadcast(ctx, id)),
            Command::Publish { payload } => {
                self.ransub.set_payload(payload);
                Ok(())
            }
            Command::BarrierEnter { name } => {
                if self.with_control(now, |c, tree, ctx| c.enter_barrier(ctx, tree, name)) {
                    Ok(())
                } else {
                    Err(CommandError::Barrier)
                }
            }
        };
        self.after(now);
        r
    }

    /// Timers. Calling it early, or twice, does nothing harmful.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.control.exited {
            return;
        }
        if self.sweep_at.is_some_and(|t| t <= now) {
            let Io { conns, out, .. } = &mut self.io;
            self.sweep_at = conns.sweep(now, self.cfg.link_idle, out);
        }
        if self.tick_at.is_some_and(|t| t <= now) {
            self.tick(now);
        }
        self.with_tree(now, |tree, ctx| tree.on_timeout(ctx));
        self.with_ransub(now, |r, ctx, place| r.on_timeout(ctx, place));
        self.with_control(now, |c, tree, ctx| c.on_timeout(ctx, tree));
        self.after(now);
    }

    /// Next thing for the driver to do; call until `None` after every `handle_*`.
    pub fn poll_output(&mut self) -> Option<Output> {
        // A burst's queue (a RanSub epoch at a node with many children) is freed once empty.
        self.io.out.pop_front()
    }

    /// When to call [`Node::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.control.exited {
            return None;
        }
        [
            self.tree.next_timeout(),
            self.ransub.next_timeout(),
            self.sweep_at,
            self.tick_at,
            self.control.next_timeout(self.cfg.linger),
            self.control.idle_deadline(self.cfg.idle_expiry),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Jobs (controller, job id) that the previous client on this address started, read back
    /// from the host by the driver at start: asked to run one of them again, this node answers
    /// `ExitStatus::Lost` instead, unless the job asks for retries
    /// ([`crate::control::RETRY_LOST_ENV`]). At most [`crate::control::MAX_PRIOR`] are kept.
    pub fn set_prior_jobs(&mut self, jobs: &[(NodeId, u64)]) {
        self.control.set_prior(jobs);
    }

    /// The controller, once known.
    pub fn controller(&self) -> Option<NodeId> {
        self.control.controller()
    }
    /// The linger in force: the controller's ([`crate::wire::ControlMsg::Linger`]), else
    /// [`Config::linger`].
    pub fn linger(&self) -> core::time::Duration {
        self.control.linger(self.cfg.linger)
    }
    /// At the root: since when it has been without its controller (it dismantles the tree
    /// [`Node::linger`] after); `None` elsewhere.
    pub fn orphaned_since(&self) -> Option<Instant> {
        self.control.orphaned_since()
    }
    /// Whether the node exited ([`Output::Exit`]); it ignores every input from then on.
    pub fn exited(&self) -> bool {
        self.control.exited
    }
    /// Whether the node holds `node`'s unacknowledged result of `job`: (held, waiting to be sent).
    pub fn holds_result(&self, job: u64, node: &NodeId) -> (bool, bool) {
        self.control.holds(job, node)
    }
    /// Jobs the node tracks (running, holding results, or remembered for late children).
    pub fn job_count(&self) -> usize {
        self.control.job_count()
    }

    /// The all-nodes RanSub view of the last epoch.
    pub fn ransub_all(&self) -> &[Entry] {
        self.ransub.all()
    }
    /// The non-descendant RanSub view of the last epoch.
    pub fn ransub_nondesc(&self) -> &[Entry] {
        self.ransub.nondesc()
    }
    /// The tree's population as last counted by the root.
    pub fn population(&self) -> u32 {
        self.ransub.population()
    }
    /// The last RanSub epoch seen.
    pub fn ransub_epoch(&self) -> u32 {
        self.ransub.epoch()
    }
    /// RanSub epochs started (root) or received.
    pub fn ransub_epochs(&self) -> u64 {
        self.ransub.epochs
    }
    /// Most links this node had open at once.
    pub fn max_links_open(&self) -> usize {
        self.io.conns.max_open
    }
    /// The pin reasons (bits of [`crate::conn::Pin`]) of the link to `peer`; 0 when unpinned or absent.
    pub fn link_pins(&self, peer: &NodeId) -> u8 {
        self.io.conns.pins(peer)
    }

    /// This node's identity.
    pub fn id(&self) -> NodeId {
        self.me
    }
    /// Where the node stands in the join protocol.
    pub fn state(&self) -> TreeState {
        self.tree.state()
    }
    /// The parent, if any.
    pub fn parent(&self) -> Option<NodeId> {
        self.tree.parent()
    }
    /// The root this node believes in.
    pub fn root(&self) -> Option<NodeId> {
        self.tree.root()
    }
    /// Whether this node is a joined root.
    pub fn is_root(&self) -> bool {
        self.tree.is_root()
    }
    /// The children.
    pub fn children(&self) -> &[NodeId] {
        self.tree.children()
    }
    /// The siblings (known to the root's children).
    pub fn siblings(&self) -> &[NodeId] {
        self.tree.siblings()
    }
    /// The node's depth as last told by its parent (0 at a root).
    pub fn depth(&self) -> u16 {
        self.tree.depth()
    }
    /// Known peers (for recovery and probes).
    pub fn peers(&self) -> &[NodeId] {
        self.tree.peers()
    }
    /// Estimated heap bytes by part (list capacities; not the allocator's overhead): tree,
    /// RanSub, links, output queue. For the simulator's memory report.
    #[doc(hidden)]
    pub fn heap_parts(&self) -> [(&'static str, usize); 4] {
        [
            ("tree", self.tree.heap_bytes()),
            ("ransub", self.ransub.heap_bytes()),
            ("links", self.io.conns.heap_bytes()),
            ("outbox", self.io.out.heap_bytes() + self.io.pool.heap_bytes()),
        ]
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.io.stats
    }
    /// Free what the node keeps only to go faster: the frame buffers kept for reuse (see
    /// [`crate::frame::FramePool::trim`]), and the output queue's room. Changes nothing the node
    /// does. A simulator of a million nodes calls it after each input, once it has taken every
    /// output.
    pub fn trim_buffers(&mut self) {
        self.io.pool.trim();
        self.io.out.trim();
    }
    /// Where the parts of the node's state that most inputs read lie (the connection table, the
    /// output queue, the tree, RanSub, the control plane), as (start, bytes), for a driver of many
    /// nodes that asks the processor to fetch them ahead. Nothing is read or changed here.
    pub fn hot_parts(&self) -> [(*const u8, usize); 5] {
        fn at<T>(r: &T) -> (*const u8, usize) {
            (core::ptr::from_ref(r).cast(), core::mem::size_of::<T>())
        }
        [at(&self.io.conns), at(&self.io.out), at(&self.tree), at(&self.ransub), at(&self.control)]
    }
    /// Number of links (open or connecting).
    pub fn link_count(&self) -> usize {
        self.io.conns.len()
    }
    /// The links: peer, state, pin bits.
    pub fn links(&self) -> impl Iterator<Item = (&NodeId, LinkState, u8)> {
        self.io.conns.iter()
    }
    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }
}

impl Machine for Node {
    const ROLE: Role = Role::Client;
    fn handle_frame(&mut self, now: Instant, from: NodeId, payload: &[u8]) -> Result<(), InputError> {
        Node::handle_frame(self, now, from, payload)
    }
    /// Frames of at most the node's own [`Config::max_frame`] (`_max` is the driver's copy).
    fn handle_frames(
        &mut self,
        now: Instant,
        from: NodeId,
        data: &[u8],
        _max: usize,
    ) -> (usize, Result<(), InputError>) {
        Node::handle_frames(self, now, from, data)
    }
    fn handle_link(&mut self, now: Instant, peer: NodeId, ev: LinkEvent) {
        Node::handle_link(self, now, peer, ev)
    }
    fn handle_timeout(&mut self, now: Instant) {
        Node::handle_timeout(self, now)
    }
    fn handle_process(&mut self, now: Instant, ev: ProcessEvent) {
        Node::handle_process(self, now, ev)
    }
    fn handle_launched(&mut self, now: Instant, host: NodeId, result: LaunchResult) {
        Node::handle_launched(self, now, host, result)
    }
    fn handle_barrier(&mut self, now: Instant, name: String) -> bool {
        Node::handle_command(self, now, Command::BarrierEnter { name }).is_ok()
    }
    fn poll_output(&mut self) -> Option<Output> {
        Node::poll_output(self)
    }
    fn begin_batch(&mut self) {
        Node::begin_batch(self)
    }
    fn end_batch(&mut self) {
        Node::end_batch(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Node::poll_timeout(self)
    }
}
