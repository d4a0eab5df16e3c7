//! The Plush control plane, client side: controller link, invitations, membership reports, jobs
//! with exactly-once results, barriers, dismantle.
//!
//! **Controller and root.** Every member learns the controller's id (`SetCtrl` from its parent
//! when it attaches). The root keeps a pinned link to the controller and answers its `SetCtrl`
//! (sent on connect and every two minutes) with `SetRoot`. A node that becomes root tells the
//! controller with `SetRoot`; a root that merges into another tree sends `SetCtrl` up toward the
//! new root, which then does the same, unless it was orphaned (its controller gone and not
//! back: a dead controller named up the tree would take the tree away from a live one). When
//! the controller (re)connects, the root runs a census down the tree and sends the members up
//! as `Participants`.
//!
//! **Invitations.** The controller sends `SetPeer { host }` to the root; the root opens a link
//! to the host and forwards it. An idle client that gets it joins through the root and, once
//! attached, announces `Joined` up the tree to the controller. When the root cannot reach the
//! host it reports `InviteFailed` (or, with [`crate::Config::launch_at_root`], launches the client
//! itself and retries). Members that lose a parent or child report `Disconnected` up the tree;
//! the root checks reports from anyone else with `GetStatus` before passing them on, and marks
//! what it passes on as checked or not; the controller asks the root to check an unchecked
//! report about a host that rejoined moments ago (it may be stale: the host was relaunched and
//! rejoined meanwhile).
//!
//! **Jobs.** `Run` floods down the tree (and to every child that attaches later while the job is
//! known). Each target spawns the process through its driver and records a result (status and
//! output, capped). Results travel up as groups of nodes with identical (status, output),
//! merged at every hop: a node sends once every child has answered for its subtree, or
//! [`crate::Config::merge_delay`] after the first unsent result. Every node *holds* the results it
//! produced or received until the controller's `Ack` covers them, and re-sends everything it
//! holds whenever it attaches to a new parent (or, at the root, when the controller link comes
//! back). So no result is lost when a parent dies; the controller removes duplicates by node.
//!
//! **Barriers.** `BarrierEnter` travels up like results (merged, held until released, re-sent
//! after a reconfiguration); the controller decides the release, and `BarrierRelease` floods
//! down. A node that enters an already released barrier passes at once and is reported late.
//!
//! **Maintenance script.** The controller may carry a user script (at most
//! [`crate::wire::MAX_SCRIPT`] bytes): to each root it learns (`Maintenance`), and with every
//! invitation it or the root sends (`Maintenance` just before `SetPeer`, on the same link). An
//! idle client invited with a script runs it first (`/bin/sh -c`, as the pseudo-job
//! [`MAINT_JOB`], killed after [`crate::Config::maintenance_timeout`]); it joins only if the
//! script exits 0, and otherwise tells the controller (`MaintenanceFailed`, with the status and
//! the start of the output) and stays out of the tree; the controller answers `Disconnect`, and
//! it exits. A member invited again runs nothing.
//!
//! **Only the controller starts work.** A member takes a script only from the controller's link
//! (the one it will send with the invitations it forwards as root); an idle client takes one
//! from anybody but runs it only if the `SetPeer` that follows comes on the same link (the
//! inviter's own script). The root forwards invitations only from the controller or, passed up,
//! from a child. An idle client obeys an invitation from any authenticated peer: before it joins
//! it knows no tree, and every link is sealed under the cluster key (any member holds the key:
//! see the README on what the secure channel does not protect against).
//!
//! **Dismantle.** `Disconnect` floods down; a node exits once it has no children, re-sending
//! `Disconnect` every heartbeat to the children that remain, and after
//! [`crate::Config::dismantle_timer`] regardless. A client without any link for
//! [`crate::Config::idle_expiry`] exits by itself.
//!
//! **Lingering.** A tree outlives its controller for a while: jobs run on and every node holds
//! its results, so that a controller that comes back (the same one, or a new process resuming
//! the session) collects them. The root counts: from the moment its controller link breaks, or
//! from its own becoming root (a new root does not know how long its predecessor had been
//! alone, and starts counting afresh), until the controller's own `SetCtrl` reaches it (sent by
//! the controller on every attach and root change, and every two minutes). After the linger
//! ([`crate::Config::linger`], or what the controller told the tree with `Linger`) without one,
//! the root dismantles the tree as the controller's `Disconnect` would: one decision, flooded
//! down. So a tree whose controller died is gone within the linger, plus the time the last root
//! change took (failover: `dead_after` and a rejoin), plus the dismantle's flood; every root
//! change while the controller is away starts the count again. A node that misses the flood
//! (repairing at that moment) counts too: a node that once had a controller and has been
//! without a tree (no parent, not a root) for the linger ends its subtree and exits, whether
//! or not it became a root meanwhile (then it counts as a root).
//!
//! **Commands only come down.** `Run`, `Cancel`, `Ack`, `BarrierRelease`, `Forget` and
//! `Disconnect` are accepted only from the parent (at the root: from the controller); from
//! anyone else they are counted in [`crate::Stats::commands_rejected`] and reported with
//! [`crate::Event::CommandRejected`].
//!
//! Bounds: at most [`crate::Config::max_jobs`] jobs, [`MAX_GROUPS`] distinct results held per
//! job, [`MAX_BARRIERS`] barriers, [`MAX_REPORTS`] reports waiting for a way up,
//! [`crate::Config::max_invitations`] invitations and [`MAX_VERIFYING`] verifications at the
//! root, [`MAX_DONE`] finished job ids remembered.

use crate::conn::Pin;
use crate::contract::{Event, Output, ProcessEvent};
use crate::ctx::Ctx;
use crate::id::NodeId;
use crate::nodeset::NodeSet;
use crate::time::Instant;
use crate::transfer::Xfer;
use crate::tree::{Tree, TreeState};
use crate::wire::{BlobRef, ControlMsg, ExitStatus, Group, JobKind, JobMsg, List, Message, RunSpec, Target};
use rand::RngExt;
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::rc::Rc;

/// Distinct (status, output) groups a node holds per job; a result beyond is forwarded but not
/// held (counted in [`crate::Stats::results_unheld`]).
pub const MAX_GROUPS: usize = 1024;
/// Barriers a node tracks at once; entering one more is refused.
pub const MAX_BARRIERS: usize = 64;
/// Released barrier names remembered (a late entrant passes at once).
pub const MAX_RELEASED: usize = 64;
/// Reports (`Joined`, `Disconnected`) waiting while the node has no way up; the oldest is dropped.
pub const MAX_REPORTS: usize = 256;
/// Reports the root verifies at once; more from non-neighbours are dropped.
pub const MAX_VERIFYING: usize = 64;
/// Finished job ids remembered, so that a stale `Run` never runs a job twice.
pub const MAX_DONE: usize = 1024;
/// The job id of a running maintenance script (its process events carry it). The top bit is
/// set, so no controller job ever has it.
pub const MAINT_JOB: u64 = u64::MAX;
/// Longest barrier name accepted.
pub const MAX_NAME: usize = 128;
/// A job whose environment sets this variable to `1` may run again on a host whose client
/// restarted while it ran there (`plush run --retry-lost`, an application file's `restart`
/// policy). Without it, such a host answers [`ExitStatus::Lost`] instead of running the job a
/// second time. It travels in the environment, not as a field of the `Run`, so clients of
/// earlier builds decode the `Run` unchanged; the process sees it too, and may take it as a
/// hint that it can be a second run.
pub const RETRY_LOST_ENV: &str = "PLUSH_RETRY_LOST";
/// Jobs a restarted client remembers its predecessor started (see `Control::set_prior`).
pub const MAX_PRIOR: usize = 64;
/// The output of a node's result for a job its predecessor had started (see [`RETRY_LOST_ENV`]).
pub const LOST_OUTPUT: &[u8] =
    b"plush: the client restarted while this job ran here; not run again (--retry-lost runs it again)";
/// The output of a node's result when it had no room for another job.
const TOO_MANY_JOBS: &[u8] = b"plush: too many jobs on this node";
/// A results message is split once its groups' outputs pass this many bytes.
const SPLIT_BYTES: usize = 256 << 10;
/// Output (stdout and stderr) carried inline in a result group; a larger one travels as a
/// blob ([`JobMsg::Blob`]), once per link and digest.
pub const INLINE_OUTPUT: usize = 32 << 10;
/// How a node's live output (on stderr) says that bytes of it that were in flight when a link
/// of the tree broke may be missing there: this, the count, and the rest of the line.
pub const OUTPUT_CUT_PREFIX: &str = "plush: up to ";
/// Bytes per [`JobMsg::Blob`] chunk.
pub const BLOB_CHUNK: usize = 64 << 10;
/// Blobs being received at once per job (from different children); a chunk of one more is
/// dropped (and acknowledged, so the sender's window does not close for good).
pub const MAX_PARTIAL_BLOBS: usize = 64;
/// Bytes of large outputs a node may hold per job: arriving, waiting in its queue up, or held
/// for results already sent up until the controller's `Ack` covers them. Past it, children's
/// blob chunks are acknowledged only as the backlog drains (so a child's window closes and it
/// sends no more), except, when all of the backlog is arriving (the rest drains by itself),
/// those of the oldest blob being received, which always goes on (so that its group can
/// follow it and drain in turn). Beyond this bound a node holds at most one large output
/// more, its own, and a window per child.
/// (Held outputs drain by themselves: the controller acknowledges large results within
/// `controller::LARGE_ACK_PACE`.)
pub const BLOB_BACKLOG: u64 = 8 << 20;
/// Blobs a node keeps for groups still to come, per job (see `Upward::awaiting`).
pub const MAX_AWAITING: usize = 1024;
/// Most bytes reserved at once for a blob from its announced size.
pub const BLOB_RESERVE: u64 = 16 << 20;

/// A result group held by a node: the output is shared between the held and unsent copies.
#[derive(Clone, Debug)]
struct Held {
    status: ExitStatus,
    truncated: bool,
    /// stdout, then stderr.
    content: Rc<Vec<u8>>,
    /// Where stderr starts in `content`.
    split: usize,
    /// [`digest_of`] the content: equal digests, equal outputs.
    digest: [u8; 32],
    nodes: NodeSet,
}

/// SHA-256 of stdout's length (8 bytes, little-endian), stdout and stderr: the name of an
/// output ([`BlobRef::digest`]).
pub fn digest_of(stdout: &[u8], stderr: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update((stdout.len() as u64).to_le_bytes());
    h.update(stdout);
    h.update(stderr);
    h.finalize().into()
}

impl Held {
    fn new(status: ExitStatus, truncated: bool, stdout: &[u8], stderr: &[u8], nodes: NodeSet) -> Held {
        let mut content = Vec::with_capacity(stdout.len() + stderr.len());
        content.extend_from_slice(stdout);
        content.extend_from_slice(stderr);
        Held::of_content(status, truncated, Rc::new(content), stdout.len(), nodes)
    }

    /// [`Held::new`] taking stdout's buffer: a large output is not copied (nor held twice).
    fn owned(status: ExitStatus, truncated: bool, mut stdout: Vec<u8>, stderr: &[u8], nodes: NodeSet) -> Held {
        let split = stdout.len();
        stdout.extend_from_slice(stderr);
        stdout.shrink_to_fit();
        Held::of_content(status, truncated, Rc::new(stdout), split, nodes)
    }

    fn of_content(status: ExitStatus, truncated: bool, content: Rc<Vec<u8>>, split: usize, nodes: NodeSet) -> Held {
        let split = split.min(content.len());
        let digest = digest_of(&content[..split], &content[split..]);
        Held { status, truncated, content, split, digest, nodes }
    }

    /// Same status, truncation and output (by digest).
    fn same(&self, other: &Held) -> bool {
        self.status == other.status && self.truncated == other.truncated && self.digest == other.digest
    }

    fn blob_ref(&self) -> BlobRef {
        BlobRef { digest: self.digest, stdout_len: self.split as u64, len: self.content.len() as u64 }
    }

    /// The group as it travels: inline, or naming its blob.
    fn group(&self) -> Group {
        if self.content.len() <= INLINE_OUTPUT {
            Group {
                status: self.status,
                truncated: self.truncated,
                output: self.content[..self.split].to_vec(),
                nodes: self.nodes.clone(),
                stderr: self.content[self.split..].to_vec(),
                blob: None,
            }
        } else {
            Group {
                status: self.status,
                truncated: self.truncated,
                output: Vec::new(),
                nodes: self.nodes.clone(),
                stderr: Vec::new(),
                blob: Some(self.blob_ref()),
            }
        }
    }
}

/// Something a node sends up for a job, in order. `Output` and `Blob` count against the
/// link's output window ([`crate::Config::output_window`]); `Results` do not, but wait their
/// turn behind them (so the blobs they name, and the live output before them, arrive first).
#[derive(Debug)]
enum UpItem {
    /// Live output of `node`; `from`: the child it came from (acknowledged once this is sent
    /// up), `None` for our own.
    Output { node: NodeId, err: bool, bytes: Vec<u8>, from: Option<NodeId> },
    /// A large output, sent in [`BLOB_CHUNK`] chunks from `offset` on.
    Blob { digest: [u8; 32], content: Rc<Vec<u8>>, offset: usize },
    /// Result groups.
    Results { groups: Vec<Group>, complete: bool },
}

/// A job's output on its way up, and the blobs received from below.
///
/// Bounds: `queue` holds at most our own unsent output (the driver stops reading our pipes
/// once any waits, so at most what it read before it heard: see the driver) plus each child's
/// window (a child's output is acknowledged only once passed on), plus result groups, which
/// are bounded by [`MAX_GROUPS`]; `partial` at most [`MAX_PARTIAL_BLOBS`].
#[derive(Debug, Default)]
struct Upward {
    queue: VecDeque<UpItem>,
    /// Windowed bytes sent up and not acknowledged yet.
    inflight: u64,
    /// The same, item by item, oldest first: (whose live output, `None` for a blob chunk;
    /// bytes not acknowledged). At most a window's worth of items.
    sent: VecDeque<(Option<NodeId>, u64)>,
    /// Bytes of our own live output waiting in `queue`.
    own_queued: u64,
    /// The driver was told to stop reading our process's output.
    paused: bool,
    /// Blobs sent to the current way up.
    sent_blobs: Vec<[u8; 32]>,
    /// Blobs received from below.
    blobs: Blobs,
    /// Blob bytes received from children and not acknowledged yet ([`BLOB_BACKLOG`]). At most
    /// one entry per child.
    deferred: Vec<(NodeId, u64)>,
    /// (child, digest): the child sent chunks of this blob (kept, or dropped as a copy of one
    /// here) and its group naming it has not come yet, so the blob is kept for it even once
    /// other results naming it are acknowledged. At most [`MAX_AWAITING`], oldest dropped.
    awaiting: VecDeque<(NodeId, [u8; 32])>,
}

impl Upward {
    /// Large-output bytes here that have not gone up: (arriving, waiting in the queue).
    fn backlog(&self) -> (u64, u64) {
        let arriving: u64 = self.blobs.partial.iter().map(|p| p.2.len() as u64).sum();
        let queued: u64 = self
            .queue
            .iter()
            .map(|i| match i {
                UpItem::Blob { content, offset, .. } => (content.len() - offset) as u64,
                _ => 0,
            })
            .sum();
        (arriving, queued)
    }

    /// Large outputs of `held` results that are not in the queue up: sent (or about to be),
    /// waiting for the controller's `Ack`.
    fn held_only(&self, held: &[Held]) -> u64 {
        let mut seen: SmallVec<[[u8; 32]; 8]> = SmallVec::new();
        let mut n = 0;
        for h in held.iter().filter(|h| h.content.len() > INLINE_OUTPUT) {
            let queued = self.queue.iter().any(|i| matches!(i, UpItem::Blob { digest, .. } if *digest == h.digest));
            if !queued && !seen.contains(&h.digest) {
                seen.push(h.digest);
                n += h.content.len() as u64;
            }
        }
        n
    }

    /// Acknowledge what the backlog allows (see [`BLOB_BACKLOG`]): everything while under it,
    /// else, if all of it is arriving (none waits in the queue up, which drains as the parent
    /// acknowledges, nor only for an `Ack`, which comes by itself), what the sender of the
    /// oldest blob being received is owed.
    fn release(&mut self, ctx: &mut Ctx<'_>, tree: &Tree, job: u64, held: &[Held]) {
        if self.deferred.is_empty() {
            return;
        }
        let held = self.held_only(held);
        let (arriving, queued) = self.backlog();
        let first = self.blobs.partial.first().map(|p| p.0).filter(|_| held == 0 && queued == 0);
        let all = arriving + queued + held <= BLOB_BACKLOG;
        self.deferred.retain(|&(c, n)| {
            if !all && Some(c) != first {
                return true;
            }
            if tree.children().contains(&c) {
                ctx.send_msg(c, &Message::Job(JobMsg::OutputAck { job, bytes: n }));
            }
            false
        });
    }
}

/// Blobs received for one job ([`JobMsg::Blob`]). Bounds: at most [`MAX_PARTIAL_BLOBS`] being
/// received; whole ones at most one per distinct output of the job (as many as the result
/// groups they belong to), dropped with the job.
#[derive(Debug, Default)]
pub(crate) struct Blobs {
    /// Being received: (sender, digest, content so far, total), oldest first. Several children
    /// may send the same output at once; each sends its chunks in order.
    partial: Vec<(NodeId, [u8; 32], Vec<u8>, u64)>,
    /// Received whole.
    whole: Vec<([u8; 32], Rc<Vec<u8>>)>,
    /// At the controller: blobs already split into stdout and stderr for its reports (then no
    /// longer in `whole`), so that each is held once however many groups name it.
    split: Vec<([u8; 32], Streams)>,
}

/// stdout and stderr of an output, shared.
pub type Streams = (Rc<Vec<u8>>, Rc<Vec<u8>>);

/// Merge `g` into `groups`; false if it would be a new group and the list is full.
fn merge(groups: &mut Vec<Held>, g: &Held) -> bool {
    if let Some(h) = groups.iter_mut().find(|h| h.same(g)) {
        h.nodes.extend(&g.nodes);
        return true;
    }
    if groups.len() >= MAX_GROUPS {
        return false;
    }
    groups.push(g.clone());
    true
}

fn remove_acked(groups: &mut Vec<Held>, acked: &NodeSet) {
    for g in groups.iter_mut() {
        g.nodes.remove_all(acked);
    }
    groups.retain(|g| !g.nodes.is_empty());
}

/// Where this node's own part of a job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Own {
    /// Not a target: nothing to run.
    NotTarget,
    /// Spawned; the deadline is the job's timeout.
    Running(Option<Instant>),
    /// Finished (its result is in `held` until acknowledged).
    Done,
}

#[derive(Debug)]
struct Job {
    spec: Rc<RunSpec>,
    /// The `Run` arrived (else only results did, and `spec` is a stand-in never forwarded).
    known: bool,
    /// Admitted past [`crate::Config::max_jobs`]: no process runs for it here.
    over: bool,
    own: Own,
    /// Our own process's stdout and stderr (gathered when the job does not stream).
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// Output bytes our process wrote so far (kept or streamed), for the job's cap.
    out_bytes: u64,
    truncated: bool,
    /// Every unacknowledged result this node produced or received. At most [`MAX_GROUPS`].
    held: Vec<Held>,
    /// What is still to be sent up. At most [`MAX_GROUPS`].
    unsent: Vec<Held>,
    /// Children that said their whole subtree answered.
    answered: SmallVec<[NodeId; 4]>,
    /// Per sender below us, the nodes whose results it sent us: an `Ack` goes down to each
    /// only for those, so acknowledgements cost what the results cost. One entry per child
    /// that sent results (former children included until acknowledged).
    from: Vec<(NodeId, NodeSet)>,
    /// What we last told the way up about our subtree.
    told_complete: bool,
    flush_at: Option<Instant>,
    /// Once nothing is held and the process is done: forget the job at this time.
    linger_until: Option<Instant>,
    /// Output on its way up. See [`Upward`].
    up: Upward,
    /// A push job's transfer (see [`crate::transfer`]); `None` for every other kind.
    xfer: Option<Box<Xfer>>,
}

#[derive(Debug)]
struct Barrier {
    name: String,
    /// This node's own process waits in it.
    waiting: bool,
    /// Entries held until the release (ours and our subtree's).
    held: NodeSet,
    unsent: NodeSet,
    flush_at: Option<Instant>,
}

#[derive(Debug)]
struct Invite {
    host: NodeId,
    launched: bool,
    expires: Instant,
    /// The `SetPeer` went out (at most [`invite_slots`] at once; the others wait their turn).
    sent: bool,
    /// The link to the host opened, so the `SetPeer` reached it: the invitation no longer
    /// takes a slot (the link is an ordinary idle one from then on, which the budget may
    /// close), but is remembered until the host joins or it expires.
    connected: bool,
}

/// Invitations a root has connecting at once: each holds a link that is still opening, so at
/// most a quarter of the link budget, and at most [`crate::Config::max_invitations`]. A slot is
/// held from the `SetPeer` until its link opens (or fails), not until the host has joined:
/// under wide-area latency a join and its report up the tree take many round trips, and a
/// budget-limited root holding its few slots for all of them invited a dozen hosts a second.
fn invite_slots(cfg: &crate::Config) -> usize {
    cfg.max_invitations.min(cfg.max_links / 4).max(1)
}

/// The client side of the control plane. See the module docs.
#[derive(Debug)]
pub(crate) struct Control {
    me: NodeId,
    /// The controller, once known.
    ctrl: Option<NodeId>,
    /// At the root: the controller knows we are the root and its link is pinned.
    ctrl_linked: bool,
    /// An invitation made us join; we announce `Joined` once attached.
    announce: bool,
    invites: Vec<Invite>,
    /// (node, deadline) of `Disconnected` reports the root is checking with `GetStatus`.
    verifying: Vec<(NodeId, Instant)>,
    /// Reports waiting for a way up. At most [`MAX_REPORTS`].
    reports: VecDeque<ControlMsg>,
    jobs: Vec<Job>,
    done: VecDeque<u64>,
    barriers: Vec<Barrier>,
    released: VecDeque<String>,
    census_seq: u64,
    /// Dismantling: exit at this time regardless; re-send `Disconnect` at the second.
    dismantle: Option<(Instant, Instant)>,
    /// Since when the node has had no link at all.
    idle_since: Option<Instant>,
    /// The node exited: it does nothing more.
    pub exited: bool,
    /// The maintenance script to run before joining, and to send with invitations (at most
    /// [`crate::wire::MAX_SCRIPT`] bytes), and who sent it.
    script: Option<(Rc<str>, NodeId)>,
    /// The maintenance script is running: join through `boot` once it succeeds.
    maint: Option<Maint>,
    /// The linger the controller told the tree ([`ControlMsg::Linger`]); `None`:
    /// [`crate::Config::linger`].
    linger: Option<core::time::Duration>,
    /// At the root: since when it has been without its controller (see the module docs on
    /// lingering); `None` elsewhere, and while the controller is there.
    orphaned: Option<Instant>,
    /// Since when this node, once under a controller, has had no tree: detached from its
    /// parent, repairing, and not a root. Past the linger it ends its subtree and exits (a
    /// node still repairing when its tree's dismantle passed would otherwise try to join
    /// forever). `None` while attached or root.
    detached: Option<Instant>,
    /// Jobs (controller, job) that a previous client on this address started: asked to run one
    /// of them, the node answers [`ExitStatus::Lost`] (unless the job asks for retries). Set
    /// once by the driver at start, from the host's job record; at most [`MAX_PRIOR`].
    prior: Vec<(NodeId, u64)>,
}

/// A maintenance script running before the node joins.
#[derive(Debug)]
struct Maint {
    /// Join through this member (none: found the tree; the controller itself invited).
    boot: Option<NodeId>,
    /// Killed and failed at this time.
    deadline: Instant,
    /// The start of its output, at most [`crate::wire::MAX_SCRIPT_OUTPUT`] bytes.
    output: Vec<u8>,
}

/// The first bit of a census job id (the controller's own jobs never set it).
pub const CENSUS_BIT: u64 = 1 << 63;

impl Control {
    pub fn new(me: NodeId, now: Instant) -> Self {
        Control {
            me,
            ctrl: None,
            ctrl_linked: false,
            announce: false,
            invites: Vec::new(),
            verifying: Vec::new(),
            reports: VecDeque::new(),
            jobs: Vec::new(),
            done: VecDeque::new(),
            barriers: Vec::new(),
            released: VecDeque::new(),
            census_seq: 0,
            dismantle: None,
            idle_since: Some(now),
            exited: false,
            script: None,
            maint: None,
            prior: Vec::new(),
            linger: None,
            orphaned: None,
            detached: None,
        }
    }

    /// Jobs a previous client on this address started (see `prior`); the last [`MAX_PRIOR`].
    pub fn set_prior(&mut self, jobs: &[(NodeId, u64)]) {
        self.prior = jobs[jobs.len().saturating_sub(MAX_PRIOR)..].to_vec();
    }

    /// Whether `spec` is a job this host's previous client started and that does not ask to
    /// run again.
    fn ran_before(&self, spec: &RunSpec) -> bool {
        let Some(ctrl) = self.ctrl else { return false };
        let retry = spec.env.0.iter().any(|(k, v)| k == RETRY_LOST_ENV && v == "1");
        !retry && self.prior.contains(&(ctrl, spec.job))
    }

    pub fn controller(&self) -> Option<NodeId> {
        self.ctrl
    }

    /// Whether this node holds `node`'s result of `job` (unacknowledged): (held, unsent).
    pub fn holds(&self, job: u64, node: &NodeId) -> (bool, bool) {
        match self.job_index(job) {
            Some(k) => {
                let j = &self.jobs[k];
                (j.held.iter().any(|g| g.nodes.contains(node)), j.unsent.iter().any(|g| g.nodes.contains(node)))
            }
            None => (false, false),
        }
    }

    /// Jobs tracked (running, holding results or lingering).
    pub fn job_count(&self) -> usize {
        self.jobs.len()
    }

    /// The linger in force: the controller's, else `default` ([`crate::Config::linger`]).
    pub fn linger(&self, default: core::time::Duration) -> core::time::Duration {
        self.linger.unwrap_or(default)
    }

    /// At the root: since when it has been without its controller.
    pub fn orphaned_since(&self) -> Option<Instant> {
        self.orphaned
    }

    /// The earliest timer; `default_linger`: [`crate::Config::linger`].
    pub fn next_timeout(&self, default_linger: core::time::Duration) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        if self.dismantle.is_none() {
            if let Some(t) = self.orphaned {
                at(t + self.linger(default_linger));
            }
            if let Some(t) = self.detached {
                at(t + self.linger(default_linger));
            }
        }
        for j in &self.jobs {
            j.flush_at.into_iter().chain(j.linger_until).for_each(&mut at);
            if let Own::Running(Some(d)) = j.own {
                at(d);
            }
        }
        self.barriers.iter().filter_map(|b| b.flush_at).for_each(&mut at);
        self.invites.iter().map(|i| i.expires).for_each(&mut at);
        self.verifying.iter().map(|v| v.1).for_each(&mut at);
        if let Some((end, again)) = self.dismantle {
            at(end);
            at(again);
        }
        if let Some(m) = &self.maint {
            at(m.deadline);
        }
        next
    }

    /// Where upward messages go: the parent, or the controller at the root.
    fn up(&self, tree: &Tree) -> Option<NodeId> {
        if tree.is_root() {
            self.ctrl.filter(|_| self.ctrl_linked)
        } else if tree.state() == TreeState::Joined {
            tree.parent()
        } else {
            None
        }
    }

    /// Whether a command may come from `from`: our parent, or the controller at the root.
    fn is_above(&self, tree: &Tree, from: NodeId) -> bool {
        if tree.is_root() {
            Some(from) == self.ctrl
        } else {
            tree.parent() == Some(from)
        }
    }

    fn send(&self, ctx: &mut Ctx<'_>, to: NodeId, msg: ControlMsg) {
        ctx.send_msg(to, &Message::Control(msg));
    }

    fn report_up(&mut self, ctx: &mut Ctx<'_>, tree: &Tree, msg: ControlMsg) {
        if self.ctrl.is_none() {
            // Nobody to tell: an overlay run without a controller (the simulator's plain runs).
            return;
        }
        match self.up(tree) {
            Some(up) => self.send(ctx, up, msg),
            None => {
                if self.reports.len() == MAX_REPORTS {
                    self.reports.pop_front();
                }
                self.reports.push_back(msg);
            }
        }
    }

    // ----- tree changes (Node calls these after the tree reported them) ----------------------

    /// We attached to a parent (first join or repair).
    pub fn on_attached(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, was_root: bool) {
        // Our controller is with us only if it said so itself since we became root: one that
        // left us orphaned may be dead, or replaced by a new one the tree we join follows.
        let with_ctrl = was_root && self.orphaned.is_none();
        if was_root {
            self.stopped_root(ctx);
        }
        if core::mem::take(&mut self.announce) {
            self.report_up(ctx, tree, ControlMsg::Joined { node: self.me, build: ctx.cfg.build });
        }
        if let (Some(ctrl), Some(p)) = (self.ctrl, tree.parent()) {
            if with_ctrl {
                // The new root must learn the controller, and tell it. An orphaned root keeps
                // quiet: naming a dead controller would take the tree away from a live one.
                self.send(ctx, p, ControlMsg::SetCtrl { ctrl });
            }
        }
        self.resend_all(ctx, tree);
    }

    /// We became a root (failover, or a fragment that found no tree).
    pub fn on_became_root(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree) {
        if let Some(ctrl) = self.ctrl {
            // Alone until the controller's `SetCtrl` says otherwise: the linger counts from now.
            self.orphaned = Some(ctx.now);
            self.send(ctx, ctrl, ControlMsg::SetRoot { root: self.me });
            if core::mem::take(&mut self.announce) {
                // The first member of a new overlay.
                self.send(ctx, ctrl, ControlMsg::Joined { node: self.me, build: ctx.cfg.build });
            }
            self.link_ctrl(ctx, ctrl);
            // A new root: the controller learns the tree as it is now.
            self.start_census(ctx, tree);
        }
        self.resend_all(ctx, tree);
    }

    /// We stopped being a root without a new parent (we left).
    pub fn on_attached_nowhere(&mut self, ctx: &mut Ctx<'_>) {
        self.stopped_root(ctx);
    }

    fn stopped_root(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(ctrl) = self.ctrl {
            if self.ctrl_linked {
                ctx.unpin(&ctrl, Pin::Controller);
                ctx.release(&ctrl);
            }
        }
        self.ctrl_linked = false;
        self.orphaned = None;
        // Invitations in progress die with our root-ness; the controller retries them.
        self.invites.clear();
        self.verifying.clear();
    }

    fn link_ctrl(&mut self, ctx: &mut Ctx<'_>, ctrl: NodeId) {
        self.ctrl_linked = true;
        // The link may still be connecting: pin it once it is in the table (send opens it).
        ctx.pin(ctrl, Pin::Controller);
    }

    /// A child attached: tell it who the controller is, and what jobs run.
    pub fn on_child_added(&mut self, ctx: &mut Ctx<'_>, child: NodeId) {
        if let Some(ctrl) = self.ctrl {
            self.send(ctx, child, ControlMsg::SetCtrl { ctrl });
        }
        if let Some(l) = self.linger {
            let ms = u64::try_from(l.as_millis()).unwrap_or(u64::MAX);
            self.send(ctx, child, ControlMsg::Linger { ms });
        }
        for j in self.jobs.iter_mut().filter(|j| j.known) {
            j.answered.retain(|c| *c != child);
            ctx.send_msg(child, &Message::Job(JobMsg::Run(Box::new((*j.spec).clone()))));
        }
        if let Some((_, _)) = self.dismantle {
            self.send(ctx, child, ControlMsg::Disconnect);
        }
    }

    pub fn on_child_removed(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, child: NodeId) {
        for k in 0..self.jobs.len() {
            self.jobs[k].answered.retain(|c| *c != child);
            if let Some(x) = self.jobs[k].xfer.as_mut() {
                x.drop_feed(&child);
            }
            let job = self.jobs[k].spec.job;
            let Job { up: u, held, .. } = &mut self.jobs[k];
            u.blobs.drop_from(&child);
            u.awaiting.retain(|a| a.0 != child);
            u.deferred.retain(|d| d.0 != child);
            u.release(ctx, tree, job, held);
            self.maybe_flush(ctx, tree, k);
        }
        if self.dismantle.is_some() && tree.children().is_empty() {
            self.exit(ctx, tree);
        }
    }

    /// A parent or child link failed: report the peer lost. `related`: it was our parent or
    /// child (the root believes such reports).
    pub fn on_peer_lost(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, peer: NodeId, related: bool, failed: bool) {
        // Chunks in flight to it died with the link: if it comes back, it asks again.
        for j in self.jobs.iter_mut() {
            if let Some(x) = j.xfer.as_mut() {
                x.drop_feed(&peer);
            }
        }
        if Some(peer) == self.ctrl {
            if tree.is_root() {
                self.ctrl_linked = false;
                // The linger counts from the first loss (a failed reconnect does not restart it).
                self.orphaned.get_or_insert(ctx.now);
            }
            return;
        }
        if let Some(k) = self.verifying.iter().position(|v| v.0 == peer) {
            // A report we were checking: the node is indeed gone.
            self.verifying.swap_remove(k);
            self.report_up(ctx, tree, ControlMsg::Disconnected { node: peer, related: true });
            // The same link may carry an invitation to it (the controller is inviting it
            // again): that one failed too.
            if let Some(k) = self.invites.iter().position(|i| i.host == peer && i.sent) {
                if failed {
                    self.invite_unreachable(ctx, tree, k);
                }
            }
            return;
        }
        if let Some(k) = self.invites.iter().position(|i| i.host == peer) {
            // A link that opened and closed again delivered the invitation; only a connect
            // that failed means no client runs there.
            if failed {
                self.invite_unreachable(ctx, tree, k);
            }
            return;
        }
        if self.dismantle.is_some() {
            return;
        }
        if related {
            self.report_up(ctx, tree, ControlMsg::Disconnected { node: peer, related });
        } else if failed && self.ctrl.is_some() && tree.peers().contains(&peer) {
            // A known member we could not reach: hearsay, which the root checks (its own failed
            // connect is evidence enough). Not queued when there is no way up.
            if let Some(up) = self.up(tree) {
                self.send(ctx, up, ControlMsg::Disconnected { node: peer, related: tree.is_root() });
            }
        }
    }

    fn invite_unreachable(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, k: usize) {
        let inv = &mut self.invites[k];
        if ctx.cfg.launch_at_root && !inv.launched {
            inv.launched = true;
            ctx.io.out.push_back(Output::Launch { host: inv.host });
        } else {
            let host = inv.host;
            self.invites.remove(k);
            self.report_up(ctx, tree, ControlMsg::InviteFailed { host });
            self.pump_invites(ctx);
        }
    }

    /// A link to `peer` opened: an invitation to it was delivered and frees its slot.
    pub fn on_link_up(&mut self, ctx: &mut Ctx<'_>, peer: NodeId, replaced: bool) {
        if replaced && Some(peer) == self.ctrl && self.ctrl_linked {
            // A new connection from the controller replaced the one we had (a controller
            // process that came back at the same address before its old connection's reset
            // reached us): what was in flight on the old one is gone. Its `SetCtrl` then counts
            // as a reconnect, and everything held is sent again.
            self.ctrl_linked = false;
        }
        let Some(inv) = self.invites.iter_mut().find(|i| i.host == peer && i.sent && !i.connected) else { return };
        inv.connected = true;
        self.pump_invites(ctx);
    }

    /// The driver launched a client on `host` (at the root), or failed to.
    pub fn on_launched(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, host: NodeId, ok: bool) {
        let Some(k) = self.invites.iter().position(|i| i.host == host) else { return };
        match (ok, self.ctrl) {
            (true, Some(ctrl)) => self.send_invitation(ctx, host, ctrl),
            _ => {
                self.invites.remove(k);
                self.report_up(ctx, tree, ControlMsg::InviteFailed { host });
                self.pump_invites(ctx);
            }
        }
    }

    /// Re-send everything held (after a reconfiguration), and what waited for a way up.
    fn resend_all(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree) {
        let Some(up) = self.up(tree) else { return };
        // Results and barrier entries first: a link still connecting queues a bounded number of
        // frames, and reports matter less (the controller's census recovers membership).
        for k in 0..self.jobs.len() {
            let j = &mut self.jobs[k];
            j.unsent = j.held.clone();
            j.told_complete = false;
            // A new way up: what was in flight on the old one is gone; results and blobs go
            // again from what is held, live output goes on. Live output that was in flight may
            // not have got through: its stream says so where it stands (never silently).
            let mut cut: SmallVec<[(NodeId, u64); 4]> = SmallVec::new();
            for (node, n) in j.up.sent.drain(..) {
                match (node, cut.iter_mut().find(|c| Some(c.0) == node)) {
                    (Some(_), Some(c)) => c.1 += n,
                    (Some(node), None) => cut.push((node, n)),
                    (None, _) => {}
                }
            }
            for (node, n) in cut.into_iter().rev() {
                let bytes = format!("{OUTPUT_CUT_PREFIX}{n} bytes of output may be missing here (a link broke)\n");
                j.up.own_queued += bytes.len() as u64;
                j.up.queue.push_front(UpItem::Output { node, err: true, bytes: bytes.into_bytes(), from: None });
            }
            j.up.inflight = 0;
            j.up.sent_blobs.clear();
            j.up.queue.retain(|i| matches!(i, UpItem::Output { .. }));
            if let Some(x) = j.xfer.as_mut().filter(|x| !x.complete() && x.asked) {
                // A new parent: it feeds us from where we are.
                x.ask(ctx, j.spec.job, up);
            }
            self.flush_job(ctx, tree, k);
        }
        for k in 0..self.barriers.len() {
            let b = &mut self.barriers[k];
            b.unsent = b.held.clone();
            self.flush_barrier(ctx, tree, k);
        }
        while let Some(r) = self.reports.pop_front() {
            self.send(ctx, up, r);
        }
    }

    // ----- messages ---------------------------------------------------------------------------

    pub fn on_control(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, from: NodeId, msg: ControlMsg) {
        match msg {
            // A member is never the controller: naming one so is bad input, and obeying it
            // would make the node send to itself.
            ControlMsg::SetCtrl { ctrl } | ControlMsg::SetPeer { ctrl, .. } if ctrl == self.me => {
                ctx.io.stats.commands_rejected += 1;
                ctx.event(Event::CommandRejected(from));
            }
            ControlMsg::SetCtrl { ctrl } => self.on_set_ctrl(ctx, tree, from, ctrl),
            ControlMsg::SetPeer { host, ctrl } => self.on_set_peer(ctx, tree, from, host, ctrl),
            ControlMsg::Joined { node, build } => {
                if tree.is_root() {
                    self.invites.retain(|i| i.host != node);
                    self.pump_invites(ctx);
                }
                self.pass_up(ctx, tree, from, ControlMsg::Joined { node, build });
            }
            ControlMsg::InviteFailed { host } => self.pass_up(ctx, tree, from, ControlMsg::InviteFailed { host }),
            ControlMsg::Disconnected { node, related } => {
                if tree.is_root() && !related && node != self.me {
                    // Hearsay (or the controller asking): check before telling the controller.
                    if !self.verifying.iter().any(|v| v.0 == node) && self.verifying.len() < MAX_VERIFYING {
                        self.verifying.push((node, ctx.now + ctx.cfg.connect_timeout * 2));
                        self.send(ctx, node, ControlMsg::GetStatus);
                    }
                } else if tree.is_root() && node != self.me {
                    // A parent's or child's report, passed on unchecked (`related` false toward
                    // the controller means "not checked by the root"): the controller asks
                    // for a check when it may be stale.
                    self.pass_up(ctx, tree, from, ControlMsg::Disconnected { node, related: false });
                } else if node != self.me {
                    self.pass_up(ctx, tree, from, ControlMsg::Disconnected { node, related });
                }
            }
            ControlMsg::GetStatus => {
                // A node on its way back into the tree counts as present: it was not lost.
                let joined = matches!(tree.state(), TreeState::Joined | TreeState::Joining);
                if joined {
                    // A root checks on us: if it is another tree's (we were left out of its
                    // census), probe it, and the two trees merge (see `crate::tree`).
                    let _ = tree.add_peers(ctx, &[from]);
                    tree.probe_peer(ctx, from);
                }
                self.send(ctx, from, ControlMsg::Status { joined })
            }
            ControlMsg::Status { joined } => {
                if let Some(k) = self.verifying.iter().position(|v| v.0 == from) {
                    self.verifying.swap_remove(k);
                    ctx.release(&from);
                    if !joined {
                        self.report_up(ctx, tree, ControlMsg::Disconnected { node: from, related: true });
                    }
                }
            }
            ControlMsg::Forget { nodes } => {
                if !self.command_ok(ctx, tree, from) {
                    return;
                }
                tree.forget(&nodes);
                self.invites.retain(|i| !nodes.contains(&i.host));
                self.pump_invites(ctx);
                self.flood(ctx, tree, &Message::Control(ControlMsg::Forget { nodes }));
            }
            ControlMsg::Disconnect if tree.state() == TreeState::Idle && self.ctrl == Some(from) => {
                // Not in the tree (its maintenance script failed): the controller lets it go.
                self.exit(ctx, tree);
            }
            ControlMsg::Disconnect => {
                if !self.command_ok(ctx, tree, from) {
                    return;
                }
                self.start_dismantle(ctx, tree);
            }
            ControlMsg::Maintenance { script } => {
                // From the controller (to a root, or to the host it invites directly), or, to an
                // idle client, from an inviter just before its SetPeer (checked there).
                let idle = tree.state() == TreeState::Idle && self.maint.is_none();
                if script.len() <= crate::wire::MAX_SCRIPT && (idle || self.ctrl == Some(from)) {
                    self.script = Some((script.into(), from));
                } else {
                    ctx.io.stats.commands_rejected += 1;
                    ctx.event(Event::CommandRejected(from));
                }
            }
            ControlMsg::Census => {
                // Only the controller asks, and only the root counts.
                if tree.is_root() && self.ctrl == Some(from) {
                    self.start_census(ctx, tree);
                }
            }
            ControlMsg::Linger { ms } => {
                // From the controller, or from our parent passing it down.
                if self.ctrl != Some(from) && tree.parent() != Some(from) {
                    ctx.io.stats.commands_rejected += 1;
                    ctx.event(Event::CommandRejected(from));
                    return;
                }
                let linger = core::time::Duration::from_millis(ms);
                if self.linger != Some(linger) {
                    self.linger = Some(linger);
                    self.flood(ctx, tree, &Message::Control(ControlMsg::Linger { ms }));
                }
            }
            // Only the controller takes these.
            ControlMsg::SetRoot { .. } | ControlMsg::Participants { .. } | ControlMsg::MaintenanceFailed { .. } => {}
        }
    }

    /// A report travelling up: passed toward the controller, unless it came from above.
    fn pass_up(&mut self, ctx: &mut Ctx<'_>, tree: &Tree, from: NodeId, msg: ControlMsg) {
        if self.is_above(tree, from) {
            return;
        }
        self.report_up(ctx, tree, msg);
    }

    fn command_ok(&mut self, ctx: &mut Ctx<'_>, tree: &Tree, from: NodeId) -> bool {
        if self.is_above(tree, from) {
            return true;
        }
        ctx.io.stats.commands_rejected += 1;
        ctx.event(Event::CommandRejected(from));
        false
    }

    fn flood(&self, ctx: &mut Ctx<'_>, tree: &Tree, msg: &Message) {
        let Ok(frame) = ctx.io.pool.encode(msg, ctx.cfg.max_frame) else { return };
        for &c in tree.children() {
            ctx.send_frame(c, frame.clone());
        }
    }

    fn on_set_ctrl(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, from: NodeId, ctrl: NodeId) {
        if from == ctrl && tree.state() == TreeState::Idle {
            // The controller looks for its tree through us, but we are in none (a client that
            // restarted, after an upgrade or a crash): say so, and it invites us again.
            // The link stays: the invitation that follows comes on it.
            self.send(ctx, ctrl, ControlMsg::Disconnected { node: self.me, related: true });
            return;
        }
        let changed = self.ctrl != Some(ctrl);
        self.ctrl = Some(ctrl);
        if from == ctrl {
            // The controller itself.
            if tree.is_root() {
                // It is there: no lingering.
                self.orphaned = None;
                let reconnect = !self.ctrl_linked || changed;
                self.link_ctrl(ctx, ctrl);
                self.send(ctx, ctrl, ControlMsg::SetRoot { root: self.me });
                if reconnect {
                    self.start_census(ctx, tree);
                    self.resend_all(ctx, tree);
                }
            } else if let Some(p) = tree.parent().filter(|_| tree.state() == TreeState::Joined) {
                // Not the root: pass it up; the root answers.
                self.send(ctx, p, ControlMsg::SetCtrl { ctrl });
                ctx.release(&from);
            }
            if changed {
                self.flood(ctx, tree, &Message::Control(ControlMsg::SetCtrl { ctrl }));
            }
            return;
        }
        if tree.parent() == Some(from) {
            if changed {
                self.flood(ctx, tree, &Message::Control(ControlMsg::SetCtrl { ctrl }));
            }
            return;
        }
        // From below: on its way up to the root.
        if tree.is_root() {
            if !self.ctrl_linked || changed {
                // The controller comes back to us through a member: it may have missed changes.
                self.send(ctx, ctrl, ControlMsg::SetRoot { root: self.me });
                self.link_ctrl(ctx, ctrl);
                self.start_census(ctx, tree);
                self.resend_all(ctx, tree);
            }
        } else if let Some(p) = tree.parent().filter(|_| tree.state() == TreeState::Joined) {
            self.send(ctx, p, ControlMsg::SetCtrl { ctrl });
        }
        if changed {
            self.flood(ctx, tree, &Message::Control(ControlMsg::SetCtrl { ctrl }));
        }
    }

    fn on_set_peer(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, from: NodeId, host: NodeId, ctrl: NodeId) {
        if host == self.me {
            // An invitation for us: join through the sender, or found the tree if the controller
            // itself asks.
            self.ctrl = Some(ctrl);
            match tree.state() {
                TreeState::Idle if self.maint.is_some() => {} // joins once its script succeeds
                TreeState::Idle => {
                    self.announce = true;
                    let boot = (from != ctrl).then_some(from);
                    // Only the inviter's own script runs: one sent on another link is dropped.
                    if self.script.as_ref().is_some_and(|(_, by)| *by != from) {
                        self.script = None;
                    }
                    if let Some((script, _)) = self.script.clone() {
                        self.run_maintenance(ctx, &script, boot);
                    } else {
                        // Founding a tree is reported as BecameRoot, which tells the controller.
                        let _ = tree.start(ctx, boot.as_slice());
                    }
                }
                // Already a member: say so (the controller may have thought us gone), and keep
                // the inviter as a peer. Only a root forwards invitations, so an inviter that is
                // not our root is the root of another tree, which the controller sees and we do
                // not (a fragment left by failures, that none of its probes met): probe it now,
                // and the two trees merge (see `crate::tree`).
                TreeState::Joined | TreeState::Joining => {
                    if from != ctrl {
                        let _ = tree.add_peers(ctx, &[from]);
                        tree.probe_peer(ctx, from);
                    }
                    self.report_up(ctx, tree, ControlMsg::Joined { node: self.me, build: ctx.cfg.build });
                }
                TreeState::Left => {}
            }
            return;
        }
        // An invitation to forward: the controller asks, the root forwards. A node that is not
        // the root (the controller's view is stale) passes it up.
        if !tree.is_root() {
            if let Some(up) = self.up(tree).filter(|_| Some(from) == self.ctrl || tree.children().contains(&from)) {
                self.send(ctx, up, ControlMsg::SetPeer { host, ctrl });
            }
            return;
        }
        // The root forwards the controller's invitations (a root that does not know its
        // controller yet takes the sender's word that it is), or those a child passes up.
        let from_ctrl = self.ctrl.map_or(from == ctrl, |c| c == from);
        if !from_ctrl && !tree.children().contains(&from) {
            ctx.io.stats.commands_rejected += 1;
            ctx.event(Event::CommandRejected(from));
            return;
        }
        if tree.children().contains(&host) {
            self.send(ctx, from, ControlMsg::Joined { node: host, build: 0 });
            return;
        }
        match self.invites.iter_mut().find(|i| i.host == host) {
            // Asked again (a new root, or a relaunched client): send it again.
            Some(inv) if inv.sent => self.send_invitation(ctx, host, ctrl),
            Some(_) => {}
            None => {
                if self.invites.len() >= ctx.cfg.max_invitations {
                    self.send(ctx, from, ControlMsg::InviteFailed { host });
                    return;
                }
                let expires = ctx.now + ctx.cfg.invitation_expiry;
                self.invites.push(Invite { host, launched: false, expires, sent: false, connected: false });
            }
        }
        self.pump_invites(ctx);
    }

    /// Invite `host`: the maintenance script first, if there is one, then `SetPeer`.
    fn send_invitation(&self, ctx: &mut Ctx<'_>, host: NodeId, ctrl: NodeId) {
        if let Some((script, _)) = &self.script {
            self.send(ctx, host, ControlMsg::Maintenance { script: script.to_string() });
        }
        self.send(ctx, host, ControlMsg::SetPeer { host, ctrl });
    }

    /// Start the maintenance script before joining (through `boot`, or founding the tree).
    fn run_maintenance(&mut self, ctx: &mut Ctx<'_>, script: &str, boot: Option<NodeId>) {
        let timeout = ctx.cfg.maintenance_timeout;
        let spec = RunSpec {
            job: MAINT_JOB,
            kind: JobKind::Command,
            target: Target::All,
            argv: List(vec!["/bin/sh".to_string(), "-c".to_string(), script.to_string()]),
            env: List(Vec::new()),
            cwd: None,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            stream: false,
            push: None,
            max_output: 0,
        };
        self.maint = Some(Maint { boot, deadline: ctx.now + timeout, output: Vec::new() });
        ctx.io.out.push_back(Output::Spawn { job: MAINT_JOB, spec: Rc::new(spec) });
    }

    /// The maintenance script ended: join if it succeeded, else tell the controller and stay
    /// out of the tree.
    fn maintenance_done(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, status: ExitStatus) {
        let Some(m) = self.maint.take() else { return };
        if status == ExitStatus::Exited(0) {
            if tree.state() == TreeState::Idle {
                let _ = tree.start(ctx, m.boot.as_slice());
            }
            return;
        }
        self.announce = false;
        if let Some(ctrl) = self.ctrl {
            let msg = ControlMsg::MaintenanceFailed { node: self.me, status, output: m.output };
            self.send(ctx, ctrl, msg);
        }
    }

    /// Send waiting invitations while fewer than [`invite_slots`] are in flight.
    fn pump_invites(&mut self, ctx: &mut Ctx<'_>) {
        let Some(ctrl) = self.ctrl else { return };
        let mut active = self.invites.iter().filter(|i| i.sent && !i.connected).count();
        let slots = invite_slots(ctx.cfg);
        for k in 0..self.invites.len() {
            if active >= slots {
                break;
            }
            if !self.invites[k].sent {
                self.invites[k].sent = true;
                active += 1;
                let host = self.invites[k].host;
                self.send_invitation(ctx, host, ctrl);
            }
        }
    }

    // ----- jobs -------------------------------------------------------------------------------

    pub fn on_job(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, from: NodeId, msg: JobMsg, raw: &[u8]) {
        match msg {
            JobMsg::Run(spec) => {
                if !self.command_ok(ctx, tree, from) {
                    return;
                }
                self.start_job(ctx, tree, *spec, Some(raw));
            }
            JobMsg::Cancel { job } => {
                if !self.command_ok(ctx, tree, from) {
                    return;
                }
                let frame = ctx.io.pool.copy(raw);
                for &c in tree.children() {
                    ctx.send_frame(c, frame.clone());
                }
                if let Some(k) = self.job_index(job) {
                    if let Own::Running(_) = self.jobs[k].own {
                        ctx.io.out.push_back(Output::Signal { job });
                        self.finish_own(ctx, tree, k, ExitStatus::Cancelled);
                    }
                }
            }
            JobMsg::Ack { job, nodes } => {
                if !self.command_ok(ctx, tree, from) {
                    return;
                }
                self.on_ack(ctx, tree, job, &nodes);
            }
            JobMsg::Results { job, groups, complete } => {
                if self.is_above(tree, from) {
                    return;
                }
                self.on_results(ctx, tree, from, job, groups.0, complete);
            }
            JobMsg::Output { job, node, bytes, err } => {
                if self.is_above(tree, from) {
                    return;
                }
                match self.job_index(job) {
                    Some(k) => {
                        // Passed on (and acknowledged to the child) as our window up allows.
                        self.jobs[k].up.queue.push_back(UpItem::Output { node, err, bytes, from: Some(from) });
                        self.pump_up(ctx, tree, k);
                    }
                    None => {
                        let n = bytes.len() as u64;
                        if let Some(up) = self.up(tree) {
                            ctx.send_msg(up, &Message::Job(JobMsg::Output { job, node, bytes, err }));
                        }
                        ctx.send_msg(from, &Message::Job(JobMsg::OutputAck { job, bytes: n }));
                    }
                }
            }
            JobMsg::OutputAck { job, bytes } => {
                if self.up(tree) != Some(from) {
                    return;
                }
                if let Some(k) = self.job_index(job) {
                    let u = &mut self.jobs[k].up;
                    u.inflight = u.inflight.saturating_sub(bytes);
                    let mut n = bytes;
                    while n > 0 {
                        match u.sent.front_mut() {
                            Some(f) if f.1 <= n => {
                                n -= f.1;
                                u.sent.pop_front();
                            }
                            Some(f) => {
                                f.1 -= n;
                                n = 0;
                            }
                            None => break,
                        }
                    }
                    self.pump_up(ctx, tree, k);
                }
            }
            JobMsg::Blob { job, digest, offset, total, data } => {
                if self.is_above(tree, from) {
                    return;
                }
                let n = data.len() as u64;
                match self.job_index(job) {
                    Some(k) => {
                        let Job { up: u, held, .. } = &mut self.jobs[k];
                        if offset == 0 && !u.awaiting.contains(&(from, digest)) {
                            if u.awaiting.len() >= MAX_AWAITING {
                                u.awaiting.pop_front();
                            }
                            u.awaiting.push_back((from, digest));
                        }
                        if u.blobs.store(from, digest, offset, total, &data) {
                            // Kept: acknowledged as the backlog allows (see [`BLOB_BACKLOG`]).
                            match u.deferred.iter_mut().find(|d| d.0 == from) {
                                Some(d) => d.1 += n,
                                None => u.deferred.push((from, n)),
                            }
                            u.release(ctx, tree, job, held);
                        } else {
                            ctx.send_msg(from, &Message::Job(JobMsg::OutputAck { job, bytes: n }));
                        }
                    }
                    None => {
                        // A job we forgot: pass it on as it is, like the results that follow.
                        if let Some(up) = self.up(tree) {
                            ctx.send_msg(up, &Message::Job(JobMsg::Blob { job, digest, offset, total, data }));
                        }
                        ctx.send_msg(from, &Message::Job(JobMsg::OutputAck { job, bytes: n }));
                    }
                }
            }
            JobMsg::BarrierEnter { name, nodes } => {
                if self.is_above(tree, from) || name.len() > MAX_NAME {
                    return;
                }
                self.barrier_entries(ctx, tree, name, &nodes);
            }
            JobMsg::BarrierRelease { name } => {
                if !self.command_ok(ctx, tree, from) {
                    return;
                }
                let frame = ctx.io.pool.copy(raw);
                for &c in tree.children() {
                    ctx.send_frame(c, frame.clone());
                }
                self.release_barrier(ctx, name);
            }
            JobMsg::Chunk { job, index, data } => {
                if !self.command_ok(ctx, tree, from) {
                    return;
                }
                let up = self.up(tree);
                let Some(k) = self.job_index(job) else {
                    ctx.io.stats.chunks_dropped += 1;
                    return;
                };
                let j = &mut self.jobs[k];
                let Some(x) = j.xfer.as_mut() else {
                    ctx.io.stats.chunks_dropped += 1;
                    return;
                };
                if x.on_chunk(ctx, job, index, data, raw, up) && x.complete() && matches!(j.own, Own::Running(_)) {
                    ctx.io.out.push_back(Output::PushDone { job });
                }
            }
            JobMsg::ChunkAck { job, next, resume } => {
                if !tree.children().contains(&from) {
                    return;
                }
                let up = self.up(tree);
                if let Some(x) = self.job_index(job).and_then(|k| self.jobs[k].xfer.as_mut()) {
                    x.on_ack(ctx, job, from, next, resume);
                    if !x.asked && !x.complete() {
                        // A relay: a child needs chunks, so now we do.
                        if let Some(up) = up {
                            x.ask(ctx, job, up);
                        }
                    }
                }
            }
        }
    }

    fn job_index(&self, job: u64) -> Option<usize> {
        self.jobs.iter().position(|j| j.spec.job == job)
    }

    /// A `Run` from above (or the root's own census): forward it, spawn our part.
    fn start_job(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, spec: RunSpec, raw: Option<&[u8]>) {
        let job = spec.job;
        let existing = self.job_index(job);
        if existing.is_some_and(|k| self.jobs[k].known) || self.done.contains(&job) {
            return;
        }
        // Forward first: the subtree starts as early as possible.
        let frame = match raw {
            Some(raw) => Some(ctx.io.pool.copy(raw)),
            None => ctx.io.pool.encode(&Message::Job(JobMsg::Run(Box::new(spec.clone()))), ctx.cfg.max_frame).ok(),
        };
        if let Some(frame) = frame {
            for &c in tree.children() {
                ctx.send_frame(c, frame.clone());
            }
        }
        let spec = Rc::new(spec);
        let k = match existing {
            // Results arrived before the job itself (a subtree that moved to us): now we know it.
            Some(k) => {
                self.jobs[k].spec = Rc::clone(&spec);
                self.jobs[k].known = true;
                k
            }
            None => match self.new_job(ctx, tree, Rc::clone(&spec), true) {
                Some(k) => k,
                None => return,
            },
        };
        let target = spec.target.includes(&self.me);
        if spec.kind == JobKind::Push && self.jobs[k].xfer.is_none() {
            // An upgrade to the build we run: nothing to fetch for ourselves (a client that
            // restarted on it gets the job again from its new parent).
            let have_it = spec.push.as_ref().is_some_and(|p| p.upgrade && p.build != 0 && p.build == ctx.cfg.build);
            match spec.push.as_ref().and_then(|p| Xfer::new(p, false)) {
                Some(mut x) => {
                    ctx.io.out.push_back(Output::PushOpen { job, spec: Rc::clone(&spec), install: target && !have_it });
                    if let Some(up) = self.up(tree).filter(|_| target && !have_it) {
                        x.ask(ctx, job, up);
                    }
                    self.jobs[k].xfer = Some(Box::new(x));
                    if target && have_it {
                        self.finish_own(ctx, tree, k, ExitStatus::Exited(0));
                        return;
                    }
                }
                None if target => {
                    self.jobs[k].stdout = b"plush: a push without a usable file description".to_vec();
                    self.finish_own(ctx, tree, k, ExitStatus::SpawnFailed);
                    return;
                }
                None => {}
            }
        }
        if !target {
            self.maybe_flush(ctx, tree, k);
            return;
        }
        match spec.kind {
            JobKind::Census => self.finish_own(ctx, tree, k, ExitStatus::Exited(0)),
            JobKind::Tree => {
                self.jobs[k].stdout = tree.parent().map_or_else(Vec::new, |p| p.addr().to_string().into_bytes());
                self.finish_own(ctx, tree, k, ExitStatus::Exited(0));
            }
            JobKind::Push => {
                let deadline =
                    (spec.timeout_ms > 0).then(|| ctx.now + core::time::Duration::from_millis(spec.timeout_ms));
                self.jobs[k].own = Own::Running(deadline);
                if self.jobs[k].xfer.as_ref().is_some_and(|x| x.complete()) {
                    // An empty file: nothing to wait for.
                    ctx.io.out.push_back(Output::PushDone { job });
                }
            }
            JobKind::Command if self.ran_before(&spec) => {
                // Its predecessor died with it: at most once, unless asked.
                self.jobs[k].stderr = LOST_OUTPUT.to_vec();
                self.finish_own(ctx, tree, k, ExitStatus::Lost);
            }
            JobKind::Command if self.jobs[k].over => {
                self.jobs[k].stdout = TOO_MANY_JOBS.to_vec();
                self.finish_own(ctx, tree, k, ExitStatus::SpawnFailed);
            }
            JobKind::Command => {
                let deadline =
                    (spec.timeout_ms > 0).then(|| ctx.now + core::time::Duration::from_millis(spec.timeout_ms));
                self.jobs[k].own = Own::Running(deadline);
                ctx.io.out.push_back(Output::Spawn { job, spec: Rc::clone(&spec) });
            }
        }
    }

    /// A new entry in the job table (`known`: from a `Run`; else results came first).
    ///
    /// Bound: [`crate::Config::max_jobs`] jobs run processes; past it (when no finished job can be
    /// forgotten) a job still gets an entry, marked `over`, so that its results, and the failure
    /// of our own part, are held and travel up like any other; past twice the bound, `None`: our
    /// failure and the results of others are relayed without being held.
    fn new_job(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, spec: Rc<RunSpec>, known: bool) -> Option<usize> {
        let max = ctx.cfg.max_jobs;
        if self.jobs.len() >= max {
            // Make room by forgetting the oldest finished job, if any.
            if let Some(k) = self.jobs.iter().position(|j| j.linger_until.is_some()) {
                self.forget_job(ctx, k);
            }
        }
        let over = self.jobs.len() >= max;
        if self.jobs.len() >= 2 * max {
            if let Some(up) = self.up(tree).filter(|_| known && spec.target.includes(&self.me)) {
                let g = Held::new(ExitStatus::SpawnFailed, false, TOO_MANY_JOBS, &[], NodeSet::one(self.me));
                send_groups(ctx, up, spec.job, vec![g.group()], false);
            }
            return None;
        }
        self.jobs.push(Job {
            spec,
            known,
            over,
            own: Own::NotTarget,
            stdout: Vec::new(),
            stderr: Vec::new(),
            out_bytes: 0,
            truncated: false,
            held: Vec::new(),
            unsent: Vec::new(),
            answered: SmallVec::new(),
            from: Vec::new(),
            told_complete: false,
            flush_at: None,
            linger_until: None,
            up: Upward::default(),
            xfer: None,
        });
        Some(self.jobs.len() - 1)
    }

    /// Our process ended (or was killed, timed out, cancelled).
    fn finish_own(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, k: usize, status: ExitStatus) {
        let j = &mut self.jobs[k];
        if j.own == Own::Done {
            return;
        }
        j.own = Own::Done;
        let stdout = core::mem::take(&mut j.stdout);
        let stderr = core::mem::take(&mut j.stderr);
        let g = Held::owned(status, j.truncated, stdout, &stderr, NodeSet::one(self.me));
        self.add_result(ctx, tree, k, &g);
        self.maybe_flush(ctx, tree, k);
    }

    fn add_result(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, k: usize, g: &Held) {
        let j = &mut self.jobs[k];
        if !merge(&mut j.held, g) {
            ctx.io.stats.results_unheld += 1;
        }
        j.linger_until = None;
        if !merge(&mut j.unsent, g) {
            // Too many distinct results waiting: send what waits, then queue this one.
            self.flush_job(ctx, tree, k);
            let j = &mut self.jobs[k];
            merge(&mut j.unsent, g);
        }
    }

    pub fn on_process(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, ev: ProcessEvent) {
        match ev {
            ProcessEvent::Output { job: MAINT_JOB, bytes, .. } => {
                if let Some(m) = self.maint.as_mut() {
                    let room = crate::wire::MAX_SCRIPT_OUTPUT.saturating_sub(m.output.len());
                    m.output.extend_from_slice(&bytes[..bytes.len().min(room)]);
                }
            }
            ProcessEvent::Exit { job: MAINT_JOB, status } => self.maintenance_done(ctx, tree, status),
            ProcessEvent::Output { job, mut bytes, err } => {
                let Some(k) = self.job_index(job) else { return };
                let j = &mut self.jobs[k];
                if !matches!(j.own, Own::Running(_)) {
                    return;
                }
                let cap = j.spec.max_output;
                if cap > 0 {
                    let room = cap.saturating_sub(j.out_bytes);
                    if bytes.len() as u64 > room {
                        ctx.io.stats.output_bytes_cut += bytes.len() as u64 - room;
                        bytes.truncate(room as usize);
                        j.truncated = true;
                    }
                }
                j.out_bytes += bytes.len() as u64;
                if bytes.is_empty() {
                    return;
                }
                if !j.spec.stream {
                    if err { &mut j.stderr } else { &mut j.stdout }.extend_from_slice(&bytes);
                    return;
                }
                j.up.own_queued += bytes.len() as u64;
                j.up.queue.push_back(UpItem::Output { node: self.me, err, bytes, from: None });
                self.pump_up(ctx, tree, k);
                let u = &mut self.jobs[k].up;
                if u.own_queued > 0 && !u.paused {
                    // The window up is full: the process waits until it reopens.
                    u.paused = true;
                    ctx.io.out.push_back(Output::ReadOutput { job, on: false });
                }
            }
            ProcessEvent::Exit { job, status } => {
                if let Some(k) = self.job_index(job) {
                    if matches!(self.jobs[k].own, Own::Running(_)) {
                        self.finish_own(ctx, tree, k, status);
                    }
                }
            }
        }
    }

    fn on_results(
        &mut self,
        ctx: &mut Ctx<'_>,
        tree: &mut Tree,
        from: NodeId,
        job: u64,
        groups: Vec<Group>,
        complete: bool,
    ) {
        let k = match self.job_index(job) {
            Some(k) => k,
            None if !self.done.contains(&job) => {
                // Results of a job whose `Run` has not reached us (a subtree that moved under us
                // during the job): hold them all the same.
                let stand_in = Rc::new(RunSpec {
                    job,
                    kind: JobKind::Command,
                    target: Target::Nodes(NodeSet::new()),
                    argv: List::default(),
                    env: List::default(),
                    cwd: None,
                    timeout_ms: 0,
                    stream: false,
                    push: None,
                    max_output: 0,
                });
                match self.new_job(ctx, tree, stand_in, false) {
                    Some(k) => k,
                    None => {
                        // No room to hold them: relay them as they are (a blob they name is
                        // not passed on; the holders send it again after the next `Ack`).
                        if let Some(up) = self.up(tree) {
                            send_groups(ctx, up, job, groups, false);
                        }
                        return;
                    }
                }
            }
            None => {
                // A job we finished and forgot: relay late results as they are.
                if let Some(up) = self.up(tree) {
                    send_groups(ctx, up, job, groups, false);
                }
                return;
            }
        };
        let mut got = NodeSet::new();
        for g in groups {
            if let Some(b) = &g.blob {
                // Its group came: that sender's blob no longer needs keeping for it.
                self.jobs[k].up.awaiting.retain(|a| *a != (from, b.digest));
            }
            let Some(h) = held_of(&self.jobs[k].up, g) else {
                // Its blob did not arrive (a link broke on the way): the sender holds it and
                // sends it again after the controller's next `Ack`.
                ctx.io.stats.blobs_missing += 1;
                continue;
            };
            got.extend(&h.nodes);
            self.add_result(ctx, tree, k, &h);
        }
        let j = &mut self.jobs[k];
        match j.from.iter_mut().find(|f| f.0 == from) {
            Some(f) => f.1.extend(&got),
            None if !got.is_empty() => j.from.push((from, got)),
            None => {}
        }
        if complete && tree.children().contains(&from) && !j.answered.contains(&from) {
            j.answered.push(from);
        }
        self.maybe_flush(ctx, tree, k);
    }

    /// Send now if the subtree is complete; else arm the merge timer if something waits.
    fn maybe_flush(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, k: usize) {
        let complete = self.complete(tree, k);
        let j = &mut self.jobs[k];
        if complete && !j.told_complete {
            // The subtree just finished answering: say so at once.
            self.flush_job(ctx, tree, k);
        } else if !j.unsent.is_empty() && j.flush_at.is_none() {
            // Stragglers (re-sent after a reconfiguration) wait to travel together.
            let delay = if tree.is_root() { ctx.cfg.ctrl_merge_delay } else { ctx.cfg.merge_delay };
            j.flush_at = Some(ctx.now + delay);
        }
    }

    fn complete(&self, tree: &Tree, k: usize) -> bool {
        let j = &self.jobs[k];
        !matches!(j.own, Own::Running(_)) && tree.children().iter().all(|c| j.answered.contains(c))
    }

    fn flush_job(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, k: usize) {
        let Some(up) = self.up(tree) else {
            // No way up: keep it all until we attach.
            self.jobs[k].flush_at = None;
            return;
        };
        let complete = self.complete(tree, k);
        let j = &mut self.jobs[k];
        j.flush_at = None;
        let unsent = core::mem::take(&mut j.unsent);
        j.told_complete = complete;
        let job = j.spec.job;
        let census = j.spec.kind == JobKind::Census;
        if census && tree.is_root() {
            // The root's census ends here: members go to the controller, then everyone forgets.
            let mut nodes = NodeSet::new();
            for g in &unsent {
                nodes.extend(&g.nodes);
            }
            if complete {
                let all = self.jobs[k].held.iter().fold(NodeSet::new(), |mut s, g| {
                    s.extend(&g.nodes);
                    s
                });
                self.send_participants(ctx, up, nodes, true);
                self.on_ack(ctx, tree, job, &all);
            } else if !nodes.is_empty() {
                self.send_participants(ctx, up, nodes, false);
            }
            return;
        }
        self.queue_groups(ctx, tree, k, &unsent, complete);
    }

    fn send_participants(&self, ctx: &mut Ctx<'_>, to: NodeId, nodes: NodeSet, last: bool) {
        self.send(ctx, to, ControlMsg::Participants { nodes, last });
    }

    /// Queue job `k`'s `groups` for the way up, behind what waits there: a large output's blob
    /// first (once per digest and way up), then the groups as `Results` messages each under
    /// the frame limit.
    fn queue_groups(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, k: usize, groups: &[Held], complete: bool) {
        let u = &mut self.jobs[k].up;
        let mut batch: Vec<Group> = Vec::new();
        let mut bytes = 0;
        for g in groups {
            let group = g.group();
            if group.blob.is_some() && !u.sent_blobs.contains(&g.digest) {
                u.sent_blobs.push(g.digest);
                u.queue.push_back(UpItem::Blob { digest: g.digest, content: Rc::clone(&g.content), offset: 0 });
            }
            let size = group.output.len() + group.stderr.len() + g.nodes.runs() * 24;
            if !batch.is_empty() && (bytes + size > SPLIT_BYTES || batch.len() == crate::wire::MAX_LIST) {
                u.queue.push_back(UpItem::Results { groups: core::mem::take(&mut batch), complete: false });
                bytes = 0;
            }
            bytes += size;
            batch.push(group);
        }
        u.queue.push_back(UpItem::Results { groups: batch, complete });
        self.pump_up(ctx, tree, k);
    }

    /// Send up what job `k`'s window allows (see [`UpItem`]), acknowledging to each child
    /// what of its output went on; let our process write again once none of its output waits.
    fn pump_up(&mut self, ctx: &mut Ctx<'_>, tree: &Tree, k: usize) {
        let Some(up) = self.up(tree) else { return };
        let window = ctx.cfg.output_window.max(1) as u64;
        let Job { spec, up: u, held, .. } = &mut self.jobs[k];
        let job = spec.job;
        loop {
            let room = |n: u64| u.inflight == 0 || u.inflight + n <= window;
            match u.queue.front_mut() {
                None => break,
                Some(UpItem::Results { .. }) => {
                    let Some(UpItem::Results { groups, complete }) = u.queue.pop_front() else { break };
                    ctx.send_msg(up, &Message::Job(JobMsg::Results { job, groups: List(groups), complete }));
                }
                Some(UpItem::Output { bytes, .. }) => {
                    let n = bytes.len() as u64;
                    if !room(n) {
                        break;
                    }
                    let Some(UpItem::Output { node, err, bytes, from }) = u.queue.pop_front() else { break };
                    u.inflight += n;
                    u.sent.push_back((Some(node), n));
                    ctx.send_msg(up, &Message::Job(JobMsg::Output { job, node, bytes, err }));
                    match from {
                        None => u.own_queued -= n,
                        Some(c) if tree.children().contains(&c) => {
                            ctx.send_msg(c, &Message::Job(JobMsg::OutputAck { job, bytes: n }));
                        }
                        Some(_) => {}
                    }
                }
                Some(UpItem::Blob { digest, content, offset }) => {
                    let end = (*offset + BLOB_CHUNK).min(content.len());
                    let n = (end - *offset) as u64;
                    if !room(n) {
                        break;
                    }
                    u.inflight += n;
                    u.sent.push_back((None, n));
                    let msg = JobMsg::Blob {
                        job,
                        digest: *digest,
                        offset: *offset as u64,
                        total: content.len() as u64,
                        data: content[*offset..end].to_vec(),
                    };
                    ctx.send_msg(up, &Message::Job(msg));
                    *offset = end;
                    if end >= content.len() {
                        u.queue.pop_front();
                    }
                }
            }
        }
        if u.paused && u.own_queued == 0 {
            u.paused = false;
            ctx.io.out.push_back(Output::ReadOutput { job, on: true });
        }
        u.release(ctx, tree, job, held);
    }

    fn on_ack(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, job: u64, acked: &NodeSet) {
        let Some(k) = self.job_index(job) else { return };
        // Down to each sender, the part of the acknowledgement that covers what it sent us.
        let from = core::mem::take(&mut self.jobs[k].from);
        let mut keep = Vec::with_capacity(from.len());
        for (peer, sent) in from {
            let rest = sent.minus(acked);
            let covered = sent.minus(&rest);
            if !covered.is_empty() && tree.children().contains(&peer) {
                ctx.send_msg(peer, &Message::Job(JobMsg::Ack { job, nodes: covered }));
            }
            // A former child has re-sent what it holds through its new parent: forget it.
            if !rest.is_empty() && tree.children().contains(&peer) {
                keep.push((peer, rest));
            }
        }
        // Forgotten only once the whole subtree answered: until then, children may still send
        // live output and blobs, which pass through the job's window up.
        let complete = self.complete(tree, k);
        let j = &mut self.jobs[k];
        j.from = keep;
        let before: SmallVec<[[u8; 32]; 4]> = j.held.iter().map(|h| h.digest).collect();
        // A parent drops a blob once the results it holds naming it are acknowledged: a group
        // naming it that we send from now on must bring it again. (The controller keeps them.)
        for h in j.held.iter().filter(|h| h.content.len() > INLINE_OUTPUT && !tree.is_root()) {
            if h.nodes.minus(acked).len() != h.nodes.len() {
                j.up.sent_blobs.retain(|d| *d != h.digest);
            }
        }
        remove_acked(&mut j.held, acked);
        remove_acked(&mut j.unsent, acked);
        // The blobs of results now acknowledged are not needed any more (one on its way up is
        // shared with the queue). A blob no result named yet stays: its group may be on its way.
        let Job { held, up, .. } = j;
        up.blobs.whole.retain(|b| {
            !before.contains(&b.0) || held.iter().any(|h| h.digest == b.0) || up.awaiting.iter().any(|a| a.1 == b.0)
        });
        // Held outputs acknowledged: the backlog may take children's blobs again.
        up.release(ctx, tree, job, held);
        if !j.held.is_empty() {
            // What the controller does not have was lost on the way: send it again.
            j.unsent = j.held.clone();
            self.flush_job(ctx, tree, k);
        } else if complete {
            j.linger_until = Some(ctx.now + ctx.cfg.job_linger);
        }
    }

    fn forget_job(&mut self, ctx: &mut Ctx<'_>, k: usize) {
        let j = self.jobs.swap_remove(k);
        if j.xfer.is_some() {
            ctx.io.out.push_back(Output::PushForget { job: j.spec.job });
        }
        if self.done.len() == MAX_DONE {
            self.done.pop_front();
        }
        self.done.push_back(j.spec.job);
    }

    /// At the root: count the members for the controller (a job without processes).
    fn start_census(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree) {
        self.census_seq += 1;
        let spec = RunSpec {
            job: CENSUS_BIT | (u64::from(ctx.rng.random::<u32>()) << 24) | (self.census_seq & 0xff_ffff),
            kind: JobKind::Census,
            target: Target::All,
            argv: List::default(),
            env: List::default(),
            cwd: None,
            timeout_ms: 0,
            push: None,
            stream: false,
            max_output: 0,
        };
        self.start_job(ctx, tree, spec, None);
    }

    // ----- commands from the local user ------------------------------------------------------

    /// The local process enters barrier `name`.
    pub fn enter_barrier(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, name: String) -> bool {
        if name.len() > MAX_NAME {
            return false;
        }
        if self.released.contains(&name) {
            // Released already: pass, and let the controller know we were late.
            ctx.event(Event::BarrierReleased(name.clone()));
            if let Some(up) = self.up(tree) {
                let msg = JobMsg::BarrierEnter { name, nodes: NodeSet::one(self.me) };
                ctx.send_msg(up, &Message::Job(msg));
            }
            return true;
        }
        let me = NodeSet::one(self.me);
        if !self.barrier_entries(ctx, tree, name.clone(), &me) {
            return false;
        }
        if let Some(b) = self.barriers.iter_mut().find(|b| b.name == name) {
            b.waiting = true;
        }
        true
    }

    fn barrier_entries(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, name: String, nodes: &NodeSet) -> bool {
        let k = match self.barriers.iter().position(|b| b.name == name) {
            Some(k) => k,
            None => {
                if self.barriers.len() >= MAX_BARRIERS {
                    return false;
                }
                self.barriers.push(Barrier {
                    name,
                    waiting: false,
                    held: NodeSet::new(),
                    unsent: NodeSet::new(),
                    flush_at: None,
                });
                self.barriers.len() - 1
            }
        };
        let b = &mut self.barriers[k];
        b.held.extend(nodes);
        b.unsent.extend(nodes);
        if b.flush_at.is_none() {
            let delay = if tree.is_root() { ctx.cfg.ctrl_merge_delay } else { ctx.cfg.merge_delay };
            b.flush_at = Some(ctx.now + delay);
        }
        true
    }

    fn flush_barrier(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, k: usize) {
        let Some(up) = self.up(tree) else {
            self.barriers[k].flush_at = None;
            return;
        };
        let b = &mut self.barriers[k];
        b.flush_at = None;
        if b.unsent.is_empty() {
            return;
        }
        let msg = JobMsg::BarrierEnter { name: b.name.clone(), nodes: core::mem::take(&mut b.unsent) };
        ctx.send_msg(up, &Message::Job(msg));
    }

    fn release_barrier(&mut self, ctx: &mut Ctx<'_>, name: String) {
        if let Some(k) = self.barriers.iter().position(|b| b.name == name) {
            let b = self.barriers.swap_remove(k);
            if b.waiting {
                ctx.event(Event::BarrierReleased(name.clone()));
            }
        }
        if !self.released.contains(&name) {
            if self.released.len() == MAX_RELEASED {
                self.released.pop_front();
            }
            self.released.push_back(name);
        }
    }

    // ----- dismantle and exit ----------------------------------------------------------------

    fn start_dismantle(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree) {
        if self.dismantle.is_some() {
            return;
        }
        self.dismantle = Some((ctx.now + ctx.cfg.dismantle_timer, ctx.now + ctx.cfg.heartbeat));
        ctx.event(Event::Dismantling);
        self.flood(ctx, tree, &Message::Control(ControlMsg::Disconnect));
        if tree.children().is_empty() {
            self.exit(ctx, tree);
        }
    }

    /// Leave the tree, close every link, tell the driver to end the process.
    pub fn exit(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree) {
        if self.exited {
            return;
        }
        self.exited = true;
        let _ = tree.leave(ctx);
        let peers: Vec<NodeId> = ctx.io.conns.iter().map(|(p, _, _)| *p).collect();
        for p in peers {
            ctx.close(&p);
        }
        self.jobs.clear();
        self.barriers.clear();
        ctx.io.out.push_back(Output::Exit);
    }

    /// Whether [`Control::after`] would change nothing with `links` links.
    pub fn idle_settled(&self, links: usize) -> bool {
        (links == 0) == self.idle_since.is_some()
    }

    /// The tree changed our parent or root-ness: `detached` is whether we are now without a
    /// tree (no parent, not a root). Starts or stops the detached countdown (see `detached`).
    pub fn note_detached(&mut self, now: Instant, detached: bool) {
        if detached && self.ctrl.is_some() {
            self.detached.get_or_insert(now);
        } else {
            self.detached = None;
        }
    }

    /// After every input: idle expiry bookkeeping.
    pub fn after(&mut self, now: Instant, links: usize) {
        if links == 0 {
            self.idle_since.get_or_insert(now);
        } else {
            self.idle_since = None;
        }
    }

    pub fn idle_deadline(&self, idle_expiry: core::time::Duration) -> Option<Instant> {
        self.idle_since.map(|t| t + idle_expiry)
    }

    pub fn on_timeout(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree) {
        let now = ctx.now;
        let linger = self.linger(ctx.cfg.linger);
        if self.dismantle.is_none() && tree.is_root() && self.orphaned.is_some_and(|t| t + linger <= now) {
            // The controller did not come back within the linger: the tree ends.
            self.start_dismantle(ctx, tree);
            if self.exited {
                return;
            }
        }
        if self.dismantle.is_none()
            && !tree.is_root()
            && tree.parent().is_none()
            && self.detached.is_some_and(|t| t + linger <= now)
        {
            // No tree took us back within the linger (it may have ended meanwhile): our
            // subtree ends with us.
            self.start_dismantle(ctx, tree);
            if self.exited {
                return;
            }
        }
        if let Some((end, again)) = self.dismantle {
            if end <= now {
                self.exit(ctx, tree);
                return;
            }
            if again <= now {
                self.dismantle = Some((end, now + ctx.cfg.heartbeat));
                self.flood(ctx, tree, &Message::Control(ControlMsg::Disconnect));
            }
        }
        if self.idle_since.is_some_and(|t| t + ctx.cfg.idle_expiry <= now) {
            self.exit(ctx, tree);
            return;
        }
        if self.maint.as_ref().is_some_and(|m| m.deadline <= now) {
            ctx.io.out.push_back(Output::Signal { job: MAINT_JOB });
            self.maintenance_done(ctx, tree, ExitStatus::TimedOut);
        }
        let mut k = 0;
        while k < self.jobs.len() {
            let j = &self.jobs[k];
            if j.linger_until.is_some_and(|t| t <= now) {
                self.forget_job(ctx, k);
                continue;
            }
            if let Own::Running(Some(d)) = j.own {
                if d <= now {
                    let job = j.spec.job;
                    ctx.io.out.push_back(Output::Signal { job });
                    self.finish_own(ctx, tree, k, ExitStatus::TimedOut);
                }
            }
            if self.jobs[k].flush_at.is_some_and(|t| t <= now) {
                self.flush_job(ctx, tree, k);
            }
            k += 1;
        }
        for k in 0..self.barriers.len() {
            if self.barriers[k].flush_at.is_some_and(|t| t <= now) {
                self.flush_barrier(ctx, tree, k);
            }
        }
        let mut i = 0;
        while i < self.invites.len() {
            if self.invites[i].expires <= now {
                self.invites.remove(i);
            } else {
                i += 1;
            }
        }
        let mut i = 0;
        while i < self.verifying.len() {
            if self.verifying[i].1 <= now {
                let (node, _) = self.verifying.swap_remove(i);
                self.report_up(ctx, tree, ControlMsg::Disconnected { node, related: true });
            } else {
                i += 1;
            }
        }
    }
}

/// Send `groups` as they are (a relay that holds nothing for the job), as one or more
/// `Results` messages each under the frame limit.
fn send_groups(ctx: &mut Ctx<'_>, to: NodeId, job: u64, groups: Vec<Group>, complete: bool) {
    let mut batch: Vec<Group> = Vec::new();
    let mut bytes = 0;
    for g in groups {
        let size = g.output.len() + g.stderr.len() + g.nodes.runs() * 24;
        if !batch.is_empty() && (bytes + size > SPLIT_BYTES || batch.len() == crate::wire::MAX_LIST) {
            let msg = JobMsg::Results { job, groups: List(core::mem::take(&mut batch)), complete: false };
            ctx.send_msg(to, &Message::Job(msg));
            bytes = 0;
        }
        bytes += size;
        batch.push(g);
    }
    let msg = JobMsg::Results { job, groups: List(batch), complete };
    ctx.send_msg(to, &Message::Job(msg));
}

/// A received group as held: inline, or its blob's content (`None` when the blob is not here).
fn held_of(u: &Upward, g: Group) -> Option<Held> {
    match g.blob {
        None => Some(Held::new(g.status, g.truncated, &g.output, &g.stderr, g.nodes)),
        Some(b) => {
            let (content, split) = u.blobs.get(&b)?;
            Some(Held { status: g.status, truncated: g.truncated, content, split, digest: b.digest, nodes: g.nodes })
        }
    }
}

impl Blobs {
    /// A [`JobMsg::Blob`] chunk arrived: append it to its blob (chunks come in order on one
    /// link; a chunk at offset 0 starts the blob again). A blob already whole here is not
    /// stored twice. Nothing is reserved from the announced total: a blob grows as its bytes
    /// arrive. An out-of-order or inconsistent chunk drops the blob (its sender starts again
    /// from 0 after a reconfiguration).
    ///
    /// Returns whether the bytes were kept (false: a copy of a blob here already, or dropped).
    pub fn store(&mut self, from: NodeId, digest: [u8; 32], offset: u64, total: u64, data: &[u8]) -> bool {
        if self.whole.iter().any(|b| b.0 == digest) || self.split.iter().any(|b| b.0 == digest) {
            return false;
        }
        let k = match self.partial.iter().position(|p| p.0 == from && p.1 == digest) {
            Some(k) => k,
            None if offset == 0 && self.partial.len() < MAX_PARTIAL_BLOBS => {
                // Sized from the announced total up to a bound (doubling would hold up to twice
                // a large output); past it, it grows as the bytes come.
                let size = usize::try_from(total.min(BLOB_RESERVE)).unwrap_or(0);
                self.partial.push((from, digest, Vec::with_capacity(size), total));
                self.partial.len() - 1
            }
            None => return false,
        };
        let p = &mut self.partial[k];
        if offset == 0 {
            p.2.clear();
            p.3 = total;
        }
        if p.2.len() as u64 != offset || p.3 != total || offset + data.len() as u64 > total {
            self.partial.remove(k);
            return false;
        }
        p.2.extend_from_slice(data);
        if p.2.len() as u64 == total {
            let (_, d, mut content, _) = self.partial.remove(k);
            content.shrink_to_fit();
            // Copies on their way from other senders are not needed any more.
            self.partial.retain(|p| p.1 != d);
            self.whole.push((d, Rc::new(content)));
        }
        true
    }

    /// Forget what `peer` was sending (it is gone).
    fn drop_from(&mut self, peer: &NodeId) {
        self.partial.retain(|p| p.0 != *peer);
    }

    /// At the controller: `b`'s stdout and stderr, shared by every report of it.
    pub fn split(&mut self, b: &BlobRef) -> Option<Streams> {
        if let Some(x) = self.split.iter().find(|x| x.0 == b.digest) {
            return Some((Rc::clone(&x.1 .0), Rc::clone(&x.1 .1)));
        }
        let (content, at) = self.get(b)?;
        self.whole.retain(|x| x.0 != b.digest);
        let out = Rc::new(content[..at].to_vec());
        let err = Rc::new(content[at..].to_vec());
        self.split.push((b.digest, (Rc::clone(&out), Rc::clone(&err))));
        Some((out, err))
    }

    /// The content `b` names and where its stderr starts, if it arrived whole and matches.
    pub fn get(&self, b: &BlobRef) -> Option<(Rc<Vec<u8>>, usize)> {
        let content = self.whole.iter().find(|x| x.0 == b.digest).map(|x| Rc::clone(&x.1))?;
        let split = usize::try_from(b.stdout_len).ok()?;
        (content.len() as u64 == b.len && split <= content.len()).then_some((content, split))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(content: &[u8], size: usize) -> Vec<(u64, &[u8])> {
        content.chunks(size).enumerate().map(|(i, c)| ((i * size) as u64, c)).collect()
    }

    #[test]
    fn blobs_from_two_senders_at_once_assemble_apart() {
        let a = NodeId::loopback(1, 7000);
        let b = NodeId::loopback(2, 7000);
        let (out, err): (Vec<u8>, Vec<u8>) = ((0..300u32).map(|i| i as u8).collect(), b"oops\n".to_vec());
        let content = [out.clone(), err.clone()].concat();
        let d = digest_of(&out, &err);
        let r = BlobRef { digest: d, stdout_len: out.len() as u64, len: content.len() as u64 };
        let mut blobs = Blobs::default();
        let total = content.len() as u64;
        // Interleaved, the same output from both: each sender's chunks are in order.
        for ((oa, ca), (ob, cb)) in chunks(&content, 64).into_iter().zip(chunks(&content, 64)) {
            assert!(blobs.get(&r).is_none(), "whole too early");
            blobs.store(a, d, oa, total, ca);
            blobs.store(b, d, ob, total, cb);
        }
        let (got, at) = blobs.get(&r).expect("whole");
        assert_eq!((&got[..at], &got[at..]), (&out[..], &err[..]));
        assert!(blobs.partial.is_empty(), "the other sender's copy is dropped once one is whole");
        // At the controller: split once, shared.
        let (o1, e1) = blobs.split(&r).expect("split");
        let (o2, _) = blobs.split(&r).expect("split again");
        assert!(Rc::ptr_eq(&o1, &o2));
        assert_eq!((&o1[..], &e1[..]), (&out[..], &err[..]));
        // A reference that does not match what arrived is not served.
        let wrong = BlobRef { len: r.len + 1, ..r };
        assert!(Blobs::default().get(&wrong).is_none());
    }

    #[test]
    fn a_chunk_out_of_order_drops_the_blob_and_offset_zero_starts_again() {
        let a = NodeId::loopback(1, 7000);
        let content = vec![7u8; 200];
        let d = digest_of(&content, &[]);
        let r = BlobRef { digest: d, stdout_len: 200, len: 200 };
        let mut blobs = Blobs::default();
        blobs.store(a, d, 0, 200, &content[..100]);
        blobs.store(a, d, 150, 200, &content[150..]);
        assert!(blobs.partial.is_empty() && blobs.get(&r).is_none(), "a gap is not filled in");
        // A later chunk without its start is not stored either.
        blobs.store(a, d, 100, 200, &content[100..]);
        assert!(blobs.partial.is_empty());
        // From 0 again (the sender's new parent link): whole.
        blobs.store(a, d, 0, 200, &content[..100]);
        blobs.store(a, d, 100, 200, &content[100..]);
        assert!(blobs.get(&r).is_some());
        // More than the announced total is refused.
        let mut blobs = Blobs::default();
        blobs.store(a, d, 0, 10, &content[..20]);
        assert!(blobs.partial.is_empty() && blobs.whole.is_empty());
    }

    #[test]
    fn equal_outputs_have_equal_digests_and_the_split_counts() {
        assert_eq!(digest_of(b"ab", b"c"), digest_of(b"ab", b"c"));
        assert_ne!(digest_of(b"ab", b"c"), digest_of(b"a", b"bc"), "where stderr starts is part of the output");
        assert_ne!(digest_of(b"ab", b""), digest_of(b"", b"ab"));
    }
}
