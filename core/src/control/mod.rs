//! The Plush control plane, client side: controller link, invitations, membership reports, jobs
//! with exactly-once results, barriers, dismantle.
//!
//! **Controller and root.** Every member learns the controller's id (`SetCtrl` from its parent
//! when it attaches). The root keeps a pinned link to the controller and answers its `SetCtrl`
//! (sent on connect and every two minutes) with `SetRoot`, and so it answers every `SetCtrl`
//! that reaches it from below (the controller asking a member where its root is, or a fragment
//! that merged naming it), even while its own link looks fine: its last `SetRoot` may be lost.
//! The root leads that link's heartbeats (the controller only answers), also when it has no
//! child. A node that becomes root tells the controller with `SetRoot`; a root that merges
//! into another tree sends `SetCtrl` up toward the new root, which then does the same, unless it was orphaned (its controller gone and not
//! back: a dead controller named up the tree would take the tree away from a live one). When
//! the controller (re)connects, the root runs a census down the tree and sends the members up
//! as `Participants`. A node that passes up a report that a member was lost drops that
//! member's census answers it still holds: reports and answers take the same links up in
//! order, so those answers are older than the loss (and would make a dead host a member again
//! at the controller); an answer that comes after the report is a new client's, and counts.
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
//! **Tree launch** ([`crate::Config::tree_launch`], `--launch-from tree`). The controller invites
//! the first host itself, as above. From then on it invites no host through the root: each
//! time a member's `Joined` reaches it, it hands that member a share of the hosts not yet
//! invited (`Share`, at most [`crate::wire::MAX_LIST`] hosts, in the user's order); a host
//! handed out counts as invited. A member with a share starts at most the share's `fanout`
//! hosts at once: it invites each itself (`SetPeer` from the member, so the host joins through
//! it, its first bootstrap contact); if no client answers it asks its driver to launch one
//! ([`crate::Output::Launch`]) and invites the new client, sending it first a part of its own share
//! (an even split of what is left between the new client, its other hosts under way and
//! itself), which the new client starts on once it has joined. So the launches fan out down the
//! tree, and no member holds more than `MAX_SHARE` (2 × `MAX_LIST`) hosts. A host a member could not launch or
//! reach after its launch goes back up as `InviteFailed`; the controller then launches and
//! invites it itself, and reports it failed by name if it cannot either. Hosts of a share that
//! no member invited within [`crate::Config::invitation_expiry`] (their member died with its
//! share) go out again in another share, once; after a second expiry they are the
//! controller's own. A share is taken from the controller at any time, and
//! from anyone else only by an idle client, and only if the invitation that follows comes from
//! the same member (as a maintenance script).
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
//! Bounds: at most [`crate::Config::max_jobs`] jobs, `MAX_GROUPS` distinct results held per
//! job, [`MAX_BARRIERS`] barriers, `MAX_REPORTS` reports waiting for a way up,
//! [`crate::Config::max_invitations`] invitations and `MAX_STATUS_CHECKS` status checks at the
//! root at once (`MAX_CHECKS_WAITING` more waiting their turn), `MAX_DONE` finished job ids
//! remembered, `MAX_SHARE` hosts of a tree launch's share per member, the share's `fanout` of
//! them under way.

use super::transfer::Xfer;
use crate::ctx::Ctx;
use crate::id::NodeId;
use crate::lazy::{Idle, Lazy};
use crate::nodeset::NodeSet;
use crate::time::Instant;
use crate::tree::{Tree, TreeState};
use crate::wire::{ControlMsg, JobKind, Message, RunSpec};
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::rc::Rc;

mod barriers;
pub mod controller;
mod held;
mod jobs;
mod lifecycle;
mod membership;
pub mod transfer;

pub(crate) use held::Blobs;
pub use held::{digest_of, Streams};
use held::{Held, Upward};

/// Distinct (status, output) groups a node holds per job; a result beyond is forwarded but not
/// held (counted in [`crate::Stats::results_unheld`]).
const MAX_GROUPS: usize = 1024;
/// Barriers a node tracks at once; entering one more is refused.
pub const MAX_BARRIERS: usize = 64;
/// Released barrier names remembered (a late entrant passes at once).
const MAX_RELEASED: usize = 64;
/// Reports (`Joined`, `Disconnected`) waiting while the node has no way up; the oldest is dropped.
const MAX_REPORTS: usize = 256;
/// Reports the root checks at once (`GetStatus`); more wait their turn.
const MAX_STATUS_CHECKS: usize = 64;
/// Reports waiting for a status check at the root ([`Rare::to_check`]); more are dropped (the
/// controller's next census finds those hosts again). Also how many the controller asks to
/// check per census.
const MAX_CHECKS_WAITING: usize = 1024;
/// Finished job ids remembered, so that a stale `Run` never runs a job twice.
const MAX_DONE: usize = 1024;
/// The job id of a running maintenance script (its process events carry it). The top bit is
/// set, so no controller job ever has it.
pub const MAINT_JOB: u64 = u64::MAX;
/// Longest barrier name accepted.
pub const MAX_NAME: usize = 128;
/// A job whose environment sets this variable to `1` may run again on a host whose client
/// restarted while it ran there (`plush run --retry-lost`, an application file's `restart`
/// policy). Without it, such a host answers [`crate::wire::ExitStatus::Lost`] instead of running the job a
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
const INLINE_OUTPUT: usize = 32 << 10;
/// How a node's live output (on stderr) says that bytes of it that were in flight when a link
/// of the tree broke may be missing there: this, the count, and the rest of the line.
pub const OUTPUT_CUT_PREFIX: &str = "plush: up to ";
/// Bytes per [`JobMsg::Blob`] chunk.
const BLOB_CHUNK: usize = 64 << 10;
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
/// `Config::large_ack_pace`.)
const BLOB_BACKLOG: u64 = 8 << 20;
/// Blobs a node keeps for groups still to come, per job (see `Upward::awaiting`).
const MAX_AWAITING: usize = 1024;
/// Most bytes reserved at once for a blob from its announced size.
const BLOB_RESERVE: u64 = 16 << 20;

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
struct NodeJob {
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
    /// Every unacknowledged result this node produced or received. At most `MAX_GROUPS`.
    held: Vec<Held>,
    /// What is still to be sent up. At most `MAX_GROUPS`.
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
struct NodeBarrier {
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
    /// The launch asked for is under way (no result yet): a connect to the host that fails
    /// meanwhile (any dial, not only ours) says nothing of it; the launch's result decides.
    launching: bool,
    expires: Instant,
    /// The `SetPeer` went out (at most [`invite_slots`] at once; the others wait their turn).
    sent: bool,
    /// The link to the host opened, so the `SetPeer` reached it: the invitation no longer
    /// takes a slot (the link is an ordinary idle one from then on, which the budget may
    /// close), but is remembered until the host joins or it expires.
    connected: bool,
}

/// Hosts a member holds to launch in tree launch ([`crate::Config::tree_launch`]): a share
/// from the controller ([`crate::wire::MAX_LIST`] at most) and one from its inviter (as many),
/// each taken once. Hosts of a share beyond this go back to the controller (`InviteFailed`).
const MAX_SHARE: usize = 2 * crate::wire::MAX_LIST;

/// Tree launch at a member: its share of the hosts, and those under way. See the module docs.
#[derive(Debug, Default)]
struct Share {
    /// Hosts to launch and invite, in order. At most [`MAX_SHARE`].
    todo: VecDeque<NodeId>,
    /// Hosts under way: invited (a client may run there already), launching, or invited again
    /// after the launch, until the link to the host opens (the invitation is delivered). At
    /// most `fanout`.
    active: Vec<ShareInvite>,
    /// Launches under way at once, as the share's message said (at least 1).
    fanout: usize,
    /// Who gave the part received before we joined: kept only if our invitation comes from
    /// the same member (as a maintenance script). `None`: the controller, or nobody yet.
    by: Option<NodeId>,
}

/// One host of a member's share under way.
#[derive(Debug)]
struct ShareInvite {
    host: NodeId,
    /// No client answered the first invitation, and the driver was asked to launch one.
    launched: bool,
    /// That launch is under way (no result yet): a connect to the host that fails meanwhile
    /// says nothing of it (see [`Invite::launching`]).
    launching: bool,
    /// Given up (reported `InviteFailed`) at this time if still under way.
    expires: Instant,
    /// The part of our share handed to it with the invitation after its launch (at most
    /// [`crate::wire::MAX_LIST`]); back to our own `todo` if it fails.
    portion: Vec<NodeId>,
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
    jobs: Vec<NodeJob>,
    done: VecDeque<u64>,
    released: VecDeque<String>,
    census_seq: u64,
    /// What a node holds only at times (see [`Rare`]): boxed, and freed once idle.
    rare: Lazy<Rare>,
    /// Since when the node has had no link at all.
    idle_since: Option<Instant>,
    /// The node exited: it does nothing more.
    pub exited: bool,
    /// The linger the controller told the tree ([`ControlMsg::Linger`]); `None`:
    /// [`crate::Config::linger`].
    linger: Option<core::time::Duration>,
    /// Tree launch: the hosts this member launches and invites (see [`Share`]); `None` when it
    /// has none (always, without tree launch).
    share: Option<Box<Share>>,
}

/// What a node of the control plane holds only at times: invitations it made, reports waiting
/// for a way up, barriers, a dismantle, a maintenance script, the root's checks and its time
/// without a controller, a detached node's clock, a previous client's jobs. Idle in a settled
/// member, so it lives in a [`Lazy`] box (in a simulator of a million nodes, ~250 bytes a node).
#[derive(Debug, Default)]
struct Rare {
    /// Invitations this node made and not yet settled (bounded by `invite_slots`).
    pub invites: Vec<Invite>,
    /// (node, deadline) of `Disconnected` reports the root is checking with `GetStatus`.
    pub verifying: Vec<(NodeId, Instant)>,
    /// Reports the root checks once a check ends (at most [`MAX_CHECKS_WAITING`]): a mass loss
    /// is checked [`MAX_STATUS_CHECKS`] at a time, not one batch per census.
    pub to_check: VecDeque<NodeId>,
    /// Reports waiting for a way up. At most `MAX_REPORTS`.
    pub reports: VecDeque<ControlMsg>,
    pub barriers: Vec<NodeBarrier>,
    /// Dismantling: exit at this time regardless; re-send `Disconnect` at the second.
    pub dismantle: Option<(Instant, Instant)>,
    /// The maintenance script to run before joining, and to send with invitations (at most
    /// [`crate::wire::MAX_SCRIPT`] bytes), and who sent it.
    pub script: Option<(Rc<str>, NodeId)>,
    /// The maintenance script is running: join through `boot` once it succeeds.
    pub maint: Option<Maint>,
    /// At the root: since when it has been without its controller (see the module docs on
    /// lingering); `None` elsewhere, and while the controller is there.
    pub orphaned: Option<Instant>,
    /// Since when this node, once under a controller, has had no tree: detached from its
    /// parent, repairing, and not a root. Past the linger it ends its subtree and exits (a
    /// node still repairing when its tree's dismantle passed would otherwise try to join
    /// forever). `None` while attached or root.
    pub detached: Option<Instant>,
    /// Jobs (controller, job) that a previous client on this address started: asked to run one
    /// of them, the node answers [`crate::wire::ExitStatus::Lost`] (unless the job asks for retries). Set
    /// once by the driver at start, from the host's job record; at most [`MAX_PRIOR`].
    pub prior: Vec<(NodeId, u64)>,
}

impl Idle for Rare {
    const IDLE: &'static Rare = &Rare {
        invites: Vec::new(),
        verifying: Vec::new(),
        to_check: VecDeque::new(),
        reports: VecDeque::new(),
        barriers: Vec::new(),
        dismantle: None,
        script: None,
        maint: None,
        orphaned: None,
        detached: None,
        prior: Vec::new(),
    };

    fn is_idle(&self) -> bool {
        let Rare {
            invites,
            verifying,
            to_check,
            reports,
            barriers,
            dismantle,
            script,
            maint,
            orphaned,
            detached,
            prior,
        } = self;
        invites.is_empty()
            && verifying.is_empty()
            && to_check.is_empty()
            && reports.is_empty()
            && barriers.is_empty()
            && dismantle.is_none()
            && script.is_none()
            && maint.is_none()
            && orphaned.is_none()
            && detached.is_none()
            && prior.is_empty()
    }
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
const CENSUS_BIT: u64 = 1 << 63;

impl Control {
    pub fn new(me: NodeId, now: Instant) -> Self {
        Control {
            me,
            ctrl: None,
            ctrl_linked: false,
            announce: false,
            jobs: Vec::new(),
            done: VecDeque::new(),
            released: VecDeque::new(),
            census_seq: 0,
            rare: Lazy::default(),
            idle_since: Some(now),
            exited: false,
            linger: None,
            share: None,
        }
    }

    /// Jobs a previous client on this address started (see `prior`); the last [`MAX_PRIOR`].
    pub fn set_prior(&mut self, jobs: &[(NodeId, u64)]) {
        self.rare.prior = jobs[jobs.len().saturating_sub(MAX_PRIOR)..].to_vec();
    }

    /// Whether `spec` is a job this host's previous client started and that does not ask to
    /// run again.
    fn ran_before(&self, spec: &RunSpec) -> bool {
        let Some(ctrl) = self.ctrl else { return false };
        let retry = spec.env.0.iter().any(|(k, v)| k == RETRY_LOST_ENV && v == "1");
        !retry && self.rare.prior.contains(&(ctrl, spec.job))
    }

    /// Free the occasional state once nothing in it is set (after every input).
    #[inline]
    pub fn trim(&mut self) {
        self.rare.trim();
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
        self.rare.orphaned
    }

    /// The earliest timer; `default_linger`: [`crate::Config::linger`].
    pub fn next_timeout(&self, default_linger: core::time::Duration) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        if self.rare.dismantle.is_none() {
            if let Some(t) = self.rare.orphaned {
                at(t + self.linger(default_linger));
            }
            if let Some(t) = self.rare.detached {
                at(t + self.linger(default_linger));
            }
        }
        for j in &self.jobs {
            j.flush_at.into_iter().chain(j.linger_until).for_each(&mut at);
            if let Own::Running(Some(d)) = j.own {
                at(d);
            }
        }
        self.rare.barriers.iter().filter_map(|b| b.flush_at).for_each(&mut at);
        self.rare.invites.iter().map(|i| i.expires).for_each(&mut at);
        if let Some(s) = &self.share {
            s.active.iter().map(|i| i.expires).for_each(&mut at);
        }
        self.rare.verifying.iter().map(|v| v.1).for_each(&mut at);
        if let Some((end, again)) = self.rare.dismantle {
            at(end);
            at(again);
        }
        if let Some(m) = &self.rare.maint {
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

    /// `node` is reported lost on its way up through us: an answer of its to a census that we
    /// hold is older than the loss (reports and answers take the same links up, in order), and
    /// passed on after the report it would tell the controller that a dead host is a member.
    /// It goes. An answer that reaches us after the report is its new life's, and counts.
    fn scrub_census(&mut self, node: NodeId) {
        for j in self.jobs.iter_mut().filter(|j| j.spec.kind == JobKind::Census) {
            for groups in [&mut j.held, &mut j.unsent] {
                if groups.iter().any(|g| g.nodes.contains(&node)) {
                    let gone = NodeSet::one(node);
                    groups.iter_mut().for_each(|g| g.nodes.remove_all(&gone));
                    groups.retain(|g| !g.nodes.is_empty());
                }
            }
        }
    }

    fn report_up(&mut self, ctx: &mut Ctx<'_>, tree: &Tree, msg: ControlMsg) {
        if let ControlMsg::Disconnected { node, .. } = msg {
            self.scrub_census(node);
        }
        if self.ctrl.is_none() {
            // Nobody to tell: an overlay run without a controller (the simulator's plain runs).
            return;
        }
        match self.up(tree) {
            Some(up) => self.send(ctx, up, msg),
            None => {
                if self.rare.reports.len() == MAX_REPORTS {
                    self.rare.reports.pop_front();
                }
                self.rare.reports.push_back(msg);
            }
        }
    }
}
