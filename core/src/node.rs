//! `Node`: one Plush client as a sans-IO state machine.
//!
//! The driver feeds it one input per call (`handle_*`), then drains [`Node::poll_output`] until
//! it returns `None`, and calls [`Node::handle_timeout`] at [`Node::poll_timeout`]. `Node` itself
//! only decodes frames, routes them to the protocol module of their layer, and owns what the
//! modules share: the connection table, the frame pool, the output queue, the RNG and the stats.

use crate::batch::{Check, Outbox, Way, REPLY_BYTES};
use crate::config::Config;
use crate::conn::{Admit, ConnTable, LinkState, Pin, Received};
use crate::control::{Control, ProcessEvent};
use crate::id::NodeId;
use crate::ransub::{Entry, Place, RanSub, PAYLOAD};
use crate::time::Instant;
use crate::tree::{Tree, TreeState};
use crate::wire::{
    encode_once, push_frame, split_frame, DecodeError, Frame, FramePool, InPlace, Message, TreeMsg, PREFIX,
};
use rand::SeedableRng;
use rand_pcg::Pcg32;
use smallvec::SmallVec;
use std::rc::Rc;

/// What the driver must do, or may want to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Write `frame` (length prefix included) on the open link to `to`.
    Transmit {
        /// The peer.
        to: NodeId,
        /// The bytes to write.
        frame: Frame,
    },
    /// Open a link to the peer; report [`LinkEvent::Connected`] or [`LinkEvent::ConnectFailed`].
    Connect(NodeId),
    /// Close the link to the peer once what was transmitted on it is written. The node already
    /// forgot the link: report nothing back for it.
    Close(NodeId),
    /// Something happened; drivers log it, the simulator records it.
    Event(Event),
    /// Start the job's process (`spec.argv`, with `spec.env` added, in `spec.cwd`); report its
    /// output and exit with [`Node::handle_process`].
    Spawn {
        /// The job.
        job: u64,
        /// The job as it came down the tree (shared, not copied).
        spec: Rc<crate::wire::RunSpec>,
    },
    /// Kill the job's process (timeout or cancel); its result is already recorded.
    Signal {
        /// The job.
        job: u64,
    },
    /// Stop (`on: false`) or resume reading the job's process's stdout and stderr: its output
    /// waits for room in the window up, so the process blocks in `write` meanwhile.
    ReadOutput {
        /// The job.
        job: u64,
        /// Read again.
        on: bool,
    },
    /// Start a Plush client on `host` (ssh, or a local process); report with
    /// `handle_launched`.
    Launch {
        /// The host.
        host: NodeId,
    },
    /// The client is done (dismantled, or idle too long): end the process. Links are closed.
    Exit,
    /// A transfer reaches this node: open storage for `spec.push` (see [`crate::transfer`]).
    /// With `install`, this node is a target: the file goes to `push.path` once verified.
    PushOpen {
        /// The job.
        job: u64,
        /// The job, with its [`crate::wire::PushSpec`].
        spec: Rc<crate::wire::RunSpec>,
        /// This node is a target.
        install: bool,
    },
    /// Store chunk `index` of the job's file. Chunks come in order, from 0, each once.
    PushWrite {
        /// The job.
        job: u64,
        /// The chunk.
        index: u32,
        /// Its bytes.
        data: Vec<u8>,
    },
    /// Read chunk `index` from storage and transmit it to `to` as a `Chunk` frame
    /// ([`crate::wire::chunk_frame`]). Only ever a chunk stored before.
    PushSend {
        /// The child (at the controller: the root).
        to: NodeId,
        /// The job.
        job: u64,
        /// The chunk.
        index: u32,
    },
    /// Every chunk is stored, at a target: verify the digest, install the file, and report with
    /// [`Node::handle_process`] (the error, if any, as `Output`, then `Exit`: code 0 for
    /// success). Storage stays readable for children until `PushForget`.
    PushDone {
        /// The job.
        job: u64,
    },
    /// The node forgot the transfer: release its storage (and remove an uninstalled file).
    PushForget {
        /// The job.
        job: u64,
    },
    /// At the controller: something for the user (see [`crate::controller::Report`]). Boxed:
    /// reports are rare, and every output pays for the largest variant.
    Report(Box<crate::controller::Report>),
}

/// Upcalls: what changed in the node, for logs, tests and the simulator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The node's parent changed (`None`: it lost its parent and is rejoining, or became root).
    ParentChanged(Option<NodeId>),
    /// A child was added.
    ChildAdded(NodeId),
    /// A child was removed (failed, left, or joined elsewhere).
    ChildRemoved(NodeId),
    /// The node became the root of its tree.
    BecameRoot,
    /// The node stopped being a root (it merged into another tree or left).
    StoppedBeingRoot,
    /// The node learnt a new root.
    RootChanged(NodeId),
    /// At the root: a member answered a broadcast (the root too, at once). A broadcast's
    /// arrival at each member is known from its reply, not from an event of its own: a relay
    /// passes thousands of them a second.
    BroadcastReply {
        /// The broadcast.
        id: u64,
        /// The member.
        node: NodeId,
    },
    /// The node left the tree after `Command::Leave`.
    Left,
    /// A link was refused: the connection budget is spent on pinned or busy links.
    LinkRefused(NodeId),
    /// A tree link stayed silent past `dead_after` and was declared failed.
    LinkSilent(NodeId),
    /// At the root: a RanSub epoch's collect ended with this population.
    Population {
        /// The epoch.
        epoch: u32,
        /// Nodes counted in the tree.
        population: u32,
    },
    /// New RanSub views arrived (see [`Node::ransub_all`], [`Node::ransub_nondesc`]).
    RanSubView {
        /// The epoch.
        epoch: u32,
    },
    /// The node rejoined after losing its parent.
    Repaired {
        /// Through a RanSub candidate that accepted it directly (else through the root).
        via_ransub: bool,
    },
    /// A command (`Run`, `Cancel`, `Ack`, `Disconnect`, ...) came from a peer that is not our
    /// parent (or, at the root, the controller): it was dropped.
    CommandRejected(NodeId),
    /// The barrier this node's process waits in was released: let the process go on.
    BarrierReleased(String),
    /// The overlay is being dismantled: the node exits once its children are gone.
    Dismantling,
}

/// Link events the driver reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// A link is up (after the hello exchange): one we asked for, or one the peer opened. When
    /// a new connection replaces an open one to the same peer (the peer restarted and connected
    /// again before the old connection's close reached us), a driver reports either `Closed`
    /// then `Connected` (the mio driver) or `Connected` alone (the simulator, which drops the
    /// old connection's late close); the node takes both alike: what was in flight on the old
    /// connection is lost.
    Connected,
    /// A link we asked for could not be opened.
    ConnectFailed,
    /// The link broke or the peer closed it.
    Closed,
}

/// What the local user (or the simulator's scenario) asks of the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Join the overlay through these members; with none, the node becomes a root.
    Join {
        /// Members to ask first; also remembered as peers for recovery and probes.
        bootstrap: Vec<NodeId>,
    },
    /// Leave the overlay: tell parent and children, close their links.
    Leave,
    /// Remember these members as peers (for recovery and for the root's merge probes).
    AddPeers {
        /// The members.
        peers: Vec<NodeId>,
    },
    /// Publish these bytes in this node's RanSub entries (load, version, ...).
    Publish {
        /// The payload.
        payload: [u8; PAYLOAD],
    },
    /// At the root: send a broadcast down the whole tree; every member replies.
    Broadcast {
        /// Identifies the replies.
        id: u64,
    },
    /// The local process enters barrier `name`; [`Event::BarrierReleased`] lets it go on.
    BarrierEnter {
        /// The barrier (at most [`crate::control::MAX_NAME`] bytes).
        name: String,
    },
}

/// Why a frame was refused. The node's state is unchanged; the driver closes that link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InputError {
    /// The bytes did not decode.
    Decode(DecodeError),
    /// A frame arrived from a peer without an open link (before `Connected`).
    NoLink(NodeId),
}

impl core::fmt::Display for InputError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            InputError::Decode(e) => write!(f, "bad frame: {e}"),
            InputError::NoLink(p) => write!(f, "frame from {p} before its link was up"),
        }
    }
}

impl std::error::Error for InputError {}

/// Why a command was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandError {
    /// `Join` on a node that already joined or is joining.
    AlreadyStarted,
    /// `Broadcast` on a node that is not a joined root.
    NotRoot,
    /// The node has left.
    Left,
    /// Too many barriers at once, or a name too long.
    Barrier,
}

impl core::fmt::Display for CommandError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CommandError::AlreadyStarted => write!(f, "the node already joined or is joining"),
            CommandError::NotRoot => write!(f, "only a joined root can broadcast"),
            CommandError::Left => write!(f, "the node has left the overlay"),
            CommandError::Barrier => write!(f, "too many barriers, or a barrier name too long"),
        }
    }
}

impl std::error::Error for CommandError {}

/// Counters. They only grow; drivers report them, the simulator sums them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames handed to the node.
    pub frames_in: u64,
    /// Frames the node asked to transmit.
    pub frames_out: u64,
    /// Frames refused as malformed.
    pub decode_errors: u64,
    /// Frames dropped because a connecting link's queue was full.
    pub pending_dropped: u64,
    /// Joins this node handled as root (accepted or redirected).
    pub root_joins: u64,
    /// Joins this node redirected to a child.
    pub redirects: u64,
    /// Joins this node refused.
    pub join_rejects: u64,
    /// Direct joins this node verified as root (the walk up from a RanSub candidate).
    pub root_verifies: u64,
    /// Unpinned links closed to make room under the budget.
    pub evictions: u64,
    /// Links refused because the budget was spent on pinned or busy links.
    pub links_refused: u64,
    /// Heartbeats sent.
    pub heartbeats: u64,
    /// Links declared failed after silence.
    pub silent_links: u64,
    /// Repairs (rejoins after losing a parent) through a RanSub candidate.
    pub repairs_via_ransub: u64,
    /// Repairs through the root (a forwarded or failover join).
    pub repairs_via_root: u64,
    /// Direct-repair waves that found no RanSub candidate with free slots.
    pub repair_no_candidates: u64,
    /// Probes this node sent as a member (not a root), looking for other trees.
    pub member_probes: u64,
    /// Direct-repair waves that ended on their timeout.
    pub repair_waves_timed_out: u64,
    /// Commands dropped because they did not come from above.
    pub commands_rejected: u64,
    /// Results forwarded but not held (too many distinct results in one job).
    pub results_unheld: u64,
    /// Output bytes dropped by a job's cap ([`crate::wire::RunSpec::max_output`]).
    pub output_bytes_cut: u64,
    /// Result groups dropped because the blob they name had not arrived (sent again after the
    /// controller's next `Ack`).
    pub blobs_missing: u64,
    /// Transfer chunks stored (each chunk once: a resumed transfer does not store any again).
    pub chunks_stored: u64,
    /// Transfer chunks dropped: out of order, a duplicate, or for an unknown transfer.
    pub chunks_dropped: u64,
}

/// What protocol modules share: the output queue, links, buffers, stats.
#[derive(Debug)]
pub(crate) struct Io {
    pub out: Outbox,
    pub conns: ConnTable,
    pub pool: FramePool,
    pub stats: Stats,
    /// Peers whose link the budget refused during the current call; reported to the tree as
    /// failed connects once the call's handler returns. Bound: one entry per send.
    pub refused: SmallVec<[NodeId; 2]>,
    /// Set when the tree reported a change of parent, children or root-ness during the current
    /// call, so that the control plane is told (see `Node::tree_news`); most calls have none.
    pub news: bool,
}

/// The context a protocol handler runs in.
pub(crate) struct Ctx<'a> {
    pub now: Instant,
    pub me: NodeId,
    pub cfg: &'a Config,
    pub rng: &'a mut Pcg32,
    pub io: &'a mut Io,
    /// The latest RanSub views (empty inside RanSub itself).
    pub nondesc: &'a [Entry],
    pub all: &'a [Entry],
    /// The tree's population as RanSub last told it (0: not known yet, or inside RanSub itself).
    pub population: u32,
}

impl Ctx<'_> {
    /// Encode and send one tree message.
    pub fn send(&mut self, to: NodeId, msg: TreeMsg) {
        self.send_msg(to, &Message::Tree(msg));
    }

    /// Encode and send one message of any layer.
    pub fn send_msg(&mut self, to: NodeId, msg: &Message) {
        if to == self.me {
            debug_assert!(false, "a node never sends to itself: {msg:?}");
            return;
        }
        // Our own messages are small; failing to encode one is a bug, not bad input.
        match self.io.pool.encode(msg, self.cfg.max_frame) {
            Ok(frame) => self.send_frame(to, frame),
            Err(e) => debug_assert!(false, "cannot encode our own message: {e:?}"),
        }
    }

    /// Encode once, for sending the same bytes to several peers.
    pub fn encode(&mut self, msg: TreeMsg) -> Option<Frame> {
        self.io.pool.encode(&Message::Tree(msg), self.cfg.max_frame).ok()
    }

    /// Pass `payload` (a frame's, as received) on to every one of `peers`, the tree's children
    /// of `version`: into the batch's down run during a batch, else as one frame they share.
    pub fn relay_down(&mut self, peers: &[NodeId], version: u64, payload: &[u8]) {
        if peers.is_empty() {
            return;
        }
        if let Some(n) = self.io.out.append_down(version, self.now, payload) {
            self.io.stats.frames_out += n as u64;
            return;
        }
        if self.run(Way::Down, peers, version, PREFIX + payload.len()) {
            if let Some(((), n)) = self.io.out.append(Way::Down, |v| push_frame(v, payload)) {
                self.io.stats.frames_out += n as u64;
                return;
            }
        }
        let frame = self.io.pool.copy(payload);
        for &c in peers {
            self.send_frame(c, frame.clone());
        }
    }

    /// Answer broadcast `id` to `to` (the parent). During a batch the answer waits at the end of
    /// the up run, and the answer to a later broadcast replaces it (see [`crate::batch`]).
    pub fn reply_up(&mut self, to: &NodeId, id: u64) {
        if let Some(replaced) = self.io.out.reply_now(to, self.now, id, self.me) {
            self.io.stats.frames_out += u64::from(!replaced);
            return;
        }
        if self.run(Way::Up, core::slice::from_ref(to), 0, REPLY_BYTES) {
            if !self.io.out.reply(id, self.me) {
                self.io.stats.frames_out += 1;
            }
            return;
        }
        self.send(*to, TreeMsg::BroadcastReply { id, node: self.me });
    }

    /// Pass `payload` (a frame's, as received) on to `to`: into the batch's up run during a
    /// batch.
    pub fn relay_up(&mut self, to: NodeId, payload: &[u8]) {
        if self.run(Way::Up, &[to], 0, PREFIX + payload.len())
            && self.io.out.append(Way::Up, |v| push_frame(v, payload)).is_some()
        {
            self.io.stats.frames_out += 1;
            return;
        }
        let frame = self.io.pool.copy(payload);
        self.send_frame(to, frame);
    }

    /// Whether the batch's run `way` to `peers` (the children of `version`, or one peer) is
    /// open with room for `need` bytes, opening it when every link is open.
    #[inline]
    fn run(&mut self, way: Way, peers: &[NodeId], version: u64, need: usize) -> bool {
        let (io, now) = (&mut *self.io, self.now);
        if !io.out.batching() {
            return false;
        }
        match io.out.check(way, peers, version, now, need) {
            Check::Ready => true,
            Check::Touch | Check::Start if !peers.iter().all(|p| io.conns.mark_sent(now, p)) => false,
            Check::Touch => {
                io.out.touched(way, now);
                true
            }
            Check::Start => {
                io.out.start(way, peers, version, now);
                true
            }
        }
    }

    pub fn send_frame(&mut self, to: NodeId, frame: Frame) {
        let Io { conns, out, stats, refused, .. } = &mut *self.io;
        if conns.send(self.now, to, frame, self.cfg.max_pending_frames, out, stats) == Admit::Refused {
            out.push_back(Output::Event(Event::LinkRefused(to)));
            if !refused.contains(&to) {
                refused.push(to);
            }
        }
    }

    pub fn event(&mut self, e: Event) {
        if matches!(
            e,
            Event::ParentChanged(Some(_))
                | Event::BecameRoot
                | Event::StoppedBeingRoot
                | Event::ChildAdded(_)
                | Event::ChildRemoved(_)
        ) {
            self.io.news = true;
        }
        self.io.out.push_back(Output::Event(e));
    }

    pub fn pin(&mut self, peer: NodeId, pin: Pin) {
        self.io.conns.pin(self.now, peer, pin);
    }

    pub fn unpin(&mut self, peer: &NodeId, pin: Pin) {
        self.io.conns.unpin(peer, pin);
    }

    /// Close the link to `peer` if nothing keeps it.
    pub fn release(&mut self, peer: &NodeId) {
        let Io { conns, out, .. } = &mut *self.io;
        conns.release(peer, out);
    }

    /// Close the link to `peer` after what was sent on it.
    pub fn close(&mut self, peer: &NodeId) {
        if self.io.conns.remove(peer) {
            self.io.out.push_back(Output::Close(*peer));
        }
    }
}

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
                news: false,
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
        };
        (ctx, &mut self.tree, &mut self.control)
    }

    /// Tell the control plane what the tree did since output `mark` (parents, children, root).
    fn tree_news(&mut self, now: Instant, mut mark: usize) {
        loop {
            if !core::mem::take(&mut self.io.news) {
                return;
            }
            let news: SmallVec<[Event; 4]> = self
                .io
                .out
                .range_from(mark)
                .filter_map(|o| match o {
                    Output::Event(
                        e @ (Event::ParentChanged(Some(_))
                        | Event::BecameRoot
                        | Event::StoppedBeingRoot
                        | Event::ChildAdded(_)
                        | Event::ChildRemoved(_)),
                    ) => Some(e.clone()),
                    _ => None,
                })
                .collect();
            mark = self.io.out.len();
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
        let mut ctx = Ctx {
            now,
            me: self.me,
            cfg: &self.cfg,
            rng: &mut self.rng,
            io: &mut self.io,
            nondesc: &[],
            all: &[],
            population: 0,
        };
        let place = self.tree.place_info(self.cfg.degree());
        f(&mut self.ransub, &mut ctx, &place);
    }

    /// After every input: refused links reach the tree, the control plane hears what the tree
    /// did (outputs from `mark` on), timers are re-armed.
    #[inline]
    fn after(&mut self, now: Instant, mark: usize) {
        // Most inputs (every frame a relay passes on) leave all of it as it was.
        let quiet = self.io.refused.is_empty()
            && !self.io.news
            && !self.tree.parent_changed()
            && self.control.idle_settled(self.io.conns.len())
            && (!self.io.conns.sweep_wanted || self.sweep_at.is_some())
            && !self.io.conns.pinned_since_tick
            && self.tick_at.is_some();
        if !quiet {
            self.after_all(now, mark);
        }
    }

    #[inline(never)]
    fn after_all(&mut self, now: Instant, mark: usize) {
        while let Some(peer) = self.io.refused.pop() {
            self.with_tree(now, |tree, ctx| tree.on_link_down(ctx, peer, true));
        }
        self.tree_news(now, mark);
        self.control.after(now, self.io.conns.len());
        if self.tree.take_parent_changed() {
            let detached = self.tree.parent().is_none() && !self.tree.is_root();
            self.control.note_detached(now, detached);
            // Joined, re-attached or became root: RanSub's collect restarts and the root's epoch
            // timer follows root-ness.
            self.ransub.reset();
            self.with_ransub(now, |r, ctx, place| r.sync(ctx, place));
        }
        if self.io.conns.sweep_wanted && self.sweep_at.is_none() {
            self.sweep_at = Some(now + self.cfg.link_idle);
            self.io.conns.sweep_wanted = false;
        }
        if core::mem::take(&mut self.io.conns.pinned_since_tick) || self.tick_at.is_none() {
            // A new relation is due its first heartbeat within an interval.
            if self.tree.has_relations() {
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
        let mark = self.io.out.len();
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
        self.after(now, mark);
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
        let mark = self.io.out.len();
        match ev {
            LinkEvent::Connected => {
                let Io { conns, out, stats, .. } = &mut self.io;
                // Already open: the driver replaced the connection (see `LinkEvent::Connected`).
                let replaced = conns.state(&peer) == Some(LinkState::Open);
                if conns.connected(now, peer, out, stats) == Admit::Refused {
                    out.push_back(Output::Close(peer));
                    out.push_back(Output::Event(Event::LinkRefused(peer)));
                } else {
                    self.with_control(now, |c, _, ctx| c.on_link_up(ctx, peer, replaced));
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
        self.after(now, mark);
    }

    /// Output or exit of a process the node asked to spawn ([`Output::Spawn`]).
    pub fn handle_process(&mut self, now: Instant, ev: ProcessEvent) {
        if self.control.exited {
            return;
        }
        let mark = self.io.out.len();
        self.with_control(now, |c, tree, ctx| c.on_process(ctx, tree, ev));
        self.after(now, mark);
    }

    /// The driver launched a client on `host` after [`Output::Launch`] (`ok`), or could not.
    pub fn handle_launched(&mut self, now: Instant, host: NodeId, ok: bool) {
        if self.control.exited {
            return;
        }
        let mark = self.io.out.len();
        self.with_control(now, |c, tree, ctx| c.on_launched(ctx, tree, host, ok));
        self.after(now, mark);
    }

    /// A command from the local user.
    pub fn handle_command(&mut self, now: Instant, cmd: Command) -> Result<(), CommandError> {
        if self.control.exited {
            return Err(CommandError::Left);
        }
        let mark = self.io.out.len();
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
        self.after(now, mark);
        r
    }

    /// Timers. Calling it early, or twice, does nothing harmful.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.control.exited {
            return;
        }
        let mark = self.io.out.len();
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
        self.after(now, mark);
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
    /// The pin reasons (bits of [`Pin`]) of the link to `peer`; 0 when unpinned or absent.
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
    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.io.stats
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
