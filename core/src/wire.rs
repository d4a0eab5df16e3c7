//! The wire format: every message of every layer, and how one is decoded.
//!
//! Messages travel in frames ([`crate::frame`]): a 4-byte big-endian length followed by that
//! many bytes of a postcard-encoded message. The length never exceeds the configured maximum
//! ([`crate::Config::max_frame`], 1 MiB by default); a larger prefix is an error that closes the
//! connection.
//!
//! Every connection opens with a [`Hello`] frame from each side (magic, protocol version, node
//! id, role, nonce). The drivers perform that exchange, and the authentication step that follows
//! it, before they report the link to the [`crate::Node`]; no [`Message`] is accepted before it.
//! After the hello, every frame carries one [`Message`], grouped by layer. New messages and layers
//! are only ever appended to these enums, so adding one never renumbers another.
//!
//! Decoding never panics and allocates at most a bounded amount: lists are capped at
//! [`MAX_LIST`] entries, and nothing else in a message has a variable size.

pub use crate::bounded::{Filler, List, MAX_FILLER, MAX_LIST};
use crate::id::NodeId;
pub use crate::nodeset::NodeSet;
use core::fmt;
use serde::{Deserialize, Serialize};

/// First field of every `Hello`: the bytes `PLSH`.
pub const MAGIC: u32 = 0x504c_5348;
/// Version of this protocol; a peer with another version is refused with a clear error.
pub const PROTOCOL_VERSION: u16 = 2;

/// What sits at the other end of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// A Plush client, a member of the tree.
    Client,
    /// The controller on the user's machine, outside the tree.
    Controller,
}

/// The first frame on every connection, in both directions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Always [`MAGIC`].
    pub magic: u32,
    /// The sender's [`PROTOCOL_VERSION`].
    pub protocol_version: u16,
    /// The sender's identity: its listen address.
    pub node_id: NodeId,
    /// Client or controller.
    pub role: Role,
    /// Fresh per connection: the challenge the authentication step answers.
    pub nonce: u64,
}

impl Hello {
    /// A hello for this protocol version.
    pub fn new(node_id: NodeId, role: Role, nonce: u64) -> Self {
        Hello { magic: MAGIC, protocol_version: PROTOCOL_VERSION, node_id, role, nonce }
    }

    /// Decode and check a hello payload (length prefix already removed).
    pub fn decode(payload: &[u8]) -> Result<Hello, DecodeError> {
        let hello: Hello = decode_exact(payload)?;
        if hello.magic != MAGIC {
            return Err(DecodeError::BadMagic(hello.magic));
        }
        if hello.protocol_version != PROTOCOL_VERSION {
            return Err(DecodeError::Version { ours: PROTOCOL_VERSION, theirs: hello.protocol_version });
        }
        Ok(hello)
    }
}

/// One message after the hello, by layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// RandTree: membership and shape of the tree.
    Tree(TreeMsg),
    /// RanSub: random subsets of the membership, every epoch.
    RanSub(RanSubMsg),
    /// The control plane: controller, invitations, membership reports, dismantle.
    Control(ControlMsg),
    /// Jobs and barriers: commands down, results up.
    Job(JobMsg),
}

/// Control-plane messages. See [`crate::control`] for the protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlMsg {
    /// "The controller is `ctrl`": controller to root, parent to a new child, and a node to its
    /// parent on the way up to a root that does not know it yet.
    SetCtrl {
        /// The controller.
        ctrl: NodeId,
    },
    /// Root to controller: "I am the root".
    SetRoot {
        /// The root.
        root: NodeId,
    },
    /// Controller to root: invite `host`. Root to `host`: join the overlay through me.
    SetPeer {
        /// The invited host.
        host: NodeId,
        /// The controller.
        ctrl: NodeId,
    },
    /// Root to controller: the invitation could not reach `host` (no client runs there).
    InviteFailed {
        /// The host.
        host: NodeId,
    },
    /// A new member, up the tree to the root and on to the controller: `node` joined.
    Joined {
        /// The member.
        node: NodeId,
        /// The member's build ([`crate::Config::build`]); 0 when the sender does not know it
        /// (a root answering for a child it already has).
        build: u64,
    },
    /// Up the tree to the root and on to the controller: `node` was lost.
    Disconnected {
        /// The lost node.
        node: NodeId,
        /// Up to the root: whether the reporter was the lost node's parent or child (else the
        /// root verifies). From the root to the controller: whether the root checked it (its
        /// own link failed, or `GetStatus` went unanswered). From the controller to the root:
        /// `false`, "check this one".
        related: bool,
    },
    /// Root to a reported node: are you alive? Answered with `Status`.
    GetStatus,
    /// Answer to `GetStatus`.
    Status {
        /// Whether the node is joined to a tree, or joining one.
        joined: bool,
    },
    /// Root to the controller: members of the tree, in parts; `last` ends the list.
    Participants {
        /// Members.
        nodes: NodeSet,
        /// This is the last part.
        last: bool,
    },
    /// Controller down the tree: these hosts failed; never retry them.
    Forget {
        /// The failed hosts.
        nodes: NodeSet,
    },
    /// Down the tree: dismantle the overlay; every client exits.
    Disconnect,
    /// Controller to root: take a census now (answered with `Participants`).
    Census,
    /// Inviter to an invited host, just before `SetPeer` (and controller to each new root,
    /// which invites): the user's maintenance script. An idle client runs it (`/bin/sh -c`)
    /// before it joins; at most [`MAX_SCRIPT`] bytes (longer ones are ignored).
    Maintenance {
        /// The script.
        script: String,
    },
    /// Invited host to the controller: its maintenance script failed, so it does not join.
    MaintenanceFailed {
        /// The host.
        node: NodeId,
        /// How the script ended.
        status: ExitStatus,
        /// The start of its output (at most [`MAX_SCRIPT_OUTPUT`] bytes).
        #[serde(with = "serde_bytes")]
        output: Vec<u8>,
    },
    /// Controller to the root, then parent to child (and to every child that attaches later):
    /// a tree that has had no controller link for this long dismantles itself (the root decides;
    /// see [`crate::control`]). Until told, a node takes [`crate::Config::linger`]. The
    /// controller sends it only when it was given a linger of its own, so that a controller with
    /// the default speaks to clients of earlier builds, which do not know this message, as
    /// before.
    Linger {
        /// The linger, in milliseconds.
        ms: u64,
    },
    /// Tree launch ([`crate::Config::tree_launch`]): "launch and invite these hosts". From the
    /// controller to a member that joined, or from a member to a host it has just launched,
    /// just before its `SetPeer` (the part of the inviter's share the new member takes on). At
    /// most [`MAX_LIST`] hosts; the receiver launches at most `fanout` at once, hands parts of
    /// the rest on to the hosts it launches, and names itself as their bootstrap. Sent only
    /// with tree launch on, so clients of earlier builds, which do not know it, see it only
    /// then. See [`crate::control`].
    Share {
        /// Hosts not yet invited.
        hosts: List<NodeId>,
        /// Launches at once at the receiver (at least 1).
        fanout: u16,
    },
}

/// Largest maintenance script carried ([`ControlMsg::Maintenance`]).
pub const MAX_SCRIPT: usize = 64 << 10;

/// Most bytes of a failed maintenance script's output reported ([`ControlMsg::MaintenanceFailed`]).
pub const MAX_SCRIPT_OUTPUT: usize = 4 << 10;

/// What a job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobKind {
    /// Run a command on every target.
    Command,
    /// No process: every member answers at once (the root's census for `Participants`).
    Census,
    /// No process: every target answers at once with its parent's address as its output
    /// (empty at the root), so that the controller can draw the tree. Siblings' answers merge.
    Tree,
    /// A file travels down the tree in chunks ([`RunSpec::push`]); every target stores and
    /// verifies it and answers with success or the error. See [`crate::transfer`].
    Push,
}

/// The file of a [`JobKind::Push`] job: the issue's `Push { transfer, path, mode, size, digest }`
/// (the transfer's id is the job's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushSpec {
    /// Where it goes on each target. An existing directory there means `path/name`.
    pub path: String,
    /// The file's own name (the source's), for a directory destination.
    pub name: String,
    /// Permission bits of the installed file.
    pub mode: u32,
    /// Length in bytes.
    pub size: u64,
    /// SHA-256 of the content; a copy that does not match is not installed.
    pub digest: [u8; 32],
    /// Bytes per chunk (the last one may be shorter); at most [`MAX_CHUNK`].
    pub chunk: u32,
    /// The file is a Plush client for this host: install it as such and restart on it.
    pub upgrade: bool,
    /// With `upgrade`: the build of that client ([`crate::Config::build`]). A node that runs it
    /// already succeeds at once and fetches nothing for itself.
    pub build: u64,
}

/// Largest chunk of a transfer: a chunk frame stays well under the default 1 MiB frame limit.
pub const MAX_CHUNK: u32 = 512 << 10;

impl PushSpec {
    /// Number of chunks, or `None` when the chunk size is 0 or above [`MAX_CHUNK`] or there
    /// would be more than `u32::MAX` chunks.
    pub fn chunks(&self) -> Option<u32> {
        if self.chunk == 0 || self.chunk > MAX_CHUNK {
            return None;
        }
        u32::try_from(self.size.div_ceil(u64::from(self.chunk))).ok()
    }

    /// Length of chunk `index` (0 past the end).
    pub fn chunk_len(&self, index: u32) -> usize {
        let start = u64::from(index) * u64::from(self.chunk);
        self.size.saturating_sub(start).min(u64::from(self.chunk)) as usize
    }
}

/// Which nodes a job or barrier concerns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// Every member.
    All,
    /// These nodes.
    Nodes(NodeSet),
}

impl Target {
    /// Whether `id` is targeted.
    pub fn includes(&self, id: &NodeId) -> bool {
        match self {
            Target::All => true,
            Target::Nodes(s) => s.contains(id),
        }
    }
}

/// A job, as it travels down the tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    /// Chosen by the controller, unique among its jobs.
    pub job: u64,
    /// What it is.
    pub kind: JobKind,
    /// Who runs it.
    pub target: Target,
    /// The command and its arguments.
    pub argv: List<String>,
    /// Extra environment.
    pub env: List<(String, String)>,
    /// Working directory (the client's own when `None`).
    pub cwd: Option<String>,
    /// Kill the process after this many milliseconds (0: never).
    pub timeout_ms: u64,
    /// Stream every byte of output up as it comes, under per-link windows (see
    /// [`crate::control`]), instead of gathering it into the result.
    pub stream: bool,
    /// The file, for a [`JobKind::Push`] job (`None` for every other kind).
    pub push: Option<PushSpec>,
    /// The user's cap on each node's output, stdout and stderr together, in bytes (0: none).
    /// Output past it is read and dropped, and the result is marked `truncated`.
    pub max_output: u64,
}

impl RunSpec {
    /// Job `job` of `kind` for `target`, running `argv`: no extra environment, the client's
    /// own directory, no timeout, output gathered (not streamed) and not capped.
    pub fn new(job: u64, kind: JobKind, target: Target, argv: Vec<String>) -> RunSpec {
        RunSpec {
            job,
            kind,
            target,
            argv: List(argv),
            env: List::default(),
            cwd: None,
            timeout_ms: 0,
            stream: false,
            push: None,
            max_output: 0,
        }
    }
}

/// How a job ended on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ExitStatus {
    /// The process exited with this code.
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
    /// It ran past the job's timeout and was killed.
    TimedOut,
    /// The controller cancelled it.
    Cancelled,
    /// It could not be started.
    SpawnFailed,
    /// Not run: the node's client restarted while the job ran there (its predecessor started
    /// it, and died with it), and the job does not ask to be run again
    /// ([`crate::control::RETRY_LOST_ENV`]). The output says so.
    Lost,
}

/// Results of many nodes with the same status, stdout and stderr.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// How it ended.
    pub status: ExitStatus,
    /// The output was cut at the job's [`RunSpec::max_output`].
    pub truncated: bool,
    /// stdout, inline (empty when `blob` is set).
    #[serde(with = "serde_bytes")]
    pub output: Vec<u8>,
    /// The nodes that produced it.
    pub nodes: NodeSet,
    /// stderr, inline (empty when `blob` is set).
    #[serde(with = "serde_bytes")]
    pub stderr: Vec<u8>,
    /// A large output travels apart, once per link, as [`JobMsg::Blob`] chunks sent before
    /// this group: stdout and stderr are then the blob's content, split at `stdout_len`.
    pub blob: Option<BlobRef>,
}

/// An output sent as [`JobMsg::Blob`] chunks, named by its digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BlobRef {
    /// SHA-256 of stdout's length (8 bytes, little-endian), stdout and stderr.
    pub digest: [u8; 32],
    /// Bytes of stdout at the start of the content.
    pub stdout_len: u64,
    /// Bytes of content (stdout and stderr).
    pub len: u64,
}

/// Job and barrier messages. See [`crate::control`] for the protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobMsg {
    /// Down the tree: run this job. (Boxed: the spec is by far the largest message, and every
    /// decoded message, a relay's broadcasts too, would otherwise be moved at its size.)
    Run(Box<RunSpec>),
    /// Up the tree: live output of one node (when the job streams). Counts against the
    /// link's output window ([`JobMsg::OutputAck`]).
    Output {
        /// The job.
        job: u64,
        /// The node.
        node: NodeId,
        /// The bytes.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
        /// From stderr (else stdout).
        err: bool,
    },
    /// Up the tree: results, merged; `complete` says the sender's whole subtree has answered.
    Results {
        /// The job.
        job: u64,
        /// Results by (status, output).
        groups: List<Group>,
        /// The sender and every node below it have reported.
        complete: bool,
    },
    /// Down the tree: the controller holds the results of `nodes`; forget them.
    Ack {
        /// The job.
        job: u64,
        /// Nodes whose results the controller holds.
        nodes: NodeSet,
    },
    /// Down the tree: kill the job everywhere.
    Cancel {
        /// The job.
        job: u64,
    },
    /// Up the tree: these nodes entered the barrier.
    BarrierEnter {
        /// The barrier.
        name: String,
        /// Who entered.
        nodes: NodeSet,
    },
    /// Down the tree: the barrier is released.
    BarrierRelease {
        /// The barrier.
        name: String,
    },
    /// Parent to child (controller to root): chunk `index` of a push job's file.
    Chunk {
        /// The job.
        job: u64,
        /// Which chunk (chunks go in order, from 0).
        index: u32,
        /// Its bytes (empty in the simulator, which counts chunks, not bytes).
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Child to parent (root to controller): "I hold every chunk before `next`". With
    /// `resume`, the sender is new to the receiver (it just attached or started the job): send
    /// from `next` on, whatever was sent before.
    ChunkAck {
        /// The job.
        job: u64,
        /// The first chunk the sender lacks.
        next: u32,
        /// Start (again) from `next`.
        resume: bool,
    },
    /// Parent to child (controller to root): "I passed on (or consumed) `bytes` more bytes of
    /// your `Output` and `Blob` messages of `job`": the sender's window reopens by as much.
    OutputAck {
        /// The job.
        job: u64,
        /// Bytes taken.
        bytes: u64,
    },
    /// Child to parent: part of a large output ([`BlobRef`]), in order from offset 0. Counts
    /// against the link's output window.
    Blob {
        /// The job.
        job: u64,
        /// The content's digest.
        digest: [u8; 32],
        /// Where `data` starts in the content.
        offset: u64,
        /// The content's length.
        total: u64,
        /// The bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
}

/// Bytes of payload a node publishes in its entries.
pub const PAYLOAD: usize = 8;

/// One member in a RanSub set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The member.
    pub id: NodeId,
    /// Child slots it had free.
    pub free: u8,
    /// Its depth in the tree.
    pub depth: u16,
    /// What it published.
    pub payload: [u8; PAYLOAD],
}

/// RanSub messages. See [`crate::ransub`] for the protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RanSubMsg {
    /// Down the tree: a new epoch and the receiver's views.
    Distribute {
        /// The epoch.
        epoch: u32,
        /// The tree's population as the root last counted it.
        population: u32,
        /// A sample of the whole tree.
        all: List<Entry>,
        /// A sample of the nodes outside the receiver's subtree.
        nondesc: List<Entry>,
    },
    /// Up the tree: a sample of the sender's subtree and its population.
    Collect {
        /// The epoch answered.
        epoch: u32,
        /// Nodes in the sender's subtree, the sender included.
        population: u32,
        /// A sample of them.
        set: List<Entry>,
    },
}

/// How a `Join` travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinMode {
    /// Sent by the joiner to any member; members forward it up toward the root.
    Forward,
    /// Sent by a full node to one of its children: it only goes down, never back up.
    Redirect,
    /// Sent by a child of a failed root to the sibling it believes is the new root.
    Failover {
        /// The root the sender saw fail.
        dead_root: NodeId,
    },
    /// Sent by a node repairing its place to a RanSub candidate with free slots: accept me
    /// yourself (after checking, up your parent chain, that you are anchored to a root).
    Direct,
    /// Sent by a joiner with no subtree (a fresh joiner, or a leaf that lost its parent) to any
    /// member, which places it itself: it takes the joiner when it has room and is shallow
    /// enough, passes it up to its parent when it is too deep, or down its own subtree when it
    /// is full. A `Leaf` join from the receiver's own parent only goes down.
    Leaf,
}

/// RandTree messages. See [`crate::tree`] for the protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TreeMsg {
    /// `joiner` asks for a place in the tree.
    Join {
        /// The node that wants a parent.
        joiner: NodeId,
        /// How the request travels.
        mode: JoinMode,
        /// Hops so far; a join that travelled `MAX_JOIN_HOPS` (64, in [`crate::tree`]) is refused.
        hops: u8,
    },
    /// The sender is now the receiver's parent.
    JoinAccept {
        /// The receiver's new ancestors, root first, the sender last.
        path: List<NodeId>,
        /// The root's children as the sender knows them: contacts for recovery.
        top: List<NodeId>,
        /// The receiver's siblings, when the sender is the root; else empty.
        siblings: List<NodeId>,
        /// Whether the sender took the receiver directly (a RanSub repair), not through the root.
        direct: bool,
    },
    /// The sender cannot place the joiner now; try another member.
    JoinReject,
    /// "You are not my parent / child": drop the relation.
    Remove,
    /// From the root to its children: the root's children (the receiver among them).
    Siblings {
        /// The root's children.
        list: List<NodeId>,
    },
    /// From a parent: the receiver's ancestors, root first, the sender last. Flows down the
    /// whole subtree whenever it changes.
    RootInfo {
        /// The receiver's ancestors.
        path: List<NodeId>,
        /// The root's children as the sender knows them: contacts for recovery.
        top: List<NodeId>,
    },
    /// From a root to a known peer: "my tree's root is `root`".
    Probe {
        /// The sender's root (the sender itself).
        root: NodeId,
    },
    /// Answer to a probe: the answerer's root.
    ProbeReply {
        /// The root the answerer knows.
        root: NodeId,
    },
    /// The sender leaves the tree.
    Leave,
    /// A broadcast from the root, relayed down verbatim; every member answers with a reply.
    Broadcast {
        /// Chosen by the root's caller.
        id: u64,
        /// Bytes that only give the frame its size (empty from [`crate::Command::Broadcast`]).
        filler: Filler,
    },
    /// A member's answer to a broadcast, relayed up to the root.
    BroadcastReply {
        /// The broadcast answered.
        id: u64,
        /// The member that answered.
        node: NodeId,
    },
    /// Nothing else to say on a tree link for a while: "I am alive".
    Heartbeat,
    /// Up the parent chain of a node asked to accept `joiner` directly: is that chain anchored
    /// at a joined root, without passing through `joiner`? `route` lists the nodes passed, the
    /// asked node first.
    Verify {
        /// The node asking to join.
        joiner: NodeId,
        /// The chain walked so far.
        route: List<NodeId>,
    },
    /// Back down `route`: the chain reached a joined root.
    VerifyOk {
        /// The node asking to join.
        joiner: NodeId,
        /// The chain still to walk down (its last entry is the receiver).
        route: List<NodeId>,
    },
    /// Back down `route`: the chain is broken or passes through the joiner.
    VerifyFail {
        /// The node asking to join.
        joiner: NodeId,
        /// The chain still to walk down (its last entry is the receiver).
        route: List<NodeId>,
    },
    /// The last frame on a link its sender closes to make room for another (its link budget is
    /// spent): "I am alive". A link that closes without it was reset by a crash or the network.
    Closing,
}

/// Why bytes from the network were refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// A length prefix larger than the maximum frame size.
    TooLarge {
        /// The announced length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The bytes are not a valid encoding of the expected type.
    Malformed,
    /// The message decoded but bytes were left over.
    TrailingBytes(usize),
    /// A hello without the Plush magic.
    BadMagic(u32),
    /// A hello from another protocol version.
    Version {
        /// Our version.
        ours: u16,
        /// The peer's version.
        theirs: u16,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooLarge { len, max } => write!(f, "frame of {len} bytes exceeds the maximum of {max}"),
            DecodeError::Malformed => write!(f, "malformed message"),
            DecodeError::TrailingBytes(n) => write!(f, "{n} unexpected bytes after the message"),
            DecodeError::BadMagic(m) => write!(f, "not a Plush peer (magic {m:#010x})"),
            DecodeError::Version { ours, theirs } => {
                write!(f, "protocol version mismatch: ours {ours}, theirs {theirs}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

fn decode_exact<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, DecodeError> {
    let mut input = InPlace::new(payload);
    let v = input.value::<T>();
    match input.check(v.is_err()) {
        Some(e) => Err(e),
        None => v.map_err(|_| DecodeError::Malformed),
    }
}

/// A payload decoded in two steps, for a caller that matches the value where the decoder left
/// it: every way of returning it with the check folded in (a `Result` of another error type, a
/// tuple) moved the whole message once more, a store-forwarding stall on every frame of a relay.
pub(crate) struct InPlace<'a>(postcard::Deserializer<'a, postcard::de_flavors::Slice<'a>>);

impl<'a> InPlace<'a> {
    #[inline]
    pub fn new(payload: &'a [u8]) -> Self {
        InPlace(postcard::Deserializer::from_bytes(payload))
    }

    /// The value (`Err`: the bytes are malformed).
    #[inline]
    pub fn value<T: Deserialize<'a>>(&mut self) -> postcard::Result<T> {
        T::deserialize(&mut self.0)
    }

    /// What [`Message::decode`] refuses of the payload, given whether [`InPlace::value`] was
    /// `Err` (`malformed`): that, or bytes left after the value.
    #[inline]
    pub fn check(self, malformed: bool) -> Option<DecodeError> {
        let rest = self.0.finalize().map_or(0, |r| r.len());
        match malformed {
            true => Some(DecodeError::Malformed),
            false if rest > 0 => Some(DecodeError::TrailingBytes(rest)),
            false => None,
        }
    }
}

impl Message {
    /// Decode one message payload (length prefix already removed).
    pub fn decode(payload: &[u8]) -> Result<Message, DecodeError> {
        decode_exact(payload)
    }

    /// The message's kind, `layer.variant` in snake case (`"tree.join_accept"`): one of
    /// [`KINDS`]. For statistics, benchmarks and seed corpora.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Tree(m) => match m {
                TreeMsg::Join { .. } => "tree.join",
                TreeMsg::JoinAccept { .. } => "tree.join_accept",
                TreeMsg::JoinReject => "tree.join_reject",
                TreeMsg::Remove => "tree.remove",
                TreeMsg::Siblings { .. } => "tree.siblings",
                TreeMsg::RootInfo { .. } => "tree.root_info",
                TreeMsg::Probe { .. } => "tree.probe",
                TreeMsg::ProbeReply { .. } => "tree.probe_reply",
                TreeMsg::Leave => "tree.leave",
                TreeMsg::Broadcast { .. } => "tree.broadcast",
                TreeMsg::BroadcastReply { .. } => "tree.broadcast_reply",
                TreeMsg::Heartbeat => "tree.heartbeat",
                TreeMsg::Verify { .. } => "tree.verify",
                TreeMsg::VerifyOk { .. } => "tree.verify_ok",
                TreeMsg::VerifyFail { .. } => "tree.verify_fail",
                TreeMsg::Closing => "tree.closing",
            },
            Message::RanSub(m) => match m {
                RanSubMsg::Distribute { .. } => "ransub.distribute",
                RanSubMsg::Collect { .. } => "ransub.collect",
            },
            Message::Control(m) => match m {
                ControlMsg::SetCtrl { .. } => "control.set_ctrl",
                ControlMsg::SetRoot { .. } => "control.set_root",
                ControlMsg::SetPeer { .. } => "control.set_peer",
                ControlMsg::InviteFailed { .. } => "control.invite_failed",
                ControlMsg::Joined { .. } => "control.joined",
                ControlMsg::Disconnected { .. } => "control.disconnected",
                ControlMsg::GetStatus => "control.get_status",
                ControlMsg::Status { .. } => "control.status",
                ControlMsg::Participants { .. } => "control.participants",
                ControlMsg::Forget { .. } => "control.forget",
                ControlMsg::Disconnect => "control.disconnect",
                ControlMsg::Census => "control.census",
                ControlMsg::Maintenance { .. } => "control.maintenance",
                ControlMsg::MaintenanceFailed { .. } => "control.maintenance_failed",
                ControlMsg::Linger { .. } => "control.linger",
                ControlMsg::Share { .. } => "control.share",
            },
            Message::Job(m) => match m {
                JobMsg::Run(_) => "job.run",
                JobMsg::Output { .. } => "job.output",
                JobMsg::Results { .. } => "job.results",
                JobMsg::Ack { .. } => "job.ack",
                JobMsg::Cancel { .. } => "job.cancel",
                JobMsg::BarrierEnter { .. } => "job.barrier_enter",
                JobMsg::BarrierRelease { .. } => "job.barrier_release",
                JobMsg::Chunk { .. } => "job.chunk",
                JobMsg::ChunkAck { .. } => "job.chunk_ack",
                JobMsg::OutputAck { .. } => "job.output_ack",
                JobMsg::Blob { .. } => "job.blob",
            },
        }
    }
}

/// Every message kind [`Message::kind`] names, by layer. [`crate::samples::messages`] has one
/// message of each (a test checks that the two agree).
pub const KINDS: [&str; 45] = [
    "tree.join",
    "tree.join_accept",
    "tree.join_reject",
    "tree.remove",
    "tree.siblings",
    "tree.root_info",
    "tree.probe",
    "tree.probe_reply",
    "tree.leave",
    "tree.broadcast",
    "tree.broadcast_reply",
    "tree.heartbeat",
    "tree.verify",
    "tree.verify_ok",
    "tree.verify_fail",
    "tree.closing",
    "ransub.distribute",
    "ransub.collect",
    "control.set_ctrl",
    "control.set_root",
    "control.set_peer",
    "control.invite_failed",
    "control.joined",
    "control.disconnected",
    "control.get_status",
    "control.status",
    "control.participants",
    "control.forget",
    "control.disconnect",
    "control.census",
    "control.maintenance",
    "control.maintenance_failed",
    "control.linger",
    "control.share",
    "job.run",
    "job.output",
    "job.results",
    "job.ack",
    "job.cancel",
    "job.barrier_enter",
    "job.barrier_release",
    "job.chunk",
    "job.chunk_ack",
    "job.output_ack",
    "job.blob",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::*;

    fn id(i: u32) -> NodeId {
        NodeId::loopback(i, 7000)
    }

    #[test]
    fn a_broadcast_filler_keeps_its_length_and_a_longer_one_is_refused() {
        let mut pool = FramePool::default();
        let empty = pool.encode(&Message::Tree(TreeMsg::Broadcast { id: 5, filler: Filler(0) }), 64).unwrap();
        let head = empty.payload()[..empty.payload().len() - 1].to_vec();
        for n in [0, 1, 127, 128, 1000, MAX_FILLER as u32] {
            let msg = Message::Tree(TreeMsg::Broadcast { id: 5, filler: Filler(n) });
            let frame = pool.encode(&msg, 1 << 20).expect("encodes");
            // A byte string: the length as a varint, then the bytes.
            let mut want = head.clone();
            let mut len = n;
            while len >= 0x80 {
                want.push((len as u8 & 0x7f) | 0x80);
                len >>= 7;
            }
            want.push(len as u8);
            want.resize(want.len() + n as usize, 0);
            assert_eq!(frame.payload(), &want[..], "{n} bytes of filler");
            assert_eq!(Message::decode(frame.payload()), Ok(msg));
        }
        // Hand-made: the same message with one byte too many in the filler.
        let ok = pool
            .encode(&Message::Tree(TreeMsg::Broadcast { id: 5, filler: Filler(MAX_FILLER as u32) }), 1 << 20)
            .expect("encodes")
            .payload()
            .to_vec();
        let head = ok.len() - MAX_FILLER - 3; // tag bytes and id, before the 3-byte varint length
        let mut long = ok[..head].to_vec();
        let n = MAX_FILLER + 1;
        long.extend_from_slice(&[(n & 0x7f) as u8 | 0x80, ((n >> 7) & 0x7f) as u8 | 0x80, (n >> 14) as u8]);
        long.resize(long.len() + n, 0);
        assert_eq!(Message::decode(&long), Err(DecodeError::Malformed));
        // An encoder asked for more cuts it to the bound.
        let cut = pool.encode(&Message::Tree(TreeMsg::Broadcast { id: 5, filler: Filler(u32::MAX) }), 1 << 20);
        assert_eq!(cut.expect("encodes").payload(), &ok[..]);
    }

    #[test]
    fn message_round_trips_through_a_frame() {
        let mut pool = FramePool::default();
        let msg = Message::Tree(TreeMsg::JoinAccept {
            path: List(vec![id(0), id(3)]),
            top: List(vec![id(3)]),
            siblings: List(vec![id(1), id(2)]),
            direct: true,
        });
        let frame = pool.encode(&msg, 1 << 20).unwrap();
        let (payload, used) = split_frame(&frame, 1 << 20).unwrap().unwrap();
        assert_eq!(used, frame.len());
        assert_eq!(Message::decode(payload).unwrap(), msg);
    }

    #[test]
    fn a_chunk_frame_from_borrowed_bytes_is_the_plain_encoding() {
        let mut pool = FramePool::default();
        for len in [0usize, 1, 127, 128, 300, 16_383, 16_384, 200_000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let msg = Message::Job(JobMsg::Chunk { job: 1 << 40, index: 77_777, data: data.clone() });
            let plain = pool.encode(&msg, 1 << 20).unwrap();
            let built = chunk_frame(1 << 40, 77_777, &data, 1 << 20).unwrap();
            assert_eq!(&built[..], &plain[..], "{len} bytes");
            assert_eq!(Message::decode(built.payload()).unwrap(), msg);
        }
        assert!(chunk_frame(1, 1, &[0; 100], 50).is_none());
    }

    #[test]
    fn decoding_in_place_refuses_and_accepts_what_decode_does() {
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        for m in crate::samples::messages() {
            let p = FramePool::default().encode(&m, 1 << 20).expect("a sample encodes").payload().to_vec();
            let mut trailing = p.clone();
            trailing.extend_from_slice(&[0, 0]);
            inputs.extend([p.clone(), p[..p.len() / 2].to_vec(), trailing]);
        }
        inputs.extend([vec![], vec![0xff; 9], vec![9, 1, 2]]);
        for p in &inputs {
            // What a decoder that takes the value out of postcard's result refuses.
            let want = match postcard::take_from_bytes::<Message>(p) {
                Err(_) => Err(DecodeError::Malformed),
                Ok((_, rest)) if !rest.is_empty() => Err(DecodeError::TrailingBytes(rest.len())),
                Ok((m, _)) => Ok(m),
            };
            let mut d = InPlace::new(p);
            let m = d.value::<Message>();
            let got = match d.check(m.is_err()) {
                Some(e) => Err(e),
                None => m.map_err(|_| DecodeError::Malformed),
            };
            assert_eq!(got, want, "{p:?}: in place");
            assert_eq!(Message::decode(p), want, "{p:?}: Message::decode");
        }
    }

    #[test]
    fn garbage_and_trailing_bytes_are_errors() {
        assert_eq!(Message::decode(&[0xff, 0xff, 0xff]), Err(DecodeError::Malformed));
        let mut pool = FramePool::default();
        let f = pool.encode(&Message::Tree(TreeMsg::Leave), 64).unwrap();
        let mut long = f.payload().to_vec();
        long.push(0);
        assert_eq!(Message::decode(&long), Err(DecodeError::TrailingBytes(1)));
    }

    #[test]
    fn a_lying_list_length_is_refused() {
        // Tree(RootInfo { path }) with a path claiming 100,000 entries.
        let mut bytes = vec![0u8, 5];
        let mut n = 100_000u32;
        while n >= 0x80 {
            bytes.push((n as u8) | 0x80);
            n >>= 7;
        }
        bytes.push(n as u8);
        assert!(Message::decode(&bytes).is_err());
    }

    #[test]
    fn hello_checks_magic_and_version() {
        let h = Hello::new(id(4), Role::Client, 99);
        let f = encode_hello(&h);
        let (payload, _) = split_frame(&f, 1024).unwrap().unwrap();
        assert_eq!(Hello::decode(payload), Ok(h));
        let mut bad = h;
        bad.protocol_version = 9;
        let f = encode_hello(&bad);
        assert_eq!(Hello::decode(&f[PREFIX..]), Err(DecodeError::Version { ours: PROTOCOL_VERSION, theirs: 9 }));
    }
}
