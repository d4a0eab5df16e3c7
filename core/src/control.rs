//! The Plush control plane, client side: controller link, invitations, membership reports, jobs
//! with exactly-once results, barriers, dismantle.
//!
//! **Controller and root.** Every member learns the controller's id (`SetCtrl` from its parent
//! when it attaches). The root keeps a pinned link to the controller and answers its `SetCtrl`
//! (sent on connect and every two minutes) with `SetRoot`. A node that becomes root tells the
//! controller with `SetRoot`; a root that merges into another tree sends `SetCtrl` up toward the
//! new root, which then does the same. When the controller (re)connects, the root runs a census
//! down the tree and sends the members up as `Participants`.
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
//! **Dismantle.** `Disconnect` floods down; a node exits once it has no children, re-sending
//! `Disconnect` every heartbeat to the children that remain, and after
//! [`crate::Config::dismantle_timer`] regardless. A client without any link for
//! [`crate::Config::idle_expiry`] exits by itself.
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
use crate::id::NodeId;
use crate::node::{Ctx, Event, Output};
use crate::nodeset::NodeSet;
use crate::time::Instant;
use crate::transfer::Xfer;
use crate::tree::{Tree, TreeState};
use crate::wire::{ControlMsg, ExitStatus, Group, JobKind, JobMsg, List, Message, RunSpec, Target};
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
/// The output of a node's result when it had no room for another job.
const TOO_MANY_JOBS: &[u8] = b"plush: too many jobs on this node";
/// A results message is split once its groups' outputs pass this many bytes.
const SPLIT_BYTES: usize = 256 << 10;

/// What the driver reports about a process it spawned for a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcessEvent {
    /// The process wrote these bytes (stdout or stderr).
    Output {
        /// The job.
        job: u64,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// The process ended (or could not start).
    Exit {
        /// The job.
        job: u64,
        /// How.
        status: ExitStatus,
    },
}

/// A result group held by a node: the output is shared between the held and unsent copies.
#[derive(Clone, Debug)]
struct Held {
    status: ExitStatus,
    truncated: bool,
    output: Rc<Vec<u8>>,
    nodes: NodeSet,
}

impl Held {
    /// Same status, truncation and output (the same buffer, or equal bytes).
    fn same(&self, other: &Held) -> bool {
        self.status == other.status
            && self.truncated == other.truncated
            && (Rc::ptr_eq(&self.output, &other.output) || self.output == other.output)
    }
}

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
    output: Vec<u8>,
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
    /// Stream budget: bytes left in the current second, and when it refills.
    stream_left: usize,
    stream_refill: Instant,
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
    /// [`crate::wire::MAX_SCRIPT`] bytes).
    script: Option<Rc<str>>,
    /// The maintenance script is running: join through `boot` once it succeeds.
    maint: Option<Maint>,
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
        }
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

    pub fn next_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
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
        if was_root {
            self.stopped_root(ctx);
        }
        if core::mem::take(&mut self.announce) {
            self.report_up(ctx, tree, ControlMsg::Joined { node: self.me, build: ctx.cfg.build });
        }
        if let (Some(ctrl), Some(p)) = (self.ctrl, tree.parent()) {
            if was_root {
                // The new root must learn the controller, and tell it.
                self.send(ctx, p, ControlMsg::SetCtrl { ctrl });
            }
        }
        self.resend_all(ctx, tree);
    }

    /// We became a root (failover, or a fragment that found no tree).
    pub fn on_became_root(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree) {
        if let Some(ctrl) = self.ctrl {
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
    pub fn on_link_up(&mut self, ctx: &mut Ctx<'_>, peer: NodeId) {
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
                    // census), knowing it lets our root's partition probe find it and merge.
                    let _ = tree.add_peers(ctx, &[from]);
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
                // From the controller (to a root, or to the host it invites directly) or from
                // an inviter, just before its SetPeer: every link is authenticated.
                if script.len() <= crate::wire::MAX_SCRIPT {
                    self.script = Some(script.into());
                }
            }
            ControlMsg::Census => {
                // Only the controller asks, and only the root counts.
                if tree.is_root() && self.ctrl == Some(from) {
                    self.start_census(ctx, tree);
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
        if ctrl == self.me {
            return;
        }
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
        if ctrl == self.me {
            // We are nobody's controller: a frame naming us so is bad input (we would report
            // to ourselves).
            return;
        }
        if host == self.me {
            // An invitation for us: join through the sender, or found the tree if the controller
            // itself asks.
            self.ctrl = Some(ctrl);
            match tree.state() {
                TreeState::Idle if self.maint.is_some() => {} // joins once its script succeeds
                TreeState::Idle => {
                    self.announce = true;
                    let boot = (from != ctrl).then_some(from);
                    if let Some(script) = self.script.clone() {
                        self.run_maintenance(ctx, &script, boot);
                    } else {
                        // Founding a tree is reported as BecameRoot, which tells the controller.
                        let _ = tree.start(ctx, boot.as_slice());
                    }
                }
                // Already a member: say so (the controller may have thought us gone), and keep
                // the inviter as a peer: if it belongs to another tree, the partition probe
                // merges the two.
                TreeState::Joined | TreeState::Joining => {
                    if from != ctrl {
                        let _ = tree.add_peers(ctx, &[from]);
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
        if let Some(script) = &self.script {
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
            JobMsg::Output { job, node, bytes } => {
                if self.is_above(tree, from) {
                    return;
                }
                if let Some(up) = self.up(tree) {
                    ctx.send_msg(up, &Message::Job(JobMsg::Output { job, node, bytes }));
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
                    self.jobs[k].output = b"plush: a push without a usable file description".to_vec();
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
                self.jobs[k].output = tree.parent().map_or_else(Vec::new, |p| p.addr().to_string().into_bytes());
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
            JobKind::Command if self.jobs[k].over => {
                self.jobs[k].output = TOO_MANY_JOBS.to_vec();
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
                let g = Held {
                    status: ExitStatus::SpawnFailed,
                    truncated: false,
                    output: Rc::new(TOO_MANY_JOBS.to_vec()),
                    nodes: NodeSet::one(self.me),
                };
                self.send_groups(ctx, up, spec.job, &[g], false);
            }
            return None;
        }
        self.jobs.push(Job {
            spec,
            known,
            over,
            own: Own::NotTarget,
            output: Vec::new(),
            truncated: false,
            held: Vec::new(),
            unsent: Vec::new(),
            answered: SmallVec::new(),
            from: Vec::new(),
            told_complete: false,
            flush_at: None,
            linger_until: None,
            stream_left: ctx.cfg.stream_rate,
            stream_refill: ctx.now + core::time::Duration::from_secs(1),
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
        let g = Held {
            status,
            truncated: j.truncated,
            output: Rc::new(core::mem::take(&mut j.output)),
            nodes: NodeSet::one(self.me),
        };
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
            ProcessEvent::Output { job: MAINT_JOB, bytes } => {
                if let Some(m) = self.maint.as_mut() {
                    let room = crate::wire::MAX_SCRIPT_OUTPUT.saturating_sub(m.output.len());
                    m.output.extend_from_slice(&bytes[..bytes.len().min(room)]);
                }
            }
            ProcessEvent::Exit { job: MAINT_JOB, status } => self.maintenance_done(ctx, tree, status),
            ProcessEvent::Output { job, bytes } => {
                let Some(k) = self.job_index(job) else { return };
                let max = ctx.cfg.max_output;
                let j = &mut self.jobs[k];
                if !matches!(j.own, Own::Running(_)) {
                    return;
                }
                let room = max.saturating_sub(j.output.len());
                j.output.extend_from_slice(&bytes[..bytes.len().min(room)]);
                if bytes.len() > room {
                    j.truncated = true;
                }
                if j.spec.stream {
                    if ctx.now >= j.stream_refill {
                        j.stream_left = ctx.cfg.stream_rate;
                        j.stream_refill = ctx.now + core::time::Duration::from_secs(1);
                    }
                    let n = bytes.len().min(j.stream_left);
                    j.stream_left -= n;
                    if n < bytes.len() {
                        ctx.io.stats.stream_bytes_dropped += (bytes.len() - n) as u64;
                    }
                    if n > 0 {
                        if let Some(up) = self.up(tree) {
                            let msg = JobMsg::Output { job, node: self.me, bytes: bytes[..n].to_vec() };
                            ctx.send_msg(up, &Message::Job(msg));
                        }
                    }
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
                });
                match self.new_job(ctx, tree, stand_in, false) {
                    Some(k) => k,
                    None => {
                        // No room to hold them: relay them as they are.
                        if let Some(up) = self.up(tree) {
                            let held: Vec<Held> = groups.into_iter().map(held_of).collect();
                            self.send_groups(ctx, up, job, &held, false);
                        }
                        return;
                    }
                }
            }
            None => {
                // A job we finished and forgot: relay late results as they are.
                if let Some(up) = self.up(tree) {
                    let held: Vec<Held> = groups.into_iter().map(held_of).collect();
                    self.send_groups(ctx, up, job, &held, false);
                }
                return;
            }
        };
        let mut got = NodeSet::new();
        for g in groups {
            got.extend(&g.nodes);
            let h = held_of(g);
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
        self.send_groups(ctx, up, job, &unsent, complete);
    }

    fn send_participants(&self, ctx: &mut Ctx<'_>, to: NodeId, nodes: NodeSet, last: bool) {
        self.send(ctx, to, ControlMsg::Participants { nodes, last });
    }

    /// Send `groups` as one or more `Results` messages, each under the frame limit.
    fn send_groups(&self, ctx: &mut Ctx<'_>, to: NodeId, job: u64, groups: &[Held], complete: bool) {
        let mut batch: Vec<Group> = Vec::new();
        let mut bytes = 0;
        for g in groups {
            let size = g.output.len() + g.nodes.runs() * 24;
            if !batch.is_empty() && (bytes + size > SPLIT_BYTES || batch.len() == crate::wire::MAX_LIST) {
                let msg = JobMsg::Results { job, groups: List(core::mem::take(&mut batch)), complete: false };
                ctx.send_msg(to, &Message::Job(msg));
                bytes = 0;
            }
            bytes += size;
            batch.push(Group {
                status: g.status,
                truncated: g.truncated,
                output: g.output.as_ref().clone(),
                nodes: g.nodes.clone(),
            });
        }
        let msg = JobMsg::Results { job, groups: List(batch), complete };
        ctx.send_msg(to, &Message::Job(msg));
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
        let j = &mut self.jobs[k];
        j.from = keep;
        remove_acked(&mut j.held, acked);
        remove_acked(&mut j.unsent, acked);
        if !j.held.is_empty() {
            // What the controller does not have was lost on the way: send it again.
            j.unsent = j.held.clone();
            self.flush_job(ctx, tree, k);
        } else if !matches!(j.own, Own::Running(_)) {
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

fn held_of(g: Group) -> Held {
    Held { status: g.status, truncated: g.truncated, output: Rc::new(g.output), nodes: g.nodes }
}
