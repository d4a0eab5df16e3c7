//! The contract between the sans-IO machines and the drivers that run them.
//!
//! A driver sees only what this file defines. It feeds a [`Machine`] one input per call
//! (`handle_*`: a frame, a link event, a process event, a launch, the clock), then drains
//! [`Machine::poll_output`] until `None` and carries each [`Output`] out, and calls
//! [`Machine::handle_timeout`] at [`Machine::poll_timeout`]. [`crate::Node`] (a client) and
//! [`crate::Controller`] implement it with the same signatures, so that the simulator and the
//! mio driver run both the same way.
//!
//! Errors: bad input from the network is an [`InputError`] (the driver closes that one link);
//! a refused local command is a [`CommandError`]. A broken invariant inside a machine is a bug,
//! and is asserted where it lives, never reported here.

use crate::frame::{split_frame, Frame};
use crate::id::NodeId;
use crate::nodeset::NodeSet;
use crate::time::Instant;
use crate::wire::{BlobRef, DecodeError, ExitStatus, Role, PAYLOAD};
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
    /// output and exit with [`crate::Node::handle_process`].
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
    /// ([`crate::frame::chunk_frame`]). Only ever a chunk stored before.
    PushSend {
        /// The child (at the controller: the root).
        to: NodeId,
        /// The job.
        job: u64,
        /// The chunk.
        index: u32,
    },
    /// Every chunk is stored, at a target: verify the digest, install the file, and report with
    /// [`crate::Node::handle_process`] (the error, if any, as `Output`, then `Exit`: code 0 for
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
    /// At the controller: something for the user (see [`crate::contract::Report`]). Boxed:
    /// reports are rare, and every output pays for the largest variant.
    Report(Box<crate::contract::Report>),
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
    /// New RanSub views arrived (see [`crate::Node::ransub_all`], [`crate::Node::ransub_nondesc`]).
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
    /// Leaf joins this node took as a member, not the root (see `JoinMode::Leaf`).
    pub member_placements: u64,
    /// Moves of our subtree to a shallower place we asked for (see `Tree::rebalance`).
    pub moves_asked: u64,
    /// Moves that took place.
    pub moves: u64,
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

/// What the driver reports about a process it spawned for a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcessEvent {
    /// The process wrote these bytes on stdout, or on stderr (`err`).
    Output {
        /// The job.
        job: u64,
        /// The bytes.
        bytes: Vec<u8>,
        /// From stderr.
        err: bool,
    },
    /// The process ended (or could not start).
    Exit {
        /// The job.
        job: u64,
        /// How.
        status: ExitStatus,
    },
}

/// Where a host stands, as the controller sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HostState {
    /// Added, not invited yet.
    Pending,
    /// Invitation sent; waiting for it to join.
    Invited,
    /// A member of the tree.
    Joined,
    /// Lost; it will be invited again.
    Disconnected,
    /// Given up on: never invited again.
    Failed,
}

impl HostState {
    /// The state a host journaled in this state is taken over in (`Controller::adopt_hosts`):
    /// joined and failed hosts keep theirs, every other is invited again.
    pub fn adopted(self) -> HostState {
        match self {
            HostState::Joined | HostState::Failed => self,
            HostState::Pending | HostState::Invited | HostState::Disconnected => HostState::Pending,
        }
    }
}

/// What the controller tells its user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    /// A host changed state; `why` says why it failed.
    Host {
        /// The host.
        host: NodeId,
        /// Its new state.
        state: HostState,
        /// For `Failed`: the reason.
        why: Option<&'static str>,
    },
    /// The tree has a new root, and the controller's link moved to it.
    RootChanged(NodeId),
    /// Results of nodes not reported before, all with this status and output.
    Result {
        /// The job.
        job: u64,
        /// How it ended.
        status: ExitStatus,
        /// The output was cut.
        truncated: bool,
        /// stdout.
        output: Rc<Vec<u8>>,
        /// The nodes.
        nodes: NodeSet,
        /// stderr.
        stderr: Rc<Vec<u8>>,
        /// With [`crate::Controller::set_blob_reports`]: the output is this blob, whose bytes came
        /// before as [`Report::Blob`] (`output` and `stderr` are then empty).
        blob: Option<BlobRef>,
    },
    /// With [`crate::Controller::set_blob_reports`]: bytes of a large output, in order per `from` and
    /// `digest` (a chunk at offset 0 starts that sender's copy again). Only chunks the
    /// controller accepted are reported, and none of a blob it already has whole: once
    /// `offset + data.len() == total`, the blob is whole, and [`Report::Result`]s name it.
    Blob {
        /// The job.
        job: u64,
        /// The link it came on (the root, or a former root).
        from: NodeId,
        /// The output's name ([`BlobRef::digest`]).
        digest: [u8; 32],
        /// Where `data` starts in the output.
        offset: u64,
        /// The output's size.
        total: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Live output of one node.
    Stream {
        /// The job.
        job: u64,
        /// The node.
        node: NodeId,
        /// The bytes.
        bytes: Vec<u8>,
        /// From its stderr.
        err: bool,
    },
    /// The root says every member of the tree answered the job.
    JobComplete {
        /// The job.
        job: u64,
    },
    /// A barrier was released.
    BarrierReleased {
        /// The barrier.
        name: String,
        /// Nodes that had entered.
        entered: u64,
        /// Nodes expected.
        expected: u64,
        /// Released at the threshold after the timeout, not complete.
        partial: bool,
    },
    /// Nodes entered a barrier after its release (they were let through).
    BarrierLate {
        /// The barrier.
        name: String,
        /// The late nodes.
        nodes: NodeSet,
    },
    /// A host's maintenance script failed (the host is `Failed` and does not join).
    MaintenanceFailed {
        /// The host.
        host: NodeId,
        /// How the script ended.
        status: crate::wire::ExitStatus,
        /// The start of its output (at most [`crate::wire::MAX_SCRIPT_OUTPUT`] bytes).
        output: Vec<u8>,
    },
}

/// What a driver reports after [`Output::Launch`]: `Ok` once the client started, or why not.
pub type LaunchResult = Result<(), &'static str>;

/// A sans-IO machine a driver runs: [`crate::Node`] or [`crate::Controller`].
pub trait Machine {
    /// What this machine announces in its hellos.
    const ROLE: Role;
    /// One frame's payload (the bytes after its length prefix) from `from`, whose link is up.
    fn handle_frame(&mut self, now: Instant, from: NodeId, payload: &[u8]) -> Result<(), InputError>;
    /// As many whole frames from the front of `data` (bytes read from `from`, length prefixes
    /// included, each frame at most `max` bytes) as the machine takes in one call; returns the
    /// bytes used. By default one frame a call.
    fn handle_frames(
        &mut self,
        now: Instant,
        from: NodeId,
        data: &[u8],
        max: usize,
    ) -> (usize, Result<(), InputError>) {
        match split_frame(data, max) {
            Ok(None) => (0, Ok(())),
            Err(e) => (0, Err(InputError::Decode(e))),
            Ok(Some((payload, used))) => (used, self.handle_frame(now, from, payload)),
        }
    }
    /// A link to `peer` came up, failed to, or closed.
    fn handle_link(&mut self, now: Instant, peer: NodeId, ev: LinkEvent);
    /// The clock reached [`Machine::poll_timeout`] (or later).
    fn handle_timeout(&mut self, now: Instant);
    /// A process this machine spawned wrote output or ended; the controller runs none.
    fn handle_process(&mut self, _now: Instant, _ev: ProcessEvent) {}
    /// The driver launched a client on `host` after [`Output::Launch`], or could not.
    fn handle_launched(&mut self, now: Instant, host: NodeId, result: LaunchResult);
    /// A local process enters barrier `name`; false when refused. By default refused: the
    /// controller runs no processes.
    fn handle_barrier(&mut self, _now: Instant, _name: String) -> bool {
        false
    }
    /// The next output to carry out, if any.
    fn poll_output(&mut self) -> Option<Output>;
    /// Start gathering relayed frames into one write per link (see [`crate::batch`]); a
    /// controller relays nothing and has no batches.
    fn begin_batch(&mut self) {}
    /// Flush what [`Machine::begin_batch`] gathered.
    fn end_batch(&mut self) {}
    /// When [`Machine::handle_timeout`] is next due.
    fn poll_timeout(&self) -> Option<Instant>;
}
